//! # concord-store: what every Concord store shares
//!
//! Concord keeps SQLite, PostgreSQL and MySQL/MariaDB databases in sync. Each database
//! has its own store crate (`concord-sqlite`, `concord-postgres`, `concord-mysql`)
//! because capture, metadata layout and type mapping are specific to the database. What
//! is *not* specific lives here, so that the node, the binary and the tests treat every
//! store alike:
//!
//! - [`Store`], [`ApplyTxn`] and [`LogRead`]: the object-safe interface the node drives.
//!   A node holds a `Box<dyn Store>` and never knows which database is behind it. Stores
//!   apply the decisions of [`concord_core::merge`]; they never decide a merge.
//! - The error types, one per flow ([`TrackError`], [`StoreError`], [`ApplyError`] with
//!   [`RowFailure`] naming the bad change), with the driver's own error kept as a
//!   [`DbError`]. The features `sqlite`, `postgres` and `mysql` add the conversions from
//!   each driver's error type, so `?` works inside each store crate.
//! - The records a store reports: [`ApplyReport`], [`ConflictRecord`],
//!   [`FailureRecord`], and the tunables in [`StoreOptions`].
//! - [`check_change`]: the checks of an incoming change that do not depend on the
//!   database, so every store refuses a malformed change with the same error.
//! - [`TxnProgress`]: the state machine of an apply transaction (commit only at a
//!   source-transaction boundary, poisoned after a failure, failures naming their
//!   change), so each store's session only writes to its database.
//! - [`engine`]: the apply algorithm, written once: a generic [`engine::ApplySession`]
//!   over a narrow [`engine::ApplyBackend`] that each database implements with its SQL
//!   dialect and driver.
//! - [`format`] and [`Origins`]: the records stored inside a tracked database (row
//!   clocks, log bodies), defined once and pinned byte for byte, and the origin map
//!   they are read through.
//! - [`SnapshotReader`]: every tracked row's state with its clock, read consistently,
//!   for a replica the bounded log cannot serve (behind retention, new, restored).
//! - [`ChangeCursor`]: the iterator over the changes a peer lacks, built on any
//!   [`LogRead`], reading a page at a time so memory stays flat.

pub mod bookkeeping;
mod check;
mod columns;
mod conflict;
mod cursor;
pub mod engine;
mod error;
pub mod format;
mod logread;
mod meta;
pub mod meta_batch;
mod origins;
pub mod pending;
mod progress;
mod propagate;
mod records;
mod snapshot;
mod spill;
mod store;
pub mod tracking;

pub use check::{CheckedChange, check_change, newest_hlc};
pub use columns::{ColumnChange, ColumnSignature, compare_columns};
pub use conflict::{ConflictEntry, is_real_conflict};
pub use cursor::ChangeCursor;
pub use error::{ApplyError, DbError, RowError, RowFailure, StoreError, TrackError};
pub use logread::{LogReader, LogSource, RawEntry, TableColumns};
pub use meta::node_id_from_meta;
pub use origins::{Origins, encode_clock, local_log_body, stored_version};
pub use progress::{Failure, TxnProgress};
pub use propagate::{
    ColumnDdl, MissingColumns, NewColumn, add_column, add_missing_columns, missing_columns,
};
pub use records::{
    ApplyReport, CaptureMethod, CaptureState, ConflictRecord, FailureRecord, LogPage, StoreOptions,
};
pub use snapshot::{
    KeyStart, RawClock, RowPage, SnapshotRead, SnapshotReader, SnapshotSource, TableItems,
    clock_page_sql, in_key_order, keyset_page_sql, rows_by_keys_sql, values_hash,
};
pub use spill::ItemSpill;
pub use store::{
    ApplyTxn, LogRead, Prepare, Store, apply_setting_aside, apply_stream_setting_aside,
    compare_stores, merge_all, pull, pull_snapshot,
};

/// An error and its causes, outermost first, joined by `: `. A cause whose text the
/// message already ends with (an error type of another crate that repeats its source)
/// is left out, so nothing is said twice.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// A database URL fit to print: the password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn printed_urls_never_show_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/crm"),
            "postgres://app:***@db:5432/crm"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1:3306/test"),
            "mysql://root@127.0.0.1:3306/test"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
