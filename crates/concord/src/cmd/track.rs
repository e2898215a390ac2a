//! `concord track`: install capture on tables of a SQLite file.

use std::path::PathBuf;

use anyhow::Context;
use concord_sqlite::{SqliteStore, StoreOptions};

/// Start capturing every write to TABLEs of the SQLite file DB.
///
/// Installs triggers and Concord's metadata tables (all named `__concord_*`) in the
/// file itself. Writes by any program are captured from then on; rows already in the
/// table are queued so other replicas receive them. Each table needs a primary key.
/// Tracking a table again refreshes its capture (after ALTER TABLE, say).
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The SQLite database file.
    db: PathBuf,
    /// Tables to track.
    #[arg(required = true)]
    tables: Vec<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let tables: Vec<&str> = args.tables.iter().map(String::as_str).collect();
    let store = SqliteStore::track(&args.db, &tables, StoreOptions::default())
        .with_context(|| format!("tracking {}", args.db.display()))?;
    println!(
        "{}: tracking {} (node {})",
        args.db.display(),
        tables.join(", "),
        store.node_id()
    );
    Ok(())
}
