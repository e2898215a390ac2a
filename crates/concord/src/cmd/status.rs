//! `concord status`: ask a running node how it is doing.

use std::path::PathBuf;

use anyhow::Context;
use concord_node::{NodeConfig, NodeStatus};

/// Show a running node's peers: connection state, lag (changes and seconds), changes
/// sent, received and applied, conflicts, and the last error of each; as a table or
/// with --json.
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

/// The status as people read it: a header and a table of peers.
pub(crate) fn render(status: &NodeStatus) -> String {
    let mut out = format!(
        "node {} ({})  fingerprint {}\nstore {}  log {} entries  captured {}  conflicts {}  set aside {}\n",
        status.name,
        &status.node_id[..8.min(status.node_id.len())],
        status.fingerprint,
        status.store,
        status.log_entries,
        status.captured,
        status.conflicts,
        status.failures,
    );
    let mut rows = vec![
        [
            "PEER",
            "STATE",
            "LAG",
            "INCOMING",
            "SENT",
            "RECEIVED",
            "APPLIED",
            "CONFLICTS",
            "LAST ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &status.peers {
        let lag = if p.behind_retention {
            format!("{} (behind retention)", p.lag_changes)
        } else {
            format!("{} / {:.1}s", p.lag_changes, p.lag_seconds)
        };
        rows.push(vec![
            p.name.clone(),
            p.state.clone(),
            lag,
            p.incoming_changes.to_string(),
            p.sent.to_string(),
            p.received.to_string(),
            p.applied.to_string(),
            p.conflicts.to_string(),
            p.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&super::info::table(&rows));
    for refused in &status.refused {
        out.push_str(&format!("refused: {refused}\n"));
    }
    out
}
