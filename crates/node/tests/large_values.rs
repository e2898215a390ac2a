//! A value larger than a frame must not stop a stream. Risks covered: a change that
//! encodes to more than the peer's frame limit was refused by the sender, the session
//! retried forever, and every later change from that origin waited behind it; a value
//! reassembled from pieces arriving altered or truncated.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{DDL, Member, assert_no_panics, peer, rows, wait_until, write};

/// Both nodes take frames of 64 KiB, so a 1 MB value needs pieces.
fn small_frames(mut config: concord_node::NodeConfig) -> concord_node::NodeConfig {
    config.sync.max_frame_bytes = 64 * 1024;
    config
}

fn value_bytes(path: &std::path::Path, id: i64) -> Option<usize> {
    let conn = common::app(path);
    conn.query_row("SELECT length(v) FROM t WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .ok()
    .map(|n| n as usize)
}

#[test]
fn a_value_larger_than_a_frame_syncs_whole_and_later_rows_follow_it() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a
            .start_with(small_frames(a.config(vec![b.dialing_in()])))
            .await;
        let nb = b.start_with(small_frames(b.config(vec![a.at(&na)]))).await;
        // 3 MB of text that is not one repeated byte, so a misplaced piece would show.
        let big: String = (0..3_000_000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        write(a.db(), &format!("INSERT INTO t(id, v) VALUES (1, '{big}')"));
        write(
            a.db(),
            "INSERT INTO t(id, v) VALUES (2, 'after the large value')",
        );
        let expected = rows(a.db());
        wait_until("the large value and the row after it at b", async || {
            if rows(b.db()) == expected {
                return Ok(());
            }
            Err(format!(
                "b holds {:?} bytes of row 1 and row 2 {:?}; a's view of b: {:?}",
                value_bytes(b.db(), 1),
                value_bytes(b.db(), 2),
                peer(&na.status().await, "b")
            ))
        })
        .await;
        // And the other way: b edits the large value; a receives it in pieces too.
        write(b.db(), "UPDATE t SET v = v || '!' WHERE id = 1");
        let expected = rows(b.db());
        wait_until("b's edit of the large value at a", async || {
            if rows(a.db()) == expected {
                return Ok(());
            }
            Err(format!(
                "a holds {:?} bytes of row 1",
                value_bytes(a.db(), 1)
            ))
        })
        .await;
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}
