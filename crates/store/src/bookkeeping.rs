//! Concord's own tables, read and written by one set of statements for every database.
//!
//! Each store keeps the same bookkeeping tables (`log`, `conflicts`, `failures`, ...)
//! with the same columns; only their names (`concord.log`, `concord_log`,
//! `__concord_log`), the placeholder syntax and the driver differ. The statements that
//! record a conflict, set a change aside, list failures or prune the log were written
//! three times once, and the copies drifted. Here each is written once, in a template
//! where `{name}` is Concord's table `name` and `?` a parameter; a store supplies only
//! [`SqlDriver`]: how it spells both, and how it runs a statement with [`Arg`]s and
//! returns rows as [`Cell`]s. How a conflict's values are stored is the store's own
//! (a SQLite file keeps them as native values a user can read in its shell; the servers
//! keep the [`crate::format`] encoding), so [`Arg::Value`] and
//! [`SqlDriver::stored_value`] are the driver's too.
//!
//! The engine ([`crate::engine::ApplyBackend::sql`]) and the log and snapshot readers
//! ([`crate::LogSource::sql`]) reach a store's connection this way. Two reads stay with
//! each store: the log scan, which lends keys and bodies from the driver's row buffer
//! rather than copying every one (it is the hot path of a sync), and the listing of
//! tables and columns, whose SQL differs (schemas, string aggregation).

use concord_core::{Change, NodeId, Value, VersionVector};

use crate::engine::{ConflictRow, now_ms};
use crate::{ConflictRecord, FailureRecord, KeyStart, RawClock, StoreError, clock_page_sql};

/// A parameter of a bookkeeping statement.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// SQL NULL.
    Null,
    /// An integer (the driver fits it to the column's width).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
    /// A user's value, stored as the store keeps conflict values.
    Value(&'a Value),
}

/// A column of a row a bookkeeping query returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer of any width.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes (also text, from drivers that do not tell them apart).
    Bytes(Vec<u8>),
}

/// What a database supplies so the statements here run on it.
pub trait SqlDriver {
    /// What stands before the name of each of Concord's tables (`concord.`,
    /// `concord_`, `__concord_`).
    fn table_prefix(&self) -> &'static str;
    /// The `n`th parameter (from 1) as the database writes it (`$1`, `?`, `?1`).
    fn placeholder(&self, n: usize) -> String;
    /// Runs a statement; returns how many rows it changed.
    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    /// Runs a query and hands each row, in order, to `each`.
    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// A value that was written as [`Arg::Value`], read back. By default the
    /// [`crate::format`] encoding the servers keep; SQLite keeps native values.
    fn stored_value(&self, cell: Cell) -> Value {
        match cell {
            Cell::Bytes(b) => crate::format::decode::<Value>(&b).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
    /// Whether a parameter of `len` bytes can be sent at all (MariaDB's
    /// `max_allowed_packet` bounds it). A change set aside that cannot is recorded
    /// without its body: it could not be applied there later either.
    fn binds(&self, _len: usize) -> bool {
        true
    }
}

/// `template` in the database's own spelling: `{name}` becomes the table `name` with
/// the store's prefix, each `?` the next placeholder.
pub fn render<D: SqlDriver + ?Sized>(db: &D, template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut n = 0;
    let mut rest = template;
    while let Some(at) = rest.find(['{', '?']) {
        out.push_str(&rest[..at]);
        if rest[at..].starts_with('?') {
            n += 1;
            out.push_str(&db.placeholder(n));
            rest = &rest[at + 1..];
        } else {
            let end = rest[at..].find('}').map_or(rest.len(), |e| at + e);
            out.push_str(db.table_prefix());
            out.push_str(&rest[at + 1..end]);
            rest = rest.get(end + 1..).unwrap_or("");
        }
    }
    out.push_str(rest);
    out
}

fn corrupt(table: &'static str, column: usize, found: &Cell) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: format!("column {column}: unexpected {found:?}"),
    }
}

/// The columns of one row, taken by position with the type the caller expects.
pub struct Row {
    cells: Vec<Cell>,
    table: &'static str,
}

impl Row {
    /// Wraps the cells of a row of Concord's table `table` (named in errors).
    pub fn new(cells: Vec<Cell>, table: &'static str) -> Self {
        Self { cells, table }
    }

    fn take(&mut self, i: usize) -> Cell {
        self.cells
            .get_mut(i)
            .map_or(Cell::Null, |c| std::mem::replace(c, Cell::Null))
    }

    /// Column `i` as an integer (drivers may return integers as text).
    pub fn int(&mut self, i: usize) -> Result<i64, StoreError> {
        match self.take(i) {
            Cell::Int(v) => Ok(v),
            Cell::Text(t) => t
                .parse()
                .map_err(|_| corrupt(self.table, i, &Cell::Text(t))),
            Cell::Bytes(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| corrupt(self.table, i, &Cell::Bytes(b))),
            other => Err(corrupt(self.table, i, &other)),
        }
    }

    /// Column `i` as text, `None` for NULL.
    pub fn opt_text(&mut self, i: usize) -> Result<Option<String>, StoreError> {
        match self.take(i) {
            Cell::Null => Ok(None),
            Cell::Text(t) => Ok(Some(t)),
            Cell::Bytes(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|e| corrupt(self.table, i, &Cell::Bytes(e.into_bytes()))),
            Cell::Int(v) => Ok(Some(v.to_string())),
            other => Err(corrupt(self.table, i, &other)),
        }
    }

    /// Column `i` as text.
    pub fn text(&mut self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| corrupt(self.table, i, &Cell::Null))
    }

    /// Column `i` as bytes.
    pub fn bytes(&mut self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.take(i) {
            Cell::Bytes(b) => Ok(b),
            Cell::Text(t) => Ok(t.into_bytes()),
            other => Err(corrupt(self.table, i, &other)),
        }
    }

    /// Column `i` as a node id.
    pub fn node_id(&mut self, i: usize) -> Result<NodeId, StoreError> {
        let bytes = self.bytes(i)?;
        NodeId::try_from(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            table: self.table,
            detail: format!("column {i}: {e}"),
        })
    }

    /// Column `i` as it is, for [`SqlDriver::stored_value`].
    pub fn cell(&mut self, i: usize) -> Cell {
        self.take(i)
    }
}

/// Runs `template` (see [`render`]).
pub fn run<D: SqlDriver + ?Sized>(
    db: &mut D,
    template: &str,
    args: &[Arg<'_>],
) -> Result<u64, StoreError> {
    let sql = render(db, template);
    db.run(&sql, args)
}

/// Runs the query `template` and maps each row of Concord's table `table` with `map`.
pub fn query<D: SqlDriver + ?Sized, T>(
    db: &mut D,
    template: &str,
    args: &[Arg<'_>],
    table: &'static str,
    mut map: impl FnMut(&mut Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let sql = render(db, template);
    let mut out = Vec::new();
    db.rows(&sql, args, &mut |cells| {
        out.push(map(&mut Row::new(cells, table))?);
        Ok(())
    })?;
    Ok(out)
}

/// The one value of a query that returns one row of one integer column.
fn single_int<D: SqlDriver + ?Sized>(
    db: &mut D,
    template: &str,
    args: &[Arg<'_>],
    table: &'static str,
) -> Result<i64, StoreError> {
    let values = query(db, template, args, table, |r| r.int(0))?;
    Ok(values.first().copied().unwrap_or(0))
}

/// Records a conflict the engine reported.
pub fn record_conflict<D: SqlDriver + ?Sized>(
    db: &mut D,
    c: &ConflictRow<'_>,
) -> Result<(), StoreError> {
    let key_text = c.key.to_string();
    let local_version = c.local_version.to_string();
    let remote_version = c.remote_version.to_string();
    run(
        db,
        "INSERT INTO {conflicts}(tbl, pk, key_text, kind, column_name, local_value,
             local_version, remote_value, remote_version, winner)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Arg::Text(c.table),
            Arg::Bytes(c.key.as_bytes()),
            Arg::Text(&key_text),
            Arg::Text(c.kind),
            c.column.map_or(Arg::Null, Arg::Text),
            Arg::Value(c.local_value),
            Arg::Text(&local_version),
            Arg::Value(c.remote_value),
            Arg::Text(&remote_version),
            Arg::Text(c.winner),
        ],
    )?;
    Ok(())
}

/// Sets `change` aside: records why it could not be applied, with its encoding `body`
/// so it can be retried.
pub fn record_failure<D: SqlDriver + ?Sized>(
    db: &mut D,
    change: &Change,
    body: &[u8],
    reason: &str,
) -> Result<(), StoreError> {
    let origin = change.origin.to_string();
    let key_text = change.key.to_string();
    let body = if db.binds(body.len()) {
        Arg::Bytes(body)
    } else {
        Arg::Null
    };
    run(
        db,
        "INSERT INTO {failures}(origin, seq, tbl, key_text, error, at, body)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            Arg::Text(&origin),
            Arg::Int(change.seq as i64),
            Arg::Text(&change.table),
            Arg::Text(&key_text),
            Arg::Text(reason),
            Arg::Int(now_ms() as i64),
            body,
        ],
    )?;
    Ok(())
}

/// The encodings of the changes set aside, oldest first.
pub fn set_aside_changes<D: SqlDriver + ?Sized>(db: &mut D) -> Result<Vec<Vec<u8>>, StoreError> {
    query(
        db,
        "SELECT body FROM {failures} WHERE body IS NOT NULL ORDER BY id",
        &[],
        "failures",
        |r| r.bytes(0),
    )
}

/// Forgets the failure of change `seq` of `origin` (applied or discarded since).
pub fn forget_failure<D: SqlDriver + ?Sized>(
    db: &mut D,
    origin: NodeId,
    seq: u64,
) -> Result<(), StoreError> {
    let origin = origin.to_string();
    run(
        db,
        "DELETE FROM {failures} WHERE origin = ? AND seq = ?",
        &[Arg::Text(&origin), Arg::Int(seq as i64)],
    )?;
    Ok(())
}

/// Forgets every failure; returns how many there were.
pub fn forget_all_failures<D: SqlDriver + ?Sized>(db: &mut D) -> Result<u64, StoreError> {
    run(db, "DELETE FROM {failures}", &[])
}

/// Removes the log entries of `origin` through `seq` (a verbatim copy being replaced).
pub fn drop_log_through<D: SqlDriver + ?Sized>(
    db: &mut D,
    origin: u32,
    seq: u64,
) -> Result<(), StoreError> {
    run(
        db,
        "DELETE FROM {log} WHERE origin = ? AND seq <= ?",
        &[Arg::Int(i64::from(origin)), Arg::Int(seq as i64)],
    )?;
    Ok(())
}

/// Changes set aside because they could not be applied, oldest first.
pub fn failures<D: SqlDriver + ?Sized>(db: &mut D) -> Result<Vec<FailureRecord>, StoreError> {
    query(
        db,
        "SELECT origin, seq, tbl, key_text, error, at FROM {failures} ORDER BY id",
        &[],
        "failures",
        |r| {
            Ok(FailureRecord {
                origin: r.text(0)?,
                seq: r.int(1)? as u64,
                table: r.text(2)?,
                key: r.text(3)?,
                error: r.text(4)?,
                at_ms: r.int(5)? as u64,
            })
        },
    )
}

/// Recorded conflicts, oldest first.
pub fn conflicts<D: SqlDriver + ?Sized>(db: &mut D) -> Result<Vec<ConflictRecord>, StoreError> {
    let records = query(
        db,
        "SELECT id, tbl, key_text, kind, column_name, local_value, local_version,
                remote_value, remote_version, winner
         FROM {conflicts} ORDER BY id",
        &[],
        "conflicts",
        |r| {
            Ok((
                ConflictRecord {
                    id: r.int(0)?,
                    table: r.text(1)?,
                    key: r.text(2)?,
                    kind: r.text(3)?,
                    column: r.opt_text(4)?,
                    local_value: Value::Null,
                    local_version: r.text(6)?,
                    remote_value: Value::Null,
                    remote_version: r.text(8)?,
                    winner: r.text(9)?,
                },
                r.cell(5),
                r.cell(7),
            ))
        },
    )?;
    Ok(records
        .into_iter()
        .map(|(mut record, local, remote)| {
            record.local_value = db.stored_value(local);
            record.remote_value = db.stored_value(remote);
            record
        })
        .collect())
}

/// Every origin with its index.
pub fn origins<D: SqlDriver + ?Sized>(db: &mut D) -> Result<Vec<(u32, NodeId)>, StoreError> {
    query(
        db,
        "SELECT id, node_id FROM {origins}",
        &[],
        "origins",
        |r| Ok((r.int(0)? as u32, r.node_id(1)?)),
    )
}

/// What the store holds from each origin: its version vector as stored.
pub fn held<D: SqlDriver + ?Sized>(db: &mut D) -> Result<VersionVector, StoreError> {
    let rows = query(
        db,
        "SELECT node_id, seq FROM {origins} WHERE seq > 0",
        &[],
        "origins",
        |r| Ok((r.node_id(0)?, r.int(1)? as u64)),
    )?;
    let mut held = VersionVector::new();
    for (node, seq) in rows {
        held.set(node, seq);
    }
    Ok(held)
}

/// The last position in the log (0 if empty).
pub fn last_position<D: SqlDriver + ?Sized>(db: &mut D) -> Result<i64, StoreError> {
    single_int(db, "SELECT coalesce(max(pos), 0) FROM {log}", &[], "log")
}

/// The position of `(origin index, seq)`, if it is still in the log.
pub fn position_of<D: SqlDriver + ?Sized>(
    db: &mut D,
    origin: u32,
    seq: u64,
) -> Result<Option<i64>, StoreError> {
    let found = query(
        db,
        "SELECT pos FROM {log} WHERE origin = ? AND seq = ?",
        &[Arg::Int(i64::from(origin)), Arg::Int(seq as i64)],
        "log",
        |r| r.int(0),
    )?;
    Ok(found.first().copied())
}

/// The ids of the tables tracked now.
pub fn tracked_tables<D: SqlDriver + ?Sized>(db: &mut D) -> Result<Vec<i64>, StoreError> {
    query(
        db,
        "SELECT id FROM {tables} WHERE tracked",
        &[],
        "tables",
        |r| r.int(0),
    )
}

/// Up to `limit` row clocks of `table` from `start`, below `below`, in key order.
pub fn clock_page<D: SqlDriver + ?Sized>(
    db: &mut D,
    table: i64,
    start: KeyStart<'_>,
    below: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<RawClock>, StoreError> {
    let rows = format!("{}rows", db.table_prefix());
    let sql = clock_page_sql(&rows, start, below.is_some(), |n| db.placeholder(n));
    let mut args = vec![Arg::Int(table), Arg::Bytes(start.key())];
    args.extend(below.map(Arg::Bytes));
    args.push(Arg::Int(limit as i64));
    let mut out = Vec::new();
    db.rows(&sql, &args, &mut |cells| {
        let mut r = Row::new(cells, "rows");
        out.push(RawClock {
            key: r.bytes(0)?,
            causal_length: r.int(1)?,
            clock: r.bytes(2)?,
        });
        Ok(())
    })?;
    Ok(out)
}

/// The number of rows in Concord's table `table` (a name without its prefix).
pub fn count<D: SqlDriver + ?Sized>(db: &mut D, table: &'static str) -> Result<u64, StoreError> {
    let template = format!("SELECT count(*) FROM {{{table}}}");
    Ok(single_int(db, &template, &[], table)? as u64)
}

/// Deletes the oldest change-log entries so that at most `keep` remain; returns how
/// many were deleted. The version vector is unaffected: it says what the replica holds,
/// not what it can still send; a peer that needs a deleted entry is told it is behind
/// the retention limit ([`StoreError::Pruned`]).
pub fn prune_log<D: SqlDriver + ?Sized>(db: &mut D, keep: u64) -> Result<u64, StoreError> {
    // Positions only grow and entries are only removed from the front, so the cutoff
    // follows from the last position: no scan of the kept entries (an OFFSET over a
    // million entries cost ~50 ms after every capture).
    let last = single_int(db, "SELECT coalesce(max(pos), 0) FROM {log}", &[], "log")?;
    let cutoff = last.saturating_sub(keep.min(i64::MAX as u64) as i64);
    if cutoff <= 0 {
        return Ok(0);
    }
    run(db, "DELETE FROM {log} WHERE pos <= ?", &[Arg::Int(cutoff)])
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Spelling(&'static str, bool);

    impl SqlDriver for Spelling {
        fn table_prefix(&self) -> &'static str {
            self.0
        }
        fn placeholder(&self, n: usize) -> String {
            if self.1 { format!("${n}") } else { "?".into() }
        }
        fn run(&mut self, _: &str, _: &[Arg<'_>]) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn rows(
            &mut self,
            _: &str,
            _: &[Arg<'_>],
            _: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn stored_value(&self, _: Cell) -> Value {
            Value::Null
        }
    }

    #[test]
    fn a_template_names_tables_and_numbers_parameters_in_each_dialect() {
        let template = "DELETE FROM {log} WHERE origin = ? AND seq <= ?";
        assert_eq!(
            render(&Spelling("concord.", true), template),
            "DELETE FROM concord.log WHERE origin = $1 AND seq <= $2"
        );
        assert_eq!(
            render(&Spelling("__concord_", false), template),
            "DELETE FROM __concord_log WHERE origin = ? AND seq <= ?"
        );
    }

    #[test]
    fn a_cell_of_the_wrong_type_is_named_not_guessed() {
        let mut row = Row::new(vec![Cell::Bytes(b"12".to_vec()), Cell::Float(1.5)], "log");
        assert_eq!(row.int(0).unwrap(), 12);
        let err = row.text(1).unwrap_err().to_string();
        assert!(err.contains("log") && err.contains("column 1"), "{err}");
    }
}
