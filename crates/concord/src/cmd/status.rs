//! `concord status`: ask a running node how it is doing.

use std::path::PathBuf;

use anyhow::Context;
use concord_node::{NodeConfig, NodeStatus};

/// Show a running node's peers: connection state, lag (changes and seconds), changes
/// sent, received and applied in the current session, conflicts, and the last error or
/// event of each; and the identities it refused; as a table or with --json.
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
        let last = match (&p.last_error, &p.last_event) {
            (Some(error), _) => format!("error: {error}"),
            (None, Some(event)) => event.clone(),
            (None, None) => "-".into(),
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
            last,
        ]);
    }
    out.push_str(&super::info::table(&rows));
    if !status.peers.is_empty() {
        out.push_str(
            "(sent, received, applied and conflicts per peer count the current session, or the last one)\n",
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
