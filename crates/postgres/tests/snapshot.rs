//! Catching up past the log's retention on PostgreSQL: a replica whose missing changes
//! were pruned from its peer's log is brought up to date from a consistent snapshot of
//! rows with their clocks (REPEATABLE READ), with nothing lost and nothing resurrected,
//! and a third replica can take a snapshot from the second in turn.
//!
//! Risks covered:
//! - rows deleted while the replica was away come back; its own concurrent writes vanish;
//! - typed values (numeric, timestamptz, uuid, jsonb, bytea) change on the way through
//!   the snapshot path, which reads rows differently from the log;
//! - the adopted history cannot be served onward (a third node stays behind for good);
//! - rows written while capture was off (a restore with triggers disabled) go unseen by
//!   a comparison that reads Concord's metadata instead of the users' table.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_postgres::Store as _;
use concord_postgres::{PgStore, StoreOptions, pull};
use concord_store::compare_stores;

const DDL: &str = "CREATE TABLE items(
    id bigint PRIMARY KEY, name text, qty integer,
    amount numeric(12,2), at timestamptz, uid uuid, doc jsonb, data bytea);";

fn tracked(server: &str) -> (TestDb, PgStore) {
    let db = TestDb::new(server, DDL);
    let store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
    (db, store)
}

concord_harness::server_tests! {
    fn a_postgres_replica_behind_retention_catches_up_from_a_snapshot(server: postgres) {
        let (a_db, mut a) = tracked(server);
        let (b_db, mut b) = tracked(server);
        let (c_db, mut c) = tracked(server);
        a_db.psql(
            "INSERT INTO items SELECT i, 'v' || i, i, i * 1.25, \
             timestamptz '2026-01-02 03:04:05.123456+02' + i * interval '1 day', \
             md5(i::text)::uuid, jsonb_build_object('i', i, 'tags', jsonb_build_array('x', i)), \
             decode('00ff' || lpad(to_hex(i), 4, '0'), 'hex') FROM generate_series(1, 30) i",
        );
        pull(&mut a, &mut b).unwrap();
        assert_eq!(a_db.dump("items", "id"), b_db.dump("items", "id"));

        // B goes away; A writes far more than its log keeps.
        a_db.psql("UPDATE items SET name = 'a-new' WHERE id = 2; DELETE FROM items WHERE id = 5; \
                   UPDATE items SET qty = 700 WHERE id = 7; \
                   INSERT INTO items(id, name, amount) VALUES (40, 'forty', 1234567890.12)");
        a.capture().unwrap();
        a_db.psql("INSERT INTO items(id, name) VALUES (41, 'gone')");
        a.capture().unwrap();
        a_db.psql("DELETE FROM items WHERE id = 41");
        for i in 0..40 {
            a_db.psql(&format!("UPDATE items SET qty = {i} WHERE id = 10"));
            a.capture().unwrap();
        }
        a.prune_log(5).unwrap();
        // B writes meanwhile: a new row, another column of row 2, a delete of row 7.
        b_db.psql("INSERT INTO items(id, name) VALUES (100, 'from b'); \
                   UPDATE items SET qty = 222 WHERE id = 2; DELETE FROM items WHERE id = 7");
        b.capture().unwrap();

        let report = pull(&mut a, &mut b).unwrap();
        assert!(report.applied > 0, "{report:?}");
        assert_eq!(b.version_vector().get(&a.node_id()), a.version_vector().get(&a.node_id()));
        pull(&mut b, &mut a).unwrap();
        let rows = a_db.dump("items", "id");
        assert_eq!(rows, b_db.dump("items", "id"));
        let row = |id: i64| rows.iter().find(|r| r.contains(&format!("\"id\": {id},"))).cloned();
        assert!(row(2).unwrap().contains("\"name\": \"a-new\"") && row(2).unwrap().contains("\"qty\": 222"), "{rows:?}");
        assert_eq!(row(5), None, "a row deleted while B was away came back");
        assert_eq!(row(7), None, "B's delete lost to an update it never saw");
        assert_eq!(row(41), None, "a row inserted and deleted on A came back");
        assert!(row(10).unwrap().contains("\"qty\": 39"), "{rows:?}");
        assert!(row(40).unwrap().contains("1234567890.12"), "{rows:?}");
        assert!(row(100).unwrap().contains("from b"), "{rows:?}");
        assert!(b.failures().unwrap().is_empty());

        // C never synced: B cannot replay A's history from its log, so C snapshots B.
        pull(&mut b, &mut c).unwrap();
        assert_eq!(c_db.dump("items", "id"), b_db.dump("items", "id"));
        assert_eq!(c.version_vector(), b.version_vector());
        a_db.psql("UPDATE items SET name = 'later' WHERE id = 1");
        pull(&mut a, &mut b).unwrap();
        pull(&mut b, &mut c).unwrap();
        assert!(c_db.dump("items", "id")[0].contains("later"));

        // Compared by values, the copies agree; then rows written on C with triggers
        // disabled (as `pg_restore --disable-triggers` does) are each found.
        pull(&mut a, &mut c).unwrap();
        assert!(compare_stores(&a, &c, "items").unwrap().differences.is_empty());
        c_db.psql("SET session_replication_role = replica; \
                   UPDATE items SET name = 'drifted' WHERE id = 3; \
                   DELETE FROM items WHERE id = 4; \
                   INSERT INTO items(id, name) VALUES (5000, 'untracked')");
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
