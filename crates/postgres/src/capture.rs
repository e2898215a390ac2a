//! Folding captured writes into the change log.
//!
//! The log reader ([`crate::logical`]) or the trigger leaves one `concord.pending` row
//! per written row: the writing
//! transaction's id (`xid`), the operation, the changed columns, the key and the values
//! the transaction wrote, as canonical text. Capture turns each into a
//! [`concord_core::Change`] in the log: it parses the text back to typed values (in SQL,
//! with the column's own type, so PostgreSQL's parser decides), asks
//! [`concord_core::merge::local_write`] for the new causal length and replaced versions,
//! and stamps a sequence number and HLC.
//!
//! ## Whole source transactions, in commit order
//! Capture reads pending rows through one cursor, so it sees exactly the transactions
//! that had committed when the cursor opened, each one whole (MVCC never shows part of a
//! committed transaction, nor any of an uncommitted one); their rows are deleted by id,
//! so a transaction that commits meanwhile stays pending for the next capture. Rows are
//! grouped by `xid`, and the last change logged for each source transaction carries
//! `last_in_txn`, so every destination applies it whole.
//!
//! ## Bounded steps, so the stream overlaps
//! The node's loop ([`crate::PgStore`]'s `Store::capture_ready`, with the log reader
//! running) folds at most [`STEP_ROWS`] pending rows per transaction and commits: what
//! is committed can be sent, and applied by a peer, while the rest of a large source
//! transaction is still being folded, instead of nothing moving until all of it is in
//! the log. A source transaction folded over several steps is marked `last_in_txn` only
//! at its last change, so every destination still applies it whole (a receiver streams
//! it into one transaction); a crash between steps leaves its remaining rows pending,
//! and the next step goes on from them. Only with the log reader: staged transactions
//! get their ids in commit order, whole, so the rows left of a transaction come before
//! any transaction staged later. (The triggers' ids are allocated at write time; a
//! transaction committing between two steps could sort before the rest of one being
//! folded, so trigger capture folds everything in one step, as before.)
//!
//! The log reader stages transactions in commit order, so ids follow it. With triggers,
//! PostgreSQL does not expose commit order without `track_commit_timestamp`, so
//! transactions are ordered by the id of their *last* pending row (ids come from a
//! sequence, allocated at write time). That order agrees with every dependency that
//! matters for replication: a transaction that writes a row another one wrote must wait
//! for that one's commit (row lock) before writing, and one that references a row
//! another inserted must wait for it too, so its last write comes after all of the
//! other's writes. Two transactions with no such dependency may be logged in either
//! order; both orders are valid histories. A long transaction that commits after a
//! capture simply appears in a later one, after transactions that committed before it.

use std::collections::HashMap;

use concord_core::merge::{LocalOp, local_write};
use concord_core::{PrimaryKey, Value, Version};

use crate::schema::{OP_DELETE, OP_INSERT, OP_REKEY, OP_UPDATE, TableInfo};
use crate::store::{LoadClockError, PgStore};
use crate::types::{Raw, decode};
use concord_store::StoreError;
use concord_store::format::{self as codec};
use concord_store::local_log_body;
use concord_store::meta_batch::{LogRow, MetaBatch};

const PAGE: usize = 2_000;
/// Pending rows one bounded step folds at most (whole pages).
pub(crate) const STEP_ROWS: usize = 5 * PAGE;

struct Pending {
    id: i64,
    table: i32,
    op: i16,
    cols: Option<Vec<i32>>,
    at: i64,
    /// Which source transaction the row belongs to.
    group: i64,
    /// Whether it is the last row of its source transaction.
    ends: bool,
}

/// A pending row's text parsed back to values.
#[derive(Default)]
struct Decoded {
    key: Vec<Value>,
    old_key: Vec<Value>,
    values: Vec<Value>,
}

impl PgStore {
    /// Folds every captured local write of committed transactions into the change log,
    /// in one transaction. Returns how many changes were logged.
    pub fn capture(&mut self) -> Result<u64, StoreError> {
        self.ensure_fresh()?;
        if let Some(logical) = self.logical.clone()
            && self.stream.is_none()
        {
            self.mark_if_far_behind(&logical)?;
        }
        let started_at = self.wal_position()?;
        let staged = self.stream.as_ref().map(|s| s.staged_transactions());
        self.begin_locked()?;
        match self.fold_pending(self.fold_step) {
            Ok((n, complete)) => {
                if let Err(e) = self.client.batch_execute("COMMIT") {
                    let _ = self.client.batch_execute("ROLLBACK");
                    self.stale = true;
                    return Err(e.into());
                }
                // With rows left for the next step, the cheap check must still say
                // that writes are pending.
                if complete {
                    self.wal_seen = Some(started_at);
                    if let Some(staged) = staged {
                        self.staged_seen = staged;
                    }
                }
                Ok(n)
            }
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK");
                if self.reload().is_err() {
                    self.stale = true;
                }
                Err(e)
            }
        }
    }

    /// The body of [`PgStore::capture`], inside the caller's locked transaction: folds
    /// everything pending.
    pub(crate) fn capture_in_txn(&mut self) -> Result<u64, StoreError> {
        Ok(self.fold_pending(None)?.0)
    }

    /// Folds pending rows, at most `step` of them (whole pages) when set; returns how
    /// many changes were logged and whether nothing is left pending.
    fn fold_pending(&mut self, step: Option<usize>) -> Result<(u64, bool), StoreError> {
        self.follow_schema()?;
        if let Some(logical) = self.logical.clone()
            && !self.skip_barrier
        {
            self.stage_local_writes(&logical)?;
        }
        for backfill in std::mem::take(&mut self.deferred_backfills) {
            self.client.batch_execute(&backfill)?;
        }
        let order = if self.logical.is_some() {
            // Staged whole and in commit order: id order is transaction order, and a
            // row ends its transaction when the next row is another's. Read along the
            // primary key, stopping after a step: no sort of every pending row per
            // step (which made a step cost as much as the whole backlog).
            format!(
                "SELECT p.id, p.tbl, p.op, p.cols, p.at, p.xid::text::int8,
                        lead(p.xid) OVER (ORDER BY p.id) IS DISTINCT FROM p.xid
                 FROM concord.pending p ORDER BY p.id{}",
                step.map(|n| format!(" LIMIT {n}")).unwrap_or_default()
            )
        } else {
            "SELECT p.id, p.tbl, p.op, p.cols, p.at, g.last, p.id = g.last
             FROM concord.pending p
             JOIN (SELECT xid, max(id) AS last FROM concord.pending GROUP BY xid) g
               ON g.xid = p.xid
             ORDER BY g.last, p.id"
                .to_owned()
        };
        self.client.batch_execute(&format!(
            "DECLARE concord_pending NO SCROLL CURSOR FOR {order}"
        ))?;
        let mut logged = 0u64;
        let mut seq = self.origins.held.get(&self.node);
        let mut group = -1i64;
        // Sequence number of the last change logged for the current source transaction:
        // an earlier step's last change if it left that transaction unfinished.
        let mut group_last_seq: Option<u64> = if self.logical.is_some() {
            self.open_transaction_end(seq)?
        } else {
            None
        };
        let mut folded = 0usize;
        let mut complete = true;
        let mut group_marked = false;
        // Clocks and log entries of one page, written when the page is done.
        let mut batch = MetaBatch::default();
        let fetch = format!("FETCH {PAGE} FROM concord_pending");
        loop {
            let page: Vec<Pending> = self
                .client
                .query(&fetch, &[])?
                .into_iter()
                .map(|r| Pending {
                    id: r.get(0),
                    table: r.get(1),
                    op: r.get(2),
                    cols: r.get(3),
                    at: r.get(4),
                    group: r.get(5),
                    ends: r.get(6),
                })
                .collect();
            if page.is_empty() {
                break;
            }
            let mut decoded = self.decode_page(&page)?;
            // The page's row clocks, in one query per table. A key that cannot be
            // encoded is left out here; `capture_one` reports it.
            let keys: Vec<(i32, PrimaryKey)> = page
                .iter()
                .filter_map(|p| Some((p, decoded.get(&p.id)?)))
                .flat_map(|(p, d)| {
                    let old = (p.op == OP_REKEY).then_some(&d.old_key);
                    [Some(&d.key), old]
                        .into_iter()
                        .flatten()
                        .filter_map(move |k| Some((p.table, PrimaryKey::encode(k).ok()?)))
                })
                .collect();
            self.prefetch_clocks(&mut batch, keys.iter().map(|(t, k)| (*t, k.as_bytes())))?;
            drop(keys);
            for pending in &page {
                if pending.group != group {
                    // The first group of a step may go on from the last one (above).
                    if group != -1 {
                        group_last_seq = None;
                    }
                    group = pending.group;
                    group_marked = false;
                }
                let is_last_row = pending.ends;
                let Some(table) = self.table_by_id(pending.table).cloned() else {
                    // The table was untracked or can no longer be read; its writes are
                    // dropped.
                    continue;
                };
                let mut row = decoded.remove(&pending.id).unwrap_or_default();
                // The values are moved into the log body, not copied (only an insert or
                // update takes them; a key change's delete step takes none).
                let mut values = std::mem::take(&mut row.values);
                let steps: Vec<(i16, &[Value])> = if pending.op == OP_REKEY {
                    // A key change is a delete of the old key, then an insert of the new.
                    vec![(OP_DELETE, &row.old_key), (OP_INSERT, &row.key)]
                } else {
                    vec![(pending.op, &row.key)]
                };
                let count = steps.len();
                for (i, (op, key)) in steps.into_iter().enumerate() {
                    let end = is_last_row && i + 1 == count;
                    if self.capture_one(
                        &mut batch,
                        &table,
                        pending,
                        op,
                        key,
                        &mut values,
                        seq + 1,
                        end,
                    )? {
                        seq += 1;
                        logged += 1;
                        group_last_seq = Some(seq);
                        group_marked = end;
                    }
                }
                if is_last_row
                    && !group_marked
                    && let Some(last) = group_last_seq
                {
                    match batch.log_entry_mut(self.local_index as u32, last) {
                        Some(entry) => entry.txn_end = true,
                        None => {
                            // Logged in an earlier page, already written.
                            let stmt = self.statement(
                                "UPDATE concord.log SET txn_end = true
                                     WHERE origin = $1 AND seq = $2",
                            )?;
                            self.client
                                .execute(&stmt, &[&self.local_index, &(last as i64)])?;
                        }
                    }
                    group_marked = true;
                }
            }
            self.flush_meta(&mut batch)?;
            let ids: Vec<i64> = page.iter().map(|p| p.id).collect();
            let stmt = self.statement(
                "DELETE FROM concord.pending p USING unnest($1::int8[]) k(id) WHERE p.id = k.id",
            )?;
            self.client.execute(&stmt, &[&ids])?;
            folded += page.len();
            if step.is_some_and(|step| folded >= step) {
                complete = page.len() < PAGE;
                break;
            }
        }
        self.client.batch_execute("CLOSE concord_pending")?;
        if logged > 0 {
            self.origins.held.set(self.node, seq);
            self.save_progress(self.local_index, seq)?;
        }
        Ok((logged, complete))
    }

    /// `Some(seq)` when this origin's last logged change, `seq`, does not end its
    /// source transaction: an earlier step left that transaction unfinished, and its
    /// rows come first now.
    fn open_transaction_end(&mut self, seq: u64) -> Result<Option<u64>, StoreError> {
        if seq == 0 {
            return Ok(None);
        }
        let stmt =
            self.statement("SELECT txn_end FROM concord.log WHERE origin = $1 AND seq = $2")?;
        let open = self
            .client
            .query_opt(&stmt, &[&self.local_index, &(seq as i64)])?
            .is_some_and(|row| !row.get::<_, bool>(0));
        Ok(open.then_some(seq))
    }

    /// Parses the text of a page's pending rows back to values, one query per table.
    fn decode_page(&mut self, page: &[Pending]) -> Result<HashMap<i64, Decoded>, StoreError> {
        let mut by_table: HashMap<i32, Vec<i64>> = HashMap::new();
        for p in page {
            by_table.entry(p.table).or_default().push(p.id);
        }
        let mut out = HashMap::with_capacity(page.len());
        for (table_id, ids) in by_table {
            let Some(table) = self.table_by_id(table_id).cloned() else {
                continue;
            };
            let stmt = self.statement(&table.decode_pending_sql())?;
            let nk = table.key_columns.len();
            for row in self.client.query(&stmt, &[&ids])? {
                let id: i64 = row.get(0);
                let corrupt = |column: &str, detail: String| StoreError::Capture {
                    table: table.name.clone(),
                    key: format!("(pending write {id})"),
                    detail: format!("column {column:?}: {detail}"),
                };
                let read = |index: usize, position: usize| -> Result<Value, StoreError> {
                    let column = &table.columns[position];
                    let raw: Raw<'_> = row
                        .try_get(index)
                        .map_err(|e| corrupt(&column.name, e.to_string()))?;
                    decode(column.kind, raw.0).map_err(|d| corrupt(&column.name, d))
                };
                let mut d = Decoded::default();
                for (i, &p) in table.key_columns.iter().enumerate() {
                    d.key.push(read(1 + i, p)?);
                    d.old_key.push(read(1 + nk + i, p)?);
                }
                for p in 0..table.columns.len() {
                    d.values.push(read(1 + 2 * nk + p, p)?);
                }
                out.insert(id, d);
            }
        }
        Ok(out)
    }

    /// Logs one pending write as change number `seq` (into `batch`); returns whether
    /// it logged anything (an update that changed no column leaves nothing to send).
    #[allow(clippy::too_many_arguments)]
    fn capture_one(
        &mut self,
        batch: &mut MetaBatch,
        table: &TableInfo,
        pending: &Pending,
        op: i16,
        key_values: &[Value],
        values: &mut [Value],
        seq: u64,
        txn_end: bool,
    ) -> Result<bool, StoreError> {
        let capture_error = |detail: String, key: &str| StoreError::Capture {
            table: table.name.clone(),
            key: key.to_owned(),
            detail,
        };
        let key = PrimaryKey::encode(key_values)
            .map_err(|e| capture_error(e.to_string(), &format!("{key_values:?}")))?;
        let ncols = table.columns.len();
        let changed: Vec<usize>;
        let local_op = match op {
            OP_INSERT => LocalOp::Insert,
            OP_DELETE => LocalOp::Delete,
            OP_UPDATE => {
                changed = pending
                    .cols
                    .iter()
                    .flatten()
                    .filter_map(|&c| usize::try_from(c).ok())
                    .filter(|&c| c < ncols)
                    .collect();
                if changed.is_empty() {
                    return Ok(false);
                }
                LocalOp::Update(&changed)
            }
            other => {
                return Err(capture_error(
                    format!("unknown pending operation {other}"),
                    &key.to_string(),
                ));
            }
        };
        if local_op != LocalOp::Delete && values.len() != ncols {
            return Err(capture_error(
                "the pending write carries no values".into(),
                &key.to_string(),
            ));
        }
        let mut clock = self
            .batched_clock(batch, table.id, &key)
            .map_err(|e| match e {
                LoadClockError::Postgres(e) => e.into(),
                LoadClockError::Corrupt(d) => {
                    capture_error(format!("corrupt row metadata: {d}"), &key.to_string())
                }
            })?;
        let hlc = self.clock.tick(pending.at.max(0) as u64);
        let version = Version {
            hlc,
            origin: self.node,
        };
        let write = local_write(&mut clock, local_op, version, ncols);
        let body = local_log_body(
            &write,
            version,
            |index| {
                values
                    .get_mut(index)
                    .map(std::mem::take)
                    .unwrap_or_default()
            },
            &mut |node| self.origin_index(node).map(|i| i as u32),
        )?;
        batch.log(LogRow {
            origin: self.local_index as u32,
            seq,
            hlc: hlc.as_u64(),
            table: i64::from(table.id),
            pk: key.as_bytes().to_vec(),
            cl: write.causal_length.0,
            body: codec::encode(&body),
            txn_end,
        });
        batch.set_clock(i64::from(table.id), &key, clock);
        Ok(true)
    }
}
