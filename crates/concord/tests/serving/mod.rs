//! What the tests of `concord serve` share: running the real binary with a timeout,
//! setting nodes up as a user would (init, then appending `[[peers]]`), serving them as
//! child processes that are killed when dropped, and reading their files and status.
#![allow(dead_code, unreachable_pub)]

use std::ffi::OsStr;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How long any wait lasts before the test fails.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn concord_command<I, S>(args: I) -> Command
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
pub(crate) fn concord<I, S>(args: I) -> Output
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
pub(crate) fn wait_for_exit(child: &mut Child) -> Option<ExitStatus> {
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

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
pub(crate) fn ok(out: Output) -> String {
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
pub(crate) fn fails_mentioning(out: Output, needles: &[&str]) -> String {
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
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Creates `dir/app.db` with table `t`, then runs `concord init` for it on free ports.
/// Returns the fingerprint `init` printed, and the peer port.
pub(crate) fn init_node(dir: &Path, name: &str) -> (String, u16) {
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
pub(crate) fn add_peer(dir: &Path, name: &str, fingerprint: &str, address: Option<String>) {
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
pub(crate) struct Served {
    child: Child,
    dir: PathBuf,
}

impl Served {
    pub(crate) fn start(dir: &Path) -> Self {
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
    pub(crate) fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- {} stdout:\n{}--- stderr:\n{}",
            s(&self.dir),
            read("serve.out"),
            read("serve.err")
        )
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
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
pub(crate) fn wait_until(
    what: &str,
    nodes: &[&Served],
    mut check: impl FnMut() -> Result<(), String>,
) {
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

pub(crate) fn rows(db: &Path) -> Vec<(i64, String)> {
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
pub(crate) fn metadata(db: &Path) -> String {
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

pub(crate) fn write(db: &Path, sql: &str) {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
        .unwrap();
}

/// `concord status --dir dir --json`, parsed; an error while the node is starting.
pub(crate) fn try_status_json(dir: &Path) -> Result<serde_json::Value, String> {
    let out = concord(["status", "--dir", &s(dir), "--json"]);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `concord status --dir dir --json`, parsed.
pub(crate) fn status_json(dir: &Path) -> serde_json::Value {
    let out = ok(concord(["status", "--dir", &s(dir), "--json"]));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status --json does not parse: {e}\n{out}"))
}
