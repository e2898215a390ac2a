//! Helpers shared by the SQLite store's integration tests: creating files, reading
//! tables and Concord's metadata back out of them, and running the `sqlite3` shell.
#![allow(dead_code)]

use concord_sqlite::Store as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use concord_core::{Change, VersionVector};
use concord_sqlite::{SqliteStore, StoreOptions};
use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

/// A table's rows as SQLite holds them, in a fixed order.
pub(crate) type Rows = Vec<Vec<SqlValue>>;

/// Creates `path` and runs `ddl` in it through a plain connection (no Concord code).
pub(crate) fn create_db(path: &Path, ddl: &str) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(ddl).unwrap();
}

/// Opens a plain connection, as a user's application would, with a busy timeout so it
/// waits for Concord's write transactions instead of failing.
pub(crate) fn app_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    conn
}

/// Creates `names` files in `dir`, each with `ddl`, and tracks `tables` in each.
pub(crate) fn tracked_files(
    dir: &Path,
    names: &[&str],
    ddl: &str,
    tables: &[&str],
) -> (Vec<PathBuf>, Vec<SqliteStore>) {
    let mut paths = Vec::new();
    let mut stores = Vec::new();
    for name in names {
        let path = dir.join(name);
        create_db(&path, ddl);
        stores.push(SqliteStore::track(&path, tables, StoreOptions::default()).unwrap());
        paths.push(path);
    }
    (paths, stores)
}

/// Every row of `table`, all columns, ordered by `order_by`.
pub(crate) fn dump(conn: &Connection, table: &str, order_by: &str) -> Rows {
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY {order_by}"))
        .unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| r.get::<_, SqlValue>(i))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// [`dump`] of a file through a fresh connection.
pub(crate) fn dump_file(path: &Path, table: &str, order_by: &str) -> Rows {
    dump(&Connection::open(path).unwrap(), table, order_by)
}

/// Names of every schema object Concord could have left behind: anything whose name or
/// table name contains `__concord_` (tables, their automatic indexes, triggers).
pub(crate) fn concord_objects(conn: &Connection) -> Vec<String> {
    conn.prepare(
        "SELECT type || ' ' || name FROM sqlite_master
         WHERE name LIKE '%\\_\\_concord\\_%' ESCAPE '\\'
            OR tbl_name LIKE '%\\_\\_concord\\_%' ESCAPE '\\'
            OR (type = 'trigger' AND sql LIKE '%\\_\\_concord\\_%' ESCAPE '\\')
         ORDER BY name",
    )
    .unwrap()
    .query_map([], |r| r.get(0))
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The SQL of every trigger on `table`.
pub(crate) fn trigger_sql(conn: &Connection, table: &str) -> Vec<String> {
    conn.prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1")
        .unwrap()
        .query_map([table], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every change the store's log holds, in log order.
pub(crate) fn all_changes(store: &SqliteStore) -> Vec<Change> {
    store
        .changes_for(&VersionVector::new())
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The column names a change writes, in its order.
pub(crate) fn column_names(change: &Change) -> Vec<&str> {
    change.columns.iter().map(|c| c.column.as_str()).collect()
}

/// The per-row replication metadata: `(tbl, pk, cl, clock)` for every row.
pub(crate) fn row_metadata(conn: &Connection) -> Vec<(i64, Vec<u8>, i64, Vec<u8>)> {
    conn.prepare("SELECT tbl, pk, cl, clock FROM __concord_rows ORDER BY tbl, pk")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Checks that the `sqlite3` command-line shell can be run, and fails the test, saying
/// how to install it, when it cannot; returns `true` otherwise.
///
/// A hard requirement, not a skip: a skipped `#[test]` is counted as passed by cargo, so
/// the risk it covers (writes by a process with no Concord code in it being captured)
/// would go unchecked while the summary said all was well. The shell is one package with
/// nothing to configure (CI installs it), unlike the database servers, whose tests are
/// reported as ignored when absent (`concord_harness::servers`).
pub(crate) fn sqlite3_shell_available(test: &str) -> bool {
    let run = Command::new("sqlite3").arg("-version").output();
    match run {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "{test}: `sqlite3 -version` failed ({}): {}; the capture tests need the sqlite3 \
             command-line shell (apt-get install sqlite3)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "{test}: cannot run the sqlite3 command-line shell ({e}); the capture tests \
             need it on PATH (apt-get install sqlite3)"
        ),
    }
}

/// Runs `sql` against `path` in the `sqlite3` shell, a separate process with no Concord
/// code, and fails the test if the shell reports any error.
pub(crate) fn sqlite3_shell(path: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg("-bail")
        .arg(path)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3 failed on {sql:?}: status {}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
