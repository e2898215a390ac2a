//! Users' rows written set-based: a run of writes of one table, kind and column set
//! ([`concord_store::pending`]) becomes a few multi-row statements instead of one
//! statement per row.
//!
//! Inserts are `INSERT ... VALUES (..), (..)`; updates and deletes join the table to a
//! `VALUES` list on the key (`UPDATE ... FROM (VALUES ..) AS v`, `DELETE ... USING`).
//! The statements are prepared with the parameter types PostgreSQL inferred for the
//! one-row statement of the same shape (the columns' own types, or `text` for a type
//! written through its input function), so a value is sent, cast and checked exactly as
//! a one-row write would; a `VALUES` list alone would type every parameter as `text`.
//! Full chunks reuse one prepared statement per shape; a run of one row uses the
//! one-row statement. The engine never puts a key twice in a run, so no row is matched
//! twice by one `UPDATE ... FROM` (whose outcome would then be undefined).
//!
//! An `UPDATE` or `DELETE` joined to a thousand-row `VALUES` list is planned by cost,
//! and PostgreSQL's estimate (four random page reads per index probe) picks a hash join
//! over a sequential scan of the whole table for each statement: every thousand rows
//! would read the table once, quadratic in a large transaction. While such a run is
//! written, hash and merge joins are turned off for the transaction (`SET LOCAL`, back
//! to their defaults after the run), so the join is a nested loop probing the key's
//! index, a few rows read per row written.
//!
//! Parameters travel in the extended protocol (binary where the type allows), not as
//! a `COPY` into a staging table: `COPY` would need a temporary table per shape and a
//! second statement, and a multi-row statement already removes the round trip per row
//! that made apply slow.

use concord_store::pending::{RowRun, WriteKind};
use postgres::Statement;
use postgres::types::Type;

use crate::schema::{TableInfo, quote};
use crate::store::PgStore;
use crate::types::{Param, sql_refs};

/// Rows in one statement at most: larger statements plan no faster per row.
const MAX_ROWS: usize = 1_000;
/// PostgreSQL's limit on the parameters of one statement.
const MAX_PARAMS: usize = 65_535;
/// A parameter's approximate size in memory, for `PendingRows`' flush bound.
pub(crate) fn param_size(p: &Param) -> usize {
    match p {
        Param::Numeric(s) | Param::Text(s) | Param::Json(s) => s.len() + 24,
        Param::Bytes(b) => b.len() + 24,
        _ => 24,
    }
}

impl PgStore {
    /// The one-row statement of a shape, prepared once per transaction. Its parameters
    /// are the key's then the values for an insert, the values then the key for an
    /// update, the key for a delete.
    pub(crate) fn one_row_statement(
        &mut self,
        table: &TableInfo,
        kind: WriteKind,
        columns: &[usize],
    ) -> Result<Statement, postgres::Error> {
        let cache_key = (table.id, kind, columns.to_vec());
        if let Some(stmt) = self.write_statements.get(&cache_key) {
            return Ok(stmt.clone());
        }
        let sql = match kind {
            WriteKind::Delete => table.delete_sql(),
            WriteKind::Update => table.update_sql(columns),
            WriteKind::Insert => table.insert_sql(columns),
        };
        let stmt = self.statement(&sql)?;
        self.write_statements.insert(cache_key, stmt.clone());
        Ok(stmt)
    }

    /// Writes a run of rows, in order.
    pub(crate) fn write_run(
        &mut self,
        run: &RowRun<TableInfo, Param>,
    ) -> Result<(), postgres::Error> {
        let table = &*run.table;
        let keys = table.key_columns.len();
        let width = run.width(keys);
        let one = self.one_row_statement(table, run.kind, &run.columns)?;
        // The run holds each row as key then values; the one-row update wants the
        // values first.
        let mut types: Vec<Type> = one.params().to_vec();
        if run.kind == WriteKind::Update {
            types.rotate_left(run.columns.len());
        }
        let per = (MAX_PARAMS / width.max(1)).clamp(1, MAX_ROWS);
        // See the module doc: a join to the key, by the key's index.
        let joins = run.kind != WriteKind::Insert && run.rows > 1;
        if joins {
            self.client.batch_execute(
                "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
            )?;
        }
        self.write_chunks(run, &one, &types, per)?;
        if joins {
            // Not after a failure: the transaction is aborted and rolls back anyway.
            self.client.batch_execute(
                "SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT",
            )?;
        }
        Ok(())
    }

    fn write_chunks(
        &mut self,
        run: &RowRun<TableInfo, Param>,
        one: &Statement,
        types: &[Type],
        per: usize,
    ) -> Result<(), postgres::Error> {
        let keys = run.table.key_columns.len();
        let width = run.width(keys);
        for chunk in run.params.chunks(width * per) {
            let rows = chunk.len() / width.max(1);
            if rows == 1 {
                let ordered: Vec<&Param> = match run.kind {
                    WriteKind::Update => chunk[keys..].iter().chain(&chunk[..keys]).collect(),
                    _ => chunk.iter().collect(),
                };
                self.client.execute(one, &sql_refs(&ordered))?;
                continue;
            }
            let stmt = self.set_statement(run, rows, rows == per, types)?;
            let refs: Vec<&Param> = chunk.iter().collect();
            self.client.execute(&stmt, &sql_refs(&refs))?;
        }
        Ok(())
    }

    /// The statement writing `rows` rows of `run`'s shape; kept for the transaction
    /// when `keep` (a full chunk, which recurs).
    fn set_statement(
        &mut self,
        run: &RowRun<TableInfo, Param>,
        rows: usize,
        keep: bool,
        types: &[Type],
    ) -> Result<Statement, postgres::Error> {
        let cache_key = (run.table.id, run.kind, run.columns.clone(), rows);
        if let Some(stmt) = self.set_statements.get(&cache_key) {
            return Ok(stmt.clone());
        }
        let sql = set_sql(&run.table, run.kind, &run.columns, rows);
        let all_types: Vec<Type> = (0..rows).flat_map(|_| types.iter().cloned()).collect();
        let stmt = self.client.prepare_typed(&sql, &all_types)?;
        if keep {
            self.set_statements.insert(cache_key, stmt.clone());
        }
        Ok(stmt)
    }
}

/// The SQL writing `rows` rows of one shape; parameters row after row, each the key's
/// values then those of `columns`.
fn set_sql(table: &TableInfo, kind: WriteKind, columns: &[usize], rows: usize) -> String {
    let all: Vec<usize> = table.key_columns.iter().chain(columns).copied().collect();
    let width = all.len();
    let mut values = String::with_capacity(rows * width * 6);
    for r in 0..rows {
        if r > 0 {
            values.push_str(", ");
        }
        values.push('(');
        for (j, &p) in all.iter().enumerate() {
            if j > 0 {
                values.push_str(", ");
            }
            values.push_str(&table.placeholder(p, r * width + j + 1));
        }
        values.push(')');
    }
    let aliases: Vec<String> = (0..width).map(|j| format!("c{j}")).collect();
    let aliases = aliases.join(", ");
    let key_match: Vec<String> = table
        .key_columns
        .iter()
        .enumerate()
        .map(|(j, &p)| {
            format!(
                "concord_t.{} = concord_v.c{j}",
                quote(&table.columns[p].name)
            )
        })
        .collect();
    let key_match = key_match.join(" AND ");
    let qualified = table.qualified();
    match kind {
        WriteKind::Insert => {
            let names: Vec<String> = all.iter().map(|&p| quote(&table.columns[p].name)).collect();
            format!(
                "INSERT INTO {qualified} ({}) VALUES {values}",
                names.join(", ")
            )
        }
        WriteKind::Update => {
            let keys = table.key_columns.len();
            let sets: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    format!(
                        "{} = concord_v.c{}",
                        quote(&table.columns[p].name),
                        keys + i
                    )
                })
                .collect();
            format!(
                "UPDATE {qualified} AS concord_t SET {} FROM (VALUES {values}) AS concord_v({aliases}) WHERE {key_match}",
                sets.join(", ")
            )
        }
        WriteKind::Delete => format!(
            "DELETE FROM {qualified} AS concord_t USING (VALUES {values}) AS concord_v({aliases}) WHERE {key_match}"
        ),
    }
}
