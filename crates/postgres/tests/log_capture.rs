//! Log-based capture (logical decoding): what the write-ahead log path must get right.
//!
//! Risks covered:
//! - the application still pays for a trigger (one is installed although the server
//!   allows decoding), or the table is not set up to say which columns an update
//!   changed (`REPLICA IDENTITY FULL`);
//! - an update is captured as a write of every column, so concurrent edits of different
//!   columns would conflict; an unchanged TOASTed value (not sent again by PostgreSQL)
//!   is captured as NULL;
//! - source transactions are split or merged: boundaries must be PostgreSQL's own;
//! - Concord's own applied writes are captured again (echo);
//! - a restart after capture committed but before the slot moved logs changes twice;
//! - a write made while tracking starts is lost or captured twice (backfill and log);
//! - the log reader stays down after its connection is killed (a server restart);
//! - a large source transaction folded in bounded steps (so the stream overlaps) is
//!   marked as ending before its last change, or the steps lose or repeat a row;
//! - `untrack` leaves the slot (which would keep the server's WAL forever), the
//!   publication, the origin or the changed replica identity behind.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestDb, all_changes};
use concord_core::{PrimaryKey, Value};
use concord_postgres::{PgStore, StoreOptions};

const DDL: &str =
    "CREATE TABLE items(id bigint PRIMARY KEY, name text NOT NULL, qty integer, notes text);";

fn key(i: i64) -> PrimaryKey {
    PrimaryKey::encode(&[Value::Integer(i)]).unwrap()
}

fn slot_of(db: &TestDb) -> String {
    db.client()
        .query_one("SELECT value FROM concord.meta WHERE key = 'slot'", &[])
        .unwrap()
        .get(0)
}

concord_harness::server_tests! {
    fn writes_are_read_from_the_log_with_no_trigger_and_exact_columns(server: postgres) {
        let db = TestDb::new(server, DDL);
        let big = "x".repeat(100_000);
        db.psql(&format!("INSERT INTO items VALUES (1, 'existing', 1, '{big}')"));
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        assert_eq!(db.count("SELECT count(*) FROM pg_trigger WHERE tgname = 'concord_capture'"), 0);
        assert_eq!(
            db.count("SELECT count(*) FROM pg_class WHERE relname = 'items' AND relreplident = 'f'"),
            1
        );
        assert_eq!(db.count(&format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'", slot_of(&db))), 1);
        assert_eq!(store.capture().unwrap(), 1, "the existing row, from the table");
        // Two source transactions: an update of one column of the row whose notes are
        // TOASTed (PostgreSQL does not send them again), then an insert, a key change
        // and a delete together.
        db.psql("UPDATE items SET qty = 2 WHERE id = 1");
        db.psql("BEGIN; INSERT INTO items VALUES (2, 'two', 2, NULL); UPDATE items SET id = 3 WHERE id = 2; DELETE FROM items WHERE id = 1; COMMIT;");
        assert_eq!(store.capture().unwrap(), 5);
        let log = all_changes(&store);
        let update = &log[1];
        assert_eq!(update.key, key(1));
        let columns: Vec<&str> = update.columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(columns, ["qty"], "only the column the update changed");
        assert!(update.last_in_txn);
        let ends: Vec<bool> = log[2..].iter().map(|c| c.last_in_txn).collect();
        assert_eq!(ends, [false, false, false, true], "one source transaction, whole");
        let keys: Vec<(PrimaryKey, bool)> = log[2..].iter().map(|c| (c.key.clone(), c.is_delete())).collect();
        assert_eq!(
            keys,
            [(key(2), false), (key(2), true), (key(3), false), (key(1), true)],
            "insert, the key change as delete and insert, the delete"
        );
        // The unchanged TOASTed value survives an update of another column.
        db.psql("INSERT INTO items VALUES (4, 'four', 4, 'n'); UPDATE items SET notes = repeat('y', 100000) WHERE id = 4;");
        db.psql("UPDATE items SET name = 'renamed' WHERE id = 4");
        store.capture().unwrap();
        let last = all_changes(&store).pop().unwrap();
        let columns: Vec<&str> = last.columns.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(columns, ["name"]);
    }

    fn concords_own_applied_writes_are_not_captured_again(server: postgres) {
        let a = TestDb::new(server, DDL);
        let b = TestDb::new(server, DDL);
        let mut sa = PgStore::track(&a.url, &["items"], StoreOptions::default()).unwrap();
        let mut sb = PgStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        a.psql("INSERT INTO items SELECT g, 'row ' || g, g, NULL FROM generate_series(1, 100) g");
        let report = concord_postgres::pull(&mut sa, &mut sb).unwrap();
        assert_eq!(report.applied, 100);
        assert_eq!(b.count("SELECT count(*) FROM items"), 100);
        assert_eq!(sb.capture().unwrap(), 0, "applied writes are not local writes");
        // The origin is released: b's own writes are still captured, also by a store
        // opened beside this one.
        b.psql("UPDATE items SET qty = 0 WHERE id = 7");
        let mut again = PgStore::open(&b.url).unwrap();
        assert_eq!(again.capture().unwrap(), 1);
        let report = concord_postgres::pull(&mut sb, &mut sa).unwrap();
        assert_eq!(report.applied, 1, "{report:?}");
        assert_eq!(sa.capture().unwrap(), 0);
        assert_eq!(a.count("SELECT qty::bigint FROM items WHERE id = 7"), 0);
    }

    fn a_restart_after_capture_committed_logs_nothing_twice(server: postgres) {
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        db.psql("INSERT INTO items SELECT g, 'row', g, NULL FROM generate_series(1, 50) g");
        assert_eq!(store.capture().unwrap(), 50);
        // (Whether the server heard the reader's acknowledgement before it stopped is
        // up to timing; transactions it sends again are skipped by the stored
        // position, which the unit tests of `logical.rs` check deterministically.)
        drop(store);
        let mut store = PgStore::open(&db.url).unwrap();
        assert_eq!(store.capture().unwrap(), 0, "nothing is captured twice");
        db.psql("UPDATE items SET qty = -1 WHERE id = 50");
        assert_eq!(store.capture().unwrap(), 1);
        assert_eq!(all_changes(&store).len(), 51);
    }

    fn writes_made_while_tracking_starts_are_captured_exactly_once(server: postgres) {
        let db = TestDb::new(server, DDL);
        db.psql("INSERT INTO items SELECT g, 'before', 0, NULL FROM generate_series(1, 1000) g");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let mut client = db.client();
            std::thread::spawn(move || {
                let mut id = 1_000_000i64;
                while !stop.load(Ordering::SeqCst) {
                    client.execute("INSERT INTO items VALUES ($1, 'during', 0, NULL)", &[&id]).unwrap();
                    client.execute("UPDATE items SET qty = qty + 1 WHERE id = $1", &[&(id % 1000 + 1)]).unwrap();
                    id += 1;
                }
                id
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        store.capture().unwrap();
        let mut inserts: HashMap<PrimaryKey, usize> = HashMap::new();
        for change in all_changes(&store) {
            if change.causal_length.0 == 1 && change.columns.len() == 4 {
                *inserts.entry(change.key.clone()).or_default() += 1;
            }
        }
        let rows = db.count("SELECT count(*) FROM items") as usize;
        assert_eq!(inserts.len(), rows, "every row is captured");
        assert!(inserts.values().all(|&n| n == 1), "no row is inserted twice");
        // And the log's last value of every qty is the table's.
        let mut qty: HashMap<PrimaryKey, Value> = HashMap::new();
        for change in all_changes(&store) {
            for c in &change.columns {
                if c.column == "qty" {
                    qty.insert(change.key.clone(), c.value.clone());
                }
            }
        }
        for row in db.client().query("SELECT id, qty FROM items", &[]).unwrap() {
            let (id, q): (i64, i32) = (row.get(0), row.get(1));
            assert_eq!(qty.get(&key(id)), Some(&Value::Integer(i64::from(q))), "row {id}");
        }
    }

    fn a_write_by_a_client_is_noticed_by_the_cheap_check(server: postgres) {
        use concord_postgres::Store as _;
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        assert!(store.answers_pending_cheaply());
        store.capture().unwrap();
        // (That nothing was written since cannot be checked here: the WAL position is
        // the whole server's, and other tests write to it meanwhile.)
        db.psql("INSERT INTO items VALUES (1, 'one', 1, NULL)");
        // The log reader stages it shortly after the commit.
        let started = std::time::Instant::now();
        while !store.writes_may_be_pending().unwrap() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "a client's write is noticed");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(store.capture().unwrap(), 1);
        let state = store.capture_state();
        assert_eq!(state.method, "write-ahead log");
        assert!(state.lag_bytes.is_some(), "{state:?}");
    }

    fn a_large_transaction_folded_in_steps_ends_only_at_its_last_change(server: postgres) {
        use concord_postgres::Store as _;
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        // The first capture starts the log reader, as a node's first one does.
        assert_eq!(store.capture().unwrap(), 0);
        // One source transaction of 25,000 rows (more than two steps), then a small one.
        db.psql("INSERT INTO items SELECT i, 'n' || i, 1, NULL FROM generate_series(1, 25000) i");
        db.psql("UPDATE items SET qty = 2 WHERE id = 7");
        // The node's loop: capture what the reader staged, a bounded step at a time,
        // while the cheap check says more is pending.
        let started = std::time::Instant::now();
        let mut steps = Vec::new();
        let mut total = 0;
        while total < 25_001 {
            assert!(started.elapsed() < std::time::Duration::from_secs(60), "captured {total} of 25001 in {steps:?}");
            if !store.writes_may_be_pending().unwrap() {
                std::thread::sleep(std::time::Duration::from_millis(2));
                continue;
            }
            let n = store.capture_ready().unwrap();
            if n > 0 {
                steps.push(n);
                // What a step committed is in the log at once, the transaction still open.
                let log = all_changes(&store);
                assert_eq!(log.len() as u64, total + n);
                if log.len() < 25_000 {
                    assert!(log.iter().all(|c| !c.last_in_txn), "no end before the last change");
                }
            }
            total += n;
        }
        assert!(steps.len() >= 3, "folded in bounded steps: {steps:?}");
        let log = all_changes(&store);
        assert_eq!(log.len(), 25_001, "every row once");
        let ends: Vec<usize> = log.iter().enumerate().filter(|(_, c)| c.last_in_txn).map(|(i, _)| i).collect();
        assert_eq!(ends, [24_999, 25_000], "two source transactions, each whole");
        let keys: std::collections::HashSet<PrimaryKey> = log[..25_000].iter().map(|c| c.key.clone()).collect();
        assert_eq!(keys.len(), 25_000);
        assert_eq!(log[25_000].key, key(7));
    }

    fn a_restart_between_steps_finishes_the_open_transaction_once(server: postgres) {
        use concord_postgres::Store as _;
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        assert_eq!(store.capture().unwrap(), 0);
        db.psql("INSERT INTO items SELECT i, 'n' || i, 1, NULL FROM generate_series(1, 15000) i");
        let started = std::time::Instant::now();
        let mut first = 0;
        while first == 0 {
            assert!(started.elapsed() < std::time::Duration::from_secs(60));
            first = store.capture_ready().unwrap();
        }
        assert!(first < 15_000, "one bounded step: {first}");
        // The node stops between two steps (what a crash after a step's commit leaves).
        drop(store);
        let mut store = PgStore::open(&db.url).unwrap();
        db.psql("UPDATE items SET qty = 5 WHERE id = 3");
        assert_eq!(store.capture().unwrap(), 15_001 - first);
        let log = all_changes(&store);
        assert_eq!(log.len(), 15_001, "every row once");
        let ends: Vec<usize> = log.iter().enumerate().filter(|(_, c)| c.last_in_txn).map(|(i, _)| i).collect();
        assert_eq!(ends, [14_999, 15_000], "the open transaction ends at its last change");
    }

    fn the_log_reader_recovers_when_its_connection_is_killed(server: postgres) {
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        db.psql("INSERT INTO items VALUES (1, 'one', 1, NULL)");
        assert_eq!(store.capture().unwrap(), 1, "the reader is running");
        // What a server restart, a failover or an administrator does to the reader.
        let killed = db.count(&format!(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
              WHERE slot_name = '{}' AND active_pid IS NOT NULL) k",
            slot_of(&db)
        ));
        assert_eq!(killed, 1);
        db.psql("INSERT INTO items VALUES (2, 'two', 2, NULL); UPDATE items SET qty = 10 WHERE id = 1;");
        assert_eq!(store.capture().unwrap(), 2, "captured once the reader is back");
        assert_eq!(all_changes(&store).len(), 3, "nothing twice");
    }

    fn untrack_drops_the_slot_publication_origin_and_restores_replica_identity(server: postgres) {
        let db = TestDb::new(server, DDL);
        db.psql("CREATE TABLE other(id integer PRIMARY KEY, note text)");
        let store = PgStore::track(&db.url, &["items", "other"], StoreOptions::default()).unwrap();
        let slot = slot_of(&db);
        drop(store);
        PgStore::untrack(&db.url, &["items"]).unwrap();
        assert_eq!(
            db.count("SELECT count(*) FROM pg_class WHERE relname = 'items' AND relreplident = 'd'"),
            1
        );
        assert_eq!(db.count("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'concord'"), 1);
        PgStore::untrack(&db.url, &["other"]).unwrap();
        assert_eq!(db.count(&format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")), 0);
        assert_eq!(db.count(&format!("SELECT count(*) FROM pg_replication_origin WHERE roname = '{slot}'")), 0);
        assert_eq!(db.count("SELECT count(*) FROM pg_publication WHERE pubname = 'concord'"), 0);
        assert_eq!(db.count("SELECT count(*) FROM pg_class WHERE relreplident = 'f' AND relname IN ('items', 'other')"), 0);
        assert!(PgStore::open(&db.url).is_err());
    }
}
