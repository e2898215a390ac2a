#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Floats between PostgreSQL and SQLite, against a real server: exactly or visibly not.
//!
//! Risks covered:
//! - a SQLite `REAL` such as `2.25` bound for a `numeric(10,2)` column is refused though
//!   the column holds that number exactly, or is written as the float's binary expansion
//!   instead of the shortest decimal that reads back as the same float; one the column
//!   would round (`0.125`) or overflow (`1e20`) is written changed, or sets aside more
//!   than its own source transaction.

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
}
