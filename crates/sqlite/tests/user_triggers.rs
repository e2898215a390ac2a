//! Triggers of the user's own on tracked tables: what the database writes while
//! Concord applies a change is a local write of this node, and must travel.
//!
//! Risks covered:
//! - a user trigger that writes the row Concord is applying (`updated_at`) is not
//!   captured, so the copies differ for good while every merge says nothing is left;
//! - a user trigger that inserts audit rows into another tracked table during an apply
//!   collides with the incoming audit row and the whole transaction is set aside;
//! - capturing what triggers write makes changes bounce between replicas forever;
//! - a trigger that should run only for the application's own writes cannot tell
//!   Concord's writes apart.
//!
//! Every write is made by the `sqlite3` shell, a process with no Concord code in it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::{dump_file, sqlite3_shell, sqlite3_shell_available, tracked_files};
use concord_sqlite::{SqliteStore, merge_all, pull};
use rusqlite::Connection;

/// `t` with a trigger stamping `updated_at` with the node's name (`whoami`, not tracked)
/// whenever `v` changes: the stamp differs on each node, so a stamp not captured shows.
const STAMPED: &str = "
CREATE TABLE whoami(name TEXT);
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, updated_at TEXT);
CREATE TRIGGER trg AFTER UPDATE OF v ON t BEGIN
    UPDATE t SET updated_at = (SELECT name FROM whoami) || ':' || new.v WHERE id = new.id;
END;";

fn name_nodes(paths: &[std::path::PathBuf]) {
    for (path, name) in paths.iter().zip(["a", "b", "c"]) {
        sqlite3_shell(path, &format!("INSERT INTO whoami VALUES ('{name}');"));
    }
}

fn rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| r.get::<_, Option<String>>(i).map(Option::unwrap_or_default))
            .collect()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn no_failures(stores: &[SqliteStore]) {
    for store in stores {
        let failures = store.failures().unwrap();
        assert!(failures.is_empty(), "set aside: {failures:?}");
    }
}

/// Merges until a round applies and captures nothing; fails if that takes more than a
/// few rounds (writes bouncing between replicas forever).
fn merge_until_quiet(stores: &mut [SqliteStore]) {
    for _ in 0..4 {
        let reports = merge_all(stores).unwrap();
        if reports.iter().all(|r| r.applied == 0 && r.captured == 0) {
            return;
        }
    }
    panic!("changes keep bouncing between the replicas");
}

#[test]
fn a_user_trigger_writing_the_row_concord_applies_is_captured_and_the_copies_agree() {
    if !sqlite3_shell_available(
        "a_user_trigger_writing_the_row_concord_applies_is_captured_and_the_copies_agree",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], STAMPED, &["t"]);
    name_nodes(&paths);
    let (a, b) = (&paths[0], &paths[1]);
    sqlite3_shell(a, "INSERT INTO t(id, v) VALUES (1, 'one');");
    merge_until_quiet(&mut stores);
    sqlite3_shell(a, "UPDATE t SET v = 'two' WHERE id = 1;");
    assert_eq!(
        rows(a, "SELECT v, updated_at FROM t"),
        vec![vec!["two".to_owned(), "a:two".to_owned()]]
    );

    // b applies a's update; b's own trigger stamps the row as b. That stamp is b's
    // write: it is captured and reaches a. (b applies a few milliseconds later, so its
    // stamp is the later write, as it would be across a network.)
    std::thread::sleep(std::time::Duration::from_millis(10));
    let (sa, rest) = stores.split_first_mut().unwrap();
    let sb = &mut rest[0];
    pull(sa, sb).unwrap();
    assert_eq!(
        rows(b, "SELECT v, updated_at FROM t"),
        vec![vec!["two".to_owned(), "b:two".to_owned()]]
    );
    let captured = sb.capture().unwrap() + sb.version_vector().get(&sb.node_id());
    assert!(captured > 0, "the trigger's write at b is b's own change");
    merge_until_quiet(&mut stores);
    no_failures(&stores);
    assert_eq!(dump_file(a, "t", "id"), dump_file(b, "t", "id"));
    assert_eq!(
        rows(a, "SELECT v, updated_at FROM t"),
        vec![vec!["two".to_owned(), "b:two".to_owned()]]
    );

    // Concord's own writes are still not captured again: nothing bounces, and a
    // write on b travels back and is stamped by a's trigger in turn.
    sqlite3_shell(b, "UPDATE t SET v = 'three' WHERE id = 1;");
    std::thread::sleep(std::time::Duration::from_millis(10));
    merge_until_quiet(&mut stores);
    no_failures(&stores);
    assert_eq!(dump_file(a, "t", "id"), dump_file(b, "t", "id"));
    assert_eq!(
        rows(a, "SELECT v, updated_at FROM t"),
        vec![vec!["three".to_owned(), "a:three".to_owned()]]
    );
}

/// Audit rows whose keys each node generates uniquely (a random id): each node's
/// trigger writes its own audit row when it applies the update, and every audit row
/// reaches every node. Nothing is set aside.
#[test]
fn audit_rows_a_trigger_inserts_while_concord_applies_travel_and_nothing_is_set_aside() {
    if !sqlite3_shell_available(
        "audit_rows_a_trigger_inserts_while_concord_applies_travel_and_nothing_is_set_aside",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ddl = "
        CREATE TABLE whoami(name TEXT);
        CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE trig_audit(id TEXT PRIMARY KEY NOT NULL, note TEXT);
        CREATE TRIGGER trg AFTER UPDATE OF v ON t BEGIN
            INSERT INTO trig_audit VALUES (lower(hex(randomblob(16))),
                (SELECT name FROM whoami) || ' saw ' || new.v);
        END;";
    let (paths, mut stores) =
        tracked_files(dir.path(), &["a.db", "b.db"], ddl, &["t", "trig_audit"]);
    name_nodes(&paths);
    let (a, b) = (&paths[0], &paths[1]);
    sqlite3_shell(a, "INSERT INTO t VALUES (1, 'one');");
    merge_until_quiet(&mut stores);
    sqlite3_shell(a, "UPDATE t SET v = 'two' WHERE id = 1;");
    // In one apply transaction b writes t (a table with a trigger: only that row is
    // silenced), then a's audit row (a table without: every row is): b's own audit row
    // is its only change, and nothing a sent is captured again.
    let (sa, rest) = stores.split_first_mut().unwrap();
    let sb = &mut rest[0];
    pull(sa, sb).unwrap();
    sb.capture().unwrap();
    assert_eq!(sb.version_vector().get(&sb.node_id()), 1);
    merge_until_quiet(&mut stores);
    no_failures(&stores);
    let notes = "SELECT note FROM trig_audit ORDER BY note";
    let expected = vec![vec!["a saw two".to_owned()], vec!["b saw two".to_owned()]];
    assert_eq!(rows(a, notes), expected);
    assert_eq!(rows(b, notes), expected);
    assert_eq!(
        dump_file(a, "trig_audit", "id"),
        dump_file(b, "trig_audit", "id")
    );
}

/// The reproduction of issue 10: audit ids from `INTEGER PRIMARY KEY` collide (both
/// nodes' triggers make audit row 1). The replica's row 1 and the origin's row 1 are
/// the same row to Concord, so they merge (the later write wins, a conflict is
/// recorded): the copies agree and nothing is set aside, where the incoming row used
/// to fail on `UNIQUE constraint failed: trig_audit.id` and set aside the transaction.
#[test]
fn audit_ids_that_collide_merge_into_one_row_instead_of_setting_the_transaction_aside() {
    if !sqlite3_shell_available(
        "audit_ids_that_collide_merge_into_one_row_instead_of_setting_the_transaction_aside",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ddl = "
        CREATE TABLE whoami(name TEXT);
        CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE trig_audit(id INTEGER PRIMARY KEY, note TEXT);
        CREATE TRIGGER trg AFTER UPDATE OF v ON t BEGIN
            INSERT INTO trig_audit(note) VALUES ((SELECT name FROM whoami) || ' saw ' || new.v);
        END;";
    let (paths, mut stores) =
        tracked_files(dir.path(), &["a.db", "b.db"], ddl, &["t", "trig_audit"]);
    name_nodes(&paths);
    let (a, b) = (&paths[0], &paths[1]);
    sqlite3_shell(a, "INSERT INTO t VALUES (1, 'one');");
    merge_until_quiet(&mut stores);
    sqlite3_shell(a, "UPDATE t SET v = 'two' WHERE id = 1;");
    merge_until_quiet(&mut stores);
    no_failures(&stores);
    assert_eq!(dump_file(a, "t", "id"), dump_file(b, "t", "id"));
    assert_eq!(
        dump_file(a, "trig_audit", "id"),
        dump_file(b, "trig_audit", "id")
    );
    assert_eq!(
        rows(a, "SELECT id || '' FROM trig_audit"),
        vec![vec!["1".to_owned()]]
    );
    assert!(
        stores.iter().any(|s| s.conflict_count().unwrap() > 0),
        "two writers of audit row 1: a conflict is recorded"
    );
}

/// A trigger that should fire only for the application's own writes says so with
/// `WHEN NOT EXISTS (SELECT 1 FROM __concord_applying)`: then the origin's audit row is
/// the only one, and it reaches every node.
#[test]
fn a_trigger_can_skip_writes_concord_applies_and_the_origins_audit_row_travels() {
    if !sqlite3_shell_available(
        "a_trigger_can_skip_writes_concord_applies_and_the_origins_audit_row_travels",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ddl = "
        CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE trig_audit(id INTEGER PRIMARY KEY, note TEXT);";
    let (paths, mut stores) =
        tracked_files(dir.path(), &["a.db", "b.db"], ddl, &["t", "trig_audit"]);
    for path in &paths {
        sqlite3_shell(
            path,
            "CREATE TRIGGER trg AFTER UPDATE OF v ON t
             WHEN NOT EXISTS (SELECT 1 FROM __concord_applying) BEGIN
                 INSERT INTO trig_audit(note) VALUES ('saw ' || new.v);
             END;",
        );
    }
    let (a, b) = (&paths[0], &paths[1]);
    sqlite3_shell(a, "INSERT INTO t VALUES (1, 'one');");
    merge_until_quiet(&mut stores);
    sqlite3_shell(a, "UPDATE t SET v = 'two' WHERE id = 1;");
    merge_until_quiet(&mut stores);
    no_failures(&stores);
    let audit = "SELECT id || '', note FROM trig_audit";
    assert_eq!(
        rows(a, audit),
        vec![vec!["1".to_owned(), "saw two".to_owned()]]
    );
    assert_eq!(rows(b, audit), rows(a, audit));
    assert!(stores.iter().all(|s| s.conflict_count().unwrap() == 0));
}

/// A change that names fewer columns than the replica's table (its origin lacks one)
/// makes SQLite fill the rest with their defaults. That default is the replica's own
/// write: it is captured, waits at the origin until the column exists there, then
/// applies, so both copies hold it.
#[test]
fn a_default_the_database_fills_in_while_concord_applies_is_captured() {
    if !sqlite3_shell_available("a_default_the_database_fills_in_while_concord_applies_is_captured")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    common::create_db(&a, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    common::create_db(
        &b,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, made TEXT DEFAULT 'by b');",
    );
    let mut sa = SqliteStore::track(&a, &["t"], Default::default()).unwrap();
    let mut sb = SqliteStore::track(&b, &["t"], Default::default()).unwrap();
    sqlite3_shell(&a, "INSERT INTO t VALUES (1, 'one');");
    pull(&mut sa, &mut sb).unwrap();
    assert_eq!(
        rows(&b, "SELECT v, made FROM t"),
        vec![vec!["one".to_owned(), "by b".to_owned()]]
    );
    sb.capture().unwrap();
    assert_eq!(
        sb.version_vector().get(&sb.node_id()),
        1,
        "the default is b's own write"
    );
    // a has no column `made` yet: b's write waits there, then applies once it has.
    pull(&mut sb, &mut sa).unwrap();
    sqlite3_shell(&a, "ALTER TABLE t ADD COLUMN made TEXT;");
    sa.capture().unwrap();
    use concord_sqlite::Store as _;
    sa.retry_set_aside().unwrap();
    assert!(sa.failures().unwrap().is_empty());
    assert_eq!(dump_file(&a, "t", "id"), dump_file(&b, "t", "id"));
}
