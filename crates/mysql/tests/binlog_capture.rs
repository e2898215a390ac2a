//! Log-based capture (MariaDB's row-based binary log): what that path must get right.
//!
//! Risks covered:
//! - the application still pays for a trigger although the server keeps a row-based
//!   binary log; an update is captured as a write of every column;
//! - source transactions are split or merged (boundaries must be the server's own);
//! - Concord's own applied writes are captured again (echo);
//! - a store stopped mid-stream and reopened stages a transaction twice or loses one;
//! - a write made while tracking starts is lost or captured twice (backfill and log);
//! - the reader stays down after its connection is killed (as in a server restart);
//! - `untrack` leaves something behind; the reader keeps streaming after its store is
//!   gone;
//! - a value the binary log carries differently from what a client reads (ENUM and SET
//!   as numbers, unsigned integers as signed, BINARY(n) without trailing zeros, YEAR 0,
//!   latin1 text, TIME, DATETIME fractions, DECIMAL, BIT) captured differently than the
//!   triggers capture it; a value capture cannot encode panics or is not named;
//! - a purged position is skipped silently instead of reported;
//! - `capture = "triggers"` is not honoured.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use common::{TestDb, all_changes};
use concord_core::{PrimaryKey, Value};
use concord_mysql::{MyStore, StoreError, StoreOptions, pull};
use concord_store::CaptureMethod;
use mysql::prelude::Queryable;

const ITEMS: &str =
    "CREATE TABLE items(id BIGINT PRIMARY KEY, name VARCHAR(40) NOT NULL, qty INT, notes TEXT)";
const OTHER: &str = "CREATE TABLE other(id INT PRIMARY KEY, v VARCHAR(10))";

fn triggers_only() -> StoreOptions {
    StoreOptions {
        capture: CaptureMethod::Triggers,
        ..StoreOptions::default()
    }
}

fn key(i: i64) -> PrimaryKey {
    PrimaryKey::encode(&[Value::Integer(i)]).unwrap()
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.conn().query_first::<i64, _>(sql).unwrap().unwrap()
}

fn triggers(db: &TestDb) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{}'",
            db.name
        ),
    )
}

/// Insert changes (those writing `name`, which no test updates) logged per key of
/// `items`.
fn inserts_per_key(store: &MyStore) -> HashMap<PrimaryKey, usize> {
    let mut seen = HashMap::new();
    for c in all_changes(store) {
        if c.table == "items" && c.columns.iter().any(|col| col.column == "name") {
            *seen.entry(c.key.clone()).or_insert(0) += 1;
        }
    }
    seen
}

concord_harness::server_tests! {
    fn writes_are_read_from_the_binary_log_with_no_trigger_and_exact_columns(base: mysql) {
        let db = TestDb::new(base, &[ITEMS]);
        db.cli("INSERT INTO items VALUES (1, 'existing', 1, 'n')");
        let mut store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        assert_eq!(triggers(&db), 0, "no trigger runs in the application's writes");
        let state = store.capture_state();
        assert_eq!(state.method, "binary log", "{state:?}");
        assert_eq!(store.capture().unwrap(), 1, "the existing row, from the table");
        db.cli("UPDATE items SET qty = 2 WHERE id = 1");
        db.cli("UPDATE items SET qty = 2 WHERE id = 1");
        assert_eq!(store.capture().unwrap(), 1, "an update that changed nothing logs nothing");
        let changes = all_changes(&store);
        let update = changes.last().unwrap();
        let columns: Vec<&str> = update.columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(columns, ["qty"], "only the column the update changed");
        assert_eq!(update.columns[0].value, Value::Integer(2));
        assert!(store.capture_state().lag_bytes.is_some());
        // A build without the binary-log reader (format 2) refuses the database.
        let format = count(&db, "SELECT CAST(v AS SIGNED) FROM concord_meta WHERE k = 'format'");
        assert_eq!(format, 3);
    }

    fn a_multi_row_multi_table_transaction_is_one_source_transaction(base: mysql) {
        let db = TestDb::new(base, &[ITEMS, OTHER]);
        let mut store = MyStore::track(&db.url, &["items", "other"], StoreOptions::default()).unwrap();
        db.cli("BEGIN; INSERT INTO items VALUES (1,'a',1,NULL),(2,'b',2,NULL); INSERT INTO other VALUES (1,'x'); UPDATE items SET id = 3 WHERE id = 2; COMMIT; DELETE FROM other WHERE id = 1");
        // Insert, insert, insert, rekey (delete + insert) | delete.
        assert_eq!(store.capture().unwrap(), 6);
        let changes = all_changes(&store);
        let ends: Vec<bool> = changes.iter().map(|c| c.last_in_txn).collect();
        assert_eq!(ends, [false, false, false, false, true, true]);
        let tables: Vec<&str> = changes.iter().map(|c| c.table.as_str()).collect();
        assert_eq!(tables, ["items", "items", "other", "items", "items", "other"]);
        assert!(changes[3].is_delete() && changes[3].key == key(2));
        assert_eq!(changes[4].key, key(3));
    }

    fn two_stores_applying_each_others_changes_do_not_echo(base: mysql) {
        let (a, b) = (TestDb::new(base, &[ITEMS]), TestDb::new(base, &[ITEMS]));
        let mut sa = MyStore::track(&a.url, &["items"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        a.cli("INSERT INTO items VALUES (1,'from a',1,NULL)");
        b.cli("INSERT INTO items VALUES (2,'from b',2,NULL)");
        for _ in 0..3 {
            pull(&mut sa, &mut sb).unwrap();
            pull(&mut sb, &mut sa).unwrap();
        }
        assert_eq!(sa.version_vector().get(&sa.node_id()), 1, "a logged only its own write");
        assert_eq!(sb.version_vector().get(&sb.node_id()), 1, "b logged only its own write");
        assert_eq!(sa.capture().unwrap(), 0);
        assert_eq!(sb.capture().unwrap(), 0);
        assert_eq!(count(&a, "SELECT count(*) FROM items"), 2);
        assert_eq!(count(&b, "SELECT count(*) FROM items"), 2);
    }

    fn a_store_dropped_mid_stream_and_reopened_stages_nothing_twice_and_loses_nothing(base: mysql) {
        let db = TestDb::new(base, &[ITEMS]);
        let mut store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        let write = |from: i64, to: i64| {
            let mut conn = db.conn();
            for i in from..to {
                conn.query_drop(format!("INSERT INTO items VALUES ({i}, 'r', {i}, NULL)")).unwrap();
            }
        };
        write(0, 40);
        store.capture().unwrap();
        // The reader is streaming while the writes go on; the store goes away with
        // transactions staged and not folded, and some not read yet.
        let writer = std::thread::scope(|s| {
            let w = s.spawn(|| write(40, 120));
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(store);
            w.join()
        });
        writer.unwrap();
        write(120, 150);
        let mut store = MyStore::open(&db.url).unwrap();
        store.capture().unwrap();
        let seen = inserts_per_key(&store);
        assert_eq!(seen.len(), 150, "every insert logged");
        assert!(seen.values().all(|&n| n == 1), "none logged twice");
        let mut store = MyStore::open(&db.url).unwrap();
        assert_eq!(store.capture().unwrap(), 0);
    }

    fn writes_during_track_are_captured_exactly_once(base: mysql) {
        let db = TestDb::new(base, &[ITEMS]);
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicI64::new(0));
        let writer = {
            let (stop, next, mut conn) = (stop.clone(), next.clone(), db.conn());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    conn.query_drop(format!("INSERT INTO items VALUES ({i}, 'w', 0, NULL)")).unwrap();
                    if i % 3 == 0 {
                        conn.query_drop(format!("UPDATE items SET qty = qty + 1 WHERE id = {}", i / 2)).unwrap();
                    }
                }
            })
        };
        while next.load(Ordering::SeqCst) < 50 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        store.capture().unwrap();
        let rows = count(&db, "SELECT count(*) FROM items");
        let seen = inserts_per_key(&store);
        assert_eq!(seen.len() as i64, rows, "every row is logged");
        assert!(seen.values().all(|&n| n == 1), "no insert logged twice: {seen:?}");
        // The logged state of each row is the table's: replay onto a fresh database.
        let copy = TestDb::new(base, &[ITEMS]);
        let mut target = MyStore::track(&copy.url, &["items"], StoreOptions::default()).unwrap();
        pull(&mut store, &mut target).unwrap();
        let sum = |d: &TestDb| count(d, "SELECT COALESCE(SUM(qty), 0) FROM items");
        assert_eq!(sum(&db), sum(&copy), "every update captured once, none lost");
    }

    fn untrack_leaves_nothing_and_the_reader_ends_with_its_store(base: mysql) {
        let db = TestDb::new(base, &[ITEMS, OTHER]);
        let mut store = MyStore::track(&db.url, &["items", "other"], StoreOptions::default()).unwrap();
        db.cli("INSERT INTO items VALUES (1,'a',1,NULL)");
        store.capture().unwrap();
        let reader = store.binlog_reader_connection().expect("a reader runs");
        MyStore::untrack(&db.url, &["items"]).unwrap();
        assert_eq!(
            count(&db, "SELECT count(*) FROM concord_meta WHERE k LIKE 'binlog\\_start.%' AND k <> (SELECT CONCAT('binlog_start.', id) FROM concord_tables WHERE name = 'other')"),
            0
        );
        drop(store);
        MyStore::untrack(&db.url, &[]).unwrap();
        let left = count(&db, &format!(
            "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME LIKE 'concord\\_%'", db.name));
        assert_eq!(left, 0, "every concord_ table dropped");
        assert_eq!(triggers(&db), 0);
        let alive = count(&db, &format!("SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = {reader}"));
        assert_eq!(alive, 0, "the reader's connection is gone");
    }

    fn the_reader_recovers_after_its_connection_is_killed(base: mysql) {
        let db = TestDb::new(base, &[ITEMS]);
        let mut store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        db.cli("INSERT INTO items VALUES (1,'a',1,NULL)");
        assert_eq!(store.capture().unwrap(), 1);
        let reader = store.binlog_reader_connection().unwrap();
        db.conn().query_drop(format!("KILL {reader}")).unwrap();
        db.cli("INSERT INTO items VALUES (2,'b',2,NULL); UPDATE items SET qty = 5 WHERE id = 1");
        assert_eq!(store.capture().unwrap(), 2);
        assert_ne!(store.binlog_reader_connection(), Some(reader), "a new connection");
        assert_eq!(inserts_per_key(&store).len(), 2);
    }

    fn capture_triggers_option_keeps_the_trigger_path(base: mysql) {
        let db = TestDb::new(base, &[ITEMS]);
        let mut store = MyStore::track(&db.url, &["items"], triggers_only()).unwrap();
        assert_eq!(triggers(&db), 3);
        let format = count(&db, "SELECT CAST(v AS SIGNED) FROM concord_meta WHERE k = 'format'");
        assert_eq!(format, 2, "older builds still open a database captured by triggers");
        let state = store.capture_state();
        assert_eq!(state.method, "triggers");
        assert!(state.note.unwrap().contains("as configured"));
        db.cli("INSERT INTO items VALUES (1,'a',1,NULL)");
        assert_eq!(store.capture().unwrap(), 1);
        assert!(store.binlog_reader_connection().is_none());
        // Tracking more tables later keeps the method the database was first tracked with.
        drop(store);
        let store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        assert_eq!(triggers(&db), 3);
        drop(store);
    }

    fn values_the_binary_log_carries_differently_are_captured_as_the_triggers_capture_them(base: mysql) {
        let ddl = "CREATE TABLE t(id INT PRIMARY KEY, e ENUM('a','b''c'), s SET('x','y','z'),
            b BINARY(4), vb VARBINARY(8), y YEAR, tm TIME(3), ts TIMESTAMP(3) NULL, dt DATETIME(6),
            d DECIMAL(10,2), u TINYINT UNSIGNED, mu MEDIUMINT UNSIGNED, ub BIGINT UNSIGNED,
            bt BIT(10), g INT AS (id * 2) VIRTUAL, l VARCHAR(10) CHARACTER SET latin1,
            j JSON, f FLOAT, dbl DOUBLE, bo BOOLEAN, dd DATE, tx TEXT)";
        let rows = "INSERT INTO t(id, e, s, b, vb, y, tm, ts, dt, d, u, mu, ub, bt, l, j, f, dbl, bo, dd, tx) VALUES
            (1, 'b''c', 'x,z', x'01000000', x'00ff00', 0, '-01:02:03.5', '2024-01-02 03:04:05.678',
             '2024-01-02 03:04:05.000001', -0.5, 255, 16777215, 18446744073709551615, b'1000000001',
             'é€', '{\"k\": [1, 2]}', 1.1, 0.1, 1, '2024-02-29', 'ünï'),
            (2, 'a', '', x'00', x'', 2155, '838:59:59', NULL, '1000-01-01 00:00:00', 99999999.99, 0, 0,
             9223372036854775808, b'0', '', 'null', -3.4e38, 1e300, 0, '1000-01-01', ''),
            (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
             NULL, NULL, NULL, NULL, NULL, NULL)";
        let (a, b) = (TestDb::new(base, &[ddl]), TestDb::new(base, &[ddl]));
        let mut log = MyStore::track(&a.url, &["t"], StoreOptions::default()).unwrap();
        let mut trig = MyStore::track(&b.url, &["t"], triggers_only()).unwrap();
        assert_eq!(log.capture_state().method, "binary log");
        a.cli(rows);
        b.cli(rows);
        let update = "UPDATE t SET e = 'a', s = 'y', b = x'0000', u = u - 1, tm = '00:00:00.001', dt = '2024-01-02 03:04:05.5' WHERE id = 1";
        a.cli(update);
        b.cli(update);
        assert_eq!(log.capture().unwrap(), 4);
        assert_eq!(trig.capture().unwrap(), 4);
        let values = |s: &MyStore| -> Vec<Vec<(String, Value)>> {
            all_changes(s)
                .into_iter()
                .map(|c| c.columns.into_iter().map(|col| (col.column, col.value)).collect())
                .collect()
        };
        let (from_log, from_triggers) = (values(&log), values(&trig));
        assert_eq!(from_log, from_triggers);
        let first: HashMap<String, Value> = from_log[0].iter().cloned().collect();
        assert_eq!(first["e"], Value::Text("b'c".into()));
        assert_eq!(first["b"], Value::Blob(vec![1, 0, 0, 0]));
        assert_eq!(first["l"], Value::Text("é€".into()));
        assert_eq!(first["ub"], Value::Decimal("18446744073709551615".into()));
        let mut update: Vec<&str> = from_log[3].iter().map(|(c, _)| c.as_str()).collect();
        update.sort_unstable();
        assert_eq!(update, ["b", "dt", "e", "s", "tm", "u"], "exactly the changed columns");
    }

    fn a_local_write_committing_between_the_applys_barrier_and_its_row_write_is_not_overwritten(
        base: mysql,
    ) {
        let (a, b) = (TestDb::new(base, &[ITEMS]), TestDb::new(base, &[ITEMS]));
        a.cli("INSERT INTO items VALUES (1,'row',1,NULL)");
        let mut sa = MyStore::track(&a.url, &["items"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        a.cli("UPDATE items SET qty = 10 WHERE id = 1");
        sa.capture().unwrap();
        let remote: Vec<_> = all_changes(&sa).into_iter().skip(1).collect();
        assert_eq!(remote.len(), 1);
        // The apply has passed its barrier when b's application commits its own
        // (later) write of the same column; nothing makes the application wait.
        let mut txn = sb.begin_apply_in(concord_store::engine::WriteMode::Exact).unwrap();
        b.cli("UPDATE items SET qty = 20 WHERE id = 1");
        txn.apply(&remote[0]).unwrap();
        let e = txn.commit().unwrap_err().to_string();
        assert!(e.contains("local write"), "{e}");
        assert_eq!(count(&b, "SELECT qty FROM items WHERE id = 1"), 20, "rolled back");
        // Retried: the local write is captured first; it is the later one and wins on
        // both sides.
        pull(&mut sa, &mut sb).unwrap();
        pull(&mut sb, &mut sa).unwrap();
        assert_eq!(count(&b, "SELECT qty FROM items WHERE id = 1"), 20);
        assert_eq!(count(&a, "SELECT qty FROM items WHERE id = 1"), 20);
    }

    fn a_row_event_larger_than_max_allowed_packet_is_read(base: mysql) {
        // An update's event holds the row twice (before and after): two 9 MiB values
        // make an event above the server's 16 MiB max_allowed_packet, which the server
        // still sends to a replica (up to slave_max_allowed_packet).
        let db = TestDb::new(base, &["CREATE TABLE big(id INT PRIMARY KEY, b LONGBLOB, n INT)"]);
        let mut store = MyStore::track(&db.url, &["big"], StoreOptions::default()).unwrap();
        db.cli("INSERT INTO big VALUES (1, REPEAT('x', 9 << 20), 0)");
        db.cli("UPDATE big SET b = REPEAT('y', 9 << 20), n = 1 WHERE id = 1");
        assert_eq!(store.capture().unwrap(), 2);
        let changes = all_changes(&store);
        let update: Vec<&str> = changes[1].columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(update, ["b", "n"]);
        assert_eq!(changes[1].columns[0].value, Value::Blob(vec![b'y'; 9 << 20]));
    }

    fn a_value_capture_cannot_read_is_reported_by_table_and_column(base: mysql) {
        let db = TestDb::new(base, &["CREATE TABLE d(id INT PRIMARY KEY, at DATETIME)"]);
        let mut store = MyStore::track(&db.url, &["d"], StoreOptions::default()).unwrap();
        db.cli("SET SESSION sql_mode = ''; INSERT INTO d VALUES (1, '0000-00-00 00:00:00')");
        let e = store.capture().unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, StoreError::Capture { .. }), "{e:?}");
        assert!(text.contains('d') && text.contains("at"), "{text}");
        // The store still answers, and a fixed row is captured.
        db.cli("UPDATE d SET at = '2024-01-01' WHERE id = 1");
        let _ = store.capture();
        assert!(store.capture_state().method == "binary log");
    }

    fn the_reader_follows_the_server_to_its_next_binary_log_file(base: mysql) {
        let db = TestDb::new(base, &[ITEMS]);
        let mut store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        db.cli("INSERT INTO items VALUES (1,'a',1,NULL)");
        assert_eq!(store.capture().unwrap(), 1);
        let file = |db: &TestDb| -> String {
            db.conn()
                .query_first::<String, _>("SELECT v FROM concord_meta WHERE k = 'binlog_pos'")
                .unwrap()
                .unwrap()
        };
        let before = file(&db);
        db.cli("FLUSH BINARY LOGS; INSERT INTO items VALUES (2,'b',2,NULL)");
        assert_eq!(store.capture().unwrap(), 1);
        let after = file(&db);
        assert_ne!(before.rsplit_once(':').unwrap().0, after.rsplit_once(':').unwrap().0, "{before} {after}");
        drop(store);
        db.cli("INSERT INTO items VALUES (3,'c',3,NULL)");
        let mut store = MyStore::open(&db.url).unwrap();
        assert_eq!(store.capture().unwrap(), 1, "resumed in the new file");
        assert_eq!(inserts_per_key(&store).len(), 3);
    }

    fn the_reader_follows_the_server_past_a_file_a_crash_left_unfinished(_base: mysql) {
        // A crash leaves the server's last binary-log file without a rotate event; after
        // the restart the server writes a new file and moves a reader on to it with an
        // artificial rotate, which the reader must follow (found by the fault harness:
        // positions of the new file stored under the old file's name, then "impossible
        // position" at the next reconnect). Crashing a server needs one of the test's
        // own.
        let server = match concord_harness::private_servers::PrivateMariadb::start() {
            Ok(server) => server,
            Err(e) => {
                println!("the_reader_follows_the_server_past_a_file_a_crash_left_unfinished: skipped, no private MariaDB server ({e})");
                return;
            }
        };
        let db = TestDb::new(&server.admin_url(), &[ITEMS]);
        let mut store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        db.conn().query_drop("INSERT INTO items VALUES (1,'a',1,NULL)").unwrap();
        assert_eq!(store.capture().unwrap(), 1);
        server.crash_and_restart(std::time::Duration::from_millis(200)).unwrap();
        db.conn().query_drop("INSERT INTO items VALUES (2,'b',2,NULL)").unwrap();
        let started = std::time::Instant::now();
        let captured = loop {
            match store.capture() {
                Ok(n) => break n,
                // The store's own connection died with the server; it reconnects.
                Err(e) => {
                    assert!(started.elapsed() < std::time::Duration::from_secs(60), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        };
        assert_eq!(captured, 1, "the write after the restart");
        drop(store);
        db.conn().query_drop("INSERT INTO items VALUES (3,'c',3,NULL)").unwrap();
        let mut store = MyStore::open(&db.url).unwrap();
        assert_eq!(store.capture().unwrap(), 1, "resumed where it stopped, in the new file");
        assert_eq!(inserts_per_key(&store).len(), 3);
    }

    fn a_purged_position_is_reported_not_skipped(base: mysql) {
        let db = TestDb::new(base, &[ITEMS]);
        let store = MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        drop(store);
        db.conn()
            .query_drop("UPDATE concord_meta SET v = 'mysql-bin.999998:4' WHERE k = 'binlog_pos'")
            .unwrap();
        let mut store = MyStore::open(&db.url).unwrap();
        let note = store.capture_state().note.unwrap_or_default();
        assert!(note.contains("purged"), "{note}");
        let e = store.capture().unwrap_err().to_string();
        assert!(e.contains("no longer on the server"), "{e}");
    }
}
