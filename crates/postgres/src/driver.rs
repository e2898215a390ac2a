//! PostgreSQL as a [`SqlDriver`]: how the statements Concord writes once for every
//! store ([`concord_store::bookkeeping`]) run on the server.
//!
//! Statements are prepared once per connection (each keeps its cache); parameters
//! bind through [`Param`], which fits an integer to the column's width, so one
//! template serves `integer` and `bigint` columns alike. Conflict values are kept in
//! the [`concord_store::format`] encoding (`bytea`).

use concord_store::StoreError;
use concord_store::bookkeeping::{Arg, Cell, SqlDriver};
use concord_store::format as codec;
use std::collections::HashMap;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{Client, Statement};

use crate::types::{Param, sql_refs};

/// A connection and its prepared statements, running Concord's bookkeeping statements.
/// Public only as the `Sql` type of the store's backends; nothing outside builds one.
#[allow(unreachable_pub)]
pub struct Pg<'a> {
    pub(crate) client: &'a mut Client,
    pub(crate) statements: &'a mut HashMap<String, Statement>,
}

impl Pg<'_> {
    pub(crate) fn prepared(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn param(arg: &Arg<'_>) -> Param {
    match *arg {
        Arg::Null => Param::Null,
        Arg::Int(i) => Param::Int(i),
        Arg::Text(t) => Param::Text(t.to_owned()),
        Arg::Bytes(b) => Param::Bytes(b.to_vec()),
        Arg::Value(v) => Param::Bytes(codec::encode(v)),
    }
}

fn cell(row: &postgres::Row, i: usize) -> Result<Cell, postgres::Error> {
    let ty = row.columns()[i].type_();
    Ok(match *ty {
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Cell::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Cell::Int(v.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Cell::Int(v.into())),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|v| Cell::Float(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Cell::Float),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Bytes),
        _ => row.try_get::<_, Option<String>>(i)?.map(Cell::Text),
    }
    .unwrap_or(Cell::Null))
}

impl SqlDriver for Pg<'_> {
    fn table_prefix(&self) -> &'static str {
        "concord."
    }

    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let stmt = self.prepared(sql)?;
        let params: Vec<Param> = args.iter().map(param).collect();
        let refs: Vec<&Param> = params.iter().collect();
        Ok(self.client.execute(&stmt, &sql_refs(&refs))?)
    }

    fn rows(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut dyn FnMut(Vec<Cell>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let stmt = self.prepared(sql)?;
        let params: Vec<Param> = args.iter().map(param).collect();
        // Streamed, not collected: a query may return every set-aside change.
        let mut rows = self.client.query_raw(&stmt, params.iter())?;
        while let Some(row) = rows.next()? {
            let cells = (0..row.len())
                .map(|i| cell(&row, i))
                .collect::<Result<_, _>>()?;
            each(cells)?;
        }
        Ok(())
    }
}
