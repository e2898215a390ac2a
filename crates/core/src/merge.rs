//! The merge rules.
//!
//! A row's replicated state is its [`RowClock`]: its [`CausalLength`] and, for each column
//! written in the row's current life, the [`Version`] of the winning write. Values live in
//! the store; this module only decides which writes win, so every store applies exactly
//! the same decisions.
//!
//! * **Row existence** is decided by causal length alone: the larger length wins. A
//!   delete (even length) concurrent with an update (odd length one below) therefore
//!   wins, and an explicit re-insert after the delete (the next odd length) revives the
//!   row. Column writes from an earlier life are discarded when a later life begins.
//! * **Columns** are last-writer-wins registers ordered by `(hlc, origin)`, compared only
//!   between writes of the same life.
//! * **Conflicts** are detected, not resolved differently: the winner is still chosen by
//!   the rules above. Two column writes are concurrent when neither writer had seen a
//!   version at least as new as the other's, judged from the versions each replaced. An
//!   update that loses to a concurrent delete is reported the same way, using the newest
//!   column versions the deleting node had seen: a column write newer than the version
//!   of that column the deleter held was concurrent with the delete. Comparing per
//!   column (not against the newest version the deleter held) finds an older update of
//!   one column that the deleter missed while it had seen a newer update of another.
//!
//! The state is a join-semilattice (the larger causal length wins, then per-column
//! maxima), so merging is commutative, associative and idempotent: replicas that received
//! the same set of changes in any order, with duplicates, hold the same state. The
//! property tests in `tests/convergence.rs` check exactly that against a reference model.

use serde::{Deserialize, Serialize};

use crate::{CausalLength, Version};

/// The winning version of one column in the row's current life.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ColumnClock {
    /// Version of the winning write.
    pub version: Version,
    /// The version that write replaced at its origin.
    pub replaced: Option<Version>,
}

/// Who deleted a row and what the deleter had seen.
///
/// What the deleter had seen of each column is the dead row's [`RowClock::columns`];
/// `seen` is the newest of them, all a delete recorded before deletes carried their
/// columns (and all an older peer sends), used when those are missing.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Tombstone {
    /// Version of the delete.
    pub version: Version,
    /// Newest column version the deleting node held.
    pub seen: Option<Version>,
}

/// Replication metadata of one row.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RowClock {
    /// Row existence.
    pub causal_length: CausalLength,
    /// Per column position (the store's column order): the winning version in the
    /// current life, or `None` if the column was not written in it. While the row is
    /// deleted: the column clocks the winning delete's writer held when it deleted, the
    /// versions a late update of the ended life is judged against.
    pub columns: Vec<Option<ColumnClock>>,
    /// The winning delete, while the row is deleted.
    pub tombstone: Option<Tombstone>,
}

impl RowClock {
    fn column(&self, index: usize) -> Option<ColumnClock> {
        self.columns.get(index).copied().flatten()
    }

    fn set_column(&mut self, index: usize, clock: ColumnClock) {
        if self.columns.len() <= index {
            self.columns.resize(index + 1, None);
        }
        self.columns[index] = Some(clock);
    }

    /// The newest version among the columns of the current life.
    pub fn newest_version(&self) -> Option<Version> {
        self.columns.iter().flatten().map(|c| c.version).max()
    }

    /// Replaces the columns by a delete's seen columns (the newest, should a column be
    /// listed twice).
    fn set_seen(&mut self, seen: &[IncomingColumn]) {
        self.columns.clear();
        for column in seen {
            if self
                .column(column.index)
                .is_none_or(|c| column.version > c.version)
            {
                self.set_column(column.index, column.clock());
            }
        }
    }
}

/// What a delete's writer had seen of a row: per column when the delete carries its
/// columns, else only the newest version (a delete from an older Concord).
#[derive(Clone, Copy, Debug)]
enum Seen<'a> {
    Columns(&'a [IncomingColumn]),
    ClockColumns(&'a RowClock),
    Newest(Option<Version>),
}

impl Seen<'_> {
    /// Whether the deleter had seen `version` of column `index`, or a newer write of it.
    fn saw(&self, index: usize, version: Version) -> bool {
        let seen = match self {
            Seen::Columns(columns) => columns
                .iter()
                .filter(|c| c.index == index)
                .map(|c| c.version)
                .max(),
            Seen::ClockColumns(clock) => clock.column(index).map(|c| c.version),
            Seen::Newest(newest) => *newest,
        };
        seen >= Some(version)
    }
}

/// One column of an incoming change, resolved to the local column position.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IncomingColumn {
    /// Local column position.
    pub index: usize,
    /// Version of the write.
    pub version: Version,
    /// Version it replaced at its origin.
    pub replaced: Option<Version>,
}

impl IncomingColumn {
    /// The clock the column takes if this write wins.
    fn clock(&self) -> ColumnClock {
        ColumnClock {
            version: self.version,
            replaced: self.replaced,
        }
    }
}

/// What the store must do to the user's row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RowEffect {
    /// Nothing visible changes.
    None,
    /// Write the winning columns into the existing row.
    Update,
    /// The row begins a new life: remove any old row, then insert the winning columns
    /// (columns not written take their defaults).
    Recreate,
    /// Remove the row.
    Delete,
}

/// A concurrent pair found while merging.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Conflict {
    /// Two concurrent writes of one column.
    Column {
        /// Position of the incoming column in the change.
        incoming: usize,
        /// The local write it met.
        local: ColumnClock,
        /// Whether the incoming write won.
        incoming_won: bool,
    },
    /// An update that a concurrent delete overrode; the row stays deleted.
    UpdateLostToDelete {
        /// The delete.
        delete: Version,
        /// The newest overridden column write.
        update: Version,
        /// Whether the delete was the incoming change (else the update was).
        delete_incoming: bool,
    },
}

/// The outcome of merging one incoming change into a row.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Decision {
    /// What to do to the user's row.
    pub effect: RowEffect,
    /// Positions (into the incoming columns) whose values must be written.
    pub winners: Vec<usize>,
    /// Concurrent pairs to record.
    pub conflicts: Vec<Conflict>,
    /// Whether the row clock changed and must be persisted.
    pub clock_changed: bool,
}

impl Decision {
    fn unchanged() -> Self {
        Decision {
            effect: RowEffect::None,
            winners: Vec::new(),
            conflicts: Vec::new(),
            clock_changed: false,
        }
    }
}

/// Whether two writes were concurrent: neither writer had seen a version at least as new
/// as the other's.
fn concurrent(
    a: Version,
    a_replaced: Option<Version>,
    b: Version,
    b_replaced: Option<Version>,
) -> bool {
    a != b && a_replaced < Some(b) && b_replaced < Some(a)
}

/// Merges an incoming change into `clock` (updated in place) and says what to apply.
///
/// `causal_length` is the change's; `delete_seen` its [`crate::Change::delete_seen`];
/// `columns` its columns resolved to local positions (for a delete: the column clocks
/// its writer held, see [`crate::Change::columns`]), and `delete_version` the change's
/// own version, used for a delete's tombstone.
pub fn merge_remote(
    clock: &mut RowClock,
    causal_length: CausalLength,
    delete_version: Version,
    delete_seen: Option<Version>,
    columns: &[IncomingColumn],
) -> Decision {
    let local_cl = clock.causal_length;
    let was_alive = local_cl.is_alive();

    if causal_length < local_cl {
        // A write from an earlier life. If it is an update from the life the local delete
        // ended, and the deleter had not seen it, the two were concurrent.
        let mut decision = Decision::unchanged();
        if causal_length.is_alive()
            && CausalLength(causal_length.0 + 1) == local_cl
            && let Some(tomb) = clock.tombstone
            && let seen = if clock.columns.is_empty() {
                Seen::Newest(tomb.seen)
            } else {
                Seen::ClockColumns(clock)
            }
            && let Some(update) = columns
                .iter()
                .filter(|c| !seen.saw(c.index, c.version))
                .map(|c| c.version)
                .max()
        {
            decision.conflicts.push(Conflict::UpdateLostToDelete {
                delete: tomb.version,
                update,
                delete_incoming: false,
            });
        }
        return decision;
    }

    if causal_length > local_cl {
        let mut decision = Decision::unchanged();
        decision.clock_changed = true;
        if causal_length.is_alive() {
            clock.causal_length = causal_length;
            clock.columns.clear();
            clock.tombstone = None;
            for (pos, incoming) in columns.iter().enumerate() {
                if clock
                    .column(incoming.index)
                    .is_none_or(|c| incoming.version > c.version)
                {
                    clock.set_column(incoming.index, incoming.clock());
                }
                decision.winners.push(pos);
            }
            // Two writes of one column in a change cannot both win: keep the last winner.
            dedupe_winners(clock, columns, &mut decision.winners);
            decision.effect = RowEffect::Recreate;
        } else {
            let seen = if columns.is_empty() {
                Seen::Newest(delete_seen)
            } else {
                Seen::Columns(columns)
            };
            if was_alive
                && CausalLength(local_cl.0 + 1) == causal_length
                && let Some(update) = clock
                    .columns
                    .iter()
                    .enumerate()
                    .filter_map(|(index, c)| c.map(|c| (index, c.version)))
                    .filter(|&(index, version)| !seen.saw(index, version))
                    .map(|(_, version)| version)
                    .max()
            {
                decision.conflicts.push(Conflict::UpdateLostToDelete {
                    delete: delete_version,
                    update,
                    delete_incoming: true,
                });
            }
            clock.causal_length = causal_length;
            clock.set_seen(columns);
            clock.tombstone = Some(Tombstone {
                version: delete_version,
                seen: delete_seen,
            });
            decision.effect = if was_alive {
                RowEffect::Delete
            } else {
                RowEffect::None
            };
        }
        return decision;
    }

    // Same life.
    let mut decision = Decision::unchanged();
    if !causal_length.is_alive() {
        // Two deletes of the same life: keep the larger tombstone so every replica agrees.
        let candidate = Tombstone {
            version: delete_version,
            seen: delete_seen,
        };
        if clock
            .tombstone
            .is_none_or(|t| candidate.version > t.version)
        {
            clock.tombstone = Some(candidate);
            clock.set_seen(columns);
            decision.clock_changed = true;
        }
        return decision;
    }
    for (pos, incoming) in columns.iter().enumerate() {
        match clock.column(incoming.index) {
            None => {
                clock.set_column(incoming.index, incoming.clock());
                decision.winners.push(pos);
            }
            Some(local) => {
                let wins = incoming.version > local.version;
                if concurrent(
                    incoming.version,
                    incoming.replaced,
                    local.version,
                    local.replaced,
                ) {
                    decision.conflicts.push(Conflict::Column {
                        incoming: pos,
                        local,
                        incoming_won: wins,
                    });
                }
                if wins {
                    clock.set_column(incoming.index, incoming.clock());
                    decision.winners.push(pos);
                }
            }
        }
    }
    dedupe_winners(clock, columns, &mut decision.winners);
    if !decision.winners.is_empty() {
        decision.clock_changed = true;
        decision.effect = RowEffect::Update;
    }
    decision
}

/// Replaces the winners by, for each column they won, the last write of the change that
/// carries the column's final version, so a change that names a column twice writes the
/// value that the clock says won, whether it started a new life or merged into the current
/// one.
fn dedupe_winners(clock: &RowClock, columns: &[IncomingColumn], winners: &mut Vec<usize>) {
    let mut kept: Vec<usize> = winners
        .iter()
        .filter_map(|&pos| {
            let index = columns[pos].index;
            let version = clock.column(index)?.version;
            columns
                .iter()
                .rposition(|c| c.index == index && c.version == version)
        })
        .collect();
    kept.sort_unstable();
    kept.dedup();
    *winners = kept;
}

/// A write made locally, as the capture path sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LocalOp<'a> {
    /// A row was inserted (or replaced): all columns are written.
    Insert,
    /// These column positions changed.
    Update(&'a [usize]),
    /// The row was deleted.
    Delete,
}

/// What a local write turns into: the fields of the [`crate::Change`] to log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LocalWrite {
    /// The row's causal length after the write.
    pub causal_length: CausalLength,
    /// Column positions written, each with the version it replaced.
    pub columns: Vec<(usize, Option<Version>)>,
    /// For a delete: the newest column version held before it.
    pub delete_seen: Option<Version>,
    /// For a delete: the clock of every column held before it, by position (what the
    /// change carries as its columns, so receivers can tell which updates it missed).
    pub seen: Vec<(usize, ColumnClock)>,
}

/// Records a local write of a table with `column_count` columns in `clock` (updated in
/// place) at `version`, and returns what the change must carry.
///
/// An update of a row the clock does not know as alive (a row that existed before
/// tracking began, say) is captured as an insert, so replicas receive the whole row.
pub fn local_write(
    clock: &mut RowClock,
    op: LocalOp<'_>,
    version: Version,
    column_count: usize,
) -> LocalWrite {
    let all: Vec<usize> = (0..column_count).collect();
    match op {
        LocalOp::Insert | LocalOp::Update(_) if !clock.causal_length.is_alive() => {
            clock.causal_length = clock.causal_length.after_insert();
            clock.columns.clear();
            clock.tombstone = None;
            write_columns(clock, &all, version)
        }
        LocalOp::Insert => write_columns(clock, &all, version),
        LocalOp::Update(changed) => write_columns(clock, changed, version),
        LocalOp::Delete => {
            let newest = clock.newest_version();
            // The dead row keeps the column clocks it had: they are what the delete saw.
            let seen = clock
                .columns
                .iter()
                .enumerate()
                .filter_map(|(index, c)| c.map(|c| (index, c)))
                .collect();
            clock.causal_length = clock.causal_length.after_delete();
            clock.tombstone = Some(Tombstone {
                version,
                seen: newest,
            });
            LocalWrite {
                causal_length: clock.causal_length,
                columns: Vec::new(),
                delete_seen: newest,
                seen,
            }
        }
    }
}

fn write_columns(clock: &mut RowClock, indexes: &[usize], version: Version) -> LocalWrite {
    let columns = indexes
        .iter()
        .map(|&index| {
            let replaced = clock.column(index).map(|c| c.version);
            clock.set_column(index, ColumnClock { version, replaced });
            (index, replaced)
        })
        .collect();
    LocalWrite {
        causal_length: clock.causal_length,
        columns,
        delete_seen: None,
        seen: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hlc, NodeId};

    fn v(ms: u64, node: u8) -> Version {
        Version {
            hlc: Hlc::new(ms, 0),
            origin: NodeId::from_bytes([node; 16]),
        }
    }

    fn col(index: usize, version: Version, replaced: Option<Version>) -> IncomingColumn {
        IncomingColumn {
            index,
            version,
            replaced,
        }
    }

    #[test]
    fn insert_on_an_unknown_row_recreates_it_with_every_column() {
        let mut clock = RowClock::default();
        let d = merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None), col(1, v(1, 1), None)],
        );
        assert_eq!(d.effect, RowEffect::Recreate);
        assert_eq!(d.winners, vec![0, 1]);
        assert!(d.conflicts.is_empty());
        assert_eq!(clock.causal_length, CausalLength(1));
    }

    #[test]
    fn later_write_of_a_column_wins_and_earlier_one_is_ignored() {
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None)],
        );
        let newer = merge_remote(
            &mut clock,
            CausalLength(1),
            v(5, 2),
            None,
            &[col(0, v(5, 2), Some(v(1, 1)))],
        );
        assert_eq!(
            (newer.effect, newer.winners.clone()),
            (RowEffect::Update, vec![0])
        );
        assert!(
            newer.conflicts.is_empty(),
            "it replaced what we hold: sequential"
        );
        let older = merge_remote(
            &mut clock,
            CausalLength(1),
            v(3, 3),
            None,
            &[col(0, v(3, 3), Some(v(1, 1)))],
        );
        assert_eq!(older.effect, RowEffect::None);
        assert_eq!(
            older.conflicts.len(),
            1,
            "3@3 and 5@2 both replaced 1@1: concurrent"
        );
    }

    #[test]
    fn equal_timestamps_are_broken_by_origin() {
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 9),
            None,
            &[col(0, v(1, 9), None)],
        );
        let d = merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 2),
            None,
            &[col(0, v(1, 2), None)],
        );
        assert!(d.winners.is_empty());
        assert!(matches!(
            d.conflicts[0],
            Conflict::Column {
                incoming_won: false,
                ..
            }
        ));
    }

    #[test]
    fn delete_concurrent_with_update_wins_and_is_reported() {
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None)],
        );
        // Node 2 deletes having seen 1@1; node 3 updates concurrently.
        let del = merge_remote(&mut clock, CausalLength(2), v(2, 2), Some(v(1, 1)), &[]);
        assert_eq!(del.effect, RowEffect::Delete);
        let upd = merge_remote(
            &mut clock,
            CausalLength(1),
            v(3, 3),
            None,
            &[col(0, v(3, 3), Some(v(1, 1)))],
        );
        assert_eq!(upd.effect, RowEffect::None);
        assert_eq!(
            upd.conflicts,
            vec![Conflict::UpdateLostToDelete {
                delete: v(2, 2),
                update: v(3, 3),
                delete_incoming: false
            }]
        );
    }

    #[test]
    fn delete_arriving_after_a_concurrent_update_is_reported_too() {
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None)],
        );
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(3, 3),
            None,
            &[col(0, v(3, 3), Some(v(1, 1)))],
        );
        let del = merge_remote(&mut clock, CausalLength(2), v(2, 2), Some(v(1, 1)), &[]);
        assert_eq!(del.effect, RowEffect::Delete);
        assert_eq!(del.conflicts.len(), 1);
    }

    #[test]
    fn delete_of_a_row_whose_writes_the_deleter_saw_is_no_conflict() {
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None)],
        );
        let del = merge_remote(&mut clock, CausalLength(2), v(2, 2), Some(v(1, 1)), &[]);
        assert!(del.conflicts.is_empty());
    }

    #[test]
    fn reinsert_after_delete_revives_and_drops_the_old_life() {
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None), col(1, v(1, 1), None)],
        );
        merge_remote(&mut clock, CausalLength(2), v(2, 1), Some(v(1, 1)), &[]);
        let revive = merge_remote(
            &mut clock,
            CausalLength(3),
            v(3, 2),
            None,
            &[col(0, v(3, 2), None)],
        );
        assert_eq!(revive.effect, RowEffect::Recreate);
        assert_eq!(
            clock.columns,
            vec![Some(ColumnClock {
                version: v(3, 2),
                replaced: None
            })]
        );
        assert!(clock.tombstone.is_none());
    }

    #[test]
    fn a_late_ancestor_is_not_a_conflict() {
        // 1@1 is replaced by 2@2; a third node receives 2@2 first, then 1@1.
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(2, 2),
            None,
            &[col(0, v(2, 2), Some(v(1, 1)))],
        );
        let late = merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None)],
        );
        assert!(late.conflicts.is_empty());
        assert!(late.winners.is_empty());
    }

    #[test]
    fn a_change_naming_a_column_twice_writes_its_last_value_in_either_life() {
        let twice = [col(0, v(5, 2), None), col(0, v(5, 2), None)];
        // Into the current life: the clock moves, so the last write must be applied.
        let mut clock = RowClock::default();
        merge_remote(
            &mut clock,
            CausalLength(1),
            v(1, 1),
            None,
            &[col(0, v(1, 1), None)],
        );
        let d = merge_remote(&mut clock, CausalLength(1), v(5, 2), None, &twice);
        assert_eq!(
            (d.effect, d.winners, d.clock_changed),
            (RowEffect::Update, vec![1], true)
        );
        // Starting a new life: the same write wins.
        let mut clock = RowClock::default();
        let d = merge_remote(&mut clock, CausalLength(1), v(5, 2), None, &twice);
        assert_eq!((d.effect, d.winners), (RowEffect::Recreate, vec![1]));
    }

    /// Row 1 on a, b, c; c updates column 1 (at 2), b later updates column 0 (at 3); a
    /// merges only b's update and deletes. a's newest seen version (3) is newer than c's
    /// update, yet a never saw it: judged per column, c's update is reported wherever
    /// the two meet, in either order.
    #[test]
    fn an_older_update_of_another_column_the_deleter_missed_is_reported() {
        let insert = [col(0, v(1, 1), None), col(1, v(1, 1), None)];
        let c_update = [col(1, v(2, 3), Some(v(1, 1)))];
        let b_update = [col(0, v(3, 2), Some(v(1, 1)))];
        // a's view when it deletes: the insert and b's update.
        let mut a = RowClock::default();
        merge_remote(&mut a, CausalLength(1), v(1, 1), None, &insert);
        merge_remote(&mut a, CausalLength(1), v(3, 2), None, &b_update);
        let delete = local_write(&mut a, LocalOp::Delete, v(4, 1), 2);
        let seen: Vec<IncomingColumn> = delete
            .seen
            .iter()
            .map(|&(index, c)| col(index, c.version, c.replaced))
            .collect();
        let expected = Conflict::UpdateLostToDelete {
            delete: v(4, 1),
            update: v(2, 3),
            delete_incoming: false,
        };

        // At a (or anyone holding the delete first), c's update arrives late.
        let upd = merge_remote(&mut a, CausalLength(1), v(2, 3), None, &c_update);
        assert_eq!(upd.effect, RowEffect::None);
        assert_eq!(upd.conflicts, vec![expected]);

        // At c, which holds its own update, the delete arrives.
        let mut c = RowClock::default();
        merge_remote(&mut c, CausalLength(1), v(1, 1), None, &insert);
        merge_remote(&mut c, CausalLength(1), v(2, 3), None, &c_update);
        let del = merge_remote(&mut c, CausalLength(2), v(4, 1), delete.delete_seen, &seen);
        assert_eq!(del.effect, RowEffect::Delete);
        assert_eq!(
            del.conflicts,
            vec![Conflict::UpdateLostToDelete {
                delete: v(4, 1),
                update: v(2, 3),
                delete_incoming: true,
            }]
        );
        // The dead row remembers what the delete saw, as a did.
        assert_eq!(c, a);

        // A delete from an older Concord (no columns) is judged by its newest version,
        // which cannot see this pair: the reason deletes now carry their columns.
        let mut old = RowClock::default();
        merge_remote(&mut old, CausalLength(1), v(1, 1), None, &insert);
        merge_remote(&mut old, CausalLength(1), v(2, 3), None, &c_update);
        let del = merge_remote(&mut old, CausalLength(2), v(4, 1), delete.delete_seen, &[]);
        assert!(del.conflicts.is_empty());
    }

    #[test]
    fn local_writes_carry_the_versions_they_replace() {
        let mut clock = RowClock::default();
        let ins = local_write(&mut clock, LocalOp::Insert, v(1, 1), 2);
        assert_eq!(ins.causal_length, CausalLength(1));
        assert_eq!(ins.columns, vec![(0, None), (1, None)]);
        let upd = local_write(&mut clock, LocalOp::Update(&[1]), v(2, 1), 2);
        assert_eq!(upd.columns, vec![(1, Some(v(1, 1)))]);
        let del = local_write(&mut clock, LocalOp::Delete, v(3, 1), 2);
        assert_eq!(del.causal_length, CausalLength(2));
        assert_eq!(del.delete_seen, Some(v(2, 1)));
        let column = |version, replaced| ColumnClock { version, replaced };
        assert_eq!(
            del.seen,
            vec![
                (0, column(v(1, 1), None)),
                (1, column(v(2, 1), Some(v(1, 1))))
            ],
            "a delete carries the clock of every column it held"
        );
        let again = local_write(&mut clock, LocalOp::Insert, v(4, 1), 2);
        assert_eq!(again.causal_length, CausalLength(3));
        assert_eq!(again.columns, vec![(0, None), (1, None)]);
    }

    #[test]
    fn update_of_a_row_unknown_to_the_clock_is_captured_as_an_insert() {
        let mut clock = RowClock::default();
        let w = local_write(&mut clock, LocalOp::Update(&[1]), v(1, 1), 3);
        assert_eq!(w.causal_length, CausalLength(1));
        assert_eq!(w.columns.len(), 3);
    }
}
