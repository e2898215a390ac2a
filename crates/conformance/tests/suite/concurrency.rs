//! Applications writing while Concord applies and tracks.
//!
//! Risks covered:
//! - the apply transaction's snapshot taken before its table locks (or the file's write
//!   lock) waited, so a local write that commits during the wait is neither captured
//!   nor known to the merge: a remote insert of the same key then fails with a
//!   duplicate key (its source transaction set aside and lost here), or a remote update
//!   silently overwrites the local write here while it wins everywhere else. Found by
//!   the mixed-store fault test (`crates/concord/tests/faults_databases.rs`, seeds 0x1
//!   and 0x10); on PostgreSQL also in a database whose default isolation is
//!   `REPEATABLE READ`;
//! - every `concord serve` start tracks its tables again; replacing the capture for
//!   that leaves a moment in which writes are not captured (found by the mixed-store
//!   fault test, seeds 0x4 and 0x6, on MariaDB).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_conformance::{Kind, StoreUnderTest};

const DDL: &str = "CREATE TABLE items(id {int} PRIMARY KEY, name {text})";

pub fn a_local_write_committing_while_an_apply_waits_for_it_is_captured_before_the_merge(
    s: &StoreUnderTest,
) {
    let src_db = s.database(&s.sql(DDL));
    let dst_db = s.database(&s.sql(DDL));
    if s.kind() == Kind::Postgres {
        dst_db.execute(&format!(
            "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
            dst_db.name()
        ));
    }
    let mut src = src_db.track(&["items"]);
    let mut dst = dst_db.track(&["items"]);
    src_db.execute("INSERT INTO items VALUES (19, 'remote')");
    src.capture().unwrap();
    let remote = src.all_changes();
    assert_eq!(remote.len(), 1);

    // An application transaction writes key 19 at the destination and stays open.
    let mut app = dst_db.client();
    let begin = if s.kind() == Kind::Sqlite {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    };
    app.execute(begin).unwrap();
    app.execute("INSERT INTO items VALUES (19, 'local')")
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
    app.execute("COMMIT").unwrap();
    let (mut dst, result) = apply.join().unwrap();
    let report = result.expect("the remote insert merges with the local one");
    assert_eq!(report.captured, 1, "the local insert was captured first");
    assert!(
        report.conflicts >= 1,
        "two concurrent inserts of one key conflict"
    );
    assert!(dst.failures().unwrap().is_empty());
    assert_eq!(dst.log_len().unwrap(), 2, "the local and the remote insert");
    assert_eq!(dst_db.number("SELECT count(*) FROM items"), 1);
}

pub fn writes_committed_while_a_restarting_node_tracks_its_table_again_are_all_captured(
    s: &StoreUnderTest,
) {
    let db = s.database(&s.sql(DDL));
    drop(db.track(&["items"]));
    let stop = Arc::new(AtomicBool::new(false));
    let committed = std::thread::scope(|scope| {
        let writer = {
            let stop = stop.clone();
            let mut client = db.client();
            scope.spawn(move || {
                let mut committed = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    // A write the database refuses (a deadlock victim, a statement
                    // failing while the capture is replaced) did not commit, so it is
                    // not counted. A text statement, not a prepared one: MariaDB can
                    // keep failing a prepared statement across a trigger replacement
                    // (MDEV-26048).
                    let insert = format!("INSERT INTO items VALUES ({}, 'w')", committed + 1);
                    if client.execute(&insert).is_ok() {
                        committed += 1;
                    }
                }
                committed
            })
        };
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(30));
            drop(db.track(&["items"]));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert!(committed > 0);
    let mut store = db.open();
    store.capture().unwrap();
    assert_eq!(
        store.log_len().unwrap(),
        committed as u64,
        "every committed insert is in the change log exactly once"
    );
}
