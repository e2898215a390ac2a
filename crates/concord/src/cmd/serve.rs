//! `concord serve`: run a node.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context;
use concord_node::Node;
use indicatif::{ProgressBar, ProgressStyle};

/// Run the node configured in DIR until interrupted (Ctrl-C or SIGTERM).
///
/// The node captures every write to its tracked tables, syncs with its peers over
/// mutual TLS, and serves /metrics, /health and /v1/status on its HTTP address.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The node's data directory (made by `concord init`).
    #[arg(long)]
    dir: PathBuf,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let node = Node::start(&args.dir)
            .await
            .with_context(|| format!("starting the node in {}", args.dir.display()))?;
        println!(
            "node {} serving; fingerprint {}",
            node.node_id().short(),
            node.fingerprint()
        );
        if let Some(addr) = node.listen_addr() {
            println!("peers connect to {addr}");
        }
        if let Some(addr) = node.http_addr() {
            println!("status at http://{addr}/v1/status, metrics at http://{addr}/metrics");
        }
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = show_catch_up(&node) => {}
        }
        println!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

/// Shows what is left to receive from peers (a catch-up after days offline, or the
/// initial load of a new node): a progress bar when stderr is a terminal, a log line
/// every few seconds otherwise. Never returns.
async fn show_catch_up(node: &Node) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {human_pos}/{human_len} changes ({elapsed}, about {eta} left)",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    // The catch-up in progress: its bar, and what had been received and applied when it
    // began. Received counts what arrived (a large transaction arrives long before it
    // commits); the length is what is still missing plus what was applied since. Both
    // figures count the current session of each peer, so they start again at zero when
    // a session is re-established.
    let mut current: Option<(ProgressBar, u64, u64)> = None;
    let mut last_log = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let status = node.status().await;
        let remaining: u64 = status.peers.iter().map(|p| p.incoming_changes).sum();
        let received: u64 = status.peers.iter().map(|p| p.received).sum();
        let applied: u64 = status.peers.iter().map(|p| p.applied + p.set_aside).sum();
        match &current {
            None if remaining == 0 => {}
            None => {
                let bar = if terminal {
                    ProgressBar::new(remaining)
                } else {
                    ProgressBar::hidden()
                };
                bar.set_style(style.clone());
                bar.set_message("catching up");
                current = Some((bar, received, applied));
            }
            // A new session starts its figures at zero: measure from there.
            Some((_, received_before, applied_before))
                if received < *received_before || applied < *applied_before =>
            {
                if let Some((_, r, a)) = current.as_mut() {
                    (*r, *a) = (0, 0);
                }
            }
            Some((bar, received_before, applied_before)) => {
                let length = remaining + applied.saturating_sub(*applied_before);
                let done = received.saturating_sub(*received_before).min(length);
                bar.set_length(length.max(1));
                bar.set_position(done);
                if remaining == 0 {
                    bar.finish_with_message("caught up");
                    tracing::info!(changes = done, "caught up with peers");
                    current = None;
                } else if !terminal && last_log.elapsed() >= Duration::from_secs(5) {
                    tracing::info!(received = done, of = length, "catching up with peers");
                    last_log = std::time::Instant::now();
                }
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
