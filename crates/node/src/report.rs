//! What a person reads about a node: `/v1/status` (store counts, capture, each peer's
//! link and lag), `/health` and the Prometheus metrics. Status never waits long for a
//! busy store: it reports the counts it last read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_core::VersionVector;
use concord_store::{LogRead, Store, StoreError};

use crate::shared::{Link, Shared, StoreState, wall_ms};
use crate::status::{Health, MissingPeer, NodeStatus, OriginHeld, PeerStatus, failures_by_origin};

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
