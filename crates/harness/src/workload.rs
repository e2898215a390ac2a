//! The writers' workload: which transaction a writer makes next, and what it must do.
//!
//! Why here: every fault test writes the same kinds of transactions (inserts, updates
//! of one or both columns, deletes, re-inserts, primary-key changes, up to five rows,
//! in the writer's own key range and in the range all writers share), drawn from the
//! seeded generator in the same order, so that a printed seed replays the same writes
//! in every test. Only the SQL dialect of the shared upsert and how the statements are
//! run (which client, which retries) differ; those stay in the tests.
//!
//! Own-range writes are planned against an exact model of the own range (only this
//! writer writes it), so each must affect exactly one row; shared writes always set
//! every column, because another writer may have changed the row in between.

use std::ops::Range;

use crate::model::{Effect, Key, Layout, Row, Table};
use crate::rng::Rng;

/// The keys every writer writes (20 rows: enough contention for concurrent writes to
/// the same row to be common, few enough for each to see many).
pub const SHARED: Range<Key> = 1..21;

/// The keys only writer `writer` writes: 40 keys from `1000 * (writer + 1)`.
pub fn own_range(writer: usize) -> Range<Key> {
    let base = 1000 * (writer as Key + 1);
    base..base + 40
}

/// The layout of `writers` writers: [`own_range`] each, and [`SHARED`].
pub fn layout(writers: usize) -> Layout {
    Layout {
        own: (0..writers).map(own_range).collect(),
        shared: SHARED,
    }
}

/// How many rows a planned statement must affect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affects {
    /// Exactly one (own-range writes: the writer knows the range exactly).
    One,
    /// An upsert of a shared row: one, or two on MariaDB when it updated an existing row.
    Upsert,
    /// A delete of a shared row that may be absent: 0 or 1. Recorded only if it deleted
    /// one, because a delete of nothing is not a write anywhere (nothing is captured).
    AtMostOne,
}

impl Affects {
    /// Whether `affected` rows is what the statement must do; `upsert_counts_two` when
    /// the store counts an upsert that updated a row as two (MariaDB).
    pub fn accepts(self, affected: u64, upsert_counts_two: bool) -> bool {
        match self {
            Affects::One => affected == 1,
            Affects::Upsert => affected == 1 || (upsert_counts_two && affected == 2),
            Affects::AtMostOne => affected <= 1,
        }
    }
}

/// One write the writer is about to make, with its SQL and the rows it must affect.
#[derive(Clone, Debug)]
pub struct Step {
    /// The statement.
    pub sql: String,
    /// How many rows it must affect.
    pub affects: Affects,
    /// What it does to the table, recorded once the transaction commits (for
    /// [`Affects::AtMostOne`], only if it affected a row).
    pub effects: Vec<Effect>,
}

/// A transaction planned by [`Planner::plan`].
#[derive(Debug)]
pub struct Plan {
    /// `writer:number`, the value every row it writes gets in `v`.
    pub tag: String,
    /// Its statements, in order; empty when every draw was skipped (plan another).
    pub steps: Vec<Step>,
    /// The own range once it committed: give it to [`Planner::committed`].
    pub planned: Table,
}

/// Plans one writer's transactions.
#[derive(Debug)]
pub struct Planner {
    me: usize,
    own: Range<Key>,
    shared: Range<Key>,
    model: Table,
    next_n: i64,
    txn_no: u64,
}

impl Planner {
    /// The planner of writer `me`, which alone writes `own` and shares `shared`.
    pub fn new(me: usize, own: Range<Key>, shared: Range<Key>) -> Self {
        Self {
            me,
            own,
            shared,
            model: Table::new(),
            next_n: (me as i64 + 1) * 1_000_000_000,
            txn_no: 0,
        }
    }

    /// The planner of writer `me` in the standard [`layout`].
    pub fn for_writer(me: usize) -> Self {
        Self::new(me, own_range(me), SHARED)
    }

    /// Draws the next transaction from `rng`; `upsert` is the dialect's insert that
    /// updates the row if the key exists (setting `v` and `n`).
    pub fn plan(&mut self, rng: &mut Rng, upsert: impl Fn(Key, &Row) -> String) -> Plan {
        self.txn_no += 1;
        let tag = format!("{}:{}", self.me, self.txn_no);
        let own = self.own.clone();
        let shared = self.shared.clone();
        let next_n = &mut self.next_n;
        let mut planned = self.model.clone();
        let ops = if rng.chance(60) { 1 } else { rng.range(2, 6) };
        let mut steps = Vec::new();
        for _ in 0..ops {
            let mut n = || {
                *next_n += 1;
                *next_n
            };
            if rng.chance(25) {
                let key = shared.start + rng.range(0, (shared.end - shared.start) as u64) as Key;
                if rng.chance(70) {
                    let row = Row {
                        v: tag.clone(),
                        n: n(),
                    };
                    steps.push(Step {
                        sql: upsert(key, &row),
                        affects: Affects::Upsert,
                        effects: vec![Effect {
                            key,
                            after: Some(row),
                        }],
                    });
                } else {
                    steps.push(Step {
                        sql: format!("DELETE FROM t WHERE id = {key}"),
                        affects: Affects::AtMostOne,
                        effects: vec![Effect { key, after: None }],
                    });
                }
                continue;
            }
            let key = own.start + rng.range(0, (own.end - own.start) as u64) as Key;
            let Some(old) = planned.get(&key).cloned() else {
                // Absent: an insert, or a re-insert after a delete.
                let row = Row {
                    v: tag.clone(),
                    n: n(),
                };
                steps.push(Step {
                    sql: format!(
                        "INSERT INTO t(id, v, n) VALUES ({key}, '{}', {})",
                        row.v, row.n
                    ),
                    affects: Affects::One,
                    effects: vec![Effect {
                        key,
                        after: Some(row.clone()),
                    }],
                });
                planned.insert(key, row);
                continue;
            };
            let roll = rng.range(0, 100);
            let (sql, effects) = if roll < 30 {
                let row = Row {
                    v: tag.clone(),
                    n: n(),
                };
                (
                    format!(
                        "UPDATE t SET v = '{}', n = {} WHERE id = {key}",
                        row.v, row.n
                    ),
                    vec![Effect {
                        key,
                        after: Some(row),
                    }],
                )
            } else if roll < 45 {
                let row = Row {
                    v: tag.clone(),
                    n: old.n,
                };
                (
                    format!("UPDATE t SET v = '{}' WHERE id = {key}", row.v),
                    vec![Effect {
                        key,
                        after: Some(row),
                    }],
                )
            } else if roll < 60 {
                let row = Row {
                    v: old.v.clone(),
                    n: n(),
                };
                (
                    format!("UPDATE t SET n = {} WHERE id = {key}", row.n),
                    vec![Effect {
                        key,
                        after: Some(row),
                    }],
                )
            } else if roll < 85 {
                (
                    format!("DELETE FROM t WHERE id = {key}"),
                    vec![Effect { key, after: None }],
                )
            } else {
                // Move the row to another own key that is free.
                let to = own.start + rng.range(0, (own.end - own.start) as u64) as Key;
                if planned.contains_key(&to) {
                    continue;
                }
                let row = Row {
                    v: tag.clone(),
                    n: old.n,
                };
                (
                    format!("UPDATE t SET id = {to}, v = '{}' WHERE id = {key}", row.v),
                    vec![
                        Effect { key, after: None },
                        Effect {
                            key: to,
                            after: Some(row),
                        },
                    ],
                )
            };
            for e in &effects {
                match &e.after {
                    Some(r) => planned.insert(e.key, r.clone()),
                    None => planned.remove(&e.key),
                };
            }
            steps.push(Step {
                sql,
                affects: Affects::One,
                effects,
            });
        }
        Plan {
            tag,
            steps,
            planned,
        }
    }

    /// The transaction planned as `planned` committed: plan the next ones from it.
    pub fn committed(&mut self, planned: Table) {
        self.model = planned;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ranges_do_not_overlap_each_other_or_the_shared_range() {
        let layout = layout(4);
        assert_eq!(layout.own[0], 1000..1040);
        for (i, a) in layout.own.iter().enumerate() {
            assert!(a.start >= SHARED.end);
            for b in &layout.own[i + 1..] {
                assert!(a.end <= b.start);
            }
        }
    }

    #[test]
    fn a_seed_plans_the_same_transactions_and_they_stay_in_range() {
        let upsert = |key: Key, row: &Row| format!("UPSERT {key} {} {}", row.v, row.n);
        let plans = |seed| {
            let mut rng = Rng::new(seed);
            let mut planner = Planner::for_writer(1);
            (0..50)
                .map(|_| {
                    let plan = planner.plan(&mut rng, upsert);
                    let sql: Vec<String> = plan.steps.iter().map(|s| s.sql.clone()).collect();
                    planner.committed(plan.planned);
                    (plan.tag, sql)
                })
                .collect::<Vec<_>>()
        };
        let a = plans(7);
        assert_eq!(a, plans(7));
        assert_eq!(a[0].0, "1:1");
        let own = own_range(1);
        let mut rng = Rng::new(7);
        let mut planner = Planner::for_writer(1);
        for _ in 0..50 {
            let plan = planner.plan(&mut rng, upsert);
            for step in &plan.steps {
                for e in &step.effects {
                    assert!(own.contains(&e.key) || SHARED.contains(&e.key), "{step:?}");
                    if SHARED.contains(&e.key) {
                        assert_ne!(step.affects, Affects::One, "{step:?}");
                    }
                }
            }
            planner.committed(plan.planned);
        }
    }

    #[test]
    fn affected_row_counts() {
        assert!(Affects::One.accepts(1, true));
        assert!(!Affects::One.accepts(2, true));
        assert!(Affects::Upsert.accepts(2, true));
        assert!(!Affects::Upsert.accepts(2, false));
        assert!(Affects::AtMostOne.accepts(0, false));
        assert!(!Affects::AtMostOne.accepts(2, false));
    }
}
