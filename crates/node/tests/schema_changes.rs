//! Schema changes on running nodes. Risks covered: a column added on one node made the
//! copies drift for good (the peer set aside every change naming it and never applied
//! them after adding the same column); the sender's log reader, still knowing the old
//! columns, failed on the first entry naming the new one. With `propagate_schema` on a
//! link: a fleet had to run the same `ALTER TABLE` on every node by hand; and the
//! opposite risk, a rename or a drop on one node reshaping its peers' tables.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::{DDL, Member, app, assert_no_panics, peer, scalar, wait_until, write};
use concord_node::PeerConfig;

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

/// Every column of `t` with its declared type, in table order.
fn columns(path: &Path) -> Vec<(String, String)> {
    let conn = app(path);
    let mut stmt = conn
        .prepare("SELECT name, type FROM pragma_table_info('t') ORDER BY cid")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn owned((name, ty): (&str, &str)) -> (String, String) {
    (name.to_owned(), ty.to_owned())
}

/// `peer` with `propagate_schema = true`.
fn propagating(mut peer: PeerConfig) -> PeerConfig {
    peer.propagate_schema = true;
    peer
}

/// Columns the store of the node at `path` has recorded for `t` (it follows an
/// `ALTER TABLE` at its next capture).
fn recorded_columns(path: &Path) -> i64 {
    scalar(
        path,
        "SELECT count(*) FROM __concord_columns c JOIN __concord_tables t ON t.id = c.tbl WHERE t.name = 't'",
    )
}

type WideRow = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<f64>,
    Option<String>,
);

/// Every row of `t` with the columns the propagation test adds.
fn wide_rows(path: &Path) -> Vec<WideRow> {
    let conn = app(path);
    let mut stmt = conn
        .prepare("SELECT id, v, phone, score, ratio, note FROM t ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The risk: every node of a fleet needed a person to run the hub's `ALTER TABLE`, and
/// until then its copy lacked the column and set aside every change naming it.
#[test]
fn with_propagate_schema_columns_added_on_one_node_are_added_on_the_peer_and_nothing_waits() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![propagating(b.dialing_in())]).await;
        let nb = b.start(vec![propagating(a.at(&na))]).await;
        write(a.db(), "INSERT INTO t(id, v) VALUES (1, 'one')");
        common::wait_for_rows("row 1 at b", b.db(), &[(1, "one".into())]).await;

        // Only a changes its schema; `note` is only ever written NULL.
        write(
            a.db(),
            "ALTER TABLE t ADD COLUMN phone TEXT; ALTER TABLE t ADD COLUMN score INTEGER;
             ALTER TABLE t ADD COLUMN ratio REAL; ALTER TABLE t ADD COLUMN note TEXT",
        );
        wait_until(
            "a's store to follow its new columns",
            async || match recorded_columns(a.db()) {
                6 => Ok(()),
                n => Err(format!("{n} columns recorded")),
            },
        )
        .await;
        write(
            a.db(),
            "INSERT INTO t(id, v, phone, score, ratio) VALUES (2, 'two', '555', 7, 0.5)",
        );
        write(a.db(), "UPDATE t SET phone = '111', score = 1 WHERE id = 1");
        let expected: Vec<WideRow> = vec![
            (1, "one".into(), Some("111".into()), Some(1), None, None),
            (
                2,
                "two".into(),
                Some("555".into()),
                Some(7),
                Some(0.5),
                None,
            ),
        ];
        wait_until("b to hold a's rows with the new columns", async || {
            let has_them = columns(b.db()).len() == 6;
            let at_b = if has_them { wide_rows(b.db()) } else { vec![] };
            if at_b == expected {
                return Ok(());
            }
            Err(format!(
                "b's columns: {:?}, rows: {at_b:?}",
                columns(b.db())
            ))
        })
        .await;
        // Added at the end, typed from the values that came (SQLite's types here), and
        // `note`, only NULL so far, without a declared type so any later value is kept
        // exactly as sent.
        assert_eq!(
            columns(b.db()),
            [
                ("id", "INTEGER"),
                ("v", "TEXT"),
                ("phone", "TEXT"),
                ("score", "INTEGER"),
                ("ratio", "REAL"),
                ("note", ""),
            ]
            .map(owned)
        );
        assert_eq!(set_aside(b.db()), 0, "nothing was set aside at b");
        assert_eq!(
            peer(&nb.status().await, "a").set_aside,
            0,
            "nothing was set aside at b, even for a while"
        );

        // b's store follows the columns it was given: its own writes of them travel back.
        write(
            b.db(),
            "UPDATE t SET note = 'from b' WHERE id = 2;
             INSERT INTO t(id, v, phone, score, ratio, note) VALUES (3, 'three', '333', 3, 1.5, 'b')",
        );
        let expected: Vec<WideRow> = vec![
            (1, "one".into(), Some("111".into()), Some(1), None, None),
            (
                2,
                "two".into(),
                Some("555".into()),
                Some(7),
                Some(0.5),
                Some("from b".into()),
            ),
            (
                3,
                "three".into(),
                Some("333".into()),
                Some(3),
                Some(1.5),
                Some("b".into()),
            ),
        ];
        wait_until("both copies equal", async || {
            let (at_a, at_b) = (wide_rows(a.db()), wide_rows(b.db()));
            if at_a == expected && at_b == expected {
                return Ok(());
            }
            Err(format!("a: {at_a:?}\nb: {at_b:?}"))
        })
        .await;
        assert_eq!(set_aside(a.db()), 0, "nothing was set aside at a");
        assert_eq!(set_aside(b.db()), 0, "nothing was set aside at b");
        let (sa, sb) = (na.status().await, nb.status().await);
        assert_eq!(peer(&sa, "b").last_error, None);
        assert_eq!(peer(&sb, "a").last_error, None);
        assert_eq!(peer(&sa, "b").set_aside + peer(&sb, "a").set_aside, 0);
        assert_eq!(peer(&sb, "a").schema_not_added, None);
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

/// The risk: with `propagate_schema`, a rename on one node looked like a new column to
/// its peer, which would have added it beside the old one and reshaped its table. A
/// rename never travels: the peer keeps its columns and sets the changes naming the new
/// name aside, where `concord failures` reports them.
#[test]
fn with_propagate_schema_a_rename_on_one_node_does_not_alter_the_peer() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let ddl = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, w TEXT)";
        let (a, b) = (
            Member::new(root.path(), "a", ddl),
            Member::new(root.path(), "b", ddl),
        );
        let na = a.start(vec![propagating(b.dialing_in())]).await;
        let nb = b.start(vec![propagating(a.at(&na))]).await;
        write(a.db(), "INSERT INTO t(id, v, w) VALUES (1, 'one', 'x')");
        common::wait_for_rows("row 1 at b", b.db(), &[(1, "one".into())]).await;

        write(a.db(), "ALTER TABLE t RENAME COLUMN w TO w2");
        wait_until("a's store to follow the rename", async || {
            let renamed = scalar(
                a.db(),
                "SELECT count(*) FROM __concord_columns WHERE name = 'w2'",
            );
            if renamed == 1 {
                return Ok(());
            }
            Err("not yet".into())
        })
        .await;
        // The session stays up: a's log reader notices the rename and names the column
        // by its new name (it used to keep the old one, which b applied to `w`).
        // An insert names every column a has (`w2` instead of `w`), an update only `w2`.
        write(a.db(), "INSERT INTO t(id, v, w2) VALUES (2, 'two', 'y')");
        write(a.db(), "UPDATE t SET w2 = 'z' WHERE id = 1");
        wait_until("b to hold every change of a", async || {
            let (sa, sb) = (na.status().await, nb.status().await);
            let (ha, hb) = (common::holds(&sa), common::holds(&sb));
            if common::pending(a.db()) == 0 && ha.iter().all(|(o, s)| hb.get(o) == Some(s)) {
                return Ok(());
            }
            Err(format!("a holds {ha:?}, b holds {hb:?}"))
        })
        .await;
        assert_eq!(
            columns(b.db()),
            [("id", "INTEGER"), ("v", "TEXT"), ("w", "TEXT")].map(owned),
            "b's table is unchanged"
        );
        // Whatever b could not apply is set aside for naming the new name, never applied
        // by reshaping b's table.
        let reasons: Vec<String> = {
            let conn = app(b.db());
            let mut stmt = conn
                .prepare("SELECT error FROM __concord_failures")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(reasons.len(), 2, "both changes naming w2 wait: {reasons:?}");
        let note = peer(&nb.status().await, "a")
            .schema_not_added
            .clone()
            .unwrap_or_default();
        assert!(
            note.contains("column w2 of table t not added yet"),
            "status says why: {note:?}"
        );
        assert!(
            reasons.iter().all(|r| r.contains("unknown column \"w2\"")),
            "reasons: {reasons:?}"
        );
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
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

        // Without `propagate_schema` on the link, b's table was left as it was.
        assert_eq!(
            columns(b.db()),
            [("id", "INTEGER"), ("v", "TEXT")].map(owned)
        );

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

/// The risk: with `propagate_schema`, a table tracked on one node created on its peer
/// from what its changes carry (a key's values and the written columns' kinds, no
/// constraints, no key definition), a table nobody designed. It is not created: its
/// changes are set aside with the reason, the peer's database is unchanged, and the
/// tables both track keep syncing.
#[test]
fn with_propagate_schema_a_table_the_peer_does_not_track_is_not_created_there() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(
                root.path(),
                "a",
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
                 CREATE TABLE u(id INTEGER PRIMARY KEY, w TEXT)",
            ),
            Member::new(root.path(), "b", DDL),
        );
        let mut config = a.config(vec![propagating(b.dialing_in())]);
        config.store.tables.push("u".into());
        let na = a.start_with(config).await;
        let nb = b.start(vec![propagating(a.at(&na))]).await;
        write(a.db(), "INSERT INTO t(id, v) VALUES (1, 'both')");
        common::wait_for_rows("t at b", b.db(), &[(1, "both".into())]).await;
        write(a.db(), "INSERT INTO u(id, w) VALUES (1, 'only at a')");
        wait_until("u's change set aside at b", async || {
            match set_aside(b.db()) {
                1 => Ok(()),
                n => Err(format!("{n} set aside")),
            }
        })
        .await;
        let reason: String = app(b.db())
            .query_row("SELECT error FROM __concord_failures", [], |r| r.get(0))
            .unwrap();
        assert!(reason.contains("unknown table"), "{reason}");
        assert_eq!(
            scalar(
                b.db(),
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'u'"
            ),
            0,
            "b has no table u"
        );
        let status = nb.status().await;
        assert_eq!(peer(&status, "a").set_aside, 1);
        let note = peer(&status, "a")
            .schema_not_added
            .clone()
            .unwrap_or_default();
        assert!(
            note.contains("table u is not tracked here") && note.contains("never tables"),
            "status says why: {note:?}"
        );
        // The tables both track keep syncing.
        write(a.db(), "INSERT INTO t(id, v) VALUES (2, 'still synced')");
        common::wait_for_rows(
            "t at b",
            b.db(),
            &[(1, "both".into()), (2, "still synced".into())],
        )
        .await;
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

/// The risk: changes naming a new column that arrive before anything proves it added
/// (updates alone, which could follow a rename) waiting for good once it is added.
/// They wait set aside until a whole row proves the column, then apply at once.
#[test]
fn with_propagate_schema_updates_that_came_before_the_proof_apply_once_the_column_is_added() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![propagating(b.dialing_in())]).await;
        let nb = b.start(vec![propagating(a.at(&na))]).await;
        write(a.db(), "INSERT INTO t(id, v) VALUES (1, 'one')");
        common::wait_for_rows("row 1 at b", b.db(), &[(1, "one".into())]).await;

        write(a.db(), "ALTER TABLE t ADD COLUMN phone TEXT");
        wait_until(
            "a's store to follow its new column",
            async || match recorded_columns(a.db()) {
                3 => Ok(()),
                n => Err(format!("{n} columns recorded")),
            },
        )
        .await;
        write(a.db(), "UPDATE t SET phone = '111' WHERE id = 1");
        wait_until("the update to wait at b", async || {
            match set_aside(b.db()) {
                1 => Ok(()),
                n => Err(format!("{n} set aside")),
            }
        })
        .await;
        assert_eq!(columns(b.db()).len(), 2, "an update alone adds nothing");

        write(
            a.db(),
            "INSERT INTO t(id, v, phone) VALUES (2, 'two', '222')",
        );
        let expected: Vec<Row> = vec![
            (1, "one".into(), Some("111".into())),
            (2, "two".into(), Some("222".into())),
        ];
        wait_until("b to add the column and apply what waited", async || {
            let at_b = if columns(b.db()).len() == 3 {
                rows_with_phone(b.db())
            } else {
                vec![]
            };
            if at_b == expected && set_aside(b.db()) == 0 {
                return Ok(());
            }
            Err(format!("b: {at_b:?}, {} set aside", set_aside(b.db())))
        })
        .await;
        assert_eq!(rows_with_phone(a.db()), expected);
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

/// The risk the option exists for: a fleet of SQLite nodes behind a relay hub, each
/// needing a person to add the column one node added. With `propagate_schema` on every
/// link, the relay (no tables) passes the changes on and every other node adds the
/// column itself.
#[test]
fn with_propagate_schema_a_fleet_behind_a_relay_follows_one_nodes_new_column() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let hub = Member::relay(root.path(), "hub");
        let spokes = ["s1", "s2", "s3"].map(|n| Member::new(root.path(), n, DDL));
        let nhub = hub
            .start(spokes.iter().map(|s| propagating(s.dialing_in())).collect())
            .await;
        let mut nspokes = Vec::new();
        for s in &spokes {
            nspokes.push(s.start(vec![propagating(hub.at(&nhub))]).await);
        }
        let first = spokes[0].db();
        write(first, "INSERT INTO t(id, v) VALUES (1, 'one')");
        write(first, "ALTER TABLE t ADD COLUMN phone TEXT");
        wait_until(
            "s1's store to follow its new column",
            async || match recorded_columns(first) {
                3 => Ok(()),
                n => Err(format!("{n} columns recorded")),
            },
        )
        .await;
        write(
            first,
            "INSERT INTO t(id, v, phone) VALUES (2, 'two', '222')",
        );
        write(first, "UPDATE t SET phone = '111' WHERE id = 1");
        let expected: Vec<Row> = vec![
            (1, "one".into(), Some("111".into())),
            (2, "two".into(), Some("222".into())),
        ];
        for s in &spokes[1..] {
            wait_until(&format!("{} to follow s1", s.name), async || {
                let at = if columns(s.db()).len() == 3 {
                    rows_with_phone(s.db())
                } else {
                    vec![]
                };
                if at == expected {
                    return Ok(());
                }
                Err(format!("{at:?}"))
            })
            .await;
            assert_eq!(set_aside(s.db()), 0, "nothing set aside at {}", s.name);
        }
        let status = nhub.status().await;
        for s in &spokes {
            assert_eq!(peer(&status, &s.name).schema_not_added, None);
        }
        assert_no_panics();
        for n in nspokes {
            n.shutdown().await;
        }
        nhub.shutdown().await;
    });
}
