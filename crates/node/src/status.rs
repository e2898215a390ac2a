//! What a node reports about itself: the `/v1/status` document and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusRecorder;
use serde::{Deserialize, Serialize};

/// The node as a whole.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Configured name.
    pub name: String,
    /// The store's node id (origin of its changes).
    pub node_id: String,
    /// This node's certificate fingerprint, which peers pin.
    pub fingerprint: String,
    /// Listening address for peers, if any.
    pub listen: Option<String>,
    /// The store: a SQLite path, or `relay`.
    pub store: String,
    /// What the store holds from each origin.
    pub holds: Vec<OriginHeld>,
    /// Entries in the change log.
    pub log_entries: u64,
    /// Local changes captured since the node started.
    pub captured: u64,
    /// Conflicts recorded in the store.
    pub conflicts: u64,
    /// Changes set aside because they could not be applied.
    pub failures: u64,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Configured peers.
    pub peers: Vec<PeerStatus>,
    /// Recent refused connections (unknown identities, failed handshakes).
    pub refused: Vec<String>,
}

/// One origin's highest sequence number held.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OriginHeld {
    /// Origin node id.
    pub origin: String,
    /// Highest sequence number held.
    pub seq: u64,
}

/// One configured peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Configured name.
    pub name: String,
    /// Pinned fingerprint.
    pub fingerprint: String,
    /// Address dialed, if this node dials.
    pub address: Option<String>,
    /// `connected`, `connecting`, `retrying`, or `waiting` (for the peer to dial).
    pub state: String,
    /// Why the last session ended, if it did.
    pub last_error: Option<String>,
    /// Changes this node holds that the peer is not known to hold.
    pub lag_changes: u64,
    /// Changes the peer holds that this node does not, as of the peer's last report:
    /// what remains of a catch-up or of an initial load from this peer.
    #[serde(default)]
    pub incoming_changes: u64,
    /// Age of the oldest change the peer lacks, in seconds.
    pub lag_seconds: f64,
    /// The peer needs changes no longer in the log (pruned past the retention limit).
    pub behind_retention: bool,
    /// Changes sent to the peer.
    pub sent: u64,
    /// Changes received from the peer.
    pub received: u64,
    /// Received changes that were new here and applied.
    pub applied: u64,
    /// Received changes set aside because they could not be applied.
    pub set_aside: u64,
    /// Conflicts recorded while applying the peer's changes.
    pub conflicts: u64,
    /// Bytes sent to and received from the peer.
    pub bytes_sent: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
    /// Sessions that ended with an error.
    pub errors: u64,
}

/// A counter kept both as a number (for status) and as a Prometheus metric.
pub(crate) struct Count {
    value: AtomicU64,
    metric: Counter,
}

impl Count {
    fn new(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Self {
        let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        Self {
            value: AtomicU64::new(0),
            metric: recorder.register_counter(&Key::from_parts(name, labels), &metadata),
        }
    }

    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.metric.increment(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

pub(crate) fn gauge(
    recorder: &PrometheusRecorder,
    name: &'static str,
    labels: Vec<Label>,
) -> Gauge {
    let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
    recorder.register_gauge(&Key::from_parts(name, labels), &metadata)
}

/// Node-wide counters.
pub(crate) struct NodeCounters {
    pub(crate) captured: Count,
    pub(crate) conflicts: Count,
}

impl NodeCounters {
    pub(crate) fn new(recorder: &PrometheusRecorder) -> Self {
        Self {
            captured: Count::new(recorder, "concord_changes_captured_total", vec![]),
            conflicts: Count::new(recorder, "concord_conflicts_total", vec![]),
        }
    }
}

/// Per-peer counters and gauges.
pub(crate) struct PeerCounters {
    pub(crate) sent: Count,
    pub(crate) received: Count,
    pub(crate) applied: Count,
    pub(crate) set_aside: Count,
    pub(crate) conflicts: Count,
    pub(crate) bytes_sent: Count,
    pub(crate) bytes_received: Count,
    pub(crate) errors: Count,
    pub(crate) connected: Gauge,
    pub(crate) lag_changes: Gauge,
    pub(crate) incoming_changes: Gauge,
    pub(crate) lag_seconds: Gauge,
    pub(crate) behind_retention: Gauge,
}

impl PeerCounters {
    pub(crate) fn new(recorder: &PrometheusRecorder, peer: &str) -> Self {
        let l = || vec![Label::new("peer", peer.to_owned())];
        Self {
            sent: Count::new(recorder, "concord_changes_sent_total", l()),
            received: Count::new(recorder, "concord_changes_received_total", l()),
            applied: Count::new(recorder, "concord_changes_applied_total", l()),
            set_aside: Count::new(recorder, "concord_changes_set_aside_total", l()),
            conflicts: Count::new(recorder, "concord_peer_conflicts_total", l()),
            bytes_sent: Count::new(recorder, "concord_bytes_sent_total", l()),
            bytes_received: Count::new(recorder, "concord_bytes_received_total", l()),
            errors: Count::new(recorder, "concord_session_errors_total", l()),
            connected: gauge(recorder, "concord_peer_connected", l()),
            lag_changes: gauge(recorder, "concord_peer_lag_changes", l()),
            incoming_changes: gauge(recorder, "concord_peer_incoming_changes", l()),
            lag_seconds: gauge(recorder, "concord_peer_lag_seconds", l()),
            behind_retention: gauge(recorder, "concord_peer_behind_retention", l()),
        }
    }
}
