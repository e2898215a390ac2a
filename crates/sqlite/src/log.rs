//! SQLite's part in reading the change log: [`LogSource`] over its own connection.
//!
//! Decoding and paging are [`concord_store::LogReader`]'s, the same for every store.
//! The reader's connection is separate from the store's, so a sync session reads while
//! the store captures and applies (WAL lets both proceed).

use std::path::Path;

use std::collections::HashMap;

use concord_core::{NodeId, Value, VersionVector};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter};

use crate::codec::{self, Sql};
use crate::schema::quote;
use crate::store::SqliteStore;
use concord_store::{RawClock, RawEntry, StoreError, TableColumns};

/// SQLite's change log, read through its own connection.
pub struct SqliteLog {
    conn: Connection,
    /// Per table id: the statement selecting a user's row by key (for snapshots).
    select_row: HashMap<i64, String>,
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

impl SqliteLog {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            select_row: HashMap::new(),
        }
    }

    /// `SELECT every column FROM the table WHERE key`, from the metadata's columns.
    fn select_row_sql(&mut self, table: i64) -> Result<String, StoreError> {
        if let Some(sql) = self.select_row.get(&table) {
            return Ok(sql.clone());
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
        let mut key: Vec<(i64, &str)> = columns
            .iter()
            .filter_map(|(name, k)| k.map(|k| (k, name.as_str())))
            .collect();
        key.sort_unstable();
        let list = columns
            .iter()
            .map(|(name, _)| quote(name))
            .collect::<Vec<_>>()
            .join(", ");
        let predicate = key
            .iter()
            .enumerate()
            .map(|(i, (_, name))| format!("{} IS ?{}", quote(name), i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!("SELECT {list} FROM {} WHERE {predicate}", quote(&name));
        self.select_row.insert(table, sql.clone());
        Ok(sql)
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

    fn tracked_tables(&mut self) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM __concord_tables WHERE tracked")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn clocks(
        &mut self,
        table: i64,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<RawClock>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT pk, cl, clock FROM __concord_rows WHERE tbl = ?1 AND pk > ?2 \
                 ORDER BY pk LIMIT ?3",
            )?
            .query_map(rusqlite::params![table, after, limit as i64], |r| {
                Ok(RawClock {
                    key: r.get(0)?,
                    causal_length: r.get(1)?,
                    clock: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn row_values(&mut self, table: i64, key: &[Value]) -> Result<Option<Vec<Value>>, StoreError> {
        let sql = self.select_row_sql(table)?;
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let count = stmt.column_count();
        let row = stmt
            .query_row(params_from_iter(key.iter().map(Sql)), |r| {
                (0..count)
                    .map(|i| Ok(codec::from_sql(r.get_ref(i)?)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        row.into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|detail| StoreError::Capture {
                table: format!("table {table}"),
                key: format!("{key:?}"),
                detail,
            })
    }
}

fn node_id(bytes: &[u8]) -> Result<NodeId, StoreError> {
    NodeId::try_from(bytes).map_err(|e| StoreError::Corrupt {
        table: "__concord_origins",
        detail: e.to_string(),
    })
}

impl concord_store::LogSource for SqliteLog {
    fn log_table(&self) -> &'static str {
        "__concord_log"
    }

    fn origins(&mut self) -> Result<Vec<(u32, NodeId)>, StoreError> {
        let rows: Vec<(u32, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT id, node_id FROM __concord_origins")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(index, bytes)| Ok((index, node_id(&bytes)?)))
            .collect()
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

    fn held(&mut self) -> Result<VersionVector, StoreError> {
        let mut held = VersionVector::new();
        let rows: Vec<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT node_id, seq FROM __concord_origins WHERE seq > 0")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (bytes, seq) in rows {
            held.set(node_id(&bytes)?, seq as u64);
        }
        Ok(held)
    }

    fn last_position(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(pos), 0) FROM __concord_log", [], |r| {
                r.get(0)
            })?)
    }

    fn position_of(&mut self, origin: u32, seq: u64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT pos FROM __concord_log WHERE origin = ?1 AND seq = ?2")?
            .query_row(rusqlite::params![origin, seq as i64], |r| r.get(0))
            .optional()?)
    }

    fn scan(
        &mut self,
        after: i64,
        limit: usize,
        visit: &mut dyn FnMut(RawEntry<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, body, txn_end FROM __concord_log \
             WHERE pos > ?1 ORDER BY pos LIMIT ?2",
        )?;
        let mut rows = stmt.query(rusqlite::params![after, limit as i64])?;
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
        // Positions only grow and entries are only ever removed from the front, so the
        // cutoff follows from the last position: no scan of the kept entries (an
        // OFFSET over a million entries cost ~50 ms after every capture).
        let last: i64 =
            self.conn
                .query_row("SELECT coalesce(max(pos), 0) FROM __concord_log", [], |r| {
                    r.get(0)
                })?;
        let cutoff = last.saturating_sub(keep.min(i64::MAX as u64) as i64);
        if cutoff <= 0 {
            return Ok(0);
        }
        let deleted = self
            .conn
            .execute("DELETE FROM __concord_log WHERE pos <= ?1", [cutoff])?;
        Ok(deleted as u64)
    }
}
