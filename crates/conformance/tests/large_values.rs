//! Large values between every pair of store kinds (SQLite, PostgreSQL, MariaDB), moved
//! by `pull` as `concord merge` and the node's sessions do.
//!
//! Risks covered:
//! - a 100 MB value is truncated, altered or refused between SQLite and PostgreSQL;
//! - a value larger than the destination can hold (MariaDB's `max_allowed_packet`),
//!   from PostgreSQL or from SQLite, stops the stream, kills the connection for the rest, or is stored cut short,
//!   instead of setting aside its source transaction with a reason that names the limit
//!   while the rows after it arrive;
//! - a large value written on MariaDB does not reach the other two whole.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use concord_conformance::{Client, Database, Kind, StoreUnderTest};
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

fn my_value(db: &Database, id: i64) -> Option<Vec<u8>> {
    my_conn(db)
        .exec_first::<Option<Vec<u8>>, _, _>("SELECT data FROM files WHERE id = ?", (id,))
        .unwrap()
        .flatten()
}

fn my_conn(db: &Database) -> mysql::Conn {
    mysql::Conn::new(mysql::Opts::from_url(&db.location()).unwrap()).unwrap()
}

fn pg_value(db: &Database, id: i64) -> Option<Vec<u8>> {
    postgres::Client::connect(&db.location(), postgres::NoTls)
        .unwrap()
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
        let pg_db = StoreUnderTest::new(Kind::Postgres, pg_server)
            .database("CREATE TABLE files(id bigint PRIMARY KEY, name text, data bytea)");
        let my_db = StoreUnderTest::new(Kind::Mariadb, my_server)
            .database("CREATE TABLE files(id BIGINT PRIMARY KEY, name VARCHAR(40), data LONGBLOB)");
        let mut a = SqliteStore::track(&a_path, &["files"], Default::default()).unwrap();
        let mut b = SqliteStore::track(&b_path, &["files"], Default::default()).unwrap();
        let mut pg = PgStore::track(&pg_db.location(), &["files"], Default::default()).unwrap();
        let mut my = MyStore::track(&my_db.location(), &["files"], Default::default()).unwrap();

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
        let limit: u64 = my_conn(&my_db).query_first("SELECT @@max_allowed_packet").unwrap().unwrap();
        assert!(limit < big.len() as u64, "this test needs max_allowed_packet below 100 MB");
        let report = pull(&mut pg, &mut my).unwrap();
        assert_eq!((report.applied, report.set_aside), (1, 1), "{report:?}");
        assert_eq!(my_value(&my_db, 1), None, "a value MariaDB cannot hold was stored anyway");
        assert_eq!(my_value(&my_db, 2), Some(vec![1]), "the row after the large value did not arrive");
        let failures = my.failures().unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].error.contains("max_allowed_packet"), "{failures:?}");

        // A 12 MB value (below the limit) written on MariaDB reaches both others whole,
        // and one written on SQLite reaches MariaDB.
        let medium = bytes(12 * MB, 2);
        my_conn(&my_db).exec_drop("INSERT INTO files VALUES (3, 'medium', ?)", (&medium,)).unwrap();
        pull(&mut my, &mut pg).unwrap();
        assert!(pg_value(&pg_db, 3) == Some(medium.clone()), "MariaDB -> PostgreSQL changed the value");
        pull(&mut my, &mut a).unwrap();
        assert!(lite_value(&a_path, 3) == Some(medium.clone()), "MariaDB -> SQLite changed the value");
        let other = bytes(12 * MB, 3);
        app.execute("INSERT INTO files VALUES (4, 'from sqlite', ?1)", [&other]).unwrap();
        pull(&mut a, &mut my).unwrap();
        assert!(my_value(&my_db, 4) == Some(other), "SQLite -> MariaDB changed the value");
    }

    fn a_value_larger_than_the_servers_packet_is_set_aside_and_the_stream_goes_on(base: mysql) {
        let server = StoreUnderTest::new(Kind::Mariadb, base);
        let db = server.database("CREATE TABLE files(id INT PRIMARY KEY, body LONGBLOB)");
        let max: u64 = my_conn(&db).query_first("SELECT @@max_allowed_packet").unwrap().unwrap();
        let lite = StoreUnderTest::new(Kind::Sqlite, "");
        let file = lite.database("CREATE TABLE files(id INTEGER PRIMARY KEY, body BLOB)");
        let mut source = file.track(&["files"]);
        let mut sink = db.track(&["files"]);
        let big = vec![7u8; usize::try_from(max).unwrap() + 1024];
        let Client::Sqlite(app) = file.client() else { unreachable!("a SQLite file") };
        app.execute("INSERT INTO files VALUES (1, ?1)", [&big]).unwrap();
        // Captured apart: SQLite's capture groups what committed between two captures.
        source.capture().unwrap();
        app.execute("INSERT INTO files VALUES (2, x'01')", []).unwrap();
        let report = pull(&mut *source, &mut *sink).unwrap();
        assert_eq!((report.applied, report.set_aside), (1, 1), "{report:?}");
        let failures = sink.failures().unwrap();
        assert!(failures[0].error.contains("max_allowed_packet"), "{failures:?}");
        assert_eq!(db.rows("SELECT id FROM files"), [[Some("2".to_owned())]], "the row after the large value arrived");
    }
}
