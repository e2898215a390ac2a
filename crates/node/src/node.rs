//! The node: starting its store, listeners and background tasks, and stopping them.
//!
//! What the tasks share is [`crate::shared`]; the sessions' connections are
//! [`crate::connections`], local capture and pruning [`crate::capture_loop`], and what
//! a person reads about the node (status, `/health`, metrics) [`crate::report`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_core::NodeId;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::capture_loop::{capture, capture_loop, prune_loop, start_watcher};
use crate::config::NodeConfig;
use crate::connections::{ServerTls, accept_loop, dial_loop};
use crate::error::NodeError;
use crate::identity::{Fingerprint, Identity};
use crate::report::{health, metrics_text, status};
use crate::shared::{Link, Peer, PeerRuntime, Shared, StoreState};
use crate::status::{Health, NodeCounters, NodeStatus, PeerCounters};
use crate::tls;
use crate::words;

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
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
