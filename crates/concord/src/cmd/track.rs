//! `concord track`: install capture on tables of a SQLite file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concord_sqlite::{SqliteStore, StoreOptions};

use crate::output;

/// What every program writing a tracked SQLite file needs, said wherever capture is
/// set up: capture takes the file's write lock briefly, and a client without a busy
/// timeout fails at once with `database is locked` (the `sqlite3` shell then skips the
/// rest of its input).
pub(crate) const BUSY_TIMEOUT_NOTE: &str = "note: other programs writing this file should set a busy timeout, or they may fail with `database is locked` while Concord captures (sqlite3: `.timeout 5000`; most drivers have an option)";

/// Start capturing every write to TABLEs of the SQLite file DB.
///
/// Installs triggers and Concord's metadata tables (all named `__concord_*`) in the
/// file itself. Writes by any program are captured from then on; rows already in the
/// table are queued so other replicas receive them. Each table needs a primary key;
/// every problem with the tables is reported at once, and nothing is installed then.
/// Tracking a table again refreshes its capture (after ALTER TABLE, say). Programs
/// writing the file should set a busy timeout (sqlite3: `.timeout 5000`).
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
    let _held = super::hold_file(&args.db, "concord track")?;
    let store = SqliteStore::track(&args.db, &tables, StoreOptions::default())
        .with_context(|| format!("tracking {}; nothing was installed", args.db.display()))?;
    let mut out = output::stdout();
    writeln!(
        out,
        "{}: tracking {} (node {})",
        args.db.display(),
        tables.join(", "),
        store.node_id()
    )?;
    writeln!(out, "{BUSY_TIMEOUT_NOTE}")?;
    out.flush()?;
    Ok(())
}
