//! The apply algorithm, written once for every store.
//!
//! Applying a remote change is the same work whatever the database: skip what is held,
//! bound the change's clock, check it against the table, load the row's clock, let
//! [`merge_remote`] decide, record the conflicts it reports, write the user's row as
//! decided, save the clock, log the change as received so it can be relayed, and
//! advance the version vector; commit only at a source-transaction boundary. An
//! [`ApplySession`] does all of that. A database takes part through [`ApplyBackend`]:
//! its transactions, its value conversion, and the reads and writes of its own tables,
//! and nothing that decides anything. That is what keeps the three stores from
//! drifting apart (they once had, each in its own copy of this loop).
//!
//! A backend may defer its writes (PostgreSQL keeps row clocks and log entries in a
//! batch and writes them with `COPY`), as long as everything is written by
//! [`ApplyBackend::commit`] and a clock read after a write sees that write.
//!
//! Users' rows may be deferred too, to be written set-based: one statement per change
//! cost a round trip to the server for every row. Where they must be written is the
//! engine's decision, made here once for every store: before a key is written a second
//! time (two writes of one key in one set statement have no defined order), before a
//! conflict reads the row, and before commit ([`ApplyBackend::flush_rows`]); the backend
//! adds its own bounds (a change of table, kind or columns, a size). So the database
//! sees the writes in the order a row-by-row apply would make them. The price is that a
//! write the database refuses is known only when its set is written, perhaps while a
//! later change is applied, and cannot be pinned on one change
//! ([`RowError::RefusedInSet`]). [`WriteMode::Exact`] writes each row before the next
//! change, so the refusal names its change; callers that must name it
//! ([`crate::apply_setting_aside`] retrying a source transaction alone, before setting
//! it aside) apply again in that mode. No savepoints: one per set would overflow
//! PostgreSQL's cache of 64 subtransactions on a large transaction.

use std::collections::{BTreeSet, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use concord_core::merge::{Conflict, IncomingColumn, RowClock, RowEffect, merge_remote};
use concord_core::{Advance, Change, HlcClock, NodeId, PrimaryKey, Value, Version, VersionVector};

use crate::bookkeeping::{self, SqlDriver};
use crate::format::{self, LogBodyRef, LogColumnRef};
use crate::origins::{Origins, stored_version};
use crate::pending::WriteKind;
use crate::{
    ApplyError, ApplyReport, ApplyTxn, ConflictEntry, Failure, RowError, RowFailure, StoreError,
    TxnProgress, check_change, is_real_conflict, newest_hlc,
};

/// `log.tbl` of an entry kept verbatim: its body is the encoding of the whole
/// [`Change`]. Relays keep every change so, and so does a node for a change it set
/// aside because it could not apply it.
pub const VERBATIM_TABLE: i64 = 0;

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the engine needs to know of a tracked table.
pub trait TrackedTable {
    /// The table's id in the store's metadata.
    fn id(&self) -> i64;
    /// The name changes carry.
    fn name(&self) -> &str;
    /// Positions of the primary-key columns, in key order.
    fn key_columns(&self) -> &[usize];
    /// The position of the column named `column`.
    fn position_of(&self, column: &str) -> Option<usize>;
    /// The name of the column at `index`.
    fn column_name(&self, index: usize) -> &str;
}

/// The key columns of `table`, in key order, each quoted with the store's `quote`.
pub fn quoted_keys<T: TrackedTable + ?Sized>(table: &T, quote: fn(&str) -> String) -> Vec<String> {
    table
        .key_columns()
        .iter()
        .map(|&p| quote(table.column_name(p)))
        .collect()
}

/// A write to a user's row, as the merge decided it, with values already converted for
/// the database. Columns are in ascending position, so one prepared statement serves
/// every change that writes the same columns.
pub enum RowWrite<'a, P> {
    /// Delete the row.
    Delete {
        /// The key's values, in key order.
        key: &'a [P],
    },
    /// Set `columns` to `values` in the existing row.
    Update {
        /// The key's values, in key order.
        key: &'a [P],
        /// Column positions written.
        columns: &'a [usize],
        /// Their values.
        values: &'a [&'a P],
    },
    /// Insert the row with its key and `columns` set to `values` (the rest default).
    Insert {
        /// The key's values, in key order.
        key: &'a [P],
        /// Column positions written.
        columns: &'a [usize],
        /// Their values.
        values: &'a [&'a P],
    },
}

impl<'a, P> RowWrite<'a, P> {
    /// What the write does, the columns it writes, the key, and the values.
    pub fn parts(&self) -> (WriteKind, &'a [usize], &'a [P], &'a [&'a P]) {
        match *self {
            RowWrite::Delete { key } => (WriteKind::Delete, &[], key, &[]),
            RowWrite::Update {
                key,
                columns,
                values,
            } => (WriteKind::Update, columns, key, values),
            RowWrite::Insert {
                key,
                columns,
                values,
            } => (WriteKind::Insert, columns, key, values),
        }
    }
}

/// How an apply transaction writes users' rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// A backend may hold writes back and write them set-based
    /// ([`ApplyBackend::flush_rows`]). A write the database refuses is then known only
    /// when a set is written, possibly while a later change is applied: it is reported
    /// as [`RowError::RefusedInSet`], and [`WriteMode::Exact`] finds which change it was.
    #[default]
    Sets,
    /// Every row is written before the next change is applied, so a refusal names its
    /// change ([`RowError::Refused`]), as one statement per row always did.
    Exact,
}

/// One entry to append to the change log.
pub struct LogEntry<'a> {
    /// The origin's index ([`Origins`]).
    pub origin: u32,
    /// The origin's sequence number.
    pub seq: u64,
    /// The change's clock.
    pub hlc: u64,
    /// The table's id, or [`VERBATIM_TABLE`].
    pub table: i64,
    /// The encoded primary key.
    pub key: &'a [u8],
    /// The row's causal length.
    pub causal_length: u64,
    /// A [`format::LogBody`], or the whole change for [`VERBATIM_TABLE`].
    pub body: Vec<u8>,
    /// Whether it ends its source transaction.
    pub txn_end: bool,
}

/// One conflict to record.
pub struct ConflictRow<'a> {
    /// The table's name.
    pub table: &'a str,
    /// The row's key.
    pub key: &'a PrimaryKey,
    /// `column` or `update-vs-delete`.
    pub kind: &'static str,
    /// The column, for a column conflict.
    pub column: Option<&'a str>,
    /// The value held locally when the writes met.
    pub local_value: &'a Value,
    /// Its version.
    pub local_version: Version,
    /// The incoming value.
    pub remote_value: &'a Value,
    /// Its version.
    pub remote_version: Version,
    /// `local` or `remote`.
    pub winner: &'static str,
}

/// A database's part in applying changes: its transactions and its own tables. It
/// decides nothing; [`ApplySession`] calls it in the order the algorithm needs.
pub trait ApplyBackend {
    /// The store's description of a tracked table.
    type Table: TrackedTable;
    /// A value converted for the database, checked against its column. It may borrow
    /// the change's value (SQLite binds it as it is), so a large value is never copied.
    type Param<'v>;

    /// The store's connection as a [`SqlDriver`].
    type Sql<'a>: SqlDriver
    where
        Self: 'a;

    /// The store's connection, to run Concord's shared bookkeeping statements on.
    fn sql(&mut self) -> Self::Sql<'_>;
    /// The origin map and version vector.
    fn origins(&mut self) -> &mut Origins;
    /// The replica's hybrid logical clock.
    fn hlc(&mut self) -> &mut HlcClock;
    /// Whether the store keeps no user tables and logs every change verbatim.
    fn is_relay(&self) -> bool {
        false
    }
    /// The tracked table named `name`.
    fn table(&self, name: &str) -> Option<Arc<Self::Table>>;

    /// Opens a write transaction in which capture is silent, and captures local writes
    /// pending before it (so row clocks match the tables); returns how many it captured.
    fn begin(&mut self) -> Result<u64, StoreError>;
    /// Saves the held sequence of each `(origin index, seq)` and the clock, writes
    /// anything deferred, and commits.
    fn commit(&mut self, held: &[(u32, u64)]) -> Result<(), StoreError>;
    /// Rolls back the open transaction and reloads what the store keeps in memory.
    fn rollback(&mut self);

    /// The index of `node`, allocated (inside the open transaction) if new.
    fn origin_index(&mut self, node: NodeId) -> Result<u32, StoreError>;
    /// Converts `value` for column `index` of `table`, refusing what the column cannot
    /// hold exactly.
    fn param<'v>(
        &self,
        table: &Self::Table,
        index: usize,
        value: &'v Value,
    ) -> Result<Self::Param<'v>, RowError>;
    /// Hints that `changes` are about to be applied, so their row clocks may be read at
    /// once.
    fn prefetch(&mut self, _changes: &[Change]) -> Result<(), StoreError> {
        Ok(())
    }
    /// The row's clock; a row never seen has the default clock.
    fn load_clock(&mut self, table: &Self::Table, key: &PrimaryKey) -> Result<RowClock, Failure>;
    /// Saves the row's clock; `existed` says whether it had one.
    fn save_clock(
        &mut self,
        table: &Self::Table,
        key: &PrimaryKey,
        clock: &RowClock,
        existed: bool,
    ) -> Result<(), StoreError>;
    /// Writes the user's row, or holds the write back to write it with the next ones of
    /// the same table, kind and columns ([`crate::pending`]); a refusal by the database
    /// is [`RowError::Refused`].
    fn write_row(
        &mut self,
        table: &Self::Table,
        write: RowWrite<'_, Self::Param<'_>>,
    ) -> Result<(), Failure>;
    /// Whether [`ApplyBackend::write_row`] may hold writes back to write them as sets.
    /// A store that writes every row at once (SQLite, in process) says no, and its
    /// sessions run in [`WriteMode::Exact`] whatever they were asked.
    fn writes_sets(&self) -> bool {
        false
    }
    /// Writes, in order, the writes [`ApplyBackend::write_row`] held back. The engine
    /// calls it before anything reads a user's row, before a key is written a second
    /// time, after every write in [`WriteMode::Exact`], and before commit.
    fn flush_rows(&mut self) -> Result<(), Failure> {
        Ok(())
    }
    /// The value column `index` of the row holds now (NULL if there is no row); the
    /// writes held back were flushed first.
    fn current_value(
        &mut self,
        table: &Self::Table,
        index: usize,
        key: &[Self::Param<'_>],
    ) -> Result<Value, StoreError>;
    /// Appends an entry to the change log.
    fn append_log(&mut self, entry: LogEntry<'_>) -> Result<(), StoreError>;
    /// Deletes the log entries of origin `origin` (an index) up to sequence `seq`. A
    /// backend that holds log entries back writes them first.
    fn drop_log_through(&mut self, origin: u32, seq: u64) -> Result<(), StoreError> {
        bookkeeping::drop_log_through(&mut self.sql(), origin, seq)
    }
}

/// Whether a change is applied as it arrives, again after it was set aside, or is a
/// row's state from a snapshot (sequence 0: merged, neither logged nor counted as held;
/// see [`crate::SnapshotReader`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    New,
    SetAside,
    RowState,
}

/// An open apply transaction over any store. Dropping it without
/// [`ApplySession::commit`] rolls back.
pub struct ApplySession<'s, B: ApplyBackend> {
    store: &'s mut B,
    open: bool,
    dirty_origins: BTreeSet<u32>,
    progress: TxnProgress,
    mode: WriteMode,
    run: Run,
    /// The last change that ended a source transaction, to name a set refused at
    /// commit.
    last_end: Option<Named>,
}

/// The rows written since the backend last flushed (as far as the engine knows).
#[derive(Default)]
struct Run {
    /// A hash of `(table id, key)` of each row written: a collision only costs an
    /// early flush.
    keys: HashSet<u64>,
    hasher: RandomState,
    writes: usize,
}

/// A change's name, as [`RowFailure`] gives it.
struct Named {
    origin: String,
    seq: u64,
    table: String,
    key: String,
}

impl Named {
    fn of(change: &Change) -> Self {
        Named {
            origin: change.origin.short(),
            seq: change.seq,
            table: change.table.clone(),
            key: change.key.to_string(),
        }
    }
}

impl<'s, B: ApplyBackend> ApplySession<'s, B> {
    /// Opens an apply transaction on `store` that writes rows set-based where the
    /// store can ([`WriteMode::Sets`]).
    pub fn begin(store: &'s mut B) -> Result<Self, ApplyError> {
        Self::begin_in(store, WriteMode::Sets)
    }

    /// Opens an apply transaction on `store` that writes rows as `mode` says.
    pub fn begin_in(store: &'s mut B, mode: WriteMode) -> Result<Self, ApplyError> {
        let mode = if store.writes_sets() {
            mode
        } else {
            WriteMode::Exact
        };
        let mut session = ApplySession {
            store,
            open: false,
            dirty_origins: BTreeSet::new(),
            progress: TxnProgress::default(),
            mode,
            run: Run::default(),
            last_end: None,
        };
        session.open_transaction()?;
        Ok(session)
    }

    fn open_transaction(&mut self) -> Result<(), ApplyError> {
        self.progress.began();
        self.run = Run::default();
        // Marked open first: a failure inside `begin` must still roll back.
        self.open = true;
        match self.store.begin() {
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

    /// Hints that `changes` come next (see [`ApplyBackend::prefetch`]).
    pub fn prefetch(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
        if self.progress.is_poisoned() {
            return Ok(());
        }
        if let Err(e) = self.store.prefetch(changes) {
            self.progress.poison();
            return Err(e.into());
        }
        Ok(())
    }

    /// Commits what was applied and opens a new transaction.
    pub fn checkpoint(&mut self) -> Result<(), ApplyError> {
        self.commit_current()?;
        self.open_transaction()
    }

    /// Commits and closes the session.
    pub fn commit(mut self) -> Result<ApplyReport, ApplyError> {
        self.commit_current()?;
        Ok(self.progress.take_report())
    }

    fn commit_current(&mut self) -> Result<(), ApplyError> {
        self.progress.ready_to_commit()?;
        if let Err(failure) = flush(&mut *self.store, &mut self.run, self.mode) {
            self.progress.poison();
            return Err(match (failure, &self.last_end) {
                (Failure::Row(error), Some(last)) => ApplyError::Row(Box::new(RowFailure {
                    origin: last.origin.clone(),
                    seq: last.seq,
                    table: last.table.clone(),
                    key: last.key.clone(),
                    error,
                })),
                (Failure::Row(error), None) => ApplyError::Store(StoreError::Corrupt {
                    table: "apply",
                    detail: error.to_string(),
                }),
                (Failure::Store(e), _) => e.into(),
            });
        }
        let origins = self.store.origins();
        let held: Vec<(u32, u64)> = self
            .dirty_origins
            .iter()
            .map(|&index| (index, origins.held_by_index(index)))
            .collect();
        if let Err(e) = self.store.commit(&held) {
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
        let mode = if change.seq == 0 {
            Mode::RowState
        } else {
            Mode::New
        };
        let outcome = self.apply_inner(change, mode);
        self.note_end(change);
        self.progress.finish(change, outcome)
    }

    fn note_end(&mut self, change: &Change) {
        if change.last_in_txn {
            self.last_end = Some(Named::of(change));
        }
    }

    /// Applies a change this store set aside earlier: it is held and logged already, so
    /// only the merge and its writes happen now, and its failure record goes.
    fn reapply(&mut self, change: &Change) -> Result<(), ApplyError> {
        self.progress.start(change)?;
        let outcome = self
            .apply_inner(change, Mode::SetAside)
            .and_then(|applied| {
                bookkeeping::forget_failure(&mut self.store.sql(), change.origin, change.seq)
                    .map_err(Failure::Store)?;
                Ok(applied)
            });
        self.note_end(change);
        self.progress.finish(change, outcome)
    }

    /// Returns whether the change was new (false: already held, skipped).
    fn apply_inner(&mut self, change: &Change, mode: Mode) -> Result<bool, Failure> {
        let store = &mut *self.store;
        if mode == Mode::New
            && store.origins().held.classify(&change.origin, change.seq)? == Advance::Duplicate
        {
            self.progress.report.duplicates += 1;
            return Ok(false);
        }
        let now = now_ms();
        let newest = newest_hlc(change);
        store.hlc().check(newest, now)?;
        if store.is_relay() {
            if mode == Mode::RowState {
                return Err(RowError::Invalid(
                    "a relay keeps no rows and cannot merge a snapshot's row state".into(),
                )
                .into());
            }
            change.key.decode()?;
            store.hlc().observe(newest, now)?;
            self.log_verbatim(change).map_err(Failure::Store)?;
            self.progress.report.applied += 1;
            return Ok(true);
        }
        let table = store.table(&change.table).ok_or(RowError::UnknownTable)?;
        let table = &*table;
        let checked = check_change(change, table.key_columns().len(), |name| {
            table.position_of(name)
        })?;
        let key_params: Vec<B::Param<'_>> = table
            .key_columns()
            .iter()
            .zip(&checked.key_values)
            .map(|(&index, value)| store.param(table, index, value))
            .collect::<Result<_, _>>()?;
        // A delete's columns are the clocks its writer held, not values to write.
        let params: Vec<B::Param<'_>> = if change.is_delete() {
            Vec::new()
        } else {
            change
                .columns
                .iter()
                .zip(&checked.incoming)
                .map(|(c, column)| store.param(table, column.index, &c.value))
                .collect::<Result<_, _>>()?
        };
        let incoming = &checked.incoming;
        let mut clock = store.load_clock(table, &change.key)?;
        let was_alive = clock.causal_length.is_alive();
        let existed = clock.causal_length.0 > 0;
        let decision = merge_remote(
            &mut clock,
            change.causal_length,
            Version {
                hlc: change.hlc,
                origin: change.origin,
            },
            change.delete_seen,
            incoming,
        );
        if !decision.conflicts.is_empty() {
            // Recording a conflict reads the row as the changes before this one left it.
            flush(store, &mut self.run, self.mode)?;
        }
        for conflict in &decision.conflicts {
            if record_conflict(store, table, change, &key_params, incoming, conflict)? {
                self.progress.report.conflicts += 1;
            }
        }
        let mut winners: Vec<(usize, &B::Param<'_>)> = decision
            .winners
            .iter()
            .map(|&pos| (incoming[pos].index, &params[pos]))
            .filter(|(index, _)| !table.key_columns().contains(index))
            .collect();
        winners.sort_unstable_by_key(|(index, _)| *index);
        let columns: Vec<usize> = winners.iter().map(|(i, _)| *i).collect();
        let values: Vec<&B::Param<'_>> = winners.iter().map(|(_, p)| *p).collect();
        let key = &key_params[..];
        match decision.effect {
            RowEffect::None => {}
            RowEffect::Delete => write(
                store,
                &mut self.run,
                self.mode,
                table,
                &change.key,
                RowWrite::Delete { key },
            )?,
            RowEffect::Update => {
                if !columns.is_empty() {
                    write(
                        store,
                        &mut self.run,
                        self.mode,
                        table,
                        &change.key,
                        RowWrite::Update {
                            key,
                            columns: &columns,
                            values: &values,
                        },
                    )?;
                }
            }
            RowEffect::Recreate => {
                if was_alive {
                    write(
                        store,
                        &mut self.run,
                        self.mode,
                        table,
                        &change.key,
                        RowWrite::Delete { key },
                    )?;
                }
                write(
                    store,
                    &mut self.run,
                    self.mode,
                    table,
                    &change.key,
                    RowWrite::Insert {
                        key,
                        columns: &columns,
                        values: &values,
                    },
                )?;
            }
        }
        if decision.clock_changed {
            store
                .save_clock(table, &change.key, &clock, existed)
                .map_err(Failure::Store)?;
        }
        store.hlc().observe(newest, now)?;
        if mode != Mode::New {
            // Logged (verbatim) and counted as held when it was set aside; a row's
            // state is no change of any origin.
            self.progress.in_txn += 1;
            self.progress.report.applied += 1;
            return Ok(true);
        }

        // Log the change as received, so this node can relay it unchanged.
        let body = log_body(store, change, incoming).map_err(Failure::Store)?;
        let origin = store.origin_index(change.origin).map_err(Failure::Store)?;
        store
            .append_log(LogEntry {
                origin,
                seq: change.seq,
                hlc: change.hlc.as_u64(),
                table: table.id(),
                key: change.key.as_bytes(),
                causal_length: change.causal_length.0,
                body,
                txn_end: change.last_in_txn,
            })
            .map_err(Failure::Store)?;
        store.origins().held.advance(change.origin, change.seq)?;
        self.dirty_origins.insert(origin);
        self.progress.in_txn += 1;
        self.progress.report.applied += 1;
        Ok(true)
    }

    /// Logs a change as received, without applying it, and records it as held. The
    /// caller checked that its sequence follows what is held. Returns the encoded
    /// change.
    fn log_verbatim(&mut self, change: &Change) -> Result<Vec<u8>, StoreError> {
        let origin = self.store.origin_index(change.origin)?;
        let body = format::encode(change);
        self.store.append_log(LogEntry {
            origin,
            seq: change.seq,
            hlc: change.hlc.as_u64(),
            table: VERBATIM_TABLE,
            key: change.key.as_bytes(),
            causal_length: change.causal_length.0,
            body: body.clone(),
            txn_end: change.last_in_txn,
        })?;
        let _ = self.store.origins().held.advance(change.origin, change.seq);
        self.dirty_origins.insert(origin);
        self.progress.in_txn += 1;
        Ok(body)
    }

    /// Sets a change aside: it is not applied, but recorded as a failure with `reason`
    /// and kept in the log verbatim (so it is still relayed), and its sequence counts
    /// as held so the stream from its origin keeps flowing. Used for a source
    /// transaction that cannot be applied here, so one bad row never blocks a channel.
    pub fn set_aside(&mut self, change: &Change, reason: &str) -> Result<(), ApplyError> {
        if change.seq == 0 {
            // A row's state from a snapshot: no sequence to hold or log, only the
            // failure to record (with the state, so it can be retried).
            let body = format::encode(change);
            let result = bookkeeping::record_failure(&mut self.store.sql(), change, &body, reason)
                .map_err(ApplyError::from);
            return self.progress.finish_set_aside(change, result);
        }
        let result = match self
            .store
            .origins()
            .held
            .classify(&change.origin, change.seq)
        {
            Ok(Advance::Duplicate) => return Ok(()),
            Ok(Advance::Next) => self
                .log_verbatim(change)
                .and_then(|body| {
                    bookkeeping::record_failure(&mut self.store.sql(), change, &body, reason)
                })
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

impl<B: ApplyBackend> ApplySession<'_, B> {
    /// Records that everything `holds` names is held, without logging it (see
    /// [`ApplyTxn::adopt_held`]).
    pub fn adopt_held(&mut self, holds: &VersionVector) -> Result<(), ApplyError> {
        self.progress.ready_to_commit()?;
        for (origin, &seq) in holds.iter() {
            if seq <= self.store.origins().held.get(origin) {
                continue;
            }
            let index = match self.store.origin_index(*origin) {
                Ok(index) => index,
                Err(e) => {
                    self.progress.poison();
                    return Err(e.into());
                }
            };
            // The log now misses this origin's changes up to `seq` (they arrived as
            // rows): its earlier entries go too, so the log starts after the gap and a
            // peer that needs them is told to take a snapshot ([`StoreError::Pruned`])
            // instead of receiving a history with a hole in it.
            if let Err(e) = self.store.drop_log_through(index, seq) {
                self.progress.poison();
                return Err(e.into());
            }
            self.store.origins().held.set(*origin, seq);
            self.dirty_origins.insert(index);
        }
        Ok(())
    }
}

impl<B: ApplyBackend> Drop for ApplySession<'_, B> {
    fn drop(&mut self) {
        if self.open {
            self.store.rollback();
        }
    }
}

impl<B: ApplyBackend> ApplyTxn for ApplySession<'_, B> {
    fn apply(&mut self, change: &Change) -> Result<(), ApplyError> {
        ApplySession::apply(self, change)
    }

    fn prefetch(&mut self, changes: &[Change]) -> Result<(), ApplyError> {
        ApplySession::prefetch(self, changes)
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

    fn adopt_held(&mut self, holds: &VersionVector) -> Result<(), ApplyError> {
        ApplySession::adopt_held(self, holds)
    }

    fn commit(self: Box<Self>) -> Result<ApplyReport, ApplyError> {
        ApplySession::commit(*self)
    }
}

/// Writes `write` through the backend as `mode` says: in [`WriteMode::Sets`] the
/// writes held back are flushed first if they already hold this row (two writes of one
/// key in one set statement would be applied in no defined order); in
/// [`WriteMode::Exact`] the row is written at once.
fn write<B: ApplyBackend>(
    store: &mut B,
    run: &mut Run,
    mode: WriteMode,
    table: &B::Table,
    key: &PrimaryKey,
    write: RowWrite<'_, B::Param<'_>>,
) -> Result<(), Failure> {
    if mode == WriteMode::Sets {
        let hash = run.hasher.hash_one((table.id(), key.as_bytes()));
        if !run.keys.insert(hash) {
            flush(store, run, mode)?;
            run.keys.insert(hash);
        }
    }
    run.writes += 1;
    store
        .write_row(table, write)
        .map_err(|e| in_mode(e, mode))?;
    if mode == WriteMode::Exact {
        flush(store, run, mode)?;
    }
    Ok(())
}

/// Has the backend write what it holds back.
fn flush<B: ApplyBackend>(store: &mut B, run: &mut Run, mode: WriteMode) -> Result<(), Failure> {
    run.keys.clear();
    if std::mem::take(&mut run.writes) == 0 {
        return Ok(());
    }
    store.flush_rows().map_err(|e| in_mode(e, mode))
}

/// A refusal while writing sets cannot be pinned on one change.
fn in_mode(failure: Failure, mode: WriteMode) -> Failure {
    match (mode, failure) {
        (WriteMode::Sets, Failure::Row(RowError::Refused(e))) => {
            Failure::Row(RowError::RefusedInSet(e))
        }
        (_, failure) => failure,
    }
}

/// Changes read ahead by [`apply_stream`], so their row clocks are read at once.
const READ_AHEAD: usize = 2_000;

/// Applies a stream of changes, committing at source-transaction boundaries once
/// `batch` changes are in the transaction. Memory use does not grow with the length of
/// the stream. On error, everything since the last commit is rolled back; what was
/// committed before stays (the version vector says what that was).
pub fn apply_stream<B: ApplyBackend>(
    store: &mut B,
    batch: usize,
    changes: &mut dyn Iterator<Item = Result<Change, StoreError>>,
) -> Result<ApplyReport, ApplyError> {
    let batch = batch.max(1);
    let mut session = ApplySession::begin(store)?;
    let mut chunk: Vec<Change> = Vec::with_capacity(READ_AHEAD);
    loop {
        // Read ahead, so that the chunk's row clocks are read in one query. A source
        // error ends the chunk: what came before it is applied first.
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
                // The new transaction captured local writes: clocks read before may be
                // stale.
                prefetched = false;
            }
        }
        if let Some(e) = source_error {
            return Err(e);
        }
        if !more {
            break;
        }
    }
    session.commit()
}

/// The changes set aside, decoded and grouped into their source transactions, oldest
/// first. A group cut short (its last change was discarded, or never recorded) ends
/// where the next group's origin or sequence does not follow.
fn set_aside_groups<B: ApplyBackend>(store: &mut B) -> Result<Vec<Vec<Change>>, ApplyError> {
    let mut groups: Vec<Vec<Change>> = Vec::new();
    let mut open = false;
    for body in bookkeeping::set_aside_changes(&mut store.sql())? {
        let change: Change = format::decode(&body).map_err(|detail| StoreError::Corrupt {
            table: "failures",
            detail,
        })?;
        let follows = open
            && groups
                .last()
                .and_then(|g| g.last())
                .is_some_and(|prev: &Change| {
                    prev.origin == change.origin && prev.seq + 1 == change.seq
                });
        open = !change.last_in_txn;
        match groups.last_mut() {
            Some(group) if follows => group.push(change),
            _ => groups.push(vec![change]),
        }
    }
    Ok(groups)
}

/// Tries again every source transaction set aside, each in its own store transaction:
/// one the store now accepts (the column it names was added since, the constraint that
/// refused it was relaxed) is applied whole and its failure records go; one still
/// refused stays set aside. Merging is a join, so applying a change late gives the same
/// rows as applying it on time. The report counts what was applied (`applied`) and
/// what still waits (`set_aside`).
pub fn retry_set_aside<B: ApplyBackend>(store: &mut B) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();
    for group in set_aside_groups(store)? {
        // Exact: a refusal must show while the group is applied, not at its commit.
        let mut session = ApplySession::begin_in(store, WriteMode::Exact)?;
        let mut refused = false;
        for change in &group {
            match session.reapply(change) {
                Ok(()) => {}
                Err(ApplyError::Row(_)) => {
                    refused = true;
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        if refused {
            // Dropping the session rolls back whatever of the group was applied.
            drop(session);
            report.set_aside += group.len() as u64;
        } else {
            // Marked applied only once the commit succeeded.
            report.absorb(&session.commit()?);
        }
    }
    Ok(report)
}

/// Forgets source transactions set aside: every one, or the one holding change
/// `(origin, seq)`. They stay in the log (and so are still relayed) but are never
/// retried. Returns how many changes were forgotten.
pub fn discard_set_aside<B: ApplyBackend>(
    store: &mut B,
    which: Option<(NodeId, u64)>,
) -> Result<u64, ApplyError> {
    let groups = match which {
        None => Vec::new(),
        Some(_) => set_aside_groups(store)?,
    };
    let session = ApplySession::begin(store)?;
    let forgotten = match which {
        None => bookkeeping::forget_all_failures(&mut session.store.sql())?,
        Some((origin, seq)) => {
            let mut forgotten = 0;
            let chosen = groups
                .iter()
                .filter(|g| g.iter().any(|c| c.origin == origin && c.seq == seq));
            for change in chosen.flatten() {
                bookkeeping::forget_failure(&mut session.store.sql(), change.origin, change.seq)?;
                forgotten += 1;
            }
            forgotten
        }
    };
    session.commit()?;
    Ok(forgotten)
}

/// The encoded body of `change`'s log entry, with its columns at their local positions;
/// the values are encoded from the change, never copied.
fn log_body<B: ApplyBackend>(
    store: &mut B,
    change: &Change,
    incoming: &[IncomingColumn],
) -> Result<Vec<u8>, StoreError> {
    let mut index_of = |node| store.origin_index(node);
    let mut columns = Vec::with_capacity(incoming.len());
    for (pos, inc) in incoming.iter().enumerate() {
        // A delete's columns (those this table has: `incoming`) carry no values.
        let value = match change.columns.get(pos) {
            Some(c) if !change.is_delete() => &c.value,
            _ => &Value::Null,
        };
        columns.push(LogColumnRef {
            index: inc.index as u32,
            value,
            version: stored_version(inc.version, &mut index_of)?,
            replaced: inc
                .replaced
                .map(|v| stored_version(v, &mut index_of))
                .transpose()?,
        });
    }
    Ok(format::encode(&LogBodyRef {
        columns,
        delete_seen: change
            .delete_seen
            .map(|v| stored_version(v, &mut index_of))
            .transpose()?,
    }))
}

/// Records `conflict` unless the two writes wrote the same value; returns whether it
/// recorded it.
fn record_conflict<B: ApplyBackend>(
    store: &mut B,
    table: &B::Table,
    change: &Change,
    key: &[B::Param<'_>],
    incoming: &[IncomingColumn],
    conflict: &Conflict,
) -> Result<bool, Failure> {
    let entry = ConflictEntry::of(change, incoming, conflict);
    let local_value = match entry.column {
        Some(index) => store
            .current_value(table, index, key)
            .map_err(Failure::Store)?,
        None => Value::Null,
    };
    if !is_real_conflict(entry.kind, &local_value, &entry.remote_value) {
        return Ok(false);
    }
    bookkeeping::record_conflict(
        &mut store.sql(),
        &ConflictRow {
            table: table.name(),
            key: &change.key,
            kind: entry.kind,
            column: entry.column.map(|index| table.column_name(index)),
            local_value: &local_value,
            local_version: entry.local_version,
            remote_value: &entry.remote_value,
            remote_version: entry.remote_version,
            winner: entry.winner,
        },
    )
    .map_err(Failure::Store)?;
    Ok(true)
}
