//! Columns a store adds for a peer's changes (`propagate_schema`), at the store level.
//! Risks covered: a rename at the origin taken for a new column (the receiving table
//! would gain the new name beside the old one); a column added with a type that changes
//! the values it then receives; the added column not captured afterwards; a relay,
//! which keeps no tables, failing instead of doing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{all_changes, app_connection, create_db};
use concord_core::mapping::Kind;
use concord_sqlite::Store as _;
use concord_sqlite::{SqliteStore, StoreOptions, pull};
use concord_store::{NewColumn, add_missing_columns, apply_setting_aside, missing_columns};

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

fn new(column: &str, kind: Option<Kind>) -> NewColumn {
    NewColumn {
        table: "t".into(),
        column: column.into(),
        kind,
    }
}

#[test]
fn a_name_the_table_lacks_is_added_only_once_a_whole_row_names_every_column() {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, mut a) = tracked(dir.path(), "a.db");
    let (b_path, mut b) = tracked(dir.path(), "b.db");
    app_connection(&a_path)
        .execute_batch("INSERT INTO t VALUES (1, 'one')")
        .unwrap();
    pull(&mut a, &mut b).unwrap();

    app_connection(&a_path)
        .execute_batch("ALTER TABLE t ADD COLUMN n INTEGER")
        .unwrap();
    a.capture().unwrap();
    app_connection(&a_path)
        .execute_batch("UPDATE t SET n = 5 WHERE id = 1")
        .unwrap();
    a.capture().unwrap();
    // An update alone names `n` and not `v`: it could be a rename at the origin.
    let update = all_changes(&a).split_off(1);
    let found = missing_columns(&b, &update);
    assert!(found.columns.is_empty(), "{found:?}");
    assert_eq!(found.unproven, vec![new("n", Some(Kind::Integer))]);

    // A whole row names every column b has, and `n`: an added column.
    app_connection(&a_path)
        .execute_batch("INSERT INTO t VALUES (2, 'two', NULL)")
        .unwrap();
    a.capture().unwrap();
    let changes = all_changes(&a).split_off(1);
    let added = add_missing_columns(&mut b, &changes).unwrap();
    assert_eq!(added.columns, vec![new("n", Some(Kind::Integer))]);
    assert!(b.take_schema_changed(), "the store followed its new column");
    let report = apply_setting_aside(&mut b, &changes, None).unwrap();
    assert_eq!(report.set_aside, 0, "{report:?}");
    assert_eq!(
        declared(&b_path),
        [("id", "INTEGER"), ("v", "TEXT"), ("n", "INTEGER")]
            .map(|(n, t)| (n.to_owned(), t.to_owned()))
    );
    // b captures its new column: its own write of it travels back.
    app_connection(&b_path)
        .execute_batch("UPDATE t SET n = 9 WHERE id = 2")
        .unwrap();
    pull(&mut b, &mut a).unwrap();
    let n: i64 = app_connection(&a_path)
        .query_row("SELECT n FROM t WHERE id = 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 9);
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
