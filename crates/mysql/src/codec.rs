//! Encodings of what the store keeps in `bytea` columns: row clocks and log bodies
//! (postcard), the same layout as the SQLite store's so the two read alike.
//!
//! Origins are stored as small integers (`concord_origins.id`) instead of 16-byte node
//! ids, which keeps metadata compact; the store maps them back when it reads.

use concord_core::Value;
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

/// `concord_rows.clock`.
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

/// `concord_log.body`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LogBody {
    pub(crate) columns: Vec<LogColumn>,
    pub(crate) delete_seen: Option<StoredVersion>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_extend(value, Vec::with_capacity(128)).unwrap_or_default()
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}
