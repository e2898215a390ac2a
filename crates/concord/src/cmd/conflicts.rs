//! `concord conflicts`: list recorded conflicts.

use std::path::PathBuf;

use anyhow::Context;
use concord_sqlite::SqliteStore;

/// List the conflicts recorded in DB: concurrent writes of one column, and updates
/// overridden by a concurrent delete. The merge rules already picked a winner; the list
/// shows both sides so nothing vanishes silently.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The SQLite database file.
    db: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let store =
        SqliteStore::open(&args.db).with_context(|| format!("opening {}", args.db.display()))?;
    let conflicts = store.conflicts()?;
    if args.json {
        let rows: Vec<_> = conflicts
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id, "table": c.table, "key": c.key, "kind": c.kind, "column": c.column,
                    "local_value": c.local_value.to_string(), "local_version": c.local_version,
                    "remote_value": c.remote_value.to_string(), "remote_version": c.remote_version,
                    "winner": c.winner,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print!("{}", render(&conflicts));
    Ok(())
}

/// Renders conflicts as an aligned table.
pub(crate) fn render(conflicts: &[concord_sqlite::ConflictRecord]) -> String {
    if conflicts.is_empty() {
        return "no conflicts\n".into();
    }
    let mut rows = vec![
        ["TABLE", "KEY", "KIND", "COLUMN", "LOCAL", "REMOTE", "KEPT"]
            .map(String::from)
            .to_vec(),
    ];
    for c in conflicts {
        let side = |value: &concord_core::Value, version: &str, kept: bool| {
            if c.kind == "update-vs-delete" {
                format!("{} ({version})", if kept { "delete" } else { "update" })
            } else {
                format!("{value} ({version})")
            }
        };
        rows.push(vec![
            c.table.clone(),
            c.key.clone(),
            c.kind.clone(),
            c.column.clone().unwrap_or_else(|| "-".into()),
            side(&c.local_value, &c.local_version, c.winner == "local"),
            side(&c.remote_value, &c.remote_version, c.winner == "remote"),
            c.winner.clone(),
        ]);
    }
    crate::cmd::info::table(&rows)
}
