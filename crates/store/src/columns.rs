//! How a tracked table's columns may change under a running node, decided once for
//! every store.
//!
//! Stored clocks and log bodies name columns by position, so the positions a table was
//! tracked with must keep meaning the same columns. Columns added after the last one
//! keep every position: the store appends them to its column list and rebuilds its
//! capture, and replicas that lack them set aside the changes naming them until they
//! add them too. Anything else (a column dropped, renamed, retyped, or added before
//! existing ones) would move or reuse a position; the store refuses it for that table,
//! naming what changed, and every other table keeps syncing.

/// A column as a store records it: its name and its declared type.
pub type ColumnSignature = (String, String);

/// What happened to a table's columns since the store recorded them.
#[derive(Debug, PartialEq, Eq)]
pub enum ColumnChange {
    /// Nothing.
    Same,
    /// New columns after the recorded ones: these, in table order.
    Appended(Vec<ColumnSignature>),
    /// A change that would move or reuse a position, in words.
    Incompatible(String),
}

/// Compares the recorded columns with the table's current ones (both in table order).
pub fn compare_columns(recorded: &[ColumnSignature], current: &[ColumnSignature]) -> ColumnChange {
    for (i, (name, declared)) in recorded.iter().enumerate() {
        match current.get(i) {
            Some((n, d)) if n == name && d == declared => {}
            Some((n, d)) if n == name => {
                return ColumnChange::Incompatible(format!(
                    "column {name:?} changed type from {declared} to {d}"
                ));
            }
            _ => {
                let now = current.iter().position(|(n, _)| n == name);
                return ColumnChange::Incompatible(match now {
                    None => format!("column {name:?} was dropped or renamed"),
                    Some(_) => format!(
                        "a column was added before {name:?} (add new columns after the last one)"
                    ),
                });
            }
        }
    }
    match current.get(recorded.len()..) {
        Some(added) if !added.is_empty() => ColumnChange::Appended(added.to_vec()),
        _ => ColumnChange::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(list: &[(&str, &str)]) -> Vec<ColumnSignature> {
        list.iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn only_columns_after_the_last_keep_every_position() {
        let old = cols(&[("id", "int"), ("v", "text")]);
        assert_eq!(compare_columns(&old, &old), ColumnChange::Same);
        assert_eq!(
            compare_columns(&old, &cols(&[("id", "int"), ("v", "text"), ("p", "text")])),
            ColumnChange::Appended(cols(&[("p", "text")]))
        );
        for (current, says) in [
            (cols(&[("id", "int")]), "\"v\" was dropped or renamed"),
            (
                cols(&[("id", "int"), ("w", "text")]),
                "\"v\" was dropped or renamed",
            ),
            (
                cols(&[("id", "int"), ("v", "blob")]),
                "changed type from text to blob",
            ),
            (
                cols(&[("id", "int"), ("p", "text"), ("v", "text")]),
                "added before \"v\"",
            ),
        ] {
            match compare_columns(&old, &current) {
                ColumnChange::Incompatible(why) => assert!(why.contains(says), "{why}"),
                other => panic!("{current:?}: {other:?}"),
            }
        }
    }
}
