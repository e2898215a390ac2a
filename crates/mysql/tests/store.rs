#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Risks covered against a real MariaDB server: writes of the `mariadb` client and of
//! another connection not captured; two databases not converging both ways (concurrent
//! edits, deletes); applied writes echoed back; a source transaction split; a mapped
//! value changed on the way; bad input half-applied or wedging the store; a table
//! without a primary key tracked; `untrack` leaving traces.

mod common;

use common::TestDb;
use concord_core::Value;
use concord_mysql::Store as _;
use concord_mysql::{ApplyError, MyStore, StoreOptions, TrackError, pull};

use mysql::prelude::Queryable;

const PEOPLE: &str =
    "CREATE TABLE people(id INT PRIMARY KEY, name VARCHAR(20), balance DECIMAL(12,2))";

fn rows(db: &TestDb) -> Vec<(i32, Option<String>, Option<String>)> {
    db.conn()
        .query("SELECT id, name, CAST(balance AS CHAR) FROM people ORDER BY id")
        .unwrap()
}

/// Trigger capture, whatever the server allows.
fn triggers_only() -> StoreOptions {
    StoreOptions {
        capture: concord_store::CaptureMethod::Triggers,
        ..StoreOptions::default()
    }
}

/// The CLI's and another connection's writes, captured with their boundaries.
fn writes_are_captured(base: &str, options: StoreOptions) {
    let db = TestDb::new(base, &[PEOPLE]);
    let mut store = MyStore::track(&db.url, &["people"], options).unwrap();
    db.cli("BEGIN; INSERT INTO people VALUES (1,'ann',1.50),(2,'bob',2); COMMIT; UPDATE people SET name='ANN' WHERE id=1");
    let mut other = db.conn();
    other.query_drop("START TRANSACTION").unwrap();
    other.query_drop("DELETE FROM people WHERE id = 2").unwrap();
    // Not committed: not captured.
    assert_eq!(store.capture().unwrap(), 3);
    other.query_drop("COMMIT").unwrap();
    assert_eq!(store.capture().unwrap(), 1);
    let changes: Vec<_> = store
        .changes_for(&Default::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let ends: Vec<bool> = changes.iter().map(|c| c.last_in_txn).collect();
    assert_eq!(ends, [false, true, true, true]);
    assert_eq!(
        changes[0]
            .columns
            .iter()
            .find(|c| c.column == "balance")
            .unwrap()
            .value,
        Value::Decimal("1.50".into())
    );
    assert!(changes[3].is_delete());
}

concord_harness::server_tests! {
    fn writes_of_the_cli_and_of_another_connection_are_captured_with_transaction_boundaries(
        base: mysql,
    ) {
        writes_are_captured(base, StoreOptions::default());
    }

    fn with_triggers_writes_of_the_cli_and_of_another_connection_are_captured_whole(
        base: mysql,
    ) {
        writes_are_captured(base, triggers_only());
    }

    fn two_databases_converge_both_ways_with_conflicts_and_deletes_and_no_echo(base: mysql) {
        let (a, b) = (TestDb::new(base, &[PEOPLE]), TestDb::new(base, &[PEOPLE]));
        a.cli("INSERT INTO people VALUES (1,'ann',1),(2,'bob',2)");
        let mut sa = MyStore::track(&a.url, &["people"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["people"], StoreOptions::default()).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        assert_eq!(rows(&a), rows(&b));
        // No echo: b logged nothing of its own.
        assert_eq!(sb.capture().unwrap(), 0);
        assert_eq!(sb.version_vector().get(&sb.node_id()), 0);
        a.cli("UPDATE people SET name='a-side' WHERE id=1");
        b.cli("UPDATE people SET name='b-side' WHERE id=1; DELETE FROM people WHERE id=2");
        pull(&mut sa, &mut sb).unwrap();
        pull(&mut sb, &mut sa).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        assert_eq!(rows(&a), rows(&b));
        assert_eq!(rows(&a).len(), 1);
        let conflicts = sa.conflicts().unwrap().len() + sb.conflicts().unwrap().len();
        assert!(conflicts >= 1, "the concurrent edit is recorded");
    }

    fn every_mapped_type_round_trips_exactly(base: mysql) {
        let ddl = "CREATE TABLE t(id BIGINT PRIMARY KEY, i TINYINT, u INT UNSIGNED, d DECIMAL(30,10),
            s VARCHAR(10), tx TEXT, b BOOLEAN, dt DATETIME(6), ts TIMESTAMP(6) NULL, day DATE,
            uid CHAR(36), j JSON, bl BLOB, vb VARBINARY(8))";
        let (a, b) = (TestDb::new(base, &[ddl]), TestDb::new(base, &[ddl]));
        a.cli("SET time_zone = '+05:30'; INSERT INTO t VALUES (-9223372036854775808, -128, 4294967295,
            '-12345678901234567890.0123456789', 'héllo ✓', 'long\\ntext', TRUE, '1000-01-01 00:00:00.000001',
            '2024-01-02 03:04:05.123456', '9999-12-31', '123e4567-e89b-12d3-a456-426614174000',
            '{\"a\": [1, 2.50]}', X'00FF10', X'DEAD')");
        let mut sa = MyStore::track(&a.url, &["t"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["t"], StoreOptions::default()).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        let q = "SELECT CONCAT_WS('|', id, i, u, d, s, tx, b, dt, UNIX_TIMESTAMP(ts), day, uid, j, HEX(bl), HEX(vb)) FROM t";
        let ra: Vec<String> = a.conn().query(q).unwrap();
        let rb: Vec<String> = b.conn().query(q).unwrap();
        assert_eq!(ra, rb);
        // Written at +05:30 by the client, held as the UTC instant.
        assert!(ra[0].contains("1704144845.123456"), "{ra:?}");
    }

    fn bad_input_names_the_row_applies_nothing_and_the_store_keeps_working(base: mysql) {
        let a = TestDb::new(
            base,
            &["CREATE TABLE people(id INT PRIMARY KEY, name VARCHAR(200), balance DECIMAL(14,4))"],
        );
        let b = TestDb::new(base, &[PEOPLE]);
        let mut sa = MyStore::track(&a.url, &["people"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["people"], StoreOptions::default()).unwrap();
        a.cli("BEGIN; INSERT INTO people VALUES (1, 'ok', 1); INSERT INTO people VALUES (7, 'this name is far too long for b', 1); COMMIT");
        // Applied as one batch, the source transaction is refused naming the row, and
        // nothing of it is applied.
        sa.capture().unwrap();
        let txn: Vec<_> = sa
            .changes_for(sb.version_vector())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let err = sb.apply_batch(&txn).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ApplyError::Row(_)), "{msg}");
        assert!(
            msg.contains("people") && msg.contains('7') && msg.contains("name"),
            "{msg}"
        );
        assert!(
            rows(&b).is_empty(),
            "nothing of the source transaction applied"
        );
        // Pulled, it is set aside, as a node does, and the stream flows on.
        assert_eq!(pull(&mut sa, &mut sb).unwrap().set_aside, 2);
        a.cli("INSERT INTO people VALUES (2, 'x', 1.2345)");
        assert_eq!(pull(&mut sa, &mut sb).unwrap().set_aside, 1);
        let failures = sb.failures().unwrap();
        let last = &failures.last().unwrap().error;
        assert!(last.contains("balance") && last.contains("(2)"), "{last}");
        a.cli("INSERT INTO people VALUES (3, 'fine', 3)");
        pull(&mut sa, &mut sb).unwrap();
        assert_eq!(rows(&b), [(3, Some("fine".into()), Some("3.00".into()))]);
        assert_eq!(sb.failures().unwrap().len(), 3);
        // The store keeps working for other input.
        b.cli("INSERT INTO people VALUES (9, 'b', 0)");
        assert_eq!(sb.capture().unwrap(), 1);
    }

    fn a_table_without_primary_key_is_refused_and_untrack_removes_every_trace(base: mysql) {
        let db = TestDb::new(base, &["CREATE TABLE nokey(a INT)", PEOPLE]);
        let err = MyStore::track(&db.url, &["nokey"], StoreOptions::default())
            .err()
            .unwrap();
        assert!(
            matches!(err, TrackError::NoPrimaryKey(ref t) if t == "nokey"),
            "{err}"
        );
        MyStore::track(&db.url, &["people"], StoreOptions::default()).unwrap();
        MyStore::untrack(&db.url, &[]).unwrap();
        let left: Vec<String> = db
            .conn()
            .query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'concord%'
                    UNION ALL SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()")
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
        db.cli("INSERT INTO people VALUES (1, 'still writable', 1)");
    }
}
