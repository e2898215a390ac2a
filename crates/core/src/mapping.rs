//! Per-link schema mapping: the same data under different table names, column names
//! and value kinds on the two ends of one peer link.
//!
//! A node's change log and store always speak the node's own (*local*) names and kinds.
//! A [`LinkMapping`] sits on one peer link and translates changes as they cross it:
//! [`LinkMapping::incoming`] turns a change as the peer (*remote*) wrote it into local
//! names and kinds before the store sees it, and [`LinkMapping::outgoing`] does the
//! inverse before a local change is sent. Nothing else about a change is touched: origin,
//! sequence number, HLC, causal length, versions, `replaced`, `delete_seen` and
//! `last_in_txn` pass through unchanged, so version vectors, merge decisions and
//! conflict detection work exactly as without a mapping.
//!
//! What a mapping can do, per table:
//! - **rename** the table and its columns;
//! - **subset**: with [`TableMapping::only_listed`], columns the mapping does not list
//!   are dropped in both directions;
//! - **cast** a column between two value [`Kind`]s, by the exact rules of [`cast`]; the
//!   primary key's components are cast too, which is why a table with a cast names its
//!   key columns in [`TableMapping::key`];
//! - **default** a column the remote lacks: an incoming insert gets the column with a
//!   configured value (see [`ColumnMapping::default`] for when a change counts as an
//!   insert), and outgoing changes never carry it.
//!
//! **Invariant:** a mapping never drops, splits or merges changes. A change whose columns
//! are all dropped is still returned, with no columns, because the receiver must advance
//! its version vector past its sequence number (sequence numbers are contiguous per
//! origin) and still relay it. A change that cannot be translated exactly is an error
//! ([`MappingError`]), never a silently altered value.
//!
//! The module is pure: no IO, no clock. The conversions lean on well-kept crates
//! (`uuid`, `jiff` for the calendar and offsets, `bigdecimal` for a float's exact
//! expansion and a decimal's digits, `serde_json` for JSON syntax); this module adds only the strictness that
//! makes every cast exact or an error (which spellings are accepted, what would round).
//! `docs/schema-mapping.md` in the repository describes the configuration and the rules
//! in prose.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Change, ColumnChange, Hlc, KeyError, PrimaryKey, Value, Version};

/// The schema mapping of one peer link: how the peer's tables correspond to local ones.
/// Tables it does not list pass through unchanged.
///
/// It (de)serializes as a bare list of [`TableMapping`]s, so a node's configuration
/// embeds it as `[[peers.tables]]` entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LinkMapping {
    /// The mapped tables.
    pub tables: Vec<TableMapping>,
}

/// How one local table corresponds to one remote table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The table's name on this node.
    pub local: String,
    /// The table's name on the peer.
    pub remote: String,
    /// The local names of the primary-key columns, in key order. Keys travel encoded
    /// ([`PrimaryKey`]), by position and without names, so the mapping needs this to
    /// cast key components. Required (by [`LinkMapping::validate`]) as soon as any
    /// column of the table is cast; a rename alone does not change the key's bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// `false` (the default): columns not listed in `columns` pass through under their
    /// own name. `true`: only the listed columns are synced; the others are dropped in
    /// both directions.
    #[serde(default, skip_serializing_if = "is_false")]
    pub only_listed: bool,
    /// The columns renamed, cast, defaulted or (with `only_listed`) kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnMapping>,
}

/// How one local column corresponds to a remote column, or that the remote lacks it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMapping {
    /// The column's name on this node.
    pub local: String,
    /// The column's name on the peer; the local name when absent. Must be absent when
    /// `default` is given: a column with a default is one the remote lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The kind of the column's values on this node. With `remote_type`, declares a cast
    /// (see [`cast`]); alone, only for a column the remote lacks, it is the kind the
    /// `default` is converted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_type: Option<Kind>,
    /// The kind of the column's values on the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_type: Option<Kind>,
    /// Declares that the remote lacks this column, and gives the value an incoming
    /// *insert* writes to it. A change counts as an insert when it is not a delete, it
    /// carries at least one column, none of its columns replaced a version (`replaced`
    /// is `None` for every one: the row began a new life at the origin with this write),
    /// and it carries every column this table mapping gives a remote name. Updates get no
    /// default, so they never overwrite the local value. Outgoing changes drop the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultValue>,
}

/// The kinds of non-NULL [`Value`]s, as named in a mapping's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// [`Value::Integer`].
    Integer,
    /// [`Value::Real`].
    Real,
    /// [`Value::Text`].
    Text,
    /// [`Value::Blob`].
    Blob,
    /// [`Value::Decimal`].
    Decimal,
    /// [`Value::Bool`].
    #[serde(alias = "boolean")]
    Bool,
    /// [`Value::Json`].
    Json,
    /// [`Value::Timestamp`].
    Timestamp,
    /// [`Value::Date`].
    Date,
    /// [`Value::Uuid`].
    Uuid,
}

impl Kind {
    /// The kind of `value`; `None` for NULL, which has every kind.
    pub fn of(value: &Value) -> Option<Kind> {
        Some(match value {
            Value::Null => return None,
            Value::Integer(_) => Kind::Integer,
            Value::Real(_) => Kind::Real,
            Value::Text(_) => Kind::Text,
            Value::Blob(_) => Kind::Blob,
            Value::Decimal(_) => Kind::Decimal,
            Value::Bool(_) => Kind::Bool,
            Value::Json(_) => Kind::Json,
            Value::Timestamp(_) => Kind::Timestamp,
            Value::Date(_) => Kind::Date,
            Value::Uuid(_) => Kind::Uuid,
        })
    }

    /// The name used in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Real => "real",
            Kind::Text => "text",
            Kind::Blob => "blob",
            Kind::Decimal => "decimal",
            Kind::Bool => "bool",
            Kind::Json => "json",
            Kind::Timestamp => "timestamp",
            Kind::Date => "date",
            Kind::Uuid => "uuid",
        }
    }

    /// Whether [`cast`] converts values of kind `from` to kind `to` (each way where
    /// the rules allow it; some values may still be refused). A kind casts to itself.
    pub fn can_cast(from: Kind, to: Kind) -> bool {
        use Kind::*;
        // Each unordered pair once, in declaration order.
        from == to
            || matches!(
                (from.min(to), from.max(to)),
                (Integer, Real)
                    | (Integer, Text)
                    | (Integer, Decimal)
                    | (Integer, Bool)
                    | (Real, Decimal)
                    | (Text, Blob)
                    | (Text, Decimal)
                    | (Text, Json)
                    | (Text, Timestamp)
                    | (Text, Date)
                    | (Text, Uuid)
            )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The value a defaulted column takes on an incoming insert.
///
/// In configuration a literal is written as itself (`default = 0`, `default = 1.5`,
/// `default = true`, `default = "2024-01-01T00:00:00Z"`) and is converted to the
/// column's `local_type`, if given, by the [`cast`] rules (text is parsed: a UUID, a
/// decimal, a timestamp...). The two special values are written as
/// `default = { special = "null" }` and `default = { special = "change_time" }`.
#[derive(Clone, Debug, PartialEq)]
pub enum DefaultValue {
    /// A boolean literal.
    Bool(bool),
    /// An integer literal.
    Integer(i64),
    /// A float literal.
    Real(f64),
    /// A string literal.
    Text(String),
    /// SQL NULL.
    Null,
    /// The time of the change at its origin: the wall-clock part of its HLC, as a
    /// timestamp (millisecond precision). The same on every replica, unlike the
    /// receiver's clock, so replicas that default the column agree.
    ChangeTime,
}

impl DefaultValue {
    /// The value for a change made at `hlc`, converted to `local_type` if given.
    pub fn value(&self, local_type: Option<Kind>, hlc: Hlc) -> Result<Value, CastError> {
        let literal = match self {
            DefaultValue::Bool(b) => Value::Bool(*b),
            DefaultValue::Integer(i) => Value::Integer(*i),
            DefaultValue::Real(r) => Value::Real(*r),
            DefaultValue::Text(s) => Value::Text(s.clone()),
            DefaultValue::Null => Value::Null,
            // At most 2^48 ms, so the product fits.
            DefaultValue::ChangeTime => Value::Timestamp(hlc.millis() as i64 * 1000),
        };
        match (local_type, Kind::of(&literal)) {
            (Some(to), Some(from)) => cast(literal, from, to),
            _ => Ok(literal),
        }
    }
}

impl Serialize for DefaultValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let special = |s: S, name: &str| {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry("special", name)?;
            map.end()
        };
        match self {
            DefaultValue::Bool(b) => s.serialize_bool(*b),
            DefaultValue::Integer(i) => s.serialize_i64(*i),
            DefaultValue::Real(r) => s.serialize_f64(*r),
            DefaultValue::Text(t) => s.serialize_str(t),
            DefaultValue::Null => special(s, "null"),
            DefaultValue::ChangeTime => special(s, "change_time"),
        }
    }
}

impl<'de> Deserialize<'de> for DefaultValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DefaultVisitor;
        impl<'de> Visitor<'de> for DefaultVisitor {
            type Value = DefaultValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a boolean, integer, float or string, or { special = \"null\" } or \
                     { special = \"change_time\" }",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<DefaultValue, E> {
                Ok(DefaultValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DefaultValue, E> {
                Ok(DefaultValue::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DefaultValue, E> {
                i64::try_from(v)
                    .map(DefaultValue::Integer)
                    .map_err(|_| E::custom(format!("integer default {v} exceeds 64-bit range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DefaultValue, E> {
                Ok(DefaultValue::Real(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DefaultValue, E> {
                Ok(DefaultValue::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<DefaultValue, E> {
                Ok(DefaultValue::Text(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DefaultValue, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("an empty table is not a default value"));
                };
                if key.starts_with("$__toml") {
                    // How the toml crate hands over a bare TOML date or time.
                    return Err(de::Error::custom(
                        "write a date or time default as a quoted string, e.g. \
                         default = \"2024-01-01T00:00:00Z\"",
                    ));
                }
                if key != "special" {
                    return Err(de::Error::unknown_field(&key, &["special"]));
                }
                let name: String = map.next_value()?;
                let value = match name.as_str() {
                    "null" => DefaultValue::Null,
                    "change_time" => DefaultValue::ChangeTime,
                    other => {
                        return Err(de::Error::unknown_variant(other, &["null", "change_time"]));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::unknown_field(&extra, &[]));
                }
                Ok(value)
            }
        }
        d.deserialize_any(DefaultVisitor)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which way a change was crossing the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the peer to this node ([`LinkMapping::incoming`]).
    Incoming,
    /// From this node to the peer ([`LinkMapping::outgoing`]).
    Outgoing,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        })
    }
}

/// Why a value cannot be cast exactly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot cast this {found} value to {to}: {why}")]
pub struct CastError {
    /// The kind of the value.
    pub found: Kind,
    /// The kind it was to become.
    pub to: Kind,
    /// What makes the cast impossible or lossy.
    pub why: String,
}

/// Why a change cannot cross the link. Names refer to the change as it was given to
/// [`LinkMapping::incoming`] (remote names) or [`LinkMapping::outgoing`] (local names),
/// and `key` is its printable key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    /// A column value, or a key component, cannot be cast exactly.
    #[error("{direction} change of table {table}, key {key}, {} {column}: {source}",
        if *in_key { "key column" } else { "column" })]
    Cast {
        /// Direction of the change.
        direction: Direction,
        /// Table name.
        table: String,
        /// Printable key.
        key: String,
        /// Column name.
        column: String,
        /// Whether the value was a component of the primary key.
        in_key: bool,
        /// Why the cast failed.
        source: CastError,
    },
    /// The key does not decode, or its cast form cannot be encoded.
    #[error("{direction} change of table {table}, key {key}: {source}")]
    Key {
        /// Direction of the change.
        direction: Direction,
        /// Table name.
        table: String,
        /// Printable key.
        key: String,
        /// The key error.
        source: KeyError,
    },
    /// The key has a different number of components than the mapping's `key` names.
    #[error(
        "{direction} change of table {table}, key {key}: the key has {found} components, \
         the mapping's `key` names {expected} columns"
    )]
    KeyArity {
        /// Direction of the change.
        direction: Direction,
        /// Table name.
        table: String,
        /// Printable key.
        key: String,
        /// Columns the mapping names.
        expected: usize,
        /// Components the key has.
        found: usize,
    },
    /// A table the mapping does not list would pass through under a name that the
    /// mapping gives to another table, mixing two tables into one.
    #[error(
        "{direction} change of table {table}: the table is not mapped and would pass \
         through unchanged, but {table} is the name the mapping gives table {mapped}; \
         map it explicitly"
    )]
    TableCollision {
        /// Direction of the change.
        direction: Direction,
        /// The unmapped table.
        table: String,
        /// The mapped table (as the change's side names it) that takes that name.
        mapped: String,
    },
    /// A column the mapping does not list would pass through under a name that the
    /// mapping gives to another column (or says the remote lacks).
    #[error(
        "{direction} change of table {table}, key {key}: column {column} is not mapped and \
         would pass through unchanged, but the mapping {why}; map it explicitly or set \
         only_listed"
    )]
    ColumnCollision {
        /// Direction of the change.
        direction: Direction,
        /// Table name.
        table: String,
        /// Printable key.
        key: String,
        /// The unmapped column.
        column: String,
        /// What the mapping says about that name.
        why: String,
    },
}

/// A mapping that [`LinkMapping::validate`] refuses, naming the table (local name) and,
/// when it is about one column, the column (local name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("mapping of table {table}{}: {why}", column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default())]
pub struct MappingConfigError {
    /// The table's local name.
    pub table: String,
    /// The column's local name, if the problem is one column's.
    pub column: Option<String>,
    /// What is wrong.
    pub why: String,
}

impl LinkMapping {
    /// Whether the mapping changes nothing (no table listed).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The mapping of the table named `name` on this node.
    pub fn by_local(&self, name: &str) -> Option<&TableMapping> {
        self.tables.iter().find(|t| t.local == name)
    }

    /// The mapping of the table named `name` on the peer.
    pub fn by_remote(&self, name: &str) -> Option<&TableMapping> {
        self.tables.iter().find(|t| t.remote == name)
    }

    /// Checks the mapping once, when the configuration is loaded: names unique on each
    /// side, casts the rules can do, defaults of the declared kind, key columns declared
    /// where casts need them. [`LinkMapping::incoming`] and [`LinkMapping::outgoing`]
    /// assume a valid mapping.
    pub fn validate(&self) -> Result<(), MappingConfigError> {
        for (i, table) in self.tables.iter().enumerate() {
            let err = |why: String| MappingConfigError {
                table: table.local.clone(),
                column: None,
                why,
            };
            if table.local.is_empty() || table.remote.is_empty() {
                return Err(err("a table name is empty".into()));
            }
            let earlier = &self.tables[..i];
            if earlier.iter().any(|t| t.local == table.local) {
                return Err(err("the local table is mapped twice".into()));
            }
            if let Some(other) = earlier.iter().find(|t| t.remote == table.remote) {
                return Err(err(format!(
                    "remote table {} is also mapped to local table {}",
                    table.remote, other.local
                )));
            }
            table.validate()?;
        }
        Ok(())
    }

    /// Translates a change received from the peer into local names and kinds: renames
    /// the table and columns, drops unlisted columns (with `only_listed`), casts values
    /// and key components from `remote_type` to `local_type`, and adds defaulted columns
    /// to inserts. A table the mapping does not list passes through unchanged. Returns the
    /// same change (same origin, sequence number and transaction boundary), possibly with
    /// no columns left, or an error; never drops it.
    pub fn incoming(&self, change: Change) -> Result<Change, MappingError> {
        self.translate(change, Direction::Incoming)
    }

    /// Translates a local change into the peer's names and kinds: the inverse of
    /// [`LinkMapping::incoming`], casting from `local_type` to `remote_type` and dropping
    /// the columns the peer lacks (those with a default) and, with `only_listed`, the
    /// unlisted ones. Never drops the change.
    pub fn outgoing(&self, change: Change) -> Result<Change, MappingError> {
        self.translate(change, Direction::Outgoing)
    }

    fn translate(&self, mut change: Change, direction: Direction) -> Result<Change, MappingError> {
        let incoming = direction == Direction::Incoming;
        let table = if incoming {
            self.by_remote(&change.table)
        } else {
            self.by_local(&change.table)
        };
        let Some(table) = table else {
            // Unmapped: passes through, unless its name is another table's mapped name.
            let taken = self.tables.iter().find(|t| {
                if incoming {
                    t.local == change.table
                } else {
                    t.remote == change.table
                }
            });
            return match taken {
                Some(t) => Err(MappingError::TableCollision {
                    direction,
                    mapped: if incoming { &t.remote } else { &t.local }.clone(),
                    table: change.table,
                }),
                None => Ok(change),
            };
        };
        let source_key = change.key.clone();
        let cx = Context {
            direction,
            table: &change.table,
            key: &source_key,
        };

        // Judged on the change as the origin wrote it, before columns are renamed or dropped.
        let insert = incoming && table.is_insert(&change);
        change.key = table.translate_key(&change.key, &cx)?;

        let mut columns = Vec::with_capacity(change.columns.len() + table.columns.len());
        for mut column in std::mem::take(&mut change.columns) {
            let mapped = if incoming {
                table
                    .columns
                    .iter()
                    .find(|c| c.remote_name() == Some(&column.column))
            } else {
                table.columns.iter().find(|c| c.local == column.column)
            };
            match mapped {
                Some(mapping) => {
                    let Some(remote) = mapping.remote_name() else {
                        // Outgoing write of a column the remote lacks.
                        continue;
                    };
                    if let Some((from, to)) = mapping.cast_for(direction) {
                        column.value = cast(column.value, from, to)
                            .map_err(|e| cx.cast_error(&column.column, false, e))?;
                    }
                    column.column = if incoming { &mapping.local } else { remote }.to_owned();
                    columns.push(column);
                }
                None if table.only_listed => {}
                None => {
                    if let Some(why) = table.claims(&column.column, direction) {
                        return Err(MappingError::ColumnCollision {
                            direction,
                            table: cx.table.to_owned(),
                            key: cx.key.to_string(),
                            column: column.column,
                            why,
                        });
                    }
                    columns.push(column);
                }
            }
        }

        if insert {
            let version = Version {
                hlc: change.hlc,
                origin: change.origin,
            };
            for mapping in table.columns.iter().filter(|c| c.remote_name().is_none()) {
                let Some(default) = &mapping.default else {
                    continue;
                };
                if columns.iter().any(|c| c.column == mapping.local) {
                    continue;
                }
                let value = default
                    .value(mapping.local_type, change.hlc)
                    .map_err(|e| cx.cast_error(&mapping.local, false, e))?;
                columns.push(ColumnChange {
                    column: mapping.local.clone(),
                    value,
                    version,
                    replaced: None,
                });
            }
        }

        change.columns = columns;
        change.table = if incoming {
            &table.local
        } else {
            &table.remote
        }
        .clone();
        Ok(change)
    }
}

/// The change being translated, for error messages.
struct Context<'a> {
    direction: Direction,
    table: &'a str,
    key: &'a PrimaryKey,
}

impl Context<'_> {
    fn cast_error(&self, column: &str, in_key: bool, source: CastError) -> MappingError {
        MappingError::Cast {
            direction: self.direction,
            table: self.table.to_owned(),
            key: self.key.to_string(),
            column: column.to_owned(),
            in_key,
            source,
        }
    }

    fn key_error(&self, source: KeyError) -> MappingError {
        MappingError::Key {
            direction: self.direction,
            table: self.table.to_owned(),
            key: self.key.to_string(),
            source,
        }
    }
}

impl TableMapping {
    /// The mapping of the column named `name` on this node.
    pub fn column_by_local(&self, name: &str) -> Option<&ColumnMapping> {
        self.columns.iter().find(|c| c.local == name)
    }

    /// The mapping of the column named `name` on the peer.
    pub fn column_by_remote(&self, name: &str) -> Option<&ColumnMapping> {
        self.columns.iter().find(|c| c.remote_name() == Some(name))
    }

    fn validate(&self) -> Result<(), MappingConfigError> {
        let err = |column: Option<&str>, why: String| MappingConfigError {
            table: self.local.clone(),
            column: column.map(str::to_owned),
            why,
        };
        for (i, column) in self.columns.iter().enumerate() {
            let err = |why: String| err(Some(&column.local), why);
            if column.local.is_empty() || column.remote.as_deref() == Some("") {
                return Err(err("a column name is empty".into()));
            }
            let earlier = &self.columns[..i];
            if earlier.iter().any(|c| c.local == column.local) {
                return Err(err("the local column is listed twice".into()));
            }
            if let Some(remote) = column.remote_name()
                && let Some(other) = earlier.iter().find(|c| c.remote_name() == Some(remote))
            {
                return Err(err(format!(
                    "remote column {remote} is also mapped to local column {}",
                    other.local
                )));
            }
            match (&column.default, column.local_type, column.remote_type) {
                (Some(_), _, _) if column.remote.is_some() => {
                    return Err(err(
                        "a default declares a column the remote lacks, so it cannot also name \
                         a remote column; remove `remote` or `default`"
                            .into(),
                    ));
                }
                (Some(_), _, Some(_)) => {
                    return Err(err(
                        "remote_type is meaningless for a column the remote lacks".into(),
                    ));
                }
                (None, Some(_), None) | (None, None, Some(_)) => {
                    return Err(err("a cast needs both local_type and remote_type".into()));
                }
                (None, Some(local), Some(remote)) if !Kind::can_cast(remote, local) => {
                    return Err(err(format!(
                        "no exact cast exists between {remote} (remote) and {local} (local); \
                         see docs/schema-mapping.md for the casts"
                    )));
                }
                _ => {}
            }
            if let Some(default) = &column.default
                && let Err(e) = default.value(column.local_type, Hlc::ZERO)
            {
                return Err(err(format!("the default disagrees with local_type: {e}")));
            }
        }
        for (i, name) in self.key.iter().enumerate() {
            let err = |why: String| err(Some(name), why);
            if self.key[..i].contains(name) {
                return Err(err("the key names this column twice".into()));
            }
            match self.column_by_local(name) {
                Some(c) if c.remote_name().is_none() => {
                    return Err(err(
                        "a key column cannot be one the remote lacks (it has a default)".into(),
                    ));
                }
                None if self.only_listed => {
                    return Err(err(
                        "with only_listed, every key column must be listed in `columns`".into(),
                    ));
                }
                _ => {}
            }
        }
        if self.key.is_empty()
            && let Some(cast) = self
                .columns
                .iter()
                .find(|c| c.cast_for(Direction::Incoming).is_some())
        {
            return Err(err(
                Some(&cast.local),
                "the table casts a column, so `key` must name the local primary-key \
                     columns in key order (key values are cast too)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Casts the key's components whose columns are cast, or returns it unchanged.
    fn translate_key(
        &self,
        key: &PrimaryKey,
        cx: &Context<'_>,
    ) -> Result<PrimaryKey, MappingError> {
        let casts: Vec<Option<(Kind, Kind)>> = self
            .key
            .iter()
            .map(|name| {
                self.column_by_local(name)
                    .and_then(|c| c.cast_for(cx.direction))
            })
            .collect();
        if casts.iter().all(Option::is_none) {
            return Ok(key.clone());
        }
        let values = key.decode().map_err(|e| cx.key_error(e))?;
        if values.len() != self.key.len() {
            return Err(MappingError::KeyArity {
                direction: cx.direction,
                table: cx.table.to_owned(),
                key: cx.key.to_string(),
                expected: self.key.len(),
                found: values.len(),
            });
        }
        let mut cast_values = Vec::with_capacity(values.len());
        for ((value, kinds), name) in values.into_iter().zip(casts).zip(&self.key) {
            cast_values.push(match kinds {
                None => value,
                Some((from, to)) => cast(value, from, to).map_err(|e| {
                    let column = match (cx.direction, self.column_by_local(name)) {
                        (Direction::Incoming, Some(c)) => c.remote_name().unwrap_or(name),
                        _ => name,
                    };
                    cx.cast_error(column, true, e)
                })?,
            });
        }
        PrimaryKey::encode(&cast_values).map_err(|e| cx.key_error(e))
    }

    /// Whether an incoming change is an insert, by the rule of [`ColumnMapping::default`].
    fn is_insert(&self, change: &Change) -> bool {
        !change.is_delete()
            && !change.columns.is_empty()
            && change.columns.iter().all(|c| c.replaced.is_none())
            && self
                .columns
                .iter()
                .filter_map(ColumnMapping::remote_name)
                .all(|name| change.columns.iter().any(|c| c.column == name))
    }

    /// If the mapping gives the unmapped column name `name` (on the change's side) to
    /// another column, says how.
    fn claims(&self, name: &str, direction: Direction) -> Option<String> {
        match direction {
            Direction::Incoming => self.column_by_local(name).map(|c| match c.remote_name() {
                Some(remote) => format!("maps remote column {remote} to local column {name}"),
                None => format!("says the remote lacks column {name}"),
            }),
            Direction::Outgoing => self
                .column_by_remote(name)
                .map(|c| format!("maps local column {} to remote column {name}", c.local)),
        }
    }
}

impl ColumnMapping {
    /// The column's name on the peer, or `None` if the peer lacks it (it has a default).
    pub fn remote_name(&self) -> Option<&str> {
        match (&self.remote, &self.default) {
            (Some(remote), _) => Some(remote),
            (None, Some(_)) => None,
            (None, None) => Some(&self.local),
        }
    }

    /// The `(from, to)` kinds of the cast this column declares in `direction`.
    pub fn cast_for(&self, direction: Direction) -> Option<(Kind, Kind)> {
        match (self.remote_type, self.local_type) {
            (Some(remote), Some(local)) if self.remote_name().is_some() => Some(match direction {
                Direction::Incoming => (remote, local),
                Direction::Outgoing => (local, remote),
            }),
            _ => None,
        }
    }
}

/// Casts `value`, of kind `from`, to kind `to`, exactly or not at all.
///
/// NULL passes every cast. A value of another kind than `from` is refused. Every cast is
/// a bijection on what it accepts: casting back gives the original value, except that
/// parsing text accepts some spellings beside the canonical one (and writes the canonical
/// one back), and a real or integer carries no decimal scale (`"12.50"` comes back as
/// `"12.5"`). The rules, by pair:
///
/// | pair | rule |
/// |---|---|
/// | text ↔ uuid | `8-4-4-4-12` hex with hyphens, 36 characters; upper case accepted, lower case written |
/// | text ↔ integer | optional sign and ASCII digits, within 64 bits; written without `+` or leading zeros |
/// | text ↔ decimal | optional sign, digits, optional `.` and digits (no exponent), or `NaN`, `Infinity`, `-Infinity`; written without `+`, leading zeros or negative zero, keeping the scale |
/// | decimal ↔ integer | only integral decimals within 64 bits (`"12.00"` → 12) |
/// | decimal ↔ real | only when the float equals the decimal exactly; no NaN, infinities or −0.0 |
/// | integer ↔ real | only when the float equals the integer exactly; no −0.0 |
/// | text ↔ json | text checked to be one JSON document (RFC 8259 syntax), kept as is |
/// | text ↔ timestamp | RFC 3339 with a required offset, normalised to UTC; written as `YYYY-MM-DDTHH:MM:SS.ffffffZ`; years 0000–9999; more than 6 fractional digits only if the extra ones are 0; no leap second |
/// | text ↔ date | `YYYY-MM-DD`, years 0000–9999, proleptic Gregorian |
/// | integer ↔ bool | 0 and 1 only |
/// | blob ↔ text | UTF-8 only |
pub fn cast(value: Value, from: Kind, to: Kind) -> Result<Value, CastError> {
    let Some(found) = Kind::of(&value) else {
        return Ok(value);
    };
    let no = |why: String| CastError { found, to, why };
    if found != from {
        return Err(no(format!("the mapping declares {from} values here")));
    }
    if from == to {
        return Ok(value);
    }
    Ok(match (value, to) {
        // text <-> uuid
        (Value::Text(s), Kind::Uuid) => Value::Uuid(parse_uuid(&s).map_err(no)?),
        (Value::Uuid(u), Kind::Text) => Value::Text(format_uuid(&u)),
        // text <-> integer
        (Value::Text(s), Kind::Integer) => Value::Integer(parse_integer(&s).map_err(no)?),
        (Value::Integer(i), Kind::Text) => Value::Text(i.to_string()),
        // text <-> decimal
        (Value::Text(s), Kind::Decimal) => Value::Decimal(canonical_decimal(&s).map_err(no)?),
        (Value::Decimal(d), Kind::Text) => Value::Text(canonical_decimal(&d).map_err(no)?),
        // decimal <-> integer
        (Value::Decimal(d), Kind::Integer) => Value::Integer(decimal_to_integer(&d).map_err(no)?),
        (Value::Integer(i), Kind::Decimal) => Value::Decimal(i.to_string()),
        // decimal <-> real
        (Value::Decimal(d), Kind::Real) => Value::Real(decimal_to_real(&d).map_err(no)?),
        (Value::Real(r), Kind::Decimal) => Value::Decimal(real_to_decimal(r).map_err(no)?),
        // integer <-> real
        (Value::Integer(i), Kind::Real) => Value::Real(integer_to_real(i).map_err(no)?),
        (Value::Real(r), Kind::Integer) => Value::Integer(real_to_integer(r).map_err(no)?),
        // text <-> json
        (Value::Text(s), Kind::Json) => {
            check_json(&s).map_err(|e| no(format!("not a JSON document: {e}")))?;
            Value::Json(s)
        }
        (Value::Json(s), Kind::Text) => Value::Text(s),
        // text <-> timestamp
        (Value::Text(s), Kind::Timestamp) => Value::Timestamp(parse_timestamp(&s).map_err(no)?),
        (Value::Timestamp(us), Kind::Text) => Value::Text(format_timestamp(us).map_err(no)?),
        // text <-> date
        (Value::Text(s), Kind::Date) => Value::Date(parse_date(&s).map_err(no)?),
        (Value::Date(d), Kind::Text) => Value::Text(format_date(d).map_err(no)?),
        // integer <-> bool
        (Value::Integer(0), Kind::Bool) => Value::Bool(false),
        (Value::Integer(1), Kind::Bool) => Value::Bool(true),
        (Value::Integer(_), Kind::Bool) => return Err(no("only 0 and 1 are booleans".into())),
        (Value::Bool(b), Kind::Integer) => Value::Integer(i64::from(b)),
        // blob <-> text
        (Value::Blob(b), Kind::Text) => Value::Text(String::from_utf8(b).map_err(|e| {
            no(format!(
                "not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?),
        (Value::Text(s), Kind::Blob) => Value::Blob(s.into_bytes()),
        _ => return Err(no("no exact cast exists between these kinds".into())),
    })
}

// ---------------------------------------------------------------------------------------
// UUIDs

/// Only the hyphenated 36-character form is accepted (`uuid` alone would also take the
/// simple, braced and URN forms), so text and UUID convert one to one.
fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let bad = || format!("not a UUID in the 36-character 8-4-4-4-12 form: {s:?}");
    if s.len() != 36 {
        return Err(bad());
    }
    uuid::Uuid::try_parse(s)
        .map(uuid::Uuid::into_bytes)
        .map_err(|_| bad())
}

fn format_uuid(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*u).hyphenated().to_string()
}

// ---------------------------------------------------------------------------------------
// Integers and decimals

fn parse_integer(s: &str) -> Result<i64, String> {
    use std::num::IntErrorKind;
    s.parse::<i64>().map_err(|e| match e.kind() {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => {
            "outside the 64-bit integer range".to_owned()
        }
        _ => format!("not an integer (optional sign and digits only): {s:?}"),
    })
}

/// A finite decimal as written: sign, integer digits without leading zeros, and
/// fractional digits as written (their count is the scale).
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
}

impl Decimal<'_> {
    fn is_zero(&self) -> bool {
        self.int.is_empty() && self.frac.bytes().all(|b| b == b'0')
    }

    fn canonical(&self) -> String {
        let mut out = String::with_capacity(self.int.len() + self.frac.len() + 3);
        if self.negative && !self.is_zero() {
            out.push('-');
        }
        out.push_str(if self.int.is_empty() { "0" } else { self.int });
        if !self.frac.is_empty() {
            out.push('.');
            out.push_str(self.frac);
        }
        out
    }

    /// The value with no trailing fractional zeros, to compare values ignoring scale.
    fn minimal(&self) -> (bool, &str, &str) {
        let frac = self.frac.trim_end_matches('0');
        (self.negative && !self.is_zero(), self.int, frac)
    }
}

/// Decimal text: `NaN`, `Infinity`, `-Infinity`, or a finite decimal.
enum DecimalText<'a> {
    Special(&'a str),
    Finite(Decimal<'a>),
}

fn parse_decimal(s: &str) -> Result<DecimalText<'_>, String> {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Ok(DecimalText::Special(s));
    }
    let bad = |why: &str| format!("not a decimal number ({why}): {s:?}");
    let negative = s.starts_with('-');
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if body.contains(['e', 'E']) {
        return Err(bad("exponent notation is not accepted"));
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad("only a sign, digits and one point are allowed"));
    }
    if int.is_empty() && frac.is_empty() {
        return Err(bad("no digits"));
    }
    Ok(DecimalText::Finite(Decimal {
        negative,
        int: int.trim_start_matches('0'),
        frac,
    }))
}

fn canonical_decimal(s: &str) -> Result<String, String> {
    Ok(match parse_decimal(s)? {
        DecimalText::Special(s) => s.to_owned(),
        DecimalText::Finite(d) => d.canonical(),
    })
}

fn finite_decimal(s: &str) -> Result<Decimal<'_>, String> {
    match parse_decimal(s)? {
        DecimalText::Special(s) => Err(format!("{s} has no exact counterpart")),
        DecimalText::Finite(d) => Ok(d),
    }
}

fn decimal_to_integer(s: &str) -> Result<i64, String> {
    let d = finite_decimal(s)?;
    if d.frac.bytes().any(|b| b != b'0') {
        return Err("it has a fractional part".into());
    }
    if d.int.is_empty() {
        return Ok(0);
    }
    let signed = format!("{}{}", if d.negative { "-" } else { "" }, d.int);
    signed
        .parse::<i64>()
        .map_err(|_| "outside the 64-bit integer range".into())
}

fn decimal_to_real(s: &str) -> Result<f64, String> {
    let d = finite_decimal(s)?;
    let canonical = d.canonical();
    let r: f64 = canonical
        .parse()
        .map_err(|e| format!("not a decimal number: {e}"))?;
    if !r.is_finite() {
        return Err("outside the range of a 64-bit float".into());
    }
    let exact = exact_decimal(r);
    let Ok(DecimalText::Finite(back)) = parse_decimal(&exact) else {
        return Err("internal error: a float's expansion is not a decimal".into());
    };
    if back.minimal() != d.minimal() {
        return Err(format!(
            "a 64-bit float cannot hold it exactly (the nearest is {r:?})"
        ));
    }
    Ok(r)
}

fn real_to_decimal(r: f64) -> Result<String, String> {
    if !r.is_finite() {
        return Err(format!("{r} has no exact decimal counterpart"));
    }
    if r == 0.0 && r.is_sign_negative() {
        return Err("negative zero has no decimal counterpart".into());
    }
    Ok(exact_decimal(r))
}

/// Why a float cannot be written into a decimal column without changing it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RealToDecimalError {
    /// NaN and the infinities have no decimal counterpart.
    #[error("{value} has no decimal counterpart")]
    NotFinite {
        /// `NaN`, `inf` or `-inf`.
        value: String,
    },
    /// A decimal has no negative zero; writing `0` would change the float's sign.
    #[error("-0 (negative zero) has no decimal counterpart")]
    NegativeZero,
    /// The shortest decimal has more fractional digits than the column keeps.
    #[error(
        "{decimal} has {digits} fractional digits, the column keeps {scale} (it would be rounded)"
    )]
    Rounded {
        /// The float's shortest decimal.
        decimal: String,
        /// Its fractional digits.
        digits: u64,
        /// The column's scale.
        scale: u32,
    },
    /// The shortest decimal has more integer digits than the column allows.
    #[error("{decimal} has {digits} integer digits, the column allows {allowed}")]
    TooLarge {
        /// The float's shortest decimal.
        decimal: String,
        /// Its integer digits.
        digits: u64,
        /// What `precision - scale` allows.
        allowed: u32,
    },
    /// The float's text did not read back as a decimal (a bug, never expected).
    #[error("internal error: {decimal} does not read as a decimal")]
    Unreadable {
        /// The text.
        decimal: String,
    },
}

/// The decimal a float written into a `decimal`/`numeric` column becomes: the shortest
/// decimal that reads back as the same `f64` (`2.25`, `0.1`, never
/// `0.1000000000000000055511151231257827021181583404541015625`), because that is the
/// number the writer meant and the one every float parser agrees on. It is accepted only
/// when it fits the column as it is: `precision` total digits of which `scale` are
/// fractional (`None`: unconstrained, as PostgreSQL's bare `numeric`); a float whose
/// shortest decimal the column would round or overflow is refused, as are NaN, the
/// infinities and negative zero, which no decimal column holds.
///
/// The result is plain decimal text (no exponent, `-` only when negative), as the stores
/// send decimals. This is not the link mapping's [`cast`] from `real` to `decimal`,
/// which must be invertible and so writes the float's exact binary expansion.
pub fn real_to_decimal_column(
    r: f64,
    precision: Option<u32>,
    scale: Option<u32>,
) -> Result<String, RealToDecimalError> {
    if !r.is_finite() {
        return Err(RealToDecimalError::NotFinite {
            value: r.to_string(),
        });
    }
    if r == 0.0 && r.is_sign_negative() {
        return Err(RealToDecimalError::NegativeZero);
    }
    // `Display` of a float is the shortest decimal that parses back to it, written
    // without an exponent.
    let decimal = r.to_string();
    let Some(scale) = scale else {
        return Ok(decimal);
    };
    let Some((fraction, integer)) = decimal_digits(&decimal) else {
        return Err(RealToDecimalError::Unreadable { decimal });
    };
    if fraction > u64::from(scale) {
        return Err(RealToDecimalError::Rounded {
            decimal,
            digits: fraction,
            scale,
        });
    }
    if let Some(precision) = precision {
        let allowed = precision.saturating_sub(scale);
        if integer > u64::from(allowed) {
            return Err(RealToDecimalError::TooLarge {
                decimal,
                digits: integer,
                allowed,
            });
        }
    }
    Ok(decimal)
}

/// The significant fractional and integer digits of plain decimal text (trailing
/// fractional zeros and leading integer zeros do not count), read by `bigdecimal`.
fn decimal_digits(decimal: &str) -> Option<(u64, u64)> {
    let d = decimal.parse::<bigdecimal::BigDecimal>().ok()?.normalized();
    if bigdecimal::Zero::is_zero(&d) {
        return Some((0, 0));
    }
    // value = unscaled · 10^-exponent, with no trailing zeros in `unscaled`.
    let (_, exponent) = d.as_bigint_and_exponent();
    let fraction = exponent.max(0).unsigned_abs();
    let integer = (i128::from(d.digits()) - i128::from(exponent)).max(0);
    Some((fraction, u64::try_from(integer).ok()?))
}

/// Largest magnitude at which every integer is a float (2^53); beyond it, some are not.
const F64_EXACT_BITS: u32 = 53;

fn integer_to_real(i: i64) -> Result<f64, String> {
    let r = i as f64;
    // i64 magnitudes are at most 2^63, which i128 holds, and a float of that size is
    // integral, so this comparison is exact.
    if r as i128 == i128::from(i) {
        Ok(r)
    } else {
        Err(format!(
            "a 64-bit float cannot hold it exactly (it needs more than {F64_EXACT_BITS} \
             significant bits)"
        ))
    }
}

fn real_to_integer(r: f64) -> Result<i64, String> {
    if !r.is_finite() {
        return Err(format!("{r} is not an integer"));
    }
    if r.fract() != 0.0 {
        return Err("it has a fractional part".into());
    }
    if r == 0.0 && r.is_sign_negative() {
        return Err("negative zero has no integer counterpart".into());
    }
    // -2^63 <= r < 2^63, both bounds exact in f64.
    if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r) {
        return Err("outside the 64-bit integer range".into());
    }
    Ok(r as i64)
}

/// The exact decimal expansion of a finite float: every float is `m · 2^e`, whose
/// expansion is finite (`bigdecimal` converts it without rounding). Written without
/// trailing fractional zeros, `-` only if negative and non-zero.
fn exact_decimal(r: f64) -> String {
    if r == 0.0 {
        return "0".into();
    }
    bigdecimal::BigDecimal::try_from(r)
        .map(|d| d.normalized().to_plain_string())
        // Only NaN and the infinities fail, and callers refuse them first.
        .unwrap_or_else(|_| r.to_string())
}

// ---------------------------------------------------------------------------------------
// Dates and timestamps (proleptic Gregorian, years 0000 to 9999)
//
// `jiff` does the calendar and the offsets. It accepts more spellings than the ones
// documented here (bracketed time zones, hour-only offsets, leap seconds clamped to
// :59, nanoseconds), so the text's shape is checked first: a cast is exact or fails.

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// 0000-01-01, in days since 1970-01-01.
const FIRST_DAY: i64 = -719_528;
/// 9999-12-31, in days since 1970-01-01.
const LAST_DAY: i64 = 2_932_896;

/// Whether `b[range]` is all ASCII digits.
fn all_digits(b: &[u8], range: std::ops::Range<usize>) -> bool {
    b.get(range)
        .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
}

/// The date `YYYY-MM-DD` at the start of `b`, checked to exist.
fn parse_ymd(b: &[u8]) -> Result<jiff::civil::Date, String> {
    let shaped = all_digits(b, 0..4)
        && b.get(4) == Some(&b'-')
        && all_digits(b, 5..7)
        && b.get(7) == Some(&b'-')
        && all_digits(b, 8..10);
    if !shaped {
        return Err("the date is not YYYY-MM-DD".into());
    }
    let number = |range: std::ops::Range<usize>| {
        b[range]
            .iter()
            .fold(0i16, |acc, &c| acc * 10 + i16::from(c - b'0'))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} does not exist"));
    }
    // Month and day are two digits, so they fit i8.
    jiff::civil::Date::new(year, month as i8, day as i8)
        .map_err(|_| format!("{year:04}-{month:02} has no day {day}"))
}

/// Days since 1970-01-01 of a date.
fn days_since_epoch(date: jiff::civil::Date) -> i64 {
    date.duration_since(jiff::civil::date(1970, 1, 1)).as_secs() / 86_400
}

fn parse_date(s: &str) -> Result<i32, String> {
    if s.len() != 10 {
        return Err(format!("not a date in the form YYYY-MM-DD: {s:?}"));
    }
    let date = parse_ymd(s.as_bytes()).map_err(|e| format!("{e}: {s:?}"))?;
    // Years 0000 to 9999 are well within i32 days.
    Ok(days_since_epoch(date) as i32)
}

fn format_date(days: i32) -> Result<String, String> {
    let days = i64::from(days);
    if !(FIRST_DAY..=LAST_DAY).contains(&days) {
        return Err("outside the years 0000 to 9999 that YYYY-MM-DD can write".into());
    }
    let date = jiff::civil::date(1970, 1, 1)
        .checked_add(jiff::SignedDuration::from_hours(days * 24))
        .map_err(|e| e.to_string())?;
    Ok(date.strftime("%Y-%m-%d").to_string())
}

/// RFC 3339: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`; `t`, `z` and a space
/// for `T` are accepted, as RFC 3339 allows.
fn parse_timestamp(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("not an RFC 3339 timestamp ({why}): {s:?}");
    let b = s.as_bytes();
    parse_ymd(b).map_err(|e| bad(&e))?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return Err(bad("the date and time are not separated by T"));
    }
    let time_shaped = all_digits(b, 11..13)
        && b.get(13) == Some(&b':')
        && all_digits(b, 14..16)
        && b.get(16) == Some(&b':')
        && all_digits(b, 17..19);
    if !time_shaped {
        return Err(bad("the time is not HH:MM:SS"));
    }
    if &b[17..19] == b"60" {
        return Err(bad("a leap second has no microsecond timestamp"));
    }
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        let fraction = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if fraction == 0 {
            return Err(bad("no digits after the decimal point"));
        }
        if b[at + 1..at + 1 + fraction]
            .iter()
            .skip(6)
            .any(|&c| c != b'0')
        {
            return Err(bad(
                "more than 6 fractional digits of seconds (it would be rounded)",
            ));
        }
        at += 1 + fraction;
    }
    match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => {}
        // jiff takes offsets up to 25:59:59; RFC 3339's are at most 23:59.
        Some(b'+' | b'-')
            if at + 6 == b.len()
                && all_digits(b, at + 1..at + 3)
                && &b[at + 1..at + 3] <= b"23".as_slice()
                && b[at + 3] == b':'
                && all_digits(b, at + 4..at + 6)
                && &b[at + 4..at + 6] <= b"59".as_slice() => {}
        Some(b'+' | b'-') => return Err(bad("the offset is not +HH:MM")),
        None => return Err(bad("no UTC offset; without one the instant is unknown")),
        _ => return Err(bad("unexpected characters after the time")),
    }
    let instant: jiff::Timestamp = s.parse().map_err(|e: jiff::Error| bad(&e.to_string()))?;
    let us = instant.as_microsecond();
    if !(FIRST_DAY * MICROS_PER_DAY..(LAST_DAY + 1) * MICROS_PER_DAY).contains(&us) {
        return Err(bad("outside the years 0000 to 9999 once converted to UTC"));
    }
    Ok(us)
}

fn format_timestamp(us: i64) -> Result<String, String> {
    if !(FIRST_DAY * MICROS_PER_DAY..(LAST_DAY + 1) * MICROS_PER_DAY).contains(&us) {
        return Err("outside the years 0000 to 9999 that RFC 3339 can write".into());
    }
    let instant = jiff::Timestamp::from_microsecond(us).map_err(|e| e.to_string())?;
    Ok(instant.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string())
}

// ---------------------------------------------------------------------------------------
// JSON (syntax only, RFC 8259)

/// Checks that `s` is exactly one JSON document, without building it: `serde_json`
/// skips a value it is asked to ignore without recursing, so deep nesting cannot
/// overflow the stack.
fn check_json(s: &str) -> Result<(), String> {
    let mut document = serde_json::Deserializer::from_str(s);
    serde::de::IgnoredAny::deserialize(&mut document).map_err(|e| e.to_string())?;
    document.end().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn roundtrip(value: Value, from: Kind, to: Kind) -> Value {
        let there = cast(value, from, to).unwrap();
        cast(there, to, from).unwrap()
    }

    #[test]
    fn calendar_math_matches_known_dates() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2024-01-01"), Ok(19_723));
        assert_eq!(parse_date("2000-03-01"), Ok(11_017));
        assert_eq!(parse_date("1969-12-31"), Ok(-1));
        assert_eq!(parse_date("0000-01-01"), Ok(FIRST_DAY as i32));
        assert_eq!(parse_date("9999-12-31"), Ok(LAST_DAY as i32));
        assert_eq!(format_date(19_723).as_deref(), Ok("2024-01-01"));
        assert_eq!(format_date(FIRST_DAY as i32).as_deref(), Ok("0000-01-01"));
        for days in (FIRST_DAY..=LAST_DAY).step_by(97) {
            let days = days as i32;
            assert_eq!(parse_date(&format_date(days).unwrap()), Ok(days));
        }
    }

    #[test]
    fn dates_that_do_not_exist_are_refused() {
        assert_eq!(parse_date("2024-02-29"), Ok(19_782));
        assert!(parse_date("2023-02-29").is_err());
        assert!(parse_date("1900-02-29").is_err());
        assert!(parse_date("2000-02-29").is_ok());
        assert!(parse_date("2024-13-01").is_err());
        assert!(parse_date("2024-04-31").is_err());
        assert!(parse_date("2024-04-00").is_err());
        assert!(parse_date("2024-4-1").is_err());
        assert!(parse_date("2024-04-01 ").is_err());
        assert!(parse_date("+024-04-01").is_err());
        assert_eq!(format_date(0), Ok("1970-01-01".into()));
        assert!(format_date(i32::MAX).is_err());
        assert!(format_date(i32::MIN).is_err());
    }

    #[test]
    fn timestamps_are_normalised_to_utc_microseconds() {
        let t = 1_704_164_645_123_456;
        assert_eq!(parse_timestamp("2024-01-02T03:04:05.123456Z"), Ok(t));
        assert_eq!(parse_timestamp("2024-01-02T04:04:05.123456+01:00"), Ok(t));
        assert_eq!(parse_timestamp("2024-01-01t22:34:05.123456-04:30"), Ok(t));
        assert_eq!(parse_timestamp("2024-01-02 03:04:05.123456000z"), Ok(t));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05Z"), Ok(t - 123_456));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05.1Z"), Ok(t - 23_456));
        assert_eq!(
            format_timestamp(t),
            Ok("2024-01-02T03:04:05.123456Z".into())
        );
        assert_eq!(
            format_timestamp(-1),
            Ok("1969-12-31T23:59:59.999999Z".into())
        );
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.999999Z"), Ok(-1));
    }

    #[test]
    fn timestamps_that_would_lose_information_are_refused() {
        for bad in [
            "2024-01-02T03:04:05.1234567Z",
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05.Z",
            "2024-01-02T03:04:60Z",
            "2024-01-02T24:00:00Z",
            "2024-01-02T03:04:05+0100",
            "2024-01-02T03:04:05+24:00",
            "2024-01-02T03:04:05-00:60",
            "2024-01-02T03:04:05+01:00 ",
            "2024-01-02",
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
        assert!(parse_timestamp("2024-01-02T03:04:05.1234560Z").is_ok());
        assert!(format_timestamp(i64::MAX).is_err());
        assert!(format_timestamp(i64::MIN).is_err());
    }

    #[test]
    fn decimal_text_is_canonicalised_keeping_the_scale() {
        for (input, canonical) in [
            ("12.50", "12.50"),
            ("+12.50", "12.50"),
            ("007.5", "7.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("-0.00", "0.00"),
            ("-0", "0"),
            ("0", "0"),
            ("-12.50", "-12.50"),
            ("NaN", "NaN"),
            ("-Infinity", "-Infinity"),
        ] {
            assert_eq!(
                canonical_decimal(input).as_deref(),
                Ok(canonical),
                "{input}"
            );
        }
        for bad in [
            "", ".", "-", "1e5", "1.2.3", " 1", "1,5", "nan", "0x10", "١",
        ] {
            assert!(canonical_decimal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decimals_convert_to_integers_only_when_integral() {
        assert_eq!(decimal_to_integer("12.00"), Ok(12));
        assert_eq!(decimal_to_integer("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(decimal_to_integer("-0.0"), Ok(0));
        assert!(decimal_to_integer("12.01").is_err());
        assert!(decimal_to_integer("9223372036854775808").is_err());
        assert!(decimal_to_integer("NaN").is_err());
    }

    #[test]
    fn floats_expand_to_their_exact_decimal() {
        assert_eq!(exact_decimal(0.0), "0");
        assert_eq!(exact_decimal(12.5), "12.5");
        assert_eq!(exact_decimal(-3.0), "-3");
        assert_eq!(
            exact_decimal(0.1),
            "0.1000000000000000055511151231257827021181583404541015625"
        );
        assert_eq!(exact_decimal(2f64.powi(70)), "1180591620717411303424");
        assert_eq!(exact_decimal(f64::MAX).len(), 309);
        assert!(exact_decimal(f64::from_bits(1)).starts_with("0.000"));
        assert_eq!(decimal_to_real("12.50"), Ok(12.5));
        assert!(decimal_to_real("0.1").is_err());
        assert!(
            decimal_to_real("0.1000000000000000055511151231257827021181583404541015625").is_ok()
        );
        assert!(decimal_to_real("1e400").is_err());
        assert!(decimal_to_real(&"9".repeat(400)).is_err());
        assert!(real_to_decimal(-0.0).is_err());
        assert!(real_to_decimal(f64::NAN).is_err());
    }

    #[test]
    fn integers_and_floats_convert_only_exactly() {
        assert_eq!(integer_to_real(1 << 53), Ok(9_007_199_254_740_992.0));
        assert!(integer_to_real((1 << 53) + 1).is_err());
        assert!(integer_to_real(i64::MAX).is_err());
        assert_eq!(integer_to_real(i64::MIN), Ok(-9_223_372_036_854_775_808.0));
        assert_eq!(real_to_integer(-9_223_372_036_854_775_808.0), Ok(i64::MIN));
        assert!(real_to_integer(9_223_372_036_854_775_808.0).is_err());
        assert!(real_to_integer(0.5).is_err());
        assert!(real_to_integer(-0.0).is_err());
        assert!(real_to_integer(f64::INFINITY).is_err());
    }

    #[test]
    fn uuid_text_is_hyphenated_and_case_insensitive_on_parse() {
        let u = parse_uuid("123E4567-e89b-12d3-A456-426614174000").unwrap();
        assert_eq!(format_uuid(&u), "123e4567-e89b-12d3-a456-426614174000");
        for bad in [
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400",
            "123e4567-e89b-12d3-a456-4266141740000",
            "g23e4567-e89b-12d3-a456-426614174000",
            "123e4567+e89b-12d3-a456-426614174000",
            "{23e4567-e89b-12d3-a456-426614174000}",
            "123e4567-e89b-12d3-a456-42661417400é",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_text_must_be_one_document() {
        for good in [
            "{}",
            "[]",
            " {\"a\": [1, -2.5e+3, true, false, null, \"x\\u00e9\\n\"]} ",
            "0",
            "\"s\"",
            "[[[[[]]]]]",
            "{\"a\":{\"b\":{}} , \"c\" : []}",
        ] {
            assert_eq!(check_json(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "{",
            "}",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "tru",
            "[1] 2",
            "{a:1}",
            "\"\t\"",
            "\"\\x\"",
            "[1 2]",
            "{\"a\":1]",
            "NaN",
        ] {
            assert!(check_json(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(check_json(&deep), Ok(()));
    }

    #[test]
    fn null_passes_every_cast_and_a_wrong_kind_is_refused() {
        assert_eq!(cast(Value::Null, Kind::Text, Kind::Uuid), Ok(Value::Null));
        let e = cast(Value::Integer(1), Kind::Text, Kind::Uuid).unwrap_err();
        assert_eq!(e.found, Kind::Integer);
        assert!(cast(Value::Integer(2), Kind::Integer, Kind::Bool).is_err());
        assert!(cast(Value::Blob(vec![0xff]), Kind::Blob, Kind::Text).is_err());
    }

    #[test]
    fn can_cast_agrees_with_what_cast_implements() {
        let samples = [
            Value::Integer(1),
            Value::Real(1.0),
            Value::Text("1".into()),
            Value::Blob(b"1".to_vec()),
            Value::Decimal("1".into()),
            Value::Bool(true),
            Value::Json("1".into()),
            Value::Timestamp(1),
            Value::Date(1),
            Value::Uuid([1; 16]),
        ];
        let unsupported = "no exact cast exists between these kinds";
        for from in &samples {
            let from_kind = Kind::of(from).unwrap();
            for to in &samples {
                let to_kind = Kind::of(to).unwrap();
                assert_eq!(
                    Kind::can_cast(from_kind, to_kind),
                    Kind::can_cast(to_kind, from_kind)
                );
                let result = cast(from.clone(), from_kind, to_kind);
                let implemented = !matches!(&result, Err(e) if e.why == unsupported);
                assert_eq!(
                    implemented,
                    Kind::can_cast(from_kind, to_kind),
                    "{from_kind} -> {to_kind}: {result:?}"
                );
            }
        }
    }

    fn timestamp_in_range() -> impl Strategy<Value = i64> {
        FIRST_DAY * MICROS_PER_DAY..(LAST_DAY + 1) * MICROS_PER_DAY
    }

    /// Canonical decimal text: no `+`, no leading zeros, no negative zero.
    fn decimal_text() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            "0|[1-9][0-9]{0,25}",
            proptest::option::of("[0-9]{1,20}"),
        )
            .prop_map(|(negative, int, frac)| {
                let zero =
                    int == "0" && frac.as_deref().is_none_or(|f| f.bytes().all(|b| b == b'0'));
                let sign = if negative && !zero { "-" } else { "" };
                match frac {
                    Some(f) => format!("{sign}{int}.{f}"),
                    None => format!("{sign}{int}"),
                }
            })
    }

    proptest! {
        #[test]
        fn uuid_survives_text(u in any::<[u8; 16]>()) {
            prop_assert_eq!(roundtrip(Value::Uuid(u), Kind::Uuid, Kind::Text), Value::Uuid(u));
        }

        #[test]
        fn integer_survives_text_and_decimal(i in any::<i64>()) {
            prop_assert_eq!(roundtrip(Value::Integer(i), Kind::Integer, Kind::Text), Value::Integer(i));
            prop_assert_eq!(roundtrip(Value::Integer(i), Kind::Integer, Kind::Decimal), Value::Integer(i));
        }

        #[test]
        fn integer_survives_real_when_accepted(i in any::<i64>(), small in -(1i64 << 53)..=(1i64 << 53)) {
            prop_assert_eq!(roundtrip(Value::Integer(small), Kind::Integer, Kind::Real), Value::Integer(small));
            if let Ok(r) = cast(Value::Integer(i), Kind::Integer, Kind::Real) {
                prop_assert_eq!(cast(r, Kind::Real, Kind::Integer), Ok(Value::Integer(i)));
            }
        }

        #[test]
        fn real_survives_decimal(bits in any::<u64>()) {
            let r = f64::from_bits(bits);
            match cast(Value::Real(r), Kind::Real, Kind::Decimal) {
                Ok(d) => prop_assert_eq!(cast(d, Kind::Decimal, Kind::Real), Ok(Value::Real(r))),
                Err(_) => prop_assert!(!r.is_finite() || bits == 1 << 63),
            }
        }

        #[test]
        fn real_survives_integer_when_accepted(bits in any::<u64>(), i in -(1i64 << 53)..=(1i64 << 53)) {
            let r = f64::from_bits(bits);
            if let Ok(v) = cast(Value::Real(r), Kind::Real, Kind::Integer) {
                prop_assert_eq!(cast(v, Kind::Integer, Kind::Real), Ok(Value::Real(r)));
            }
            let r = i as f64;
            prop_assert_eq!(roundtrip(Value::Real(r), Kind::Real, Kind::Integer), Value::Real(r));
        }

        #[test]
        fn decimal_survives_text_exactly(d in decimal_text()) {
            prop_assert_eq!(roundtrip(Value::Decimal(d.clone()), Kind::Decimal, Kind::Text), Value::Decimal(d.clone()));
            prop_assert_eq!(roundtrip(Value::Text(d.clone()), Kind::Text, Kind::Decimal), Value::Text(d));
        }

        #[test]
        fn decimal_to_real_is_refused_or_exact(d in decimal_text()) {
            let minimal = |s: &str| match parse_decimal(s) {
                Ok(DecimalText::Finite(d)) => {
                    let (neg, int, frac) = d.minimal();
                    (neg, int.to_owned(), frac.to_owned())
                }
                _ => unreachable!(),
            };
            if let Ok(Value::Real(r)) = cast(Value::Decimal(d.clone()), Kind::Decimal, Kind::Real) {
                let Ok(Value::Decimal(back)) = cast(Value::Real(r), Kind::Real, Kind::Decimal) else {
                    panic!("a real from a decimal must convert back");
                };
                prop_assert_eq!(minimal(&back), minimal(&d));
            }
        }

        #[test]
        fn decimal_to_integer_is_refused_or_exact(d in decimal_text()) {
            if let Ok(Value::Integer(i)) = cast(Value::Decimal(d.clone()), Kind::Decimal, Kind::Integer) {
                let whole = d.split('.').next().unwrap_or_default().parse::<i64>().unwrap();
                prop_assert_eq!(i, whole);
                prop_assert!(d.split('.').nth(1).unwrap_or("").bytes().all(|b| b == b'0'));
            }
        }

        #[test]
        fn timestamp_survives_text(us in timestamp_in_range()) {
            prop_assert_eq!(roundtrip(Value::Timestamp(us), Kind::Timestamp, Kind::Text), Value::Timestamp(us));
        }

        #[test]
        fn timestamp_text_with_any_offset_means_the_same_instant(us in timestamp_in_range(), offset_min in -(23 * 60 + 59)..=(23 * 60 + 59i64)) {
            // Write the instant in local time at `offset_min` and parse it back.
            let local = us + offset_min * 60_000_000;
            prop_assume!((FIRST_DAY * MICROS_PER_DAY..(LAST_DAY + 1) * MICROS_PER_DAY).contains(&local));
            let text = format_timestamp(local).unwrap();
            let sign = if offset_min < 0 { '-' } else { '+' };
            let text = format!(
                "{}{sign}{:02}:{:02}",
                text.trim_end_matches('Z'),
                offset_min.abs() / 60,
                offset_min.abs() % 60
            );
            prop_assert_eq!(parse_timestamp(&text), Ok(us));
        }

        #[test]
        fn date_survives_text(days in (FIRST_DAY as i32)..=(LAST_DAY as i32)) {
            prop_assert_eq!(roundtrip(Value::Date(days), Kind::Date, Kind::Text), Value::Date(days));
        }

        #[test]
        fn text_survives_blob(s in ".*") {
            prop_assert_eq!(roundtrip(Value::Text(s.clone()), Kind::Text, Kind::Blob), Value::Text(s));
        }

        #[test]
        fn blob_survives_text_when_utf8(b in proptest::collection::vec(any::<u8>(), 0..16)) {
            let utf8 = std::str::from_utf8(&b).is_ok();
            match cast(Value::Blob(b.clone()), Kind::Blob, Kind::Text) {
                Ok(t) => {
                    prop_assert!(utf8);
                    prop_assert_eq!(cast(t, Kind::Text, Kind::Blob), Ok(Value::Blob(b)));
                }
                Err(_) => prop_assert!(!utf8),
            }
        }

        #[test]
        fn casting_never_panics_on_arbitrary_text(s in ".{0,40}") {
            for to in [Kind::Uuid, Kind::Integer, Kind::Decimal, Kind::Json, Kind::Timestamp, Kind::Date, Kind::Blob] {
                if let Ok(v) = cast(Value::Text(s.clone()), Kind::Text, to) {
                    // Whatever text is accepted, its value writes back as text that
                    // parses to the same value.
                    let back = cast(v.clone(), to, Kind::Text).unwrap();
                    prop_assert_eq!(cast(back, Kind::Text, to), Ok(v));
                }
            }
        }
    }
}
