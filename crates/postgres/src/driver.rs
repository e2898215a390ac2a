//! PostgreSQL as a [`SqlDriver`]: how the statements Concord writes once for every
//! store ([`concord_store::bookkeeping`]) run on the server.
//!
//! Statements are prepared once per connection ([`PgStore::statement`]); parameters
//! bind through [`Param`], which fits an integer to the column's width, so one
//! template serves `integer` and `bigint` columns alike. Conflict values are kept in
//! the [`concord_store::format`] encoding (`bytea`).

use concord_core::Value;
use concord_store::StoreError;
use concord_store::bookkeeping::{Arg, Cell, SqlDriver};
use concord_store::format as codec;
use postgres::types::Type;

use crate::store::PgStore;
use crate::types::{Param, sql_refs};

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

impl SqlDriver for PgStore {
    fn table_prefix(&self) -> &'static str {
        "concord."
    }

    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }

    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
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
        let stmt = self.statement(sql)?;
        let params: Vec<Param> = args.iter().map(param).collect();
        let refs: Vec<&Param> = params.iter().collect();
        for row in self.client.query(&stmt, &sql_refs(&refs))? {
            let cells = (0..row.len())
                .map(|i| cell(&row, i))
                .collect::<Result<_, _>>()?;
            each(cells)?;
        }
        Ok(())
    }

    fn stored_value(&self, cell: Cell) -> Value {
        match cell {
            Cell::Bytes(b) => codec::decode::<Value>(&b).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}
