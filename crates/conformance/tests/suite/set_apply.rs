//! Set-based apply: users' rows are written a run of one table, kind and column set at a
//! time, not one statement per change (or, for SQLite, as its profile says).
//!
//! Risks covered:
//! - a change the destination refuses (a CHECK only the destination has) in the middle
//!   of a batch of many source transactions is blamed on the wrong change, in
//!   `WriteMode::Sets` or `WriteMode::Exact`, sets aside more than its own source
//!   transaction, or keeps the other rows from being applied;
//! - a key written several times in one batch (insert, update, update, delete, insert)
//!   ends otherwise than row by row would (two writes of one key in one set statement);
//! - parent and child rows with a foreign key, in one source transaction, are written
//!   out of order (a child before its parent, a parent deleted before its child);
//! - runs longer than one statement (thousands of rows) lose or repeat rows;
//! - a set update or delete on a two-column key matches the wrong rows, or a set update
//!   mangles a value on its way to the column (bytes that are not UTF-8, a 70,000-byte
//!   value: a derived table of parameters did both on MariaDB).

use concord_conformance::{Database, StoreUnderTest, Tracked};
use concord_core::Value;
use concord_store::engine::WriteMode;
use concord_store::{ApplyError, RowError, apply_setting_aside};

/// `{check}` is where the destination adds its own constraint.
const DDL: &str = "CREATE TABLE parents(id {int} PRIMARY KEY, name {text});
CREATE TABLE items(
    id {int} PRIMARY KEY,
    name {text} NOT NULL,
    qty {int} NOT NULL,
    parent_id {int},
    FOREIGN KEY (parent_id) REFERENCES parents(id){check}
);";

/// The destination refuses a quantity of 1000 or more; the source does not.
const DESTINATION_ONLY: &str = ",\n    CONSTRAINT items_small CHECK (qty < 1000)";

const TABLES: &[&str] = &["parents", "items"];

/// Source and destination, tracked; the destination's items also have `check`.
fn pair(s: &StoreUnderTest, check: &str) -> (Database, Database, Tracked, Tracked) {
    let src_db = s.database(&s.sql(&DDL.replace("{check}", "")));
    let dst_db = s.database(&s.sql(&DDL.replace("{check}", check)));
    let src = src_db.track(TABLES);
    let dst = dst_db.track(TABLES);
    (src_db, dst_db, src, dst)
}

pub fn a_refused_change_in_a_set_is_named_and_only_its_transaction_is_set_aside(
    s: &StoreUnderTest,
) {
    let (src_db, dst_db, mut src, mut dst) = pair(s, DESTINATION_ONLY);
    // One large transaction (longer than one statement), then 60 small ones that update
    // two rows each; the 31st sets a quantity the destination refuses on its second row.
    // Each is captured on its own: SQLite's capture makes one source transaction of
    // everything pending.
    src_db.execute(&format!(
        "INSERT INTO items SELECT i, CONCAT('item ', i), 1, NULL FROM {}",
        s.kind().series(2500)
    ));
    src.capture().unwrap();
    let mut client = src_db.client();
    for t in 0..60 {
        let bad = if t == 30 { 5000 } else { 2 + t };
        client
            .transaction(&[
                format!("UPDATE items SET qty = {} WHERE id = {}", 2 + t, 10 + 2 * t),
                format!("UPDATE items SET qty = {bad} WHERE id = {}", 11 + 2 * t),
            ])
            .unwrap();
        src.capture().unwrap();
    }
    let changes = src.all_changes();
    assert_eq!(changes.len(), 2500 + 120);
    let bad = changes
        .iter()
        .find(|c| {
            c.columns
                .iter()
                .any(|col| col.value == Value::Integer(5000))
        })
        .unwrap()
        .clone();

    // Alone, the batch is refused. Written as sets, the refusal is pinned on the set
    // that held the bad row (that change or a later one of the batch); written row by
    // row, and by `apply_batch`, which retries so when a set is refused, it names the
    // change exactly.
    let refusal = |mode: &str, result: Result<_, ApplyError>| {
        let err = result.expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("items_small"), "{mode}: {message}");
        assert_eq!(
            dst_db.number("SELECT count(*) FROM items"),
            0,
            "{mode}: nothing applied"
        );
        match err {
            ApplyError::Row(f) => f,
            other => panic!("{mode}: expected a row failure, got {other}"),
        }
    };
    let named_exactly = |mode: &str, f: &concord_store::RowFailure| {
        assert_eq!(
            (f.seq, f.key.as_str()),
            (bad.seq, bad.key.to_string().as_str()),
            "{mode}: {f}"
        );
        assert!(matches!(f.error, RowError::Refused(_)), "{mode}: {f}");
    };
    let in_sets = refusal("Sets", dst.apply_batch_in(&changes, WriteMode::Sets));
    assert!(in_sets.seq >= bad.seq, "Sets: {in_sets}");
    match &in_sets.error {
        RowError::RefusedInSet(_) => {}
        // A store that writes row by row even in Sets mode names the change itself.
        RowError::Refused(_) => named_exactly("Sets", &in_sets),
        other => panic!("Sets: expected a refusal, got {other}"),
    }
    named_exactly(
        "Exact",
        &refusal("Exact", dst.apply_batch_in(&changes, WriteMode::Exact)),
    );
    named_exactly(
        "apply_batch",
        &refusal("apply_batch", dst.apply_batch(&changes)),
    );

    // With the set-aside policy: only the bad change's source transaction is set aside,
    // named; every other row is applied.
    let report = apply_setting_aside(&mut *dst, &changes, None).unwrap();
    assert_eq!(report.set_aside, 2, "{report:?}");
    let failures = dst.failures().unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    let named = failures
        .iter()
        .find(|f| f.seq == bad.seq)
        .expect("the bad change is named");
    assert!(named.error.contains("items_small"), "{}", named.error);
    assert!(!named.error.contains("set-based"), "{}", named.error);
    assert_eq!(
        failures.iter().filter(|f| f.seq == bad.seq - 1).count(),
        1,
        "{failures:?}"
    );
    assert_eq!(dst_db.number("SELECT count(*) FROM items"), 2500);
    assert_eq!(
        dst_db.number("SELECT count(*) FROM items WHERE qty <> 1"),
        118
    );
    // The set-aside transaction's rows keep their old values.
    assert_eq!(dst_db.number("SELECT qty FROM items WHERE id = 70"), 1);
    assert_eq!(dst_db.number("SELECT qty FROM items WHERE id = 71"), 1);
    assert_eq!(dst_db.number("SELECT qty FROM items WHERE id = 72"), 33);
    assert_eq!(
        dst.version_vector().get(&src.node_id()),
        changes.last().unwrap().seq
    );
}

pub fn a_key_written_many_times_in_one_batch_ends_as_row_by_row(s: &StoreUnderTest) {
    let (src_db, dst_db, mut src, mut dst) = pair(s, "");
    // Each step its own source transaction, captured on its own, so the batch holds
    // every write of the key.
    let steps = [
        "INSERT INTO items VALUES (1, 'first', 1, NULL), (2, 'other', 1, NULL)",
        "UPDATE items SET name = 'second' WHERE id = 1",
        "UPDATE items SET qty = 3, name = 'third' WHERE id = 1",
        "UPDATE items SET qty = 4 WHERE id = 2",
        "DELETE FROM items WHERE id = 1",
        "INSERT INTO items VALUES (1, 'again', 5, NULL)",
        "UPDATE items SET qty = 6 WHERE id IN (1, 2)",
        "DELETE FROM items WHERE id = 2",
        // The same key twice in a row with the same shape: one set would hold both.
        "UPDATE items SET qty = 7 WHERE id = 1",
        "UPDATE items SET qty = 8 WHERE id = 1",
    ];
    for step in steps {
        src_db.execute(step);
        src.capture().unwrap();
    }
    let changes = src.all_changes();
    assert!(changes.len() >= steps.len(), "{}", changes.len());
    let report = dst.apply_batch_in(&changes, WriteMode::Sets).unwrap();
    assert_eq!(report.applied, changes.len() as u64);
    assert_eq!(src_db.dump("items", "id"), dst_db.dump("items", "id"));
    assert_eq!(dst_db.number("SELECT count(*) FROM items"), 1);
    assert_eq!(
        dst_db.number("SELECT qty FROM items WHERE id = 1 AND name = 'again'"),
        8
    );
}

pub fn parent_and_child_rows_with_a_foreign_key_apply_in_order(s: &StoreUnderTest) {
    let (src_db, dst_db, mut src, mut dst) = pair(s, "");
    let mut statements = Vec::new();
    for i in 1..=300 {
        statements.push(format!("INSERT INTO parents VALUES ({i}, 'p{i}')"));
        statements.push(format!("INSERT INTO items VALUES ({i}, 'c{i}', 1, {i})"));
    }
    src_db.client().transaction(&statements).unwrap();
    src.capture().unwrap();
    // Then the children go before their parents, in one transaction.
    src_db
        .client()
        .transaction(&[
            "DELETE FROM items WHERE id > 150".to_owned(),
            "DELETE FROM parents WHERE id > 150".to_owned(),
            "UPDATE items SET parent_id = NULL WHERE id <= 10".to_owned(),
            "DELETE FROM parents WHERE id <= 10".to_owned(),
        ])
        .unwrap();
    src.capture().unwrap();
    let changes = src.all_changes();
    dst.apply_batch_in(&changes, WriteMode::Sets).unwrap();
    assert_eq!(src_db.dump("parents", "id"), dst_db.dump("parents", "id"));
    assert_eq!(src_db.dump("items", "id"), dst_db.dump("items", "id"));
    assert_eq!(dst_db.number("SELECT count(*) FROM parents"), 140);
    assert_eq!(dst_db.number("SELECT count(*) FROM items"), 150);
}

pub fn set_writes_on_a_two_column_key_keep_every_value_exact(s: &StoreUnderTest) {
    let ddl = s.sql("CREATE TABLE pairs(a {int} NOT NULL, b VARCHAR(10) NOT NULL, v {text}, bin {blob}, PRIMARY KEY (a, b))");
    let (src_db, dst_db) = (s.database(&ddl), s.database(&ddl));
    let mut src = src_db.track(&["pairs"]);
    let mut dst = dst_db.track(&["pairs"]);
    let rows: Vec<String> = (0..300)
        .map(|i| format!("({}, 'k{}', 'v{i}', NULL)", i / 3, i % 3))
        .collect();
    src_db.execute(&format!("INSERT INTO pairs VALUES {}", rows.join(", ")));
    src.capture().unwrap();
    let kind = s.kind();
    src_db.execute(&format!(
        "UPDATE pairs SET v = CONCAT(v, '!'), bin = {} WHERE b <> 'k1';
         UPDATE pairs SET bin = {} WHERE a = 7;
         DELETE FROM pairs WHERE b = 'k2' AND a >= 50;",
        kind.bytes("00FF80FE"),
        kind.repeated_bytes('z', 70000)
    ));
    src.capture().unwrap();
    let changes = src.all_changes();
    dst.apply_batch_in(&changes, WriteMode::Sets).unwrap();
    let (ours, theirs) = (src_db.dump("pairs", "a, b"), dst_db.dump("pairs", "a, b"));
    assert_eq!(ours.len(), 250);
    assert!(ours == theirs, "the destination differs from the source");
    assert_eq!(
        dst_db.number("SELECT length(bin) FROM pairs WHERE a = 7 AND b = 'k0'"),
        70000
    );
    assert_eq!(
        dst_db.number(&format!(
            "SELECT count(*) FROM pairs WHERE bin = {}",
            kind.bytes("00FF80FE")
        )),
        148
    );
}
