//! Additive schema changes that travel (`propagate_schema = true` on a link).
//!
//! A change naming a column the receiving table lacks would be set aside until a person
//! adds the column (`docs/schema-changes.md`). On a link that opts in, the receiving
//! node adds it first, so nothing is set aside: this module finds, once for every
//! store, which columns the changes about to be applied name and the tables lack, and
//! which kind of value each carries; [`crate::Store::add_column`] turns the kind into
//! the database's own column type and runs the DDL in its dialect.
//!
//! Only what a change proves is added: a column, at the end, nullable, typed from the
//! values it carries. A table is never created (a change carries neither its full
//! primary-key definition nor its constraints; see `docs/schema-changes.md`), and
//! nothing is ever dropped or renamed.
//!
//! A name the table lacks is not proof of an added column: after a rename on the
//! origin (SQLite follows one), its changes name the new name too, and adding it would
//! leave the receiving table with both. So a column is added only when one change of
//! the batch writes a whole row naming **every** column the receiving table has as well
//! as the new one (an insert does): the origin's table then has all of ours, and the
//! new name is an addition. Changes naming it before such a row arrives (updates alone)
//! are set aside as usual and applied once the column is added.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use concord_core::Change;
use concord_core::mapping::Kind;

use crate::{Store, StoreError};

/// A column the changes name and the receiving table lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewColumn {
    /// The table, as this store names it.
    pub table: String,
    /// The column's name.
    pub column: String,
    /// The kind of every non-NULL value the changes carry for it; `None` when they
    /// carry only NULLs, or values of different kinds (the store's text type then).
    pub kind: Option<Kind>,
}

/// What the changes name that this store lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MissingColumns {
    /// Columns of tracked tables to add, in the order the changes first name them.
    pub columns: Vec<NewColumn>,
    /// Columns named but not proven added: no change of the batch wrote a whole row of
    /// the table naming every column it has here (the name may be a rename at the
    /// origin). Their changes are set aside as usual.
    pub unproven: Vec<NewColumn>,
    /// Tables not tracked here (their changes are set aside as before).
    pub unknown_tables: BTreeSet<String>,
}

/// The kinds seen for one missing column.
enum Seen {
    Nothing,
    One(Kind),
    Mixed,
}

/// Finds the columns `changes` name that `store`'s tables lack, with the kind of value
/// each carries. Reads nothing from the database: the store's own view of its tables
/// ([`Store::table_columns`]). A relay lacks nothing.
pub fn missing_columns(store: &dyn Store, changes: &[Change]) -> MissingColumns {
    if store.is_relay() {
        // No user tables: it relays every change as it came, and lacks nothing.
        return MissingColumns::default();
    }
    find_missing(&|table| store.table_columns(table), changes)
}

/// [`missing_columns`] over any view of the tables: `columns_of` gives a tracked
/// table's column names, `None` for a table not tracked.
fn find_missing(
    columns_of: &dyn Fn(&str) -> Option<Vec<String>>,
    changes: &[Change],
) -> MissingColumns {
    let mut known: HashMap<&str, Option<HashSet<String>>> = HashMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
    let mut unknown_tables = BTreeSet::new();
    let mut whole_row: HashSet<&str> = HashSet::new();
    for change in changes {
        let columns = known
            .entry(change.table.as_str())
            .or_insert_with(|| columns_of(&change.table).map(|c| c.into_iter().collect()));
        let Some(columns) = columns else {
            unknown_tables.insert(change.table.clone());
            continue;
        };
        if change.is_delete() {
            // Its columns are the clocks its writer held: no column to add for them.
            continue;
        }
        let named = change
            .columns
            .iter()
            .filter(|c| columns.contains(&c.column))
            .count();
        if !columns.is_empty() && named == columns.len() {
            whole_row.insert(change.table.as_str());
        }
        for written in &change.columns {
            if columns.contains(&written.column) {
                continue;
            }
            let id = (change.table.clone(), written.column.clone());
            let entry = seen.entry(id.clone()).or_insert_with(|| {
                order.push(id);
                Seen::Nothing
            });
            if let Some(kind) = Kind::of(&written.value) {
                *entry = match entry {
                    Seen::Nothing => Seen::One(kind),
                    Seen::One(k) if *k == kind => Seen::One(kind),
                    Seen::One(_) | Seen::Mixed => Seen::Mixed,
                };
            }
        }
    }
    let (columns, unproven) = order
        .into_iter()
        .map(|(table, column)| {
            let kind = match seen.get(&(table.clone(), column.clone())) {
                Some(Seen::One(kind)) => Some(*kind),
                _ => None,
            };
            NewColumn {
                table,
                column,
                kind,
            }
        })
        .partition(|new| whole_row.contains(new.table.as_str()));
    MissingColumns {
        columns,
        unproven,
        unknown_tables,
    }
}

/// Adds to `store` every column `changes` name that its tracked tables lack
/// ([`missing_columns`], [`Store::add_column`]), so the changes apply instead of being
/// set aside. Returns what was found: the columns added and the tables not tracked
/// here. Stops at the first column the store fails to add; those before it stay added.
pub fn add_missing_columns(
    store: &mut dyn Store,
    changes: &[Change],
) -> Result<MissingColumns, StoreError> {
    let missing = missing_columns(store, changes);
    for new in &missing.columns {
        store.add_column(&new.table, &new.column, new.kind)?;
    }
    Ok(missing)
}

/// A store's part in [`add_column`]: its dialect and driver, nothing else.
pub trait ColumnDdl: Store {
    /// Reloads what the store knows of its tables if a connection was replaced.
    fn refresh(&mut self) -> Result<(), StoreError>;
    /// Tracked table `table` as the store's SQL names it, and whether it has `column`;
    /// `None` if the table is not tracked.
    fn table_for_ddl(&self, table: &str, column: &str) -> Option<(String, bool)>;
    /// The store's quoting of an identifier.
    fn quote_ident(&self, name: &str) -> String;
    /// The store's column type for values of `kind` (`None`: no value told the kind).
    fn type_for(&self, kind: Option<Kind>) -> &'static str;
    /// Runs one DDL statement.
    fn execute_ddl(&mut self, sql: &str) -> Result<(), StoreError>;
}

/// Adds `column` after the last column of tracked table `table`, nullable, typed for
/// values of `kind`, and follows it at once as the store follows a column a person adds
/// (the capture triggers are rebuilt and the schema change reported,
/// [`crate::Store::take_schema_changed`]). A column the table already has is left alone.
/// The algorithm of every store's [`crate::Store::add_column`].
pub fn add_column<B: ColumnDdl>(
    store: &mut B,
    table: &str,
    column: &str,
    kind: Option<Kind>,
) -> Result<(), StoreError> {
    store.refresh()?;
    let (table_sql, has) = store
        .table_for_ddl(table, column)
        .ok_or_else(|| StoreError::UnknownTable(table.to_owned()))?;
    if has {
        return Ok(());
    }
    let column_type = store.type_for(kind);
    let sql = format!(
        "ALTER TABLE {table_sql} ADD COLUMN {} {column_type}",
        store.quote_ident(column)
    );
    store.execute_ddl(sql.trim_end())?;
    tracing::info!(
        table,
        column,
        r#type = column_type,
        "column added for a peer's changes"
    );
    // Capturing compares the columns with those recorded and rebuilds the capture
    // triggers: the store follows its own schema change at once.
    store.capture()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::{CausalLength, ColumnChange, Hlc, NodeId, PrimaryKey, Value, Version};

    fn change(table: &str, columns: &[(&str, Value)]) -> Change {
        let version = Version {
            hlc: Hlc::new(1, 0),
            origin: NodeId::from_bytes([1; 16]),
        };
        Change {
            origin: version.origin,
            seq: 1,
            hlc: version.hlc,
            table: table.into(),
            key: PrimaryKey::encode(&[Value::Integer(1)]).unwrap(),
            causal_length: CausalLength(1),
            columns: columns
                .iter()
                .map(|(name, value)| ColumnChange {
                    column: (*name).into(),
                    value: value.clone(),
                    version,
                    replaced: None,
                })
                .collect(),
            delete_seen: None,
            last_in_txn: true,
        }
    }

    /// Table `t(id, v)` is tracked; nothing else is.
    fn tables(table: &str) -> Option<Vec<String>> {
        (table == "t").then(|| vec!["id".into(), "v".into()])
    }

    fn column(name: &str, kind: Option<Kind>) -> NewColumn {
        NewColumn {
            table: "t".into(),
            column: name.into(),
            kind,
        }
    }

    #[test]
    fn a_whole_row_proves_its_new_columns_typed_by_their_values() {
        let row = change(
            "t",
            &[
                ("id", Value::Integer(1)),
                ("v", Value::Text("a".into())),
                ("n", Value::Integer(5)),
                ("nothing", Value::Null),
                ("mixed", Value::Integer(1)),
            ],
        );
        let later = change(
            "t",
            &[("n", Value::Null), ("mixed", Value::Text("x".into()))],
        );
        let found = find_missing(&tables, &[row, later]);
        assert_eq!(
            found.columns,
            vec![
                column("n", Some(Kind::Integer)),
                column("nothing", None),
                column("mixed", None),
            ]
        );
        assert!(found.unproven.is_empty() && found.unknown_tables.is_empty());
    }

    #[test]
    fn a_name_without_a_whole_row_is_not_proof_and_an_unknown_table_is_only_reported() {
        // After `RENAME COLUMN v TO w` at the origin, its rows name `w`, never `v`.
        let renamed = change(
            "t",
            &[("id", Value::Integer(1)), ("w", Value::Text("a".into()))],
        );
        let update = change("t", &[("n", Value::Integer(5))]);
        let other = change("u", &[("id", Value::Integer(1))]);
        let found = find_missing(&tables, &[renamed, update, other]);
        assert!(found.columns.is_empty(), "{found:?}");
        assert_eq!(
            found.unproven,
            vec![
                column("w", Some(Kind::Text)),
                column("n", Some(Kind::Integer))
            ]
        );
        assert_eq!(found.unknown_tables, BTreeSet::from(["u".to_owned()]));
    }
}
