//! Relays and set-aside changes: a hub with no user database must forward every change
//! unchanged, and a change a node cannot apply must not block what follows it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use concord_sqlite::Store as _;
use concord_sqlite::{SqliteStore, StoreOptions, pull};
use rusqlite::Connection;

fn tracked(dir: &std::path::Path, name: &str, ddl: &str) -> (std::path::PathBuf, SqliteStore) {
    let path = dir.join(name);
    Connection::open(&path).unwrap().execute_batch(ddl).unwrap();
    let store = SqliteStore::track(&path, &["t"], StoreOptions::default()).unwrap();
    (path, store)
}

fn dump(path: &std::path::Path) -> Vec<(i64, String)> {
    let c = Connection::open(path).unwrap();
    let mut stmt = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";

#[test]
fn a_relay_without_user_tables_forwards_every_change_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, mut a) = tracked(dir.path(), "a.db", DDL);
    let (b_path, mut b) = tracked(dir.path(), "b.db", DDL);
    let mut hub =
        SqliteStore::open_relay(dir.path().join("hub.db"), StoreOptions::default()).unwrap();
    assert!(hub.is_relay());
    let app = Connection::open(&a_path).unwrap();
    app.execute_batch("INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two'); DELETE FROM t WHERE id = 1;")
        .unwrap();
    let r = pull(&mut a, &mut hub).unwrap();
    // Row 1 was inserted and deleted before capture: its net effect is nothing, so only
    // row 2's insert is logged (a delete of a never-seen key would win over another
    // replica's real insert of it).
    assert_eq!(r.applied, 1);
    pull(&mut hub, &mut b).unwrap();
    assert_eq!(dump(&b_path), vec![(2, "two".into())]);
    // And back: B's write reaches A through the hub, with B as its origin.
    Connection::open(&b_path)
        .unwrap()
        .execute("UPDATE t SET v = 'deux' WHERE id = 2", [])
        .unwrap();
    pull(&mut b, &mut hub).unwrap();
    pull(&mut hub, &mut a).unwrap();
    assert_eq!(dump(&a_path), dump(&b_path));
    assert_eq!(hub.version_vector(), b.version_vector());
    // The hub reopens with the same log.
    drop(hub);
    let hub = SqliteStore::open(dir.path().join("hub.db")).unwrap();
    assert!(hub.is_relay());
    assert_eq!(hub.log_len().unwrap(), 2);
}

#[test]
fn a_set_aside_transaction_does_not_block_the_changes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, mut a) = tracked(dir.path(), "a.db", DDL);
    // B's table refuses long values, so A's second transaction cannot apply there.
    let (b_path, mut b) = tracked(
        dir.path(),
        "b.db",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT CHECK (length(v) < 10))",
    );
    let (c_path, mut c) = tracked(dir.path(), "c.db", DDL);
    let app = Connection::open(&a_path).unwrap();
    app.execute("INSERT INTO t VALUES (1, 'short')", [])
        .unwrap();
    a.capture().unwrap();
    app.execute("INSERT INTO t VALUES (2, 'much too long for b')", [])
        .unwrap();
    a.capture().unwrap();
    app.execute("INSERT INTO t VALUES (3, 'after')", [])
        .unwrap();
    a.capture().unwrap();

    let all: Vec<_> = a
        .changes_for(b.version_vector())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(all.len(), 3);
    b.apply_batch(&all[..1]).unwrap();
    let err = b.apply_batch(&all[1..2]).unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
    let report = b.set_aside(&all[1..2], &err.to_string()).unwrap();
    assert_eq!(report.set_aside, 1);
    b.apply_batch(&all[2..]).unwrap();
    assert_eq!(
        dump(&b_path),
        vec![(1, "short".into()), (3, "after".into())]
    );
    let failures = b.failures().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].table, "t");
    assert_eq!(failures[0].key, "(2)");
    assert!(failures[0].error.contains("CHECK"));
    assert_eq!(b.version_vector(), a.version_vector());

    // C learns everything through B, including the change B set aside.
    pull(&mut b, &mut c).unwrap();
    assert_eq!(dump(&c_path), dump(&a_path));
}

/// A relay keeps changes, not rows. Once its log is pruned past what a replica lacks,
/// the replica cannot catch up from it, and must be told so: a "snapshot" of a relay
/// would describe no row while claiming the relay's whole version vector, and the
/// replica adopting it would lose every pruned change for good.
#[test]
fn a_pruned_relay_refuses_to_serve_a_snapshot_instead_of_losing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, mut a) = tracked(dir.path(), "a.db", DDL);
    let (b_path, mut b) = tracked(dir.path(), "b.db", DDL);
    let mut hub =
        SqliteStore::open_relay(dir.path().join("hub.db"), StoreOptions::default()).unwrap();
    let app = Connection::open(&a_path).unwrap();
    for i in 0..10 {
        app.execute("INSERT INTO t VALUES (?1, 'v')", [i]).unwrap();
        a.capture().unwrap();
    }
    pull(&mut a, &mut hub).unwrap();
    hub.prune_log(3).unwrap();
    assert!(matches!(
        hub.snapshot().err(),
        Some(concord_sqlite::StoreError::NoSnapshot("relay"))
    ));
    let err = pull(&mut hub, &mut b).unwrap_err().to_string();
    assert!(err.contains("relay") && err.contains("retention"), "{err}");
    assert!(dump(&b_path).is_empty());
    assert!(b.version_vector().is_empty(), "B adopted what it never got");
}
