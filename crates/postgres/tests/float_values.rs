#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Floats between PostgreSQL and SQLite, against a real server: exactly or visibly not.
//!
//! Risks covered:
//! - a SQLite `REAL` such as `2.25` bound for a `numeric(10,2)` column is refused though
//!   the column holds that number exactly, or is written as the float's binary expansion
//!   instead of the shortest decimal that reads back as the same float; one the column
//!   would round (`0.125`) or overflow (`1e20`) is written changed, or sets aside more
//!   than its own source transaction;
//! - a `double precision` NaN arrives in SQLite as NULL (SQLite cannot store a NaN)
//!   instead of being set aside with its source transaction, naming column and value;
//! - `Infinity` and `-Infinity`, which SQLite's `REAL` holds, are refused or changed.

mod common;

use common::TestDb;
use concord_postgres::{PgStore, pull};
use concord_sqlite::SqliteStore;

fn sqlite_file(dir: &tempfile::TempDir, ddl: &str) -> (std::path::PathBuf, rusqlite::Connection) {
    let path = dir.path().join("lite.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(ddl).unwrap();
    (path, conn)
}

concord_harness::server_tests! {
    fn a_sqlite_real_goes_into_a_postgres_numeric_as_its_shortest_decimal_or_is_set_aside(server: postgres) {
        let dir = tempfile::tempdir().unwrap();
        let (path, lite) = sqlite_file(&dir, "CREATE TABLE accounts(id INTEGER PRIMARY KEY, bal REAL)");
        let db = TestDb::new(server, "CREATE TABLE accounts(id bigint PRIMARY KEY, bal numeric(10,2));");
        let mut source = SqliteStore::track(&path, &["accounts"], Default::default()).unwrap();
        let mut sink = PgStore::track(&db.url, &["accounts"], Default::default()).unwrap();
        // One source transaction per capture.
        for sql in [
            "INSERT INTO accounts VALUES (1, 2.25); INSERT INTO accounts VALUES (2, 0.1)",
            "INSERT INTO accounts VALUES (3, 0.125)",
            "INSERT INTO accounts VALUES (4, 1e20)",
            "INSERT INTO accounts VALUES (5, -7.5)",
        ] {
            lite.execute_batch(sql).unwrap();
            concord_sqlite::Store::capture(&mut source).unwrap();
        }
        let report = pull(&mut source, &mut sink).unwrap();
        assert_eq!((report.applied, report.set_aside), (3, 2), "{report:?}");
        assert_eq!(
            db.dump("accounts", "id"),
            [
                r#"{"id": 1, "bal": 2.25}"#,
                r#"{"id": 2, "bal": 0.10}"#,
                r#"{"id": 5, "bal": -7.50}"#,
            ]
        );
        let failures = sink.failures().unwrap();
        assert_eq!(failures.len(), 2, "{failures:?}");
        for (failure, value) in failures.iter().zip(["0.125", "100000000000000000000"]) {
            for needle in ["\"bal\"", "numeric(10,2)", value] {
                assert!(failure.error.contains(needle), "{needle} in {}", failure.error);
            }
        }
    }

    fn a_postgres_nan_is_set_aside_by_sqlite_and_infinities_arrive_exactly(server: postgres) {
        let db = TestDb::new(server, "CREATE TABLE readings(id bigint PRIMARY KEY, r double precision);");
        let dir = tempfile::tempdir().unwrap();
        let (path, lite) = sqlite_file(&dir, "CREATE TABLE readings(id INTEGER PRIMARY KEY, r REAL)");
        let mut pg = PgStore::track(&db.url, &["readings"], Default::default()).unwrap();
        let mut sqlite = SqliteStore::track(&path, &["readings"], Default::default()).unwrap();
        // Each statement its own source transaction.
        for sql in [
            "INSERT INTO readings VALUES (1, 'NaN')",
            "INSERT INTO readings VALUES (2, 'Infinity')",
            "INSERT INTO readings VALUES (3, '-Infinity')",
            "INSERT INTO readings VALUES (4, 1.5)",
        ] {
            db.psql(sql);
        }
        let report = pull(&mut pg, &mut sqlite).unwrap();
        assert_eq!((report.applied, report.set_aside), (3, 1), "{report:?}");
        let rows: Vec<(i64, Option<f64>)> = lite
            .prepare("SELECT id, r FROM readings ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [(2, Some(f64::INFINITY)), (3, Some(f64::NEG_INFINITY)), (4, Some(1.5))],
            "the NaN is not stored as NULL, the infinities are kept"
        );
        let failures = sqlite.failures().unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        for needle in ["\"r\"", "NaN"] {
            assert!(failures[0].error.contains(needle), "{needle} in {}", failures[0].error);
        }

        // The same through a snapshot of PostgreSQL's rows (catch-up past retention).
        let other = dir.path().join("snapshot.db");
        rusqlite::Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE readings(id INTEGER PRIMARY KEY, r REAL)")
            .unwrap();
        let mut fresh = SqliteStore::track(&other, &["readings"], Default::default()).unwrap();
        let snap = concord_store::pull_snapshot(&mut pg, &mut fresh).unwrap();
        assert_eq!(snap.set_aside, 1, "{snap:?}");
        let nulls: i64 = rusqlite::Connection::open(&other)
            .unwrap()
            .query_row("SELECT count(*) FROM readings WHERE r IS NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(nulls, 0, "the snapshot's NaN is not stored as NULL");

        // SQLite's own write of an infinity reaches PostgreSQL exactly.
        lite.execute_batch("INSERT INTO readings VALUES (5, -9e999)").unwrap();
        let back = pull(&mut sqlite, &mut pg).unwrap();
        assert_eq!((back.applied, back.set_aside), (1, 0), "{back:?}");
        let pg_rows: Vec<String> = db
            .client()
            .query("SELECT id || ' ' || r::text FROM readings ORDER BY id", &[])
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(pg_rows, ["1 NaN", "2 Infinity", "3 -Infinity", "4 1.5", "5 -Infinity"]);
    }
}
