//! Large blobs are written into SQLite in place (a zero-filled placeholder, then
//! incremental blob I/O) so a node does not hold a 100 MB value three times while it
//! writes it. Risks covered: the bytes arriving altered, truncated or left as zeros; a
//! table where SQLite cannot open the value for writing (WITHOUT ROWID, an indexed
//! column, a UNIQUE column) losing the value or refusing the change; a large value in
//! the change log (captured, then relayed) read back different.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use concord_sqlite::{SqliteStore, StoreOptions, merge_all};
use rusqlite::Connection;

const MB: usize = 1 << 20;

/// Bytes with no run of zeros a placeholder could pass for.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed | 1)
        .collect()
}

fn blob(path: &std::path::Path, table: &str, id: i64) -> Option<Vec<u8>> {
    Connection::open(path)
        .unwrap()
        .query_row(&format!("SELECT b FROM {table} WHERE id = ?1"), [id], |r| {
            r.get(0)
        })
        .ok()
}

#[test]
fn large_blobs_arrive_whole_in_every_kind_of_table() {
    let tables = [
        (
            "plain",
            "CREATE TABLE plain(id INTEGER PRIMARY KEY, b BLOB)",
        ),
        (
            "norowid",
            "CREATE TABLE norowid(id INTEGER PRIMARY KEY, b BLOB) WITHOUT ROWID",
        ),
        (
            "indexed",
            "CREATE TABLE indexed(id INTEGER PRIMARY KEY, b BLOB); CREATE INDEX indexed_b ON indexed(b)",
        ),
        (
            "uniq",
            "CREATE TABLE uniq(id INTEGER PRIMARY KEY, b BLOB UNIQUE)",
        ),
        (
            "textkey",
            "CREATE TABLE textkey(id TEXT PRIMARY KEY NOT NULL, b BLOB)",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let names: Vec<&str> = tables.iter().map(|(name, _)| *name).collect();
    for path in [&a, &b] {
        let conn = Connection::open(path).unwrap();
        for (_, ddl) in &tables {
            conn.execute_batch(ddl).unwrap();
        }
    }
    let sa = SqliteStore::track(&a, &names, StoreOptions::default()).unwrap();
    let sb = SqliteStore::track(&b, &names, StoreOptions::default()).unwrap();
    let mut stores = vec![sa, sb];
    let ca = Connection::open(&a).unwrap();
    for (i, name) in names.iter().enumerate() {
        // Two rows of equal length, so equal placeholders would collide in `uniq`.
        for id in [1i64, 2] {
            let value = bytes(3 * MB, (i * 2) as u8 + id as u8);
            let key: rusqlite::types::Value = if *name == "textkey" {
                rusqlite::types::Value::Text(format!("k{id}"))
            } else {
                rusqlite::types::Value::Integer(id)
            };
            ca.execute(
                &format!("INSERT INTO {name}(id, b) VALUES (?1, ?2)"),
                rusqlite::params![key, value],
            )
            .unwrap();
        }
    }
    let reports = merge_all(&mut stores).unwrap();
    for report in &reports {
        assert_eq!(report.set_aside, 0, "{reports:?}");
    }
    for (i, name) in names.iter().enumerate() {
        for id in [1i64, 2] {
            let expected = bytes(3 * MB, (i * 2) as u8 + id as u8);
            let got = if *name == "textkey" {
                Connection::open(&b)
                    .unwrap()
                    .query_row(
                        "SELECT b FROM textkey WHERE id = ?1",
                        [format!("k{id}")],
                        |r| r.get::<_, Vec<u8>>(0),
                    )
                    .ok()
            } else {
                blob(&b, name, id)
            };
            assert!(
                got.as_ref() == Some(&expected),
                "{name} row {id} differs at the peer"
            );
        }
    }

    // An update of the large value (the placeholder path for UPDATE) arrives too.
    let newer = bytes(2 * MB, 99);
    ca.execute("UPDATE plain SET b = ?1 WHERE id = 1", [&newer])
        .unwrap();
    ca.execute("UPDATE norowid SET b = ?1 WHERE id = 1", [&newer])
        .unwrap();
    merge_all(&mut stores).unwrap();
    assert!(blob(&b, "plain", 1).as_ref() == Some(&newer));
    assert!(blob(&b, "norowid", 1).as_ref() == Some(&newer));
}
