//! Additive schema changes arriving over a link with `propagate_schema = true`.
//!
//! Before a batch from such a peer is applied, the columns its changes name and this
//! node's tables lack are added through the store ([`concord_store::add_missing_columns`]:
//! the node decides *that* a column is added, the store holds the DDL), so the changes
//! apply at once instead of waiting, set aside, for a person to add the column on every
//! node. Only a column at the end of a tracked table travels; a table this node does not
//! track is not created (the changes do not describe it fully), and its changes are set
//! aside as on any link; a name that may be a rename at the peer is not added
//! (`concord_store::missing_columns` says how it tells). What cannot be added is logged and the batch goes on to the
//! usual set-aside policy, so nothing is lost either way.

use concord_core::Change;
use concord_store::{Prepare, Store};

use crate::shared::Peer;

/// Adds to `store` the columns `changes` (mapped into this node's names by `prepare`,
/// when the link has a mapping) prove added and its tables lack. Never fails: a change
/// that still cannot be applied is set aside by the caller with its reason; what was
/// not added, and why, is logged and shown in the peer's status.
pub(crate) fn add_columns(
    store: &mut dyn Store,
    peer: &Peer,
    changes: &[Change],
    prepare: Option<Prepare<'_>>,
) {
    let name = peer.config.name.as_str();
    let mapped;
    let changes = match prepare {
        None => changes,
        Some(prepare) => match prepare(changes) {
            Ok(c) => {
                mapped = c;
                &mapped[..]
            }
            // Set aside by the caller, with the mapping's reason.
            Err(_) => return,
        },
    };
    let missing = concord_store::missing_columns(store, changes);
    for table in &missing.unknown_tables {
        tracing::warn!(peer = name, table = %table, "propagate_schema adds columns, never tables: changes for a table not tracked here are set aside until it is created and tracked");
        peer.schema_not_added(format!(
            "table {table} is not tracked here; propagate_schema adds columns, never tables: \
             create and track it, and its changes set aside apply"
        ));
    }
    for new in &missing.unproven {
        tracing::warn!(peer = name, table = %new.table, column = %new.column, "not adding a column until the peer sends a whole row naming it with every column this table has (it may be a rename there); its changes are set aside meanwhile");
        peer.schema_not_added(format!(
            "column {} of table {} not added yet: no row from this peer names it with every \
             column the table has here (it may be a rename there); its changes wait, set aside",
            new.column, new.table
        ));
    }
    for new in &missing.columns {
        let kind = new.kind.map_or("NULL only", |k| k.name());
        match store.add_column(&new.table, &new.column, new.kind) {
            Ok(()) => {
                tracing::info!(peer = name, table = %new.table, column = %new.column, values = kind, "added a column the peer's changes name (propagate_schema)")
            }
            Err(e) => {
                let why = crate::words::chain(&e);
                tracing::warn!(peer = name, table = %new.table, column = %new.column, error = %why, "could not add a column the peer's changes name; its changes are set aside");
                peer.schema_not_added(format!(
                    "column {} of table {} could not be added: {why}",
                    new.column, new.table
                ));
            }
        }
    }
}
