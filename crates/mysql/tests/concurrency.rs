//! An apply that waits for an application transaction still writing a tracked table.
//!
//! Risk covered: the apply transaction's snapshot taken before the wait, so a local
//! write that commits during the wait is neither captured nor known to the merge. A
//! remote insert of the same key then fails with a duplicate key (the remote transaction
//! is set aside and lost at this node), or a remote update silently overwrites the
//! local write here while it wins everywhere else. Found by the mixed-store fault test
//! (crates/concord/tests/faults_databases.rs, seeds 0x1 and 0x10).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{TestDb, all_changes};
use concord_mysql::Store as _;
use concord_mysql::{MyStore, StoreOptions};
use mysql::prelude::Queryable;

const DDL: &str = "CREATE TABLE items(id BIGINT PRIMARY KEY, name VARCHAR(20))";

concord_harness::server_tests! {
    fn a_local_write_committing_while_an_apply_waits_for_it_is_captured_before_the_merge(
        server: mysql,
    ) {
        let src_db = TestDb::new(server, &[DDL]);
        let dst_db = TestDb::new(server, &[DDL]);
        let mut src = MyStore::track(&src_db.url, &["items"], StoreOptions::default()).unwrap();
        let mut dst = MyStore::track(&dst_db.url, &["items"], StoreOptions::default()).unwrap();
        src_db
            .conn()
            .query_drop("INSERT INTO items VALUES (19, 'remote')")
            .unwrap();
        src.capture().unwrap();
        let remote = all_changes(&src);
        assert_eq!(remote.len(), 1);

        // An application transaction writes key 19 at the destination and stays open.
        let mut app = dst_db.conn();
        app.query_drop("START TRANSACTION").unwrap();
        app.query_drop("INSERT INTO items VALUES (19, 'local')")
            .unwrap();
        // The apply starts meanwhile, and must wait for it.
        let apply = std::thread::spawn(move || {
            let result = dst.apply_batch(&remote).map_err(|e| e.to_string());
            (dst, result)
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !apply.is_finished(),
            "the apply waits for the open local transaction"
        );
        app.query_drop("COMMIT").unwrap();
        let (mut dst, result) = apply.join().unwrap();
        let report = result.expect("the remote insert merges with the local one");
        assert_eq!(report.captured, 1, "the local insert was captured first");
        assert!(
            report.conflicts >= 1,
            "two concurrent inserts of one key conflict"
        );
        assert!(dst.failures().unwrap().is_empty());
        assert_eq!(dst.log_len().unwrap(), 2, "the local and the remote insert");
        let names: Vec<String> = dst_db.conn().query("SELECT name FROM items").unwrap();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    fn writes_committed_while_a_restarting_node_tracks_its_table_again_are_all_captured(
        server: mysql,
    ) {
        // Risk: every `concord serve` start tracks its tables again; dropping and re-creating
        // the triggers for that left a moment in which writes were not captured (found by
        // the mixed-store fault test, seeds 0x4 and 0x6).
        let db = TestDb::new(server, &[DDL]);
        drop(MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let mut conn = db.conn();
            std::thread::spawn(move || {
                let mut committed = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A write MariaDB refuses (a deadlock victim, a statement failing while
                    // triggers are replaced) did not commit, so it is not counted.
                    // A text statement, not a prepared one: MariaDB can keep failing a
                    // prepared statement across a trigger replacement (MDEV-26048).
                    if conn
                        .query_drop(format!("INSERT INTO items VALUES ({}, 'w')", committed + 1))
                        .is_ok()
                    {
                        committed += 1;
                    }
                }
                committed
            })
        };
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(30));
            drop(MyStore::track(&db.url, &["items"], StoreOptions::default()).unwrap());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let committed = writer.join().unwrap();
        assert!(committed > 0);
        let mut store = MyStore::open(&db.url).unwrap();
        store.capture().unwrap();
        assert_eq!(
            store.log_len().unwrap(),
            committed as u64,
            "every committed insert is in the change log exactly once"
        );
    }
}
