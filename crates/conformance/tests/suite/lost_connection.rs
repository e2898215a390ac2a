//! A connection lost in the middle of an apply: the server ends Concord's session (as a
//! restart, a failover, `wait_timeout` or an administrator would) between two changes of
//! one source transaction.
//!
//! Risks covered: part of the transaction staying applied; the store keeping a dead
//! connection so every later batch fails until the process restarts; the version vector
//! or the log advancing for what was rolled back.

use std::time::{Duration, Instant};

use concord_conformance::{Kind, StoreUnderTest};

const DDL: &str = "CREATE TABLE items(id {int} PRIMARY KEY, name {text})";

/// Why the SQLite store is not run: it has no connection to lose.
pub const NO_SERVER: &str =
    "a SQLite store opens its file in process: there is no server session to lose";

pub fn a_connection_lost_in_the_middle_of_a_batch_applies_nothing_and_the_store_reconnects(
    s: &StoreUnderTest,
) {
    let src_db = s.database(&s.sql(DDL));
    let dst_db = s.database(&s.sql(DDL));
    let mut src = src_db.track(&["items"]);
    let mut dst = dst_db.track(&["items"]);
    src_db.execute(
        "BEGIN; INSERT INTO items VALUES (1, 'one'); INSERT INTO items VALUES (2, 'two');
                INSERT INTO items VALUES (3, 'three'); COMMIT;",
    );
    src.capture().unwrap();
    let changes = src.all_changes();
    assert_eq!(changes.len(), 3);

    let session = dst.server_session().expect("a server session");
    let result = {
        let mut txn = dst.begin_apply().unwrap();
        txn.apply(&changes[0]).unwrap();
        dst_db.end_session(session);
        // Until the client notices the closed socket, its next statements may succeed.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = txn.apply(&changes[1]).and_then(|()| txn.apply(&changes[2]));
            if r.is_err() || Instant::now() > deadline {
                break r.and_then(|()| txn.commit().map(|_| ()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let err = result.expect_err("a batch on an ended session cannot commit");
    let system = match s.kind() {
        Kind::Postgres => "postgres",
        _ => "mysql",
    };
    assert!(err.to_string().contains(system), "{err}");
    assert_eq!(
        dst_db.number("SELECT count(*) FROM items"),
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
    dst_db.execute("INSERT INTO items VALUES (4, 'four')");
    assert_eq!(dst.capture().unwrap(), 1);
}
