//! Metadata tables, table introspection and capture triggers.
//!
//! In MySQL a schema *is* a database, and a store is one database (the one the URL
//! names). Concord's tables live **in that same database**, named with a `concord_`
//! prefix, rather than in a shared `concord` database: two user databases on one server
//! (two replicas, as in the tests) then keep fully separate metadata, a backup of the
//! database carries its replication state with it, and `untrack` removes every trace by
//! dropping the `concord_*` tables and triggers. InnoDB commits metadata and user rows
//! in one transaction either way.
//!
//! ## Capture triggers
//! Each tracked table gets three row triggers (`AFTER INSERT`, `AFTER UPDATE`, `AFTER
//! DELETE`; MariaDB allows several per event, so the user's own triggers stay). Each
//! returns at once while the session variable `@concord_applying` is set, which only
//! Concord's apply sessions do, on their own connection. Otherwise it appends the key,
//! the values and (for an update) the positions of the changed columns to
//! `concord_pending`, as JSON arrays of the canonical text of `types.rs`.
//!
//! ## Source-transaction identity
//! MariaDB has no function returning the current transaction id. We measured the
//! alternative, `information_schema.innodb_trx` read from the trigger: it is a cache
//! refreshed at most every 100 ms, so six consecutive autocommit transactions of one
//! connection all read the same `trx_id` (and a new transaction can read none, or its
//! predecessor's), which would split or mislabel transactions. Instead
//! `concord_pending` is a **transaction-precise system-versioned table**: MariaDB stores
//! the inserting transaction's id in its `ROW START` column (`trx`), exactly, and
//! records each such transaction's commit order in `mysql.transaction_registry`
//! (`commit_id`). Capture groups pending rows by `trx` and orders groups by `commit_id`:
//! real commit order, not an approximation. The cost: captured rows are deleted then
//! purged with `DELETE HISTORY`, and `mysql.transaction_registry` keeps one small row per
//! captured source transaction (MariaDB never purges it; see `docs/mysql-store.md`).

use std::collections::HashMap;

use mysql::Conn;
use mysql::prelude::Queryable;

use crate::types::ColumnKind;
use concord_store::TrackError;

/// Version of the metadata layout written by this build. A database of an older
/// version is upgraded when opened (`MyStore::migrate`); one of a newer version is
/// refused.
///
/// - 1: the first release.
/// - 2: `concord_failures.body` keeps each set-aside change whole, so it can be
///   retried once the schema allows.
/// - 3: capture from the binary log (`capture = binlog`, `binlog_pos`,
///   `concord_applying`). Only such a database is raised to 3: a Concord without the
///   reader would install triggers and leave `binlog_pos` behind, and the reader, back,
///   would stage those writes a second time. One captured by triggers stays at
///   [`TRIGGER_FORMAT_VERSION`], which older builds still open.
pub(crate) const FORMAT_VERSION: i64 = 3;

/// The format of a database captured by triggers.
pub(crate) const TRIGGER_FORMAT_VERSION: i64 = 2;

/// Prefix of every trigger Concord installs: `concord_<table id>_{ins,upd,del}`.
pub const TRIGGER_PREFIX: &str = "concord_";

pub(crate) const OP_INSERT: i16 = 1;
pub(crate) const OP_UPDATE: i16 = 2;
pub(crate) const OP_DELETE: i16 = 3;
/// An UPDATE that changed the primary key: new key in `k`, old key in `o`.
pub(crate) const OP_REKEY: i16 = 5;

/// The strict `sql_mode` of Concord's sessions and triggers: a value the column cannot
/// hold is an error, never a silent truncation.
pub(crate) const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/// Concord's tables, dropped by `untrack`.
pub(crate) const METADATA_TABLES: &[&str] = &[
    "concord_meta",
    "concord_tables",
    "concord_columns",
    "concord_origins",
    "concord_pending",
    "concord_rows",
    "concord_log",
    "concord_failures",
    "concord_conflicts",
    "concord_applying",
];

/// Milliseconds since the epoch, as the trigger computes the write's wall time.
const AT_EXPR: &str = "FLOOR(UNIX_TIMESTAMP(SYSDATE(6)) * 1000)";

pub(crate) const METADATA_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS concord_meta(k VARCHAR(64) PRIMARY KEY, v TEXT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS concord_tables(id INT AUTO_INCREMENT PRIMARY KEY,
        name VARCHAR(64) NOT NULL UNIQUE, tracked BOOLEAN NOT NULL DEFAULT 1) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS concord_columns(tbl INT NOT NULL, position INT NOT NULL,
        name VARCHAR(64) NOT NULL, type_name VARCHAR(255) NOT NULL, key_position INT NULL,
        PRIMARY KEY (tbl, position)) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS concord_origins(id INT AUTO_INCREMENT PRIMARY KEY,
        node_id VARBINARY(16) NOT NULL UNIQUE, seq BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS concord_pending(id BIGINT AUTO_INCREMENT PRIMARY KEY,
        tbl INT NOT NULL, op TINYINT NOT NULL, at BIGINT NOT NULL, cols TEXT NULL,
        k LONGTEXT NOT NULL, o LONGTEXT NULL, v LONGTEXT NULL,
        trx BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE,
        trx_end BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE,
        PERIOD FOR SYSTEM_TIME(trx, trx_end)) ENGINE=InnoDB WITH SYSTEM VERSIONING",
    "CREATE TABLE IF NOT EXISTS concord_rows(tbl INT NOT NULL, pk VARBINARY(3000) NOT NULL,
        cl BIGINT NOT NULL, clock LONGBLOB NOT NULL, PRIMARY KEY (tbl, pk)) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS concord_log(pos BIGINT AUTO_INCREMENT PRIMARY KEY,
        origin INT NOT NULL, seq BIGINT NOT NULL, hlc BIGINT NOT NULL, tbl INT NOT NULL,
        pk VARBINARY(3000) NOT NULL, cl BIGINT NOT NULL, body LONGBLOB NOT NULL,
        txn_end BOOLEAN NOT NULL, UNIQUE (origin, seq)) ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS concord_failures(id BIGINT AUTO_INCREMENT PRIMARY KEY,
        origin VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, tbl VARCHAR(255) NOT NULL,
        key_text TEXT NOT NULL, error TEXT NOT NULL, at BIGINT NOT NULL, body LONGBLOB NULL)
        ENGINE=InnoDB",
    "CREATE TABLE IF NOT EXISTS concord_conflicts(id BIGINT AUTO_INCREMENT PRIMARY KEY,
        tbl VARCHAR(255) NOT NULL, pk VARBINARY(3000) NOT NULL, key_text TEXT NOT NULL,
        kind VARCHAR(32) NOT NULL, column_name VARCHAR(64) NULL, local_value LONGBLOB NOT NULL,
        local_version VARCHAR(128) NOT NULL, remote_value LONGBLOB NOT NULL,
        remote_version VARCHAR(128) NOT NULL, winner VARCHAR(16) NOT NULL) ENGINE=InnoDB",
    // One row an apply transaction writes first, so the binary-log reader knows the
    // transaction as Concord's own (`binlog.rs`).
    "CREATE TABLE IF NOT EXISTS concord_applying(id TINYINT PRIMARY KEY, n BIGINT NOT NULL)
        ENGINE=InnoDB",
];

/// Quotes an SQL identifier.
pub(crate) fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// One replicated column.
#[derive(Clone, Debug)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Its type as MariaDB prints it (`COLUMN_TYPE`), e.g. `decimal(12,2)`.
    pub type_name: String,
    pub(crate) kind: ColumnKind,
}

/// A tracked table as Concord sees it.
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub(crate) id: i32,
    /// The table's name in the store's database; changes carry it.
    pub name: String,
    /// Replicated columns (generated columns are left out), in table order.
    pub columns: Vec<ColumnInfo>,
    /// Positions (into `columns`) of the primary-key columns, in key order.
    pub key_columns: Vec<usize>,
    pub(crate) position_of: HashMap<String, usize>,
}

type ColumnRow = (
    String,
    String,
    String,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    String,
    String,
);

impl TableInfo {
    /// Reads a table's columns and primary key from `information_schema`.
    pub(crate) fn introspect(conn: &mut Conn, name: &str) -> Result<Self, TrackError> {
        let kind: Option<String> = conn.exec_first(
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (name,),
        )?;
        match kind.as_deref() {
            None => return Err(TrackError::NoSuchTable(name.to_owned())),
            Some("BASE TABLE") => {}
            Some(_) => {
                return Err(TrackError::Unsupported(
                    name.to_owned(),
                    "only base tables can be tracked",
                ));
            }
        }
        if name.starts_with("concord_") {
            return Err(TrackError::Unsupported(
                name.to_owned(),
                "Concord's own tables are not replicated",
            ));
        }
        let json_checks: Vec<String> = conn.exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS
             WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (name,),
        )?;
        let rows: Vec<ColumnRow> = conn.exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_MAXIMUM_LENGTH,
                    CHARACTER_OCTET_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION,
                    COLUMN_KEY, EXTRA
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?
             ORDER BY ORDINAL_POSITION",
            (name,),
        )?;
        // Every unusable column and a missing key are reported together.
        let mut problems = Vec::new();
        let mut unusable = std::collections::HashSet::new();
        let mut columns = Vec::new();
        for (
            column,
            data_type,
            column_type,
            max_chars,
            max_bytes,
            precision,
            scale,
            fsp,
            _key,
            extra,
        ) in rows
        {
            let extra = extra.to_ascii_uppercase();
            if extra.contains("GENERATED")
                || extra.contains("VIRTUAL")
                || extra.contains("PERSISTENT")
            {
                continue;
            }
            let json = json_checks
                .iter()
                .any(|c| c == &format!("json_valid({})", quote(&column)));
            let kind = ColumnKind::of(
                &data_type,
                &column_type,
                max_chars,
                max_bytes,
                precision,
                scale,
                fsp,
                json,
            );
            let Some(kind) = kind else {
                unusable.insert(column.clone());
                problems.push(TrackError::UnsupportedType {
                    table: name.to_owned(),
                    column,
                    type_name: column_type,
                });
                continue;
            };
            columns.push(ColumnInfo {
                name: column,
                type_name: column_type,
                kind,
            });
        }
        let position_of: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let key_names: Vec<String> = conn.exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'
             ORDER BY ORDINAL_POSITION",
            (name,),
        )?;
        let mut key_columns = Vec::new();
        if key_names.is_empty() {
            problems.push(TrackError::NoPrimaryKey(name.to_owned()));
        }
        for k in key_names {
            if unusable.contains(&k) {
                continue;
            }
            match position_of.get(&k) {
                Some(&p) => key_columns.push(p),
                None => problems.push(TrackError::Unsupported(
                    name.to_owned(),
                    "generated key column",
                )),
            }
        }
        if let Some(e) = TrackError::from_problems(problems) {
            return Err(e);
        }
        Ok(TableInfo {
            id: 0,
            name: name.to_owned(),
            columns,
            key_columns,
            position_of,
        })
    }

    pub(crate) fn qualified(&self) -> String {
        quote(&self.name)
    }

    fn json_array(
        &self,
        record: &str,
        positions: impl Iterator<Item = usize>,
        expr: impl Fn(ColumnKind, &str) -> String,
    ) -> String {
        let items: Vec<String> = positions
            .map(|p| {
                let c = &self.columns[p];
                expr(c.kind, &format!("{record}.{}", quote(&c.name)))
            })
            .collect();
        format!("JSON_ARRAY({})", items.join(", "))
    }

    pub(crate) fn key_json(&self, record: &str) -> String {
        self.json_array(
            record,
            self.key_columns.iter().copied(),
            ColumnKind::text_expr,
        )
    }

    /// Every column's value, a large one as [`crate::types::BIG_VALUE`] (see
    /// [`ColumnKind::capture_expr`]).
    pub(crate) fn values_json(&self, record: &str) -> String {
        self.json_array(record, 0..self.columns.len(), ColumnKind::capture_expr)
    }

    pub(crate) fn trigger_names(&self) -> [String; 3] {
        let id = self.id;
        [
            format!("{TRIGGER_PREFIX}{id}_ins"),
            format!("{TRIGGER_PREFIX}{id}_upd"),
            format!("{TRIGGER_PREFIX}{id}_del"),
        ]
    }

    /// Statements creating the three capture triggers, each replacing an old one in one
    /// statement (`CREATE OR REPLACE`): dropping first would leave a moment in which a
    /// write to an already tracked table is not captured.
    pub(crate) fn trigger_sql(&self) -> Vec<String> {
        let id = self.id;
        let [ins, upd, del] = self.trigger_names();
        let table = self.qualified();
        let changed: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let n = quote(&c.name);
                format!(
                    "IF(BINARY {} <=> BINARY {}, NULL, '{i}')",
                    c.kind.compare_expr(&format!("NEW.{n}")),
                    c.kind.compare_expr(&format!("OLD.{n}"))
                )
            })
            .collect();
        let mut out: Vec<String> = Vec::with_capacity(3);
        out.push(format!(
            "CREATE OR REPLACE TRIGGER {} AFTER INSERT ON {table} FOR EACH ROW
             IF @concord_applying IS NULL THEN
               INSERT INTO concord_pending(tbl, op, at, k, v)
               VALUES ({id}, {OP_INSERT}, {AT_EXPR}, {}, {});
             END IF",
            quote(&ins),
            self.key_json("NEW"),
            self.values_json("NEW")
        ));
        out.push(format!(
            "CREATE OR REPLACE TRIGGER {} AFTER UPDATE ON {table} FOR EACH ROW
             IF @concord_applying IS NULL THEN
               IF NOT (BINARY {nk} <=> BINARY {ok}) THEN
                 INSERT INTO concord_pending(tbl, op, at, k, o, v)
                 VALUES ({id}, {OP_REKEY}, {AT_EXPR}, {nk}, {ok}, {nv});
               ELSEIF CONCAT_WS(',', {changed}) <> '' THEN
                 INSERT INTO concord_pending(tbl, op, at, cols, k, v)
                 VALUES ({id}, {OP_UPDATE}, {AT_EXPR}, CONCAT_WS(',', {changed}), {nk}, {nv});
               END IF;
             END IF",
            quote(&upd),
            nk = self.key_json("NEW"),
            ok = self.key_json("OLD"),
            nv = self.values_json("NEW"),
            changed = changed.join(", "),
        ));
        out.push(format!(
            "CREATE OR REPLACE TRIGGER {} AFTER DELETE ON {table} FOR EACH ROW
             IF @concord_applying IS NULL THEN
               INSERT INTO concord_pending(tbl, op, at, k) VALUES ({id}, {OP_DELETE}, {AT_EXPR}, {});
             END IF",
            quote(&del),
            self.key_json("OLD")
        ));
        out
    }

    pub(crate) fn drop_trigger_sql(&self) -> Vec<String> {
        self.trigger_names()
            .iter()
            .map(|t| format!("DROP TRIGGER IF EXISTS {}", quote(t)))
            .collect()
    }

    /// A locking read of the whole table (shared next-key locks on every primary-key
    /// record and gap): it waits for every transaction still writing the table, and
    /// keeps new writers out until the caller's transaction ends. Run before the
    /// backfill touches `concord_pending`, so a writer never waits for the backfill while
    /// the backfill waits for it.
    pub(crate) fn lock_rows_sql(&self) -> String {
        format!(
            "SELECT COUNT(*) FROM {} FORCE INDEX (PRIMARY) LOCK IN SHARE MODE",
            self.qualified()
        )
    }

    /// SQL queuing every existing row as a pending insert.
    pub(crate) fn backfill_sql(&self) -> String {
        format!(
            "INSERT INTO concord_pending(tbl, op, at, k, v) SELECT {}, {OP_INSERT}, {AT_EXPR}, {}, {} FROM {} AS t",
            self.id,
            self.key_json("t"),
            self.values_json("t"),
            self.qualified()
        )
    }

    /// SQL queuing, for every row where one of the columns from position `from` on is
    /// set, an update of those columns: what was written to columns added after
    /// tracking before the triggers knew them.
    pub(crate) fn backfill_columns_sql(&self, from: usize) -> String {
        let positions: Vec<String> = (from..self.columns.len()).map(|i| i.to_string()).collect();
        let set: Vec<String> = self.columns[from..]
            .iter()
            .map(|c| format!("t.{} IS NOT NULL", quote(&c.name)))
            .collect();
        format!(
            "INSERT INTO concord_pending(tbl, op, at, cols, k, v) SELECT {}, {OP_UPDATE}, {AT_EXPR}, '{}', {}, {} FROM {} AS t WHERE {}",
            self.id,
            positions.join(","),
            self.key_json("t"),
            self.values_json("t"),
            self.qualified(),
            set.join(" OR ")
        )
    }

    pub(crate) fn key_predicate(&self) -> String {
        self.key_columns
            .iter()
            .map(|&p| format!("{} = ?", quote(&self.columns[p].name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Reads one column of a row ([`ColumnKind::read_expr`], for [`crate::types::
    /// parse_read`]).
    pub(crate) fn select_column_sql(&self, position: usize) -> String {
        let c = &self.columns[position];
        format!(
            "SELECT {} FROM {} WHERE {}",
            c.kind.read_expr(&quote(&c.name)),
            self.qualified(),
            self.key_predicate()
        )
    }
}

/// The foreign keys among the tables of the store's database, as `(referencing table,
/// referenced table)` names.
pub(crate) fn foreign_keys(conn: &mut Conn) -> Result<Vec<(String, String)>, mysql::Error> {
    conn.query(
        "SELECT TABLE_NAME, REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS
         WHERE CONSTRAINT_SCHEMA = DATABASE() AND UNIQUE_CONSTRAINT_SCHEMA = DATABASE()",
    )
}
