//! # concord-postgres: the PostgreSQL store
//!
//! The same guarantees as `concord-sqlite`, for a PostgreSQL database: everything
//! Concord needs (the change log, per-row replication metadata, the version vector,
//! conflicts and failures) lives in a `concord` schema of the user's own database, so
//! applied data, its metadata and the version-vector advance commit in one PostgreSQL
//! transaction, and a crash leaves all of a batch or none of it.
//!
//! ## Capture without the application's help
//! Where the server allows it (`wal_level = logical`, a role with `REPLICATION`),
//! [`PgStore::track`] creates a logical replication slot and a publication, and a reader
//! thread (`stream.rs`) stages every committed source transaction from the write-ahead
//! log into `concord.pending`, committing the slot position with it (`logical.rs`,
//! `pgoutput.rs`); the application's writes cost nothing more than their WAL. Elsewhere a
//! plpgsql `AFTER INSERT OR UPDATE OR DELETE` row trigger appends the same rows: the
//! row's key, the operation, the changed columns, the values written and the writing
//! transaction's id. Either way every client's writes are captured (psql, any
//! program), and [`PgStore::capture`] folds pending rows of *committed* transactions
//! into the change log, one source transaction at a time, marking the last change of
//! each `last_in_txn` (`capture.rs`).
//!
//! ## Applying without echo
//! [`ApplySession`] runs with Concord's replication origin set, whose transactions the
//! log reader skips, and with `SET LOCAL concord.applying = 'on'`, which the trigger
//! checks with `current_setting('concord.applying', true)`: only that transaction sees
//! the setting, so Concord's own writes are not captured again while every other
//! session's are. The decisions come from [`concord_core::merge`]: this crate never
//! decides a merge, it reads metadata and applies what the core decided.
//!
//! ## Values
//! `types.rs` maps PostgreSQL types to [`concord_core::Value`] exactly (binary formats,
//! decimals as text) and refuses a value a destination column could only hold by
//! rounding or truncating it. The layout and the type table are in
//! `docs/postgres-store.md`.

mod apply;
mod batch;
mod capture;
mod driver;
mod log;
mod logical;
mod pgoutput;
mod rows;
mod schema;
mod store;
mod stream;
mod types;

pub use apply::ApplySession;
pub use concord_store::{
    ApplyError, ApplyReport, ApplyTxn, ChangeCursor, ConflictRecord, FailureRecord, LogPage,
    LogRead, RowError, RowFailure, Store, StoreError, StoreOptions, TrackError, pull,
};
pub use schema::{ColumnInfo, TRIGGER_NAME, TableInfo};
pub use store::PgStore;
