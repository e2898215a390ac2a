//! `concord serve`: run a node.

use std::path::PathBuf;

use anyhow::Context;
use concord_node::Node;

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
        wait_for_signal().await;
        println!("shutting down");
        node.shutdown().await;
        Ok(())
    })
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
