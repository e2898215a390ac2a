//! The recorded history of committed writes, and the checks run against snapshots of
//! the nodes' tables.
//!
//! Why this shape: Concord's merge order (hybrid logical clocks) is internal, so a
//! checker that had to predict the winner of concurrent writes would have to read
//! Concord's metadata and would share its bugs. Instead the keys are laid out so that
//! most of the checking is exact without knowing any clock:
//!
//! * every writer owns a disjoint **own range** of keys that only it writes. Changes
//!   from one origin are applied in order and whole source transactions at a time, so
//!   on every node, at every moment, the own range of writer W must equal W's table
//!   after some prefix of W's committed transactions ([`prefix_of`]). After the network
//!   heals it must equal W's table after *all* of them: nothing lost, nothing partial,
//!   deletes included. Because a node's held changes survive a crash, the prefix seen
//!   by one node never shrinks ([`Progress`]).
//! * a **shared range** is written concurrently by everyone. There the merge decides,
//!   so the check is that every node holds the same rows and that each row is exactly
//!   one committed write to that key, never an invented or mixed value (writes to the
//!   shared range always set every column).
//! * every write of a row carries a value of `n` never written anywhere else, so a row
//!   that appears twice (under two keys) is caught by [`check_unique`].
//!
//! Everything here is pure: no IO, no clock; the test passes snapshots in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;

/// A primary key of the test table.
pub type Key = i64;

/// The non-key columns of a row: `v` is the tag of the transaction that last wrote it,
/// `n` a number unique to the write that last set it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    /// Transaction tag (`writer:txn`), set by every write that changes `v`.
    pub v: String,
    /// Unique per write that sets it.
    pub n: i64,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:?}, {})", self.v, self.n)
    }
}

/// One table's rows, ordered by key.
pub type Table = BTreeMap<Key, Row>;

/// The state of one row after a write: present with these values, or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The row written.
    pub key: Key,
    /// Its values after the write; `None` for a delete.
    pub after: Option<Row>,
}

/// A transaction that committed on its writer's database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    /// Its tag, also written to `v` of the rows it writes.
    pub tag: String,
    /// Its row writes in order (a later effect on the same key replaces an earlier one).
    pub effects: Vec<Effect>,
}

/// Where each writer may write.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Keys only writer `i` writes: `own[i]`.
    pub own: Vec<Range<Key>>,
    /// Keys everyone writes.
    pub shared: Range<Key>,
}

/// The state of `range` after applying `txns` in order.
pub fn replay(txns: &[Txn], range: &Range<Key>) -> Table {
    let mut table = Table::new();
    for txn in txns {
        apply(&mut table, txn, range);
    }
    table
}

fn apply(table: &mut Table, txn: &Txn, range: &Range<Key>) {
    for e in txn.effects.iter().filter(|e| range.contains(&e.key)) {
        match &e.after {
            Some(row) => table.insert(e.key, row.clone()),
            None => table.remove(&e.key),
        };
    }
}

fn restrict(snapshot: &Table, range: &Range<Key>) -> Table {
    snapshot
        .range(range.clone())
        .map(|(k, r)| (*k, r.clone()))
        .collect()
}

/// Lists (at most `max`) keys where `got` differs from `want`.
pub fn differences(want: &Table, got: &Table, max: usize) -> Vec<String> {
    let keys: std::collections::BTreeSet<Key> = want.keys().chain(got.keys()).copied().collect();
    let show = |r: Option<&Row>| r.map_or_else(|| "absent".to_owned(), Row::to_string);
    let mut out: Vec<String> = keys
        .into_iter()
        .filter(|k| want.get(k) != got.get(k))
        .map(|k| {
            format!(
                "key {k}: expected {}, found {}",
                show(want.get(&k)),
                show(got.get(&k))
            )
        })
        .collect();
    if out.len() > max {
        let more = out.len() - max;
        out.truncate(max);
        out.push(format!("... and {more} more"));
    }
    out
}

/// Which prefixes of a writer's history a snapshot matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Fewest transactions that give the snapshot's state.
    pub min: usize,
    /// Most transactions that give it (a later insert-then-delete can repeat a state).
    pub max: usize,
}

/// Finds the prefixes of `txns` whose replay equals `snapshot` restricted to `range`.
/// `Err` names the closest prefix and how the snapshot differs from it: the snapshot
/// shows a transaction in part, a lost write, or a value nobody wrote.
pub fn prefix_of(txns: &[Txn], range: &Range<Key>, snapshot: &Table) -> Result<Prefix, String> {
    let target = restrict(snapshot, range);
    let mut state = Table::new();
    let mut mismatched: HashSet<Key> = target.keys().copied().collect();
    let mut found: Option<Prefix> = None;
    let mut best = (mismatched.len(), 0usize);
    let mut check = |p: usize, mismatched: &HashSet<Key>| {
        if mismatched.is_empty() {
            found = Some(match found {
                None => Prefix { min: p, max: p },
                Some(f) => Prefix { min: f.min, max: p },
            });
        }
        if mismatched.len() < best.0 {
            best = (mismatched.len(), p);
        }
    };
    check(0, &mismatched);
    for (i, txn) in txns.iter().enumerate() {
        apply(&mut state, txn, range);
        for e in txn.effects.iter().filter(|e| range.contains(&e.key)) {
            if state.get(&e.key) == target.get(&e.key) {
                mismatched.remove(&e.key);
            } else {
                mismatched.insert(e.key);
            }
        }
        check(i + 1, &mismatched);
    }
    found.ok_or_else(|| {
        let closest = replay(&txns[..best.1], range);
        format!(
            "matches no prefix of the {} committed transactions; closest is the first {} ({} keys differ):\n  {}",
            txns.len(),
            best.1,
            best.0,
            differences(&closest, &target, 12).join("\n  ")
        )
    })
}

/// Checks that every row of `range` in `snapshot` is exactly one committed write to
/// that key (by any writer), never a value nobody wrote or a mix of two writes.
pub fn check_written(
    histories: &[&[Txn]],
    range: &Range<Key>,
    snapshot: &Table,
) -> Result<(), String> {
    let written: HashSet<(Key, &Row)> = histories
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|t| t.effects.iter())
        .filter_map(|e| e.after.as_ref().map(|r| (e.key, r)))
        .collect();
    let invented: Vec<String> = snapshot
        .range(range.clone())
        .filter(|(k, r)| !written.contains(&(**k, *r)))
        .take(12)
        .map(|(k, r)| format!("key {k}: {r} was never committed to this key"))
        .collect();
    if invented.is_empty() {
        Ok(())
    } else {
        Err(invented.join("\n  "))
    }
}

/// Checks that no value of `n` appears in two rows: every write has its own `n`, so a
/// repeat is a row duplicated under another key.
pub fn check_unique(snapshot: &Table) -> Result<(), String> {
    let mut seen: HashMap<i64, Key> = HashMap::new();
    let mut dups = Vec::new();
    for (k, r) in snapshot {
        if let Some(first) = seen.insert(r.n, *k) {
            dups.push(format!("n = {} in keys {first} and {k}", r.n));
        }
    }
    if dups.is_empty() {
        Ok(())
    } else {
        Err(dups.join("\n  "))
    }
}

/// Checks that every key of `snapshot` lies in some writer's range (none invented).
pub fn check_in_layout(layout: &Layout, snapshot: &Table) -> Result<(), String> {
    let stray: Vec<String> = snapshot
        .iter()
        .filter(|(k, _)| !layout.shared.contains(k) && !layout.own.iter().any(|r| r.contains(k)))
        .take(12)
        .map(|(k, r)| format!("key {k} = {r} is outside every writer's range"))
        .collect();
    if stray.is_empty() {
        Ok(())
    } else {
        Err(stray.join("\n  "))
    }
}

/// Every check that holds at any moment, on any node, while writes and faults go on:
/// own ranges are prefixes of their writer's history, shared rows are committed
/// writes, no duplicates, no stray keys. Returns the prefix matched per writer, or
/// every problem found.
pub fn check_snapshot(
    layout: &Layout,
    histories: &[&[Txn]],
    snapshot: &Table,
) -> Result<Vec<Prefix>, Vec<String>> {
    let mut problems = Vec::new();
    let mut prefixes = Vec::new();
    for (w, range) in layout.own.iter().enumerate() {
        let txns = histories.get(w).copied().unwrap_or_default();
        match prefix_of(txns, range, snapshot) {
            Ok(p) => prefixes.push(p),
            Err(e) => problems.push(format!("own range of writer {w} ({range:?}) {e}")),
        }
    }
    if let Err(e) = check_written(histories, &layout.shared, snapshot) {
        problems.push(format!("shared range {:?}:\n  {e}", layout.shared));
    }
    if let Err(e) = check_unique(snapshot) {
        problems.push(format!("duplicated rows:\n  {e}"));
    }
    if let Err(e) = check_in_layout(layout, snapshot) {
        problems.push(format!("stray rows:\n  {e}"));
    }
    if problems.is_empty() {
        Ok(prefixes)
    } else {
        Err(problems)
    }
}

/// The final check once the network has healed and the nodes agree: on top of
/// [`check_snapshot`], every own range equals its writer's complete history: every
/// committed write is present or superseded by a later one of the same writer.
pub fn check_final(layout: &Layout, histories: &[&[Txn]], snapshot: &Table) -> Vec<String> {
    let mut problems = match check_snapshot(layout, histories, snapshot) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    };
    for (w, range) in layout.own.iter().enumerate() {
        let txns = histories.get(w).copied().unwrap_or_default();
        let want = replay(txns, range);
        let got = restrict(snapshot, range);
        if want != got {
            problems.push(format!(
                "writer {w}'s committed writes are not all there (expected the state after all {} transactions):\n  {}",
                txns.len(),
                differences(&want, &got, 12).join("\n  ")
            ));
        }
    }
    problems
}

/// What each observer has been seen to hold of each writer's history, to catch a node
/// that loses applied changes (for example through a crash): the prefix it holds
/// never shrinks.
#[derive(Debug, Default)]
pub struct Progress {
    seen: HashMap<(usize, usize), Prefix>,
}

impl Progress {
    /// Records that `observer` matched `prefix` of `writer`'s history; `Err` if that
    /// proves it went back in time (its latest state is older than an earlier one).
    pub fn observe(
        &mut self,
        observer: usize,
        writer: usize,
        prefix: Prefix,
    ) -> Result<(), String> {
        let entry = self.seen.entry((observer, writer)).or_insert(prefix);
        // Sound despite repeated states: the true prefix p1 of the earlier snapshot is
        // at least its min, the true prefix p2 of this one at most its max; p2 < p1 is
        // proven only when max < min.
        if prefix.max < entry.min {
            return Err(format!(
                "node {observer} went back in time for writer {writer}: it held at least {} of its transactions, now at most {}",
                entry.min, prefix.max
            ));
        }
        if prefix.min > entry.min {
            *entry = prefix;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(key: Key, v: &str, n: i64) -> Effect {
        Effect {
            key,
            after: Some(Row { v: v.into(), n }),
        }
    }

    fn del(key: Key) -> Effect {
        Effect { key, after: None }
    }

    fn txn(tag: &str, effects: Vec<Effect>) -> Txn {
        Txn {
            tag: tag.into(),
            effects,
        }
    }

    fn table(rows: &[(Key, &str, i64)]) -> Table {
        rows.iter()
            .map(|(k, v, n)| {
                (
                    *k,
                    Row {
                        v: (*v).into(),
                        n: *n,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_transaction_seen_in_part_matches_no_prefix() {
        let h = vec![
            txn("a", vec![put(1, "a", 1), put(2, "a", 2)]),
            txn("b", vec![put(1, "b", 3), del(2)]),
        ];
        let r = 0..10;
        assert_eq!(
            prefix_of(&h, &r, &table(&[])).unwrap(),
            Prefix { min: 0, max: 0 }
        );
        assert_eq!(
            prefix_of(&h, &r, &table(&[(1, "a", 1), (2, "a", 2)]))
                .unwrap()
                .min,
            1
        );
        assert_eq!(prefix_of(&h, &r, &table(&[(1, "b", 3)])).unwrap().min, 2);
        // Half of "b": key 1 updated, key 2 not yet deleted.
        let err = prefix_of(&h, &r, &table(&[(1, "b", 3), (2, "a", 2)])).unwrap_err();
        assert!(err.contains("key"), "{err}");
        // Rows outside the range are ignored.
        assert!(prefix_of(&h, &r, &table(&[(50, "x", 9)])).is_ok());
    }

    #[test]
    #[allow(
        clippy::single_range_in_vec_init,
        reason = "one writer's range, on purpose"
    )]
    fn a_lost_delete_fails_the_final_check() {
        let layout = Layout {
            own: vec![0..10],
            shared: 100..110,
        };
        let h = vec![txn("a", vec![put(1, "a", 1)]), txn("b", vec![del(1)])];
        let problems = check_final(&layout, &[&h], &table(&[(1, "a", 1)]));
        assert!(
            problems.iter().any(|p| p.contains("not all there")),
            "{problems:?}"
        );
        assert!(check_final(&layout, &[&h], &table(&[])).is_empty());
    }

    #[test]
    fn shared_rows_must_be_committed_writes_and_unique() {
        let layout = Layout {
            own: vec![0..10, 10..20],
            shared: 100..110,
        };
        let h0 = vec![txn("0:1", vec![put(100, "0:1", 1)])];
        let h1 = vec![txn("1:1", vec![put(100, "1:1", 2)])];
        let hs: [&[Txn]; 2] = [&h0, &h1];
        assert!(check_snapshot(&layout, &hs, &table(&[(100, "1:1", 2)])).is_ok());
        // A mix of two writes.
        assert!(check_snapshot(&layout, &hs, &table(&[(100, "1:1", 1)])).is_err());
        // The same write under two keys.
        let h2 = vec![txn("0:1", vec![put(100, "0:1", 1), put(101, "0:1", 1)])];
        let dup = check_snapshot(
            &layout,
            &[&h2, &h1],
            &table(&[(100, "0:1", 1), (101, "0:1", 1)]),
        );
        assert!(format!("{dup:?}").contains("duplicated"), "{dup:?}");
        // A key nobody owns.
        assert!(check_snapshot(&layout, &hs, &table(&[(500, "x", 7)])).is_err());
    }

    #[test]
    fn progress_catches_a_node_going_back_but_not_a_repeated_state() {
        let mut p = Progress::default();
        p.observe(1, 0, Prefix { min: 5, max: 5 }).unwrap();
        // State of prefix 3 repeated at 7: ambiguous, allowed.
        p.observe(1, 0, Prefix { min: 3, max: 7 }).unwrap();
        assert!(p.observe(1, 0, Prefix { min: 4, max: 4 }).is_err());
    }
}
