//! The checks of an incoming change that do not depend on the database.
//!
//! Every store refuses the same malformed changes with the same errors before it
//! touches its database: a key that does not decode or has the wrong number of
//! components, an impossible causal length, a delete carrying values, a column the
//! table does not have or one written twice. Whether a value fits its column is the
//! store's own check, done on what this returns.

use concord_core::merge::IncomingColumn;
use concord_core::{Change, Hlc, Value};

use crate::RowError;

/// The parts of a change a store writes, once they passed the common checks.
#[derive(Debug)]
pub struct CheckedChange {
    /// The key's components, as many as the table's primary key has.
    pub key_values: Vec<Value>,
    /// The written columns by table position, in the change's order. For a delete: the
    /// seen columns this table has (so not always one per column of the change).
    pub incoming: Vec<IncomingColumn>,
}

/// The newest timestamp a change carries (its own, or one of its columns'): what the
/// clock bound is checked against.
pub fn newest_hlc(change: &Change) -> Hlc {
    change
        .columns
        .iter()
        .map(|c| c.version.hlc)
        .chain([change.hlc])
        .max()
        .unwrap_or(change.hlc)
}

/// Checks `change` against a table whose primary key has `key_columns` columns and
/// whose columns are found by `position` (by name).
pub fn check_change(
    change: &Change,
    key_columns: usize,
    position: impl Fn(&str) -> Option<usize>,
) -> Result<CheckedChange, RowError> {
    let key_values = change.key.decode()?;
    if key_values.len() != key_columns {
        return Err(RowError::KeyArity {
            expected: key_columns,
            found: key_values.len(),
        });
    }
    if change.causal_length.0 == 0 {
        return Err(RowError::Invalid(
            "causal length 0 (a row that never existed)".into(),
        ));
    }
    // An insert or update may carry no columns: a link's schema mapping drops the
    // columns the destination does not keep, and the change must still be applied (and
    // logged) so the origin's sequence stays contiguous.
    // A delete lists the column clocks its writer held, with no values. A column this
    // table does not have cannot hold an update the delete missed: it is left out.
    if change.is_delete() && change.columns.iter().any(|c| c.value != Value::Null) {
        return Err(RowError::Invalid("a delete carries column values".into()));
    }
    let mut incoming: Vec<IncomingColumn> = Vec::with_capacity(change.columns.len());
    for c in &change.columns {
        let index = match position(&c.column) {
            Some(index) => index,
            None if change.is_delete() => continue,
            None => return Err(RowError::UnknownColumn(c.column.clone())),
        };
        if incoming.iter().any(|i| i.index == index) {
            return Err(RowError::Invalid(format!(
                "column {:?} is written twice",
                c.column
            )));
        }
        incoming.push(IncomingColumn {
            index,
            version: c.version,
            replaced: c.replaced,
        });
    }
    Ok(CheckedChange {
        key_values,
        incoming,
    })
}
