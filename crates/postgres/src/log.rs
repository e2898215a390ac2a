//! PostgreSQL's part in reading the change log: [`LogSource`] over its own connection.
//!
//! Decoding and paging are [`concord_store::LogReader`]'s, the same for every store.
//! Positions come from a sequence allocated under Concord's lock, so they are also
//! commit order: a reader never finds a smaller position appear after it read a larger
//! one. Rows are streamed from the server (`query_raw`), never collected.

use concord_core::{NodeId, VersionVector};
use postgres::fallible_iterator::FallibleIterator;

use crate::store::{Connection, connect};
use concord_store::{LogSource, RawEntry, StoreError, TableColumns};

/// PostgreSQL's change log, read through its own connection.
pub(crate) struct PgLog {
    client: Connection,
}

/// Opens a reader on the change log of the database at `url`.
pub(crate) fn open_log(url: &str) -> Result<concord_store::LogReader<PgLog>, StoreError> {
    concord_store::LogReader::new(PgLog {
        client: connect(url)?,
    })
}

fn node_id(bytes: &[u8]) -> Result<NodeId, StoreError> {
    NodeId::try_from(bytes).map_err(|e| StoreError::Corrupt {
        table: "concord.origins",
        detail: e.to_string(),
    })
}

impl LogSource for PgLog {
    fn log_table(&self) -> &'static str {
        "concord.log"
    }

    fn origins(&mut self) -> Result<Vec<(u32, NodeId)>, StoreError> {
        self.client
            .query("SELECT id, node_id FROM concord.origins", &[])?
            .into_iter()
            .map(|row| Ok((row.get::<_, i32>(0) as u32, node_id(row.get(1))?)))
            .collect()
    }

    fn tables(&mut self) -> Result<Vec<TableColumns>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT t.id, CASE WHEN t.schema_name = 'public' THEN t.name
                                   ELSE t.schema_name || '.' || t.name END,
                        coalesce(array_agg(c.name ORDER BY c.position)
                                 FILTER (WHERE c.name IS NOT NULL), '{}')
                 FROM concord.tables t LEFT JOIN concord.columns c ON c.tbl = t.id
                 GROUP BY t.id",
                &[],
            )?
            .into_iter()
            .map(|row| TableColumns {
                id: i64::from(row.get::<_, i32>(0)),
                name: row.get(1),
                columns: row.get(2),
            })
            .collect())
    }

    fn held(&mut self) -> Result<VersionVector, StoreError> {
        let mut held = VersionVector::new();
        for row in self.client.query(
            "SELECT node_id, seq FROM concord.origins WHERE seq > 0",
            &[],
        )? {
            held.set(node_id(row.get(0))?, row.get::<_, i64>(1) as u64);
        }
        Ok(held)
    }

    fn last_position(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .client
            .query_one("SELECT coalesce(max(pos), 0) FROM concord.log", &[])?
            .get(0))
    }

    fn position_of(&mut self, origin: u32, seq: u64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .client
            .query_opt(
                "SELECT pos FROM concord.log WHERE origin = $1 AND seq = $2",
                &[&(origin as i32), &(seq as i64)],
            )?
            .map(|row| row.get(0)))
    }

    fn scan(
        &mut self,
        after: i64,
        limit: usize,
        visit: &mut dyn FnMut(RawEntry<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let limit = limit as i64;
        let mut rows = self.client.query_raw(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, body, txn_end FROM concord.log
             WHERE pos > $1 ORDER BY pos LIMIT $2",
            [&after, &limit],
        )?;
        while let Some(r) = rows.next()? {
            let entry = RawEntry {
                pos: r.get(0),
                origin: r.get::<_, i32>(1) as u32,
                seq: r.get::<_, i64>(2) as u64,
                hlc: r.get::<_, i64>(3) as u64,
                table: i64::from(r.get::<_, i32>(4)),
                key: r.get(5),
                causal_length: r.get::<_, i64>(6) as u64,
                body: r.get(7),
                txn_end: r.get(8),
            };
            if !visit(entry)? {
                break;
            }
        }
        Ok(())
    }
}
