//! The change log is kept within the retention limit, and a peer that needs changes
//! pruned from it catches up from a snapshot of rows with their clocks: nothing lost
//! (its own writes while away survive and travel back), nothing resurrected (rows
//! deleted while it was away stay deleted), only the rows that differ cross the network
//! (found by range reconciliation), and status and metrics say what happened.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{DDL, Member, app, eventually, peer, rows, run, write};
use concord_node::config::SyncSection;

#[test]
fn a_node_stopped_while_its_peer_writes_three_times_the_retention_converges_after_restart() {
    run(async {
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", DDL);
        let b = Member::new(root.path(), "b", DDL);
        // C joins only at the end, new and empty, after A's log was pruned.
        let c = Member::new(root.path(), "c", DDL);
        let keep_twenty = |mut config: concord_node::NodeConfig| {
            config.sync = SyncSection {
                retention_changes: 20,
                ..config.sync
            };
            config
        };
        let node_a = a
            .start_with(keep_twenty(a.config(vec![b.dialing_in(), c.dialing_in()])))
            .await;
        let node_b = b
            .start_with(keep_twenty(b.config(vec![a.at(&node_a)])))
            .await;
        write(
            a.db(),
            "INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two'); \
             INSERT INTO t VALUES (3, 'three'); INSERT INTO t VALUES (4, 'four');",
        );
        // Rows both hold and nobody touches while B is away: reconciliation finds them
        // equal, and they are not sent again.
        let mut untouched = String::new();
        for id in 1000..1200 {
            untouched.push_str(&format!("INSERT INTO t VALUES ({id}, 'same');"));
        }
        write(a.db(), &untouched);
        eventually("B to receive A's first rows", async || {
            rows(b.db()).len() == 204
        })
        .await;
        node_b.shutdown().await;

        // B is stopped while A writes three times what it keeps: updates, deletes,
        // inserts, and a row inserted then deleted that B never saw.
        let writer = app(a.db());
        writer
            .execute_batch("DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (9, 'nine');")
            .unwrap();
        node_a.capture_now().await.unwrap();
        writer.execute("DELETE FROM t WHERE id = 9", []).unwrap();
        node_a.capture_now().await.unwrap();
        for i in 0..60 {
            writer
                .execute(
                    "INSERT OR REPLACE INTO t VALUES (?1, ?2)",
                    (10 + i % 7, format!("a{i}")),
                )
                .unwrap();
            node_a.capture_now().await.unwrap();
        }
        eventually("A's log to be pruned to 20 entries", async || {
            node_a.status().await.log_entries <= 20
        })
        .await;
        // Meanwhile B's application writes too, while B's node is down.
        write(
            b.db(),
            "INSERT INTO t VALUES (100, 'from b'); UPDATE t SET v = 'b-three' WHERE id = 3;",
        );

        let node_b = b
            .start_with(keep_twenty(b.config(vec![a.at(&node_a)])))
            .await;
        eventually("A and B to hold the same rows", async || {
            let (ra, rb) = (rows(a.db()), rows(b.db()));
            ra == rb && ra.iter().any(|r| r.0 == 100)
        })
        .await;
        let final_rows = rows(a.db());
        assert!(
            final_rows.iter().all(|r| r.0 != 2 && r.0 != 9),
            "{final_rows:?}"
        );
        assert!(
            final_rows.contains(&(3, "b-three".into())),
            "{final_rows:?}"
        );
        assert!(final_rows.contains(&(1, "one".into())), "{final_rows:?}");
        assert_eq!(
            final_rows.iter().filter(|r| r.0 >= 10 && r.0 < 17).count(),
            7
        );

        let status_a = node_a.status().await;
        let to_b = peer(&status_a, "b");
        // Only the rows that differ travel: 2 and 9 (deleted), 3 (B's update), 10..=16;
        // not the 202 rows both already held.
        assert!(
            to_b.snapshot_rows_sent > 0 && to_b.snapshot_rows_sent <= 10,
            "{to_b:?}"
        );
        assert!(to_b.reconcile_bytes > 0, "{to_b:?}");
        eventually("A to see B caught up", async || {
            let status = node_a.status().await;
            let p = peer(&status, "b");
            !p.behind_retention && p.lag_changes == 0
        })
        .await;
        let status_b = node_b.status().await;
        assert!(peer(&status_b, "a").snapshot_rows_received > 0);
        assert_eq!(peer(&status_b, "a").set_aside, 0, "{status_b:?}");
        let metrics = node_a.metrics().await;
        assert!(
            metrics.contains("concord_snapshot_rows_sent_total{peer=\"b\"}"),
            "{metrics}"
        );

        // After the snapshot the log carries on as usual, both ways.
        write(a.db(), "UPDATE t SET v = 'later' WHERE id = 1;");
        write(b.db(), "INSERT INTO t VALUES (101, 'b again');");
        eventually("later writes to cross after the snapshot", async || {
            let (ra, rb) = (rows(a.db()), rows(b.db()));
            ra == rb && ra.contains(&(1, "later".into())) && ra.iter().any(|r| r.0 == 101)
        })
        .await;

        // A new node joins: A's log cannot replay the history, and C holds none of the
        // table, so every row's state is sent (without listing keys first), and C ends
        // equal to A with nothing set aside.
        let node_c = c
            .start_with(keep_twenty(c.config(vec![a.at(&node_a)])))
            .await;
        eventually("the new node to hold every row", async || {
            rows(c.db()) == rows(a.db())
        })
        .await;
        let status_a = node_a.status().await;
        let to_c = peer(&status_a, "c");
        assert!(
            to_c.snapshot_rows_sent as usize >= rows(a.db()).len(),
            "{to_c:?}"
        );
        let status_c = node_c.status().await;
        assert_eq!(peer(&status_c, "a").set_aside, 0, "{status_c:?}");
        node_a.shutdown().await;
        node_b.shutdown().await;
        node_c.shutdown().await;
    });
}
