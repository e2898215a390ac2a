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
//! * a **shared range** is written concurrently by everyone. There the merge decides.
//!   At any moment each column of a shared row must hold a value committed to that key
//!   by some writer, never an invented one ([`check_written`]). Column by column, not
//!   row by row: Concord merges each column as its own last-writer-wins register and a
//!   change carries only the columns that changed, so a row may legitimately combine
//!   `v` from one write with `n` from another (a transaction that writes a key twice
//!   logs `v` once and `n` twice; a concurrent write whose version falls between the
//!   two wins `v` only).
//! * once the nodes have converged, the shared range is checked **exactly**
//!   ([`check_last_writer`]): the winner of each row and column is predicted from the
//!   versions Concord's change log recorded for every write, with the rules of
//!   `docs/merge-semantics.md` written again here, independently of
//!   `concord_core::merge`: the row exists iff the largest causal length among its
//!   changes is odd (a delete concurrent with an update wins, a re-insert after it
//!   wins over both), and then each column holds the write with the largest version
//!   `(hlc, origin)` among the changes of that life that wrote it. This needs Concord's
//!   metadata (the clocks are internal), so the log entries are tied back to the
//!   committed history first: every logged value was committed by that origin to that
//!   key, each origin's last logged state of a key is its last committed write, and
//!   causal lengths are odd for writes, even for deletes and never decrease along one
//!   origin's changes.
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

/// Checks that every column of every row of `range` in `snapshot` holds a value
/// committed to that key (by any writer), never a value nobody wrote there. Columns are
/// checked one by one because they are merged one by one (see the module docs).
pub fn check_written(
    histories: &[&[Txn]],
    range: &Range<Key>,
    snapshot: &Table,
) -> Result<(), String> {
    let writes = || {
        histories
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|t| t.effects.iter())
            .filter_map(|e| e.after.as_ref().map(|r| (e.key, r)))
    };
    let v_written: HashSet<(Key, &str)> = writes().map(|(k, r)| (k, r.v.as_str())).collect();
    let n_written: HashSet<(Key, i64)> = writes().map(|(k, r)| (k, r.n)).collect();
    let invented: Vec<String> = snapshot
        .range(range.clone())
        .filter(|(k, r)| {
            !v_written.contains(&(**k, r.v.as_str())) || !n_written.contains(&(**k, r.n))
        })
        .take(12)
        .map(|(k, r)| format!("key {k}: {r} holds a value never committed to this key"))
        .collect();
    if invented.is_empty() {
        Ok(())
    } else {
        Err(invented.join("\n  "))
    }
}

/// A column version as Concord orders them: by hybrid logical clock, then by the
/// origin's id (its 16 bytes compared in order, that is as a big-endian `u128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The packed hybrid logical clock (milliseconds << 16 | counter).
    pub hlc: u64,
    /// The origin's id.
    pub origin: u128,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}ms+{}@{:08x}",
            self.hlc >> 16,
            self.hlc & 0xffff,
            self.origin >> 96
        )
    }
}

/// One change to a shared-range row, as a node's change log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedChange {
    /// The row.
    pub key: Key,
    /// The writer whose node made the change (its origin).
    pub writer: usize,
    /// Its sequence number at that origin.
    pub seq: u64,
    /// The row's causal length after the change: odd for an insert or update, even
    /// for a delete.
    pub cl: u64,
    /// `v` with its version, if the change wrote `v`.
    pub v: Option<(String, Version)>,
    /// `n` with its version, if the change wrote `n`.
    pub n: Option<(i64, Version)>,
}

impl LoggedChange {
    fn describe(&self) -> String {
        let col = |c: Option<String>| c.unwrap_or_else(|| "-".into());
        format!(
            "writer {} seq {} cl {} v {} n {}",
            self.writer,
            self.seq,
            self.cl,
            col(self.v.as_ref().map(|(x, ver)| format!("{x:?}@{ver}"))),
            col(self.n.as_ref().map(|(x, ver)| format!("{x}@{ver}")))
        )
    }
}

/// The state of one shared row that the merge rules predict from its logged changes:
/// absent, or each column's winning value (`None`: no change of the row's current life
/// wrote it, so it holds the column default, NULL) and the change it came from.
#[derive(Debug)]
enum Predicted<'a> {
    Absent,
    Alive {
        v: Option<(&'a String, &'a LoggedChange)>,
        n: Option<(i64, &'a LoggedChange)>,
    },
}

fn predict<'a>(changes: &[&'a LoggedChange]) -> Predicted<'a> {
    let Some(max_cl) = changes.iter().map(|c| c.cl).max() else {
        return Predicted::Absent;
    };
    if max_cl % 2 == 0 {
        return Predicted::Absent;
    }
    let life = changes.iter().filter(|c| c.cl == max_cl);
    let v = life
        .clone()
        .filter_map(|c| c.v.as_ref().map(|(x, ver)| (ver, x, *c)))
        .max_by_key(|(ver, _, _)| **ver)
        .map(|(_, x, c)| (x, c));
    let n = life
        .filter_map(|c| c.n.as_ref().map(|(x, ver)| (ver, *x, *c)))
        .max_by_key(|(ver, _, _)| **ver)
        .map(|(_, x, c)| (x, c));
    Predicted::Alive { v, n }
}

/// The exact check of the shared range once the nodes have converged (see the module
/// docs): `logged` is every change to the range that the change log of the node whose
/// table is `snapshot` holds, from every origin, none pruned. Returns every problem
/// found (at most a dozen of each kind).
pub fn check_last_writer(
    histories: &[&[Txn]],
    shared: &Range<Key>,
    logged: &[LoggedChange],
    snapshot: &Table,
) -> Vec<String> {
    let mut problems = Vec::new();
    // What each writer committed to each shared key, in commit order.
    let mut committed: BTreeMap<(usize, Key), Vec<Option<&Row>>> = BTreeMap::new();
    for (w, history) in histories.iter().enumerate() {
        for e in history
            .iter()
            .flat_map(|t| t.effects.iter())
            .filter(|e| shared.contains(&e.key))
        {
            committed
                .entry((w, e.key))
                .or_default()
                .push(e.after.as_ref());
        }
    }
    let mut by_origin: BTreeMap<(usize, Key), Vec<&LoggedChange>> = BTreeMap::new();
    let mut by_key: BTreeMap<Key, Vec<&LoggedChange>> = BTreeMap::new();
    for c in logged.iter().filter(|c| shared.contains(&c.key)) {
        by_origin.entry((c.writer, c.key)).or_default().push(c);
        by_key.entry(c.key).or_default().push(c);
    }

    // The log against the history, origin by origin.
    let mut tie_problems = Vec::new();
    for ((w, key), changes) in &mut by_origin {
        changes.sort_by_key(|c| c.seq);
        let writes = committed.get(&(*w, *key)).map_or(&[][..], Vec::as_slice);
        let mut previous_cl = 0;
        for c in changes.iter() {
            let is_delete = c.v.is_none() && c.n.is_none();
            if c.cl == 0 || (c.cl % 2 == 0) != is_delete {
                tie_problems.push(format!(
                    "key {key}: causal length {} does not fit a {} ({})",
                    c.cl,
                    if is_delete { "delete" } else { "write" },
                    c.describe()
                ));
            }
            if c.cl < previous_cl {
                tie_problems.push(format!(
                    "key {key}: writer {w}'s causal length went down from {previous_cl} ({})",
                    c.describe()
                ));
            }
            previous_cl = c.cl;
            let rows = || writes.iter().flatten();
            let committed_here = match (&c.v, &c.n) {
                (None, None) => writes.iter().any(Option::is_none),
                (v, n) => {
                    v.as_ref().is_none_or(|(x, _)| rows().any(|r| &r.v == x))
                        && n.as_ref().is_none_or(|(x, _)| rows().any(|r| r.n == *x))
                }
            };
            if !committed_here {
                tie_problems.push(format!(
                    "key {key}: the log holds a change writer {w} never committed to this key ({})",
                    c.describe()
                ));
            }
        }
        // The origin's last logged state of the key is its last committed write.
        let last_v = changes
            .iter()
            .rev()
            .find_map(|c| c.v.as_ref().map(|x| &x.0));
        let last_n = changes.iter().rev().find_map(|c| c.n.as_ref().map(|x| x.0));
        let ends_deleted = changes.last().is_some_and(|c| c.cl % 2 == 0);
        match writes.last() {
            Some(Some(row)) if ends_deleted || last_v != Some(&row.v) || last_n != Some(row.n) => {
                tie_problems.push(format!(
                    "key {key}: writer {w}'s last committed write {row} is not its last logged state (last change: {})",
                    changes.last().map_or_else(String::new, |c| c.describe())
                ));
            }
            Some(None) if !ends_deleted => tie_problems.push(format!(
                "key {key}: writer {w}'s last committed write is a delete, its last logged change is not ({})",
                changes.last().map_or_else(String::new, |c| c.describe())
            )),
            _ => {}
        }
    }
    for ((w, key), writes) in &committed {
        if let Some(Some(row)) = writes.last()
            && !by_origin.contains_key(&(*w, *key))
        {
            tie_problems.push(format!(
                    "key {key}: writer {w} committed {row} (and {} more writes) but the log holds no change of it",
                    writes.len() - 1
                ));
        }
    }
    if !tie_problems.is_empty() {
        let more = tie_problems.len().saturating_sub(12);
        tie_problems.truncate(12);
        if more > 0 {
            tie_problems.push(format!("... and {more} more"));
        }
        problems.push(format!(
            "the change log does not match the committed writes to the shared range:\n  {}",
            tie_problems.join("\n  ")
        ));
    }

    // The converged rows against the winners the versions decide.
    let keys: std::collections::BTreeSet<Key> = by_key
        .keys()
        .chain(snapshot.range(shared.clone()).map(|(k, _)| k))
        .copied()
        .collect();
    let mut wrong = Vec::new();
    for key in keys {
        let changes = by_key.get(&key).map_or(&[][..], Vec::as_slice);
        let found = snapshot.get(&key);
        let show = |r: Option<&Row>| r.map_or_else(|| "absent".to_owned(), Row::to_string);
        match (predict(changes), found) {
            (Predicted::Absent, None) => {}
            (Predicted::Absent, Some(_)) => wrong.push(format!(
                "key {key}: expected absent (largest causal length {} is a delete), found {}",
                changes.iter().map(|c| c.cl).max().unwrap_or(0),
                show(found)
            )),
            (Predicted::Alive { v, n }, found) => {
                let expected_v = v.map(|(x, _)| x.as_str());
                let expected_n = n.map(|(x, _)| x);
                if found.map(|r| r.v.as_str()) != expected_v || found.map(|r| r.n) != expected_n {
                    let from = |c: Option<&LoggedChange>| {
                        c.map_or_else(
                            || "no write in this life".to_owned(),
                            LoggedChange::describe,
                        )
                    };
                    wrong.push(format!(
                        "key {key}: expected v = {:?} (from {}) and n = {:?} (from {}), found {}",
                        expected_v,
                        from(v.map(|(_, c)| c)),
                        expected_n,
                        from(n.map(|(_, c)| c)),
                        show(found)
                    ));
                }
            }
        }
    }
    if !wrong.is_empty() {
        let more = wrong.len().saturating_sub(12);
        wrong.truncate(12);
        if more > 0 {
            wrong.push(format!("... and {more} more"));
        }
        problems.push(format!(
            "shared rows that are not the last writer's (per column, by version):\n  {}",
            wrong.join("\n  ")
        ));
    }
    problems
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
        let h0 = vec![txn("0:1", vec![put(100, "0:1", 1), put(101, "0:1", 3)])];
        let h1 = vec![txn("1:1", vec![put(100, "1:1", 2)])];
        let hs: [&[Txn]; 2] = [&h0, &h1];
        assert!(check_snapshot(&layout, &hs, &table(&[(100, "1:1", 2)])).is_ok());
        // Columns merge one by one: `v` of one write with `n` of another to the same
        // key can be right (the exact check decides which)...
        assert!(check_snapshot(&layout, &hs, &table(&[(100, "1:1", 1)])).is_ok());
        // ... but never a value committed to another key, or to none.
        assert!(check_snapshot(&layout, &hs, &table(&[(100, "1:1", 3)])).is_err());
        assert!(check_snapshot(&layout, &hs, &table(&[(100, "2:1", 2)])).is_err());
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

    fn ver(hlc: u64, origin: u128) -> Version {
        Version { hlc, origin }
    }

    /// A logged change by `writer` (origin id `writer + 1`) at `hlc`.
    fn logged(
        key: Key,
        writer: usize,
        seq: u64,
        cl: u64,
        hlc: u64,
        v: Option<&str>,
        n: Option<i64>,
    ) -> LoggedChange {
        let version = ver(hlc, writer as u128 + 1);
        LoggedChange {
            key,
            writer,
            seq,
            cl,
            v: v.map(|x| (x.to_owned(), version)),
            n: n.map(|x| (x, version)),
        }
    }

    #[test]
    fn the_shared_row_must_be_the_write_with_the_largest_version() {
        let h0 = vec![txn("0:1", vec![put(100, "0:1", 1)])];
        let h1 = vec![txn("1:1", vec![put(100, "1:1", 2)])];
        let hs: [&[Txn]; 2] = [&h0, &h1];
        let log = [
            logged(100, 0, 1, 1, 20, Some("0:1"), Some(1)),
            logged(100, 1, 1, 1, 10, Some("1:1"), Some(2)),
        ];
        assert!(check_last_writer(&hs, &(100..110), &log, &table(&[(100, "0:1", 1)])).is_empty());
        // A committed write, but not the last writer's: only the exact check sees it.
        let stale = table(&[(100, "1:1", 2)]);
        assert!(check_written(&hs, &(100..110), &stale).is_ok());
        let problems = check_last_writer(&hs, &(100..110), &log, &stale);
        assert!(
            problems.iter().any(|p| p.contains("not the last writer's")),
            "{problems:?}"
        );
        // Equal clocks: the larger origin id wins.
        let tie = [
            logged(100, 0, 1, 1, 20, Some("0:1"), Some(1)),
            logged(100, 1, 1, 1, 20, Some("1:1"), Some(2)),
        ];
        assert!(check_last_writer(&hs, &(100..110), &tie, &stale).is_empty());
    }

    #[test]
    fn a_later_life_wins_whatever_its_clock_and_columns_merge_one_by_one() {
        // Writer 1 deletes (cl 2) concurrently with writer 0's later-clocked update
        // (cl 1): the row stays deleted.
        let h0 = vec![
            txn("0:1", vec![put(100, "0:1", 1)]),
            txn("0:2", vec![put(100, "0:2", 3)]),
        ];
        let h1 = vec![txn("1:1", vec![del(100)])];
        let hs: [&[Txn]; 2] = [&h0, &h1];
        let log = [
            logged(100, 0, 1, 1, 10, Some("0:1"), Some(1)),
            logged(100, 1, 1, 2, 15, None, None),
            logged(100, 0, 2, 1, 30, Some("0:2"), Some(3)),
        ];
        assert!(check_last_writer(&hs, &(100..110), &log, &table(&[])).is_empty());
        let resurrected = check_last_writer(&hs, &(100..110), &log, &table(&[(100, "0:2", 3)]));
        assert!(
            resurrected.iter().any(|p| p.contains("expected absent")),
            "{resurrected:?}"
        );

        // In one life, writer 1 wrote the key twice in one transaction: the second
        // change carries only `n` (its `v` did not change). Writer 0's write falls
        // between the two versions, so it wins `v` and loses `n`.
        let h0 = vec![txn("0:1", vec![put(100, "0:1", 4)])];
        let h1 = vec![txn("1:1", vec![put(100, "1:1", 2), put(100, "1:1", 3)])];
        let hs: [&[Txn]; 2] = [&h0, &h1];
        let log = [
            logged(100, 1, 1, 1, 10, Some("1:1"), Some(3)),
            logged(100, 0, 1, 1, 20, Some("0:1"), Some(4)),
            logged(100, 1, 2, 1, 30, None, Some(3)),
        ];
        assert!(check_last_writer(&hs, &(100..110), &log, &table(&[(100, "0:1", 3)])).is_empty());
        assert!(!check_last_writer(&hs, &(100..110), &log, &table(&[(100, "0:1", 4)])).is_empty());
    }

    #[test]
    fn the_log_must_hold_each_writers_committed_writes_and_nothing_else() {
        let h0 = vec![
            txn("0:1", vec![put(100, "0:1", 1)]),
            txn("0:2", vec![put(100, "0:2", 2)]),
        ];
        let hs: [&[Txn]; 1] = [&h0];
        let now = table(&[(100, "0:2", 2)]);
        let good = [logged(100, 0, 1, 1, 10, Some("0:2"), Some(2))];
        assert!(check_last_writer(&hs, &(100..110), &good, &now).is_empty());
        // The last write never logged.
        let lost = [logged(100, 0, 1, 1, 10, Some("0:1"), Some(1))];
        let p = check_last_writer(&hs, &(100..110), &lost, &now);
        assert!(p.iter().any(|p| p.contains("last logged state")), "{p:?}");
        // A value nobody committed, and a delete with an odd causal length.
        let bad = [
            logged(100, 0, 1, 1, 10, Some("0:9"), Some(2)),
            logged(100, 0, 2, 3, 20, None, None),
            logged(100, 0, 3, 3, 30, Some("0:2"), Some(2)),
        ];
        let p = check_last_writer(&hs, &(100..110), &bad, &now).join("\n");
        assert!(p.contains("never committed"), "{p}");
        assert!(p.contains("does not fit a delete"), "{p}");
        // Nothing logged at all.
        let p = check_last_writer(&hs, &(100..110), &[], &now).join("\n");
        assert!(p.contains("holds no change"), "{p}");
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
