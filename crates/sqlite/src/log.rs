//! Reading the change log: the only input to sync.
//!
//! The log holds every change this replica has, local and relayed, in the order it
//! applied them (`pos`). That order is causal: a change is logged after every change it
//! could have seen. A [`LogReader`] has its own connection, so a sync session reads while
//! the store captures and applies (WAL lets both proceed), and it reads a page at a time,
//! so memory stays flat whatever the log's length. It yields, in log order, exactly the
//! changes a target's version vector does not hold.

use std::collections::HashMap;
use std::path::Path;

use concord_core::{
    CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Version, VersionVector,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::schema::VERBATIM_TABLE;
use crate::store::SqliteStore;
use concord_store::format::{self as codec, LogBody, StoredVersion};
use concord_store::{LogPage, LogRead, StoreError};

const PAGE: usize = 1_000;

struct TableNames {
    name: String,
    columns: Vec<String>,
}

/// A read-only view of a store's change log.
pub struct LogReader {
    conn: Connection,
    node_of: HashMap<u32, NodeId>,
    index_of: HashMap<NodeId, u32>,
    tables: HashMap<i64, TableNames>,
}

impl LogReader {
    /// Opens a reader on a tracked database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::NoSuchFile(path.display().to_string()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let mut reader = Self {
            conn,
            node_of: HashMap::new(),
            index_of: HashMap::new(),
            tables: HashMap::new(),
        };
        reader.refresh()?;
        Ok(reader)
    }

    /// Re-reads origins and table names (new ones appear as the store learns them).
    fn refresh(&mut self) -> Result<(), StoreError> {
        let origins: Vec<(u32, Vec<u8>)> = self
            .conn
            .prepare("SELECT id, node_id FROM __concord_origins")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (index, bytes) in origins {
            let node = NodeId::try_from(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                table: "__concord_origins",
                detail: e.to_string(),
            })?;
            self.node_of.insert(index, node);
            self.index_of.insert(node, index);
        }
        let tables: Vec<(i64, String)> = self
            .conn
            .prepare("SELECT id, name FROM __concord_tables")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, name) in tables {
            let columns: Vec<String> = self
                .conn
                .prepare("SELECT name FROM __concord_columns WHERE tbl = ?1 ORDER BY position")?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            self.tables.insert(id, TableNames { name, columns });
        }
        Ok(())
    }

    /// What the store holds now, from each origin.
    pub fn held(&mut self) -> Result<VersionVector, StoreError> {
        let mut held = VersionVector::new();
        let rows: Vec<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached("SELECT node_id, seq FROM __concord_origins WHERE seq > 0")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (bytes, seq) in rows {
            let node = NodeId::try_from(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                table: "__concord_origins",
                detail: e.to_string(),
            })?;
            held.set(node, seq as u64);
        }
        Ok(held)
    }

    /// The last position in the log (0 if empty).
    pub fn last_position(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(pos), 0) FROM __concord_log", [], |r| {
                r.get(0)
            })?)
    }

    /// The position just before the first entry a replica holding `target` lacks, so
    /// that reading after it yields everything the target needs. Found through the
    /// `(origin, seq)` index instead of scanning. An entry the target needs that is no
    /// longer in the log (pruned) is an error naming it.
    pub fn start_for(&mut self, target: &VersionVector) -> Result<i64, StoreError> {
        let held = self.held()?;
        if held.iter().any(|(n, _)| !self.index_of.contains_key(n)) {
            self.refresh()?;
        }
        let mut start = self.last_position()?;
        for (origin, &have) in held.iter() {
            let wanted = target.get(origin);
            if have <= wanted {
                continue;
            }
            let index = self.index_of.get(origin).copied().unwrap_or_default();
            let pos: Option<i64> = self
                .conn
                .prepare_cached("SELECT pos FROM __concord_log WHERE origin = ?1 AND seq = ?2")?
                .query_row(rusqlite::params![index, wanted as i64 + 1], |r| r.get(0))
                .optional()?;
            match pos {
                Some(pos) => start = start.min(pos - 1),
                None => {
                    return Err(StoreError::Pruned {
                        origin: origin.to_string(),
                        seq: wanted + 1,
                    });
                }
            }
        }
        Ok(start)
    }

    /// Reads up to `limit` changes after position `after` that `target` lacks.
    pub fn read(
        &mut self,
        after: i64,
        target: &VersionVector,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        loop {
            match self.read_once(after, target, limit) {
                Err(e @ StoreError::Corrupt { .. }) => {
                    // An origin or table the reader has not seen yet: learn it and retry,
                    // as long as learning finds something new (more may appear meanwhile).
                    let known = (self.node_of.len(), self.tables.len());
                    self.refresh()?;
                    if (self.node_of.len(), self.tables.len()) == known {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    fn read_once(
        &mut self,
        after: i64,
        target: &VersionVector,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, body, txn_end FROM __concord_log \
             WHERE pos > ?1 ORDER BY pos LIMIT ?2",
        )?;
        let mut rows = stmt.query(rusqlite::params![after, PAGE.max(limit) as i64])?;
        let mut page = LogPage {
            changes: Vec::new(),
            last_pos: after,
        };
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "__concord_log",
            detail,
        };
        while let Some(r) = rows.next()? {
            if page.changes.len() >= limit {
                break;
            }
            let pos: i64 = r.get(0)?;
            let origin_index: u32 = r.get(1)?;
            let origin = *self.node_of.get(&origin_index).ok_or_else(|| {
                corrupt(format!("entry {pos}: unknown origin index {origin_index}"))
            })?;
            let seq = r.get::<_, i64>(2)? as u64;
            page.last_pos = pos;
            if target.contains(&origin, seq) {
                continue;
            }
            let table_id: i64 = r.get(4)?;
            if table_id == VERBATIM_TABLE {
                let blob = r
                    .get_ref(7)?
                    .as_blob()
                    .map_err(|e| corrupt(format!("entry {pos}: {e}")))?;
                let change: Change =
                    codec::decode(blob).map_err(|e| corrupt(format!("entry {pos}: {e}")))?;
                page.changes.push(change);
                continue;
            }
            let table = self
                .tables
                .get(&table_id)
                .ok_or_else(|| corrupt(format!("entry {pos}: unknown table {table_id}")))?;
            let body: LogBody = codec::decode(
                r.get_ref(7)?
                    .as_blob()
                    .map_err(|e| corrupt(format!("entry {pos}: {e}")))?,
            )
            .map_err(|e| corrupt(format!("entry {pos}: {e}")))?;
            let version = |v: StoredVersion| -> Result<Version, StoreError> {
                let origin = self
                    .node_of
                    .get(&v.1)
                    .ok_or_else(|| corrupt(format!("entry {pos}: unknown origin index {}", v.1)))?;
                Ok(Version {
                    hlc: Hlc::from_u64(v.0),
                    origin: *origin,
                })
            };
            let mut columns = Vec::with_capacity(body.columns.len());
            for c in body.columns {
                let name = table.columns.get(c.index as usize).ok_or_else(|| {
                    corrupt(format!("entry {pos}: column {} out of range", c.index))
                })?;
                columns.push(ColumnChange {
                    column: name.clone(),
                    value: c.value,
                    version: version(c.version)?,
                    replaced: c.replaced.map(version).transpose()?,
                });
            }
            page.changes.push(Change {
                origin,
                seq,
                hlc: Hlc::from_u64(r.get::<_, i64>(3)? as u64),
                table: table.name.clone(),
                key: PrimaryKey::from_bytes_unchecked(r.get(5)?),
                causal_length: CausalLength(r.get::<_, i64>(6)? as u64),
                columns,
                delete_seen: body.delete_seen.map(version).transpose()?,
                last_in_txn: r.get(8)?,
            });
        }
        Ok(page)
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

impl LogRead for LogReader {
    fn held(&mut self) -> Result<VersionVector, StoreError> {
        LogReader::held(self)
    }

    fn start_for(&mut self, target: &VersionVector) -> Result<i64, StoreError> {
        LogReader::start_for(self, target)
    }

    fn read(
        &mut self,
        after: i64,
        target: &VersionVector,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        LogReader::read(self, after, target, limit)
    }
}
