//! Error types, one per flow: tracking (installing capture), the store itself (opening,
//! capturing, reading the log), and applying remote changes.
//!
//! They are shared by every store so the node and the binary handle a bad change the
//! same way whatever the database: a bad incoming change is a [`RowFailure`] naming
//! origin, sequence, table and key, and the batch it belonged to was rolled back. The
//! driver's own error is kept (as [`DbError::driver`]) for callers that want to look
//! deeper, and its message is printed with the database's error code when the server
//! gave one.
//!
//! Each cause is said once: an error whose message already includes its cause does not
//! also expose that cause as `source()`, because the binary prints the whole chain and
//! would otherwise say it twice.

use concord_core::{ClockError, KeyError, SequenceGap};

/// An error reported by the database or its driver.
#[derive(Debug, thiserror::Error)]
#[error("{system}: {message}")]
pub struct DbError {
    /// Which database: `sqlite`, `postgres` or `mysql`.
    pub system: &'static str,
    /// The message, with the server's error code and detail when it gave them.
    pub message: String,
    /// The driver's error. Not exposed as `source()`: `message` already says what it
    /// says, and printing the chain would repeat it.
    pub driver: Box<dyn std::error::Error + Send + Sync + 'static>,
}

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
    /// A primary-key column may hold NULL, so two rows could share a key.
    #[error(
        "table {0:?}: primary key column {1:?} may hold NULL, so two rows could share a key; declare it NOT NULL to track the table"
    )]
    NullableKey(String, String),
    /// A column has a type this store cannot map to a Concord value.
    #[error(
        "table {table:?}: column {column:?} has type {type_name}, which Concord cannot replicate yet"
    )]
    UnsupportedType {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
        /// The column's type as the database prints it.
        type_name: String,
    },
    /// The relation cannot be tracked (a view, a virtual table, ...).
    #[error("table {0:?} cannot be tracked: {1}")]
    Unsupported(String, &'static str),
    /// A table or column name Concord cannot use in its triggers.
    #[error("table {0:?}: {1}")]
    BadName(String, String),
    /// The named table is not tracked.
    #[error("table {0:?} is not tracked")]
    NotTracked(String),
    /// The store's metadata could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Several problems, all found before anything was changed (see
    /// [`TrackError::from_problems`]).
    #[error("{} problems:{}", .0.len(), .0.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Problems(Vec<TrackError>),
}

impl TrackError {
    /// One error for everything wrong with a set of tables: the single problem itself,
    /// or [`TrackError::Problems`] listing each (nested lists flattened). `None` when
    /// there is nothing wrong.
    pub fn from_problems(problems: Vec<TrackError>) -> Option<TrackError> {
        let mut flat: Vec<TrackError> = problems
            .into_iter()
            .flat_map(TrackError::into_problems)
            .collect();
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(TrackError::Problems(flat)),
        }
    }

    /// Each problem this error stands for: the list of [`TrackError::Problems`], or the
    /// error alone.
    pub fn into_problems(self) -> Vec<TrackError> {
        match self {
            TrackError::Problems(list) => list
                .into_iter()
                .flat_map(TrackError::into_problems)
                .collect(),
            other => vec![other],
        }
    }

    /// Whether the error is about the named tables themselves (so checking other tables
    /// is still worthwhile), not about reaching the database.
    pub fn is_about_a_table(&self) -> bool {
        !matches!(self, TrackError::Store(_))
    }
}

/// Opening the store, capturing local writes or reading the log failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error (or the connection failed).
    #[error(transparent)]
    Database(#[from] DbError),
    /// The database file does not exist.
    #[error("{0}: no such file")]
    NoSuchFile(String),
    /// A column was to be added to a table this store does not track.
    #[error("table {0:?} is not tracked here, so no column can be added to it")]
    UnknownTable(String),
    /// This store cannot add columns to its tables.
    #[error("a {0} store cannot add columns")]
    CannotAddColumn(&'static str),
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
    /// The store cannot read a snapshot of its rows for a peer.
    #[error(
        "this {0} cannot provide a snapshot of its rows, so a peer that lacks changes pruned from its log cannot catch up from it; raise its `retention_changes` above what its peers may miss"
    )]
    NoSnapshot(&'static str),
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
    /// Concord's lock on the database could not be taken in time.
    #[error("another Concord process holds the lock on this database")]
    Locked,
    /// The task running capture stopped unexpectedly (it panicked or was cancelled).
    #[error("capture stopped unexpectedly: {0}")]
    CaptureStopped(String),
    /// The companion lock file of a database could not be used.
    #[error("{path}: {error}")]
    LockFile {
        /// The lock file.
        path: String,
        /// What failed.
        error: String,
    },
    /// Another Concord process is working on the file (serving it, merging it).
    #[error(
        "another Concord process is working on {file} ({holder}); wait for it to finish or stop it"
    )]
    HeldByAnother {
        /// The database file.
        file: String,
        /// Who holds it, as it said when it took the lock.
        holder: String,
    },
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
        /// The column's type as the database prints it.
        declared: String,
        /// The value's kind.
        found: &'static str,
        /// Why.
        detail: String,
    },
    /// The key bytes do not decode (the message says "malformed key" and why).
    #[error(transparent)]
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
    #[error("the database refused the write: {}", .0.message)]
    Refused(DbError),
    /// The database refused a set-based write of the rows of several changes, this one
    /// or one before it in the transaction (see [`crate::engine::WriteMode`]); applying
    /// them again one row at a time names the change.
    #[error(
        "the database refused a set-based write of the rows of this change or of one before it in the transaction: {}",
        .0.message
    )]
    RefusedInSet(DbError),
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
    /// What was wrong (in the message already, so not exposed as `source()`).
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
    /// The apply transaction failed earlier and was rolled back; it takes no more
    /// changes (open a new one).
    #[error(
        "this apply transaction failed earlier and was rolled back; nothing more is applied in it"
    )]
    Poisoned,
    /// A link's schema mapping cannot convert a change of the batch (the message names
    /// the change, the column and why).
    #[error("{0}")]
    Mapping(String),
    /// The store failed outside any one change.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApplyError {
    /// The failed change, when one change was to blame.
    pub fn row_failure(&self) -> Option<&RowFailure> {
        match self {
            ApplyError::Row(failure) => Some(failure),
            _ => None,
        }
    }
}

/// `From` conversions for one driver's error type: into [`DbError`] and into every
/// flow's error through [`StoreError::Database`].
macro_rules! driver_error {
    ($feature:literal, $error:ty, $system:literal, $describe:expr) => {
        #[cfg(feature = $feature)]
        impl From<$error> for DbError {
            fn from(e: $error) -> Self {
                let describe: fn(&$error) -> String = $describe;
                DbError {
                    system: $system,
                    message: describe(&e),
                    driver: Box::new(e),
                }
            }
        }
        #[cfg(feature = $feature)]
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                StoreError::Database(e.into())
            }
        }
        #[cfg(feature = $feature)]
        impl From<$error> for TrackError {
            fn from(e: $error) -> Self {
                TrackError::Store(e.into())
            }
        }
        #[cfg(feature = $feature)]
        impl From<$error> for ApplyError {
            fn from(e: $error) -> Self {
                ApplyError::Store(e.into())
            }
        }
    };
}

driver_error!("sqlite", rusqlite::Error, "sqlite", |e| e.to_string());
driver_error!("postgres", postgres::Error, "postgres", describe_postgres);
driver_error!("mysql", mysql::Error, "mysql", describe_mysql);

/// The server's message (with its SQLSTATE and detail) when there is one, else the
/// client's.
#[cfg(feature = "postgres")]
fn describe_postgres(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(" (");
                s.push_str(detail);
                s.push(')');
            }
            s
        }
        // The client's own message is terse ("error connecting to server"); the reason
        // (refused, timed out, bad password) is in its sources, which this message must
        // carry since the driver's error is not exposed as a source.
        None => with_sources(e),
    }
}

/// An error's message followed by each of its sources' that it does not already hold.
#[cfg(feature = "postgres")]
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let clause = c.to_string();
        if !text.contains(&clause) {
            text.push_str(": ");
            text.push_str(&clause);
        }
        cause = c.source();
    }
    text
}

/// The server's message with its error code when there is one, else the client's.
#[cfg(feature = "mysql")]
fn describe_mysql(e: &mysql::Error) -> String {
    match e {
        mysql::Error::MySqlError(db) => format!("{} ({}): {}", db.code, db.state, db.message),
        other => other.to_string(),
    }
}
