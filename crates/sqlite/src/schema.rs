//! Metadata tables, table introspection and capture triggers.
//!
//! Everything Concord adds to a user's database is named with the `__concord_` prefix,
//! so `untrack` can find and remove every trace.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::error::TrackError;

/// Prefix of every trigger Concord installs.
pub const TRIGGER_PREFIX: &str = "__concord_trg_";

/// Version of the metadata layout written by this build.
pub(crate) const FORMAT_VERSION: i64 = 1;

/// Columns of a change mask: one bit per column, 63 columns per mask integer so the
/// sign bit is never used.
pub(crate) const COLUMNS_PER_MASK: usize = 63;

pub(crate) const METADATA_DDL: &str = "
CREATE TABLE IF NOT EXISTS __concord_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __concord_tables(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tracked INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS __concord_columns(
    tbl INTEGER NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    declared_type TEXT NOT NULL,
    key_position INTEGER,
    PRIMARY KEY (tbl, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __concord_origins(
    id INTEGER PRIMARY KEY,
    node_id BLOB NOT NULL UNIQUE,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS __concord_pending(
    id INTEGER PRIMARY KEY,
    tbl INTEGER NOT NULL,
    op INTEGER NOT NULL,
    ncols INTEGER NOT NULL,
    at INTEGER NOT NULL,
    m0 INTEGER,
    k0
);
CREATE TABLE IF NOT EXISTS __concord_applying(x);
CREATE TABLE IF NOT EXISTS __concord_rows(
    tbl INTEGER NOT NULL,
    pk BLOB NOT NULL,
    cl INTEGER NOT NULL,
    clock BLOB NOT NULL,
    PRIMARY KEY (tbl, pk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __concord_log(
    pos INTEGER PRIMARY KEY,
    origin INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    tbl INTEGER NOT NULL,
    pk BLOB NOT NULL,
    cl INTEGER NOT NULL,
    body BLOB NOT NULL,
    txn_end INTEGER NOT NULL,
    UNIQUE (origin, seq)
);
CREATE TABLE IF NOT EXISTS __concord_conflicts(
    id INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    pk BLOB NOT NULL,
    key_text TEXT NOT NULL,
    kind TEXT NOT NULL,
    column_name TEXT,
    local_value,
    local_version TEXT NOT NULL,
    remote_value,
    remote_version TEXT NOT NULL,
    winner TEXT NOT NULL
);
";

/// Operation codes written by the triggers into `__concord_pending.op`.
pub(crate) const OP_INSERT: i64 = 1;
pub(crate) const OP_UPDATE: i64 = 2;
pub(crate) const OP_DELETE: i64 = 3;

/// SQLite's type affinity of a declared column type (section 3.1 of the SQLite docs on
/// datatypes), used to refuse values a column cannot hold faithfully.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub(crate) fn of(declared: &str) -> Self {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

/// A tracked column.
#[derive(Clone, Debug)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Declared type, as written in `CREATE TABLE`.
    pub declared_type: String,
    pub(crate) affinity: Affinity,
}

/// A tracked table as Concord knows it.
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub(crate) id: i64,
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<ColumnInfo>,
    /// Positions of the primary-key columns, in key order.
    pub key_columns: Vec<usize>,
    pub(crate) position_of: HashMap<String, usize>,
    pub(crate) select_sql: String,
}

pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl TableInfo {
    /// Reads a table's columns and primary key from the database.
    pub(crate) fn introspect(conn: &Connection, name: &str) -> Result<Self, TrackError> {
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(sql) = sql else {
            return Err(TrackError::NoSuchTable(name.to_owned()));
        };
        if name.starts_with("__concord_") || name.starts_with("sqlite_") {
            return Err(TrackError::Unsupported(
                name.to_owned(),
                "it is an internal table",
            ));
        }
        if sql
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL")
        {
            return Err(TrackError::Unsupported(
                name.to_owned(),
                "virtual tables are not supported",
            ));
        }
        let mut stmt =
            conn.prepare("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")?;
        let mut columns = Vec::new();
        let mut keys: Vec<(i64, usize)> = Vec::new();
        let rows = stmt.query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (col, declared_type, pk) = row?;
            if pk > 0 {
                keys.push((pk, columns.len()));
            }
            columns.push(ColumnInfo {
                affinity: Affinity::of(&declared_type),
                name: col,
                declared_type,
            });
        }
        if keys.is_empty() {
            return Err(TrackError::NoPrimaryKey(name.to_owned()));
        }
        keys.sort();
        let mut info = TableInfo {
            id: 0,
            name: name.to_owned(),
            position_of: columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect(),
            columns,
            key_columns: keys.into_iter().map(|(_, p)| p).collect(),
            select_sql: String::new(),
        };
        info.select_sql = info.select_row_sql();
        Ok(info)
    }

    pub(crate) fn mask_count(&self) -> usize {
        self.columns.len().div_ceil(COLUMNS_PER_MASK).max(1)
    }

    /// `"a" IS ?1 AND "b" IS ?2`: the row-by-key predicate, parameters in key order
    /// starting at `first`.
    pub(crate) fn key_predicate(&self, first: usize) -> String {
        self.key_columns
            .iter()
            .enumerate()
            .map(|(i, &p)| format!("{} IS ?{}", quote(&self.columns[p].name), first + i))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn select_row_sql(&self) -> String {
        let cols = self
            .columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {cols} FROM {} WHERE {}",
            quote(&self.name),
            self.key_predicate(1)
        )
    }

    /// The capture triggers. They use only SQL understood by old SQLite versions and no
    /// functions beyond the core ones, so any process can write the table.
    pub(crate) fn trigger_sql(&self) -> Vec<String> {
        let id = self.id;
        let table = quote(&self.name);
        let ncols = self.columns.len();
        let silent = "NOT EXISTS (SELECT 1 FROM __concord_applying)";
        let now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
        let key_cols = (0..self.key_columns.len())
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let key_vals = |side: &str| {
            self.key_columns
                .iter()
                .map(|&p| format!("{side}.{}", quote(&self.columns[p].name)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let same_key = self
            .key_columns
            .iter()
            .map(|&p| {
                let c = quote(&self.columns[p].name);
                format!("NEW.{c} IS OLD.{c}")
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let masks: Vec<String> = (0..self.mask_count())
            .map(|m| {
                let start = m * COLUMNS_PER_MASK;
                let end = (start + COLUMNS_PER_MASK).min(ncols);
                (start..end)
                    .map(|i| {
                        let c = quote(&self.columns[i].name);
                        format!(
                            "(CASE WHEN NEW.{c} IS NOT OLD.{c} THEN {} ELSE 0 END)",
                            1i64 << (i - start)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        let mask_cols = (0..masks.len())
            .map(|m| format!("m{m}"))
            .collect::<Vec<_>>()
            .join(", ");
        let pending = format!("INSERT INTO __concord_pending(tbl, op, ncols, at, {key_cols}");
        let p = TRIGGER_PREFIX;
        vec![
            format!(
                "CREATE TRIGGER {p}{id}_ins AFTER INSERT ON {table} WHEN {silent} BEGIN \
                 {pending}) VALUES ({id}, {OP_INSERT}, {ncols}, {now}, {}); END",
                key_vals("NEW")
            ),
            format!(
                "CREATE TRIGGER {p}{id}_upd AFTER UPDATE ON {table} WHEN {silent} AND {same_key} BEGIN \
                 {pending}, {mask_cols}) VALUES ({id}, {OP_UPDATE}, {ncols}, {now}, {}, {}); END",
                key_vals("NEW"),
                masks.join(", ")
            ),
            format!(
                "CREATE TRIGGER {p}{id}_rekey AFTER UPDATE ON {table} WHEN {silent} AND NOT ({same_key}) BEGIN \
                 {pending}) VALUES ({id}, {OP_DELETE}, {ncols}, {now}, {}); \
                 {pending}) VALUES ({id}, {OP_INSERT}, {ncols}, {now}, {}); END",
                key_vals("OLD"),
                key_vals("NEW")
            ),
            format!(
                "CREATE TRIGGER {p}{id}_del AFTER DELETE ON {table} WHEN {silent} BEGIN \
                 {pending}) VALUES ({id}, {OP_DELETE}, {ncols}, {now}, {}); END",
                key_vals("OLD")
            ),
        ]
    }

    pub(crate) fn trigger_names(id: i64) -> [String; 4] {
        let p = TRIGGER_PREFIX;
        [
            format!("{p}{id}_ins"),
            format!("{p}{id}_upd"),
            format!("{p}{id}_rekey"),
            format!("{p}{id}_del"),
        ]
    }
}

/// Adds `k{i}` and `m{i}` columns to the pending table until it can hold `keys` key
/// columns and `masks` mask integers.
pub(crate) fn widen_pending(
    conn: &Connection,
    keys: usize,
    masks: usize,
) -> Result<(), rusqlite::Error> {
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('__concord_pending')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (prefix, count) in [("k", keys), ("m", masks)] {
        for i in 0..count {
            let col = format!("{prefix}{i}");
            if !existing.contains(&col) {
                conn.execute_batch(&format!("ALTER TABLE __concord_pending ADD COLUMN {col}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlite_rules() {
        assert_eq!(Affinity::of("BIGINT"), Affinity::Integer);
        assert_eq!(Affinity::of("varchar(20)"), Affinity::Text);
        assert_eq!(Affinity::of(""), Affinity::Blob);
        assert_eq!(Affinity::of("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(Affinity::of("DECIMAL(12,2)"), Affinity::Numeric);
    }

    #[test]
    fn identifiers_with_quotes_are_escaped() {
        assert_eq!(quote("we\"ird"), "\"we\"\"ird\"");
    }
}
