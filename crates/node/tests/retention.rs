//! The change log is kept within the retention limit, and a peer that needs changes
//! pruned from it is told so clearly (status, error, metric) instead of silently missing
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{DDL, Member, app, eventually, run, scalar};
use concord_node::config::SyncSection;

#[test]
fn a_peer_behind_the_retention_limit_is_reported_not_silently_skipped() {
    run(async {
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", DDL);
        let b = Member::new(root.path(), "b", DDL);
        let keep_ten = |mut config: concord_node::NodeConfig| {
            config.sync = SyncSection {
                retention_changes: 10,
                ..config.sync
            };
            config
        };
        let node_a = a.start_with(keep_ten(a.config(vec![b.dialing_in()]))).await;
        // B is offline while A writes far more than A keeps.
        let writer = app(a.db());
        for i in 0..50 {
            writer
                .execute("INSERT INTO t VALUES (?1, 'x')", [i])
                .unwrap();
            node_a.capture_now().await.unwrap();
        }
        eventually("A's log to be pruned to 10 entries", async || {
            node_a.status().await.log_entries <= 10
        })
        .await;

        let node_b = b.start(vec![a.at(&node_a)]).await;
        eventually("A to report B behind retention", async || {
            let status = node_a.status().await;
            let peer = &status.peers[0];
            peer.behind_retention
                && peer.lag_changes == 50
                && peer
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("retention"))
        })
        .await;
        let metrics = node_a.metrics().await;
        assert!(
            metrics.contains("concord_peer_behind_retention{peer=\"b\"} 1"),
            "{metrics}"
        );
        // Nothing was silently skipped: B did not receive a partial history.
        assert_eq!(scalar(b.db(), "SELECT count(*) FROM t"), 0);
        node_a.shutdown().await;
        node_b.shutdown().await;
    });
}
