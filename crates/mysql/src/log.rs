//! Reading the change log: the only input to sync.
//!
//! The log holds every change this replica has, local and relayed, in the order it
//! logged them (`pos`). Positions come from a sequence allocated under Concord's lock,
//! so they are also commit order: a reader never finds a smaller position appear after
//! it read a larger one. That order is causal: a change is logged after every change it
//! could have seen. A [`ChangeCursor`] reads through its own connection, so a sync
//! session reads while the store captures and applies, and it reads a page at a time,
//! so memory stays flat whatever the log's length.

use std::collections::{HashMap, VecDeque};

use concord_core::{
    CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Version, VersionVector,
};
use mysql::Conn;
use mysql::prelude::Queryable;

use crate::codec::{self, LogBody, StoredVersion};
use crate::error::StoreError;
use crate::schema::VERBATIM_TABLE;
use crate::store::{MyStore, connect};

const PAGE: i64 = 1_000;

struct TableNames {
    name: String,
    columns: Vec<String>,
}

/// Iterates over the changes a target lacks, in causal (log) order.
pub struct ChangeCursor {
    conn: Conn,
    node_of: HashMap<i32, NodeId>,
    tables: HashMap<i32, TableNames>,
    target: VersionVector,
    after: i64,
    buffer: VecDeque<Change>,
    done: bool,
}

impl MyStore {
    /// The changes a replica holding `target` lacks, in an order it can apply. The
    /// cursor reads through its own connection, a page at a time.
    pub fn changes_for(&self, target: &VersionVector) -> Result<ChangeCursor, StoreError> {
        let mut cursor = ChangeCursor {
            conn: connect(&self.url)?,
            node_of: HashMap::new(),
            tables: HashMap::new(),
            target: target.clone(),
            after: 0,
            buffer: VecDeque::new(),
            done: false,
        };
        cursor.refresh()?;
        cursor.after = cursor.start()?;
        Ok(cursor)
    }
}

impl ChangeCursor {
    /// Re-reads origins and table names (new ones appear as the store learns them).
    fn refresh(&mut self) -> Result<(), StoreError> {
        let origins: Vec<(i32, Vec<u8>)> =
            self.conn.query("SELECT id, node_id FROM concord_origins")?;
        for (id, bytes) in origins {
            let node = NodeId::try_from(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                table: "concord_origins",
                detail: e.to_string(),
            })?;
            self.node_of.insert(id, node);
        }
        let tables: Vec<(i32, String)> = self.conn.query("SELECT id, name FROM concord_tables")?;
        for (id, name) in tables {
            let columns: Vec<String> = self.conn.exec(
                "SELECT name FROM concord_columns WHERE tbl = ? ORDER BY position",
                (id,),
            )?;
            self.tables.insert(id, TableNames { name, columns });
        }
        Ok(())
    }

    /// The position just before the first entry the target lacks, found through the
    /// `(origin, seq)` index. An entry the target needs that is no longer in the log
    /// (pruned) is an error naming it.
    fn start(&mut self) -> Result<i64, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_first("SELECT coalesce(max(pos), 0) FROM concord_log")?;
        let mut start = max.unwrap_or(0);
        let held: Vec<(i32, i64)> = self
            .conn
            .query("SELECT id, seq FROM concord_origins WHERE seq > 0")?;
        for (index, have) in held {
            let Some(origin) = self.node_of.get(&index).copied() else {
                continue;
            };
            let wanted = self.target.get(&origin);
            if have as u64 <= wanted {
                continue;
            }
            let pos: Option<i64> = self.conn.exec_first(
                "SELECT pos FROM concord_log WHERE origin = ? AND seq = ?",
                (index, wanted as i64 + 1),
            )?;
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

    fn read_page(&mut self) -> Result<(), StoreError> {
        type Entry = (i64, i32, i64, i64, i32, Vec<u8>, i64, Vec<u8>, bool);
        let rows: Vec<Entry> = self.conn.exec(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, body, txn_end FROM concord_log
             WHERE pos > ? ORDER BY pos LIMIT ?",
            (self.after, PAGE),
        )?;
        if rows.is_empty() {
            self.done = true;
            return Ok(());
        }
        for (pos, origin_index, seq, hlc, table_id, pk, cl, body, txn_end) in rows {
            let corrupt = |detail: String| StoreError::Corrupt {
                table: "concord_log",
                detail: format!("entry {pos}: {detail}"),
            };
            if !self.node_of.contains_key(&origin_index) {
                self.refresh()?;
            }
            let origin = *self
                .node_of
                .get(&origin_index)
                .ok_or_else(|| corrupt(format!("unknown origin index {origin_index}")))?;
            let seq = seq as u64;
            self.after = pos;
            if self.target.contains(&origin, seq) {
                continue;
            }
            if table_id == VERBATIM_TABLE {
                let change: Change = codec::decode(&body).map_err(corrupt)?;
                self.buffer.push_back(change);
                continue;
            }
            if !self.tables.contains_key(&table_id) {
                self.refresh()?;
            }
            let body: LogBody = codec::decode(&body).map_err(corrupt)?;
            let node_of = &self.node_of;
            let version = |v: StoredVersion| -> Result<Version, StoreError> {
                let origin = node_of
                    .get(&(v.1 as i32))
                    .ok_or_else(|| corrupt(format!("unknown origin index {}", v.1)))?;
                Ok(Version {
                    hlc: Hlc::from_u64(v.0),
                    origin: *origin,
                })
            };
            let table = self
                .tables
                .get(&table_id)
                .ok_or_else(|| corrupt(format!("unknown table {table_id}")))?;
            let mut columns = Vec::with_capacity(body.columns.len());
            for c in body.columns {
                let name = table
                    .columns
                    .get(c.index as usize)
                    .ok_or_else(|| corrupt(format!("column {} out of range", c.index)))?;
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
                hlc: Hlc::from_u64(hlc as u64),
                table: table.name.clone(),
                key: PrimaryKey::from_bytes_unchecked(pk),
                causal_length: CausalLength(cl as u64),
                columns,
                delete_seen: body.delete_seen.map(version).transpose()?,
                last_in_txn: txn_end,
            });
        }
        Ok(())
    }
}
impl Iterator for ChangeCursor {
    type Item = Result<Change, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(change) = self.buffer.pop_front() {
                return Some(Ok(change));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.read_page() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
