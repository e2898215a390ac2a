//! Every column type PostgreSQL users have. Risks covered: a table with an enum, an
//! array, `interval`, `inet`/`cidr`, `money`, `tsvector`, a domain or a composite column
//! refused at tracking; such values changed on the way between two PostgreSQL
//! databases; a value refused by the destination type applied in part.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_postgres::{PgStore, StoreOptions, pull};

const TYPES: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);
CREATE TABLE every(
    id integer PRIMARY KEY,
    m mood, ints integer[], texts text[], iv interval, addr inet, net cidr, mac macaddr,
    cash money, doc tsvector, pos positive, pr pair, t time, tz timetz, pt point,
    r int4range, bits bit(4), vbits varbit, x xml, js jsonb[], f8 float8[], ts tstzrange,
    h bytea[], nested integer[][]
);";

const ROWS: &str = "
INSERT INTO every VALUES
 (1, 'happy', '{1,2,NULL,4}', '{\"a b\",\"c,d\",NULL,\"\"}', '1 year 2 mons 3 days 04:05:06.789',
  '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03', '12.34', 'a fat cat sat',
  7, '(1,\"x y\")', '13:14:15.123456', '13:14:15+02', '(1.5,-2)', '[1,10)', B'1010',
  B'110', '<a>b</a>', ARRAY['{\"k\": 1}'::jsonb], '{0.1,1e300,-0}', '[2024-01-01,2024-02-01)',
  '{\"\\\\x00ff\"}', '{{1,2},{3,4}}'),
 (2, NULL, '{}', NULL, '-1 day', '::1', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, 'empty', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);";

fn dump(db: &TestDb) -> Vec<String> {
    db.client()
        .query("SELECT e::text FROM every e ORDER BY id", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

concord_harness::server_tests! {
    fn every_kind_of_column_replicates_exactly_between_postgresql_databases(server: postgres) {
        let (a, b) = (TestDb::new(server, TYPES), TestDb::new(server, TYPES));
        a.psql(ROWS);
        let mut sa = PgStore::track(&a.url, &["every"], StoreOptions::default()).unwrap();
        let mut sb = PgStore::track(&b.url, &["every"], StoreOptions::default()).unwrap();
        let report = pull(&mut sa, &mut sb).unwrap();
        assert_eq!(
            (report.applied, report.set_aside),
            (2, 0),
            "{report:?} {:?}",
            sb.failures().unwrap()
        );
        assert_eq!(dump(&a), dump(&b));
        // Updates of such columns travel too, both ways.
        b.psql("UPDATE every SET m = 'sad', ints = ints || 5, iv = iv * 2, pr.b = 'z' WHERE id = 1");
        pull(&mut sb, &mut sa).unwrap();
        assert_eq!(dump(&a), dump(&b));
        assert!(dump(&a)[0].contains("sad"), "{:?}", dump(&a));
    }

    fn a_value_the_destination_type_refuses_is_set_aside_whole(server: postgres) {
        let a = TestDb::new(server, "CREATE TABLE t(id integer PRIMARY KEY, m text, n text)");
        let b = TestDb::new(
            server,
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE TABLE t(id integer PRIMARY KEY, m mood, n text)",
        );
        let mut sa = PgStore::track(&a.url, &["t"], StoreOptions::default()).unwrap();
        let mut sb = PgStore::track(&b.url, &["t"], StoreOptions::default()).unwrap();
        a.psql("BEGIN; INSERT INTO t VALUES (1, 'happy', 'x'); INSERT INTO t VALUES (2, 'furious', 'y'); COMMIT;");
        a.psql("INSERT INTO t VALUES (3, 'sad', 'z')");
        let report = pull(&mut sa, &mut sb).unwrap();
        assert_eq!((report.applied, report.set_aside), (1, 2), "{report:?}");
        let failures = sb.failures().unwrap();
        assert!(
            failures.iter().any(|f| f.error.contains("furious")),
            "the reason names the value: {failures:?}"
        );
        assert_eq!(b.count("SELECT count(*) FROM t"), 1, "only row 3, none of the bad transaction");
    }
}
