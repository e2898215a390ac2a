//! # concord-postgres: the PostgreSQL store
//!
//! The same guarantees as `concord-sqlite`, for a PostgreSQL database: everything
//! Concord needs (the change log, per-row replication metadata, the version vector,
//! conflicts and failures) lives in a `concord` schema of the user's own database, so
//! applied data, its metadata and the version-vector advance commit in one PostgreSQL
//! transaction, and a crash leaves all of a batch or none of it.
//!
//! ## Capture without the application's help
//! [`PgStore::track`] installs a plpgsql `AFTER INSERT OR UPDATE OR DELETE` row trigger
//! on each tracked table. Every client's writes run it (psql, any program), and it
//! appends the row's key, the operation, the changed columns, the values written and
//! the writing transaction's id to `concord.pending`. [`PgStore::capture`] later folds
//! pending rows of *committed* transactions into the change log, one source transaction
//! at a time, marking the last change of each `last_in_txn` (see `capture.rs` for how
//! commit order is approximated and why that is safe).
//!
//! ## Applying without echo
//! [`ApplySession`] runs with `SET LOCAL concord.applying = 'on'`, which the trigger
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
