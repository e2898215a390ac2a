//! PostgreSQL and SQLite replicas of the same table kept in agreement.
//!
//! Risks covered:
//! - a change read from the PostgreSQL log cannot be applied by the SQLite store (or
//!   the reverse) because the two disagree on table, column or key encoding;
//! - a value changes kind or content on the way (integers, floats, text, bytes);
//! - edits on both sides, including a delete, leave the two databases different.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use concord_conformance::{Database, Kind, StoreUnderTest};
use concord_postgres::PgStore;
use concord_sqlite::SqliteStore;

type Row = (i64, String, Option<f64>, Option<Vec<u8>>);

fn pg_rows(db: &Database) -> Vec<Row> {
    postgres::Client::connect(&db.location(), postgres::NoTls)
        .unwrap()
        .query("SELECT id, name, price, data FROM items ORDER BY id", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn sqlite_rows(path: &std::path::Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, name, price, data FROM items ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pg_to_sqlite(pg: &mut PgStore, lite: &mut SqliteStore) {
    concord_postgres::pull(pg, lite).unwrap();
}

fn sqlite_to_pg(lite: &mut SqliteStore, pg: &mut PgStore) {
    concord_postgres::pull(lite, pg).unwrap();
}

concord_harness::server_tests! {
    fn postgres_and_sqlite_replicas_converge_both_ways(server: postgres) {
        let db = StoreUnderTest::new(Kind::Postgres, server).database(
            "CREATE TABLE items(id bigint PRIMARY KEY, name text NOT NULL,
                                price double precision, data bytea);",
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, data BLOB);",
            )
            .unwrap();
        let mut pg = PgStore::track(&db.location(), &["items"], Default::default()).unwrap();
        let mut lite = SqliteStore::track(&path, &["items"], Default::default()).unwrap();

        db.execute(
            "INSERT INTO items VALUES (1, 'from postgres', 0.1, '\\x00010203'::bytea),
                                      (2, 'Grüße 世界', NULL, NULL), (3, 'doomed', 3.5, NULL)",
        );
        let app = rusqlite::Connection::open(&path).unwrap();
        app.execute_batch("INSERT INTO items VALUES (10, 'from sqlite', 1e-300, x'00ff00')")
            .unwrap();
        pg_to_sqlite(&mut pg, &mut lite);
        sqlite_to_pg(&mut lite, &mut pg);
        assert_eq!(pg_rows(&db), sqlite_rows(&path));
        assert_eq!(pg_rows(&db).len(), 4);

        // Edits on both sides, a delete on each, and a concurrent edit of one column.
        db.execute("UPDATE items SET price = 2.25 WHERE id = 2; DELETE FROM items WHERE id = 3;");
        app.execute_batch(
            "UPDATE items SET name = 'edited in sqlite' WHERE id = 1;
             UPDATE items SET price = 9.75 WHERE id = 2;
             DELETE FROM items WHERE id = 10;",
        )
        .unwrap();
        pg_to_sqlite(&mut pg, &mut lite);
        sqlite_to_pg(&mut lite, &mut pg);
        pg_to_sqlite(&mut pg, &mut lite);
        let rows = pg_rows(&db);
        assert_eq!(rows, sqlite_rows(&path));
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].1, "edited in sqlite");
        assert_eq!(pg.version_vector(), lite.version_vector());
        assert_eq!(pg.capture().unwrap(), 0, "no echo");
        assert_eq!(lite.capture().unwrap(), 0, "no echo");
    }
}
