//! SQLite's part in applying remote changes: [`ApplyBackend`] for [`SqliteStore`].
//!
//! The algorithm is [`concord_store::engine`]'s, the same for every store; this module
//! supplies only SQLite's SQL. An apply transaction is `BEGIN IMMEDIATE` with a row in
//! `__concord_applying`, which only that transaction sees. Opening it first folds
//! pending local writes into the log, so row clocks match the table when the merge
//! rules run. Values are checked against SQLite's type affinity ([`check_type`]), and
//! the user's row is written through statements cached per column set.
//!
//! **Only Concord's own writes go uncaptured.** Before each statement on a table with
//! triggers of its own, Concord sets the marker row to the table and key of the row it
//! writes; the capture triggers are silent for that row alone. (For a table without,
//! nothing but Concord's statement can write, so the marker silences every row,
//! `MARK_ALL`, set once for a run of such statements: no cost where there is no
//! trigger.) A user trigger fired by Concord's write that writes other rows or tables
//! is captured as usual: those are this node's own writes, and they must travel or the
//! copies drift. A trigger (or a column default) may also write the very row Concord
//! writes; its capture trigger is silenced with Concord's, so Concord compares the row
//! after its statement with what the statement alone leaves (the values it wrote, the
//! others as they were before) and queues every column that differs as a local update
//! ([`SqliteStore::note_database_writes`]). Only tables with triggers of their own (or
//! an insert leaving a defaulted column out) pay for that comparison. Local writes made
//! during an apply are folded into the log before the next change is merged and before
//! the commit, so the merge rules always see them.

use std::sync::Arc;

use concord_core::merge::RowClock;
use concord_core::{HlcClock, NodeId, PrimaryKey, Value};
use rusqlite::blob::ZeroBlob;
use rusqlite::{OptionalExtension, params_from_iter};

use crate::codec::{self, Sql};
use crate::driver::Sqlite;
use crate::schema::{
    Affinity, COLUMNS_PER_MASK, MARK_ALL, OP_DELETE, OP_INSERT, OP_UPDATE, TableInfo, quote,
};
use crate::store::{LoadClockError, STREAMED_BODY_BYTES, SqliteStore, now_ms};
use concord_store::engine::{self, ApplyBackend, LogEntry, RowWrite, TrackedTable, WriteMode};
use concord_store::{ApplyError, Failure, Origins, RowError, StoreError};

/// An open apply transaction on a SQLite store. Dropping it without
/// [`ApplySession::commit`] rolls back.
pub type ApplySession<'s> = engine::ApplySession<'s, SqliteStore>;

impl SqliteStore {
    /// Opens an apply transaction (rows written set-based where the store can).
    pub fn begin_apply(&mut self) -> Result<ApplySession<'_>, ApplyError> {
        self.begin_apply_in(WriteMode::Sets)
    }

    /// Opens an apply transaction that writes rows as `mode` says.
    pub fn begin_apply_in(&mut self, mode: WriteMode) -> Result<ApplySession<'_>, ApplyError> {
        self.ensure_fresh()?;
        ApplySession::begin_in(self, mode)
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

/// A statement parameter: a value, or a zero-filled placeholder of a large blob that is
/// written in place after the statement.
enum Bind<'a> {
    Value(Sql<'a>),
    Placeholder(ZeroBlob),
}

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Bind::Value(value) => value.to_sql(),
            Bind::Placeholder(zeros) => zeros.to_sql(),
        }
    }
}

fn value_len(value: &Value) -> u64 {
    match value {
        Value::Blob(bytes) => bytes.len() as u64,
        _ => 0,
    }
}

fn refused(e: rusqlite::Error) -> Failure {
    Failure::Row(RowError::Refused(e.into()))
}

impl ApplyBackend for SqliteStore {
    type Table = TableInfo;
    type Param<'v> = &'v Value;
    type Sql<'a> = Sqlite<'a>;

    fn sql(&mut self) -> Sqlite<'_> {
        Sqlite(&self.conn)
    }

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
        self.unfolded = false;
        self.marked_all = true;
        self.conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; INSERT INTO __concord_applying(tbl) VALUES ({MARK_ALL});"
        ))?;
        self.capture_in_txn()
    }

    fn commit(&mut self, held: &[(u32, u64)]) -> Result<(), StoreError> {
        self.fold_database_writes()?;
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
        self.fold_database_writes().map_err(Failure::Store)?;
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

    fn write_row<'w>(
        &mut self,
        table: &TableInfo,
        write: RowWrite<'_, &'w Value>,
    ) -> Result<(), Failure> {
        let key: &[&Value] = match &write {
            RowWrite::Delete { key }
            | RowWrite::Update { key, .. }
            | RowWrite::Insert { key, .. } => key,
        };
        if table.user_triggers {
            // Name the row this statement writes: its capture triggers stay silent,
            // those of any other row a user trigger writes do not.
            let key_sql: Vec<Sql<'_>> = key.iter().map(|v| Sql(v)).collect();
            self.conn
                .prepare_cached(&table.mark_sql)
                .and_then(|mut s| {
                    s.execute(params_from_iter(
                        std::iter::once(&table.id as &dyn rusqlite::ToSql)
                            .chain(key_sql.iter().map(|k| k as &dyn rusqlite::ToSql)),
                    ))
                })
                .map_err(|e| Failure::Store(e.into()))?;
            self.marked_all = false;
        } else if !self.marked_all {
            // Nothing but this statement can write now (the table has no triggers of
            // its own and foreign-key actions are off): silence every row, once for a
            // run of such statements, so they cost nothing extra.
            self.conn
                .prepare_cached("UPDATE __concord_applying SET tbl = ?1")
                .and_then(|mut s| s.execute([MARK_ALL]))
                .map_err(|e| Failure::Store(e.into()))?;
            self.marked_all = true;
        }
        // Only then can the database write this row beyond the statement itself.
        let watch = match &write {
            RowWrite::Insert { columns, .. } => {
                table.user_triggers || table.defaults_left_out(columns)
            }
            _ => table.user_triggers,
        };
        let before = match &write {
            RowWrite::Update { key, .. } if watch => self
                .stored_row(table, key)
                .map_err(|e| Failure::Store(e.into()))?,
            _ => None,
        };
        // Large blobs go in as zero-filled placeholders and are then written in place,
        // as large log bodies are (`SqliteStore::insert_log`). Not where the database
        // itself may read the row while it is written (user triggers, defaults being
        // watched) or where equal placeholders could collide (UNIQUE columns).
        let in_place: Vec<(usize, &[u8])> = match &write {
            RowWrite::Update {
                columns, values, ..
            }
            | RowWrite::Insert {
                columns, values, ..
            } if !watch => columns
                .iter()
                .zip(values.iter())
                .filter_map(|(&column, value)| match value {
                    Value::Blob(bytes)
                        if bytes.len() >= STREAMED_BODY_BYTES
                            && !table.unique_sets.iter().any(|set| set.contains(&column)) =>
                    {
                        Some((column, bytes.as_slice()))
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let value_bind = |column: usize, value: &'w Value| -> Bind<'w> {
            if in_place.iter().any(|&(c, _)| c == column) {
                Bind::Placeholder(ZeroBlob(value_len(value)))
            } else {
                Bind::Value(Sql(value))
            }
        };
        let (sql, binds): (Arc<str>, Vec<Bind<'_>>) = match write {
            RowWrite::Delete { key } => (
                table.delete_sql(),
                key.iter().map(|v| Bind::Value(Sql(v))).collect(),
            ),
            RowWrite::Update {
                key,
                columns,
                values,
            } => (
                table.update_sql(columns),
                columns
                    .iter()
                    .zip(values.iter())
                    .map(|(&c, v)| value_bind(c, v))
                    .chain(key.iter().map(|v| Bind::Value(Sql(v))))
                    .collect(),
            ),
            RowWrite::Insert {
                key,
                columns,
                values,
            } => (
                table.insert_sql(columns),
                key.iter()
                    .map(|v| Bind::Value(Sql(v)))
                    .chain(
                        columns
                            .iter()
                            .zip(values.iter())
                            .map(|(&c, v)| value_bind(c, v)),
                    )
                    .collect(),
            ),
        };
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut stmt| stmt.execute(params_from_iter(binds)))
            .map_err(refused)?;
        for (column, bytes) in in_place {
            self.write_in_place(table, key, column, bytes)
                .map_err(refused)?;
        }
        if watch {
            self.note_database_writes(table, &write, before)
                .map_err(|e| Failure::Store(e.into()))?;
        }
        if table.user_triggers {
            self.unfolded = true;
        }
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

    fn append_log(&mut self, e: LogEntry<'_>) -> Result<(), StoreError> {
        self.insert_log(&e)?;
        Ok(())
    }
}

impl SqliteStore {
    /// Folds local writes the database made during this apply (see the module docs)
    /// into the log, so the next merge and the commit see them.
    fn fold_database_writes(&mut self) -> Result<(), StoreError> {
        if std::mem::take(&mut self.unfolded) {
            self.capture_in_txn()?;
        }
        Ok(())
    }

    /// Writes `bytes` over the zero-filled placeholder of `column` in the row `key`
    /// (see [`Bind::Placeholder`]), or, where SQLite cannot open the value for writing
    /// (a WITHOUT ROWID table, an indexed column, a foreign key), writes it with an
    /// ordinary UPDATE.
    fn write_in_place(
        &self,
        table: &TableInfo,
        key: &[&Value],
        column: usize,
        bytes: &[u8],
    ) -> rusqlite::Result<()> {
        let rowid_sql = format!(
            "SELECT rowid FROM {} WHERE {}",
            quote(&table.name),
            table.key_predicate(1)
        );
        let rowid: rusqlite::Result<i64> =
            self.conn.prepare_cached(&rowid_sql).and_then(|mut s| {
                s.query_row(params_from_iter(key.iter().map(|v| Sql(v))), |r| r.get(0))
            });
        let written = rowid.and_then(|rowid| {
            self.conn
                .blob_open(
                    rusqlite::MAIN_DB,
                    table.name.as_str(),
                    table.columns[column].name.as_str(),
                    rowid,
                    false,
                )?
                .write_all_at(bytes, 0)
        });
        if written.is_ok() {
            return Ok(());
        }
        let value = Value::Blob(bytes.to_vec());
        self.conn
            .prepare_cached(&table.update_sql(&[column]))?
            .execute(params_from_iter(
                std::iter::once(Sql(&value)).chain(key.iter().map(|v| Sql(v))),
            ))?;
        Ok(())
    }

    /// The row with `key`, every column as SQLite holds it, if it exists.
    fn stored_row(
        &self,
        table: &TableInfo,
        key: &[&Value],
    ) -> Result<Option<Vec<codec::Stored>>, rusqlite::Error> {
        let mut stmt = self.conn.prepare_cached(&table.select_sql)?;
        let mut rows = stmt.query(params_from_iter(key.iter().map(|v| Sql(v))))?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        (0..table.columns.len())
            .map(|i| row.get_ref(i).map(codec::Stored::from))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// After Concord's own statement `write` (the row was `before` it, for an update):
    /// queues as local writes what the database changed in that row beyond the
    /// statement itself, which the capture triggers, silent for this row, did not
    /// record. A column counts when it does not hold what the statement alone would
    /// leave: the value Concord wrote, else (an update) its value before, else (an
    /// insert) NULL. Comparison is SQLite's `IS` against the column, so the column's
    /// affinity applies to the expected value as it did when it was written. A row the
    /// database removed is queued as a delete, one it brought back as an insert.
    fn note_database_writes(
        &mut self,
        table: &TableInfo,
        write: &RowWrite<'_, &Value>,
        before: Option<Vec<codec::Stored>>,
    ) -> Result<(), rusqlite::Error> {
        enum Expected<'a> {
            Wrote(&'a Value),
            Was(codec::Stored),
            Null,
        }
        let (key, expected): (&[&Value], Vec<(usize, Expected<'_>)>) = match write {
            RowWrite::Delete { key } => {
                if self.stored_row(table, key)?.is_some() {
                    self.queue_local(table, key, OP_INSERT, None)?;
                }
                return Ok(());
            }
            RowWrite::Update {
                key,
                columns,
                values,
            } => {
                let Some(before) = before else {
                    // Concord updated no row: nothing the database did here is new.
                    return Ok(());
                };
                let mut before: Vec<Option<codec::Stored>> = before.into_iter().map(Some).collect();
                let expected = (0..table.columns.len())
                    .filter(|i| !table.key_columns.contains(i))
                    .map(|i| match columns.iter().position(|&c| c == i) {
                        Some(at) => (i, Expected::Wrote(values[at])),
                        None => (i, before[i].take().map_or(Expected::Null, Expected::Was)),
                    })
                    .collect();
                (key, expected)
            }
            RowWrite::Insert {
                key,
                columns,
                values,
            } => {
                let expected = (0..table.columns.len())
                    .filter(|i| !table.key_columns.contains(i))
                    .map(|i| match columns.iter().position(|&c| c == i) {
                        Some(at) => (i, Expected::Wrote(values[at])),
                        None => (i, Expected::Null),
                    })
                    .collect();
                (key, expected)
            }
        };
        if expected.is_empty() {
            return Ok(());
        }
        let tests = expected
            .iter()
            .enumerate()
            .map(|(n, (i, _))| format!("({} IS ?{})", quote(&table.columns[*i].name), n + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {tests} FROM {} WHERE {}",
            quote(&table.name),
            table.key_predicate(expected.len() + 1)
        );
        let null = Value::Null;
        let params: Vec<Box<dyn rusqlite::ToSql + '_>> = expected
            .iter()
            .map(|(_, e)| -> Box<dyn rusqlite::ToSql + '_> {
                match e {
                    Expected::Wrote(v) => Box::new(Sql(v)),
                    Expected::Was(stored) => Box::new(stored.clone()),
                    Expected::Null => Box::new(Sql(&null)),
                }
            })
            .chain(
                key.iter()
                    .map(|v| -> Box<dyn rusqlite::ToSql + '_> { Box::new(Sql(v)) }),
            )
            .collect();
        let same: Option<Vec<bool>> = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params_from_iter(params.iter()), |r| {
                (0..expected.len()).map(|n| r.get(n)).collect()
            })
            .optional()?;
        let Some(same) = same else {
            // The database removed (or re-keyed) the row Concord wrote; a re-key was
            // captured, a removal of this row was not.
            return self.queue_local(table, key, OP_DELETE, None);
        };
        let changed: Vec<usize> = expected
            .iter()
            .zip(same)
            .filter(|(_, same)| !same)
            .map(|((i, _), _)| *i)
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.queue_local(table, key, OP_UPDATE, Some(&changed))
    }

    /// Adds a pending local write of the row with `key`, as its capture trigger would
    /// have: `columns` are the changed ones of an update.
    fn queue_local(
        &mut self,
        table: &TableInfo,
        key: &[&Value],
        op: i64,
        columns: Option<&[usize]>,
    ) -> Result<(), rusqlite::Error> {
        let mut masks = vec![0i64; table.mask_count()];
        for &c in columns.unwrap_or_default() {
            masks[c / COLUMNS_PER_MASK] |= 1i64 << (c % COLUMNS_PER_MASK);
        }
        let key_cols = (0..key.len())
            .map(|i| format!(", k{i}"))
            .collect::<String>();
        let mask_cols = (0..masks.len())
            .map(|m| format!(", m{m}"))
            .collect::<String>();
        let marks = (0..key.len() + masks.len())
            .map(|i| format!(", ?{}", i + 5))
            .collect::<String>();
        let sql = format!(
            "INSERT INTO __concord_pending(tbl, op, ncols, at{key_cols}{mask_cols}) VALUES (?1, ?2, ?3, ?4{marks})"
        );
        let head: [&dyn rusqlite::ToSql; 4] = [
            &table.id,
            &op,
            &(table.columns.len() as i64),
            &(now_ms() as i64),
        ];
        let keys: Vec<Sql<'_>> = key.iter().map(|v| Sql(v)).collect();
        self.conn.prepare_cached(&sql)?.execute(params_from_iter(
            head.into_iter()
                .chain(keys.iter().map(|k| k as &dyn rusqlite::ToSql))
                .chain(masks.iter().map(|m| m as &dyn rusqlite::ToSql)),
        ))?;
        self.unfolded = true;
        Ok(())
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
        // A decimal travels as text and would be converted (rounded, or its trailing
        // zeros dropped) just the same.
        (
            Affinity::Integer | Affinity::Real | Affinity::Numeric,
            Value::Text(s) | Value::Decimal(s),
        ) => looks_numeric(s),
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
