//! Bad incoming changes only SQLite can meet: a value its dynamic typing would silently
//! convert, and corrupt row metadata in the file. A batch holding one is refused whole,
//! the error names what was wrong and where, and the store keeps working.
//!
//! Risks covered:
//! - the batch is applied in part (the good changes before the bad one stay);
//! - the version vector, the change log, the row metadata, the origins or the metadata
//!   table advance for changes that were rolled back;
//! - the error does not say which table, key (and column) to look at;
//! - the store is left unusable, so the next good batch fails too.
//!
//! The bad input every store must refuse is tested once for all three, in
//! `crates/conformance/tests/suite/bad_input.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use concord_sqlite::Store as _;
use std::path::{Path, PathBuf};

use common::{Rows, all_changes, app_connection, dump, dump_file, row_metadata};
use concord_core::{Change, PrimaryKey, Value, VersionVector};
use concord_sqlite::{ApplyError, RowError, SqliteStore, StoreOptions};
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
    let held = &log[..3];
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
    dst.apply_batch(held).unwrap();
    assert_eq!(dump_file(&dst_path, "items", "id").len(), 3);
    Fixture {
        _dir: dir,
        src_path,
        dst_path,
        dst,
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
