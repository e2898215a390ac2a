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
//!
//! The same over a PostgreSQL node is in `serve_postgres.rs`, a binary of its own because
//! it needs a server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::ffi::OsStr;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How long any wait lasts before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);

fn concord_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
    command.args(args).env_remove("CONCORD_LOG");
    command
}

/// Runs `concord args` to completion, killing it (and failing) after [`TIMEOUT`].
/// Output goes through files, so a chatty process never blocks on a full pipe.
fn concord<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut command = concord_command(args);
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut child)
        .unwrap_or_else(|| panic!("timed out after {TIMEOUT:?} waiting for {described} to exit"));
    Output {
        status,
        stdout: std::fs::read(out.path()).unwrap(),
        stderr: std::fs::read(err.path()).unwrap(),
    }
}

/// Waits for `child` to exit; on timeout kills it and returns `None`.
fn wait_for_exit(child: &mut Child) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "expected success, got {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts a clean failure (non-zero exit, no panic) whose stderr mentions every needle.
fn fails_mentioning(out: Output, needles: &[&str]) -> String {
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "expected a failing exit, got {}\nstdout: {}\nstderr: {err}",
        out.status,
        text(&out.stdout)
    );
    assert!(!err.contains("panicked"), "the binary panicked: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr does not mention {needle:?}: {err}"
        );
    }
    err
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Creates `dir/app.db` with table `t`, then runs `concord init` for it on free ports.
/// Returns the fingerprint `init` printed, and the peer port.
fn init_node(dir: &Path, name: &str) -> (String, u16) {
    std::fs::create_dir_all(dir).unwrap();
    Connection::open(dir.join("app.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let (listen, http) = (free_port(), free_port());
    let out = ok(concord([
        "init",
        "--dir",
        &s(dir),
        "--name",
        name,
        "--sqlite",
        "app.db",
        "--tables",
        "t",
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--http",
        &format!("127.0.0.1:{http}"),
    ]));
    let fingerprint = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("init printed no fingerprint: {out}"))
        .trim()
        .to_owned();
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");
    (fingerprint, listen)
}

/// Appends a `[[peers]]` table to `dir/concord.toml`, as the user would.
fn add_peer(dir: &Path, name: &str, fingerprint: &str, address: Option<String>) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("concord.toml"))
        .unwrap();
    writeln!(
        file,
        "\n[[peers]]\nname = {name:?}\nfingerprint = {fingerprint:?}"
    )
    .unwrap();
    if let Some(address) = address {
        writeln!(file, "address = {address:?}").unwrap();
    }
}

/// A running `concord serve`, killed when dropped (also when the test fails).
struct Served {
    child: Child,
    dir: PathBuf,
}

impl Served {
    fn start(dir: &Path) -> Self {
        let child = concord_command(["serve", "--dir", &s(dir)])
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("serve.out")).unwrap())
            .stderr(File::create(dir.join("serve.err")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            dir: dir.to_owned(),
        }
    }

    /// What the process printed so far, for failure messages.
    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- {} stdout:\n{}--- stderr:\n{}",
            s(&self.dir),
            read("serve.out"),
            read("serve.err")
        )
    }

    /// Sends SIGTERM and waits for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "could not send SIGTERM");
        let status = wait_for_exit(&mut self.child);
        status.unwrap_or_else(|| {
            panic!(
                "timed out after {TIMEOUT:?} waiting for serve to exit on SIGTERM\n{}",
                self.logs()
            )
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Ok`, failing after [`TIMEOUT`] with `what`, the last
/// `Err` and the nodes' logs.
fn wait_until(what: &str, nodes: &[&Served], mut check: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(last) => last,
        };
        if start.elapsed() > TIMEOUT {
            let logs: Vec<String> = nodes.iter().map(|n| n.logs()).collect();
            panic!(
                "timed out after {TIMEOUT:?} waiting for {what}; last seen: {last}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rows(db: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Concord's view of a tracked file, for failure messages: pending writes, log
/// entries, origins and capture triggers.
fn metadata(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    let one = |sql: &str| -> String {
        match conn.query_row(sql, [], |r| r.get::<_, String>(0)) {
            Ok(v) => v,
            Err(e) => format!("({e})"),
        }
    };
    format!(
        "{}: pending {}, log {}, origins [{}], triggers [{}]",
        s(db),
        one("SELECT count(*) || '' FROM __concord_pending"),
        one("SELECT count(*) || '' FROM __concord_log"),
        one("SELECT group_concat(hex(node_id) || '=' || seq, ' ') FROM __concord_origins"),
        one("SELECT group_concat(name, ' ') FROM sqlite_master WHERE type = 'trigger'"),
    )
}

fn write(db: &Path, sql: &str) {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
        .unwrap();
}

/// `concord status --dir dir --json`, parsed; an error while the node is starting.
fn try_status_json(dir: &Path) -> Result<serde_json::Value, String> {
    let out = concord(["status", "--dir", &s(dir), "--json"]);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `concord status --dir dir --json`, parsed.
fn status_json(dir: &Path) -> serde_json::Value {
    let out = ok(concord(["status", "--dir", &s(dir), "--json"]));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status --json does not parse: {e}\n{out}"))
}

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
