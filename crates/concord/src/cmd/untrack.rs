//! `concord untrack`: remove capture.

use std::path::PathBuf;

use std::io::Write;

use anyhow::Context;
use concord_sqlite::SqliteStore;

/// Stop capturing writes to TABLEs of DB; with no TABLE, remove every trace of Concord.
///
/// Without tables (or once no tracked table remains) every trigger and metadata table
/// Concord added is dropped, leaving the file as it was before `track`. The user's own
/// tables and rows are never touched.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The SQLite database file.
    db: PathBuf,
    /// Tables to untrack; all of Concord if none.
    tables: Vec<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut out = crate::output::stdout();
    let tables: Vec<&str> = args.tables.iter().map(String::as_str).collect();
    // A node serving the file holds it: untracking under it would leave it failing.
    let _held = super::hold_file(&args.db, "concord untrack")?;
    SqliteStore::untrack(&args.db, &tables)
        .with_context(|| format!("untracking {}", args.db.display()))?;
    if tables.is_empty() {
        writeln!(out, "{}: Concord removed", args.db.display())?;
    } else {
        writeln!(
            out,
            "{}: stopped tracking {}",
            args.db.display(),
            tables.join(", ")
        )?;
    }
    out.flush()?;
    Ok(())
}
