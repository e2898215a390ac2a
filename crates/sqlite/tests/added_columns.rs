//! Columns the SQLite store adds for a peer's changes (`propagate_schema`), at the store
//! level. Risks covered: a column added with a type that changes the values it then
//! receives; a relay, which keeps no tables, failing instead of doing nothing. What every
//! store must do with an added column (a rename never taken for one, values kept, the
//! column captured) is tested once for all three in
//! `crates/conformance/tests/suite/added_columns.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{all_changes, app_connection, create_db};
use concord_core::mapping::Kind;
use concord_sqlite::Store as _;
use concord_sqlite::{SqliteStore, StoreOptions};
use concord_store::missing_columns;

const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";

fn tracked(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, SqliteStore) {
    let path = dir.join(name);
    create_db(&path, DDL);
    let store = SqliteStore::track(&path, &["t"], StoreOptions::default()).unwrap();
    (path, store)
}

fn declared(path: &std::path::Path) -> Vec<(String, String)> {
    let conn = app_connection(path);
    let mut stmt = conn
        .prepare("SELECT name, type FROM pragma_table_info('t') ORDER BY cid")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn each_kind_gets_a_sqlite_type_that_keeps_its_values_and_no_kind_gets_none() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = tracked(dir.path(), "a.db");
    let kinds = [
        ("i", Some(Kind::Integer)),
        ("r", Some(Kind::Real)),
        ("s", Some(Kind::Text)),
        ("b", Some(Kind::Blob)),
        ("d", Some(Kind::Decimal)),
        ("f", Some(Kind::Bool)),
        ("j", Some(Kind::Json)),
        ("ts", Some(Kind::Timestamp)),
        ("day", Some(Kind::Date)),
        ("u", Some(Kind::Uuid)),
        ("unknown", None),
    ];
    for (column, kind) in kinds {
        store.add_column("t", column, kind).unwrap();
    }
    // Adding a column the table has is no change.
    store.add_column("t", "i", Some(Kind::Text)).unwrap();
    let expected = [
        ("id", "INTEGER"),
        ("v", "TEXT"),
        ("i", "INTEGER"),
        ("r", "REAL"),
        ("s", "TEXT"),
        ("b", "BLOB"),
        ("d", "TEXT"),
        ("f", "INTEGER"),
        ("j", "TEXT"),
        ("ts", "INTEGER"),
        ("day", "INTEGER"),
        ("u", "BLOB"),
        ("unknown", ""),
    ]
    .map(|(n, t)| (n.to_owned(), t.to_owned()));
    assert_eq!(declared(&path), expected);
    assert_eq!(
        store.table_columns("t").unwrap().len(),
        expected.len(),
        "the store knows its new columns"
    );
    assert!(
        store.add_column("nope", "c", None).is_err(),
        "no such table"
    );
}

#[test]
fn a_relay_adds_nothing_and_does_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay =
        SqliteStore::open_relay(dir.path().join("relay.db"), StoreOptions::default()).unwrap();
    assert_eq!(relay.table_columns("t"), None);
    relay.add_column("t", "c", Some(Kind::Text)).unwrap();
    // Nor does it report the tables of the changes it relays as unknown.
    let dir2 = tempfile::tempdir().unwrap();
    let (path, mut source) = tracked(dir2.path(), "a.db");
    app_connection(&path)
        .execute_batch("INSERT INTO t VALUES (1, 'one')")
        .unwrap();
    source.capture().unwrap();
    let found = missing_columns(&relay, &all_changes(&source));
    assert_eq!(found, concord_store::MissingColumns::default());
}
