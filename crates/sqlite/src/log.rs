//! SQLite's part in reading the change log: [`LogSource`] over its own connection.
//!
//! Decoding and paging are [`concord_store::LogReader`]'s, the same for every store.
//! The reader's connection is separate from the store's, so a sync session reads while
//! the store captures and applies (WAL lets both proceed).

use std::path::Path;

use concord_core::{NodeId, VersionVector};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::store::SqliteStore;
use concord_store::{RawEntry, StoreError, TableColumns};

/// SQLite's change log, read through its own connection.
pub struct SqliteLog {
    conn: Connection,
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
    concord_store::LogReader::new(SqliteLog { conn })
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
