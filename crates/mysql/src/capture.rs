//! Folding captured writes into the change log.
//!
//! The triggers leave one `concord_pending` row per written row: the operation, the
//! changed columns, the key and the values the transaction wrote, as canonical text,
//! and (system versioning's `ROW START`) the id of the writing transaction. Capture
//! reads them in one consistent snapshot, which shows exactly the transactions that had
//! committed when it was taken, each one whole; it groups rows by transaction, orders
//! the groups by `mysql.transaction_registry.commit_id` (MariaDB's commit order), and
//! turns each row into a [`concord_core::Change`] with
//! [`concord_core::merge::local_write`]. The last change of each source transaction
//! carries `last_in_txn`. Rows are deleted by id, so a transaction committing meanwhile
//! stays pending for the next capture; deleted rows are then purged from the table's
//! history (`DELETE HISTORY`).
//!
//! With log-based capture the rows come from the binary-log reader ([`crate::binlog`])
//! instead of triggers, one reader transaction per source transaction, so the same
//! grouping and order hold. [`MyStore::stage_local_writes`] is the barrier that makes a
//! capture (or an apply) see every local write committed before it.
//!
//! Limit: one capture reads every pending row into memory (a page-wise read would need
//! a second connection sharing the snapshot); capture often, as the node does.

use concord_core::merge::{LocalOp, local_write};
use concord_core::{PrimaryKey, Value, Version};
use mysql::prelude::Queryable;

use crate::schema::{OP_DELETE, OP_INSERT, OP_REKEY, OP_UPDATE, TableInfo};
use crate::store::{LoadClockError, MyStore};
use crate::types::{BIG_VALUE, parse, parse_read, to_param};
use concord_store::StoreError;
use concord_store::format::{self as codec};
use concord_store::local_log_body;

type PendingRow = (
    i64,
    i32,
    i16,
    Option<String>,
    i64,
    u64,
    String,
    Option<String>,
    Option<String>,
);

impl MyStore {
    /// Folds every captured local write of committed transactions into the change log,
    /// in one transaction. Returns how many changes were logged.
    pub fn capture(&mut self) -> Result<u64, StoreError> {
        self.ensure_fresh()?;
        let staged = self.reader.as_ref().map(|r| r.staged_transactions());
        self.begin_locked()?;
        match self.capture_in_txn() {
            Ok(n) => {
                if let Err(e) = self.commit() {
                    self.stale = true;
                    return Err(e.into());
                }
                if let Some(staged) = staged {
                    self.staged_seen = staged;
                }
                Ok(n)
            }
            Err(e) => {
                self.rollback();
                if self.reload().is_err() {
                    self.stale = true;
                }
                Err(e)
            }
        }
    }

    /// The body of [`MyStore::capture`], inside the caller's locked transaction.
    pub(crate) fn capture_in_txn(&mut self) -> Result<u64, StoreError> {
        let rows: Vec<PendingRow> = self.conn.query(
            "SELECT p.id, p.tbl, p.op, p.cols, p.at, p.trx, p.k, p.o, p.v
             FROM concord_pending p
             LEFT JOIN mysql.transaction_registry r ON r.transaction_id = p.trx
             ORDER BY COALESCE(r.commit_id, p.trx), p.trx, p.id",
        )?;
        let mut logged = 0u64;
        let mut seq = self.origins.held.get(&self.node);
        let mut group_last_pos: Option<i64> = None;
        let mut group_marked = false;
        for (i, row) in rows.iter().enumerate() {
            let (id, tbl, op, cols, at, trx, k, o, v) = row;
            let is_last_row = rows.get(i + 1).is_none_or(|next| next.5 != *trx);
            let Some(table) = self.table_by_id(*tbl).cloned() else {
                continue;
            };
            let capture_error = |detail: String| StoreError::Capture {
                table: table.name.clone(),
                key: format!("(pending write {id})"),
                detail,
            };
            let key = decode_values(&table, k, true).map_err(capture_error)?;
            let old_key = match o {
                Some(o) => decode_values(&table, o, true).map_err(capture_error)?,
                None => Vec::new(),
            };
            let values = match v {
                Some(v) => {
                    let mut values = decode_values(&table, v, false).map_err(capture_error)?;
                    let big = big_positions(&table, v);
                    if !big.is_empty() {
                        self.big_values(&table, &key, &big, &mut values)
                            .map_err(capture_error)?;
                    }
                    values
                }
                None => Vec::new(),
            };
            let steps: Vec<(i16, &[Value])> = if *op == OP_REKEY {
                vec![(OP_DELETE, &old_key), (OP_INSERT, &key)]
            } else {
                vec![(*op, &key)]
            };
            let count = steps.len();
            for (s, (op, key)) in steps.into_iter().enumerate() {
                let end = is_last_row && s + 1 == count;
                if let Some(pos) =
                    self.capture_one(&table, op, cols.as_deref(), *at, key, &values, seq + 1, end)?
                {
                    seq += 1;
                    logged += 1;
                    group_last_pos = Some(pos);
                    group_marked = end;
                }
            }
            if is_last_row {
                if !group_marked && let Some(pos) = group_last_pos {
                    self.conn
                        .exec_drop("UPDATE concord_log SET txn_end = 1 WHERE pos = ?", (pos,))?;
                }
                group_last_pos = None;
                group_marked = false;
            }
        }
        // One exact primary-key lookup per row: the versioned table's key is
        // (id, trx_end), and a range over `id` alone would take a next-key lock on the
        // row of a transaction still running and wait for it.
        self.conn.exec_batch(
            "DELETE FROM concord_pending WHERE id = ? AND trx_end = 18446744073709551615",
            rows.iter().map(|r| (r.0,)),
        )?;
        if !rows.is_empty() {
            // Best effort: the purge scans the table and would wait on rows of
            // transactions still running; a lock-wait timeout only ends the statement,
            // and a later capture purges what is left.
            self.conn
                .query_drop("SET SESSION innodb_lock_wait_timeout = 1")?;
            let purged = self.conn.query_drop("DELETE HISTORY FROM concord_pending");
            self.conn
                .query_drop("SET SESSION innodb_lock_wait_timeout = DEFAULT")?;
            if let Err(e) = purged {
                tracing::debug!(error = %e, "pending history not purged this time");
            }
        }
        if logged > 0 {
            self.origins.held.set(self.node, seq);
            self.save_progress(self.local_index, seq)?;
        }
        if self.apply_guard.is_some() {
            // What the apply logs from here on are the rows it writes.
            let last: Option<i64> = self
                .conn
                .query_first("SELECT COALESCE(MAX(pos), 0) FROM concord_log")?;
            if let Some(guard) = self.apply_guard.as_mut() {
                guard.log_floor = last.unwrap_or(0);
            }
        }
        Ok(logged)
    }

    /// Logs one pending write as change number `seq`; returns its log position, or
    /// `None` if the write left nothing to send.
    #[allow(clippy::too_many_arguments)]
    fn capture_one(
        &mut self,
        table: &TableInfo,
        op: i16,
        cols: Option<&str>,
        at: i64,
        key_values: &[Value],
        values: &[Value],
        seq: u64,
        txn_end: bool,
    ) -> Result<Option<i64>, StoreError> {
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
                changed = cols
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|c| c.parse::<usize>().ok())
                    .filter(|&c| c < ncols)
                    .collect();
                if changed.is_empty() {
                    return Ok(None);
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
        let mut clock = self.load_clock(table.id, &key).map_err(|e| match e {
            LoadClockError::MySql(e) => e.into(),
            LoadClockError::Corrupt(d) => {
                capture_error(format!("corrupt row metadata: {d}"), &key.to_string())
            }
        })?;
        let hlc = self.clock.tick(at.max(0) as u64);
        let version = Version {
            hlc,
            origin: self.node,
        };
        let write = local_write(&mut clock, local_op, version, ncols);
        let body = local_log_body(
            &write,
            version,
            |index| values.get(index).cloned().unwrap_or_default(),
            &mut |node| self.origin_index(node).map(|i| i as u32),
        )?;
        self.conn.exec_drop(
            "INSERT INTO concord_log(origin, seq, hlc, tbl, pk, cl, body, txn_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.local_index,
                seq as i64,
                hlc.as_u64() as i64,
                table.id,
                key.as_bytes(),
                write.causal_length.0 as i64,
                codec::encode(&body),
                txn_end,
            ),
        )?;
        let pos = self.conn.last_insert_id() as i64;
        self.save_clock(table.id, &key, &clock)?;
        Ok(Some(pos))
    }
}

/// Parses a pending row's JSON array of canonical text: the key columns or all columns.
fn decode_values(table: &TableInfo, json: &str, key: bool) -> Result<Vec<Value>, String> {
    let items: Vec<Option<String>> =
        serde_json::from_str(json).map_err(|e| format!("pending JSON: {e}"))?;
    let positions: Vec<usize> = if key {
        table.key_columns.clone()
    } else {
        (0..table.columns.len()).collect()
    };
    // A row recorded by triggers built before columns were added has fewer values: the
    // added columns read as NULL here, and their values are queued separately from the
    // rows when the store follows the change (`MyStore::follow_added_columns`).
    let short_by = positions.len().checked_sub(items.len());
    if key && short_by != Some(0) || short_by.is_none() {
        return Err(format!(
            "pending row has {} values, expected {}",
            items.len(),
            positions.len()
        ));
    }
    positions
        .iter()
        .zip(items.into_iter().chain(std::iter::repeat(None)))
        .map(|(&p, text)| {
            let c = &table.columns[p];
            if c.kind.may_be_large() && text.as_deref() == Some(BIG_VALUE) {
                // Too large for the trigger to copy: read from the row by `big_values`.
                return Ok(Value::Null);
            }
            parse(c.kind, text.as_deref()).map_err(|e| format!("column {:?}: {e}", c.name))
        })
        .collect()
}

/// The positions whose value a pending row's JSON array (of all columns) records as
/// [`BIG_VALUE`].
fn big_positions(table: &TableInfo, json: &str) -> Vec<usize> {
    let items: Vec<Option<String>> = serde_json::from_str(json).unwrap_or_default();
    items
        .iter()
        .enumerate()
        .filter(|(p, item)| {
            item.as_deref() == Some(BIG_VALUE)
                && table.columns.get(*p).is_some_and(|c| c.kind.may_be_large())
        })
        .map(|(p, _)| p)
        .collect()
}

impl MyStore {
    /// Reads from the row with `key` the values its pending row recorded as too large
    /// to copy ([`BIG_VALUE`]): the value the row holds when capture runs. A later write
    /// of the same row is captured after this one and carries what it wrote; a row
    /// deleted since reads as NULL here, and its delete follows.
    fn big_values(
        &mut self,
        table: &TableInfo,
        key: &[Value],
        positions: &[usize],
        values: &mut [Value],
    ) -> Result<(), String> {
        let params = key
            .iter()
            .zip(&table.key_columns)
            .map(|(v, &p)| to_param(table.columns[p].kind, v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| m.0)?;
        for &p in positions {
            let read: Option<Option<Vec<u8>>> = self
                .conn
                .exec_first(
                    table.select_column_sql(p),
                    mysql::Params::Positional(params.clone()),
                )
                .map_err(|e| e.to_string())?;
            let c = &table.columns[p];
            if let Some(slot) = values.get_mut(p) {
                *slot = parse_read(c.kind, read.flatten())
                    .map_err(|e| format!("column {:?}: {e}", c.name))?;
            }
        }
        Ok(())
    }
}

/// How long a barrier may wait for the binary-log reader before capture reports it as
/// stuck.
const BARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl MyStore {
    /// Makes sure every local write committed before this call is staged in
    /// `concord_pending`: reads the server's binary-log position and waits until the
    /// reader has read (and staged) past it. Runs before the caller's transaction
    /// starts, so that transaction's snapshot holds what was staged.
    pub(crate) fn stage_local_writes(&mut self) -> Result<(), StoreError> {
        if self.reader.is_none() {
            let reader =
                crate::stream::BinlogReader::start(&self.url).map_err(|e| StoreError::Capture {
                    table: "(binary log)".into(),
                    key: "-".into(),
                    detail: e.to_string(),
                })?;
            self.reader = Some(reader);
        }
        let Some(target) = crate::binlog::server_position(&mut self.conn)? else {
            return Err(binlog_error(
                "the server reports no binary-log position (is log_bin still on?)".into(),
            ));
        };
        match &self.reader {
            Some(reader) => wait_for_reader(reader, &target),
            None => Ok(()),
        }
    }

    /// How local writes are captured, why, and (from the binary log) how far behind.
    pub fn capture_state(&mut self) -> concord_store::CaptureState {
        use concord_store::{CaptureMethod, CaptureState};
        if !self.binlog {
            let note = match crate::binlog::unavailable(&mut self.conn) {
                _ if self.options.capture == CaptureMethod::Triggers => {
                    Some("as configured (capture = \"triggers\")".into())
                }
                Ok(Some(why)) => Some(why),
                Ok(None) => Some("the server allows capture from the binary log, which costs the application less: untrack and track the tables again to switch".into()),
                Err(_) => None,
            };
            return CaptureState {
                method: "triggers".into(),
                note,
                lag_bytes: None,
            };
        }
        let stored = crate::stream::stored_position(&mut self.conn);
        let read = self.reader.as_ref().and_then(|r| r.position());
        let from = match (stored, read) {
            (Ok(Some(s)), Some(r)) => Some(s.max(r)),
            (Ok(s), r) => s.or(r),
            (Err(_), r) => r,
        };
        let (lag, mut note) = match from {
            None => (
                None,
                Some("no binary-log position is stored; track the tables again".into()),
            ),
            Some(from) => match crate::binlog::lag(&mut self.conn, &from) {
                Ok(crate::binlog::Lag::Bytes(b)) => (Some(b), None),
                Ok(crate::binlog::Lag::Purged) => (
                    None,
                    Some(format!(
                        "the binary log Concord had read up to ({from}) was purged from the server before it was read: writes made since are not captured; reconcile with a peer (concord verify), and raise binlog_expire_logs_seconds"
                    )),
                ),
                Err(e) => (None, Some(format!("reading the binary logs' sizes: {e}"))),
            },
        };
        if note.is_none() {
            note = self.reader.as_ref().and_then(|r| r.error());
        }
        CaptureState {
            method: "binary log".into(),
            note,
            lag_bytes: lag,
        }
    }

    /// The server's id of the binary-log reader's streaming connection, once it runs
    /// (for tests that cut it, as a server restart would).
    #[doc(hidden)]
    pub fn binlog_reader_connection(&self) -> Option<u32> {
        self.reader.as_ref().and_then(|r| r.connection_id())
    }
}

/// What an apply transaction on binary-log capture checks before it commits.
///
/// Why: with triggers, an apply holds every local writer of a tracked table back for
/// its whole length (their trigger waits on `concord_pending`). Nothing holds a writer
/// back without a trigger, so a local transaction may commit after the apply's barrier
/// and before the apply writes the same row: the apply would then decide its merge
/// without that write, and overwrite it here while the write, captured afterwards,
/// wins everywhere else. Such a write is in the binary log before the apply commits:
/// the apply waits for the reader to pass the server's position once more, and if a
/// row staged since its barrier has a key the apply logged, it rolls back (and is
/// retried, after capturing that write first) rather than commit a divergence.
#[derive(Debug)]
pub(crate) struct ApplyGuard {
    /// Pending rows with a larger id were staged after the apply's barrier.
    pub(crate) pending_floor: i64,
    /// Log entries past this position are the apply's own.
    pub(crate) log_floor: i64,
}

impl MyStore {
    /// See [`ApplyGuard`]; inside the apply transaction, its rows written.
    pub(crate) fn check_no_local_write_raced(
        &mut self,
        guard: &ApplyGuard,
    ) -> Result<(), StoreError> {
        let Some(target) = crate::binlog::server_position(&mut self.conn)? else {
            return Ok(());
        };
        if let Some(reader) = &self.reader {
            wait_for_reader(reader, &target)?;
        }
        if self.side.as_mut().is_none_or(|c| c.ping().is_err()) {
            self.side = Some(crate::store::connect(&self.url)?);
        }
        let Some(side) = self.side.as_mut() else {
            return Ok(());
        };
        let staged: Vec<(i32, String, Option<String>)> = side.exec(
            "SELECT tbl, k, o FROM concord_pending WHERE id > ?",
            (guard.pending_floor,),
        )?;
        for (tbl, k, o) in staged {
            let Some(table) = self.table_by_id(tbl).cloned() else {
                continue;
            };
            for json in std::iter::once(k).chain(o) {
                let Ok(values) = decode_values(&table, &json, true) else {
                    continue;
                };
                let Ok(key) = PrimaryKey::encode(&values) else {
                    continue;
                };
                let hit: Option<i64> = self.conn.exec_first(
                    "SELECT 1 FROM concord_log WHERE pos > ? AND tbl = ? AND pk = ? LIMIT 1",
                    (guard.log_floor, tbl, key.as_bytes()),
                )?;
                if hit.is_some() {
                    return Err(StoreError::Capture {
                        table: table.name.clone(),
                        key: key.to_string(),
                        detail: "a local write to this row committed while Concord applied a change to it; the apply was rolled back, and is retried after capturing that write".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Waits until `reader` has read (and staged) the binary log up to `target`.
pub(crate) fn wait_for_reader(
    reader: &crate::stream::BinlogReader,
    target: &crate::binlog::BinlogPos,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        if reader.position().is_some_and(|p| p >= *target) {
            return Ok(());
        }
        if reader.stuck() || started.elapsed() > BARRIER_WAIT {
            let why = reader
                .error()
                .unwrap_or_else(|| "the reader is not keeping up".into());
            return Err(binlog_error(format!(
                "local writes were not read from the binary log within {} s: {why}",
                BARRIER_WAIT.as_secs()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    }
}

fn binlog_error(detail: String) -> StoreError {
    StoreError::Capture {
        table: "(binary log)".into(),
        key: "-".into(),
        detail,
    }
}
