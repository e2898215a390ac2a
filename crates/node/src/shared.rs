//! What a node's tasks share: the store behind its lock, the configured peers and what
//! is known of each (link state, what it holds, its session's reconciliations), counters
//! and the records status reads. Sessions, the accept and dial loops, the capture loop
//! and status all work on a [`Shared`]; none of them owns another.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use concord_core::{Change, NodeId, VersionVector};
use concord_store::{LogRead, Store};
use metrics_exporter_prometheus::PrometheusRecorder;
use tokio::sync::watch;

use crate::config::{NodeConfig, PeerConfig};
use crate::identity::Fingerprint;
use crate::session_error::SessionError;
use crate::status::{NodeCounters, OriginFailures, PeerCounters, Refused};

/// Connection state of a peer.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    Waiting,
    Connecting,
    Connected,
    Retrying,
}

impl Link {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Link::Waiting => "waiting",
            Link::Connecting => "connecting",
            Link::Connected => "connected",
            Link::Retrying => "retrying",
        }
    }
}

#[derive(Debug)]
pub(crate) struct PeerRuntime {
    pub(crate) link: Link,
    pub(crate) active: bool,
    pub(crate) last_error: Option<String>,
    /// The last change of the link that was not an error.
    pub(crate) last_event: Option<String>,
    /// When the current session was established.
    pub(crate) session_since: Option<Instant>,
    /// What the peer is known to hold: its Hello, its acknowledgements, and the changes
    /// it sent (it holds what it sends).
    pub(crate) holds: Option<VersionVector>,
    pub(crate) node: Option<NodeId>,
    pub(crate) last_seen: Option<Instant>,
    /// The last column or table the peer's changes named that was not added here
    /// (`propagate_schema`), and why.
    pub(crate) schema_not_added: Option<String>,
}

/// A configured peer and what is known of it.
pub(crate) struct Peer {
    pub(crate) config: PeerConfig,
    pub(crate) counters: PeerCounters,
    pub(crate) runtime: Mutex<PeerRuntime>,
    /// The running session's reconciliations, for `/v1/verify`.
    pub(crate) reconciles: Mutex<Option<Arc<crate::reconcile::link::Link>>>,
}

impl Peer {
    /// The running session's reconciliation link, if a session is up.
    pub(crate) fn reconciles(&self) -> Option<Arc<crate::reconcile::link::Link>> {
        self.reconciles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_reconciles(&self, link: Option<Arc<crate::reconcile::link::Link>>) {
        *self
            .reconciles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = link;
    }

    pub(crate) fn runtime(&self) -> std::sync::MutexGuard<'_, PeerRuntime> {
        self.runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims the peer for a new session; false if one is already running.
    pub(crate) fn try_activate(&self) -> bool {
        let mut rt = self.runtime();
        if rt.active {
            return false;
        }
        rt.active = true;
        true
    }

    pub(crate) fn finished(&self, result: &Result<(), SessionError>, dials: bool) {
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

/// The store's counts as status last read them.
#[derive(Default)]
pub(crate) struct StoreState {
    pub(crate) held: VersionVector,
    pub(crate) log_entries: u64,
    pub(crate) conflicts: u64,
    pub(crate) failures: u64,
    /// The set-aside changes by origin, for the rows of the peers they came from.
    pub(crate) failures_by_origin: HashMap<NodeId, OriginFailures>,
    pub(crate) capture: concord_store::CaptureState,
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
    pub(crate) watch_paths: Vec<PathBuf>,
    /// The log reader status uses for lag, kept between calls (for servers, it is a
    /// connection).
    pub(crate) status_reader: Mutex<Option<Box<dyn LogRead>>>,
    /// What the store last reported to status.
    pub(crate) last_store_state: Mutex<StoreState>,
    pub(crate) node_id: NodeId,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) peers: Vec<Arc<Peer>>,
    pub(crate) counters: NodeCounters,
    pub(crate) recorder: PrometheusRecorder,
    /// Bumped after every capture or apply that logged something.
    pub(crate) log_changed: watch::Sender<u64>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) refused: Mutex<VecDeque<Refused>>,
    /// Why the last capture failed, until one succeeds.
    pub(crate) capture_error: Mutex<Option<String>>,
    /// Configured tables the node could not track at start, in words.
    pub(crate) setup_problems: Vec<String>,
    pub(crate) started: Instant,
    pub(crate) listen: Option<SocketAddr>,
}

/// Refused connections kept for status (the most recent identities or reasons).
const REFUSED_KEPT: usize = 20;

impl Shared {
    /// Records a refused connection: once per identity (or per reason, when the other
    /// side presented no certificate), with a count, so a node retrying every few
    /// seconds neither floods the list nor pushes others out.
    pub(crate) fn refuse(
        &self,
        address: SocketAddr,
        fingerprint: Option<Fingerprint>,
        reason: String,
    ) {
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

pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The store's lock. A panic while holding it cannot leave the store inconsistent
/// (every write is a transaction), so a poisoned lock is still usable.
pub(crate) fn lock(store: &Mutex<Box<dyn Store>>) -> std::sync::MutexGuard<'_, Box<dyn Store>> {
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
