//! Metadata tables, table introspection and capture triggers.
//!
//! Everything Concord adds to a user's database is named with the `__concord_` prefix,
//! so `untrack` can find and remove every trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};

use concord_store::TrackError;

/// Prefix of every trigger Concord installs.
pub const TRIGGER_PREFIX: &str = "__concord_trg_";

/// Version of the metadata layout written by this build. A file of an older version is
/// upgraded when opened ([`migrate`]); one of a newer version is refused.
///
/// - 1: the first release.
/// - 2: `__concord_failures.body` keeps each set-aside change whole, so it can be
///   retried once the schema allows.
/// - 3: `__concord_applying` names the row Concord is writing (`tbl`, `k0…`) and the
///   capture triggers are silent only for that row, so writes the database makes while
///   Concord applies (user triggers, defaults) are captured.
pub(crate) const FORMAT_VERSION: i64 = 3;

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
-- No constraints on the pending table: a constraint the triggers' INSERT could violate
-- makes SQLite keep a statement journal for every application write (measured: the
-- update overhead fell from 1.8x to 1.5x without them). Only the triggers write it.
CREATE TABLE IF NOT EXISTS __concord_pending(
    id INTEGER PRIMARY KEY,
    tbl INTEGER,
    op INTEGER,
    ncols INTEGER,
    at INTEGER,
    m0 INTEGER,
    k0
);
-- One row while Concord applies: the table and key of the row its current statement
-- writes, which only that statement's own capture triggers stay silent for (tbl = -1:
-- every row, while it writes tables without triggers of their own).
CREATE TABLE IF NOT EXISTS __concord_applying(tbl INTEGER, k0);
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
CREATE TABLE IF NOT EXISTS __concord_failures(
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    key_text TEXT NOT NULL,
    error TEXT NOT NULL,
    at INTEGER NOT NULL,
    body BLOB
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

/// `__concord_applying.tbl` while Concord writes a table with no triggers of its own:
/// no other write can happen then, and the capture triggers are silent for every row.
pub(crate) const MARK_ALL: i64 = -1;

/// Operation codes written by the triggers into `__concord_pending.op`.
pub(crate) const OP_INSERT: i64 = 1;
pub(crate) const OP_UPDATE: i64 = 2;
pub(crate) const OP_DELETE: i64 = 3;
/// A row that an `INSERT OR REPLACE` / `UPDATE OR REPLACE` may remove through a UNIQUE
/// constraint. SQLite fires no delete trigger for such removals, so a BEFORE trigger
/// records every row the new values collide with; capture logs a delete for those that
/// are really gone.
pub(crate) const OP_EVICT: i64 = 4;
/// An UPDATE that changed the primary key: the new key is in `k*`, the old one in `o*`.
/// Capture logs a delete of the old key and an insert of the new one.
pub(crate) const OP_REKEY: i64 = 5;

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
#[derive(Debug)]
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
    /// Column positions of each UNIQUE constraint other than the primary key.
    pub(crate) unique_sets: Vec<Vec<usize>>,
    /// Whether the table has triggers of its own (not Concord's): they may write while
    /// Concord applies a change, and those writes are this node's.
    pub(crate) user_triggers: bool,
    /// Per column: whether it has a default other than NULL, which an INSERT naming
    /// fewer columns fills in.
    pub(crate) has_default: Vec<bool>,
    /// `UPDATE __concord_applying SET tbl = ?1, k0 = ?2, …`: names the row Concord's next
    /// statement writes.
    pub(crate) mark_sql: String,
    /// Apply statements by kind and column set, built once: formatting SQL for every
    /// change was a measurable share of apply time.
    sql_cache: Mutex<HashMap<(u8, u64), Arc<str>>>,
}

pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl TableInfo {
    /// Reads a table's columns and primary key from the database, refusing what capture
    /// cannot track.
    pub(crate) fn introspect(conn: &Connection, name: &str) -> Result<Self, TrackError> {
        Self::read(conn, name, true)
    }

    /// Reads a table's columns and primary key only to read its rows (`concord verify`):
    /// a key column that may hold NULL is accepted, since nothing is tracked.
    pub(crate) fn introspect_for_reading(
        conn: &Connection,
        name: &str,
    ) -> Result<Self, TrackError> {
        Self::read(conn, name, false)
    }

    fn read(conn: &Connection, name: &str, to_track: bool) -> Result<Self, TrackError> {
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
        let mut stmt = conn.prepare(
            "SELECT name, type, pk, \"notnull\", dflt_value IS NOT NULL AND upper(dflt_value) <> 'NULL' \
             FROM pragma_table_info(?1) ORDER BY cid",
        )?;
        let mut columns = Vec::new();
        let mut keys: Vec<(i64, usize)> = Vec::new();
        let mut nullable_keys = Vec::new();
        let mut has_default = Vec::new();
        let rows = stmt.query_map([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })?;
        for row in rows {
            let (col, declared_type, pk, not_null, default) = row?;
            has_default.push(default);
            if pk > 0 {
                keys.push((pk, columns.len()));
                if !not_null {
                    nullable_keys.push(col.clone());
                }
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
        // SQLite lets a primary-key column of a rowid table hold NULL (a historical
        // quirk), and NULLs never collide, so several rows could share one key. Only an
        // INTEGER PRIMARY KEY (the rowid) and WITHOUT ROWID keys are NULL-free by
        // construction; any other key column must be declared NOT NULL.
        let rowid_alias = keys.len() == 1
            && columns[keys[0].1]
                .declared_type
                .eq_ignore_ascii_case("INTEGER");
        let without_rowid: bool = conn
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE name = ?1 AND schema = 'main'",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        if to_track
            && !rowid_alias
            && !without_rowid
            && let Some(column) = nullable_keys.into_iter().next()
        {
            return Err(TrackError::NullableKey(name.to_owned(), column));
        }
        keys.sort();
        let unique_sets = unique_sets(conn, name)?;
        let user_triggers = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE \
             AND name NOT LIKE '\\_\\_concord\\_%' ESCAPE '\\'",
            [name],
            |r| r.get::<_, i64>(0),
        )? > 0;
        let mut info = TableInfo {
            unique_sets,
            user_triggers,
            has_default,
            mark_sql: String::new(),
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
            sql_cache: Mutex::new(HashMap::new()),
        };
        info.select_sql = info.select_row_sql();
        info.mark_sql = format!(
            "UPDATE __concord_applying SET tbl = ?1, {}",
            (0..info.key_columns.len())
                .map(|i| format!("k{i} = ?{}", i + 2))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(info)
    }

    /// Whether an INSERT naming the key and `columns` leaves out a column the database
    /// fills with a default other than NULL.
    pub(crate) fn defaults_left_out(&self, columns: &[usize]) -> bool {
        self.has_default
            .iter()
            .enumerate()
            .any(|(i, &default)| default && !columns.contains(&i) && !self.key_columns.contains(&i))
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

    /// A statement of `kind` over `columns`, from the cache when the columns fit a mask.
    fn cached_sql(&self, kind: u8, columns: &[usize], build: impl FnOnce() -> String) -> Arc<str> {
        if columns.iter().any(|&c| c >= 64) {
            return build().into();
        }
        let mask = columns.iter().fold(0u64, |m, &c| m | (1 << c));
        let mut cache = self
            .sql_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry((kind, mask))
            .or_insert_with(|| build().into())
            .clone()
    }

    /// `DELETE FROM t WHERE <key>`, key parameters from 1.
    pub(crate) fn delete_sql(&self) -> Arc<str> {
        self.cached_sql(0, &[], || {
            format!(
                "DELETE FROM {} WHERE {}",
                quote(&self.name),
                self.key_predicate(1)
            )
        })
    }

    /// `UPDATE t SET c1 = ?1, … WHERE <key>`, columns in the given (ascending) order,
    /// then the key.
    pub(crate) fn update_sql(&self, columns: &[usize]) -> Arc<str> {
        self.cached_sql(1, columns, || {
            let sets = columns
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("{} = ?{}", quote(&self.columns[c].name), i + 1))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "UPDATE {} SET {sets} WHERE {}",
                quote(&self.name),
                self.key_predicate(columns.len() + 1)
            )
        })
    }

    /// `INSERT INTO t (<key columns>, c1, …) VALUES (…)`: the key first, then `columns`.
    pub(crate) fn insert_sql(&self, columns: &[usize]) -> Arc<str> {
        self.cached_sql(2, columns, || {
            let all: Vec<usize> = self
                .key_columns
                .iter()
                .copied()
                .chain(columns.iter().copied())
                .collect();
            let names = all
                .iter()
                .map(|&i| quote(&self.columns[i].name))
                .collect::<Vec<_>>()
                .join(", ");
            let marks = (1..=all.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "INSERT INTO {} ({names}) VALUES ({marks})",
                quote(&self.name)
            )
        })
    }

    /// The capture triggers. They use only SQL understood by old SQLite versions and no
    /// functions beyond the core ones, so any process can write the table.
    pub(crate) fn trigger_sql(&self) -> Vec<String> {
        let id = self.id;
        let table = quote(&self.name);
        let ncols = self.columns.len();
        // Silent only for the row Concord's current statement writes, or for every row
        // while it writes tables with no triggers of their own (`tbl` = -1; nothing else
        // can write then); see apply.rs. Whatever else the database writes meanwhile is
        // captured.
        let silent = |side: &str| {
            let keys = self
                .key_columns
                .iter()
                .enumerate()
                .map(|(i, &p)| format!(" AND k{i} IS {side}.{}", quote(&self.columns[p].name)))
                .collect::<String>();
            format!(
                "NOT EXISTS (SELECT 1 FROM __concord_applying WHERE tbl = {MARK_ALL} OR (tbl = {id}{keys}))"
            )
        };
        let (silent_new, silent_old) = (silent("NEW"), silent("OLD"));
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
        let old_cols = (0..self.key_columns.len())
            .map(|i| format!("o{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let old_vals = self
            .key_columns
            .iter()
            .map(|&p| {
                format!(
                    "CASE WHEN {same_key} THEN NULL ELSE OLD.{} END",
                    quote(&self.columns[p].name)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let pending = format!("INSERT INTO __concord_pending(tbl, op, ncols, at, {key_cols}");
        let p = TRIGGER_PREFIX;
        let mut triggers = vec![
            format!(
                "CREATE TRIGGER {p}{id}_ins AFTER INSERT ON {table} WHEN {silent_new} BEGIN \
                 {pending}) VALUES ({id}, {OP_INSERT}, {ncols}, {now}, {}); END",
                key_vals("NEW")
            ),
            // One update trigger for both cases: a second trigger for key changes cost
            // its WHEN test on every update (measured ~0.15x of an update).
            format!(
                "CREATE TRIGGER {p}{id}_upd AFTER UPDATE ON {table} WHEN {silent_new} BEGIN \
                 {pending}, {old_cols}, {mask_cols}) VALUES ({id}, \
                 CASE WHEN {same_key} THEN {OP_UPDATE} ELSE {OP_REKEY} END, {ncols}, {now}, {}, {}, {}); END",
                key_vals("NEW"),
                old_vals,
                masks.join(", ")
            ),
            format!(
                "CREATE TRIGGER {p}{id}_del AFTER DELETE ON {table} WHEN {silent_old} BEGIN \
                 {pending}) VALUES ({id}, {OP_DELETE}, {ncols}, {now}, {}); END",
                key_vals("OLD")
            ),
        ];
        if !self.unique_sets.is_empty() {
            let collides = self
                .unique_sets
                .iter()
                .map(|set| {
                    let terms = set
                        .iter()
                        .map(|&i| {
                            let c = quote(&self.columns[i].name);
                            format!("{c} = NEW.{c}")
                        })
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    format!("({terms})")
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let own_key = self
                .key_columns
                .iter()
                .map(|&p| quote(&self.columns[p].name))
                .collect::<Vec<_>>()
                .join(", ");
            let not_old = self
                .key_columns
                .iter()
                .map(|&p| {
                    let c = quote(&self.columns[p].name);
                    format!("{c} IS OLD.{c}")
                })
                .collect::<Vec<_>>()
                .join(" AND ");
            triggers.push(format!(
                "CREATE TRIGGER {p}{id}_evict_ins BEFORE INSERT ON {table} WHEN {silent_new} BEGIN \
                 {pending}) SELECT {id}, {OP_EVICT}, {ncols}, {now}, {own_key} FROM {table} WHERE {collides}; END"
            ));
            triggers.push(format!(
                "CREATE TRIGGER {p}{id}_evict_upd BEFORE UPDATE ON {table} WHEN {silent_new} BEGIN \
                 {pending}) SELECT {id}, {OP_EVICT}, {ncols}, {now}, {own_key} FROM {table} \
                 WHERE ({collides}) AND NOT ({not_old}); END"
            ));
        }
        triggers
    }

    /// Every trigger name Concord may have installed on table `id` (`_rekey` is no
    /// longer made; the evict triggers exist only on tables with UNIQUE constraints).
    pub(crate) fn trigger_names(id: i64) -> [String; 6] {
        let p = TRIGGER_PREFIX;
        [
            format!("{p}{id}_ins"),
            format!("{p}{id}_upd"),
            format!("{p}{id}_rekey"),
            format!("{p}{id}_del"),
            format!("{p}{id}_evict_ins"),
            format!("{p}{id}_evict_upd"),
        ]
    }
}

/// The column sets of a table's UNIQUE constraints, primary key excluded. Indexes on
/// expressions are skipped: no trigger can test them column by column.
fn unique_sets(conn: &Connection, table: &str) -> Result<Vec<Vec<usize>>, rusqlite::Error> {
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND origin <> 'pk'")?
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut sets = Vec::new();
    for index in indexes {
        let cids: Vec<i64> = conn
            .prepare("SELECT cid FROM pragma_index_info(?1) ORDER BY seqno")?
            .query_map([&index], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if !cids.is_empty() && cids.iter().all(|&c| c >= 0) {
            sets.push(cids.into_iter().map(|c| c as usize).collect());
        }
    }
    Ok(sets)
}

/// Adds `k{i}`, `o{i}` and `m{i}` columns to the pending table until it can hold `keys` key
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
    for (prefix, count) in [("k", keys), ("o", keys), ("m", masks)] {
        for i in 0..count {
            let col = format!("{prefix}{i}");
            if !existing.contains(&col) {
                conn.execute_batch(&format!("ALTER TABLE __concord_pending ADD COLUMN {col}"))?;
            }
        }
    }
    widen_applying(conn, keys)
}

/// Adds `k{i}` columns to the apply marker until it can name a row of `keys` key
/// columns.
fn widen_applying(conn: &Connection, keys: usize) -> Result<(), rusqlite::Error> {
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('__concord_applying')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for col in ["tbl".to_owned()]
        .into_iter()
        .chain((0..keys).map(|i| format!("k{i}")))
    {
        if !existing.contains(&col) {
            conn.execute_batch(&format!("ALTER TABLE __concord_applying ADD COLUMN {col}"))?;
        }
    }
    Ok(())
}

/// Drops every capture trigger of table `id`.
pub(crate) fn drop_triggers(conn: &Connection, id: i64) -> Result<(), rusqlite::Error> {
    for name in TableInfo::trigger_names(id) {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&name)))?;
    }
    Ok(())
}

/// The tables `table` references by foreign keys, as written in its `REFERENCES`
/// clauses (SQLite compares table names without regard to ASCII case).
pub(crate) fn referenced_tables(
    conn: &Connection,
    table: &str,
) -> Result<Vec<String>, rusqlite::Error> {
    conn.prepare("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect()
}

/// Upgrades the metadata of a file written by an older Concord, in one transaction;
/// nothing happens if it is current (or newer, which [`crate::SqliteStore`] refuses).
pub(crate) fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let format = |conn: &Connection| -> Result<i64, rusqlite::Error> {
        conn.query_row(
            "SELECT value FROM __concord_meta WHERE key = 'format'",
            [],
            |r| r.get(0),
        )
    };
    if format(conn)? >= FORMAT_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        // Another process may have upgraded the file meanwhile.
        if format(conn)? == 1 {
            // Version 1 kept a set-aside change only in the log (verbatim, table 0):
            // copy it from there while the log still holds it.
            conn.execute_batch(
                "ALTER TABLE __concord_failures ADD COLUMN body BLOB;
                 UPDATE __concord_failures SET body = (
                     SELECT l.body FROM __concord_log l JOIN __concord_origins o ON o.id = l.origin
                     WHERE l.tbl = 0 AND lower(hex(o.node_id)) = __concord_failures.origin
                       AND l.seq = __concord_failures.seq);
                 UPDATE __concord_meta SET value = 2 WHERE key = 'format';",
            )?;
        }
        if format(conn)? == 2 {
            // Version 2 silenced capture for the whole apply transaction (a marker row
            // with one column `x`): name the row instead, and rebuild every tracked
            // table's triggers to look at it.
            widen_applying(conn, 0)?;
            let tracked: Vec<(i64, String)> = conn
                .prepare("SELECT id, name FROM __concord_tables WHERE tracked = 1")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, name) in tracked {
                let mut info = match TableInfo::introspect(conn, &name) {
                    Ok(info) => info,
                    Err(e) => {
                        // Its old triggers stay (they are silent throughout an apply, as
                        // before); the next refresh reports the table.
                        tracing::warn!(table = %name, error = %e, "tracked table cannot be read; its capture triggers are not upgraded");
                        continue;
                    }
                };
                info.id = id;
                widen_pending(conn, info.key_columns.len(), info.mask_count())?;
                drop_triggers(conn, id)?;
                for sql in info.trigger_sql() {
                    conn.execute_batch(&sql)?;
                }
            }
            conn.execute_batch("UPDATE __concord_meta SET value = 3 WHERE key = 'format';")?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
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
