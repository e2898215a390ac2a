//! Store-level convergence: three tracked SQLite files written by ordinary connections
//! and merged pairwise in random order must end identical.
//!
//! Risks covered:
//! * capture missing or misreading a write made through plain SQL: inserts, updates of
//!   some columns, deletes, re-inserts of a deleted key, key changes (`UPDATE ... SET b`),
//!   `INSERT OR REPLACE`, upserts, multi-row statements, multi-statement and rolled-back
//!   transactions;
//! * values that do not survive the trip: NULLs, unicode (including empty text and an
//!   embedded NUL, also inside the primary key), blobs, reals such as `-0.0` and `1e300`,
//!   mixed storage classes in a `BLOB` column, extreme integer keys;
//! * merge results that depend on delivery order, on relaying through a third file, or
//!   on duplicates (changes delivered again, from scratch);
//! * a merge that never settles: after `merge_all` a further merge must apply nothing.
//!
//! The key space is tiny on purpose so that replicas collide on the same rows.
//! `PROPTEST_CASES` overrides the number of cases.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use concord_sqlite::Store as _;
use std::path::Path;

use concord_core::{Value as CoreValue, VersionVector};
use concord_sqlite::{SqliteStore, StoreOptions, merge_all, pull};
use proptest::prelude::*;
use rusqlite::Connection;
use rusqlite::types::Value;

const SCHEMA: &str = "CREATE TABLE t(a INTEGER NOT NULL, b TEXT NOT NULL, c BLOB, d REAL, e TEXT, \
                      PRIMARY KEY (a, b))";
const REPLICAS: usize = 3;

type Key = (i64, &'static str);

#[derive(Clone, Debug)]
struct Row {
    c: Value,
    d: Value,
    e: Value,
}

#[derive(Clone, Copy, Debug)]
enum Col {
    C,
    D,
    E,
}

impl Col {
    fn name(self) -> &'static str {
        match self {
            Col::C => "c",
            Col::D => "d",
            Col::E => "e",
        }
    }
}

#[derive(Clone, Debug)]
enum Stmt {
    /// `INSERT OR IGNORE`.
    Insert(Key, Row),
    /// `INSERT OR REPLACE`: the replaced row is deleted without firing delete triggers.
    Replace(Key, Row),
    /// `INSERT ... ON CONFLICT DO UPDATE`.
    Upsert(Key, Row),
    /// Update of some columns of one row.
    Update(Key, Vec<(Col, Value)>),
    /// Update of `d` in every row with this `a`.
    UpdateMany(i64, Value),
    /// Change of a key column: the row moves to another key.
    Rekey(Key, &'static str),
    Delete(Key),
    /// Delete of every row with this `a`.
    DeleteMany(i64),
    /// Delete and insert the same key again in one go.
    Reinsert(Key, Row),
}

#[derive(Clone, Copy, Debug)]
enum Txn {
    /// Each statement is its own transaction.
    Autocommit,
    Commit,
    Rollback,
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        replica: usize,
        txn: Txn,
        stmts: Vec<Stmt>,
    },
    /// `pull`, once or twice in a row.
    Pull { from: usize, to: usize, twice: bool },
    /// Deliver the whole log of `from` again, as if `to` held nothing: duplicates.
    Resend { from: usize, to: usize },
}

fn key() -> impl Strategy<Value = Key> {
    (
        prop::sample::select(vec![1i64, 2, i64::MIN]),
        prop::sample::select(vec!["x", "日本", "", "a\u{0}b"]),
    )
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "plain",
            "ünïcödé",
            "𝄞 clef",
            "quote ' \" ;",
            "nul \u{0} inside",
            "  ",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,8}",
    ]
}

/// A value for the `BLOB` column, which keeps any storage class as written.
fn blob_column() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
        text().prop_map(Value::Text),
        any::<i64>().prop_map(Value::Integer),
        (-1000i32..1000).prop_map(|i| Value::Real(f64::from(i) / 8.0)),
    ]
}

/// A value for the `REAL` column: reals, and integers (stored as reals).
fn real_column() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.1,
            -2.5,
            1e300,
            -1e-300,
            f64::MIN_POSITIVE
        ])
        .prop_map(Value::Real),
        any::<i32>().prop_map(|i| Value::Real(f64::from(i) / 4.0)),
        (-50i64..50).prop_map(Value::Integer),
    ]
}

/// A value for the `TEXT` column: text, and integers (stored as text).
fn text_column() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        text().prop_map(Value::Text),
        (-50i64..50).prop_map(Value::Integer),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    (blob_column(), real_column(), text_column()).prop_map(|(c, d, e)| Row { c, d, e })
}

fn column_value() -> impl Strategy<Value = (Col, Value)> {
    prop_oneof![
        blob_column().prop_map(|v| (Col::C, v)),
        real_column().prop_map(|v| (Col::D, v)),
        text_column().prop_map(|v| (Col::E, v)),
    ]
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        3 => (key(), row()).prop_map(|(k, r)| Stmt::Insert(k, r)),
        1 => (key(), row()).prop_map(|(k, r)| Stmt::Replace(k, r)),
        1 => (key(), row()).prop_map(|(k, r)| Stmt::Upsert(k, r)),
        4 => (key(), prop::collection::vec(column_value(), 1..4)).prop_map(|(k, s)| Stmt::Update(k, s)),
        1 => (prop::sample::select(vec![1i64, 2, i64::MIN]), real_column()).prop_map(|(a, v)| Stmt::UpdateMany(a, v)),
        1 => (key(), prop::sample::select(vec!["x", "日本", "", "a\u{0}b"])).prop_map(|(k, b)| Stmt::Rekey(k, b)),
        2 => key().prop_map(Stmt::Delete),
        1 => prop::sample::select(vec![1i64, 2, i64::MIN]).prop_map(Stmt::DeleteMany),
        1 => (key(), row()).prop_map(|(k, r)| Stmt::Reinsert(k, r)),
    ]
}

fn replica_pair() -> impl Strategy<Value = (usize, usize)> {
    (0..REPLICAS, 1..REPLICAS).prop_map(|(from, offset)| (from, (from + offset) % REPLICAS))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0..REPLICAS,
            prop_oneof![4 => Just(Txn::Autocommit), 4 => Just(Txn::Commit), 1 => Just(Txn::Rollback)],
            prop::collection::vec(stmt(), 1..5),
        )
            .prop_map(|(replica, txn, stmts)| Op::Write { replica, txn, stmts }),
        4 => (replica_pair(), any::<bool>()).prop_map(|((from, to), twice)| Op::Pull { from, to, twice }),
        1 => replica_pair().prop_map(|(from, to)| Op::Resend { from, to }),
    ]
}

fn execute(conn: &Connection, stmt: &Stmt) {
    let key_where = "a IS ?1 AND b IS ?2";
    let result = match stmt {
        Stmt::Insert((a, b), r) => conn.execute(
            "INSERT OR IGNORE INTO t(a, b, c, d, e) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![a, b, r.c, r.d, r.e],
        ),
        Stmt::Replace((a, b), r) => conn.execute(
            "INSERT OR REPLACE INTO t(a, b, c, d, e) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![a, b, r.c, r.d, r.e],
        ),
        Stmt::Upsert((a, b), r) => conn.execute(
            "INSERT INTO t(a, b, c, d, e) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (a, b) DO UPDATE SET c = excluded.c, d = excluded.d, e = excluded.e",
            rusqlite::params![a, b, r.c, r.d, r.e],
        ),
        Stmt::Update((a, b), sets) => {
            let assignments = sets
                .iter()
                .enumerate()
                .map(|(i, (col, _))| format!("{} = ?{}", col.name(), i + 3))
                .collect::<Vec<_>>()
                .join(", ");
            let mut params: Vec<Value> = vec![Value::Integer(*a), Value::Text((*b).to_owned())];
            params.extend(sets.iter().map(|(_, v)| v.clone()));
            conn.execute(
                &format!("UPDATE t SET {assignments} WHERE {key_where}"),
                rusqlite::params_from_iter(params),
            )
        }
        Stmt::UpdateMany(a, d) => {
            conn.execute("UPDATE t SET d = ?2 WHERE a = ?1", rusqlite::params![a, d])
        }
        Stmt::Rekey((a, b), new_b) => conn.execute(
            &format!("UPDATE OR IGNORE t SET b = ?3 WHERE {key_where}"),
            rusqlite::params![a, b, new_b],
        ),
        Stmt::Delete((a, b)) => conn.execute(
            &format!("DELETE FROM t WHERE {key_where}"),
            rusqlite::params![a, b],
        ),
        Stmt::DeleteMany(a) => conn.execute("DELETE FROM t WHERE a = ?1", [a]),
        Stmt::Reinsert((a, b), r) => conn
            .execute(
                &format!("DELETE FROM t WHERE {key_where}"),
                rusqlite::params![a, b],
            )
            .and_then(|_| {
                conn.execute(
                    "INSERT INTO t(a, b, c, d, e) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![a, b, r.c, r.d, r.e],
                )
            }),
    };
    result.unwrap_or_else(|e| panic!("{stmt:?} failed: {e}"));
}

fn dump(conn: &Connection) -> Vec<Vec<Value>> {
    let mut stmt = conn
        .prepare("SELECT a, b, c, d, e FROM t ORDER BY a, b")
        .unwrap();
    stmt.query_map([], |r| (0..5).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Two distinct elements of a slice, mutably.
fn pair<T>(items: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (left, right) = items.split_at_mut(j);
        (&mut left[i], &mut right[0])
    } else {
        let (left, right) = items.split_at_mut(i);
        (&mut right[0], &mut left[j])
    }
}

fn setup(dir: &Path, count: usize) -> (Vec<SqliteStore>, Vec<Connection>) {
    let mut stores = Vec::new();
    let mut apps = Vec::new();
    for i in 0..count {
        let path = dir.join(format!("r{i}.db"));
        let app = Connection::open(&path).unwrap();
        app.execute_batch(SCHEMA).unwrap();
        stores.push(SqliteStore::track(&path, &["t"], StoreOptions::default()).unwrap());
        app.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        apps.push(app);
    }
    (stores, apps)
}

fn run_workload(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut stores, apps) = setup(dir.path(), REPLICAS);
    for op in ops {
        match op {
            Op::Write {
                replica,
                txn,
                stmts,
            } => {
                let app = &apps[*replica];
                if !matches!(txn, Txn::Autocommit) {
                    app.execute_batch("BEGIN").unwrap();
                }
                for s in stmts {
                    execute(app, s);
                }
                match txn {
                    Txn::Autocommit => {}
                    Txn::Commit => app.execute_batch("COMMIT").unwrap(),
                    Txn::Rollback => app.execute_batch("ROLLBACK").unwrap(),
                }
            }
            Op::Pull { from, to, twice } => {
                let (src, dst) = pair(&mut stores, *from, *to);
                pull(src, dst).unwrap_or_else(|e| panic!("pull {from} -> {to}: {e}"));
                if *twice {
                    let again = pull(src, dst)
                        .unwrap_or_else(|e| panic!("second pull {from} -> {to}: {e}"));
                    prop_assert_eq!(again.applied, 0, "a repeated pull applied changes again");
                }
            }
            Op::Resend { from, to } => {
                let (src, dst) = pair(&mut stores, *from, *to);
                src.capture().unwrap();
                let before = dst.version_vector().clone();
                let mut cursor = src.changes_for(&VersionVector::new()).unwrap();
                let report = dst
                    .apply_changes(&mut cursor)
                    .unwrap_or_else(|e| panic!("resend {from} -> {to}: {e}"));
                // Everything `to` already held must be skipped as a duplicate.
                let overlap: u64 = src
                    .version_vector()
                    .iter()
                    .map(|(origin, sent)| (*sent).min(before.get(origin)))
                    .sum();
                let sent: u64 = src.version_vector().iter().map(|(_, s)| *s).sum();
                prop_assert_eq!(report.received, sent);
                prop_assert_eq!(report.applied + report.duplicates, report.received);
                prop_assert_eq!(report.duplicates, overlap);
            }
        }
    }

    merge_all(&mut stores).unwrap();
    merge_all(&mut stores).unwrap();
    let expected = dump(&apps[0]);
    for (i, app) in apps.iter().enumerate().skip(1) {
        prop_assert_eq!(
            &dump(app),
            &expected,
            "replica {} differs from replica 0",
            i
        );
    }
    let settled = merge_all(&mut stores).unwrap();
    for (i, report) in settled.iter().enumerate() {
        prop_assert_eq!(
            (report.applied, report.captured),
            (0, 0),
            "replica {} still received changes after merging twice",
            i
        );
    }
    for store in &stores[1..] {
        prop_assert_eq!(store.version_vector(), stores[0].version_vector());
    }
    for store in &stores {
        prop_assert_eq!(store.pending_len().unwrap(), 0);
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn three_files_written_by_plain_sql_converge_whatever_the_merge_order(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        run_workload(&ops)?;
    }
}

#[test]
fn concurrent_writes_to_one_column_keep_the_later_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut stores, apps) = setup(dir.path(), 2);
    apps[0]
        .execute("INSERT INTO t VALUES (1, 'k', NULL, 1.0, 'original')", [])
        .unwrap();
    merge_all(&mut stores).unwrap();
    assert_eq!(dump(&apps[0]), dump(&apps[1]));

    // Both edit the same column without seeing each other's write; replica 1 writes
    // later (the triggers stamp wall time at write).
    apps[0]
        .execute("UPDATE t SET e = 'from r0' WHERE a = 1 AND b = 'k'", [])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    apps[1]
        .execute("UPDATE t SET e = 'from r1' WHERE a = 1 AND b = 'k'", [])
        .unwrap();
    merge_all(&mut stores).unwrap();

    for app in &apps {
        let e: String = app
            .query_row("SELECT e FROM t WHERE a = 1 AND b = 'k'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(e, "from r1", "the later write must win on every replica");
    }
    assert_eq!(dump(&apps[0]), dump(&apps[1]));

    let mut recorded = Vec::new();
    for store in &stores {
        recorded.extend(store.conflicts().unwrap());
    }
    let both = [
        CoreValue::Text("from r0".into()),
        CoreValue::Text("from r1".into()),
    ];
    let listed = recorded.iter().find(|c| {
        c.kind == "column"
            && c.table == "t"
            && c.column.as_deref() == Some("e")
            && both.contains(&c.local_value)
            && both.contains(&c.remote_value)
            && c.local_value != c.remote_value
    });
    let conflict = listed.unwrap_or_else(|| {
        panic!("no replica recorded the concurrent pair with both values: {recorded:#?}")
    });
    let kept = if conflict.winner == "local" {
        &conflict.local_value
    } else {
        &conflict.remote_value
    };
    assert_eq!(kept, &CoreValue::Text("from r1".into()), "{conflict:?}");
}

/// SQLite lets a primary-key column of an ordinary (rowid) table hold NULL unless it is
/// declared NOT NULL, and NULLs never collide, so several rows can share the key
/// `(NULL, 'x')`. Concord identifies rows by key, so it refuses to track such a table
/// rather than let replicas drift apart while reporting success.
#[test]
fn a_primary_key_that_may_hold_null_is_refused_before_replicas_can_diverge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let app = Connection::open(&path).unwrap();
    app.execute_batch("CREATE TABLE t(a INTEGER, b TEXT, c INTEGER, PRIMARY KEY (a, b))")
        .unwrap();
    app.execute_batch("INSERT INTO t VALUES (NULL, 'x', 1); INSERT INTO t VALUES (NULL, 'x', 2);")
        .unwrap();
    let err = SqliteStore::track(&path, &["t"], StoreOptions::default())
        .err()
        .expect("a key that may hold NULL must be refused");
    assert!(
        matches!(&err, concord_sqlite::TrackError::NullableKey(t, c) if t == "t" && c == "a"),
        "{err:?}"
    );
}
