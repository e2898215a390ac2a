//! Schema changes on running nodes. Risks covered: a column added on one node made the
//! copies drift for good (the peer set aside every change naming it and never applied
//! them after adding the same column); the sender's log reader, still knowing the old
//! columns, failed on the first entry naming the new one.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::{DDL, Member, app, assert_no_panics, peer, scalar, wait_until, write};

type Row = (i64, String, Option<String>);

/// Every row of `t` with the added column.
fn rows_with_phone(path: &Path) -> Vec<Row> {
    let conn = app(path);
    let mut stmt = conn
        .prepare("SELECT id, v, phone FROM t ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn set_aside(path: &Path) -> i64 {
    scalar(path, "SELECT count(*) FROM __concord_failures")
}

#[test]
fn a_column_added_on_one_node_then_the_other_ends_equal_with_nothing_set_aside() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![b.dialing_in()]).await;
        let nb = b.start(vec![a.at(&na)]).await;
        write(a.db(), "INSERT INTO t(id, v) VALUES (1, 'one')");
        wait_until("row 1 at b", async || match common::rows(b.db()).len() {
            1 => Ok(()),
            n => Err(format!("b holds {n} rows")),
        })
        .await;

        // a adds the column and writes it; b, without it, writes too.
        write(a.db(), "ALTER TABLE t ADD COLUMN phone TEXT");
        write(
            a.db(),
            "INSERT INTO t(id, v, phone) VALUES (2, 'two', '555'); UPDATE t SET phone = '111' WHERE id = 1",
        );
        write(b.db(), "INSERT INTO t(id, v) VALUES (3, 'three')");
        wait_until("b's row 3 at a, and a's changes waiting at b", async || {
            let at_a = common::rows(a.db()).len();
            let waiting = set_aside(b.db());
            if at_a == 3 && waiting == 2 {
                return Ok(());
            }
            Err(format!(
                "a holds {at_a} rows, b set aside {waiting} changes"
            ))
        })
        .await;

        // b adds the same column: what waited is applied, without anyone rewriting it.
        write(b.db(), "ALTER TABLE t ADD COLUMN phone TEXT");
        let expected: Vec<Row> = vec![
            (1, "one".into(), Some("111".into())),
            (2, "two".into(), Some("555".into())),
            (3, "three".into(), None),
        ];
        wait_until("both copies equal, with the new column", async || {
            let (at_a, at_b) = (rows_with_phone(a.db()), rows_with_phone(b.db()));
            if at_a == expected && at_b == expected {
                return Ok(());
            }
            Err(format!("a: {at_a:?}\nb: {at_b:?}"))
        })
        .await;
        assert_eq!(set_aside(b.db()), 0, "nothing stays set aside at b");
        assert_eq!(set_aside(a.db()), 0, "nothing was set aside at a");

        // And the column now travels both ways.
        write(b.db(), "UPDATE t SET phone = '333' WHERE id = 3");
        wait_until("b's phone at a", async || {
            match rows_with_phone(a.db()).get(2) {
                Some((3, _, Some(p))) if p == "333" => Ok(()),
                other => Err(format!("a's row 3: {other:?}")),
            }
        })
        .await;
        let status = na.status().await;
        assert_eq!(
            peer(&status, "b").last_error,
            None,
            "a's session with b reported an error"
        );
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

/// A tracked table dropped while the node was stopped made the next start fail (`table
/// "u" does not exist`), so no table synced until someone edited the configuration.
#[test]
fn a_table_dropped_while_stopped_leaves_the_others_syncing_and_says_so() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let two = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
                   CREATE TABLE u(id INTEGER PRIMARY KEY, w TEXT)";
        let (a, b) = (
            Member::new(root.path(), "a", two),
            Member::new(root.path(), "b", two),
        );
        let with_u = |mut config: concord_node::NodeConfig| {
            config.store.tables.push("u".into());
            config
        };
        let na = a.start_with(with_u(a.config(vec![b.dialing_in()]))).await;
        na.shutdown().await;
        write(a.db(), "DROP TABLE u");

        let na = a.start_with(with_u(a.config(vec![b.dialing_in()]))).await;
        let nb = b.start_with(with_u(b.config(vec![a.at(&na)]))).await;
        wait_until("status to say which table is not synced", async || {
            let problem = na.status().await.capture_error.unwrap_or_default();
            if problem.contains("table u") && problem.contains("does not exist") {
                return Ok(());
            }
            Err(format!("capture_error: {problem:?}"))
        })
        .await;
        write(a.db(), "INSERT INTO t(id, v) VALUES (1, 'still synced')");
        common::wait_for_rows("t at b", b.db(), &[(1, "still synced".into())]).await;
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}
