//! The `concord` binary: the command line over Concord's libraries.
//!
//! Each subcommand lives in its own file under `cmd/`. This crate is the only one that
//! knows the terminal: libraries return typed errors, and they become messages here.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Concord keeps SQLite, PostgreSQL and MySQL databases in sync, both ways.
///
/// Run a node beside each database (`init`, then `serve`) and nodes sync over mutual
/// TLS, live; or merge SQLite files directly with `merge`. Every write by any program
/// is captured; concurrent edits are merged per column and recorded as conflicts.
#[derive(Parser)]
#[command(name = "concord", version, propagate_version = true)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    Init(cmd::init::Args),
    Serve(cmd::serve::Args),
    Status(cmd::status::Args),
    Track(cmd::track::Args),
    Untrack(cmd::untrack::Args),
    Merge(cmd::merge::Args),
    Conflicts(cmd::conflicts::Args),
    Info(cmd::info::Args),
    Demo(cmd::demo::Args),
}

impl Command {
    /// A running node logs its sessions; one-shot commands only warnings.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.command.default_log_level()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let result = match cli.command {
        Command::Init(args) => cmd::init::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Track(args) => cmd::track::run(args),
        Command::Untrack(args) => cmd::untrack::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Conflicts(args) => cmd::conflicts::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
