//! One session's reconciliations started by this side ([`Link`]): steps out, answers
//! back by id. Kept apart from the answering side, which reads the node's store, so a
//! peer's record of its session ([`crate::shared::Peer`]) can hold one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_core::reconcile::{Compare, Difference, Message as RangeMessage, Reconciler};
use concord_store::{SnapshotRead, StoreError, TableItems};
use concord_wire::{Frame, Message, Reconcile, ReconcileAnswer};
use tokio::sync::mpsc;

use crate::session_error::{SessionError, blocking};

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
pub(super) async fn run_step(
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

pub(super) fn range_error(e: concord_core::reconcile::ReconcileError<StoreError>) -> SessionError {
    match e {
        concord_core::reconcile::ReconcileError::Source(e) => SessionError::Store(e),
        concord_core::reconcile::ReconcileError::Invalid(why) => {
            SessionError::Unexpected(format!("reconciliation: {why}"))
        }
    }
}
