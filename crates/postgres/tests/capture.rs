//! Capture: writes by any client reach the change log, whole and in order.
//!
//! Risks covered:
//! - a write made by an ordinary client (the `psql` shell, a separate connection) is
//!   missed because only Concord's own connection is watched;
//! - an uncommitted transaction is captured (or half captured) before it commits;
//! - a source transaction is split, interleaved with another, or marked as ended in the
//!   middle (`last_in_txn` anywhere but on its last change);
//! - rows that existed before tracking are never sent;
//! - a key change is sent as an update of a key that no longer exists;
//! - a table without a primary key is tracked, and rows cannot be identified;
//! - `untrack` leaves a trigger, a function or the `concord` schema behind;
//! - a database tracked by metadata format 1 not opening, or losing its set-aside
//!   changes;
//! - a column added after tracking is never captured (or only after a restart), or its
//!   values written before the store noticed it are lost;
//! - a table whose columns changed otherwise is captured with values in the wrong
//!   columns, breaks the application's writes through a trigger naming a dropped
//!   column, stops the other tables, or can no longer be untracked.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestDb, all_changes};
use concord_core::{PrimaryKey, Value};
use concord_postgres::{PgStore, StoreOptions, TrackError};

const DDL: &str = "CREATE TABLE items(id bigint PRIMARY KEY, name text NOT NULL, qty integer);
                   CREATE TABLE other(id integer PRIMARY KEY, note text);";

/// Options forcing the trigger fallback, for the tests of what only triggers do (the
/// servers CI runs allow log-based capture, which `StoreOptions::default()` picks).
fn triggers_only() -> StoreOptions {
    StoreOptions {
        capture: concord_store::CaptureMethod::Triggers,
        ..StoreOptions::default()
    }
}

fn key(i: i64) -> PrimaryKey {
    PrimaryKey::encode(&[Value::Integer(i)]).unwrap()
}

concord_harness::server_tests! {
    fn writes_by_psql_and_by_another_connection_are_captured(server: postgres) {
        let db = TestDb::new(server, DDL);
        db.psql("INSERT INTO items VALUES (1, 'existing', 1)");
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        // A session with unusual output settings: capture must not depend on them.
        db.psql(
            "SET DateStyle = 'SQL, DMY'; SET extra_float_digits = -3;
             INSERT INTO items VALUES (2, 'from psql', 2);
             UPDATE items SET qty = 20 WHERE id = 2;
             DELETE FROM items WHERE id = 1;",
        );
        let mut app = db.client();
        app.batch_execute("INSERT INTO items VALUES (3, 'from a client', 3)")
            .unwrap();
        assert_eq!(store.capture().unwrap(), 5);
        let log = all_changes(&store);
        let summary: Vec<(PrimaryKey, u64, Vec<&str>)> = log
            .iter()
            .map(|c| {
                (
                    c.key.clone(),
                    c.causal_length.0,
                    c.columns.iter().map(|c| c.column.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (key(1), 1, vec!["id", "name", "qty"]),
                (key(2), 1, vec!["id", "name", "qty"]),
                (key(2), 1, vec!["qty"]),
                // A delete lists the columns whose clocks its writer held.
                (key(1), 2, vec!["id", "name", "qty"]),
                (key(3), 1, vec!["id", "name", "qty"]),
            ],
            "existing row backfilled, then each write in order"
        );
        assert_eq!(log[2].columns[0].value, Value::Integer(20));
        assert_eq!(log[1].columns[1].value, Value::Text("from psql".into()));
        assert!(log.iter().all(|c| c.origin == store.node_id()));
        assert_eq!(store.pending_len().unwrap(), 0);
        assert_eq!(store.capture().unwrap(), 0, "nothing is captured twice");
    }

    fn uncommitted_and_interleaved_transactions_are_captured_whole_in_commit_order(
        server: postgres,
    ) {
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        let mut t1 = db.client();
        let mut t2 = db.client();
        t1.batch_execute("BEGIN; INSERT INTO items VALUES (1, 't1 first', 1);")
            .unwrap();
        t2.batch_execute(
            "BEGIN; INSERT INTO items VALUES (2, 't2', 2); INSERT INTO items VALUES (4, 't2', 4); COMMIT;",
        )
        .unwrap();
        t1.batch_execute("INSERT INTO items VALUES (3, 't1 second', 3);")
            .unwrap();
        // T1 is still open: only T2 is captured, whole.
        assert_eq!(store.capture().unwrap(), 2);
        t1.batch_execute("COMMIT").unwrap();
        assert_eq!(store.capture().unwrap(), 2);
        let log = all_changes(&store);
        let order: Vec<(PrimaryKey, bool)> =
            log.iter().map(|c| (c.key.clone(), c.last_in_txn)).collect();
        assert_eq!(
            order,
            vec![
                (key(2), false),
                (key(4), true),
                (key(1), false),
                (key(3), true)
            ]
        );

        // Two transactions committed before one capture are still two source transactions.
        db.psql("BEGIN; UPDATE items SET qty = 10 WHERE id = 1; UPDATE items SET qty = 30 WHERE id = 3; COMMIT;");
        db.psql("UPDATE items SET qty = 20 WHERE id = 2");
        assert_eq!(store.capture().unwrap(), 3);
        let log = all_changes(&store);
        let ends: Vec<bool> = log[4..].iter().map(|c| c.last_in_txn).collect();
        assert_eq!(ends, vec![false, true, true]);
        let seqs: Vec<u64> = log.iter().map(|c| c.seq).collect();
        assert_eq!(
            seqs,
            (1..=7).collect::<Vec<_>>(),
            "sequence numbers have no gaps"
        );
    }

    fn each_transaction_carries_the_values_it_wrote_even_if_a_later_one_changed_them(
        server: postgres,
    ) {
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        db.psql("INSERT INTO items VALUES (1, 'first', 1)");
        db.psql("UPDATE items SET name = 'second' WHERE id = 1");
        assert_eq!(store.capture().unwrap(), 2);
        let log = all_changes(&store);
        assert_eq!(log[0].columns[1].value, Value::Text("first".into()));
        assert_eq!(log[1].columns[0].value, Value::Text("second".into()));
        assert!(log[0].last_in_txn && log[1].last_in_txn);
    }

    fn a_key_change_is_captured_as_a_delete_and_an_insert(server: postgres) {
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], StoreOptions::default()).unwrap();
        db.psql("INSERT INTO items VALUES (1, 'moving', 1)");
        db.psql("UPDATE items SET id = 2 WHERE id = 1");
        assert_eq!(store.capture().unwrap(), 3);
        let log = all_changes(&store);
        assert_eq!((log[1].key.clone(), log[1].is_delete()), (key(1), true));
        assert_eq!((log[2].key.clone(), log[2].is_delete()), (key(2), false));
        assert_eq!(log[2].columns.len(), 3);
        assert!(!log[1].last_in_txn && log[2].last_in_txn);
    }

    fn a_table_without_a_primary_key_is_refused_by_name_and_nothing_is_installed(server: postgres) {
        let db = TestDb::new(server, "CREATE TABLE loose(a integer, b text);");
        let err = PgStore::track(&db.url, &["loose"], StoreOptions::default())
            .err()
            .expect("refused");
        assert!(
            matches!(err, TrackError::NoPrimaryKey(ref t) if t == "loose"),
            "{err}"
        );
        assert!(err.to_string().contains("\"loose\""), "{err}");
        assert_eq!(
            db.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'concord'"),
            0
        );
        let err = PgStore::track(&db.url, &["missing"], StoreOptions::default())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    fn untrack_removes_every_trace(server: postgres) {
        let db = TestDb::new(server, DDL);
        let store = PgStore::track(&db.url, &["items", "other"], triggers_only()).unwrap();
        drop(store);
        let triggers = "SELECT count(*) FROM pg_trigger WHERE tgname = 'concord_capture'";
        assert_eq!(db.count(triggers), 2);

        PgStore::untrack(&db.url, &["items"]).unwrap();
        assert_eq!(db.count(triggers), 1);
        db.psql("INSERT INTO items VALUES (1, 'after untrack', 1)");
        let mut store = PgStore::open(&db.url).unwrap();
        assert_eq!(
            store.capture().unwrap(),
            0,
            "an untracked table is not captured"
        );
        assert_eq!(store.tables().len(), 1);
        drop(store);

        PgStore::untrack(&db.url, &["other"]).unwrap();
        assert_eq!(db.count(triggers), 0);
        assert_eq!(
            db.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'concord'"),
            0
        );
        assert_eq!(
            db.count("SELECT count(*) FROM pg_proc WHERE proname LIKE 'capture\\_%'"),
            0
        );
        // The tables work as before, and the store is gone.
        db.psql("INSERT INTO other VALUES (1, 'plain'); UPDATE items SET qty = 2;");
        assert!(PgStore::open(&db.url).is_err());
    }

    fn a_column_added_after_tracking_is_captured_from_then_on_without_a_restart(
        server: postgres,
    ) {
        let db = TestDb::new(server, DDL);
        let mut store = PgStore::track(&db.url, &["items"], triggers_only()).unwrap();
        db.psql("INSERT INTO items VALUES (1, 'before', 1)");
        db.psql("ALTER TABLE items ADD COLUMN colour text");
        db.psql("INSERT INTO items VALUES (2, 'after', 2, 'red'); UPDATE items SET colour = 'blue' WHERE id = 1");
        // Two inserts, and the colours written before the trigger knew the column,
        // queued from the rows when the store noticed it.
        assert_eq!(store.capture().unwrap(), 4);
        let colour_of = |store: &PgStore, id: i64| {
            all_changes(store)
                .iter()
                .filter(|c| c.key == key(id))
                .flat_map(|c| c.columns.iter())
                .filter(|c| c.column == "colour")
                .map(|c| c.value.clone())
                .next_back()
        };
        assert_eq!(colour_of(&store, 1), Some(Value::Text("blue".into())));
        assert_eq!(colour_of(&store, 2), Some(Value::Text("red".into())));
        db.psql("UPDATE items SET colour = 'green' WHERE id = 2");
        assert_eq!(store.capture().unwrap(), 1);
        assert_eq!(colour_of(&store, 2), Some(Value::Text("green".into())));
        assert!(
            concord_store::Store::take_schema_changed(&mut store),
            "the store says its columns changed"
        );
        // A store opened afresh knows the column too.
        let again = PgStore::open(&db.url).unwrap();
        assert_eq!(again.tables()[0].columns.len(), 4);
    }

    fn a_dropped_column_stops_only_that_table_and_never_blocks_the_application(
        server: postgres,
    ) {
        let db = TestDb::new(server, DDL);
        let mut store =
            PgStore::track(&db.url, &["items", "other"], StoreOptions::default()).unwrap();
        db.psql("ALTER TABLE items DROP COLUMN qty");
        assert_eq!(store.capture().unwrap(), 0);
        let problems = concord_store::Store::table_problems(&store);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("items") && problems[0].contains("\"qty\" was dropped or renamed"),
            "{problems:?}"
        );
        // The application writes the table as before; the other table still syncs.
        db.psql("INSERT INTO items VALUES (5, 'written after the drop'); INSERT INTO other VALUES (1, 'still synced')");
        assert_eq!(store.capture().unwrap(), 1);
        assert_eq!(all_changes(&store).last().unwrap().table, "other");
        // And the table can still be untracked.
        drop(store);
        PgStore::untrack(&db.url, &["items", "other"]).unwrap();
        assert_eq!(
            db.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'concord'"),
            0
        );
    }

    fn a_database_of_format_1_opens_upgraded_and_keeps_its_set_aside_changes(server: postgres) {
        let a = TestDb::new(server, "CREATE TABLE items(id bigint PRIMARY KEY, name text)");
        let b = TestDb::new(server, "CREATE TABLE items(id bigint PRIMARY KEY, name varchar(3))");
        let mut sa = PgStore::track(&a.url, &["items"], StoreOptions::default()).unwrap();
        let mut sb = PgStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        a.psql("INSERT INTO items VALUES (1, 'too long for b')");
        assert_eq!(concord_postgres::pull(&mut sa, &mut sb).unwrap().set_aside, 1);
        drop(sb);
        // What format 1 wrote: no body with the failure.
        b.psql("ALTER TABLE concord.failures DROP COLUMN body; UPDATE concord.meta SET value = '1' WHERE key = 'format'");
        let sb = PgStore::open(&b.url).unwrap();
        assert_eq!(
            b.count("SELECT value::bigint FROM concord.meta WHERE key = 'format'"),
            2
        );
        assert_eq!(concord_store::Store::failures(&mut { sb }).unwrap().len(), 1);
        // The body came back from the log: a constraint relaxed, the change applies.
        b.psql("ALTER TABLE items ALTER COLUMN name TYPE text");
        PgStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        let mut sb = PgStore::open(&b.url).unwrap();
        let retried = concord_store::Store::retry_set_aside(&mut sb).unwrap();
        assert_eq!((retried.applied, retried.set_aside), (1, 0), "{retried:?}");
        assert_eq!(b.count("SELECT count(*) FROM items WHERE name = 'too long for b'"), 1);
    }
}
