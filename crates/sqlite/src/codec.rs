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
        Ok(ToSqlOutput::Borrowed(value_ref(self.0)))
    }
}

/// `value` as SQLite holds it (see [`Sql`]).
pub(crate) fn value_ref(value: &Value) -> ValueRef<'_> {
    match value {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(r) => ValueRef::Real(*r),
        Value::Text(s) | Value::Decimal(s) | Value::Json(s) => ValueRef::Text(s.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
        Value::Uuid(u) => ValueRef::Blob(u),
        Value::Bool(b) => ValueRef::Integer(i64::from(*b)),
        Value::Timestamp(us) => ValueRef::Integer(*us),
        Value::Date(d) => ValueRef::Integer(i64::from(*d)),
    }
}

/// Reads a SQLite value. SQLite does not check that TEXT is UTF-8 (`CAST(x'ff' AS
/// TEXT)` stores the byte as text), and a [`Value::Text`] must be: such text is read as
/// the [`Value::Blob`] of its bytes, so it is carried losslessly instead of stopping
/// capture of every table. A SQLite replica stores it as a BLOB of the same bytes; a
/// store whose column cannot hold bytes refuses it there, visibly (the change is set
/// aside), rather than Concord changing it (`docs/sqlite-store.md`, Value mapping).
/// Every SQLite value has a `Value` now; the `Result` stays for the callers that
/// already handle a refusal.
pub(crate) fn from_sql(value: ValueRef<'_>) -> Result<Value, String> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(text) => Value::Text(text.to_owned()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

/// A value exactly as SQLite held it, text bytes included, to find a row by: a key of
/// text that is not UTF-8 reads as a [`Value::Blob`] ([`from_sql`]), which would match
/// no row if bound back, since SQLite never finds a TEXT value equal to a BLOB.
#[derive(Clone, Debug)]
pub(crate) struct Stored(StoredKind);

#[derive(Clone, Debug)]
enum StoredKind {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for Stored {
    fn from(value: ValueRef<'_>) -> Self {
        Stored(match value {
            ValueRef::Null => StoredKind::Null,
            ValueRef::Integer(i) => StoredKind::Integer(i),
            ValueRef::Real(r) => StoredKind::Real(r),
            ValueRef::Text(t) => StoredKind::Text(t.to_vec()),
            ValueRef::Blob(b) => StoredKind::Blob(b.to_vec()),
        })
    }
}

impl ToSql for Stored {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match &self.0 {
            StoredKind::Null => ValueRef::Null,
            StoredKind::Integer(i) => ValueRef::Integer(*i),
            StoredKind::Real(r) => ValueRef::Real(*r),
            StoredKind::Text(t) => ValueRef::Text(t),
            StoredKind::Blob(b) => ValueRef::Blob(b),
        }))
    }
}
