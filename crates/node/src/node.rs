//! The node: its store, peers, listeners and background tasks.
//!
//! Everything a person reads about the node (logs, status, `/health`) is put in words
//! here and in [`crate::words`]: errors with each cause once, an orderly close as an
//! event rather than an error, a refused identity with its fingerprint, and a dialer
//! refused by its peer told which fingerprint to add where.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_core::{Change, NodeId, VersionVector};
use concord_store::{LogRead, Store, StoreError, TrackError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ConfigError, NodeConfig, PeerConfig};
use crate::identity::{Fingerprint, Identity, IdentityError};
use crate::session::{self, SessionError, lock};
use crate::status::{
    Health, MissingPeer, NodeCounters, NodeStatus, OriginFailures, OriginHeld, PeerCounters,
    PeerStatus, Refused, failures_by_origin,
};
use crate::tls::{self, TlsError};
use crate::words;

/// Why a node could not be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity is missing or invalid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened or tracked.
    #[error("store")]
    Track(#[from] TrackError),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// A socket could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The data directory already holds a node.
    #[error("{0} already holds a node configuration; remove it or choose another directory")]
    AlreadyInitialized(PathBuf),
    /// A task the node needed could not run.
    #[error("internal: {0}")]
    Internal(String),
    /// Watching the database file failed.
    #[error("watching {path}: {detail}")]
    Watch {
        /// The watched path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// Connection state of a peer.
#[derive(Clone, Debug)]
enum Link {
    Waiting,
    Connecting,
    Connected,
    Retrying,
}

impl Link {
    fn name(&self) -> &'static str {
        match self {
            Link::Waiting => "waiting",
            Link::Connecting => "connecting",
            Link::Connected => "connected",
            Link::Retrying => "retrying",
        }
    }
}

#[derive(Debug)]
struct PeerRuntime {
    link: Link,
    active: bool,
    last_error: Option<String>,
    /// The last change of the link that was not an error.
    last_event: Option<String>,
    /// When the current session was established.
    session_since: Option<Instant>,
    /// What the peer is known to hold: its Hello, its acknowledgements, and the changes
    /// it sent (it holds what it sends).
    holds: Option<VersionVector>,
    node: Option<NodeId>,
    last_seen: Option<Instant>,
    /// The last column or table the peer's changes named that was not added here
    /// (`propagate_schema`), and why.
    schema_not_added: Option<String>,
}

/// A configured peer and what is known of it.
pub(crate) struct Peer {
    pub(crate) config: PeerConfig,
    pub(crate) counters: PeerCounters,
    runtime: Mutex<PeerRuntime>,
    /// The running session's reconciliations, for `/v1/verify`.
    reconciles: Mutex<Option<Arc<crate::reconcile::Link>>>,
}

impl Peer {
    /// The running session's reconciliation link, if a session is up.
    pub(crate) fn reconciles(&self) -> Option<Arc<crate::reconcile::Link>> {
        self.reconciles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_reconciles(&self, link: Option<Arc<crate::reconcile::Link>>) {
        *self
            .reconciles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = link;
    }

    fn runtime(&self) -> std::sync::MutexGuard<'_, PeerRuntime> {
        self.runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims the peer for a new session; false if one is already running.
    fn try_activate(&self) -> bool {
        let mut rt = self.runtime();
        if rt.active {
            return false;
        }
        rt.active = true;
        true
    }

    fn finished(&self, result: &Result<(), SessionError>, dials: bool) {
        let mut rt = self.runtime();
        rt.active = false;
        rt.link = if dials { Link::Retrying } else { Link::Waiting };
        rt.session_since = None;
        self.counters.connected.set(0.0);
        match result {
            Ok(()) => rt.last_event = Some("session closed".into()),
            // A shutdown on either side is not a fault: it replaces the error of an
            // earlier session rather than showing as one.
            Err(e) if e.is_orderly() => {
                rt.last_error = None;
                rt.last_event = Some(match e {
                    SessionError::Shutdown => "this node shut down".into(),
                    _ => "the peer shut down".into(),
                });
            }
            Err(e) => {
                rt.last_error = Some(e.words());
                self.counters.errors.add(1);
            }
        }
    }

    pub(crate) fn connected(&self, node: NodeId, holds: VersionVector) {
        let mut rt = self.runtime();
        if let Some(previous) = rt.node
            && previous != node
        {
            tracing::warn!(peer = %self.config.name, %previous, now = %node, "peer presents a different store node id than before");
        }
        rt.node = Some(node);
        rt.link = Link::Connected;
        rt.last_error = None;
        rt.last_event = Some("session established".into());
        rt.session_since = Some(Instant::now());
        // Both ends start their session figures at the Hello, so they agree.
        self.counters.new_session();
        rt.last_seen = Some(Instant::now());
        rt.holds = Some(holds);
        self.counters.connected.set(1.0);
    }

    /// Records why something this peer's changes named was not added here
    /// (`propagate_schema`), for status.
    pub(crate) fn schema_not_added(&self, why: String) {
        self.runtime().schema_not_added = Some(why);
    }

    pub(crate) fn seen(&self) {
        self.runtime().last_seen = Some(Instant::now());
    }

    pub(crate) fn known_holds(&self) -> VersionVector {
        self.runtime().holds.clone().unwrap_or_default()
    }

    pub(crate) fn acknowledged(&self, holds: &VersionVector) {
        let mut rt = self.runtime();
        rt.holds.get_or_insert_with(VersionVector::new).join(holds);
    }

    /// The peer holds at least `holds` (it sent a snapshot reflecting them).
    pub(crate) fn learn_holds(&self, holds: &VersionVector) {
        let mut rt = self.runtime();
        rt.holds.get_or_insert_with(VersionVector::new).join(holds);
    }

    pub(crate) fn learn_held(&self, changes: &[Change]) {
        let mut rt = self.runtime();
        let holds = rt.holds.get_or_insert_with(VersionVector::new);
        for c in changes {
            if c.seq > holds.get(&c.origin) {
                holds.set(c.origin, c.seq);
            }
        }
    }
}

/// How long status waits for a busy store before reporting its last known counts.
const STATUS_STORE_WAIT: Duration = Duration::from_secs(1);

/// The store's lock as status takes it.
type StoreGuard<'a> = std::sync::MutexGuard<'a, Box<dyn Store>>;

/// The store's lock, if it can be taken within [`STATUS_STORE_WAIT`].
fn lock_briefly(
    store: &Mutex<Box<dyn Store>>,
) -> Result<StoreGuard<'_>, std::sync::TryLockError<StoreGuard<'_>>> {
    let deadline = Instant::now() + STATUS_STORE_WAIT;
    loop {
        match store.try_lock() {
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// The store's counts as status last read them.
#[derive(Default)]
struct StoreState {
    held: VersionVector,
    log_entries: u64,
    conflicts: u64,
    failures: u64,
    /// The set-aside changes by origin, for the rows of the peers they came from.
    failures_by_origin: HashMap<NodeId, OriginFailures>,
    capture: concord_store::CaptureState,
}

/// What the tasks of a node share.
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) store: Arc<Mutex<Box<dyn Store>>>,
    /// Transactions a link did not carry, both ways (`link-failures.json`).
    pub(crate) link_failures: crate::link_failures::LinkFailures,
    /// Where the store is, for status (a path, or a URL without its password).
    pub(crate) store_location: String,
    /// Files whose modification means local writes are waiting; empty for servers.
    watch_paths: Vec<PathBuf>,
    /// The log reader status uses for lag, kept between calls (for servers, it is a
    /// connection).
    status_reader: Mutex<Option<Box<dyn LogRead>>>,
    /// What the store last reported to status.
    last_store_state: Mutex<StoreState>,
    pub(crate) node_id: NodeId,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) peers: Vec<Arc<Peer>>,
    pub(crate) counters: NodeCounters,
    pub(crate) recorder: PrometheusRecorder,
    /// Bumped after every capture or apply that logged something.
    pub(crate) log_changed: watch::Sender<u64>,
    pub(crate) shutdown: watch::Sender<bool>,
    refused: Mutex<VecDeque<Refused>>,
    /// Why the last capture failed, until one succeeds.
    capture_error: Mutex<Option<String>>,
    /// Configured tables the node could not track at start, in words.
    setup_problems: Vec<String>,
    started: Instant,
    listen: Option<SocketAddr>,
}

/// Refused connections kept for status (the most recent identities or reasons).
const REFUSED_KEPT: usize = 20;

impl Shared {
    /// Records a refused connection: once per identity (or per reason, when the other
    /// side presented no certificate), with a count, so a node retrying every few
    /// seconds neither floods the list nor pushes others out.
    fn refuse(&self, address: SocketAddr, fingerprint: Option<Fingerprint>, reason: String) {
        match fingerprint {
            Some(f) => {
                tracing::warn!(from = %address, fingerprint = %f, %reason, "refused a connection")
            }
            None => tracing::warn!(from = %address, %reason, "refused a connection"),
        }
        let fingerprint = fingerprint.map(|f| f.to_string());
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = refused.iter().position(|r| match &fingerprint {
            Some(_) => r.fingerprint == fingerprint,
            None => r.fingerprint.is_none() && r.reason == reason,
        });
        let mut entry = match known.and_then(|i| refused.remove(i)) {
            Some(entry) => entry,
            None => Refused {
                fingerprint,
                address: String::new(),
                reason: String::new(),
                times: 0,
            },
        };
        entry.address = address.to_string();
        entry.reason = reason;
        entry.times += 1;
        if refused.len() >= REFUSED_KEPT {
            refused.pop_front();
        }
        refused.push_back(entry);
    }
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    /// Starts the node configured in `dir` (`concord.toml` and `identity/`).
    pub async fn start(dir: &Path) -> Result<Node, NodeError> {
        let config = NodeConfig::load(dir)?;
        let identity = Identity::load(&dir.join("identity"))?;
        Self::start_with(dir, config, identity).await
    }

    /// Starts a node from an explicit configuration and identity; `dir` resolves
    /// relative paths and holds a relay's store.
    pub async fn start_with(
        dir: &Path,
        config: NodeConfig,
        identity: Identity,
    ) -> Result<Node, NodeError> {
        config.check_own_fingerprint(identity.fingerprint(), &dir.join(NodeConfig::FILE))?;
        let (store, setup_problems) = crate::setup::open_store(dir, &config).await?;
        let store_location = store.location();
        let watch_paths = store.watch_paths();
        let recorder = PrometheusBuilder::new().build_recorder();
        let peers = config
            .peers
            .iter()
            .map(|p| {
                Arc::new(Peer {
                    counters: PeerCounters::new(&recorder, &p.name),
                    config: p.clone(),
                    runtime: Mutex::new(PeerRuntime {
                        link: if p.address.is_some() {
                            Link::Connecting
                        } else {
                            Link::Waiting
                        },
                        active: false,
                        last_error: None,
                        last_event: None,
                        session_since: None,
                        holds: None,
                        node: None,
                        last_seen: None,
                        schema_not_added: None,
                    }),
                    reconciles: Mutex::new(None),
                })
            })
            .collect();

        let listener = match config.node.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let listen = listener.as_ref().and_then(|l| l.local_addr().ok());
        let http_listener = match config.node.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let http = http_listener.as_ref().and_then(|l| l.local_addr().ok());

        let shared = Arc::new(Shared {
            node_id: store.node_id(),
            store: Arc::new(Mutex::new(store)),
            link_failures: crate::link_failures::LinkFailures::at(dir),
            store_location,
            watch_paths,
            status_reader: Mutex::new(None),
            last_store_state: Mutex::new(StoreState::default()),
            fingerprint: identity.fingerprint(),
            peers,
            counters: NodeCounters::new(&recorder),
            recorder,
            log_changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            refused: Mutex::new(VecDeque::new()),
            capture_error: Mutex::new(None),
            setup_problems,
            started: Instant::now(),
            listen,
            config,
        });

        let mut tasks = Vec::new();
        if let Some(listener) = listener {
            let allowed: Vec<Fingerprint> =
                shared.peers.iter().map(|p| p.config.fingerprint).collect();
            // Built once here so a bad identity fails the start; each connection gets
            // its own copy that remembers the certificate it was shown.
            tls::server_config(&identity, allowed.iter().copied())?;
            let server = ServerTls {
                identity: Arc::new(identity.clone()),
                allowed,
            };
            tasks.push(tokio::spawn(accept_loop(shared.clone(), listener, server)));
        }
        for peer in &shared.peers {
            if let Some(address) = peer.config.address.clone() {
                let presented = tls::Presented::default();
                let connector = TlsConnector::from(tls::client_config_observed(
                    &identity,
                    peer.config.fingerprint,
                    presented.clone(),
                )?);
                tasks.push(tokio::spawn(dial_loop(
                    shared.clone(),
                    peer.clone(),
                    address,
                    (connector, presented),
                )));
            }
        }
        if !shared.config.store.relay {
            tasks.push(tokio::spawn(capture_loop(
                shared.clone(),
                start_watcher(&shared)?,
            )));
        }
        tasks.push(tokio::spawn(prune_loop(shared.clone())));
        if let Some(listener) = http_listener {
            tasks.push(tokio::spawn(crate::http::serve(shared.clone(), listener)));
        }
        tracing::info!(
            name = %shared.config.node.name,
            node = %shared.node_id.short(),
            fingerprint = %shared.fingerprint,
            listen = %words::addr_or_none(listen),
            http = %words::addr_or_none(http),
            "node started"
        );
        Ok(Node {
            shared,
            tasks,
            listen,
            http,
        })
    }

    /// The address peers connect to, if the node listens.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// The HTTP address, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// This node's certificate fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.shared.fingerprint
    }

    /// The store's node id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// Captures pending local writes now (normally the file watcher does this).
    pub async fn capture_now(&self) -> Result<u64, NodeError> {
        Ok(capture(&self.shared).await?.0)
    }

    /// The node's status, as `/v1/status` serves it.
    pub async fn status(&self) -> NodeStatus {
        status(&self.shared).await
    }

    /// Which configured peers have no session up, as `/health` serves it.
    pub fn health(&self) -> Health {
        health(&self.shared)
    }

    /// Prometheus text exposition of the node's metrics.
    pub async fn metrics(&self) -> String {
        metrics_text(&self.shared).await
    }

    /// Stops every task and closes sessions.
    pub async fn shutdown(self) {
        let _ = self.shared.shutdown.send(true);
        // Give open sessions a moment to tell their peers this is a shutdown (an Error
        // frame saying so), so the peers log an orderly close instead of a lost link.
        let grace = Instant::now() + Duration::from_millis(500);
        while Instant::now() < grace && self.shared.peers.iter().any(|p| p.runtime().active) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What the accept loop needs to build each connection's TLS configuration.
struct ServerTls {
    identity: Arc<Identity>,
    allowed: Vec<Fingerprint>,
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, server: ServerTls) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %words::chain(&e), "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let presented = tls::Presented::default();
        let acceptor = match tls::server_config_observed(
            &server.identity,
            server.allowed.iter().copied(),
            presented.clone(),
        ) {
            Ok(config) => TlsAcceptor::from(config),
            Err(e) => {
                shared.refuse(
                    addr,
                    None,
                    format!("TLS setup failed: {}", words::chain(&e)),
                );
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            let shown = *presented
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let unknown =
                shown.filter(|f| !shared.peers.iter().any(|p| p.config.fingerprint == *f));
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(_)) if unknown.is_some() => {
                    return shared.refuse(
                        addr,
                        unknown,
                        "unknown identity: no [[peers]] entry has this fingerprint; add one to let that node in".into(),
                    );
                }
                Ok(Err(e)) => {
                    return shared.refuse(
                        addr,
                        shown,
                        format!("TLS handshake failed: {}", words::chain(&e)),
                    );
                }
                Err(_) => return shared.refuse(addr, shown, "TLS handshake timed out".into()),
            };
            let fingerprint = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Fingerprint::of(c));
            let Some(peer) = fingerprint
                .and_then(|f| shared.peers.iter().find(|p| p.config.fingerprint == f))
                .cloned()
            else {
                return shared.refuse(
                    addr,
                    fingerprint,
                    "unknown identity: no [[peers]] entry has this fingerprint".into(),
                );
            };
            if !peer.try_activate() {
                return shared.refuse(
                    addr,
                    fingerprint,
                    format!("peer {} is already connected", peer.config.name),
                );
            }
            let result = session::run(tls, peer.clone(), shared.clone()).await;
            log_end(&peer, &result);
            peer.finished(&result, peer.config.address.is_some());
        });
    }
}

fn log_end(peer: &Peer, result: &Result<(), SessionError>) {
    match result {
        Ok(()) => tracing::info!(peer = %peer.config.name, "session closed"),
        Err(e) if e.is_orderly() => {
            tracing::info!(peer = %peer.config.name, reason = %e.words(), "session closed for shutdown")
        }
        Err(e) => tracing::warn!(peer = %peer.config.name, error = %e.words(), "session ended"),
    }
}

/// Retry delays after a failed session: short for a lost link, which usually comes
/// back, and long when an identity was refused (the peer does not know this node, or
/// the node at the address is not the configured peer), which only a person editing a
/// configuration fixes.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(10);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(60);

async fn dial_loop(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    address: String,
    connector: (TlsConnector, tls::Presented),
) {
    let mut backoff = RETRY_FIRST;
    let mut max = RETRY_MAX;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        if peer.try_activate() {
            peer.runtime().link = Link::Connecting;
            let result = dial_once(&shared, &peer, &address, &connector).await;
            log_end(&peer, &result);
            peer.finished(&result, true);
            if matches!(
                result,
                Err(SessionError::UnknownToPeer(_) | SessionError::WrongPeer { .. })
            ) {
                backoff = backoff.max(REFUSED_RETRY_FIRST);
                max = REFUSED_RETRY_MAX;
            } else {
                max = RETRY_MAX;
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = RETRY_FIRST;
                }
                backoff = backoff.min(max);
            }
        }
        // Jitter keeps two nodes that lost each other from retrying in lockstep.
        let jitter = Duration::from_millis(wall_ms() % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.wait_for(|&stop| stop) => return,
        }
        backoff = (backoff * 2).min(max);
    }
}

async fn dial_and_run(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    address: &str,
    connector: &TlsConnector,
) -> Result<(), SessionError> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .map_err(|_| {
            SessionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {address} timed out"),
            ))
        })??;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME)
        .map_err(|e| SessionError::Internal(e.to_string()))?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| {
            SessionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })??;
    session::run(tls, peer.clone(), shared.clone()).await
}

/// One dial, with a refusal of this node's certificate put in words: in TLS 1.3 it
/// arrives as an alert during the handshake or on the first read of the session.
async fn dial_once(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    address: &str,
    (connector, presented): &(TlsConnector, tls::Presented),
) -> Result<(), SessionError> {
    let slot = || {
        presented
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    *slot() = None;
    let result = dial_and_run(shared, peer, address, connector).await;
    result.map_err(|e| {
        let shown = *slot();
        if tls::peer_refused_our_certificate(&e) {
            SessionError::UnknownToPeer(shared.fingerprint)
        } else if let (Some(presented), true) = (shown, tls::we_refused_their_certificate(&e)) {
            SessionError::WrongPeer {
                presented,
                expected: peer.config.fingerprint,
            }
        } else {
            e
        }
    })
}

/// Captures local writes; returns how many, and the store's table problems (tables it
/// does not sync now), which status reports like a failing capture.
async fn capture(shared: &Arc<Shared>) -> Result<(u64, Vec<String>), StoreError> {
    let store = shared.store.clone();
    let (n, mut problems) = tokio::task::spawn_blocking(move || {
        let mut store = lock(&store);
        if !store.writes_may_be_pending()? {
            return Ok::<_, StoreError>((0, store.table_problems()));
        }
        let n = store.capture_ready()?;
        if store.take_schema_changed() {
            // A change set aside for naming a column this database lacked may apply now.
            retry_set_aside(&mut **store, "the schema changed");
        }
        Ok::<_, StoreError>((n, store.table_problems()))
    })
    .await
    .map_err(|e| StoreError::CaptureStopped(e.to_string()))??;
    if n > 0 {
        shared.counters.captured.add(n);
        shared.log_changed.send_modify(|v| *v += 1);
    }
    problems.extend(shared.setup_problems.iter().cloned());
    Ok((n, problems))
}

/// Tries again what the store set aside, saying why and what came of it. A failure is
/// logged, not returned: the store keeps serving, and the changes stay set aside.
pub(crate) fn retry_set_aside(store: &mut dyn Store, why: &str) {
    match store.retry_set_aside() {
        Ok(report) if report.applied > 0 => tracing::info!(
            reason = why,
            applied = report.applied,
            still_set_aside = report.set_aside,
            "applied changes that had been set aside"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(reason = why, error = %words::chain(&e), "retrying the changes set aside failed")
        }
    }
}

/// Watches the store's files (a SQLite database and its WAL); any modification wakes
/// the capture loop. Stores on a server have no files: `None`, and the loop polls.
#[allow(clippy::type_complexity)]
fn start_watcher(
    shared: &Arc<Shared>,
) -> Result<Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)>, NodeError> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let Some(db) = shared.watch_paths.first().cloned() else {
        return Ok(None);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let names: Vec<std::ffi::OsString> = shared
        .watch_paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_))
            && event
                .paths
                .iter()
                .any(|p| names.iter().any(|n| p.ends_with(n)))
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| NodeError::Watch {
        path: db.clone(),
        detail: e.to_string(),
    })?;
    let dir = db
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| NodeError::Watch {
            path: dir,
            detail: e.to_string(),
        })?;
    Ok(Some((watcher, rx)))
}

async fn capture_loop(
    shared: Arc<Shared>,
    watch: Option<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)>,
) {
    let (_watcher, mut events) = match watch {
        Some((watcher, events)) => (Some(watcher), Some(events)),
        None => (None, None),
    };
    // With a file to watch, the timer is only a safety net; a server is polled.
    let cheap = {
        let store = shared.store.clone();
        tokio::task::spawn_blocking(move || lock(&store).answers_pending_cheaply())
            .await
            .unwrap_or(false)
    };
    let period = if events.is_some() {
        shared.config.sync.capture_fallback_ms
    } else if cheap {
        shared.config.sync.capture_check_ms
    } else {
        shared.config.sync.capture_poll_ms
    };
    let mut timer = tokio::time::interval(Duration::from_millis(period.max(1)));
    // A capture longer than the period is followed by one, not by a burst.
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The schema may have changed while the node was stopped.
    let store = shared.store.clone();
    let _ = tokio::task::spawn_blocking(move || {
        retry_set_aside(&mut **lock(&store), "the node started")
    })
    .await;
    loop {
        match events.as_mut() {
            Some(events) => {
                tokio::select! {
                    _ = events.recv() => {}
                    _ = timer.tick() => {}
                }
            }
            None => {
                timer.tick().await;
            }
        }
        let result = capture(&shared).await;
        let failing = match &result {
            Err(e) => Some(words::chain(e)),
            Ok((_, problems)) if !problems.is_empty() => Some(problems.join("; ")),
            Ok(_) => None,
        };
        let was_failing = std::mem::replace(
            &mut *shared
                .capture_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            failing.clone(),
        );
        match (result, failing) {
            (Ok((n, problems)), _) => {
                if !problems.is_empty()
                    && was_failing.as_deref() != Some(problems.join("; ").as_str())
                {
                    tracing::warn!(problems = %problems.join("; "), "some tracked tables are not synced");
                }
                if n > 0 {
                    prune(&shared).await;
                }
            }
            (Err(_), Some(error)) => {
                // Once per distinct failure, not every retry.
                if was_failing.as_deref() != Some(error.as_str()) {
                    tracing::warn!(%error, "capture failed; local writes wait until it succeeds; will retry");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (Err(_), None) => {}
        }
    }
}

/// Keeps the change log within the retention limit: after every capture that logged
/// something, and every few seconds for what sessions apply.
async fn prune_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        prune(&shared).await;
    }
}

async fn prune(shared: &Arc<Shared>) {
    let keep = shared.config.sync.retention_changes;
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || lock(&store).prune_log(keep)).await {
        Ok(Ok(n)) if n > 0 => tracing::info!(pruned = n, keep, "pruned the change log"),
        Ok(Err(e)) => tracing::warn!(error = %words::chain(&e), "pruning the change log failed"),
        _ => {}
    }
}

struct Lag {
    changes: u64,
    seconds: f64,
    behind: bool,
}

fn lag_of(
    reader: &mut Option<Box<dyn LogRead>>,
    held: &VersionVector,
    peer_holds: &VersionVector,
) -> Lag {
    let changes = held.count_missing_in(peer_holds);
    if changes == 0 {
        return Lag {
            changes,
            seconds: 0.0,
            behind: false,
        };
    }
    let Some(reader) = reader.as_mut() else {
        return Lag {
            changes,
            seconds: 0.0,
            behind: false,
        };
    };
    match reader
        .start_for(peer_holds)
        .and_then(|after| reader.first_missing_hlc(after, peer_holds))
    {
        Ok(first) => {
            let seconds = first
                .map(|hlc| (wall_ms().saturating_sub(hlc.millis())) as f64 / 1000.0)
                .unwrap_or(0.0);
            Lag {
                changes,
                seconds,
                behind: false,
            }
        }
        Err(StoreError::Pruned { .. }) => Lag {
            changes,
            seconds: 0.0,
            behind: true,
        },
        Err(_) => Lag {
            changes,
            seconds: 0.0,
            behind: false,
        },
    }
}

pub(crate) async fn status(shared: &Arc<Shared>) -> NodeStatus {
    let s = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut status_reader = s.status_reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Status must answer while the store is busy (a large transaction holds it for
        // as long as it streams in): after a short wait it reports what the store last
        // said. A capture or a batch holds it for milliseconds, so status is fresh then.
        let (held, log_entries, conflicts, failures, failures_by_origin, capture) = {
            let mut last = s.last_store_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match lock_briefly(&s.store) {
                Ok(mut store) => {
                    if status_reader.is_none() {
                        *status_reader = store.log_reader().ok();
                    }
                    let records = store.failures().unwrap_or_default();
                    *last = StoreState {
                        held: store.version_vector().clone(),
                        log_entries: store.log_len().unwrap_or(0),
                        conflicts: store.conflict_count().unwrap_or(0),
                        failures: records.len() as u64,
                        failures_by_origin: failures_by_origin(&records),
                        capture: store.capture_state(),
                    };
                }
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    let mut store = poisoned.into_inner();
                    last.held = store.version_vector().clone();
                    last.log_entries = store.log_len().unwrap_or(0);
                }
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            (last.held.clone(), last.log_entries, last.conflicts, last.failures, last.failures_by_origin.clone(), last.capture.clone())
        };
        if let Some(lag) = capture.lag_bytes {
            s.counters.capture_lag_bytes.set(lag as f64);
        }
        let link_failures = s.link_failures.load().unwrap_or_else(|e| {
            tracing::warn!(error = %crate::words::chain(&e), "reading the link failures");
            Vec::new()
        });
        let failures = failures + link_failures.iter().map(|e| e.changes()).sum::<u64>();
        let reader = &mut *status_reader;
        let peers: Vec<PeerStatus> = s
            .peers
            .iter()
            .map(|p| {
                let (link, last_error, last_event, session_s, holds, node, schema_not_added) = {
                    let rt = p.runtime();
                    (
                        rt.link.clone(),
                        rt.last_error.clone(),
                        rt.last_event.clone(),
                        rt.session_since.map(|t| t.elapsed().as_secs()),
                        rt.holds.clone(),
                        rt.node,
                        rt.schema_not_added.clone(),
                    )
                };
                let mut set_aside = node.and_then(|n| failures_by_origin.get(&n)).cloned().unwrap_or_default();
                crate::status::add_link_failures(&mut set_aside, &p.config.name, &link_failures);
                let lag = match &holds {
                    Some(h) => lag_of(reader, &held, h),
                    None => Lag { changes: held.count_missing_in(&VersionVector::new()), seconds: 0.0, behind: false },
                };
                if lag.behind {
                    tracing::warn!(peer = %p.config.name, "peer is behind the retention limit and needs a snapshot");
                }
                p.counters.lag_changes.set(lag.changes as f64);
                let incoming = holds.as_ref().map_or(0, |h| h.count_missing_in(&held));
                p.counters.incoming_changes.set(incoming as f64);
                p.counters.lag_seconds.set(lag.seconds);
                p.counters.behind_retention.set(if lag.behind { 1.0 } else { 0.0 });
                PeerStatus {
                    name: p.config.name.clone(),
                    fingerprint: p.config.fingerprint.to_string(),
                    address: p.config.address.clone(),
                    state: link.name().to_owned(),
                    last_error,
                    last_event,
                    session_s,
                    lag_changes: lag.changes,
                    incoming_changes: incoming,
                    lag_seconds: lag.seconds,
                    behind_retention: lag.behind,
                    sent: p.counters.sent.get(),
                    received: p.counters.received.get(),
                    applied: p.counters.applied.get(),
                    set_aside: p.counters.set_aside.get(),
                    conflicts: p.counters.conflicts.get(),
                    snapshot_rows_sent: p.counters.snapshot_rows_sent.get(),
                    snapshot_rows_received: p.counters.snapshot_rows_received.get(),
                    reconcile_bytes: p.counters.reconcile_bytes.get(),
                    bytes_sent: p.counters.bytes_sent.get(),
                    bytes_received: p.counters.bytes_received.get(),
                    errors: p.counters.errors.get(),
                    failures: set_aside.count,
                    last_failure: set_aside.latest.map(|(_, why)| why),
                    schema_not_added,
                }
            })
            .collect();
        NodeStatus {
            name: s.config.node.name.clone(),
            node_id: s.node_id.to_string(),
            fingerprint: s.fingerprint.to_string(),
            listen: s.listen.map(|a| a.to_string()),
            store: if s.config.store.relay { "relay".into() } else { s.store_location.clone() },
            holds: held.iter().map(|(o, &seq)| OriginHeld { origin: o.to_string(), seq }).collect(),
            log_entries,
            captured: held.get(&s.node_id),
            conflicts,
            failures,
            uptime_s: s.started.elapsed().as_secs(),
            peers,
            refused: s.refused.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default(),
            capture_error: s.capture_error.lock().map(|e| e.clone()).unwrap_or_default(),
            capture: match (&capture.method, &capture.note) {
                (method, _) if method.is_empty() => String::new(),
                (method, Some(note)) => format!("{method} ({note})"),
                (method, None) => method.clone(),
            },
            capture_lag_bytes: capture.lag_bytes,
        }
    })
    .await;
    result.unwrap_or_else(|e| NodeStatus {
        name: shared.config.node.name.clone(),
        node_id: shared.node_id.to_string(),
        fingerprint: shared.fingerprint.to_string(),
        listen: None,
        store: format!("status failed: {e}"),
        holds: Vec::new(),
        log_entries: 0,
        captured: 0,
        conflicts: 0,
        failures: 0,
        uptime_s: 0,
        peers: Vec::new(),
        refused: Vec::new(),
        capture_error: None,
        capture: String::new(),
        capture_lag_bytes: None,
    })
}

/// `/health`: every configured peer should have a session up. A peer this node dials
/// is missing while the dial fails or is being retried; a peer that dials in is missing
/// until it has dialed, and again once its session ends. Concord cannot tell a peer
/// that is down from one not started yet, so both count as missing.
pub(crate) fn health(shared: &Shared) -> Health {
    let missing: Vec<MissingPeer> = shared
        .peers
        .iter()
        .filter_map(|p| {
            let rt = p.runtime();
            if matches!(rt.link, Link::Connected) {
                return None;
            }
            Some(MissingPeer {
                name: p.config.name.clone(),
                link: if p.config.address.is_some() {
                    "dials"
                } else {
                    "dials_in"
                }
                .into(),
                state: rt.link.name().into(),
                last_error: rt.last_error.clone(),
            })
        })
        .collect();
    let capture_error = shared
        .capture_error
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    Health {
        status: if capture_error.is_some() {
            "capture_failing"
        } else if missing.is_empty() {
            "ok"
        } else {
            "missing_peers"
        }
        .into(),
        missing,
        capture_error,
    }
}

pub(crate) async fn metrics_text(shared: &Arc<Shared>) -> String {
    // Lag gauges are computed on demand.
    let _ = status(shared).await;
    shared.recorder.handle().render()
}
