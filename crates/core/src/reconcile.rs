//! Range-based set reconciliation: find the rows two replicas hold differently by
//! exchanging fingerprints of key ranges, so that only what differs crosses the network.
//!
//! Why: the change log is bounded (`retention_changes`), so a replica that was away
//! longer than the log reaches back, a new replica, or one restored from a backup cannot
//! catch up from the log alone; and rows can differ for reasons no log records (written
//! while untracked, a restored file, a bug). Comparing whole tables would move every
//! row. Instead each side describes a key range by one small fingerprint; equal
//! fingerprints end the range, different ones split it, and small ranges are exchanged
//! item by item. The rounds needed grow with the logarithm of the table's size and the
//! bytes with the number of differences, as in the negentropy protocol that inspired
//! this module.
//!
//! Why not the `negentropy` crate: it keeps every item in memory, ordered by
//! `(timestamp, id hash)`. Concord's items are rows ordered by their encoded primary key
//! ([`crate::PrimaryKey`] preserves order), read from a database range by range, so a
//! store answers with an ordered scan and memory stays bounded by one range's
//! bookkeeping, never by the table.
//!
//! An *item* is one row: its encoded key and a 32-byte hash of everything that must
//! agree (values and row clock), computed by the store. A range's fingerprint is the
//! count and the wrapping 256-bit sum of its items' hashes, hashed: adding is
//! commutative, so a range's fingerprint is computed in one pass, in any order.
//!
//! The module is pure: a side's rows are read through [`ItemSource`], and messages are
//! plain values the caller carries over whatever transport it has.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Version;
use crate::merge::RowClock;

/// A hash of one row's state, computed by the store.
pub type ItemHash = [u8; 32];

/// One row as reconciliation sees it: its encoded key and its hash.
pub type Item = (Vec<u8>, ItemHash);

/// The exclusive upper end of a range: every key below it. Ranges start where the
/// previous one ended; the first starts at the empty key, the smallest of all.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bound {
    /// Keys that compare below these bytes.
    Below(Vec<u8>),
    /// Every key.
    End,
}

impl Bound {
    /// Whether `key` lies below this bound.
    pub fn above(&self, key: &[u8]) -> bool {
        match self {
            Bound::Below(bound) => key < bound.as_slice(),
            Bound::End => true,
        }
    }
}

/// A range's fingerprint: 16 bytes of SHA-256 over the sum of its items' hashes and
/// their count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 16]);

/// What one side says about one range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeMode {
    /// Nothing more to say: the range agrees, or was settled.
    Skip,
    /// The sender's fingerprint of the range.
    Fingerprint(Fingerprint),
    /// Every item the sender holds in the range, in key order.
    Items(Vec<Item>),
    /// The answer to [`RangeMode::Items`]: exactly the keys where the answering side
    /// differs, with its hash, or `None` where it lacks the key. Needs no answer.
    Differences(Vec<(Vec<u8>, Option<ItemHash>)>),
}

/// One range of a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Where the range ends (exclusive); it starts where the previous range ended.
    pub upper: Bound,
    /// What the sender says about it.
    pub mode: RangeMode,
}

/// One message of a reconciliation: ranges covering every key, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Contiguous ranges; the last ends at [`Bound::End`].
    pub ranges: Vec<Range>,
}

impl Message {
    /// Its size encoded as it crosses a network (postcard), for reports of what a
    /// reconciliation cost.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }

    /// Whether this is the answer of a side that holds no items at all: one range over
    /// every key, listing nothing. The starter then knows every item of its own is
    /// missing there, without listing them through the rounds.
    pub fn holds_nothing(&self) -> bool {
        matches!(self.ranges.as_slice(), [Range { upper: Bound::End, mode: RangeMode::Items(items) }] if items.is_empty())
    }
}

/// A key held differently by the two sides.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Difference {
    /// The row's encoded key.
    pub key: Vec<u8>,
    /// This side's hash of the row; `None` if this side lacks it.
    pub here: Option<ItemHash>,
    /// The other side's hash; `None` if it lacks the row.
    pub there: Option<ItemHash>,
}

/// A side's items, read in key order.
pub trait ItemSource {
    /// Why reading failed.
    type Error;

    /// Calls `visit` with every item whose key is at least `from` and below `to`, in
    /// ascending key order, until `visit` returns false.
    fn scan(
        &mut self,
        from: &[u8],
        to: &Bound,
        visit: &mut dyn FnMut(&[u8], &ItemHash) -> bool,
    ) -> Result<(), Self::Error>;
}

/// What an item's hash covers, chosen by the side that starts a reconciliation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compare {
    /// The row's clock ([`clock_hash`]): what catching up needs. Two replicas whose
    /// clocks agree hold the same state, deleted rows included, and the clocks are read
    /// without touching the users' rows.
    Clocks,
    /// The row's values by column name, live rows only: what a person checking that two
    /// copies agree means by "the same" (`concord verify`).
    Values,
}

/// The hash of a row's replicated state as every replica computes it, whatever the
/// store or its column order: the causal length; for a deleted row its tombstone's
/// version; for a live row the distinct versions of its columns, sorted. A version names
/// one write, and a write sets the same columns everywhere, so equal clocks mean equal
/// states. Column names are left out on purpose: a link that renames columns still
/// compares equal rows as equal.
pub fn clock_hash(clock: &RowClock) -> ItemHash {
    let mut hasher = Sha256::new();
    hasher.update(clock.causal_length.0.to_le_bytes());
    let version = |hasher: &mut Sha256, v: &Version| {
        hasher.update(v.hlc.as_u64().to_le_bytes());
        hasher.update(v.origin.as_bytes());
    };
    if clock.causal_length.is_alive() {
        let mut versions: Vec<Version> =
            clock.columns.iter().flatten().map(|c| c.version).collect();
        versions.sort();
        versions.dedup();
        for v in &versions {
            version(&mut hasher, v);
        }
    } else if let Some(tombstone) = &clock.tombstone {
        hasher.update([1]);
        version(&mut hasher, &tombstone.version);
    }
    hasher.finalize().into()
}

/// Why a message could not be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReconcileError<E> {
    /// Reading this side's items failed.
    #[error("reading items: {0}")]
    Source(E),
    /// The peer's message breaks the protocol; nothing of it was used.
    #[error("invalid reconciliation message: {0}")]
    Invalid(String),
}

/// The tunables both sides use. They need not agree: each side splits and lists by
/// its own.
#[derive(Clone, Copy, Debug)]
pub struct Reconciler {
    /// How many sub-ranges a differing range is split into.
    pub branching: usize,
    /// A range of at most this many items is sent item by item instead of split.
    pub items_threshold: usize,
    /// The most items a peer may list in one range (bounds what one message costs).
    pub max_items_per_range: usize,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self {
            branching: 16,
            items_threshold: 32,
            max_items_per_range: 4096,
        }
    }
}

/// Count and wrapping sum of item hashes.
#[derive(Clone, Copy, Default)]
struct Accumulator {
    sum: [u64; 4],
    count: u64,
}

impl Accumulator {
    fn add(&mut self, hash: &ItemHash) {
        let mut carry = 0u128;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&hash[i * 8..i * 8 + 8]);
            let total = u128::from(*limb) + u128::from(u64::from_le_bytes(word)) + carry;
            *limb = total as u64;
            carry = total >> 64;
        }
        self.count += 1;
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut hasher = Sha256::new();
        for limb in self.sum {
            hasher.update(limb.to_le_bytes());
        }
        hasher.update(self.count.to_le_bytes());
        let digest = hasher.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Fingerprint(out)
    }
}

/// A range as one scan saw it: its accumulator, and its items if they were few.
struct Summary {
    summary: Accumulator,
    items: Option<Vec<Item>>,
}

/// The shortest bound that lies above `previous` and not above `next`, so a split
/// costs as few bytes as the keys allow.
fn bound_between(previous: &[u8], next: &[u8]) -> Vec<u8> {
    let common = previous
        .iter()
        .zip(next)
        .take_while(|(a, b)| a == b)
        .count();
    next[..(common + 1).min(next.len())].to_vec()
}

impl Reconciler {
    /// The first message of the side that starts: one fingerprint of everything.
    pub fn initiate<S: ItemSource>(
        &self,
        source: &mut S,
    ) -> Result<Message, ReconcileError<S::Error>> {
        let mut reply = Vec::new();
        self.describe(source, &[], &Bound::End, &mut reply)?;
        Ok(Message { ranges: reply })
    }

    /// Answers the peer's message: compares each range with this side's items, adds
    /// every difference found to `differences`, and returns the reply, or `None` when
    /// nothing is left to say (reconciliation is complete on both sides).
    pub fn respond<S: ItemSource>(
        &self,
        source: &mut S,
        message: &Message,
        differences: &mut Vec<Difference>,
    ) -> Result<Option<Message>, ReconcileError<S::Error>> {
        self.check(message)?;
        let mut reply: Vec<Range> = Vec::new();
        let mut lower: Vec<u8> = Vec::new();
        for range in &message.ranges {
            match &range.mode {
                RangeMode::Skip => push(&mut reply, range.upper.clone(), RangeMode::Skip),
                RangeMode::Fingerprint(theirs) => {
                    let Summary {
                        summary: mine,
                        items: small,
                    } = self.summarize(source, &lower, &range.upper)?;
                    if mine.fingerprint() == *theirs {
                        push(&mut reply, range.upper.clone(), RangeMode::Skip);
                    } else if let Some(items) = small {
                        push(&mut reply, range.upper.clone(), RangeMode::Items(items));
                    } else {
                        self.split(source, &lower, &range.upper, mine.count, &mut reply)?;
                    }
                }
                RangeMode::Items(theirs) => {
                    // Many more items here than the peer listed: answering with every
                    // extra key could be unbounded, so split and let later rounds
                    // narrow it down.
                    let Summary { summary: mine, .. } =
                        self.summarize(source, &lower, &range.upper)?;
                    if mine.count > (self.items_threshold + theirs.len()) as u64 {
                        self.split(source, &lower, &range.upper, mine.count, &mut reply)?;
                        if let Bound::Below(upper) = &range.upper {
                            lower.clone_from(upper);
                        }
                        continue;
                    }
                    let found = self.compare(source, &lower, &range.upper, theirs)?;
                    let answer = found
                        .iter()
                        .map(|d| (d.key.clone(), d.here))
                        .collect::<Vec<_>>();
                    differences.extend(found);
                    let mode = if answer.is_empty() {
                        RangeMode::Skip
                    } else {
                        RangeMode::Differences(answer)
                    };
                    push(&mut reply, range.upper.clone(), mode);
                }
                RangeMode::Differences(theirs) => {
                    for (key, there) in theirs {
                        let here = self.lookup(source, key)?;
                        differences.push(Difference {
                            key: key.clone(),
                            here,
                            there: *there,
                        });
                    }
                    push(&mut reply, range.upper.clone(), RangeMode::Skip);
                }
            }
            if let Bound::Below(upper) = &range.upper {
                lower.clone_from(upper);
            }
        }
        let done = reply.iter().all(|r| r.mode == RangeMode::Skip);
        Ok((!done).then_some(Message { ranges: reply }))
    }

    /// Refuses a message whose ranges do not cover every key in order, or whose item
    /// lists lie outside their range, repeat a key or exceed the limit.
    fn check<E>(&self, message: &Message) -> Result<(), ReconcileError<E>> {
        let invalid = |what: String| Err(ReconcileError::Invalid(what));
        if message.ranges.last().map(|r| &r.upper) != Some(&Bound::End) {
            return invalid("the last range does not end at the end of the key space".into());
        }
        let mut lower: &[u8] = &[];
        let mut previous: Option<&Bound> = None;
        for (n, range) in message.ranges.iter().enumerate() {
            if previous.is_some_and(|p| *p >= range.upper) {
                return invalid(format!("range {n} does not end after the range before it"));
            }
            // An answer lists at most what was asked about plus what the answering side
            // holds besides, which it keeps below `items_threshold + listed`.
            let (keys, limit): (Vec<&[u8]>, usize) = match &range.mode {
                RangeMode::Items(items) => (
                    items.iter().map(|(k, _)| k.as_slice()).collect(),
                    self.max_items_per_range,
                ),
                RangeMode::Differences(items) => (
                    items.iter().map(|(k, _)| k.as_slice()).collect(),
                    2 * self.max_items_per_range + self.items_threshold,
                ),
                _ => (Vec::new(), 0),
            };
            if keys.len() > limit {
                return invalid(format!(
                    "range {n} lists {} items, more than the limit of {limit}",
                    keys.len(),
                ));
            }
            for pair in keys.windows(2) {
                if pair[0] >= pair[1] {
                    return invalid(format!("range {n} lists keys out of order or twice"));
                }
            }
            if keys.iter().any(|k| *k < lower || !range.upper.above(k)) {
                return invalid(format!("range {n} lists a key outside the range"));
            }
            if let Bound::Below(upper) = &range.upper {
                lower = upper;
            }
            previous = Some(&range.upper);
        }
        Ok(())
    }

    /// This side's description of `[from, to)`: one fingerprint, or the items if few.
    fn describe<S: ItemSource>(
        &self,
        source: &mut S,
        from: &[u8],
        to: &Bound,
        reply: &mut Vec<Range>,
    ) -> Result<(), ReconcileError<S::Error>> {
        let Summary {
            summary,
            items: small,
        } = self.summarize(source, from, to)?;
        let mode = match small {
            Some(items) => RangeMode::Items(items),
            None => RangeMode::Fingerprint(summary.fingerprint()),
        };
        push(reply, to.clone(), mode);
        Ok(())
    }

    /// The range's accumulator, and its items if there are at most `items_threshold`.
    fn summarize<S: ItemSource>(
        &self,
        source: &mut S,
        from: &[u8],
        to: &Bound,
    ) -> Result<Summary, ReconcileError<S::Error>> {
        let mut summary = Accumulator::default();
        let mut items = Some(Vec::new());
        source
            .scan(from, to, &mut |key, hash| {
                summary.add(hash);
                if let Some(list) = &mut items {
                    if list.len() < self.items_threshold {
                        list.push((key.to_vec(), *hash));
                    } else {
                        items = None;
                    }
                }
                true
            })
            .map_err(ReconcileError::Source)?;
        Ok(Summary { summary, items })
    }

    /// Splits `[from, to)`, holding `count` items here, into `branching` parts of
    /// about equal size, each described by its fingerprint.
    fn split<S: ItemSource>(
        &self,
        source: &mut S,
        from: &[u8],
        to: &Bound,
        count: u64,
        reply: &mut Vec<Range>,
    ) -> Result<(), ReconcileError<S::Error>> {
        let per_part = count.div_ceil(self.branching.max(2) as u64).max(1);
        let mut bounds = Vec::new();
        let mut seen = 0u64;
        let mut previous: Vec<u8> = Vec::new();
        source
            .scan(from, to, &mut |key, _| {
                if seen > 0 && seen.is_multiple_of(per_part) {
                    bounds.push(bound_between(&previous, key));
                }
                seen += 1;
                previous.clear();
                previous.extend_from_slice(key);
                true
            })
            .map_err(ReconcileError::Source)?;
        // Fingerprints only, even for small parts: all but one part usually agree, and
        // a fingerprint costs less than listing a part's items. A part that differs
        // is listed in the next round.
        let mut lower = from.to_vec();
        for bound in bounds {
            let upper = Bound::Below(bound);
            let Summary { summary, .. } = self.summarize(source, &lower, &upper)?;
            push(
                reply,
                upper.clone(),
                RangeMode::Fingerprint(summary.fingerprint()),
            );
            if let Bound::Below(bytes) = upper {
                lower = bytes;
            }
        }
        let Summary { summary, .. } = self.summarize(source, &lower, to)?;
        push(
            reply,
            to.clone(),
            RangeMode::Fingerprint(summary.fingerprint()),
        );
        Ok(())
    }

    /// The keys of `[from, to)` where this side and the peer's listed `theirs` differ.
    fn compare<S: ItemSource>(
        &self,
        source: &mut S,
        from: &[u8],
        to: &Bound,
        theirs: &[Item],
    ) -> Result<Vec<Difference>, ReconcileError<S::Error>> {
        let mut found = Vec::new();
        let mut next = 0;
        source
            .scan(from, to, &mut |key, hash| {
                while let Some((their_key, their_hash)) = theirs.get(next) {
                    if their_key.as_slice() >= key {
                        break;
                    }
                    found.push(Difference {
                        key: their_key.clone(),
                        here: None,
                        there: Some(*their_hash),
                    });
                    next += 1;
                }
                match theirs.get(next) {
                    Some((their_key, their_hash)) if their_key.as_slice() == key => {
                        if their_hash != hash {
                            found.push(Difference {
                                key: key.to_vec(),
                                here: Some(*hash),
                                there: Some(*their_hash),
                            });
                        }
                        next += 1;
                    }
                    _ => found.push(Difference {
                        key: key.to_vec(),
                        here: Some(*hash),
                        there: None,
                    }),
                }
                true
            })
            .map_err(ReconcileError::Source)?;
        found.extend(theirs[next..].iter().map(|(key, hash)| Difference {
            key: key.clone(),
            here: None,
            there: Some(*hash),
        }));
        Ok(found)
    }

    /// This side's hash of one key, if it holds it.
    fn lookup<S: ItemSource>(
        &self,
        source: &mut S,
        key: &[u8],
    ) -> Result<Option<ItemHash>, ReconcileError<S::Error>> {
        let mut upper = key.to_vec();
        upper.push(0);
        let mut found = None;
        source
            .scan(key, &Bound::Below(upper), &mut |k, hash| {
                if k == key {
                    found = Some(*hash);
                }
                false
            })
            .map_err(ReconcileError::Source)?;
        Ok(found)
    }
}

/// What a reconciliation between two sources in one process found and cost.
#[derive(Clone, Debug, Default)]
pub struct LocalRun {
    /// Keys held differently, as the first source sees them (`here` is its hash).
    pub differences: Vec<Difference>,
    /// Messages exchanged (each is half a round trip).
    pub messages: usize,
    /// Their size, encoded as they would cross a network (postcard).
    pub bytes: usize,
}

impl Reconciler {
    /// Reconciles `first` with `second` in this process, as two nodes would over a
    /// network, and reports what differs from `first`'s side with the messages and bytes
    /// it took. For tools that can reach both sides (comparing two files).
    pub fn run_local<E, A, B>(
        &self,
        first: &mut A,
        second: &mut B,
    ) -> Result<LocalRun, ReconcileError<E>>
    where
        A: ItemSource<Error = E>,
        B: ItemSource<Error = E>,
    {
        let size = Message::encoded_len;
        let mut run = LocalRun::default();
        let mut from_second = Vec::new();
        let mut message = self.initiate(first)?;
        run.messages = 1;
        run.bytes = size(&message);
        loop {
            let reply = if run.messages % 2 == 1 {
                self.respond(second, &message, &mut from_second)?
            } else {
                self.respond(first, &message, &mut run.differences)?
            };
            match reply {
                None => break,
                Some(reply) => {
                    run.messages += 1;
                    run.bytes += size(&reply);
                    message = reply;
                }
            }
        }
        // A difference the second side found and told the first about is in both lists;
        // one it found last (answering the first's item list) only in its own.
        let known: std::collections::HashSet<Vec<u8>> =
            run.differences.iter().map(|d| d.key.clone()).collect();
        for d in from_second {
            if !known.contains(&d.key) {
                run.differences.push(Difference {
                    key: d.key,
                    here: d.there,
                    there: d.here,
                });
            }
        }
        run.differences.sort_by(|x, y| x.key.cmp(&y.key));
        Ok(run)
    }
}

/// Appends a range, merging it into the previous one when both are skips.
fn push(reply: &mut Vec<Range>, upper: Bound, mode: RangeMode) {
    if mode == RangeMode::Skip
        && let Some(last) = reply.last_mut()
        && last.mode == RangeMode::Skip
    {
        last.upper = upper;
        return;
    }
    reply.push(Range { upper, mode });
}

/// An [`ItemSource`] over items held in memory, sorted by key: for tests, benchmarks,
/// and small sets.
#[derive(Clone, Debug, Default)]
pub struct SortedItems(pub Vec<Item>);

impl ItemSource for SortedItems {
    type Error = std::convert::Infallible;

    fn scan(
        &mut self,
        from: &[u8],
        to: &Bound,
        visit: &mut dyn FnMut(&[u8], &ItemHash) -> bool,
    ) -> Result<(), Self::Error> {
        let start = self.0.partition_point(|(k, _)| k.as_slice() < from);
        for (key, hash) in &self.0[start..] {
            if !to.above(key) || !visit(key, hash) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{ColumnClock, Tombstone};
    use crate::{CausalLength, Hlc, NodeId};

    fn version(ms: u64, node: u8) -> Version {
        Version {
            hlc: Hlc::new(ms, 0),
            origin: NodeId::from_bytes([node; 16]),
        }
    }

    fn column(ms: u64, node: u8) -> Option<ColumnClock> {
        Some(ColumnClock {
            version: version(ms, node),
            replaced: None,
        })
    }

    #[test]
    fn clock_hashes_agree_across_column_orders_and_differ_for_any_other_write() {
        let a = RowClock {
            causal_length: CausalLength(1),
            columns: vec![column(5, 1), column(7, 2), None],
            tombstone: None,
        };
        // Another store declares the columns in another order (or has one more).
        let reordered = RowClock {
            causal_length: CausalLength(1),
            columns: vec![None, column(7, 2), column(5, 1), None],
            tombstone: None,
        };
        assert_eq!(clock_hash(&a), clock_hash(&reordered));
        let newer = RowClock {
            columns: vec![column(5, 1), column(8, 2), None],
            ..a.clone()
        };
        assert_ne!(clock_hash(&a), clock_hash(&newer));
        let other_life = RowClock {
            causal_length: CausalLength(3),
            ..a.clone()
        };
        assert_ne!(clock_hash(&a), clock_hash(&other_life));
        let deleted = |by: u8| RowClock {
            causal_length: CausalLength(2),
            columns: vec![column(5, 1)],
            tombstone: Some(Tombstone {
                version: version(9, by),
                seen: None,
            }),
        };
        assert_ne!(clock_hash(&deleted(1)), clock_hash(&deleted(2)));
        // A deleted row's leftover column clocks do not matter, only its delete.
        let mut bare = deleted(1);
        bare.columns.clear();
        assert_eq!(clock_hash(&deleted(1)), clock_hash(&bare));
    }

    fn item(n: u32, version: u8) -> (Vec<u8>, ItemHash) {
        let key = n.to_be_bytes().to_vec();
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&n.to_le_bytes());
        hash[31] = version;
        (key, hash)
    }

    /// Runs a whole reconciliation; returns what each side found and the messages sent.
    fn run(a: &mut SortedItems, b: &mut SortedItems) -> (Vec<Difference>, Vec<Difference>, usize) {
        let r = Reconciler::default();
        let (mut found_a, mut found_b) = (Vec::new(), Vec::new());
        let mut message = r.initiate(a).unwrap();
        let mut sent = 1;
        loop {
            match r.respond(b, &message, &mut found_b).unwrap() {
                None => break,
                Some(reply) => message = reply,
            }
            sent += 1;
            match r.respond(a, &message, &mut found_a).unwrap() {
                None => break,
                Some(reply) => message = reply,
            }
            sent += 1;
            assert!(sent < 100, "does not terminate");
        }
        (found_a, found_b, sent)
    }

    /// The keys found, each found once.
    fn keys(found: &[Difference]) -> Vec<Vec<u8>> {
        let mut keys: Vec<_> = found.iter().map(|d| d.key.clone()).collect();
        keys.sort();
        let all = keys.len();
        keys.dedup();
        assert_eq!(all, keys.len(), "a key reported twice");
        keys
    }

    #[test]
    fn equal_sets_agree_in_one_message() {
        let items: Vec<_> = (0..10_000).map(|n| item(n, 0)).collect();
        let (a, b, sent) = run(&mut SortedItems(items.clone()), &mut SortedItems(items));
        assert!(a.is_empty() && b.is_empty());
        assert_eq!(sent, 1);
    }

    #[test]
    fn both_sides_learn_every_difference_of_each_kind() {
        let mut a: Vec<_> = (0..50_000).map(|n| item(n, 0)).collect();
        let mut b = a.clone();
        b[100] = item(100, 1); // changed on b
        b.remove(20_000); // missing on b
        a.remove(40_000); // missing on a
        let (found_a, found_b, _) = run(&mut SortedItems(a), &mut SortedItems(b));
        let expected: Vec<Vec<u8>> = [100u32, 20_000, 40_000]
            .iter()
            .map(|n| n.to_be_bytes().to_vec())
            .collect();
        assert_eq!(keys(&found_a), expected);
        assert_eq!(keys(&found_b), expected);
        let missing_on_b = found_b
            .iter()
            .find(|d| d.key == 20_000u32.to_be_bytes())
            .unwrap();
        assert_eq!(
            (missing_on_b.here, missing_on_b.there.is_some()),
            (None, true)
        );
    }

    #[test]
    fn an_empty_side_learns_every_row_of_the_other() {
        let items: Vec<_> = (0..1_000).map(|n| item(n, 0)).collect();
        let (found_a, _, _) = run(&mut SortedItems(Vec::new()), &mut SortedItems(items));
        assert_eq!(keys(&found_a).len(), 1_000);
    }

    #[test]
    fn a_message_whose_ranges_lie_is_refused_by_name() {
        let r = Reconciler::default();
        let mut side = SortedItems((0..10).map(|n| item(n, 0)).collect());
        let bad = [
            (Message::default(), "last range"),
            (
                Message {
                    ranges: vec![
                        Range {
                            upper: Bound::Below(vec![5]),
                            mode: RangeMode::Skip,
                        },
                        Range {
                            upper: Bound::Below(vec![3]),
                            mode: RangeMode::Skip,
                        },
                        Range {
                            upper: Bound::End,
                            mode: RangeMode::Skip,
                        },
                    ],
                },
                "does not end after",
            ),
            (
                Message {
                    ranges: vec![
                        Range {
                            upper: Bound::Below(vec![0, 0, 0, 5]),
                            mode: RangeMode::Skip,
                        },
                        Range {
                            upper: Bound::End,
                            mode: RangeMode::Items(vec![item(1, 0)]),
                        },
                    ],
                },
                "outside the range",
            ),
            (
                Message {
                    ranges: vec![Range {
                        upper: Bound::End,
                        mode: RangeMode::Items(vec![item(2, 0), item(1, 0)]),
                    }],
                },
                "out of order",
            ),
        ];
        for (message, says) in bad {
            let err = r.respond(&mut side, &message, &mut Vec::new()).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn both_sides_find_exactly_the_rows_that_differ(
            common in proptest::collection::btree_set(0u32..5_000, 0..3_000),
            only_a in proptest::collection::btree_set(5_000u32..6_000, 0..40),
            only_b in proptest::collection::btree_set(6_000u32..7_000, 0..40),
            changed in proptest::collection::btree_set(0u32..5_000, 0..40),
        ) {
            let side = |extra: &std::collections::BTreeSet<u32>, version: u8| {
                let mut items: Vec<_> = common
                    .iter()
                    .chain(extra)
                    .map(|&n| item(n, if changed.contains(&n) { version } else { 0 }))
                    .collect();
                items.sort();
                SortedItems(items)
            };
            let (found_a, found_b, _) = run(&mut side(&only_a, 1), &mut side(&only_b, 2));
            let mut expected: Vec<Vec<u8>> = only_a
                .iter()
                .chain(&only_b)
                .chain(changed.intersection(&common))
                .map(|n| n.to_be_bytes().to_vec())
                .collect();
            expected.sort();
            proptest::prop_assert_eq!(&keys(&found_a), &expected);
            proptest::prop_assert_eq!(&keys(&found_b), &expected);
        }
    }

    #[test]
    fn split_bounds_are_short_and_between_their_neighbours() {
        assert_eq!(bound_between(b"apple", b"banana"), b"b");
        assert_eq!(bound_between(b"abc", b"abd"), b"abd");
        assert_eq!(bound_between(b"ab", b"abc"), b"abc");
        assert_eq!(bound_between(b"", b"a"), b"a");
    }
}
