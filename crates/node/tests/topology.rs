//! Real nodes in the shapes people deploy them: a mesh, a hub with spokes, a chain of
//! relays; each on real sockets with mutual TLS, each beside a SQLite file written by
//! ordinary rusqlite connections.
//!
//! Risks covered:
//! * a mesh whose nodes write the same rows concurrently ends with different tables or
//!   different version vectors (changes lost, applied twice, or merged differently when
//!   they arrive twice, over two paths);
//! * a hub that does not forward a spoke's changes to the other spokes, or forwards them
//!   under its own origin (so they would come back, or be counted twice);
//! * a change that does not cross more than one relay, or only in one direction;
//! * a node that was down misses what was written meanwhile, or receives it twice;
//! * a source transaction that becomes visible at a peer in part;
//! * one transaction a destination refuses (a constraint it alone has) blocks everything
//!   after it, or is applied in part, or its peer's status row does not say so (how
//!   many of its changes wait here, and why the latest was set aside);
//! * `/health`, `/v1/status` and `/metrics` missing, unparsable, or reporting a wrong
//!   lag for a peer; `/health` saying ok while a configured peer is missing;
//! * a transaction whose changes do not fit in one frame blocks the channel forever;
//! * a node that received a large transaction from a peer stops sending that peer its
//!   own later writes;
//! * a session that fails (and is retried) when several new origins appear at once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    DDL, Lcg, Member, TIMEOUT, assert_log_matches_holds, assert_no_panics, eventually, holds,
    insert_rows, peer, pending, rows, scalar, wait_for_rows, wait_until, write,
};
use concord_node::Node;

/// Starts a full mesh of three: `a` listens, `b` listens and dials `a`, `c` dials both,
/// so each pair has exactly one dialer.
async fn mesh_of_three(root: &Path) -> ([Member; 3], [Node; 3]) {
    let [a, b, c] = ["a", "b", "c"].map(|n| Member::new(root, n, DDL));
    let na = a.start(vec![b.dialing_in(), c.dialing_in()]).await;
    let nb = b.start(vec![a.at(&na), c.dialing_in()]).await;
    let nc = c.start(vec![a.at(&na), b.at(&nb)]).await;
    ([a, b, c], [na, nb, nc])
}

/// `Ok` once every member has captured all its writes, every database holds the same
/// rows, and every node's version vector is the same.
async fn converged(members: &[&Member], nodes: &[&Node]) -> Result<(), String> {
    for m in members {
        let p = pending(&m.store_file());
        if p > 0 {
            return Err(format!("{} has {p} writes not captured yet", m.name));
        }
    }
    let with_db: Vec<&&Member> = members.iter().filter(|m| m.db.is_some()).collect();
    if let Some(first) = with_db.first() {
        let expected = rows(first.db());
        for m in &with_db[1..] {
            let got = rows(m.db());
            if got != expected {
                // Enough to tell a stuck stream (holds differ) from a divergence (same
                // holds, different rows) when this fails.
                let mut holds_now = Vec::new();
                for (mm, n) in members.iter().zip(nodes) {
                    holds_now.push((mm.name.clone(), holds(&n.status().await)));
                }
                let count =
                    |p: &Path, t: &str| common::scalar(p, &format!("SELECT count(*) FROM {t}"));
                return Err(format!(
                    "{} has {expected:?}, {} has {got:?}; set aside {} / {}; conflicts {} / {}; holds {holds_now:?}",
                    first.name,
                    m.name,
                    count(first.db(), "__concord_failures"),
                    count(m.db(), "__concord_failures"),
                    count(first.db(), "__concord_conflicts"),
                    count(m.db(), "__concord_conflicts"),
                ));
            }
        }
    }
    let mut vectors = Vec::new();
    for (m, n) in members.iter().zip(nodes) {
        vectors.push((m.name.clone(), holds(&n.status().await)));
    }
    if vectors.windows(2).any(|w| w[0].1 != w[1].1) {
        return Err(format!("version vectors differ: {vectors:?}"));
    }
    Ok(())
}

/// One transaction of one to four random writes (upsert, update, delete) on ids
/// `1..=keys`, so several nodes write the same rows.
fn random_transaction(path: &Path, rng: &mut Lcg, keys: u64, tag: &str) {
    let mut conn = common::app(path);
    let tx = conn.transaction().unwrap();
    for i in 0..=rng.below(4) {
        let id = 1 + rng.below(keys) as i64;
        let v = format!("{tag}.{i}");
        let sql = match rng.below(3) {
            0 => {
                "INSERT INTO t(id, v) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET v = excluded.v"
            }
            1 => "UPDATE t SET v = ?2 WHERE id = ?1",
            _ => "DELETE FROM t WHERE id = ?1 AND ?2 IS NOT NULL",
        };
        tx.execute(sql, rusqlite::params![id, v]).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn mesh_of_three_with_concurrent_writes_to_the_same_rows_converges() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (members, nodes) = mesh_of_three(root.path()).await;
        let mut rng = Lcg::new(7);
        for round in 0..10 {
            for m in &members {
                random_transaction(m.db(), &mut rng, 12, &format!("{}{round}", m.name));
            }
            // Let some rounds sync before the next, and others pile up.
            if round % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        let refs: Vec<&Member> = members.iter().collect();
        let node_refs: Vec<&Node> = nodes.iter().collect();
        wait_until("the mesh to converge", async || {
            converged(&refs, &node_refs).await
        })
        .await;
        for (m, n) in members.iter().zip(&nodes) {
            let status = n.status().await;
            assert_eq!(
                holds(&status).len(),
                3,
                "{} should hold changes of all three origins: {:?}",
                m.name,
                status.holds
            );
            assert_log_matches_holds(&m.name, m.db(), &status);
        }
        assert_no_panics();
        for n in nodes {
            n.shutdown().await;
        }
    });
}

#[test]
fn hub_relays_every_spoke_to_every_other_and_keeps_each_origin() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let hub = Member::relay(root.path(), "hub");
        let spokes = ["s1", "s2", "s3"].map(|n| Member::new(root.path(), n, DDL));
        let nhub = hub
            .start(spokes.iter().map(Member::dialing_in).collect())
            .await;
        let mut nspokes = Vec::new();
        for s in &spokes {
            nspokes.push(s.start(vec![hub.at(&nhub)]).await);
        }
        for (i, s) in spokes.iter().enumerate() {
            let base = 100 * (i as i64 + 1);
            insert_rows(s.db(), base..base + 5, &format!("{} ", s.name));
            insert_rows(s.db(), base + 5..base + 10, &format!("{} ", s.name));
            // Every spoke also writes the same row: concurrent edits through the hub.
            write(
                s.db(),
                &format!(
                    "INSERT INTO t(id, v) VALUES (1, '{0}') ON CONFLICT(id) DO UPDATE SET v = '{0}'",
                    s.name
                ),
            );
        }
        let mut members: Vec<&Member> = spokes.iter().collect();
        members.push(&hub);
        let mut nodes: Vec<&Node> = nspokes.iter().collect();
        nodes.push(&nhub);
        wait_until("every spoke's writes at every other spoke", async || {
            converged(&members, &nodes).await
        })
        .await;
        assert_eq!(rows(spokes[0].db()).len(), 31);

        // Each spoke's changes are held under that spoke's own origin, everywhere.
        let mut own = BTreeMap::new();
        for (s, n) in spokes.iter().zip(&nspokes) {
            let status = n.status().await;
            own.insert(status.node_id.clone(), holds(&status)[&status.node_id]);
            assert_log_matches_holds(&s.name, s.db(), &status);
        }
        for (s, n) in spokes.iter().zip(&nspokes) {
            assert_eq!(
                holds(&n.status().await),
                own,
                "{} holds something other than each spoke's own changes",
                s.name
            );
        }
        let hub_status = nhub.status().await;
        assert_eq!(
            holds(&hub_status),
            own,
            "the hub's holds differ from the spokes'"
        );
        assert_log_matches_holds("hub", &hub.store_file(), &hub_status);
        assert_no_panics();
        nhub.shutdown().await;
        for n in nspokes {
            n.shutdown().await;
        }
    });
}

#[test]
fn changes_cross_a_chain_of_two_relays_in_both_directions() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", DDL);
        let r1 = Member::relay(root.path(), "r1");
        let r2 = Member::relay(root.path(), "r2");
        let b = Member::new(root.path(), "b", DDL);
        let nr1 = r1.start(vec![a.dialing_in(), r2.dialing_in()]).await;
        let na = a.start(vec![r1.at(&nr1)]).await;
        let nr2 = r2.start(vec![r1.at(&nr1), b.dialing_in()]).await;
        let nb = b.start(vec![r2.at(&nr2)]).await;

        insert_rows(a.db(), 1..=5, "from a ");
        let expected = rows(a.db());
        wait_for_rows("a's rows at b, two relays away", b.db(), &expected).await;
        insert_rows(b.db(), 6..=10, "from b ");
        write(b.db(), "UPDATE t SET v = 'edited at b' WHERE id = 1");
        let expected = rows(b.db());
        wait_for_rows("b's rows and edit back at a", a.db(), &expected).await;

        let members = [&a, &r1, &r2, &b];
        let nodes = [&na, &nr1, &nr2, &nb];
        wait_until("all four version vectors to agree", async || {
            converged(&members, &nodes).await
        })
        .await;
        for (m, n) in members.iter().zip(nodes) {
            assert_log_matches_holds(&m.name, &m.store_file(), &n.status().await);
        }
        assert_no_panics();
        for n in [na, nr1, nr2, nb] {
            n.shutdown().await;
        }
    });
}

#[test]
fn restarted_node_catches_up_exactly_once_on_what_it_missed() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let ([a, b, c], [na, nb, nc]) = mesh_of_three(root.path()).await;
        insert_rows(a.db(), 1..=10, "a ");
        insert_rows(b.db(), 11..=20, "b ");
        insert_rows(c.db(), 21..=30, "c ");
        wait_until("the mesh to converge before the outage", async || {
            converged(&[&a, &b, &c], &[&na, &nb, &nc]).await
        })
        .await;

        nc.shutdown().await;
        for k in 0..4 {
            let start = 1000 + 300 * k;
            insert_rows(a.db(), start..start + 300, "a while c was down ");
            let start = 5000 + 200 * k;
            insert_rows(b.db(), start..start + 200, "b while c was down ");
        }
        write(
            a.db(),
            "UPDATE t SET v = 'updated while c was down' WHERE id <= 25",
        );
        write(b.db(), "DELETE FROM t WHERE id BETWEEN 26 AND 28");
        wait_until("a and b to converge while c is down", async || {
            converged(&[&a, &b], &[&na, &nb]).await
        })
        .await;
        let a_status = na.status().await;
        let lag = peer(&a_status, "c").lag_changes;
        assert!(
            lag >= 2000,
            "a should report c lagging by at least the 2,000 inserts, reports {lag}"
        );

        let nc = c.start(vec![a.at(&na), b.at(&nb)]).await;
        wait_until("the restarted node to catch up", async || {
            converged(&[&a, &b, &c], &[&na, &nb, &nc]).await
        })
        .await;
        assert_eq!(rows(c.db()).len(), 30 + 2000 - 3);
        for (m, n) in [(&a, &na), (&b, &nb), (&c, &nc)] {
            assert_log_matches_holds(&m.name, m.db(), &n.status().await);
        }
        assert_eq!(peer(&nc.status().await, "a").state, "connected");
        assert_no_panics();
        for n in [na, nb, nc] {
            n.shutdown().await;
        }
    });
}

/// Polls `sql` on `path` as fast as it can until it returns `last`; returns every
/// distinct value seen, in order.
async fn observe(path: PathBuf, sql: &'static str, last: i64) -> Vec<i64> {
    tokio::task::spawn_blocking(move || {
        let conn = common::app(&path);
        let start = Instant::now();
        let mut seen: Vec<i64> = Vec::new();
        loop {
            let n: i64 = conn.query_row(sql, [], |r| r.get(0)).unwrap();
            if seen.last() != Some(&n) {
                seen.push(n);
            }
            if n == last {
                return seen;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out after {TIMEOUT:?} waiting for `{sql}` to return {last}; seen {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .await
    .unwrap()
}

#[test]
fn a_source_transaction_is_never_visible_in_part_at_the_peer() {
    common::run(async {
        const N: i64 = 5_000;
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let mut config = a.config(vec![b.dialing_in()]);
        // Many batches per transaction, so the receiver must hold the transaction open
        // across them.
        config.sync.batch_changes = 400;
        let na = a.start_with(config).await;
        let nb = b.start(vec![a.at(&na)]).await;

        let watch = tokio::spawn(observe(b.db().to_owned(), "SELECT count(*) FROM t", N));
        insert_rows(a.db(), 1..=N, "inserted ");
        let seen = watch.await.unwrap();
        assert!(
            seen.iter().all(|&n| n == 0 || n == N),
            "b showed part of a {N}-row insert transaction: {seen:?}"
        );

        let watch = tokio::spawn(observe(
            b.db().to_owned(),
            "SELECT count(*) FROM t WHERE v = 'updated'",
            N,
        ));
        write(a.db(), "UPDATE t SET v = 'updated'");
        let seen = watch.await.unwrap();
        assert!(
            seen.iter().all(|&n| n == 0 || n == N),
            "b showed part of a {N}-row update transaction: {seen:?}"
        );

        let watch = tokio::spawn(observe(b.db().to_owned(), "SELECT count(*) FROM t", N / 2));
        write(a.db(), "DELETE FROM t WHERE id % 2 = 0");
        let seen = watch.await.unwrap();
        assert!(
            seen.iter().all(|&n| n == N || n == N / 2),
            "b showed part of a {}-row delete transaction: {seen:?}",
            N / 2
        );
        assert_eq!(rows(a.db()), rows(b.db()));
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

#[test]
fn a_transaction_the_destination_refuses_is_set_aside_and_later_ones_still_arrive() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", DDL);
        let b = Member::new(
            root.path(),
            "b",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v <> 'forbidden'))",
        );
        let na = a.start(vec![b.dialing_in()]).await;
        let nb = b.start(vec![a.at(&na)]).await;

        insert_rows(a.db(), [1], "before ");
        wait_for_rows("the first transaction at b", b.db(), &rows(a.db())).await;
        // One source transaction: a row b refuses and a row it would accept alone.
        write(
            a.db(),
            "INSERT INTO t(id, v) VALUES (2, 'forbidden'); INSERT INTO t(id, v) VALUES (3, 'fine')",
        );
        wait_until("b to set the refused transaction aside", async || {
            let status = nb.status().await;
            match status.failures {
                0 => Err(format!("failures 0, peer a: {:?}", peer(&status, "a"))),
                _ => Ok(()),
            }
        })
        .await;
        insert_rows(a.db(), [4], "after ");
        wait_for_rows(
            "the transaction after the refused one at b",
            b.db(),
            &[(1, "before 1".into()), (4, "after 4".into())],
        )
        .await;

        let status = nb.status().await;
        assert_eq!(
            status.failures, 2,
            "both changes of the refused transaction are recorded"
        );
        let from_a = peer(&status, "a");
        assert_eq!(from_a.set_aside, 2, "{from_a:?}");
        // The peer's row says its writes are waiting here, and why.
        assert_eq!(from_a.failures, 2, "{from_a:?}");
        let why = from_a.last_failure.as_deref().unwrap_or_default();
        assert!(why.contains("CHECK"), "{from_a:?}");
        assert_eq!(from_a.state, "connected", "{from_a:?}");
        assert_eq!(
            from_a.errors, 0,
            "setting aside must not end the session: {from_a:?}"
        );
        let a_status = na.status().await;
        assert_eq!(
            holds(&status)[&a_status.node_id],
            holds(&a_status)[&a_status.node_id],
            "b counts the set-aside changes as held, so they are not sent again"
        );
        let failures = scalar(
            b.db(),
            "SELECT count(*) FROM __concord_failures WHERE error LIKE '%CHECK%'",
        );
        assert_eq!(failures, 2, "the failure records name the constraint");
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

/// GET `url`: status code, content type, body.
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

/// The value of a Prometheus sample line `name{peer="peer"} value`.
fn sample(metrics: &str, name: &str, peer: &str) -> Option<f64> {
    let prefix = format!("{name}{{peer=\"{peer}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn http_reports_health_naming_a_missing_peer_status_and_per_peer_lag_and_counters() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let mut config = a.config(vec![b.dialing_in()]);
        config.node.http = Some("127.0.0.1:0".parse().unwrap());
        let na = a.start_with(config).await;
        let base = format!("http://{}", na.http_addr().expect("http is configured"));

        // b is expected to dial in and has not: /health names it.
        let (code, _, body) = get(format!("{base}/health")).await;
        assert_eq!(code, 503, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "missing_peers", "{body}");
        assert_eq!(health["missing"][0]["name"], "b", "{body}");
        assert_eq!(health["missing"][0]["link"], "dials_in", "{body}");

        // b is configured but not running: what a holds is lag for b.
        insert_rows(a.db(), 1..=3, "a ");
        let url = format!("{base}/v1/status");
        wait_until("a to capture three changes", async || {
            let (_, _, body) = get(url.clone()).await;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            match status["peers"][0]["lag_changes"].as_u64() {
                Some(3) => Ok(()),
                _ => Err(body),
            }
        })
        .await;
        let (code, content_type, body) = get(format!("{base}/v1/status")).await;
        assert_eq!(code, 200);
        assert!(content_type.contains("application/json"), "{content_type}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["name"], "a", "{body}");
        assert_eq!(status["peers"][0]["name"], "b", "{body}");
        assert_eq!(status["peers"][0]["state"], "waiting", "{body}");
        assert_eq!(status["peers"][0]["lag_changes"], 3, "{body}");
        let (code, content_type, metrics) = get(format!("{base}/metrics")).await;
        assert_eq!(code, 200);
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert_eq!(
            sample(&metrics, "concord_peer_lag_changes", "b"),
            Some(3.0),
            "{metrics}"
        );

        let nb = b.start(vec![a.at(&na)]).await;
        wait_for_rows("a's rows at b", b.db(), &rows(a.db())).await;
        wait_until("b's lag at a to reach 0", async || {
            let (_, _, body) = get(url.clone()).await;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            let p = &status["peers"][0];
            if p["lag_changes"] == 0 && p["state"] == "connected" {
                Ok(())
            } else {
                Err(p.to_string())
            }
        })
        .await;
        let (code, _, body) = get(format!("{base}/health")).await;
        assert_eq!(code, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "ok", "{body}");
        assert_eq!(health["missing"], serde_json::json!([]), "{body}");
        let (_, _, metrics) = get(format!("{base}/metrics")).await;
        assert_eq!(
            sample(&metrics, "concord_changes_sent_total", "b"),
            Some(3.0),
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "concord_peer_lag_changes", "b"),
            Some(0.0),
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "concord_peer_connected", "b"),
            Some(1.0),
            "{metrics}"
        );
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

#[test]
fn a_transaction_larger_than_one_frame_still_syncs() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let small_frames = |mut config: concord_node::NodeConfig| {
            config.sync.max_frame_bytes = 64 * 1024;
            config
        };
        let na = a
            .start_with(small_frames(a.config(vec![b.dialing_in()])))
            .await;
        let nb = b.start_with(small_frames(b.config(vec![a.at(&na)]))).await;
        // 300 rows of 1 KB in one transaction: about 300 KB of changes, well within what a
        // node must carry, but more than one 64 KiB frame.
        let big = "x".repeat(1000);
        write(
            a.db(),
            &format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
                 INSERT INTO t(id, v) SELECT i, '{big}' FROM n"
            ),
        );
        let expected = rows(a.db());
        wait_until("a 300 KB transaction at b", async || {
            let got = rows(b.db());
            if got == expected {
                return Ok(());
            }
            let status = na.status().await;
            Err(format!(
                "b has {} rows; a's view of b: {:?}",
                got.len(),
                peer(&status, "b")
            ))
        })
        .await;
        eventually("b to report a connected", async || {
            peer(&nb.status().await, "a").state == "connected"
        })
        .await;
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

#[test]
fn a_node_keeps_sending_its_writes_after_receiving_a_large_transaction_from_the_peer() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            Member::new(root.path(), "a", DDL),
            Member::new(root.path(), "b", DDL),
        );
        let na = a.start(vec![b.dialing_in()]).await;
        let nb = b.start(vec![a.at(&na)]).await;
        // 2,000 changes from a: in b's log, two pages of entries a already holds.
        insert_rows(a.db(), 1..=2_000, "from a ");
        wait_for_rows("a's transaction at b", b.db(), &rows(a.db())).await;
        insert_rows(b.db(), [5_000], "from b ");
        let expected = rows(b.db());
        wait_until("b's next write at a", async || {
            if rows(a.db()) == expected {
                return Ok(());
            }
            let status = nb.status().await;
            Err(format!("b's view of a: {:?}", peer(&status, "a")))
        })
        .await;
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}

#[test]
fn sessions_survive_many_new_origins_appearing_at_once() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let hub = Member::relay(root.path(), "hub");
        let spokes: Vec<Member> = (1..=5)
            .map(|i| Member::new(root.path(), &format!("s{i}"), DDL))
            .collect();
        let nhub = hub
            .start(spokes.iter().map(Member::dialing_in).collect())
            .await;
        let mut nspokes = Vec::new();
        for s in &spokes {
            nspokes.push(s.start(vec![hub.at(&nhub)]).await);
        }
        // Every spoke writes at once: the hub and each spoke learn several new origins
        // at nearly the same moment, while their senders are reading their logs.
        for round in 0..5 {
            for (i, s) in spokes.iter().enumerate() {
                insert_rows(s.db(), [100 * i as i64 + round], "x");
            }
        }
        let mut members: Vec<&Member> = spokes.iter().collect();
        members.push(&hub);
        let mut nodes: Vec<&Node> = nspokes.iter().collect();
        nodes.push(&nhub);
        wait_until("the hub and spokes to converge", async || {
            converged(&members, &nodes).await
        })
        .await;
        for (m, n) in members.iter().zip(&nodes) {
            for p in &n.status().await.peers {
                assert_eq!(
                    p.errors, 0,
                    "{}: a session with {} failed and was retried: {p:?}",
                    m.name, p.name
                );
                assert_eq!(p.state, "connected", "{}: {p:?}", m.name);
            }
        }
        assert_no_panics();
        nhub.shutdown().await;
        for n in nspokes {
            n.shutdown().await;
        }
    });
}

#[test]
fn a_node_loading_from_a_peer_reports_what_is_left_to_receive() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let a = Member::new(root.path(), "a", common::DDL);
        let b = Member::new(root.path(), "b", common::DDL);
        insert_rows(a.db(), 1..=2000, "existing ");
        // `a` sends one change per batch and waits for each acknowledgement, so the load
        // takes thousands of round trips and b's status is sampled while it lasts.
        let mut config = a.config(vec![b.dialing_in()]);
        config.sync.batch_changes = 1;
        config.sync.window = 1;
        let na = a.start_with(config).await;
        na.capture_now().await.unwrap();
        let nb = b.start(vec![a.at(&na)]).await;
        let mut seen = Vec::new();
        wait_until("b to load every row and report nothing left", async || {
            let status = nb.status().await;
            let incoming = peer(&status, "a").incoming_changes;
            seen.push(incoming);
            let held = rows(b.db()).len();
            if held == 2000 && incoming == 0 {
                Ok(())
            } else {
                Err(format!("{held} rows, {incoming} changes left"))
            }
        })
        .await;
        let during: Vec<u64> = seen.iter().copied().filter(|&n| n > 0).collect();
        assert!(
            !during.is_empty(),
            "status never showed changes left to receive while loading: {seen:?}"
        );
        assert!(
            during.iter().all(|&n| n <= 2000),
            "never more left than a holds: {during:?}"
        );
        let metrics = nb.metrics().await;
        assert_eq!(
            sample(&metrics, "concord_peer_incoming_changes", "a"),
            Some(0.0),
            "{metrics}"
        );
        assert_no_panics();
        na.shutdown().await;
        nb.shutdown().await;
    });
}
