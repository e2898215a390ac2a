//! Bad incoming changes: a batch holding one bad change is refused whole, the error
//! names what was wrong and where, and the store keeps working.
//!
//! Risks covered, for each kind of bad change (unknown table, unknown column, a value of
//! the wrong type, a decimal the column would round, text longer than `varchar(n)`, a
//! malformed key, a CHECK violation at the destination):
//! - the batch is applied in part (the good change before the bad one stays);
//! - the version vector or the change log advance for changes that were rolled back;
//! - the error does not name the table, the key (and the column where there is one);
//! - the store is left unusable, so the next good batch fails too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestDb, all_changes};
use concord_core::{Change, PrimaryKey, Value};
use concord_postgres::Store as _;
use concord_postgres::{ApplyError, PgStore, RowError, StoreOptions};

const DDL: &str = "CREATE TABLE items(
    id bigint PRIMARY KEY,
    name varchar(8) NOT NULL,
    qty integer NOT NULL CHECK (qty >= 0),
    price numeric(12,2)
);";

/// Runs `mutate` on the second change of a two-row source transaction and checks that
/// the batch is refused whole with an error satisfying `check`.
fn refused(server: &str, mutate: impl Fn(&mut Change), check: impl Fn(&ApplyError, &str)) {
    let src_db = TestDb::new(server, DDL);
    let dst_db = TestDb::new(server, DDL);
    let mut src = PgStore::track(&src_db.url, &["items"], StoreOptions::default()).unwrap();
    let mut dst = PgStore::track(&dst_db.url, &["items"], StoreOptions::default()).unwrap();
    src_db.psql(
        "BEGIN; INSERT INTO items VALUES (1, 'apple', 1, 1.50);
                INSERT INTO items VALUES (2, 'banana', 2, 2.25); COMMIT;",
    );
    src.capture().unwrap();
    let good = all_changes(&src);
    assert_eq!(good.len(), 2);
    let mut bad = good.clone();
    mutate(&mut bad[1]);

    let err = dst.apply_batch(&bad).expect_err("refused");
    let message = err.to_string();
    check(&err, &message);
    assert!(
        message.contains("items") || message.contains("\"nope\""),
        "{message}"
    );
    assert!(
        message.contains(&format!("{}/2", src.node_id().short())),
        "{message}"
    );
    assert_eq!(
        dst_db.count("SELECT count(*) FROM items"),
        0,
        "nothing applied"
    );
    assert!(
        dst.version_vector().is_empty(),
        "{:?}",
        dst.version_vector()
    );
    assert_eq!(dst.log_len().unwrap(), 0);

    // The store keeps working: the good batch applies.
    let report = dst.apply_batch(&good).unwrap();
    assert_eq!(report.applied, 2);
    assert_eq!(src_db.dump("items", "id"), dst_db.dump("items", "id"));
}

fn column_mut<'c>(change: &'c mut Change, name: &str) -> &'c mut Value {
    &mut change
        .columns
        .iter_mut()
        .find(|c| c.column == name)
        .unwrap()
        .value
}

fn row_error(err: &ApplyError) -> &RowError {
    match err {
        ApplyError::Row(f) => {
            assert_eq!(f.key, "(2)", "{err}");
            &f.error
        }
        other => panic!("expected a row failure, got {other}"),
    }
}

concord_harness::server_tests! {
    fn an_unknown_table_is_refused_by_name(server: postgres) {
        refused(
            server,
            |c| c.table = "nope".into(),
            |e, m| {
                assert!(matches!(row_error(e), RowError::UnknownTable), "{m}");
                assert!(m.contains("\"nope\""), "{m}");
            },
        );
    }

    fn an_unknown_column_is_refused_by_name(server: postgres) {
        refused(
            server,
            |c| c.columns[1].column = "colour".into(),
            |e, m| {
                assert!(
                    matches!(row_error(e), RowError::UnknownColumn(c) if c == "colour"),
                    "{m}"
                );
            },
        );
    }

    fn a_value_of_the_wrong_type_is_refused_naming_the_column(server: postgres) {
        refused(
            server,
            |c| *column_mut(c, "qty") = Value::Text("many".into()),
            |e, m| {
                assert!(
                    matches!(row_error(e), RowError::WrongType { column, .. } if column == "qty"),
                    "{m}"
                );
            },
        );
    }

    fn a_decimal_the_column_would_round_is_refused_naming_the_column(server: postgres) {
        refused(
            server,
            |c| *column_mut(c, "price") = Value::Decimal("2.255".into()),
            |e, m| {
                assert!(
                    matches!(row_error(e), RowError::WrongType { column, .. } if column == "price"),
                    "{m}"
                );
                assert!(m.contains("rounded"), "{m}");
            },
        );
    }

    fn text_longer_than_the_column_is_refused_not_truncated(server: postgres) {
        refused(
            server,
            |c| *column_mut(c, "name") = Value::Text("watermelon".into()),
            |e, m| {
                assert!(
                    matches!(row_error(e), RowError::WrongType { column, .. } if column == "name"),
                    "{m}"
                );
            },
        );
    }

    fn a_malformed_key_is_refused(server: postgres) {
        refused(
            server,
            |c| c.key = PrimaryKey::from_bytes_unchecked(vec![0xff, 0x00]),
            |e, m| match e {
                ApplyError::Row(f) => assert!(matches!(f.error, RowError::MalformedKey(_)), "{m}"),
                other => panic!("{other}"),
            },
        );
    }

    fn a_key_of_the_wrong_type_is_refused(server: postgres) {
        refused(
            server,
            |c| c.key = PrimaryKey::encode(&[Value::Text("2".into())]).unwrap(),
            |e, m| match e {
                ApplyError::Row(f) => {
                    assert!(
                        matches!(&f.error, RowError::WrongType { column, .. } if column == "id"),
                        "{m}"
                    )
                }
                other => panic!("{other}"),
            },
        );
    }

    fn a_constraint_violation_at_the_destination_is_refused_naming_the_row(server: postgres) {
        refused(
            server,
            |c| *column_mut(c, "qty") = Value::Integer(-5),
            |e, m| {
                assert!(matches!(row_error(e), RowError::Refused(_)), "{m}");
                assert!(m.contains("items_qty_check"), "{m}");
            },
        );
    }

    fn a_set_aside_transaction_is_recorded_and_the_stream_keeps_flowing(server: postgres) {
        let src_db = TestDb::new(server, DDL);
        let dst_db = TestDb::new(server, DDL);
        let mut src = PgStore::track(&src_db.url, &["items"], StoreOptions::default()).unwrap();
        let mut dst = PgStore::track(&dst_db.url, &["items"], StoreOptions::default()).unwrap();
        src_db.psql("INSERT INTO items VALUES (1, 'apple', 1, 1.50)");
        src_db.psql("INSERT INTO items VALUES (2, 'banana', 2, 2.25)");
        src.capture().unwrap();
        let log = all_changes(&src);
        dst.set_aside(&log[..1], "refused by a test").unwrap();
        dst.apply_batch(&log[1..]).unwrap();
        assert_eq!(dst_db.count("SELECT count(*) FROM items"), 1);
        let failures = dst.failures().unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!((failures[0].seq, failures[0].key.as_str()), (1, "(1)"));
        // The set-aside change is still relayed, verbatim.
        assert_eq!(all_changes(&dst), log);
    }
}
