//! `concord conflicts`: list recorded conflicts.

use std::io::Write;

use concord_store::ConflictRecord;

use crate::output;

/// List the conflicts recorded in a tracked SQLite file, or in the store of a node
/// (`--dir`, any store kind): concurrent writes of one column, and updates overridden
/// by a concurrent delete. The merge rules already picked a winner; the list shows both
/// sides so nothing vanishes silently. Long values are cut in the table (it says their
/// length); `--json` prints them whole.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: super::target::Target,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut opened = args.target.open()?;
    let conflicts = opened.store.conflicts()?;
    let mut out = output::stdout();
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
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        out.write_all(render(&conflicts).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Renders conflicts as an aligned table.
pub(crate) fn render(conflicts: &[ConflictRecord]) -> String {
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
                // The value is cut before its version is added, so the version stays
                // visible whatever the value's length.
                format!("{} ({version})", output::cell(&value.to_string()))
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
    output::table(&rows)
}
