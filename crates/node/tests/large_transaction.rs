//! A source transaction larger than the receiver buffers in memory is streamed into one
//! store transaction: it must still arrive whole (never partly visible) and the session
//! must carry on normally after it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{DDL, Member, app, eventually, run, scalar};

#[test]
fn a_transaction_too_large_to_buffer_arrives_whole_and_the_stream_continues() {
    run(async {
        const ROWS: i64 = 45_000;
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", DDL);
        let b = Member::new(root.path(), "b", DDL);
        let node_a = a.start(vec![b.dialing_in()]).await;
        let node_b = b.start(vec![a.at(&node_a)]).await;

        let mut writer = app(a.db());
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

        // Watch B while the transaction streams in: it is either absent or whole.
        let start = Instant::now();
        loop {
            let n = scalar(b.db(), "SELECT count(*) FROM t");
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
        eventually(
            "B's applied count to cover the transaction and the row after it",
            async || {
                let status = node_b.status().await;
                status.peers[0].applied as i64 == ROWS + 1 && status.peers[0].last_error.is_none()
            },
        )
        .await;
        node_a.shutdown().await;
        node_b.shutdown().await;
    });
}
