//! Why a session ended, in words a person reads once, and whether it was a fault.

use std::time::Duration;

use concord_core::mapping::MappingError;
use concord_store::{ApplyError, StoreError};
use concord_wire::{ErrorCode, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, WireError};

use crate::identity::Fingerprint;
use crate::link_failures::LinkFailuresError;
use crate::words;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connection")]
    Io(#[from] std::io::Error),
    #[error("protocol")]
    Wire(#[from] WireError),
    #[error(
        "peer speaks protocol versions {min}..={max}, this node speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
    )]
    Version { min: u16, max: u16 },
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("peer reported {}: {message}", words::code(*code))]
    Peer { code: ErrorCode, message: String },
    #[error("peer closed the connection")]
    Closed,
    #[error("peer stopped reading for {}", words::duration(*.0))]
    StoppedReading(Duration),
    #[error("peer sent nothing for {}", words::duration(*.0))]
    Silent(Duration),
    /// The peer refused this node's certificate in the TLS handshake.
    #[error("the peer does not know this node; add {0} (this node's fingerprint) to its [[peers]]")]
    UnknownToPeer(Fingerprint),
    /// The node at the peer's address presented another certificate than `[[peers]]`
    /// names.
    #[error(
        "the node at this address is not the configured peer: it presented {presented}, \
         [[peers]] names {expected}; correct the fingerprint or the address"
    )]
    WrongPeer {
        presented: Fingerprint,
        expected: Fingerprint,
    },
    #[error("store")]
    Store(#[from] StoreError),
    #[error("apply")]
    Apply(#[from] ApplyError),
    #[error("peer is behind the retention limit: {0}")]
    BehindRetention(StoreError),
    #[error("node is shutting down")]
    Shutdown,
    #[error("internal: {0}")]
    Internal(String),
    #[error("schema mapping")]
    Mapping(#[from] MappingError),
    #[error("recording a transaction the link did not carry")]
    LinkFailures(#[from] LinkFailuresError),
}

impl SessionError {
    /// Whether the session ended by a shutdown on either side rather than a fault.
    pub(crate) fn is_orderly(&self) -> bool {
        matches!(
            self,
            SessionError::Shutdown
                | SessionError::Peer {
                    code: ErrorCode::ShuttingDown,
                    ..
                }
        )
    }

    /// The error and its causes, each once, as people read it.
    pub(crate) fn words(&self) -> String {
        words::chain(self)
    }

    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            SessionError::Version { .. } => ErrorCode::UnsupportedVersion,
            SessionError::Wire(_) => ErrorCode::Malformed,
            SessionError::Unexpected(_) => ErrorCode::Unexpected,
            SessionError::Apply(_) => ErrorCode::Rejected,
            SessionError::Shutdown => ErrorCode::ShuttingDown,
            _ => ErrorCode::Rejected,
        }
    }
}

/// Runs `f` on a blocking thread (store work), for a session's async code.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SessionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))
}
