//! PostgreSQL's part in applying remote changes: [`ApplyBackend`] for [`PgStore`].
//!
//! The algorithm is [`concord_store::engine`]'s, the same for every store; this module
//! supplies PostgreSQL's SQL. An apply transaction takes Concord's
//! advisory lock, sets `concord.applying = 'on'` for the transaction only (`SET LOCAL`,
//! which the capture trigger checks, so applied writes are not captured again; other
//! sessions never see the setting), locks every tracked table in `SHARE ROW EXCLUSIVE`
//! mode and then folds pending local writes into the log. The table lock waits for
//! in-flight writers and holds new ones back until the session commits: without it, a
//! local transaction could write a row after its pending entry was folded but before
//! this session overwrote the row, and the log would disagree with the table. (SQLite
//! gets the same exclusion from its single writer lock.)
//!
//! Row clocks are read for a chunk of changes at once ([`ApplyBackend::prefetch`]), and
//! row clocks and log entries are written in batches ([`crate::batch`]). Users' rows are
//! held back and written set-based, a few multi-row statements per run of one table,
//! kind and column set ([`crate::rows`]); in the engine's exact mode each is written
//! before the next change, so a refused row is named.
use std::sync::Arc;

use concord_core::merge::RowClock;
use concord_core::{Change, HlcClock, NodeId, PrimaryKey, Value};

use crate::driver::Pg;
use crate::rows::param_size;
use crate::schema::TableInfo;
use crate::store::{LoadClockError, PgStore};
use crate::types::{Param, Raw, decode, sql_refs, to_param};
use concord_store::engine::{self, ApplyBackend, LogEntry, RowWrite, TrackedTable, WriteMode};
use concord_store::{ApplyError, Failure, Origins, RowError, StoreError};

/// An open apply transaction on a PostgreSQL store. Dropping it without
/// [`ApplySession::commit`] rolls back.
pub type ApplySession<'s> = engine::ApplySession<'s, PgStore>;

pub(crate) use concord_store::pending::WriteKind;

impl PgStore {
    /// Opens an apply transaction (rows written set-based where the store can).
    pub fn begin_apply(&mut self) -> Result<ApplySession<'_>, ApplyError> {
        self.begin_apply_in(WriteMode::Sets)
    }

    /// Opens an apply transaction that writes rows as `mode` says.
    pub fn begin_apply_in(&mut self, mode: WriteMode) -> Result<ApplySession<'_>, ApplyError> {
        self.ensure_fresh()?;
        ApplySession::begin_in(self, mode)
    }

    /// Releases the replication origin an apply transaction set up, so another session
    /// (a `concord merge`, the next apply) can take it.
    fn end_origin_session(&mut self) {
        if let Some(stream) = &self.stream {
            stream.resume();
        }
        if self.logical.is_some()
            && let Err(e) = self.client.batch_execute(
                "SELECT pg_replication_origin_session_reset() WHERE pg_replication_origin_session_is_setup()",
            )
        {
            tracing::warn!(error = %e, "could not release Concord's replication origin");
        }
    }

    /// Writes the row clocks and log entries held back so far (inside the transaction).
    fn flush_apply_meta(&mut self) -> Result<(), StoreError> {
        let mut meta = std::mem::take(&mut self.apply_meta);
        let result = self.flush_meta(&mut meta);
        self.apply_meta = meta;
        Ok(result?)
    }

    /// Writes the user-table writes held back ([`crate::rows`]).
    fn flush_pending_rows(&mut self) -> Result<(), postgres::Error> {
        match self.pending_rows.take() {
            Some(run) => self.write_run(&run),
            None => Ok(()),
        }
    }

    /// Flushes once the batch is large, so memory stays bounded.
    fn flush_if_full(&mut self) -> Result<(), StoreError> {
        if self.apply_meta.is_full() {
            self.flush_apply_meta()?;
        }
        Ok(())
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

impl ApplyBackend for PgStore {
    type Table = TableInfo;
    type Param<'v> = Param;
    type Sql<'a> = Pg<'a>;

    fn sql(&mut self) -> Pg<'_> {
        Pg {
            client: &mut self.client,
            statements: &mut self.statements,
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
        self.write_statements.clear();
        self.set_statements.clear();
        self.begin_locked()?;
        let tables: Vec<String> = self.tables.iter().map(|t| t.qualified()).collect();
        let mut setup = "SET LOCAL concord.applying = 'on';".to_owned();
        if let Some(logical) = &self.logical {
            // Log-based capture skips transactions of this origin: Concord's own writes.
            setup.push_str(&format!(
                "SELECT pg_replication_origin_session_setup({}) WHERE NOT pg_replication_origin_session_is_setup();",
                crate::schema::literal(&logical.slot)
            ));
        }
        if !tables.is_empty() {
            setup.push_str(&format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;",
                tables.join(", ")
            ));
        }
        self.client.batch_execute(&setup)?;
        let captured = self.capture_in_txn()?;
        if let Some(stream) = &self.stream {
            stream.pause();
        }
        Ok(captured)
    }

    fn commit(&mut self, held: &[(u32, u64)]) -> Result<(), StoreError> {
        // The engine flushed the rows already; this is only a safeguard.
        self.flush_pending_rows().map_err(StoreError::from)?;
        self.flush_apply_meta()?;
        for &(index, seq) in held {
            self.save_progress(index as i32, seq)?;
        }
        self.client.batch_execute("COMMIT")?;
        self.end_origin_session();
        Ok(())
    }

    fn rollback(&mut self) {
        self.apply_meta.clear();
        self.pending_rows.clear();
        let _ = self.client.batch_execute("ROLLBACK");
        self.end_origin_session();
        // The in-memory version vector, origins and clock may hold what was rolled
        // back: reload them now so the store answers truthfully at once.
        if self.reload().is_err() {
            self.stale = true;
        }
    }

    fn origin_index(&mut self, node: NodeId) -> Result<u32, StoreError> {
        Ok(PgStore::origin_index(self, node)? as u32)
    }

    fn param(&self, table: &TableInfo, index: usize, value: &Value) -> Result<Param, RowError> {
        param(table, index, value)
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
            LoadClockError::Postgres(e) => Failure::Store(e.into()),
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

    fn write_row(&mut self, table: &TableInfo, write: RowWrite<'_, Param>) -> Result<(), Failure> {
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
        key: &[Param],
    ) -> Result<Value, StoreError> {
        let stmt = self.statement(&table.select_column_sql(index))?;
        let keys: Vec<&Param> = key.iter().collect();
        let row = self.client.query_opt(&stmt, &sql_refs(&keys))?;
        Ok(match row {
            Some(row) => row
                .try_get::<_, Raw<'_>>(0)
                .ok()
                .and_then(|raw| decode(table.columns[index].kind, raw.0).ok())
                .unwrap_or(Value::Null),
            None => Value::Null,
        })
    }

    fn append_log(&mut self, e: LogEntry<'_>) -> Result<(), StoreError> {
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
fn param(table: &TableInfo, index: usize, value: &Value) -> Result<Param, RowError> {
    let column = &table.columns[index];
    to_param(column.kind, value).map_err(|m| RowError::WrongType {
        column: column.name.clone(),
        declared: column.type_name.clone(),
        found: value.kind(),
        detail: m.0,
    })
}
