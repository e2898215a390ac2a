//! Two PostgreSQL databases kept in agreement through their change logs.
//!
//! Risks covered:
//! - replicas diverge after edits on both sides, concurrent edits of one row, deletes,
//!   or an update concurrent with a delete;
//! - a concurrent edit vanishes silently instead of being recorded as a conflict;
//! - applied writes are captured again and echoed back (the log grows on every pull);
//! - a source transaction is applied in part at the destination (committed in pieces);
//! - a value changes on the way: decimals with many digits, timestamps written in other
//!   time zones, UUIDs, JSON, bytes with zero bytes, unicode text, dates, floats.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestDb, all_changes};
use concord_postgres::Store as _;
use concord_postgres::{PgStore, StoreOptions, pull};

const DDL: &str = "CREATE TABLE items(id bigint PRIMARY KEY, name text NOT NULL, qty integer);";

fn pair(server: &str, ddl: &str, tables: &[&str]) -> (TestDb, TestDb, PgStore, PgStore) {
    let a_db = TestDb::new(server, ddl);
    let b_db = TestDb::new(server, ddl);
    let a = PgStore::track(&a_db.url, tables, StoreOptions::default()).unwrap();
    let b = PgStore::track(&b_db.url, tables, StoreOptions::default()).unwrap();
    (a_db, b_db, a, b)
}

fn sync(a: &mut PgStore, b: &mut PgStore) {
    pull(a, b).unwrap();
    pull(b, a).unwrap();
}

const TYPED: &str = "
CREATE TABLE typed(
    id bigint PRIMARY KEY,
    i2 smallint, i4 integer, f4 real, f8 double precision,
    amount numeric(12,2), big numeric,
    name text, code varchar(10), fixed char(4), flag boolean, data bytea,
    at timestamptz, local_at timestamp, at_ms timestamptz(3), day date,
    uid uuid, doc jsonb, raw json
);
CREATE TABLE keyed(uid uuid, day date, label text NOT NULL, PRIMARY KEY (uid, day));
CREATE TABLE priced(amount numeric(12,2) PRIMARY KEY, at timestamptz NOT NULL);";

concord_harness::server_tests! {
    fn edits_on_both_sides_converge_and_concurrent_edits_are_recorded(server: postgres) {
        let (a_db, b_db, mut a, mut b) = pair(server, DDL, &["items"]);
        a_db.psql("INSERT INTO items VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)");
        b_db.psql("INSERT INTO items VALUES (10, 'ten', 10)");
        sync(&mut a, &mut b);
        assert_eq!(a_db.dump("items", "id"), b_db.dump("items", "id"));
        assert_eq!(a_db.count("SELECT count(*) FROM items"), 4);

        // Concurrent edits: the same column of row 1, different columns of row 2, a delete
        // of row 3 on one side and an update of it on the other.
        a_db.psql("UPDATE items SET name = 'one by a' WHERE id = 1");
        b_db.psql("UPDATE items SET name = 'one by b' WHERE id = 1");
        a_db.psql("UPDATE items SET name = 'two by a' WHERE id = 2");
        b_db.psql("UPDATE items SET qty = 22 WHERE id = 2");
        a_db.psql("DELETE FROM items WHERE id = 3");
        b_db.psql("UPDATE items SET qty = 33 WHERE id = 3");
        b_db.psql("DELETE FROM items WHERE id = 10");
        sync(&mut a, &mut b);
        pull(&mut a, &mut b).unwrap();
        let rows = a_db.dump("items", "id");
        assert_eq!(rows, b_db.dump("items", "id"));
        assert_eq!(
            rows.len(),
            2,
            "rows 3 and 10 are deleted everywhere: {rows:?}"
        );
        assert!(
            rows[1].contains("two by a") && rows[1].contains("22"),
            "{rows:?}"
        );

        let conflicts: Vec<_> = a
            .conflicts()
            .unwrap()
            .into_iter()
            .chain(b.conflicts().unwrap())
            .collect();
        assert!(
            conflicts
                .iter()
                .any(|c| c.kind == "column" && c.column.as_deref() == Some("name") && c.key == "(1)"),
            "{conflicts:?}"
        );
        assert!(
            conflicts
                .iter()
                .any(|c| c.kind == "update-vs-delete" && c.key == "(3)"),
            "{conflicts:?}"
        );
        assert!(
            !conflicts.iter().any(|c| c.key == "(2)"),
            "edits of different columns do not conflict: {conflicts:?}"
        );
        assert_eq!(a.version_vector(), b.version_vector());
    }

    fn applied_changes_are_not_captured_again(server: postgres) {
        let (a_db, _b_db, mut a, mut b) = pair(server, DDL, &["items"]);
        a_db.psql("INSERT INTO items VALUES (1, 'one', 1); UPDATE items SET qty = 5;");
        let report = pull(&mut a, &mut b).unwrap();
        assert_eq!(report.applied, 2);
        assert_eq!(
            b.capture().unwrap(),
            0,
            "nothing pending at the destination"
        );
        assert_eq!(b.pending_len().unwrap(), 0);
        let log = all_changes(&b);
        assert_eq!(log.len(), 2);
        assert!(log.iter().all(|c| c.origin == a.node_id()));
        // Pulling back sends nothing new to the origin.
        let back = pull(&mut b, &mut a).unwrap();
        assert_eq!(back.applied, 0);
        assert_eq!(a.log_len().unwrap(), 2);
    }

    fn a_source_transaction_is_committed_whole_at_the_destination(server: postgres) {
        let a_db = TestDb::new(server, DDL);
        let b_db = TestDb::new(server, DDL);
        let mut a = PgStore::track(&a_db.url, &["items"], StoreOptions::default()).unwrap();
        // Commit as often as allowed: after every change, if at a boundary.
        let options = StoreOptions {
            apply_batch_changes: 1,
            ..StoreOptions::default()
        };
        let mut b = PgStore::track(&b_db.url, &["items"], options).unwrap();
        a_db.psql(
            "BEGIN; INSERT INTO items SELECT g, 'bulk', g FROM generate_series(1, 50) g; COMMIT;",
        );
        a_db.psql("INSERT INTO items VALUES (100, 'single', 0)");
        let report = pull(&mut a, &mut b).unwrap();
        assert_eq!(report.applied, 51);
        // A commit only at each source transaction's end: never inside the 50-row one.
        assert_eq!(report.commits, 2);

        // A stream cut inside a source transaction applies none of it.
        a_db.psql("BEGIN; UPDATE items SET qty = -1 WHERE id <= 10; COMMIT;");
        a.capture().unwrap();
        let partial: Vec<_> = a.changes_for(b.version_vector()).unwrap().take(5).collect();
        assert!(b.apply_changes(&mut partial.into_iter()).is_err());
        assert_eq!(b_db.count("SELECT count(*) FROM items WHERE qty = -1"), 0);
        pull(&mut a, &mut b).unwrap();
        assert_eq!(b_db.count("SELECT count(*) FROM items WHERE qty = -1"), 10);
    }

    fn every_mapped_type_round_trips_exactly(server: postgres) {
        let (a_db, b_db, mut a, mut b) = pair(server, TYPED, &["typed", "keyed", "priced"]);
        a_db.psql(
            r#"SET TimeZone = 'Asia/Kolkata';
            INSERT INTO typed VALUES
            (1, -32768, 2147483647, 3.4028235e38, 0.1, 1234567890.12,
             '-12345678901234567890.123456789012345678901', 'Grüße, 世界 🎉', 'ten chars!', 'ab',
             true, '\x00ff0000'::bytea, '2024-03-01 12:34:56.789012+05:30',
             '1999-12-31 23:59:59.999999', '2024-03-01 00:00:00.123-08', '0044-03-15 BC',
             '123e4567-e89b-12d3-a456-426614174000', '{"b": [1, 2.50, null], "a": "x"}',
             '{ "keep" :  "spacing",  "dup": 1, "dup": 2 }'),
            (2, 0, -1, -0.0, 'NaN', -0.01, '0.000000000000000000001', '', NULL, NULL,
             false, ''::bytea, '1970-01-01 00:00:00+00', 'infinity', NULL, '2000-01-01',
             NULL, 'null', '[]'),
            (3, NULL, NULL, 'Infinity', '-1e-300', NULL, 'NaN', NULL, NULL, NULL,
             NULL, NULL, '-infinity', NULL, NULL, NULL, NULL, NULL, NULL);
            INSERT INTO keyed VALUES ('00000000-0000-0000-0000-000000000001', '2024-02-29', 'leap');
            INSERT INTO priced VALUES (99999.99, '2024-06-01 10:00:00 America/New_York');"#,
        );
        pull(&mut a, &mut b).unwrap();
        assert_eq!(a_db.dump("typed", "id"), b_db.dump("typed", "id"));
        assert_eq!(a_db.dump("keyed", "uid"), b_db.dump("keyed", "uid"));
        assert_eq!(a_db.dump("priced", "amount"), b_db.dump("priced", "amount"));
        // Compare in the types' own text forms too (jsonb would normalise some of them).
        let text = "SELECT id, f4::text, f8::text, amount::text, big::text, data::text,
                           at::text, local_at::text, at_ms::text, day::text, raw::text, fixed::text
                    FROM typed ORDER BY id";
        let read = |db: &TestDb| -> Vec<Vec<Option<String>>> {
            let mut c = db.client();
            c.batch_execute("SET TimeZone = 'UTC'").unwrap();
            c.query(text, &[])
                .unwrap()
                .into_iter()
                .map(|r| (1..12).map(|i| r.get(i)).collect())
                .collect()
        };
        let (ra, rb) = (read(&a_db), read(&b_db));
        assert_eq!(ra, rb);
        assert_eq!(rb[0][2].as_deref(), Some("1234567890.12"));
        assert_eq!(rb[0][5].as_deref(), Some("2024-03-01 07:04:56.789012+00"));
        assert_eq!(
            rb[0][9].as_deref(),
            Some(r#"{ "keep" :  "spacing",  "dup": 1, "dup": 2 }"#)
        );
        assert_eq!(rb[1][4].as_deref(), Some("\\x"));
        assert_eq!(rb[1][6].as_deref(), Some("infinity"));

        // Updates of every kind travel too, and back.
        b_db.psql("UPDATE typed SET amount = -0.50, data = '\\x000000'::bytea, uid = gen_random_uuid() WHERE id = 2");
        b_db.psql("UPDATE keyed SET label = 'still leap'");
        pull(&mut b, &mut a).unwrap();
        assert_eq!(a_db.dump("typed", "id"), b_db.dump("typed", "id"));
        assert_eq!(a_db.dump("keyed", "uid"), b_db.dump("keyed", "uid"));
    }
}
