//! Metadata tables, table introspection and capture triggers.
//!
//! Everything Concord adds to a user's database lives in the `concord` schema (tables,
//! the capture functions) plus one trigger, `concord_capture`, on each tracked table, so
//! `untrack` can find and remove every trace with `DROP SCHEMA concord CASCADE`.
//!
//! The capture trigger is plpgsql and runs for every client's writes. It records the
//! row's key and values as *text*, inside a function whose `SET` clauses fix the output
//! settings that text depends on (`DateStyle`, `TimeZone`, `extra_float_digits`,
//! `bytea_output`), so whatever the writing session's settings, the text parses back to
//! the exact value. Recording the values a transaction wrote (rather than reading the
//! row later) is what lets capture log each source transaction with its own values,
//! even when a later transaction changed the row again before capture ran.

use std::collections::HashMap;

use postgres::Client;

use crate::types::ColumnKind;
use concord_store::TrackError;

/// Version of the metadata layout written by this build. A database of an older
/// version is upgraded when opened ([`MIGRATION_TO_2`]); one of a newer version is
/// refused.
///
/// - 1: the first release.
/// - 2: `concord.failures.body` keeps each set-aside change whole, so it can be
///   retried once the schema allows.
pub(crate) const FORMAT_VERSION: i64 = 2;

/// Upgrades version 1 to 2, under Concord's lock: version 1 kept a set-aside change
/// only in the log (verbatim, table 0), so it is copied from there while the log still
/// holds it. Idempotent.
pub(crate) const MIGRATION_TO_2: &str = "
ALTER TABLE concord.failures ADD COLUMN IF NOT EXISTS body bytea;
UPDATE concord.failures f SET body = (
    SELECT l.body FROM concord.log l JOIN concord.origins o ON o.id = l.origin
    WHERE l.tbl = 0 AND encode(o.node_id, 'hex') = f.origin AND l.seq = f.seq)
WHERE f.body IS NULL;
UPDATE concord.meta SET value = '2' WHERE key = 'format' AND value = '1';
";

/// Name of the capture trigger on every tracked table.
pub const TRIGGER_NAME: &str = "concord_capture";

/// Operation codes written by the trigger into `concord.pending.op`.
pub(crate) const OP_INSERT: i16 = 1;
pub(crate) const OP_UPDATE: i16 = 2;
pub(crate) const OP_DELETE: i16 = 3;
/// An UPDATE that changed the primary key: new key in `k`, old key in `o`.
pub(crate) const OP_REKEY: i16 = 5;

/// Session settings every Concord connection and every capture function uses, so that
/// value text is canonical and parses back exactly.
pub(crate) const CANONICAL_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
];

/// Milliseconds since the epoch, as the trigger computes the write's wall time.
const AT_EXPR: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub(crate) const METADATA_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS concord;
CREATE TABLE IF NOT EXISTS concord.meta(key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS concord.tables(
    id serial PRIMARY KEY,
    schema_name text NOT NULL,
    name text NOT NULL,
    tracked boolean NOT NULL DEFAULT true,
    UNIQUE (schema_name, name)
);
CREATE TABLE IF NOT EXISTS concord.columns(
    tbl integer NOT NULL,
    position integer NOT NULL,
    name text NOT NULL,
    type_name text NOT NULL,
    key_position integer,
    PRIMARY KEY (tbl, position)
);
CREATE TABLE IF NOT EXISTS concord.origins(
    id serial PRIMARY KEY,
    node_id bytea NOT NULL UNIQUE,
    seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS concord.pending(
    id bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tbl integer NOT NULL,
    op smallint NOT NULL,
    at bigint NOT NULL,
    cols integer[],
    k text[] NOT NULL,
    o text[],
    v text[]
);
CREATE TABLE IF NOT EXISTS concord.rows(
    tbl integer NOT NULL,
    pk bytea NOT NULL,
    cl bigint NOT NULL,
    clock bytea NOT NULL,
    PRIMARY KEY (tbl, pk)
);
CREATE TABLE IF NOT EXISTS concord.log(
    pos bigserial PRIMARY KEY,
    origin integer NOT NULL,
    seq bigint NOT NULL,
    hlc bigint NOT NULL,
    tbl integer NOT NULL,
    pk bytea NOT NULL,
    cl bigint NOT NULL,
    body bytea NOT NULL,
    txn_end boolean NOT NULL,
    UNIQUE (origin, seq)
);
CREATE TABLE IF NOT EXISTS concord.failures(
    id bigserial PRIMARY KEY,
    origin text NOT NULL,
    seq bigint NOT NULL,
    tbl text NOT NULL,
    key_text text NOT NULL,
    error text NOT NULL,
    at bigint NOT NULL,
    body bytea
);
CREATE TABLE IF NOT EXISTS concord.conflicts(
    id bigserial PRIMARY KEY,
    tbl text NOT NULL,
    pk bytea NOT NULL,
    key_text text NOT NULL,
    kind text NOT NULL,
    column_name text,
    local_value bytea NOT NULL,
    local_version text NOT NULL,
    remote_value bytea NOT NULL,
    remote_version text NOT NULL,
    winner text NOT NULL
);
";

/// Quotes an SQL identifier.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One replicated column.
#[derive(Clone, Debug)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Its type as PostgreSQL prints it, e.g. `numeric(12,2)`.
    pub type_name: String,
    pub(crate) kind: ColumnKind,
    /// What follows a parameter placeholder for this column (`$1::text::mood`).
    pub(crate) cast: String,
}

/// A tracked table as Concord sees it.
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub(crate) id: i32,
    /// The table's `pg_class` oid.
    pub(crate) oid: u32,
    /// The name changes carry: `name` for a table in `public`, else `schema.name`.
    pub name: String,
    pub(crate) schema: String,
    pub(crate) relname: String,
    /// Replicated columns (generated columns are left out), in table order.
    pub columns: Vec<ColumnInfo>,
    /// Positions (into `columns`) of the primary-key columns, in key order.
    pub key_columns: Vec<usize>,
    pub(crate) position_of: HashMap<String, usize>,
}

impl TableInfo {
    /// Reads a table's columns and primary key. `name` may be schema-qualified.
    pub(crate) fn introspect(client: &mut Client, name: &str) -> Result<Self, TrackError> {
        let row = client.query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)::oid",
            &[&name],
        )?;
        let Some(row) = row else {
            return Err(TrackError::NoSuchTable(name.to_owned()));
        };
        let oid: u32 = row.get(0);
        let schema: String = row.get(1);
        let relname: String = row.get(2);
        let relkind: String = row.get(3);
        if relkind != "r" && relkind != "p" {
            return Err(TrackError::Unsupported(
                name.to_owned(),
                "only ordinary and partitioned tables can be tracked",
            ));
        }
        if schema == "concord" {
            return Err(TrackError::Unsupported(
                name.to_owned(),
                "Concord's own tables are not replicated",
            ));
        }
        let display = if schema == "public" {
            relname.clone()
        } else {
            format!("{schema}.{relname}")
        };
        // Every unusable column and a missing key are reported together.
        let mut problems = Vec::new();
        let mut columns = Vec::new();
        let mut position_by_attnum = HashMap::new();
        // A domain is read and written as its base type (its constraints still apply).
        for r in client.query(
            "SELECT a.attnum, a.attname::text,
                    CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
                    format_type(a.atttypid, a.atttypmod),
                    CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&oid],
        )? {
            let attnum: i16 = r.get(0);
            let column: String = r.get(1);
            let type_oid: u32 = r.get(2);
            let typmod: i32 = r.get(3);
            let type_name: String = r.get(4);
            let base_name: Option<String> = r.get(5);
            let kind = ColumnKind::of(type_oid, typmod);
            // How a parameter for the column is written: text through the type's input
            // function for a type carried as text, the base type for a domain (whose
            // checks PostgreSQL applies on assignment), else as it is.
            let cast = match (kind, base_name) {
                (ColumnKind::TextIo, _) => format!("::text::{type_name}"),
                (_, Some(base)) => format!("::{base}"),
                _ => String::new(),
            };
            position_by_attnum.insert(attnum, columns.len());
            columns.push(ColumnInfo {
                name: column,
                type_name,
                kind,
                cast,
            });
        }
        let mut key_columns = Vec::new();
        let mut has_key = false;
        for r in client.query(
            "SELECT k.attnum FROM pg_index i,
                    unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )? {
            let attnum: i16 = r.get(0);
            has_key = true;
            match position_by_attnum.get(&attnum) {
                Some(&position) => key_columns.push(position),
                None => problems.push(TrackError::Unsupported(
                    display.clone(),
                    "generated key column",
                )),
            }
        }
        if !has_key {
            problems.push(TrackError::NoPrimaryKey(display.clone()));
        }
        if let Some(e) = TrackError::from_problems(problems) {
            return Err(e);
        }
        let position_of = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        Ok(TableInfo {
            id: 0,
            oid,
            name: display,
            schema,
            relname,
            columns,
            key_columns,
            position_of,
        })
    }

    /// The table's quoted, schema-qualified name.
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.relname))
    }

    pub(crate) fn function_name(id: i32) -> String {
        format!("concord.capture_{id}")
    }

    fn text_array(&self, record: &str, positions: impl Iterator<Item = usize>) -> String {
        let items: Vec<String> = positions
            .map(|p| format!("{record}.{}::text", quote(&self.columns[p].name)))
            .collect();
        format!("ARRAY[{}]::text[]", items.join(", "))
    }

    fn key_array(&self, record: &str) -> String {
        self.text_array(record, self.key_columns.iter().copied())
    }

    fn values_array(&self, record: &str) -> String {
        self.text_array(record, 0..self.columns.len())
    }

    /// SQL creating the capture function and trigger.
    pub(crate) fn trigger_sql(&self) -> String {
        let id = self.id;
        let settings: String = CANONICAL_SETTINGS
            .iter()
            .map(|(k, v)| format!(" SET {} = {}", quote(k), literal(v)))
            .collect();
        let changed: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c = quote(&c.name);
                format!("CASE WHEN NEW.{c}::text IS DISTINCT FROM OLD.{c}::text THEN {i} END")
            })
            .collect();
        let (new_key, old_key, new_values) = (
            self.key_array("NEW"),
            self.key_array("OLD"),
            self.values_array("NEW"),
        );
        let function = Self::function_name(id);
        let table = self.qualified();
        let trigger = quote(TRIGGER_NAME);
        format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp{settings}
AS $concord$
DECLARE changed integer[];
BEGIN
  IF current_setting('concord.applying', true) = 'on' THEN RETURN NULL; END IF;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO concord.pending(tbl, op, at, k, v)
    VALUES ({id}, {OP_INSERT}, {AT_EXPR}, {new_key}, {new_values});
  ELSIF TG_OP = 'UPDATE' THEN
    IF {new_key} IS DISTINCT FROM {old_key} THEN
      INSERT INTO concord.pending(tbl, op, at, k, o, v)
      VALUES ({id}, {OP_REKEY}, {AT_EXPR}, {new_key}, {old_key}, {new_values});
    ELSE
      changed := array_remove(ARRAY[{changed}]::integer[], NULL);
      IF cardinality(changed) > 0 THEN
        INSERT INTO concord.pending(tbl, op, at, cols, k, v)
        VALUES ({id}, {OP_UPDATE}, {AT_EXPR}, changed, {new_key}, {new_values});
      END IF;
    END IF;
  ELSE
    INSERT INTO concord.pending(tbl, op, at, k)
    VALUES ({id}, {OP_DELETE}, {AT_EXPR}, {old_key});
  END IF;
  RETURN NULL;
END
$concord$;
DROP TRIGGER IF EXISTS {trigger} ON {table};
CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION {function}();",
            changed = changed.join(", "),
        )
    }

    /// SQL dropping the capture trigger and function.
    pub(crate) fn drop_trigger_sql(&self) -> String {
        format!(
            "DROP TRIGGER IF EXISTS {} ON {}; DROP FUNCTION IF EXISTS {}();",
            quote(TRIGGER_NAME),
            self.qualified(),
            Self::function_name(self.id)
        )
    }

    /// SQL queuing every existing row as a pending insert (run with the canonical
    /// settings, like the trigger).
    pub(crate) fn backfill_sql(&self) -> String {
        format!(
            "INSERT INTO concord.pending(tbl, op, at, k, v) SELECT {}, {OP_INSERT}, {AT_EXPR}, {}, {} FROM {} AS t",
            self.id,
            self.key_array("t"),
            self.values_array("t"),
            self.qualified()
        )
    }

    /// SQL queuing, for every row where one of the columns from position `from` on is
    /// set, an update of those columns: what was written to columns added after
    /// tracking before the trigger knew them (run with the canonical settings, once the
    /// rebuilt trigger holds the table's lock).
    pub(crate) fn backfill_columns_sql(&self, from: usize) -> String {
        let positions: Vec<String> = (from..self.columns.len()).map(|i| i.to_string()).collect();
        let set: Vec<String> = self.columns[from..]
            .iter()
            .map(|c| format!("t.{} IS NOT NULL", quote(&c.name)))
            .collect();
        format!(
            "INSERT INTO concord.pending(tbl, op, at, cols, k, v) SELECT {}, {OP_UPDATE}, {AT_EXPR}, ARRAY[{}]::integer[], {}, {} FROM {} AS t WHERE {}",
            self.id,
            positions.join(", "),
            self.key_array("t"),
            self.values_array("t"),
            self.qualified(),
            set.join(" OR ")
        )
    }

    /// SQL decoding pending rows of this table: `id`, then the key, the old key and the
    /// values, each parsed back to the column type and read as [`ColumnKind::read_expr`].
    pub(crate) fn decode_pending_sql(&self) -> String {
        let mut exprs = vec!["p.id".to_owned()];
        let parse = |array: &str, i: usize, p: usize| {
            let c = &self.columns[p];
            c.kind
                .read_expr(&format!("(p.{array}[{}])::{}", i + 1, c.type_name))
        };
        for (i, &p) in self.key_columns.iter().enumerate() {
            exprs.push(parse("k", i, p));
        }
        for (i, &p) in self.key_columns.iter().enumerate() {
            exprs.push(parse("o", i, p));
        }
        for p in 0..self.columns.len() {
            exprs.push(parse("v", p, p));
        }
        format!(
            "SELECT {} FROM unnest($1::int8[]) k(id) JOIN concord.pending p ON p.id = k.id",
            exprs.join(", ")
        )
    }

    /// The placeholder `$n` for a value of the column at `position`, cast as it needs
    /// (`ColumnInfo::cast`).
    pub(crate) fn placeholder(&self, position: usize, n: usize) -> String {
        format!("${n}{}", self.columns[position].cast)
    }

    /// `"k1" = $first AND "k2" = $first+1 ...`
    pub(crate) fn key_predicate(&self, first: usize) -> String {
        self.key_columns
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                format!(
                    "{} = {}",
                    quote(&self.columns[p].name),
                    self.placeholder(p, first + i)
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    pub(crate) fn select_column_sql(&self, position: usize) -> String {
        let c = &self.columns[position];
        format!(
            "SELECT {} FROM {} WHERE {}",
            c.kind.read_expr(&quote(&c.name)),
            self.qualified(),
            self.key_predicate(1)
        )
    }

    pub(crate) fn delete_sql(&self) -> String {
        format!(
            "DELETE FROM {} WHERE {}",
            self.qualified(),
            self.key_predicate(1)
        )
    }

    /// UPDATE of `columns` (params first), keyed by the params after them.
    pub(crate) fn update_sql(&self, columns: &[usize]) -> String {
        let sets: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                format!(
                    "{} = {}",
                    quote(&self.columns[p].name),
                    self.placeholder(p, i + 1)
                )
            })
            .collect();
        format!(
            "UPDATE {} SET {} WHERE {}",
            self.qualified(),
            sets.join(", "),
            self.key_predicate(columns.len() + 1)
        )
    }

    /// INSERT of the key columns (params first), then `columns`.
    pub(crate) fn insert_sql(&self, columns: &[usize]) -> String {
        let all: Vec<usize> = self.key_columns.iter().chain(columns).copied().collect();
        let names: Vec<String> = all.iter().map(|&p| quote(&self.columns[p].name)).collect();
        let params: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(i, &p)| self.placeholder(p, i + 1))
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.qualified(),
            names.join(", "),
            params.join(", ")
        )
    }
}

/// The foreign keys of the tables `oids` (a partition's inherited ones included), as
/// `(referencing oid, referenced oid, referenced table's schema, its name)`. A key
/// referencing a partitioned table is reported once, naming that table, not once per
/// partition.
pub(crate) fn foreign_keys(
    client: &mut Client,
    oids: &[u32],
) -> Result<Vec<(u32, u32, String, String)>, postgres::Error> {
    Ok(client
        .query(
            "SELECT DISTINCT c.conrelid, c.confrelid, n.nspname::text, r.relname::text
             FROM pg_constraint c
             JOIN pg_class r ON r.oid = c.confrelid
             JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE c.contype = 'f' AND c.conrelid = ANY($1) AND NOT r.relispartition",
            &[&oids],
        )?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}
