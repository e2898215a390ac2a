//! Columns a store adds for a peer's changes (`propagate_schema`).
//!
//! Risks covered:
//! - a rename at the origin taken for a new column (the receiving table would gain the
//!   new name beside the old one);
//! - a column added with a type that changes the values it then receives (the copies
//!   would differ), or that refuses them (they would be set aside);
//! - a column added but not captured, so the node's own writes of it never travel back.
//!
//! Each store's choice of column type for each kind of value is its own (and SQLite's
//! `add_column` DDL is tested in its crate); what every store must do with it is here.

use concord_conformance::{Database, Kind, Row, StoreUnderTest};
use concord_core::mapping::Kind as ValueKind;
use concord_store::{NewColumn, add_missing_columns, apply_setting_aside, missing_columns, pull};

const DDL: &str = "CREATE TABLE t(id {int} PRIMARY KEY, v {text})";

/// The declared type of each column of `t`, in order, as the database reports it.
fn types(db: &Database) -> Vec<(String, String)> {
    let query = match db.kind() {
        Kind::Sqlite => "SELECT name, type FROM pragma_table_info('t') ORDER BY cid",
        Kind::Postgres => {
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = 't' ORDER BY ordinal_position"
        }
        Kind::Mariadb => {
            "SELECT column_name, column_type FROM information_schema.columns
             WHERE table_schema = database() AND table_name = 't' ORDER BY ordinal_position"
        }
    };
    db.rows(query)
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect()
}

/// What each kind adds at the origin, the row written with the new columns, the types
/// the peer then declares, and a query of every value comparable across the origin's
/// and the peer's column types.
struct Added {
    alter: &'static str,
    row: &'static str,
    types: &'static [(&'static str, &'static str)],
    values: &'static str,
}

fn added(kind: Kind) -> Added {
    match kind {
        Kind::Sqlite => Added {
            alter: "ALTER TABLE t ADD COLUMN i INTEGER; ALTER TABLE t ADD COLUMN r REAL;
                    ALTER TABLE t ADD COLUMN b BLOB; ALTER TABLE t ADD COLUMN s TEXT;
                    ALTER TABLE t ADD COLUMN spare TEXT",
            row: "INSERT INTO t VALUES (2, 'two', 7, 0.1, X'0001', 'text', NULL)",
            types: &[
                ("id", "INTEGER"),
                ("v", "TEXT"),
                ("i", "INTEGER"),
                ("r", "REAL"),
                ("b", "BLOB"),
                ("s", "TEXT"),
                // A column only ever NULL says nothing of its kind.
                ("spare", ""),
            ],
            values: "SELECT id, v, i, r, hex(b), s, spare FROM t ORDER BY id",
        },
        Kind::Postgres => Added {
            alter: "ALTER TABLE t ADD COLUMN i integer, ADD COLUMN r double precision,
               ADD COLUMN b bytea, ADD COLUMN n numeric(12,2), ADD COLUMN f boolean,
               ADD COLUMN j json, ADD COLUMN ts timestamptz, ADD COLUMN d date,
               ADD COLUMN u uuid, ADD COLUMN spare text",
            row:
                "INSERT INTO t VALUES (2, 'two', 7, 0.1, '\\x0001', 12.50, true, '{\"k\": [1, 2]}',
               '2026-12-04 16:00:00.123456+00', '2026-12-04',
               '0a1b2c3d-0000-4000-8000-000000000001', NULL)",
            types: &[
                ("id", "bigint"),
                ("v", "text"),
                ("i", "bigint"),
                ("r", "double precision"),
                ("b", "bytea"),
                ("n", "numeric"),
                ("f", "boolean"),
                ("j", "json"),
                ("ts", "timestamp with time zone"),
                ("d", "date"),
                ("u", "uuid"),
                ("spare", "text"),
            ],
            values: "SELECT to_jsonb(t)::text FROM t ORDER BY id",
        },
        Kind::Mariadb => Added {
            alter:
                "ALTER TABLE t ADD COLUMN i INT, ADD COLUMN r DOUBLE, ADD COLUMN b VARBINARY(10),
               ADD COLUMN n DECIMAL(12,2), ADD COLUMN f BOOLEAN, ADD COLUMN j JSON,
               ADD COLUMN ts DATETIME(6), ADD COLUMN d DATE, ADD COLUMN spare VARCHAR(10)",
            row: "INSERT INTO t VALUES (2, 'two', 7, 0.1, x'0001', 12.50, true, '{\"k\": [1, 2]}',
               '2026-12-04 16:00:00.123456', '2026-12-04', NULL)",
            types: &[
                ("id", "bigint(20)"),
                ("v", "text"),
                ("i", "bigint(20)"),
                ("r", "double"),
                ("b", "longblob"),
                ("n", "decimal(65,30)"),
                ("f", "tinyint(1)"),
                ("j", "longtext"),
                ("ts", "datetime(6)"),
                ("d", "date"),
                ("spare", "longtext"),
            ],
            // A decimal through a double, bytes in hex: the same text for the origin's
            // and the peer's column types.
            values: "SELECT CONCAT_WS('|', id, v, i, r, hex(b), CAST(n AS DOUBLE), f, j, ts, d,
                          coalesce(spare, '-')) FROM t ORDER BY id",
        },
    }
}

pub fn every_kind_added_for_a_peer_keeps_its_values(s: &StoreUnderTest) {
    let spec = added(s.kind());
    let (a_db, b_db) = (s.database(&s.sql(DDL)), s.database(&s.sql(DDL)));
    let (mut a, mut b) = (a_db.track(&["t"]), b_db.track(&["t"]));
    a_db.execute("INSERT INTO t VALUES (1, 'one')");
    pull(&mut *a, &mut *b).unwrap();

    a_db.execute(spec.alter);
    a.capture().unwrap();
    a_db.execute(spec.row);
    a.capture().unwrap();
    let changes = a
        .all_changes()
        .into_iter()
        .filter(|c| b.version_vector().get(&c.origin) < c.seq)
        .collect::<Vec<_>>();
    let added = add_missing_columns(&mut *b, &changes).unwrap();
    assert_eq!(added.columns.len(), spec.types.len() - 2, "{added:?}");
    assert!(b.take_schema_changed(), "b follows its new columns");
    let report = apply_setting_aside(&mut *b, &changes, None).unwrap();
    assert_eq!(report.set_aside, 0, "{report:?}");
    assert!(b.failures().unwrap().is_empty());
    assert_eq!(types(&b_db), owned(spec.types));
    let values = |db: &Database| -> Vec<Row> { db.rows(spec.values) };
    assert_eq!(values(&a_db), values(&b_db));

    // b captures what it added: its writes of the new columns travel back.
    b_db.execute("UPDATE t SET spare = 'from b', i = 8 WHERE id = 2");
    pull(&mut *b, &mut *a).unwrap();
    assert_eq!(values(&a_db), values(&b_db));
}

pub fn a_name_the_table_lacks_is_added_only_once_a_whole_row_names_every_column(
    s: &StoreUnderTest,
) {
    let new = |column: &str, kind| NewColumn {
        table: "t".into(),
        column: column.into(),
        kind,
    };
    let (a_db, b_db) = (s.database(&s.sql(DDL)), s.database(&s.sql(DDL)));
    let (mut a, mut b) = (a_db.track(&["t"]), b_db.track(&["t"]));
    a_db.execute("INSERT INTO t VALUES (1, 'one')");
    pull(&mut *a, &mut *b).unwrap();

    a_db.execute(&s.sql("ALTER TABLE t ADD COLUMN n {int}"));
    a.capture().unwrap();
    a_db.execute("UPDATE t SET n = 5 WHERE id = 1");
    a.capture().unwrap();
    // An update alone names `n` and not `v`: it could be a rename at the origin.
    let update = a.all_changes().split_off(1);
    let found = missing_columns(&*b, &update);
    assert!(found.columns.is_empty(), "{found:?}");
    assert_eq!(found.unproven, vec![new("n", Some(ValueKind::Integer))]);

    // A whole row names every column b has, and `n`: an added column.
    a_db.execute("INSERT INTO t VALUES (2, 'two', NULL)");
    a.capture().unwrap();
    let changes = a.all_changes().split_off(1);
    let added = add_missing_columns(&mut *b, &changes).unwrap();
    assert_eq!(added.columns, vec![new("n", Some(ValueKind::Integer))]);
    assert!(b.take_schema_changed(), "the store followed its new column");
    let report = apply_setting_aside(&mut *b, &changes, None).unwrap();
    assert_eq!(report.set_aside, 0, "{report:?}");
    assert_eq!(
        types(&b_db)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["id", "v", "n"],
        "the name the update alone wrote was not added beside the others"
    );
    // b captures its new column: its own write of it travels back.
    b_db.execute("UPDATE t SET n = 9 WHERE id = 2");
    pull(&mut *b, &mut *a).unwrap();
    assert_eq!(a_db.number("SELECT n FROM t WHERE id = 2"), 9);
}
