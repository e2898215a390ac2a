//! # concord-node: the running node
//!
//! A node sits beside one database (a SQLite file, a PostgreSQL or a MySQL/MariaDB
//! database, chosen by `[store]`) or, as a hub or relay, beside only its own embedded
//! store. It sees the store only as a `Box<dyn concord_store::Store>` and keeps it in
//! sync with its configured peers:
//!
//! - **Identity and transport.** Each node has a key pair and self-signed certificate
//!   ([`identity`]); peers are configured by certificate fingerprint and talk over mutual
//!   TLS 1.3 ([`tls`]). A connection from an unconfigured identity fails the handshake.
//! - **Sessions.** Over each connection, both sides send a `Hello` with their version
//!   vector, then each streams exactly the changes the other lacks, in bounded batches
//!   with acknowledgements and a window of unacknowledged batches, then keeps streaming
//!   new changes the moment they are logged ([`session`]). A session that fails is
//!   retried with backoff and resumes from the version vectors, so nothing is lost or
//!   sent twice. A change larger than a frame travels in pieces.
//! - **Capture.** For a SQLite file, a file watcher runs capture as soon as the database
//!   file changes, so no polling interval sits in the latency path; a slow fallback
//!   timer only covers missed file events. A server has no file to watch and is polled.
//! - **Observability.** `/metrics` (Prometheus), `/health` and `/v1/status` over HTTP,
//!   and structured logs through `tracing`.
//!
//! **Architecture Invariant:** the node never decides a merge and never writes user
//! data itself; it moves changes between the network and the store, whose apply path
//! calls the pure merge rules.

mod capture_loop;
pub mod config;
mod connections;
mod error;
mod http;
pub mod identity;
pub mod link_failures;
mod node;
mod propagate;
mod reconcile;
mod report;
mod session;
mod session_error;
mod setup;
mod shared;
pub mod status;
pub mod tls;
mod words;

pub use config::{ConfigError, NodeConfig, PeerConfig, StoreChoice};
pub use error::NodeError;
pub use identity::{Fingerprint, Identity, IdentityError};
pub use node::Node;
pub use reconcile::{RowDifference, TableVerify, VerifyError, VerifyReport};
pub use setup::{check_store, init, open_existing_store, open_store};
pub use status::{Health, MissingPeer, NodeStatus, PeerStatus, Refused};
