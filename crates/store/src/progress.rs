//! The state machine every store's apply transaction shares.
//!
//! Whatever the database, an apply transaction keeps the same promises: it commits only
//! at a source-transaction boundary, a failure poisons it (the store rolls back and
//! nothing since the last commit stays), a failure names the change that caused it,
//! and it counts what it did. [`TxnProgress`] keeps that state and those rules, so each
//! store's `ApplySession` only writes to its database.

use concord_core::{Change, NodeId};

use crate::{ApplyError, ApplyReport, RowError, RowFailure, StoreError};

/// Why one change could not be applied: the change itself, or the store.
#[derive(Debug)]
pub enum Failure {
    /// The change is bad here; the error names it.
    Row(RowError),
    /// The store failed while applying it.
    Store(StoreError),
}

impl<E: Into<RowError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Row(e.into())
    }
}

/// Where an apply transaction stands.
#[derive(Debug)]
pub struct TxnProgress {
    poisoned: bool,
    at_boundary: bool,
    /// Changes applied in the current store transaction.
    pub in_txn: usize,
    last: Option<(NodeId, u64)>,
    /// What the whole session did so far.
    pub report: ApplyReport,
}

impl Default for TxnProgress {
    fn default() -> Self {
        Self {
            poisoned: false,
            at_boundary: true,
            in_txn: 0,
            last: None,
            report: ApplyReport::default(),
        }
    }
}

impl TxnProgress {
    /// Whether the changes applied so far end on a source-transaction boundary.
    pub fn at_boundary(&self) -> bool {
        self.at_boundary
    }

    /// Whether the session failed (and its store transaction is rolled back).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Marks the session failed: nothing more is applied or committed.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// A new store transaction was opened.
    pub fn began(&mut self) {
        self.in_txn = 0;
    }

    /// Before applying `change`: refuses if the session failed earlier.
    pub fn start(&mut self, change: &Change) -> Result<(), ApplyError> {
        if self.poisoned {
            return Err(ApplyError::Poisoned);
        }
        self.report.received += 1;
        self.last = Some((change.origin, change.seq));
        Ok(())
    }

    /// After applying `change`: `Ok(true)` if it was new, `Ok(false)` if it was already
    /// held (which leaves the boundary as it was: what it belongs to is held). A failure
    /// poisons the session and is returned naming the change.
    pub fn finish(
        &mut self,
        change: &Change,
        outcome: Result<bool, Failure>,
    ) -> Result<(), ApplyError> {
        match outcome {
            Ok(applied) => {
                if applied {
                    self.at_boundary = change.last_in_txn;
                }
                Ok(())
            }
            Err(failure) => {
                self.poisoned = true;
                Err(match failure {
                    Failure::Row(error) => ApplyError::Row(Box::new(RowFailure {
                        origin: change.origin.short(),
                        seq: change.seq,
                        table: change.table.clone(),
                        key: change.key.to_string(),
                        error,
                    })),
                    Failure::Store(e) => ApplyError::Store(e),
                })
            }
        }
    }

    /// After setting `change` aside (or failing to).
    pub fn finish_set_aside(
        &mut self,
        change: &Change,
        outcome: Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        match outcome {
            Ok(()) => {
                self.at_boundary = change.last_in_txn;
                self.report.set_aside += 1;
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Before committing: refuses if the session failed, or if the changes end inside
    /// a source transaction (which would commit part of it).
    pub fn ready_to_commit(&mut self) -> Result<(), ApplyError> {
        if self.poisoned {
            return Err(ApplyError::Poisoned);
        }
        if !self.at_boundary {
            let (origin, seq) = self.last.map(|(o, s)| (o.short(), s)).unwrap_or_default();
            self.poisoned = true;
            return Err(ApplyError::IncompleteTransaction { origin, seq });
        }
        Ok(())
    }

    /// The store transaction committed.
    pub fn committed(&mut self) {
        self.report.commits += 1;
    }

    /// The report, leaving an empty one.
    pub fn take_report(&mut self) -> ApplyReport {
        std::mem::take(&mut self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poisoned session once said "reading changes: ...", sending people to look for
    /// a broken source of changes; it must say that the transaction itself failed.
    #[test]
    fn a_poisoned_transaction_says_it_failed_earlier_not_that_reading_failed() {
        let mut progress = TxnProgress::default();
        progress.poison();
        let err = progress.ready_to_commit().unwrap_err().to_string();
        assert!(err.contains("failed earlier and was rolled back"), "{err}");
        assert!(!err.contains("reading changes"), "{err}");
    }
}
