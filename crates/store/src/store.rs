//! The interface the node drives, implemented by every store.
//!
//! It is object-safe: a node holds a `Box<dyn Store>` chosen by its configuration and
//! runs the same sessions over SQLite, PostgreSQL or MySQL. The division of labour is
//! fixed here: a store captures local writes into its change log, reads the log for
//! peers, and applies remote changes by writing what [`concord_core::merge`] decided;
//! it never decides a merge itself.

use crate::bookkeeping::{self, SqlDriver};
use std::path::PathBuf;

use concord_core::mapping::Kind;
use concord_core::reconcile::{Bound, Compare, LocalRun, ReconcileError, Reconciler};
use concord_core::{Change, Hlc, NodeId, VersionVector};

use crate::engine::WriteMode;
use crate::{
    ApplyError, ApplyReport, CaptureState, ChangeCursor, ConflictRecord, FailureRecord, LogPage,
    RowError, SnapshotRead, StoreError, StoreOptions, TableItems,
};

/// A database tracked by Concord.
pub trait Store: Send {
    /// Which database: `sqlite`, `postgres` or `mysql`.
    fn system(&self) -> &'static str;

    /// Where the database is, for people: a file path, or a URL without its password.
    fn location(&self) -> String;

    /// This replica's identity.
    fn node_id(&self) -> NodeId;

    /// What this replica holds from each origin.
    fn version_vector(&self) -> &VersionVector;

    /// The store's tunables.
    fn options(&self) -> &StoreOptions;

    /// Whether the store keeps no user tables and only relays changes.
    fn is_relay(&self) -> bool {
        false
    }

    /// Files whose modification means local writes may be waiting to be captured, for
    /// stores that live in files. Empty for servers, which the node polls instead.
    fn watch_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Moves local writes made since the last capture into the change log, one group
    /// per source transaction where the database exposes transactions. Returns how many
    /// changes were captured.
    fn capture(&mut self) -> Result<u64, StoreError>;

    /// Opens an apply transaction that writes rows set-based where the store can
    /// ([`WriteMode::Sets`]). Dropping it without [`ApplyTxn::commit`] rolls back.
    fn begin_apply(&mut self) -> Result<Box<dyn ApplyTxn + '_>, ApplyError> {
        self.begin_apply_in(WriteMode::Sets)
    }

    /// Opens an apply transaction that writes rows as `mode` says.
    fn begin_apply_in(&mut self, mode: WriteMode) -> Result<Box<dyn ApplyTxn + '_>, ApplyError>;

    /// A reader of the change log with its own connection, so a sync session can read
    /// while the store captures and applies.
    fn log_reader(&self) -> Result<Box<dyn LogRead>, StoreError>;

    /// A consistent snapshot of every tracked row's state, read through its own
    /// connection, for a peer the log cannot serve (see [`crate::SnapshotReader`]).
    /// Pending local writes should be captured first, so the rows' clocks describe
    /// their values.
    fn snapshot(&self) -> Result<Box<dyn SnapshotRead>, StoreError> {
        Err(StoreError::NoSnapshot(self.system()))
    }

    /// The store's connection, to run Concord's shared bookkeeping statements on
    /// ([`crate::bookkeeping`]).
    fn driver(&mut self) -> Box<dyn SqlDriver + '_>;

    /// Entries in the change log.
    fn log_len(&mut self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut *self.driver(), "log")
    }

    /// Deletes the oldest change-log entries so that at most `keep` remain; returns how
    /// many were deleted ([`bookkeeping::prune_log`]).
    fn prune_log(&mut self, keep: u64) -> Result<u64, StoreError> {
        bookkeeping::prune_log(&mut *self.driver(), keep)
    }

    /// Conflicts recorded.
    fn conflict_count(&mut self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut *self.driver(), "conflicts")
    }

    /// Every conflict recorded, oldest first.
    fn conflicts(&mut self) -> Result<Vec<ConflictRecord>, StoreError> {
        bookkeeping::conflicts(&mut *self.driver())
    }

    /// Every change set aside because it could not be applied, oldest first.
    fn failures(&mut self) -> Result<Vec<FailureRecord>, StoreError> {
        bookkeeping::failures(&mut *self.driver())
    }

    /// Captures what is ready to be captured now, without waiting for writes committed
    /// a moment ago that the store has not read yet (they are captured by a later
    /// call): what a node's capture loop calls. [`Store::capture`] by default; a store
    /// that reads its database's log in the background (PostgreSQL) folds what that
    /// reader has staged and skips the barrier `capture` waits on.
    fn capture_ready(&mut self) -> Result<u64, StoreError> {
        self.capture()
    }

    /// Whether the database may hold writes [`Store::capture`] has not seen yet. A store
    /// that can tell cheaply (PostgreSQL compares its WAL position with the one its last
    /// capture started at) lets a node poll often without capturing each time; the
    /// default, "maybe", makes every poll capture.
    fn writes_may_be_pending(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Whether [`Store::writes_may_be_pending`] is cheap enough to ask every few
    /// milliseconds.
    fn answers_pending_cheaply(&self) -> bool {
        false
    }

    /// How this store captures local writes, and how far behind its capture is.
    fn capture_state(&mut self) -> CaptureState {
        CaptureState {
            method: "triggers".into(),
            ..CaptureState::default()
        }
    }

    /// Whether a tracked table's columns changed since the last call (the store noticed
    /// while capturing); a node then retries what was set aside
    /// ([`Store::retry_set_aside`]), since a change naming a column this database did
    /// not have may apply now.
    fn take_schema_changed(&mut self) -> bool {
        false
    }

    /// The names of the columns of tracked table `table`, in table order; `None` when
    /// the table is not tracked here (always, for a relay, which keeps no tables).
    fn table_columns(&self, _table: &str) -> Option<Vec<String>> {
        None
    }

    /// Adds column `column` after the last column of tracked table `table`, nullable,
    /// of this database's column type for values of `kind` (`None`: only NULLs were
    /// seen, so the text type), then follows it as it follows a column a person adds
    /// (capture rebuilt, [`Store::take_schema_changed`] set). Called by a node whose
    /// link has `propagate_schema` for a column a peer's changes name
    /// ([`crate::add_missing_columns`]); the SQL is the store's dialect. A relay keeps
    /// no user tables and does nothing.
    fn add_column(
        &mut self,
        _table: &str,
        _column: &str,
        _kind: Option<Kind>,
    ) -> Result<(), StoreError> {
        Err(StoreError::CannotAddColumn(self.system()))
    }

    /// Why tracked tables are not synced now (a table gone, or changed in a way the
    /// store cannot follow), one sentence each; empty when all are. A node reports them
    /// as a capture problem in status and health.
    fn table_problems(&self) -> Vec<String> {
        Vec::new()
    }

    /// Tries again every source transaction set aside, applying those the store now
    /// accepts (see [`crate::engine::retry_set_aside`]). The report counts what was
    /// applied and what still waits (`set_aside`).
    fn retry_set_aside(&mut self) -> Result<ApplyReport, ApplyError>;

    /// Forgets set-aside transactions: all, or the one holding `(origin, seq)`; they are
    /// never retried. Returns how many changes were forgotten.
    fn discard_set_aside(&mut self, which: Option<(NodeId, u64)>) -> Result<u64, ApplyError>;

    /// Applies `changes` in one transaction: all of them, or none if any is bad. The
    /// last change must end a source transaction. Rows are written set-based; if the
    /// database refuses a set, the batch is applied again one row at a time, so the
    /// error names the change it refused.
    fn apply_batch(&mut self, changes: &[Change]) -> Result<ApplyReport, ApplyError> {
        match self.apply_batch_in(changes, WriteMode::Sets) {
            Err(ApplyError::Row(failure)) if matches!(failure.error, RowError::RefusedInSet(_)) => {
                self.apply_batch_in(changes, WriteMode::Exact)
            }
            other => other,
        }
    }

    /// Applies `changes` in one transaction, writing rows as `mode` says: all of them,
    /// or none if any is bad. The last change must end a source transaction.
    fn apply_batch_in(
        &mut self,
        changes: &[Change],
        mode: WriteMode,
    ) -> Result<ApplyReport, ApplyError> {
        let mut txn = self.begin_apply_in(mode)?;
        txn.prefetch(changes)?;
        for change in changes {
            txn.apply(change)?;
        }
        txn.commit()
    }

    /// Sets aside a whole source transaction that could not be applied (see
    /// [`ApplyTxn::set_aside`]), in one transaction.
    fn set_aside(&mut self, changes: &[Change], reason: &str) -> Result<ApplyReport, ApplyError> {
        let mut txn = self.begin_apply()?;
        for change in changes {
            txn.set_aside(change, reason)?;
        }
        txn.commit()
    }

    /// Applies a stream of changes, committing at source-transaction boundaries once
    /// [`StoreOptions::apply_batch_changes`] changes are in the transaction. Memory use
    /// does not grow with the length of the stream. On error, everything since the last
    /// commit is rolled back; what was committed before stays (the version vector says
    /// what that was).
    fn apply_changes(
        &mut self,
        changes: &mut dyn Iterator<Item = Result<Change, StoreError>>,
    ) -> Result<ApplyReport, ApplyError> {
        let batch = self.options().apply_batch_changes.max(1);
        let mut txn = self.begin_apply()?;
        for change in changes {
            let change = change.map_err(|e| ApplyError::Source(e.to_string()))?;
            txn.apply(&change)?;
            if txn.at_boundary() && txn.in_transaction() >= batch {
                txn.checkpoint()?;
            }
        }
        txn.commit()
    }

    /// The changes a replica holding `target` lacks, in an order it can apply.
    fn changes_for(&self, target: &VersionVector) -> Result<ChangeCursor, StoreError> {
        ChangeCursor::new(self.log_reader()?, target)
    }
}

/// An open apply transaction of a [`Store`].
///
/// Changes are checked and merged one at a time, and their rows written as the
/// transaction's [`WriteMode`] says; the transaction commits only at source-transaction
/// boundaries, so a source transaction is never applied in part. If anything fails the
/// transaction is poisoned and rolled back.
pub trait ApplyTxn {
    /// Applies one change inside the transaction.
    fn apply(&mut self, change: &Change) -> Result<(), ApplyError>;

    /// Hints that `changes` come next, so the store may read their row clocks at once.
    fn prefetch(&mut self, _changes: &[Change]) -> Result<(), ApplyError> {
        Ok(())
    }

    /// Records a change that could not be applied as a failure, advancing the version
    /// vector past it and keeping it in the log verbatim so it is still relayed.
    fn set_aside(&mut self, change: &Change, reason: &str) -> Result<(), ApplyError>;

    /// Whether the changes applied so far end on a source-transaction boundary.
    fn at_boundary(&self) -> bool;

    /// Changes applied in the current transaction.
    fn in_transaction(&self) -> usize;

    /// Commits what was applied and opens a new transaction.
    fn checkpoint(&mut self) -> Result<(), ApplyError>;

    /// Records that this replica now holds everything `holds` names, without logging
    /// those changes: used after every row of a snapshot taken at `holds` was merged
    /// ([`crate::SnapshotReader`]).
    fn adopt_held(&mut self, holds: &VersionVector) -> Result<(), ApplyError>;

    /// Commits and closes the transaction.
    fn commit(self: Box<Self>) -> Result<ApplyReport, ApplyError>;
}

/// A read-only view of a store's change log, through its own connection.
pub trait LogRead: Send {
    /// What the store holds now, from each origin.
    fn held(&mut self) -> Result<VersionVector, StoreError>;

    /// The position just before the first entry a replica holding `target` lacks, so
    /// that reading after it yields everything the target needs. An entry the target
    /// needs that is no longer in the log is [`StoreError::Pruned`], naming it.
    fn start_for(&mut self, target: &VersionVector) -> Result<i64, StoreError>;

    /// Reads up to `limit` changes after position `after` that `target` lacks.
    fn read(
        &mut self,
        after: i64,
        target: &VersionVector,
        limit: usize,
    ) -> Result<LogPage, StoreError>;

    /// The clock of the first change after position `after` that `target` lacks, read
    /// without its body: what a peer's lag in seconds needs, without loading a change
    /// that may carry a value of hundreds of megabytes every time status is asked.
    fn first_missing_hlc(
        &mut self,
        after: i64,
        target: &VersionVector,
    ) -> Result<Option<Hlc>, StoreError>;
}

/// Turns received changes into what a store applies (a link's schema mapping, say). An
/// error says why they cannot be applied here; a transaction that fails so is set aside
/// with that reason.
pub type Prepare<'a> = &'a dyn Fn(&[Change]) -> Result<Vec<Change>, String>;

/// Applies whole source transactions, the way every caller does (a node's session,
/// `concord merge`): all of `changes` in one store transaction, rows written set-based
/// ([`WriteMode::Sets`]); if that is refused because of one change, each source
/// transaction is retried alone, one row at a time ([`WriteMode::Exact`], so the error
/// names the change the database refused), and those that still fail are set aside ([`Store::set_aside`]: recorded with the reason, kept in
/// the log, counted as held), so one bad row never blocks the rest. A failure of the
/// store itself (not of a change) is returned. `changes` must end a source transaction.
pub fn apply_setting_aside(
    store: &mut dyn Store,
    changes: &[Change],
    prepare: Option<Prepare<'_>>,
) -> Result<ApplyReport, ApplyError> {
    let whole = match prepare {
        None => store.apply_batch_in(changes, WriteMode::Sets),
        Some(prepare) => match prepare(changes) {
            Ok(prepared) => store.apply_batch_in(&prepared, WriteMode::Sets),
            // Found again, and set aside, below.
            Err(reason) => Err(ApplyError::Mapping(reason)),
        },
    };
    match whole {
        Ok(report) => Ok(report),
        Err(ApplyError::Row(_) | ApplyError::Mapping(_) | ApplyError::Source(_)) => {
            let mut total = ApplyReport::default();
            let mut start = 0;
            for (i, change) in changes.iter().enumerate() {
                if !change.last_in_txn {
                    continue;
                }
                let group = &changes[start..=i];
                start = i + 1;
                let report = match apply_group(store, group, prepare) {
                    Ok(report) => report,
                    Err(GroupFailure::Refused(reason)) => {
                        tracing::warn!(store = %store.location(), error = %reason, changes = group.len(), "setting aside a source transaction that cannot be applied");
                        store.set_aside(group, &reason)?
                    }
                    Err(GroupFailure::Store(e)) => return Err(e),
                };
                total.absorb(&report);
            }
            Ok(total)
        }
        Err(other) => Err(other),
    }
}

/// Why one source transaction was not applied.
enum GroupFailure {
    /// It cannot be applied here (a bad row, or changes `prepare` refused): set it
    /// aside.
    Refused(String),
    /// The store failed: stop.
    Store(ApplyError),
}

fn apply_group(
    store: &mut dyn Store,
    group: &[Change],
    prepare: Option<Prepare<'_>>,
) -> Result<ApplyReport, GroupFailure> {
    let prepared;
    let group = match prepare {
        None => group,
        Some(prepare) => {
            prepared = prepare(group).map_err(GroupFailure::Refused)?;
            &prepared[..]
        }
    };
    match store.apply_batch_in(group, WriteMode::Exact) {
        Ok(report) => Ok(report),
        Err(ApplyError::Row(failure)) if !matches!(failure.error, RowError::Gap(_)) => {
            Err(GroupFailure::Refused(crate::error_chain(&failure)))
        }
        Err(other) => Err(GroupFailure::Store(other)),
    }
}

/// Applies a stream of changes as [`apply_setting_aside`] does, holding at most about
/// [`StoreOptions::apply_batch_changes`] changes in memory. A source transaction larger
/// than four batches cannot be held to be retried: it is streamed into one store
/// transaction, whole or not at all, rows written set-based, and if it fails the error
/// is returned instead of setting it aside (a refusal by the database then names the
/// last change before the set that was refused, [`RowError::RefusedInSet`]).
pub fn apply_stream_setting_aside(
    store: &mut dyn Store,
    changes: &mut dyn Iterator<Item = Result<Change, StoreError>>,
) -> Result<ApplyReport, ApplyError> {
    let limit = store.options().apply_batch_changes.max(1);
    let large = limit.saturating_mul(4);
    let mut total = ApplyReport::default();
    let mut batch: Vec<Change> = Vec::new();
    while let Some(change) = changes.next() {
        // (`changes` is also read by the inner loop of a large transaction.)
        let change = match change {
            Ok(change) => change,
            Err(e) => {
                // Apply the whole transactions read before the failure, then report it.
                let whole = batch
                    .iter()
                    .rposition(|c| c.last_in_txn)
                    .map_or(0, |i| i + 1);
                if whole > 0 {
                    total.absorb(&apply_setting_aside(store, &batch[..whole], None)?);
                }
                return Err(ApplyError::Source(e.to_string()));
            }
        };
        let ends = change.last_in_txn;
        batch.push(change);
        if ends && batch.len() >= limit {
            total.absorb(&apply_setting_aside(store, &batch, None)?);
            batch.clear();
        } else if !ends && batch.len() >= large {
            let whole = batch
                .iter()
                .rposition(|c| c.last_in_txn)
                .map_or(0, |i| i + 1);
            if whole > 0 {
                let rest = batch.split_off(whole);
                total.absorb(&apply_setting_aside(store, &batch, None)?);
                batch = rest;
            }
            let mut txn = store.begin_apply()?;
            for change in batch.drain(..) {
                txn.apply(&change)?;
            }
            for change in &mut *changes {
                let change = change.map_err(|e| ApplyError::Source(e.to_string()))?;
                txn.apply(&change)?;
                if change.last_in_txn {
                    break;
                }
            }
            total.absorb(&txn.commit()?);
        }
    }
    if !batch.is_empty() {
        total.absorb(&apply_setting_aside(store, &batch, None)?);
    }
    Ok(total)
}

/// Applies to `destination` every change `source` holds that `destination` lacks,
/// exactly as a network session would: the source's log, filtered by the destination's
/// version vector, streamed into the destination with the same set-aside policy
/// ([`apply_stream_setting_aside`]). Pending local writes of the source are captured
/// first (the destination captures its own when it opens its apply transaction). The
/// two stores may be of different databases.
///
/// When the source's log no longer holds what the destination lacks (it was pruned),
/// the destination is brought up to date from a snapshot of the source instead
/// ([`pull_snapshot`]), then from the log.
pub fn pull(
    source: &mut dyn Store,
    destination: &mut dyn Store,
) -> Result<ApplyReport, ApplyError> {
    source.capture()?;
    let wanted = destination.version_vector().clone();
    let mut total = ApplyReport::default();
    let mut cursor = match source.changes_for(&wanted) {
        Ok(cursor) => cursor,
        Err(StoreError::Pruned { origin, seq }) => {
            tracing::info!(source = %source.location(), destination = %destination.location(), %origin, seq, "the log no longer holds what the destination lacks; merging a snapshot");
            total.absorb(&pull_snapshot(source, destination)?);
            let wanted = destination.version_vector().clone();
            source.changes_for(&wanted)?
        }
        Err(e) => return Err(e.into()),
    };
    total.absorb(&apply_stream_setting_aside(destination, &mut cursor)?);
    Ok(total)
}

/// Merges into `destination` the state of every tracked row of `source` that it holds
/// differently, then records that `destination` holds what the snapshot reflects. Which
/// rows differ is found by range reconciliation of row clocks between a consistent read
/// of each side ([`concord_core::reconcile`]), so rows both already agree on are not
/// read whole nor merged again; a table the destination holds nothing of is copied
/// whole without reconciling. Rows are merged (a join), so nothing the destination holds
/// and the source lacks is lost; a row the destination refuses is set aside alone.
/// Memory stays bounded by a page of rows plus the keys that differ.
pub fn pull_snapshot(
    source: &mut dyn Store,
    destination: &mut dyn Store,
) -> Result<ApplyReport, ApplyError> {
    source.capture()?;
    let mut snapshot = source.snapshot()?;
    let limit = destination.options().apply_batch_changes.max(1);
    let mut total = ApplyReport::default();
    for table in snapshot.table_names() {
        let differing = {
            let mut theirs = destination.snapshot()?;
            let found = differing_keys(snapshot.as_mut(), theirs.as_mut(), &table)?;
            theirs.finish()?;
            found
        };
        match differing {
            None => {
                let mut after = Vec::new();
                loop {
                    let (rows, next) = snapshot.table_rows(&table, &after, limit)?;
                    if !rows.is_empty() {
                        total.absorb(&apply_setting_aside(destination, &rows, None)?);
                    }
                    match next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
            }
            Some(keys) => {
                for keys in keys.chunks(limit) {
                    let rows = snapshot.rows_by_key(&table, keys)?;
                    if !rows.is_empty() {
                        total.absorb(&apply_setting_aside(destination, &rows, None)?);
                    }
                }
            }
        }
    }
    let held = snapshot.held().clone();
    snapshot.finish()?;
    let mut txn = destination.begin_apply()?;
    txn.adopt_held(&held)?;
    total.absorb(&txn.commit()?);
    Ok(total)
}

/// The keys of the rows of `table` that `ours` holds and `theirs` holds differently
/// (by row clock), or `None` when `theirs` holds no row of the table at all.
fn differing_keys(
    ours: &mut dyn SnapshotRead,
    theirs: &mut dyn SnapshotRead,
    table: &str,
) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    let mut empty = true;
    theirs.scan(table, Compare::Clocks, &[], &Bound::End, &mut |_, _| {
        empty = false;
        false
    })?;
    if empty {
        return Ok(None);
    }
    let run = reconcile_reads(ours, theirs, table, Compare::Clocks)?;
    Ok(Some(
        run.differences
            .into_iter()
            .filter(|d| d.here.is_some())
            .map(|d| d.key)
            .collect(),
    ))
}

fn reconcile_reads(
    first: &mut dyn SnapshotRead,
    second: &mut dyn SnapshotRead,
    table: &str,
    compare: Compare,
) -> Result<LocalRun, StoreError> {
    let mut first = TableItems {
        snapshot: first,
        table,
        compare,
    };
    let mut second = TableItems {
        snapshot: second,
        table,
        compare,
    };
    Reconciler::default()
        .run_local(&mut first, &mut second)
        .map_err(|e| match e {
            ReconcileError::Source(e) => e,
            ReconcileError::Invalid(why) => StoreError::Corrupt {
                table: "reconciliation",
                detail: why,
            },
        })
}

/// Compares `table` of two stores (of any kinds) by values, each read in one consistent
/// read, and returns every key they hold differently (`here` is `first`'s side) with
/// what the comparison cost. Rows no clock describes (written while capture was off)
/// count: the users' tables are read, not Concord's metadata. Nothing is written.
pub fn compare_stores(
    first: &dyn Store,
    second: &dyn Store,
    table: &str,
) -> Result<LocalRun, StoreError> {
    let mut a = first.snapshot()?;
    let mut b = second.snapshot()?;
    let run = reconcile_reads(a.as_mut(), b.as_mut(), table, Compare::Values)?;
    a.finish()?;
    b.finish()?;
    Ok(run)
}

/// Merges every store with every other: first gathers everything into the first store,
/// then hands it back to the others, so every store ends holding every change. Returns
/// one report per store, in order, of what it received.
pub fn merge_all<S: Store>(stores: &mut [S]) -> Result<Vec<ApplyReport>, ApplyError> {
    let mut reports = vec![ApplyReport::default(); stores.len()];
    let Some((first, rest)) = stores.split_first_mut() else {
        return Ok(reports);
    };
    for other in rest.iter_mut() {
        let r = pull(other, first)?;
        reports[0].absorb(&r);
    }
    for (i, other) in rest.iter_mut().enumerate() {
        let r = pull(first, other)?;
        reports[i + 1].absorb(&r);
    }
    Ok(reports)
}
