//! Large values between every pair of store kinds (SQLite, PostgreSQL, MariaDB), moved
//! by `pull` as `concord merge` and the node's sessions do.
//!
//! Risks covered:
//! - a 100 MB value is truncated, altered or refused between SQLite and PostgreSQL;
//! - a value larger than the destination can hold (MariaDB's `max_allowed_packet`)
//!   stops the stream, kills the connection for the rest, or is stored cut short,
//!   instead of setting aside its source transaction with a reason that names the limit
//!   while the rows after it arrive;
//! - a large value written on MariaDB does not reach the other two whole.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_mysql::MyStore;
use concord_postgres::{PgStore, pull};
use concord_sqlite::SqliteStore;
use mysql::prelude::Queryable;

const MB: usize = 1 << 20;

/// Deterministic bytes that no compression or run-length trick shortens.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A MariaDB database for this test, dropped at its end.
struct MyDb {
    admin: String,
    name: String,
    url: String,
}

impl MyDb {
    fn new(server: &str, ddl: &str) -> Self {
        let name = format!("concord_large_{}", std::process::id());
        let mut admin = mysql::Conn::new(mysql::Opts::from_url(server).unwrap()).unwrap();
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .unwrap();
        let url = concord_harness::servers::with_database(server, &name);
        mysql::Conn::new(mysql::Opts::from_url(&url).unwrap())
            .unwrap()
            .query_drop(ddl)
            .unwrap();
        Self {
            admin: server.to_owned(),
            name,
            url,
        }
    }

    fn conn(&self) -> mysql::Conn {
        mysql::Conn::new(mysql::Opts::from_url(&self.url).unwrap()).unwrap()
    }

    fn value(&self, id: i64) -> Option<Vec<u8>> {
        self.conn()
            .exec_first::<Option<Vec<u8>>, _, _>("SELECT data FROM files WHERE id = ?", (id,))
            .unwrap()
            .flatten()
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = mysql::Conn::new(mysql::Opts::from_url(&self.admin).unwrap()) {
            let _ = admin.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

fn pg_value(db: &TestDb, id: i64) -> Option<Vec<u8>> {
    db.client()
        .query_opt("SELECT data FROM files WHERE id = $1", &[&id])
        .unwrap()
        .and_then(|r| r.get(0))
}

fn lite_value(path: &std::path::Path, id: i64) -> Option<Vec<u8>> {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT data FROM files WHERE id = ?1", [id], |r| r.get(0))
        .ok()
        .flatten()
}

concord_harness::server_tests! {
    fn a_100_mb_value_crosses_every_pair_of_stores_or_is_set_aside_where_it_cannot_fit(
        pg_server: postgres,
        my_server: mysql,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let lite_ddl = "CREATE TABLE files(id INTEGER PRIMARY KEY, name TEXT, data BLOB)";
        let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
        for path in [&a_path, &b_path] {
            rusqlite::Connection::open(path).unwrap().execute_batch(lite_ddl).unwrap();
        }
        let pg_db = TestDb::new(pg_server, "CREATE TABLE files(id bigint PRIMARY KEY, name text, data bytea)");
        let my_db = MyDb::new(my_server, "CREATE TABLE files(id BIGINT PRIMARY KEY, name VARCHAR(40), data LONGBLOB)");
        let mut a = SqliteStore::track(&a_path, &["files"], Default::default()).unwrap();
        let mut b = SqliteStore::track(&b_path, &["files"], Default::default()).unwrap();
        let mut pg = PgStore::track(&pg_db.url, &["files"], Default::default()).unwrap();
        let mut my = MyStore::track(&my_db.url, &["files"], Default::default()).unwrap();

        // 100 MB written on SQLite, then a small row after it.
        let big = bytes(100 * MB, 1);
        let app = rusqlite::Connection::open(&a_path).unwrap();
        app.execute("INSERT INTO files VALUES (1, 'big', ?1)", [&big]).unwrap();
        // Captured apart, so the two are separate source transactions.
        a.capture().unwrap();
        app.execute("INSERT INTO files VALUES (2, 'after', x'01')", []).unwrap();

        // SQLite -> PostgreSQL -> SQLite: whole, both ways.
        let report = pull(&mut a, &mut pg).unwrap();
        assert_eq!((report.applied, report.set_aside), (2, 0), "{report:?}");
        assert!(pg_value(&pg_db, 1) == Some(big.clone()), "the value changed on its way to PostgreSQL");
        pull(&mut pg, &mut b).unwrap();
        assert!(lite_value(&b_path, 1) == Some(big.clone()), "the value changed on its way back to SQLite");
        assert_eq!(lite_value(&b_path, 2), Some(vec![1]));

        // PostgreSQL -> MariaDB: 100 MB is above max_allowed_packet (16 MB here), so its
        // transaction is set aside with the reason, and the row after it arrives.
        let limit: u64 = my_db.conn().query_first("SELECT @@max_allowed_packet").unwrap().unwrap();
        assert!(limit < big.len() as u64, "this test needs max_allowed_packet below 100 MB");
        let report = pull(&mut pg, &mut my).unwrap();
        assert_eq!((report.applied, report.set_aside), (1, 1), "{report:?}");
        assert_eq!(my_db.value(1), None, "a value MariaDB cannot hold was stored anyway");
        assert_eq!(my_db.value(2), Some(vec![1]), "the row after the large value did not arrive");
        let failures = my.failures().unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].error.contains("max_allowed_packet"), "{failures:?}");

        // A 12 MB value (below the limit) written on MariaDB reaches both others whole,
        // and one written on SQLite reaches MariaDB.
        let medium = bytes(12 * MB, 2);
        my_db.conn().exec_drop("INSERT INTO files VALUES (3, 'medium', ?)", (&medium,)).unwrap();
        pull(&mut my, &mut pg).unwrap();
        assert!(pg_value(&pg_db, 3) == Some(medium.clone()), "MariaDB -> PostgreSQL changed the value");
        pull(&mut my, &mut a).unwrap();
        assert!(lite_value(&a_path, 3) == Some(medium.clone()), "MariaDB -> SQLite changed the value");
        let other = bytes(12 * MB, 3);
        app.execute("INSERT INTO files VALUES (4, 'from sqlite', ?1)", [&other]).unwrap();
        pull(&mut a, &mut my).unwrap();
        assert!(my_db.value(4) == Some(other), "SQLite -> MariaDB changed the value");
    }
}
