//! The change log is kept within the retention limit, and a peer that needs changes
//! pruned from it is told so clearly (status, error) instead of silently missing them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_node::config::{NodeSection, StoreSection, SyncSection};
use concord_node::{Identity, Node, NodeConfig, PeerConfig};
use rusqlite::Connection;

fn site(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    (dir, db)
}

fn config(name: &str, db: PathBuf, peers: Vec<PeerConfig>) -> NodeConfig {
    NodeConfig {
        node: NodeSection {
            name: name.into(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            http: None,
        },
        store: StoreSection {
            relay: false,
            sqlite: Some(db),
            tables: vec!["t".into()],
        },
        sync: SyncSection {
            stall_timeout_s: 5,
            ping_interval_s: 1,
            retention_changes: 10,
            ..SyncSection::default()
        },
        peers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_behind_the_retention_limit_is_reported_not_silently_skipped() {
    let root = tempfile::tempdir().unwrap();
    let (dir_a, db_a) = site(root.path(), "a");
    let (dir_b, db_b) = site(root.path(), "b");
    let (ia, ib) = (
        Identity::generate("a").unwrap(),
        Identity::generate("b").unwrap(),
    );
    let (fa, fb) = (ia.fingerprint(), ib.fingerprint());
    let a = Node::start_with(
        &dir_a,
        config(
            "a",
            db_a.clone(),
            vec![PeerConfig {
                name: "b".into(),
                address: None,
                fingerprint: fb,
            }],
        ),
        ia,
    )
    .await
    .unwrap();
    // B is offline while A writes far more than A keeps.
    let writer = Connection::open(&db_a).unwrap();
    for i in 0..50 {
        writer
            .execute("INSERT INTO t VALUES (?1, 'x')", [i])
            .unwrap();
        a.capture_now().await.unwrap();
    }
    let start = Instant::now();
    while a.status().await.log_entries > 10 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the log was never pruned to the limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let addr = a.listen_addr().unwrap().to_string();
    let b = Node::start_with(
        &dir_b,
        config(
            "b",
            db_b.clone(),
            vec![PeerConfig {
                name: "a".into(),
                address: Some(addr),
                fingerprint: fa,
            }],
        ),
        ib,
    )
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let status = a.status().await;
        let peer = &status.peers[0];
        if peer.behind_retention
            && peer
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("retention"))
        {
            assert_eq!(peer.lag_changes, 50);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the peer was never reported behind retention: {peer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("concord_peer_behind_retention{peer=\"b\"} 1"),
        "{metrics}"
    );
    // Nothing was silently skipped: B did not receive a partial history.
    let rows: i64 = Connection::open(&db_b)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    a.shutdown().await;
    b.shutdown().await;
}
