//! A source transaction larger than the receiver buffers in memory is streamed into one
//! store transaction: it must still arrive whole (never partly visible) and the session
//! must carry on normally after it.
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
            stall_timeout_s: 20,
            ping_interval_s: 1,
            ..SyncSection::default()
        },
        peers,
    }
}

fn count(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_too_large_to_buffer_arrives_whole_and_the_stream_continues() {
    const ROWS: i64 = 45_000;
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

    let mut writer = Connection::open(&db_a).unwrap();
    let txn = writer.transaction().unwrap();
    for i in 0..ROWS {
        txn.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![i, format!("row {i}")],
        )
        .unwrap();
    }
    txn.commit().unwrap();
    writer
        .execute("INSERT INTO t VALUES (?1, 'after')", [ROWS])
        .unwrap();

    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let n = count(&db_b);
        seen.push(n);
        assert!(
            n == 0 || n == ROWS || n == ROWS + 1,
            "the large transaction was visible in part: {n} rows"
        );
        if n == ROWS + 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for the large transaction; last count {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The rows are visible when the store commits; the counters follow just after.
    let start = Instant::now();
    loop {
        let status = b.status().await;
        if status.peers[0].applied as i64 == ROWS + 1 {
            assert_eq!(status.peers[0].last_error, None);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "applied count never reached {}: {status:?}",
            ROWS + 1
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
