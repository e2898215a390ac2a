//! Apply's writes, batched: users' rows set-based, row clocks and log entries in
//! multi-row statements.
//!
//! Applying used to cost four round trips to the server for every change (read the row
//! clock, write the row, write the clock, append the log entry), which held MariaDB to a
//! few thousand changes a second. Now an apply transaction reads the row clocks of a
//! chunk of changes in one query per table ([`MyStore::prefetch_clocks`]), keeps the
//! clocks and log entries it writes in a [`MetaBatch`] and writes them with multi-row
//! `INSERT`s ([`MyStore::flush_meta`]); and users' rows, held back by the engine's rules
//! ([`concord_store::pending`]), are written a run at a time ([`MyStore::write_run`]):
//! `INSERT ... VALUES (..), (..)`, `DELETE ... WHERE (key) IN (..)`, and
//! `UPDATE ... SET c = CASE WHEN key = ? THEN ? ... END WHERE (key) IN (..)`.
//!
//! An update joins no derived table: MariaDB materialises one with column types taken
//! from the parameters, which refused bytes that are not UTF-8 on their way to a `BLOB`
//! and cut a long value short. A `CASE` hands each value to the column's own conversion,
//! exactly as the one-row `UPDATE` did; it costs rows × rows comparisons, so update
//! statements hold fewer rows. Every statement is kept below half the server's
//! `max_allowed_packet` and below the 65,535 parameters a prepared statement may have.
//!
//! Nothing else changes: the batch lives inside the apply transaction, under Concord's
//! lock, and is written before that transaction commits; a clock it holds is the one a
//! read of `concord_rows` would return. Log entries are inserted in the order they were
//! made, so `pos` grows in the same order as before. A batch dropped unwritten (on
//! error) goes with its transaction, which rolls back.

use concord_core::PrimaryKey;
use concord_core::merge::RowClock;
use concord_store::meta_batch::{MetaBatch, WrittenClock};
use concord_store::pending::{RowRun, WriteKind};
use mysql::Value as My;
use mysql::prelude::Queryable;

use crate::schema::{TableInfo, quote};
use crate::store::{LoadClockError, MyStore};

/// Rows in one `INSERT` or `DELETE` at most.
const MAX_ROWS: usize = 1_000;
/// Rows in one `UPDATE` at most (its `CASE` costs rows × rows comparisons).
const MAX_UPDATE_ROWS: usize = 40;
/// A prepared statement's limit on parameters.
const MAX_PARAMS: usize = 65_535;

/// A parameter's approximate size on the wire.
pub(crate) fn param_size(p: &My) -> usize {
    match p {
        My::Bytes(b) => b.len() + 9,
        _ => 9,
    }
}

impl MyStore {
    /// The most a statement's parameters may take: half the server's packet.
    fn statement_budget(&self) -> usize {
        (self.max_packet / 2).max(64 * 1024)
    }

    /// Reads the clocks of `keys` not held by `batch` yet, in one query per table and
    /// thousand keys. A key without a row gets the default clock, as
    /// [`MyStore::load_clock`] would return.
    pub(crate) fn prefetch_clocks<'k>(
        &mut self,
        batch: &mut MetaBatch,
        keys: impl IntoIterator<Item = (i32, &'k [u8])>,
    ) -> Result<(), mysql::Error> {
        let wanted = batch.keys_to_read(keys.into_iter().map(|(t, k)| (i64::from(t), k)));
        for (table, keys) in wanted {
            for chunk in keys.chunks(MAX_ROWS) {
                let sql = format!(
                    "SELECT pk, cl, clock FROM concord_rows WHERE tbl = ? AND pk IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let mut params: Vec<My> = Vec::with_capacity(chunk.len() + 1);
                params.push(My::from(table));
                params.extend(chunk.iter().map(|pk| My::from(pk.to_vec())));
                let rows: Vec<(Vec<u8>, i64, Vec<u8>)> =
                    self.conn.exec(sql, mysql::Params::Positional(params))?;
                for (pk, cl, blob) in rows {
                    let clock = self.origins.decode_clock(cl, &blob);
                    batch.hold_read(table, pk, clock);
                }
                batch.hold_missing(table, chunk);
            }
        }
        Ok(())
    }

    /// A row's clock: the batch's if it holds one, else read from `concord_rows`.
    pub(crate) fn batched_clock(
        &mut self,
        batch: &MetaBatch,
        table: i32,
        key: &PrimaryKey,
    ) -> Result<RowClock, LoadClockError> {
        match batch.clock(i64::from(table), key) {
            Some(held) => held.map_err(LoadClockError::Corrupt),
            None => self.load_clock(table, key),
        }
    }

    /// Writes the batch's log entries (in order) and changed clocks, a few multi-row
    /// statements each, then empties it.
    pub(crate) fn flush_meta(&mut self, batch: &mut MetaBatch) -> Result<(), mysql::Error> {
        let budget = self.statement_budget();
        let log = batch.take_log();
        let mut rows: Vec<Vec<My>> = Vec::new();
        let mut bytes = 0;
        for e in log {
            let size = e.body.len() + e.pk.len() + 64;
            if !rows.is_empty() && (rows.len() >= MAX_ROWS || bytes + size > budget) {
                self.insert_rows(LOG_INSERT, "", std::mem::take(&mut rows))?;
                bytes = 0;
            }
            bytes += size;
            rows.push(vec![
                e.origin.into(),
                e.seq.into(),
                e.hlc.into(),
                e.table.into(),
                e.pk.into(),
                e.cl.into(),
                e.body.into(),
                e.txn_end.into(),
            ]);
        }
        if !rows.is_empty() {
            self.insert_rows(LOG_INSERT, "", std::mem::take(&mut rows))?;
        }
        let mut bytes = 0;
        for WrittenClock { table, pk, clock } in batch.take_written_clocks() {
            let blob = concord_store::encode_clock(&clock, |node| {
                self.origin_index(node).map(|i| i as u32)
            })?;
            let size = blob.len() + pk.len() + 32;
            if !rows.is_empty() && (rows.len() >= MAX_ROWS || bytes + size > budget) {
                self.insert_rows(CLOCK_INSERT, CLOCK_UPSERT, std::mem::take(&mut rows))?;
                bytes = 0;
            }
            bytes += size;
            rows.push(vec![
                table.into(),
                pk.into(),
                (clock.causal_length.0 as i64).into(),
                blob.into(),
            ]);
        }
        if !rows.is_empty() {
            self.insert_rows(CLOCK_INSERT, CLOCK_UPSERT, rows)?;
        }
        Ok(())
    }

    /// `{head} VALUES (?, ..), (?, ..) {tail}` with `rows` as its parameters.
    fn insert_rows(
        &mut self,
        head: &str,
        tail: &str,
        rows: Vec<Vec<My>>,
    ) -> Result<(), mysql::Error> {
        let width = rows.first().map_or(0, Vec::len);
        let tuple = format!("({})", vec!["?"; width].join(", "));
        let sql = format!(
            "{head} VALUES {} {tail}",
            vec![tuple; rows.len()].join(", ")
        );
        let params: Vec<My> = rows.into_iter().flatten().collect();
        self.conn.exec_drop(sql, mysql::Params::Positional(params))
    }

    /// Writes a run of users' rows, in order.
    pub(crate) fn write_run(&mut self, run: RowRun<TableInfo, My>) -> Result<(), mysql::Error> {
        let table = &*run.table;
        let keys = table.key_columns.len();
        let width = run.width(keys).max(1);
        // Parameters a row takes in the statement ([`bind`]).
        let per_row = match run.kind {
            WriteKind::Update => run.columns.len() * (keys + 1) + keys,
            _ => width,
        };
        let max_rows = match run.kind {
            WriteKind::Update => MAX_UPDATE_ROWS,
            _ => MAX_ROWS,
        }
        .min(MAX_PARAMS / per_row.max(1))
        .max(1);
        let budget = self.statement_budget();
        let mut chunk: Vec<My> = Vec::new();
        let mut bytes = 0;
        let mut params = run.params.into_iter();
        loop {
            let row: Vec<My> = params.by_ref().take(width).collect();
            let size: usize = row.iter().map(param_size).sum();
            let rows = chunk.len() / width;
            if !chunk.is_empty() && (row.is_empty() || rows >= max_rows || bytes + size > budget) {
                let sql = rows_sql(table, run.kind, &run.columns, rows);
                let bound = bind(run.kind, keys, &run.columns, std::mem::take(&mut chunk));
                self.conn.exec_drop(sql, mysql::Params::Positional(bound))?;
                bytes = 0;
            }
            if row.is_empty() {
                return Ok(());
            }
            bytes += size;
            chunk.extend(row);
        }
    }
}

const LOG_INSERT: &str = "INSERT INTO concord_log(origin, seq, hlc, tbl, pk, cl, body, txn_end)";
const CLOCK_INSERT: &str = "INSERT INTO concord_rows(tbl, pk, cl, clock)";
const CLOCK_UPSERT: &str = "ON DUPLICATE KEY UPDATE cl = VALUES(cl), clock = VALUES(clock)";

/// The SQL writing `rows` rows of one shape ([`bind`] orders its parameters).
fn rows_sql(table: &TableInfo, kind: WriteKind, columns: &[usize], rows: usize) -> String {
    let name = |p: usize| quote(&table.columns[p].name);
    let key_names: Vec<String> = table.key_columns.iter().map(|&p| name(p)).collect();
    let key_tuple = format!("({})", vec!["?"; key_names.len()].join(", "));
    let key_list = format!(
        "({}) IN ({})",
        key_names.join(", "),
        vec![key_tuple; rows].join(", ")
    );
    match kind {
        WriteKind::Insert => {
            let names: Vec<String> = table
                .key_columns
                .iter()
                .chain(columns)
                .map(|&p| name(p))
                .collect();
            let tuple = format!("({})", vec!["?"; names.len()].join(", "));
            format!(
                "INSERT INTO {} ({}) VALUES {}",
                table.qualified(),
                names.join(", "),
                vec![tuple; rows].join(", ")
            )
        }
        WriteKind::Delete => format!("DELETE FROM {} WHERE {key_list}", table.qualified()),
        WriteKind::Update => {
            let when = format!(
                "WHEN {} THEN ?",
                key_names
                    .iter()
                    .map(|k| format!("{k} = ?"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            );
            let whens = vec![when; rows].join(" ");
            let sets: Vec<String> = columns
                .iter()
                .map(|&p| format!("{} = CASE {whens} END", name(p)))
                .collect();
            format!(
                "UPDATE {} SET {} WHERE {key_list}",
                table.qualified(),
                sets.join(", ")
            )
        }
    }
}

/// Orders a chunk's parameters (row after row, each the key then the values) as
/// [`rows_sql`] wants them.
fn bind(kind: WriteKind, keys: usize, columns: &[usize], chunk: Vec<My>) -> Vec<My> {
    match kind {
        WriteKind::Insert | WriteKind::Delete => chunk,
        WriteKind::Update => {
            let width = keys + columns.len();
            let rows: Vec<&[My]> = chunk.chunks(width).collect();
            let mut out = Vec::with_capacity(rows.len() * (columns.len() * (keys + 1) + keys));
            for c in 0..columns.len() {
                for row in &rows {
                    out.extend(row[..keys].iter().cloned());
                    out.push(row[keys + c].clone());
                }
            }
            for row in &rows {
                out.extend(row[..keys].iter().cloned());
            }
            out
        }
    }
}
