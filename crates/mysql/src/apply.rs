//! Applying remote changes.
//!
//! An [`ApplySession`] is one open InnoDB transaction on Concord's connection. Opening
//! it takes Concord's named lock, sets the session variable `@concord_applying` (the
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
//! Each change is then checked (known table and columns, well-formed key, values the
//! destination column holds exactly, clock bound, sequence continuity), merged by
//! [`concord_core::merge::merge_remote`], and its decision written: the user's row, the
//! row clock, any conflicts, and the change itself appended to the log so this node can
//! relay it. The version vector advance is written before commit, in the same
//! transaction. If anything fails, dropping the session rolls back: nothing since the
//! last commit is applied, which is always a source-transaction boundary, and the store
//! reloads its in-memory state.

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_core::merge::{Conflict, IncomingColumn, RowEffect, merge_remote};
use concord_core::{Advance, Change, Value, Version};
use mysql::Value as My;
use mysql::prelude::Queryable;

use crate::codec::{self, LogBody, LogColumn};
use crate::schema::{TableInfo, VERBATIM_TABLE};
use crate::store::{LoadClockError, MyStore, now_ms};
use crate::types::{parse, to_param};
use concord_store::{ApplyError, RowError, RowFailure};
use concord_store::{
    ApplyReport, ApplyTxn, ConflictEntry, Failure, TxnProgress, check_change, is_real_conflict,
    newest_hlc,
};

/// An open apply transaction. Dropping it without [`ApplySession::commit`] rolls back.
pub struct ApplySession<'s> {
    store: &'s mut MyStore,
    open: bool,
    dirty_origins: BTreeSet<i32>,
    progress: TxnProgress,
}

impl MyStore {
    /// Opens an apply transaction.
    pub fn begin_apply(&mut self) -> Result<ApplySession<'_>, ApplyError> {
        self.ensure_fresh()?;
        let mut session = ApplySession {
            store: self,
            open: false,
            dirty_origins: BTreeSet::new(),
            progress: TxnProgress::default(),
        };
        session.begin()?;
        Ok(session)
    }
}

impl ApplySession<'_> {
    fn begin(&mut self) -> Result<(), ApplyError> {
        self.store.begin_locked_for_apply()?;
        self.open = true;
        self.progress.began();
        let result = self.store.capture_in_txn();
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
        let result = (|| -> Result<(), mysql::Error> {
            for &index in &self.dirty_origins {
                let seq = self
                    .store
                    .origins
                    .node_of
                    .get(&index)
                    .map_or(0, |node| self.store.origins.held.get(node));
                self.store.save_progress(index, seq)?;
            }
            self.store.commit()
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
        self.progress.finish(change, outcome)
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
        let key_params: Vec<My> = table
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
            .load_clock(table.id, &change.key)
            .map_err(|e| match e {
                LoadClockError::MySql(e) => Failure::Store(e.into()),
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
        let mut winners: Vec<(usize, &My)> = decision
            .winners
            .iter()
            .map(|&pos| (incoming[pos].index, &params[pos]))
            .filter(|(index, _)| !table.key_columns.contains(index))
            .collect();
        winners.sort_unstable_by_key(|(index, _)| *index);
        let winner_columns: Vec<usize> = winners.iter().map(|(i, _)| *i).collect();
        let values: Vec<My> = winners.iter().map(|(_, p)| (*p).clone()).collect();
        let mut write = |sql: &str, params: Vec<My>| -> Result<(), Failure> {
            store
                .conn
                .exec_drop(sql, mysql::Params::Positional(params))
                .map_err(|e| RowError::Refused(e.into()))?;
            Ok(())
        };
        match decision.effect {
            RowEffect::None => {}
            RowEffect::Delete => write(&table.delete_sql(), key_params.clone())?,
            RowEffect::Update => {
                if !winners.is_empty() {
                    let all: Vec<My> = values.iter().chain(&key_params).cloned().collect();
                    write(&table.update_sql(&winner_columns), all)?;
                }
            }
            RowEffect::Recreate => {
                if was_alive {
                    write(&table.delete_sql(), key_params.clone())?;
                }
                let all: Vec<My> = key_params.iter().chain(&values).cloned().collect();
                write(&table.insert_sql(&winner_columns), all)?;
            }
        }
        if decision.clock_changed {
            store
                .save_clock(table.id, &change.key, &clock)
                .map_err(store_error)?;
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
        insert_log(store, origin, change, table.id, &codec::encode(&body)).map_err(store_error)?;
        store.origins.held.advance(change.origin, change.seq)?;
        self.dirty_origins.insert(origin);
        self.progress.in_txn += 1;
        self.progress.report.applied += 1;
        Ok(true)
    }

    /// Sets a change aside: it is not applied, but recorded in `concord_failures` with
    /// `reason` and kept in the log verbatim (so it is still relayed), and its sequence
    /// counts as held so the stream from its origin keeps flowing. Used for a source
    /// transaction that cannot be applied here, so one bad row never blocks a channel.
    pub fn set_aside(&mut self, change: &Change, reason: &str) -> Result<(), ApplyError> {
        let result = match self.store.origins.held.classify(&change.origin, change.seq) {
            Ok(Advance::Duplicate) => return Ok(()),
            Ok(Advance::Next) => (|| -> Result<(), mysql::Error> {
                let store = &mut *self.store;
                let origin = store.origin_index(change.origin)?;
                insert_log(
                    store,
                    origin,
                    change,
                    VERBATIM_TABLE,
                    &codec::encode(change),
                )?;
                // Classified as next above.
                let _ = store.origins.held.advance(change.origin, change.seq);
                self.dirty_origins.insert(origin);
                self.progress.in_txn += 1;
                store.conn.exec_drop(
                    "INSERT INTO concord_failures(origin, seq, tbl, key_text, error, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        change.origin.to_string(),
                        change.seq as i64,
                        &change.table,
                        change.key.to_string(),
                        reason,
                        now_ms() as i64,
                    ),
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
            self.store.rollback();
            // The in-memory version vector, origins and clock may hold what was rolled
            // back: reload them now so the store answers truthfully at once.
            if self.store.reload().is_err() {
                self.store.stale = true;
            }
        }
    }
}

fn store_error(e: mysql::Error) -> Failure {
    Failure::Store(e.into())
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

fn insert_log(
    store: &mut MyStore,
    origin: i32,
    change: &Change,
    table: i32,
    body: &[u8],
) -> Result<(), mysql::Error> {
    store.conn.exec_drop(
        "INSERT INTO concord_log(origin, seq, hlc, tbl, pk, cl, body, txn_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            origin,
            change.seq as i64,
            change.hlc.as_u64() as i64,
            table,
            change.key.as_bytes(),
            change.causal_length.0 as i64,
            body,
            change.last_in_txn,
        ),
    )
}

/// Records `conflict` unless the two writes wrote the same value; returns whether it
/// recorded it.
fn record_conflict(
    store: &mut MyStore,
    table: &TableInfo,
    change: &Change,
    key_params: &[My],
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
            let text: Option<Option<String>> = store
                .conn
                .exec_first(
                    table.select_column_sql(index),
                    mysql::Params::Positional(key_params.to_vec()),
                )
                .map_err(store_error)?;
            match text {
                Some(t) => parse(table.columns[index].kind, t.as_deref()).unwrap_or(Value::Null),
                None => Value::Null,
            }
        }
        None => Value::Null,
    };
    if !is_real_conflict(kind, &local_value, &remote_value) {
        return Ok(false);
    }
    let column = column_index.map(|index| table.columns[index].name.clone());
    store
        .conn
        .exec_drop(
            "INSERT INTO concord_conflicts(tbl, pk, key_text, kind, column_name, local_value,
                 local_version, remote_value, remote_version, winner)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            mysql::Params::Positional(vec![
                table.name.clone().into(),
                change.key.as_bytes().to_vec().into(),
                change.key.to_string().into(),
                kind.into(),
                column.into(),
                codec::encode(&local_value).into(),
                local_version.to_string().into(),
                codec::encode(&remote_value).into(),
                remote_version.to_string().into(),
                winner.into(),
            ]),
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
