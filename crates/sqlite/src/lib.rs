//! # concord-sqlite: the embedded SQLite store
//!
//! Concord's default store keeps everything in the user's own SQLite file: the data, the
//! change log, the per-row replication metadata and the version vector. That is what
//! makes applying a batch atomic without any protocol: one SQLite transaction writes the
//! rows, their metadata and the advance of the version vector, so a crash leaves all of
//! a batch or none of it.
//!
//! ## Capture without the application's help
//! [`SqliteStore::track`] installs `AFTER INSERT/UPDATE/DELETE` triggers on each tracked
//! table. Any process that writes the file (the `sqlite3` shell, an app with no Concord
//! code) runs them, so they use only SQL that SQLite 3.24+ understands and no custom
//! functions. A trigger only appends the row's key, the operation, a bitmask of changed
//! columns and the wall time to `__concord_pending`; that keeps the cost of a write low.
//! [`SqliteStore::capture`] later folds pending rows into the change log, assigning each
//! a sequence number and a hybrid-logical-clock version, and reading the values from the
//! table. It runs in one write transaction, so it sees whole source transactions only,
//! and it marks the last change of each capture as the end of a transaction group.
//!
//! ## Applying without echo
//! [`ApplySession`] names, in a row of `__concord_applying` that only its (uncommitted)
//! transaction sees, the row each of its statements writes; the triggers stay silent
//! for that row alone, so applied writes are not captured again while whatever a user's
//! trigger writes meanwhile is (see `apply.rs`). Before applying, the session captures pending local
//! writes in the same transaction, so metadata always matches the table when merge
//! decisions are made. The decisions themselves come from [`concord_core::merge`]: this
//! crate never decides a merge, it reads metadata and applies what the core decided.
//!
//! The layout of every metadata table is described in `docs/sqlite-store.md`.

mod apply;
mod capture;
mod codec;
mod digest;
mod driver;
mod lock;
mod log;
mod schema;
mod store;

pub use apply::ApplySession;
pub use concord_store::{
    ApplyError, ApplyReport, ApplyTxn, ChangeCursor, ConflictRecord, FailureRecord, LogPage,
    LogRead, RowError, RowFailure, Store, StoreError, StoreOptions, TrackError, merge_all, pull,
    pull_snapshot,
};
pub use digest::{DigestError, TableDigest};
pub use lock::FileLock;
pub use log::{LogReader, SnapshotReader, SqliteLog, open_log, open_snapshot};
pub use schema::{TRIGGER_PREFIX, TableInfo};
pub use store::SqliteStore;
