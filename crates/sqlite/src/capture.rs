//! Folding captured writes into the change log.
//!
//! The triggers leave one `__concord_pending` row per written row: the key, the
//! operation, a bitmask of changed columns, the column count the trigger was built for,
//! and the wall time. Capture turns each into a [`concord_core::Change`] in the log: it
//! reads the current values from the table, asks [`concord_core::merge::local_write`] for
//! the new causal length and replaced versions, and stamps a sequence number and HLC.
//!
//! All of it runs in one write transaction, so it sees only whole source transactions,
//! and the pending rows, the log entries, the row clocks and the sequence advance commit
//! together. Pending rows are read a page at a time, so memory stays flat however many
//! writes accumulated.

use concord_core::merge::{LocalOp, local_write};
use concord_core::{PrimaryKey, Value, Version};
use rusqlite::{OptionalExtension, params_from_iter};

use crate::codec;
use crate::schema::{COLUMNS_PER_MASK, OP_DELETE, OP_EVICT, OP_INSERT, OP_REKEY, OP_UPDATE};
use crate::store::{LoadClockError, SqliteStore};
use concord_store::StoreError;
use concord_store::engine::LogEntry;
use concord_store::format;
use concord_store::local_log_body;

const PAGE: i64 = 2_000;

struct Pending {
    id: i64,
    table: i64,
    op: i64,
    ncols: i64,
    at: i64,
    masks: Vec<i64>,
    key: Vec<Value>,
    /// The key as SQLite holds it, to find the row by: text that is not UTF-8 is a
    /// blob in `key` ([`codec::from_sql`]) and would match no row.
    stored_key: Vec<codec::Stored>,
    /// For a key change: the old key.
    old_key: Vec<Value>,
}

impl SqliteStore {
    /// Folds every captured local write into the change log, in one transaction.
    /// Returns how many changes were logged.
    pub fn capture(&mut self) -> Result<u64, StoreError> {
        self.ensure_fresh()?;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.capture_in_txn() {
            Ok(n) => {
                if let Err(e) = self.conn.execute_batch("COMMIT") {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    self.stale = true;
                    return Err(e.into());
                }
                Ok(n)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                if self.reload().is_err() {
                    self.stale = true;
                }
                Err(e)
            }
        }
    }

    /// The body of [`SqliteStore::capture`], inside the caller's write transaction.
    pub(crate) fn capture_in_txn(&mut self) -> Result<u64, StoreError> {
        self.refresh_schema()?;
        let mut after = 0i64;
        let mut logged = 0u64;
        let mut seq = self.origins.held.get(&self.node);
        let mut last_pos = None;
        loop {
            let page = self.read_pending(after)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for pending in &page {
                // A key change is a delete of the old key, then an insert of the new.
                let steps: Vec<(i64, &[Value])> = if pending.op == OP_REKEY {
                    vec![(OP_DELETE, &pending.old_key), (OP_INSERT, &pending.key)]
                } else {
                    vec![(pending.op, &pending.key)]
                };
                for (op, key) in steps {
                    if let Some(pos) = self.capture_one(pending, op, key, seq + 1)? {
                        seq += 1;
                        logged += 1;
                        last_pos = Some(pos);
                    }
                }
            }
        }
        if after > 0 {
            self.conn
                .prepare_cached("DELETE FROM __concord_pending WHERE id <= ?1")?
                .execute([after])?;
        }
        if let Some(pos) = last_pos {
            self.conn
                .prepare_cached("UPDATE __concord_log SET txn_end = 1 WHERE pos = ?1")?
                .execute([pos])?;
            self.origins.held.set(self.node, seq);
            self.save_progress(self.local_index, seq)?;
        }
        Ok(logged)
    }

    fn read_pending(&self, after: i64) -> Result<Vec<Pending>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT * FROM __concord_pending WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let mask_cols: Vec<usize> = (0..)
            .map_while(|i| names.iter().position(|n| *n == format!("m{i}")))
            .collect();
        let key_cols: Vec<usize> = (0..)
            .map_while(|i| names.iter().position(|n| *n == format!("k{i}")))
            .collect();
        let old_key_cols: Vec<usize> = (0..)
            .map_while(|i| names.iter().position(|n| *n == format!("o{i}")))
            .collect();
        let mut rows = stmt.query(rusqlite::params![after, PAGE])?;
        let mut page = Vec::new();
        while let Some(r) = rows.next()? {
            let table: i64 = r.get(1)?;
            let op: i64 = r.get(2)?;
            let key_len = self.table_by_id(table).map_or(0, |t| t.key_columns.len());
            let read_key = |cols: &[usize]| -> Result<Vec<Value>, StoreError> {
                cols.iter()
                    .take(key_len)
                    .map(|&c| {
                        codec::from_sql(r.get_ref(c)?).map_err(|detail| StoreError::Corrupt {
                            table: "__concord_pending",
                            detail,
                        })
                    })
                    .collect()
            };
            let key = read_key(&key_cols)?;
            let stored_key = key_cols
                .iter()
                .take(key_len)
                .map(|&c| r.get_ref(c).map(codec::Stored::from))
                .collect::<Result<_, _>>()?;
            let old_key = if op == OP_REKEY {
                read_key(&old_key_cols)?
            } else {
                Vec::new()
            };
            page.push(Pending {
                id: r.get(0)?,
                table,
                op,
                ncols: r.get(3)?,
                at: r.get(4)?,
                masks: mask_cols
                    .iter()
                    .map(|&c| r.get::<_, Option<i64>>(c).map(Option::unwrap_or_default))
                    .collect::<Result<_, _>>()?,
                key,
                stored_key,
                old_key,
            });
        }
        Ok(page)
    }

    /// Logs one pending write as change number `seq`; returns its log position, or
    /// `None` if the write left nothing to send.
    fn capture_one(
        &mut self,
        pending: &Pending,
        op: i64,
        key_values: &[Value],
        seq: u64,
    ) -> Result<Option<i64>, StoreError> {
        let Some(table) = self.table_by_id(pending.table).cloned() else {
            // The table was untracked or can no longer be read; its writes are dropped.
            return Ok(None);
        };
        let capture_error = |detail: String, key: &PrimaryKey| StoreError::Capture {
            table: table.name.clone(),
            key: key.to_string(),
            detail,
        };
        let key = PrimaryKey::encode(key_values).map_err(|e| StoreError::Capture {
            table: table.name.clone(),
            key: format!("{key_values:?}"),
            detail: e.to_string(),
        })?;
        let ncols = table.columns.len();
        let values = if op == OP_DELETE {
            None
        } else {
            let mut stmt = self.conn.prepare_cached(&table.select_sql)?;
            // Every step that reads the row reads the pending row's own (new) key.
            let row = stmt
                .query_row(params_from_iter(pending.stored_key.iter()), |r| {
                    (0..ncols)
                        .map(|i| Ok(codec::from_sql(r.get_ref(i)?)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .optional()?;
            match row {
                // A row that a REPLACE collided with but that still exists was not removed.
                Some(_) if op == OP_EVICT => return Ok(None),
                // It was removed without a delete trigger: log the delete.
                None if op == OP_EVICT => None,
                // The row is gone: a later pending delete records that.
                None => return Ok(None),
                Some(values) => Some(
                    values
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|d| capture_error(d, &key))?,
                ),
            }
        };
        let changed: Vec<usize>;
        let op = match op {
            OP_INSERT => LocalOp::Insert,
            OP_DELETE | OP_EVICT => LocalOp::Delete,
            OP_UPDATE if pending.ncols as usize != ncols => LocalOp::Insert,
            OP_UPDATE => {
                changed = (0..ncols)
                    .filter(|&i| {
                        let mask = pending
                            .masks
                            .get(i / COLUMNS_PER_MASK)
                            .copied()
                            .unwrap_or(-1);
                        mask & (1i64 << (i % COLUMNS_PER_MASK)) != 0
                    })
                    .collect();
                if changed.is_empty() {
                    return Ok(None);
                }
                LocalOp::Update(&changed)
            }
            other => {
                return Err(capture_error(
                    format!("unknown pending operation {other}"),
                    &key,
                ));
            }
        };
        let mut clock = self.load_clock(table.id, &key).map_err(|e| match e {
            LoadClockError::Sqlite(e) => e.into(),
            LoadClockError::Corrupt(d) => capture_error(format!("corrupt row metadata: {d}"), &key),
        })?;
        // A delete of a row that is not alive here (never seen, or already deleted) is
        // no change: a row inserted and deleted within one source transaction must not
        // log a delete that would win over another replica's real insert of the key.
        if matches!(op, LocalOp::Delete) && !clock.causal_length.is_alive() {
            return Ok(None);
        }
        let existed = clock.causal_length.0 > 0;
        let hlc = self.clock.tick(pending.at.max(0) as u64);
        let version = Version {
            hlc,
            origin: self.node,
        };
        let write = local_write(&mut clock, op, version, ncols);
        let mut values = values.unwrap_or_default();
        let body = local_log_body(
            &write,
            version,
            |index| {
                values
                    .get_mut(index)
                    .map(std::mem::take)
                    .unwrap_or_default()
            },
            &mut |node| self.origin_index(node),
        )?;
        // Only the encoding is needed from here: drop the values before SQLite writes.
        let encoded = format::encode(&body);
        drop(body);
        let pos = self.insert_log(&LogEntry {
            origin: self.local_index,
            seq,
            hlc: hlc.as_u64(),
            table: table.id,
            key: key.as_bytes(),
            causal_length: write.causal_length.0,
            body: encoded,
            txn_end: false,
        })?;
        self.save_clock(table.id, &key, &clock, existed)?;
        Ok(Some(pos))
    }
}
