//! `concord init`: create a node's data directory.

use std::path::PathBuf;

use anyhow::Context;
use concord_node::StoreChoice;

/// Create a node: a commented concord.toml and a new identity (key pair and TLS
/// certificate) in DIR.
///
/// Prints the node's fingerprint; give it to each peer's `[[peers]]` entry, and put
/// theirs in this node's concord.toml. Then run `concord serve --dir DIR`.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("store").required(true).multiple(false))]
pub(crate) struct Args {
    /// The data directory to create.
    #[arg(long)]
    dir: PathBuf,
    /// A name for logs and status (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// The SQLite file this node keeps in sync.
    #[arg(long, group = "store")]
    sqlite: Option<String>,
    /// The PostgreSQL database this node keeps in sync, as a URL
    /// (postgres://user:password@host:5432/database).
    #[arg(long, group = "store")]
    postgres: Option<String>,
    /// The MySQL/MariaDB database this node keeps in sync, as a URL
    /// (mysql://user:password@host:3306/database).
    #[arg(long, group = "store")]
    mysql: Option<String>,
    /// Tables of the database to track (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// A hub or relay node: no user database, only Concord's own store.
    #[arg(long, group = "store")]
    relay: bool,
    /// Address peers connect to.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Address of /metrics, /health and /v1/status.
    #[arg(long, default_value = "127.0.0.1:7401")]
    http: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let store = match (&args.sqlite, &args.postgres, &args.mysql) {
        (Some(db), _, _) => StoreChoice::Sqlite(db),
        (_, Some(url), _) => StoreChoice::Postgres(url),
        (_, _, Some(url)) => StoreChoice::Mysql(url),
        _ => StoreChoice::Relay,
    };
    match store {
        StoreChoice::Relay if !args.tables.is_empty() => {
            anyhow::bail!("--relay keeps no user tables; leave out --tables")
        }
        StoreChoice::Relay => {}
        _ if args.tables.is_empty() => {
            anyhow::bail!("--tables must name at least one table to track")
        }
        _ => {}
    }
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
        &args.listen,
        &args.http,
    )
    .with_context(|| format!("initializing {}", args.dir.display()))?;
    println!("created node {name:?} in {}", args.dir.display());
    println!("fingerprint: {fingerprint}");
    println!(
        "next: add peers to {}/concord.toml, then `concord serve --dir {}`",
        args.dir.display(),
        args.dir.display()
    );
    Ok(())
}
