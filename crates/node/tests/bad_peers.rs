//! A rogue peer against a real node: the rogue's identity IS configured (pinned) at the
//! node, so mutual TLS succeeds, but it then speaks raw bytes: it reads the node's
//! `Hello`, then misbehaves. Meanwhile a second, well-behaved node stays connected to the
//! node throughout.
//!
//! Risks covered, for each misbehaviour (an oversized frame, a garbage frame, an unknown
//! message type, no protocol version in common, a frame of an unknown protocol version,
//! a stream cut inside a frame, a replayed batch, a batch ending inside a transaction
//! followed by a disconnect, a peer that stops reading, a peer idling inside a
//! transaction too large to buffer, reconciliation ranges that lie about the key space,
//! an answer to a reconciliation never started, a `Withheld` range that goes backwards,
//! skips changes never sent, names the node itself or cuts into another transaction;
//! a valid one over a transaction partly received, buffered or streaming into the store)
//! and for an unconfigured identity:
//! * the node does not close the session, or closes it without telling why (the rogue
//!   must see the node's `Error` frame, or the end of the stream where no frame can get
//!   through);
//! * the node's status does not name the problem in the peer's `last_error` (or, for an
//!   unknown identity, in `refused`), or keeps the peer marked as connected;
//! * anything of the bad session is applied to the node's SQLite file: a change of a
//!   refused frame, half a transaction, a batch twice;
//! * a node task panics;
//! * the attack disturbs the other peer: its session ends, or its writes stop arriving.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use concord_sqlite::Store as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    DDL, Member, TIMEOUT, app, assert_no_panics, holds, insert_rows, log_counts, peer, rows,
    wait_for_rows, wait_until,
};
use concord_core::{Change, NodeId, VersionVector};
use concord_node::link_failures::{Direction, LinkFailures};
use concord_node::{Fingerprint, Identity, Node, NodeConfig, PeerConfig, PeerStatus};
use concord_sqlite::{SqliteStore, StoreOptions};
use concord_wire::{
    Ack, ChangeBatch, DEFAULT_MAX_FRAME, ErrorCode, ErrorMessage, Frame, FrameCodec, Hello,
    Message, PROTOCOL_VERSION, Withheld,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The node's frame limit in these tests.
const MAX_FRAME: u32 = 64 * 1024;

/// A tracked SQLite file the rogue "is": its changes carry this file's origin.
struct Source {
    db: PathBuf,
    store: SqliteStore,
}

impl Source {
    fn new(root: &std::path::Path) -> Self {
        let db = root.join("rogue-source.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(DDL)
            .unwrap();
        let store = SqliteStore::track(&db, &["t"], StoreOptions::default()).unwrap();
        Self { db, store }
    }

    /// Inserts `ids` in one source transaction and captures it.
    fn transaction(&mut self, ids: std::ops::Range<i64>) {
        insert_rows(&self.db, ids, "rogue ");
        self.store.capture().unwrap();
    }

    /// Every change in the source's log, in order, read as a syncing node reads it.
    fn changes(&self) -> Vec<Change> {
        self.store
            .changes_for(&VersionVector::new())
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn origin(&self) -> NodeId {
        self.store.node_id()
    }
}

fn changes_frame(batch: u64, changes: Vec<Change>) -> Vec<u8> {
    FrameCodec::encode_to_vec(&Frame::V1(Message::Changes(ChangeBatch { batch, changes }))).unwrap()
}

/// One read by the rogue.
#[derive(Debug)]
enum Read {
    Frame(Frame),
    /// The stream ended (with or without TLS close_notify).
    Eof(String),
    /// The connection failed otherwise (reset, TLS alert).
    Failed(String),
}

/// A configured peer that speaks raw bytes.
struct Rogue<S> {
    stream: S,
    local: SocketAddr,
}

/// Connects with `identity` to the node at `addr`, which must present `expected`.
async fn dial(
    identity: &Identity,
    expected: Fingerprint,
    addr: SocketAddr,
) -> (SocketAddr, std::io::Result<TlsStream<TcpStream>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let connector =
        TlsConnector::from(concord_node::tls::client_config(identity, expected).unwrap());
    let name = rustls::pki_types::ServerName::try_from("node.concord.invalid").unwrap();
    let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("timed out waiting for the TLS handshake");
    (local, tls)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Rogue<S> {
    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    async fn send(&mut self, message: Message) {
        self.send_raw(&FrameCodec::encode_to_vec(&Frame::V1(message)).unwrap())
            .await;
    }

    /// Reads one frame: a 4-byte big-endian length, then a postcard body.
    async fn read(&mut self) -> Read {
        let read = async {
            let mut len = [0u8; 4];
            if let Err(e) = self.stream.read_exact(&mut len).await {
                return end(e);
            }
            let len = u32::from_be_bytes(len);
            assert!(
                len <= DEFAULT_MAX_FRAME,
                "the node sent a frame of {len} bytes"
            );
            let mut body = vec![0u8; len as usize];
            if let Err(e) = self.stream.read_exact(&mut body).await {
                return end(e);
            }
            Read::Frame(
                FrameCodec::decode_body(&body)
                    .unwrap_or_else(|e| panic!("the node sent a frame that does not decode: {e}")),
            )
        };
        tokio::time::timeout(TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                panic!("timed out after {TIMEOUT:?} waiting for the node to send or close")
            })
    }

    async fn message(&mut self) -> Message {
        match self.read().await {
            Read::Frame(Frame::V1(m)) => m,
            other => panic!("expected a frame from the node, got {other:?}"),
        }
    }

    /// Reads the node's Hello, which must come first.
    async fn their_hello(&mut self) -> Hello {
        match self.message().await {
            Message::Hello(h) => h,
            other => panic!("the node's first frame is not a Hello: {other:?}"),
        }
    }

    /// Reads the node's Hello and answers with a valid one claiming to be `node` and to
    /// hold what the node holds (so the node has nothing to send). Returns the node's.
    async fn handshake(&mut self, node: NodeId) -> Hello {
        let theirs = self.their_hello().await;
        self.send(Message::Hello(hello(node, theirs.holds.clone())))
            .await;
        theirs
    }

    /// Reads until the node acknowledges `batch`, skipping pings.
    async fn ack(&mut self, batch: u64) -> Ack {
        loop {
            match self.message().await {
                Message::Ack(ack) if ack.batch == batch => return ack,
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected the Ack of batch {batch}, got {other:?}"),
            }
        }
    }

    /// Reads until the node closes the connection: the frames seen and how it ended.
    async fn until_closed(&mut self) -> (Vec<Frame>, Read) {
        let mut frames = Vec::new();
        loop {
            match self.read().await {
                Read::Frame(f) => frames.push(f),
                end => return (frames, end),
            }
        }
    }

    /// Asserts the node closed the session after an `Error` frame of `code` whose
    /// message contains `needle`, and nothing after it.
    async fn expect_error_then_close(&mut self, code: ErrorCode, needle: &str) -> ErrorMessage {
        let (frames, end) = self.until_closed().await;
        let Some(Frame::V1(Message::Error(error))) = frames.last().cloned() else {
            panic!("the node closed the session without an Error frame: {frames:?}, then {end:?}");
        };
        assert_eq!(error.code, code, "{error:?}");
        assert!(
            error.message.contains(needle),
            "the node's Error does not mention {needle:?}: {error:?}"
        );
        assert!(matches!(end, Read::Eof(_)), "after the Error: {end:?}");
        error
    }
}

fn end(e: std::io::Error) -> Read {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Read::Eof(e.to_string())
    } else {
        Read::Failed(e.to_string())
    }
}

fn hello(node: NodeId, holds: VersionVector) -> Hello {
    Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        node,
        holds,
        max_frame: DEFAULT_MAX_FRAME,
        agent: "rogue/0".into(),
    }
}

/// The node under attack, its well-behaved peer (which dials it), and the rogue's
/// configured identity and source of changes.
struct Arena {
    _root: tempfile::TempDir,
    n: Member,
    node: Node,
    g: Member,
    good: Node,
    rogue: Identity,
    source: Source,
    /// The node's rows before the attack.
    rows_before: Vec<(i64, String)>,
    /// The node's log (entries and highest sequence per origin) before the attack.
    log_before: std::collections::BTreeMap<String, (u64, u64)>,
}

impl Arena {
    async fn new(tweak: impl FnOnce(&mut NodeConfig)) -> Self {
        Self::with(tweak, |_| {}).await
    }

    /// [`Arena::new`], also adjusting the good peer's configuration.
    async fn with(
        tweak: impl FnOnce(&mut NodeConfig),
        tweak_good: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let root = tempfile::tempdir().unwrap();
        let n = Member::new(root.path(), "node", DDL);
        let g = Member::new(root.path(), "good", DDL);
        let rogue = Identity::generate("rogue").unwrap();
        let mut config = n.config(vec![
            g.dialing_in(),
            PeerConfig {
                name: "rogue".into(),
                address: None,
                fingerprint: rogue.fingerprint(),
                tables: Default::default(),
                propagate_schema: false,
            },
        ]);
        config.sync.max_frame_bytes = MAX_FRAME;
        tweak(&mut config);
        let node = n.start_with(config).await;
        let mut good_config = g.config(vec![n.at(&node)]);
        tweak_good(&mut good_config);
        let good = g.start_with(good_config).await;
        insert_rows(n.db(), [1], "node ");
        insert_rows(g.db(), [2], "good ");
        let both = vec![(1, "node 1".to_owned()), (2, "good 2".to_owned())];
        wait_for_rows("the good peer's row at the node", n.db(), &both).await;
        wait_for_rows("the node's row at the good peer", g.db(), &both).await;
        let source = Source::new(root.path());
        Self {
            rows_before: rows(n.db()),
            log_before: log_counts(n.db()),
            _root: root,
            n,
            node,
            g,
            good,
            rogue,
            source,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.node.listen_addr().unwrap()
    }

    /// Connects as the configured rogue; TLS must succeed.
    async fn rogue(&self) -> Rogue<TlsStream<TcpStream>> {
        let (local, tls) = dial(&self.rogue, self.node.fingerprint(), self.addr()).await;
        Rogue {
            stream: tls.expect("the rogue's identity is configured, so TLS must succeed"),
            local,
        }
    }

    /// Waits until the node ended the rogue's session, released the peer (so it may
    /// reconnect) and shows why in its status; returns the peer's status.
    async fn session_failed(&self, needle: &str) -> PeerStatus {
        let what =
            format!("the node to end the rogue's session with an error mentioning {needle:?}");
        wait_until(&what, async || {
            let status = self.node.status().await;
            let p = peer(&status, "rogue");
            let named = p.last_error.as_deref().is_some_and(|e| e.contains(needle));
            if named && p.state == "waiting" {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        })
        .await;
        let status = self.node.status().await;
        let p = peer(&status, "rogue").clone();
        assert!(p.errors >= 1, "the failed session is counted: {p:?}");
        p
    }

    /// The node's rows before the attack and the source's rows `ids` (as
    /// [`Source::transaction`] writes them), in the order [`rows`] reads them.
    fn rows_before_and_rogue(&self, ids: impl IntoIterator<Item = i64>) -> Vec<(i64, String)> {
        let mut expected = self.rows_before.clone();
        expected.extend(ids.into_iter().map(|id| (id, format!("rogue {id}"))));
        expected.sort();
        expected
    }

    /// Waits until the node released the rogue after it hung up, so it may connect again.
    async fn rogue_released(&self) {
        wait_until("the node to release the rogue", async || {
            let status = self.node.status().await;
            let p = peer(&status, "rogue");
            if p.state == "waiting" {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        })
        .await;
    }

    /// Asserts the node's file is as before the attack: no rogue change in the table or
    /// the log, nothing held from the rogue's origin, nothing set aside.
    async fn nothing_applied(&self) {
        assert_eq!(
            rows(self.n.db()),
            self.rows_before,
            "the node's rows changed"
        );
        assert_eq!(
            log_counts(self.n.db()),
            self.log_before,
            "the node's log changed"
        );
        let status = self.node.status().await;
        assert!(
            !holds(&status).contains_key(&self.source.origin().to_string()),
            "the node holds changes of the rogue's origin: {:?}",
            status.holds
        );
        assert_eq!(status.failures, 0, "something was set aside");
    }

    /// The well-behaved peer stayed connected through the attack and still syncs both
    /// ways; then everything shuts down.
    async fn good_peer_unharmed_then_shutdown(self) {
        insert_rows(self.g.db(), [1_000], "good after the attack ");
        insert_rows(self.n.db(), [1_001], "node after the attack ");
        wait_until(
            "the good peer's write after the attack at the node",
            async || {
                let got = rows(self.n.db());
                if got.iter().any(|(id, _)| *id == 1_000) {
                    return Ok(());
                }
                let (at_node, at_good) = (self.node.status().await, self.good.status().await);
                Err(format!(
                    "{} rows at the node; the node's view of the good peer: {:?}; \
                     the good peer's view of the node: {:?}",
                    got.len(),
                    peer(&at_node, "good"),
                    peer(&at_good, "node")
                ))
            },
        )
        .await;
        let expected = rows(self.n.db());
        wait_for_rows(
            "the node's write after the attack at the good peer",
            self.g.db(),
            &expected,
        )
        .await;
        let status = self.node.status().await;
        let good = peer(&status, "good");
        assert_eq!(good.state, "connected", "{good:?}");
        assert_eq!(
            good.errors, 0,
            "the good peer's session was interrupted: {good:?}"
        );
        assert_no_panics();
        self.node.shutdown().await;
        self.good.shutdown().await;
    }
}

#[test]
fn an_oversized_frame_is_refused_from_its_length_and_closes_the_session() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..13);
        let real = changes_frame(1, arena.source.changes());
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        // A length of 1 MiB (the limit is 64 KiB), then the start of a real batch: the
        // node must refuse from the length alone, without waiting for the body.
        let mut bytes = (1u32 << 20).to_be_bytes().to_vec();
        bytes.extend_from_slice(&real[4..real.len().min(100)]);
        rogue.send_raw(&bytes).await;
        rogue
            .expect_error_then_close(ErrorCode::Malformed, "exceeds the limit")
            .await;
        arena
            .session_failed("frame of 1048576 bytes exceeds the limit of 65536 bytes")
            .await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_garbage_frame_body_is_reported_as_malformed_and_closes_the_session() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        // Version 1, message Changes, then a varint that never ends.
        let body = [
            0u8, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        rogue.send_raw(&bytes).await;
        rogue
            .expect_error_then_close(ErrorCode::Malformed, "malformed")
            .await;
        arena.session_failed("malformed frame").await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn an_unknown_message_type_is_reported_as_malformed_and_closes_the_session() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        // Protocol version 1 (variant 0), message variant 42.
        rogue.send_raw(&[0, 0, 0, 2, 0, 42]).await;
        rogue
            .expect_error_then_close(ErrorCode::Malformed, "malformed")
            .await;
        arena.session_failed("malformed frame").await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_hello_without_a_common_protocol_version_is_refused() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        let mut rogue = arena.rogue().await;
        let theirs = rogue.their_hello().await;
        assert_eq!(
            (theirs.min_version, theirs.max_version),
            (concord_wire::MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
        );
        let mut mine = hello(arena.source.origin(), theirs.holds);
        mine.min_version = 99;
        mine.max_version = 99;
        rogue.send(Message::Hello(mine)).await;
        rogue
            .expect_error_then_close(ErrorCode::UnsupportedVersion, "99..=99")
            .await;
        arena.session_failed("protocol versions 99..=99").await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_frame_of_an_unknown_protocol_version_is_refused() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        let mut rogue = arena.rogue().await;
        let theirs = rogue.their_hello().await;
        // A valid Hello, but in frame variant 1 (a protocol version 2 the node lacks).
        let mut bytes = FrameCodec::encode_to_vec(&Frame::V1(Message::Hello(hello(
            arena.source.origin(),
            theirs.holds,
        ))))
        .unwrap();
        assert_eq!(bytes[4], 0, "V1 is frame variant 0");
        bytes[4] = 1;
        rogue.send_raw(&bytes).await;
        rogue
            .expect_error_then_close(ErrorCode::Malformed, "malformed")
            .await;
        arena.session_failed("malformed frame").await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn an_unconfigured_identity_fails_the_handshake_is_listed_as_refused_and_writes_nothing() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..13);
        let stranger = Identity::generate("stranger").unwrap();
        let (local, tls) = dial(&stranger, arena.node.fingerprint(), arena.addr()).await;
        // In TLS 1.3 the client may finish its side of the handshake before the server
        // has checked its certificate: then the refusal arrives on the first read.
        let outcome = match tls {
            Err(e) => format!("handshake failed: {e}"),
            Ok(stream) => {
                let mut rogue = Rogue { stream, local };
                let frame = changes_frame(1, arena.source.changes());
                let _ = rogue.stream.write_all(&frame).await;
                let _ = rogue.stream.flush().await;
                match rogue.read().await {
                    Read::Frame(f) => panic!("an unconfigured identity received {f:?}"),
                    Read::Eof(e) | Read::Failed(e) => e,
                }
            }
        };
        assert!(
            outcome.contains("received fatal alert: AccessDenied"),
            "the stranger's connection should end with the server's TLS alert: {outcome}"
        );
        let address = local.to_string();
        let fingerprint = stranger.fingerprint().to_string();
        wait_until("the node to list the stranger as refused", async || {
            let status = arena.node.status().await;
            if status.refused.iter().any(|r| {
                r.address == address && r.fingerprint.as_deref() == Some(fingerprint.as_str())
            }) {
                Ok(())
            } else {
                Err(format!("{:?}", status.refused))
            }
        })
        .await;
        let status = arena.node.status().await;
        let p = peer(&status, "rogue");
        assert!(
            p.last_error.is_none() && p.state == "waiting",
            "the stranger must not count as the configured rogue peer: {p:?}"
        );
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_stream_cut_inside_a_frame_applies_nothing_of_it() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..13);
        let frame = changes_frame(1, arena.source.changes());
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        rogue.send_raw(&frame[..frame.len() / 2]).await;
        // Close our side (TLS close_notify, then FIN) and keep reading.
        rogue.stream.shutdown().await.unwrap();
        rogue
            .expect_error_then_close(ErrorCode::Malformed, "middle of a frame")
            .await;
        arena
            .session_failed("connection closed in the middle of a frame")
            .await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_replayed_batch_closes_the_session_and_is_not_applied_twice() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..13);
        let changes = arena.source.changes();
        assert_eq!(changes.len(), 3);
        let origin = arena.source.origin();
        let mut rogue = arena.rogue().await;
        rogue.handshake(origin).await;
        let frame = changes_frame(1, changes);
        rogue.send_raw(&frame).await;
        let ack = rogue.ack(1).await;
        assert_eq!(
            ack.holds.get(&origin),
            3,
            "the first batch is applied: {ack:?}"
        );
        rogue.send_raw(&frame).await;
        rogue
            .expect_error_then_close(ErrorCode::Unexpected, "replayed")
            .await;
        let p = arena
            .session_failed("batch 1 out of order or replayed (expected 2)")
            .await;
        assert_eq!((p.received, p.applied), (3, 3), "{p:?}");

        assert_eq!(rows(arena.n.db()), arena.rows_before_and_rogue(10..13));
        assert_eq!(
            log_counts(arena.n.db())[&origin.to_string()],
            (3, 3),
            "the rogue's three changes are logged once each"
        );
        assert_eq!(holds(&arena.node.status().await)[&origin.to_string()], 3);
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_transaction_cut_off_by_a_disconnect_is_not_applied_in_part() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..12);
        arena.source.transaction(20..23);
        let changes = arena.source.changes();
        let ends: Vec<bool> = changes.iter().map(|c| c.last_in_txn).collect();
        assert_eq!(
            ends,
            [false, true, false, false, true],
            "two source transactions"
        );
        let origin = arena.source.origin();

        // The first transaction whole, then two of the second's three changes; then the
        // rogue goes away.
        let mut rogue = arena.rogue().await;
        rogue.handshake(origin).await;
        rogue
            .send_raw(&changes_frame(1, changes[..4].to_vec()))
            .await;
        let ack = rogue.ack(1).await;
        assert_eq!(
            ack.holds.get(&origin),
            2,
            "only the whole transaction: {ack:?}"
        );
        rogue.stream.shutdown().await.unwrap();
        rogue
            .expect_error_then_close(ErrorCode::Rejected, "peer closed the connection")
            .await;
        arena.session_failed("peer closed the connection").await;
        assert_eq!(
            rows(arena.n.db()),
            arena.rows_before_and_rogue(10..12),
            "none of the cut transaction"
        );
        assert_eq!(log_counts(arena.n.db())[&origin.to_string()], (2, 2));

        // The next session resumes from what the node holds and completes it.
        let mut rogue = arena.rogue().await;
        let theirs = rogue.handshake(origin).await;
        assert_eq!(theirs.holds.get(&origin), 2);
        rogue
            .send_raw(&changes_frame(1, changes[2..].to_vec()))
            .await;
        assert_eq!(rogue.ack(1).await.holds.get(&origin), 5);
        assert_eq!(
            rows(arena.n.db()),
            arena.rows_before_and_rogue((10..12).chain(20..23))
        );
        drop(rogue);
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_peer_that_stops_reading_is_disconnected_and_does_not_block_the_others() {
    common::run(async {
        let arena = Arena::with(
            |config| {
                config.sync.max_frame_bytes = DEFAULT_MAX_FRAME;
                config.sync.stall_timeout_s = 3;
            },
            // The good peer receives the backlog too; reading its log in pages larger
            // than the backlog keeps this test clear of the bug pinned by topology's
            // a_node_keeps_sending_its_writes_after_receiving_a_large_transaction_from_the_peer.
            |good| good.sync.batch_changes = 10_000,
        )
        .await;
        // About 10 MB for the rogue: with the default window of 4 batches of 1,000
        // changes, about 8 MB go out unacknowledged, more than socket buffers hold.
        let value = "x".repeat(2_000);
        {
            let mut conn = common::app(arena.n.db());
            let tx = conn.transaction().unwrap();
            for id in 10_000..15_000 {
                tx.execute(
                    "INSERT INTO t(id, v) VALUES (?1, ?2)",
                    rusqlite::params![id, value],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let expected = rows(arena.n.db());
        wait_for_rows("the backlog at the good peer", arena.g.db(), &expected).await;
        let before_attack = (rows(arena.n.db()), log_counts(arena.n.db()));

        let rogue = arena.rogue().await;
        let (read_half, write_half) = tokio::io::split(rogue.stream);
        let mut reader = Rogue {
            stream: Join(read_half, tokio::io::sink()),
            local: rogue.local,
        };
        let _ = reader.their_hello().await;
        let mut writer = Rogue {
            stream: Join(tokio::io::empty(), write_half),
            local: rogue.local,
        };
        writer
            .send(Message::Hello(hello(
                arena.source.origin(),
                VersionVector::new(),
            )))
            .await;
        // Keep talking (so the node cannot call it silent), never read.
        let pinger = tokio::spawn(async move {
            for n in 0u64.. {
                let frame = FrameCodec::encode_to_vec(&Frame::V1(Message::Ping(n))).unwrap();
                if writer.stream.write_all(&frame).await.is_err() {
                    return;
                }
                let _ = writer.stream.flush().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        arena.session_failed("stopped reading").await;
        pinger.abort();
        // The node's Error frame cannot get through a stuck connection: the rogue, now
        // reading, finds what was buffered and then the end of the stream.
        let (_, end) = reader.until_closed().await;
        assert!(matches!(end, Read::Eof(_) | Read::Failed(_)), "{end:?}");
        assert_eq!(
            (rows(arena.n.db()), log_counts(arena.n.db())),
            before_attack,
            "nothing of the rogue applied"
        );
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_peer_idling_inside_a_huge_transaction_does_not_freeze_the_node() {
    common::run(async {
        let mut arena = Arena::new(|config| {
            config.sync.max_frame_bytes = DEFAULT_MAX_FRAME;
            config.sync.stall_timeout_s = 3;
        })
        .await;
        // One source transaction of 20,001 changes: beyond what the node buffers, so it
        // streams the first 20,000 into an open store transaction.
        arena.source.transaction(10_000..30_001);
        let changes = arena.source.changes();
        assert_eq!(changes.len(), 20_001);
        let origin = arena.source.origin();
        let mut rogue = arena.rogue().await;
        rogue.handshake(origin).await;
        rogue
            .send_raw(&changes_frame(1, changes[..10_000].to_vec()))
            .await;
        rogue
            .send_raw(&changes_frame(2, changes[10_000..20_000].to_vec()))
            .await;
        rogue.ack(1).await;
        rogue.ack(2).await;
        // Never send the last change; keep the session alive with pings.
        let pinger = tokio::spawn(async move {
            for n in 0u64.. {
                let frame = FrameCodec::encode_to_vec(&Frame::V1(Message::Ping(n))).unwrap();
                if rogue.stream.write_all(&frame).await.is_err() {
                    return;
                }
                let _ = rogue.stream.flush().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });

        // Within the wait, all at once: the application writes its own database, the
        // node answers its status, and the good peer's write arrives.
        insert_rows(arena.g.db(), [1_003], "good during the stall ");
        wait_until(
            "the node to keep serving while a peer idles inside a transaction",
            async || {
                let conn = rusqlite::Connection::open(arena.n.db()).unwrap();
                conn.busy_timeout(Duration::from_secs(1)).unwrap();
                if let Err(e) =
                    conn.execute("INSERT OR REPLACE INTO t(id, v) VALUES (1002, 'app')", [])
                {
                    return Err(format!("the application's write failed: {e}"));
                }
                if tokio::time::timeout(Duration::from_secs(2), arena.node.status())
                    .await
                    .is_err()
                {
                    return Err("the node's status did not answer within 2 s".into());
                }
                if !rows(arena.n.db()).iter().any(|(id, _)| *id == 1_003) {
                    return Err("the good peer's write has not arrived".into());
                }
                Ok(())
            },
        )
        .await;
        assert!(
            !rows(arena.n.db()).iter().any(|(id, _)| *id >= 10_000),
            "part of the unfinished transaction was applied"
        );
        pinger.abort();
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

/// A read half and a write half as one stream.
struct Join<R, W>(R, W);

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Join<R, W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Join<R, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.1).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.1).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.1).poll_shutdown(cx)
    }
}

#[test]
fn pieces_of_a_large_batch_out_of_order_are_refused_and_nothing_of_it_applied() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..40);
        let batch = ChangeBatch {
            batch: 1,
            changes: arena.source.changes(),
        };
        // Tiny pieces, so the batch takes several; the second one is skipped.
        let pieces = concord_wire::split_batch(&batch, 256).unwrap();
        assert!(pieces.len() >= 3, "{}", pieces.len());
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        rogue.send(Message::Piece(pieces[0].clone())).await;
        rogue.send(Message::Piece(pieces[2].clone())).await;
        rogue
            .expect_error_then_close(ErrorCode::Malformed, "expected")
            .await;
        arena.session_failed("starts at byte").await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_batch_in_pieces_announcing_more_than_the_limit_is_refused_before_it_is_buffered() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        rogue
            .send(Message::Piece(concord_wire::Piece {
                batch: 1,
                offset: 0,
                total: 1 << 40,
                bytes: vec![0; 1024].into(),
            }))
            .await;
        rogue
            .expect_error_then_close(ErrorCode::Malformed, "exceeds the limit")
            .await;
        arena.session_failed("exceeds the limit").await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

/// A peer that speaks only protocol version 1 cannot take pieces: the node must never
/// send it one (it could not decode it), and must say why the change cannot go, not
/// retry in silence.
#[test]
fn a_peer_of_protocol_version_1_is_never_sent_a_piece_and_is_told_why() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        // 100 KB in one value: more than the node's 64 KiB frames.
        insert_rows(arena.n.db(), [50], &"x".repeat(100_000));
        let mut rogue = arena.rogue().await;
        rogue.their_hello().await;
        // Holding nothing, the rogue is owed every change, the large one included.
        let mut mine = hello(arena.source.origin(), VersionVector::new());
        mine.min_version = 1;
        mine.max_version = 1;
        mine.max_frame = MAX_FRAME;
        rogue.send(Message::Hello(mine)).await;
        let (frames, _end) = rogue.until_closed().await;
        assert!(
            !frames
                .iter()
                .any(|f| matches!(f, Frame::V1(Message::Piece(_)))),
            "a version 1 peer was sent a Piece"
        );
        let Some(Frame::V1(Message::Error(error))) = frames.last() else {
            panic!("the node closed without saying why: {frames:?}");
        };
        assert!(error.message.contains("protocol version 1"), "{error:?}");
        arena.session_failed("protocol version 1").await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

/// Deletes list the column clocks their writer held from protocol version 5 on; a
/// version 4 peer refuses a delete with columns as malformed, so it must be sent the
/// delete without them (and a version 5 peer with them).
#[test]
fn a_delete_reaches_a_version_4_peer_without_columns_and_a_version_5_peer_with_them() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        app(arena.n.db())
            .execute("DELETE FROM t WHERE id = 1", [])
            .unwrap();
        for version in [4u16, 5] {
            let mut rogue = arena.rogue().await;
            rogue.their_hello().await;
            let mut mine = hello(arena.source.origin(), VersionVector::new());
            mine.max_version = version;
            rogue.send(Message::Hello(mine)).await;
            let delete = loop {
                match rogue.message().await {
                    Message::Changes(batch) => {
                        if let Some(delete) = batch.changes.into_iter().find(Change::is_delete) {
                            break delete;
                        }
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::SnapshotEnd(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            };
            if version < 5 {
                assert!(delete.columns.is_empty(), "{delete:?}");
            } else {
                let mut seen: Vec<&str> =
                    delete.columns.iter().map(|c| c.column.as_str()).collect();
                seen.sort_unstable();
                assert_eq!(seen, ["id", "v"], "{delete:?}");
                assert!(
                    delete
                        .columns
                        .iter()
                        .all(|c| c.value == concord_core::Value::Null),
                    "{delete:?}"
                );
            }
            assert!(delete.delete_seen.is_some(), "{delete:?}");
            drop(rogue);
            arena.rogue_released().await;
        }
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

/// A delete that carries a column value is malformed: it is set aside with a reason
/// that says so, and deletes nothing.
#[test]
fn a_delete_carrying_a_value_is_set_aside_and_deletes_nothing() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(1..2);
        let mut delete = arena.source.changes().remove(0);
        delete.causal_length = concord_core::CausalLength(2);
        for column in &mut delete.columns {
            column.value = concord_core::Value::Text("not a clock".into());
        }
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        rogue
            .send(Message::Changes(ChangeBatch {
                batch: 1,
                changes: vec![delete],
            }))
            .await;
        rogue.ack(1).await;
        assert_eq!(rows(arena.n.db()), arena.rows_before, "a row changed");
        let status = arena.node.status().await;
        assert_eq!(status.failures, 1, "{status:?}");
        let p = peer(&status, "rogue");
        assert!(
            p.last_failure
                .as_deref()
                .is_some_and(|f| f.contains("a delete carries column values")),
            "{p:?}"
        );
        drop(rogue);
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

/// The rows that differ after a reconciliation come in several batches; merged batch by
/// batch, the node would show a state neither side ever held (one row of a later
/// transaction, the others of an earlier one), as the fault harness caught under load.
/// They are held until `SnapshotEnd` and merged together.
#[test]
fn rows_sent_after_a_reconciliation_appear_together_at_its_end() {
    use concord_core::reconcile::{
        Bound, Compare, Fingerprint, Message as Ranges, Range, RangeMode,
    };
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..12);
        let states: Vec<Change> = arena
            .source
            .changes()
            .into_iter()
            .map(|mut c| {
                c.seq = 0;
                c.last_in_txn = true;
                c
            })
            .collect();
        assert_eq!(states.len(), 2);
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        rogue
            .send(Message::Reconcile(concord_wire::Reconcile {
                id: 1,
                table: "t".into(),
                compare: Compare::Clocks,
                message: Ranges {
                    ranges: vec![Range {
                        upper: Bound::End,
                        mode: RangeMode::Fingerprint(Fingerprint([7; 16])),
                    }],
                },
            }))
            .await;
        loop {
            match rogue.message().await {
                Message::ReconcileAnswer(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected the answer, got {other:?}"),
            }
        }
        for (batch, state) in states.iter().enumerate() {
            let batch = batch as u64 + 1;
            rogue
                .send(Message::Changes(ChangeBatch {
                    batch,
                    changes: vec![state.clone()],
                }))
                .await;
            rogue.ack(batch).await;
            let ids: Vec<i64> = rows(arena.n.db()).into_iter().map(|(id, _)| id).collect();
            assert!(
                !ids.contains(&10) && !ids.contains(&11),
                "a row state was merged before the reconciliation ended: {ids:?}"
            );
        }
        rogue
            .send(Message::SnapshotEnd(concord_wire::SnapshotEnd {
                batch: 3,
                holds: VersionVector::new(),
            }))
            .await;
        rogue.ack(3).await;
        let ids: Vec<i64> = rows(arena.n.db()).into_iter().map(|(id, _)| id).collect();
        assert!(ids.contains(&10) && ids.contains(&11), "{ids:?}");
        drop(rogue);
        // Row states are merged, not logged: the good peer would get rows 10 and 11 only by
        // reconciling with the node, so the usual check that it mirrors the node does not
        // apply here.
        arena.node.shutdown().await;
        arena.good.shutdown().await;
    });
}

#[test]
fn a_reconciliation_whose_ranges_lie_closes_the_session_and_changes_nothing() {
    use concord_core::reconcile::{
        Bound, Compare, Fingerprint, Message as Ranges, Range, RangeMode,
    };
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        // Ranges that do not cover the key space: the last one stops short of the end.
        rogue
            .send(Message::Reconcile(concord_wire::Reconcile {
                id: 1,
                table: "t".into(),
                compare: Compare::Clocks,
                message: Ranges {
                    ranges: vec![Range {
                        upper: Bound::Below(vec![0x14, 0x80]),
                        mode: RangeMode::Fingerprint(Fingerprint([7; 16])),
                    }],
                },
            }))
            .await;
        rogue
            .expect_error_then_close(ErrorCode::Unexpected, "reconciliation")
            .await;
        arena
            .session_failed("does not end at the end of the key space")
            .await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn an_answer_to_a_reconciliation_never_started_closes_the_session() {
    common::run(async {
        let arena = Arena::new(|_| {}).await;
        let mut rogue = arena.rogue().await;
        rogue.handshake(arena.source.origin()).await;
        rogue
            .send(Message::ReconcileAnswer(concord_wire::ReconcileAnswer {
                id: 99,
                message: None,
            }))
            .await;
        rogue
            .expect_error_then_close(ErrorCode::Unexpected, "never started")
            .await;
        arena
            .session_failed("an answer to reconciliation 99 that was never started")
            .await;
        arena.nothing_applied().await;
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

/// The node's mapping for the rogue: `t.v` is text here and an integer at the rogue, so
/// every row the node holds ('node 1', 'good 2') cannot be converted for it.
fn unconvertible_for_the_rogue(config: &mut NodeConfig) {
    let toml = r#"
        name = "x"
        fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        [[tables]]
        local = "t"
        remote = "t"
        key = ["id"]
        columns = [{ local = "v", local_type = "text", remote_type = "integer" }]
    "#;
    let parsed: PeerConfig = toml::from_str(toml).unwrap();
    let rogue = config.peers.iter_mut().find(|p| p.name == "rogue").unwrap();
    rogue.tables = parsed.tables;
}

#[test]
fn a_peer_of_version_4_is_never_sent_withheld_and_its_stream_stops_with_the_mapping_error() {
    common::run(async {
        let arena = Arena::new(unconvertible_for_the_rogue).await;
        let mut rogue = arena.rogue().await;
        rogue.their_hello().await;
        let mut old = hello(arena.source.origin(), VersionVector::new());
        (old.min_version, old.max_version) = (1, 4);
        rogue.send(Message::Hello(old)).await;
        let (frames, end) = rogue.until_closed().await;
        assert!(
            !frames
                .iter()
                .any(|f| matches!(f, Frame::V1(Message::Withheld(_) | Message::Changes(_)))),
            "a version 4 peer got a Withheld or the unconvertible change: {frames:?}"
        );
        let Some(Frame::V1(Message::Error(error))) = frames.last() else {
            panic!("no Error before the close: {frames:?}, then {end:?}");
        };
        assert!(error.message.contains("cannot cast"), "{error:?}");
        arena.session_failed("cannot cast").await;
        assert!(
            LinkFailures::at(&arena.n.dir).load().unwrap().is_empty(),
            "nothing is recorded as withheld from a version 4 peer"
        );
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_version_5_peer_is_told_of_each_withheld_transaction_and_the_session_goes_on() {
    common::run(async {
        let arena = Arena::new(unconvertible_for_the_rogue).await;
        let mut rogue = arena.rogue().await;
        let theirs = rogue.their_hello().await;
        rogue
            .send(Message::Hello(hello(
                arena.source.origin(),
                VersionVector::new(),
            )))
            .await;
        // Both rows the node holds were written in transactions of their own, one at
        // each origin: each is withheld, in log order, numbered like a batch.
        let mut withheld = Vec::new();
        while withheld.len() < 2 {
            match rogue.message().await {
                Message::Withheld(w) => {
                    rogue
                        .send(Message::Ack(Ack {
                            batch: w.batch,
                            holds: VersionVector::new(),
                        }))
                        .await;
                    withheld.push(w);
                }
                Message::Ping(n) => rogue.send(Message::Pong(n)).await,
                Message::Pong(_) => {}
                other => panic!("expected Withheld, got {other:?}"),
            }
        }
        assert_eq!(withheld.iter().map(|w| w.batch).collect::<Vec<_>>(), [1, 2]);
        let origins: Vec<NodeId> = withheld.iter().map(|w| w.origin).collect();
        assert!(origins.contains(&theirs.node), "{withheld:?}");
        for w in &withheld {
            assert_eq!((w.first_seq, w.last_seq), (1, 1), "{w:?}");
            assert!(w.reason.contains("cannot cast"), "{w:?}");
        }
        let recorded = LinkFailures::at(&arena.n.dir).load().unwrap();
        assert_eq!(recorded.len(), 2, "{recorded:?}");
        assert!(
            recorded
                .iter()
                .all(|e| e.direction == Direction::Outgoing && e.peer == "rogue"),
            "{recorded:?}"
        );
        let status = arena.node.status().await;
        let p = peer(&status, "rogue");
        assert_eq!((p.state.as_str(), p.errors), ("connected", 0), "{p:?}");
        assert_eq!(p.failures, 2, "{p:?}");
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_withheld_range_is_listed_counted_as_held_and_drops_the_open_transaction_it_covers() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..12);
        arena.source.transaction(20..22);
        let changes = arena.source.changes();
        let origin = arena.source.origin();
        let mut rogue = arena.rogue().await;
        rogue.handshake(origin).await;
        // The first change of the first transaction, then the word that the whole
        // transaction is withheld: the buffered change must go, never applied.
        rogue
            .send_raw(&changes_frame(1, changes[..1].to_vec()))
            .await;
        rogue.ack(1).await;
        rogue
            .send(Message::Withheld(Withheld {
                batch: 2,
                origin,
                first_seq: 1,
                last_seq: 2,
                reason: "no integer for 'ten'".into(),
            }))
            .await;
        assert_eq!(rogue.ack(2).await.holds.get(&origin), 2);
        rogue
            .send_raw(&changes_frame(3, changes[2..].to_vec()))
            .await;
        assert_eq!(rogue.ack(3).await.holds.get(&origin), 4);

        assert_eq!(
            rows(arena.n.db()),
            arena.rows_before_and_rogue(20..22),
            "none of the withheld transaction"
        );
        let recorded = LinkFailures::at(&arena.n.dir).load().unwrap();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].direction, Direction::Withheld);
        assert_eq!((recorded[0].first_seq, recorded[0].last_seq), (1, 2));
        assert_eq!(
            recorded[0].reason,
            "withheld by peer rogue: no integer for 'ten'"
        );
        let status = arena.node.status().await;
        let p = peer(&status, "rogue");
        assert_eq!((p.errors, p.failures), (0, 2), "{p:?}");
        assert!(
            p.last_failure
                .as_deref()
                .is_some_and(|f| f.contains("withheld by peer rogue")),
            "{p:?}"
        );
        // A replay of a range already held is acknowledged and changes nothing.
        rogue
            .send(Message::Withheld(Withheld {
                batch: 4,
                origin,
                first_seq: 1,
                last_seq: 2,
                reason: "again".into(),
            }))
            .await;
        assert_eq!(rogue.ack(4).await.holds.get(&origin), 4);
        assert_eq!(LinkFailures::at(&arena.n.dir).load().unwrap(), recorded);
        drop(rogue);
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_withheld_range_that_lies_is_refused_and_nothing_of_it_is_used() {
    common::run(async {
        let mut arena = Arena::new(|_| {}).await;
        arena.source.transaction(10..12);
        let changes = arena.source.changes();
        let origin = arena.source.origin();
        let node = arena.node.status().await.node_id.parse::<NodeId>().unwrap();
        let other = NodeId::from_bytes([7; 16]);
        let range = |origin, first_seq, last_seq| Withheld {
            batch: 1,
            origin,
            first_seq,
            last_seq,
            reason: "lie".into(),
        };
        let cases: Vec<(&str, Option<Vec<Change>>, Withheld, &str)> = vec![
            ("backwards", None, range(origin, 3, 2), "goes backwards"),
            ("zero", None, range(origin, 0, 2), "goes backwards"),
            (
                "a gap",
                None,
                range(origin, 5, 6),
                "skips past changes never sent",
            ),
            (
                "the node itself",
                None,
                range(node, 1, 1),
                "names this node as its origin",
            ),
            (
                "inside another transaction",
                Some(changes[..1].to_vec()),
                Withheld {
                    batch: 2,
                    ..range(other, 1, 1)
                },
                "arrived inside the incomplete transaction",
            ),
        ];
        for (case, before, lie, needle) in cases {
            let mut rogue = arena.rogue().await;
            rogue.handshake(origin).await;
            if let Some(before) = before {
                rogue.send_raw(&changes_frame(1, before)).await;
                rogue.ack(1).await;
            }
            rogue.send(Message::Withheld(lie)).await;
            rogue
                .expect_error_then_close(ErrorCode::Unexpected, needle)
                .await;
            arena.session_failed(needle).await;
            arena.nothing_applied().await;
            assert!(
                LinkFailures::at(&arena.n.dir).load().unwrap().is_empty(),
                "{case}: a refused range was recorded"
            );
        }
        arena.good_peer_unharmed_then_shutdown().await;
    });
}

#[test]
fn a_withheld_range_over_a_transaction_streaming_into_the_store_rolls_it_back_whole() {
    common::run(async {
        let mut arena = Arena::new(|config| {
            config.sync.max_frame_bytes = DEFAULT_MAX_FRAME;
        })
        .await;
        // 20,001 changes in one source transaction: beyond what the node buffers, so the
        // first 20,000 stream into an open store transaction before the word comes that
        // the transaction is withheld.
        arena.source.transaction(10_000..30_001);
        arena.source.transaction(40..42);
        let changes = arena.source.changes();
        assert_eq!(changes.len(), 20_003);
        let origin = arena.source.origin();
        let mut rogue = arena.rogue().await;
        rogue.handshake(origin).await;
        rogue
            .send_raw(&changes_frame(1, changes[..10_000].to_vec()))
            .await;
        rogue
            .send_raw(&changes_frame(2, changes[10_000..20_000].to_vec()))
            .await;
        rogue.ack(1).await;
        rogue.ack(2).await;
        rogue
            .send(Message::Withheld(Withheld {
                batch: 3,
                origin,
                first_seq: 1,
                last_seq: 20_001,
                reason: "too big to convert".into(),
            }))
            .await;
        assert_eq!(rogue.ack(3).await.holds.get(&origin), 20_001);
        rogue
            .send_raw(&changes_frame(4, changes[20_001..].to_vec()))
            .await;
        assert_eq!(rogue.ack(4).await.holds.get(&origin), 20_003);

        assert_eq!(
            rows(arena.n.db()),
            arena.rows_before_and_rogue(40..42),
            "none of the withheld transaction"
        );
        let status = arena.node.status().await;
        let p = peer(&status, "rogue");
        assert_eq!((p.errors, p.failures), (0, 20_001), "{p:?}");
        drop(rogue);
        arena.good_peer_unharmed_then_shutdown().await;
    });
}
