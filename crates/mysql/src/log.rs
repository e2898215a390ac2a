//! MySQL's and MariaDB's part in reading the change log: [`LogSource`] over its own
//! connection.
//!
//! Decoding and paging are [`concord_store::LogReader`]'s, the same for every store.
//! Positions come from a counter allocated under Concord's lock, so they are also
//! commit order: a reader never finds a smaller position appear after it read a larger
//! one. Rows are streamed from the server (`exec_iter`), never collected.

use concord_core::{NodeId, VersionVector};
use mysql::Conn;
use mysql::prelude::Queryable;

use crate::store::connect;
use concord_store::{LogSource, RawEntry, StoreError, TableColumns};

/// MySQL's change log, read through its own connection.
pub(crate) struct MyLog {
    conn: Conn,
}

/// Opens a reader on the change log of the database at `url`.
pub(crate) fn open_log(url: &str) -> Result<concord_store::LogReader<MyLog>, StoreError> {
    concord_store::LogReader::new(MyLog {
        conn: connect(url)?,
    })
}

fn node_id(bytes: &[u8]) -> Result<NodeId, StoreError> {
    NodeId::try_from(bytes).map_err(|e| StoreError::Corrupt {
        table: "concord_origins",
        detail: e.to_string(),
    })
}

impl LogSource for MyLog {
    fn log_table(&self) -> &'static str {
        "concord_log"
    }

    fn origins(&mut self) -> Result<Vec<(u32, NodeId)>, StoreError> {
        let rows: Vec<(i32, Vec<u8>)> =
            self.conn.query("SELECT id, node_id FROM concord_origins")?;
        rows.into_iter()
            .map(|(id, bytes)| Ok((id as u32, node_id(&bytes)?)))
            .collect()
    }

    fn tables(&mut self) -> Result<Vec<TableColumns>, StoreError> {
        let tables: Vec<(i32, String)> = self.conn.query("SELECT id, name FROM concord_tables")?;
        let mut out = Vec::with_capacity(tables.len());
        for (id, name) in tables {
            let columns: Vec<String> = self.conn.exec(
                "SELECT name FROM concord_columns WHERE tbl = ? ORDER BY position",
                (id,),
            )?;
            out.push(TableColumns {
                id: i64::from(id),
                name,
                columns,
            });
        }
        Ok(out)
    }

    fn held(&mut self) -> Result<VersionVector, StoreError> {
        let mut held = VersionVector::new();
        let rows: Vec<(Vec<u8>, i64)> = self
            .conn
            .query("SELECT node_id, seq FROM concord_origins WHERE seq > 0")?;
        for (bytes, seq) in rows {
            held.set(node_id(&bytes)?, seq as u64);
        }
        Ok(held)
    }

    fn last_position(&mut self) -> Result<i64, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_first("SELECT coalesce(max(pos), 0) FROM concord_log")?;
        Ok(max.unwrap_or(0))
    }

    fn position_of(&mut self, origin: u32, seq: u64) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.exec_first(
            "SELECT pos FROM concord_log WHERE origin = ? AND seq = ?",
            (origin as i32, seq as i64),
        )?)
    }

    fn scan(
        &mut self,
        after: i64,
        limit: usize,
        visit: &mut dyn FnMut(RawEntry<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        type Entry = (i64, i32, i64, i64, i32, Vec<u8>, i64, Vec<u8>, bool);
        let rows = self.conn.exec_iter(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, body, txn_end FROM concord_log
             WHERE pos > ? ORDER BY pos LIMIT ?",
            (after, limit as i64),
        )?;
        for row in rows {
            let (pos, origin, seq, hlc, table, key, cl, body, txn_end): Entry =
                mysql::from_row_opt(row?).map_err(|e| StoreError::Corrupt {
                    table: "concord_log",
                    detail: e.to_string(),
                })?;
            let entry = RawEntry {
                pos,
                origin: origin as u32,
                seq: seq as u64,
                hlc: hlc as u64,
                table: i64::from(table),
                key: &key,
                causal_length: cl as u64,
                body: &body,
                txn_end,
            };
            if !visit(entry)? {
                break;
            }
        }
        Ok(())
    }
}
