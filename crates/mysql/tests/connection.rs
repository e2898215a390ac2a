//! A connection lost in the middle of an apply: the server kills Concord's session (as
//! a restart, `wait_timeout` or an administrator would) between two changes of one
//! source transaction.
//!
//! Risks covered: part of the transaction staying applied; the store keeping a dead
//! connection so every later batch fails until the process restarts; the version vector
//! or the log advancing for what was rolled back.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_core::{Change, VersionVector};
use concord_mysql::Store as _;
use concord_mysql::{MyStore, StoreOptions};
use mysql::prelude::Queryable;

const DDL: &str = "CREATE TABLE items(id BIGINT PRIMARY KEY, name VARCHAR(20))";

fn rows(db: &TestDb) -> Vec<(i64, Option<String>)> {
    db.conn()
        .query("SELECT id, name FROM items ORDER BY id")
        .unwrap()
}

concord_harness::server_tests! {
    fn a_connection_lost_in_the_middle_of_a_batch_applies_nothing_and_the_store_reconnects(
        server: mysql,
    ) {
        let src_db = TestDb::new(server, &[DDL]);
        let dst_db = TestDb::new(server, &[DDL]);
        let mut src = MyStore::track(&src_db.url, &["items"], StoreOptions::default()).unwrap();
        let mut dst = MyStore::track(&dst_db.url, &["items"], StoreOptions::default()).unwrap();
        src_db
            .conn()
            .query_drop(
                "BEGIN; INSERT INTO items VALUES (1, 'one'); INSERT INTO items VALUES (2, 'two');
                 INSERT INTO items VALUES (3, 'three'); COMMIT;",
            )
            .unwrap();
        src.capture().unwrap();
        let changes: Vec<Change> = src
            .changes_for(&VersionVector::new())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(changes.len(), 3);

        let id: u64 = dst
            .conn()
            .query_first("SELECT CONNECTION_ID()")
            .unwrap()
            .unwrap();
        let result = {
            let mut txn = dst.begin_apply().unwrap();
            txn.apply(&changes[0]).unwrap();
            dst_db
                .conn()
                .query_drop(format!("KILL CONNECTION {id}"))
                .unwrap();
            txn.apply(&changes[1])
                .and_then(|()| txn.apply(&changes[2]))
                .and_then(|()| txn.commit().map(|_| ()))
        };
        let err = result.expect_err("a batch on a killed connection cannot commit");
        assert!(err.to_string().contains("mysql"), "{err}");
        assert!(
            rows(&dst_db).is_empty(),
            "nothing of the transaction stayed"
        );

        // The next batch reconnects and applies the whole transaction.
        let report = dst.apply_batch(&changes).unwrap();
        assert_eq!(report.applied, 3);
        assert_eq!(rows(&dst_db), rows(&src_db));
        assert_eq!(dst.version_vector(), src.version_vector());
        assert_eq!(dst.log_len().unwrap(), 3);
        // And local capture works on the new connection too.
        dst_db
            .conn()
            .query_drop("INSERT INTO items VALUES (4, 'four')")
            .unwrap();
        assert_eq!(dst.capture().unwrap(), 1);
    }
}
