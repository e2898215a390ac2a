//! MariaDB's own column types between two MariaDB databases. Risks covered: an
//! `ENUM`, `SET`, `JSON`, `BIT(n)`, `YEAR`, fractional `DATETIME`/`TIMESTAMP`/`TIME`, an
//! unsigned integer at its limits (a `BIGINT UNSIGNED` of 18446744073709551615 wrapped
//! through a signed integer), a `DECIMAL(65,30)` rounded, a float widened wrongly, a
//! binary value padded or an emoji mangled on the way.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_mysql::{MyStore, StoreOptions, pull};
use mysql::prelude::Queryable;

/// Each column with the expression that shows its exact value as text.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("e", "ENUM('a','b','c')", "CAST(e AS CHAR)"),
    ("s", "SET('x','y','z')", "CAST(s AS CHAR)"),
    ("j", "JSON", "j"),
    ("b3", "BIT(3)", "CAST(b3 + 0 AS CHAR)"),
    ("b64", "BIT(64)", "CAST(b64 + 0 AS CHAR)"),
    ("y", "YEAR", "CAST(y AS CHAR)"),
    ("dt", "DATETIME(6)", "CAST(dt AS CHAR)"),
    (
        "ts",
        "TIMESTAMP(6) NULL",
        "CAST(UNIX_TIMESTAMP(ts) AS CHAR)",
    ),
    ("tm", "TIME(6)", "CAST(tm AS CHAR)"),
    ("bu", "BIGINT UNSIGNED", "CAST(bu AS CHAR)"),
    ("tu", "TINYINT UNSIGNED", "CAST(tu AS CHAR)"),
    ("su", "SMALLINT UNSIGNED", "CAST(su AS CHAR)"),
    ("mu", "MEDIUMINT UNSIGNED", "CAST(mu AS CHAR)"),
    ("iu", "INT UNSIGNED", "CAST(iu AS CHAR)"),
    ("dc", "DECIMAL(65,30)", "CAST(dc AS CHAR)"),
    ("f", "FLOAT", "CAST(f AS CHAR)"),
    ("db", "DOUBLE", "CAST(db AS CHAR)"),
    ("bn", "BINARY(4)", "HEX(bn)"),
    ("vb", "VARBINARY(10)", "HEX(vb)"),
    ("c", "CHAR(10) CHARACTER SET utf8mb4", "HEX(c)"),
    ("vc", "VARCHAR(20) CHARACTER SET utf8mb4", "HEX(vc)"),
];

const ROWS: &str = "SET NAMES utf8mb4; SET time_zone = '+00:00';
INSERT INTO t VALUES
 (1, 'c', 'x,z', '{\"a\": [1, 2]}', b'101', b'1111111111111111111111111111111111111111111111111111111111111111',
  2155, '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', '838:59:59.000000',
  18446744073709551615, 255, 65535, 16777215, 4294967295,
  '12345678901234567890123456789012345.123456789012345678901234567891', 1.5, 0.1,
  x'00ff0001', x'00', '😀 é', 'emoji 😀😀'),
 (2, 'a', '', '[]', b'0', b'0', 1901, '1000-01-01 00:00:00.000001', '1970-01-01 00:00:01.000000',
  '-838:59:59', 0, 0, 0, 0, 0, '-0.000000000000000000000000000001', -3.25, -1e308,
  x'00000000', x'', '', ''),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 'b', 'y', 'null', b'111', b'1000000000000000000000000000000000000000000000000000000000000000',
  2000, '2024-02-29 13:14:15.5', '2024-02-29 13:14:15.000001', '-00:00:00.000001',
  9223372036854775808, 1, 1, 1, 1, '0.5', 3.4028234e38, 2.2250738585072014e-308,
  x'01020304', x'ffffffffffffffffffff', 'a', 'b');";

fn column(db: &TestDb, expression: &str) -> Vec<Option<String>> {
    db.conn()
        .query(format!("SELECT {expression} FROM t ORDER BY id"))
        .unwrap()
}

concord_harness::server_tests! {
    fn every_mariadb_type_replicates_exactly_between_mariadb_databases(server: mysql) {
        let ddl = format!(
            "CREATE TABLE t(id INT PRIMARY KEY, {})",
            COLUMNS.iter().map(|(c, t, _)| format!("{c} {t}")).collect::<Vec<_>>().join(", ")
        );
        let (a_db, b_db) = (TestDb::new(server, &[&ddl]), TestDb::new(server, &[&ddl]));
        let mut a = MyStore::track(&a_db.url, &["t"], StoreOptions::default()).unwrap();
        let mut b = MyStore::track(&b_db.url, &["t"], StoreOptions::default()).unwrap();
        a_db.cli(ROWS);
        let report = pull(&mut a, &mut b).unwrap();
        assert_eq!((report.applied, report.set_aside), (4, 0), "{report:?} {:?}", b.failures().unwrap());
        let mut differ = Vec::new();
        for (name, ty, expression) in COLUMNS {
            let (va, vb) = (column(&a_db, expression), column(&b_db, expression));
            if va != vb {
                differ.push(format!("{name} ({ty}): {va:?} became {vb:?}"));
            }
        }
        assert!(differ.is_empty(), "columns that differ, rows by id:\n{}", differ.join("\n"));
        assert_eq!(column(&b_db, "CAST(bu AS CHAR)")[0].as_deref(), Some("18446744073709551615"));
    }
}
