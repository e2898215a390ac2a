//! The shortest path through the node: two nodes over real TLS sockets, a write on each
//! side, and the other side sees it.
//!
//! Risks covered: a node that does not start, dial, accept, or sync in one direction
//! only; a status that does not show the connected peer.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{DDL, Member, assert_no_panics, eventually, insert_rows, peer, rows};

#[test]
fn two_nodes_sync_both_ways_over_tls() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![b.dialing_in()]).await;
        let nb = b.start(vec![a.at(&na)]).await;
        insert_rows(a.db(), [1], "from a ");
        eventually("a's row at b", async || rows(b.db()).len() == 1).await;
        insert_rows(b.db(), [2], "from b ");
        eventually("b's row at a", async || rows(a.db()).len() == 2).await;
        assert_eq!(rows(a.db()), rows(b.db()));
        let status = nb.status().await;
        assert_eq!(peer(&status, "a").state, "connected");
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}
