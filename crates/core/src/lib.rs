//! # concord-core: the model every other Concord crate speaks
//!
//! Concord keeps several databases in agreement by exchanging *changes*. This crate
//! defines what a change is and how two replicas decide, without talking to each other,
//! which write wins. It is deliberately pure: no IO, no database, no network, no wall
//! clock (callers pass the time in). That makes the merge rules testable by property
//! tests with thousands of generated histories, and makes every store and transport
//! agree because they all call the same functions.
//!
//! The pieces, from the bottom up:
//! - [`NodeId`]: a random 128-bit identity of one replica; it breaks timestamp ties.
//! - [`Hlc`] and [`HlcClock`]: a hybrid logical clock. Timestamps follow wall time but
//!   never go backwards and always exceed every timestamp the node has seen; a remote
//!   timestamp too far ahead of local time is refused ([`ClockError`]) so one bad clock
//!   cannot win every write forever.
//! - [`Value`]: the values a column can hold, a superset of what SQLite, PostgreSQL and
//!   MySQL store, so exact decimals never pass through floating point.
//! - [`PrimaryKey`]: a canonical, order-preserving byte encoding of a row's key,
//!   composite keys included. Byte equality is key equality on every node.
//! - [`Change`]: one row write as captured at its origin: origin, per-origin sequence
//!   number, HLC, table, key, the row's [`CausalLength`] and the written columns, each
//!   with its [`Version`] and the version it replaced.
//! - [`VersionVector`]: origin → highest sequence number held contiguously. Two vectors
//!   say exactly which changes one replica lacks.
//! - [`merge`]: the rules. Row existence by causal length, each column a last-writer-wins
//!   register ordered by `(hlc, origin)`, and conflict detection from replaced versions.
//! - [`mapping`]: per-link schema mapping. Renames tables and columns, syncs a subset of
//!   columns, casts values exactly between kinds and defaults columns a peer lacks, as
//!   changes cross one peer link; never drops a change.
//! - [`reconcile`]: range-based set reconciliation. Two replicas find the rows they hold
//!   differently by exchanging fingerprints of key ranges, for catching up past the
//!   change log's retention and for verifying that two copies agree.
//!
//! See `docs/merge-semantics.md` in the repository for the rules in prose.

mod change;
mod hlc;
mod id;
mod key;
pub mod mapping;
pub mod merge;
pub mod reconcile;
mod value;
mod vector;

pub use change::{CausalLength, Change, ColumnChange, Version};
pub use hlc::{ClockError, Hlc, HlcClock};
pub use id::{NodeId, ParseNodeIdError};
pub use key::{KeyError, MAX_KEY_BYTES, PrimaryKey};
pub use value::Value;
pub use vector::{Advance, SequenceGap, VersionVector};
