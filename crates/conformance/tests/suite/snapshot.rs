//! Catching up past the log's retention: a replica whose missing changes were pruned
//! from its peer's log is brought up to date from a consistent snapshot of rows with
//! their clocks, with nothing lost (its own writes survive and travel back) and nothing
//! resurrected (rows deleted while it was away stay deleted), and a third replica can
//! take a snapshot from the second in turn.
//!
//! Risks covered:
//! - rows deleted while the replica was away come back; its own concurrent writes vanish;
//! - typed values (each kind's own: PostgreSQL's numeric, timestamptz, uuid, jsonb,
//!   bytea; MariaDB's DECIMAL, DATETIME(6), BIGINT UNSIGNED, JSON, BLOB; SQLite's REAL
//!   and BLOB) change on the way through the snapshot path, which reads rows differently
//!   from the log;
//! - the adopted history cannot be served onward (a third node stays behind for good);
//! - rows written while capture was off (a restore with triggers disabled) go unseen by
//!   a comparison that reads Concord's metadata instead of the users' table;
//! - a snapshot merged twice changes something the second time, or logs rows as changes.

use concord_conformance::{Database, Kind, Row, StoreUnderTest, Tracked};
use concord_core::PrimaryKey;
use concord_store::{compare_stores, pull, pull_snapshot};

/// The table, with the kind's own typed columns after `id, name, qty, amount`.
fn ddl(kind: Kind) -> String {
    let typed = match kind {
        Kind::Sqlite => "amount REAL, data BLOB",
        Kind::Postgres => "amount numeric(12,2), at timestamptz, uid uuid, doc jsonb, data bytea",
        Kind::Mariadb => {
            "amount DECIMAL(12,2), at DATETIME(6), big BIGINT UNSIGNED, doc JSON, data BLOB"
        }
    };
    kind.sql(&format!(
        "CREATE TABLE items(id {{int}} PRIMARY KEY, name {{text}}, qty {{int}}, {typed})"
    ))
}

/// Row `i` with every typed column set.
fn full_row(kind: Kind, i: u32) -> String {
    let data = kind.bytes(&format!("00ff{i:04x}"));
    match kind {
        Kind::Sqlite => format!("({i}, 'v{i}', {i}, {i}.25, {data})"),
        Kind::Postgres => format!(
            "({i}, 'v{i}', {i}, {i}.25, '2026-01-02 03:04:05.{i:06}+02', \
             '0a1b2c3d-0000-4000-8000-{i:012}', '{{\"i\": {i}, \"tags\": [\"x\", {i}]}}', {data})"
        ),
        Kind::Mariadb => format!(
            "({i}, 'v{i}', {i}, {i}.25, '2026-01-02 03:04:05.{i:06}', \
             18446744073709551615 - {i}, '{{\"i\": {i}}}', {data})"
        ),
    }
}

fn tracked(s: &StoreUnderTest) -> (Database, Tracked) {
    let db = s.database(&ddl(s.kind()));
    let store = db.track(&["items"]);
    (db, store)
}

fn dump(db: &Database) -> Vec<Row> {
    db.dump("items", "id")
}

/// `id, name, qty, amount` of row `id`, if it is there.
fn row(db: &Database, id: i64) -> Option<Row> {
    db.rows(&format!(
        "SELECT id, name, qty, amount FROM items WHERE id = {id}"
    ))
    .pop()
}

fn cells(values: &[Option<&str>]) -> Option<Row> {
    Some(values.iter().map(|v| v.map(str::to_owned)).collect())
}

pub fn a_replica_behind_retention_catches_up_from_a_snapshot_without_loss_or_resurrection(
    s: &StoreUnderTest,
) {
    let kind = s.kind();
    let (a_db, mut a) = tracked(s);
    let (b_db, mut b) = tracked(s);
    let (c_db, mut c) = tracked(s);
    let rows: Vec<String> = (1..=30).map(|i| full_row(kind, i)).collect();
    a_db.execute(&format!("INSERT INTO items VALUES {}", rows.join(", ")));
    pull(&mut *a, &mut *b).unwrap();
    assert_eq!(dump(&a_db), dump(&b_db));

    // B goes away. A updates, deletes, inserts (and inserts then deletes a row B never
    // saw), far more changes than its log keeps.
    a_db.execute(
        "UPDATE items SET name = 'a-new' WHERE id = 2; DELETE FROM items WHERE id = 5;
         UPDATE items SET qty = 700 WHERE id = 7;
         INSERT INTO items(id, name, amount) VALUES (40, 'forty', 1234567890.12)",
    );
    a.capture().unwrap();
    a_db.execute("INSERT INTO items(id, name) VALUES (41, 'gone')");
    a.capture().unwrap();
    a_db.execute("DELETE FROM items WHERE id = 41");
    for i in 0..40 {
        a_db.execute(&format!("UPDATE items SET qty = {i} WHERE id = 10"));
        a.capture().unwrap();
    }
    a.prune_log(5).unwrap();
    // Meanwhile B writes too: a new row, a concurrent update of row 2's other column,
    // and a delete of row 7 (concurrent with A's update of it).
    b_db.execute(
        "INSERT INTO items(id, name, qty) VALUES (100, 'from b', 1);
         UPDATE items SET qty = 222 WHERE id = 2; DELETE FROM items WHERE id = 7",
    );
    b.capture().unwrap();
    let held_before = b.version_vector().get(&a.node_id());

    // The log cannot serve B any more: the pull merges a snapshot, then the log's tail.
    let report = pull(&mut *a, &mut *b).unwrap();
    assert!(report.applied > 0, "{report:?}");
    assert!(b.version_vector().get(&a.node_id()) > held_before);
    assert_eq!(
        b.version_vector().get(&a.node_id()),
        a.version_vector().get(&a.node_id())
    );
    // B's own writes travel back by B's log, and both end equal, typed values included.
    pull(&mut *b, &mut *a).unwrap();
    assert_eq!(dump(&a_db), dump(&b_db));
    let amount = |v: &str| match kind {
        Kind::Sqlite => v.trim_end_matches('0').trim_end_matches('.').to_owned(),
        _ => v.to_owned(),
    };
    assert_eq!(
        row(&b_db, 2),
        cells(&[Some("2"), Some("a-new"), Some("222"), Some(&amount("2.25"))])
    );
    assert_eq!(
        row(&b_db, 5),
        None,
        "a row deleted while B was away came back"
    );
    assert_eq!(
        row(&b_db, 7),
        None,
        "B's delete lost to an update it never saw"
    );
    assert_eq!(
        row(&b_db, 41),
        None,
        "a row inserted and deleted on A came back"
    );
    assert_eq!(
        row(&b_db, 10),
        cells(&[Some("10"), Some("v10"), Some("39"), Some(&amount("10.25"))])
    );
    assert_eq!(
        row(&b_db, 40),
        cells(&[Some("40"), Some("forty"), None, Some("1234567890.12")])
    );
    assert_eq!(
        row(&b_db, 100),
        cells(&[Some("100"), Some("from b"), Some("1"), None])
    );
    assert_eq!(
        b_db.number(&format!(
            "SELECT count(*) FROM items WHERE id = 3 AND data = {}",
            kind.bytes("00ff0003")
        )),
        1,
        "bytes arrive exactly"
    );
    assert!(b.failures().unwrap().is_empty());

    // C never synced. B adopted A's history without logging it, so B's log cannot
    // replay it to C either: C takes a snapshot from B, and ends equal too.
    pull(&mut *b, &mut *c).unwrap();
    assert_eq!(dump(&c_db), dump(&b_db));
    assert_eq!(c.version_vector(), b.version_vector());

    // After the snapshot the log carries on as usual.
    a_db.execute("UPDATE items SET name = 'later' WHERE id = 1");
    pull(&mut *a, &mut *b).unwrap();
    pull(&mut *b, &mut *c).unwrap();
    assert_eq!(row(&c_db, 1).unwrap()[1].as_deref(), Some("later"));

    // Compared by values, the copies agree; then rows written on C while capture is off
    // (as `pg_restore --disable-triggers` or a bulk load would) are each found.
    pull(&mut *a, &mut *c).unwrap();
    assert!(
        compare_stores(&*a, &*c, "items")
            .unwrap()
            .differences
            .is_empty()
    );
    let uncaptured = "UPDATE items SET name = 'drifted' WHERE id = 3;
                      DELETE FROM items WHERE id = 4;
                      INSERT INTO items(id, name) VALUES (5000, 'untracked')";
    match kind {
        // No capture runs before the comparison, and none reads these writes.
        Kind::Sqlite => c_db.execute(uncaptured),
        Kind::Postgres => c_db.execute(&format!(
            "SET session_replication_role = replica; {uncaptured}"
        )),
        Kind::Mariadb => c_db.execute(&format!("SET @concord_applying = 1; {uncaptured}")),
    }
    let run = compare_stores(&*a, &*c, "items").unwrap();
    let found: Vec<(String, bool, bool)> = run
        .differences
        .iter()
        .map(|d| {
            let key = PrimaryKey::from_bytes_unchecked(d.key.clone());
            (key.to_string(), d.here.is_some(), d.there.is_some())
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("(3)".to_owned(), true, true),
            ("(4)".to_owned(), true, false),
            ("(5000)".to_owned(), false, true),
        ]
    );
}

pub fn a_snapshot_merged_twice_changes_nothing_the_second_time(s: &StoreUnderTest) {
    let (a_db, mut a) = tracked(s);
    let (b_db, mut b) = tracked(s);
    a_db.execute(&format!(
        "INSERT INTO items VALUES {}, {}; DELETE FROM items WHERE id = 2;",
        full_row(s.kind(), 1),
        full_row(s.kind(), 2)
    ));
    a_db.execute("DELETE FROM items WHERE id = 2");
    pull_snapshot(&mut *a, &mut *b).unwrap();
    let once = dump(&b_db);
    assert_eq!(once, dump(&a_db));
    assert_eq!(once.len(), 1);
    let report = pull_snapshot(&mut *a, &mut *b).unwrap();
    assert_eq!(dump(&b_db), once);
    assert_eq!(report.conflicts, 0);
    assert_eq!(b.conflict_count().unwrap(), 0);
    // Nothing B holds is logged again: a snapshot's rows are no one's changes.
    assert_eq!(b.log_len().unwrap(), 0);
}
