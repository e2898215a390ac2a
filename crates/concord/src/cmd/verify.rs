//! `concord verify`: which rows two SQLite files, or a running node and its peer, hold
//! differently.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use concord_core::PrimaryKey;
use concord_core::reconcile::{LocalRun, Reconciler};
use concord_sqlite::TableDigest;

use crate::output;

/// List every row that differs between two copies of a table.
///
/// For when in doubt: after restoring a backup, after writes made while capture was off,
/// or to check that two replicas agree. Two forms: `concord verify FIRST.db SECOND.db`
/// compares two SQLite files (read only); `concord verify --dir DIR --peer NAME`
/// compares a running node's database with one of its peers'.
///
/// Each table (with a primary key) is compared by range-based reconciliation:
/// fingerprints of key ranges narrow the search to the rows that differ, so the cost
/// grows with the number of differences, not the table's size; the messages and bytes
/// it took are reported. Rows are compared by value (every column, by name). With
/// --dir, the node (`concord serve --dir DIR`, asked over its HTTP address) compares
/// over its live session with the peer, each side reading its own database in one
/// consistent read; nothing is written. Exits 0 when every table agrees, 1 when some
/// row differs.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The first SQLite file.
    #[arg(required_unless_present = "dir", conflicts_with_all = ["dir", "peer"])]
    first: Option<PathBuf>,
    /// The second SQLite file.
    #[arg(required_unless_present = "dir")]
    second: Option<PathBuf>,
    /// A running node's data directory: compare its database with a peer's.
    #[arg(long, requires = "peer")]
    dir: Option<PathBuf>,
    /// The peer to compare with (its name in the node's [[peers]]).
    #[arg(long, requires = "dir")]
    peer: Option<String>,
    /// A table to compare (repeatable; default: every table with a primary key that
    /// both files hold, or every tracked table of the node).
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the command; returns whether every table agrees.
pub(crate) fn run(args: Args) -> anyhow::Result<bool> {
    match (&args.dir, &args.peer, &args.first, &args.second) {
        (Some(dir), Some(peer), _, _) => with_peer(dir, peer, &args.tables, args.json),
        (_, _, Some(first), Some(second)) => files(first, second, &args.tables, args.json),
        _ => anyhow::bail!("give two SQLite files, or --dir DIR --peer NAME"),
    }
}

/// Asks the running node in `dir` to compare with `peer` (`/v1/verify`).
fn with_peer(dir: &Path, peer: &str, tables: &[String], json: bool) -> anyhow::Result<bool> {
    let config = concord_node::NodeConfig::load(dir)?;
    let http = config
        .node
        .http
        .context("the node has no `http` address in its [node] section")?;
    let url = format!("http://{http}/v1/verify");
    let mut request = ureq::get(&url).query("peer", peer);
    if !tables.is_empty() {
        request = request.query("tables", tables.join(","));
    }
    let mut response = request
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .with_context(|| {
            format!(
                "asking {url} (is `concord serve --dir {}` running?)",
                dir.display()
            )
        })?;
    if !response.status().is_success() {
        let body: serde_json::Value = response
            .body_mut()
            .read_json()
            .unwrap_or_else(|_| serde_json::json!({"error": "no reason given"}));
        anyhow::bail!(
            "{}",
            body.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("the node could not compare")
        );
    }
    let report: concord_node::VerifyReport = response
        .body_mut()
        .read_json()
        .context("reading the node's verify report")?;
    let agree = report.tables.iter().all(|t| t.differences.is_empty());
    let mut out = output::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for table in &report.tables {
            writeln!(
                out,
                "{}: {} differ from peer {} (found in {} message{}, {} bytes)",
                table.table,
                table.differences.len(),
                report.peer,
                table.messages,
                if table.messages == 1 { "" } else { "s" },
                table.bytes
            )?;
            if !table.differences.is_empty() {
                let mut rows = vec![vec!["KEY".to_owned(), "DIFFERENCE".to_owned()]];
                rows.extend(table.differences.iter().map(|d| {
                    let what = match (d.here, d.there) {
                        (true, false) => "only on this node".to_owned(),
                        (false, true) => format!("only on {}", report.peer),
                        _ => "values differ".to_owned(),
                    };
                    vec![d.key.clone(), what]
                }));
                out.write_all(output::table(&rows).as_bytes())?;
            }
        }
    }
    out.flush()?;
    Ok(agree)
}

/// Compares two SQLite files in this process.
fn files(first: &Path, second: &Path, tables: &[String], json: bool) -> anyhow::Result<bool> {
    let args = FilePair {
        first: first.to_path_buf(),
        second: second.to_path_buf(),
        json,
    };
    let tables = if !tables.is_empty() {
        tables.to_vec()
    } else {
        common_tables(&args)?
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

/// The two files compared, and how to print.
struct FilePair {
    first: PathBuf,
    second: PathBuf,
    json: bool,
}

/// Tables with a primary key in both files, Concord's own left out.
fn common_tables(args: &FilePair) -> anyhow::Result<Vec<String>> {
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
