//! `concord init`: create a node's data directory.

use std::path::PathBuf;

use anyhow::Context;

/// Create a node: a commented concord.toml and a new identity (key pair and TLS
/// certificate) in DIR.
///
/// Prints the node's fingerprint; give it to each peer's `[[peers]]` entry, and put
/// theirs in this node's concord.toml. Then run `concord serve --dir DIR`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The data directory to create.
    #[arg(long)]
    dir: PathBuf,
    /// A name for logs and status (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// The SQLite file this node keeps in sync.
    #[arg(long, conflicts_with = "relay", required_unless_present = "relay")]
    sqlite: Option<String>,
    /// Tables of the SQLite file to track (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', requires = "sqlite")]
    tables: Vec<String>,
    /// A hub or relay node: no user database, only Concord's own store.
    #[arg(long)]
    relay: bool,
    /// Address peers connect to.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// Address of /metrics, /health and /v1/status.
    #[arg(long, default_value = "127.0.0.1:7401")]
    http: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.sqlite.is_some() && args.tables.is_empty() {
        anyhow::bail!("--sqlite needs --tables naming at least one table to track");
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
        args.sqlite.as_deref(),
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
