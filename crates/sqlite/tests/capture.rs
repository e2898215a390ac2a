//! Capture: every write to a tracked SQLite file, whoever makes it, reaches the other
//! replicas exactly once and exactly as written.
//!
//! Risks covered:
//! - writes by processes with no Concord code (the `sqlite3` shell, an application's own
//!   connection) are missed, or captured with the wrong key, columns or values;
//! - UPDATE of a primary key, INSERT OR REPLACE and no-op UPDATEs are captured wrongly;
//! - Concord captures its own applied writes again (echo), so changes bounce forever;
//! - rows that existed before `track` never reach the other replicas;
//! - `track` accepts a table it cannot identify rows of, or half-installs on refusal;
//! - ALTER TABLE ADD COLUMN after tracking loses writes to the new column;
//! - `untrack` leaves objects behind or touches user data;
//! - composite keys, NULLs, blobs with zero bytes, unicode, extreme integers and reals do
//!   not round-trip exactly;
//! - tables wider than one change mask (63 columns) lose column changes;
//! - a source transaction is split when logged, so a receiver could apply part of it;
//! - a concurrent writer on another connection breaks capture or merge.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use concord_sqlite::Store as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    Rows, all_changes, app_connection, column_names, concord_objects, create_db, dump, dump_file,
    sqlite3_shell, sqlite3_shell_available, tracked_files, trigger_sql,
};
use concord_core::{CausalLength, Change, PrimaryKey, Value};
use concord_sqlite::{ApplyError, SqliteStore, StoreOptions, TrackError, merge_all, pull};
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

const ITEMS: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);";

fn int_key(id: i64) -> PrimaryKey {
    PrimaryKey::encode(&[Value::Integer(id)]).unwrap()
}

fn value_of<'c>(change: &'c Change, column: &str) -> &'c Value {
    &change
        .columns
        .iter()
        .find(|c| c.column == column)
        .unwrap_or_else(|| panic!("change {change:?} does not write {column}"))
        .value
}

fn row(values: &[SqlValue]) -> Vec<SqlValue> {
    values.to_vec()
}

fn i(v: i64) -> SqlValue {
    SqlValue::Integer(v)
}

fn s(v: &str) -> SqlValue {
    SqlValue::Text(v.to_owned())
}

/// The last `n` changes of a store's log.
fn last_changes(store: &SqliteStore, n: usize) -> Vec<Change> {
    let all = all_changes(store);
    all[all.len() - n..].to_vec()
}

#[test]
fn writes_from_the_sqlite3_shell_are_captured_and_reach_the_other_replica() {
    if !sqlite3_shell_available(
        "writes_from_the_sqlite3_shell_are_captured_and_reach_the_other_replica",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ITEMS, &["t"]);
    let a = &paths[0];

    // Three inserts, each its own autocommit transaction.
    sqlite3_shell(
        a,
        "INSERT INTO t VALUES (1, 'one', 1); INSERT INTO t VALUES (2, 'two', 2); \
         INSERT INTO t VALUES (3, 'three', 3);",
    );
    assert_eq!(stores[0].pending_len().unwrap(), 3);
    assert_eq!(stores[0].capture().unwrap(), 3);
    assert_eq!(stores[0].pending_len().unwrap(), 0);
    let log = all_changes(&stores[0]);
    assert_eq!(log.len(), 3);
    for (change, (id, name)) in log.iter().zip([(1, "one"), (2, "two"), (3, "three")]) {
        assert_eq!(change.table, "t");
        assert_eq!(change.key, int_key(id));
        assert_eq!(change.causal_length, CausalLength(1));
        assert_eq!(change.origin, stores[0].node_id());
        assert_eq!(column_names(change), ["id", "name", "qty"]);
        assert_eq!(value_of(change, "name"), &Value::Text(name.into()));
        assert_eq!(value_of(change, "qty"), &Value::Integer(id));
    }
    assert_eq!(
        log.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "sequence numbers start at 1 without gaps"
    );

    // An update of one column is captured as that column only, replacing the insert.
    sqlite3_shell(a, "UPDATE t SET qty = 20 WHERE id = 2;");
    assert_eq!(stores[0].capture().unwrap(), 1);
    let update = last_changes(&stores[0], 1).remove(0);
    assert_eq!(update.key, int_key(2));
    assert_eq!(column_names(&update), ["qty"]);
    assert_eq!(value_of(&update, "qty"), &Value::Integer(20));
    assert_eq!(update.causal_length, CausalLength(1));
    assert_eq!(
        update.columns[0].replaced,
        Some(log[1].columns[2].version),
        "the update names the version it overwrote"
    );

    // A delete.
    sqlite3_shell(a, "DELETE FROM t WHERE id = 3;");
    assert_eq!(stores[0].capture().unwrap(), 1);
    let delete = last_changes(&stores[0], 1).remove(0);
    assert_eq!(delete.key, int_key(3));
    assert!(delete.is_delete());
    assert_eq!(delete.causal_length, CausalLength(2));
    // It lists the column clocks it had seen (no values), so a receiver can tell an
    // update it missed.
    assert_eq!(column_names(&delete), ["id", "name", "qty"]);
    assert!(delete.columns.iter().all(|c| c.value == Value::Null));
    assert_eq!(
        delete.delete_seen,
        delete.columns.iter().map(|c| c.version).max()
    );

    // A multi-statement transaction: logged in write order as one group.
    sqlite3_shell(
        a,
        "BEGIN; INSERT INTO t VALUES (4, 'four', 4); UPDATE t SET name = 'uno' WHERE id = 1; \
         DELETE FROM t WHERE id = 2; COMMIT;",
    );
    assert_eq!(stores[0].capture().unwrap(), 3);
    let txn = last_changes(&stores[0], 3);
    assert_eq!(
        txn.iter().map(|c| c.key.clone()).collect::<Vec<_>>(),
        [int_key(4), int_key(1), int_key(2)]
    );
    assert_eq!(txn[0].causal_length, CausalLength(1));
    assert_eq!(column_names(&txn[1]), ["name"]);
    assert_eq!(value_of(&txn[1], "name"), &Value::Text("uno".into()));
    assert!(txn[2].is_delete());
    assert_eq!(
        txn.iter().map(|c| c.last_in_txn).collect::<Vec<_>>(),
        [false, false, true]
    );

    // A transaction the shell rolls back leaves nothing to capture.
    sqlite3_shell(
        a,
        "BEGIN; INSERT INTO t VALUES (5, 'five', 5); DELETE FROM t WHERE id = 1; ROLLBACK;",
    );
    assert_eq!(stores[0].pending_len().unwrap(), 0);
    assert_eq!(stores[0].capture().unwrap(), 0);
    assert_eq!(stores[0].log_len().unwrap(), 8);

    let reports = merge_all(&mut stores).unwrap();
    assert_eq!(reports[1].applied, 8);
    let expected: Rows = vec![row(&[i(1), s("uno"), i(1)]), row(&[i(4), s("four"), i(4)])];
    assert_eq!(dump_file(a, "t", "id"), expected);
    assert_eq!(dump_file(&paths[1], "t", "id"), expected);
    assert_eq!(
        stores[1].version_vector().get(&stores[0].node_id()),
        8,
        "the other replica holds every change of the shell's writes"
    );
}

#[test]
fn writes_through_an_application_connection_are_captured_including_key_changes_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ITEMS, &["t"]);
    let app = app_connection(&paths[0]);
    app.execute_batch(
        "INSERT INTO t VALUES (1, 'a', 1); INSERT INTO t VALUES (2, 'b', 2); \
         INSERT INTO t VALUES (3, 'c', 3);",
    )
    .unwrap();
    merge_all(&mut stores).unwrap();
    assert_eq!(dump_file(&paths[1], "t", "id").len(), 3);

    // Changing the primary key: a delete of the old key, then an insert of the new one.
    app.execute("UPDATE t SET id = 10 WHERE id = 1", [])
        .unwrap();
    assert_eq!(stores[0].capture().unwrap(), 2);
    let rekey = last_changes(&stores[0], 2);
    assert_eq!(rekey[0].key, int_key(1));
    assert!(rekey[0].is_delete(), "old key deleted: {:?}", rekey[0]);
    assert_eq!(rekey[1].key, int_key(10));
    assert!(!rekey[1].is_delete());
    assert_eq!(column_names(&rekey[1]), ["id", "name", "qty"]);
    assert_eq!(value_of(&rekey[1], "name"), &Value::Text("a".into()));

    // INSERT OR REPLACE of an existing key writes every column of the new row.
    let before = stores[0].log_len().unwrap();
    app.execute("INSERT OR REPLACE INTO t VALUES (2, 'replaced', 22)", [])
        .unwrap();
    assert_eq!(stores[0].capture().unwrap(), 1);
    let replace = last_changes(&stores[0], 1).remove(0);
    assert_eq!(replace.key, int_key(2));
    assert_eq!(value_of(&replace, "name"), &Value::Text("replaced".into()));
    assert_eq!(value_of(&replace, "qty"), &Value::Integer(22));
    assert_eq!(stores[0].log_len().unwrap(), before + 1);

    // UPDATEs that change nothing log nothing.
    let before = stores[0].log_len().unwrap();
    app.execute_batch(
        "UPDATE t SET name = name; UPDATE t SET qty = 3 WHERE id = 3; \
         UPDATE t SET name = 'nobody' WHERE id = 999;",
    )
    .unwrap();
    assert_eq!(stores[0].capture().unwrap(), 0);
    assert_eq!(stores[0].log_len().unwrap(), before);
    assert_eq!(stores[0].pending_len().unwrap(), 0);

    merge_all(&mut stores).unwrap();
    let expected: Rows = vec![
        row(&[i(2), s("replaced"), i(22)]),
        row(&[i(3), s("c"), i(3)]),
        row(&[i(10), s("a"), i(1)]),
    ];
    assert_eq!(dump_file(&paths[0], "t", "id"), expected);
    assert_eq!(
        dump_file(&paths[1], "t", "id"),
        expected,
        "the other replica has only the new key"
    );
}

#[test]
fn insert_or_replace_evicting_a_row_through_a_unique_column_reaches_the_other_replica() {
    let dir = tempfile::tempdir().unwrap();
    let ddl = "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ddl, &["u"]);
    let app = app_connection(&paths[0]);
    app.execute_batch(
        "INSERT INTO u VALUES (1, 'x@example.com', 'one'); \
         INSERT INTO u VALUES (2, 'y@example.com', 'two');",
    )
    .unwrap();
    merge_all(&mut stores).unwrap();
    // SQLite deletes row 1 to make room for the new row's email; with recursive
    // triggers off (the default) no DELETE trigger runs for that row.
    app.execute(
        "INSERT OR REPLACE INTO u VALUES (3, 'x@example.com', 'three')",
        [],
    )
    .unwrap();
    let expected: Rows = vec![
        row(&[i(2), s("y@example.com"), s("two")]),
        row(&[i(3), s("x@example.com"), s("three")]),
    ];
    assert_eq!(dump_file(&paths[0], "u", "id"), expected);
    merge_all(&mut stores).expect("merging the replace must not fail");
    assert_eq!(dump_file(&paths[1], "u", "id"), expected);
}

#[test]
fn text_a_client_stores_in_an_integer_column_does_not_block_replication() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ITEMS, &["t"]);
    let app = app_connection(&paths[0]);
    // SQLite keeps non-numeric text in an INTEGER column as text (flexible typing).
    app.execute("INSERT INTO t VALUES (1, 'one', 'n/a')", [])
        .unwrap();
    app.execute("INSERT INTO t VALUES (2, 'two', 2)", [])
        .unwrap();
    let typeof_qty: String = app
        .query_row("SELECT typeof(qty) FROM t WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(typeof_qty, "text");
    let result = merge_all(&mut stores);
    assert!(result.is_ok(), "merge failed: {}", result.unwrap_err());
    assert_eq!(
        dump_file(&paths[1], "t", "id"),
        dump_file(&paths[0], "t", "id")
    );
}

#[test]
fn changes_applied_by_concord_are_not_captured_again_as_local_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ITEMS, &["t"]);
    let app = app_connection(&paths[0]);
    app.execute_batch(
        "INSERT INTO t VALUES (1, 'a', 1); INSERT INTO t VALUES (2, 'b', 2); \
         INSERT INTO t VALUES (3, 'c', 3); UPDATE t SET qty = 7 WHERE id = 1; \
         DELETE FROM t WHERE id = 2; UPDATE t SET id = 30 WHERE id = 3;",
    )
    .unwrap();
    let (sa, rest) = stores.split_first_mut().unwrap();
    let sb = &mut rest[0];
    let report = pull(sa, sb).unwrap();
    assert_eq!(report.applied, sa.log_len().unwrap());
    assert!(report.applied > 0);

    // B wrote rows, updates and deletes, but none of it is B's own.
    assert_eq!(sb.pending_len().unwrap(), 0);
    assert_eq!(sb.capture().unwrap(), 0);
    let b_log = all_changes(sb);
    assert_eq!(b_log.len() as u64, sa.log_len().unwrap());
    assert!(
        b_log.iter().all(|c| c.origin == sa.node_id()),
        "B's log holds only A's changes: {b_log:?}"
    );
    assert_eq!(sb.version_vector().get(&sb.node_id()), 0);

    // Merging back applies nothing new to A, and A logs nothing new.
    let a_len = sa.log_len().unwrap();
    let back = pull(sb, sa).unwrap();
    assert_eq!(back.applied, 0);
    assert_eq!(back.captured, 0);
    assert_eq!(sa.log_len().unwrap(), a_len);
    assert_eq!(sa.capture().unwrap(), 0);

    // Round after round, nothing bounces.
    for _ in 0..3 {
        let reports = merge_all(&mut stores).unwrap();
        assert!(
            reports.iter().all(|r| r.applied == 0 && r.captured == 0),
            "{reports:?}"
        );
    }
    assert_eq!(stores[0].log_len().unwrap(), a_len);
    assert_eq!(stores[1].log_len().unwrap(), a_len);
    assert_eq!(
        dump_file(&paths[0], "t", "id"),
        dump_file(&paths[1], "t", "id")
    );
}

#[test]
fn rows_that_existed_before_track_are_shipped_to_the_other_replica() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    let ddl = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
               CREATE TABLE pairs(x TEXT, y INTEGER, v BLOB, PRIMARY KEY (x, y)) WITHOUT ROWID;";
    create_db(&a, ddl);
    create_db(&b, ddl);
    let app = Connection::open(&a).unwrap();
    for id in 1..=50 {
        app.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            rusqlite::params![id, format!("row {id}"), id * 10],
        )
        .unwrap();
    }
    app.execute_batch("INSERT INTO pairs VALUES ('k', 1, X'00'), ('k', 2, NULL);")
        .unwrap();
    drop(app);
    let before_t = dump_file(&a, "t", "id");
    let before_pairs = dump_file(&a, "pairs", "x, y");

    let sa = SqliteStore::track(&a, &["t", "pairs"], StoreOptions::default()).unwrap();
    let sb = SqliteStore::track(&b, &["t", "pairs"], StoreOptions::default()).unwrap();
    let mut stores = vec![sa, sb];
    assert_eq!(stores[0].capture().unwrap(), 52);
    let log = all_changes(&stores[0]);
    assert!(
        log.iter()
            .all(|c| !c.is_delete() && c.causal_length == CausalLength(1)),
        "pre-existing rows are logged as inserts"
    );
    merge_all(&mut stores).unwrap();
    assert_eq!(dump_file(&b, "t", "id"), before_t);
    assert_eq!(dump_file(&b, "pairs", "x, y"), before_pairs);
    assert_eq!(
        dump_file(&a, "t", "id"),
        before_t,
        "the source is untouched"
    );
}

#[test]
fn a_table_without_a_primary_key_or_a_missing_table_is_refused_and_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    create_db(
        &path,
        "CREATE TABLE good(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE nopk(a TEXT, b INTEGER); \
         INSERT INTO good VALUES (1, 'x'); INSERT INTO nopk VALUES ('a', 1);",
    );
    let conn = Connection::open(&path).unwrap();

    let err = SqliteStore::track(&path, &["nopk"], StoreOptions::default())
        .err()
        .expect("a table without a primary key must be refused");
    assert!(
        matches!(&err, TrackError::NoPrimaryKey(t) if t == "nopk"),
        "{err:?}"
    );
    assert!(err.to_string().contains("nopk"), "{err}");
    assert_eq!(concord_objects(&conn), Vec::<String>::new());

    // Refused along with a good table: the good one is not installed either.
    let err = SqliteStore::track(&path, &["good", "nopk"], StoreOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(err, TrackError::NoPrimaryKey(_)), "{err:?}");
    assert_eq!(concord_objects(&conn), Vec::<String>::new());

    let err = SqliteStore::track(&path, &["no_such_table"], StoreOptions::default())
        .err()
        .expect("a missing table must be refused");
    assert!(
        matches!(&err, TrackError::NoSuchTable(t) if t == "no_such_table"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert_eq!(concord_objects(&conn), Vec::<String>::new());

    // A composite key whose columns may hold NULL could let two rows share a key.
    conn.execute_batch("CREATE TABLE loose(a TEXT, b INTEGER, PRIMARY KEY (a, b))")
        .unwrap();
    let err = SqliteStore::track(&path, &["loose"], StoreOptions::default())
        .err()
        .expect("a key that may hold NULL must be refused");
    assert!(
        matches!(&err, TrackError::NullableKey(t, c) if t == "loose" && c == "a"),
        "{err:?}"
    );
    assert!(err.to_string().contains("NOT NULL"), "{err}");
    assert_eq!(concord_objects(&conn), Vec::<String>::new());
    assert!(matches!(
        SqliteStore::open(&path),
        Err(concord_sqlite::StoreError::NotTracked(_))
    ));

    // Once tracked, refusing another table leaves the installed capture as it was.
    let mut store = SqliteStore::track(&path, &["good"], StoreOptions::default()).unwrap();
    let installed = concord_objects(&conn);
    assert!(!installed.is_empty());
    let triggers = trigger_sql(&conn, "good");
    assert!(SqliteStore::track(&path, &["nopk"], StoreOptions::default()).is_err());
    assert_eq!(concord_objects(&conn), installed);
    assert_eq!(trigger_sql(&conn, "good"), triggers);
    assert!(trigger_sql(&conn, "nopk").is_empty());
    assert_eq!(
        store.capture().unwrap(),
        1,
        "the good table's row is captured"
    );
    conn.execute("INSERT INTO nopk VALUES ('b', 2)", [])
        .unwrap();
    assert_eq!(store.capture().unwrap(), 0);
}

#[test]
fn columns_added_after_tracking_reach_the_other_replica() {
    let dir = tempfile::tempdir().unwrap();
    let ddl = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT);";
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ddl, &["t"]);
    let (a, b) = (&paths[0], &paths[1]);
    app_connection(a)
        .execute("INSERT INTO t VALUES (1, 'one')", [])
        .unwrap();
    merge_all(&mut stores).unwrap();
    drop(stores);

    // Concord is not running: the app alters the table and writes the new column.
    let app_a = app_connection(a);
    let app_b = app_connection(b);
    app_a
        .execute_batch(
            "ALTER TABLE t ADD COLUMN note TEXT; \
             UPDATE t SET note = 'set before reopen' WHERE id = 1; \
             INSERT INTO t (id, name, note) VALUES (2, 'two', 'new row note');",
        )
        .unwrap();
    app_b
        .execute_batch("ALTER TABLE t ADD COLUMN note TEXT;")
        .unwrap();

    let mut stores = vec![SqliteStore::open(a).unwrap(), SqliteStore::open(b).unwrap()];
    assert_eq!(stores[0].capture().unwrap(), 2);
    let logged = last_changes(&stores[0], 2);
    assert_eq!(logged[0].key, int_key(1));
    assert_eq!(
        value_of(&logged[0], "note"),
        &Value::Text("set before reopen".into()),
        "a write made by the old trigger still carries the new column"
    );
    assert_eq!(
        value_of(&logged[1], "note"),
        &Value::Text("new row note".into())
    );
    let triggers = trigger_sql(&app_a, "t");
    assert_eq!(triggers.len(), 3, "{triggers:?}");
    assert!(
        triggers
            .iter()
            .any(|sql| sql.contains("AFTER UPDATE") && sql.contains("\"note\"")),
        "rebuilt triggers watch the new column: {triggers:?}"
    );

    merge_all(&mut stores).unwrap();
    let expected: Rows = vec![
        row(&[i(1), s("one"), s("set before reopen")]),
        row(&[i(2), s("two"), s("new row note")]),
    ];
    assert_eq!(dump_file(a, "t", "id"), expected);
    assert_eq!(dump_file(b, "t", "id"), expected);

    // With Concord running, a write of only the new column is captured as that column.
    app_a
        .execute("UPDATE t SET note = 'after reopen' WHERE id = 2", [])
        .unwrap();
    assert_eq!(stores[0].capture().unwrap(), 1);
    let update = last_changes(&stores[0], 1).remove(0);
    assert_eq!(column_names(&update), ["note"]);
    merge_all(&mut stores).unwrap();
    assert_eq!(
        dump_file(b, "t", "id")[1],
        row(&[i(2), s("two"), s("after reopen")])
    );

    // And a second ALTER while Concord has the files open.
    app_a
        .execute_batch(
            "ALTER TABLE t ADD COLUMN extra INTEGER; UPDATE t SET extra = 7 WHERE id = 1;",
        )
        .unwrap();
    app_b
        .execute_batch("ALTER TABLE t ADD COLUMN extra INTEGER;")
        .unwrap();
    merge_all(&mut stores).unwrap();
    assert!(
        trigger_sql(&app_a, "t")
            .iter()
            .any(|sql| sql.contains("AFTER UPDATE") && sql.contains("\"extra\"")),
        "{:?}",
        trigger_sql(&app_a, "t")
    );
    app_a
        .execute("UPDATE t SET extra = 8 WHERE id = 2", [])
        .unwrap();
    merge_all(&mut stores).unwrap();
    let expected: Rows = vec![
        row(&[i(1), s("one"), s("set before reopen"), i(7)]),
        row(&[i(2), s("two"), s("after reopen"), i(8)]),
    ];
    assert_eq!(dump_file(a, "t", "id"), expected);
    assert_eq!(dump_file(b, "t", "id"), expected);
}

#[test]
fn untrack_removes_every_trace_and_the_file_can_be_tracked_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    create_db(
        &path,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
         CREATE TABLE pairs(x TEXT NOT NULL, y INTEGER NOT NULL, v, PRIMARY KEY (x, y)); \
         CREATE TABLE audit(n INTEGER); \
         CREATE INDEX t_name ON t(name); \
         CREATE TRIGGER user_audit AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (NEW.id); END; \
         INSERT INTO t VALUES (1, 'one', 1); INSERT INTO pairs VALUES ('k', 1, X'00');",
    );
    let conn = Connection::open(&path).unwrap();
    let user_schema = |conn: &Connection| -> Vec<(String, String)> {
        conn.prepare(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE '%concord%' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let schema_before = user_schema(&conn);

    let mut store = SqliteStore::track(&path, &["t", "pairs"], StoreOptions::default()).unwrap();
    conn.execute_batch(
        "INSERT INTO t VALUES (2, 'two', 2); UPDATE pairs SET v = X'0102'; \
         INSERT INTO t VALUES (3, 'three', 3);",
    )
    .unwrap();
    store.capture().unwrap();
    conn.execute("DELETE FROM t WHERE id = 3", []).unwrap(); // left pending
    assert!(store.pending_len().unwrap() > 0);
    assert!(!concord_objects(&conn).is_empty());
    drop(store);
    let t_rows = dump(&conn, "t", "id");
    let pairs_rows = dump(&conn, "pairs", "x, y");
    let audit_rows = dump(&conn, "audit", "n");

    SqliteStore::untrack(&path, &[]).unwrap();
    assert_eq!(concord_objects(&conn), Vec::<String>::new());
    assert_eq!(user_schema(&conn), schema_before);
    assert_eq!(dump(&conn, "t", "id"), t_rows);
    assert_eq!(dump(&conn, "pairs", "x, y"), pairs_rows);
    assert_eq!(dump(&conn, "audit", "n"), audit_rows);
    assert!(SqliteStore::open(&path).is_err());
    // Writes after untrack run no Concord trigger.
    conn.execute("INSERT INTO t VALUES (4, 'four', 4)", [])
        .unwrap();

    // Tracked again: a fresh start that ships every current row.
    let mut store = SqliteStore::track(&path, &["t", "pairs"], StoreOptions::default()).unwrap();
    assert_eq!(store.capture().unwrap(), 4, "3 rows of t and 1 of pairs");
    conn.execute("UPDATE t SET qty = 40 WHERE id = 4", [])
        .unwrap();
    assert_eq!(store.capture().unwrap(), 1);
    let other = dir.path().join("b.db");
    create_db(
        &other,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
         CREATE TABLE pairs(x TEXT NOT NULL, y INTEGER NOT NULL, v, PRIMARY KEY (x, y));",
    );
    let other_store = SqliteStore::track(&other, &["t", "pairs"], StoreOptions::default()).unwrap();
    let mut stores = vec![store, other_store];
    merge_all(&mut stores).unwrap();
    assert_eq!(dump_file(&other, "t", "id"), dump(&conn, "t", "id"));
    assert_eq!(
        dump_file(&other, "pairs", "x, y"),
        dump(&conn, "pairs", "x, y")
    );
}

#[test]
fn composite_keys_nulls_blobs_unicode_and_extreme_numbers_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let ddl = "CREATE TABLE v(region TEXT NOT NULL, id INTEGER NOT NULL, label TEXT, data BLOB, \
               big INTEGER, r REAL, anything, PRIMARY KEY (region, id));";
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ddl, &["v"]);
    let blob = |b: &[u8]| SqlValue::Blob(b.to_vec());
    let rows: Rows = vec![
        vec![
            s(""),
            i(0),
            SqlValue::Null,
            blob(b""),
            i(0),
            SqlValue::Real(0.0),
            SqlValue::Null,
        ],
        vec![
            s("eu"),
            i(1),
            s("emoji 😀🇫🇷, CJK 漢字かな, combining e\u{301} a\u{30a}, RTL שלום"),
            blob(&[0, 0, 0]),
            i(i64::MAX),
            SqlValue::Real(0.1),
            blob(&[0, 255, 0, 1]),
        ],
        vec![
            s("eu"),
            i(9_007_199_254_740_993),
            s("quote ' and \"double\" and \\ backslash"),
            blob(&[0]),
            i(i64::MIN),
            SqlValue::Real(-1.797_693_134_862_315_7e308),
            i(-42),
        ],
        vec![
            s("日本\u{0301}"),
            i(-3),
            s(""),
            blob(&(0..=255).collect::<Vec<u8>>()),
            i(-1),
            SqlValue::Real(5e-324),
            SqlValue::Real(1.0 / 3.0),
        ],
        vec![
            s("x\u{200d}y"),
            i(i64::MIN),
            s("\u{feff}bom"),
            blob(b"\0text\0"),
            i(i64::MIN + 1),
            SqlValue::Real(f64::MIN_POSITIVE),
            s("text in an untyped column"),
        ],
        vec![
            s("nulls"),
            i(7),
            SqlValue::Null,
            SqlValue::Null,
            SqlValue::Null,
            SqlValue::Null,
            blob(&[]),
        ],
    ];
    let app = app_connection(&paths[0]);
    for r in &rows {
        app.execute(
            "INSERT INTO v VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params_from_iter(r.iter()),
        )
        .unwrap();
    }
    let order = "region, id";
    let mut expected = rows.clone();
    expected.sort_by_key(|r| {
        (
            match &r[0] {
                SqlValue::Text(t) => Some(t.clone()),
                _ => None,
            },
            match r[1] {
                SqlValue::Integer(n) => n,
                _ => 0,
            },
        )
    });
    assert_eq!(
        dump(&app, "v", order),
        expected,
        "SQLite holds what was written"
    );
    merge_all(&mut stores).unwrap();
    assert_eq!(dump_file(&paths[1], "v", order), expected);

    // Edits made on the other side come back exactly too.
    let app_b = app_connection(&paths[1]);
    app_b
        .execute(
            "UPDATE v SET label = ?1, data = ?2, r = ?3, anything = ?4 WHERE region = 'eu' AND id = 1",
            rusqlite::params!["🦀 ✓ 中文", vec![0u8, 0, 7, 0], -0.5f64, 2.5f64],
        )
        .unwrap();
    app_b
        .execute(
            "UPDATE v SET big = ?1 WHERE region = 'nulls' AND id = 7",
            [i64::MAX - 1],
        )
        .unwrap();
    app_b
        .execute("DELETE FROM v WHERE region = '' AND id = 0", [])
        .unwrap();
    merge_all(&mut stores).unwrap();
    let a_rows = dump_file(&paths[0], "v", order);
    assert_eq!(a_rows, dump_file(&paths[1], "v", order));
    assert_eq!(a_rows.len(), rows.len() - 1);
    assert!(a_rows.contains(&vec![
        s("eu"),
        i(1),
        s("🦀 ✓ 中文"),
        blob(&[0, 0, 7, 0]),
        i(i64::MAX),
        SqlValue::Real(-0.5),
        SqlValue::Real(2.5),
    ]));
    assert!(a_rows.contains(&vec![
        s("nulls"),
        i(7),
        SqlValue::Null,
        SqlValue::Null,
        i(i64::MAX - 1),
        SqlValue::Null,
        blob(&[]),
    ]));
}

#[test]
fn a_table_wider_than_one_change_mask_captures_and_merges_single_column_updates() {
    let dir = tempfile::tempdir().unwrap();
    let columns = (1..70)
        .map(|c| format!("c{c} INTEGER"))
        .collect::<Vec<_>>()
        .join(", ");
    let ddl = format!("CREATE TABLE w(id INTEGER PRIMARY KEY, {columns});");
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], &ddl, &["w"]);
    let app = app_connection(&paths[0]);
    let values = (1..70)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    app.execute(&format!("INSERT INTO w VALUES (1, {values})"), [])
        .unwrap();
    merge_all(&mut stores).unwrap();
    assert_eq!(dump_file(&paths[1], "w", "id"), dump(&app, "w", "id"));

    // Column 66 lives in the second mask integer; 62 is the last bit of the first mask
    // and 63 the first bit of the second.
    for (column, value) in [(66, 6666), (62, 6262), (63, 6363), (69, 6969), (1, 101)] {
        app.execute(
            &format!("UPDATE w SET c{column} = {value} WHERE id = 1"),
            [],
        )
        .unwrap();
        assert_eq!(stores[0].capture().unwrap(), 1, "c{column}");
        let change = last_changes(&stores[0], 1).remove(0);
        let name = format!("c{column}");
        assert_eq!(column_names(&change), [name.as_str()]);
        assert_eq!(value_of(&change, &name), &Value::Integer(value));
        merge_all(&mut stores).unwrap();
        let b_row = dump_file(&paths[1], "w", "id").remove(0);
        assert_eq!(b_row[column], i(value), "c{column} on the other replica");
        assert_eq!(b_row, dump(&app, "w", "id").remove(0));
    }
    // Two columns in different masks in one update.
    app.execute("UPDATE w SET c5 = -5, c68 = -68 WHERE id = 1", [])
        .unwrap();
    assert_eq!(stores[0].capture().unwrap(), 1);
    let change = last_changes(&stores[0], 1).remove(0);
    assert_eq!(column_names(&change), ["c5", "c68"]);
    merge_all(&mut stores).unwrap();
    assert_eq!(dump_file(&paths[1], "w", "id"), dump(&app, "w", "id"));
}

#[test]
fn a_source_transaction_is_logged_as_one_group_ending_at_the_last_change_of_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ITEMS, &["t"]);
    let mut app = app_connection(&paths[0]);
    let txn = app.transaction().unwrap();
    for id in 1..=100 {
        txn.execute(
            "INSERT INTO t VALUES (?1, 'bulk', ?1)",
            rusqlite::params![id],
        )
        .unwrap();
    }
    txn.commit().unwrap();
    assert_eq!(stores[0].capture().unwrap(), 100);
    let log = all_changes(&stores[0]);
    let ends: Vec<u64> = log
        .iter()
        .filter(|c| c.last_in_txn)
        .map(|c| c.seq)
        .collect();
    assert_eq!(ends, [100], "only the last change ends the group");

    // A second capture is a second group.
    app.execute_batch("INSERT INTO t VALUES (101, 'x', 1); UPDATE t SET name = 'y' WHERE id = 5;")
        .unwrap();
    assert_eq!(stores[0].capture().unwrap(), 2);
    let log = all_changes(&stores[0]);
    let ends: Vec<u64> = log
        .iter()
        .filter(|c| c.last_in_txn)
        .map(|c| c.seq)
        .collect();
    assert_eq!(ends, [100, 102]);

    // A receiver refuses to apply part of the group, and applies it whole.
    let first_group: Vec<Change> = log[..100].to_vec();
    let err = stores[1].apply_batch(&first_group[..60]).unwrap_err();
    assert!(
        matches!(err, ApplyError::IncompleteTransaction { seq: 60, .. }),
        "{err}"
    );
    assert!(dump_file(&paths[1], "t", "id").is_empty());
    let report = stores[1].apply_batch(&first_group).unwrap();
    assert_eq!(report.applied, 100);
    assert_eq!(report.commits, 1);
    assert_eq!(dump_file(&paths[1], "t", "id").len(), 100);
}

#[test]
fn merging_while_another_connection_writes_concurrently_converges() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(dir.path(), &["a.db", "b.db"], ITEMS, &["t"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = |path: std::path::PathBuf, base: i64, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let conn = app_connection(&path);
            let mut n = 0i64;
            while n < 400 && !(stop.load(Ordering::Relaxed) && n >= 50) {
                let id = base + n;
                conn.execute(
                    "INSERT INTO t VALUES (?1, 'w', ?2)",
                    rusqlite::params![id, n],
                )
                .unwrap();
                if n % 3 == 0 {
                    conn.execute("UPDATE t SET qty = qty + 1000 WHERE id = ?1", [id])
                        .unwrap();
                }
                if n % 7 == 0 && n > 0 {
                    conn.execute("DELETE FROM t WHERE id = ?1", [id - 1])
                        .unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    let wa = writer(paths[0].clone(), 0, stop.clone());
    let wb = writer(paths[1].clone(), 1_000_000, stop.clone());
    let mut merges = 0;
    while !(wa.is_finished() && wb.is_finished()) {
        merge_all(&mut stores).unwrap();
        merges += 1;
        if merges >= 20 {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let written = wa.join().unwrap() + wb.join().unwrap();
    assert!(merges >= 2, "merges ran while the writers wrote");
    merge_all(&mut stores).unwrap();
    let a = dump_file(&paths[0], "t", "id");
    let b = dump_file(&paths[1], "t", "id");
    assert_eq!(a, b);
    assert!(a.len() as i64 > written / 2, "{} of {written}", a.len());
    assert_eq!(stores[0].pending_len().unwrap(), 0);
    assert_eq!(stores[1].pending_len().unwrap(), 0);
    assert_eq!(stores[0].version_vector(), stores[1].version_vector());
}

/// SQLite stores whatever bytes it is given as TEXT (`CAST(x'ff' AS TEXT)`), and such
/// a value used to stop capture of every table: capture retried forever with `text is
/// not valid UTF-8` and every later write, to any table, stayed pending. It is carried
/// as the bytes it is (a blob), in a value column and in a key column, and the writes
/// after it flow.
#[test]
fn text_that_is_not_utf8_is_carried_byte_for_byte_and_stops_no_other_write() {
    if !sqlite3_shell_available(
        "text_that_is_not_utf8_is_carried_byte_for_byte_and_stops_no_other_write",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(
        dir.path(),
        &["a.db", "b.db"],
        "CREATE TABLE vals(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE other(id INTEGER PRIMARY KEY, note TEXT);
         CREATE TABLE tk(k TEXT PRIMARY KEY NOT NULL, v TEXT);",
        &["vals", "other", "tk"],
    );
    let (a, b) = (&paths[0], &paths[1]);
    sqlite3_shell(a, "insert into vals values(4, cast(x'ff' as text));");
    sqlite3_shell(a, "insert into other values(1, 'written after');");
    sqlite3_shell(
        a,
        "insert into tk values(cast(x'c328' as text), 'bad key');
         update tk set v = 'updated' where k = cast(x'c328' as text);
         update vals set v = cast(x'fe00ff' as text) || 'tail' where id = 4;
         insert into vals values(5, 'plain');",
    );
    let (sa, rest) = stores.split_first_mut().unwrap();
    let sb = &mut rest[0];
    sa.capture()
        .expect("capture does not stop on text that is not UTF-8");
    assert_eq!(
        sa.pending_len().unwrap(),
        0,
        "nothing waits behind the value"
    );
    let report = pull(sa, sb).unwrap();
    assert_eq!(report.set_aside, 0, "{report:?}");
    assert!(sb.failures().unwrap().is_empty());

    let bytes = |path: &std::path::Path, sql: &str| -> Vec<(String, String)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let vals = "SELECT id || '', hex(v) FROM vals ORDER BY id";
    assert_eq!(
        bytes(b, vals),
        vec![
            ("4".to_owned(), "FE00FF7461696C".to_owned()),
            ("5".to_owned(), hex("plain"))
        ]
    );
    assert_eq!(bytes(b, vals), bytes(a, vals), "byte for byte");
    let keyed = "SELECT hex(k), v FROM tk";
    assert_eq!(
        bytes(b, keyed),
        vec![("C328".to_owned(), "updated".to_owned())]
    );
    assert_eq!(
        dump_file(b, "other", "id"),
        vec![row(&[i(1), s("written after")])],
        "a later row of another table arrives"
    );
    // The replica holds the bytes as a blob: SQLite stores what it was given.
    let kind: String = Connection::open(b)
        .unwrap()
        .query_row("SELECT typeof(v) FROM vals WHERE id = 4", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kind, "blob");

    // Nothing bounces, and the origin keeps capturing the row by its text key.
    assert_eq!(sb.capture().unwrap(), 0);
    sqlite3_shell(
        a,
        "update tk set v = 'again' where k = cast(x'c328' as text);",
    );
    assert_eq!(sa.capture().unwrap(), 1);
    pull(sa, sb).unwrap();
    assert_eq!(
        bytes(b, keyed),
        vec![("C328".to_owned(), "again".to_owned())]
    );
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02X}")).collect()
}

/// Concord's triggers on a table with a UNIQUE constraint include the two that record
/// rows a REPLACE evicts. Rebuilding the triggers (tracking the table again, or a column
/// added) dropped only the others, so creating them again failed ("trigger already
/// exists"): an ADD COLUMN on such a table stopped capture.
#[test]
fn a_table_with_a_unique_column_keeps_capturing_after_a_column_is_added_or_it_is_tracked_again() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, mut stores) = tracked_files(
        dir.path(),
        &["a.db", "b.db"],
        "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE);",
        &["u"],
    );
    let a = &paths[0];
    let app = app_connection(a);
    app.execute_batch("INSERT INTO u VALUES (1, 'x@example.org');")
        .unwrap();
    SqliteStore::track(a, &["u"], StoreOptions::default()).expect("tracked again");
    app.execute_batch(
        "ALTER TABLE u ADD COLUMN name TEXT; INSERT INTO u VALUES (2, 'y@example.org', 'y');",
    )
    .unwrap();
    stores[0]
        .capture()
        .expect("capture goes on after ADD COLUMN");
    Connection::open(&paths[1])
        .unwrap()
        .execute_batch("ALTER TABLE u ADD COLUMN name TEXT;")
        .unwrap();
    let reports = merge_all(&mut stores).unwrap();
    assert!(reports.iter().all(|r| r.set_aside == 0), "{reports:?}");
    assert_eq!(dump_file(a, "u", "id"), dump_file(&paths[1], "u", "id"));
}
