//! `concord info`: what Concord knows about one SQLite file.

use std::path::PathBuf;

use anyhow::Context;
use concord_sqlite::SqliteStore;

/// Show a tracked file's node id, tracked tables, version vector, change-log size,
/// writes waiting to be captured, and the number of recorded conflicts.
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
    let tables: Vec<String> = store.tables().iter().map(|t| t.name.clone()).collect();
    let vv: Vec<(String, u64)> = store
        .version_vector()
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
    let log = store.log_len()?;
    let pending = store.pending_len()?;
    let conflicts = store.conflicts()?.len();
    if args.json {
        let value = serde_json::json!({
            "db": args.db.display().to_string(),
            "node_id": store.node_id().to_string(),
            "tables": tables,
            "version_vector": vv.iter().map(|(n, s)| serde_json::json!({"origin": n, "seq": s})).collect::<Vec<_>>(),
            "log_entries": log,
            "pending_writes": pending,
            "conflicts": conflicts,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("database:       {}", args.db.display());
    println!("node:           {}", store.node_id());
    println!("tables:         {}", tables.join(", "));
    println!("log entries:    {log}");
    println!("pending writes: {pending}");
    println!("conflicts:      {conflicts}");
    let mut rows = vec![vec!["ORIGIN".to_owned(), "HELD UP TO".to_owned()]];
    rows.extend(vv.into_iter().map(|(n, s)| vec![n, s.to_string()]));
    print!("{}", table(&rows));
    Ok(())
}

/// Renders rows as left-aligned columns; the first row is the header.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
