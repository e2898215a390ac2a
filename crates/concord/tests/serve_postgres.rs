//! `concord init --postgres` and `serve` as a user runs them, against a real PostgreSQL
//! server: a node set up with `init --postgres` that does not capture or apply through
//! its PostgreSQL database, or does not sync with a SQLite node.
//!
//! Why a file of its own: it needs a PostgreSQL server, so it is a `harness = false`
//! binary run through `concord_harness::server_tests!` (`CONCORD_TEST_POSTGRES_URL`, else
//! the usual local server if it answers, else reported as ignored with the reason; a
//! variable naming a server that does not answer fails it). It used to sit in
//! `serve.rs`, where a missing server made it pass without running. The helpers below
//! are the ones of `serve.rs` it uses.
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

fn write(db: &Path, sql: &str) {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
        .unwrap();
}

/// `concord status --dir dir --json`, parsed.
fn status_json(dir: &Path) -> serde_json::Value {
    let out = ok(concord(["status", "--dir", &s(dir), "--json"]));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status --json does not parse: {e}\n{out}"))
}

/// A PostgreSQL database created for one test and dropped at its end.
struct PgDatabase {
    admin: String,
    name: String,
}

impl PgDatabase {
    fn create(admin: &str, ddl: &str) -> Self {
        let name = format!("concord_serve_{}", std::process::id());
        let mut client = postgres::Client::connect(admin, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = Self {
            admin: admin.into(),
            name,
        };
        db.client().batch_execute(ddl).unwrap();
        db
    }

    fn url(&self) -> String {
        let (root, _) = self.admin.rsplit_once('/').unwrap();
        format!("{root}/{}", self.name)
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    fn rows(&self) -> Vec<(i64, String)> {
        self.client()
            .query("SELECT id::int8, v FROM t ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

concord_harness::server_tests! {
    fn a_node_served_over_postgres_syncs_with_a_node_served_over_sqlite(admin: postgres) {
        let pg = PgDatabase::create(admin, "CREATE TABLE t(id integer PRIMARY KEY, v text)");
        let root = tempfile::tempdir().unwrap();
        let (dp, dl) = (root.path().join("pg"), root.path().join("lite"));
        let (listen, http) = (free_port(), free_port());
        let out = ok(concord([
            "init",
            "--dir",
            &s(&dp),
            "--name",
            "pg",
            "--postgres",
            &pg.url(),
            "--tables",
            "t",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--http",
            &format!("127.0.0.1:{http}"),
        ]));
        let fp = out
            .lines()
            .find_map(|l| l.strip_prefix("fingerprint: "))
            .unwrap()
            .trim()
            .to_owned();
        let (fl, _) = init_node(&dl, "lite");
        add_peer(&dp, "lite", &fl, None);
        add_peer(&dl, "pg", &fp, Some(format!("127.0.0.1:{listen}")));
        let mut np = Served::start(&dp);
        let mut nl = Served::start(&dl);
        let db = dl.join("app.db");

        pg.client()
            .batch_execute("INSERT INTO t VALUES (1, 'from postgres'), (2, 'also from postgres')")
            .unwrap();
        write(&db, "INSERT INTO t VALUES (3, 'from sqlite')");
        wait_until("both databases to hold all three rows", &[&np, &nl], || {
            let (p, l) = (pg.rows(), rows(&db));
            if p.len() == 3 && p == l {
                Ok(())
            } else {
                Err(format!("postgres {p:?}, sqlite {l:?}"))
            }
        });
        let json = status_json(&dp);
        assert!(
            json["store"].as_str().unwrap().starts_with("postgres://"),
            "status names the PostgreSQL store: {json}"
        );
        assert_eq!(json["peers"][0]["state"], "connected", "{json}");
        for node in [&mut nl, &mut np] {
            let status = node.terminate();
            assert!(status.success(), "{}", node.logs());
        }
    }
}
