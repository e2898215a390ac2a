//! Mapping between PostgreSQL column types and [`concord_core::Value`].
//!
//! Values travel between PostgreSQL and Concord in PostgreSQL's *binary* format, decoded
//! and encoded here, because the binary format is exact: integers and floats by their
//! bits, timestamps as microseconds, UUIDs as 16 bytes. The one exception is `numeric`,
//! whose binary form is base-10000 digit groups: it is read as its canonical text
//! (`col::text`, which keeps the scale, e.g. `12.50`) and written in text format, so an
//! exact decimal never passes through a float.
//!
//! Writing checks every value against the destination column *before* PostgreSQL sees
//! it, so that a value the column could only hold by rounding or truncating (a decimal
//! with more fractional digits than the scale, text longer than `varchar(n)`, a float
//! that `real` cannot represent, sub-precision microseconds in `timestamp(p)`) is refused
//! with an error naming the column instead of being silently changed. A float bound for
//! a `numeric` column goes in as its shortest decimal when the column holds that exactly
//! (`concord_core::mapping::real_to_decimal_column`). The table of what maps to what is
//! in `docs/postgres-store.md`.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use concord_core::Value;
use postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// The kind of a column, with the modifiers that bound what it can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(precision, scale)`; `None` when unconstrained.
    Numeric {
        precision: Option<u32>,
        scale: Option<u32>,
    },
    /// `text`, `varchar(n)` (`max_chars`), `char(n)` (`padded`).
    Text {
        max_chars: Option<usize>,
        padded: bool,
    },
    Bool,
    Bytea,
    /// `timestamp[tz](p)`: `precision` fractional digits of seconds.
    Timestamp {
        tz: bool,
        precision: Option<u32>,
    },
    Date,
    Uuid,
    Json,
    Jsonb,
    /// Any other type (enums, arrays, `interval`, `inet`, `money`, ranges, composites,
    /// ...): carried as its text form, read with `::text` and written back through the
    /// type's own input function, which is exact between PostgreSQL servers. Other
    /// stores receive the text.
    TextIo,
}

impl ColumnKind {
    /// The kind of a column of type `oid` with modifier `typmod`.
    pub(crate) fn of(oid: u32, typmod: i32) -> Self {
        let modifier = (typmod >= 0).then_some(typmod);
        match oid {
            o if o == Type::INT2.oid() => ColumnKind::Int2,
            o if o == Type::INT4.oid() => ColumnKind::Int4,
            o if o == Type::INT8.oid() => ColumnKind::Int8,
            o if o == Type::FLOAT4.oid() => ColumnKind::Float4,
            o if o == Type::FLOAT8.oid() => ColumnKind::Float8,
            o if o == Type::NUMERIC.oid() => {
                // typmod = ((precision << 16) | scale) + 4
                let m = modifier.map(|m| (m - 4) as u32);
                ColumnKind::Numeric {
                    precision: m.map(|m| (m >> 16) & 0xffff),
                    scale: m.map(|m| m & 0xffff),
                }
            }
            o if o == Type::TEXT.oid() => ColumnKind::Text {
                max_chars: None,
                padded: false,
            },
            o if o == Type::VARCHAR.oid() => ColumnKind::Text {
                max_chars: modifier.map(|m| (m - 4).max(0) as usize),
                padded: false,
            },
            o if o == Type::BPCHAR.oid() => ColumnKind::Text {
                max_chars: modifier.map(|m| (m - 4).max(0) as usize),
                padded: true,
            },
            o if o == Type::BOOL.oid() => ColumnKind::Bool,
            o if o == Type::BYTEA.oid() => ColumnKind::Bytea,
            o if o == Type::TIMESTAMP.oid() => ColumnKind::Timestamp {
                tz: false,
                precision: modifier.map(|m| m as u32),
            },
            o if o == Type::TIMESTAMPTZ.oid() => ColumnKind::Timestamp {
                tz: true,
                precision: modifier.map(|m| m as u32),
            },
            o if o == Type::DATE.oid() => ColumnKind::Date,
            o if o == Type::UUID.oid() => ColumnKind::Uuid,
            o if o == Type::JSON.oid() => ColumnKind::Json,
            o if o == Type::JSONB.oid() => ColumnKind::Jsonb,
            _ => ColumnKind::TextIo,
        }
    }

    /// SQL that reads `expr` (of this kind) in the form [`decode`] expects.
    pub(crate) fn read_expr(self, expr: &str) -> String {
        match self {
            ColumnKind::Numeric { .. } | ColumnKind::TextIo => format!("({expr})::text"),
            _ => expr.to_owned(),
        }
    }
}

/// Decodes a column read with [`ColumnKind::read_expr`] (binary format) into a value.
pub(crate) fn decode(kind: ColumnKind, raw: Option<&[u8]>) -> Result<Value, String> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let fixed = |n: usize| -> Result<&[u8], String> {
        if raw.len() == n {
            Ok(raw)
        } else {
            Err(format!("expected {n} bytes, got {}", raw.len()))
        }
    };
    let text = |bytes: &[u8]| -> Result<String, String> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "text is not valid UTF-8".to_owned())
    };
    Ok(match kind {
        ColumnKind::Int2 => Value::Integer(i64::from(i16::from_be_bytes(arr(fixed(2)?)))),
        ColumnKind::Int4 => Value::Integer(i64::from(i32::from_be_bytes(arr(fixed(4)?)))),
        ColumnKind::Int8 => Value::Integer(i64::from_be_bytes(arr(fixed(8)?))),
        ColumnKind::Float4 => Value::Real(f64::from(f32::from_be_bytes(arr(fixed(4)?)))),
        ColumnKind::Float8 => Value::Real(f64::from_be_bytes(arr(fixed(8)?))),
        ColumnKind::Numeric { .. } => Value::Decimal(text(raw)?),
        ColumnKind::Text { .. } | ColumnKind::TextIo => Value::Text(text(raw)?),
        ColumnKind::Bool => Value::Bool(fixed(1)?[0] != 0),
        ColumnKind::Bytea => Value::Blob(raw.to_vec()),
        ColumnKind::Timestamp { .. } => {
            let pg = i64::from_be_bytes(arr(fixed(8)?));
            // ±infinity are the extreme values in both representations.
            Value::Timestamp(match pg {
                i64::MAX | i64::MIN => pg,
                _ => pg
                    .checked_add(PG_EPOCH_US)
                    .ok_or_else(|| "timestamp out of range".to_owned())?,
            })
        }
        ColumnKind::Date => {
            let pg = i32::from_be_bytes(arr(fixed(4)?));
            Value::Date(match pg {
                i32::MAX | i32::MIN => pg,
                _ => pg
                    .checked_add(PG_EPOCH_DAYS)
                    .ok_or_else(|| "date out of range".to_owned())?,
            })
        }
        ColumnKind::Uuid => Value::Uuid(arr(fixed(16)?)),
        ColumnKind::Json => Value::Json(text(raw)?),
        ColumnKind::Jsonb => match raw.split_first() {
            Some((1, rest)) => Value::Json(text(rest)?),
            _ => return Err("unknown jsonb binary version".into()),
        },
    })
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// A value checked against its destination column, ready to bind as a parameter.
/// Public only as the store's `ApplyBackend::Param`; nothing outside the crate builds one.
#[allow(unreachable_pub)]
#[derive(Debug, Clone)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// An integer of any width.
    Int(i64),
    /// A float of either width.
    Float(f64),
    /// Sent in text format (numeric).
    Numeric(String),
    /// Text of any text type.
    Text(String),
    /// A boolean.
    Bool(bool),
    /// `bytea`.
    Bytes(Vec<u8>),
    /// Microseconds since 1970 (`i64::MAX`/`MIN`: ±infinity).
    Micros(i64),
    /// Days since 1970 (`i32::MAX`/`MIN`: ±infinity).
    Days(i32),
    /// A UUID's bytes.
    Uuid([u8; 16]),
    /// A JSON document's text (`json` or `jsonb`).
    Json(String),
}

/// Why a value does not fit a column; the caller names the column.
pub(crate) struct Mismatch(pub(crate) String);

/// Checks that a column of `kind` holds `value` exactly and converts it for binding.
pub(crate) fn to_param(kind: ColumnKind, value: &Value) -> Result<Param, Mismatch> {
    let no = |why: &str| Err(Mismatch(why.to_owned()));
    match (kind, value) {
        (_, Value::Null) => Ok(Param::Null),
        (ColumnKind::Int2, Value::Integer(i)) => match i16::try_from(*i) {
            Ok(_) => Ok(Param::Int(*i)),
            Err(_) => no("out of range for smallint"),
        },
        (ColumnKind::Int4, Value::Integer(i)) => match i32::try_from(*i) {
            Ok(_) => Ok(Param::Int(*i)),
            Err(_) => no("out of range for integer"),
        },
        (ColumnKind::Int8, Value::Integer(i)) => Ok(Param::Int(*i)),
        (ColumnKind::Float8, Value::Real(r)) => Ok(Param::Float(*r)),
        (ColumnKind::Float4, Value::Real(r)) => {
            let narrowed = *r as f32;
            if f64::from(narrowed).to_bits() == r.to_bits() || r.is_nan() {
                Ok(Param::Float(*r))
            } else {
                no("real (float4) cannot represent it exactly")
            }
        }
        (ColumnKind::Float8 | ColumnKind::Float4, Value::Integer(i)) => {
            let limit = if kind == ColumnKind::Float4 {
                1 << 24
            } else {
                1 << 53
            };
            if i.unsigned_abs() <= limit {
                Ok(Param::Float(*i as f64))
            } else {
                no("the float cannot represent this integer exactly")
            }
        }
        (ColumnKind::Numeric { precision, scale }, Value::Decimal(s) | Value::Text(s)) => {
            check_decimal(s, precision, scale).map(|()| Param::Numeric(s.clone()))
        }
        (ColumnKind::Numeric { precision, scale }, Value::Real(r)) => {
            // A float goes in as its shortest decimal, or not at all.
            let s = concord_core::mapping::real_to_decimal_column(*r, precision, scale)
                .map_err(|e| Mismatch(e.to_string()))?;
            check_decimal(&s, precision, scale).map(|()| Param::Numeric(s))
        }
        (ColumnKind::Numeric { precision, scale }, Value::Integer(i)) => {
            let s = i.to_string();
            check_decimal(&s, precision, scale).map(|()| Param::Numeric(s))
        }
        (ColumnKind::Text { max_chars, padded }, Value::Text(s)) => {
            if let Some(max) = max_chars {
                let significant = if padded { s.trim_end_matches(' ') } else { s };
                if significant.chars().count() > max {
                    return no(&format!("longer than {max} characters"));
                }
            }
            if s.contains('\0') {
                return no("PostgreSQL text cannot hold a NUL character");
            }
            Ok(Param::Text(s.clone()))
        }
        (ColumnKind::TextIo, Value::Text(s) | Value::Decimal(s) | Value::Json(s)) => {
            if s.contains('\0') {
                return no("PostgreSQL text cannot hold a NUL character");
            }
            Ok(Param::Text(s.clone()))
        }
        (ColumnKind::TextIo, Value::Integer(i)) => Ok(Param::Text(i.to_string())),
        (ColumnKind::Bool, Value::Bool(b)) => Ok(Param::Bool(*b)),
        (ColumnKind::Bool, Value::Integer(i @ (0 | 1))) => Ok(Param::Bool(*i == 1)),
        (ColumnKind::Bytea, Value::Blob(b)) => Ok(Param::Bytes(b.clone())),
        (ColumnKind::Timestamp { precision, .. }, Value::Timestamp(us) | Value::Integer(us)) => {
            if let Some(p) = precision.filter(|&p| p < 6) {
                let unit = 10i64.pow(6 - p);
                if *us != i64::MAX && *us != i64::MIN && us.rem_euclid(unit) != 0 {
                    return no(&format!(
                        "it has more than {p} fractional digits of seconds"
                    ));
                }
            }
            Ok(Param::Micros(*us))
        }
        (ColumnKind::Date, Value::Date(d)) => Ok(Param::Days(*d)),
        (ColumnKind::Date, Value::Integer(i)) => match i32::try_from(*i) {
            Ok(d) => Ok(Param::Days(d)),
            Err(_) => no("out of range for a date"),
        },
        (ColumnKind::Uuid, Value::Uuid(u)) => Ok(Param::Uuid(*u)),
        (ColumnKind::Uuid, Value::Blob(b)) => match <[u8; 16]>::try_from(b.as_slice()) {
            Ok(u) => Ok(Param::Uuid(u)),
            Err(_) => no("a UUID is 16 bytes"),
        },
        (ColumnKind::Uuid, Value::Text(s)) => match parse_uuid(s) {
            Some(u) => Ok(Param::Uuid(u)),
            None => no("not a UUID"),
        },
        (ColumnKind::Json | ColumnKind::Jsonb, Value::Json(s) | Value::Text(s)) => {
            match serde_json::from_str::<serde::de::IgnoredAny>(s) {
                Ok(_) => Ok(Param::Json(s.clone())),
                Err(e) => no(&format!("not a JSON document: {e}")),
            }
        }
        _ => no("no exact conversion between these types"),
    }
}

/// Whether `s` is a decimal literal that `numeric(precision, scale)` holds exactly.
fn check_decimal(s: &str, precision: Option<u32>, scale: Option<u32>) -> Result<(), Mismatch> {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return if precision.is_none() {
            Ok(())
        } else {
            Err(Mismatch(format!("a constrained numeric cannot hold {s}")))
        };
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(Mismatch("not a decimal number".into()));
    }
    if let Some(scale) = scale {
        let kept = frac.trim_end_matches('0').len();
        if kept > scale as usize {
            return Err(Mismatch(format!(
                "it has {kept} fractional digits, the column keeps {scale} (it would be rounded)"
            )));
        }
        if let Some(precision) = precision {
            let int_digits = int.trim_start_matches('0').len();
            let allowed = precision.saturating_sub(scale) as usize;
            if int_digits > allowed {
                return Err(Mismatch(format!(
                    "it has {int_digits} integer digits, the column allows {allowed}"
                )));
            }
        }
    }
    Ok(())
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let wrong = || -> Box<dyn StdError + Sync + Send> {
            format!("cannot bind {self:?} as {ty}").into()
        };
        match self {
            Param::Null => return Ok(IsNull::Yes),
            Param::Int(i) => match *ty {
                Type::INT2 => out.put_i16(i16::try_from(*i)?),
                Type::INT4 => out.put_i32(i32::try_from(*i)?),
                Type::INT8 => out.put_i64(*i),
                _ => return Err(wrong()),
            },
            Param::Float(f) => match *ty {
                Type::FLOAT4 => out.put_f32(*f as f32),
                Type::FLOAT8 => out.put_f64(*f),
                _ => return Err(wrong()),
            },
            // Text format, see `encode_format`.
            Param::Numeric(s) => out.put_slice(s.as_bytes()),
            Param::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                    out.put_slice(s.as_bytes());
                }
                _ => return Err(wrong()),
            },
            Param::Bool(b) => match *ty {
                Type::BOOL => out.put_u8(u8::from(*b)),
                _ => return Err(wrong()),
            },
            Param::Bytes(b) => match *ty {
                Type::BYTEA => out.put_slice(b),
                _ => return Err(wrong()),
            },
            Param::Micros(us) => match *ty {
                Type::TIMESTAMP | Type::TIMESTAMPTZ => out.put_i64(match *us {
                    i64::MAX | i64::MIN => *us,
                    _ => us
                        .checked_sub(PG_EPOCH_US)
                        .ok_or("timestamp out of range")?,
                }),
                _ => return Err(wrong()),
            },
            Param::Days(d) => match *ty {
                Type::DATE => out.put_i32(match *d {
                    i32::MAX | i32::MIN => *d,
                    _ => d.checked_sub(PG_EPOCH_DAYS).ok_or("date out of range")?,
                }),
                _ => return Err(wrong()),
            },
            Param::Uuid(u) => match *ty {
                Type::UUID => out.put_slice(u),
                _ => return Err(wrong()),
            },
            Param::Json(s) => match *ty {
                Type::JSON => out.put_slice(s.as_bytes()),
                Type::JSONB => {
                    out.put_u8(1);
                    out.put_slice(s.as_bytes());
                }
                _ => return Err(wrong()),
            },
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Param::Numeric(_) => Format::Text,
            _ => Format::Binary,
        }
    }

    to_sql_checked!();
}

/// Reads any column as its raw binary bytes; [`decode`] interprets them.
/// Parameters as the driver takes them.
pub(crate) fn sql_refs<'p>(params: &[&'p Param]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| *p as &(dyn ToSql + Sync)).collect()
}

pub(crate) struct Raw<'a>(pub(crate) Option<&'a [u8]>);

impl<'a> postgres::types::FromSql<'a> for Raw<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_that_would_be_rounded_are_refused() {
        let kind = ColumnKind::Numeric {
            precision: Some(12),
            scale: Some(2),
        };
        assert!(to_param(kind, &Value::Decimal("1234567890.12".into())).is_ok());
        assert!(to_param(kind, &Value::Decimal("1.230".into())).is_ok());
        assert!(to_param(kind, &Value::Decimal("1.234".into())).is_err());
        assert!(to_param(kind, &Value::Decimal("12345678901.5".into())).is_err());
        assert!(to_param(kind, &Value::Decimal("1e5".into())).is_err());
    }

    #[test]
    fn a_real_goes_into_a_numeric_as_its_shortest_decimal_or_is_refused() {
        let cents = ColumnKind::Numeric {
            precision: Some(10),
            scale: Some(2),
        };
        let numeric = |kind, r: f64| match to_param(kind, &Value::Real(r)) {
            Ok(Param::Numeric(s)) => Ok(s),
            Ok(other) => panic!("{other:?}"),
            Err(Mismatch(why)) => Err(why),
        };
        assert_eq!(numeric(cents, 2.25).as_deref(), Ok("2.25"));
        assert_eq!(numeric(cents, 0.1).as_deref(), Ok("0.1"));
        for bad in [0.125, 1e20, f64::NAN, f64::INFINITY, -0.0] {
            assert!(numeric(cents, bad).is_err(), "{bad}");
        }
        let unconstrained = ColumnKind::Numeric {
            precision: None,
            scale: None,
        };
        assert_eq!(numeric(unconstrained, 0.125).as_deref(), Ok("0.125"));
        assert!(numeric(unconstrained, f64::NAN).is_err());
    }

    #[test]
    fn floats_a_real_column_cannot_represent_are_refused() {
        assert!(to_param(ColumnKind::Float4, &Value::Real(0.5)).is_ok());
        assert!(to_param(ColumnKind::Float4, &Value::Real(0.1)).is_err());
        assert!(to_param(ColumnKind::Float8, &Value::Real(0.1)).is_ok());
    }

    #[test]
    fn uuid_text_parses_with_or_without_dashes() {
        let u = parse_uuid("123e4567-e89b-12d3-a456-426614174000").unwrap();
        assert_eq!(u[0], 0x12);
        assert_eq!(parse_uuid("123e4567e89b12d3a456426614174000"), Some(u));
        assert_eq!(parse_uuid("xyz"), None);
    }
}
