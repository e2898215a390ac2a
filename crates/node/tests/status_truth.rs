//! What a person reads in the first hour with Concord: status figures, `/health`,
//! `/metrics` and the words for a refused identity. Real nodes on real sockets with
//! mutual TLS, beside SQLite files written by ordinary connections.
//!
//! Risks covered:
//! * the two ends of a link disagree about what crossed it once either end restarted
//!   (figures counted since each process started);
//! * `captured` forgets this node's own changes from before a restart;
//! * a peer's orderly shutdown shows as an error;
//! * a node dialing a peer that does not know it sees only a TLS alert, retries as fast
//!   as for a lost link, and the refusing node does not say which identity it refused;
//! * a dialer that reaches another node than its `[[peers]]` entry names does not say
//!   which fingerprint it found;
//! * a peer with the node's own fingerprint makes it dial itself forever;
//! * `/health` says ok while a peer this node dials is down;
//! * `/metrics` lines without a `# HELP` line;
//! * a node that never wrote counts a conflict other nodes had.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{
    DDL, Member, assert_no_panics, eventually, insert_rows, peer, rows, wait_for_rows, wait_until,
    write,
};
use concord_node::{Identity, Node, NodeStatus};

/// `Ok` once what `x` sent to `y` is what `y` received from `x`, both ways.
fn link_agrees(x: &NodeStatus, y: &NodeStatus) -> Result<(), String> {
    let (xy, yx) = (peer(x, &y.name), peer(y, &x.name));
    if xy.state == "connected" && xy.sent == yx.received && yx.sent == xy.received {
        Ok(())
    } else {
        Err(format!(
            "{} sent {} / received {}; {} sent {} / received {}",
            x.name, xy.sent, xy.received, y.name, yx.sent, yx.received
        ))
    }
}

/// This node's own entry in its status's `holds`.
fn own_held(status: &NodeStatus) -> u64 {
    status
        .holds
        .iter()
        .find(|h| h.origin == status.node_id)
        .map_or(0, |h| h.seq)
}

#[test]
fn counters_agree_across_a_link_after_a_restart_and_captured_counts_every_own_change() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![b.dialing_in()]).await;
        let nb = b.start(vec![a.at(&na)]).await;
        insert_rows(a.db(), 1..=3, "a ");
        insert_rows(b.db(), 11..=13, "b ");
        eventually("six rows at a", async || rows(a.db()).len() == 6).await;
        wait_for_rows("a's rows at b", b.db(), &rows(a.db())).await;
        nb.shutdown().await;

        // b restarts: a's process keeps running, b's starts over.
        let nb = b.start(vec![a.at(&na)]).await;
        insert_rows(a.db(), 4..=5, "a ");
        insert_rows(b.db(), 14..=14, "b ");
        eventually("a's new rows at b", async || rows(b.db()).len() == 9).await;
        eventually("b's new row at a", async || rows(a.db()).len() == 9).await;
        wait_until("both ends of the link to agree", async || {
            link_agrees(&na.status().await, &nb.status().await)
        })
        .await;

        let status = nb.status().await;
        assert_eq!(
            status.captured, 4,
            "b captured 4 changes over two processes: {status:?}"
        );
        assert_eq!(status.captured, own_held(&status), "{status:?}");
        assert_eq!(na.status().await.captured, 5);
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

#[test]
fn a_peers_orderly_shutdown_is_an_event_and_health_names_a_dialed_peer_that_is_down() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![b.dialing_in()]).await;
        let nb = b.start(vec![a.at(&na)]).await;
        wait_until("b connected at a", async || {
            let health = nb.health();
            match (
                peer(&na.status().await, "b").state.as_str(),
                health.status.as_str(),
            ) {
                ("connected", "ok") => Ok(()),
                (state, health) => Err(format!("state {state}, b's health {health}")),
            }
        })
        .await;
        na.shutdown().await;

        wait_until("b to see a shut down", async || {
            let status = nb.status().await;
            let p = peer(&status, "a");
            match &p.last_event {
                Some(e) if e.contains("shut down") && p.state != "connected" => Ok(()),
                _ => Err(format!("{p:?}")),
            }
        })
        .await;
        let status = nb.status().await;
        let p = peer(&status, "a");
        assert_eq!(
            p.last_error, None,
            "an orderly shutdown is not an error: {p:?}"
        );
        assert_eq!(p.errors, 0, "{p:?}");

        // a is down and b dials it: b's health names a.
        let health = nb.health();
        assert_eq!(health.status, "missing_peers", "{health:?}");
        assert_eq!(health.missing.len(), 1, "{health:?}");
        assert_eq!(health.missing[0].name, "a", "{health:?}");
        assert_eq!(health.missing[0].link, "dials", "{health:?}");
        assert_no_panics();
        nb.shutdown().await;
    });
}

#[test]
fn a_dialer_unknown_to_its_peer_is_told_which_fingerprint_to_add_and_the_peer_shows_it() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b, other) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
            Member::new(root.path(), "other", DDL),
        );
        // a knows only `other`; b dials a.
        let na = a.start(vec![other.dialing_in()]).await;
        let nb = b.start(vec![a.at(&na)]).await;
        let own = b.fingerprint.to_string();
        wait_until("b to be told a does not know it", async || {
            let status = nb.status().await;
            let p = peer(&status, "a");
            match &p.last_error {
                Some(e) if e.contains("the peer does not know this node") && e.contains(&own) => {
                    Ok(())
                }
                _ => Err(format!("{p:?}")),
            }
        })
        .await;
        let status = na.status().await;
        let refused = status
            .refused
            .iter()
            .find(|r| r.fingerprint.as_deref() == Some(own.as_str()))
            .unwrap_or_else(|| panic!("a does not list b's fingerprint: {:?}", status.refused));
        assert!(refused.reason.contains("unknown identity"), "{refused:?}");

        // A refusal needs a person to edit a's configuration: b waits seconds between
        // attempts rather than a hundred milliseconds.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = na.status().await;
        let times = status
            .refused
            .iter()
            .find(|r| r.fingerprint.as_deref() == Some(own.as_str()))
            .map_or(0, |r| r.times);
        assert!(
            times <= 2,
            "b dialed {times} times within two seconds of being refused"
        );
        assert!(rows(a.db()).is_empty() && rows(b.db()).is_empty());
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

#[test]
fn a_dialer_reaching_another_node_than_configured_says_which_fingerprint_it_found() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b, other) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
            Member::new(root.path(), "other", DDL),
        );
        let na = a.start(vec![b.dialing_in()]).await;
        // b's [[peers]] entry has a's address but another node's fingerprint.
        let mut wrong = a.at(&na);
        wrong.fingerprint = other.fingerprint;
        let nb = b.start(vec![wrong]).await;
        let (found, expected) = (a.fingerprint.to_string(), other.fingerprint.to_string());
        wait_until("b to name the fingerprint it found", async || {
            let status = nb.status().await;
            let p = peer(&status, "a");
            match &p.last_error {
                Some(e)
                    if e.contains("is not the configured peer")
                        && e.contains(&found)
                        && e.contains(&expected) =>
                {
                    Ok(())
                }
                _ => Err(format!("{p:?}")),
            }
        })
        .await;
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

#[test]
fn a_peer_with_the_nodes_own_fingerprint_is_refused_at_start() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", DDL);
        let mut me = a.dialing_in();
        me.name = "me".into();
        me.address = Some("127.0.0.1:9".into());
        let identity = Identity::load(&a.dir.join("identity")).unwrap();
        let err = match Node::start_with(&a.dir, a.config(vec![me]), identity).await {
            Ok(node) => {
                node.shutdown().await;
                panic!("a node configured with itself as a peer started");
            }
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("\"me\"") && err.contains("own fingerprint"),
            "{err}"
        );
    });
}

#[test]
fn every_metric_has_a_help_line() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![b.dialing_in()]).await;
        insert_rows(a.db(), 1..=2, "a ");
        eventually("a to capture", async || na.status().await.captured == 2).await;
        let metrics = na.metrics().await;
        let typed: Vec<&str> = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(typed.len() >= 10, "{metrics}");
        for name in typed {
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(&format!("# HELP {name} "))),
                "{name} has no # HELP line:\n{metrics}"
            );
        }
        na.shutdown().await;
    });
}

/// What a node that never wrote reports. A conflict is recorded wherever a concurrent
/// pair meets (docs/merge-semantics.md), so a node joining later lists the conflicts of
/// the history it receives, as the nodes that wrote do: the same conflict, between the
/// same two writers, never one of its own. A history without a concurrent pair gives it
/// none: the count must come from real conflicts, not from replaying or loading rows.
#[test]
fn a_node_that_never_wrote_lists_only_the_conflicts_of_the_history_it_received() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
            Member::new(root.path(), "c", DDL),
        );
        let na = a.start(vec![b.dialing_in(), c.dialing_in()]).await;
        insert_rows(a.db(), 1..=2, "a ");
        let nb = b.start(vec![a.at(&na)]).await;
        eventually("the rows at b", async || rows(b.db()) == rows(a.db())).await;
        // Sequential edits (b saw a's): no conflict anywhere.
        write(a.db(), "UPDATE t SET v = 'a first' WHERE id = 2");
        eventually("a's edit at b", async || rows(b.db()) == rows(a.db())).await;
        write(b.db(), "UPDATE t SET v = 'b after' WHERE id = 2");
        eventually("b's edit at a", async || rows(a.db()) == rows(b.db())).await;
        let nc = c.start(vec![a.at(&na)]).await;
        eventually("c to catch up", async || rows(c.db()) == rows(a.db())).await;
        let status = nc.status().await;
        assert_eq!(
            status.conflicts, 0,
            "no concurrent pair in the history: {status:?}"
        );
        nc.shutdown().await;

        // A concurrent edit of row 1 while b is offline.
        nb.shutdown().await;
        write(a.db(), "UPDATE t SET v = 'from a' WHERE id = 1");
        write(b.db(), "UPDATE t SET v = 'from b' WHERE id = 1");
        let nb = b.start(vec![a.at(&na)]).await;
        eventually("a and b to converge", async || rows(b.db()) == rows(a.db())).await;
        let (ida, idb, idc) = (na.node_id(), nb.node_id(), c_id(&c).await);
        let nc = c.start(vec![a.at(&na)]).await;
        eventually("c to catch up", async || rows(c.db()) == rows(a.db())).await;
        eventually("the conflict listed at c", async || {
            nc.status().await.conflicts == 1
        })
        .await;
        let listed = concord_sqlite::SqliteStore::open(c.db())
            .unwrap()
            .conflicts()
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let writers = [&listed[0].local_version, &listed[0].remote_version];
        for id in [ida, idb] {
            assert!(
                writers.iter().any(|v| v.ends_with(&id.short())),
                "the conflict is between a and b: {listed:?}"
            );
        }
        assert!(
            writers.iter().all(|v| !v.ends_with(&idc.short())),
            "c wrote nothing: {listed:?}"
        );
        na.shutdown().await;
        nb.shutdown().await;
        nc.shutdown().await;
    });
}

/// c's node id, read from its store before it ever serves.
async fn c_id(c: &Member) -> concord_core::NodeId {
    concord_sqlite::SqliteStore::track(c.db(), &["t"], Default::default())
        .unwrap()
        .node_id()
}

/// A capture that keeps failing used to be retried every second behind `/health`
/// saying ok and status showing nothing: the node looked healthy while none of its
/// writes left it. Here a row's metadata is damaged for real (its clock is garbage), so
/// every capture fails on the write to that row. `/health` (over HTTP) and status must
/// name the failure while it lasts, and clear once capture succeeds again.
#[test]
fn a_failing_capture_shows_in_status_and_health_until_it_succeeds() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", DDL);
        let mut config = a.config(Vec::new());
        config.node.http = Some("127.0.0.1:0".parse().unwrap());
        let na = a.start_with(config).await;
        let base = format!("http://{}", na.http_addr().expect("http is configured"));
        insert_rows(a.db(), 1..=1, "a ");
        eventually("row 1 captured", async || na.status().await.captured == 1).await;
        let clock: Vec<u8> = common::app(a.db())
            .query_row("SELECT clock FROM __concord_rows", [], |r| r.get(0))
            .unwrap();
        write(
            a.db(),
            "UPDATE __concord_rows SET clock = x'ffffffffffffffffffffff'",
        );
        write(a.db(), "UPDATE t SET v = 'changed' WHERE id = 1");
        wait_until("the capture failure in status and /health", async || {
            let (code, _, body) = get(format!("{base}/health")).await;
            let health: serde_json::Value = serde_json::from_str(&body).unwrap();
            let status = na.status().await;
            match (code, health["status"].as_str(), &status.capture_error) {
                (503, Some("capture_failing"), Some(e)) if e.contains("corrupt") => Ok(()),
                other => Err(format!("{other:?} {body}")),
            }
        })
        .await;
        let (_, _, body) = get(format!("{base}/health")).await;
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            health["capture_error"]
                .as_str()
                .is_some_and(|e| e.contains("corrupt")),
            "/health says why: {body}"
        );
        let (_, _, body) = get(format!("{base}/v1/status")).await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            status["capture_error"]
                .as_str()
                .is_some_and(|e| e.contains("corrupt")),
            "/v1/status says why: {body}"
        );

        // Repaired, capture works again and both say so.
        app_connection_restore(a.db(), &clock);
        wait_until("capture to work again", async || {
            let (code, _, body) = get(format!("{base}/health")).await;
            let status = na.status().await;
            match (code, &status.capture_error, status.captured) {
                (200, None, 2) => Ok(()),
                other => Err(format!("{other:?} {body}")),
            }
        })
        .await;
        na.shutdown().await;
    });
}

fn app_connection_restore(db: &std::path::Path, clock: &[u8]) {
    common::app(db)
        .execute("UPDATE __concord_rows SET clock = ?1", [clock])
        .unwrap();
}

/// Text that is not UTF-8 (`CAST(x'ff' AS TEXT)`, written by the `sqlite3` shell) used
/// to stop capture of every table while `/health` said ok. It is carried as its bytes:
/// the peer holds them byte for byte, and a row written afterwards to another table
/// arrives; the node never reports capture failing.
#[test]
fn text_that_is_not_utf8_reaches_the_peer_byte_for_byte_and_stops_no_other_table() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let ddl = format!("{DDL}; CREATE TABLE vals(id INTEGER PRIMARY KEY, v TEXT);");
        let (a, b) = (
            Member::new(root.path(), "a", &ddl),
            Member::new(root.path(), "b", &ddl),
        );
        let both = |member: &Member, peers| {
            let mut config = member.config(peers);
            config.store.tables.push("vals".into());
            config
        };
        let na = a.start_with(both(&a, vec![b.dialing_in()])).await;
        let nb = b.start_with(both(&b, vec![a.at(&na)])).await;
        sqlite3(a.db(), "insert into vals values(4, cast(x'ff' as text));");
        sqlite3(a.db(), "insert into t values(1, 'written after');");
        wait_for_rows(
            "the row written after it",
            b.db(),
            &[(1, "written after".to_owned())],
        )
        .await;
        let hex = |db: &std::path::Path| -> String {
            common::app(db)
                .query_row("SELECT hex(v) FROM vals WHERE id = 4", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(hex(b.db()), "FF");
        assert_eq!(hex(b.db()), hex(a.db()));
        assert_eq!(na.status().await.capture_error, None);
        assert_eq!(na.health().status, "ok");
        na.shutdown().await;
        nb.shutdown().await;
    });
}

/// Runs `sql` in the `sqlite3` shell: a separate process with no Concord code.
fn sqlite3(db: &std::path::Path, sql: &str) {
    let out = std::process::Command::new("sqlite3")
        .args(["-bail", "-cmd", ".timeout 30000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 shell is installed (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn get(url: String) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), content_type, body)
    })
    .await
    .unwrap()
}
