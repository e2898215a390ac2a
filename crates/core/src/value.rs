//! Column values.
//!
//! The five SQLite storage classes, plus the kinds other stores hold natively and that
//! must survive a round trip between them without loss: exact decimals (kept as their
//! canonical decimal text, never a float), booleans, JSON documents, timestamps, dates
//! and UUIDs. A store maps each kind to its closest native type and refuses a value it
//! cannot hold faithfully rather than truncating it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One column value.
#[derive(Clone, Default, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    #[default]
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit IEEE float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    // Encoded as bytes (one length, then the bytes), exactly as a sequence of u8 is in
    // postcard, but copied in one piece instead of byte by byte.
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An exact decimal number in canonical text form, e.g. `"-12.50"`.
    Decimal(String),
    /// A boolean.
    Bool(bool),
    /// A JSON document, as text.
    Json(String),
    /// An instant: microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// A calendar date: days since 1970-01-01.
    Date(i32),
    /// A UUID's 16 bytes.
    Uuid([u8; 16]),
}

impl Value {
    /// The kind's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
            Value::Decimal(_) => "decimal",
            Value::Bool(_) => "boolean",
            Value::Json(_) => "json",
            Value::Timestamp(_) => "timestamp",
            Value::Date(_) => "date",
            Value::Uuid(_) => "uuid",
        }
    }

    /// Whether the value is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Values are equal when they are of the same kind and hold the same data; reals compare
/// by their bits, so a NaN equals itself and replicas holding it compare equal.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Blob(a), Value::Blob(b)) => a == b,
            (Value::Decimal(a), Value::Decimal(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Json(a), Value::Json(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Date(a), Value::Date(b)) => a == b,
            (Value::Uuid(a), Value::Uuid(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// SQL-literal-like rendering, for messages and conflict listings.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{r:?}"),
            Value::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Value::Blob(b) => write!(f, "X'{}'", hex::encode_upper(b)),
            Value::Decimal(d) => f.write_str(d),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Json(j) => write!(f, "json'{}'", j.replace('\'', "''")),
            Value::Timestamp(us) => write!(f, "timestamp({us}us)"),
            Value::Date(d) => write!(f, "date({d}d)"),
            Value::Uuid(u) => write!(f, "uuid'{}'", hex::encode(u)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_equals_itself_so_replicas_holding_it_compare_equal() {
        assert_eq!(Value::Real(f64::NAN), Value::Real(f64::NAN));
        assert_ne!(Value::Real(0.0), Value::Real(-0.0));
        assert_ne!(Value::Integer(1), Value::Real(1.0));
    }

    #[test]
    fn text_is_rendered_as_an_escaped_literal() {
        assert_eq!(Value::Text("it's".into()).to_string(), "'it''s'");
        assert_eq!(Value::Blob(vec![0xde, 0xad]).to_string(), "X'DEAD'");
    }
}
