#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Schema changes and upgrades against a real MariaDB server. Risks covered: a column
//! added after tracking never captured (or its values written before the store noticed
//! it lost), two databases drifting apart after each adds the column; a dropped column
//! breaking the application's writes through Concord's triggers or stopping the other
//! tables; a database tracked by metadata format 1 not opening, or losing its
//! set-aside changes; `double`, `float`, `bigint unsigned`, `bit`, `year`, `time`,
//! `enum`, `set` and `binary(n)` values changed on the way (an unsigned value wrapped
//! through a signed integer, a float rounded, a short binary padded). A value larger than
//! the server's `max_allowed_packet` is tested from SQLite and from PostgreSQL in
//! `crates/conformance/tests/large_values.rs`.

mod common;

use common::TestDb;
use concord_mysql::Store as _;
use concord_mysql::{MyStore, StoreOptions, pull};
use mysql::prelude::Queryable;

const ITEMS: &str = "CREATE TABLE items(id INT PRIMARY KEY, name VARCHAR(40))";
const OTHER: &str = "CREATE TABLE other(id INT PRIMARY KEY, note VARCHAR(40))";

fn items(db: &TestDb) -> Vec<(i32, Option<String>, Option<String>)> {
    db.conn()
        .query("SELECT id, name, colour FROM items ORDER BY id")
        .unwrap()
}

concord_harness::server_tests! {
    fn a_column_added_on_one_database_then_the_other_ends_with_both_equal(base: mysql) {
        let (a, b) = (TestDb::new(base, &[ITEMS]), TestDb::new(base, &[ITEMS]));
        let mut sa = MyStore::track(&a.url, &["items"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        a.cli("INSERT INTO items VALUES (1, 'before')");
        pull(&mut sa, &mut sb).unwrap();
        a.cli("ALTER TABLE items ADD COLUMN colour VARCHAR(20)");
        // Written before the store noticed the column: still captured.
        a.cli("INSERT INTO items VALUES (2, 'after', 'red'); UPDATE items SET colour = 'blue' WHERE id = 1");
        let report = pull(&mut sa, &mut sb).unwrap();
        assert!(report.set_aside > 0, "b lacks the column: {report:?}");
        assert!(sa.take_schema_changed());
        b.cli("ALTER TABLE items ADD COLUMN colour VARCHAR(20)");
        sb.capture().unwrap();
        assert!(sb.take_schema_changed(), "b noticed its own column");
        let retried = sb.retry_set_aside().unwrap();
        assert_eq!(retried.set_aside, 0, "{retried:?}");
        assert!(sb.failures().unwrap().is_empty());
        let expected = vec![
            (1, Some("before".to_owned()), Some("blue".to_owned())),
            (2, Some("after".to_owned()), Some("red".to_owned())),
        ];
        assert_eq!(items(&a), expected);
        assert_eq!(items(&b), expected);
        // And it travels back.
        b.cli("UPDATE items SET colour = 'green' WHERE id = 2");
        pull(&mut sb, &mut sa).unwrap();
        assert_eq!(items(&a)[1].2.as_deref(), Some("green"));
    }

    fn a_dropped_column_stops_only_that_table_and_never_blocks_the_application(base: mysql) {
        let db = TestDb::new(base, &[ITEMS, OTHER]);
        let mut store =
            MyStore::track(&db.url, &["items", "other"], StoreOptions::default()).unwrap();
        db.cli("ALTER TABLE items DROP COLUMN name");
        assert_eq!(store.capture().unwrap(), 0);
        let problems = store.table_problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("items") && problems[0].contains("\"name\""), "{problems:?}");
        db.cli("INSERT INTO items VALUES (5); INSERT INTO other VALUES (1, 'still synced')");
        assert_eq!(store.capture().unwrap(), 1);
        assert_eq!(common::all_changes(&store).last().unwrap().table, "other");
        drop(store);
        MyStore::untrack(&db.url, &[]).unwrap();
    }

    fn a_database_of_format_1_opens_upgraded_and_keeps_its_set_aside_changes(base: mysql) {
        let a = TestDb::new(base, &[ITEMS]);
        let b = TestDb::new(base, &["CREATE TABLE items(id INT PRIMARY KEY, name VARCHAR(3))"]);
        let mut sa = MyStore::track(&a.url, &["items"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        a.cli("INSERT INTO items VALUES (1, 'too long for b')");
        assert_eq!(pull(&mut sa, &mut sb).unwrap().set_aside, 1);
        drop(sb);
        // What format 1 wrote: no body with the failure.
        b.cli("ALTER TABLE concord_failures DROP COLUMN body; UPDATE concord_meta SET v = '1' WHERE k = 'format'");
        let mut sb = MyStore::open(&b.url).unwrap();
        let format: Option<String> = b
            .conn()
            .query_first("SELECT v FROM concord_meta WHERE k = 'format'")
            .unwrap();
        assert_eq!(format.as_deref(), Some("2"));
        assert_eq!(sb.failures().unwrap().len(), 1);
        // The body came back from the log: widening the column lets it apply.
        b.cli("ALTER TABLE items MODIFY name VARCHAR(40)");
        let mut sb = MyStore::open(&b.url).unwrap();
        // (A retyped column stops the table until it is tracked again.)
        drop(sb);
        MyStore::track(&b.url, &["items"], StoreOptions::default()).unwrap();
        sb = MyStore::open(&b.url).unwrap();
        let retried = sb.retry_set_aside().unwrap();
        assert_eq!((retried.applied, retried.set_aside), (1, 0), "{retried:?}");
        let names: Vec<String> = b.conn().query("SELECT name FROM items").unwrap();
        assert_eq!(names, ["too long for b"]);
    }

    fn every_tracked_mariadb_type_replicates_exactly_with_its_extremes(base: mysql) {
        let ddl = "CREATE TABLE v(id INT PRIMARY KEY, d DOUBLE, f FLOAT, u BIGINT UNSIGNED,
            b3 BIT(3), b64 BIT(64), y YEAR, t TIME(3), e ENUM('a','b c'), s SET('x','y'),
            bin BINARY(4))";
        let (a, b) = (TestDb::new(base, &[ddl]), TestDb::new(base, &[ddl]));
        a.cli("INSERT INTO v VALUES
            (1, 0.30000000000000004, 0.1, 18446744073709551615, b'101', b'1111111111111111111111111111111111111111111111111111111111111111',
             2024, '-838:59:59.123', 'b c', 'x,y', X'00ff0001'),
            (2, 1.7976931348623157e308, -3.4028e38, 9223372036854775807, b'0', b'0', 1901, '00:00:00', 'a', '', X'61626364'),
            (3, 5e-324, 1.5e-38, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL)");
        let mut sa = MyStore::track(&a.url, &["v"], StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, &["v"], StoreOptions::default()).unwrap();
        let report = pull(&mut sa, &mut sb).unwrap();
        assert_eq!(
            (report.applied, report.set_aside),
            (3, 0),
            "{report:?} {:?}",
            sb.failures().unwrap()
        );
        let q = "SELECT CONCAT_WS('|', id, HEX(CAST(d AS BINARY)), d = CAST(d AS CHAR), CAST(f AS CHAR), u,
                 b3 + 0, CAST(b64 + 0 AS CHAR), y, t, e, s, HEX(bin)) FROM v ORDER BY id";
        let (ra, rb): (Vec<String>, Vec<String>) = (a.conn().query(q).unwrap(), b.conn().query(q).unwrap());
        assert_eq!(ra, rb);
        assert!(ra[0].contains("18446744073709551615|5|18446744073709551615"), "{ra:?}");
        // Doubles compared by their bits.
        let bits = "SELECT CONCAT_WS('|', d, f) FROM v ORDER BY id";
        let (da, db): (Vec<String>, Vec<String>) = (a.conn().query(bits).unwrap(), b.conn().query(bits).unwrap());
        assert_eq!(da, db);
    }
}
