//! Why a node could not be set up or started: one error for every step of starting
//! (configuration, identity, TLS, the store, sockets, the file watcher).

use std::net::SocketAddr;
use std::path::PathBuf;

use concord_store::{StoreError, TrackError};

use crate::config::ConfigError;
use crate::identity::IdentityError;
use crate::tls::TlsError;

/// Why a node could not be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity is missing or invalid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened or tracked.
    #[error("store")]
    Track(#[from] TrackError),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// A socket could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The data directory already holds a node.
    #[error("{0} already holds a node configuration; remove it or choose another directory")]
    AlreadyInitialized(PathBuf),
    /// A task the node needed could not run.
    #[error("internal: {0}")]
    Internal(String),
    /// Watching the database file failed.
    #[error("watching {path}: {detail}")]
    Watch {
        /// The watched path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}
