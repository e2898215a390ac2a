//! `concord status`: ask a running node how it is doing.

use std::path::PathBuf;

use anyhow::Context;
use concord_node::{NodeConfig, NodeStatus};

/// Show a running node's peers: connection state, lag (changes and seconds), changes
/// sent, received and applied in the current session, conflicts, the changes written at
/// each peer that are set aside here (how many, and the latest reason), and the last
/// error or event of each; and the identities it refused; as a table or with --json.
///
/// Asks the node's HTTP endpoint (/v1/status), whose address is in DIR/concord.toml.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The node's data directory.
    #[arg(long)]
    dir: PathBuf,
    /// Print the full status document as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.dir)?;
    let http = config
        .node
        .http
        .context("the node has no `http` address in its [node] section")?;
    let url = format!("http://{http}/v1/status");
    let status: NodeStatus = ureq::get(&url)
        .call()
        .with_context(|| {
            format!(
                "asking {url} (is `concord serve --dir {}` running?)",
                args.dir.display()
            )
        })?
        .body_mut()
        .read_json()
        .context("reading the status document")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The status as people read it: a header, a table of peers, refused identities.
/// The words match the JSON document's field names.
pub(crate) fn render(status: &NodeStatus) -> String {
    let mut out = format!(
        "node {} ({})  fingerprint {}  up {}\n\
         store {}  log {} entries  captured {}  conflicts {}  failures {}\n",
        status.name,
        &status.node_id[..8.min(status.node_id.len())],
        status.fingerprint,
        duration(status.uptime_s as f64),
        status.store,
        status.log_entries,
        status.captured,
        status.conflicts,
        status.failures,
    );
    if !status.capture.is_empty() {
        out.push_str(&format!("capture {}", status.capture));
        if let Some(lag) = status.capture_lag_bytes {
            out.push_str(&format!("  lag {lag} bytes of the server's log"));
        }
        out.push('\n');
    }
    if let Some(error) = &status.capture_error {
        out.push_str(&format!(
            "capture_error: {error} (the local writes it concerns are not sent until it is fixed)\n"
        ));
    }
    let mut rows = vec![
        [
            "PEER",
            "STATE",
            "SESSION",
            "LAG",
            "INCOMING",
            "SENT",
            "RECEIVED",
            "APPLIED",
            "CONFLICTS",
            "SET ASIDE",
            "LAST ERROR / EVENT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &status.peers {
        let lag = if p.behind_retention {
            format!("{} (behind retention)", p.lag_changes)
        } else if p.lag_changes == 0 {
            "0".to_owned()
        } else {
            format!("{} / {}", p.lag_changes, duration(p.lag_seconds))
        };
        let mut last: Vec<String> = match (&p.last_error, &p.last_event) {
            (Some(error), _) => vec![format!("error: {error}")],
            (None, Some(event)) => vec![event.clone()],
            (None, None) => Vec::new(),
        };
        // Why the peer's writes waiting here were set aside: it explains a peer that
        // looks healthy but whose rows do not arrive. After a session error, which is
        // the more urgent.
        if p.failures > 0
            && let Some(why) = &p.last_failure
        {
            last.push(format!("set aside: {why}"));
        }
        let last = if last.is_empty() {
            "-".to_owned()
        } else {
            last.join("; ")
        };
        rows.push(vec![
            p.name.clone(),
            p.state.clone(),
            p.session_s
                .map_or_else(|| "-".into(), |s| duration(s as f64)),
            lag,
            p.incoming_changes.to_string(),
            p.sent.to_string(),
            p.received.to_string(),
            p.applied.to_string(),
            p.conflicts.to_string(),
            p.failures.to_string(),
            last,
        ]);
    }
    out.push_str(&super::info::table(&rows));
    if !status.peers.is_empty() {
        out.push_str(
            "(sent, received, applied and conflicts per peer count the current session, or the last one; \
             set aside counts the peer's changes waiting here, listed by concord failures)\n",
        );
    }
    for p in &status.peers {
        if let Some(why) = &p.schema_not_added {
            out.push_str(&format!("peer {}: schema not followed: {why}\n", p.name));
        }
    }
    for r in &status.refused {
        let who = r
            .fingerprint
            .as_deref()
            .unwrap_or("a node without a certificate");
        let times = if r.times == 1 {
            String::new()
        } else {
            format!(" ({} times)", r.times)
        };
        out.push_str(&format!(
            "refused {who} from {}{times}: {}\n",
            r.address, r.reason
        ));
    }
    out
}

/// Seconds as people write them: `0.4 s`, `7 s`, `4 min 5 s`, `3 h 20 min`.
fn duration(seconds: f64) -> String {
    if seconds < 10.0 {
        let tenths = (seconds * 10.0).round() as u64;
        if tenths.is_multiple_of(10) {
            format!("{} s", tenths / 10)
        } else {
            format!("{}.{} s", tenths / 10, tenths % 10)
        }
    } else if seconds < 60.0 {
        format!("{} s", seconds.round() as u64)
    } else if seconds < 3_600.0 {
        let s = seconds.round() as u64;
        format!("{} min {} s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{} h {} min", m / 60, m % 60)
    }
}

#[cfg(test)]
mod tests {
    use concord_node::PeerStatus;

    use super::*;

    fn peer(failures: u64, last_failure: Option<&str>, last_error: Option<&str>) -> PeerStatus {
        PeerStatus {
            name: "shop".into(),
            fingerprint: "ab".into(),
            address: None,
            state: "connected".into(),
            last_error: last_error.map(str::to_owned),
            last_event: None,
            session_s: Some(5),
            lag_changes: 0,
            incoming_changes: 0,
            lag_seconds: 0.0,
            behind_retention: false,
            sent: 0,
            received: 2,
            applied: 0,
            set_aside: 2,
            conflicts: 0,
            snapshot_rows_sent: 0,
            snapshot_rows_received: 0,
            reconcile_bytes: 0,
            bytes_sent: 0,
            bytes_received: 0,
            errors: 0,
            failures,
            last_failure: last_failure.map(str::to_owned),
            schema_not_added: None,
        }
    }

    fn status(peers: Vec<PeerStatus>) -> NodeStatus {
        NodeStatus {
            name: "office".into(),
            node_id: "0123456789abcdef".into(),
            fingerprint: "cd".into(),
            listen: None,
            store: "office.db".into(),
            holds: Vec::new(),
            log_entries: 0,
            captured: 0,
            conflicts: 0,
            failures: 2,
            uptime_s: 5,
            peers,
            refused: Vec::new(),
            capture_error: None,
            capture: String::new(),
            capture_lag_bytes: None,
        }
    }

    /// The peer's cells under `header` and under LAST ERROR / EVENT.
    fn cells(out: &str, header: &str) -> (String, String) {
        let head = out.lines().find(|l| l.starts_with("PEER")).unwrap();
        let row = out.lines().find(|l| l.starts_with("shop")).unwrap();
        let at = |h: &str| head.find(h).unwrap();
        let cell = row[at(header)..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        (cell, row[at("LAST ERROR")..].trim_end().to_owned())
    }

    #[test]
    fn a_peers_set_aside_changes_show_on_its_row_with_the_latest_reason() {
        let why = "column \"bal\" of type decimal(10,2) cannot hold this real value";
        let (count, last) = cells(
            &render(&status(vec![peer(2, Some(why), None)])),
            "SET ASIDE",
        );
        assert_eq!((count.as_str(), last), ("2", format!("set aside: {why}")));

        // A session error comes first; the count still shows.
        let with_error = status(vec![peer(1, Some(why), Some("connection reset"))]);
        let (count, last) = cells(&render(&with_error), "SET ASIDE");
        assert_eq!(count, "1");
        assert!(
            last.starts_with("error: connection reset; set aside: column"),
            "{last}"
        );

        let (count, last) = cells(&render(&status(vec![peer(0, None, None)])), "SET ASIDE");
        assert_eq!((count.as_str(), last.as_str()), ("0", "-"));
    }
}
