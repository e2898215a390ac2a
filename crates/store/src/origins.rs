//! The origin map: which node each stored origin index stands for, and what this
//! replica holds from each origin.
//!
//! Stored clocks and log bodies name origins by a small integer, allocated by the store
//! the first time it meets a node (`origins.id`). Every store keeps the same map in
//! memory, loaded at open and extended as nodes appear, and converts between
//! [`RowClock`]s and their [`StoredClock`] form through it. Allocation itself writes to
//! the database, so the functions that may meet a new node take the store's allocator
//! as a closure.

use std::collections::HashMap;

use concord_core::merge::{ColumnClock, LocalWrite, RowClock, Tombstone};
use concord_core::{CausalLength, Hlc, NodeId, Value, Version, VersionVector};

use crate::format::{self, LogBody, LogColumn, StoredClock, StoredColumnClock, StoredVersion};

/// Origin indexes and what is held from each origin.
#[derive(Default, Debug, Clone)]
pub struct Origins {
    index_of: HashMap<NodeId, u32>,
    node_of: HashMap<u32, NodeId>,
    /// The sequence held from each origin: this replica's version vector.
    pub held: VersionVector,
    /// The origin most recently looked up: most lookups in a batch are of one origin.
    last: Option<(NodeId, u32)>,
}

impl Origins {
    /// Records that `index` stands for `node`, holding `seq` of its changes (0: none).
    pub fn insert(&mut self, index: u32, node: NodeId, seq: u64) {
        self.index_of.insert(node, index);
        self.node_of.insert(index, node);
        if seq > 0 {
            self.held.set(node, seq);
        }
    }

    /// The index of `node`, if it has one.
    pub fn index(&mut self, node: NodeId) -> Option<u32> {
        if let Some((last, index)) = self.last
            && last == node
        {
            return Some(index);
        }
        let index = *self.index_of.get(&node)?;
        self.last = Some((node, index));
        Some(index)
    }

    /// The node `index` stands for.
    pub fn node(&self, index: u32) -> Option<NodeId> {
        self.node_of.get(&index).copied()
    }

    /// The sequence held from the origin with index `index` (0 for an unknown index).
    pub fn held_by_index(&self, index: u32) -> u64 {
        self.node(index).map_or(0, |node| self.held.get(&node))
    }

    /// The version a stored version stands for.
    pub fn version(&self, v: StoredVersion) -> Result<Version, String> {
        let origin = self
            .node(v.1)
            .ok_or_else(|| format!("unknown origin index {}", v.1))?;
        Ok(Version {
            hlc: Hlc::from_u64(v.0),
            origin,
        })
    }

    /// A row clock from its stored causal length and clock bytes.
    pub fn decode_clock(&self, causal_length: i64, bytes: &[u8]) -> Result<RowClock, String> {
        let stored: StoredClock = format::decode(bytes)?;
        let conv = |v: StoredVersion| self.version(v);
        let mut columns = Vec::with_capacity(stored.columns.len());
        for c in stored.columns {
            columns.push(match c {
                None => None,
                Some(c) => Some(ColumnClock {
                    version: conv(c.version)?,
                    replaced: c.replaced.map(conv).transpose()?,
                }),
            });
        }
        let tombstone = match stored.tombstone {
            None => None,
            Some((v, seen)) => Some(Tombstone {
                version: conv(v)?,
                seen: seen.map(conv).transpose()?,
            }),
        };
        if causal_length < 0 {
            return Err(format!("negative causal length {causal_length}"));
        }
        Ok(RowClock {
            causal_length: CausalLength(causal_length as u64),
            columns,
            tombstone,
        })
    }
}

/// `v` with its origin as an index, allocated through `index_of` if new.
pub fn stored_version<E>(
    v: Version,
    index_of: &mut impl FnMut(NodeId) -> Result<u32, E>,
) -> Result<StoredVersion, E> {
    Ok(StoredVersion(v.hlc.as_u64(), index_of(v.origin)?))
}

/// The log body of a local write made at `version`: each written column with its value
/// (`take_value(position)`, called once per column, so a store can move a large value
/// in instead of copying it), and for a delete the clock of every column it had seen
/// (values `Null`) and the newest of them.
pub fn local_log_body<E>(
    write: &LocalWrite,
    version: Version,
    mut take_value: impl FnMut(usize) -> Value,
    index_of: &mut impl FnMut(NodeId) -> Result<u32, E>,
) -> Result<LogBody, E> {
    let written = stored_version(version, index_of)?;
    let mut columns = Vec::with_capacity(write.columns.len() + write.seen.len());
    for &(index, replaced) in &write.columns {
        columns.push(LogColumn {
            index: index as u32,
            value: take_value(index),
            version: written,
            replaced: replaced.map(|v| stored_version(v, index_of)).transpose()?,
        });
    }
    for (index, seen) in &write.seen {
        columns.push(LogColumn {
            index: *index as u32,
            value: Value::Null,
            version: stored_version(seen.version, index_of)?,
            replaced: seen
                .replaced
                .map(|v| stored_version(v, index_of))
                .transpose()?,
        });
    }
    Ok(LogBody {
        columns,
        delete_seen: write
            .delete_seen
            .map(|v| stored_version(v, index_of))
            .transpose()?,
    })
}

/// The stored bytes of `clock`, allocating indexes for new origins through `index_of`.
pub fn encode_clock<E>(
    clock: &RowClock,
    mut index_of: impl FnMut(NodeId) -> Result<u32, E>,
) -> Result<Vec<u8>, E> {
    let mut stored = StoredClock {
        columns: Vec::with_capacity(clock.columns.len()),
        tombstone: None,
    };
    for c in &clock.columns {
        stored.columns.push(match c {
            None => None,
            Some(c) => Some(StoredColumnClock {
                version: stored_version(c.version, &mut index_of)?,
                replaced: c
                    .replaced
                    .map(|v| stored_version(v, &mut index_of))
                    .transpose()?,
            }),
        });
    }
    if let Some(t) = clock.tombstone {
        stored.tombstone = Some((
            stored_version(t.version, &mut index_of)?,
            t.seen
                .map(|v| stored_version(v, &mut index_of))
                .transpose()?,
        ));
    }
    Ok(format::encode(&stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; 16])
    }

    #[test]
    fn a_clock_reads_back_as_written_through_the_origin_map() {
        let mut origins = Origins::default();
        origins.insert(1, node(1), 4);
        let mut next = 2;
        let clock = RowClock {
            causal_length: CausalLength(3),
            columns: vec![
                None,
                Some(ColumnClock {
                    version: Version {
                        hlc: Hlc::from_u64(10),
                        origin: node(2),
                    },
                    replaced: Some(Version {
                        hlc: Hlc::from_u64(5),
                        origin: node(1),
                    }),
                }),
            ],
            tombstone: None,
        };
        let bytes = encode_clock(&clock, |n| -> Result<u32, ()> {
            Ok(match origins.index(n) {
                Some(i) => i,
                None => {
                    origins.insert(next, n, 0);
                    next += 1;
                    next - 1
                }
            })
        })
        .expect("encodes");
        assert_eq!(origins.index(node(2)), Some(2));
        assert_eq!(origins.decode_clock(3, &bytes), Ok(clock));
        assert_eq!(origins.held_by_index(1), 4);
        assert_eq!(origins.held_by_index(9), 0);
    }

    #[test]
    fn a_clock_naming_an_unknown_origin_is_an_error_naming_the_index() {
        let origins = Origins::default();
        let bytes = format::encode(&StoredClock {
            columns: vec![Some(StoredColumnClock {
                version: StoredVersion(1, 7),
                replaced: None,
            })],
            tombstone: None,
        });
        let err = origins.decode_clock(1, &bytes).unwrap_err();
        assert!(err.contains("unknown origin index 7"), "{err}");
        assert!(
            origins
                .decode_clock(-1, &format::encode(&StoredClock::default()))
                .is_err()
        );
    }
}
