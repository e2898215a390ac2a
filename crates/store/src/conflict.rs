//! What a store records for a conflict the merge reported.
//!
//! The merge says which writes met; every store records the pair the same way (kind,
//! versions, the incoming value, which one was kept) and only reads the local value
//! from its own table.

use concord_core::merge::{Conflict, IncomingColumn};
use concord_core::{Change, Value, Version};

/// One conflict, as recorded, apart from the local value a store reads itself.
#[derive(Debug)]
pub struct ConflictEntry {
    /// `column` or `update-vs-delete`.
    pub kind: &'static str,
    /// For a column conflict: the column's position in the table.
    pub column: Option<usize>,
    /// The version held locally when the pair met.
    pub local_version: Version,
    /// The incoming value (NULL for an update lost to a delete).
    pub remote_value: Value,
    /// Its version.
    pub remote_version: Version,
    /// `local` or `remote`: which one the merge rules kept.
    pub winner: &'static str,
}

impl ConflictEntry {
    /// The entry for `conflict`, met while applying `change` whose columns sit at the
    /// table positions of `incoming`.
    pub fn of(change: &Change, incoming: &[IncomingColumn], conflict: &Conflict) -> Self {
        match *conflict {
            Conflict::Column {
                incoming: pos,
                local,
                incoming_won,
            } => ConflictEntry {
                kind: "column",
                column: Some(incoming[pos].index),
                local_version: local.version,
                remote_value: change.columns[pos].value.clone(),
                remote_version: change.columns[pos].version,
                winner: if incoming_won { "remote" } else { "local" },
            },
            Conflict::UpdateLostToDelete {
                delete,
                update,
                delete_incoming,
            } => {
                let (local, remote, winner) = if delete_incoming {
                    (update, delete, "remote")
                } else {
                    (delete, update, "local")
                };
                ConflictEntry {
                    kind: "update-vs-delete",
                    column: None,
                    local_version: local,
                    remote_value: Value::Null,
                    remote_version: remote,
                    winner,
                }
            }
        }
    }
}

/// Whether a concurrent pair is worth recording as a conflict once the local value is
/// known: two concurrent writes of one column that wrote the same value lost nothing
/// (two nodes inserting the same row, a client rewriting a value it read), and
/// recording them only buries the conflicts that matter. Every other pair is recorded.
pub fn is_real_conflict(kind: &str, local_value: &Value, remote_value: &Value) -> bool {
    kind != "column" || local_value != remote_value
}
