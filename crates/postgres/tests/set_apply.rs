//! Set-based apply against a real PostgreSQL server: users' rows are written a run of
//! one table, kind and column set at a time, not one statement per change.
//!
//! Risks covered:
//! - a change the destination refuses (a CHECK only the destination has) in the middle
//!   of a batch of many source transactions is blamed on the wrong change, sets aside
//!   more than its own source transaction, or keeps the other rows from being applied;
//! - a key written several times in one batch (insert, update, update, delete, insert)
//!   ends otherwise than row by row would (two writes of one key in one set statement);
//! - parent and child rows with a foreign key, in one source transaction, are written
//!   out of order (a child before its parent, a parent deleted before its child);
//! - runs longer than one statement (thousands of rows) lose or repeat rows.
//!
//! Each test creates its own throwaway databases on the server named by
//! `CONCORD_TEST_POSTGRES_URL` and is skipped (with a message) without it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestDb, all_changes};
use concord_postgres::Store as _;
use concord_postgres::{ApplyError, PgStore, RowError, StoreOptions};
use concord_store::engine::WriteMode;

const DDL: &str = "CREATE TABLE parents(id bigint PRIMARY KEY, name text);
CREATE TABLE items(
    id bigint PRIMARY KEY,
    name text NOT NULL,
    qty integer NOT NULL,
    parent_id bigint REFERENCES parents(id)
);";

/// The destination refuses a quantity of 1000 or more; the source does not.
const DESTINATION_ONLY: &str = "ALTER TABLE items ADD CONSTRAINT items_small CHECK (qty < 1000);";

const TABLES: &[&str] = &["parents", "items"];

/// Source and destination, tracked; the destination also runs `extra`.
fn pair(server: &str, extra: &str) -> (TestDb, TestDb, PgStore, PgStore) {
    let src_db = TestDb::new(server, DDL);
    let dst_db = TestDb::new(server, &format!("{DDL}{extra}"));
    let src = PgStore::track(&src_db.url, TABLES, StoreOptions::default()).unwrap();
    let dst = PgStore::track(&dst_db.url, TABLES, StoreOptions::default()).unwrap();
    (src_db, dst_db, src, dst)
}

concord_harness::server_tests! {
    fn a_refused_change_in_a_set_is_named_and_only_its_transaction_is_set_aside(server: postgres) {
        let (src_db, dst_db, mut src, mut dst) = pair(server, DESTINATION_ONLY);
        // One large transaction (longer than one statement), then 60 small ones that
        // update two rows each; the 31st sets a quantity the destination refuses on its
        // second row.
        src_db.psql(
            "INSERT INTO items SELECT g, 'item ' || g, 1, NULL FROM generate_series(1, 2500) g;",
        );
        let mut sql = String::new();
        for t in 0..60 {
            let bad = if t == 30 { 5000 } else { 2 + t };
            sql.push_str(&format!(
                "BEGIN; UPDATE items SET qty = {} WHERE id = {}; UPDATE items SET qty = {bad} WHERE id = {}; COMMIT;",
                2 + t,
                10 + 2 * t,
                11 + 2 * t
            ));
        }
        src_db.psql(&sql);
        src.capture().unwrap();
        let changes = all_changes(&src);
        assert_eq!(changes.len(), 2500 + 120);
        let bad = changes
            .iter()
            .find(|c| c.columns.iter().any(|col| col.value == concord_core::Value::Integer(5000)))
            .unwrap()
            .clone();

        // Alone, the batch is refused naming that change exactly.
        let err = dst.apply_batch(&changes).expect_err("refused");
        let message = err.to_string();
        match &err {
            ApplyError::Row(f) => {
                assert_eq!((f.seq, f.key.as_str()), (bad.seq, bad.key.to_string().as_str()), "{message}");
                assert!(matches!(f.error, RowError::Refused(_)), "{message}");
            }
            other => panic!("expected a row failure, got {other}"),
        }
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 0, "nothing applied");

        // With the set-aside policy: only the bad change's source transaction is set
        // aside, named; every other row is applied.
        let report = concord_store::apply_setting_aside(&mut dst, &changes, None).unwrap();
        assert_eq!(report.set_aside, 2, "{report:?}");
        let failures = dst.failures().unwrap();
        assert_eq!(failures.len(), 2, "{failures:?}");
        let named = failures.iter().find(|f| f.seq == bad.seq).expect("the bad change is named");
        assert!(named.error.contains("items_small"), "{}", named.error);
        assert!(!named.error.contains("set-based"), "{}", named.error);
        assert_eq!(failures.iter().filter(|f| f.seq == bad.seq - 1).count(), 1, "{failures:?}");
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 2500);
        assert_eq!(dst_db.count("SELECT count(*) FROM items WHERE qty <> 1"), 118);
        // The set-aside transaction's rows keep their old values.
        assert_eq!(dst_db.count("SELECT qty::bigint FROM items WHERE id = 70"), 1);
        assert_eq!(dst_db.count("SELECT qty::bigint FROM items WHERE id = 71"), 1);
        assert_eq!(dst_db.count("SELECT qty::bigint FROM items WHERE id = 72"), 33);
        assert_eq!(
            dst.version_vector().get(&src.node_id()),
            changes.last().unwrap().seq
        );
    }

    fn a_key_written_many_times_in_one_batch_ends_as_row_by_row(server: postgres) {
        let (src_db, dst_db, mut src, mut dst) = pair(server, "");
        // Each step its own source transaction, captured on its own, so the batch holds
        // every write of the key.
        let steps = [
            "INSERT INTO items VALUES (1, 'first', 1, NULL), (2, 'other', 1, NULL)",
            "UPDATE items SET name = 'second' WHERE id = 1",
            "UPDATE items SET qty = 3, name = 'third' WHERE id = 1",
            "UPDATE items SET qty = 4 WHERE id = 2",
            "DELETE FROM items WHERE id = 1",
            "INSERT INTO items VALUES (1, 'again', 5, NULL)",
            "UPDATE items SET qty = 6 WHERE id IN (1, 2)",
            "DELETE FROM items WHERE id = 2",
            // The same key twice in a row with the same shape: one set would hold both.
            "UPDATE items SET qty = 7 WHERE id = 1",
            "UPDATE items SET qty = 8 WHERE id = 1",
        ];
        for step in steps {
            src_db.psql(step);
            src.capture().unwrap();
        }
        let changes = all_changes(&src);
        assert!(changes.len() >= steps.len(), "{}", changes.len());
        let report = dst
            .apply_batch_in(&changes, WriteMode::Sets)
            .unwrap();
        assert_eq!(report.applied, changes.len() as u64);
        assert_eq!(src_db.dump("items", "id"), dst_db.dump("items", "id"));
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 1);
        assert_eq!(dst_db.count("SELECT qty::bigint FROM items WHERE id = 1 AND name = 'again'"), 8);
    }

    fn parent_and_child_rows_with_a_foreign_key_apply_in_order(server: postgres) {
        let (src_db, dst_db, mut src, mut dst) = pair(server, "");
        let mut sql = "BEGIN;".to_owned();
        for i in 1..=300 {
            sql.push_str(&format!(
                "INSERT INTO parents VALUES ({i}, 'p{i}'); INSERT INTO items VALUES ({i}, 'c{i}', 1, {i});"
            ));
        }
        sql.push_str("COMMIT;");
        src_db.psql(&sql);
        src.capture().unwrap();
        // Then the children go before their parents, in one transaction.
        src_db.psql(
            "BEGIN; DELETE FROM items WHERE id > 150; DELETE FROM parents WHERE id > 150;
             UPDATE items SET parent_id = NULL WHERE id <= 10; DELETE FROM parents WHERE id <= 10;
             COMMIT;",
        );
        src.capture().unwrap();
        let changes = all_changes(&src);
        dst.apply_batch_in(&changes, WriteMode::Sets).unwrap();
        assert_eq!(src_db.dump("parents", "id"), dst_db.dump("parents", "id"));
        assert_eq!(src_db.dump("items", "id"), dst_db.dump("items", "id"));
        assert_eq!(dst_db.count("SELECT count(*) FROM parents"), 140);
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 150);
    }
}
