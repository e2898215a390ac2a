//! Catching up past the log's retention on MariaDB: a replica whose missing changes were
//! pruned from its peer's log is brought up to date from a consistent snapshot of rows
//! with their clocks (`START TRANSACTION WITH CONSISTENT SNAPSHOT`), with nothing lost
//! and nothing resurrected, and a third replica can take a snapshot from the second.
//!
//! Risks covered:
//! - rows deleted while the replica was away come back; its own concurrent writes vanish;
//! - typed values (DECIMAL, DATETIME(6), BIGINT UNSIGNED, JSON, BLOB) change on the way
//!   through the snapshot path, which reads rows differently from the log;
//! - the adopted history cannot be served onward (a third node stays behind for good);
//! - rows written while capture was off go unseen by a comparison that reads Concord's
//!   metadata instead of the users' table.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_mysql::Store as _;
use concord_mysql::{MyStore, StoreOptions, pull};
use concord_store::compare_stores;
use mysql::prelude::Queryable;

const DDL: &str = "CREATE TABLE items(
    id INT PRIMARY KEY, name VARCHAR(40), qty INT, amount DECIMAL(12,2),
    at DATETIME(6), big BIGINT UNSIGNED, doc JSON, data BLOB)";

type Row = (
    i32,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn rows(db: &TestDb) -> Vec<Row> {
    db.conn()
        .query_map(
            "SELECT id, name, qty, CAST(amount AS CHAR), CAST(at AS CHAR), CAST(big AS CHAR), \
             CAST(doc AS CHAR), HEX(data) FROM items ORDER BY id",
            |(id, name, qty, amount, at, big, doc, data)| {
                (id, name, qty, amount, at, big, doc, data)
            },
        )
        .unwrap()
}

fn tracked(server: &str) -> (TestDb, MyStore) {
    let db = TestDb::new(server, &[DDL]);
    let store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
    (db, store)
}

concord_harness::server_tests! {
    fn a_mariadb_replica_behind_retention_catches_up_from_a_snapshot(server: mysql) {
        let (a_db, mut a) = tracked(server);
        let (b_db, mut b) = tracked(server);
        let (c_db, mut c) = tracked(server);
        let mut insert = String::new();
        for i in 1..=30 {
            insert.push_str(&format!(
                "INSERT INTO items VALUES ({i}, 'v{i}', {i}, {i}.25, \
                 '2026-01-02 03:04:05.{i:06}', 18446744073709551615 - {i}, \
                 '{{\"i\": {i}}}', X'00ff{i:04x}');"
            ));
        }
        a_db.cli(&insert);
        pull(&mut a, &mut b).unwrap();
        assert_eq!(rows(&a_db), rows(&b_db));

        a_db.cli("UPDATE items SET name = 'a-new' WHERE id = 2; DELETE FROM items WHERE id = 5; \
                  UPDATE items SET qty = 700 WHERE id = 7; \
                  INSERT INTO items(id, name) VALUES (40, 'forty')");
        a.capture().unwrap();
        a_db.cli("INSERT INTO items(id, name) VALUES (41, 'gone')");
        a.capture().unwrap();
        a_db.cli("DELETE FROM items WHERE id = 41");
        for i in 0..40 {
            a_db.cli(&format!("UPDATE items SET qty = {i} WHERE id = 10"));
            a.capture().unwrap();
        }
        a.prune_log(5).unwrap();
        b_db.cli("INSERT INTO items(id, name) VALUES (100, 'from b'); \
                  UPDATE items SET qty = 222 WHERE id = 2; DELETE FROM items WHERE id = 7");
        b.capture().unwrap();

        let report = pull(&mut a, &mut b).unwrap();
        assert!(report.applied > 0, "{report:?}");
        assert_eq!(b.version_vector().get(&a.node_id()), a.version_vector().get(&a.node_id()));
        pull(&mut b, &mut a).unwrap();
        let all = rows(&a_db);
        assert_eq!(all, rows(&b_db));
        let row = |id: i32| all.iter().find(|r| r.0 == id).cloned();
        let two = row(2).unwrap();
        assert_eq!((two.1.as_deref(), two.2), (Some("a-new"), Some(222)));
        assert_eq!(row(5), None, "a row deleted while B was away came back");
        assert_eq!(row(7), None, "B's delete lost to an update it never saw");
        assert_eq!(row(41), None, "a row inserted and deleted on A came back");
        assert_eq!(row(10).unwrap().2, Some(39));
        assert_eq!(row(3).unwrap().5.as_deref(), Some("18446744073709551612"));
        assert_eq!(row(3).unwrap().4.as_deref(), Some("2026-01-02 03:04:05.000003"));
        assert_eq!(row(3).unwrap().7.as_deref(), Some("00FF0003"));
        assert!(row(100).is_some());
        assert!(b.failures().unwrap().is_empty());

        pull(&mut b, &mut c).unwrap();
        assert_eq!(rows(&c_db), rows(&b_db));
        assert_eq!(c.version_vector(), b.version_vector());
        a_db.cli("UPDATE items SET name = 'later' WHERE id = 1");
        pull(&mut a, &mut b).unwrap();
        pull(&mut b, &mut c).unwrap();
        assert_eq!(rows(&c_db)[0].1.as_deref(), Some("later"));

        // Compared by values, the copies agree; then rows written on C while capture is
        // off are each found.
        pull(&mut a, &mut c).unwrap();
        assert!(compare_stores(&a, &c, "items").unwrap().differences.is_empty());
        c_db.cli("SET @concord_applying = 1; UPDATE items SET name = 'drifted' WHERE id = 3; \
                  DELETE FROM items WHERE id = 4; INSERT INTO items(id, name) VALUES (5000, 'x')");
        let run = compare_stores(&a, &c, "items").unwrap();
        let found: Vec<(String, bool, bool)> = run
            .differences
            .iter()
            .map(|d| {
                let key = concord_core::PrimaryKey::from_bytes_unchecked(d.key.clone());
                (key.to_string(), d.here.is_some(), d.there.is_some())
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("(3)".to_owned(), true, true),
                ("(4)".to_owned(), true, false),
                ("(5000)".to_owned(), false, true),
            ]
        );
    }
}
