//! A connection lost in the middle of an apply: the server ends Concord's session
//! (as a restart, a failover or an administrator would) between two changes of one
//! source transaction.
//!
//! Risks covered: part of the transaction staying applied; the store keeping a dead
//! connection so every later batch fails until the process restarts; the version vector
//! or the log advancing for what was rolled back.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{TestDb, all_changes};
use concord_postgres::Store as _;
use concord_postgres::{PgStore, StoreOptions};

const DDL: &str = "CREATE TABLE items(id bigint PRIMARY KEY, name text)";

concord_harness::server_tests! {
    fn a_connection_lost_in_the_middle_of_a_batch_applies_nothing_and_the_store_reconnects(
        server: postgres,
    ) {
        let src_db = TestDb::new(server, DDL);
        let dst_db = TestDb::new(server, DDL);
        let mut src = PgStore::track(&src_db.url, &["items"], StoreOptions::default()).unwrap();
        let mut dst = PgStore::track(&dst_db.url, &["items"], StoreOptions::default()).unwrap();
        src_db.psql(
            "BEGIN; INSERT INTO items VALUES (1, 'one'); INSERT INTO items VALUES (2, 'two');
                    INSERT INTO items VALUES (3, 'three'); COMMIT;",
        );
        src.capture().unwrap();
        let changes = all_changes(&src);
        assert_eq!(changes.len(), 3);

        let pid: i32 = dst
            .client()
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let result = {
            let mut txn = dst.begin_apply().unwrap();
            txn.apply(&changes[0]).unwrap();
            let killed: bool = dst_db
                .client()
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .unwrap()
                .get(0);
            assert!(killed, "the store's backend was terminated");
            // Until the client notices the closed socket, its next statements fail.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let r = txn.apply(&changes[1]).and_then(|()| txn.apply(&changes[2]));
                if r.is_err() || Instant::now() > deadline {
                    break r.and_then(|()| txn.commit().map(|_| ()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let err = result.expect_err("a batch on a terminated connection cannot commit");
        assert!(err.to_string().contains("postgres"), "{err}");
        assert_eq!(
            dst_db.count("SELECT count(*) FROM items"),
            0,
            "nothing of the transaction stayed"
        );

        // The next batch reconnects and applies the whole transaction.
        let report = dst.apply_batch(&changes).unwrap();
        assert_eq!(report.applied, 3);
        assert_eq!(src_db.dump("items", "id"), dst_db.dump("items", "id"));
        assert_eq!(dst.version_vector(), src.version_vector());
        assert_eq!(dst.log_len().unwrap(), 3);
        // And local capture works on the new connection too.
        dst_db.psql("INSERT INTO items VALUES (4, 'four')");
        assert_eq!(dst.capture().unwrap(), 1);
    }
}
