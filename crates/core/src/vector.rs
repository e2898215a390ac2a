//! Version vectors.
//!
//! Every origin numbers its changes 1, 2, 3, … A replica applies each origin's changes
//! in that order, so what it holds from an origin is summed up by one number: the
//! highest sequence number applied. The vector of those numbers says exactly which
//! changes a replica lacks, and comparing two vectors says what to send.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Origin → highest sequence number held contiguously from 1.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

/// What a change with a given sequence number means for a replica.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Advance {
    /// The next one expected: apply it.
    Next,
    /// Already held: skip it (duplicates are harmless).
    Duplicate,
}

/// A change arrived before one it follows: applying it would leave a hole.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("sequence gap from origin {origin}: holding up to {held}, received {received}")]
pub struct SequenceGap {
    /// The origin.
    pub origin: NodeId,
    /// The highest sequence held.
    pub held: u64,
    /// The sequence received.
    pub received: u64,
}

impl VersionVector {
    /// An empty vector: nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest sequence held from `origin` (0 if none).
    pub fn get(&self, origin: &NodeId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Sets the highest sequence held from `origin`.
    pub fn set(&mut self, origin: NodeId, seq: u64) {
        self.0.insert(origin, seq);
    }

    /// Whether the change `(origin, seq)` is held.
    pub fn contains(&self, origin: &NodeId, seq: u64) -> bool {
        seq <= self.get(origin)
    }

    /// Classifies a received `(origin, seq)` without changing the vector.
    pub fn classify(&self, origin: &NodeId, seq: u64) -> Result<Advance, SequenceGap> {
        let held = self.get(origin);
        if seq <= held {
            Ok(Advance::Duplicate)
        } else if seq == held + 1 {
            Ok(Advance::Next)
        } else {
            Err(SequenceGap {
                origin: *origin,
                held,
                received: seq,
            })
        }
    }

    /// Records `(origin, seq)` as applied if it is the next one expected.
    pub fn advance(&mut self, origin: NodeId, seq: u64) -> Result<Advance, SequenceGap> {
        let advance = self.classify(&origin, seq)?;
        if advance == Advance::Next {
            self.0.insert(origin, seq);
        }
        Ok(advance)
    }

    /// Pointwise maximum: what a replica holding both would hold.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, &seq) in &other.0 {
            let entry = self.0.entry(*origin).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    /// Whether this vector holds everything `other` holds.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(origin, &seq)| self.get(origin) >= seq)
    }

    /// How many changes `other` lacks that this vector holds.
    pub fn count_missing_in(&self, other: &VersionVector) -> u64 {
        self.0
            .iter()
            .map(|(origin, &seq)| seq.saturating_sub(other.get(origin)))
            .sum()
    }

    /// Iterates over `(origin, highest sequence)`.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &u64)> {
        self.0.iter()
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no origin is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes([b; 16])
    }

    #[test]
    fn next_sequence_advances_and_duplicates_do_not() {
        let mut vv = VersionVector::new();
        assert_eq!(vv.advance(node(1), 1), Ok(Advance::Next));
        assert_eq!(vv.advance(node(1), 1), Ok(Advance::Duplicate));
        assert_eq!(vv.advance(node(1), 2), Ok(Advance::Next));
        assert_eq!(vv.get(&node(1)), 2);
    }

    #[test]
    fn a_gap_is_refused_and_leaves_the_vector_unchanged() {
        let mut vv = VersionVector::new();
        vv.advance(node(1), 1).unwrap();
        let gap = vv.advance(node(1), 3).unwrap_err();
        assert_eq!(
            gap,
            SequenceGap {
                origin: node(1),
                held: 1,
                received: 3
            }
        );
        assert_eq!(vv.get(&node(1)), 1);
    }

    #[test]
    fn join_dominates_both_and_counts_what_is_missing() {
        let mut a = VersionVector::new();
        a.set(node(1), 5);
        a.set(node(2), 1);
        let mut b = VersionVector::new();
        b.set(node(1), 2);
        b.set(node(3), 4);
        assert_eq!(a.count_missing_in(&b), 3 + 1);
        let mut joined = a.clone();
        joined.join(&b);
        assert!(joined.dominates(&a) && joined.dominates(&b));
        assert!(!a.dominates(&b));
        assert_eq!(joined.count_missing_in(&a), 4);
    }
}
