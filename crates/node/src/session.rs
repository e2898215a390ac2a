//! One sync session with one peer, over one TLS connection.
//!
//! 1. Both sides send `Hello` (protocol versions, node id, version vector) and check the
//!    other's. A peer with no protocol version in common gets an `Error` and is closed.
//! 2. Three tasks then run until one fails: the **writer** owns the socket's write half
//!    and gives up if the peer stops reading for the stall timeout; the **sender** reads
//!    this node's log for what the peer lacks and sends it in numbered batches, at most
//!    `window` unacknowledged, then waits for new log entries (a watch channel signals
//!    every capture and apply); the **receiver** applies incoming batches, whole source
//!    transactions at a time, and acknowledges each.
//! 3. Anything unexpected (a malformed or oversized frame, an unknown message, a batch
//!    out of order or replayed, an acknowledgement for a batch never sent) ends the
//!    session with an error that is logged and shown in status. Nothing of an incomplete
//!    source transaction is applied. The node retries with backoff and the next session
//!    resumes from the version vectors.
//!
//! A source transaction that cannot be applied here (a constraint, a type the column
//! would convert, a timestamp beyond the clock bound) is set aside and recorded, so one
//! bad row never blocks the changes after it.
//!
//! Likewise on the way out: a source transaction the link's mapping cannot convert for
//! this peer is withheld from it alone, recorded ([`crate::link_failures`]), and the
//! peer is told its sequence numbers (`Withheld`, protocol version 5) so its version
//! vector, which holds each origin's changes contiguously, moves past them; the changes
//! after it keep flowing. The receiver checks such a range before using any of it. To
//! an older peer the session stops at that change, with the error in status.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use concord_core::mapping::{LinkMapping, MappingError};
use concord_core::{Change, VersionVector};
use concord_store::{ApplyReport, Store, StoreError};
use concord_wire::{
    Ack, BATCH_OVERHEAD, BatchInPieces, ChangeBatch, DEFAULT_MAX_BATCH_BYTES,
    DELETE_COLUMNS_SINCE_VERSION, ErrorMessage, Frame, FrameCodec, Hello, MIN_PROTOCOL_VERSION,
    Message, PIECES_SINCE_VERSION, PROTOCOL_VERSION, RECONCILE_SINCE_VERSION, Reassembler,
    SNAPSHOTS_SINCE_VERSION, SnapshotEnd, WITHHELD_SINCE_VERSION, WireError, Withheld,
    encoded_size,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Framed;

use crate::link_failures::{Direction, LinkFailure, LinkRow};
use crate::reconcile::{Answerer, Link, rows_by_key, table_rows};
use crate::session_error::{SessionError, blocking};
use crate::shared::{Peer, Shared, lock, wall_ms};
use crate::words;

/// Counts bytes through a stream into the peer's counters.
pub(crate) struct Counted<S> {
    inner: S,
    peer: Arc<Peer>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, peer: Arc<Peer>) -> Self {
        Self { inner, peer }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.peer.counters.bytes_received.add(read as u64);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            self.peer.counters.bytes_sent.add(*n as u64);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// State shared by the three tasks of one session.
struct Flow {
    /// Highest batch number sent.
    sent: AtomicU64,
    /// Highest batch number acknowledged.
    acked: AtomicU64,
    /// Wakes the sender when an acknowledgement opens the window.
    ack: Notify,
}

/// Runs a session until it fails or the node shuts down.
pub(crate) async fn run<S>(
    stream: S,
    peer: Arc<Peer>,
    shared: Arc<Shared>,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sync = &shared.config.sync;
    let stall = sync.stall_timeout();
    let framed = Framed::new(
        Counted::new(stream, peer.clone()),
        FrameCodec::new(sync.max_frame_bytes),
    );
    let (mut sink, mut source) = framed.split();

    // Handshake.
    let holds = store_holds(&shared).await?;
    let hello = Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        node: shared.node_id,
        holds,
        max_frame: sync.max_frame_bytes,
        agent: format!("concord/{}", env!("CARGO_PKG_VERSION")),
    };
    tokio::time::timeout(stall, sink.send(Frame::V1(Message::Hello(hello))))
        .await
        .map_err(|_| SessionError::StoppedReading(stall))??;
    let theirs = match tokio::time::timeout(stall, source.next()).await {
        Err(_) => return Err(SessionError::Silent(stall)),
        Ok(None) => return Err(SessionError::Closed),
        Ok(Some(Err(e))) => return Err(refuse(&mut sink, e.into()).await),
        Ok(Some(Ok(Frame::V1(Message::Hello(h))))) => h,
        Ok(Some(Ok(Frame::V1(Message::Error(e))))) => {
            return Err(SessionError::Peer {
                code: e.code,
                message: e.message,
            });
        }
        Ok(Some(Ok(Frame::V1(other)))) => {
            let err = SessionError::Unexpected(format!("{} before Hello", name(&other)));
            return Err(refuse(&mut sink, err).await);
        }
    };
    if theirs.min_version > PROTOCOL_VERSION || theirs.max_version < MIN_PROTOCOL_VERSION {
        let err = SessionError::Version {
            min: theirs.min_version,
            max: theirs.max_version,
        };
        return Err(refuse(&mut sink, err).await);
    }
    peer.connected(theirs.node, theirs.holds.clone());
    tracing::info!(peer = %peer.config.name, node = %theirs.node.short(), "session established");

    let (tx, mut rx) = mpsc::channel::<Frame>(sync.window * 2 + 8);
    let flow = Arc::new(Flow {
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        ack: Notify::new(),
    });

    let writer = async move {
        while let Some(frame) = rx.recv().await {
            let is_error = matches!(frame, Frame::V1(Message::Error(_)));
            tokio::time::timeout(stall, sink.send(frame))
                .await
                .map_err(|_| SessionError::StoppedReading(stall))??;
            if is_error {
                break;
            }
        }
        let _ = sink.close().await;
        Ok::<(), SessionError>(())
    };
    // The session speaks the newest version both sides speak.
    let version = theirs.max_version.min(PROTOCOL_VERSION);
    let link = Arc::new(Link::new(
        tx.clone(),
        version >= RECONCILE_SINCE_VERSION,
        stall,
    ));
    peer.set_reconciles(Some(link.clone()));
    let sender = send_loop(
        shared.clone(),
        peer.clone(),
        flow.clone(),
        link.clone(),
        theirs.holds,
        theirs.max_frame,
        version,
    );
    let pinger = {
        let tx = tx.clone();
        let every = Duration::from_secs(sync.ping_interval_s.max(1));
        async move {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(every).await;
                n += 1;
                if tx.send(Frame::V1(Message::Ping(n))).await.is_err() {
                    return Ok::<(), SessionError>(());
                }
            }
        }
    };
    let receiver = receive_loop(
        &mut source,
        shared.clone(),
        peer.clone(),
        tx.clone(),
        flow.clone(),
        link,
        stall,
    );
    let mut shutdown = shared.shutdown.subscribe();

    let mut writer = tokio::spawn(writer);
    let mut writer_done = false;
    let result = tokio::select! {
        r = receiver => r,
        r = sender => r,
        r = pinger => r,
        r = &mut writer => {
            writer_done = true;
            r.unwrap_or_else(|e| Err(SessionError::Internal(e.to_string())))
        }
        _ = shutdown.wait_for(|&stop| stop) => Err(SessionError::Shutdown),
    };
    // A finished task must not be polled again; only a live writer can still deliver
    // the closing error.
    if let (Err(err), false) = (&result, writer_done) {
        // Tell the peer why, if the socket still takes it; never wait long for that.
        let _ = tx.try_send(Frame::V1(Message::Error(ErrorMessage {
            code: err.code(),
            message: err.words(),
        })));
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut writer).await;
    }
    writer.abort();
    peer.set_reconciles(None);
    result
}

async fn refuse<K>(sink: &mut K, err: SessionError) -> SessionError
where
    K: futures::Sink<Frame, Error = WireError> + Unpin,
{
    let message = ErrorMessage {
        code: err.code(),
        message: err.words(),
    };
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        sink.send(Frame::V1(Message::Error(message))),
    )
    .await;
    err
}

fn name(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "Hello",
        Message::Changes(_) => "Changes",
        Message::Ack(_) => "Ack",
        Message::Ping(_) => "Ping",
        Message::Pong(_) => "Pong",
        Message::Error(_) => "Error",
        Message::Piece(_) => "Piece",
        Message::SnapshotEnd(_) => "SnapshotEnd",
        Message::Reconcile(_) => "Reconcile",
        Message::ReconcileAnswer(_) => "ReconcileAnswer",
        Message::Withheld(_) => "Withheld",
    }
}

async fn store_holds(shared: &Arc<Shared>) -> Result<VersionVector, SessionError> {
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || lock(&store).version_vector().clone())
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))
}

/// Streams what the peer lacks: first the backlog, then new log entries as they appear.
/// When the log no longer holds what the peer lacks and the peer speaks snapshots, a
/// snapshot of every row goes first ([`send_snapshot`]).
async fn send_loop(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    flow: Arc<Flow>,
    link: Arc<Link>,
    peer_holds: VersionVector,
    peer_max_frame: u32,
    version: u16,
) -> Result<(), SessionError> {
    let sync = &shared.config.sync;
    let mut sent_holds = peer_holds;
    // Every frame must fit the smaller of the two frame limits.
    let max_frame = sync.max_frame_bytes.min(peer_max_frame);
    let mut out = Outbox {
        tx: link.frames(),
        flow,
        window: sync.window as u64,
        batch: 0,
        max_frame,
        budget: (max_frame as usize).saturating_sub(BATCH_OVERHEAD),
        pieces: version >= PIECES_SINCE_VERSION,
        delete_columns: version >= DELETE_COLUMNS_SINCE_VERSION,
        withhold: version >= WITHHELD_SINCE_VERSION,
    };
    let mut snapshots = 0;
    let withhold = version >= WITHHELD_SINCE_VERSION;
    if withhold {
        // Also when the link has no mapping now: removing it may be the fix.
        resend_withheld(&shared, &peer, &mut out).await?;
    }
    let mut log_changed = shared.log_changed.subscribe();
    'stream: loop {
        let (mut reader, mut after) = loop {
            let store = shared.store.clone();
            let holds = sent_holds.clone();
            let (reader, start) = blocking(move || {
                let mut reader = lock(&store).log_reader()?;
                let start = reader.start_for(&holds);
                Ok::<_, StoreError>((reader, start))
            })
            .await??;
            match start {
                Ok(start) => break (reader, start),
                // One more snapshot at most: a log pruned past a snapshot's version vector
                // while it was sent means this node writes faster than it keeps changes.
                Err(e @ StoreError::Pruned { .. })
                    if version >= SNAPSHOTS_SINCE_VERSION && snapshots < 2 =>
                {
                    snapshots += 1;
                    let held = if link.supported {
                        tracing::info!(peer = %peer.config.name, reason = %e, "the log no longer holds what the peer lacks; reconciling and sending the rows that differ");
                        send_differences(&shared, &peer, &link, &mut out).await?
                    } else {
                        tracing::info!(peer = %peer.config.name, reason = %e, "the log no longer holds what the peer lacks; sending a snapshot");
                        send_snapshot(&shared, &peer, &mut out).await?
                    };
                    sent_holds.join(&held);
                }
                Err(e @ StoreError::Pruned { .. }) => return Err(SessionError::BehindRetention(e)),
                Err(other) => return Err(SessionError::Store(other)),
            }
        };
        let mut open: Option<OpenTxn> = None;
        loop {
            log_changed.borrow_and_update();
            sent_holds.join(&peer.known_holds());
            let holds = sent_holds.clone();
            let limit = sync.batch_changes;
            let from = after;
            let (r, page) = blocking(move || {
                let page = reader.read(from, &holds, limit);
                (reader, page)
            })
            .await?;
            reader = r;
            let page = page?;
            after = page.last_pos;
            if page.changes.is_empty() {
                // Nothing new was found. If the page only held what the peer already has,
                // read on; wait for new log entries only at the end of the log.
                if page.last_pos == from && log_changed.changed().await.is_err() {
                    return Err(SessionError::Shutdown);
                }
                continue;
            }
            // A hole in an origin's sequence (this node counted changes as held without
            // logging them: a snapshot merged, or a range a peer withheld) cannot be sent
            // as changes: what comes before it goes, then the stream starts again from the
            // peer's vector, which finds the hole and reconciles instead.
            let mut changes = page.changes;
            let mut gap = None;
            for (i, change) in changes.iter().enumerate() {
                let have = sent_holds.get(&change.origin);
                if change.seq > have + 1 {
                    gap = Some((i, change.origin, have + 1));
                    break;
                }
                if change.seq > have {
                    sent_holds.set(change.origin, change.seq);
                }
            }
            if let Some((i, _, _)) = gap {
                changes.truncate(i);
            }
            // Into the peer's names. A change that cannot be mapped cannot simply be skipped
            // (the peer holds each origin's changes contiguously): a peer of version 5 is
            // told its source transaction is withheld; to an older one the session stops
            // with the error, which status shows, until the data or the mapping is fixed.
            if peer.config.tables.is_empty() {
                peer.counters.sent.add(changes.len() as u64);
                out.send(changes).await?;
            } else {
                send_mapped(&shared, &peer, &mut out, &mut open, changes, withhold).await?;
            }
            if let Some((_, origin, missing)) = gap {
                tracing::info!(peer = %peer.config.name, origin = %origin.short(), seq = missing, "the log holds no change {missing} of this origin (counted as held without being logged); starting the stream again from the peer's version vector");
                snapshots = 0;
                continue 'stream;
            }
        }
    }
}

/// Maps a page of changes into the peer's names and sends them; a source transaction
/// the mapping cannot convert is withheld ([`withhold_txn`]) when `withhold` (a peer of
/// version 5), and ends the session otherwise.
async fn send_mapped(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    out: &mut Outbox,
    open: &mut Option<OpenTxn>,
    changes: Vec<Change>,
    withhold: bool,
) -> Result<(), SessionError> {
    let mut ready = Vec::with_capacity(changes.len());
    for change in changes {
        let txn = open.get_or_insert_with(|| OpenTxn::starting(&change));
        txn.rows.push(LinkRow {
            table: change.table.clone(),
            key: hex::encode(change.key.as_bytes()),
            key_text: change.key.to_string(),
        });
        txn.last_seq = change.seq;
        let ends = change.last_in_txn;
        if txn.failed.is_none() {
            match peer.config.tables.outgoing(change) {
                Ok(mapped) => {
                    ready.push(mapped);
                    txn.ready += 1;
                }
                Err(e) if withhold => {
                    // The part of the transaction not sent yet goes nowhere; what
                    // earlier pages sent, the peer drops when told.
                    ready.truncate(ready.len() - txn.ready);
                    txn.failed = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if ends
            && let Some(txn) = open.take()
            && let Some(error) = txn.failed
        {
            peer.counters.sent.add(ready.len() as u64);
            out.send(std::mem::take(&mut ready)).await?;
            withhold_txn(
                shared,
                peer,
                out,
                txn.origin,
                txn.first_seq,
                txn.last_seq,
                txn.rows,
                &error,
            )
            .await?;
        }
    }
    // A transaction continuing on the next page starts its count again: what this
    // page holds of it is sent now.
    if let Some(txn) = open.as_mut() {
        txn.ready = 0;
    }
    peer.counters.sent.add(ready.len() as u64);
    out.send(ready).await
}

/// The source transaction the sender is in the middle of, on a link with a mapping.
struct OpenTxn {
    origin: concord_core::NodeId,
    first_seq: u64,
    last_seq: u64,
    /// Its rows so far, in case it is withheld.
    rows: Vec<LinkRow>,
    /// How many of its changes wait in the current page's batch.
    ready: usize,
    /// Why it cannot be sent, once one of its changes failed to map.
    failed: Option<MappingError>,
}

impl OpenTxn {
    fn starting(change: &Change) -> Self {
        Self {
            origin: change.origin,
            first_seq: change.seq,
            last_seq: change.seq,
            rows: Vec::new(),
            ready: 0,
            failed: None,
        }
    }
}

/// Records a source transaction the mapping cannot convert as an outgoing failure, then
/// tells the peer its sequence numbers are withheld ([`Message::Withheld`]).
#[allow(clippy::too_many_arguments)]
async fn withhold_txn(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    out: &mut Outbox,
    origin: concord_core::NodeId,
    first_seq: u64,
    last_seq: u64,
    mut rows: Vec<LinkRow>,
    error: &MappingError,
) -> Result<(), SessionError> {
    let reason = words::chain(error);
    let mut seen = std::collections::HashSet::new();
    rows.retain(|r| seen.insert((r.table.clone(), r.key.clone())));
    tracing::warn!(peer = %peer.config.name, origin = %origin.short(), first_seq, last_seq, error = %reason, "withholding a source transaction the link's mapping cannot convert");
    let entry = LinkFailure {
        direction: Direction::Outgoing,
        peer: peer.config.name.clone(),
        origin: origin.to_string(),
        first_seq,
        last_seq,
        rows,
        reason: format!("outgoing to peer {}: {reason}", peer.config.name),
        at_ms: wall_ms(),
        retry: false,
    };
    let s = shared.clone();
    // Recorded before the peer is told: never withheld silently.
    blocking(move || s.link_failures.record(entry)).await??;
    peer.counters.set_aside.add(last_seq - first_seq + 1);
    out.send_withheld(origin, first_seq, last_seq, reason).await
}

/// Sends the current state of the rows of every outgoing failure to this peer marked
/// for retry (`concord failures retry`), as snapshot row states (sequence 0, merged as
/// a join); an entry whose rows all mapped is forgotten once the peer acknowledged
/// them, one that still fails keeps the new reason.
async fn resend_withheld(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    out: &mut Outbox,
) -> Result<(), SessionError> {
    let s = shared.clone();
    let entries = blocking(move || s.link_failures.load()).await??;
    let chosen: Vec<LinkFailure> = entries
        .into_iter()
        .filter(|e| e.direction == Direction::Outgoing && e.retry && e.peer == peer.config.name)
        .collect();
    if chosen.is_empty() {
        return Ok(());
    }
    let store = shared.store.clone();
    let mut snapshot = blocking(move || {
        let mut store = lock(&store);
        store.capture()?;
        store.snapshot()
    })
    .await??;
    let mut outcomes = Vec::new();
    for entry in chosen {
        let mut by_table: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
        for row in &entry.rows {
            if let Ok(key) = hex::decode(&row.key) {
                by_table.entry(row.table.clone()).or_default().push(key);
            }
        }
        let (s, states) = blocking(move || {
            let mut states = Vec::new();
            for (table, keys) in by_table {
                match snapshot.rows_by_key(&table, &keys) {
                    Ok(rows) => states.extend(rows),
                    Err(e) => return (snapshot, Err(e)),
                }
            }
            (snapshot, Ok(states))
        })
        .await?;
        snapshot = s;
        // A row that cannot be read (its table no longer tracked, say) keeps the entry
        // listed with the reason; it does not fail the session.
        let mapped = states.map_err(|e| words::chain(&e)).and_then(|states| {
            states
                .into_iter()
                .map(|c| peer.config.tables.outgoing(c))
                .collect::<Result<Vec<Change>, MappingError>>()
                .map_err(|e| words::chain(&e))
        });
        match mapped {
            Ok(rows) => {
                peer.counters.snapshot_rows_sent.add(rows.len() as u64);
                tracing::info!(peer = %peer.config.name, origin = %entry.origin, first_seq = entry.first_seq, rows = rows.len(), "sending again the rows of a withheld transaction");
                out.send(rows).await?;
                outcomes.push((entry, None));
            }
            Err(reason) => {
                tracing::warn!(peer = %peer.config.name, origin = %entry.origin, first_seq = entry.first_seq, error = %reason, "the rows of a withheld transaction still cannot be sent");
                outcomes.push((entry, Some(reason)));
            }
        }
    }
    blocking(move || snapshot.finish()).await??;
    // Forgotten only once the peer has merged them: a session lost before keeps the
    // entries marked, and the next one sends them again (merging twice changes nothing).
    out.acknowledged().await;
    let s = shared.clone();
    let name = peer.config.name.clone();
    blocking(move || {
        s.link_failures.update(|entries| {
            for (done, still) in outcomes {
                let Some(i) = entries.iter().position(|e| {
                    e.direction == done.direction
                        && e.peer == done.peer
                        && e.origin == done.origin
                        && e.first_seq == done.first_seq
                }) else {
                    continue;
                };
                match still {
                    None => {
                        entries.remove(i);
                    }
                    Some(reason) => {
                        entries[i].retry = false;
                        entries[i].reason = format!("outgoing to peer {name}: {reason}");
                        entries[i].at_ms = wall_ms();
                    }
                }
            }
            (true, ())
        })
    })
    .await??;
    Ok(())
}

/// Sends every tracked row's state, read in one consistent snapshot, then
/// `SnapshotEnd`; returns the version vector the snapshot reflects, which the peer
/// holds once it has merged it.
async fn send_snapshot(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    out: &mut Outbox,
) -> Result<VersionVector, SessionError> {
    let store = shared.store.clone();
    let mut snapshot = blocking(move || {
        let mut store = lock(&store);
        // Rows' clocks must describe their values: capture what is pending first.
        store.capture()?;
        store.snapshot()
    })
    .await??;
    let limit = shared.config.sync.batch_changes;
    loop {
        let (s, rows) = blocking(move || {
            let rows = snapshot.next_rows(limit);
            (snapshot, rows)
        })
        .await?;
        snapshot = s;
        let rows = rows?;
        if rows.is_empty() {
            break;
        }
        peer.counters.snapshot_rows_sent.add(rows.len() as u64);
        send_states(shared, peer, out, rows).await?;
    }
    let held = snapshot.held().clone();
    out.send_snapshot_end(held.clone()).await?;
    tracing::info!(peer = %peer.config.name, rows = peer.counters.snapshot_rows_sent.get(), "snapshot sent");
    Ok(held)
}

/// Reconciles every tracked table with the peer by row clocks and sends the states of
/// the rows that differ and this node holds, all read in one consistent snapshot, then
/// `SnapshotEnd`; returns the version vector the snapshot reflects. Rows the peer holds
/// and this node lacks are the peer's to send.
async fn send_differences(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    link: &Link,
    out: &mut Outbox,
) -> Result<VersionVector, SessionError> {
    let store = shared.store.clone();
    let snapshot = blocking(move || {
        let mut store = lock(&store);
        // Rows' clocks must describe their values: capture what is pending first.
        store.capture()?;
        store.snapshot()
    })
    .await??;
    let tables = snapshot.table_names();
    let held = snapshot.held().clone();
    let mut slot = Some(snapshot);
    let page = shared.config.sync.batch_changes.max(1);
    let (mut messages, mut bytes, mut rows) = (0, 0, 0);
    for table in tables {
        let wire = peer
            .config
            .tables
            .by_local(&table)
            .map_or_else(|| table.clone(), |t| t.remote.clone());
        let outcome = link
            .table(
                &mut slot,
                &table,
                &wire,
                concord_core::reconcile::Compare::Clocks,
            )
            .await?;
        messages += outcome.messages;
        bytes += outcome.bytes;
        if outcome.peer_empty {
            // The peer holds none of this table (a new node): every row goes.
            let mut after = Vec::new();
            loop {
                let (states, next) = table_rows(&mut slot, &table, after, page).await?;
                rows += states.len();
                peer.counters.snapshot_rows_sent.add(states.len() as u64);
                if !states.is_empty() {
                    send_states(shared, peer, out, states).await?;
                }
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            continue;
        }
        let keys: Vec<Vec<u8>> = outcome
            .differences
            .into_iter()
            .filter(|d| d.here.is_some())
            .map(|d| d.key)
            .collect();
        for keys in keys.chunks(page) {
            let states = rows_by_key(&mut slot, &table, keys.to_vec()).await?;
            rows += states.len();
            peer.counters.snapshot_rows_sent.add(states.len() as u64);
            if !states.is_empty() {
                send_states(shared, peer, out, states).await?;
            }
        }
    }
    if let Some(mut snapshot) = slot.take() {
        blocking(move || snapshot.finish()).await??;
    }
    peer.counters.reconcile_bytes.add(bytes as u64);
    out.send_snapshot_end(held.clone()).await?;
    tracing::info!(peer = %peer.config.name, rows, messages, bytes, "rows that differ sent");
    Ok(held)
}

/// Numbers batches, cuts them to the peer's frame size (in pieces when a change is too
/// large for one), and keeps at most `window` of them unacknowledged.
struct Outbox {
    tx: mpsc::Sender<Frame>,
    flow: Arc<Flow>,
    window: u64,
    /// The last batch number used.
    batch: u64,
    max_frame: u32,
    budget: usize,
    pieces: bool,
    /// Whether the peer takes deletes that list their seen columns (protocol 5).
    delete_columns: bool,
    /// Whether the peer takes `Withheld` (protocol version 5).
    withhold: bool,
}

impl Outbox {
    /// Waits until the window has room for one more batch, and numbers it.
    async fn next_batch(&mut self) -> u64 {
        while self
            .batch
            .saturating_sub(self.flow.acked.load(Ordering::Acquire))
            >= self.window
        {
            let notified = self.flow.ack.notified();
            if self
                .batch
                .saturating_sub(self.flow.acked.load(Ordering::Acquire))
                < self.window
            {
                break;
            }
            notified.await;
        }
        self.batch += 1;
        self.flow.sent.store(self.batch, Ordering::Release);
        self.batch
    }

    async fn frame(&self, message: Message) -> Result<(), SessionError> {
        self.tx
            .send(Frame::V1(message))
            .await
            .map_err(|_| SessionError::Closed)
    }

    async fn send(&mut self, mut changes: Vec<Change>) -> Result<(), SessionError> {
        if !self.delete_columns {
            for change in changes.iter_mut().filter(|c| c.is_delete()) {
                change.columns.clear();
            }
        }
        for changes in split_by_size(changes, self.budget, self.pieces)? {
            let batch = ChangeBatch {
                batch: self.next_batch().await,
                changes,
            };
            if batch.changes.iter().map(encoded_size).sum::<usize>() > self.budget {
                // One change too large for a frame: encode it once, drop the decoded
                // copy, and send the encoding a piece at a time.
                let in_pieces = BatchInPieces::new(&batch, self.max_frame)?;
                drop(batch);
                for piece in in_pieces.pieces() {
                    self.frame(Message::Piece(piece)).await?;
                }
            } else {
                self.frame(Message::Changes(batch)).await?;
            }
        }
        Ok(())
    }

    /// Waits until the peer acknowledged every batch sent so far.
    async fn acknowledged(&self) {
        loop {
            let notified = self.flow.ack.notified();
            if self.flow.acked.load(Ordering::Acquire) >= self.batch {
                return;
            }
            notified.await;
        }
    }

    async fn send_withheld(
        &mut self,
        origin: concord_core::NodeId,
        first_seq: u64,
        last_seq: u64,
        reason: String,
    ) -> Result<(), SessionError> {
        let batch = self.next_batch().await;
        self.frame(Message::Withheld(Withheld {
            batch,
            origin,
            first_seq,
            last_seq,
            reason,
        }))
        .await
    }

    async fn send_snapshot_end(&mut self, holds: VersionVector) -> Result<(), SessionError> {
        let batch = self.next_batch().await;
        self.frame(Message::SnapshotEnd(SnapshotEnd { batch, holds }))
            .await
    }
}

/// Sends rows' states (sequence 0, from a snapshot or a reconciliation) in the peer's
/// names. To a peer of protocol version 5 a row the mapping cannot convert is left out
/// and recorded as an outgoing failure (a row's state holds no sequence number, so
/// there is nothing to tell the peer), and the rest go; to an older peer it ends the
/// session with the error.
async fn send_states(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    out: &mut Outbox,
    states: Vec<Change>,
) -> Result<(), SessionError> {
    if peer.config.tables.is_empty() {
        return out.send(states).await;
    }
    let mut mapped = Vec::with_capacity(states.len());
    let mut refused = Vec::new();
    let name = &peer.config.name;
    for state in states {
        let row = LinkRow {
            table: state.table.clone(),
            key: hex::encode(state.key.as_bytes()),
            key_text: state.key.to_string(),
        };
        let origin = state.origin;
        match peer.config.tables.outgoing(state) {
            Ok(state) => mapped.push(state),
            Err(e) if out.withhold => {
                let reason = words::chain(&e);
                tracing::warn!(peer = %name, table = %row.table, key = %row.key_text, error = %reason, "leaving out a row's state the link's mapping cannot convert");
                refused.push(LinkFailure {
                    direction: Direction::Outgoing,
                    peer: name.clone(),
                    origin: origin.to_string(),
                    first_seq: 0,
                    last_seq: 0,
                    rows: vec![row],
                    reason: format!("outgoing to peer {name}: {reason}"),
                    at_ms: wall_ms(),
                    retry: false,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !refused.is_empty() {
        peer.counters.set_aside.add(refused.len() as u64);
        let s = shared.clone();
        blocking(move || s.link_failures.record_all(refused)).await??;
    }
    out.send(mapped).await
}

/// Cuts changes into batches whose encoding fits `budget` bytes. A change larger than
/// that goes alone in its batch, sent in pieces, when the peer takes pieces.
fn split_by_size(
    changes: Vec<Change>,
    budget: usize,
    pieces: bool,
) -> Result<Vec<Vec<Change>>, SessionError> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for change in changes {
        let n = encoded_size(&change);
        if n > budget && pieces {
            if !current.is_empty() {
                batches.push(std::mem::take(&mut current));
                size = 0;
            }
            batches.push(vec![change]);
            continue;
        }
        if n > budget {
            return Err(SessionError::Unexpected(format!(
                "change {}/{} to table {:?} encodes to {n} bytes, more than a frame may hold ({budget}), \
                 and the peer speaks only protocol version 1, which cannot carry it in pieces",
                change.origin.short(),
                change.seq,
                change.table
            )));
        }
        if size + n > budget && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += n;
        current.push(change);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    Ok(batches)
}

/// Applies incoming batches and answers acknowledgements and pings.
async fn receive_loop<R>(
    source: &mut R,
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    tx: mpsc::Sender<Frame>,
    flow: Arc<Flow>,
    link: Arc<Link>,
    stall: Duration,
) -> Result<(), SessionError>
where
    R: futures::Stream<Item = Result<Frame, WireError>> + Unpin,
{
    let mut answerer = Answerer::default();
    let mut expected = 1u64;
    let mut pieces = Reassembler::new(DEFAULT_MAX_BATCH_BYTES);
    let mut open_group: Vec<Change> = Vec::new();
    let mut big: Option<LargeTransaction> = None;
    // Row states the peer sends after reconciling, held until its `SnapshotEnd` and
    // merged then in one store transaction: merged batch by batch, they would show a
    // mix of two versions of the data that neither side ever held (one writer's later
    // transaction on one row, its earlier ones missing on the others). Beyond
    // `BUFFERED_TRANSACTION_LIMIT` rows they are merged as they come (memory stays
    // bounded); the state is whole again at `SnapshotEnd`.
    let mut reconciled: Option<Vec<Change>> = None;
    let mut last_holds = VersionVector::new();
    loop {
        let frame = match tokio::time::timeout(stall, source.next()).await {
            Err(_) => return Err(SessionError::Silent(stall)),
            Ok(None) => return Err(SessionError::Closed),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(Frame::V1(message)))) => message,
        };
        peer.seen();
        let frame = match frame {
            Message::Piece(piece) => match pieces.push(piece)? {
                Some(batch) => Message::Changes(batch),
                None => continue,
            },
            Message::Changes(batch) if pieces.in_progress() => {
                return Err(SessionError::Unexpected(format!(
                    "batch {} while a batch in pieces was incomplete",
                    batch.batch
                )));
            }
            Message::Withheld(w) if pieces.in_progress() => {
                return Err(SessionError::Unexpected(format!(
                    "withheld range {} while a batch in pieces was incomplete",
                    w.batch
                )));
            }
            other => other,
        };
        match frame {
            Message::Changes(batch) => {
                next_in_order(&mut expected, batch.batch, "batch")?;
                let rows = batch.changes.iter().filter(|c| c.seq == 0).count() as u64;
                peer.counters.snapshot_rows_received.add(rows);
                peer.counters
                    .received
                    .add(batch.changes.len() as u64 - rows);
                peer.learn_held(&batch.changes);
                let mut changes = batch.changes;
                if let Some(rows) = reconciled.as_mut() {
                    let states = changes.iter().take_while(|c| c.seq == 0).count();
                    rows.extend(changes.drain(..states));
                    // Anything else than a row state, or too many of them: merge what
                    // is held first, in order.
                    if !changes.is_empty() || rows.len() >= BUFFERED_TRANSACTION_LIMIT {
                        let rows = std::mem::take(rows);
                        let report = apply(&shared, &peer, rows).await?;
                        account(&shared, &peer, &report);
                    }
                }
                if let Some(mut open) = big.take() {
                    // Everything up to the first transaction end belongs to the large
                    // transaction being streamed into the store.
                    match changes.iter().position(|c| c.last_in_txn) {
                        None => {
                            open.send(std::mem::take(&mut changes)).await?;
                            big = Some(open);
                        }
                        Some(end) => {
                            let rest = changes.split_off(end + 1);
                            open.send(changes).await?;
                            let report = open.finish().await?;
                            account(&shared, &peer, &report);
                            changes = rest;
                        }
                    }
                }
                open_group.extend(changes);
                let complete = open_group
                    .iter()
                    .rposition(|c| c.last_in_txn)
                    .map_or(0, |i| i + 1);
                if complete > 0 {
                    let ready: Vec<Change> = open_group.drain(..complete).collect();
                    let report = apply(&shared, &peer, ready).await?;
                    account(&shared, &peer, &report);
                }
                if open_group.len() >= BUFFERED_TRANSACTION_LIMIT {
                    // A source transaction too large to hold in memory: stream it into one
                    // store transaction instead, as its batches arrive.
                    let first = open_group
                        .first()
                        .map_or((shared.node_id, 0), |c| (c.origin, c.seq));
                    let mut open = LargeTransaction::begin(
                        shared.store.clone(),
                        peer.config.tables.clone(),
                        stall,
                        first,
                    );
                    open.send(std::mem::take(&mut open_group)).await?;
                    big = Some(open);
                }
                // While a large transaction holds the store, acknowledge with what was
                // held before it; the window only needs the batch number.
                if big.is_none() {
                    last_holds = store_holds(&shared).await?;
                }
                acknowledge(&tx, batch.batch, &last_holds).await?;
            }
            Message::SnapshotEnd(end) => {
                next_in_order(&mut expected, end.batch, "snapshot end")?;
                if !open_group.is_empty() || big.is_some() {
                    return Err(SessionError::Unexpected(
                        "snapshot end inside an incomplete source transaction".into(),
                    ));
                }
                // The reconciliation that preceded it is over.
                answerer = Answerer::default();
                if let Some(rows) = reconciled.take().filter(|rows| !rows.is_empty()) {
                    let report = apply(&shared, &peer, rows).await?;
                    account(&shared, &peer, &report);
                }
                peer.learn_holds(&end.holds);
                let report = adopt_snapshot(&shared, end.holds).await?;
                account(&shared, &peer, &report);
                shared.log_changed.send_modify(|v| *v += 1);
                tracing::info!(peer = %peer.config.name, rows = peer.counters.snapshot_rows_received.get(), "snapshot merged");
                last_holds = store_holds(&shared).await?;
                acknowledge(&tx, end.batch, &last_holds).await?;
            }
            Message::Withheld(w) => {
                next_in_order(&mut expected, w.batch, "withheld range")?;
                let held = store_holds(&shared).await?.get(&w.origin);
                let open_first = big
                    .as_ref()
                    .map(|b| b.first)
                    .or_else(|| open_group.first().map(|c| (c.origin, c.seq)));
                match check_withheld(&w, shared.node_id, held, open_first)? {
                    WithheldRange::Held => {}
                    WithheldRange::New => {
                        // The incomplete transaction it covers is dropped, never applied:
                        // a large one streaming into the store rolls back.
                        open_group.clear();
                        big = None;
                        withheld(&shared, &peer, &w).await?;
                    }
                }
                last_holds = store_holds(&shared).await?;
                peer.learn_holds(&single(w.origin, w.last_seq));
                acknowledge(&tx, w.batch, &last_holds).await?;
            }
            Message::Ack(ack) => {
                if ack.batch > flow.sent.load(Ordering::Acquire) {
                    return Err(SessionError::Unexpected(format!(
                        "acknowledgement for batch {} never sent",
                        ack.batch
                    )));
                }
                flow.acked.fetch_max(ack.batch, Ordering::AcqRel);
                flow.ack.notify_waiters();
                peer.acknowledged(&ack.holds);
            }
            Message::Ping(n) => {
                if tx.send(Frame::V1(Message::Pong(n))).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            Message::Reconcile(step) => {
                // The rows that differ follow, then `SnapshotEnd`: hold them until then.
                reconciled.get_or_insert_with(Vec::new);
                let answer = answerer.answer(&shared, &peer.config.tables, step).await?;
                if tx
                    .send(Frame::V1(Message::ReconcileAnswer(answer)))
                    .await
                    .is_err()
                {
                    return Err(SessionError::Closed);
                }
            }
            Message::ReconcileAnswer(answer) => link.answered(answer).await?,
            Message::Pong(_) | Message::Piece(_) => {}
            Message::Hello(_) => return Err(SessionError::Unexpected("a second Hello".into())),
            Message::Error(e) => {
                return Err(SessionError::Peer {
                    code: e.code,
                    message: e.message,
                });
            }
        }
    }
}

/// What a [`Withheld`] range is to this node.
#[derive(Debug, PartialEq)]
enum WithheldRange {
    /// Already held whole (received from another peer meanwhile): nothing to do.
    Held,
    /// The next changes from its origin: record it and count it as held.
    New,
}

/// Checks a [`Withheld`] range before any of it is used: it must not name this node as
/// origin, must not go backwards, and must start exactly where this node's changes
/// from the origin end: at the first change of the incomplete transaction it is
/// receiving (`open`, which the range then covers), or one past what it holds.
fn check_withheld(
    w: &Withheld,
    own: concord_core::NodeId,
    held: u64,
    open: Option<(concord_core::NodeId, u64)>,
) -> Result<WithheldRange, SessionError> {
    let range = format!(
        "withheld range {}..={} of origin {}",
        w.first_seq,
        w.last_seq,
        w.origin.short()
    );
    if w.origin == own {
        return Err(SessionError::Unexpected(format!(
            "{range} names this node as its origin"
        )));
    }
    if w.first_seq == 0 || w.first_seq > w.last_seq {
        return Err(SessionError::Unexpected(format!("{range} goes backwards")));
    }
    match open {
        Some((origin, first)) if origin == w.origin && first == w.first_seq => {
            Ok(WithheldRange::New)
        }
        Some((origin, first)) => Err(SessionError::Unexpected(format!(
            "{range} arrived inside the incomplete transaction of origin {} from {first}",
            origin.short()
        ))),
        None if w.last_seq <= held => Ok(WithheldRange::Held),
        None if w.first_seq == held + 1 => Ok(WithheldRange::New),
        None if w.first_seq > held + 1 => Err(SessionError::Unexpected(format!(
            "{range} skips past changes never sent (this node holds up to {held})"
        ))),
        None => Err(SessionError::Unexpected(format!(
            "{range} overlaps what this node holds (up to {held})"
        ))),
    }
}

/// Records a range the peer withheld as a failure of this link, then counts it as held
/// (and drops the log's entries of its origin up to it, so a third node needing them
/// from here takes a snapshot instead of receiving a history with a hole in it).
async fn withheld(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    w: &Withheld,
) -> Result<(), SessionError> {
    tracing::warn!(peer = %peer.config.name, origin = %w.origin.short(), first_seq = w.first_seq, last_seq = w.last_seq, reason = %w.reason, "the peer withheld a source transaction its mapping cannot convert");
    let entry = LinkFailure {
        direction: Direction::Withheld,
        peer: peer.config.name.clone(),
        origin: w.origin.to_string(),
        first_seq: w.first_seq,
        last_seq: w.last_seq,
        rows: Vec::new(),
        reason: format!("withheld by peer {}: {}", peer.config.name, w.reason),
        at_ms: wall_ms(),
        retry: false,
    };
    let s = shared.clone();
    // Recorded before the vector moves past it: never lost silently.
    blocking(move || s.link_failures.record(entry)).await??;
    let holds = single(w.origin, w.last_seq);
    let report = adopt_snapshot(shared, holds).await?;
    account(shared, peer, &report);
    peer.counters.set_aside.add(w.last_seq - w.first_seq + 1);
    shared.log_changed.send_modify(|v| *v += 1);
    Ok(())
}

/// A version vector holding `seq` of `origin` alone.
fn single(origin: concord_core::NodeId, seq: u64) -> VersionVector {
    let mut holds = VersionVector::new();
    holds.set(origin, seq);
    holds
}

/// Changes of one incomplete source transaction held in memory before it is streamed
/// into the store instead.
const BUFFERED_TRANSACTION_LIMIT: usize = 20_000;

/// Checks that numbered message `batch` (a batch, a snapshot end, a withheld range) is
/// the one expected next, and moves on to the next number.
fn next_in_order(expected: &mut u64, batch: u64, what: &str) -> Result<(), SessionError> {
    if batch != *expected {
        return Err(SessionError::Unexpected(format!(
            "{what} {batch} out of order or replayed (expected {expected})"
        )));
    }
    *expected += 1;
    Ok(())
}

/// Acknowledges numbered message `batch`, saying what this node holds.
async fn acknowledge(
    tx: &mpsc::Sender<Frame>,
    batch: u64,
    holds: &VersionVector,
) -> Result<(), SessionError> {
    let ack = Frame::V1(Message::Ack(Ack {
        batch,
        holds: holds.clone(),
    }));
    tx.send(ack).await.map_err(|_| SessionError::Closed)
}

fn account(shared: &Shared, peer: &Peer, report: &ApplyReport) {
    peer.counters.applied.add(report.applied);
    peer.counters.set_aside.add(report.set_aside);
    peer.counters.conflicts.add(report.conflicts);
    shared.counters.conflicts.add(report.conflicts);
    shared.counters.captured.add(report.captured);
    // Local writes an apply captured first are new log entries too: without this, a
    // batch of duplicates that captured the node's last writes woke no sender, and
    // those writes waited for some later change (seen as a mesh that never converged).
    if report.applied + report.set_aside + report.captured > 0 {
        shared.log_changed.send_modify(|v| *v += 1);
    }
}

/// A source transaction streamed into one store transaction on a dedicated thread,
/// which holds the store until the transaction's last change arrives. If the session
/// ends first, the thread's channel closes and the store transaction rolls back: a
/// source transaction is applied whole or not at all. Unlike smaller transactions, one
/// this large that cannot be applied is not set aside (its changes are not kept in
/// memory); the session fails with the error and the failure shows in status.
struct LargeTransaction {
    /// The origin and sequence of its first change.
    first: (concord_core::NodeId, u64),
    chunks: mpsc::Sender<Vec<Change>>,
    done: tokio::sync::oneshot::Receiver<Result<ApplyReport, SessionError>>,
}

impl LargeTransaction {
    fn begin(
        store: Arc<std::sync::Mutex<Box<dyn Store>>>,
        mapping: LinkMapping,
        stall: Duration,
        first: (concord_core::NodeId, u64),
    ) -> Self {
        // Bounded: while the store is busy with queued chunks, the receive loop waits,
        // acknowledgements wait, and the sender's window throttles the peer, so memory
        // stays bounded however large the transaction.
        let (chunks, mut incoming) = mpsc::channel::<Vec<Change>>(2);
        let (finished, done) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let result = (|| {
                let mut store = lock(&store);
                let mut session = store.begin_apply()?;
                // Never hold the store longer than the stall timeout waiting for the
                // peer: an idle peer inside a huge transaction must not freeze the node.
                loop {
                    // The timer must be created inside the runtime's context.
                    let next = runtime
                        .block_on(async { tokio::time::timeout(stall, incoming.recv()).await });
                    let chunk = match next {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => return Err(SessionError::Closed),
                        Err(_) => return Err(SessionError::Silent(stall)),
                    };
                    let ends = chunk.last().is_some_and(|c| c.last_in_txn);
                    let chunk: Vec<Change> = if mapping.is_empty() {
                        chunk
                    } else {
                        chunk
                            .into_iter()
                            .map(|c| mapping.incoming(c))
                            .collect::<Result<_, _>>()?
                    };
                    // The chunk's row clocks in one query per table, as a whole
                    // transaction's are: one query per change made a million-row
                    // transaction a million round trips.
                    session.prefetch(&chunk)?;
                    for change in &chunk {
                        session.apply(change)?;
                    }
                    if ends {
                        return Ok(session.commit()?);
                    }
                }
            })();
            let _ = finished.send(result);
        });
        Self {
            first,
            chunks,
            done,
        }
    }

    /// Hands a chunk to the thread; if it already failed, returns its error.
    async fn send(&mut self, chunk: Vec<Change>) -> Result<(), SessionError> {
        if self.chunks.send(chunk).await.is_err() {
            // The writer stopped early: report why.
            return Err(match (&mut self.done).await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => SessionError::Internal("the large transaction ended early".into()),
                Err(e) => SessionError::Internal(e.to_string()),
            });
        }
        Ok(())
    }

    async fn finish(self) -> Result<ApplyReport, SessionError> {
        drop(self.chunks);
        self.done
            .await
            .map_err(|e| SessionError::Internal(e.to_string()))?
    }
}

/// Applies whole source transactions, mapped into this node's schema, with the
/// set-aside policy every caller shares ([`concord_store::apply_setting_aside`]).
async fn apply(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    changes: Vec<Change>,
) -> Result<ApplyReport, SessionError> {
    let store = shared.store.clone();
    let peer = peer.clone();
    blocking(move || {
        let mapping = &peer.config.tables;
        let mut store = lock(&store);
        let map = |changes: &[Change]| incoming(mapping, changes).map_err(|e| words::chain(&e));
        let prepare: Option<concord_store::Prepare<'_>> =
            (!mapping.is_empty()).then_some(&map as concord_store::Prepare<'_>);
        if peer.config.propagate_schema {
            crate::propagate::add_columns(&mut **store, &peer, &changes, prepare);
        }
        concord_store::apply_setting_aside(&mut **store, &changes, prepare)
            .map_err(SessionError::Apply)
    })
    .await?
}

/// Records, after every row of a snapshot was merged, that this node holds what the
/// snapshot reflects.
async fn adopt_snapshot(
    shared: &Arc<Shared>,
    holds: VersionVector,
) -> Result<ApplyReport, SessionError> {
    let store = shared.store.clone();
    blocking(move || {
        let mut store = lock(&store);
        let mut txn = store.begin_apply()?;
        txn.adopt_held(&holds)?;
        Ok(txn.commit()?)
    })
    .await?
}

/// Maps received changes into this node's schema.
fn incoming(mapping: &LinkMapping, changes: &[Change]) -> Result<Vec<Change>, MappingError> {
    changes
        .iter()
        .map(|c| mapping.incoming(c.clone()))
        .collect()
}
