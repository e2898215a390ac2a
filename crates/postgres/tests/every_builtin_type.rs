//! Every built-in PostgreSQL type, taken from the server's own catalog. Risk covered: a
//! type nobody thought of (a new server version's, a rarely used one) changed on the way
//! between two PostgreSQL databases, or refused at tracking. The list of types is read
//! from `pg_type`, not written here, so a type the catalog holds that has neither a
//! sample below nor a reasoned exclusion fails the test instead of slipping by.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_postgres::{PgStore, StoreOptions, pull};

/// One non-trivial literal per built-in type, keyed by `pg_type.typname`.
const SAMPLES: &[(&str, &str)] = &[
    ("aclitem", "postgres=arw/postgres"),
    ("bit", "1"),
    ("bool", "true"),
    ("box", "(3,4),(1,2)"),
    ("bpchar", "a b "),
    ("bytea", "\\x00ff10"),
    ("char", "x"),
    ("cid", "3"),
    ("cidr", "10.1.0.0/16"),
    ("circle", "<(1,2),3.5>"),
    ("date", "2024-02-29"),
    (
        "datemultirange",
        "{[2024-01-01,2024-02-01),[2024-03-01,2024-04-01)}",
    ),
    ("daterange", "[2024-01-01,2024-02-01)"),
    ("float4", "1.1"),
    ("float8", "0.30000000000000004"),
    ("inet", "192.168.1.5/24"),
    ("int2", "-32768"),
    ("int2vector", "1 2 3"),
    ("int4", "2147483647"),
    ("int4multirange", "{[1,3),[5,7)}"),
    ("int4range", "[1,10)"),
    ("int8", "-9223372036854775808"),
    ("int8multirange", "{[1,3),[5,7)}"),
    ("int8range", "[1,9223372036854775807)"),
    ("interval", "1 year 2 mons 3 days 04:05:06.789"),
    ("json", "{\"b\": 1,  \"a\": [true, null]}"),
    ("jsonb", "{\"b\": 1, \"a\": [true, null]}"),
    ("jsonpath", "$.a[*] ? (@ > 1)"),
    ("line", "{1,-1,0}"),
    ("lseg", "[(0,0),(1,1)]"),
    ("macaddr", "08:00:2b:01:02:03"),
    ("macaddr8", "08:00:2b:01:02:03:04:05"),
    ("money", "12.34"),
    ("name", "a name"),
    ("numeric", "-12345678901234567890.000000000000000000001"),
    ("nummultirange", "{[1.5,2.5],(3,4)}"),
    ("numrange", "(1.5,2.25]"),
    ("oid", "4294967295"),
    ("oidvector", "1 2 3"),
    ("path", "[(1,2),(3,4),(5,6)]"),
    ("pg_lsn", "16/B374D848"),
    ("pg_snapshot", "10:20:10,14,15"),
    ("point", "(1.5,-2)"),
    ("polygon", "((0,0),(1,1),(1,0))"),
    ("refcursor", "cursor one"),
    ("regclass", "pg_class"),
    ("regcollation", "\"C\""),
    ("regconfig", "english"),
    ("regdictionary", "simple"),
    ("regnamespace", "pg_catalog"),
    ("regoper", "|/"),
    ("regoperator", "+(integer,integer)"),
    ("regproc", "now"),
    ("regprocedure", "now()"),
    ("regrole", "postgres"),
    ("regtype", "integer"),
    ("text", "text with 'quotes', \\ and ✓"),
    ("tid", "(1,2)"),
    ("time", "13:14:15.123456"),
    ("timestamp", "2024-02-29 13:14:15.123456"),
    ("timestamptz", "2024-02-29 13:14:15.123456+02"),
    ("timetz", "13:14:15.5+02"),
    ("tsmultirange", "{[2024-01-01 00:00,2024-01-02 00:00)}"),
    ("tsquery", "fat & (rat | cat)"),
    ("tsrange", "[2024-01-01 00:00,2024-01-02 00:00)"),
    (
        "tstzmultirange",
        "{[2024-01-01 00:00+00,2024-01-02 00:00+00)}",
    ),
    ("tstzrange", "[2024-01-01 00:00+00,2024-01-02 00:00+00)"),
    ("tsvector", "a fat cat sat"),
    ("txid_snapshot", "10:20:10,14,15"),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("varbit", "10110"),
    ("varchar", "varchar ✓"),
    ("xid", "5"),
    ("xid8", "7"),
    ("xml", "<a>b</a>"),
];

/// Built-in types no table can usefully hold, each with the reason.
const EXCLUDED: &[(&str, &str)] = &[
    (
        "gtsvector",
        "internal index type: its input function refuses any text",
    ),
    (
        "pg_brin_bloom_summary",
        "internal BRIN summary: input function refuses text",
    ),
    (
        "pg_brin_minmax_multi_summary",
        "internal BRIN summary: input function refuses text",
    ),
    (
        "pg_dependencies",
        "extended-statistics value: input function refuses text",
    ),
    (
        "pg_mcv_list",
        "extended-statistics value: input function refuses text",
    ),
    (
        "pg_ndistinct",
        "extended-statistics value: input function refuses text",
    ),
    ("pg_node_tree", "planner tree: input function refuses text"),
];

/// A user-defined enum, domain, composite and arrays, beside the built-ins.
const EXTRA: &[(&str, &str, &str)] = &[
    ("u_enum", "mood", "happy"),
    ("u_domain", "positive", "7"),
    ("u_composite", "pair", "(1,\"x y\")"),
    ("a_text", "text[]", "{\"a b\",\"c,d\",NULL,\"\"}"),
    ("a_int4", "integer[]", "{{1,2},{3,4}}"),
    ("a_numeric", "numeric[]", "{1.50,-2}"),
    ("a_enum", "mood[]", "{sad,ok}"),
    ("a_jsonb", "jsonb[]", "{\"{\\\"k\\\": 1}\"}"),
];

const USER_TYPES: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);";

fn quote(literal: &str) -> String {
    format!("'{}'", literal.replace('\'', "''"))
}

/// The names of the catalog's built-in base, range and multirange types (array types
/// excluded: a few are covered by `EXTRA`).
fn builtin_types(server: &str) -> Vec<String> {
    let db = TestDb::new(server, "");
    db.client()
        .query(
            "SELECT typname::text FROM pg_type
             WHERE typnamespace = 'pg_catalog'::regnamespace
               AND typtype IN ('b', 'r', 'm') AND typname NOT LIKE '\\_%'
             ORDER BY typname",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn column_text(db: &TestDb, column: &str) -> Vec<Option<String>> {
    db.client()
        .query(
            &format!("SELECT {column}::text FROM every ORDER BY id"),
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

concord_harness::server_tests! {
    fn every_builtin_type_in_the_catalog_replicates_exactly_between_postgresql_databases(server: postgres) {
        let types = builtin_types(server);
        let unknown: Vec<&String> = types
            .iter()
            .filter(|t| {
                !SAMPLES.iter().any(|(n, _)| n == t) && !EXCLUDED.iter().any(|(n, _)| n == t)
            })
            .collect();
        assert!(unknown.is_empty(), "built-in types with no sample and no exclusion: {unknown:?}");
        let mut columns = Vec::new(); // (column name, column type, literal)
        for (name, literal) in SAMPLES {
            if types.iter().any(|t| t == name) {
                columns.push((format!("c_{name}"), format!("pg_catalog.\"{name}\""), literal.to_string()));
            }
        }
        for (column, ty, literal) in EXTRA {
            columns.push((column.to_string(), ty.to_string(), literal.to_string()));
        }
        let ddl = format!(
            "{USER_TYPES}\nCREATE TABLE every(id integer PRIMARY KEY, {});",
            columns.iter().map(|(c, t, _)| format!("{c} {t}")).collect::<Vec<_>>().join(", ")
        );
        let (a, b) = (TestDb::new(server, &ddl), TestDb::new(server, &ddl));
        a.psql(&format!(
            "INSERT INTO every VALUES (1, {}); INSERT INTO every(id) VALUES (2);",
            columns.iter().map(|(_, t, l)| format!("{}::{t}", quote(l))).collect::<Vec<_>>().join(", ")
        ));
        let mut sa = PgStore::track(&a.url, &["every"], StoreOptions::default()).unwrap();
        let mut sb = PgStore::track(&b.url, &["every"], StoreOptions::default()).unwrap();
        let report = pull(&mut sa, &mut sb).unwrap();
        assert_eq!((report.applied, report.set_aside), (2, 0), "{report:?} {:?}", sb.failures().unwrap());
        let mut differ = Vec::new();
        for (column, ty, _) in &columns {
            let (va, vb) = (column_text(&a, column), column_text(&b, column));
            if va != vb {
                differ.push(format!("{column} ({ty}): {va:?} became {vb:?}"));
            }
        }
        assert!(differ.is_empty(), "columns that differ:\n{}", differ.join("\n"));
    }
}
