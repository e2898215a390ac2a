//! Bad incoming changes: a batch holding one bad change is refused whole, the error
//! names what was wrong and where, and the store keeps working.
//!
//! Risks covered, for each kind of bad change (unknown table or column, a value of the
//! wrong type, a malformed key or one of the wrong arity, a timestamp beyond the clock
//! bound, corrupt row metadata, a sequence gap, a NOT NULL or CHECK violation at the
//! destination, a batch ending inside a source transaction):
//! - the batch is applied in part (the good changes before the bad one stay);
//! - the version vector, the change log or the row metadata advance for changes that
//!   were rolled back;
//! - the error does not say which table, key (and column) to look at;
//! - the store is left unusable, so the next good batch fails too.
//!
//! Also: a duplicate change is skipped and counted, not applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use concord_sqlite::Store as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Rows, all_changes, app_connection, dump, dump_file, row_metadata};
use concord_core::{Change, Hlc, PrimaryKey, Value, VersionVector};
use concord_sqlite::{ApplyError, RowError, SqliteStore, StoreOptions, pull};
use rusqlite::Connection;
use tempfile::TempDir;

const DDL: &str = "CREATE TABLE items(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    qty INTEGER NOT NULL DEFAULT 0 CHECK (qty >= 0),
    note TEXT
);";

/// Two tracked files. `src` logged two source transactions: rows 101..103 (already
/// applied at `dst`), then rows 104 and 105 and an update of row 101's name and qty
/// (`good`, not yet applied at `dst`; its last change ends the transaction).
struct Fixture {
    _dir: TempDir,
    src_path: PathBuf,
    dst_path: PathBuf,
    dst: SqliteStore,
    /// Changes 1..=3, held by `dst`.
    held: Vec<Change>,
    /// Changes 4..=6, one source transaction, not held by `dst`.
    good: Vec<Change>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.db");
    let dst_path = dir.path().join("dst.db");
    common::create_db(&src_path, DDL);
    common::create_db(&dst_path, DDL);
    let mut src = SqliteStore::track(&src_path, &["items"], StoreOptions::default()).unwrap();
    let mut dst = SqliteStore::track(&dst_path, &["items"], StoreOptions::default()).unwrap();
    let app = app_connection(&src_path);
    app.execute_batch(
        "BEGIN;
         INSERT INTO items VALUES (101, 'apple', 1, NULL);
         INSERT INTO items VALUES (102, 'banana', 2, 'ripe');
         INSERT INTO items VALUES (103, 'cherry', 3, NULL);
         COMMIT;",
    )
    .unwrap();
    assert_eq!(src.capture().unwrap(), 3);
    app.execute_batch(
        "BEGIN;
         INSERT INTO items VALUES (104, 'damson', 4, NULL);
         INSERT INTO items VALUES (105, 'elder', 5, 'dry');
         UPDATE items SET name = 'apple v2', qty = 10 WHERE id = 101;
         COMMIT;",
    )
    .unwrap();
    assert_eq!(src.capture().unwrap(), 3);
    let log = all_changes(&src);
    assert_eq!(log.len(), 6);
    let held = log[..3].to_vec();
    let good = log[3..].to_vec();
    assert!(held[2].last_in_txn && good[2].last_in_txn);
    assert!(!good[0].last_in_txn && !good[1].last_in_txn);
    assert_eq!(
        good[2]
            .columns
            .iter()
            .map(|c| c.column.as_str())
            .collect::<Vec<_>>(),
        ["name", "qty"]
    );
    dst.apply_batch(&held).unwrap();
    assert_eq!(dump_file(&dst_path, "items", "id").len(), 3);
    Fixture {
        _dir: dir,
        src_path,
        dst_path,
        dst,
        held,
        good,
    }
}

/// Everything a failed batch must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rows: Rows,
    version_vector: VersionVector,
    log_len: u64,
    row_metadata: Vec<(i64, Vec<u8>, i64, Vec<u8>)>,
    origins: Rows,
    meta: Rows,
    conflicts: u64,
}

/// The state as stored in the file, read through fresh connections (the persisted
/// version vector comes from a newly opened store).
fn snapshot(path: &Path) -> Snapshot {
    let conn = Connection::open(path).unwrap();
    let store = SqliteStore::open(path).unwrap();
    Snapshot {
        rows: dump(&conn, "items", "id"),
        version_vector: store.version_vector().clone(),
        log_len: store.log_len().unwrap(),
        row_metadata: row_metadata(&conn),
        origins: dump(&conn, "__concord_origins", "id"),
        meta: dump(&conn, "__concord_meta", "key"),
        conflicts: store.conflicts().unwrap().len() as u64,
    }
}

impl Fixture {
    /// Applies `good[..2]` plus `bad` in one batch, checks it failed, that nothing of it
    /// stayed, and that the good batch then applies on the same store value. Returns the
    /// error for the caller's checks on its message.
    fn refuse(&mut self, bad: Change) -> ApplyError {
        let mut batch = self.good[..2].to_vec();
        batch.push(bad);
        self.refuse_batch(&batch)
    }

    fn refuse_batch(&mut self, batch: &[Change]) -> ApplyError {
        let before = snapshot(&self.dst_path);
        let log_len = self.dst.log_len().unwrap();
        let err = self
            .dst
            .apply_batch(batch)
            .expect_err("a batch holding a bad change must be refused");
        assert_eq!(
            snapshot(&self.dst_path),
            before,
            "nothing of the refused batch may stay ({err})"
        );
        assert_eq!(self.dst.log_len().unwrap(), log_len);
        err
    }

    /// The good batch applies on the same store value, and `dst` then matches `src`.
    fn good_batch_still_applies(&mut self) {
        let report = self.dst.apply_batch(&self.good).unwrap();
        assert_eq!(report.applied, 3);
        assert_eq!(report.duplicates, 0);
        assert_eq!(report.commits, 1);
        assert_eq!(
            dump_file(&self.dst_path, "items", "id"),
            dump_file(&self.src_path, "items", "id")
        );
        assert_eq!(self.dst.version_vector().get(&self.good[2].origin), 6);
        assert_eq!(self.dst.log_len().unwrap(), 6);
    }

    /// The last good change (update of row 101's name and qty), to be spoiled.
    fn last_good(&self) -> Change {
        self.good[2].clone()
    }
}

/// The row failure inside an error, with the checks every row failure must pass: its
/// message names the table and the key.
fn row_failure<'e>(err: &'e ApplyError, table: &str, key: &PrimaryKey) -> &'e RowError {
    let message = err.to_string();
    assert!(
        message.contains(&format!("table {table:?}")),
        "the message names table {table}: {message}"
    );
    assert!(
        message.contains(&format!("key {key}")),
        "the message names key {key}: {message}"
    );
    match err {
        ApplyError::Row(failure) => {
            assert_eq!(failure.table, table);
            &failure.error
        }
        other => panic!("expected a row failure, got {other:?}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_change_to_an_unknown_table_is_refused_and_nothing_of_its_batch_is_applied() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.table = "no_such_table".into();
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "no_such_table", &bad.key);
    assert!(matches!(error, RowError::UnknownTable), "{error:?}");
    f.good_batch_still_applies();
}

#[test]
fn a_change_to_an_unknown_column_is_refused_naming_the_column() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.columns[1].column = "no_such_column".into();
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(
        matches!(error, RowError::UnknownColumn(c) if c == "no_such_column"),
        "{error:?}"
    );
    assert!(err.to_string().contains("no_such_column"), "{err}");
    f.good_batch_still_applies();
}

#[test]
fn a_value_the_column_would_silently_convert_is_refused_naming_the_column() {
    let mut f = fixture();
    // Numeric-looking text into an INTEGER column: SQLite would store the number 42,
    // not the text the origin wrote.
    let mut bad = f.last_good();
    bad.columns[1].value = Value::Text("42".into());
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(
        matches!(error, RowError::WrongType { column, found: "text", .. } if column == "qty"),
        "{error:?}"
    );
    assert!(err.to_string().contains("\"qty\""), "{err}");

    // A real into a TEXT column: SQLite would store its text rendering.
    let mut bad = f.last_good();
    bad.columns[0].value = Value::Real(1.5);
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(
        matches!(error, RowError::WrongType { column, found: "real", .. } if column == "name"),
        "{error:?}"
    );
    assert!(err.to_string().contains("\"name\""), "{err}");

    // A decimal with more digits than a double keeps, into an INTEGER column (a
    // PostgreSQL numeric, say): SQLite would store a rounded number, not the decimal.
    let mut bad = f.last_good();
    bad.columns[1].value = Value::Decimal("0.1000000000000000000001".into());
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(
        matches!(error, RowError::WrongType { column, found: "decimal", .. } if column == "qty"),
        "{error:?}"
    );

    // A NaN (a PostgreSQL double precision can hold one): SQLite would store NULL.
    let mut bad = f.last_good();
    bad.columns[1].value = Value::Real(f64::NAN);
    let err = f.refuse(bad.clone());
    assert!(err.to_string().contains("NaN"), "{err}");
    f.good_batch_still_applies();
}

#[test]
fn a_malformed_key_is_refused_and_shown_in_hex() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.key = PrimaryKey::from_bytes_unchecked(vec![0xee, 0x01, 0x02, 0x03]);
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::MalformedKey(_)), "{error:?}");
    assert!(err.to_string().contains("ee010203"), "{err}");

    // A key that stops in the middle of a component.
    let mut bad = f.last_good();
    let mut bytes = bad.key.as_bytes().to_vec();
    bytes.truncate(bytes.len() - 3);
    bad.key = PrimaryKey::from_bytes_unchecked(bytes);
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::MalformedKey(_)), "{error:?}");
    f.good_batch_still_applies();
}

#[test]
fn a_key_with_the_wrong_number_of_components_is_refused() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.key = PrimaryKey::encode(&[Value::Integer(101), Value::Text("extra".into())]).unwrap();
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(
        matches!(
            error,
            RowError::KeyArity {
                expected: 1,
                found: 2
            }
        ),
        "{error:?}"
    );
    f.good_batch_still_applies();
}

#[test]
fn a_key_component_of_the_wrong_type_is_refused_naming_the_column() {
    let mut f = fixture();
    // Text '106' for the INTEGER PRIMARY KEY: SQLite would store the integer 106, while
    // Concord's metadata would be keyed by the text, so a later change keyed by the
    // integer 106 would not find it.
    let mut bad = f.last_good();
    bad.key = PrimaryKey::encode(&[Value::Text("106".into())]).unwrap();
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(
        matches!(error, RowError::WrongType { column, .. } if column == "id"),
        "{error:?}"
    );
    f.good_batch_still_applies();
}

#[test]
fn a_delete_carrying_columns_is_refused_but_a_write_whose_columns_were_mapped_away_applies() {
    let mut f = fixture();
    // A delete (even causal length) that still carries column values.
    let mut bad = f.last_good();
    bad.causal_length = concord_core::CausalLength(2);
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::Invalid(_)), "{error:?}");
    f.good_batch_still_applies();

    // A write whose columns a link's schema mapping dropped still takes its place in
    // the origin's sequence: refusing it would leave a gap that blocks every later
    // change of that origin.
    let mut f = fixture();
    let mut empty = f.last_good();
    empty.columns.clear();
    let mut batch = f.good[..2].to_vec();
    batch.push(empty.clone());
    f.dst.apply_batch(&batch).unwrap();
    assert_eq!(f.dst.version_vector().get(&empty.origin), empty.seq);
}

#[test]
fn a_timestamp_beyond_the_clock_bound_is_refused() {
    let mut f = fixture();
    let hour_ahead = Hlc::new(now_ms() + 3_600_000, 0);
    // The change's own timestamp.
    let mut bad = f.last_good();
    bad.hlc = hour_ahead;
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::Clock(_)), "{error:?}");
    assert!(err.to_string().contains("ahead of local time"), "{err}");

    // One column's version.
    let mut bad = f.last_good();
    bad.columns[0].version.hlc = hour_ahead;
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::Clock(_)), "{error:?}");
    f.good_batch_still_applies();

    // The local clock was not dragged forward by the refused timestamps: a local write
    // captured now is stamped near wall time.
    app_connection(&f.dst_path)
        .execute("UPDATE items SET note = 'local' WHERE id = 102", [])
        .unwrap();
    assert_eq!(f.dst.capture().unwrap(), 1);
    let local = all_changes(&f.dst).pop().unwrap();
    assert!(
        local.hlc.millis() < now_ms() + 60_000,
        "local clock jumped to {}",
        local.hlc
    );
}

#[test]
fn a_change_for_a_row_with_corrupt_metadata_is_refused() {
    let mut f = fixture();
    let bad = f.last_good(); // updates row 101, which dst holds
    let raw = Connection::open(&f.dst_path).unwrap();
    let table_id: i64 = raw
        .query_row(
            "SELECT id FROM __concord_tables WHERE name = 'items'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let original: Vec<u8> = raw
        .query_row(
            "SELECT clock FROM __concord_rows WHERE tbl = ?1 AND pk = ?2",
            rusqlite::params![table_id, bad.key.as_bytes()],
            |r| r.get(0),
        )
        .unwrap();
    let garbage = vec![0xffu8; 12];
    let changed = raw
        .execute(
            "UPDATE __concord_rows SET clock = ?3 WHERE tbl = ?1 AND pk = ?2",
            rusqlite::params![table_id, bad.key.as_bytes(), garbage],
        )
        .unwrap();
    assert_eq!(changed, 1);

    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::CorruptMetadata(_)), "{error:?}");

    // Once the metadata is repaired, the same store value applies the batch.
    raw.execute(
        "UPDATE __concord_rows SET clock = ?3 WHERE tbl = ?1 AND pk = ?2",
        rusqlite::params![table_id, bad.key.as_bytes(), original],
    )
    .unwrap();
    f.good_batch_still_applies();
}

#[test]
fn a_sequence_gap_is_refused() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.seq = 9;
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(
        matches!(error, RowError::Gap(gap) if gap.received == 9 && gap.held == 5),
        "{error:?}"
    );

    // A batch that starts past what is held.
    let late = f.good[1..].to_vec();
    let err = f.refuse_batch(&late);
    let error = row_failure(&err, "items", &f.good[1].key);
    assert!(
        matches!(error, RowError::Gap(gap) if gap.received == 5 && gap.held == 3),
        "{error:?}"
    );
    f.good_batch_still_applies();
}

#[test]
fn a_change_violating_a_not_null_constraint_at_the_destination_is_refused() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.columns[0].value = Value::Null;
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::Refused(_)), "{error:?}");
    assert!(err.to_string().contains("NOT NULL"), "{err}");
    assert!(err.to_string().contains("name"), "{err}");
    f.good_batch_still_applies();
}

#[test]
fn a_change_violating_a_check_constraint_at_the_destination_is_refused() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.columns[1].value = Value::Integer(-1);
    let err = f.refuse(bad.clone());
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::Refused(_)), "{error:?}");
    assert!(err.to_string().contains("CHECK"), "{err}");
    assert!(err.to_string().contains("qty"), "{err}");

    // The same for an insert (a new row's life) rather than an update.
    let mut bad = f.good[1].clone();
    for c in &mut bad.columns {
        if c.column == "qty" {
            c.value = Value::Integer(-5);
        }
    }
    let batch = [f.good[0].clone(), bad.clone(), f.good[2].clone()];
    let err = f.refuse_batch(&batch);
    let error = row_failure(&err, "items", &bad.key);
    assert!(matches!(error, RowError::Refused(_)), "{error:?}");
    f.good_batch_still_applies();
}

#[test]
fn a_batch_ending_inside_a_source_transaction_is_not_applied() {
    let mut f = fixture();
    let batch = f.good[..2].to_vec();
    let err = f.refuse_batch(&batch);
    match &err {
        ApplyError::IncompleteTransaction { origin, seq } => {
            assert_eq!(*seq, 5);
            assert_eq!(*origin, f.good[1].origin.short());
        }
        other => panic!("expected IncompleteTransaction, got {other:?}"),
    }
    assert!(err.to_string().contains("/5"), "{err}");
    f.good_batch_still_applies();
}

#[test]
fn a_duplicate_change_is_skipped_and_counted() {
    let mut f = fixture();
    let before = dump_file(&f.dst_path, "items", "id");
    let mut batch = f.held.clone();
    batch.extend(f.good.iter().cloned());
    batch.insert(4, f.held[2].clone()); // a duplicate in the middle too
    let report = f.dst.apply_batch(&batch).unwrap();
    assert_eq!(report.duplicates, 4);
    assert_eq!(report.applied, 3);
    assert_eq!(report.received, 7);
    assert_eq!(f.dst.log_len().unwrap(), 6);
    assert_eq!(
        dump_file(&f.dst_path, "items", "id"),
        dump_file(&f.src_path, "items", "id")
    );
    assert_ne!(dump_file(&f.dst_path, "items", "id"), before);

    // Sending everything again changes nothing.
    let rows = snapshot(&f.dst_path);
    let mut again = f.held.clone();
    again.extend(f.good.iter().cloned());
    let report = f.dst.apply_batch(&again).unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 6));
    assert_eq!(snapshot(&f.dst_path), rows);
}

#[test]
fn a_resent_part_of_an_already_applied_transaction_is_skipped_without_error() {
    let mut f = fixture();
    let before = snapshot(&f.dst_path);
    // A sender that restarts from an older point resends changes 1 and 2 (held), and
    // the connection drops before change 3.
    let result = f.dst.apply_batch(&f.held[..2]);
    let report = result.expect("already held changes are harmless");
    assert_eq!((report.applied, report.duplicates), (0, 2));
    assert_eq!(snapshot(&f.dst_path), before);
}

#[test]
fn the_version_vector_in_memory_is_unchanged_after_a_refused_batch() {
    let mut f = fixture();
    let origin = f.good[0].origin;
    assert_eq!(f.dst.version_vector().get(&origin), 3);
    let mut bad = f.last_good();
    bad.table = "no_such_table".into();
    let before = f.dst.version_vector().clone();
    f.refuse(bad);
    assert_eq!(
        snapshot(&f.dst_path).version_vector,
        before,
        "the file's vector is unchanged"
    );
    assert_eq!(
        f.dst.version_vector(),
        &before,
        "the store value reports what the file holds"
    );
}

#[test]
fn a_pull_after_a_refused_batch_resumes_where_the_file_left_off() {
    let mut f = fixture();
    let mut bad = f.last_good();
    bad.table = "no_such_table".into();
    f.refuse(bad);
    let mut src = SqliteStore::open(&f.src_path).unwrap();
    let report = pull(&mut src, &mut f.dst).expect("pull after a refused batch");
    assert_eq!(report.applied, 3);
    assert_eq!(
        dump_file(&f.dst_path, "items", "id"),
        dump_file(&f.src_path, "items", "id")
    );
}
