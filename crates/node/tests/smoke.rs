#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_node::config::{NodeSection, StoreSection, SyncSection};
use concord_node::{Identity, Node, NodeConfig, PeerConfig};
use rusqlite::Connection;

fn db(dir: &Path) -> PathBuf {
    let p = dir.join("app.db");
    Connection::open(&p)
        .unwrap()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    p
}

fn config(name: &str, db: Option<PathBuf>, peers: Vec<PeerConfig>) -> NodeConfig {
    NodeConfig {
        node: NodeSection {
            name: name.into(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            http: None,
        },
        store: StoreSection {
            relay: db.is_none(),
            sqlite: db,
            tables: vec!["t".into()],
        },
        sync: SyncSection {
            stall_timeout_s: 5,
            ping_interval_s: 1,
            ..SyncSection::default()
        },
        peers,
    }
}

fn rows(p: &Path) -> Vec<(i64, String)> {
    let c = Connection::open(p).unwrap();
    let mut s = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sync_both_ways_over_tls() {
    let root = tempfile::tempdir().unwrap();
    let (da, db_) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db_).unwrap();
    let (pa, pb) = (db(&da), db(&db_));
    let (ia, ib) = (
        Identity::generate("a").unwrap(),
        Identity::generate("b").unwrap(),
    );
    let (fa, fb) = (ia.fingerprint(), ib.fingerprint());
    let a = Node::start_with(
        &da,
        config(
            "a",
            Some(pa.clone()),
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
    let addr = a.listen_addr().unwrap().to_string();
    let b = Node::start_with(
        &db_,
        config(
            "b",
            Some(pb.clone()),
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
    Connection::open(&pa)
        .unwrap()
        .execute("INSERT INTO t VALUES (1, 'from a')", [])
        .unwrap();
    wait_for("a's row at b", || rows(&pb).len() == 1).await;
    Connection::open(&pb)
        .unwrap()
        .execute("INSERT INTO t VALUES (2, 'from b')", [])
        .unwrap();
    wait_for("b's row at a", || rows(&pa).len() == 2).await;
    assert_eq!(rows(&pa), rows(&pb));
    let status = b.status().await;
    eprintln!("{}", serde_json::to_string_pretty(&status).unwrap());
    assert_eq!(status.peers[0].state, "connected");
    a.shutdown().await;
    b.shutdown().await;
}
