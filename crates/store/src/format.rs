//! The formats Concord stores inside a tracked database: row clocks and log bodies.
//!
//! Every store keeps the same two blobs (`rows.clock` and `log.body`, whatever the
//! tables are called in its dialect), so they are defined once, here, and pinned byte
//! for byte by the tests below: a change to a type that alters what is written (a
//! reordered [`Value`] variant, a new field) fails them before it can make a newer
//! Concord misread a database an older one wrote. `docs/stored-format.md` describes the
//! layout precisely enough to read it without this code.
//!
//! The encoding is postcard (varint integers, length-prefixed sequences, enum variants
//! by their index). Origins are stored as small integers, the store's own index of
//! origins ([`crate::Origins`]), instead of 16-byte node ids: it keeps the metadata
//! compact, and the store maps them back when it reads.

use concord_core::Value;
use serde::{Deserialize, Serialize};

/// A version with its origin as a local origin index: `(hlc, origin index)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StoredVersion(pub u64, pub u32);

/// One column's clock in a stored row clock.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StoredColumnClock {
    /// The version of the column's current value.
    pub version: StoredVersion,
    /// The version that write replaced, if the writer saw one.
    pub replaced: Option<StoredVersion>,
}

/// A row clock as stored (`rows.clock`); the causal length has its own column.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct StoredClock {
    /// One entry per column position; `None` for a column never written.
    pub columns: Vec<Option<StoredColumnClock>>,
    /// The delete that ended the row's last life and the newest version it had seen.
    pub tombstone: Option<(StoredVersion, Option<StoredVersion>)>,
}

/// One column in a log body; `index` is the column's position in the store's table.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct LogColumn {
    /// The column's position among the table's tracked columns.
    pub index: u32,
    /// The value written.
    pub value: Value,
    /// The write's version.
    pub version: StoredVersion,
    /// The version it replaced.
    pub replaced: Option<StoredVersion>,
}

/// A log entry's body (`log.body`); origin, sequence, clock, table, key and causal
/// length have their own columns.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct LogBody {
    /// The columns the change wrote.
    pub columns: Vec<LogColumn>,
    /// For a delete, the newest version its writer had seen.
    pub delete_seen: Option<StoredVersion>,
}

/// A [`LogBody`] that borrows its values: it encodes to exactly the same bytes, without
/// copying a value first (a change of a 100 MB value would otherwise hold it twice
/// while its log entry is written).
#[derive(Serialize)]
pub struct LogBodyRef<'a> {
    /// The columns the change wrote.
    pub columns: Vec<LogColumnRef<'a>>,
    /// For a delete, the newest version its writer had seen.
    pub delete_seen: Option<StoredVersion>,
}

/// A [`LogColumn`] that borrows its value.
#[derive(Serialize)]
pub struct LogColumnRef<'a> {
    /// The column's position among the table's tracked columns.
    pub index: u32,
    /// The value written.
    pub value: &'a Value,
    /// The write's version.
    pub version: StoredVersion,
    /// The version it replaced.
    pub replaced: Option<StoredVersion>,
}

/// Encodes a stored record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail. Starting with room for a
    // typical clock or log body avoids growing the buffer byte by byte.
    postcard::to_extend(value, Vec::with_capacity(128)).unwrap_or_default()
}

/// Decodes a stored record; the error says what was wrong with the bytes.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    //! Byte-exact examples of every stored record and every value kind: the same bytes
    //! as `docs/stored-format.md` shows. If one of these fails, databases written by
    //! the released version would be misread: add a migration instead of changing the
    //! bytes.

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn every_value_kind_is_stored_as_documented() {
        let cases: Vec<(Value, &str)> = vec![
            (Value::Null, "00"),
            (Value::Integer(-3), "0105"),
            (Value::Integer(300), "01d804"),
            (Value::Real(2.25), "020000000000000240"),
            (Value::Text("hé".into()), "030368c3a9"),
            (Value::Blob(vec![0xde, 0xad]), "0402dead"),
            (Value::Decimal("-1.50".into()), "05052d312e3530"),
            (Value::Bool(true), "0601"),
            (Value::Json("[1]".into()), "07035b315d"),
            (Value::Timestamp(1_000_000), "0880897a"),
            (Value::Date(-1), "0901"),
            (
                Value::Uuid([0x11; 16]),
                "0a11111111111111111111111111111111",
            ),
        ];
        for (value, expected) in cases {
            let bytes = encode(&value);
            assert_eq!(hex(&bytes), expected, "{value:?}");
            let back: Value = decode(&bytes).expect("decodes");
            assert_eq!(encode(&back), bytes, "{value:?} round trip");
        }
    }

    #[test]
    fn a_row_clock_is_stored_as_documented() {
        let clock = StoredClock {
            columns: vec![
                Some(StoredColumnClock {
                    version: StoredVersion(5, 1),
                    replaced: None,
                }),
                None,
                Some(StoredColumnClock {
                    version: StoredVersion(300, 2),
                    replaced: Some(StoredVersion(5, 1)),
                }),
            ],
            tombstone: Some((StoredVersion(7, 2), None)),
        };
        let bytes = encode(&clock);
        assert_eq!(hex(&bytes), "03010501000001ac020201050101070200");
        assert_eq!(decode::<StoredClock>(&bytes), Ok(clock));
    }

    #[test]
    fn a_log_body_is_stored_as_documented() {
        let body = LogBody {
            columns: vec![LogColumn {
                index: 1,
                value: Value::Text("a".into()),
                version: StoredVersion(9, 1),
                replaced: None,
            }],
            delete_seen: None,
        };
        let bytes = encode(&body);
        assert_eq!(hex(&bytes), "010103016109010000");
        assert_eq!(decode::<LogBody>(&bytes), Ok(body));
    }

    #[test]
    fn a_borrowed_log_body_encodes_to_the_same_bytes() {
        let value = Value::Blob(vec![1, 2, 3]);
        let owned = LogBody {
            columns: vec![LogColumn {
                index: 2,
                value: value.clone(),
                version: StoredVersion(9, 1),
                replaced: Some(StoredVersion(3, 0)),
            }],
            delete_seen: Some(StoredVersion(8, 2)),
        };
        let borrowed = LogBodyRef {
            columns: vec![LogColumnRef {
                index: 2,
                value: &value,
                version: StoredVersion(9, 1),
                replaced: Some(StoredVersion(3, 0)),
            }],
            delete_seen: Some(StoredVersion(8, 2)),
        };
        assert_eq!(encode(&borrowed), encode(&owned));
    }

    #[test]
    fn bytes_that_are_not_a_record_are_an_error_not_a_panic() {
        assert!(decode::<StoredClock>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<LogBody>(&[]).is_err());
    }
}
