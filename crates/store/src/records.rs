//! What a store reports: counts from applying, recorded conflicts and set-aside
//! failures, a page of the change log, and the tunables every store takes.

use std::time::Duration;

use concord_core::{Change, HlcClock, Value};

/// Tunables of a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How far ahead of local time a remote timestamp may be before it is refused.
    pub max_clock_drift: Duration,
    /// Changes applied per local transaction before committing at the next source
    /// transaction boundary. Bounds how long local writers wait.
    pub apply_batch_changes: usize,
    /// How a server store captures local writes when it is first tracked.
    pub capture: CaptureMethod,
}

/// How a store captures its clients' writes now, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureState {
    /// `triggers`, or `write-ahead log`.
    pub method: String,
    /// Why this method, or what to change for a faster one (`None` when nothing to say).
    pub note: Option<String>,
    /// How far the database's log is ahead of what capture has read (bytes of WAL a
    /// replication slot keeps on the server), for log-based capture.
    pub lag_bytes: Option<u64>,
}

/// How a server store (PostgreSQL) captures the writes of its clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureMethod {
    /// From the database's own log (PostgreSQL logical decoding) when the server is
    /// configured for it, else with triggers; the log says which and why.
    #[default]
    Log,
    /// With row triggers, whatever the server allows.
    Triggers,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_clock_drift: Duration::from_millis(HlcClock::DEFAULT_MAX_DRIFT_MS),
            apply_batch_changes: 10_000,
            capture: CaptureMethod::default(),
        }
    }
}

/// Counts from applying changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changes received.
    pub received: u64,
    /// Changes merged (new to this replica).
    pub applied: u64,
    /// Changes already held, skipped.
    pub duplicates: u64,
    /// Conflicts recorded.
    pub conflicts: u64,
    /// Local writes captured before applying.
    pub captured: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Changes set aside (not applied, recorded as failures).
    pub set_aside: u64,
}

impl ApplyReport {
    /// Adds another report's counts to this one.
    pub fn absorb(&mut self, other: &ApplyReport) {
        self.received += other.received;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.conflicts += other.conflicts;
        self.captured += other.captured;
        self.commits += other.commits;
        self.set_aside += other.set_aside;
    }
}

/// A conflict recorded while applying: two concurrent writes, or an update overridden by
/// a concurrent delete.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictRecord {
    /// Row id of the record.
    pub id: i64,
    /// Table name.
    pub table: String,
    /// Printable key.
    pub key: String,
    /// `column` or `update-vs-delete`.
    pub kind: String,
    /// The column, for column conflicts.
    pub column: Option<String>,
    /// The value held locally when the pair met.
    pub local_value: Value,
    /// Its version.
    pub local_version: String,
    /// The incoming value.
    pub remote_value: Value,
    /// Its version.
    pub remote_version: String,
    /// `local` or `remote`: which one the merge rules kept.
    pub winner: String,
}

/// A change that was set aside because it could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    /// Origin node id.
    pub origin: String,
    /// Sequence number.
    pub seq: u64,
    /// Table named by the change.
    pub table: String,
    /// Printable key.
    pub key: String,
    /// Why it could not be applied.
    pub error: String,
    /// When, in ms since the epoch.
    pub at_ms: u64,
}

/// A page of log entries read for a target.
#[derive(Debug, Default)]
pub struct LogPage {
    /// The changes the target lacks, in log order.
    pub changes: Vec<Change>,
    /// The last log position examined; the next read starts after it.
    pub last_pos: i64,
}
