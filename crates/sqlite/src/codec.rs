//! The mapping between Concord values and SQLite values. (What the store keeps in its
//! metadata blobs, row clocks and log bodies, is [`concord_store::format`], the same for
//! every store.)

use concord_core::Value;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

/// Binds a Concord value as the closest SQLite value. Kinds SQLite lacks are stored as
/// documented in `docs/sqlite-store.md`: decimals and JSON as text, booleans as 0/1,
/// timestamps as integer microseconds, dates as integer days, UUIDs as 16-byte blobs.
pub(crate) struct Sql<'a>(pub(crate) &'a Value);

impl ToSql for Sql<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) | Value::Decimal(s) | Value::Json(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
            Value::Uuid(u) => ValueRef::Blob(u),
            Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
            Value::Timestamp(us) => ValueRef::Integer(*us),
            Value::Date(d) => ValueRef::Integer(i64::from(*d)),
        }))
    }
}

/// Reads a SQLite value. Text that is not UTF-8 is refused: it cannot be sent to a
/// store that checks encodings.
pub(crate) fn from_sql(value: ValueRef<'_>) -> Result<Value, String> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|_| "text is not valid UTF-8".to_owned())?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}
