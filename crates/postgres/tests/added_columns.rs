//! Columns a PostgreSQL store adds for a peer's changes (`propagate_schema`). Risks
//! covered: a column added with a type that changes the values it then receives (the
//! copies would differ), or that refuses them (they would be set aside); a column added
//! but not captured, so the node's own writes of it never travel back.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestDb, all_changes};
use concord_postgres::Store as _;
use concord_postgres::{PgStore, StoreOptions, pull};
use concord_store::{add_missing_columns, apply_setting_aside};

const DDL: &str = "CREATE TABLE t(id bigint PRIMARY KEY, v text)";

fn types(db: &TestDb) -> Vec<(String, String)> {
    db.client()
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = 't' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

concord_harness::server_tests! {
    fn every_kind_added_for_a_peer_keeps_its_values_exactly(server: postgres) {
        let (a_db, b_db) = (TestDb::new(server, DDL), TestDb::new(server, DDL));
        let mut a = PgStore::track(&a_db.url, &["t"], StoreOptions::default()).unwrap();
        let mut b = PgStore::track(&b_db.url, &["t"], StoreOptions::default()).unwrap();
        a_db.psql("INSERT INTO t VALUES (1, 'one')");
        pull(&mut a, &mut b).unwrap();

        a_db.psql(
            "ALTER TABLE t ADD COLUMN i integer, ADD COLUMN r double precision,
               ADD COLUMN b bytea, ADD COLUMN n numeric(12,2), ADD COLUMN f boolean,
               ADD COLUMN j json, ADD COLUMN ts timestamptz, ADD COLUMN d date,
               ADD COLUMN u uuid, ADD COLUMN nothing text",
        );
        a.capture().unwrap();
        a_db.psql(
            "INSERT INTO t VALUES (2, 'two', 7, 0.1, '\\x0001', 12.50, true, '{\"k\": [1, 2]}',
               '2026-12-04 16:00:00.123456+00', '2026-12-04',
               '0a1b2c3d-0000-4000-8000-000000000001', NULL)",
        );
        a.capture().unwrap();
        let changes = all_changes(&a)
            .into_iter()
            .filter(|c| b.version_vector().get(&c.origin) < c.seq)
            .collect::<Vec<_>>();
        let added = add_missing_columns(&mut b, &changes).unwrap();
        assert_eq!(added.columns.len(), 10, "{added:?}");
        assert!(b.take_schema_changed(), "b follows its new columns");
        let report = apply_setting_aside(&mut b, &changes, None).unwrap();
        assert_eq!(report.set_aside, 0, "{report:?}");
        assert!(b.failures().unwrap().is_empty());
        let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect()
        };
        assert_eq!(
            types(&b_db),
            owned(&[
                ("id", "bigint"),
                ("v", "text"),
                ("i", "bigint"),
                ("r", "double precision"),
                ("b", "bytea"),
                ("n", "numeric"),
                ("f", "boolean"),
                ("j", "json"),
                ("ts", "timestamp with time zone"),
                ("d", "date"),
                ("u", "uuid"),
                ("nothing", "text"),
            ])
        );
        assert_eq!(a_db.dump("t", "id"), b_db.dump("t", "id"));

        // b captures what it added: its writes of the new columns travel back.
        b_db.psql("UPDATE t SET nothing = 'from b', i = 8 WHERE id = 2");
        pull(&mut b, &mut a).unwrap();
        assert_eq!(a_db.dump("t", "id"), b_db.dump("t", "id"));
    }
}
