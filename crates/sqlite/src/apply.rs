//! SQLite's part in applying remote changes: [`ApplyBackend`] for [`SqliteStore`].
//!
//! The algorithm is [`concord_store::engine`]'s, the same for every store; this module
//! supplies only SQLite's SQL. An apply transaction is `BEGIN IMMEDIATE` with a row in
//! `__concord_applying`, which only that transaction sees and which silences the
//! capture triggers, so applied writes are not captured again. Opening it first folds
//! pending local writes into the log, so row clocks match the table when the merge
//! rules run. Values are checked against SQLite's type affinity ([`check_type`]), and
//! the user's row is written through statements cached per column set.

use std::sync::Arc;

use concord_core::merge::RowClock;
use concord_core::{Change, HlcClock, NodeId, PrimaryKey, Value};
use rusqlite::params_from_iter;

use crate::codec::{self, Sql};
use crate::schema::{Affinity, TableInfo, quote};
use crate::store::{LoadClockError, SqliteStore, now_ms};
use concord_store::engine::{self, ApplyBackend, ConflictRow, LogEntry, RowWrite, TrackedTable};
use concord_store::{ApplyError, Failure, Origins, RowError, StoreError};

/// An open apply transaction on a SQLite store. Dropping it without
/// [`ApplySession::commit`] rolls back.
pub type ApplySession<'s> = engine::ApplySession<'s, SqliteStore>;

impl SqliteStore {
    /// Opens an apply transaction.
    pub fn begin_apply(&mut self) -> Result<ApplySession<'_>, ApplyError> {
        self.ensure_fresh()?;
        ApplySession::begin(self)
    }
}

impl TrackedTable for TableInfo {
    fn id(&self) -> i64 {
        self.id
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn key_columns(&self) -> &[usize] {
        &self.key_columns
    }

    fn position_of(&self, column: &str) -> Option<usize> {
        self.position_of.get(column).copied()
    }

    fn column_name(&self, index: usize) -> &str {
        &self.columns[index].name
    }
}

fn refused(e: rusqlite::Error) -> Failure {
    Failure::Row(RowError::Refused(e.into()))
}

impl ApplyBackend for SqliteStore {
    type Table = TableInfo;
    type Param<'v> = &'v Value;

    fn origins(&mut self) -> &mut Origins {
        &mut self.origins
    }

    fn hlc(&mut self) -> &mut HlcClock {
        &mut self.clock
    }

    fn is_relay(&self) -> bool {
        self.relay
    }

    fn table(&self, name: &str) -> Option<Arc<TableInfo>> {
        self.table_index(name).map(|i| self.tables[i].clone())
    }

    fn begin(&mut self) -> Result<u64, StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO __concord_applying VALUES (1);")?;
        self.capture_in_txn()
    }

    fn commit(&mut self, held: &[(u32, u64)]) -> Result<(), StoreError> {
        for &(index, seq) in held {
            self.save_progress(index, seq)?;
        }
        self.conn
            .execute_batch("DELETE FROM __concord_applying; COMMIT;")?;
        Ok(())
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        // The in-memory version vector, origins and clock may hold what was rolled
        // back: reload them now so the store answers truthfully at once.
        if self.reload().is_err() {
            self.stale = true;
        }
    }

    fn origin_index(&mut self, node: NodeId) -> Result<u32, StoreError> {
        Ok(SqliteStore::origin_index(self, node)?)
    }

    fn param<'v>(
        &self,
        table: &TableInfo,
        index: usize,
        value: &'v Value,
    ) -> Result<&'v Value, RowError> {
        check_type(table, index, value)?;
        Ok(value)
    }

    fn load_clock(&mut self, table: &TableInfo, key: &PrimaryKey) -> Result<RowClock, Failure> {
        SqliteStore::load_clock(self, table.id, key).map_err(|e| match e {
            LoadClockError::Sqlite(e) => Failure::Store(e.into()),
            LoadClockError::Corrupt(d) => RowError::CorruptMetadata(d).into(),
        })
    }

    fn save_clock(
        &mut self,
        table: &TableInfo,
        key: &PrimaryKey,
        clock: &RowClock,
        existed: bool,
    ) -> Result<(), StoreError> {
        Ok(SqliteStore::save_clock(
            self, table.id, key, clock, existed,
        )?)
    }

    fn write_row(&mut self, table: &TableInfo, write: RowWrite<'_, &Value>) -> Result<(), Failure> {
        let (sql, params): (Arc<str>, Vec<&Value>) = match write {
            RowWrite::Delete { key } => (table.delete_sql(), key.to_vec()),
            RowWrite::Update {
                key,
                columns,
                values,
            } => (
                table.update_sql(columns),
                values
                    .iter()
                    .map(|v| **v)
                    .chain(key.iter().copied())
                    .collect(),
            ),
            RowWrite::Insert {
                key,
                columns,
                values,
            } => (
                table.insert_sql(columns),
                key.iter()
                    .copied()
                    .chain(values.iter().map(|v| **v))
                    .collect(),
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql).map_err(refused)?;
        stmt.execute(params_from_iter(params.into_iter().map(Sql)))
            .map_err(refused)?;
        Ok(())
    }

    fn current_value(
        &mut self,
        table: &TableInfo,
        index: usize,
        key: &[&Value],
    ) -> Result<Value, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            quote(&table.columns[index].name),
            quote(&table.name),
            table.key_predicate(1)
        );
        let value = self.conn.prepare_cached(&sql).and_then(|mut s| {
            s.query_row(params_from_iter(key.iter().map(|v| Sql(v))), |r| {
                Ok(codec::from_sql(r.get_ref(0)?))
            })
        });
        match value {
            Ok(value) => Ok(value.unwrap_or(Value::Null)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(Value::Null),
            Err(e) => Err(e.into()),
        }
    }

    fn record_conflict(&mut self, c: &ConflictRow<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO __concord_conflicts(tbl, pk, key_text, kind, column_name, local_value, local_version, remote_value, remote_version, winner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(rusqlite::params![
                c.table,
                c.key.as_bytes(),
                c.key.to_string(),
                c.kind,
                c.column,
                Sql(c.local_value),
                c.local_version.to_string(),
                Sql(c.remote_value),
                c.remote_version.to_string(),
                c.winner
            ])?;
        Ok(())
    }

    fn append_log(&mut self, e: LogEntry<'_>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO __concord_log(origin, seq, hlc, tbl, pk, cl, body, txn_end) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(rusqlite::params![
                e.origin,
                e.seq as i64,
                e.hlc as i64,
                e.table,
                e.key,
                e.causal_length as i64,
                e.body,
                e.txn_end
            ])?;
        Ok(())
    }

    fn drop_log_through(&mut self, origin: u32, seq: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM __concord_log WHERE origin = ?1 AND seq <= ?2")?
            .execute(rusqlite::params![origin, seq as i64])?;
        Ok(())
    }

    fn record_failure(
        &mut self,
        change: &Change,
        body: &[u8],
        reason: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO __concord_failures(origin, seq, tbl, key_text, error, at, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(rusqlite::params![
                change.origin.to_string(),
                change.seq as i64,
                change.table,
                change.key.to_string(),
                reason,
                now_ms() as i64,
                body
            ])?;
        Ok(())
    }

    fn set_aside_changes(&mut self) -> Result<Vec<Vec<u8>>, StoreError> {
        let bodies = self
            .conn
            .prepare_cached(
                "SELECT body FROM __concord_failures WHERE body IS NOT NULL ORDER BY id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(bodies)
    }

    fn forget_failure(&mut self, origin: NodeId, seq: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM __concord_failures WHERE origin = ?1 AND seq = ?2")?
            .execute(rusqlite::params![origin.to_string(), seq as i64])?;
        Ok(())
    }

    fn forget_all_failures(&mut self) -> Result<u64, StoreError> {
        Ok(self.conn.execute("DELETE FROM __concord_failures", [])? as u64)
    }
}

/// Refuses a value the column would not hold as sent. SQLite's type affinity silently
/// converts some values on write (numeric-looking text in a numeric column becomes a
/// number; a real in a text column becomes text), which would make this replica hold
/// something other than what the origin wrote. Everything else is stored as is, exactly
/// as the origin's SQLite stored it: a non-STRICT table holds any value in any column,
/// and STRICT tables enforce their types themselves (reported as a refused write).
fn check_type(table: &TableInfo, index: usize, value: &Value) -> Result<(), RowError> {
    let column = &table.columns[index];
    if let Value::Real(r) = value
        && r.is_nan()
    {
        // SQLite stores a NaN bound as a parameter as NULL: refuse it visibly instead.
        return Err(RowError::WrongType {
            column: column.name.clone(),
            declared: column.declared_type.clone(),
            found: value.kind(),
            detail: "SQLite cannot hold NaN (it would store NULL)".into(),
        });
    }
    let converted = match (column.affinity, value) {
        (Affinity::Integer | Affinity::Real | Affinity::Numeric, Value::Text(s)) => {
            looks_numeric(s)
        }
        (Affinity::Text, Value::Real(_)) => true,
        _ => false,
    };
    if !converted {
        return Ok(());
    }
    Err(RowError::WrongType {
        column: column.name.clone(),
        declared: if column.declared_type.is_empty() {
            "(none)".into()
        } else {
            column.declared_type.clone()
        },
        found: value.kind(),
        detail: "SQLite would convert it as sent".into(),
    })
}

/// Whether SQLite would read `s` as a number (a well-formed integer or real literal,
/// possibly surrounded by spaces).
fn looks_numeric(s: &str) -> bool {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
        && t.chars().any(|c| c.is_ascii_digit())
        && (t.parse::<i64>().is_ok() || t.parse::<f64>().is_ok())
}
