#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Property tests: the merge rules converge.
//!
//! These tests drive the public API of `concord-core` the way a store does. A small
//! in-test replica simulator captures local writes with [`local_write`], numbers the
//! resulting [`Change`]s per origin, ships them between replicas and merges them with
//! [`merge_remote`], executing every [`Decision`] on a map of column values exactly as a
//! store would. What they prove, for thousands of random histories per run:
//!
//! * **Convergence, whatever the delivery.** Three to five replicas write colliding rows
//!   (two tables, single and composite keys, inserts, partial updates, deletes,
//!   re-inserts) while syncing partially between random pairs. After every replica
//!   received every change, in a fully random order with duplicates and ignoring version
//!   vectors, or per origin in order through [`VersionVector`] with out-of-order
//!   arrivals held back until their gap fills, all replicas hold the same visible rows,
//!   the same values and the same row clocks.
//! * **The state is the documented one.** That common state equals a reference model
//!   computed independently from the set of all changes: per row the largest causal
//!   length wins, the row is visible iff it is odd, and each column holds the value of the
//!   write with the greatest version among the writes of that life.
//! * **Merging is a join.** On one row, merging any set of changes in two different
//!   orders gives the same clock and values (commutativity, associativity), and merging a
//!   change again changes nothing (idempotence).
//! * **Conflict detection is sound on the basic cases.** A purely sequential history
//!   never reports a conflict, whatever order the other replicas receive it in; two
//!   replicas updating the same column without seeing each other, or deleting a row
//!   while another updates it, are reported at every replica.
//!
//! Each property runs 1000 cases by default, 7000 in all, in about ten seconds in a debug
//! build on two cores. Set `PROPTEST_CASES` to run more (the count is per property):
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release -p concord-core --test convergence
//! ```

use std::collections::{BTreeMap, BTreeSet};

use concord_core::merge::{
    Conflict, Decision, IncomingColumn, LocalOp, RowClock, RowEffect, local_write, merge_remote,
};
use concord_core::{
    Advance, CausalLength, Change, ColumnChange, Hlc, HlcClock, NodeId, PrimaryKey, Value, Version,
    VersionVector,
};
use proptest::prelude::*;

/// `default_cases` cases, unless `PROPTEST_CASES` says otherwise.
fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_cases),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Schema: two tables with different column counts and small key spaces, so that rows
// collide a lot.
// ---------------------------------------------------------------------------------------

struct TableSchema {
    name: &'static str,
    columns: &'static [&'static str],
}

const TABLES: [TableSchema; 2] = [
    TableSchema {
        name: "notes",
        columns: &["title", "body"],
    },
    TableSchema {
        name: "stock_línea",
        columns: &["qty", "price", "label", "photo"],
    },
];

/// The widest table's column count.
const MAX_COLUMNS: usize = 4;

/// Key indexes are taken modulo each table's key count.
const KEY_CHOICES: usize = 6;

/// A row: table index and encoded key.
type RowId = (usize, PrimaryKey);

fn table_index(name: &str) -> usize {
    TABLES
        .iter()
        .position(|t| t.name == name)
        .expect("known table")
}

fn column_index(table: usize, name: &str) -> usize {
    TABLES[table]
        .columns
        .iter()
        .position(|c| *c == name)
        .expect("known column")
}

/// Table 0 has three integer keys; table 1 six composite `(integer, text)` keys.
fn row_key(table: usize, k: usize) -> PrimaryKey {
    let values = if table == 0 {
        vec![Value::Integer([-1, 0, 7][k % 3])]
    } else {
        let texts = ["a", "é", "日本"];
        vec![
            Value::Integer((k % 2) as i64),
            Value::Text(texts[(k / 2) % 3].to_owned()),
        ]
    };
    PrimaryKey::encode(&values).unwrap()
}

fn node(byte: u8) -> NodeId {
    NodeId::from_bytes([byte; 16])
}

// ---------------------------------------------------------------------------------------
// Deterministic randomness for delivery orders (seeded by proptest, so failures replay).
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    /// SplitMix64.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn percent(&mut self, p: u8) -> bool {
        self.next_u64() % 100 < u64::from(p)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// The items, some repeated once or twice, in a random order.
    fn shuffled_with_duplicates<T: Clone>(&mut self, items: Vec<T>, dup_percent: u8) -> Vec<T> {
        let mut out = Vec::with_capacity(items.len() * 2);
        for item in items {
            if self.percent(dup_percent) {
                out.push(item.clone());
                if self.percent(dup_percent) {
                    out.push(item.clone());
                }
            }
            out.push(item);
        }
        self.shuffle(&mut out);
        out
    }
}

// ---------------------------------------------------------------------------------------
// The store side: one row's clock and values, and how a decision is executed.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    clock: RowClock,
    /// One slot per column; `None` is the column's default (not written in this life).
    values: Vec<Option<Value>>,
}

impl Row {
    fn new(column_count: usize) -> Self {
        Row {
            clock: RowClock::default(),
            values: vec![None; column_count],
        }
    }

    fn visible(&self) -> bool {
        self.clock.causal_length.is_alive()
    }
}

/// The change's columns resolved to local column positions.
fn incoming_columns(change: &Change) -> Vec<IncomingColumn> {
    let table = table_index(&change.table);
    change
        .columns
        .iter()
        .map(|c| IncomingColumn {
            index: column_index(table, &c.column),
            version: c.version,
            replaced: c.replaced,
        })
        .collect()
}

/// Merges `change` into `row` and executes the decision on its values as a store does.
fn merge_into_row(
    row: &mut Row,
    change: &Change,
) -> Result<(Vec<IncomingColumn>, Decision), TestCaseError> {
    let incoming = incoming_columns(change);
    let before = row.clock.clone();
    let own_version = Version {
        hlc: change.hlc,
        origin: change.origin,
    };
    let decision = merge_remote(
        &mut row.clock,
        change.causal_length,
        own_version,
        change.delete_seen,
        &incoming,
    );
    // A store persists the clock only when told to, and ignores winners unless the
    // effect asks for a write: both must be truthful.
    prop_assert!(
        decision.clock_changed || row.clock == before,
        "clock changed but clock_changed is false: {:?} -> {:?} merging {:?}",
        before,
        row.clock,
        change
    );
    let mut written = BTreeSet::new();
    for &pos in &decision.winners {
        prop_assert!(
            written.insert(incoming[pos].index),
            "two winners for one column: {:?} merging {:?}",
            decision,
            change
        );
    }
    let write_winners = |values: &mut Vec<Option<Value>>| {
        for &pos in &decision.winners {
            values[incoming[pos].index] = Some(change.columns[pos].value.clone());
        }
    };
    match decision.effect {
        RowEffect::None => prop_assert!(
            decision.winners.is_empty(),
            "winners without an effect: {:?}",
            decision
        ),
        RowEffect::Update => write_winners(&mut row.values),
        RowEffect::Recreate => {
            row.values.iter_mut().for_each(|v| *v = None);
            write_winners(&mut row.values);
        }
        RowEffect::Delete => row.values.iter_mut().for_each(|v| *v = None),
    }
    Ok((incoming, decision))
}

/// A conflict as reported, resolved to versions so tests can name the pair.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ConflictRecord {
    Column {
        row: RowId,
        column: usize,
        incoming: Version,
        local: Version,
        incoming_won: bool,
    },
    UpdateLostToDelete {
        row: RowId,
        delete: Version,
        update: Version,
        delete_incoming: bool,
    },
}

// ---------------------------------------------------------------------------------------
// Workloads.
// ---------------------------------------------------------------------------------------

/// One row write of a local transaction. What it becomes depends on the writer's state:
/// an insert (or re-insert) if the row is not alive there, otherwise a delete if
/// `action % 4 == 0`, else an update of the columns in the `columns` bit mask.
#[derive(Clone, Debug)]
struct RowOp {
    table: usize,
    key: usize,
    action: u8,
    columns: u8,
    values: Vec<Value>,
}

#[derive(Clone, Debug)]
enum Step {
    /// A local transaction at one replica.
    Write { replica: usize, ops: Vec<RowOp> },
    /// `from` sends each change it holds with probability `percent`, in a random order,
    /// some twice.
    Sync { from: usize, to: usize, percent: u8 },
    /// Wall time advances.
    Tick(u8),
}

#[derive(Clone, Debug)]
struct Workload {
    replicas: usize,
    /// Per replica, how far its wall clock is ahead (ms).
    skews: Vec<u8>,
    /// Permutes node ids, so which replica wins timestamp ties varies.
    id_salt: u8,
    steps: Vec<Step>,
    seed: u64,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (-3i64..3).prop_map(Value::Integer),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        prop::collection::vec(any::<char>(), 0..5)
            .prop_map(|chars| Value::Text(chars.into_iter().collect())),
        prop::sample::select(vec!["", "é", "日本語", "🦀", "a\0b"])
            .prop_map(|s| Value::Text(s.to_owned())),
        prop::collection::vec(any::<u8>(), 0..5).prop_map(Value::Blob),
    ]
}

fn row_op() -> impl Strategy<Value = RowOp> {
    (
        0..TABLES.len(),
        0..KEY_CHOICES,
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(value(), MAX_COLUMNS),
    )
        .prop_map(|(table, key, action, columns, values)| RowOp {
            table,
            key,
            action,
            columns,
            values,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..5usize, prop::collection::vec(row_op(), 1..=3))
            .prop_map(|(replica, ops)| Step::Write { replica, ops }),
        3 => (0..5usize, 0..5usize, 0..=100u8)
            .prop_map(|(from, to, percent)| Step::Sync { from, to, percent }),
        1 => (0..4u8).prop_map(Step::Tick),
    ]
}

fn workload(max_steps: usize) -> impl Strategy<Value = Workload> {
    (
        3..=5usize,
        prop::collection::vec(0..20u8, 5),
        any::<u8>(),
        prop::collection::vec(step(), 1..max_steps),
        any::<u64>(),
    )
        .prop_map(|(replicas, skews, id_salt, steps, seed)| Workload {
            replicas,
            skews,
            id_salt,
            steps,
            seed,
        })
}

// ---------------------------------------------------------------------------------------
// The replica simulator.
// ---------------------------------------------------------------------------------------

/// How changes travel between replicas.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Delivery {
    /// Any change, in any order, any number of times; version vectors are ignored, so
    /// only the merge itself keeps replicas consistent.
    Set,
    /// Per origin in sequence order through [`VersionVector`]: a change ahead of a gap
    /// is held back until the gap fills, a change already held is skipped.
    Vector,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![Just(Delivery::Set), Just(Delivery::Vector)]
}

struct Replica {
    id: NodeId,
    clock: HlcClock,
    skew: u64,
    /// What this replica holds, per origin, contiguously (vector delivery).
    vector: VersionVector,
    /// Every change merged or made here (set delivery).
    known: BTreeSet<(NodeId, u64)>,
    /// The changes made here, `log[i].seq == i + 1`.
    log: Vec<Change>,
    rows: BTreeMap<RowId, Row>,
    /// Changes received ahead of a gap (vector delivery).
    pending: Vec<Change>,
    conflicts: Vec<ConflictRecord>,
}

impl Replica {
    fn new(id: NodeId, skew: u64) -> Self {
        Replica {
            id,
            clock: HlcClock::new(Hlc::ZERO, HlcClock::DEFAULT_MAX_DRIFT_MS),
            skew,
            vector: VersionVector::new(),
            known: BTreeSet::new(),
            log: Vec::new(),
            rows: BTreeMap::new(),
            pending: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    /// Runs one local transaction and returns the changes it logged.
    fn write(&mut self, wall: u64, ops: &[RowOp]) -> Vec<Change> {
        let mut out = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let schema = &TABLES[op.table];
            let n = schema.columns.len();
            let key = row_key(op.table, op.key);
            let row = self
                .rows
                .entry((op.table, key.clone()))
                .or_insert_with(|| Row::new(n));
            let hlc = self.clock.tick(wall + self.skew);
            let version = Version {
                hlc,
                origin: self.id,
            };
            let was_alive = row.visible();
            let mut subset: Vec<usize> = (0..n).filter(|c| op.columns & (1 << c) != 0).collect();
            if subset.is_empty() {
                subset.push(usize::from(op.columns) % n);
            }
            let local_op = if !was_alive {
                LocalOp::Insert
            } else if op.action % 4 == 0 {
                LocalOp::Delete
            } else {
                LocalOp::Update(&subset)
            };
            let write = local_write(&mut row.clock, local_op, version, n);
            if !write.causal_length.is_alive() || !was_alive {
                row.values.iter_mut().for_each(|v| *v = None);
            }
            for &(c, _) in &write.columns {
                row.values[c] = Some(op.values[c].clone());
            }
            let seq = self.log.len() as u64 + 1;
            assert_eq!(self.vector.advance(self.id, seq), Ok(Advance::Next));
            self.known.insert((self.id, seq));
            let change = Change {
                origin: self.id,
                seq,
                hlc,
                table: schema.name.to_owned(),
                key,
                causal_length: write.causal_length,
                columns: write
                    .columns
                    .iter()
                    .map(|&(c, replaced)| ColumnChange {
                        column: schema.columns[c].to_owned(),
                        value: op.values[c].clone(),
                        version,
                        replaced,
                    })
                    .chain(write.seen.iter().map(|&(c, seen)| ColumnChange {
                        column: schema.columns[c].to_owned(),
                        value: Value::Null,
                        version: seen.version,
                        replaced: seen.replaced,
                    }))
                    .collect(),
                delete_seen: write.delete_seen,
                last_in_txn: i + 1 == ops.len(),
            };
            self.log.push(change.clone());
            out.push(change);
        }
        out
    }

    /// Merges a remote change, whatever this replica held before.
    fn merge(&mut self, change: &Change, wall: u64) -> Result<(), TestCaseError> {
        self.clock
            .observe(change.hlc, wall + self.skew)
            .expect("skews are far below the drift bound");
        let table = table_index(&change.table);
        let row_id = (table, change.key.clone());
        let row = self
            .rows
            .entry(row_id.clone())
            .or_insert_with(|| Row::new(TABLES[table].columns.len()));
        let (incoming, decision) = merge_into_row(row, change)?;
        for conflict in decision.conflicts {
            self.conflicts.push(match conflict {
                Conflict::Column {
                    incoming: pos,
                    local,
                    incoming_won,
                } => ConflictRecord::Column {
                    row: row_id.clone(),
                    column: incoming[pos].index,
                    incoming: incoming[pos].version,
                    local: local.version,
                    incoming_won,
                },
                Conflict::UpdateLostToDelete {
                    delete,
                    update,
                    delete_incoming,
                } => ConflictRecord::UpdateLostToDelete {
                    row: row_id.clone(),
                    delete,
                    update,
                    delete_incoming,
                },
            });
        }
        self.known.insert((change.origin, change.seq));
        Ok(())
    }

    /// Receives a change through the version vector: applies it if it is the next one
    /// from its origin (then whatever it unblocked), skips it if held, holds it back if
    /// it is ahead of a gap.
    fn receive_in_order(&mut self, change: Change, wall: u64) -> Result<(), TestCaseError> {
        match self.vector.classify(&change.origin, change.seq) {
            Ok(Advance::Duplicate) => {}
            Ok(Advance::Next) => {
                self.merge(&change, wall)?;
                assert_eq!(
                    self.vector.advance(change.origin, change.seq),
                    Ok(Advance::Next)
                );
                self.drain_pending(wall)?;
            }
            Err(gap) => {
                assert!(gap.received > gap.held + 1);
                let already = self
                    .pending
                    .iter()
                    .any(|p| (p.origin, p.seq) == (change.origin, change.seq));
                if !already {
                    self.pending.push(change);
                }
            }
        }
        Ok(())
    }

    fn drain_pending(&mut self, wall: u64) -> Result<(), TestCaseError> {
        loop {
            let mut progressed = false;
            for change in std::mem::take(&mut self.pending) {
                match self.vector.classify(&change.origin, change.seq) {
                    Ok(Advance::Duplicate) => {}
                    Ok(Advance::Next) => {
                        self.merge(&change, wall)?;
                        self.vector.advance(change.origin, change.seq).unwrap();
                        progressed = true;
                    }
                    Err(_) => self.pending.push(change),
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn visible_state(&self) -> BTreeMap<RowId, Vec<Option<Value>>> {
        self.rows
            .iter()
            .filter(|(_, row)| row.visible())
            .map(|(id, row)| (id.clone(), row.values.clone()))
            .collect()
    }

    fn clocks(&self) -> BTreeMap<RowId, RowClock> {
        self.rows
            .iter()
            .map(|(id, row)| (id.clone(), row.clock.clone()))
            .collect()
    }
}

struct Sim {
    replicas: Vec<Replica>,
    /// Every change made anywhere, by `(origin, seq)`.
    changes: BTreeMap<(NodeId, u64), Change>,
    wall: u64,
    delivery: Delivery,
    rng: Rng,
}

impl Sim {
    fn new(replicas: usize, skews: &[u8], id_salt: u8, delivery: Delivery, seed: u64) -> Self {
        let replicas = (0..replicas)
            .map(|i| {
                // 97 is odd, so distinct indexes give distinct ids whatever the salt.
                let id = node((i as u8).wrapping_mul(97).wrapping_add(id_salt));
                Replica::new(id, u64::from(skews[i % skews.len()]))
            })
            .collect();
        Sim {
            replicas,
            changes: BTreeMap::new(),
            wall: 1_000,
            delivery,
            rng: Rng(seed),
        }
    }

    fn run(&mut self, steps: &[Step], sequential: bool) -> Result<(), TestCaseError> {
        let n = self.replicas.len();
        for step in steps {
            match step {
                Step::Write { replica, ops } => self.write(replica % n, ops, sequential)?,
                Step::Sync { from, to, percent } => {
                    let (from, to) = (from % n, to % n);
                    let to = if from == to { (to + 1) % n } else { to };
                    self.sync(from, to, *percent)?;
                }
                Step::Tick(ms) => self.wall += u64::from(*ms),
            }
        }
        Ok(())
    }

    /// A local transaction at `r`. In a sequential history the writer first receives
    /// every earlier change of the rows it writes.
    fn write(&mut self, r: usize, ops: &[RowOp], sequential: bool) -> Result<(), TestCaseError> {
        if sequential {
            for op in ops {
                self.catch_up_on_row(r, &(op.table, row_key(op.table, op.key)))?;
            }
        }
        for change in self.replicas[r].write(self.wall, ops) {
            self.changes.insert((change.origin, change.seq), change);
        }
        Ok(())
    }

    fn deliver(&mut self, to: usize, batch: Vec<Change>) -> Result<(), TestCaseError> {
        let wall = self.wall;
        let replica = &mut self.replicas[to];
        for change in batch {
            match self.delivery {
                Delivery::Set => replica.merge(&change, wall)?,
                Delivery::Vector => replica.receive_in_order(change, wall)?,
            }
        }
        Ok(())
    }

    /// A partial sync: `from` sends a random part of what it holds, out of order, with
    /// duplicates (including changes `to` already holds).
    fn sync(&mut self, from: usize, to: usize, percent: u8) -> Result<(), TestCaseError> {
        let sender = &self.replicas[from];
        let rng = &mut self.rng;
        let delivery = self.delivery;
        let batch: Vec<Change> = self
            .changes
            .iter()
            .filter(|((origin, seq), _)| match delivery {
                Delivery::Set => sender.known.contains(&(*origin, *seq)),
                Delivery::Vector => sender.vector.contains(origin, *seq),
            })
            .filter(|_| rng.percent(percent))
            .map(|(_, c)| c.clone())
            .collect();
        let batch = self.rng.shuffled_with_duplicates(batch, 20);
        self.deliver(to, batch)
    }

    /// Delivers to `r` every change so far that wrote the row (and, for vector
    /// delivery, everything each origin made before it).
    fn catch_up_on_row(&mut self, r: usize, row: &RowId) -> Result<(), TestCaseError> {
        let on_row = |c: &Change| table_index(&c.table) == row.0 && c.key == row.1;
        let batch: Vec<Change> = match self.delivery {
            Delivery::Set => self
                .changes
                .values()
                .filter(|c| on_row(c) && !self.replicas[r].known.contains(&(c.origin, c.seq)))
                .cloned()
                .collect(),
            Delivery::Vector => {
                let mut upto: BTreeMap<NodeId, u64> = BTreeMap::new();
                for c in self.changes.values().filter(|c| on_row(c)) {
                    let e = upto.entry(c.origin).or_default();
                    *e = (*e).max(c.seq);
                }
                self.changes
                    .values()
                    .filter(|c| upto.get(&c.origin).is_some_and(|&s| c.seq <= s))
                    .cloned()
                    .collect()
            }
        };
        let batch = self.rng.shuffled_with_duplicates(batch, 10);
        self.deliver(r, batch)?;
        let replica = &self.replicas[r];
        for c in self.changes.values().filter(|c| on_row(c)) {
            assert!(replica.known.contains(&(c.origin, c.seq)), "caught up");
        }
        Ok(())
    }

    /// Every replica receives every change, in its own random order, with duplicates.
    fn deliver_everything(&mut self) -> Result<(), TestCaseError> {
        let all: Vec<Change> = self.changes.values().cloned().collect();
        let mut order: Vec<usize> = (0..self.replicas.len()).collect();
        self.rng.shuffle(&mut order);
        for r in order {
            let batch = self.rng.shuffled_with_duplicates(all.clone(), 30);
            self.deliver(r, batch)?;
            let replica = &self.replicas[r];
            if self.delivery == Delivery::Vector {
                assert!(replica.pending.is_empty(), "every gap filled");
                for (origin, seq) in self.changes.keys() {
                    assert!(replica.vector.contains(origin, *seq));
                }
            }
        }
        Ok(())
    }

    /// Every replica holds the same rows, values and clocks, and that state is the
    /// reference model's.
    fn check_converged(&self) -> Result<(), TestCaseError> {
        let reference = reference_model(self.changes.values());
        let expected = reference_visible_state(&reference);
        let first_clocks = self.replicas[0].clocks();
        for (i, replica) in self.replicas.iter().enumerate() {
            prop_assert_eq!(
                &replica.visible_state(),
                &expected,
                "replica {} visible state differs from the reference model",
                i
            );
            prop_assert_eq!(
                replica.rows.keys().collect::<Vec<_>>(),
                reference.keys().collect::<Vec<_>>(),
                "replica {} does not know every written row",
                i
            );
            for (id, row) in &replica.rows {
                check_row_against_reference(row, &reference[id])?;
            }
            prop_assert_eq!(
                &replica.clocks(),
                &first_clocks,
                "replica {} row clocks differ from replica 0",
                i
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The reference model, written from the rules' statement, not from merge.rs.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct ReferenceRow {
    causal_length: CausalLength,
    /// Per column: the greatest version written in the winning life and its value.
    columns: Vec<Option<(Version, Value)>>,
}

fn reference_model<'a>(
    changes: impl IntoIterator<Item = &'a Change>,
) -> BTreeMap<RowId, ReferenceRow> {
    let mut by_row: BTreeMap<RowId, Vec<&Change>> = BTreeMap::new();
    for change in changes {
        by_row
            .entry((table_index(&change.table), change.key.clone()))
            .or_default()
            .push(change);
    }
    by_row
        .into_iter()
        .map(|(id, changes)| {
            let causal_length = changes.iter().map(|c| c.causal_length).max().unwrap();
            let mut columns: Vec<Option<(Version, Value)>> = vec![None; TABLES[id.0].columns.len()];
            let winning_life = changes.iter().filter(|c| c.causal_length == causal_length);
            // A live row: every write of the winning life. A deleted one: what the
            // winning delete (the newest of that length) had seen of each column.
            let counted: Vec<&&Change> = if causal_length.is_alive() {
                winning_life.collect()
            } else {
                winning_life
                    .max_by_key(|c| Version {
                        hlc: c.hlc,
                        origin: c.origin,
                    })
                    .into_iter()
                    .collect()
            };
            for change in counted {
                for write in &change.columns {
                    let slot = &mut columns[column_index(id.0, &write.column)];
                    // Versions are unique per change; within one change that names a
                    // column twice, the later write is the one that counts.
                    if slot.as_ref().is_none_or(|(v, _)| write.version >= *v) {
                        *slot = Some((write.version, write.value.clone()));
                    }
                }
            }
            (
                id,
                ReferenceRow {
                    causal_length,
                    columns,
                },
            )
        })
        .collect()
}

fn reference_visible_state(
    reference: &BTreeMap<RowId, ReferenceRow>,
) -> BTreeMap<RowId, Vec<Option<Value>>> {
    reference
        .iter()
        .filter(|(_, r)| r.causal_length.is_alive())
        .map(|(id, r)| {
            let values = r.columns.iter().map(|c| c.as_ref().map(|(_, v)| v.clone()));
            (id.clone(), values.collect())
        })
        .collect()
}

/// The row's clock agrees with the reference: same causal length, and per column the
/// winning version (none at all while deleted).
fn check_row_against_reference(row: &Row, reference: &ReferenceRow) -> Result<(), TestCaseError> {
    prop_assert_eq!(row.clock.causal_length, reference.causal_length);
    {
        let versions: Vec<Option<Version>> = (0..reference.columns.len())
            .map(|i| {
                row.clock
                    .columns
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|c| c.version)
            })
            .collect();
        let expected: Vec<Option<Version>> = reference
            .columns
            .iter()
            .map(|c| c.as_ref().map(|(v, _)| *v))
            .collect();
        prop_assert_eq!(
            versions,
            expected,
            "winning column versions (of a deleted row: those its delete had seen)"
        );
    }
    if reference.causal_length.is_alive() {
        prop_assert!(row.clock.tombstone.is_none());
    } else {
        prop_assert!(row.values.iter().all(Option::is_none));
        prop_assert!(row.clock.tombstone.is_some());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Arbitrary changes to one row, for the algebraic properties.
// ---------------------------------------------------------------------------------------

/// One change to the row of table 1, key 0, before versions are assigned.
#[derive(Clone, Debug)]
struct RawChange {
    origin: u8,
    ms: u8,
    causal_length: u8,
    columns: Vec<(usize, Value)>,
    /// Per column: which change's version it replaced (index modulo the count), if any.
    replaced: Vec<Option<u8>>,
    /// For a delete: which change's version the deleter had seen, if any.
    seen: Option<u8>,
}

fn raw_change() -> impl Strategy<Value = RawChange> {
    (
        0..3u8,
        0..6u8,
        1..=5u8,
        prop::collection::vec((0..4usize, value()), 1..=4),
        prop::collection::vec(prop::option::of(any::<u8>()), 4),
        prop::option::of(any::<u8>()),
    )
        .prop_map(
            |(origin, ms, causal_length, columns, replaced, seen)| RawChange {
                origin,
                ms,
                causal_length,
                columns,
                replaced,
                seen,
            },
        )
}

/// Builds well-formed changes to one row: every change has its own version (timestamps
/// may tie across origins), all its columns carry it, and `replaced`/`delete_seen` point
/// at arbitrary versions of the set. With `unique_columns`, a change names each column
/// at most once, as captured changes do.
fn one_row_changes(raws: &[RawChange], unique_columns: bool) -> Vec<Change> {
    let mut versions = Vec::new();
    let mut seqs: BTreeMap<u8, u64> = BTreeMap::new();
    for (i, raw) in raws.iter().enumerate() {
        let same = raws[..i]
            .iter()
            .filter(|r| (r.ms, r.origin) == (raw.ms, raw.origin))
            .count();
        versions.push(Version {
            hlc: Hlc::new(1_000 + u64::from(raw.ms), same as u16),
            origin: node(raw.origin + 1),
        });
    }
    let pick = |p: Option<u8>| p.map(|p| versions[usize::from(p) % versions.len()]);
    raws.iter()
        .zip(&versions)
        .map(|(raw, &version)| {
            let seq = seqs.entry(raw.origin).or_default();
            *seq += 1;
            let causal_length = CausalLength(u64::from(raw.causal_length));
            let mut columns = Vec::new();
            let mut named = BTreeSet::new();
            for (i, (c, value)) in raw.columns.iter().enumerate() {
                if !named.insert(*c) && unique_columns {
                    continue;
                }
                let other = pick(raw.replaced[i % raw.replaced.len()]);
                if causal_length.is_alive() {
                    columns.push(ColumnChange {
                        column: TABLES[1].columns[*c].to_owned(),
                        value: value.clone(),
                        version,
                        replaced: other,
                    });
                } else if let Some(seen) = other {
                    // A delete lists the column versions its writer had seen.
                    columns.push(ColumnChange {
                        column: TABLES[1].columns[*c].to_owned(),
                        value: Value::Null,
                        version: seen,
                        replaced: None,
                    });
                }
            }
            Change {
                origin: version.origin,
                seq: *seq,
                hlc: version.hlc,
                table: TABLES[1].name.to_owned(),
                key: row_key(1, 0),
                causal_length,
                columns,
                delete_seen: if causal_length.is_alive() {
                    None
                } else {
                    pick(raw.seen)
                },
                last_in_txn: true,
            }
        })
        .collect()
}

fn merge_all<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Result<Row, TestCaseError> {
    let mut row = Row::new(TABLES[1].columns.len());
    for change in changes {
        merge_into_row(&mut row, change)?;
    }
    Ok(row)
}

/// The one-row merge properties: order-insensitive, idempotent, and the reference model.
fn check_one_row_algebra(changes: &[Change], seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed);
    let mut first: Vec<&Change> = changes.iter().collect();
    let mut second = first.clone();
    rng.shuffle(&mut first);
    rng.shuffle(&mut second);

    let a = merge_all(first.iter().copied())?;
    let b = merge_all(second.iter().copied())?;
    prop_assert_eq!(&a, &b, "two merge orders disagree");

    let with_duplicates = rng.shuffled_with_duplicates(first.clone(), 50);
    let c = merge_all(with_duplicates.iter().copied())?;
    prop_assert_eq!(&a, &c, "duplicates changed the result");

    // Merging a change again right after it, at any point, changes nothing.
    let mut row = Row::new(TABLES[1].columns.len());
    for change in &first {
        merge_into_row(&mut row, change)?;
        let before = row.clone();
        let (_, again) = merge_into_row(&mut row, change)?;
        prop_assert_eq!(
            &row,
            &before,
            "merging {:?} twice differs from once",
            change
        );
        prop_assert_eq!(again.effect, RowEffect::None);
        prop_assert!(again.winners.is_empty());
    }

    let reference = reference_model(changes.iter());
    prop_assert_eq!(reference.len(), 1);
    let only = reference.values().next().unwrap();
    check_row_against_reference(&a, only)?;
    let visible = a.visible().then(|| a.values.clone());
    let expected = only.causal_length.is_alive().then(|| {
        reference_visible_state(&reference)
            .into_values()
            .next()
            .unwrap()
    });
    prop_assert_eq!(visible, expected, "values differ from the reference model");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(1000))]

    /// Replicas that merge every change, in any order and any number of times, without
    /// version vectors, end in the reference model's state.
    #[test]
    fn replicas_converge_whatever_the_delivery_order_and_duplicates(w in workload(60)) {
        let mut sim = Sim::new(w.replicas, &w.skews, w.id_salt, Delivery::Set, w.seed);
        sim.run(&w.steps, false)?;
        sim.deliver_everything()?;
        sim.check_converged()?;
    }

    /// Replicas that apply each origin's changes in sequence, holding back changes that
    /// arrive ahead of a gap until it fills and skipping duplicates, converge too.
    #[test]
    fn replicas_syncing_by_version_vector_converge_despite_gaps_and_duplicates(
        w in workload(60),
    ) {
        let mut sim = Sim::new(w.replicas, &w.skews, w.id_salt, Delivery::Vector, w.seed);
        sim.run(&w.steps, false)?;
        sim.deliver_everything()?;
        sim.check_converged()?;
    }

    /// In a history where every write to a row follows every earlier write to it, no
    /// conflict is ever reported, whatever order the others receive them in.
    #[test]
    fn a_sequential_history_never_reports_a_conflict(
        w in workload(40),
        delivery in delivery(),
    ) {
        let mut sim = Sim::new(w.replicas, &w.skews, w.id_salt, delivery, w.seed);
        sim.run(&w.steps, true)?;
        sim.deliver_everything()?;
        for (i, replica) in sim.replicas.iter().enumerate() {
            prop_assert!(
                replica.conflicts.is_empty(),
                "replica {} reported {:?}",
                i,
                replica.conflicts
            );
        }
        sim.check_converged()?;
    }

    /// Merging one row's changes is commutative, associative and idempotent, and gives
    /// the reference model's state.
    #[test]
    fn merge_order_and_repetition_do_not_change_a_row(
        raws in prop::collection::vec(raw_change(), 1..12),
        seed in any::<u64>(),
    ) {
        check_one_row_algebra(&one_row_changes(&raws, true), seed)?;
    }

    /// A change that names one column twice (not produced by capture, but accepted by
    /// the merge) still converges, to the later of the two writes.
    #[test]
    fn a_change_naming_a_column_twice_converges_to_its_later_write(
        raws in prop::collection::vec(raw_change(), 1..8),
        seed in any::<u64>(),
    ) {
        check_one_row_algebra(&one_row_changes(&raws, false), seed)?;
    }

    /// Two replicas updating the same column without seeing each other's write: every
    /// replica reports the pair, and the greater version wins everywhere.
    #[test]
    fn concurrent_writes_of_one_column_are_reported_as_a_conflict(
        replicas in 2..=5usize,
        (x, other) in (0..5usize, 0..4usize),
        (table, key, column) in (0..TABLES.len(), 0..KEY_CHOICES, 0..MAX_COLUMNS),
        values in prop::collection::vec(value(), 3 * MAX_COLUMNS),
        (skews, id_salt, gap) in (prop::collection::vec(0..20u8, 5), any::<u8>(), 0..3u64),
        delivery in delivery(),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(replicas, &skews, id_salt, delivery, seed);
        let x = x % replicas;
        let y = (x + 1 + other % (replicas - 1)) % replicas;
        let column = column % TABLES[table].columns.len();
        let op = |action: u8, columns: u8, part: usize| RowOp {
            table,
            key,
            action,
            columns,
            values: values[part * MAX_COLUMNS..(part + 1) * MAX_COLUMNS].to_vec(),
        };
        sim.write(y, &[op(1, 0, 0)], false)?;
        sim.deliver_everything()?;
        sim.write(x, &[op(1, 1 << column, 1)], false)?;
        sim.wall += gap;
        sim.write(y, &[op(1, 1 << column, 2)], false)?;
        sim.deliver_everything()?;
        sim.check_converged()?;

        let vx = sim.replicas[x].log.last().unwrap().columns[0].version;
        let vy = sim.replicas[y].log.last().unwrap().columns[0].version;
        for (i, replica) in sim.replicas.iter().enumerate() {
            prop_assert!(!replica.conflicts.is_empty(), "replica {} reported nothing", i);
            if delivery == Delivery::Vector {
                prop_assert_eq!(replica.conflicts.len(), 1, "replica {}", i);
            }
            for conflict in &replica.conflicts {
                match conflict {
                    ConflictRecord::Column { column: c, incoming, local, incoming_won, .. } => {
                        prop_assert_eq!(*c, column);
                        let mut pair = [*incoming, *local];
                        pair.sort();
                        let mut want = [vx, vy];
                        want.sort();
                        prop_assert_eq!(pair, want);
                        prop_assert_eq!(*incoming_won, incoming > local);
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }

    /// A replica deleting a row while another updates it: the delete wins everywhere and
    /// every replica reports the overridden update.
    #[test]
    fn an_update_concurrent_with_a_delete_loses_and_is_reported(
        replicas in 2..=5usize,
        (x, other) in (0..5usize, 0..4usize),
        (table, key, columns) in (0..TABLES.len(), 0..KEY_CHOICES, any::<u8>()),
        values in prop::collection::vec(value(), 2 * MAX_COLUMNS),
        (skews, id_salt, gap) in (prop::collection::vec(0..20u8, 5), any::<u8>(), 0..3u64),
        delivery in delivery(),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(replicas, &skews, id_salt, delivery, seed);
        let x = x % replicas;
        let y = (x + 1 + other % (replicas - 1)) % replicas;
        let op = |action: u8, part: usize| RowOp {
            table,
            key,
            action,
            columns,
            values: values[part * MAX_COLUMNS..(part + 1) * MAX_COLUMNS].to_vec(),
        };
        sim.write(x, &[op(1, 0)], false)?;
        sim.deliver_everything()?;
        sim.write(x, &[op(0, 0)], false)?;
        sim.wall += gap;
        sim.write(y, &[op(1, 1)], false)?;
        sim.deliver_everything()?;
        sim.check_converged()?;

        let delete = sim.replicas[x].log.last().unwrap();
        prop_assert!(delete.is_delete());
        let delete = Version { hlc: delete.hlc, origin: delete.origin };
        let update = sim.replicas[y].log.last().unwrap().columns[0].version;
        for (i, replica) in sim.replicas.iter().enumerate() {
            prop_assert!(replica.visible_state().is_empty());
            prop_assert!(!replica.conflicts.is_empty(), "replica {} reported nothing", i);
            if delivery == Delivery::Vector {
                prop_assert_eq!(replica.conflicts.len(), 1, "replica {}", i);
            }
            for conflict in &replica.conflicts {
                match conflict {
                    ConflictRecord::UpdateLostToDelete { delete: d, update: u, .. } => {
                        prop_assert_eq!((*d, *u), (delete, update));
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }

    /// Row on every replica; c updates one column, later b updates another; a merges
    /// only b's update and deletes. a's newest seen version is b's, newer than c's, yet
    /// a never saw c's update: every replica must report it as lost to the delete,
    /// whatever order the changes reach it in.
    #[test]
    fn an_older_update_the_deleter_missed_is_reported_although_it_saw_a_newer_one(
        replicas in 3..=5usize,
        (a, b_off, c_off) in (0..5usize, 0..4usize, 0..3usize),
        (key, first, second) in (0..KEY_CHOICES, 0..4usize, 1..4usize),
        values in prop::collection::vec(value(), 3 * MAX_COLUMNS),
        (skews, id_salt, gap) in (prop::collection::vec(0..20u8, 5), any::<u8>(), 1..30u64),
        delivery in delivery(),
        seed in any::<u64>(),
    ) {
        let table = 1;
        let mut sim = Sim::new(replicas, &skews, id_salt, delivery, seed);
        let a = a % replicas;
        let others: Vec<usize> = (0..replicas).filter(|&r| r != a).collect();
        let b = others[b_off % others.len()];
        let rest: Vec<usize> = others.iter().copied().filter(|&r| r != b).collect();
        let c = rest[c_off % rest.len()];
        let (col_c, col_b) = (first, (first + second) % 4);
        let op = |action: u8, columns: u8, part: usize| RowOp {
            table,
            key,
            action,
            columns,
            values: values[part * MAX_COLUMNS..(part + 1) * MAX_COLUMNS].to_vec(),
        };
        sim.write(a, &[op(1, 0b1111, 0)], false)?;
        sim.deliver_everything()?;
        sim.write(c, &[op(1, 1 << col_c, 1)], false)?;
        sim.wall += gap;
        sim.write(b, &[op(1, 1 << col_b, 2)], false)?;
        let b_update = sim.replicas[b].log.last().unwrap().clone();
        sim.deliver(a, vec![b_update])?;
        sim.write(a, &[op(0, 0, 0)], false)?;
        sim.deliver_everything()?;
        sim.check_converged()?;

        let delete = sim.replicas[a].log.last().unwrap();
        prop_assert!(delete.is_delete());
        let delete = Version { hlc: delete.hlc, origin: delete.origin };
        let update = sim.replicas[c].log.last().unwrap().columns[0].version;
        for (i, replica) in sim.replicas.iter().enumerate() {
            prop_assert!(replica.visible_state().is_empty());
            prop_assert!(!replica.conflicts.is_empty(), "replica {} reported nothing", i);
            for conflict in &replica.conflicts {
                match conflict {
                    ConflictRecord::UpdateLostToDelete { delete: d, update: u, .. } => {
                        prop_assert_eq!((*d, *u), (delete, update), "replica {}", i);
                    }
                    other => prop_assert!(false, "unexpected {:?} at replica {}", other, i),
                }
            }
        }
    }
}
