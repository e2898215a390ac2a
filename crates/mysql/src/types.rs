//! Mapping between MySQL/MariaDB column types and [`concord_core::Value`].
//!
//! Values leave MariaDB as *text* computed by the same SQL expression everywhere (the
//! capture triggers, the initial queueing of existing rows, the reads of a local value
//! for a conflict record), so they never depend on the writing session's settings:
//! strings and blobs as `HEX()` of their bytes (exact, no character-set or escaping
//! question), decimals and integers as `CAST(.. AS CHAR)` (a decimal keeps its scale,
//! `12.50`, and never passes through a float), `DATETIME` with `DATE_FORMAT`, and
//! `TIMESTAMP` as `UNIX_TIMESTAMP(col)`, which reads the stored UTC instant whatever the
//! session `time_zone` is. [`parse`] turns that text back into a value. A string, JSON
//! or blob above [`INLINE_VALUE_BYTES`] is the exception: the triggers record a marker
//! and capture reads the bytes from the row ([`ColumnKind::read_expr`], [`parse_read`]),
//! because `HEX()` of a large value fails the application's write.
//!
//! Values enter MariaDB as bound parameters on Concord's own connection, whose session
//! has `time_zone = '+00:00'` and a strict `sql_mode`. [`to_param`] checks each value
//! against the column *before* the server sees it, because MariaDB rounds extra decimal
//! and fractional-second digits silently even in strict mode: a value the column could
//! only hold by rounding or truncating is refused with the reason, and the caller names
//! table, key and column. A float bound for a `decimal` column (a SQLite `REAL`, a
//! PostgreSQL `double precision`) goes in as its shortest decimal when the column holds
//! that exactly (`concord_core::mapping::real_to_decimal_column`). The table of the
//! mapping is in `docs/mysql-store.md`.

use concord_core::Value;
use mysql::Value as My;

/// The kind of a column, with the bounds of what it can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    /// Integer types with their range.
    Int { min: i64, max: i64 },
    /// `tinyint(1)` / `BOOLEAN`.
    Bool,
    /// `decimal(p,s)`.
    Decimal {
        precision: u32,
        scale: u32,
        unsigned: bool,
    },
    /// `char`, `varchar` (limit in characters) and the `text` types (limit in bytes).
    Text {
        max_chars: Option<usize>,
        max_bytes: Option<usize>,
    },
    /// `varbinary`, the `blob` types (limit in bytes); `binary(n)` holds exactly `n`
    /// bytes (`fixed`: a shorter value would be padded with zero bytes, so it is
    /// refused).
    Blob {
        max_bytes: Option<usize>,
        fixed: bool,
    },
    /// `bigint unsigned`: up to 18446744073709551615, carried as an `Integer` up to
    /// `i64::MAX` and as an exact `Decimal` above it, never wrapped through a signed
    /// integer.
    UnsignedBig,
    /// `double`: read as the shortest text that reads back as the same double.
    Double,
    /// `float`: a 32-bit float, widened exactly to a double.
    Float,
    /// `enum`, `set`, `year`, `time`: carried as their text, written back through
    /// MariaDB's own conversion (strict mode refuses what does not fit).
    TextIo,
    /// `datetime(fsp)`: wall time without a zone, read as if UTC.
    DateTime { fsp: u32 },
    /// `timestamp(fsp)`: an instant, stored in UTC.
    Timestamp { fsp: u32 },
    /// `date`.
    Date,
    /// MariaDB `JSON` (`longtext` with a `json_valid` check) or MySQL `json`.
    Json,
}

impl ColumnKind {
    /// The kind of a column from `information_schema.COLUMNS`, if supported.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of(
        data_type: &str,
        column_type: &str,
        max_chars: Option<u64>,
        max_bytes: Option<u64>,
        precision: Option<u64>,
        scale: Option<u64>,
        fsp: Option<u64>,
        json: bool,
    ) -> Option<Self> {
        let unsigned = column_type.contains("unsigned");
        let int = |bits: u32| -> ColumnKind {
            if unsigned {
                ColumnKind::Int {
                    min: 0,
                    max: ((1u64 << bits) - 1) as i64,
                }
            } else {
                ColumnKind::Int {
                    min: -(1i64 << (bits - 1)),
                    max: (1i64 << (bits - 1)) - 1,
                }
            }
        };
        let size = |v: Option<u64>| v.and_then(|v| usize::try_from(v).ok());
        Some(match data_type {
            "tinyint" if column_type.starts_with("tinyint(1)") => ColumnKind::Bool,
            "tinyint" => int(8),
            "smallint" => int(16),
            "mediumint" => int(24),
            "int" => int(32),
            "bigint" if unsigned => ColumnKind::UnsignedBig,
            // A bit(n) value is a number below 2^n; bit(64) needs the unsigned range.
            "bit" => match precision.and_then(|p| u32::try_from(p).ok()) {
                Some(64) => ColumnKind::UnsignedBig,
                Some(bits @ 1..=63) => ColumnKind::Int {
                    min: 0,
                    max: ((1u64 << bits) - 1) as i64,
                },
                _ => return None,
            },
            "double" => ColumnKind::Double,
            "float" => ColumnKind::Float,
            "enum" | "set" | "year" | "time" => ColumnKind::TextIo,
            "binary" => ColumnKind::Blob {
                max_bytes: size(max_bytes),
                fixed: true,
            },
            "bigint" => ColumnKind::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            "decimal" => ColumnKind::Decimal {
                precision: u32::try_from(precision?).ok()?,
                scale: u32::try_from(scale.unwrap_or(0)).ok()?,
                unsigned,
            },
            "char" | "varchar" => ColumnKind::Text {
                max_chars: size(max_chars),
                max_bytes: None,
            },
            "longtext" if json => ColumnKind::Json,
            "json" => ColumnKind::Json,
            "tinytext" | "text" | "mediumtext" | "longtext" => ColumnKind::Text {
                max_chars: None,
                max_bytes: size(max_bytes),
            },
            "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ColumnKind::Blob {
                max_bytes: size(max_bytes),
                fixed: false,
            },
            "datetime" => ColumnKind::DateTime {
                fsp: u32::try_from(fsp.unwrap_or(0)).ok()?,
            },
            "timestamp" => ColumnKind::Timestamp {
                fsp: u32::try_from(fsp.unwrap_or(0)).ok()?,
            },
            "date" => ColumnKind::Date,
            _ => return None,
        })
    }

    /// SQL giving `r` (a column of this kind) as the text [`parse`] reads.
    pub(crate) fn text_expr(self, r: &str) -> String {
        match self {
            // `+ 0` reads a `bit(n)` column as its number (it is an Int kind).
            ColumnKind::Int { .. } | ColumnKind::UnsignedBig => format!("CAST({r} + 0 AS CHAR)"),
            ColumnKind::Bool
            | ColumnKind::Decimal { .. }
            | ColumnKind::Double
            | ColumnKind::Float => format!("CAST({r} AS CHAR)"),
            ColumnKind::TextIo => format!("HEX(CONVERT(CAST({r} AS CHAR) USING utf8mb4))"),
            ColumnKind::Text { .. } | ColumnKind::Json => {
                format!("HEX(CONVERT({r} USING utf8mb4))")
            }
            ColumnKind::Blob { .. } => format!("HEX({r})"),
            ColumnKind::DateTime { .. } => format!("DATE_FORMAT({r}, '%Y-%m-%d %H:%i:%s.%f')"),
            ColumnKind::Timestamp { .. } => format!("CAST(UNIX_TIMESTAMP({r}) AS CHAR)"),
            ColumnKind::Date => format!("DATE_FORMAT({r}, '%Y-%m-%d')"),
        }
    }
}

/// Values of strings, JSON and blobs above this many bytes are not copied into the
/// pending row by the capture triggers: `HEX()` doubles them, and a function result
/// above `max_allowed_packet` fails the application's own write. The trigger records
/// [`BIG_VALUE`] instead, and capture reads the value from the row ([`ColumnKind::
/// read_expr`]).
pub(crate) const INLINE_VALUE_BYTES: usize = 1 << 20;

/// What a capture trigger records in place of a value above [`INLINE_VALUE_BYTES`]:
/// not hexadecimal, so it cannot be mistaken for a value.
pub(crate) const BIG_VALUE: &str = "big";

impl ColumnKind {
    /// Whether values of this kind may be large: strings, JSON and blobs.
    pub(crate) fn may_be_large(self) -> bool {
        matches!(
            self,
            ColumnKind::Text { .. } | ColumnKind::Json | ColumnKind::Blob { .. }
        )
    }

    /// The expression a capture trigger records for the value `r`: its canonical text
    /// ([`ColumnKind::text_expr`]), or [`BIG_VALUE`] for a string, JSON or blob above
    /// [`INLINE_VALUE_BYTES`].
    pub(crate) fn capture_expr(self, r: &str) -> String {
        if self.may_be_large() {
            format!(
                "IF(LENGTH({r}) > {INLINE_VALUE_BYTES}, '{BIG_VALUE}', {})",
                self.text_expr(r)
            )
        } else {
            self.text_expr(r)
        }
    }

    /// The expression comparing values in the update trigger: a string, JSON or blob
    /// by its bytes (the same test as comparing their hexadecimal, without building
    /// it), anything else by its canonical text.
    pub(crate) fn compare_expr(self, r: &str) -> String {
        if self.may_be_large() {
            r.to_owned()
        } else {
            self.text_expr(r)
        }
    }

    /// The expression reading the value `r` for [`parse_read`]: strings and JSON as
    /// their UTF-8 bytes, blobs as themselves (no `HEX()`, so a value as large as the
    /// server holds can be read), anything else as [`ColumnKind::text_expr`].
    pub(crate) fn read_expr(self, r: &str) -> String {
        match self {
            ColumnKind::Text { .. } | ColumnKind::Json => format!("CONVERT({r} USING utf8mb4)"),
            ColumnKind::Blob { .. } => r.to_owned(),
            _ => self.text_expr(r),
        }
    }
}

/// Parses what [`ColumnKind::read_expr`] read back into a value.
pub(crate) fn parse_read(kind: ColumnKind, bytes: Option<Vec<u8>>) -> Result<Value, String> {
    let Some(bytes) = bytes else {
        return Ok(Value::Null);
    };
    match kind {
        ColumnKind::Text { .. } => Ok(Value::Text(utf8(bytes)?)),
        ColumnKind::Json => Ok(Value::Json(utf8(bytes)?)),
        ColumnKind::Blob { .. } => Ok(Value::Blob(bytes)),
        _ => parse(kind, Some(&utf8(bytes)?)),
    }
}

/// Parses the text of [`ColumnKind::text_expr`] back into a value.
pub(crate) fn parse(kind: ColumnKind, text: Option<&str>) -> Result<Value, String> {
    let Some(s) = text else {
        return Ok(Value::Null);
    };
    let int = |s: &str| s.parse::<i64>().map_err(|e| format!("integer {s:?}: {e}"));
    Ok(match kind {
        ColumnKind::Int { .. } => Value::Integer(int(s)?),
        ColumnKind::Bool => match int(s)? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            // tinyint(1) can hold other numbers; they stay exact as integers.
            n => Value::Integer(n),
        },
        ColumnKind::Decimal { .. } => Value::Decimal(s.to_owned()),
        ColumnKind::Text { .. } | ColumnKind::TextIo => Value::Text(utf8(unhex(s)?)?),
        ColumnKind::UnsignedBig => match s.parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => match s.parse::<u64>() {
                Ok(_) => Value::Decimal(s.to_owned()),
                Err(e) => return Err(format!("unsigned integer {s:?}: {e}")),
            },
        },
        ColumnKind::Double => {
            Value::Real(s.parse::<f64>().map_err(|e| format!("double {s:?}: {e}"))?)
        }
        ColumnKind::Float => Value::Real(f64::from(
            s.parse::<f32>().map_err(|e| format!("float {s:?}: {e}"))?,
        )),
        ColumnKind::Json => Value::Json(utf8(unhex(s)?)?),
        ColumnKind::Blob { .. } => Value::Blob(unhex(s)?),
        ColumnKind::DateTime { .. } => Value::Timestamp(parse_datetime(s)?),
        ColumnKind::Timestamp { .. } => Value::Timestamp(parse_epoch_decimal(s)?),
        ColumnKind::Date => Value::Date(parse_date(s)?),
    })
}

fn utf8(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| "text is not valid UTF-8".to_owned())
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad hex at {i}"))
        })
        .collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn parse_date(s: &str) -> Result<i32, String> {
    let bad = || format!("date {s:?}");
    let mut it = s.split('-');
    let y: i64 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let m: u32 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let d: u32 = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(format!("{} (zero dates have no Concord value)", bad()));
    }
    i32::try_from(days_from_civil(y, m, d)).map_err(|_| bad())
}

fn parse_datetime(s: &str) -> Result<i64, String> {
    let bad = || format!("datetime {s:?}");
    let (date, time) = s.split_once(' ').ok_or_else(bad)?;
    let days = i64::from(parse_date(date)?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut it = hms.split(':').map(|v| v.parse::<i64>().ok());
    let (h, m, sec) = match (it.next(), it.next(), it.next()) {
        (Some(Some(h)), Some(Some(m)), Some(Some(s))) => (h, m, s),
        _ => return Err(bad()),
    };
    Ok(((days * 24 + h) * 60 + m) * 60_000_000 + sec * 1_000_000 + micros(frac).ok_or_else(bad)?)
}

/// Microseconds of up to six fractional digits.
fn micros(frac: &str) -> Option<i64> {
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = format!("{frac:0<6}");
    padded.parse().ok()
}

fn parse_epoch_decimal(s: &str) -> Result<i64, String> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().map_err(|_| format!("timestamp {s:?}"))?;
    Ok(secs * 1_000_000 + micros(frac).ok_or_else(|| format!("timestamp {s:?}"))?)
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` of µs since the epoch (UTC).
pub(crate) fn format_micros(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let rest = us.rem_euclid(86_400_000_000);
    let (y, m, d) = civil_from_days(days);
    let secs = rest / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rest % 1_000_000
    )
}

/// Why a value does not fit a column; the caller names table, key and column.
pub(crate) struct Mismatch(pub(crate) String);

/// Checks that a column of `kind` holds `value` exactly and converts it for binding.
pub(crate) fn to_param(kind: ColumnKind, value: &Value) -> Result<My, Mismatch> {
    let no = |why: &str| Err(Mismatch(why.to_owned()));
    let text = |s: &str| My::Bytes(s.as_bytes().to_vec());
    match (kind, value) {
        (_, Value::Null) => Ok(My::NULL),
        (ColumnKind::Int { min, max }, Value::Integer(i)) => {
            if (min..=max).contains(i) {
                Ok(My::Int(*i))
            } else {
                no(&format!("out of the column's range {min}..={max}"))
            }
        }
        (ColumnKind::Int { min, max }, Value::Bool(b)) if min <= 0 && max >= 1 => {
            Ok(My::Int(i64::from(*b)))
        }
        (ColumnKind::Bool, Value::Bool(b)) => Ok(My::Int(i64::from(*b))),
        (ColumnKind::Bool, Value::Integer(i)) if (-128..=127).contains(i) => Ok(My::Int(*i)),
        (
            ColumnKind::Decimal {
                precision,
                scale,
                unsigned,
            },
            Value::Decimal(s) | Value::Text(s),
        ) => check_decimal(s, precision, scale, unsigned).map(|()| text(s)),
        (
            ColumnKind::Decimal {
                precision,
                scale,
                unsigned,
            },
            Value::Integer(i),
        ) => {
            let s = i.to_string();
            check_decimal(&s, precision, scale, unsigned).map(|()| text(&s))
        }
        (
            ColumnKind::Decimal {
                precision,
                scale,
                unsigned,
            },
            Value::Real(r),
        ) => {
            // A float goes in as its shortest decimal, or not at all.
            let s = concord_core::mapping::real_to_decimal_column(*r, Some(precision), Some(scale))
                .map_err(|e| Mismatch(e.to_string()))?;
            check_decimal(&s, precision, scale, unsigned).map(|()| text(&s))
        }
        (
            ColumnKind::Text {
                max_chars,
                max_bytes,
            },
            Value::Text(s),
        ) => check_len(s, max_chars, max_bytes).map(|()| text(s)),
        (
            ColumnKind::Text {
                max_chars,
                max_bytes,
            },
            Value::Uuid(u),
        ) => {
            let s = format_uuid(u);
            check_len(&s, max_chars, max_bytes).map(|()| text(&s))
        }
        (ColumnKind::Blob { max_bytes, fixed }, Value::Blob(b)) => match max_bytes {
            Some(max) if b.len() > max => no(&format!("longer than {max} bytes")),
            Some(max) if fixed && b.len() < max => no(&format!(
                "shorter than {max} bytes (binary({max}) would pad it with zero bytes)"
            )),
            _ => Ok(My::Bytes(b.clone())),
        },
        (ColumnKind::UnsignedBig, Value::Integer(i)) => match u64::try_from(*i) {
            Ok(u) => Ok(My::UInt(u)),
            Err(_) => no("the column is unsigned"),
        },
        (ColumnKind::UnsignedBig, Value::Decimal(s) | Value::Text(s)) => match s.parse::<u64>() {
            Ok(u) => Ok(My::UInt(u)),
            Err(_) => no("not an integer from 0 to 18446744073709551615"),
        },
        (ColumnKind::Double | ColumnKind::Float, Value::Real(r)) if !r.is_finite() => no(&format!(
            "{r} cannot be stored: MariaDB's floats hold no NaN or infinity"
        )),
        (ColumnKind::Double, Value::Real(r)) => Ok(My::Double(*r)),
        (ColumnKind::Float, Value::Real(r)) => {
            let narrowed = *r as f32;
            if f64::from(narrowed).to_bits() == r.to_bits() {
                Ok(My::Float(narrowed))
            } else {
                no("float cannot represent it exactly")
            }
        }
        (ColumnKind::Double | ColumnKind::Float, Value::Integer(i)) => {
            let limit: u64 = if kind == ColumnKind::Float {
                1 << 24
            } else {
                1 << 53
            };
            if i.unsigned_abs() <= limit {
                Ok(My::Double(*i as f64))
            } else {
                no("the float cannot represent this integer exactly")
            }
        }
        (ColumnKind::TextIo, Value::Text(s) | Value::Decimal(s)) => Ok(text(s)),
        (ColumnKind::TextIo, Value::Integer(i)) => Ok(text(&i.to_string())),
        (
            ColumnKind::DateTime { fsp } | ColumnKind::Timestamp { fsp },
            Value::Timestamp(us) | Value::Integer(us),
        ) => {
            let unit = 10i64.pow(6 - fsp.min(6));
            if us.rem_euclid(unit) != 0 {
                return no(&format!(
                    "it has more than {fsp} fractional digits of seconds"
                ));
            }
            if matches!(kind, ColumnKind::Timestamp { .. })
                && !(1_000_000..=2_147_483_647_999_999).contains(us)
            {
                return no(
                    "outside TIMESTAMP's range (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC)",
                );
            }
            let (y, ..) = civil_from_days(us.div_euclid(86_400_000_000));
            if !(1000..=9999).contains(&y) {
                return no("outside DATETIME's range (years 1000 to 9999)");
            }
            Ok(text(&format_micros(*us)))
        }
        (ColumnKind::Date, Value::Date(d)) => date_param(i64::from(*d)),
        (ColumnKind::Date, Value::Integer(d)) => date_param(*d),
        (ColumnKind::Json, Value::Json(s) | Value::Text(s)) => {
            match serde_json::from_str::<serde::de::IgnoredAny>(s) {
                Ok(_) => Ok(text(s)),
                Err(e) => no(&format!("not a JSON document: {e}")),
            }
        }
        _ => no("no exact conversion between these types"),
    }
}

fn date_param(days: i64) -> Result<My, Mismatch> {
    let (y, m, d) = civil_from_days(days);
    if !(1000..=9999).contains(&y) {
        return Err(Mismatch("outside DATE's range (years 1000 to 9999)".into()));
    }
    Ok(My::Bytes(format!("{y:04}-{m:02}-{d:02}").into_bytes()))
}

fn check_len(s: &str, max_chars: Option<usize>, max_bytes: Option<usize>) -> Result<(), Mismatch> {
    if let Some(max) = max_chars
        && s.chars().count() > max
    {
        return Err(Mismatch(format!("longer than {max} characters")));
    }
    if let Some(max) = max_bytes
        && s.len() > max
    {
        return Err(Mismatch(format!("longer than {max} bytes")));
    }
    Ok(())
}

fn format_uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `s` is a decimal literal that `decimal(precision, scale)` holds exactly.
fn check_decimal(s: &str, precision: u32, scale: u32, unsigned: bool) -> Result<(), Mismatch> {
    let negative = s.starts_with('-');
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(Mismatch("not a decimal number".into()));
    }
    let kept = frac.trim_end_matches('0').len();
    if kept > scale as usize {
        return Err(Mismatch(format!(
            "it has {kept} fractional digits, the column keeps {scale} (it would be rounded)"
        )));
    }
    let int_digits = int.trim_start_matches('0').len();
    let allowed = precision.saturating_sub(scale) as usize;
    if int_digits > allowed {
        return Err(Mismatch(format!(
            "it has {int_digits} integer digits, the column allows {allowed}"
        )));
    }
    if unsigned && negative && (int_digits > 0 || kept > 0) {
        return Err(Mismatch("the column is unsigned".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_the_newer_kinds_cannot_hold_exactly_are_refused_not_changed() {
        let binary4 = ColumnKind::Blob {
            max_bytes: Some(4),
            fixed: true,
        };
        assert!(
            to_param(binary4, &Value::Blob(vec![1])).is_err(),
            "would be padded"
        );
        assert!(to_param(binary4, &Value::Blob(vec![1, 2, 3, 4])).is_ok());
        assert!(to_param(ColumnKind::UnsignedBig, &Value::Integer(-1)).is_err());
        assert!(matches!(
            to_param(
                ColumnKind::UnsignedBig,
                &Value::Decimal("18446744073709551615".into())
            ),
            Ok(My::UInt(u64::MAX))
        ));
        assert!(
            to_param(
                ColumnKind::UnsignedBig,
                &Value::Decimal("18446744073709551616".into())
            )
            .is_err()
        );
        assert!(
            to_param(ColumnKind::Float, &Value::Real(0.1)).is_err(),
            "0.1 is not a float"
        );
        assert!(to_param(ColumnKind::Float, &Value::Real(f64::from(0.1f32))).is_ok());
        assert!(to_param(ColumnKind::Double, &Value::Real(f64::NAN)).is_err());
        assert_eq!(
            parse(ColumnKind::UnsignedBig, Some("18446744073709551615")).unwrap(),
            Value::Decimal("18446744073709551615".into())
        );
        assert_eq!(
            parse(ColumnKind::Float, Some("0.1")).unwrap(),
            Value::Real(f64::from(0.1f32))
        );
    }

    #[test]
    fn dates_and_times_round_trip_through_text() {
        for us in [
            0i64,
            1_704_164_645_123_456,
            -1,
            -86_400_000_001,
            253_402_300_799_999_999,
        ] {
            assert_eq!(parse_datetime(&format_micros(us)).ok(), Some(us), "{us}");
        }
        assert_eq!(
            parse_epoch_decimal("1704164645.123456").ok(),
            Some(1_704_164_645_123_456)
        );
        assert_eq!(parse_date("1970-01-02").ok(), Some(1));
    }

    #[test]
    fn decimals_that_would_be_rounded_are_refused() {
        let k = ColumnKind::Decimal {
            precision: 12,
            scale: 2,
            unsigned: false,
        };
        assert!(to_param(k, &Value::Decimal("1234567890.12".into())).is_ok());
        assert!(to_param(k, &Value::Decimal("1.234".into())).is_err());
        assert!(to_param(k, &Value::Decimal("12345678901".into())).is_err());
    }

    #[test]
    fn a_real_goes_into_a_decimal_as_its_shortest_decimal_or_is_refused() {
        let k = ColumnKind::Decimal {
            precision: 10,
            scale: 2,
            unsigned: false,
        };
        assert!(matches!(to_param(k, &Value::Real(2.25)), Ok(My::Bytes(b)) if b == b"2.25"));
        assert!(matches!(to_param(k, &Value::Real(0.1)), Ok(My::Bytes(b)) if b == b"0.1"));
        for bad in [0.125, 1e20, f64::NAN, f64::INFINITY, -0.0] {
            assert!(to_param(k, &Value::Real(bad)).is_err(), "{bad}");
        }
        let unsigned = ColumnKind::Decimal {
            precision: 10,
            scale: 2,
            unsigned: true,
        };
        assert!(to_param(unsigned, &Value::Real(-1.5)).is_err());
    }
}
