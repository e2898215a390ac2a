//! SQLite's part in reading the change log: [`LogSource`] over its own connection.
//!
//! Decoding and paging are [`concord_store::LogReader`]'s, the same for every store.
//! The reader's connection is separate from the store's, so a sync session reads while
//! the store captures and applies (WAL lets both proceed).

use std::path::Path;

use std::collections::HashMap;

use concord_core::{NodeId, Value};
use rusqlite::{Connection, OpenFlags, params_from_iter};

use crate::codec::{self, Sql};
use crate::driver::Sqlite;
use crate::schema::quote;
use crate::store::SqliteStore;
use concord_store::{RawEntry, RowPage, StoreError, TableColumns, keyset_page_sql};

/// SQLite's change log, read through its own connection.
pub struct SqliteLog {
    conn: Connection,
    /// Per table id: how to read its users' rows (for snapshots).
    row_reads: HashMap<i64, RowReads>,
}

/// A read-only view of a SQLite store's change log.
pub type LogReader = concord_store::LogReader<SqliteLog>;

/// Opens a reader on the change log of a tracked database file.
pub fn open_log(path: &Path) -> Result<LogReader, StoreError> {
    if !path.is_file() {
        return Err(StoreError::NoSuchFile(path.display().to_string()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    concord_store::LogReader::new(SqliteLog::new(conn))
}

/// Opens a snapshot of a tracked database file: every tracked row with its clock, in
/// one consistent read (see [`concord_store::SnapshotReader`]).
pub fn open_snapshot(path: &Path, node: NodeId) -> Result<SnapshotReader, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    concord_store::SnapshotReader::begin(SqliteLog::new(conn), node)
}

/// A snapshot of a SQLite store's rows.
pub type SnapshotReader = concord_store::SnapshotReader<SqliteLog>;

/// How the snapshot reads one table's own rows, from the metadata's columns.
#[derive(Clone)]
struct RowReads {
    table: String,
    columns: Vec<String>,
    /// Key column positions, in key order.
    key: Vec<usize>,
    /// Every column, quoted, for a select list.
    list: String,
    /// `SELECT every column FROM the table WHERE key`.
    by_key: String,
}

impl SqliteLog {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            row_reads: HashMap::new(),
        }
    }

    fn row_reads(&mut self, table: i64) -> Result<RowReads, StoreError> {
        if let Some(reads) = self.row_reads.get(&table) {
            return Ok(reads.clone());
        }
        let name: String = self.conn.query_row(
            "SELECT name FROM __concord_tables WHERE id = ?1",
            [table],
            |r| r.get(0),
        )?;
        let columns: Vec<(String, Option<i64>)> = self
            .conn
            .prepare_cached(
                "SELECT name, key_position FROM __concord_columns WHERE tbl = ?1 ORDER BY position",
            )?
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut key: Vec<(i64, usize)> = columns
            .iter()
            .enumerate()
            .filter_map(|(position, (_, k))| k.map(|k| (k, position)))
            .collect();
        key.sort_unstable();
        let key: Vec<usize> = key.into_iter().map(|(_, p)| p).collect();
        let list = columns
            .iter()
            .map(|(name, _)| quote(name))
            .collect::<Vec<_>>()
            .join(", ");
        let predicate = key
            .iter()
            .enumerate()
            .map(|(i, &p)| format!("{} IS ?{}", quote(&columns[p].0), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let reads = RowReads {
            by_key: format!("SELECT {list} FROM {} WHERE {predicate}", quote(&name)),
            table: quote(&name),
            columns: columns.into_iter().map(|(name, _)| name).collect(),
            key,
            list,
        };
        self.row_reads.insert(table, reads.clone());
        Ok(reads)
    }

    /// Runs a query of user rows with `params`, every column decoded.
    fn read_rows(
        &mut self,
        table: i64,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Vec<Value>>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let count = stmt.column_count();
        let rows = stmt
            .query_map(params_from_iter(params.iter().map(Sql)), |r| {
                (0..count)
                    .map(|i| Ok(codec::from_sql(r.get_ref(i)?)))
                    .collect::<Result<Vec<_>, _>>()
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|row| row.into_iter().collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|detail| StoreError::Capture {
                table: format!("table {table}"),
                key: format!("{params:?}"),
                detail,
            })
    }
}

impl concord_store::SnapshotSource for SqliteLog {
    fn begin_snapshot(&mut self) -> Result<(), StoreError> {
        // A deferred transaction takes its snapshot at the first read, just below; WAL
        // keeps that view while the store goes on writing.
        self.conn.execute_batch("BEGIN")?;
        self.conn
            .query_row("SELECT count(*) FROM __concord_origins", [], |_| Ok(()))?;
        Ok(())
    }

    fn end_snapshot(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn row_values(&mut self, table: i64, key: &[Value]) -> Result<Option<Vec<Value>>, StoreError> {
        let reads = self.row_reads(table)?;
        Ok(self
            .read_rows(table, &reads.by_key, key)?
            .into_iter()
            .next())
    }

    fn user_rows(
        &mut self,
        table: i64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<RowPage, StoreError> {
        let reads = self.row_reads(table)?;
        let keys: Vec<String> = reads
            .key
            .iter()
            .map(|&p| quote(&reads.columns[p]))
            .collect();
        let sql = keyset_page_sql(
            &reads.list,
            &format!("main.{}", reads.table),
            &keys,
            after.is_some(),
            |i| format!("?{}", i + 1),
            limit,
        );
        let rows = self.read_rows(table, &sql, after.unwrap_or(&[]))?;
        Ok(RowPage {
            columns: reads.columns,
            key: reads.key,
            rows,
        })
    }
}

impl concord_store::LogSource for SqliteLog {
    type Sql<'a> = Sqlite<'a>;

    fn sql(&mut self) -> Sqlite<'_> {
        Sqlite(&self.conn)
    }

    fn columns_signature(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT group_concat(tbl || '.' || position || '=' || name, ',') \
             FROM (SELECT tbl, position, name FROM __concord_columns ORDER BY tbl, position)",
                [],
                |r| r.get::<_, Option<String>>(0),
            )?
            .or(Some(String::new())))
    }

    fn log_table(&self) -> &'static str {
        "__concord_log"
    }

    fn tables(&mut self) -> Result<Vec<TableColumns>, StoreError> {
        let tables: Vec<(i64, String)> = self
            .conn
            .prepare_cached("SELECT id, name FROM __concord_tables")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(tables.len());
        for (id, name) in tables {
            let columns: Vec<String> = self
                .conn
                .prepare_cached(
                    "SELECT name FROM __concord_columns WHERE tbl = ?1 ORDER BY position",
                )?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            out.push(TableColumns { id, name, columns });
        }
        Ok(out)
    }

    fn scan(
        &mut self,
        after: i64,
        limit: usize,
        bodies: bool,
        visit: &mut dyn FnMut(RawEntry<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, CASE WHEN ?3 THEN body ELSE x'' END, \
             txn_end FROM __concord_log WHERE pos > ?1 ORDER BY pos LIMIT ?2",
        )?;
        let mut rows = stmt.query(rusqlite::params![after, limit as i64, bodies])?;
        while let Some(r) = rows.next()? {
            let bytes = |i: usize| {
                r.get_ref(i)?.as_blob().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        i,
                        rusqlite::types::Type::Blob,
                        Box::new(e),
                    )
                })
            };
            let entry = RawEntry {
                pos: r.get(0)?,
                origin: r.get(1)?,
                seq: r.get::<_, i64>(2)? as u64,
                hlc: r.get::<_, i64>(3)? as u64,
                table: r.get(4)?,
                key: bytes(5)?,
                causal_length: r.get::<_, i64>(6)? as u64,
                body: bytes(7)?,
                txn_end: r.get(8)?,
            };
            if !visit(entry)? {
                break;
            }
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Deletes the oldest change-log entries so that at most `keep` remain; returns how
    /// many were deleted. The version vector is unaffected: it says what this replica
    /// holds, not what it can still send. A peer that needs a deleted entry is told it
    /// is behind the retention limit ([`StoreError::Pruned`]).
    pub fn prune_log(&mut self, keep: u64) -> Result<u64, StoreError> {
        concord_store::bookkeeping::prune_log(&mut Sqlite(&self.conn), keep)
    }
}
