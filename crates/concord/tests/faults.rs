//! The short mode of the fault harness (issue 5): real `concord serve` processes, a
//! fault-injecting proxy on every link, ordinary SQLite connections writing on every
//! node, and a checker that proves nothing committed was lost, duplicated or seen in
//! part, and that every shared row holds the last writer's value.
//!
//! Two topologies, one test each, run one after the other:
//! * a **mesh** of three nodes, every pair linked;
//! * a **hub**: a relay node (`relay = true`, no database of its own) and three spokes
//!   that each link only to the hub, so every change between spokes crosses it.
//!
//! Risks covered:
//! * a write committed locally that never reaches the other nodes, or is lost by its
//!   own node, after dropped connections, a delayed link, a slow (bandwidth-capped)
//!   link, a black-holed link, a partition of the network into two groups, or a
//!   SIGKILL of a node (also right after a partition heals, while it catches up; the
//!   hub too);
//! * one node whose wall clock is 90 s off (libfaketime, for its `concord serve` and
//!   for the process writing to its database): ahead in the mesh, behind in the hub;
//! * a delete, a re-insert or a primary-key change lost or resurrected;
//! * a source transaction visible in part on another node, at any moment during the
//!   run (periodic snapshots) or at the end;
//! * a node that loses changes it had applied (its view of an origin going back);
//! * a row duplicated, a change logged twice, a value nobody wrote;
//! * a shared row whose value is a committed write but not the last writer's (by
//!   version, per column, with causal lengths deciding deletes);
//! * nodes that do not converge (same rows, same version vectors, nothing pending)
//!   within a bound once the network heals.
//!
//! How the checking stays exact is explained in `concord_harness::model`. Each test
//! prints its seed; set `CONCORD_HARNESS_SEED` to replay the same schedule of writes and
//! faults (thread timing still varies), and `CONCORD_HARNESS_MINUTES=N` for the long
//! mode (rounds of faults for N minutes, per test).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_core::{NodeId, Value, VersionVector};
use concord_harness::model::{
    self, Effect, Key, Layout, LoggedChange, Progress, Row, Table, Txn, Version,
};
use concord_harness::process::ServeProcess;
use concord_harness::proxy::Proxy;
use concord_harness::rng::Rng;
use concord_harness::skew::{self, ClockSkew};
use concord_harness::topology::{self, Link};
use concord_sqlite::LogReader;
use rusqlite::Connection;
use rusqlite::OpenFlags;

/// Nodes with a database and a writer; the hub topology adds a relay.
const WRITERS: usize = 3;
/// The fixed seeds of the short mode.
const MESH_SEED: u64 = 0x00C0_FFEE_5EED_0005;
const HUB_SEED: u64 = 0x00C0_FFEE_5EED_0006;
/// Once the faults stop and the links heal, the nodes must agree within this.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// Any other wait (nodes connecting at start).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The session stall timeout the nodes run with, so a black hole is noticed quickly.
const STALL_TIMEOUT_S: u64 = 3;
/// The nodes' default `retention_changes`.
const DEFAULT_RETENTION_CHANGES: u64 = 1_000_000;

/// The retention the nodes run with. A long run logs more than the default keeps; it
/// raises the limit so the last-writer check, which needs every change of a row, runs
/// over the whole run instead of skipping itself once the oldest entries are pruned.
fn retention_changes() -> u64 {
    if minutes().is_some() {
        100_000_000
    } else {
        DEFAULT_RETENTION_CHANGES
    }
}
/// The skewed node's clock offset: well inside the default 5-minute drift bound.
const SKEW_S: i64 = 90;
/// How far a measured clock offset may be from the configured one.
const SKEW_TOLERANCE_MS: i64 = 2_000;

const SHARED: Range<Key> = 1..21;

/// The two tests run one at a time: together they would run seven node processes on
/// the small machines this runs on, and a starved node misses its stall timeouts.
static SERIAL: Mutex<()> = Mutex::new(());

fn own_range(node: usize) -> Range<Key> {
    let base = 1000 * (node as Key + 1);
    base..base + 40
}

fn layout() -> Layout {
    Layout {
        own: (0..WRITERS).map(own_range).collect(),
        shared: SHARED,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Three nodes, every pair linked (the lower-numbered node dials).
    Mesh,
    /// Three spokes that each dial the hub (node 3, a relay), and nothing else.
    Hub,
}

impl Shape {
    fn nodes(self) -> usize {
        match self {
            Shape::Mesh => WRITERS,
            Shape::Hub => WRITERS + 1,
        }
    }

    fn is_hub(self, node: usize) -> bool {
        self == Shape::Hub && node == WRITERS
    }

    fn name(self, node: usize) -> String {
        if self.is_hub(node) {
            "hub".into()
        } else {
            format!("n{node}")
        }
    }

    /// `(dialer, listener)` of every link.
    fn links(self) -> Vec<(usize, usize)> {
        match self {
            Shape::Mesh => (0..WRITERS)
                .flat_map(|a| (a + 1..WRITERS).map(move |b| (a, b)))
                .collect(),
            Shape::Hub => (0..WRITERS).map(|s| (s, WRITERS)).collect(),
        }
    }

    /// The node whose clock is skewed, and by how much: ahead in the mesh (its writes
    /// win concurrent ties for 90 s and drag every other clock forward), behind in the
    /// hub (its writes lose until its clock is dragged up by what it observes).
    fn skewed(self) -> (usize, i64) {
        match self {
            Shape::Mesh => (2, SKEW_S),
            Shape::Hub => (1, -SKEW_S),
        }
    }

    fn default_seed(self) -> u64 {
        match self {
            Shape::Mesh => MESH_SEED,
            Shape::Hub => HUB_SEED,
        }
    }
}

fn seed(shape: Shape) -> u64 {
    match std::env::var("CONCORD_HARNESS_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("CONCORD_HARNESS_SEED={s:?}: {e}"))
        }
        // Long mode draws a fresh seed (printed, so a failure can be replayed); the
        // short mode that `cargo test` runs always uses the same one.
        Err(_) if minutes().is_some() => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(shape.default_seed(), |d| d.as_nanos() as u64),
        Err(_) => shape.default_seed(),
    }
}

/// Long mode: `CONCORD_HARNESS_MINUTES=N` repeats rounds of faults under the workload for
/// N minutes instead of the single round of the short mode (libtest takes no options of
/// its own, so the duration comes from the environment).
fn minutes() -> Option<u64> {
    std::env::var("CONCORD_HARNESS_MINUTES").ok().map(|m| {
        m.trim()
            .parse()
            .unwrap_or_else(|e| panic!("CONCORD_HARNESS_MINUTES={m:?}: {e}"))
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch, on the test's own (true) clock.
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One node's data directory and addresses.
struct NodeDir {
    name: String,
    dir: PathBuf,
    /// The tracked database (none for the hub).
    db: Option<PathBuf>,
    /// The file holding the change log: the database, or the relay's store.
    store: PathBuf,
    listen: SocketAddr,
    http: SocketAddr,
    fingerprint: String,
}

fn init_node(root: &Path, name: &str, relay: bool) -> NodeDir {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut init = Command::new(env!("CARGO_BIN_EXE_concord"));
    init.args(["init", "--dir"])
        .arg(&dir)
        .args(["--name", name]);
    let (db, store) = if relay {
        init.arg("--relay");
        (None, dir.join("relay.db"))
    } else {
        let db = dir.join("app.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
            .unwrap();
        init.args(["--sqlite", "app.db", "--tables", "t"]);
        (Some(db.clone()), db)
    };
    let out = init
        .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
        .env_remove("CONCORD_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "init {name}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fingerprint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("init printed no fingerprint: {stdout}"))
        .trim()
        .to_owned();
    // Notice a black-holed link within seconds rather than the default 30 s.
    let config = dir.join("concord.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("stall_timeout_s = 30"), "{text}");
    let default_retention = format!("retention_changes = {DEFAULT_RETENTION_CHANGES}");
    assert!(text.contains(&default_retention), "{text}");
    let text = text
        .replace(
            "stall_timeout_s = 30",
            &format!("stall_timeout_s = {STALL_TIMEOUT_S}\nping_interval_s = 1"),
        )
        .replace(
            &default_retention,
            &format!("retention_changes = {}", retention_changes()),
        );
    std::fs::write(&config, text).unwrap();
    NodeDir {
        name: name.to_owned(),
        dir,
        db,
        store,
        listen,
        http,
        fingerprint,
    }
}

fn add_peer(dir: &Path, name: &str, fingerprint: &str, address: Option<SocketAddr>) {
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
        writeln!(file, "address = \"{address}\"").unwrap();
    }
}

/// `GET /v1/status`, or why not.
fn status(http: SocketAddr) -> Result<serde_json::Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{http}/v1/status");
    agent
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?
        .body_mut()
        .read_json()
        .map_err(|e| format!("GET {url}: {e}"))
}

/// Origin -> sequence held, leaving out origins with nothing.
fn holds(status: &serde_json::Value) -> BTreeMap<String, u64> {
    status["holds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h["origin"].as_str()?.to_owned(), h["seq"].as_u64()?)))
        .filter(|(_, seq)| *seq > 0)
        .collect()
}

fn peer_summary(status: &serde_json::Value) -> String {
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}={} (last error: {})",
                p["name"], p["state"], p["last_error"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn open_reader(db: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// The whole table, read in one statement (one consistent snapshot).
fn snapshot(db: &Path) -> rusqlite::Result<Table> {
    let conn = open_reader(db)?;
    let mut stmt = conn.prepare("SELECT id, v, n FROM t")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Key>(0)?,
            Row {
                v: r.get(1)?,
                n: r.get(2)?,
            },
        ))
    })?;
    rows.collect()
}

fn scalar(db: &Path, sql: &str) -> rusqlite::Result<i64> {
    open_reader(db)?.query_row(sql, [], |r| r.get(0))
}

/// Per origin: how many log entries, the lowest and the highest sequence number.
fn log_counts(db: &Path) -> rusqlite::Result<BTreeMap<String, (u64, u64, u64)>> {
    let conn = open_reader(db)?;
    let mut stmt = conn.prepare(
        "SELECT lower(hex(o.node_id)), count(*), min(l.seq), max(l.seq)
         FROM __concord_log l JOIN __concord_origins o ON o.id = l.origin
         GROUP BY o.node_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ),
        ))
    })?;
    rows.collect()
}

/// Every change in the log of `store`, through Concord's own log reader (the decoding
/// sync uses; the merge is predicted independently in `model::check_last_writer`).
fn read_log(store: &Path) -> Result<Vec<concord_core::Change>, String> {
    let mut reader = LogReader::open(store).map_err(|e| e.to_string())?;
    let everything = VersionVector::new();
    let mut after = 0;
    let mut changes = Vec::new();
    loop {
        let page = reader
            .read(after, &everything, 10_000)
            .map_err(|e| e.to_string())?;
        if page.last_pos == after {
            return Ok(changes);
        }
        after = page.last_pos;
        changes.extend(page.changes);
    }
}

/// The changes to the shared range in `changes`, as the model reads them.
fn shared_changes(
    changes: &[concord_core::Change],
    writer_of: &HashMap<NodeId, usize>,
) -> Result<Vec<LoggedChange>, String> {
    let version = |v: &concord_core::Version| Version {
        hlc: v.hlc.as_u64(),
        origin: u128::from_be_bytes(*v.origin.as_bytes()),
    };
    let mut out = Vec::new();
    for c in changes.iter().filter(|c| c.table == "t") {
        let key = match c.key.decode().map_err(|e| e.to_string())?.as_slice() {
            [Value::Integer(k)] => *k,
            other => return Err(format!("a key of t is not one integer: {other:?}")),
        };
        if !SHARED.contains(&key) {
            continue;
        }
        let writer = *writer_of
            .get(&c.origin)
            .ok_or_else(|| format!("key {key}: a change from unknown origin {}", c.origin))?;
        let column = |name: &str| c.columns.iter().find(|col| col.column == name);
        let v = match column("v") {
            None => None,
            Some(col) => match &col.value {
                Value::Text(s) => Some((s.clone(), version(&col.version))),
                other => return Err(format!("key {key}: v is {} in the log", other.kind())),
            },
        };
        let n = match column("n") {
            None => None,
            Some(col) => match &col.value {
                Value::Integer(x) => Some((*x, version(&col.version))),
                other => return Err(format!("key {key}: n is {} in the log", other.kind())),
            },
        };
        out.push(LoggedChange {
            key,
            writer,
            seq: c.seq,
            cl: c.causal_length.0,
            v,
            n,
        });
    }
    Ok(out)
}

/// The wall-clock offset of a `concord serve` process, from the timestamp of the first
/// line it logged after a start at true time `started_ms` (and before `seen_ms`):
/// between `first - seen_ms` and `first - started_ms`.
fn serve_clock_offset(dir: &Path, started_ms: i64, seen_ms: i64) -> Result<(i64, i64), String> {
    let path = dir.join(concord_harness::process::STDERR_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = text
        .lines()
        .find_map(skew::log_line_millis)
        .ok_or_else(|| format!("{} has no timestamped line yet", path.display()))?
        as i64;
    Ok((first - seen_ms, first - started_ms))
}

/// Shared between the threads of the run.
struct Run {
    layout: Layout,
    /// The writers' databases (writer `i` writes to node `i`).
    dbs: Vec<PathBuf>,
    /// Committed transactions per writer. A writer holds its lock across COMMIT and
    /// the append, so a checker that snapshots a table *then* locks the histories sees
    /// every transaction the snapshot could contain.
    histories: Vec<Mutex<Vec<Txn>>>,
    /// True time just before each writer's first BEGIN that committed, and just after
    /// its COMMIT.
    first_commit: Vec<Mutex<Option<(i64, i64)>>>,
    /// The skew the skewed writer measured on its own SQLite clock.
    writer_clock_offset_ms: Mutex<Option<i64>>,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
    row_writes: AtomicU64,
    busy_retries: AtomicU64,
    snapshots_checked: AtomicU64,
}

impl Run {
    fn fail(&self, message: String) {
        lock(&self.failure).get_or_insert(message);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether `node` misses the latest committed transaction of one of `writers`.
    fn lags_behind(&self, node: usize, writers: &[usize]) -> Result<bool, String> {
        let table = snapshot(&self.dbs[node]).map_err(|e| format!("reading n{node}: {e}"))?;
        let guards: Vec<_> = self.histories.iter().map(|h| lock(h)).collect();
        for &writer in writers {
            let history = &guards[writer];
            let prefix = model::prefix_of(history, &self.layout.own[writer], &table)?;
            if prefix.max < history.len() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks one snapshot of `node` against every history.
    fn check_snapshot(&self, node: usize, progress: &mut Progress) -> Result<(), String> {
        let table = snapshot(&self.dbs[node]).map_err(|e| format!("reading n{node}: {e}"))?;
        let guards: Vec<_> = self.histories.iter().map(|h| lock(h)).collect();
        let views: Vec<&[Txn]> = guards.iter().map(|g| g.as_slice()).collect();
        let prefixes = model::check_snapshot(&self.layout, &views, &table).map_err(|p| {
            format!(
                "snapshot of n{node} during the run is inconsistent:\n{}",
                p.join("\n")
            )
        })?;
        for (writer, prefix) in prefixes.into_iter().enumerate() {
            progress.observe(node, writer, prefix)?;
        }
        self.snapshots_checked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Sets the stop flag when a thread ends, also by panicking, so the others end too.
struct StopOnExit<'a>(&'a Run);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail("a harness thread panicked (see its message above)".into());
        }
    }
}

/// Tells the writer process's replies from libtest's own output on the same stdout.
const REPLY: &str = "<<concord-sql>>";
/// Set in the environment of a writer process: the database it writes.
const WRITER_DB_ENV: &str = "CONCORD_HARNESS_WRITER_DB";

/// Not a test: the body of the writer process of a skewed node. The harness starts this
/// test binary again with only this test selected, under libfaketime, so that SQLite's
/// `julianday('now')` in the capture trigger (which stamps each write) reads the skewed
/// clock, as it would on a machine whose clock is wrong. It executes one command per
/// line of stdin (`B` begin, `E sql`, `C` commit, `T` SQLite's current time) and answers
/// each on stdout. Without its environment variable it does nothing.
#[test]
#[ignore = "the writer process of a skewed node; the fault tests start it themselves"]
fn skewed_writer_process() {
    let Ok(db) = std::env::var(WRITER_DB_ENV) else {
        return;
    };
    let conn = Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let (command, arg) = line.split_at(line.len().min(1));
        let arg = arg.trim_start();
        let result: rusqlite::Result<String> = match command {
            "B" => conn
                .execute_batch("BEGIN IMMEDIATE")
                .map(|()| String::new()),
            "E" => conn.execute(arg, []).map(|n| n.to_string()),
            "C" => conn.execute_batch("COMMIT").map(|()| String::new()),
            "T" => conn
                .query_row(
                    "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|ms| ms.to_string()),
            other => panic!("writer process: unknown command {other:?}"),
        };
        let reply = match result {
            Ok(value) => format!("ok {value}"),
            Err(e) if is_busy(&e) => "busy".to_owned(),
            Err(e) => format!("err {}", e.to_string().replace('\n', " ")),
        };
        writeln!(out, "{REPLY}{reply}").unwrap();
        out.flush().unwrap();
    }
}

/// A [`skewed_writer_process`] child, killed when dropped.
struct WriterProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WriterProcess {
    fn start(db: &Path, skew: &ClockSkew) -> std::io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "skewed_writer_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_DB_ENV, db)
            .envs(skew.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one command; `Ok(Some(value))`, `Ok(None)` when busy, or the error.
    fn call(&mut self, command: &str) -> Result<Option<String>, String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("writer process: {e}"))?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| format!("writer process: {e}"))?;
            if n == 0 {
                return Err("the writer process exited (see its output above)".into());
            }
            if let Some((_, reply)) = line.trim_end().split_once(REPLY) {
                return match reply.split_once(' ').unwrap_or((reply, "")) {
                    ("ok", value) => Ok(Some(value.to_owned())),
                    ("busy", _) => Ok(None),
                    (_, message) => Err(message.to_owned()),
                };
            }
        }
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a writer's statements run: its own connection, or a skewed writer process.
enum Sql {
    Local(Connection),
    Process(WriterProcess),
}

impl Sql {
    /// `BEGIN IMMEDIATE`; `Ok(false)` if the database stayed busy.
    fn begin(&mut self) -> Result<bool, String> {
        match self {
            Sql::Local(conn) => match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => Ok(true),
                Err(e) if is_busy(&e) => Ok(false),
                Err(e) => Err(e.to_string()),
            },
            Sql::Process(p) => Ok(p.call("B")?.is_some()),
        }
    }

    fn execute(&mut self, sql: &str) -> Result<usize, String> {
        match self {
            Sql::Local(conn) => conn.execute(sql, []).map_err(|e| e.to_string()),
            Sql::Process(p) => p
                .call(&format!("E {sql}"))?
                .ok_or_else(|| "busy inside a transaction".to_owned())?
                .parse()
                .map_err(|e| format!("writer process: {e}")),
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        match self {
            Sql::Local(conn) => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
            Sql::Process(p) => p
                .call("C")?
                .map(drop)
                .ok_or_else(|| "busy at COMMIT".to_owned()),
        }
    }

    /// SQLite's `'now'` where the statements run, in ms since the Unix epoch.
    fn now_ms(&mut self) -> Result<i64, String> {
        const NOW: &str = "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
        match self {
            Sql::Local(conn) => conn
                .query_row(NOW, [], |r| r.get(0))
                .map_err(|e| e.to_string()),
            Sql::Process(p) => p
                .call("T")?
                .ok_or_else(|| "busy reading the time".to_owned())?
                .parse()
                .map_err(|e| format!("writer process: {e}")),
        }
    }
}

/// One write the writer is about to make, with its SQL and the row count it must affect.
struct Step {
    sql: String,
    /// `None`: a delete of a shared row that may be absent here (0 or 1 rows); its
    /// effect is recorded only if it deleted one, because a delete of nothing is not a
    /// write anywhere (nothing is captured).
    affects: Option<usize>,
    effects: Vec<Effect>,
}

/// Writes random transactions to node `me` until the run stops, through an ordinary
/// connection, or through a writer process under `skew`. Own-range writes are planned
/// against an exact model of the own range (only this writer writes it); shared writes
/// always set every column.
fn writer(run: &Run, me: usize, mut rng: Rng, skew: Option<ClockSkew>) {
    let _guard = StopOnExit(run);
    let mut sql = match &skew {
        None => {
            let conn = Connection::open(&run.dbs[me]).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            Sql::Local(conn)
        }
        Some(skew) => Sql::Process(WriterProcess::start(&run.dbs[me], skew).unwrap()),
    };
    if let Some(skew) = &skew {
        // The harness checks itself: a writer whose clock is not skewed would make the
        // skew test prove nothing.
        let before = wall_ms();
        let now = sql
            .now_ms()
            .unwrap_or_else(|e| panic!("n{me}: writer process: {e}"));
        let offset = now - (before + wall_ms()) / 2;
        *lock(&run.writer_clock_offset_ms) = Some(offset);
        if (offset - skew.offset_ms()).abs() > SKEW_TOLERANCE_MS {
            run.fail(format!(
                "libfaketime did not skew n{me}'s writer process: its SQLite clock is {offset} ms off, expected {} ms",
                skew.offset_ms()
            ));
            return;
        }
    }
    let own = own_range(me);
    let mut model = Table::new();
    let mut next_n: i64 = (me as i64 + 1) * 1_000_000_000;
    let mut txn_no = 0u64;
    while !run.stopped() {
        txn_no += 1;
        let tag = format!("{me}:{txn_no}");
        let mut planned = model.clone();
        let ops = if rng.chance(60) { 1 } else { rng.range(2, 6) };
        let mut steps = Vec::new();
        for _ in 0..ops {
            let mut n = || {
                next_n += 1;
                next_n
            };
            if rng.chance(25) {
                let key = SHARED.start + rng.range(0, (SHARED.end - SHARED.start) as u64) as Key;
                if rng.chance(70) {
                    let row = Row {
                        v: tag.clone(),
                        n: n(),
                    };
                    steps.push(Step {
                        sql: format!(
                            "INSERT INTO t(id, v, n) VALUES ({key}, '{}', {}) ON CONFLICT(id) DO UPDATE SET v = excluded.v, n = excluded.n",
                            row.v, row.n
                        ),
                        affects: Some(1),
                        effects: vec![Effect { key, after: Some(row) }],
                    });
                } else {
                    steps.push(Step {
                        sql: format!("DELETE FROM t WHERE id = {key}"),
                        affects: None,
                        effects: vec![Effect { key, after: None }],
                    });
                }
                continue;
            }
            let key = own.start + rng.range(0, (own.end - own.start) as u64) as Key;
            let Some(old) = planned.get(&key).cloned() else {
                // Absent: an insert, or a re-insert after a delete.
                let row = Row {
                    v: tag.clone(),
                    n: n(),
                };
                steps.push(Step {
                    sql: format!(
                        "INSERT INTO t(id, v, n) VALUES ({key}, '{}', {})",
                        row.v, row.n
                    ),
                    affects: Some(1),
                    effects: vec![Effect {
                        key,
                        after: Some(row.clone()),
                    }],
                });
                planned.insert(key, row);
                continue;
            };
            let roll = rng.range(0, 100);
            let (sql, effects) = if roll < 30 {
                let row = Row {
                    v: tag.clone(),
                    n: n(),
                };
                (
                    format!(
                        "UPDATE t SET v = '{}', n = {} WHERE id = {key}",
                        row.v, row.n
                    ),
                    vec![Effect {
                        key,
                        after: Some(row),
                    }],
                )
            } else if roll < 45 {
                let row = Row {
                    v: tag.clone(),
                    n: old.n,
                };
                (
                    format!("UPDATE t SET v = '{}' WHERE id = {key}", row.v),
                    vec![Effect {
                        key,
                        after: Some(row),
                    }],
                )
            } else if roll < 60 {
                let row = Row {
                    v: old.v.clone(),
                    n: n(),
                };
                (
                    format!("UPDATE t SET n = {} WHERE id = {key}", row.n),
                    vec![Effect {
                        key,
                        after: Some(row),
                    }],
                )
            } else if roll < 85 {
                (
                    format!("DELETE FROM t WHERE id = {key}"),
                    vec![Effect { key, after: None }],
                )
            } else {
                // Move the row to another own key that is free.
                let to = own.start + rng.range(0, (own.end - own.start) as u64) as Key;
                if planned.contains_key(&to) {
                    continue;
                }
                let row = Row {
                    v: tag.clone(),
                    n: old.n,
                };
                (
                    format!("UPDATE t SET id = {to}, v = '{}' WHERE id = {key}", row.v),
                    vec![
                        Effect { key, after: None },
                        Effect {
                            key: to,
                            after: Some(row),
                        },
                    ],
                )
            };
            for e in &effects {
                match &e.after {
                    Some(r) => planned.insert(e.key, r.clone()),
                    None => planned.remove(&e.key),
                };
            }
            steps.push(Step {
                sql,
                affects: Some(1),
                effects,
            });
        }
        if steps.is_empty() {
            continue;
        }
        let begun = wall_ms();
        match sql.begin() {
            Ok(true) => {}
            Ok(false) => {
                run.busy_retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => panic!("n{me}: BEGIN IMMEDIATE failed: {e}"),
        }
        let mut effects = Vec::new();
        for step in steps {
            let affected = sql
                .execute(&step.sql)
                .unwrap_or_else(|e| panic!("n{me}: {}: {e}", step.sql));
            match step.affects {
                Some(expected) if affected != expected => {
                    run.fail(format!(
                        "n{me}: `{}` affected {affected} rows, expected {expected}: the own range \
                         changed under its only writer (something else wrote it)",
                        step.sql
                    ));
                    return;
                }
                None if affected == 0 => {}
                _ => effects.extend(step.effects),
            }
        }
        let writes = effects.len() as u64;
        {
            let mut history = lock(&run.histories[me]);
            // Not retried: an error here leaves it unknown whether the write committed.
            sql.commit()
                .unwrap_or_else(|e| panic!("n{me}: COMMIT failed: {e}"));
            history.push(Txn { tag, effects });
        }
        lock(&run.first_commit[me]).get_or_insert((begun, wall_ms()));
        model = planned;
        run.row_writes.fetch_add(writes, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(rng.range(0, 12)));
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Snapshots every writer's node in turn while the run goes on and checks each.
fn checker(run: &Run, mut rng: Rng) {
    let _guard = StopOnExit(run);
    let mut progress = Progress::default();
    let mut node = 0;
    while !run.stopped() {
        std::thread::sleep(Duration::from_millis(rng.range(200, 500)));
        if let Err(e) = run.check_snapshot(node, &mut progress) {
            run.fail(e);
            return;
        }
        node = (node + 1) % WRITERS;
    }
}

/// One fault episode; each sets itself up and heals before the next starts.
#[derive(Clone, Debug)]
enum Fault {
    DropConnections {
        link: usize,
    },
    Delay {
        link: usize,
    },
    SlowLink {
        link: usize,
    },
    BlackHole {
        link: usize,
    },
    /// `group` on one side of the cut, every other node on the other.
    Partition {
        group: Vec<usize>,
    },
    Kill {
        node: usize,
    },
}

/// Counts of what was injected, for the report.
#[derive(Debug, Default)]
struct Injected {
    rounds: u32,
    drops: u32,
    delays: u32,
    slow_links: u32,
    /// Bytes that crossed the slow links while they were capped.
    slow_link_bytes: u64,
    /// Slow links that carried nothing while capped (no session came up in time).
    slow_links_idle: u32,
    black_holes: u32,
    /// Partitions of the network into two groups (one node alone on one side, or not).
    partitions: u32,
    /// Of those, how many left at least two nodes on each side.
    partitions_two_and_two: u32,
    kills: u32,
    kills_while_catching_up: u32,
    kills_of_the_hub: u32,
}

/// Sleeps `d`, in small steps so a failure elsewhere ends the run quickly.
fn nap(run: &Run, d: Duration) {
    let end = Instant::now() + d;
    while !run.stopped() {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn ms(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo, hi))
}

/// What the faults act on: the node processes, their directories and the links.
struct Net<'a> {
    shape: Shape,
    links: &'a [Link],
    nodes: &'a [Mutex<ServeProcess>],
    dirs: &'a [NodeDir],
}

impl Net<'_> {
    /// Waits, at most `within`, until the dialer of `link` reports its session with the
    /// listener connected.
    fn wait_connected(&self, run: &Run, link: usize, within: Duration) {
        let (dialer, listener) = self.links[link].ends();
        let peer = format!("\"{}\"=\"connected\"", self.dirs[listener].name);
        let end = Instant::now() + within;
        while Instant::now() < end && !run.stopped() {
            if status(self.dirs[dialer].http).is_ok_and(|s| peer_summary(&s).contains(&peer)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_and_restart(&self, run: &Run, node: usize, down: Duration, injected: &mut Injected) {
        lock(&self.nodes[node]).kill().unwrap();
        nap(run, down);
        lock(&self.nodes[node]).restart().unwrap();
        injected.kills += 1;
        if self.shape.is_hub(node) {
            injected.kills_of_the_hub += 1;
        }
    }

    fn show_group(&self, group: &[usize]) -> String {
        let side = |inside: bool| {
            (0..self.shape.nodes())
                .filter(|n| group.contains(n) == inside)
                .map(|n| self.shape.name(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{{{}}} | {{{}}}", side(true), side(false))
    }
}

/// Runs the fault schedule.
fn faults(run: &Run, mut rng: Rng, net: &Net<'_>, injected: &mut Injected) {
    let _guard = StopOnExit(run);
    let deadline = minutes().map(|m| Instant::now() + Duration::from_secs(m * 60));
    loop {
        fault_round(run, &mut rng, net, injected);
        injected.rounds += 1;
        match deadline {
            Some(deadline) if Instant::now() < deadline && !run.stopped() => {
                println!(
                    "{:?} round {} done; faults so far: {injected:?}",
                    net.shape, injected.rounds
                );
            }
            _ => return,
        }
    }
}

/// One round: three dropped connections, a delay, a slow link, a black hole, a
/// partition into two groups followed by a crash of a node that was cut off while it
/// catches up, and two more crashes (of any node, the hub included), in a shuffled
/// order at seeded moments.
fn fault_round(run: &Run, rng: &mut Rng, net: &Net<'_>, injected: &mut Injected) {
    let nodes = net.shape.nodes();
    let links = net.links;
    let mut schedule = Vec::new();
    for _ in 0..3 {
        schedule.push(Fault::DropConnections {
            link: rng.index(links.len()),
        });
    }
    schedule.push(Fault::Delay {
        link: rng.index(links.len()),
    });
    schedule.push(Fault::SlowLink {
        link: rng.index(links.len()),
    });
    schedule.push(Fault::BlackHole {
        link: rng.index(links.len()),
    });
    // A random non-trivial side of the cut.
    let group = loop {
        let group: Vec<usize> = (0..nodes).filter(|_| rng.chance(50)).collect();
        if !group.is_empty() && group.len() < nodes {
            break group;
        }
    };
    schedule.push(Fault::Partition { group });
    schedule.push(Fault::Kill {
        node: rng.index(nodes),
    });
    schedule.push(Fault::Kill {
        node: rng.index(nodes),
    });
    rng.shuffle(&mut schedule);
    println!("{:?} fault schedule: {schedule:?}", net.shape);
    // Let some history build up before the first fault.
    nap(run, ms(rng, 1000, 2000));
    for fault in schedule {
        if run.stopped() {
            return;
        }
        match fault {
            Fault::DropConnections { link } => {
                links[link].proxy.drop_connections();
                injected.drops += 1;
            }
            Fault::Delay { link } => {
                links[link].proxy.set_delay(ms(rng, 50, 250));
                nap(run, ms(rng, 1500, 3000));
                links[link].proxy.heal();
                injected.delays += 1;
            }
            Fault::SlowLink { link } => {
                // 4-32 KB/s: a few hundred changes a second at most, below what the
                // writers produce, so the link falls behind and batches take seconds.
                // A cap on a link with no session tests nothing: after a crash the
                // dialer may be waiting out its retry backoff.
                net.wait_connected(run, link, Duration::from_secs(5));
                let proxy = &links[link].proxy;
                let rate = rng.range(4_000, 32_000);
                let before = proxy.counts().forwarded_bytes;
                let capped = Instant::now();
                proxy.set_rate(rate);
                nap(run, ms(rng, 1500, 3000));
                let crossed = proxy.counts().forwarded_bytes - before;
                let allowed = 2.0 * 1.5 * rate as f64 * capped.elapsed().as_secs_f64();
                proxy.heal();
                // The harness checks itself: both directions together, with room for
                // the chunks already being written when the cap was set.
                assert!(
                    crossed as f64 <= allowed + 64.0 * 1024.0,
                    "a link capped at {rate} B/s per direction forwarded {crossed} bytes in {:?}",
                    capped.elapsed()
                );
                injected.slow_links += 1;
                injected.slow_link_bytes += crossed;
                if crossed == 0 {
                    injected.slow_links_idle += 1;
                }
            }
            Fault::BlackHole { link } => {
                links[link].proxy.black_hole();
                // Longer than the stall timeout sometimes, shorter other times.
                nap(run, ms(rng, 1500, 2000 + STALL_TIMEOUT_S * 1000));
                links[link].proxy.heal();
                injected.black_holes += 1;
            }
            Fault::Partition { group } => {
                let pairs: Vec<(usize, usize)> = links.iter().map(Link::ends).collect();
                let cut = topology::partition_groups(links, &group);
                let label = topology::components(nodes, &pairs, &cut);
                println!("{:?} partition {}", net.shape, net.show_group(&group));
                nap(run, ms(rng, 2000, 4000));
                // A writer cut off from some others, to check and then to crash.
                let mut writers: Vec<usize> = (0..WRITERS).collect();
                rng.shuffle(&mut writers);
                let victim = writers.iter().find_map(|&w| {
                    let away: Vec<usize> = (0..WRITERS).filter(|&o| label[o] != label[w]).collect();
                    (!away.is_empty()).then_some((w, away))
                });
                // The harness checks itself: a partition that let changes through
                // would make the rest of this test prove less than it claims.
                if let Some((w, away)) = victim.as_ref().filter(|_| !run.stopped()) {
                    let behind = run.lags_behind(*w, away).unwrap_or_else(|e| panic!("{e}"));
                    assert!(
                        behind,
                        "n{w} was cut off from {away:?} for seconds but holds their latest transactions"
                    );
                }
                topology::heal(links, &cut);
                injected.partitions += 1;
                if group.len() >= 2 && nodes - group.len() >= 2 {
                    injected.partitions_two_and_two += 1;
                }
                // Crash a node that was cut off while it catches up on what it missed:
                // the moment a crash is most likely to land inside an apply.
                let crashed = victim.map_or(group[0], |(w, _)| w);
                nap(run, ms(rng, 20, 300));
                net.kill_and_restart(run, crashed, ms(rng, 100, 800), injected);
                injected.kills_while_catching_up += 1;
            }
            Fault::Kill { node } => {
                net.kill_and_restart(run, node, ms(rng, 200, 2000), injected);
            }
        }
        nap(run, ms(rng, 300, 1200));
    }
}

/// What the nodes look like after the run: the writers' tables and pending writes,
/// every node's version vector, and whether everything agrees.
struct Observed {
    tables: Vec<Result<Table, String>>,
    holds: Vec<Result<BTreeMap<String, u64>, String>>,
    pending: Vec<Result<i64, String>>,
    peers: Vec<String>,
    names: Vec<String>,
}

impl Observed {
    fn take(dirs: &[NodeDir]) -> Self {
        let statuses: Vec<Result<serde_json::Value, String>> =
            dirs.iter().map(|d| status(d.http)).collect();
        let writers: Vec<&Path> = dirs.iter().filter_map(|d| d.db.as_deref()).collect();
        Self {
            tables: writers
                .iter()
                .map(|d| snapshot(d).map_err(|e| e.to_string()))
                .collect(),
            holds: statuses
                .iter()
                .map(|s| s.as_ref().map(holds).map_err(Clone::clone))
                .collect(),
            pending: writers
                .iter()
                .map(|d| {
                    scalar(d, "SELECT count(*) FROM __concord_pending").map_err(|e| e.to_string())
                })
                .collect(),
            peers: statuses
                .iter()
                .map(|s| s.as_ref().map_or_else(Clone::clone, peer_summary))
                .collect(),
            names: dirs.iter().map(|d| d.name.clone()).collect(),
        }
    }

    fn converged(&self) -> bool {
        fn same<T: PartialEq>(v: &[Result<T, String>]) -> bool {
            v.iter().all(Result::is_ok) && v.windows(2).all(|w| w[0] == w[1])
        }
        same(&self.tables) && same(&self.holds) && self.pending.iter().all(|p| matches!(p, Ok(0)))
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, name) in self.names.iter().enumerate() {
            out += &format!(
                "{name}: holds {:?}, pending {:?}, peers [{}]\n",
                self.holds[i],
                self.pending.get(i),
                self.peers[i]
            );
        }
        if let Ok(first) = &self.tables[0] {
            for i in 1..self.tables.len() {
                match &self.tables[i] {
                    Ok(t) if t == first => out += &format!("n{i}'s table equals n0's\n"),
                    Ok(t) => {
                        out += &format!(
                            "n{i}'s table differs from n0's (expected = n0, found = n{i}):\n  {}\n",
                            model::differences(first, t, 12).join("\n  ")
                        )
                    }
                    Err(e) => out += &format!("n{i}'s table could not be read: {e}\n"),
                }
            }
        }
        out
    }
}

#[test]
fn mesh_committed_writes_survive_faults_clock_skew_and_crashes() {
    run_topology(Shape::Mesh);
}

#[test]
fn hub_spokes_converge_through_a_relay_under_faults_clock_skew_and_crashes() {
    run_topology(Shape::Hub);
}

fn run_topology(shape: Shape) {
    let _serial = lock(&SERIAL);
    let seed = seed(shape);
    println!("{shape:?}: CONCORD_HARNESS_SEED={seed:#x} (set it to replay this run)");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let root = tempfile::tempdir().unwrap();
    let nodes_n = shape.nodes();
    let dirs: Vec<NodeDir> = (0..nodes_n)
        .map(|i| init_node(root.path(), &shape.name(i), shape.is_hub(i)))
        .collect();

    // One node's clock is off, for its serve process and its writer, if libfaketime is
    // there; otherwise the run says so and goes on without.
    let (skewed, offset_s) = shape.skewed();
    let skew = match skew::find_libfaketime() {
        Ok(library) => {
            let skew = ClockSkew::new(library, offset_s);
            println!(
                "{shape:?}: clock skew: n{skewed} runs {offset_s:+} s off (serve and writer, {})",
                skew.library().display()
            );
            Some(skew)
        }
        Err(why) => {
            // Straight to stderr: libtest would hide a printed line of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "{shape:?} fault test: the clock skew part is SKIPPED: {why}"
            );
            None
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut links = Vec::new();
    for (a, b) in shape.links() {
        let proxy = runtime.block_on(Proxy::start(dirs[b].listen)).unwrap();
        add_peer(
            &dirs[a].dir,
            &dirs[b].name,
            &dirs[b].fingerprint,
            Some(proxy.addr()),
        );
        add_peer(&dirs[b].dir, &dirs[a].name, &dirs[a].fingerprint, None);
        links.push(Link {
            dialer: a,
            listener: b,
            proxy,
        });
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_concord"));
    let serve_started = wall_ms();
    let nodes: Vec<Mutex<ServeProcess>> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let env = match &skew {
                Some(skew) if i == skewed => skew.env(),
                _ => Vec::new(),
            };
            Mutex::new(ServeProcess::start_with_env(binary, &d.dir, env).unwrap())
        })
        .collect();
    let logs = |nodes: &[Mutex<ServeProcess>]| {
        nodes
            .iter()
            .map(|n| lock(n).logs(6000))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Every node sees all its peers connected before the workload starts.
    let wait_start = Instant::now();
    loop {
        let states: Vec<String> = dirs
            .iter()
            .map(|d| status(d.http).map_or_else(|e| e, |s| peer_summary(&s)))
            .collect();
        let peers_of = |i: usize| {
            shape
                .links()
                .iter()
                .filter(|(a, b)| *a == i || *b == i)
                .count()
        };
        if states
            .iter()
            .enumerate()
            .all(|(i, s)| s.matches("\"connected\"").count() == peers_of(i))
        {
            break;
        }
        assert!(
            wait_start.elapsed() < TIMEOUT,
            "the {shape:?} did not connect within {TIMEOUT:?}: {states:?}\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The harness checks itself: libfaketime must have reached the Rust process.
    let serve_offset = skew.as_ref().map(|skew| {
        let (low, high) =
            serve_clock_offset(&dirs[skewed].dir, serve_started, wall_ms()).unwrap();
        assert!(
            low - SKEW_TOLERANCE_MS <= skew.offset_ms() && skew.offset_ms() <= high + SKEW_TOLERANCE_MS,
            "libfaketime did not skew n{skewed}'s concord serve: its first log line is {low}..{high} ms off true time, expected {} ms",
            skew.offset_ms()
        );
        (low, high)
    });

    let run = Run {
        layout: layout(),
        dbs: dirs.iter().filter_map(|d| d.db.clone()).collect(),
        histories: (0..WRITERS).map(|_| Mutex::new(Vec::new())).collect(),
        first_commit: (0..WRITERS).map(|_| Mutex::new(None)).collect(),
        writer_clock_offset_ms: Mutex::new(None),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        row_writes: AtomicU64::new(0),
        busy_retries: AtomicU64::new(0),
        snapshots_checked: AtomicU64::new(0),
    };
    let mut injected = Injected::default();
    let net = Net {
        shape,
        links: &links,
        nodes: &nodes,
        dirs: &dirs,
    };
    let workload_started = Instant::now();
    std::thread::scope(|s| {
        for me in 0..WRITERS {
            let writer_rng = rng.fork(me as u64);
            let run = &run;
            let skew = skew.clone().filter(|_| me == skewed);
            s.spawn(move || writer(run, me, writer_rng, skew));
        }
        let checker_rng = rng.fork(100);
        let run_ref = &run;
        s.spawn(move || checker(run_ref, checker_rng));
        faults(&run, rng.fork(200), &net, &mut injected);
        // A little more writing on a healthy network, then stop.
        nap(&run, Duration::from_millis(500));
        run.stop.store(true, Ordering::SeqCst);
    });
    let workload = workload_started.elapsed();
    if let Some(failure) = lock(&run.failure).take() {
        panic!("{shape:?} seed {seed:#x}: {failure}\n{}", logs(&nodes));
    }
    for (i, node) in nodes.iter().enumerate() {
        if let Some(status) = lock(node).exited().unwrap() {
            panic!(
                "{shape:?} seed {seed:#x}: {} exited on its own with {status}\n{}",
                dirs[i].name,
                logs(&nodes)
            );
        }
    }
    for link in &links {
        link.proxy.heal();
    }

    // Convergence: same rows, same version vectors, nothing left to capture.
    let healed = Instant::now();
    let observed = loop {
        let observed = Observed::take(&dirs);
        if observed.converged() {
            break observed;
        }
        if healed.elapsed() > CONVERGE_WITHIN {
            panic!(
                "{shape:?} seed {seed:#x}: the nodes did not converge within {CONVERGE_WITHIN:?} of the network healing:\n{}\n{}",
                observed.describe(),
                logs(&nodes)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let converged_in = healed.elapsed();

    // Nothing lost, nothing partial, nothing duplicated, nothing invented.
    let histories: Vec<Vec<Txn>> = run.histories.iter().map(|h| lock(h).clone()).collect();
    let views: Vec<&[Txn]> = histories.iter().map(Vec::as_slice).collect();
    let table = observed.tables[0].as_ref().unwrap();
    let problems = model::check_final(&run.layout, &views, table);
    assert!(
        problems.is_empty(),
        "{shape:?} seed {seed:#x}: the converged state is wrong:\n{}\n{}",
        problems.join("\n"),
        logs(&nodes)
    );
    // Every change is in every log exactly once: per origin the entries are min..=max
    // without holes or duplicates, and max is what the node holds. Below min they may
    // have been pruned (a long run passes the retention limit), never before.
    let mut pruned = false;
    for (i, d) in dirs.iter().enumerate() {
        let counts = log_counts(&d.store).unwrap();
        let held = observed.holds[i].as_ref().unwrap();
        let total: u64 = counts.values().map(|(c, _, _)| c).sum();
        for (origin, (count, min, max)) in &counts {
            assert_eq!(
                *count,
                max - min + 1,
                "{shape:?} seed {seed:#x}: {} logs {count} changes of origin {origin} for sequences {min}..={max}",
                d.name
            );
            assert!(
                *min == 1 || total >= retention_changes(),
                "{shape:?} seed {seed:#x}: {}'s log of origin {origin} starts at {min} although the log never reached the retention limit",
                d.name
            );
            pruned |= i == 0 && *min > 1;
        }
        let logged: BTreeMap<String, u64> = counts
            .into_iter()
            .map(|(o, (_, _, max))| (o, max))
            .collect();
        assert_eq!(
            &logged, held,
            "{shape:?} seed {seed:#x}: {}'s log differs from its version vector",
            d.name
        );
    }

    // The exact check: each shared row and column is the last writer's, by version.
    let writer_of: HashMap<NodeId, usize> = dirs
        .iter()
        .take(WRITERS)
        .enumerate()
        .map(|(w, d)| {
            let s = status(d.http).unwrap();
            let id: NodeId = s["node_id"].as_str().unwrap().parse().unwrap();
            (id, w)
        })
        .collect();
    let log = read_log(&dirs[0].store).unwrap();
    let last_writer = if pruned {
        // The prediction needs every change of a row; a pruned log lacks the oldest.
        "SKIPPED (n0's log was pruned past the retention limit)".to_owned()
    } else {
        let logged = shared_changes(&log, &writer_of).unwrap();
        let problems = model::check_last_writer(&views, &SHARED, &logged, table);
        assert!(
            problems.is_empty(),
            "{shape:?} seed {seed:#x}: the shared rows are not the last writers':\n{}\n{}",
            problems.join("\n"),
            logs(&nodes)
        );
        format!(
            "passed ({} changes to {} shared rows)",
            logged.len(),
            table.range(SHARED).count()
        )
    };

    // The skewed writer's first change carries its skewed clock (ahead only: a clock
    // behind is dragged up by every remote change it observes before its first write).
    let hlc_offset = match (&skew, shape.skewed()) {
        (Some(skew), (node, offset)) if offset > 0 => {
            let id = writer_of
                .iter()
                .find_map(|(id, w)| (*w == node).then_some(*id))
                .unwrap();
            let first = log.iter().find(|c| c.origin == id && c.seq == 1);
            match (first, *lock(&run.first_commit[node])) {
                (Some(change), Some((begun, _))) => {
                    let millis = change.hlc.millis() as i64;
                    let ahead = millis - begun;
                    assert!(
                        ahead >= skew.offset_ms() - SKEW_TOLERANCE_MS
                            && millis <= wall_ms() + skew.offset_ms() + SKEW_TOLERANCE_MS,
                        "{shape:?} seed {seed:#x}: n{node}'s first change has HLC {} ({ahead} ms after its true commit time), expected about {} ms ahead",
                        change.hlc,
                        skew.offset_ms()
                    );
                    format!("{ahead} ms")
                }
                _ => "not checked (first change pruned, or no commit)".to_owned(),
            }
        }
        _ => "not applicable".to_owned(),
    };

    let txns: usize = histories.iter().map(Vec::len).sum();
    let counts: Vec<_> = links
        .iter()
        .map(|l| {
            (
                format!("{}->{}", dirs[l.dialer].name, dirs[l.listener].name),
                l.proxy.counts(),
            )
        })
        .collect();
    let skew_report = match &skew {
        Some(skew) => format!(
            "n{skewed} {:+} s: serve's first log line {:?} ms off, writer's SQLite clock {:?} ms off, first HLC ahead of true commit time by {hlc_offset}",
            skew.offset_s(),
            serve_offset,
            *lock(&run.writer_clock_offset_ms),
        ),
        None => "SKIPPED (libfaketime not found)".to_owned(),
    };
    println!(
        "{shape:?} seed {seed:#x}: {txns} transactions ({} row writes, {} busy retries) checked; {} snapshots checked during the run; \
         faults: {injected:?}; clock skew: {skew_report}; last-writer check: {last_writer}; node starts: {:?}; \
         workload {workload:.1?}, converged {converged_in:.1?} after healing, total {:.1?}; {} rows at the end\nproxies: {counts:?}",
        run.row_writes.load(Ordering::Relaxed),
        run.busy_retries.load(Ordering::Relaxed),
        run.snapshots_checked.load(Ordering::Relaxed),
        nodes.iter().map(|n| lock(n).starts()).collect::<Vec<_>>(),
        started.elapsed(),
        table.len(),
    );
    let rounds = injected.rounds;
    assert!(
        rounds >= 1
            && injected.kills == 3 * rounds
            && injected.partitions == rounds
            && injected.drops == 3 * rounds
            && injected.slow_links == rounds,
        "{injected:?}"
    );
    assert!(
        txns > 100,
        "too little workload to mean anything: {txns} transactions"
    );
}
