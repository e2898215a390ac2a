//! Columns a MySQL/MariaDB store adds for a peer's changes (`propagate_schema`). Risks
//! covered: a column added with a type that changes the values it then receives, or
//! refuses them (they would be set aside); a column added but not captured, so the
//! node's own writes of it never travel back.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestDb, all_changes};
use concord_mysql::Store as _;
use concord_mysql::{MyStore, StoreOptions, pull};
use concord_store::{add_missing_columns, apply_setting_aside};
use mysql::prelude::Queryable;

const DDL: &str = "CREATE TABLE t(id BIGINT PRIMARY KEY, v LONGTEXT)";

/// Every value of every row, as text comparable across the two column types of a
/// kind (a decimal through a double, bytes in hex).
const VALUES: &str = "SELECT CONCAT_WS('|', id, v, i, r, hex(b), CAST(n AS DOUBLE), f, j, ts, d,
                          coalesce(nothing, '-')) FROM t ORDER BY id";

fn values(db: &TestDb) -> Vec<String> {
    db.conn().query(VALUES).unwrap()
}

concord_harness::server_tests! {
    fn every_kind_added_for_a_peer_keeps_its_values(server: mysql) {
        let (a_db, b_db) = (TestDb::new(server, &[DDL]), TestDb::new(server, &[DDL]));
        let mut a = MyStore::track(&a_db.url, &["t"], StoreOptions::default()).unwrap();
        let mut b = MyStore::track(&b_db.url, &["t"], StoreOptions::default()).unwrap();
        a_db.cli("INSERT INTO t VALUES (1, 'one')");
        pull(&mut a, &mut b).unwrap();

        a_db.cli(
            "ALTER TABLE t ADD COLUMN i INT, ADD COLUMN r DOUBLE, ADD COLUMN b VARBINARY(10),
               ADD COLUMN n DECIMAL(12,2), ADD COLUMN f BOOLEAN, ADD COLUMN j JSON,
               ADD COLUMN ts DATETIME(6), ADD COLUMN d DATE, ADD COLUMN nothing VARCHAR(10)",
        );
        a.capture().unwrap();
        a_db.cli(
            "INSERT INTO t VALUES (2, 'two', 7, 0.1, x'0001', 12.50, true, '{\"k\": [1, 2]}',
               '2026-12-04 16:00:00.123456', '2026-12-04', NULL)",
        );
        a.capture().unwrap();
        let changes = all_changes(&a)
            .into_iter()
            .filter(|c| b.version_vector().get(&c.origin) < c.seq)
            .collect::<Vec<_>>();
        let added = add_missing_columns(&mut b, &changes).unwrap();
        assert_eq!(added.columns.len(), 9, "{added:?}");
        assert!(b.take_schema_changed(), "b follows its new columns");
        let report = apply_setting_aside(&mut b, &changes, None).unwrap();
        assert_eq!(report.set_aside, 0, "{report:?}");
        assert!(b.failures().unwrap().is_empty());
        let types: Vec<(String, String)> = b_db
            .conn()
            .query(
                "SELECT column_name, column_type FROM information_schema.columns
                 WHERE table_schema = database() AND table_name = 't' ORDER BY ordinal_position",
            )
            .unwrap();
        let expected: Vec<(String, String)> = [
            ("id", "bigint(20)"),
            ("v", "longtext"),
            ("i", "bigint(20)"),
            ("r", "double"),
            ("b", "longblob"),
            ("n", "decimal(65,30)"),
            ("f", "tinyint(1)"),
            ("j", "longtext"),
            ("ts", "datetime(6)"),
            ("d", "date"),
            ("nothing", "longtext"),
        ]
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
        assert_eq!(types, expected);
        assert_eq!(values(&a_db), values(&b_db));

        // b captures what it added: its writes of the new columns travel back.
        b_db.cli("UPDATE t SET nothing = 'from b', i = 8 WHERE id = 2");
        pull(&mut b, &mut a).unwrap();
        assert_eq!(values(&a_db), values(&b_db));
    }
}
