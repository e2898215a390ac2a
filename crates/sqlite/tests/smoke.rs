#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use concord_sqlite::{SqliteStore, StoreOptions, merge_all};
use rusqlite::Connection;

#[test]
fn two_files_converge() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    for p in [&a, &b] {
        let c = Connection::open(p).unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
            .unwrap();
    }
    Connection::open(&a)
        .unwrap()
        .execute_batch("INSERT INTO t VALUES (1, 'pre', 0)")
        .unwrap();
    let sa = SqliteStore::track(&a, &["t"], StoreOptions::default()).unwrap();
    let sb = SqliteStore::track(&b, &["t"], StoreOptions::default()).unwrap();
    let ca = Connection::open(&a).unwrap();
    let cb = Connection::open(&b).unwrap();
    ca.execute_batch("INSERT INTO t VALUES (2, 'a', 1); UPDATE t SET qty = 5 WHERE id = 1;")
        .unwrap();
    cb.execute_batch("INSERT INTO t VALUES (3, 'b', 2); INSERT INTO t VALUES (4, 'gone', 2); DELETE FROM t WHERE id = 4;").unwrap();
    let mut stores = vec![sa, sb];
    let reports = merge_all(&mut stores).unwrap();
    eprintln!("{reports:?}");
    let dump = |c: &Connection| -> Vec<(i64, String, i64)> {
        c.prepare("SELECT id, name, qty FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(dump(&ca), dump(&cb));
    assert_eq!(dump(&ca).len(), 3);
    // concurrent edit
    ca.execute_batch("UPDATE t SET name = 'from a' WHERE id = 2")
        .unwrap();
    cb.execute_batch("UPDATE t SET name = 'from b' WHERE id = 2")
        .unwrap();
    merge_all(&mut stores).unwrap();
    assert_eq!(dump(&ca), dump(&cb));
    eprintln!("{:?}", dump(&ca));
    let conflicts = stores[0].conflicts().unwrap().len() + stores[1].conflicts().unwrap().len();
    assert!(conflicts >= 1);
}

/// A source transaction that inserts a key and deletes it again changes nothing visible,
/// but capture logged a delete (causal length 2) for the never-seen key, and that delete
/// won over another file's real insert of the same key: a row vanished everywhere. Only
/// a transaction's net effect may be captured.
#[test]
fn an_insert_deleted_in_the_same_transaction_deletes_nobody_elses_row() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    for p in [&a, &b] {
        Connection::open(p)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)")
            .unwrap();
    }
    let sa = SqliteStore::track(&a, &["t"], StoreOptions::default()).unwrap();
    let sb = SqliteStore::track(&b, &["t"], StoreOptions::default()).unwrap();
    Connection::open(&a)
        .unwrap()
        .execute_batch(
            "BEGIN; INSERT INTO t VALUES (7, 'draft'); DELETE FROM t WHERE id = 7; COMMIT;",
        )
        .unwrap();
    Connection::open(&b)
        .unwrap()
        .execute_batch("INSERT INTO t VALUES (7, 'real')")
        .unwrap();
    let mut stores = vec![sa, sb];
    merge_all(&mut stores).unwrap();
    for p in [&a, &b] {
        let name: Option<String> = Connection::open(p)
            .unwrap()
            .query_row("SELECT name FROM t WHERE id = 7", [], |r| r.get(0))
            .ok();
        assert_eq!(name.as_deref(), Some("real"), "{}", p.display());
    }
    assert_eq!(
        stores[0].log_len().unwrap(),
        1,
        "a logged only b's insert, nothing of its own no-op transaction"
    );
}

/// Two files inserting the same row with the same values, or setting a column to the
/// same value concurrently, lost nothing; recording each such pair as a conflict (dozens
/// per run) buried the real ones. A concurrent pair with different values is still
/// recorded.
#[test]
fn concurrent_writes_of_the_same_value_are_not_conflicts_but_different_values_are() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    for p in [&a, &b] {
        Connection::open(p)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
            .unwrap();
    }
    let sa = SqliteStore::track(&a, &["t"], StoreOptions::default()).unwrap();
    let sb = SqliteStore::track(&b, &["t"], StoreOptions::default()).unwrap();
    for p in [&a, &b] {
        Connection::open(p)
            .unwrap()
            .execute_batch("INSERT INTO t VALUES (1, 'same', 5)")
            .unwrap();
    }
    let mut stores = vec![sa, sb];
    let reports = merge_all(&mut stores).unwrap();
    assert_eq!(
        reports.iter().map(|r| r.conflicts).sum::<u64>(),
        0,
        "{reports:?}"
    );
    for store in &stores {
        assert!(store.conflicts().unwrap().is_empty());
    }
    Connection::open(&a)
        .unwrap()
        .execute_batch("UPDATE t SET qty = 6, name = 'from a' WHERE id = 1")
        .unwrap();
    Connection::open(&b)
        .unwrap()
        .execute_batch("UPDATE t SET qty = 6, name = 'from b' WHERE id = 1")
        .unwrap();
    merge_all(&mut stores).unwrap();
    for store in &stores {
        let conflicts = store.conflicts().unwrap();
        let columns: Vec<_> = conflicts.iter().filter_map(|c| c.column.clone()).collect();
        assert_eq!(
            columns,
            ["name"],
            "only the differing column: {conflicts:?}"
        );
    }
}
