//! `concord verify`: which rows two SQLite files hold differently.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use concord_core::PrimaryKey;
use concord_core::reconcile::{LocalRun, Reconciler};
use concord_sqlite::TableDigest;

use crate::output;

/// Compare tables of two SQLite files and list every row that differs.
///
/// For when in doubt: after restoring a backup, after writes made while capture was off,
/// or to check that two replicas agree. Each table (with a primary key) is compared by
/// range-based reconciliation, as two nodes would do over the network: fingerprints of
/// key ranges narrow the search to the rows that differ, so the cost grows with the
/// number of differences, not the table's size; the messages and bytes it would take
/// are reported. Rows are compared by value (every column, by name), whether or not the
/// files are tracked, and the files are only read. Exits 0 when every table agrees, 1
/// when some row differs.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The first SQLite file.
    first: PathBuf,
    /// The second SQLite file.
    second: PathBuf,
    /// A table to compare (repeatable; default: every table with a primary key that
    /// both files hold).
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the command; returns whether every table agrees.
pub(crate) fn run(args: Args) -> anyhow::Result<bool> {
    let tables = if args.tables.is_empty() {
        common_tables(&args)?
    } else {
        args.tables.clone()
    };
    let mut out = output::stdout();
    let mut report = Vec::new();
    let mut agree = true;
    for table in &tables {
        let mut first = TableDigest::build(&args.first, table)
            .with_context(|| format!("reading {} of {}", table, args.first.display()))?;
        let mut second = TableDigest::build(&args.second, table)
            .with_context(|| format!("reading {} of {}", table, args.second.display()))?;
        let run = Reconciler::default()
            .run_local(&mut first, &mut second)
            .with_context(|| format!("comparing {table}"))?;
        agree &= run.differences.is_empty();
        let rows = differing_rows(&first, &second, &run)?;
        if args.json {
            report.push(serde_json::json!({
                "table": table,
                "rows": [first.rows(), second.rows()],
                "messages": run.messages,
                "bytes": run.bytes,
                "differences": rows.iter().map(|(key, what)| serde_json::json!({"key": key, "difference": what})).collect::<Vec<_>>(),
            }));
            continue;
        }
        writeln!(
            out,
            "{table}: {} rows in {}, {} in {}; {} differ (found in {} message{}, {} bytes)",
            first.rows(),
            args.first.display(),
            second.rows(),
            args.second.display(),
            rows.len(),
            run.messages,
            if run.messages == 1 { "" } else { "s" },
            run.bytes
        )?;
        if !rows.is_empty() {
            let mut table_rows = vec![vec!["KEY".to_owned(), "DIFFERENCE".to_owned()]];
            table_rows.extend(rows.into_iter().map(|(key, what)| vec![key, what]));
            out.write_all(output::table(&table_rows).as_bytes())?;
        }
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    }
    out.flush()?;
    Ok(agree)
}

/// Tables with a primary key in both files, Concord's own left out.
fn common_tables(args: &Args) -> anyhow::Result<Vec<String>> {
    let names = |path: &PathBuf| -> anyhow::Result<Vec<String>> {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("opening {}", path.display()))?;
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table'
               AND name NOT LIKE '\\_\\_concord\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
               AND EXISTS (SELECT 1 FROM pragma_table_info(sqlite_master.name) WHERE pk > 0)
             ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let second = names(&args.second)?;
    let common: Vec<String> = names(&args.first)?
        .into_iter()
        .filter(|t| second.contains(t))
        .collect();
    anyhow::ensure!(
        !common.is_empty(),
        "{} and {} hold no table with a primary key in common; name one with --table",
        args.first.display(),
        args.second.display()
    );
    Ok(common)
}

/// Each differing key, printed, with what differs: the columns whose values differ, or
/// which file lacks the row.
fn differing_rows(
    first: &TableDigest,
    second: &TableDigest,
    run: &LocalRun,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut rows = Vec::new();
    for difference in &run.differences {
        let key = PrimaryKey::from_bytes_unchecked(difference.key.clone()).to_string();
        let what = match (first.row(&difference.key)?, second.row(&difference.key)?) {
            (Some(_), None) => "only in the first file".to_owned(),
            (None, Some(_)) => "only in the second file".to_owned(),
            (None, None) => "changed while being compared".to_owned(),
            (Some(a), Some(b)) => {
                let changed: Vec<String> = a
                    .iter()
                    .map(|(name, value)| {
                        let other = b.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                        (name, value, other)
                    })
                    .filter(|(_, value, other)| *other != Some(*value))
                    .map(|(name, value, other)| match other {
                        Some(other) => format!("{name}: {value} / {other}"),
                        None => format!("{name}: {value} / (no such column)"),
                    })
                    .collect();
                if changed.is_empty() {
                    "column sets differ".to_owned()
                } else {
                    changed.join("; ")
                }
            }
        };
        rows.push((key, what));
    }
    Ok(rows)
}
