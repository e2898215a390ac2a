//! Applying remote changes.
//!
//! An [`ApplySession`] is one open write transaction. Opening it marks the transaction
//! as Concord's own (so the capture triggers stay silent) and first folds pending local
//! writes into the log, so row metadata matches the table when the merge rules run. Each
//! change is then checked (known table and columns, well-formed key, value types, clock
//! bound, sequence continuity), merged by [`concord_core::merge::merge_remote`], and its
//! decision written: the user's row, the row clock, any conflicts, and the change itself
//! appended to the log so this node can relay it. The version vector advance is written
//! before commit, in the same transaction.
//!
//! If anything fails, the session is poisoned and dropping it rolls the transaction back:
//! nothing since the last commit is applied, and the store reloads its in-memory state.
//! Commits happen only at source-transaction boundaries, so a source transaction is
//! never applied in part.

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_core::merge::{Conflict, IncomingColumn, RowEffect, merge_remote};
use concord_core::{Advance, Change, Value, Version};
use rusqlite::params_from_iter;
use rusqlite::types::ToSql;

use crate::codec::{self, LogBody, LogColumn, Sql};
use crate::schema::{Affinity, TableInfo, VERBATIM_TABLE, quote};
use crate::store::{LoadClockError, SqliteStore, now_ms};
use concord_store::{ApplyError, ApplyReport, ApplyTxn, RowError, RowFailure};
use concord_store::{
    CheckedChange, ConflictEntry, Failure, TxnProgress, check_change, is_real_conflict, newest_hlc,
};

/// An open apply transaction. Dropping it without [`ApplySession::commit`] rolls back.
pub struct ApplySession<'s> {
    store: &'s mut SqliteStore,
    open: bool,
    dirty_origins: BTreeSet<u32>,
    progress: TxnProgress,
}

impl SqliteStore {
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
        self.store
            .conn
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO __concord_applying VALUES (1);")?;
        self.open = true;
        self.progress.began();
        match self.store.capture_in_txn() {
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
        let result = (|| -> Result<(), rusqlite::Error> {
            for &index in &self.dirty_origins {
                let node = self.store.origins.node_of[&index];
                self.store
                    .save_progress(index, self.store.origins.held.get(&node))?;
            }
            self.store
                .conn
                .execute_batch("DELETE FROM __concord_applying; COMMIT;")
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
        if store.relay {
            change.key.decode()?;
            store.clock.observe(newest, now)?;
            self.log_verbatim(change).map_err(store_error)?;
            self.progress.report.applied += 1;
            return Ok(true);
        }
        let table: Arc<TableInfo> = store
            .table_index(&change.table)
            .map(|i| store.tables[i].clone())
            .ok_or(RowError::UnknownTable)?;
        let checked = check_change(change, table.key_columns.len(), |name| {
            table.position_of.get(name).copied()
        })?;
        for (&index, value) in table.key_columns.iter().zip(&checked.key_values) {
            check_type(&table, index, value)?;
        }
        for (c, column) in change.columns.iter().zip(&checked.incoming) {
            check_type(&table, column.index, &c.value)?;
        }
        let CheckedChange {
            key_values,
            incoming,
        } = checked;
        let mut clock = store
            .load_clock(table.id, &change.key)
            .map_err(|e| match e {
                LoadClockError::Sqlite(e) => Failure::Store(e.into()),
                LoadClockError::Corrupt(d) => RowError::CorruptMetadata(d).into(),
            })?;
        let was_alive = clock.causal_length.is_alive();
        let existed = clock.causal_length.0 > 0;
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
            if record_conflict(store, &table, change, &key_values, &incoming, conflict)? {
                self.progress.report.conflicts += 1;
            }
        }
        let write = |sql: &str, values: &[&dyn ToSql]| -> Result<(), Failure> {
            let mut stmt = store
                .conn
                .prepare_cached(sql)
                .map_err(|e| RowError::Refused(e.into()))?;
            stmt.execute(values)
                .map_err(|e| RowError::Refused(e.into()))?;
            Ok(())
        };
        let key_params: Vec<Sql<'_>> = key_values.iter().map(Sql).collect();
        let mut winners: Vec<(usize, &Value)> = decision
            .winners
            .iter()
            .map(|&pos| (incoming[pos].index, &change.columns[pos].value))
            .filter(|(index, _)| !table.key_columns.contains(index))
            .collect();
        // Ascending column order, so one cached statement serves every change that
        // writes the same columns.
        winners.sort_unstable_by_key(|(index, _)| *index);
        let winner_columns: Vec<usize> = winners.iter().map(|(i, _)| *i).collect();
        let key_refs: Vec<&dyn ToSql> = key_params.iter().map(|p| p as &dyn ToSql).collect();
        match decision.effect {
            RowEffect::None => {}
            RowEffect::Delete => write(&table.delete_sql(), &key_refs)?,
            RowEffect::Update => {
                if !winners.is_empty() {
                    let values: Vec<Sql<'_>> = winners.iter().map(|(_, v)| Sql(v)).collect();
                    let params: Vec<&dyn ToSql> = values
                        .iter()
                        .map(|p| p as &dyn ToSql)
                        .chain(key_refs.iter().copied())
                        .collect();
                    write(&table.update_sql(&winner_columns), &params)?;
                }
            }
            RowEffect::Recreate => {
                if was_alive {
                    write(&table.delete_sql(), &key_refs)?;
                }
                let values: Vec<Sql<'_>> = winners.iter().map(|(_, v)| Sql(v)).collect();
                let params: Vec<&dyn ToSql> = key_refs
                    .iter()
                    .copied()
                    .chain(values.iter().map(|p| p as &dyn ToSql))
                    .collect();
                write(&table.insert_sql(&winner_columns), &params)?;
            }
        }
        if decision.clock_changed {
            store
                .save_clock(table.id, &change.key, &clock, existed)
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
        store
            .conn
            .prepare_cached(
                "INSERT INTO __concord_log(origin, seq, hlc, tbl, pk, cl, body, txn_end) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    origin,
                    change.seq as i64,
                    change.hlc.as_u64() as i64,
                    table.id,
                    change.key.as_bytes(),
                    change.causal_length.0 as i64,
                    codec::encode(&body),
                    change.last_in_txn
                ])
            })
            .map_err(store_error)?;
        store.origins.held.advance(change.origin, change.seq)?;
        self.dirty_origins.insert(origin);
        self.progress.in_txn += 1;
        self.progress.report.applied += 1;
        Ok(true)
    }

    /// Logs a change as received, without applying it, and records it as held.
    fn log_verbatim(&mut self, change: &Change) -> Result<(), rusqlite::Error> {
        let store = &mut *self.store;
        let origin = store.origin_index(change.origin)?;
        store
            .conn
            .prepare_cached(
                "INSERT INTO __concord_log(origin, seq, hlc, tbl, pk, cl, body, txn_end) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(rusqlite::params![
                origin,
                change.seq as i64,
                change.hlc.as_u64() as i64,
                VERBATIM_TABLE,
                change.key.as_bytes(),
                change.causal_length.0 as i64,
                codec::encode(change),
                change.last_in_txn
            ])?;
        // The caller checked the sequence follows what is held.
        let _ = store.origins.held.advance(change.origin, change.seq);
        self.dirty_origins.insert(origin);
        self.progress.in_txn += 1;
        Ok(())
    }

    /// Sets a change aside: it is not applied, but recorded in `__concord_failures` with
    /// `reason` and kept in the log (so it is still relayed), and its sequence counts as
    /// held so the stream from its origin keeps flowing. Used for a source transaction
    /// that cannot be applied here, so one bad row never blocks a whole channel.
    pub fn set_aside(&mut self, change: &Change, reason: &str) -> Result<(), ApplyError> {
        let gap = self.store.origins.held.classify(&change.origin, change.seq);
        let result = match gap {
            Ok(Advance::Duplicate) => return Ok(()),
            Ok(Advance::Next) => (|| -> Result<(), rusqlite::Error> {
                self.log_verbatim(change)?;
                self.store
                    .conn
                    .prepare_cached(
                        "INSERT INTO __concord_failures(origin, seq, tbl, key_text, error, at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(rusqlite::params![
                        change.origin.to_string(),
                        change.seq as i64,
                        change.table,
                        change.key.to_string(),
                        reason,
                        now_ms() as i64
                    ])?;
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
            let _ = self.store.conn.execute_batch("ROLLBACK");
            // The in-memory version vector, origins and clock may hold what was rolled
            // back: reload them now so the store answers truthfully at once.
            if self.store.reload().is_err() {
                self.store.stale = true;
            }
        }
    }
}

fn store_error(e: rusqlite::Error) -> Failure {
    Failure::Store(e.into())
}

/// Refuses a value the column would not hold as sent. SQLite's type affinity silently
/// converts some values on write (numeric-looking text in a numeric column becomes a
/// number; a real in a text column becomes text), which would make this replica hold
/// something other than what the origin wrote. Everything else is stored as is, exactly
/// as the origin's SQLite stored it: a non-STRICT table holds any value in any column,
/// and STRICT tables enforce their types themselves (reported as a refused write).
fn check_type(table: &TableInfo, index: usize, value: &Value) -> Result<(), RowError> {
    let column = &table.columns[index];
    let converted = match (column.affinity, value) {
        (Affinity::Integer | Affinity::Real | Affinity::Numeric, Value::Text(s)) => {
            looks_numeric(s)
        }
        (Affinity::Text, Value::Real(_)) => true,
        _ => false,
    };
    if !converted {
        return Ok(());
    }
    Err(RowError::WrongType {
        column: column.name.clone(),
        declared: if column.declared_type.is_empty() {
            "(none)".into()
        } else {
            column.declared_type.clone()
        },
        found: value.kind(),
        detail: "SQLite would convert it as sent".into(),
    })
}

/// Whether SQLite would read `s` as a number (a well-formed integer or real literal,
/// possibly surrounded by spaces).
fn looks_numeric(s: &str) -> bool {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
        && t.chars().any(|c| c.is_ascii_digit())
        && (t.parse::<i64>().is_ok() || t.parse::<f64>().is_ok())
}

/// Records `conflict` unless the two writes wrote the same value; returns whether it
/// recorded it.
fn record_conflict(
    store: &mut SqliteStore,
    table: &TableInfo,
    change: &Change,
    key_values: &[Value],
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
            let sql = format!(
                "SELECT {} FROM {} WHERE {}",
                quote(&table.columns[index].name),
                quote(&table.name),
                table.key_predicate(1)
            );
            store
                .conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_row(params_from_iter(key_values.iter().map(Sql)), |r| {
                        Ok(codec::from_sql(r.get_ref(0)?))
                    })
                })
                .map_err(store_error)?
                .unwrap_or(Value::Null)
        }
        None => Value::Null,
    };
    if !is_real_conflict(kind, &local_value, &remote_value) {
        return Ok(false);
    }
    let column = column_index.map(|index| table.columns[index].name.clone());
    store
        .conn
        .prepare_cached(
            "INSERT INTO __concord_conflicts(tbl, pk, key_text, kind, column_name, local_value, local_version, remote_value, remote_version, winner)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                table.name,
                change.key.as_bytes(),
                change.key.to_string(),
                kind,
                column,
                Sql(&local_value),
                local_version.to_string(),
                Sql(&remote_value),
                remote_version.to_string(),
                winner
            ])
        })
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
