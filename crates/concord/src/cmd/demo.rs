//! `concord demo`: a guided run on two embedded SQLite files.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use concord_sqlite::{SqliteStore, StoreOptions, merge_all};
use rusqlite::Connection;

/// Show Concord keeping two SQLite files in sync, in a temporary folder.
///
/// Two "stores" write customer records through ordinary SQLite connections (no Concord
/// code involved in the writes), Concord merges them both ways, then both edit the same
/// field at once and the conflict is resolved and listed. Exits non-zero if the files do
/// not end identical.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Keep the files in this folder instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SCHEMA: &str = "CREATE TABLE customers(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    balance NUMERIC NOT NULL DEFAULT 0
)";

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = args.dir.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let shop = dir.join("shop.db");
    let office = dir.join("office.db");
    println!("Concord demo in {}\n", dir.display());

    step("1. Two SQLite files with the same table; the shop already has customers.");
    for path in [&shop, &office] {
        let _ = std::fs::remove_file(path);
        Connection::open(path)?.execute_batch(SCHEMA)?;
    }
    app(&shop)?.execute_batch(
        "INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.org', 120.50);
         INSERT INTO customers VALUES (2, 'Alan Turing', 'alan@example.org', 80);",
    )?;

    step("2. `concord track` both files: triggers capture every write from any program.");
    for path in [&shop, &office] {
        let store = SqliteStore::track(path, &["customers"], StoreOptions::default())?;
        println!("   {} is node {}", name(path), store.node_id().short());
    }

    step("3. Each side writes through its own ordinary SQLite connection.");
    app(&shop)?.execute(
        "INSERT INTO customers VALUES (3, 'Grace Hopper', 'grace@example.org', 0)",
        [],
    )?;
    app(&office)?.execute_batch(
        "BEGIN;
         INSERT INTO customers VALUES (10, 'Edsger Dijkstra', 'ewd@example.org', 42);
         INSERT INTO customers VALUES (11, 'Barbara Liskov', 'liskov@example.org', 7);
         COMMIT;",
    )?;
    show(&shop)?;
    show(&office)?;

    step("4. `concord merge`: each file receives exactly what it lacks.");
    merge(&shop, &office)?;
    show(&shop)?;
    same(&shop, &office)?;

    step(
        "5. Both edit customer 1's email at once, and the office deletes customer 2 while the shop updates it.",
    );
    app(&shop)?.execute(
        "UPDATE customers SET email = 'ada@shop.example' WHERE id = 1",
        [],
    )?;
    app(&shop)?.execute("UPDATE customers SET balance = 99 WHERE id = 2", [])?;
    std::thread::sleep(std::time::Duration::from_millis(5));
    app(&office)?.execute(
        "UPDATE customers SET email = 'ada@office.example' WHERE id = 1",
        [],
    )?;
    app(&office)?.execute("DELETE FROM customers WHERE id = 2", [])?;
    merge(&shop, &office)?;
    println!("   The later write wins the email; the delete wins over the concurrent update:");
    show(&shop)?;
    same(&shop, &office)?;

    step("6. Nothing vanished silently: the conflicts are recorded (`concord conflicts`).");
    let mut conflicts = SqliteStore::open(&shop)?.conflicts()?;
    conflicts.extend(SqliteStore::open(&office)?.conflicts()?);
    if conflicts.is_empty() {
        bail!("the concurrent edits were not recorded as conflicts");
    }
    print!("{}", indent(&super::conflicts::render(&conflicts)));

    println!("\nThe two files are identical. Done.");
    Ok(())
}

fn step(text: &str) {
    println!("\n{text}");
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A connection like any application's: plain rusqlite, no Concord code.
fn app(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn merge(a: &Path, b: &Path) -> anyhow::Result<()> {
    let mut stores = vec![SqliteStore::open(a)?, SqliteStore::open(b)?];
    let reports = merge_all(&mut stores).context("merging")?;
    for (path, r) in [a, b].iter().zip(reports) {
        println!(
            "   {}: applied {} changes, {} conflicts",
            name(path),
            r.applied,
            r.conflicts
        );
    }
    Ok(())
}

fn rows(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let conn = app(path)?;
    let mut stmt =
        conn.prepare("SELECT id, name, coalesce(email, ''), balance FROM customers ORDER BY id")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(vec![
                r.get::<_, i64>(0)?.to_string(),
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, rusqlite::types::Value>(3).map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    other => format!("{other:?}"),
                })?,
            ])
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn show(path: &Path) -> anyhow::Result<()> {
    let mut table = vec![
        ["ID", "NAME", "EMAIL", "BALANCE"]
            .map(String::from)
            .to_vec(),
    ];
    table.extend(rows(path)?);
    println!("   {}:", name(path));
    print!("{}", indent(&super::info::table(&table)));
    Ok(())
}

fn same(a: &Path, b: &Path) -> anyhow::Result<()> {
    if rows(a)? != rows(b)? {
        bail!("{} and {} differ after merging", a.display(), b.display());
    }
    println!("   {} and {} are identical.", name(a), name(b));
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     {l}\n")).collect()
}
