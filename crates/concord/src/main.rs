//! The `concord` binary: the command line over Concord's libraries.
//!
//! Each subcommand lives in its own file under `cmd/`. This crate is the only one that
//! knows the terminal: libraries return typed errors, and they become messages here,
//! each cause said once (an error's chain often repeats its source's text) and followed
//! by what to do where that is known. Output goes through [`output`], so a closed pipe
//! ends the command quietly.

mod cmd;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Concord keeps SQLite, PostgreSQL and MySQL databases in sync, both ways.
///
/// Run a node beside each database (`init`, then `serve`) and nodes sync over mutual
/// TLS, live; or merge SQLite files directly with `merge`. Every write by any program
/// is captured; concurrent edits are merged per column and recorded as conflicts.
#[derive(Parser)]
#[command(
    name = "concord",
    version,
    propagate_version = true,
    after_help = "Environment:\n  CONCORD_LOG  what to log on standard error: a level (error, warn, info, debug, trace)\n               or a filter such as `concord_node=debug,info`, e.g. CONCORD_LOG=debug.\n               Default: info for `serve`, warn for other commands."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    Init(cmd::init::Args),
    /// Run the node configured in DIR until interrupted (Ctrl-C or SIGTERM).
    ///
    /// The node captures every write to its tracked tables, syncs with its peers over
    /// mutual TLS, and serves /metrics, /health and /v1/status on its HTTP address.
    /// Logs go to standard error (level from CONCORD_LOG, e.g. CONCORD_LOG=debug).
    Serve {
        #[command(flatten)]
        args: cmd::serve::Args,
        /// Log format on standard error.
        #[arg(long, value_enum, default_value_t)]
        log_format: LogFormat,
    },
    Status(cmd::status::Args),
    Track(cmd::track::Args),
    Untrack(cmd::untrack::Args),
    Merge(cmd::merge::Args),
    Conflicts(cmd::conflicts::Args),
    Failures(cmd::failures::Args),
    Info(cmd::info::Args),
    Verify(cmd::verify::Args),
    Demo(cmd::demo::Args),
}

impl Command {
    /// A running node logs its sessions; one-shot commands only warnings.
    fn default_log_level(&self) -> &'static str {
        // The PostgreSQL log reader reports a lost replication connection itself, once
        // per distinct failure; the replication crate would log it a second time.
        match self {
            Command::Serve { .. } => "info,pgwire_replication=off",
            _ => "warn,pgwire_replication=off",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.command.default_log_level()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person's terminal, never into a redirected log file.
        .with_ansi(std::io::stderr().is_terminal());
    match &cli.command {
        Command::Serve {
            log_format: LogFormat::Json,
            ..
        } => builder.json().init(),
        _ => builder.init(),
    }
    let result = match cli.command {
        Command::Init(args) => cmd::init::run(args),
        Command::Serve { args, .. } => cmd::serve::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Track(args) => cmd::track::run(args),
        Command::Untrack(args) => cmd::untrack::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Conflicts(args) => cmd::conflicts::run(args),
        Command::Failures(args) => cmd::failures::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Verify(args) => match cmd::verify::run(args) {
            // Like `diff`: 1 when the files differ, which is no error.
            Ok(false) => return ExitCode::from(1),
            other => other.map(|_| ()),
        },
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`concord info | head`): nothing is wrong.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error's chain as one message, each cause once: a cause whose text the message
/// already holds (an error that prints its source and also exposes it) is skipped.
fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let clause = cause.to_string();
        if clause.is_empty() || text.contains(&clause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&clause);
    }
    text
}

/// What to do about the error, where we know.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    let io_kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    let text = message(e);
    if io_kind == Some(std::io::ErrorKind::AddrInUse) || text.contains("Address already in use") {
        return Some(
            "another program (another node?) is listening on that address; stop it, or give this node other ports in its concord.toml (`listen`, `http`)",
        );
    }
    if text.contains("Connection refused") || text.contains("error connecting to server") {
        return Some("is the database server running, and are the host and port in the URL right?");
    }
    if text.contains("TOML parse error") {
        return Some(
            "fix concord.toml at the line shown; `concord init` writes a commented example",
        );
    }
    if text.contains("of the node in") && text.contains("is not tracked by Concord") {
        return Some(
            "a node's store is set up when the node first runs: start it with `concord serve --dir DIR`",
        );
    }
    if text.contains("concord.toml: No such file") {
        return Some("is this a node's data directory? `concord init --dir DIR ...` creates one");
    }
    if text.contains("no such file") && !text.contains("concord.toml") {
        return Some(
            "check the path (relative paths are taken from the current directory); create the database first, e.g. with the sqlite3 shell",
        );
    }
    None
}
