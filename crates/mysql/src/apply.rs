//! MariaDB's and MySQL's part in applying remote changes: [`ApplyBackend`] for
//! [`MyStore`].
//!
//! The algorithm is [`concord_store::engine`]'s, the same for every store; this module
//! supplies MySQL's SQL. An apply transaction is one InnoDB transaction on Concord's
//! connection. Opening it takes Concord's named lock, sets the session variable `@concord_applying` (the
//! capture triggers return at once while it is set, and only this connection has it;
//! it is cleared at commit or rollback), then takes a locking read of every
//! `concord_pending` row, *before* any consistent read. That read waits for local
//! transactions that have written a tracked table and not committed yet, and its
//! next-key locks hold back new local writers (their trigger's insert into
//! `concord_pending` waits) until the session commits. Only then does it fold pending
//! local writes into the log, so no local write can slip between capture and the rows
//! the session writes (SQLite gets this from its single writer, PostgreSQL from a table
//! lock). A local writer that already locked a row the session must write can deadlock
//! with it; InnoDB then rolls one of them back, and the apply fails with an error and
//! can be retried.
//!
//! Row clocks are read for a chunk of changes at once ([`ApplyBackend::prefetch`]), row
//! clocks and log entries are written in multi-row statements, and users' rows are held
//! back and written set-based, a few statements per run of one table, kind and column
//! set ([`crate::batch`]); in the engine's exact mode each row is written before the
//! next change, so a refused row is named.

use std::sync::Arc;

use concord_core::merge::RowClock;
use concord_core::{Change, HlcClock, NodeId, PrimaryKey, Value};
use mysql::Value as My;
use mysql::prelude::Queryable;

use crate::batch::param_size;
use crate::driver::MySql;
use crate::schema::TableInfo;
use crate::store::{LoadClockError, MyStore};
use crate::types::{parse_read, to_param};
use concord_store::engine::{self, ApplyBackend, LogEntry, RowWrite, TrackedTable, WriteMode};
use concord_store::format as codec;
use concord_store::{ApplyError, Failure, Origins, RowError, StoreError};

/// An open apply transaction on a MySQL/MariaDB store. Dropping it without
/// [`ApplySession::commit`] rolls back.
pub type ApplySession<'s> = engine::ApplySession<'s, MyStore>;

impl MyStore {
    /// Opens an apply transaction (rows written set-based where the store can).
    pub fn begin_apply(&mut self) -> Result<ApplySession<'_>, ApplyError> {
        self.begin_apply_in(WriteMode::Sets)
    }

    /// Opens an apply transaction that writes rows as `mode` says.
    pub fn begin_apply_in(&mut self, mode: WriteMode) -> Result<ApplySession<'_>, ApplyError> {
        self.ensure_fresh()?;
        ApplySession::begin_in(self, mode)
    }
}

impl MyStore {
    /// Writes the row clocks and log entries held back so far (inside the transaction).
    fn flush_apply_meta(&mut self) -> Result<(), StoreError> {
        let mut meta = std::mem::take(&mut self.apply_meta);
        let result = self.flush_meta(&mut meta);
        self.apply_meta = meta;
        Ok(result?)
    }

    /// Flushes once the batch is large, so memory stays bounded.
    fn flush_if_full(&mut self) -> Result<(), StoreError> {
        if self.apply_meta.is_full() {
            self.flush_apply_meta()?;
        }
        Ok(())
    }

    /// Writes the user-table writes held back ([`crate::batch`]).
    fn flush_pending_rows(&mut self) -> Result<(), mysql::Error> {
        match self.pending_rows.take() {
            Some(run) => self.write_run(run),
            None => Ok(()),
        }
    }
}

/// Room for the rest of a statement in a packet: a value must leave this much.
const STATEMENT_ROOM: usize = 64 * 1024;

impl MyStore {
    /// The largest value (or log body) a statement can carry to this server.
    pub(crate) fn packet_room(&self) -> usize {
        self.max_packet.saturating_sub(STATEMENT_ROOM)
    }

    /// A verbatim log body (a whole change) too large for the server's packet, with
    /// its largest column values left out until it fits. Such a change was set aside
    /// here because its values cannot be stored; this node relays it without them (its
    /// failure record says so), rather than stopping the origin's stream for good.
    fn without_oversized_values(&self, body: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut change: Change = codec::decode(body).map_err(|detail| StoreError::Corrupt {
            table: "concord_log",
            detail,
        })?;
        let mut encoded = body.to_vec();
        while encoded.len() > self.packet_room() {
            let Some(largest) = (0..change.columns.len())
                .max_by_key(|&i| codec::encode(&change.columns[i].value).len())
            else {
                break;
            };
            let dropped = change.columns.remove(largest);
            tracing::warn!(
                origin = %change.origin.short(), seq = change.seq, table = %change.table, column = %dropped.column,
                "a value larger than max_allowed_packet is left out of the change this node keeps and relays"
            );
            encoded = codec::encode(&change);
        }
        Ok(encoded)
    }
}

impl TrackedTable for TableInfo {
    fn id(&self) -> i64 {
        i64::from(self.id)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn key_columns(&self) -> &[usize] {
        &self.key_columns
    }

    fn position_of(&self, column: &str) -> Option<usize> {
        self.position_of.get(column).copied()
    }

    fn column_name(&self, index: usize) -> &str {
        &self.columns[index].name
    }
}

impl ApplyBackend for MyStore {
    type Table = TableInfo;
    type Param<'v> = My;
    type Sql<'a> = MySql<'a>;

    fn sql(&mut self) -> MySql<'_> {
        MySql {
            packet_room: self.packet_room(),
            conn: &mut self.conn,
        }
    }

    fn origins(&mut self) -> &mut Origins {
        &mut self.origins
    }

    fn hlc(&mut self) -> &mut HlcClock {
        &mut self.clock
    }

    fn table(&self, name: &str) -> Option<Arc<TableInfo>> {
        self.table_named(name)
    }

    fn begin(&mut self) -> Result<u64, StoreError> {
        self.apply_meta.clear();
        self.pending_rows.clear();
        self.begin_locked_for_apply()?;
        self.capture_in_txn()
    }

    fn commit(&mut self, held: &[(u32, u64)]) -> Result<(), StoreError> {
        // The engine flushed the rows already; this is only a safeguard.
        self.flush_pending_rows().map_err(StoreError::from)?;
        self.flush_apply_meta()?;
        for &(index, seq) in held {
            self.save_progress(index as i32, seq)?;
        }
        Ok(MyStore::commit(self)?)
    }

    fn rollback(&mut self) {
        self.apply_meta.clear();
        self.pending_rows.clear();
        MyStore::rollback(self);
        // The in-memory version vector, origins and clock may hold what was rolled
        // back: reload them now so the store answers truthfully at once.
        if self.reload().is_err() {
            self.stale = true;
        }
    }

    fn origin_index(&mut self, node: NodeId) -> Result<u32, StoreError> {
        Ok(MyStore::origin_index(self, node)? as u32)
    }

    fn param(&self, table: &TableInfo, index: usize, value: &Value) -> Result<My, RowError> {
        let param = param(table, index, value)?;
        if let My::Bytes(bytes) = &param
            && bytes.len() > self.packet_room()
        {
            let column = &table.columns[index];
            return Err(RowError::WrongType {
                column: column.name.clone(),
                declared: column.type_name.clone(),
                found: value.kind(),
                detail: format!(
                    "{} bytes do not fit the server's max_allowed_packet ({} bytes); raise it to replicate this value",
                    bytes.len(),
                    self.max_packet
                ),
            });
        }
        Ok(param)
    }

    fn prefetch(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let keys: Vec<(i32, &[u8])> = changes
            .iter()
            .filter(|c| !self.origins.held.contains(&c.origin, c.seq))
            .filter_map(|c| Some((self.table_named(&c.table)?.id, c.key.as_bytes())))
            .collect();
        let mut meta = std::mem::take(&mut self.apply_meta);
        let result = self.prefetch_clocks(&mut meta, keys);
        self.apply_meta = meta;
        Ok(result?)
    }

    fn load_clock(&mut self, table: &TableInfo, key: &PrimaryKey) -> Result<RowClock, Failure> {
        let meta = std::mem::take(&mut self.apply_meta);
        let result = self.batched_clock(&meta, table.id, key);
        self.apply_meta = meta;
        result.map_err(|e| match e {
            LoadClockError::MySql(e) => Failure::Store(e.into()),
            LoadClockError::Corrupt(d) => RowError::CorruptMetadata(d).into(),
        })
    }

    fn save_clock(
        &mut self,
        table: &TableInfo,
        key: &PrimaryKey,
        clock: &RowClock,
        _existed: bool,
    ) -> Result<(), StoreError> {
        self.apply_meta
            .set_clock(i64::from(table.id), key, clock.clone());
        self.flush_if_full()
    }

    fn write_row(&mut self, table: &TableInfo, write: RowWrite<'_, My>) -> Result<(), Failure> {
        let (kind, columns, _, _) = write.parts();
        if !self.pending_rows.accepts(table, kind, columns) {
            self.flush_pending_rows()
                .map_err(|e| RowError::Refused(e.into()))?;
        }
        let tables = &self.tables;
        let shared = || tables.iter().find(|t| t.id == table.id).cloned();
        if !self.pending_rows.push(shared, write, param_size) {
            return Err(RowError::UnknownTable.into());
        }
        if self.pending_rows.is_full() {
            self.flush_pending_rows()
                .map_err(|e| RowError::Refused(e.into()))?;
        }
        Ok(())
    }

    fn writes_sets(&self) -> bool {
        true
    }

    fn flush_rows(&mut self) -> Result<(), Failure> {
        self.flush_pending_rows()
            .map_err(|e| RowError::Refused(e.into()))?;
        Ok(())
    }

    fn current_value(
        &mut self,
        table: &TableInfo,
        index: usize,
        key: &[My],
    ) -> Result<Value, StoreError> {
        let read: Option<Option<Vec<u8>>> = self.conn.exec_first(
            table.select_column_sql(index),
            mysql::Params::Positional(key.to_vec()),
        )?;
        Ok(parse_read(table.columns[index].kind, read.flatten()).unwrap_or(Value::Null))
    }

    fn append_log(&mut self, mut e: LogEntry<'_>) -> Result<(), StoreError> {
        if e.table == engine::VERBATIM_TABLE && e.body.len() > self.packet_room() {
            e.body = self.without_oversized_values(&e.body)?;
        }
        self.apply_meta.log(e.into());
        self.flush_if_full()
    }

    fn drop_log_through(&mut self, origin: u32, seq: u64) -> Result<(), StoreError> {
        // Entries held back in the batch may be among those to drop.
        self.flush_apply_meta()?;
        concord_store::bookkeeping::drop_log_through(&mut self.sql(), origin, seq)
    }
}

/// Checks a value against its column, naming the column if it does not fit.
fn param(table: &TableInfo, index: usize, value: &Value) -> Result<My, RowError> {
    let column = &table.columns[index];
    to_param(column.kind, value).map_err(|m| RowError::WrongType {
        column: column.name.clone(),
        declared: column.type_name.clone(),
        found: value.kind(),
        detail: m.0,
    })
}
