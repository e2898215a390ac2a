//! Catching up past the log's retention: a replica whose missing changes were pruned
//! from its peer's log is brought up to date from a snapshot of rows with their clocks,
//! with nothing lost (its own writes survive and travel back) and nothing resurrected
//! (rows deleted while it was away stay deleted).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use concord_sqlite::{SqliteStore, StoreOptions, pull};
use rusqlite::Connection;

const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)";

fn tracked(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, SqliteStore) {
    let path = dir.join(name);
    Connection::open(&path).unwrap().execute_batch(DDL).unwrap();
    let store = SqliteStore::track(&path, &["t"], StoreOptions::default()).unwrap();
    (path, store)
}

fn dump(path: &std::path::Path) -> Vec<(i64, Option<String>, Option<i64>)> {
    let c = Connection::open(path).unwrap();
    let mut stmt = c.prepare("SELECT id, v, n FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn write(path: &std::path::Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

#[test]
fn a_replica_behind_retention_catches_up_from_a_snapshot_without_loss_or_resurrection() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, mut a) = tracked(dir.path(), "a.db");
    let (b_path, mut b) = tracked(dir.path(), "b.db");
    let (c_path, mut c) = tracked(dir.path(), "c.db");
    let mut rows = String::new();
    for i in 1..=20 {
        rows.push_str(&format!("INSERT INTO t VALUES ({i}, 'v{i}', {i});"));
    }
    write(&a_path, &rows);
    pull(&mut a, &mut b).unwrap();
    assert_eq!(dump(&a_path), dump(&b_path));

    // B goes away. A updates, deletes, inserts (and inserts then deletes a row B never
    // saw), far more changes than its log keeps.
    write(
        &a_path,
        "UPDATE t SET v = 'a-new' WHERE id = 2; DELETE FROM t WHERE id = 5; \
         UPDATE t SET n = 700 WHERE id = 7; INSERT INTO t VALUES (30, 'thirty', 30);",
    );
    a.capture().unwrap();
    write(&a_path, "INSERT INTO t VALUES (31, 'gone', 0);");
    a.capture().unwrap();
    write(&a_path, "DELETE FROM t WHERE id = 31;");
    for i in 0..60 {
        write(&a_path, &format!("UPDATE t SET n = {i} WHERE id = 10;"));
        a.capture().unwrap();
    }
    a.prune_log(5).unwrap();
    // Meanwhile B writes too: a new row, a concurrent update of row 2's other column,
    // and a delete of row 7 (concurrent with A's update of it).
    write(
        &b_path,
        "INSERT INTO t VALUES (100, 'from b', 1); UPDATE t SET n = 222 WHERE id = 2; \
         DELETE FROM t WHERE id = 7;",
    );
    b.capture().unwrap();
    let held_before = b.version_vector().get(&a.node_id());

    // The log cannot serve B any more: the pull merges a snapshot, then the log's tail.
    let report = pull(&mut a, &mut b).unwrap();
    assert!(report.applied > 0, "{report:?}");
    assert!(b.version_vector().get(&a.node_id()) > held_before);
    assert_eq!(
        b.version_vector().get(&a.node_id()),
        a.version_vector().get(&a.node_id())
    );
    // B's own writes travel back by B's log, and both end equal.
    pull(&mut b, &mut a).unwrap();
    assert_eq!(dump(&a_path), dump(&b_path));
    let rows = dump(&b_path);
    let row = |id: i64| rows.iter().find(|r| r.0 == id).cloned();
    assert_eq!(row(2), Some((2, Some("a-new".into()), Some(222))));
    assert_eq!(row(5), None, "a row deleted while B was away came back");
    assert_eq!(row(7), None, "B's delete lost to an update it never saw");
    assert_eq!(row(31), None, "a row inserted and deleted on A came back");
    assert_eq!(row(10), Some((10, Some("v10".into()), Some(59))));
    assert_eq!(row(30), Some((30, Some("thirty".into()), Some(30))));
    assert_eq!(row(100), Some((100, Some("from b".into()), Some(1))));
    assert_eq!(b.failures().unwrap().len(), 0);

    // C never synced. B adopted A's history without logging it, so B's log cannot
    // replay it to C either: C takes a snapshot from B, and ends equal too.
    pull(&mut b, &mut c).unwrap();
    assert_eq!(dump(&c_path), dump(&b_path));
    assert_eq!(c.version_vector(), b.version_vector());

    // After the snapshot the log carries on as usual.
    write(&a_path, "UPDATE t SET v = 'later' WHERE id = 1;");
    pull(&mut a, &mut b).unwrap();
    pull(&mut b, &mut c).unwrap();
    assert_eq!(dump(&c_path)[0], (1, Some("later".into()), Some(1)));
}

#[test]
fn a_snapshot_merged_twice_changes_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, mut a) = tracked(dir.path(), "a.db");
    let (b_path, mut b) = tracked(dir.path(), "b.db");
    write(
        &a_path,
        "INSERT INTO t VALUES (1, 'one', 1); INSERT INTO t VALUES (2, 'two', 2); \
         DELETE FROM t WHERE id = 2;",
    );
    write(&a_path, "DELETE FROM t WHERE id = 2;");
    concord_sqlite::pull_snapshot(&mut a, &mut b).unwrap();
    let once = dump(&b_path);
    assert_eq!(once, dump(&a_path));
    let report = concord_sqlite::pull_snapshot(&mut a, &mut b).unwrap();
    assert_eq!(dump(&b_path), once);
    assert_eq!(report.conflicts, 0);
    assert_eq!(b.conflict_count().unwrap(), 0);
    // Nothing B holds is logged again: a snapshot's rows are no one's changes.
    assert_eq!(b.log_len().unwrap(), 0);
}
