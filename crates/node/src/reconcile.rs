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
//! message may hold ([`Reconciler`]'s checks); a message that breaks the protocol ends
//! the session with the reason, and the next session starts over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_core::PrimaryKey;
use concord_core::mapping::LinkMapping;
use concord_core::reconcile::{Compare, Difference, Message as RangeMessage, Reconciler};
use concord_store::{SnapshotRead, StoreError, TableItems};
use concord_wire::{Frame, Message, Reconcile, ReconcileAnswer};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::node::Shared;
use crate::session::{SessionError, blocking, lock};

/// One session's reconciliations started by this side: where to send steps and where
/// answers go. Lives as long as the session.
pub(crate) struct Link {
    tx: mpsc::Sender<Frame>,
    /// Whether the peer speaks a protocol version with reconciliation.
    pub(crate) supported: bool,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::Sender<Option<RangeMessage>>>>,
    stall: Duration,
}

/// What one table's reconciliation found and cost.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Keys held differently, seen from this side.
    pub(crate) differences: Vec<Difference>,
    /// Messages both ways.
    pub(crate) messages: usize,
    /// Their encoded size, both ways.
    pub(crate) bytes: usize,
    /// The peer holds no row of the table at all: every row of this side is missing
    /// there (and `differences` is left empty rather than listing them).
    pub(crate) peer_empty: bool,
}

impl Link {
    pub(crate) fn new(tx: mpsc::Sender<Frame>, supported: bool, stall: Duration) -> Self {
        Self {
            tx,
            supported,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            stall,
        }
    }

    /// Where the session's outgoing frames go.
    pub(crate) fn frames(&self) -> mpsc::Sender<Frame> {
        self.tx.clone()
    }

    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Option<RangeMessage>>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands an answer to the reconciliation waiting for it; an answer nobody asked for
    /// breaks the protocol.
    pub(crate) async fn answered(&self, answer: ReconcileAnswer) -> Result<(), SessionError> {
        let waiter = self.waiting().get(&answer.id).cloned();
        match waiter {
            Some(waiter) => {
                // The waiter may have given up (its caller went away): not the peer's
                // fault.
                let _ = waiter.send(answer.message).await;
                Ok(())
            }
            None => Err(SessionError::Unexpected(format!(
                "an answer to reconciliation {} that was never started",
                answer.id
            ))),
        }
    }

    /// Reconciles `table` (named `wire_table` at the peer) between the snapshot read in
    /// `slot` and the peer. The read stays in `slot` for the rows to send.
    pub(crate) async fn table(
        &self,
        slot: &mut Option<Box<dyn SnapshotRead>>,
        table: &str,
        wire_table: &str,
        compare: Compare,
    ) -> Result<Outcome, SessionError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answers_tx, mut answers) = mpsc::channel(1);
        self.waiting().insert(id, answers_tx);
        let mut outcome = Outcome::default();
        let result = self
            .run(
                id,
                slot,
                table,
                wire_table,
                compare,
                &mut answers,
                &mut outcome,
            )
            .await;
        self.waiting().remove(&id);
        result.map(|()| outcome)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        id: u64,
        slot: &mut Option<Box<dyn SnapshotRead>>,
        table: &str,
        wire_table: &str,
        compare: Compare,
        answers: &mut mpsc::Receiver<Option<RangeMessage>>,
        outcome: &mut Outcome,
    ) -> Result<(), SessionError> {
        let mut message = run_step(slot, table, compare, None, &mut outcome.differences).await?;
        while let Some(ranges) = message {
            outcome.messages += 1;
            outcome.bytes += ranges.encoded_len();
            let frame = Frame::V1(Message::Reconcile(Reconcile {
                id,
                table: wire_table.to_owned(),
                compare,
                message: ranges,
            }));
            self.tx
                .send(frame)
                .await
                .map_err(|_| SessionError::Closed)?;
            let answer = match tokio::time::timeout(self.stall, answers.recv()).await {
                Err(_) => return Err(SessionError::Silent(self.stall)),
                Ok(None) => return Err(SessionError::Closed),
                Ok(Some(answer)) => answer,
            };
            let Some(answer) = answer else { break };
            outcome.messages += 1;
            outcome.bytes += answer.encoded_len();
            if outcome.messages == 2 && answer.holds_nothing() {
                outcome.peer_empty = true;
                return Ok(());
            }
            message =
                run_step(slot, table, compare, Some(answer), &mut outcome.differences).await?;
        }
        outcome.differences.sort_by(|a, b| a.key.cmp(&b.key));
        outcome.differences.dedup_by(|a, b| a.key == b.key);
        Ok(())
    }
}

/// One step on a blocking thread: the first message (no `answer`), or the reply to the
/// peer's `answer` (`None` when nothing is left to say).
async fn run_step(
    slot: &mut Option<Box<dyn SnapshotRead>>,
    table: &str,
    compare: Compare,
    answer: Option<RangeMessage>,
    differences: &mut Vec<Difference>,
) -> Result<Option<RangeMessage>, SessionError> {
    let Some(mut snapshot) = slot.take() else {
        return Err(SessionError::Internal(
            "no snapshot read for reconciling".into(),
        ));
    };
    let table = table.to_owned();
    let mut found = std::mem::take(differences);
    let (snapshot, found, result) = blocking(move || {
        let mut items = TableItems {
            snapshot: snapshot.as_mut(),
            table: &table,
            compare,
        };
        let reconciler = Reconciler::default();
        let result = match &answer {
            None => reconciler.initiate(&mut items).map(Some),
            Some(answer) => reconciler.respond(&mut items, answer, &mut found),
        };
        (snapshot, found, result)
    })
    .await?;
    *slot = Some(snapshot);
    *differences = found;
    result.map_err(range_error)
}

fn range_error(e: concord_core::reconcile::ReconcileError<StoreError>) -> SessionError {
    match e {
        concord_core::reconcile::ReconcileError::Source(e) => SessionError::Store(e),
        concord_core::reconcile::ReconcileError::Invalid(why) => {
            SessionError::Unexpected(format!("reconciliation: {why}"))
        }
    }
}

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
