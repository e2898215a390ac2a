//! What a running node says about itself (`GET /v1/status`), and waiting for it.
//!
//! Why here: every fault test polls the same endpoint for the same things (which
//! sessions are connected, which sequence of each origin a node holds, its node id),
//! and waits the same way: poll, give up after a bound, and on giving up report what
//! was seen last, so that a failure says where the nodes were stuck. The reading is
//! lenient (a node being restarted answers nothing; that is an `Err` to show, not a
//! panic), the judging stays in the tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord_core::NodeId;

use crate::run::Control;

/// `GET /v1/status`, or why not.
pub fn status(http: SocketAddr) -> Result<serde_json::Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{http}/v1/status");
    agent
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?
        .body_mut()
        .read_json()
        .map_err(|e| format!("GET {url}: {e}"))
}

/// Origin -> sequence held, leaving out origins with nothing.
pub fn holds(status: &serde_json::Value) -> BTreeMap<String, u64> {
    status["holds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h["origin"].as_str()?.to_owned(), h["seq"].as_u64()?)))
        .filter(|(_, seq)| *seq > 0)
        .collect()
}

/// Every peer session as `"name"="state" (last error: ...)`, comma-separated.
pub fn peer_summary(status: &serde_json::Value) -> String {
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}={} (last error: {})",
                p["name"], p["state"], p["last_error"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status of every node, in order.
pub fn all(https: impl IntoIterator<Item = SocketAddr>) -> Vec<Result<serde_json::Value, String>> {
    https.into_iter().map(status).collect()
}

/// [`holds`] of each status, or why there is none.
pub fn holds_of(
    statuses: &[Result<serde_json::Value, String>],
) -> Vec<Result<BTreeMap<String, u64>, String>> {
    statuses
        .iter()
        .map(|s| s.as_ref().map(holds).map_err(Clone::clone))
        .collect()
}

/// [`peer_summary`] of each status, or why there is none.
pub fn peers_of(statuses: &[Result<serde_json::Value, String>]) -> Vec<String> {
    statuses
        .iter()
        .map(|s| s.as_ref().map_or_else(Clone::clone, peer_summary))
        .collect()
}

/// The peer summary of the node at `http`, or why there is none.
pub fn peers(http: SocketAddr) -> String {
    status(http).map_or_else(|e| e, |s| peer_summary(&s))
}

/// The node id the node at `http` reports: the origin of the changes it captures.
pub fn node_id(http: SocketAddr) -> Result<NodeId, String> {
    let s = status(http)?;
    let id = s["node_id"]
        .as_str()
        .ok_or_else(|| format!("{http}: no node_id in {s}"))?;
    id.parse()
        .map_err(|e| format!("{http}: node_id {id:?}: {e}"))
}

/// Polls `observe` every `every` until `done` holds of what it saw, for at most
/// `within`: `Ok` with the last observation and the time it took, or `Err` with the
/// last observation once the time is up.
pub fn poll<T>(
    within: Duration,
    every: Duration,
    mut observe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> Result<(T, Duration), T> {
    let start = Instant::now();
    loop {
        let seen = observe();
        if done(&seen) {
            return Ok((seen, start.elapsed()));
        }
        if start.elapsed() > within {
            return Err(seen);
        }
        std::thread::sleep(every);
    }
}

/// Waits, at most `within`, until every node `i` (its status at `https[i]`) reports
/// `sessions(i)` sessions connected: the time it took, or each node's peer summary.
pub fn wait_all_connected(
    https: &[SocketAddr],
    sessions: impl Fn(usize) -> usize,
    within: Duration,
    every: Duration,
) -> Result<Duration, Vec<String>> {
    poll(
        within,
        every,
        || https.iter().map(|&h| peers(h)).collect::<Vec<String>>(),
        |states| {
            states
                .iter()
                .enumerate()
                .all(|(i, s)| s.matches("\"connected\"").count() == sessions(i))
        },
    )
    .map(|(_, took)| took)
}

/// Waits, at most `within` (less if the run stops), until the node at `http` reports
/// its session with `peer` connected; whether it did.
pub fn wait_connected(control: &Control, http: SocketAddr, peer: &str, within: Duration) -> bool {
    let peer = format!("\"{peer}\"=\"connected\"");
    let end = Instant::now() + within;
    while Instant::now() < end && !control.stopped() {
        if status(http).is_ok_and(|s| peer_summary(&s).contains(&peer)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
