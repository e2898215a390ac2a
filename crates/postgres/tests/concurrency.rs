//! An apply that waits for an application transaction still writing a tracked table,
//! in a database whose default isolation is REPEATABLE READ.
//!
//! Risk covered: the apply transaction's snapshot taken before its table locks waited,
//! so a local write that commits during the wait is neither captured nor known to the
//! merge, and a remote insert of the same key fails with a duplicate key (its source
//! transaction set aside and lost here). The same mistake in MariaDB's apply was found
//! by the mixed-store fault test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{TestDb, all_changes};
use concord_postgres::Store as _;
use concord_postgres::{PgStore, StoreOptions};

const DDL: &str = "CREATE TABLE items(id bigint PRIMARY KEY, name text)";

concord_harness::server_tests! {
    fn a_local_write_committing_while_an_apply_waits_for_it_is_captured_before_the_merge(
        server: postgres,
    ) {
        let src_db = TestDb::new(server, DDL);
        let dst_db = TestDb::new(server, DDL);
        let dst_name = dst_db.url.rsplit('/').next().unwrap().to_owned();
        dst_db
            .client()
            .batch_execute(&format!(
                "ALTER DATABASE {dst_name} SET default_transaction_isolation = 'repeatable read'"
            ))
            .unwrap();
        let mut src = PgStore::track(&src_db.url, &["items"], StoreOptions::default()).unwrap();
        let mut dst = PgStore::track(&dst_db.url, &["items"], StoreOptions::default()).unwrap();
        src_db.psql("INSERT INTO items VALUES (19, 'remote')");
        src.capture().unwrap();
        let remote = all_changes(&src);
        assert_eq!(remote.len(), 1);

        // An application transaction writes key 19 at the destination and stays open.
        let mut app = dst_db.client();
        app.batch_execute("BEGIN; INSERT INTO items VALUES (19, 'local')")
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
        app.batch_execute("COMMIT").unwrap();
        let (mut dst, result) = apply.join().unwrap();
        let report = result.expect("the remote insert merges with the local one");
        assert_eq!(report.captured, 1, "the local insert was captured first");
        assert!(
            report.conflicts >= 1,
            "two concurrent inserts of one key conflict"
        );
        assert!(dst.failures().unwrap().is_empty());
        assert_eq!(dst.log_len().unwrap(), 2, "the local and the remote insert");
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 1);
    }
}
