//! Reading the change log: the only input to sync.
//!
//! The log holds every change this replica has, local and relayed, in the order it
//! applied them (`pos`). That order is causal: a change is logged after every change it
//! could have seen. A [`ChangeCursor`] walks it from the first position the target lacks
//! and yields, in that order, exactly the changes the target's version vector does not
//! hold, a page at a time, so memory stays flat whatever the log's length.

use std::collections::{HashMap, VecDeque};

use concord_core::{CausalLength, Change, ColumnChange, Hlc, PrimaryKey, VersionVector};

use crate::codec::{self, LogBody};
use crate::error::StoreError;
use crate::store::SqliteStore;

const PAGE: i64 = 1_000;

struct TableNames {
    name: String,
    columns: Vec<String>,
}

/// Iterates over the changes a target lacks, in causal (log) order.
pub struct ChangeCursor<'s> {
    store: &'s SqliteStore,
    target: VersionVector,
    tables: HashMap<i64, TableNames>,
    next_pos: i64,
    buffer: VecDeque<Change>,
    done: bool,
}

impl SqliteStore {
    /// The changes a replica holding `target` lacks, in an order it can apply.
    pub fn changes_for(&self, target: &VersionVector) -> Result<ChangeCursor<'_>, StoreError> {
        let mut tables = HashMap::new();
        let mut stmt = self.conn.prepare("SELECT id, name FROM __concord_tables")?;
        let rows: Vec<(i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, name) in rows {
            let columns: Vec<String> = self
                .conn
                .prepare("SELECT name FROM __concord_columns WHERE tbl = ?1 ORDER BY position")?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tables.insert(id, TableNames { name, columns });
        }
        // Start at the earliest entry the target lacks, found through the (origin, seq)
        // index, instead of scanning the whole log.
        let mut start: Option<i64> = None;
        let mut done = true;
        for (origin, &held) in self.origins.held.iter() {
            let wanted = target.get(origin);
            if held <= wanted {
                continue;
            }
            done = false;
            let index = self.origins.index_of[origin];
            let pos: Option<i64> = self
                .conn
                .query_row(
                    "SELECT pos FROM __concord_log WHERE origin = ?1 AND seq = ?2",
                    rusqlite::params![index, wanted as i64 + 1],
                    |r| r.get(0),
                )
                .ok();
            let pos = pos.unwrap_or(0);
            start = Some(start.map_or(pos, |s| s.min(pos)));
        }
        Ok(ChangeCursor {
            store: self,
            target: target.clone(),
            tables,
            next_pos: start.unwrap_or(0),
            buffer: VecDeque::new(),
            done,
        })
    }
}

impl ChangeCursor<'_> {
    fn fill(&mut self) -> Result<(), StoreError> {
        let mut stmt = self.store.conn.prepare_cached(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, body, txn_end FROM __concord_log WHERE pos >= ?1 ORDER BY pos LIMIT ?2",
        )?;
        let mut rows = stmt.query(rusqlite::params![self.next_pos, PAGE])?;
        let mut count = 0;
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "__concord_log",
            detail,
        };
        while let Some(r) = rows.next()? {
            count += 1;
            let pos: i64 = r.get(0)?;
            self.next_pos = pos + 1;
            let origin_index: u32 = r.get(1)?;
            let origin = *self
                .store
                .origins
                .node_of
                .get(&origin_index)
                .ok_or_else(|| {
                    corrupt(format!("entry {pos}: unknown origin index {origin_index}"))
                })?;
            let seq = r.get::<_, i64>(2)? as u64;
            if self.target.contains(&origin, seq) {
                continue;
            }
            let table_id: i64 = r.get(4)?;
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
            let version = |v| {
                self.store
                    .version(v)
                    .map_err(|e| corrupt(format!("entry {pos}: {e}")))
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
            self.buffer.push_back(Change {
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
        if count < PAGE {
            self.done = true;
        }
        Ok(())
    }
}

impl Iterator for ChangeCursor<'_> {
    type Item = Result<Change, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(change) = self.buffer.pop_front() {
                return Some(Ok(change));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
