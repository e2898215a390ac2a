//! Opening a database an older Concord tracked. Risk covered: a newer Concord that
//! misreads, refuses or damages a file written by a released version (its row clocks,
//! log, conflicts and set-aside changes), or that loses the set-aside changes it
//! could retry, or whose capture triggers keep silencing writes the database itself
//! makes while Concord applies (format 3).
//!
//! `fixtures/format-1.db` was written by Concord with metadata format 1 (before
//! set-aside changes were kept whole): table `c(id, name CHECK (name <> 'bad'), n)`
//! tracked, rows 1 and 2 received from a peer, row 1's `n` written on both sides (one
//! conflict recorded), and the peer's row 3 (`name = 'bad'`) set aside.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use concord_sqlite::SqliteStore;
use concord_store::Store;
use rusqlite::Connection;

fn copy_fixture(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("old.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1.db"),
        &path,
    )
    .unwrap();
    path
}

fn format(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT value FROM __concord_meta WHERE key = 'format'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_file_written_by_format_1_opens_upgraded_with_everything_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_fixture(dir.path());
    assert_eq!(format(&path), 1);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(format(&path), 3, "opened, the file is upgraded");

    // What it held reads as before.
    assert_eq!(store.tables().len(), 1);
    assert_eq!(store.conflict_count().unwrap(), 1);
    let failures = store.failures().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].error.contains("CHECK constraint failed"),
        "{failures:?}"
    );
    let held_before = store.version_vector().clone();

    // The set-aside change was copied from the log: relaxing the constraint and
    // retrying applies it.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_master SET sql = replace(sql, 'check (name <> ''bad'')', '')
         WHERE name = 'c';
         PRAGMA writable_schema = OFF;",
    )
    .unwrap();
    drop(conn);
    let mut store = SqliteStore::open(&path).unwrap();
    let report = store.retry_set_aside().unwrap();
    assert_eq!((report.applied, report.set_aside), (1, 0), "{report:?}");
    assert!(store.failures().unwrap().is_empty());
    let name: String = Connection::open(&path)
        .unwrap()
        .query_row("SELECT name FROM c WHERE id = 3", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "bad");
    assert_eq!(store.version_vector(), &held_before, "nothing new is held");

    // It keeps working: a local write is captured into the old log.
    Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO c VALUES (9, 'new', 9)", [])
        .unwrap();
    assert_eq!(store.capture().unwrap(), 1);
}

#[test]
fn a_file_of_a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_fixture(dir.path());
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE __concord_meta SET value = 99 WHERE key = 'format'",
            [],
        )
        .unwrap();
    let err = SqliteStore::open(&path).err().expect("refused").to_string();
    assert!(err.contains("99") && err.contains('3'), "{err}");
}

/// Format 2's triggers were silent for a whole apply transaction. Upgraded, they are
/// silent only for the row Concord writes: a user trigger's write during an apply is
/// captured in the old file too, and Concord's own write still is not.
#[test]
fn an_upgraded_file_captures_what_a_user_trigger_writes_while_concord_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_fixture(dir.path());
    let mut old = SqliteStore::open(&path).unwrap();
    let triggers: Vec<String> = Connection::open(&path)
        .unwrap()
        .prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE '__concord%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(triggers.len(), 3, "{triggers:?}");
    assert!(
        triggers.iter().all(|t| t.contains("(tbl = 1 AND k0 IS")),
        "{triggers:?}"
    );
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER mark AFTER INSERT ON c BEGIN
                 UPDATE c SET n = 42 WHERE id = new.id;
             END;",
        )
        .unwrap();

    let peer = dir.path().join("peer.db");
    Connection::open(&peer)
        .unwrap()
        .execute_batch(
            "CREATE TABLE c(id integer primary key, name text, n integer);
             INSERT INTO c VALUES (7, 'seven', 7);",
        )
        .unwrap();
    let mut peer = SqliteStore::track(&peer, &["c"], Default::default()).unwrap();
    let own_before = old.version_vector().get(&old.node_id());
    let report = concord_sqlite::pull(&mut peer, &mut old).unwrap();
    assert_eq!(report.set_aside, 0, "{report:?}");
    old.capture().unwrap();
    assert_eq!(
        old.version_vector().get(&old.node_id()),
        own_before + 1,
        "the trigger's write of n is the old file's own change; the applied row is not"
    );
    concord_sqlite::pull(&mut old, &mut peer).unwrap();
    let n: i64 = Connection::open(peer.path())
        .unwrap()
        .query_row("SELECT n FROM c WHERE id = 7", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 42, "the trigger's write reached the peer");
}
