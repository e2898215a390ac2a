//! Encodings of what the store keeps in blobs: row clocks and log bodies (postcard), and
//! the mapping between Concord values and SQLite values.
//!
//! Origins are stored as small integers (`__concord_origins.id`) instead of 16-byte node
//! ids, which keeps metadata compact; the store maps them back when it reads.

use concord_core::Value;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// A version with its origin as a local origin index.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct StoredVersion(pub(crate) u64, pub(crate) u32);

/// One column's clock in a stored row clock.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct StoredColumnClock {
    pub(crate) version: StoredVersion,
    pub(crate) replaced: Option<StoredVersion>,
}

/// `__concord_rows.clock`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct StoredClock {
    pub(crate) columns: Vec<Option<StoredColumnClock>>,
    pub(crate) tombstone: Option<(StoredVersion, Option<StoredVersion>)>,
}

/// One column in a log body; `index` is the local column position.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LogColumn {
    pub(crate) index: u32,
    pub(crate) value: Value,
    pub(crate) version: StoredVersion,
    pub(crate) replaced: Option<StoredVersion>,
}

/// `__concord_log.body`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LogBody {
    pub(crate) columns: Vec<LogColumn>,
    pub(crate) delete_seen: Option<StoredVersion>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail. Starting with room for a
    // typical clock or log body avoids growing the buffer byte by byte.
    postcard::to_extend(value, Vec::with_capacity(128)).unwrap_or_default()
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

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
