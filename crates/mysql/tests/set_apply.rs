//! Set-based apply against a real MariaDB server: users' rows are written a run of
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
//! - runs longer than one statement (thousands of rows) lose or repeat rows;
//! - a set update or delete on a two-column key matches the wrong rows, or a set update
//!   mangles a value on its way to the column (bytes that are not UTF-8 bound for a
//!   `BLOB`, a 70,000-byte value: a derived table of parameters did both).
//!
//! Each test creates its own throwaway databases on the server named by
//! `CONCORD_TEST_MYSQL_URL` and is skipped (with a message) without it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestDb, all_changes};
use concord_mysql::Store as _;
use concord_mysql::{ApplyError, MyStore, RowError, StoreOptions};
use concord_store::engine::WriteMode;
use mysql::prelude::Queryable;

const DDL: &[&str] = &[
    "CREATE TABLE parents(id BIGINT PRIMARY KEY, name TEXT) ENGINE=InnoDB",
    "CREATE TABLE items(
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        qty INT NOT NULL,
        parent_id BIGINT,
        CONSTRAINT items_parent FOREIGN KEY (parent_id) REFERENCES parents(id)
    ) ENGINE=InnoDB",
];

/// The destination refuses a quantity of 1000 or more; the source does not.
const DESTINATION_ONLY: &str = "ALTER TABLE items ADD CONSTRAINT items_small CHECK (qty < 1000)";

impl common::TestDb {
    fn count(&self, sql: &str) -> i64 {
        self.conn().query_first(sql).unwrap().unwrap()
    }

    /// Every row of `table` as text, in key order.
    fn dump(&self, table: &str) -> Vec<String> {
        let columns = match table {
            "parents" => "id, IFNULL(name, '-')",
            _ => "id, name, qty, IFNULL(parent_id, '-')",
        };
        self.conn()
            .query(format!(
                "SELECT CONCAT_WS('|', {columns}) FROM {table} ORDER BY id"
            ))
            .unwrap()
    }

    fn run(&self, sql: &str) {
        self.cli(sql);
    }
}

const TABLES: &[&str] = &["parents", "items"];

/// Source and destination, tracked; the destination also runs `extra`.
fn pair(server: &str, extra: &str) -> (TestDb, TestDb, MyStore, MyStore) {
    let src_db = TestDb::new(server, DDL);
    let mut ddl = DDL.to_vec();
    if !extra.is_empty() {
        ddl.push(extra);
    }
    let dst_db = TestDb::new(server, &ddl);
    let src = MyStore::track(&src_db.url, TABLES, StoreOptions::default()).unwrap();
    let dst = MyStore::track(&dst_db.url, TABLES, StoreOptions::default()).unwrap();
    (src_db, dst_db, src, dst)
}

concord_harness::server_tests! {
    fn a_refused_change_in_a_set_is_named_and_only_its_transaction_is_set_aside(server: mysql) {
        let (src_db, dst_db, mut src, mut dst) = pair(server, DESTINATION_ONLY);
        // One large transaction (longer than one statement), then 60 small ones that
        // update two rows each; the 31st sets a quantity the destination refuses on its
        // second row.
        src_db.run("INSERT INTO items SELECT seq, CONCAT('item ', seq), 1, NULL FROM seq_1_to_2500");
        let mut sql = String::new();
        for t in 0..60 {
            let bad = if t == 30 { 5000 } else { 2 + t };
            sql.push_str(&format!(
                "START TRANSACTION; UPDATE items SET qty = {} WHERE id = {}; UPDATE items SET qty = {bad} WHERE id = {}; COMMIT;",
                2 + t,
                10 + 2 * t,
                11 + 2 * t
            ));
        }
        src_db.run(&sql);
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
        assert_eq!(dst_db.count("SELECT qty FROM items WHERE id = 70"), 1);
        assert_eq!(dst_db.count("SELECT qty FROM items WHERE id = 71"), 1);
        assert_eq!(dst_db.count("SELECT qty FROM items WHERE id = 72"), 33);
        assert_eq!(
            dst.version_vector().get(&src.node_id()),
            changes.last().unwrap().seq
        );
    }

    fn a_key_written_many_times_in_one_batch_ends_as_row_by_row(server: mysql) {
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
            src_db.run(step);
            src.capture().unwrap();
        }
        let changes = all_changes(&src);
        assert!(changes.len() >= steps.len(), "{}", changes.len());
        let report = dst
            .apply_batch_in(&changes, WriteMode::Sets)
            .unwrap();
        assert_eq!(report.applied, changes.len() as u64);
        assert_eq!(src_db.dump("items"), dst_db.dump("items"));
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 1);
        assert_eq!(dst_db.count("SELECT qty FROM items WHERE id = 1 AND name = 'again'"), 8);
    }

    fn set_writes_on_a_two_column_key_keep_every_value_exact(server: mysql) {
        let ddl = [
            "CREATE TABLE pairs(a INT, b VARCHAR(10), v TEXT, bin LONGBLOB, PRIMARY KEY (a, b)) ENGINE=InnoDB",
        ];
        let src_db = TestDb::new(server, &ddl);
        let dst_db = TestDb::new(server, &ddl);
        let mut src = MyStore::track(&src_db.url, &["pairs"], StoreOptions::default()).unwrap();
        let mut dst = MyStore::track(&dst_db.url, &["pairs"], StoreOptions::default()).unwrap();
        src_db.run(
            "INSERT INTO pairs SELECT seq DIV 3, CONCAT('k', seq MOD 3), CONCAT('v', seq), NULL
             FROM seq_0_to_299",
        );
        src.capture().unwrap();
        src_db.run(
            "UPDATE pairs SET v = CONCAT(v, '!'), bin = UNHEX('00FF80FE') WHERE b <> 'k1';
             UPDATE pairs SET bin = REPEAT('z', 70000) WHERE a = 7;
             DELETE FROM pairs WHERE b = 'k2' AND a >= 50;",
        );
        src.capture().unwrap();
        let changes = all_changes(&src);
        dst.apply_batch_in(&changes, WriteMode::Sets).unwrap();
        let dump = |db: &TestDb| -> Vec<(i64, String, String, Option<Vec<u8>>)> {
            db.conn()
                .query("SELECT a, b, v, bin FROM pairs ORDER BY a, b")
                .unwrap()
        };
        let (ours, theirs) = (dump(&src_db), dump(&dst_db));
        assert_eq!(ours.len(), 250);
        assert!(ours == theirs, "the destination differs from the source");
        assert_eq!(dst_db.count("SELECT length(bin) FROM pairs WHERE a = 7 AND b = 'k0'"), 70000);
        assert_eq!(dst_db.count("SELECT count(*) FROM pairs WHERE bin = UNHEX('00FF80FE')"), 148);
    }

    fn parent_and_child_rows_with_a_foreign_key_apply_in_order(server: mysql) {
        let (src_db, dst_db, mut src, mut dst) = pair(server, "");
        let mut sql = "START TRANSACTION;".to_owned();
        for i in 1..=300 {
            sql.push_str(&format!(
                "INSERT INTO parents VALUES ({i}, 'p{i}'); INSERT INTO items VALUES ({i}, 'c{i}', 1, {i});"
            ));
        }
        sql.push_str("COMMIT;");
        src_db.run(&sql);
        src.capture().unwrap();
        // Then the children go before their parents, in one transaction.
        src_db.run(
            "START TRANSACTION; DELETE FROM items WHERE id > 150; DELETE FROM parents WHERE id > 150;
             UPDATE items SET parent_id = NULL WHERE id <= 10; DELETE FROM parents WHERE id <= 10;
             COMMIT;",
        );
        src.capture().unwrap();
        let changes = all_changes(&src);
        dst.apply_batch_in(&changes, WriteMode::Sets).unwrap();
        assert_eq!(src_db.dump("parents"), dst_db.dump("parents"));
        assert_eq!(src_db.dump("items"), dst_db.dump("items"));
        assert_eq!(dst_db.count("SELECT count(*) FROM parents"), 140);
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 150);
    }
}
