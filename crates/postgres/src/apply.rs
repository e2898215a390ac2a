//! Applying remote changes.
//!
//! An [`ApplySession`] is one open PostgreSQL transaction. Opening it takes Concord's
//! advisory lock, sets `concord.applying = 'on'` for the transaction only (`SET LOCAL`,
//! which the capture trigger checks, so applied writes are not captured again; other
//! sessions never see the setting), locks every tracked table in `SHARE ROW EXCLUSIVE`
//! mode and then folds pending local writes into the log. The table lock waits for
//! in-flight writers and holds new ones back until the session commits: without it, a
//! local transaction could write a row after its pending entry was folded but before
//! this session overwrote the row, and the log would disagree with the table. (SQLite
//! gets the same exclusion from its single writer lock.)
//!
//! Each change is then checked (known table and columns, well-formed key, values the
//! destination column holds exactly, clock bound, sequence continuity), merged by
//! [`concord_core::merge::merge_remote`], and its decision written: the user's row, the
//! row clock, any conflicts, and the change itself appended to the log so this node can
//! relay it. The version vector advance is written before commit, in the same
//! transaction.
//!
//! If anything fails, the session is poisoned and dropping it rolls the transaction
//! back: nothing since the last commit is applied, and the store reloads its in-memory
//! state. Commits happen only at source-transaction boundaries, so a source transaction
//! is never applied in part.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use concord_core::merge::{Conflict, IncomingColumn, RowEffect, merge_remote};
use concord_core::{Advance, Change, Value, Version};
use postgres::Statement;
use postgres::types::ToSql;

use crate::batch::{FLUSH_AT, LogEntry, MetaBatch};
use crate::codec::{self, LogBody, LogColumn};
use crate::schema::{TableInfo, VERBATIM_TABLE};
use crate::store::{LoadClockError, PgStore, now_ms};
use crate::types::{Param, Raw, decode, to_param};
use concord_store::{ApplyError, RowError, RowFailure, StoreError};
use concord_store::{
    ApplyReport, ApplyTxn, ConflictEntry, Failure, TxnProgress, check_change, is_real_conflict,
    newest_hlc,
};

/// An open apply transaction. Dropping it without [`ApplySession::commit`] rolls back.
pub struct ApplySession<'s> {
    store: &'s mut PgStore,
    open: bool,
    dirty_origins: BTreeSet<i32>,
    progress: TxnProgress,
    /// Row clocks and log entries of this transaction not written yet.
    meta: MetaBatch,
    /// User-table writes by (table id, kind, written columns).
    statements: HashMap<(i32, WriteKind, Vec<usize>), Statement>,
}

/// What a user-table statement does.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum WriteKind {
    Delete,
    Update,
    Insert,
}

/// Changes [`PgStore::apply_changes`] reads ahead, to read their row clocks at once.
const READ_AHEAD: usize = 2_000;

impl PgStore {
    /// Opens an apply transaction.
    pub fn begin_apply(&mut self) -> Result<ApplySession<'_>, ApplyError> {
        self.ensure_fresh()?;
        let mut session = ApplySession {
            store: self,
            open: false,
            dirty_origins: BTreeSet::new(),
            progress: TxnProgress::default(),
            meta: MetaBatch::default(),
            statements: HashMap::new(),
        };
        session.begin()?;
        Ok(session)
    }

    /// Applies a stream of changes, committing at source-transaction boundaries once
    /// [`crate::StoreOptions::apply_batch_changes`] changes are in the transaction.
    /// Memory use does not grow with the length of the stream. On error, everything
    /// since the last commit is rolled back; what was committed before stays (the
    /// version vector says what that was).
    ///
    /// Unlike the generic [`Store::apply_changes`], it reads ahead so that a chunk's row
    /// clocks are fetched in one query.
    pub(crate) fn apply_stream(
        &mut self,
        changes: &mut dyn Iterator<Item = Result<Change, StoreError>>,
    ) -> Result<ApplyReport, ApplyError> {
        let batch = self.options.apply_batch_changes.max(1);
        let mut session = self.begin_apply()?;
        let mut chunk: Vec<Change> = Vec::with_capacity(READ_AHEAD);
        loop {
            // Read ahead, so that the chunk's row clocks are read in one query. A source
            // error ends the chunk: what came before it is applied first, as before.
            chunk.clear();
            let mut source_error = None;
            while chunk.len() < READ_AHEAD {
                match changes.next() {
                    Some(Ok(change)) => chunk.push(change),
                    Some(Err(e)) => {
                        source_error = Some(ApplyError::Source(e.to_string()));
                        break;
                    }
                    None => break,
                }
            }
            let more = source_error.is_none() && chunk.len() == READ_AHEAD;
            let mut prefetched = false;
            for (i, change) in chunk.iter().enumerate() {
                if !prefetched {
                    session.prefetch(&chunk[i..])?;
                    prefetched = true;
                }
                session.apply(change)?;
                if session.at_boundary() && session.in_transaction() >= batch {
                    session.checkpoint()?;
                    // The new transaction captured local writes: clocks read before
                    // may be stale.
                    prefetched = false;
                }
            }
            session.flush()?;
            if let Some(e) = source_error {
                return Err(e);
            }
            if !more {
                break;
            }
        }
        session.commit()
    }
}

impl ApplySession<'_> {
    fn begin(&mut self) -> Result<(), ApplyError> {
        self.meta.clear();
        self.store.begin_locked()?;
        self.open = true;
        self.progress.began();
        let tables: Vec<String> = self.store.tables.iter().map(|t| t.qualified()).collect();
        let mut setup = "SET LOCAL concord.applying = 'on';".to_owned();
        if !tables.is_empty() {
            setup.push_str(&format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE;",
                tables.join(", ")
            ));
        }
        let result = self
            .store
            .client
            .batch_execute(&setup)
            .map_err(StoreError::from)
            .and_then(|()| self.store.capture_in_txn());
        match result {
            Ok(n) => {
                self.progress.report.captured += n;
                Ok(())
            }
            Err(e) => {
                self.progress.poison();
                Err(e.into())
            }
        }
    }

    /// Whether the changes applied so far end on a source-transaction boundary.
    pub fn at_boundary(&self) -> bool {
        self.progress.at_boundary()
    }

    /// Changes applied in the current transaction.
    pub fn in_transaction(&self) -> usize {
        self.progress.in_txn
    }

    /// Reads the row clocks of `changes` in one query per table, so applying them does
    /// not read them one by one.
    fn prefetch(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
        if self.progress.is_poisoned() {
            return Ok(());
        }
        let store = &mut *self.store;
        let keys: Vec<(i32, &[u8])> = changes
            .iter()
            .filter(|c| !store.origins.held.contains(&c.origin, c.seq))
            .filter_map(|c| Some((store.table_named(&c.table)?.id, c.key.as_bytes())))
            .collect();
        if let Err(e) = store.prefetch_clocks(&mut self.meta, keys) {
            self.progress.poison();
            return Err(StoreError::from(e).into());
        }
        Ok(())
    }

    /// Writes the row clocks and log entries held back so far (inside the transaction).
    fn flush(&mut self) -> Result<(), ApplyError> {
        if self.progress.is_poisoned() {
            return Ok(());
        }
        if let Err(e) = self.store.flush_meta(&mut self.meta) {
            self.progress.poison();
            return Err(StoreError::from(e).into());
        }
        Ok(())
    }

    /// Commits what was applied and opens a new transaction.
    pub fn checkpoint(&mut self) -> Result<(), ApplyError> {
        self.commit_current()?;
        self.begin()
    }

    /// Commits and closes the session.
    pub fn commit(mut self) -> Result<ApplyReport, ApplyError> {
        self.commit_current()?;
        Ok(self.progress.take_report())
    }

    fn commit_current(&mut self) -> Result<(), ApplyError> {
        self.progress.ready_to_commit()?;
        let result = (|| -> Result<(), postgres::Error> {
            self.store.flush_meta(&mut self.meta)?;
            for &index in &self.dirty_origins {
                let seq = self
                    .store
                    .origins
                    .node_of
                    .get(&index)
                    .map_or(0, |node| self.store.origins.held.get(node));
                self.store.save_progress(index, seq)?;
            }
            self.store.client.batch_execute("COMMIT")
        })();
        if let Err(e) = result {
            self.progress.poison();
            return Err(e.into());
        }
        self.open = false;
        self.dirty_origins.clear();
        self.progress.committed();
        Ok(())
    }

    /// Applies one change inside the transaction.
    pub fn apply(&mut self, change: &Change) -> Result<(), ApplyError> {
        self.progress.start(change)?;
        let outcome = self.apply_inner(change);
        self.progress.finish(change, outcome)?;
        if self.meta.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Returns whether the change was new (false: already held, skipped).
    fn apply_inner(&mut self, change: &Change) -> Result<bool, Failure> {
        let store = &mut *self.store;
        if store.origins.held.classify(&change.origin, change.seq)? == Advance::Duplicate {
            self.progress.report.duplicates += 1;
            return Ok(false);
        }
        let now = now_ms();
        let newest = newest_hlc(change);
        store.clock.check(newest, now)?;
        let table: Arc<TableInfo> = store
            .table_named(&change.table)
            .ok_or(RowError::UnknownTable)?;
        let checked = check_change(change, table.key_columns.len(), |name| {
            table.position_of.get(name).copied()
        })?;
        let key_params: Vec<Param> = table
            .key_columns
            .iter()
            .zip(&checked.key_values)
            .map(|(&index, value)| param(&table, index, value))
            .collect::<Result<_, _>>()?;
        let params = change
            .columns
            .iter()
            .zip(&checked.incoming)
            .map(|(c, column)| param(&table, column.index, &c.value))
            .collect::<Result<Vec<_>, _>>()?;
        let incoming = checked.incoming;
        let mut clock = store
            .batched_clock(&self.meta, table.id, &change.key)
            .map_err(|e| match e {
                LoadClockError::Postgres(e) => Failure::Store(e.into()),
                LoadClockError::Corrupt(d) => RowError::CorruptMetadata(d).into(),
            })?;
        let was_alive = clock.causal_length.is_alive();
        let change_version = Version {
            hlc: change.hlc,
            origin: change.origin,
        };
        let decision = merge_remote(
            &mut clock,
            change.causal_length,
            change_version,
            change.delete_seen,
            &incoming,
        );

        for conflict in &decision.conflicts {
            if record_conflict(store, &table, change, &key_params, &incoming, conflict)? {
                self.progress.report.conflicts += 1;
            }
        }
        let mut winners: Vec<(usize, &Param)> = decision
            .winners
            .iter()
            .map(|&pos| (incoming[pos].index, &params[pos]))
            .filter(|(index, _)| !table.key_columns.contains(index))
            .collect();
        winners.sort_unstable_by_key(|(index, _)| *index);
        let winner_columns: Vec<usize> = winners.iter().map(|(i, _)| *i).collect();
        let key_refs: Vec<&(dyn ToSql + Sync)> = key_params
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();
        let value_refs: Vec<&(dyn ToSql + Sync)> = winners
            .iter()
            .map(|(_, p)| *p as &(dyn ToSql + Sync))
            .collect();
        let statements = &mut self.statements;
        // The statement for a write of `kind` of `columns`, prepared once per session:
        // building its SQL text for every change cost more than the rest of the apply.
        let mut write = |kind: WriteKind,
                         columns: &[usize],
                         values: &[&(dyn ToSql + Sync)]|
         -> Result<(), Failure> {
            let stmt = match statements.get(&(table.id, kind, columns.to_vec())) {
                Some(stmt) => stmt.clone(),
                None => {
                    let sql = match kind {
                        WriteKind::Delete => table.delete_sql(),
                        WriteKind::Update => table.update_sql(columns),
                        WriteKind::Insert => table.insert_sql(columns),
                    };
                    let stmt = store
                        .statement(&sql)
                        .map_err(|e| RowError::Refused(e.into()))?;
                    statements.insert((table.id, kind, columns.to_vec()), stmt.clone());
                    stmt
                }
            };
            store
                .client
                .execute(&stmt, values)
                .map_err(|e| RowError::Refused(e.into()))?;
            Ok(())
        };
        match decision.effect {
            RowEffect::None => {}
            RowEffect::Delete => write(WriteKind::Delete, &[], &key_refs)?,
            RowEffect::Update => {
                if !winners.is_empty() {
                    let all: Vec<_> = value_refs.iter().chain(&key_refs).copied().collect();
                    write(WriteKind::Update, &winner_columns, &all)?;
                }
            }
            RowEffect::Recreate => {
                if was_alive {
                    write(WriteKind::Delete, &[], &key_refs)?;
                }
                let all: Vec<_> = key_refs.iter().chain(&value_refs).copied().collect();
                write(WriteKind::Insert, &winner_columns, &all)?;
            }
        }
        if decision.clock_changed {
            self.meta.set_clock(table.id, &change.key, clock);
        }
        store.clock.observe(newest, now)?;

        // Log the change as received, so this node can relay it unchanged.
        let mut body = LogBody {
            columns: Vec::with_capacity(change.columns.len()),
            delete_seen: None,
        };
        for (c, inc) in change.columns.iter().zip(&incoming) {
            body.columns.push(LogColumn {
                index: inc.index as u32,
                value: c.value.clone(),
                version: store.stored(c.version).map_err(store_error)?,
                replaced: c
                    .replaced
                    .map(|v| store.stored(v))
                    .transpose()
                    .map_err(store_error)?,
            });
        }
        body.delete_seen = change
            .delete_seen
            .map(|v| store.stored(v))
            .transpose()
            .map_err(store_error)?;
        let origin = store.origin_index(change.origin).map_err(store_error)?;
        self.meta
            .log(log_entry(origin, change, table.id, codec::encode(&body)));
        store.origins.held.advance(change.origin, change.seq)?;
        self.dirty_origins.insert(origin);
        self.progress.in_txn += 1;
        self.progress.report.applied += 1;
        Ok(true)
    }

    /// Sets a change aside: it is not applied, but recorded in `concord.failures` with
    /// `reason` and kept in the log verbatim (so it is still relayed), and its sequence
    /// counts as held so the stream from its origin keeps flowing. Used for a source
    /// transaction that cannot be applied here, so one bad row never blocks a channel.
    pub fn set_aside(&mut self, change: &Change, reason: &str) -> Result<(), ApplyError> {
        let result = match self.store.origins.held.classify(&change.origin, change.seq) {
            Ok(Advance::Duplicate) => return Ok(()),
            Ok(Advance::Next) => (|| -> Result<(), postgres::Error> {
                let store = &mut *self.store;
                let origin = store.origin_index(change.origin)?;
                self.meta.log(log_entry(
                    origin,
                    change,
                    VERBATIM_TABLE,
                    codec::encode(change),
                ));
                // Classified as next above.
                let _ = store.origins.held.advance(change.origin, change.seq);
                self.dirty_origins.insert(origin);
                self.progress.in_txn += 1;
                let stmt = store.statement(
                    "INSERT INTO concord.failures(origin, seq, tbl, key_text, error, at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )?;
                store.client.execute(
                    &stmt,
                    &[
                        &change.origin.to_string(),
                        &(change.seq as i64),
                        &change.table,
                        &change.key.to_string(),
                        &reason,
                        &(now_ms() as i64),
                    ],
                )?;
                Ok(())
            })()
            .map_err(ApplyError::from),
            Err(gap) => Err(ApplyError::Row(Box::new(RowFailure {
                origin: change.origin.short(),
                seq: change.seq,
                table: change.table.clone(),
                key: change.key.to_string(),
                error: gap.into(),
            }))),
        };
        self.progress.finish_set_aside(change, result)
    }
}

impl Drop for ApplySession<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.store.client.batch_execute("ROLLBACK");
            // The in-memory version vector, origins and clock may hold what was rolled
            // back: reload them now so the store answers truthfully at once.
            if self.store.reload().is_err() {
                self.store.stale = true;
            }
        }
    }
}

fn store_error(e: postgres::Error) -> Failure {
    Failure::Store(e.into())
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

/// The log entry of `change` as received, so this node can relay it unchanged.
fn log_entry(origin: i32, change: &Change, table: i32, body: Vec<u8>) -> LogEntry {
    LogEntry {
        origin,
        seq: change.seq as i64,
        hlc: change.hlc.as_u64() as i64,
        table,
        pk: change.key.as_bytes().to_vec(),
        cl: change.causal_length.0 as i64,
        body,
        txn_end: change.last_in_txn,
    }
}

/// Records `conflict` unless the two writes wrote the same value; returns whether it
/// recorded it.
fn record_conflict(
    store: &mut PgStore,
    table: &TableInfo,
    change: &Change,
    key_params: &[Param],
    incoming: &[IncomingColumn],
    conflict: &Conflict,
) -> Result<bool, Failure> {
    let ConflictEntry {
        kind,
        column: column_index,
        local_version,
        remote_value,
        remote_version,
        winner,
    } = ConflictEntry::of(change, incoming, conflict);
    let local_value = match column_index {
        Some(index) => {
            let stmt = store
                .statement(&table.select_column_sql(index))
                .map_err(store_error)?;
            let keys: Vec<&(dyn ToSql + Sync)> = key_params
                .iter()
                .map(|p| p as &(dyn ToSql + Sync))
                .collect();
            let row = store.client.query_opt(&stmt, &keys).map_err(store_error)?;
            match row {
                Some(row) => row
                    .try_get::<_, Raw<'_>>(0)
                    .ok()
                    .and_then(|raw| decode(table.columns[index].kind, raw.0).ok())
                    .unwrap_or(Value::Null),
                None => Value::Null,
            }
        }
        None => Value::Null,
    };
    if !is_real_conflict(kind, &local_value, &remote_value) {
        return Ok(false);
    }
    let column = column_index.map(|index| table.columns[index].name.clone());
    let stmt = store
        .statement(
            "INSERT INTO concord.conflicts(tbl, pk, key_text, kind, column_name, local_value,
                 local_version, remote_value, remote_version, winner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .map_err(store_error)?;
    store
        .client
        .execute(
            &stmt,
            &[
                &table.name,
                &change.key.as_bytes(),
                &change.key.to_string(),
                &kind,
                &column,
                &codec::encode(&local_value),
                &local_version.to_string(),
                &codec::encode(&remote_value),
                &remote_version.to_string(),
                &winner,
            ],
        )
        .map_err(store_error)?;
    Ok(true)
}

impl ApplyTxn for ApplySession<'_> {
    fn apply(&mut self, change: &Change) -> Result<(), ApplyError> {
        ApplySession::apply(self, change)
    }

    fn set_aside(&mut self, change: &Change, reason: &str) -> Result<(), ApplyError> {
        ApplySession::set_aside(self, change, reason)
    }

    fn at_boundary(&self) -> bool {
        ApplySession::at_boundary(self)
    }

    fn in_transaction(&self) -> usize {
        ApplySession::in_transaction(self)
    }

    fn checkpoint(&mut self) -> Result<(), ApplyError> {
        ApplySession::checkpoint(self)
    }

    fn commit(self: Box<Self>) -> Result<ApplyReport, ApplyError> {
        ApplySession::commit(*self)
    }
}
