//! The `concord` binary: the command line over Concord's libraries.
//!
//! Each subcommand lives in its own file under `cmd/`. This crate is the only one that
//! knows the terminal: libraries return typed errors, and they become messages here.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Concord keeps SQLite, PostgreSQL and MySQL databases in sync, both ways.
///
/// Track tables in each database, then merge the files (or, later, run nodes that sync
/// over the network). Every write by any program is captured; concurrent edits are
/// merged per column and conflicts are recorded where you can list them.
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
    Track(cmd::track::Args),
    Untrack(cmd::untrack::Args),
    Merge(cmd::merge::Args),
    Conflicts(cmd::conflicts::Args),
    Info(cmd::info::Args),
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let result = match cli.command {
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
