//! Range reconciliation over a live session: find the rows two nodes hold differently
//! by exchanging fingerprints of key ranges ([`concord_core::reconcile`]), so that only
//! what differs crosses the network.
//!
//! Two uses share one exchange:
//! - **Catching up past retention.** When this node's log no longer reaches back to what
//!   the peer lacks, the sender reconciles each table by row clocks
//!   ([`Compare::Clocks`]) and sends the states of only the rows that differ, then
//!   `SnapshotEnd`. A peer that was away for a month but whose rows mostly agree costs
//!   a few kilobytes, not a copy of the database.
//! - **`concord verify`.** A person asks the node (`/v1/verify`) to compare a table with
//!   a peer by values ([`Compare::Values`]) and gets every differing key back.
//!
//! The side that starts sends `Reconcile` steps, each with an id; the receive loop of
//! the other side answers each with `ReconcileAnswer` from a consistent read of its own
//! store (one read per reconciliation id, kept between its steps); this side's receive
//! loop hands the answers back through the [`Link`] by id. Both sides bound what a
//! message may hold ([`concord_core::reconcile::Reconciler`]'s checks); a message that breaks the protocol ends
//! the session with the reason, and the next session starts over.

use std::sync::Arc;

use concord_core::PrimaryKey;
use concord_core::mapping::LinkMapping;
use concord_core::reconcile::Compare;
use concord_store::SnapshotRead;
use concord_wire::{Reconcile, ReconcileAnswer};
use serde::{Deserialize, Serialize};

pub(crate) mod link;

pub(crate) use link::Link;
use link::run_step;

use crate::session_error::{SessionError, blocking};
use crate::shared::{Shared, lock};

/// The answering side of one session: the consistent reads of the reconciliations it
/// is answering, each opened at its first step and kept for its next ones. The starter
/// does not say when it is done, so the oldest read is closed when more are open than
/// a session needs (a catch-up and a `verify` at once).
#[derive(Default)]
pub(crate) struct Answerer {
    open: Vec<(u64, Box<dyn SnapshotRead>)>,
}

/// Reads kept open for answering, per session.
const OPEN_ANSWERS: usize = 2;

impl Answerer {
    /// Answers one step of the peer's reconciliation.
    pub(crate) async fn answer(
        &mut self,
        shared: &Arc<Shared>,
        mapping: &LinkMapping,
        step: Reconcile,
    ) -> Result<ReconcileAnswer, SessionError> {
        let open = self.open.iter().position(|(id, _)| *id == step.id);
        let snapshot = match open {
            Some(at) => self.open.remove(at).1,
            None => {
                while self.open.len() >= OPEN_ANSWERS {
                    let (_, mut oldest) = self.open.remove(0);
                    blocking(move || oldest.finish()).await??;
                }
                let store = shared.store.clone();
                blocking(move || {
                    let mut store = lock(&store);
                    // Rows' clocks must describe their values.
                    store.capture()?;
                    store.snapshot()
                })
                .await??
            }
        };
        let table = mapping
            .by_remote(&step.table)
            .map_or_else(|| step.table.clone(), |t| t.local.clone());
        let mut slot = Some(snapshot);
        let mut ignored = Vec::new();
        let reply = run_step(
            &mut slot,
            &table,
            step.compare,
            Some(step.message),
            &mut ignored,
        )
        .await;
        if let (Ok(Some(_)), Some(snapshot)) = (&reply, slot) {
            self.open.push((step.id, snapshot));
        }
        Ok(ReconcileAnswer {
            id: step.id,
            message: reply?,
        })
    }
}

/// Reads the states of up to `limit` rows of `table` after `after` from the read in
/// `slot`, and the key to continue after (`None` at the end).
pub(crate) async fn table_rows(
    slot: &mut Option<Box<dyn SnapshotRead>>,
    table: &str,
    after: Vec<u8>,
    limit: usize,
) -> Result<(Vec<concord_core::Change>, Option<Vec<u8>>), SessionError> {
    let Some(mut snapshot) = slot.take() else {
        return Err(SessionError::Internal(
            "no snapshot read for reconciling".into(),
        ));
    };
    let table = table.to_owned();
    let (snapshot, rows) = blocking(move || {
        let rows = snapshot.table_rows(&table, &after, limit);
        (snapshot, rows)
    })
    .await?;
    *slot = Some(snapshot);
    Ok(rows?)
}

/// Reads the states of the rows of `table` with these keys that the read in `slot`
/// holds.
pub(crate) async fn rows_by_key(
    slot: &mut Option<Box<dyn SnapshotRead>>,
    table: &str,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<concord_core::Change>, SessionError> {
    let Some(mut snapshot) = slot.take() else {
        return Err(SessionError::Internal(
            "no snapshot read for reconciling".into(),
        ));
    };
    let table = table.to_owned();
    let (snapshot, rows) = blocking(move || {
        let rows = snapshot.rows_by_key(&table, &keys);
        (snapshot, rows)
    })
    .await?;
    *slot = Some(snapshot);
    Ok(rows?)
}

/// What `concord verify` reports: per table, every key held differently by this node
/// and the peer, compared by values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The peer compared with.
    pub peer: String,
    /// One entry per table compared.
    pub tables: Vec<TableVerify>,
}

/// One table's comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableVerify {
    /// The table, by this node's name.
    pub table: String,
    /// Reconciliation messages exchanged (two per round trip).
    pub messages: usize,
    /// Their encoded size.
    pub bytes: usize,
    /// The keys held differently.
    pub differences: Vec<RowDifference>,
}

/// One key held differently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDifference {
    /// The primary key, printed.
    pub key: String,
    /// Whether this node holds a (live) row with that key.
    pub here: bool,
    /// Whether the peer does.
    pub there: bool,
}

/// Why a verification could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No `[[peers]]` entry has that name.
    #[error("no peer named {0:?} in this node's [[peers]]")]
    UnknownPeer(String),
    /// The peer has no session up to reconcile over.
    #[error("peer {0:?} is not connected; verify needs a live session (see `concord status`)")]
    NotConnected(String),
    /// The peer runs a Concord that predates reconciliation.
    #[error("peer {0:?} speaks a protocol version without reconciliation (before 4); upgrade it")]
    Unsupported(String),
    /// The table is not tracked here.
    #[error("table {0:?} is not tracked by this node")]
    UnknownTable(String),
    /// The session failed while comparing.
    #[error("comparing with peer {peer:?}: {reason}")]
    Session {
        /// The peer.
        peer: String,
        /// What went wrong.
        reason: String,
    },
}

/// Compares `tables` (every tracked table when empty) with peer `peer_name` by values,
/// over its live session.
pub(crate) async fn verify(
    shared: &Arc<Shared>,
    peer_name: &str,
    tables: Vec<String>,
) -> Result<VerifyReport, VerifyError> {
    let peer = shared
        .peers
        .iter()
        .find(|p| p.config.name == peer_name)
        .ok_or_else(|| VerifyError::UnknownPeer(peer_name.to_owned()))?;
    let link = peer
        .reconciles()
        .ok_or_else(|| VerifyError::NotConnected(peer_name.to_owned()))?;
    if !link.supported {
        return Err(VerifyError::Unsupported(peer_name.to_owned()));
    }
    let failed = |e: SessionError| VerifyError::Session {
        peer: peer_name.to_owned(),
        reason: e.words(),
    };
    let store = shared.store.clone();
    let snapshot = blocking(move || {
        let mut store = lock(&store);
        store.capture()?;
        store.snapshot()
    })
    .await
    .and_then(|r| r.map_err(SessionError::Store))
    .map_err(failed)?;
    let tracked = snapshot.table_names();
    let tables = if tables.is_empty() {
        tracked
    } else {
        if let Some(unknown) = tables.iter().find(|t| !tracked.contains(t)) {
            return Err(VerifyError::UnknownTable(unknown.clone()));
        }
        tables
    };
    let mut slot = Some(snapshot);
    let mut report = VerifyReport {
        peer: peer_name.to_owned(),
        tables: Vec::new(),
    };
    for table in tables {
        let wire = peer
            .config
            .tables
            .by_local(&table)
            .map_or_else(|| table.clone(), |t| t.remote.clone());
        let outcome = link
            .table(&mut slot, &table, &wire, Compare::Values)
            .await
            .map_err(failed)?;
        report.tables.push(TableVerify {
            table,
            messages: outcome.messages,
            bytes: outcome.bytes,
            differences: outcome
                .differences
                .into_iter()
                .map(|d| RowDifference {
                    key: PrimaryKey::from_bytes_unchecked(d.key).to_string(),
                    here: d.here.is_some(),
                    there: d.there.is_some(),
                })
                .collect(),
        });
    }
    if let Some(mut snapshot) = slot.take() {
        // Closing a read-only transaction cannot lose anything; a failure here is the
        // connection's, and the next read opens a new one.
        let _ = blocking(move || snapshot.finish()).await;
    }
    Ok(report)
}
