//! # concord-mysql: the MySQL/MariaDB store
//!
//! The same guarantees as `concord-sqlite` and `concord-postgres`, for a MySQL/MariaDB
//! database: everything Concord needs (the change log, per-row replication metadata,
//! the version vector, conflicts and failures) lives in `concord_*` InnoDB tables of the
//! user's own database, so applied data, its metadata and the version-vector advance
//! commit in one transaction, and a crash leaves all of a batch or none of it.
//!
//! ## Capture without the application's help
//! Where the server keeps a row-based binary log, a reader thread stages each committed
//! source transaction from it (`binlog.rs`, `stream.rs`), and the application's writes
//! run no Concord code. Elsewhere [`MyStore::track`] installs `AFTER
//! INSERT/UPDATE/DELETE` row triggers on each tracked table, so the `mariadb` client and
//! every other program are captured. They append
//! the row's key, values and changed columns to `concord_pending`, a
//! transaction-precise system-versioned table, which is how MariaDB tells us the
//! writing transaction and its commit order (see `schema.rs` for why not
//! `information_schema.innodb_trx`). [`MyStore::capture`] folds pending rows of
//! committed transactions into the change log, one source transaction at a time.
//!
//! ## Applying without echo
//! [`ApplySession`] sets `@concord_applying` on Concord's own connection; the triggers
//! return at once while it is set, so Concord's writes are not captured again while
//! every other session's are. Merge decisions come from [`concord_core::merge`]: this
//! crate never decides a merge.
//!
//! ## Values
//! `types.rs` maps MariaDB types to [`concord_core::Value`] exactly (decimals as text,
//! timestamps normalised to UTC) and refuses a value a destination column could only
//! hold by rounding or truncating it; Concord's sessions run in a strict `sql_mode`.
//! The layout and the type table are in `docs/mysql-store.md`.

mod apply;
mod batch;
mod binlog;
mod capture;
mod driver;
mod log;
mod schema;
mod store;
mod stream;
mod types;

pub use apply::ApplySession;
pub use concord_store::{
    ApplyError, ApplyReport, ApplyTxn, ChangeCursor, ConflictRecord, FailureRecord, LogPage,
    LogRead, RowError, RowFailure, Store, StoreError, StoreOptions, TrackError, pull,
};
pub use schema::{ColumnInfo, TRIGGER_PREFIX, TableInfo};
pub use store::MyStore;
