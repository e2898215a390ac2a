//! `concord init`: create a node's data directory.
//!
//! Everything `serve` would refuse later is checked here first, while the user is still
//! at the terminal: the SQLite file exists (its path is resolved against the current
//! directory and written absolute, so it means the same file from the data directory),
//! the server accepts the connection, each table exists with a primary key and columns
//! the store can replicate. All problems are reported together and nothing is written
//! when there is one. The checks are the stores' own (`concord_node::check_store`), the
//! code `track` runs, so `init` and `serve` cannot disagree.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use anyhow::Context;
use concord_node::StoreChoice;

use crate::output;

/// Create a node: a commented concord.toml and a new identity (key pair and TLS
/// certificate) in DIR.
///
/// Checks the database first (file or connection, tables, primary keys, column types)
/// and writes nothing if anything is wrong. Prints the node's fingerprint; give it to
/// each peer's `[[peers]]` entry, and put theirs in this node's concord.toml. Then run
/// `concord serve --dir DIR`.
#[derive(clap::Args)]
#[command(
    group = clap::ArgGroup::new("store").required(true).multiple(false),
    override_usage = "concord init --dir <DIR> <--sqlite <FILE>|--postgres <URL>|--mysql <URL>> --tables <TABLES> [OPTIONS]\n       concord init --dir <DIR> --relay [OPTIONS]"
)]
pub(crate) struct Args {
    /// The data directory to create.
    #[arg(long)]
    dir: PathBuf,
    /// A name for logs and status (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// The SQLite file this node keeps in sync (a relative path is taken from the
    /// current directory, or from DIR if the file is only there); written absolute.
    #[arg(long, group = "store")]
    sqlite: Option<PathBuf>,
    /// The PostgreSQL database this node keeps in sync, as a URL
    /// (postgres://user:password@host:5432/database).
    #[arg(long, group = "store")]
    postgres: Option<String>,
    /// The MySQL/MariaDB database this node keeps in sync, as a URL
    /// (mysql://user:password@host:3306/database).
    #[arg(long, group = "store")]
    mysql: Option<String>,
    /// Tables of the database to track (comma-separated or repeated); required except
    /// with --relay.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "relay",
        conflicts_with = "relay"
    )]
    tables: Vec<String>,
    /// A hub or relay node: no user database, only Concord's own store.
    #[arg(long, group = "store")]
    relay: bool,
    /// Address peers connect to, IP:PORT (default: the first free pair of ports from
    /// 127.0.0.1:7400, shared with --http).
    #[arg(long, value_parser = socket_addr)]
    listen: Option<SocketAddr>,
    /// Address of /metrics, /health and /v1/status, IP:PORT (default: the port after
    /// --listen's, or the next free one).
    #[arg(long, value_parser = socket_addr)]
    http: Option<SocketAddr>,
}

/// Parses an address the way the configuration holds it, saying what is expected.
fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("expected IP:PORT, such as 127.0.0.1:7400 or 0.0.0.0:7400 (a host name is not accepted), not {text:?}")
    })
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let sqlite = match &args.sqlite {
        Some(path) => Some(resolve_sqlite(path, &args.dir)?),
        None => None,
    };
    let store = match (&sqlite, &args.postgres, &args.mysql) {
        (Some(db), _, _) => StoreChoice::Sqlite(db),
        (_, Some(url), _) => StoreChoice::Postgres(url),
        (_, _, Some(url)) => StoreChoice::Mysql(url),
        _ => StoreChoice::Relay,
    };
    if args.dir.join(concord_node::NodeConfig::FILE).exists() {
        anyhow::bail!(
            "{} already holds a node configuration; remove it or choose another directory",
            args.dir.display()
        );
    }
    concord_node::check_store(store, &args.tables).with_context(|| {
        format!(
            "nothing was written to {}; fix this and run init again",
            args.dir.display()
        )
    })?;
    let (listen, http) = addresses(args.listen, args.http)?;
    let name = args
        .name
        .clone()
        .or_else(|| {
            args.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "node".into());
    let fingerprint = concord_node::init(
        &args.dir,
        &name,
        store,
        &args.tables,
        &listen.to_string(),
        &http.to_string(),
    )
    .with_context(|| format!("initializing {}", args.dir.display()))?;
    let mut out = output::stdout();
    writeln!(out, "created node {name:?} in {}", args.dir.display())?;
    if let Some(db) = &sqlite {
        writeln!(out, "database: {db} (tables {})", args.tables.join(", "))?;
    }
    writeln!(
        out,
        "peers connect to {listen}; status at http://{http}/v1/status"
    )?;
    writeln!(out, "fingerprint: {fingerprint}")?;
    if sqlite.is_some() {
        writeln!(out, "{}", super::track::BUSY_TIMEOUT_NOTE)?;
    }
    writeln!(
        out,
        "next: add peers to {}/concord.toml, then `concord serve --dir {}`",
        args.dir.display(),
        args.dir.display()
    )?;
    out.flush()?;
    Ok(())
}

/// The SQLite file's absolute path. A relative path is taken from the current
/// directory, where the user typed it (the configuration would otherwise read it
/// relative to the data directory, and `serve` would not find the file). Only when no
/// file is there but one is at that path inside the data directory (a database kept
/// with the node, as scripts made before this rule do) is that one meant.
fn resolve_sqlite(path: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<String> {
    let here =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let chosen = if path.is_relative() && !here.exists() && dir.join(path).is_file() {
        std::path::absolute(dir.join(path))
            .with_context(|| format!("resolving {}", dir.join(path).display()))?
    } else {
        here
    };
    Ok(chosen.to_string_lossy().into_owned())
}

/// The addresses to write: those given, and for those not given the first free ports
/// from 7400 on the same IP (a pair when neither is given), so that several nodes
/// initialized on one machine do not all claim the same port.
fn addresses(
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    const FIRST: u16 = 7400;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let free = |ip: IpAddr, port: u16| TcpListener::bind((ip, port)).is_ok();
    match (listen, http) {
        (Some(l), Some(h)) => Ok((l, h)),
        (Some(l), None) => {
            let port = (l.port().saturating_add(1)..u16::MAX)
                .chain(FIRST..l.port())
                .find(|&p| p != l.port() && free(loopback, p))
                .context("no free port for --http; give one")?;
            Ok((l, SocketAddr::new(loopback, port)))
        }
        (None, Some(h)) => {
            let port = (FIRST..u16::MAX)
                .find(|&p| p != h.port() && free(h.ip(), p))
                .context("no free port for --listen; give one")?;
            Ok((SocketAddr::new(h.ip(), port), h))
        }
        (None, None) => {
            let port = (FIRST..u16::MAX - 1)
                .step_by(2)
                .find(|&p| free(loopback, p) && free(loopback, p + 1))
                .context("no free pair of ports for --listen and --http; give them")?;
            Ok((
                SocketAddr::new(loopback, port),
                SocketAddr::new(loopback, port + 1),
            ))
        }
    }
}
