//! Bad incoming changes: a batch holding one bad change is refused whole, the error
//! names what was wrong and where, and the store keeps working.
//!
//! Risks covered, for each kind of bad change every store must refuse (unknown table or
//! column, a value of the wrong type, a decimal the column would round, text longer than
//! `VARCHAR(n)`, a malformed key or one of the wrong arity or type, a delete carrying
//! columns, a timestamp beyond the clock bound, a sequence gap, a NOT NULL, CHECK or
//! foreign-key violation at the destination, a batch ending inside a source
//! transaction):
//! - the batch is applied in part (the good changes before the bad one stay);
//! - the version vector, the change log, the row clocks or the conflicts advance for
//!   changes that were rolled back (in the database, or in the store value's memory);
//! - the error does not name the origin/seq, the table, the key (and the column where
//!   there is one);
//! - the store is left unusable, so the next good batch or pull fails too;
//! - a refused timestamp drags the local clock forward.
//!
//! Also: a duplicate change is skipped and counted, not applied twice; a set-aside
//! transaction is recorded and relayed verbatim. Each store's own type cases (SQLite's
//! silent conversions, PostgreSQL's and MariaDB's types) stay in its crate.

use std::time::{SystemTime, UNIX_EPOCH};

use concord_conformance::{Database, Kind, Row, StoreUnderTest, Tracked};
use concord_core::{CausalLength, Change, Hlc, PrimaryKey, Value, VersionVector};
use concord_store::{ApplyError, RowError, pull};

/// The same schema on both sides; every store enforces the NOT NULL and the CHECK on
/// Concord's writes, PostgreSQL and MariaDB also the foreign key.
const DDL: &str = "CREATE TABLE parents(id {int} PRIMARY KEY);
CREATE TABLE items(
    id {int} PRIMARY KEY,
    name VARCHAR(8) NOT NULL,
    qty {int} NOT NULL DEFAULT 0,
    note {text},
    price DECIMAL(12,2),
    parent_id {int},
    CONSTRAINT items_qty_check CHECK (qty >= 0),
    CONSTRAINT items_parent FOREIGN KEY (parent_id) REFERENCES parents(id)
);";

const TABLES: &[&str] = &["parents", "items"];

/// Why SQLite is not asked to refuse text longer than `VARCHAR(n)`.
pub const SQLITE_KEEPS_LONG_TEXT: &str = "SQLite keeps text of any length in a VARCHAR(8) column: there is nothing to refuse or truncate";
/// Why SQLite is not asked to refuse a foreign-key violation.
pub const SQLITE_APPLIES_WITHOUT_FOREIGN_KEYS: &str = "Concord's SQLite connection applies with \
     PRAGMA foreign_keys = OFF (a parent may arrive later); the initial-load tests check the \
     order with PRAGMA foreign_key_check";

/// Two tracked databases. `src` logged two source transactions: rows 101..103 (already
/// applied at `dst`), then rows 104 and 105 and an update of row 101's name and qty
/// (`good`, not yet applied at `dst`; its last change ends the transaction).
struct Fixture {
    dst: Tracked,
    src: Tracked,
    dst_db: Database,
    src_db: Database,
    /// Changes 1..=3, held by `dst`.
    held: Vec<Change>,
    /// Changes 4..=6, one source transaction, not held by `dst`.
    good: Vec<Change>,
}

fn fixture(s: &StoreUnderTest) -> Fixture {
    let src_db = s.database(&s.sql(DDL));
    let dst_db = s.database(&s.sql(DDL));
    let mut src = src_db.track(TABLES);
    let mut dst = dst_db.track(TABLES);
    let mut app = src_db.client();
    app.transaction(&[
        "INSERT INTO items VALUES (101, 'apple', 1, NULL, 1.50, NULL)".into(),
        "INSERT INTO items VALUES (102, 'banana', 2, 'ripe', NULL, NULL)".into(),
        "INSERT INTO items VALUES (103, 'cherry', 3, NULL, NULL, NULL)".into(),
    ])
    .unwrap();
    assert_eq!(src.capture().unwrap(), 3);
    app.transaction(&[
        "INSERT INTO items VALUES (104, 'damson', 4, NULL, 4.50, NULL)".into(),
        "INSERT INTO items VALUES (105, 'elder', 5, 'dry', NULL, NULL)".into(),
        "UPDATE items SET name = 'apple v2', qty = 10 WHERE id = 101".into(),
    ])
    .unwrap();
    assert_eq!(src.capture().unwrap(), 3);
    let log = src.all_changes();
    assert_eq!(log.len(), 6);
    let held = log[..3].to_vec();
    let good = log[3..].to_vec();
    assert!(held[2].last_in_txn && good[2].last_in_txn);
    assert!(!good[0].last_in_txn && !good[1].last_in_txn);
    dst.apply_batch(&held).unwrap();
    assert_eq!(dst_db.dump("items", "id").len(), 3);
    Fixture {
        dst,
        src,
        dst_db,
        src_db,
        held,
        good,
    }
}

/// Everything a refused batch must leave as it was.
#[derive(Debug, PartialEq)]
struct State {
    rows: Vec<Row>,
    /// As stored: read through a newly opened store.
    version_vector: VersionVector,
    log_len: u64,
    /// Every tracked row's state with its clock.
    row_clocks: Vec<Change>,
    conflicts: u64,
}

fn state(db: &Database) -> State {
    let mut store = db.open();
    let row_clocks = store.snapshot().unwrap().next_rows(100_000).unwrap();
    State {
        rows: db.dump("items", "id"),
        version_vector: store.version_vector().clone(),
        log_len: store.log_len().unwrap(),
        row_clocks,
        conflicts: store.conflicts().unwrap().len() as u64,
    }
}

impl Fixture {
    /// Applies `good` with its change `index` spoiled by `spoil`; checks the batch is
    /// refused and leaves nothing. Returns the error and the spoiled change.
    fn refuse(&mut self, index: usize, spoil: impl FnOnce(&mut Change)) -> (ApplyError, Change) {
        let mut batch = self.good.clone();
        spoil(&mut batch[index]);
        let bad = batch[index].clone();
        (self.refuse_batch(&batch), bad)
    }

    fn refuse_batch(&mut self, batch: &[Change]) -> ApplyError {
        let before = state(&self.dst_db);
        let vector = self.dst.version_vector().clone();
        let err = self
            .dst
            .apply_batch(batch)
            .expect_err("a batch holding a bad change must be refused");
        assert_eq!(
            state(&self.dst_db),
            before,
            "nothing of the refused batch may stay ({err})"
        );
        assert_eq!(
            self.dst.version_vector(),
            &vector,
            "the store value reports what the database holds ({err})"
        );
        err
    }

    /// The good batch applies on the same store value, and `dst` then matches `src`.
    fn good_batch_still_applies(&mut self) {
        let report = self.dst.apply_batch(&self.good).unwrap();
        assert_eq!(report.applied, 3);
        assert_eq!(report.duplicates, 0);
        assert_eq!(report.commits, 1);
        assert_eq!(
            self.dst_db.dump("items", "id"),
            self.src_db.dump("items", "id")
        );
        assert_eq!(self.dst.version_vector().get(&self.good[2].origin), 6);
        assert_eq!(self.dst.log_len().unwrap(), 6);
    }
}

/// The row failure of `err`, after checking that it names `bad` exactly: its origin and
/// sequence, its table and its key, in the message too.
fn row_failure<'e>(err: &'e ApplyError, bad: &Change) -> &'e RowError {
    let message = err.to_string();
    let ApplyError::Row(failure) = err else {
        panic!("expected a row failure naming the change, got: {err:?}")
    };
    let origin = bad.origin.short();
    assert_eq!(
        (failure.origin.as_str(), failure.seq),
        (origin.as_str(), bad.seq),
        "{message}"
    );
    assert_eq!(failure.table, bad.table, "{message}");
    assert_eq!(failure.key, bad.key.to_string(), "{message}");
    assert!(
        message.contains(&format!(
            "change {origin}/{} to table {:?}, key {}",
            bad.seq, bad.table, bad.key
        )),
        "{message}"
    );
    &failure.error
}

fn column_mut<'c>(change: &'c mut Change, name: &str) -> &'c mut Value {
    let described = format!("{change:?}");
    &mut change
        .columns
        .iter_mut()
        .find(|c| c.column == name)
        .unwrap_or_else(|| panic!("{described} writes no column {name}"))
        .value
}

fn wrong_type_of(err: &ApplyError, bad: &Change, name: &str) {
    let message = err.to_string();
    assert!(
        matches!(row_failure(err, bad), RowError::WrongType { column, .. } if column == name),
        "{message}"
    );
    assert!(message.contains(&format!("{name:?}")), "{message}");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn a_change_to_an_unknown_table_is_refused_and_nothing_of_its_batch_is_applied(
    s: &StoreUnderTest,
) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(2, |c| c.table = "no_such_table".into());
    assert!(
        matches!(row_failure(&err, &bad), RowError::UnknownTable),
        "{err}"
    );
    f.good_batch_still_applies();
}

pub fn a_change_to_an_unknown_column_is_refused_naming_the_column(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(2, |c| {
        c.columns
            .iter_mut()
            .find(|c| c.column == "name")
            .unwrap()
            .column = "no_such_column".into();
    });
    assert!(
        matches!(row_failure(&err, &bad), RowError::UnknownColumn(c) if c == "no_such_column"),
        "{err}"
    );
    assert!(err.to_string().contains("\"no_such_column\""), "{err}");
    f.good_batch_still_applies();
}

pub fn a_value_of_the_wrong_type_is_refused_naming_the_column(s: &StoreUnderTest) {
    let mut f = fixture(s);
    // Numeric-looking text, so every store has reason to refuse it: SQLite, which keeps
    // other text in an INTEGER column as it is, would store the number 42, not the text
    // the origin wrote.
    let (err, bad) = f.refuse(2, |c| *column_mut(c, "qty") = Value::Text("42".into()));
    wrong_type_of(&err, &bad, "qty");
    f.good_batch_still_applies();
}

pub fn a_decimal_the_column_would_round_is_refused_naming_the_column(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(0, |c| {
        *column_mut(c, "price") = Value::Decimal("2.255".into())
    });
    wrong_type_of(&err, &bad, "price");
    // The servers would round it to the column's scale; SQLite would convert it.
    let why = if s.kind() == Kind::Sqlite {
        "convert"
    } else {
        "rounded"
    };
    assert!(err.to_string().contains(why), "{err}");
    f.good_batch_still_applies();
}

pub fn text_longer_than_the_column_is_refused_not_truncated(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(2, |c| {
        *column_mut(c, "name") = Value::Text("watermelon".into());
    });
    wrong_type_of(&err, &bad, "name");
    f.good_batch_still_applies();
}

pub fn a_malformed_key_is_refused_and_shown_in_hex(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(2, |c| {
        c.key = PrimaryKey::from_bytes_unchecked(vec![0xee, 0x01, 0x02, 0x03]);
    });
    assert!(
        matches!(row_failure(&err, &bad), RowError::MalformedKey(_)),
        "{err}"
    );
    assert!(err.to_string().contains("ee010203"), "{err}");

    // A key that stops in the middle of a component.
    let (err, bad) = f.refuse(2, |c| {
        let mut bytes = c.key.as_bytes().to_vec();
        bytes.truncate(bytes.len() - 3);
        c.key = PrimaryKey::from_bytes_unchecked(bytes);
    });
    assert!(
        matches!(row_failure(&err, &bad), RowError::MalformedKey(_)),
        "{err}"
    );
    f.good_batch_still_applies();
}

pub fn a_key_with_the_wrong_number_of_components_is_refused(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(2, |c| {
        c.key = PrimaryKey::encode(&[Value::Integer(101), Value::Text("extra".into())]).unwrap();
    });
    assert!(
        matches!(
            row_failure(&err, &bad),
            RowError::KeyArity {
                expected: 1,
                found: 2
            }
        ),
        "{err}"
    );
    f.good_batch_still_applies();
}

pub fn a_key_component_of_the_wrong_type_is_refused_naming_the_column(s: &StoreUnderTest) {
    let mut f = fixture(s);
    // Text '106' for the integer key: a database would store the integer 106 (or refuse
    // it), while Concord's row clock would be keyed by the text, so a later change keyed
    // by the integer 106 would not find it.
    let (err, bad) = f.refuse(2, |c| {
        c.key = PrimaryKey::encode(&[Value::Text("106".into())]).unwrap();
    });
    wrong_type_of(&err, &bad, "id");
    f.good_batch_still_applies();
}

pub fn a_delete_carrying_columns_is_refused_but_a_write_whose_columns_were_mapped_away_applies(
    s: &StoreUnderTest,
) {
    let mut f = fixture(s);
    // A delete (even causal length) that still carries column values.
    let (err, bad) = f.refuse(2, |c| c.causal_length = CausalLength(2));
    assert!(
        matches!(row_failure(&err, &bad), RowError::Invalid(_)),
        "{err}"
    );
    f.good_batch_still_applies();

    // A write whose columns a link's schema mapping dropped still takes its place in the
    // origin's sequence: refusing it would leave a gap that blocks every later change of
    // that origin.
    let mut f = fixture(s);
    let mut batch = f.good.clone();
    batch[2].columns.clear();
    f.dst.apply_batch(&batch).unwrap();
    assert_eq!(f.dst.version_vector().get(&batch[2].origin), batch[2].seq);
}

pub fn a_timestamp_beyond_the_clock_bound_is_refused_and_does_not_move_the_clock(
    s: &StoreUnderTest,
) {
    let mut f = fixture(s);
    let hour_ahead = Hlc::new(now_ms() + 3_600_000, 0);
    // The change's own timestamp.
    let (err, bad) = f.refuse(2, |c| c.hlc = hour_ahead);
    assert!(
        matches!(row_failure(&err, &bad), RowError::Clock(_)),
        "{err}"
    );
    assert!(err.to_string().contains("ahead of local time"), "{err}");
    // One column's version.
    let (err, bad) = f.refuse(2, |c| c.columns[0].version.hlc = hour_ahead);
    assert!(
        matches!(row_failure(&err, &bad), RowError::Clock(_)),
        "{err}"
    );
    assert!(err.to_string().contains("ahead of local time"), "{err}");
    f.good_batch_still_applies();

    // The local clock was not dragged forward by the refused timestamps: a local write
    // captured now is stamped near wall time.
    f.dst_db
        .execute("UPDATE items SET note = 'local' WHERE id = 102");
    assert_eq!(f.dst.capture().unwrap(), 1);
    let local = f.dst.all_changes().pop().unwrap();
    assert_eq!(local.origin, f.dst.node_id());
    assert!(
        local.hlc.millis() < now_ms() + 60_000,
        "local clock jumped to {}",
        local.hlc
    );
}

pub fn a_sequence_gap_is_refused(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(2, |c| c.seq = 9);
    assert!(
        matches!(row_failure(&err, &bad), RowError::Gap(gap) if gap.received == 9 && gap.held == 5),
        "{err}"
    );
    // A batch that starts past what is held.
    let late = f.good[1..].to_vec();
    let err = f.refuse_batch(&late);
    assert!(
        matches!(row_failure(&err, &late[0]), RowError::Gap(gap) if gap.received == 5 && gap.held == 3),
        "{err}"
    );
    f.good_batch_still_applies();
}

pub fn a_not_null_violation_at_the_destination_is_refused_naming_the_column(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(2, |c| *column_mut(c, "name") = Value::Null);
    assert!(
        matches!(row_failure(&err, &bad), RowError::Refused(_)),
        "{err}"
    );
    assert!(err.to_string().contains("name"), "{err}");
    f.good_batch_still_applies();
}

pub fn a_check_violation_at_the_destination_is_refused_naming_the_constraint(s: &StoreUnderTest) {
    let mut f = fixture(s);
    // An update.
    let (err, bad) = f.refuse(2, |c| *column_mut(c, "qty") = Value::Integer(-1));
    assert!(
        matches!(row_failure(&err, &bad), RowError::Refused(_)),
        "{err}"
    );
    assert!(err.to_string().contains("items_qty_check"), "{err}");
    // An insert (a new row's life).
    let (err, bad) = f.refuse(1, |c| *column_mut(c, "qty") = Value::Integer(-5));
    assert!(
        matches!(row_failure(&err, &bad), RowError::Refused(_)),
        "{err}"
    );
    assert!(err.to_string().contains("items_qty_check"), "{err}");
    f.good_batch_still_applies();
}

pub fn a_foreign_key_violation_at_the_destination_is_refused_naming_the_constraint(
    s: &StoreUnderTest,
) {
    let mut f = fixture(s);
    let (err, bad) = f.refuse(1, |c| *column_mut(c, "parent_id") = Value::Integer(99));
    assert!(
        matches!(row_failure(&err, &bad), RowError::Refused(_)),
        "{err}"
    );
    assert!(err.to_string().contains("items_parent"), "{err}");
    if s.kind() == Kind::Mariadb {
        // MariaDB's message names the column too (PostgreSQL's only in its detail).
        assert!(err.to_string().contains("parent_id"), "{err}");
    }
    f.good_batch_still_applies();
}

pub fn a_batch_ending_inside_a_source_transaction_is_not_applied(s: &StoreUnderTest) {
    let mut f = fixture(s);
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

pub fn a_duplicate_change_is_skipped_and_counted(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let before = f.dst_db.dump("items", "id");
    let mut batch = f.held.clone();
    batch.extend(f.good.iter().cloned());
    batch.insert(4, f.held[2].clone()); // a duplicate in the middle too
    let report = f.dst.apply_batch(&batch).unwrap();
    assert_eq!(report.duplicates, 4);
    assert_eq!(report.applied, 3);
    assert_eq!(report.received, 7);
    assert_eq!(f.dst.log_len().unwrap(), 6);
    assert_eq!(f.dst_db.dump("items", "id"), f.src_db.dump("items", "id"));
    assert_ne!(f.dst_db.dump("items", "id"), before);

    // Sending everything again changes nothing.
    let state_before = state(&f.dst_db);
    let mut again = f.held.clone();
    again.extend(f.good.iter().cloned());
    let report = f.dst.apply_batch(&again).unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 6));
    assert_eq!(state(&f.dst_db), state_before);
}

pub fn a_resent_part_of_an_already_applied_transaction_is_skipped_without_error(
    s: &StoreUnderTest,
) {
    let mut f = fixture(s);
    let before = state(&f.dst_db);
    // A sender that restarts from an older point resends changes 1 and 2 (held), and the
    // connection drops before change 3.
    let report = f
        .dst
        .apply_batch(&f.held[..2])
        .expect("already held changes are harmless");
    assert_eq!((report.applied, report.duplicates), (0, 2));
    assert_eq!(state(&f.dst_db), before);
}

pub fn a_pull_after_a_refused_batch_resumes_where_the_database_left_off(s: &StoreUnderTest) {
    let mut f = fixture(s);
    let origin = f.good[0].origin;
    assert_eq!(f.dst.version_vector().get(&origin), 3);
    let _ = f.refuse(2, |c| c.table = "no_such_table".into());
    let report = pull(&mut *f.src, &mut *f.dst).expect("pull after a refused batch");
    assert_eq!(report.applied, 3);
    assert_eq!(f.dst_db.dump("items", "id"), f.src_db.dump("items", "id"));
}

pub fn a_set_aside_transaction_is_recorded_and_the_stream_keeps_flowing(s: &StoreUnderTest) {
    let (src_db, dst_db) = (s.database(&s.sql(DDL)), s.database(&s.sql(DDL)));
    let (mut src, mut dst) = (src_db.track(TABLES), dst_db.track(TABLES));
    // Two source transactions (each captured alone: SQLite's capture makes one of
    // everything pending).
    src_db.execute("INSERT INTO items VALUES (1, 'apple', 1, NULL, 1.50, NULL)");
    src.capture().unwrap();
    src_db.execute("INSERT INTO items VALUES (2, 'banana', 2, NULL, 2.25, NULL)");
    src.capture().unwrap();
    let log = src.all_changes();
    assert_eq!(log.len(), 2);
    // The first is set aside (as a node does with one it cannot apply); the second
    // still applies after it.
    dst.set_aside(&log[..1], "refused by a test").unwrap();
    dst.apply_batch(&log[1..]).unwrap();
    assert_eq!(dst_db.number("SELECT count(*) FROM items"), 1);
    let failures = dst.failures().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].seq, failures[0].key.as_str()), (1, "(1)"));
    assert!(
        failures[0].error.contains("refused by a test"),
        "{failures:?}"
    );
    // The set-aside change is still relayed, verbatim.
    assert_eq!(dst.all_changes(), log);
}
