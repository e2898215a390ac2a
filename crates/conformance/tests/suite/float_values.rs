//! Floats crossing stores: arriving exactly, or visibly not (set aside with their source
//! transaction, naming column, type and value).
//!
//! Risks covered:
//! - a SQLite `REAL` such as `2.25` bound for a `DECIMAL(10,2)` column is refused though
//!   the column holds that number exactly, or is written as the float's binary expansion
//!   (or rounded by the server) instead of the shortest decimal that reads back as the
//!   same float (`0.1`, not `0.1000000000000000055511151231257827021181583404541015625`
//!   rounded to `0.10`); one the column would round (`0.125`) or overflow (`1e20`) is
//!   written changed, sets aside more than its own source transaction, or is refused
//!   without naming column, type and value;
//! - a SQLite infinity is changed on its way into a column that holds it (PostgreSQL's
//!   `double precision`, SQLite's `REAL`), or changed instead of set aside where the
//!   column cannot hold it (MariaDB's `DOUBLE`);
//! - a `double precision` NaN arrives in SQLite as NULL (SQLite cannot store a NaN)
//!   instead of being set aside with its source transaction, naming column and value,
//!   through the log and through a snapshot.

use concord_conformance::{Kind, StoreUnderTest};
use concord_store::{pull, pull_snapshot};

/// Why a case needs a server's exact decimal type.
pub const SQLITE_HAS_NO_DECIMAL: &str =
    "SQLite has no exact decimal column to write a float into (a REAL stays a REAL)";
/// Why a case needs a source that can hold a NaN.
pub const ONLY_POSTGRES_HOLDS_NAN: &str =
    "only PostgreSQL's double precision holds a NaN (SQLite stores NULL, MariaDB refuses it)";

pub fn a_sqlite_real_goes_into_a_decimal_as_its_shortest_decimal_or_is_set_aside(
    s: &StoreUnderTest,
) {
    let lite = StoreUnderTest::new(Kind::Sqlite, "");
    let file = lite.database("CREATE TABLE accounts(id INTEGER PRIMARY KEY, bal REAL)");
    let mut source = file.track(&["accounts"]);
    let db = s.database(&s.sql("CREATE TABLE accounts(id {int} PRIMARY KEY, bal DECIMAL(10,2))"));
    let mut sink = db.track(&["accounts"]);
    // One source transaction per capture: SQLite's capture groups what committed
    // between two captures.
    for sql in [
        "INSERT INTO accounts VALUES (1, 2.25); INSERT INTO accounts VALUES (2, 0.1)",
        "INSERT INTO accounts VALUES (3, 0.125)",
        "INSERT INTO accounts VALUES (4, 1e20)",
        "INSERT INTO accounts VALUES (5, -7.5); INSERT INTO accounts VALUES (6, 99999999.99)",
    ] {
        file.execute(sql);
        source.capture().unwrap();
    }
    let report = pull(&mut *source, &mut *sink).unwrap();
    assert_eq!((report.applied, report.set_aside), (4, 2), "{report:?}");
    let text = |rows: &[(&str, &str)]| -> Vec<Vec<Option<String>>> {
        rows.iter()
            .map(|(id, bal)| vec![Some((*id).to_owned()), Some((*bal).to_owned())])
            .collect()
    };
    assert_eq!(
        db.rows("SELECT id, bal FROM accounts ORDER BY id"),
        text(&[
            ("1", "2.25"),
            ("2", "0.10"),
            ("5", "-7.50"),
            ("6", "99999999.99")
        ]),
        "only the transactions whose values the column would change are set aside"
    );
    let type_name = match s.kind() {
        Kind::Postgres => "numeric(10,2)",
        _ => "decimal(10,2)",
    };
    let failures = sink.failures().unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    let rounded = &failures[0].error;
    for needle in ["\"bal\"", type_name, "0.125", "rounded"] {
        assert!(rounded.contains(needle), "{needle} in {rounded}");
    }
    let overflow = &failures[1].error;
    for needle in [
        "\"bal\"",
        type_name,
        "100000000000000000000",
        "integer digits",
    ] {
        assert!(overflow.contains(needle), "{needle} in {overflow}");
    }
    assert_eq!(
        sink.version_vector(),
        source.version_vector(),
        "set-aside changes count as held"
    );
}

pub fn a_sqlite_infinity_arrives_exactly_or_is_set_aside_naming_it(s: &StoreUnderTest) {
    let lite = StoreUnderTest::new(Kind::Sqlite, "");
    let file = lite.database("CREATE TABLE readings(id INTEGER PRIMARY KEY, r REAL)");
    let mut source = file.track(&["readings"]);
    let db = s.database(&s.sql("CREATE TABLE readings(id {int} PRIMARY KEY, r {real})"));
    let mut sink = db.track(&["readings"]);
    for sql in [
        "INSERT INTO readings VALUES (1, 9e999)",
        "INSERT INTO readings VALUES (2, -9e999)",
        "INSERT INTO readings VALUES (3, 1.5)",
    ] {
        file.execute(sql);
        source.capture().unwrap();
    }
    let report = pull(&mut *source, &mut *sink).unwrap();
    let rows = db.rows("SELECT id, r FROM readings ORDER BY id");
    let row = |id: &str, r: &str| vec![Some(id.to_owned()), Some(r.to_owned())];
    match s.kind() {
        // MariaDB's DOUBLE cannot hold an infinity: set aside, naming it.
        Kind::Mariadb => {
            assert_eq!((report.applied, report.set_aside), (1, 2), "{report:?}");
            assert_eq!(rows, [row("3", "1.5")]);
            let failures = sink.failures().unwrap();
            assert_eq!(failures.len(), 2, "{failures:?}");
            for (failure, value) in failures.iter().zip(["value: inf ", "value: -inf "]) {
                for needle in ["\"r\"", "double", value] {
                    assert!(
                        failure.error.contains(needle),
                        "{needle} in {}",
                        failure.error
                    );
                }
            }
        }
        Kind::Postgres => {
            assert_eq!((report.applied, report.set_aside), (3, 0), "{report:?}");
            assert_eq!(
                rows,
                [row("1", "Infinity"), row("2", "-Infinity"), row("3", "1.5")]
            );
        }
        Kind::Sqlite => {
            assert_eq!((report.applied, report.set_aside), (3, 0), "{report:?}");
            assert_eq!(rows, [row("1", "inf"), row("2", "-inf"), row("3", "1.5")]);
        }
    }
}

pub fn a_nan_is_set_aside_by_sqlite_and_infinities_arrive_exactly(s: &StoreUnderTest) {
    let db = s.database(&s.sql("CREATE TABLE readings(id {int} PRIMARY KEY, r {real})"));
    let lite = StoreUnderTest::new(Kind::Sqlite, "");
    let file = lite.database("CREATE TABLE readings(id INTEGER PRIMARY KEY, r REAL)");
    let mut server = db.track(&["readings"]);
    let mut sqlite = file.track(&["readings"]);
    // Each statement its own source transaction.
    for sql in [
        "INSERT INTO readings VALUES (1, 'NaN')",
        "INSERT INTO readings VALUES (2, 'Infinity')",
        "INSERT INTO readings VALUES (3, '-Infinity')",
        "INSERT INTO readings VALUES (4, 1.5)",
    ] {
        db.execute(sql);
    }
    let report = pull(&mut *server, &mut *sqlite).unwrap();
    assert_eq!((report.applied, report.set_aside), (3, 1), "{report:?}");
    let row = |id: &str, r: &str| vec![Some(id.to_owned()), Some(r.to_owned())];
    assert_eq!(
        file.rows("SELECT id, r FROM readings ORDER BY id"),
        [row("2", "inf"), row("3", "-inf"), row("4", "1.5")],
        "the NaN is not stored as NULL, the infinities are kept"
    );
    let failures = sqlite.failures().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    for needle in ["\"r\"", "NaN"] {
        assert!(
            failures[0].error.contains(needle),
            "{needle} in {}",
            failures[0].error
        );
    }

    // The same through a snapshot of the server's rows (catch-up past retention).
    let other = lite.database("CREATE TABLE readings(id INTEGER PRIMARY KEY, r REAL)");
    let mut fresh = other.track(&["readings"]);
    let snap = pull_snapshot(&mut *server, &mut *fresh).unwrap();
    assert_eq!(snap.set_aside, 1, "{snap:?}");
    assert_eq!(
        other.number("SELECT count(*) FROM readings WHERE r IS NULL"),
        0,
        "the snapshot's NaN is not stored as NULL"
    );

    // SQLite's own write of an infinity reaches the server exactly.
    file.execute("INSERT INTO readings VALUES (5, -9e999)");
    let back = pull(&mut *sqlite, &mut *server).unwrap();
    assert_eq!((back.applied, back.set_aside), (1, 0), "{back:?}");
    assert_eq!(
        db.rows("SELECT id || ' ' || r::text FROM readings ORDER BY id"),
        ["1 NaN", "2 Infinity", "3 -Infinity", "4 1.5", "5 -Infinity"]
            .map(|r| vec![Some(r.to_owned())])
    );
}
