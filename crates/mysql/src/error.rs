//! Error types, one per flow: tracking, opening and capturing, applying.
//!
//! They mirror `concord-sqlite`'s so callers (the node, the binary) can treat both
//! stores alike: a bad incoming change is a [`RowFailure`] naming origin, sequence,
//! table and key, and the batch it belonged to was rolled back.

use concord_core::{ClockError, KeyError, SequenceGap};

/// Installing or removing capture failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// The named table does not exist in the database.
    #[error("table {0:?} does not exist")]
    NoSuchTable(String),
    /// The table has no primary key, so its rows cannot be identified across replicas.
    #[error(
        "table {0:?} has no primary key; Concord identifies rows by primary key, add one to track it"
    )]
    NoPrimaryKey(String),
    /// A column has a type this store cannot map to a Concord value.
    #[error(
        "table {table:?}: column {column:?} has type {type_name}, which Concord cannot replicate yet"
    )]
    UnsupportedType {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
        /// The column's type as MariaDB prints it (`COLUMN_TYPE`).
        type_name: String,
    },
    /// The relation cannot be tracked (a view, a partitioned table, ...).
    #[error("table {0:?} cannot be tracked: {1}")]
    Unsupported(String, &'static str),
    /// The named table is not tracked.
    #[error("table {0:?} is not tracked")]
    NotTracked(String),
    /// A table or column name Concord cannot use in its triggers.
    #[error("table {0:?}: {1}")]
    BadName(String, String),
    /// The store's metadata could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<mysql::Error> for TrackError {
    fn from(e: mysql::Error) -> Self {
        TrackError::Store(StoreError::MySql(e))
    }
}

/// Opening the store, capturing local writes or reading the log failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// MySQL/MariaDB reported an error (or the connection failed).
    #[error("mysql: {}", describe(.0))]
    MySql(#[from] mysql::Error),
    /// The database has no Concord metadata.
    #[error("{0} is not tracked by Concord (run `concord track` first)")]
    NotTracked(String),
    /// The metadata was written by a newer Concord.
    #[error("metadata format {found} is newer than this Concord understands ({supported})")]
    UnsupportedFormat {
        /// Format found in the database.
        found: i64,
        /// Newest format supported.
        supported: i64,
    },
    /// Concord's lock on the database could not be taken in time.
    #[error("another Concord process holds the lock on this database")]
    Locked,
    /// A change a peer needs is no longer in the log (it was pruned).
    #[error(
        "change {origin}/{seq} is no longer in the change log (pruned); the peer needs a snapshot"
    )]
    Pruned {
        /// Origin of the missing change.
        origin: String,
        /// Its sequence number.
        seq: u64,
    },
    /// A metadata row could not be decoded.
    #[error("corrupt metadata in {table}: {detail}")]
    Corrupt {
        /// The metadata table.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A captured write refers to a row or value that cannot be read.
    #[error("table {table:?}, key {key}: {detail}")]
    Capture {
        /// Table name.
        table: String,
        /// Printable key.
        key: String,
        /// What was wrong.
        detail: String,
    },
}

/// The server's message with its error code when there is one, else the client's.
pub(crate) fn describe(e: &mysql::Error) -> String {
    match e {
        mysql::Error::MySqlError(db) => format!("{} ({}): {}", db.code, db.state, db.message),
        other => other.to_string(),
    }
}

/// What was wrong with one incoming change.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The table is not tracked here.
    #[error("unknown table (not tracked here)")]
    UnknownTable,
    /// The change writes a column the table does not have.
    #[error("unknown column {0:?}")]
    UnknownColumn(String),
    /// A value the column cannot hold exactly.
    #[error("column {column:?} of type {declared} cannot hold this {found} value: {detail}")]
    WrongType {
        /// Column name.
        column: String,
        /// The column's type as MariaDB prints it (`COLUMN_TYPE`).
        declared: String,
        /// The value's kind.
        found: &'static str,
        /// Why.
        detail: String,
    },
    /// The key bytes do not decode.
    #[error("malformed key: {0}")]
    MalformedKey(#[from] KeyError),
    /// The key has the wrong number of components for the table.
    #[error("key has {found} components, the table's primary key has {expected}")]
    KeyArity {
        /// Key columns of the table.
        expected: usize,
        /// Components in the key.
        found: usize,
    },
    /// The change's timestamp is beyond the clock bound.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The change does not follow the last one held from its origin.
    #[error(transparent)]
    Gap(#[from] SequenceGap),
    /// The row's stored metadata does not decode.
    #[error("corrupt metadata for this row: {0}")]
    CorruptMetadata(String),
    /// The database refused the write (a constraint, say).
    #[error("the database refused the write: {}", describe(.0))]
    Refused(mysql::Error),
    /// A change that neither inserts nor deletes has no columns, or is otherwise invalid.
    #[error("invalid change: {0}")]
    Invalid(String),
}

/// One bad change, named so a person can find it.
#[derive(Debug, thiserror::Error)]
#[error("change {origin}/{seq} to table {table:?}, key {key}: {error}")]
pub struct RowFailure {
    /// Origin of the change (short form).
    pub origin: String,
    /// Its sequence number.
    pub seq: u64,
    /// Table named by the change.
    pub table: String,
    /// Printable key.
    pub key: String,
    /// What was wrong.
    #[source]
    pub error: RowError,
}

/// Applying a batch failed. The transaction was rolled back: nothing of the batch since
/// the last commit was applied, and the store keeps working.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// One change was bad; it is named by origin, sequence, table and key.
    #[error(transparent)]
    Row(Box<RowFailure>),
    /// The stream of changes ended inside a source transaction; the partial transaction
    /// was rolled back.
    #[error(
        "the changes ended inside a source transaction (after {origin}/{seq}); it was not applied"
    )]
    IncompleteTransaction {
        /// Origin of the last change received.
        origin: String,
        /// Its sequence number.
        seq: u64,
    },
    /// Reading the source of changes failed.
    #[error("reading changes: {0}")]
    Source(String),
    /// The store failed outside any one change.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<mysql::Error> for ApplyError {
    fn from(e: mysql::Error) -> Self {
        ApplyError::Store(StoreError::MySql(e))
    }
}
