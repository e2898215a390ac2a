//! Changes: the unit Concord captures, ships, logs and merges.

use serde::{Deserialize, Serialize};

use crate::{Hlc, NodeId, PrimaryKey, Value};

/// The version of one column write: when and where it was made. Versions are totally
/// ordered by `(hlc, origin)`; the larger one wins a last-writer-wins comparison, and
/// the origin breaks ties between equal timestamps deterministically.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Version {
    /// When the write was made.
    pub hlc: Hlc,
    /// The node that made it.
    pub origin: NodeId,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.hlc, self.origin.short())
    }
}

/// How many times a row has been created or deleted: odd means the row exists, even
/// means it is deleted, 0 means it was never seen. A delete moves an odd length to the
/// next even one and a re-insert moves an even length to the next odd one, so the larger
/// causal length always reflects the later life of the row.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct CausalLength(pub u64);

impl CausalLength {
    /// Never seen.
    pub const ABSENT: CausalLength = CausalLength(0);

    /// Whether the row exists at this causal length.
    pub fn is_alive(self) -> bool {
        self.0 % 2 == 1
    }

    /// The length after a local insert: unchanged if alive, the next odd one otherwise.
    pub fn after_insert(self) -> CausalLength {
        if self.is_alive() {
            self
        } else {
            CausalLength(self.0 + 1)
        }
    }

    /// The length after a local delete: the next even one if alive, unchanged if already
    /// deleted, and 2 for a row never seen (a tombstone as if inserted, then deleted).
    pub fn after_delete(self) -> CausalLength {
        match self.0 {
            0 => CausalLength(2),
            n if n % 2 == 1 => CausalLength(n + 1),
            _ => self,
        }
    }
}

/// One column written by a change.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ColumnChange {
    /// Column name at the origin.
    pub column: String,
    /// The value written.
    pub value: Value,
    /// The version of this write.
    pub version: Version,
    /// The version this write replaced at its origin, if the column had one in the
    /// row's current life. A receiver whose current version differs has seen a write
    /// the origin had not: the two are concurrent.
    pub replaced: Option<Version>,
}

/// One row write, as captured at its origin and relayed unchanged by every node.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Change {
    /// The node where the write was made.
    pub origin: NodeId,
    /// Position in the origin's sequence of changes, from 1, without gaps.
    pub seq: u64,
    /// When the change was captured at its origin.
    pub hlc: Hlc,
    /// Table name at the origin.
    pub table: String,
    /// The row's encoded primary key.
    pub key: PrimaryKey,
    /// The row's causal length after the write: odd for an insert or update, even for
    /// a delete.
    pub causal_length: CausalLength,
    /// Columns written. For a delete: the column clocks the deleting node held for the
    /// row (`version` and `replaced` of each column's winning write, `value` always
    /// [`Value::Null`]); a write of a column newer than the version listed for it (or
    /// of a column not listed) was concurrent with the delete, which wins, and the pair
    /// is recorded as a conflict so the lost update does not vanish silently. A delete
    /// from a Concord older than protocol version 5 lists none.
    pub columns: Vec<ColumnChange>,
    /// For a delete: the newest column version the deleting node held for the row, all
    /// that is judged by when `columns` is empty.
    pub delete_seen: Option<Version>,
    /// Whether this is the last change of its source transaction. A receiver applies
    /// all changes of one transaction in one local transaction, never part of them.
    pub last_in_txn: bool,
}

impl Change {
    /// Whether the change deletes the row.
    pub fn is_delete(&self) -> bool {
        !self.causal_length.is_alive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_length_alternates_between_alive_and_deleted() {
        let cl = CausalLength::ABSENT;
        assert!(!cl.is_alive());
        let inserted = cl.after_insert();
        assert_eq!(inserted, CausalLength(1));
        assert_eq!(
            inserted.after_insert(),
            inserted,
            "insert of a live row keeps it"
        );
        let deleted = inserted.after_delete();
        assert_eq!(deleted, CausalLength(2));
        assert_eq!(
            deleted.after_delete(),
            deleted,
            "delete of a dead row keeps it"
        );
        assert_eq!(deleted.after_insert(), CausalLength(3));
    }

    #[test]
    fn versions_order_by_time_then_origin() {
        let a = NodeId::from_bytes([1; 16]);
        let b = NodeId::from_bytes([2; 16]);
        let early_b = Version {
            hlc: Hlc::new(1, 0),
            origin: b,
        };
        let late_a = Version {
            hlc: Hlc::new(2, 0),
            origin: a,
        };
        let late_b = Version {
            hlc: Hlc::new(2, 0),
            origin: b,
        };
        assert!(early_b < late_a);
        assert!(late_a < late_b);
    }
}
