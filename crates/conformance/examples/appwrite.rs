//! What capture costs the application: its own writes on a tracked table ÷ the same
//! writes on an untracked one, side by side in one run, for every store and capture
//! method (issue 11).
//!
//! ```text
//! cargo run --release -p concord-conformance --example appwrite -- [--rows N] [--repeat R]
//!     [--stores sqlite,postgres,mariadb]
//! ```
//!
//! Each store gets a fresh database with two identical tables, `plain` (untracked) and
//! `tracked`; only `tracked` is tracked, once with log-based capture (PostgreSQL's
//! write-ahead log, MariaDB's binary log) and once, in another database, with the
//! trigger fallback (SQLite has triggers only). A round writes to both tables, in
//! alternating order: N inserts in one transaction, then an update of one column of
//! all N rows in one transaction. Timed is the application's statement(s) and COMMIT,
//! through its own connection, nothing of Concord's (its capture runs later, or on its
//! own connection). Each figure is the median of R rounds (default 3), rows deleted
//! between rounds.
//!
//! How the application writes: PostgreSQL `INSERT ... SELECT generate_series` and one
//! `UPDATE`; MariaDB multi-row `INSERT`s of 1,000 rows and one `UPDATE`; SQLite one
//! prepared `INSERT` per row (what most applications do, and the floor a per-row
//! trigger sets) and one `UPDATE`. Servers from `CONCORD_TEST_POSTGRES_URL` and
//! `CONCORD_TEST_MYSQL_URL`; databases named `concord_appw_<pid>_*`, dropped at the end.
//! MariaDB's trigger fallback is measured on at most 2,000 rows (it takes minutes
//! beyond), and the line says how many.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use concord_harness::servers::{drop_postgres_database, with_database};
use concord_mysql::MyStore;
use concord_postgres::PgStore;
use concord_sqlite::SqliteStore;
use concord_store::{CaptureMethod, Store as _, StoreOptions};
use mysql::prelude::Queryable;

fn arg(name: &str, default: &str) -> String {
    let words: Vec<String> = std::env::args().collect();
    words
        .iter()
        .position(|w| w == name)
        .and_then(|i| words.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// An application's connection to one of the stores.
enum App {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
    Mariadb(mysql::Conn),
}

impl App {
    fn batch(&mut self, sql: &str) {
        match self {
            App::Sqlite(c) => c.execute_batch(sql).unwrap(),
            App::Postgres(c) => c.batch_execute(sql).unwrap(),
            App::Mariadb(c) => c.query_drop(sql).unwrap(),
        }
    }

    /// Seconds to insert `rows` rows into `table` in one transaction.
    fn insert(&mut self, table: &str, rows: i64) -> f64 {
        let started = Instant::now();
        match self {
            App::Sqlite(c) => {
                let txn = c.transaction().unwrap();
                {
                    let mut stmt = txn
                        .prepare(&format!("INSERT INTO {table} VALUES (?1, ?2, ?3)"))
                        .unwrap();
                    for i in 1..=rows {
                        stmt.execute(rusqlite::params![i, format!("name {i}"), i])
                            .unwrap();
                    }
                }
                txn.commit().unwrap();
            }
            App::Postgres(c) => c
                .batch_execute(&format!(
                    "INSERT INTO {table} SELECT i, 'name ' || i, i FROM generate_series(1, {rows}) i"
                ))
                .unwrap(),
            App::Mariadb(c) => {
                c.query_drop("START TRANSACTION").unwrap();
                let mut first = 1;
                while first <= rows {
                    let last = (first + 999).min(rows);
                    let values: Vec<String> = (first..=last)
                        .map(|i| format!("({i}, 'name {i}', {i})"))
                        .collect();
                    c.query_drop(format!("INSERT INTO {table} VALUES {}", values.join(",")))
                        .unwrap();
                    first = last + 1;
                }
                c.query_drop("COMMIT").unwrap();
            }
        }
        started.elapsed().as_secs_f64()
    }

    /// Seconds to update one column of every row of `table` in one transaction.
    fn update(&mut self, table: &str) -> f64 {
        let started = Instant::now();
        self.batch(&format!("UPDATE {table} SET qty = qty + 1"));
        started.elapsed().as_secs_f64()
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One store and capture method: its application connection and the tracked store
/// (kept open so a log reader runs, as under a node).
struct Subject {
    name: String,
    app: App,
    _store: Box<dyn concord_store::Store>,
}

fn measure(subject: &mut Subject, rows: i64, repeat: usize) {
    let (mut ins, mut upd) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for round in 0..repeat {
        let order = if round % 2 == 0 {
            ["plain", "tracked"]
        } else {
            ["tracked", "plain"]
        };
        for table in order {
            let i = subject.app.insert(table, rows);
            let u = subject.app.update(table);
            if table == "plain" {
                ins.0.push(i);
                upd.0.push(u);
            } else {
                ins.1.push(i);
                upd.1.push(u);
            }
        }
        for table in order {
            subject.app.batch(&format!("DELETE FROM {table}"));
        }
        // Let the store fold what it captured, so the next round starts level.
        let _ = subject._store.capture();
    }
    let (i0, i1, u0, u1) = (median(ins.0), median(ins.1), median(upd.0), median(upd.1));
    println!(
        "{:<22} insert {rows} rows: untracked {i0:7.3} s  tracked {i1:7.3} s  ratio {:5.2}x | update: untracked {u0:7.3} s  tracked {u1:7.3} s  ratio {:5.2}x",
        subject.name,
        i1 / i0,
        u1 / u0
    );
}

const DDL_SQLITE: &str = "CREATE TABLE plain(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
                          CREATE TABLE tracked(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);";
const DDL_PG: &str = "CREATE TABLE plain(id bigint PRIMARY KEY, name text, qty bigint);
                      CREATE TABLE tracked(id bigint PRIMARY KEY, name text, qty bigint);";
const DDL_MY: &str = "CREATE TABLE plain(id BIGINT PRIMARY KEY, name VARCHAR(64), qty BIGINT);
                      CREATE TABLE tracked(id BIGINT PRIMARY KEY, name VARCHAR(64), qty BIGINT);";

fn options(capture: CaptureMethod) -> StoreOptions {
    StoreOptions {
        capture,
        ..StoreOptions::default()
    }
}

fn main() {
    let rows: i64 = arg("--rows", "100000").parse().expect("--rows N");
    let repeat: usize = arg("--repeat", "3").parse().expect("--repeat R");
    let stores = arg("--stores", "sqlite,postgres,mariadb");
    let tag = format!("concord_appw_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    println!("# appwrite: the application's own writes, tracked ÷ untracked, median of {repeat}");
    let methods = [
        ("log", CaptureMethod::Log),
        ("triggers", CaptureMethod::Triggers),
    ];
    let mut pg_dbs = Vec::new();
    let mut my_dbs = Vec::new();
    for store in stores.split(',') {
        match store {
            "sqlite" => {
                let path = dir.path().join("app.db");
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.execute_batch(DDL_SQLITE).unwrap();
                conn.pragma_update(None, "journal_mode", "wal").unwrap();
                let tracked =
                    SqliteStore::track(&path, &["tracked"], StoreOptions::default()).unwrap();
                measure(
                    &mut Subject {
                        name: "sqlite (triggers)".into(),
                        app: App::Sqlite(conn),
                        _store: Box::new(tracked),
                    },
                    rows,
                    repeat,
                );
            }
            "postgres" => {
                let server = std::env::var("CONCORD_TEST_POSTGRES_URL")
                    .expect("set CONCORD_TEST_POSTGRES_URL");
                for (label, method) in methods {
                    let db = format!("{tag}_pg_{label}");
                    let mut admin = postgres::Client::connect(&server, postgres::NoTls).unwrap();
                    admin
                        .batch_execute(&format!("CREATE DATABASE {db}"))
                        .unwrap();
                    pg_dbs.push(db.clone());
                    let url = with_database(&server, &db);
                    let mut app = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                    app.batch_execute(DDL_PG).unwrap();
                    let mut store = PgStore::track(&url, &["tracked"], options(method)).unwrap();
                    let name = format!("postgres ({})", store.capture_state().method);
                    measure(
                        &mut Subject {
                            name,
                            app: App::Postgres(app),
                            _store: Box::new(store),
                        },
                        rows,
                        repeat,
                    );
                }
            }
            "mariadb" => {
                let server =
                    std::env::var("CONCORD_TEST_MYSQL_URL").expect("set CONCORD_TEST_MYSQL_URL");
                for (label, method) in methods {
                    let db = format!("{tag}_my_{label}");
                    let mut admin =
                        mysql::Conn::new(mysql::Opts::from_url(&server).unwrap()).unwrap();
                    admin.query_drop(format!("CREATE DATABASE {db}")).unwrap();
                    my_dbs.push(db.clone());
                    let url = with_database(&server, &db);
                    let mut app = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
                    app.query_drop(DDL_MY).unwrap();
                    let mut store = MyStore::track(&url, &["tracked"], options(method)).unwrap();
                    let name = format!("mariadb ({})", store.capture_state().method);
                    // The trigger fallback writes a system-versioned pending row per
                    // row, and an update of every row is slow enough to dominate the
                    // whole run: measured on at most 2,000 rows (10,000 wrote gigabytes of
                    // binary log).
                    let rows = if method == CaptureMethod::Triggers {
                        rows.min(2_000)
                    } else {
                        rows
                    };
                    measure(
                        &mut Subject {
                            name,
                            app: App::Mariadb(app),
                            _store: Box::new(store),
                        },
                        rows,
                        repeat,
                    );
                }
            }
            other => panic!("unknown store {other}: sqlite, postgres or mariadb"),
        }
    }
    if let Ok(server) = std::env::var("CONCORD_TEST_POSTGRES_URL") {
        for db in &pg_dbs {
            drop_postgres_database(&server, db);
        }
    }
    if let Ok(server) = std::env::var("CONCORD_TEST_MYSQL_URL")
        && !my_dbs.is_empty()
    {
        let mut admin = mysql::Conn::new(mysql::Opts::from_url(&server).unwrap()).unwrap();
        for db in &my_dbs {
            admin
                .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
                .unwrap();
        }
    }
}
