//! `concord init`, `serve` and `status` as a user runs them: real processes, real
//! sockets, configuration files edited as text, SQLite files written by ordinary
//! connections.
//!
//! Risks covered:
//! * two nodes set up by following `init`'s instructions (append each other's
//!   fingerprint as a `[[peers]]` table) do not connect or do not sync, in either
//!   direction;
//! * `status` (table or `--json`) that does not show a connected peer, does not parse,
//!   or does not notice the peer going away;
//! * `serve` that ignores SIGTERM or does not exit cleanly on it;
//! * `serve` on an invalid `concord.toml` that starts anyway, panics, or fails without
//!   naming the file and the problem (all of them at once), or that runs with a peer
//!   holding the node's own fingerprint or two peers sharing one;
//! * a node dialing a peer that does not know it, told only of a TLS alert; the peer's
//!   status not naming the fingerprint it refused;
//! * a serve log in Rust debug formatting (`Some(...)`), or a peer's orderly shutdown
//!   shown as an error;
//! * `init` that overwrites an existing node (its identity and configuration);
//! * `status` against a node that is not running that hangs or gives no hint to start it;
//! * `--help` of `init`, `serve` or `status` that does not explain the subcommand.
//! * a row the link's mapping cannot convert (text `'abc'` for the peer's integer
//!   column) that stops the stream to that peer, loops reconnecting, or is not listed
//!   by `concord failures --dir` on both ends; `concord failures retry` that does not
//!   deliver it once the data is fixed.
//!
//! The same over a PostgreSQL node is in `serve_postgres.rs`, a binary of its own because
//! it needs a server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod serving;

use serving::*;

#[test]
fn two_served_nodes_sync_both_ways_and_status_shows_the_peer() {
    let root = tempfile::tempdir().unwrap();
    let (d1, d2) = (root.path().join("n1"), root.path().join("n2"));
    let (f1, port1) = init_node(&d1, "n1");
    let (f2, _) = init_node(&d2, "n2");
    // n2 dials n1; n1 waits for it.
    add_peer(&d1, "n2", &f2, None);
    add_peer(&d2, "n1", &f1, Some(format!("127.0.0.1:{port1}")));
    let n1 = Served::start(&d1);
    let mut n2 = Served::start(&d2);
    let nodes = [&n1, &n2];

    let (db1, db2) = (d1.join("app.db"), d2.join("app.db"));
    write(
        &db1,
        "INSERT INTO t VALUES (1, 'one'); INSERT INTO t VALUES (2, 'two'); INSERT INTO t VALUES (3, 'three')",
    );
    wait_until("n1's rows at n2", &nodes, || {
        let got = rows(&db2);
        if got.len() == 3 {
            Ok(())
        } else {
            Err(format!("{got:?}\n{}\n{}", metadata(&db1), metadata(&db2)))
        }
    });
    write(&db2, "UPDATE t SET v = 'two, edited at n2' WHERE id = 2");
    wait_until("n2's edit at n1", &nodes, || {
        let got = rows(&db1);
        if got == rows(&db2) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    let table = ok(concord(["status", "--dir", &s(&d1)]));
    assert!(table.contains("PEER") && table.contains("STATE"), "{table}");
    assert!(
        table.contains(&f1),
        "status names the node's fingerprint: {table}"
    );
    let line = table
        .lines()
        .find(|l| l.starts_with("n2"))
        .unwrap_or_else(|| panic!("no row for peer n2: {table}"));
    assert!(line.contains("connected"), "{table}");

    let json = status_json(&d1);
    assert_eq!(json["name"], "n1", "{json}");
    assert_eq!(json["fingerprint"], f1.as_str(), "{json}");
    let peer = &json["peers"][0];
    assert_eq!(peer["name"], "n2", "{json}");
    assert_eq!(peer["state"], "connected", "{json}");
    assert_eq!(peer["fingerprint"], f2.as_str(), "{json}");
    assert!(peer["received"].as_u64().unwrap() >= 1, "{json}");

    // SIGTERM stops n2 cleanly, and n1 notices.
    let status = n2.terminate();
    assert!(
        status.success(),
        "serve exited with {status} on SIGTERM\n{}",
        n2.logs()
    );
    assert!(n2.logs().contains("shutting down"), "{}", n2.logs());
    wait_until("n1 to see n2 gone", &[&n1], || {
        let json = status_json(&d1);
        if json["peers"][0]["state"] == "waiting" {
            Ok(())
        } else {
            Err(json["peers"][0].to_string())
        }
    });
    // An orderly shutdown is an event, not an error.
    let json = status_json(&d1);
    let peer = &json["peers"][0];
    assert_eq!(peer["last_error"], serde_json::Value::Null, "{json}");
    assert_eq!(peer["last_event"], "the peer shut down", "{json}");
    let table = ok(concord(["status", "--dir", &s(&d1)]));
    assert!(!table.contains("error:"), "{table}");

    // Logs are for people: no Rust debug formatting, no enum names.
    for node in [&n1, &n2] {
        let logs = node.logs();
        for debug in ["Some(", "ShuttingDown"] {
            assert!(!logs.contains(debug), "{debug} in a serve log:\n{logs}");
        }
    }
}

#[test]
fn a_dialer_its_peer_does_not_know_is_told_in_words_and_the_peer_shows_its_fingerprint() {
    let root = tempfile::tempdir().unwrap();
    let (d1, d2) = (root.path().join("n1"), root.path().join("n2"));
    let (f1, port1) = init_node(&d1, "n1");
    let (f2, _) = init_node(&d2, "n2");
    // n2 dials n1, but nobody added n2 to n1's [[peers]].
    add_peer(&d2, "n1", &f1, Some(format!("127.0.0.1:{port1}")));
    let n1 = Served::start(&d1);
    let n2 = Served::start(&d2);
    let nodes = [&n1, &n2];
    wait_until("n2 to say n1 does not know it", &nodes, || {
        let json = try_status_json(&d2)?;
        let error = json["peers"][0]["last_error"].as_str().unwrap_or_default();
        if error.contains("the peer does not know this node") && error.contains(&f2) {
            Ok(())
        } else {
            Err(json["peers"][0].to_string())
        }
    });
    let table = ok(concord(["status", "--dir", &s(&d2)]));
    assert!(table.contains("does not know this node"), "{table}");
    wait_until("n1 to list n2's fingerprint as refused", &nodes, || {
        let json = try_status_json(&d1)?;
        let listed = json["refused"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["fingerprint"] == f2.as_str()));
        if listed {
            Ok(())
        } else {
            Err(json["refused"].to_string())
        }
    });
    let table = ok(concord(["status", "--dir", &s(&d1)]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("refused") && l.contains(&f2)),
        "{table}"
    );
}

#[test]
fn serve_refuses_a_peer_with_the_nodes_own_fingerprint_and_peers_sharing_one() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("me");
    let (own, port) = init_node(&dir, "me");
    add_peer(&dir, "myself", &own, Some(format!("127.0.0.1:{port}")));
    let err = fails_mentioning(
        concord(["serve", "--dir", &s(&dir)]),
        &[
            "\"myself\"",
            "own fingerprint",
            &s(&dir.join("concord.toml")),
        ],
    );
    assert!(!err.contains("serving"), "the node started anyway: {err}");

    let dir = root.path().join("twins");
    init_node(&dir, "twins");
    let (other, _) = init_node(&root.path().join("other"), "other");
    add_peer(&dir, "office", &other, None);
    add_peer(&dir, "shop", &other, None);
    fails_mentioning(
        concord(["serve", "--dir", &s(&dir)]),
        &["\"office\"", "\"shop\"", "same fingerprint"],
    );
}

#[test]
fn serve_with_an_invalid_config_exits_naming_the_file_and_the_problem() {
    let root = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown key",
            "[node]\nname = \"x\"\nlisten_on = \"127.0.0.1:1\"\n[store]\nrelay = true\n",
            &["listen_on", "line 3"][..],
        ),
        ("not TOML", "[node\nname = \"x\"\n", &["line 1"][..]),
        (
            "no store",
            "[node]\nname = \"x\"\n[store]\n",
            &["[store] needs"][..],
        ),
        (
            "host name as listen address",
            "[node]\nname = \"x\"\nlisten = \"localhost:7400\"\n[store]\nrelay = true\n",
            &[
                "\"localhost:7400\" is not an IP address and port",
                "0.0.0.0:7400",
            ][..],
        ),
        (
            "several problems",
            "[node]\nname = \"x\"\n[store]\nrelay = true\n[sync]\nwindow = 0\nbatch_changes = 0\n",
            &["2 problems", "window", "batch_changes"][..],
        ),
        (
            "bad fingerprint",
            "[node]\nname = \"x\"\n[store]\nrelay = true\n[[peers]]\nname = \"p\"\nfingerprint = \"sha256:abcd\"\n",
            &["invalid fingerprint"][..],
        ),
    ];
    for (i, (case, toml, needles)) in cases.iter().enumerate() {
        let dir = root.path().join(format!("case{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("concord.toml");
        std::fs::write(&file, toml).unwrap();
        let out = concord(["serve", "--dir", &s(&dir)]);
        let mut needles = needles.to_vec();
        let file = s(&file);
        needles.push(&file);
        let err = fails_mentioning(out, &needles);
        assert!(
            !err.contains("serving"),
            "{case}: the node started anyway: {err}"
        );
    }
    // No configuration at all.
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_mentioning(
        concord(["serve", "--dir", &s(&empty)]),
        &[&s(&empty.join("concord.toml"))],
    );
}

#[test]
fn init_twice_on_one_directory_fails_naming_it_and_keeps_the_node() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    let (fingerprint, _) = init_node(&dir, "node");
    let config = std::fs::read(dir.join("concord.toml")).unwrap();
    let cert = std::fs::read(dir.join("identity/node.cert.pem")).unwrap();
    fails_mentioning(
        concord([
            "init",
            "--dir",
            &s(&dir),
            "--sqlite",
            "app.db",
            "--tables",
            "t",
        ]),
        &[&s(&dir), "already holds a node configuration"],
    );
    assert_eq!(std::fs::read(dir.join("concord.toml")).unwrap(), config);
    assert_eq!(
        std::fs::read(dir.join("identity/node.cert.pem")).unwrap(),
        cert,
        "the identity (fingerprint {fingerprint}) was replaced"
    );
}

#[test]
fn status_without_a_running_node_suggests_concord_serve() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("idle");
    init_node(&dir, "idle");
    fails_mentioning(
        concord(["status", "--dir", &s(&dir)]),
        &["concord serve --dir", &s(&dir)],
    );
}

#[test]
fn help_of_init_serve_and_status_explains_them() {
    let top = ok(concord(["--help"]));
    for sub in ["init", "serve", "status"] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from the top-level help: {top}"
        );
    }
    let cases: [(&str, &[&str]); 3] = [
        (
            "init",
            &[
                "fingerprint",
                "[[peers]]",
                "concord serve",
                "--sqlite",
                "--tables",
                "--relay",
                "--listen",
                "--http",
            ],
        ),
        (
            "serve",
            &["until interrupted", "mutual TLS", "/metrics", "--dir"],
        ),
        (
            "status",
            &["lag", "last error", "/v1/status", "--json", "--dir"],
        ),
    ];
    for (sub, needles) in cases {
        let help = ok(concord([sub, "--help"]));
        for needle in needles {
            assert!(
                help.contains(needle),
                "`concord {sub} --help` does not mention {needle:?}:\n{help}"
            );
        }
    }
}

/// Two Concord processes on one SQLite file raced each other (both capturing the same
/// writes, both logging the same sequence numbers, `UNIQUE constraint failed` warnings),
/// and `untrack` under a running node left it failing every second. A second `serve`
/// of the file (here: another node directory over the same database) and `untrack` are
/// refused while a node serves it, naming the node; once it stops, `untrack` works.
#[test]
fn a_second_process_on_a_served_file_is_refused_naming_the_node_that_serves_it() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    init_node(&a, "a");
    let db = a.join("app.db");
    let mut served = Served::start(&a);
    wait_until("a to serve", &[&served], || try_status_json(&a).map(|_| ()));

    let copy = root.path().join("copy");
    ok(concord([
        "init",
        "--dir",
        &s(&copy),
        "--sqlite",
        &s(&db),
        "--tables",
        "t",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--http",
        &format!("127.0.0.1:{}", free_port()),
    ]));
    fails_mentioning(
        concord(["serve", "--dir", &s(&copy)]),
        &[
            "another Concord process is working on",
            "app.db",
            &format!("concord serve --dir {}", s(&a)),
        ],
    );
    fails_mentioning(
        concord(["untrack", &s(&db)]),
        &[
            "another Concord process is working on",
            "concord serve --dir",
        ],
    );
    let triggers = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(
        triggers(&db) > 0,
        "untrack removed capture under a running node"
    );
    // The node still serves: a write is captured.
    write(&db, "INSERT INTO t VALUES (1, 'still captured')");
    wait_until("the write captured", &[&served], || {
        let status = status_json(&a);
        match status["captured"].as_u64() {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(format!("{status}")),
        }
    });

    assert!(served.terminate().success(), "{}", served.logs());
    ok(concord(["untrack", &s(&db)]));
    assert_eq!(triggers(&db), 0);
}

/// `concord verify --dir DIR --peer NAME` against two served nodes: rows written while
/// capture was off (as a restore with triggers disabled would) are invisible to sync,
/// and verify is the tool that finds them, every one, with which side holds what; it
/// says why when the peer is unknown or not connected.
#[test]
fn verify_between_two_running_nodes_lists_every_row_that_differs() {
    let root = tempfile::tempdir().unwrap();
    let (d1, d2) = (root.path().join("n1"), root.path().join("n2"));
    let (f1, port1) = init_node(&d1, "n1");
    let (f2, _) = init_node(&d2, "n2");
    add_peer(&d1, "n2", &f2, None);
    add_peer(&d2, "n1", &f1, Some(format!("127.0.0.1:{port1}")));
    let n1 = Served::start(&d1);
    let n2 = Served::start(&d2);
    let nodes = [&n1, &n2];
    let (db1, db2) = (d1.join("app.db"), d2.join("app.db"));
    let mut rows_sql = String::new();
    for id in 1..=300 {
        rows_sql.push_str(&format!("INSERT INTO t VALUES ({id}, 'row {id}');"));
    }
    write(&db1, &rows_sql);
    wait_until("n1's rows at n2", &nodes, || {
        let got = rows(&db2);
        if got.len() == 300 {
            Ok(())
        } else {
            Err(format!("{} rows", got.len()))
        }
    });
    let agree = concord(["verify", "--dir", &s(&d1), "--peer", "n2"]);
    let same = ok(agree);
    assert!(same.contains("t: 0 differ from peer n2"), "{same}");

    // Writes made while capture is off: the sync never hears of them.
    write(
        &db2,
        "INSERT INTO __concord_applying(tbl) VALUES (-1); \
         UPDATE t SET v = 'drifted' WHERE id = 7; DELETE FROM t WHERE id = 150; \
         INSERT INTO t VALUES (1000, 'only on n2'); \
         DELETE FROM __concord_applying",
    );
    let out = concord(["verify", "--dir", &s(&d1), "--peer", "n2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out));
    let listed = text(&out.stdout);
    assert!(listed.contains("t: 3 differ from peer n2"), "{listed}");
    let line = |key: &str| {
        listed
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no line for key {key}: {listed}"))
            .to_owned()
    };
    assert!(line("(7)").contains("values differ"), "{listed}");
    assert!(line("(150)").contains("only on this node"), "{listed}");
    assert!(line("(1000)").contains("only on n2"), "{listed}");

    let out = concord([
        "verify",
        "--dir",
        &s(&d1),
        "--peer",
        "n2",
        "--table",
        "t",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(
        json["tables"][0]["differences"].as_array().map(Vec::len),
        Some(3),
        "{json}"
    );
    assert!(json["tables"][0]["bytes"].as_u64().unwrap() > 0, "{json}");

    fails_mentioning(
        concord(["verify", "--dir", &s(&d1), "--peer", "nobody"]),
        &["nobody", "[[peers]]"],
    );
    fails_mentioning(
        concord([
            "verify",
            "--dir",
            &s(&d1),
            "--peer",
            "n2",
            "--table",
            "nope",
        ]),
        &["nope", "not tracked"],
    );
    drop(n2);
    wait_until("n1 to see n2 gone", &[&n1], || {
        let json = status_json(&d1);
        if json["peers"][0]["state"] != "connected" {
            Ok(())
        } else {
            Err(json["peers"][0].to_string())
        }
    });
    fails_mentioning(
        concord(["verify", "--dir", &s(&d1), "--peer", "n2"]),
        &["n2", "not connected"],
    );
}

fn text_of(out: &std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_row_the_mapping_cannot_convert_is_listed_on_both_ends_and_retry_delivers_it_once_fixed() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let (d1, d2) = (root.path().join("n1"), root.path().join("n2"));
    let (f1, port1) = init_node(&d1, "n1");
    let (f2, _) = init_node(&d2, "n2");
    // n2's `v` holds integers; n1's text, cast on the way.
    write(
        &d2.join("app.db"),
        "DROP TABLE t; CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)",
    );
    add_peer(&d1, "n2", &f2, None);
    writeln!(
        std::fs::OpenOptions::new()
            .append(true)
            .open(d1.join("concord.toml"))
            .unwrap(),
        "[[peers.tables]]\nlocal = \"t\"\nremote = \"t\"\nkey = [\"id\"]\n\
         columns = [{{ local = \"v\", local_type = \"text\", remote_type = \"integer\" }}]"
    )
    .unwrap();
    add_peer(&d2, "n1", &f1, Some(format!("127.0.0.1:{port1}")));
    let mut n1 = Served::start(&d1);
    let n2 = Served::start(&d2);
    let (db1, db2) = (d1.join("app.db"), d2.join("app.db"));
    let at_n2 = || -> Vec<(i64, i64)> {
        let conn = rusqlite::Connection::open(&db2).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let captured = |dir: &std::path::Path| {
        try_status_json(dir)
            .ok()
            .and_then(|j| j["captured"].as_u64())
            .unwrap_or(0)
    };

    write(&db1, "INSERT INTO t VALUES (1, 'abc')");
    // A transaction of its own: wait until it is captured before the next write.
    wait_until("n1 to capture the bad row", &[&n1], || {
        if captured(&d1) >= 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    write(&db1, "INSERT INTO t VALUES (2, '42')");
    wait_until("the good row after the bad one at n2", &[&n1, &n2], || {
        let got = at_n2();
        if got == [(2, 42)] {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    // The table cuts long reasons for display; --json holds them whole.
    let sent = ok(concord(["failures", "--dir", &s(&d1)]));
    assert!(
        sent.contains("outgoing to peer n2") && sent.contains("(1)"),
        "{sent}"
    );
    let sent = ok(concord(["failures", "--dir", &s(&d1), "--json"]));
    assert!(
        sent.contains("abc") && sent.contains("\"outgoing\""),
        "{sent}"
    );
    wait_until("n2 to list what n1 withheld", &[&n1, &n2], || {
        let listed = ok(concord(["failures", "--dir", &s(&d2), "--json"]));
        if listed.contains("withheld by peer n1") && listed.contains("abc") {
            Ok(())
        } else {
            Err(listed)
        }
    });
    let json = status_json(&d1);
    let peer = &json["peers"][0];
    assert_eq!(peer["state"], "connected", "{json}");
    assert_eq!(
        peer["errors"], 0,
        "the session failed and reconnected: {json}"
    );
    assert_eq!(peer["last_error"], serde_json::Value::Null, "{json}");
    assert_eq!(peer["failures"], 1, "{json}");
    assert!(
        peer["last_failure"].as_str().unwrap().contains("abc"),
        "{json}"
    );
    // n2 dials: a dial before n1 listened may count as an error; none is about this.
    let json = status_json(&d2);
    let peer = &json["peers"][0];
    assert_eq!(peer["state"], "connected", "{json}");
    assert!(!peer["last_error"].to_string().contains("cast"), "{json}");

    // Fixed while n1 is stopped, then retried: at its next session n1 sends the row.
    let status = n1.terminate();
    assert!(status.success(), "{}", n1.logs());
    write(&db1, "UPDATE t SET v = '7' WHERE id = 1");
    let retried = ok(concord(["failures", "retry", "--dir", &s(&d1)]));
    assert!(
        retried.contains("1 outgoing transactions will be sent again"),
        "{retried}"
    );
    let n1 = Served::start(&d1);
    wait_until("the fixed row at n2", &[&n1, &n2], || {
        let got = at_n2();
        if got == [(1, 7), (2, 42)] {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    wait_until("n1 to forget the delivered entry", &[&n1, &n2], || {
        let listed = ok(concord(["failures", "--dir", &s(&d1)]));
        if listed == "no changes set aside\n" {
            Ok(())
        } else {
            Err(listed)
        }
    });
}
