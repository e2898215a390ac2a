//! Node identity.
//!
//! A node is named by 128 random bits. The id is part of every [`crate::Version`], where
//! it breaks ties between equal timestamps, so it must be unique and must never change
//! for the life of a replica's data. Its printable form is 32 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The identity of one replica: 16 bytes, compared bytewise.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId([u8; 16]);

impl NodeId {
    /// Builds an id from its 16 bytes. Callers generate new ids from a cryptographic
    /// random source; this crate does no IO and so does not draw randomness itself.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The id's 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A short prefix (8 hex digits) for logs and tables meant for people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// A printed node id that is not 32 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid node id {input:?}: expected 32 hexadecimal digits")]
pub struct ParseNodeIdError {
    input: String,
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| ParseNodeIdError {
            input: s.to_owned(),
        })?;
        Ok(Self(bytes))
    }
}

impl TryFrom<&[u8]> for NodeId {
    type Error = ParseNodeIdError;

    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        let bytes: [u8; 16] = value.try_into().map_err(|_| ParseNodeIdError {
            input: hex::encode(value),
        })?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_id_parses_back_to_the_same_id() {
        let id = NodeId::from_bytes([0xab; 16]);
        let parsed: NodeId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(id.to_string().len(), 32);
    }

    #[test]
    fn malformed_printed_id_is_refused_with_the_input_named() {
        let err = "xyz".parse::<NodeId>().unwrap_err();
        assert!(err.to_string().contains("\"xyz\""), "{err}");
        assert!("ab".repeat(15).parse::<NodeId>().is_err());
    }
}
