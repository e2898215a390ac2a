//! What a node reports about itself: the `/v1/status` document, `/health` and the
//! metrics.
//!
//! Status must be something a person can trust when comparing two ends of a link or a
//! node before and after a restart, so every figure says what it counts from:
//!
//! - node-wide figures (`captured`, `conflicts`, `failures`, `holds`, `log_entries`)
//!   come from the store, so they survive restarts and agree with what the store holds;
//! - a peer's traffic figures (`sent`, `received`, `applied`, ...) count the current
//!   session (or the last one, until the next begins): both ends of a link start them
//!   at the Hello, so they agree whichever end restarted;
//! - a peer's `errors` counts since this process started (`uptime_s`);
//! - a peer's `failures` and `last_failure` are the changes of that peer (by origin)
//!   set aside in the store and still waiting, so a person sees on the peer's row why
//!   its writes are not arriving, after a restart too; plus the source transactions
//!   the link did not carry either way (withheld from or by that peer because the
//!   mapping cannot convert them, `link-failures.json`), which the node-wide `failures`
//!   counts too.
//!
//! The Prometheus counters are process-lifetime counters (Prometheus handles restarts),
//! and each carries a `# HELP` line saying what it counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_core::NodeId;
use concord_store::FailureRecord;
use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder};
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
    /// This node's own changes held in the store: everything it ever captured from its
    /// database (its own entry in the version vector), not only since this process
    /// started.
    pub captured: u64,
    /// Conflicts recorded in the store.
    pub conflicts: u64,
    /// Changes set aside because they could not be applied, as recorded in the store,
    /// plus the changes of transactions a link withheld either way because its mapping
    /// cannot convert them (`link-failures.json`); `concord failures` lists both.
    pub failures: u64,
    /// Seconds since this process started.
    pub uptime_s: u64,
    /// Configured peers.
    pub peers: Vec<PeerStatus>,
    /// Recent refused connections (unknown identities, failed handshakes), one entry
    /// per identity (or per address and reason when no certificate was presented).
    pub refused: Vec<Refused>,
    /// Why capturing this node's own writes is failing, while it is (local writes wait
    /// until it succeeds), or which tracked tables are not synced (a table gone, or
    /// changed in a way Concord cannot follow). `None` when all is well.
    #[serde(default)]
    pub capture_error: Option<String>,
    /// How local writes are captured: `triggers` or `write-ahead log`, with why or
    /// what to change for the faster one.
    #[serde(default)]
    pub capture: String,
    /// Bytes of the database's log not read by capture yet (log-based capture: what its
    /// replication slot keeps on the server's disk).
    #[serde(default)]
    pub capture_lag_bytes: Option<u64>,
}

/// One origin's highest sequence number held.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OriginHeld {
    /// Origin node id.
    pub origin: String,
    /// Highest sequence number held.
    pub seq: u64,
}

/// A connection this node refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Refused {
    /// The certificate fingerprint the other side presented, if it presented one: add
    /// it to a `[[peers]]` entry to let that node in.
    pub fingerprint: Option<String>,
    /// Where the last such connection came from.
    pub address: String,
    /// Why it was refused.
    pub reason: String,
    /// How many such connections were refused since this process started.
    pub times: u64,
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
    /// Why the last session failed, if it did. An orderly close (either side shutting
    /// down) is not an error: it shows in `last_event`.
    pub last_error: Option<String>,
    /// The last change of the link that was not an error (a session established, a
    /// peer that shut down), in words.
    #[serde(default)]
    pub last_event: Option<String>,
    /// Seconds the current session has been up; none while there is none.
    #[serde(default)]
    pub session_s: Option<u64>,
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
    /// Changes sent to the peer in the current (or last) session.
    pub sent: u64,
    /// Changes received from the peer in the current (or last) session.
    pub received: u64,
    /// Received changes that were new here and applied, in the current (or last)
    /// session.
    pub applied: u64,
    /// Received changes set aside because they could not be applied, in the current
    /// (or last) session, plus the changes of source transactions withheld on this link
    /// either way because its mapping cannot convert them (sent to the peer's as
    /// `Withheld`, or announced by the peer so).
    pub set_aside: u64,
    /// Conflicts recorded while applying the peer's changes, in the current (or last)
    /// session.
    pub conflicts: u64,
    /// Rows' states sent to the peer in snapshots (because it needed changes no longer
    /// in the log), in the current (or last) session.
    #[serde(default)]
    pub snapshot_rows_sent: u64,
    /// Rows' states received from the peer in snapshots, in the current (or last)
    /// session.
    #[serde(default)]
    pub snapshot_rows_received: u64,
    /// Bytes of range-reconciliation messages sent and received to find which rows to
    /// send the peer instead of a whole snapshot, in the current (or last) session.
    #[serde(default)]
    pub reconcile_bytes: u64,
    /// Bytes sent to the peer in the current (or last) session.
    pub bytes_sent: u64,
    /// Bytes received from the peer in the current (or last) session.
    pub bytes_received: u64,
    /// Sessions that ended with an error since this process started.
    pub errors: u64,
    /// Changes written at this peer (their origin is the peer's node) that are set aside
    /// in the store, waiting to be retried or discarded (`concord failures` lists them),
    /// plus the changes of transactions withheld on this link either way because its
    /// mapping cannot convert them. Counted from the store and the data directory, not
    /// the session; the set-aside part is known once the peer has said hello since this
    /// process started.
    #[serde(default)]
    pub failures: u64,
    /// Why the most recent of those changes was set aside.
    #[serde(default)]
    pub last_failure: Option<String>,
    /// With `propagate_schema` on the link: the last column or table this peer's
    /// changes named that was not added here, and why (its changes are set aside, where
    /// `concord failures` lists them), since the node started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_not_added: Option<String>,
}

/// The changes of one origin set aside in the store, as its peer's row shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OriginFailures {
    /// How many are waiting.
    pub(crate) count: u64,
    /// When the latest was set aside (ms since the epoch) and why.
    pub(crate) latest: Option<(u64, String)>,
}

/// Adds a peer's link failures (withheld either way) to what its row shows.
pub(crate) fn add_link_failures(
    peer: &mut OriginFailures,
    name: &str,
    entries: &[crate::link_failures::LinkFailure],
) {
    for entry in entries.iter().filter(|e| e.peer == name) {
        peer.count += entry.changes();
        if peer
            .latest
            .as_ref()
            .is_none_or(|(at, _)| entry.at_ms >= *at)
        {
            peer.latest = Some((entry.at_ms, entry.reason.clone()));
        }
    }
}

/// Groups the store's set-aside changes by origin. A record whose origin does not read
/// as a node id (a store bug) is left out here; `concord failures` still lists it.
pub(crate) fn failures_by_origin(records: &[FailureRecord]) -> HashMap<NodeId, OriginFailures> {
    let mut by_origin: HashMap<NodeId, OriginFailures> = HashMap::new();
    for record in records {
        let Ok(origin) = record.origin.parse::<NodeId>() else {
            continue;
        };
        let entry = by_origin.entry(origin).or_default();
        entry.count += 1;
        // Records come in the order they were set aside: a later one wins a tie.
        if entry
            .latest
            .as_ref()
            .is_none_or(|(at, _)| record.at_ms >= *at)
        {
            entry.latest = Some((record.at_ms, record.error.clone()));
        }
    }
    by_origin
}

/// The `/health` document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// `ok`; `capture_failing` while this node cannot capture its own writes; otherwise
    /// `missing_peers` when a configured peer has no session up.
    pub status: String,
    /// Configured peers with no session up.
    pub missing: Vec<MissingPeer>,
    /// Why capture is failing, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_error: Option<String>,
}

/// A configured peer with no session up, as `/health` names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingPeer {
    /// Configured name.
    pub name: String,
    /// `dials` if this node dials the peer (then the dial is failing), `dials_in` if
    /// the peer is expected to dial this node (then it has not, or its session ended).
    pub link: String,
    /// The peer's state, as in status.
    pub state: String,
    /// Why the last session failed, if it did.
    pub last_error: Option<String>,
}

/// A counter kept both as a number for status (which a session resets) and as a
/// Prometheus counter (which only grows while the process runs).
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

    /// Starts the status figure again (a new session); the metric keeps growing.
    pub(crate) fn reset(&self) {
        self.value.store(0, Ordering::Relaxed);
    }
}

/// Every metric the node exports, with the `# HELP` text that says what it counts.
const METRICS: &[(&str, Kind, &str)] = &[
    (
        "concord_changes_captured_total",
        Kind::Counter,
        "Changes captured from the local database since this process started.",
    ),
    (
        "concord_capture_lag_bytes",
        Kind::Gauge,
        "Bytes of the database's write-ahead log capture has not read yet (log-based capture on PostgreSQL; the replication slot keeps them on the server).",
    ),
    (
        "concord_conflicts_total",
        Kind::Counter,
        "Conflicts recorded while applying peers' changes since this process started.",
    ),
    (
        "concord_changes_sent_total",
        Kind::Counter,
        "Changes sent to the peer since this process started.",
    ),
    (
        "concord_changes_received_total",
        Kind::Counter,
        "Changes received from the peer since this process started.",
    ),
    (
        "concord_changes_applied_total",
        Kind::Counter,
        "Received changes that were new here and applied, since this process started.",
    ),
    (
        "concord_changes_set_aside_total",
        Kind::Counter,
        "Received changes set aside because they could not be applied, and changes withheld on the link either way because its mapping cannot convert them, since this process started.",
    ),
    (
        "concord_peer_conflicts_total",
        Kind::Counter,
        "Conflicts recorded while applying the peer's changes since this process started.",
    ),
    (
        "concord_snapshot_rows_sent_total",
        Kind::Counter,
        "Rows' states sent to the peer in snapshots (it needed changes no longer in the log) since this process started.",
    ),
    (
        "concord_snapshot_rows_received_total",
        Kind::Counter,
        "Rows' states received from the peer in snapshots since this process started.",
    ),
    (
        "concord_reconcile_bytes_total",
        Kind::Counter,
        "Bytes of range-reconciliation messages exchanged to find the rows the peer lacks since this process started.",
    ),
    (
        "concord_bytes_sent_total",
        Kind::Counter,
        "Bytes sent to the peer since this process started.",
    ),
    (
        "concord_bytes_received_total",
        Kind::Counter,
        "Bytes received from the peer since this process started.",
    ),
    (
        "concord_session_errors_total",
        Kind::Counter,
        "Sessions with the peer that ended with an error since this process started.",
    ),
    (
        "concord_peer_connected",
        Kind::Gauge,
        "1 while a session with the peer is up, else 0.",
    ),
    (
        "concord_peer_lag_changes",
        Kind::Gauge,
        "Changes this node holds that the peer is not known to hold.",
    ),
    (
        "concord_peer_incoming_changes",
        Kind::Gauge,
        "Changes the peer holds that this node does not, as of the peer's last report.",
    ),
    (
        "concord_peer_lag_seconds",
        Kind::Gauge,
        "Age in seconds of the oldest change the peer lacks.",
    ),
    (
        "concord_peer_behind_retention",
        Kind::Gauge,
        "1 if the peer needs changes pruned from the log (it needs a snapshot), else 0.",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Gives every metric its description, so `/metrics` has a `# HELP` line for each.
pub(crate) fn describe(recorder: &PrometheusRecorder) {
    for &(name, kind, help) in METRICS {
        let key = KeyName::from_const_str(name);
        match kind {
            Kind::Counter => recorder.describe_counter(key, None, help.into()),
            Kind::Gauge => recorder.describe_gauge(key, None, help.into()),
        }
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
    pub(crate) capture_lag_bytes: Gauge,
    pub(crate) conflicts: Count,
}

impl NodeCounters {
    pub(crate) fn new(recorder: &PrometheusRecorder) -> Self {
        describe(recorder);
        Self {
            captured: Count::new(recorder, "concord_changes_captured_total", vec![]),
            capture_lag_bytes: gauge(recorder, "concord_capture_lag_bytes", vec![]),
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
    pub(crate) snapshot_rows_sent: Count,
    pub(crate) snapshot_rows_received: Count,
    pub(crate) reconcile_bytes: Count,
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
            snapshot_rows_sent: Count::new(recorder, "concord_snapshot_rows_sent_total", l()),
            snapshot_rows_received: Count::new(
                recorder,
                "concord_snapshot_rows_received_total",
                l(),
            ),
            reconcile_bytes: Count::new(recorder, "concord_reconcile_bytes_total", l()),
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

    /// Starts the status figures of a new session.
    pub(crate) fn new_session(&self) {
        for count in [
            &self.sent,
            &self.received,
            &self.applied,
            &self.set_aside,
            &self.conflicts,
            &self.snapshot_rows_sent,
            &self.snapshot_rows_received,
            &self.reconcile_bytes,
            &self.bytes_sent,
            &self.bytes_received,
        ] {
            count.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(origin: &str, at_ms: u64, error: &str) -> FailureRecord {
        FailureRecord {
            origin: origin.into(),
            seq: 1,
            table: "t".into(),
            key: "(1)".into(),
            error: error.into(),
            at_ms,
        }
    }

    #[test]
    fn a_peers_set_aside_changes_are_counted_with_the_latest_reason() {
        let a = NodeId::from_bytes([1; 16]);
        let b = NodeId::from_bytes([2; 16]);
        let records = [
            record(&a.to_string(), 10, "first"),
            record(&b.to_string(), 30, "b's"),
            record(&a.to_string(), 20, "latest"),
            record(&a.to_string(), 5, "older, listed later"),
            record("not a node id", 99, "ignored"),
        ];
        let by_origin = failures_by_origin(&records);
        assert_eq!(by_origin.len(), 2);
        assert_eq!(
            by_origin[&a],
            OriginFailures {
                count: 3,
                latest: Some((20, "latest".into()))
            }
        );
        assert_eq!(by_origin[&b].count, 1);
    }
}
