//! MySQL and MariaDB as a [`SqlDriver`]: how the statements Concord writes once for
//! every store ([`concord_store::bookkeeping`]) run on the server.
//!
//! Statements run through the binary protocol (`exec`), so integers come back as
//! integers; rows are streamed. A parameter larger than the server's
//! `max_allowed_packet` cannot be sent at all ([`SqlDriver::binds`]). Conflict values
//! are kept in the [`concord_store::format`] encoding.

use concord_store::StoreError;
use concord_store::bookkeeping::{Arg, Cell, SqlDriver};
use concord_store::format as codec;
use mysql::Conn;
use mysql::prelude::Queryable;

/// A connection running Concord's bookkeeping statements. Public only as the `Sql`
/// type of the store's backends; nothing outside builds one.
#[allow(unreachable_pub)]
pub struct MySql<'a> {
    pub(crate) conn: &'a mut Conn,
    /// The largest parameter the server takes ([`SqlDriver::binds`]).
    pub(crate) packet_room: usize,
}

fn param(arg: &Arg<'_>) -> mysql::Value {
    match *arg {
        Arg::Null => mysql::Value::NULL,
        Arg::Int(i) => mysql::Value::Int(i),
        Arg::Text(t) => mysql::Value::Bytes(t.as_bytes().to_vec()),
        Arg::Bytes(b) => mysql::Value::Bytes(b.to_vec()),
        Arg::Value(v) => mysql::Value::Bytes(codec::encode(v)),
    }
}

fn params(args: &[Arg<'_>]) -> mysql::Params {
    if args.is_empty() {
        mysql::Params::Empty
    } else {
        mysql::Params::Positional(args.iter().map(param).collect())
    }
}

fn cell(value: mysql::Value) -> Cell {
    match value {
        mysql::Value::NULL => Cell::Null,
        mysql::Value::Int(i) => Cell::Int(i),
        mysql::Value::UInt(u) => Cell::Int(u as i64),
        mysql::Value::Float(f) => Cell::Float(f.into()),
        mysql::Value::Double(d) => Cell::Float(d),
        mysql::Value::Bytes(b) => Cell::Bytes(b),
        other => Cell::Text(other.as_sql(true)),
    }
}

impl SqlDriver for MySql<'_> {
    fn table_prefix(&self) -> &'static str {
        "concord_"
    }

    fn placeholder(&self, _n: usize) -> String {
        "?".into()
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        self.conn.exec_drop(sql, params(args))?;
        Ok(self.conn.affected_rows())
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for row in self.conn.exec_iter(sql, params(args))? {
            each(row?.unwrap().into_iter().map(cell).collect())?;
        }
        Ok(())
    }

    fn binds(&self, len: usize) -> bool {
        len <= self.packet_room
    }
}
