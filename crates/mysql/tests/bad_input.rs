//! Bad incoming changes against a real MariaDB server: a batch holding one bad change is
//! refused whole, the error names what was wrong and where, and the store keeps working.
//!
//! Risks covered, for each kind of bad change (unknown table, unknown column, a value of
//! the wrong type, a decimal the column would round, text longer than `varchar(n)`, a
//! malformed key, a key with the wrong number of components, a key of the wrong type, a
//! CHECK violation, a NOT NULL violation and an InnoDB foreign-key violation at the
//! destination, a timestamp beyond the clock bound):
//! - the batch is applied in part (the good change before the bad one stays);
//! - the version vector or the change log advance for changes that were rolled back;
//! - the error does not name the origin/seq, the table, the key (and the column where
//!   there is one);
//! - the store is left unusable, so the next good batch fails too, or the destination
//!   differs from the source once it applies;
//! - a refused timestamp drags the local clock forward.
//!
//! Each test creates its own throwaway databases on the server named by
//! `CONCORD_TEST_MYSQL_URL` and is skipped (with a message) without it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{TestDb, all_changes};
use concord_core::{Change, Hlc, PrimaryKey, Value};
use concord_mysql::Store as _;
use concord_mysql::{ApplyError, MyStore, RowError, StoreOptions};

use mysql::prelude::Queryable;

/// A row of `items`: id, name, qty, price as text, parent_id.
type Item = (i64, String, i32, Option<String>, Option<i64>);

/// This file's own uses of a test database.
impl TestDb {
    /// Runs `statements` in one transaction of an ordinary connection.
    fn transaction(&self, statements: &[&str]) {
        let mut conn = self.conn();
        conn.query_drop("START TRANSACTION").unwrap();
        for statement in statements {
            conn.query_drop(statement).unwrap();
        }
        conn.query_drop("COMMIT").unwrap();
    }

    fn count_items(&self) -> i64 {
        self.conn()
            .query_first("SELECT count(*) FROM items")
            .unwrap()
            .unwrap()
    }

    /// Every row of `items`, exactly (the decimal as MariaDB prints it).
    fn items(&self) -> Vec<Item> {
        self.conn()
            .query("SELECT id, name, qty, CAST(price AS CHAR), parent_id FROM items ORDER BY id")
            .unwrap()
    }
}

/// The same schema on both sides; InnoDB enforces the CHECK, the NOT NULL and the
/// foreign key on every connection, Concord's included.
const DDL: &[&str] = &[
    "CREATE TABLE parents(id BIGINT PRIMARY KEY) ENGINE=InnoDB",
    "CREATE TABLE items(
        id BIGINT PRIMARY KEY,
        name VARCHAR(8) NOT NULL,
        qty INT NOT NULL,
        price DECIMAL(12,2),
        parent_id BIGINT,
        CONSTRAINT items_qty_check CHECK (qty >= 0),
        CONSTRAINT items_parent FOREIGN KEY (parent_id) REFERENCES parents(id)
    ) ENGINE=InnoDB",
];

const TABLES: &[&str] = &["parents", "items"];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What a test may look at after the refusal and the good batch. Stores first, so their
/// connections close before the databases are dropped.
struct Fixture {
    dst: MyStore,
    _src: MyStore,
    dst_db: TestDb,
    _src_db: TestDb,
}

/// Runs `mutate` on the second change of a two-row source transaction and checks that
/// the batch is refused whole, naming origin/seq, table and key, with a row error
/// satisfying `check` (given the full message too); then that nothing was applied and
/// that the good batch applies on the same store value.
fn refused(base: &str, mutate: impl Fn(&mut Change), check: impl Fn(&RowError, &str)) -> Fixture {
    let src_db = TestDb::new(base, DDL);
    let dst_db = TestDb::new(base, DDL);
    let mut src = MyStore::track(&src_db.url, TABLES, StoreOptions::default()).unwrap();
    let mut dst = MyStore::track(&dst_db.url, TABLES, StoreOptions::default()).unwrap();
    src_db.transaction(&[
        "INSERT INTO items VALUES (1, 'apple', 1, 1.50, NULL)",
        "INSERT INTO items VALUES (2, 'banana', 2, 2.25, NULL)",
    ]);
    assert_eq!(src.capture().unwrap(), 2);
    let good = all_changes(&src);
    assert_eq!(good.len(), 2);
    assert_eq!(
        good.iter().map(|c| c.last_in_txn).collect::<Vec<_>>(),
        [false, true],
        "one source transaction"
    );
    let mut bad = good.clone();
    mutate(&mut bad[1]);

    let err = dst.apply_batch(&bad).expect_err("the batch is refused");
    let message = err.to_string();
    let failure = match &err {
        ApplyError::Row(f) => f,
        other => panic!("expected a row failure naming the change, got: {other}"),
    };
    let origin = src.node_id().short();
    assert_eq!(
        (failure.origin.as_str(), failure.seq),
        (origin.as_str(), bad[1].seq),
        "{message}"
    );
    assert_eq!(failure.table, bad[1].table, "{message}");
    assert_eq!(failure.key, bad[1].key.to_string(), "{message}");
    assert!(
        message.contains(&format!(
            "change {origin}/{} to table {:?}, key {}",
            bad[1].seq, bad[1].table, bad[1].key
        )),
        "{message}"
    );
    check(&failure.error, &message);

    // Nothing of the batch was applied, and nothing advanced.
    assert_eq!(dst_db.count_items(), 0, "nothing applied: {message}");
    assert!(
        dst.version_vector().is_empty(),
        "{:?}",
        dst.version_vector()
    );
    assert_eq!(dst.log_len().unwrap(), 0);

    // The store keeps working: the good batch applies on the same store value.
    let report = dst.apply_batch(&good).unwrap();
    assert_eq!(report.applied, 2);
    assert_eq!(dst.version_vector().get(&src.node_id()), 2);
    assert_eq!(dst.log_len().unwrap(), 2);
    assert_eq!(src_db.items(), dst_db.items());
    assert_eq!(dst_db.items().len(), 2);
    Fixture {
        dst,
        _src: src,
        dst_db,
        _src_db: src_db,
    }
}

fn column_mut<'c>(change: &'c mut Change, name: &str) -> &'c mut Value {
    &mut change
        .columns
        .iter_mut()
        .find(|c| c.column == name)
        .unwrap()
        .value
}

fn wrong_type_of(error: &RowError, message: &str, name: &str) {
    assert!(
        matches!(error, RowError::WrongType { column, .. } if column == name),
        "{message}"
    );
    assert!(message.contains(&format!("column {name:?}")), "{message}");
}

fn refused_by_the_database(error: &RowError, message: &str) {
    assert!(matches!(error, RowError::Refused(_)), "{message}");
}

concord_harness::server_tests! {
    fn an_unknown_table_is_refused_by_name(server: mysql) {
        refused(
            server,
            |c| c.table = "nope".into(),
            |e, m| {
                assert!(matches!(e, RowError::UnknownTable), "{m}");
                assert!(m.contains("table \"nope\""), "{m}");
            },
        );
    }

    fn an_unknown_column_is_refused_by_name(server: mysql) {
        refused(
            server,
            |c| {
                c.columns
                    .iter_mut()
                    .find(|c| c.column == "name")
                    .unwrap()
                    .column = "colour".into();
            },
            |e, m| {
                assert!(
                    matches!(e, RowError::UnknownColumn(c) if c == "colour"),
                    "{m}"
                );
                assert!(m.contains("\"colour\""), "{m}");
            },
        );
    }

    fn a_value_of_the_wrong_type_is_refused_naming_the_column(server: mysql) {
        refused(
            server,
            |c| *column_mut(c, "qty") = Value::Text("many".into()),
            |e, m| wrong_type_of(e, m, "qty"),
        );
    }

    fn a_decimal_the_column_would_round_is_refused_naming_the_column(server: mysql) {
        refused(
            server,
            |c| *column_mut(c, "price") = Value::Decimal("2.255".into()),
            |e, m| {
                wrong_type_of(e, m, "price");
                assert!(m.contains("rounded"), "{m}");
            },
        );
    }

    fn text_longer_than_the_column_is_refused_not_truncated(server: mysql) {
        refused(
            server,
            |c| *column_mut(c, "name") = Value::Text("watermelon".into()),
            |e, m| wrong_type_of(e, m, "name"),
        );
    }

    fn a_malformed_key_is_refused_and_shown_in_hex(server: mysql) {
        refused(
            server,
            |c| c.key = PrimaryKey::from_bytes_unchecked(vec![0xff, 0x00]),
            |e, m| {
                assert!(matches!(e, RowError::MalformedKey(_)), "{m}");
                assert!(m.contains("ff00"), "{m}");
            },
        );
    }

    fn a_key_with_the_wrong_number_of_components_is_refused(server: mysql) {
        refused(
            server,
            |c| c.key = PrimaryKey::encode(&[Value::Integer(2), Value::Text("extra".into())]).unwrap(),
            |e, m| {
                assert!(
                    matches!(
                        e,
                        RowError::KeyArity {
                            expected: 1,
                            found: 2
                        }
                    ),
                    "{m}"
                );
            },
        );
    }

    fn a_key_of_the_wrong_type_is_refused_naming_the_column(server: mysql) {
        refused(
            server,
            |c| c.key = PrimaryKey::encode(&[Value::Text("2".into())]).unwrap(),
            |e, m| wrong_type_of(e, m, "id"),
        );
    }

    fn a_check_violation_at_the_destination_is_refused_naming_the_row(server: mysql) {
        refused(
            server,
            |c| *column_mut(c, "qty") = Value::Integer(-5),
            |e, m| {
                refused_by_the_database(e, m);
                assert!(m.contains("items_qty_check"), "{m}");
            },
        );
    }

    fn a_not_null_violation_at_the_destination_is_refused_naming_the_column(server: mysql) {
        refused(
            server,
            |c| *column_mut(c, "name") = Value::Null,
            |e, m| {
                refused_by_the_database(e, m);
                assert!(m.contains("'name'"), "{m}");
            },
        );
    }

    fn a_foreign_key_violation_at_the_destination_is_refused_naming_the_row(server: mysql) {
        refused(
            server,
            |c| *column_mut(c, "parent_id") = Value::Integer(99),
            |e, m| {
                refused_by_the_database(e, m);
                assert!(m.contains("items_parent"), "{m}");
                assert!(m.contains("parent_id"), "{m}");
            },
        );
    }

    fn a_timestamp_beyond_the_clock_bound_is_refused_and_does_not_move_the_clock(server: mysql) {
        let mut f = refused(
            server,
            |c| c.hlc = Hlc::new(now_ms() + 3_600_000, 0),
            |e, m| {
                assert!(matches!(e, RowError::Clock(_)), "{m}");
                assert!(m.contains("ahead of local time"), "{m}");
            },
        );
        // The local clock was not dragged forward by the refused timestamp: a local write
        // captured now is stamped near wall time.
        f.dst_db
            .conn()
            .query_drop("UPDATE items SET qty = 3 WHERE id = 1")
            .unwrap();
        assert_eq!(f.dst.capture().unwrap(), 1);
        let local = all_changes(&f.dst).pop().unwrap();
        assert_eq!(local.origin, f.dst.node_id());
        assert!(
            local.hlc.millis() < now_ms() + 60_000,
            "local clock jumped to {}",
            local.hlc
        );
    }

    fn a_column_version_beyond_the_clock_bound_is_refused(server: mysql) {
        refused(
            server,
            |c| c.columns[0].version.hlc = Hlc::new(now_ms() + 3_600_000, 0),
            |e, m| {
                assert!(matches!(e, RowError::Clock(_)), "{m}");
                assert!(m.contains("ahead of local time"), "{m}");
            },
        );
    }
}
