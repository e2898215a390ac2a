//! SQLite as a [`SqlDriver`]: how the statements Concord writes once for every store
//! ([`concord_store::bookkeeping`]) run on a file.
//!
//! SQLite's connection is used through a shared reference, so [`Sqlite`] borrows it
//! and read-only listings (`failures`, `conflicts`) need no `&mut` store. Conflict
//! values are kept as native SQLite values ([`crate::codec::Sql`]), readable in the `sqlite3` shell.

use concord_core::Value;
use concord_store::StoreError;
use concord_store::bookkeeping::{Arg, Cell, SqlDriver};
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

use crate::codec::{from_sql, value_ref};

/// A connection to a tracked file, running Concord's bookkeeping statements.
/// Public only as the `Sql` type of the store's backends; nothing outside builds one.
#[allow(unreachable_pub)]
pub struct Sqlite<'c>(pub(crate) &'c rusqlite::Connection);

struct Bound<'a>(Arg<'a>);

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Arg::Null => ValueRef::Null,
            Arg::Int(i) => ValueRef::Integer(i),
            Arg::Text(t) => ValueRef::Text(t.as_bytes()),
            Arg::Bytes(b) => ValueRef::Blob(b),
            Arg::Value(v) => value_ref(v),
        }))
    }
}

fn bound<'a>(args: &'a [Arg<'a>]) -> impl Iterator<Item = Bound<'a>> + 'a {
    args.iter().map(|a| Bound(*a))
}

impl SqlDriver for Sqlite<'_> {
    fn table_prefix(&self) -> &'static str {
        "__concord_"
    }

    fn placeholder(&self, n: usize) -> String {
        format!("?{n}")
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let changed = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(bound(args)))?;
        Ok(changed as u64)
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(bound(args)))?;
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Float(v),
                    ValueRef::Text(t) => match std::str::from_utf8(t) {
                        Ok(text) => Cell::Text(text.to_owned()),
                        Err(_) => Cell::Bytes(t.to_vec()),
                    },
                    ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
                });
            }
            each(cells)?;
        }
        Ok(())
    }

    fn stored_value(&self, cell: Cell) -> Value {
        let value = match &cell {
            Cell::Null => ValueRef::Null,
            Cell::Int(v) => ValueRef::Integer(*v),
            Cell::Float(v) => ValueRef::Real(*v),
            Cell::Text(t) => ValueRef::Text(t.as_bytes()),
            Cell::Bytes(b) => ValueRef::Blob(b),
        };
        from_sql(value).unwrap_or(Value::Null)
    }
}
