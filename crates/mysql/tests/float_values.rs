#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Floats from another store written into MariaDB's exact types, against a real server.
//!
//! Risks covered:
//! - a SQLite `REAL` such as `2.25` bound for a `DECIMAL(10,2)` column is refused and
//!   its transaction set aside, though the column holds that number exactly;
//! - a float is written as its binary expansion or rounded by MariaDB instead of as the
//!   shortest decimal that reads back as the same float (`0.1`, not
//!   `0.1000000000000000055511151231257827021181583404541015625` rounded to `0.10`);
//! - a float whose shortest decimal the column would round (`0.125` into two places) or
//!   overflow (`1e20`) is written changed instead of set aside, or sets aside more than
//!   its own source transaction, or is refused without naming column, type and value;
//! - an infinity (SQLite's `REAL` holds one) bound for a `DOUBLE`, which cannot hold it,
//!   is changed instead of set aside with its source transaction, naming the value.

mod common;

use common::TestDb;
use concord_mysql::{MyStore, StoreOptions, pull};
use mysql::prelude::Queryable;

concord_harness::server_tests! {
    fn a_sqlite_real_goes_into_a_mariadb_decimal_as_its_shortest_decimal_or_is_set_aside(base: mysql) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("accounts.db");
        let lite = rusqlite::Connection::open(&file).unwrap();
        lite.execute_batch("CREATE TABLE accounts(id INTEGER PRIMARY KEY, bal REAL)").unwrap();
        let mut source =
            concord_sqlite::SqliteStore::track(&file, &["accounts"], StoreOptions::default()).unwrap();
        let db = TestDb::new(base, &["CREATE TABLE accounts(id INT PRIMARY KEY, bal DECIMAL(10,2))"]);
        let mut sink = MyStore::track(&db.url, &["accounts"], StoreOptions::default()).unwrap();

        // One source transaction per capture: SQLite's capture groups what committed
        // between two captures.
        for sql in [
            "INSERT INTO accounts VALUES (1, 2.25); INSERT INTO accounts VALUES (2, 0.1)",
            "INSERT INTO accounts VALUES (3, 0.125)",
            "INSERT INTO accounts VALUES (4, 1e20)",
            "INSERT INTO accounts VALUES (5, -7.5); INSERT INTO accounts VALUES (6, 99999999.99)",
        ] {
            lite.execute_batch(sql).unwrap();
            concord_sqlite::Store::capture(&mut source).unwrap();
        }
        let report = pull(&mut source, &mut sink).unwrap();
        assert_eq!((report.applied, report.set_aside), (4, 2), "{report:?}");

        let rows: Vec<(i32, String)> = db
            .conn()
            .query("SELECT id, CAST(bal AS CHAR) FROM accounts ORDER BY id")
            .unwrap();
        let expected = [(1, "2.25"), (2, "0.10"), (5, "-7.50"), (6, "99999999.99")];
        assert_eq!(
            rows,
            expected.map(|(id, bal)| (id, bal.to_owned())),
            "only the transactions whose values the column would change are set aside"
        );

        let failures = sink.failures().unwrap();
        assert_eq!(failures.len(), 2, "{failures:?}");
        let rounded = &failures[0].error;
        for needle in ["\"bal\"", "decimal(10,2)", "0.125", "rounded"] {
            assert!(rounded.contains(needle), "{needle} in {rounded}");
        }
        let overflow = &failures[1].error;
        for needle in ["\"bal\"", "decimal(10,2)", "100000000000000000000", "integer digits"] {
            assert!(overflow.contains(needle), "{needle} in {overflow}");
        }
        assert_eq!(sink.version_vector(), source.version_vector(), "set-aside changes count as held");
    }

    fn a_sqlite_infinity_bound_for_a_mariadb_double_is_set_aside_naming_it(base: mysql) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("readings.db");
        let lite = rusqlite::Connection::open(&file).unwrap();
        lite.execute_batch("CREATE TABLE readings(id INTEGER PRIMARY KEY, r REAL)").unwrap();
        let mut source =
            concord_sqlite::SqliteStore::track(&file, &["readings"], StoreOptions::default()).unwrap();
        let db = TestDb::new(base, &["CREATE TABLE readings(id INT PRIMARY KEY, r DOUBLE)"]);
        let mut sink = MyStore::track(&db.url, &["readings"], StoreOptions::default()).unwrap();
        for sql in [
            "INSERT INTO readings VALUES (1, 9e999)",
            "INSERT INTO readings VALUES (2, -9e999)",
            "INSERT INTO readings VALUES (3, 1.5)",
        ] {
            lite.execute_batch(sql).unwrap();
            concord_sqlite::Store::capture(&mut source).unwrap();
        }
        let report = pull(&mut source, &mut sink).unwrap();
        assert_eq!((report.applied, report.set_aside), (1, 2), "{report:?}");
        let rows: Vec<(i32, f64)> = db.conn().query("SELECT id, r FROM readings").unwrap();
        assert_eq!(rows, [(3, 1.5)]);
        let failures = sink.failures().unwrap();
        for (failure, value) in failures.iter().zip(["value: inf ", "value: -inf "]) {
            for needle in ["\"r\"", "double", value] {
                assert!(failure.error.contains(needle), "{needle} in {}", failure.error);
            }
        }
    }
}
