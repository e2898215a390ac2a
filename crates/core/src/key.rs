//! Canonical, order-preserving encoding of primary keys.
//!
//! A row is identified across replicas by its primary key. Every store encodes the key's
//! column values into one byte string with [`PrimaryKey::encode`], so byte equality is
//! key equality everywhere, and the bytes can index metadata in any store.
//!
//! Each component is a tag byte followed by a body. Tags are chosen so that the classes
//! sort as SQLite sorts them (NULL, then numbers, then text, then blobs), and each body
//! sorts like its value: integers big-endian with the sign bit flipped, reals by the
//! usual total-order bit trick, text and blobs with `0x00` escaped as `0x00 0xFF` and
//! terminated by `0x00 0x00`, so a shorter string sorts before its extensions and a
//! composite key sorts component by component. Within one class the byte order is the
//! value order; integers and reals are different classes and are not interleaved
//! numerically, and decimals sort by their text.

use serde::{Deserialize, Serialize};

use crate::Value;

const TAG_NULL: u8 = 0x05;
const TAG_BOOL: u8 = 0x10;
const TAG_INTEGER: u8 = 0x14;
const TAG_DECIMAL: u8 = 0x16;
const TAG_REAL: u8 = 0x18;
const TAG_TIMESTAMP: u8 = 0x20;
const TAG_DATE: u8 = 0x21;
const TAG_TEXT: u8 = 0x30;
const TAG_JSON: u8 = 0x38;
const TAG_BLOB: u8 = 0x40;
const TAG_UUID: u8 = 0x48;

/// The longest encoded key accepted, in bytes. Keys are indexed everywhere; a key this
/// large is a bug or an attack, not a row.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// An encoded primary key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PrimaryKey(#[serde(with = "serde_bytes_compat")] Vec<u8>);

/// Why bytes are not a valid encoded key, or values cannot form one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The encoding ended in the middle of a component.
    #[error("malformed key: truncated at byte {at}")]
    Truncated {
        /// Offset where more bytes were expected.
        at: usize,
    },
    /// A component starts with a tag this version does not know.
    #[error("malformed key: unknown component tag 0x{tag:02x} at byte {at}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
        /// Its offset.
        at: usize,
    },
    /// A text component is not UTF-8.
    #[error("malformed key: text component at byte {at} is not UTF-8")]
    InvalidUtf8 {
        /// Offset of the component.
        at: usize,
    },
    /// An escape sequence inside a string is not `0x00 0xFF` or `0x00 0x00`.
    #[error("malformed key: bad escape at byte {at}")]
    BadEscape {
        /// Offset of the escape.
        at: usize,
    },
    /// The key has no components.
    #[error("malformed key: no components")]
    Empty,
    /// The encoded key exceeds [`MAX_KEY_BYTES`].
    #[error("key of {len} bytes exceeds the limit of {MAX_KEY_BYTES} bytes")]
    TooLong {
        /// The encoded length.
        len: usize,
    },
}

impl PrimaryKey {
    /// Encodes key column values in key-column order.
    pub fn encode(values: &[Value]) -> Result<Self, KeyError> {
        if values.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut out = Vec::with_capacity(values.len() * 10);
        for value in values {
            encode_component(value, &mut out);
        }
        if out.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong { len: out.len() });
        }
        Ok(Self(out))
    }

    /// Accepts bytes from storage or the network after checking they decode.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if bytes.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong { len: bytes.len() });
        }
        decode_all(&bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps bytes without checking them; [`PrimaryKey::decode`] reports any damage.
    pub fn from_bytes_unchecked(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the key column values.
    pub fn decode(&self) -> Result<Vec<Value>, KeyError> {
        decode_all(&self.0)
    }
}

/// Renders the decoded key as `(v1, v2)`, or the raw bytes if it does not decode.
impl std::fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decode() {
            Ok(values) => {
                f.write_str("(")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str(")")
            }
            Err(_) => write!(f, "<malformed key {}>", hex::encode(&self.0)),
        }
    }
}

impl std::fmt::Debug for PrimaryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrimaryKey{self}")
    }
}

fn encode_component(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Bool(b) => {
            out.push(TAG_BOOL);
            out.push(u8::from(*b));
        }
        Value::Integer(i) => {
            out.push(TAG_INTEGER);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Decimal(d) => {
            out.push(TAG_DECIMAL);
            escape(d.as_bytes(), out);
        }
        Value::Real(r) => {
            out.push(TAG_REAL);
            let bits = r.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits ^ (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Timestamp(us) => {
            out.push(TAG_TIMESTAMP);
            out.extend_from_slice(&((*us as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Date(d) => {
            out.push(TAG_DATE);
            out.extend_from_slice(&((*d as u32) ^ (1 << 31)).to_be_bytes());
        }
        Value::Text(s) => {
            out.push(TAG_TEXT);
            escape(s.as_bytes(), out);
        }
        Value::Json(s) => {
            out.push(TAG_JSON);
            escape(s.as_bytes(), out);
        }
        Value::Blob(b) => {
            out.push(TAG_BLOB);
            escape(b, out);
        }
        Value::Uuid(u) => {
            out.push(TAG_UUID);
            out.extend_from_slice(u);
        }
    }
}

fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Value>, KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    let mut values = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (value, next) = decode_component(bytes, at)?;
        values.push(value);
        at = next;
    }
    Ok(values)
}

fn fixed<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], KeyError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(KeyError::Truncated { at })
}

fn unescape(bytes: &[u8], start: usize) -> Result<(Vec<u8>, usize), KeyError> {
    let mut out = Vec::new();
    let mut at = start;
    loop {
        let b = *bytes.get(at).ok_or(KeyError::Truncated { at })?;
        if b != 0 {
            out.push(b);
            at += 1;
            continue;
        }
        match bytes.get(at + 1) {
            Some(0) => return Ok((out, at + 2)),
            Some(0xFF) => {
                out.push(0);
                at += 2;
            }
            Some(_) => return Err(KeyError::BadEscape { at }),
            None => return Err(KeyError::Truncated { at: at + 1 }),
        }
    }
}

fn decode_component(bytes: &[u8], at: usize) -> Result<(Value, usize), KeyError> {
    let tag = bytes[at];
    let body = at + 1;
    let text = |raw: Vec<u8>| String::from_utf8(raw).map_err(|_| KeyError::InvalidUtf8 { at });
    Ok(match tag {
        TAG_NULL => (Value::Null, body),
        TAG_BOOL => {
            let [b] = fixed::<1>(bytes, body)?;
            match b {
                0 => (Value::Bool(false), body + 1),
                1 => (Value::Bool(true), body + 1),
                _ => return Err(KeyError::BadEscape { at: body }),
            }
        }
        TAG_INTEGER => {
            let raw = u64::from_be_bytes(fixed::<8>(bytes, body)?);
            (Value::Integer((raw ^ (1 << 63)) as i64), body + 8)
        }
        TAG_TIMESTAMP => {
            let raw = u64::from_be_bytes(fixed::<8>(bytes, body)?);
            (Value::Timestamp((raw ^ (1 << 63)) as i64), body + 8)
        }
        TAG_DATE => {
            let raw = u32::from_be_bytes(fixed::<4>(bytes, body)?);
            (Value::Date((raw ^ (1 << 31)) as i32), body + 4)
        }
        TAG_REAL => {
            let ordered = u64::from_be_bytes(fixed::<8>(bytes, body)?);
            let bits = if ordered >> 63 == 1 {
                ordered ^ (1 << 63)
            } else {
                !ordered
            };
            (Value::Real(f64::from_bits(bits)), body + 8)
        }
        TAG_UUID => (Value::Uuid(fixed::<16>(bytes, body)?), body + 16),
        TAG_DECIMAL => {
            let (raw, next) = unescape(bytes, body)?;
            (Value::Decimal(text(raw)?), next)
        }
        TAG_TEXT => {
            let (raw, next) = unescape(bytes, body)?;
            (Value::Text(text(raw)?), next)
        }
        TAG_JSON => {
            let (raw, next) = unescape(bytes, body)?;
            (Value::Json(text(raw)?), next)
        }
        TAG_BLOB => {
            let (raw, next) = unescape(bytes, body)?;
            (Value::Blob(raw), next)
        }
        tag => return Err(KeyError::UnknownTag { tag, at }),
    })
}

/// Serializes the key as bytes (postcard writes a length and the raw bytes).
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("key bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("not NaN", |f| !f.is_nan())
                .prop_map(Value::Real),
            ".*".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Timestamp),
            any::<i32>().prop_map(Value::Date),
            any::<[u8; 16]>().prop_map(Value::Uuid),
        ]
    }

    fn same_class_pair() -> impl Strategy<Value = (Value, Value)> {
        fn pair<T: std::fmt::Debug + Clone + 'static>(
            s: impl Strategy<Value = T> + Clone + 'static,
            f: fn(T) -> Value,
        ) -> impl Strategy<Value = (Value, Value)> {
            (s.clone(), s).prop_map(move |(a, b)| (f(a), f(b)))
        }
        prop_oneof![
            pair(any::<i64>(), Value::Integer),
            pair(
                any::<f64>().prop_filter("not NaN", |f| !f.is_nan()),
                Value::Real
            ),
            pair(".*", Value::Text),
            pair(proptest::collection::vec(any::<u8>(), 0..8), Value::Blob),
            pair(any::<bool>(), Value::Bool),
            pair(any::<i64>(), Value::Timestamp),
            pair(any::<i32>(), Value::Date),
            pair(any::<[u8; 16]>(), Value::Uuid),
        ]
    }

    fn value_cmp(a: &Value, b: &Value) -> std::cmp::Ordering {
        match (a, b) {
            (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
            (Value::Real(x), Value::Real(y)) => x.total_cmp(y),
            (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
            (Value::Date(x), Value::Date(y)) => x.cmp(y),
            (Value::Uuid(x), Value::Uuid(y)) => x.cmp(y),
            _ => std::cmp::Ordering::Equal,
        }
    }

    proptest! {
        #[test]
        fn every_key_round_trips(values in proptest::collection::vec(key_value(), 1..4)) {
            let key = PrimaryKey::encode(&values).unwrap();
            prop_assert_eq!(key.decode().unwrap(), values.clone());
            prop_assert_eq!(PrimaryKey::from_bytes(key.as_bytes().to_vec()).unwrap(), key);
        }

        #[test]
        fn byte_order_matches_value_order_within_a_class(
            (a, b) in same_class_pair(), tail_a in key_value(), tail_b in key_value()
        ) {
            let ka = PrimaryKey::encode(&[a.clone(), tail_a.clone()]).unwrap();
            let kb = PrimaryKey::encode(&[b.clone(), tail_b.clone()]).unwrap();
            let first = value_cmp(&a, &b);
            if first != std::cmp::Ordering::Equal {
                // Composite keys order by their first differing component.
                prop_assert_eq!(ka.cmp(&kb), first);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PrimaryKey::from_bytes(bytes);
        }
    }

    #[test]
    fn classes_sort_like_sqlite_null_numbers_text_blob() {
        let keys: Vec<_> = [
            Value::Null,
            Value::Integer(i64::MAX),
            Value::Text(String::new()),
            Value::Blob(vec![]),
        ]
        .into_iter()
        .map(|v| PrimaryKey::encode(&[v]).unwrap())
        .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn text_prefix_sorts_before_its_extension_even_with_nul_bytes() {
        let a = PrimaryKey::encode(&[Value::Text("ab".into())]).unwrap();
        let b = PrimaryKey::encode(&[Value::Text("ab\0".into())]).unwrap();
        let c = PrimaryKey::encode(&[Value::Text("ab\0c".into())]).unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn malformed_keys_are_refused_with_the_offset() {
        assert_eq!(PrimaryKey::from_bytes(vec![]), Err(KeyError::Empty));
        assert_eq!(
            PrimaryKey::from_bytes(vec![TAG_INTEGER, 1, 2]),
            Err(KeyError::Truncated { at: 1 })
        );
        assert_eq!(
            PrimaryKey::from_bytes(vec![0x99]),
            Err(KeyError::UnknownTag { tag: 0x99, at: 0 })
        );
        assert_eq!(
            PrimaryKey::from_bytes(vec![TAG_TEXT, b'a', 0, 7]),
            Err(KeyError::BadEscape { at: 2 })
        );
        assert_eq!(
            PrimaryKey::from_bytes(vec![TAG_TEXT, 0xC3, 0, 0]),
            Err(KeyError::InvalidUtf8 { at: 0 })
        );
    }

    #[test]
    fn postcard_round_trips_the_key_bytes() {
        let key = PrimaryKey::encode(&[Value::Integer(7), Value::Text("x".into())]).unwrap();
        let bytes = postcard::to_allocvec(&key).unwrap();
        let back: PrimaryKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, key);
    }
}
