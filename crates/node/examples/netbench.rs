//! Network benchmarks of the node (issue #3): nodes syncing over real mutual TLS on
//! loopback, measured end to end, from a write by a plain SQLite connection on one
//! node's file to the row being visible in another node's file.
//!
//! ```text
//! cargo run --release -p concord-node --example netbench -- throughput [--rows N] [--txn ROWS] [--reps R]
//! cargo run --release -p concord-node --example netbench -- latency [--writes N] [--gap-ms G] [--reps R] [--prefill N]
//! cargo build --release -p concord   # idle runs the real binary, target/release/concord
//! cargo run --release -p concord-node --example netbench -- idle [--secs S] [--concord PATH]
//! ```
//!
//! - **throughput**: nodes A and B (B dials A), each in its own tokio runtime of this
//!   process (named `node-a` / `node-b`, so their CPU time can be told apart). An app
//!   connection writes N inserts into A's table `t(id INTEGER PRIMARY KEY, a TEXT,
//!   b INTEGER, c REAL, d TEXT)` in transactions of `--txn` rows, then N updates of
//!   every non-key column. The clock runs from the first write until the last row
//!   (with its final value) is visible in B's file through a separate connection. In
//!   the same repetition, before the nodes start, the same N inserts and N updates are
//!   written into a fresh untracked file with a prepared statement in one transaction
//!   each (WAL, `synchronous = NORMAL`, as the store's own connection): the raw floor.
//!   A sampler thread records, every 50 ms, the rows the app has committed, A's
//!   captured sequence and B's applied sequence (read from `__concord_origins` through
//!   their own connections), and the CPU time of every thread (`/proc/self/task`).
//! - **latency**: a direct pair (B dials A) and a hub trio (A and B dial a relay hub)
//!   run at once; single-row autocommit inserts alternate between the two A nodes,
//!   each timed from just before the write until the row is visible in the matching
//!   B's file (polled every 0.2 ms), with the moments A captured it and the hub held it
//!   recorded on the way. Writes are spaced by `--gap-ms` after the previous one was
//!   seen. The first 20 of each are a warm-up and not counted. `--prefill N` first
//!   writes N rows on each A (10k-row transactions) and waits for them in B, so the
//!   change logs are as long as a long-running node's (up to `retention_changes`).
//! - **idle**: four `concord serve` processes made with `concord init`: X, and A, B, C,
//!   which each dial X. After each site's 1,000 rows have reached every other site, the
//!   benchmark waits 5 s and then samples X's `/proc/<pid>/stat` (utime + stime) and
//!   `/proc/<pid>/status` (VmRSS, VmHWM, context switches) over `--secs`.
//!
//! Everything runs under `target/tmp` unless `--tmp DIR` is given.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concord_node::config::{NodeSection, StoreSection, SyncSection};
use concord_node::{Fingerprint, Identity, Node, NodeConfig, PeerConfig};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::runtime::Runtime;

const TABLE_DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d TEXT)";
const INSERT: &str = "INSERT INTO t(id, a, b, c, d) VALUES (?1, ?2, ?3, ?4, ?5)";
const UPDATE: &str = "UPDATE t SET a = ?1, b = ?2, c = ?3, d = ?4 WHERE id = ?5";

// ---------------------------------------------------------------------------------
// Arguments

struct Args {
    words: Vec<String>,
}

impl Args {
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.words.iter().position(|w| w == name) {
            Some(i) => self
                .words
                .get(i + 1)
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a value")),
            None => default,
        }
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        let i = self.words.iter().position(|w| w == name)?;
        self.words.get(i + 1).map(PathBuf::from)
    }

    fn flag(&self, name: &str) -> bool {
        self.words.iter().any(|w| w == name)
    }
}

fn main() {
    let mut words: Vec<String> = std::env::args().skip(1).collect();
    if words.is_empty() {
        eprintln!("usage: netbench throughput|latency|idle [options]; see the file header");
        std::process::exit(2);
    }
    let scenario = words.remove(0);
    let args = Args { words };
    machine();
    match scenario.as_str() {
        "throughput" => throughput(&args),
        "latency" => latency(&args),
        "idle" => idle(&args),
        other => {
            eprintln!("unknown scenario {other:?}: throughput, latency or idle");
            std::process::exit(2);
        }
    }
}

/// Prints what the figures were measured on.
fn machine() {
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    println!("# date      {}", sh("date -u '+%Y-%m-%d %H:%M:%S UTC'"));
    println!(
        "# machine   nproc {}, {}, {}",
        sh("nproc"),
        sh("lscpu | sed -n 's/^Model name: *//p'"),
        sh("free -h | awk '/^Mem:/ {print $2 \" memory\"}'")
    );
    println!("# rustc     {}", sh("rustc --version"));
    println!(
        "# tree      {} {}",
        sh("git log -1 --format=%h"),
        if sh("git status --porcelain -- crates | head -1").is_empty() {
            "(clean)"
        } else {
            "(with uncommitted changes under crates/)"
        }
    );
    println!("# load      {}", sh("cat /proc/loadavg"));
}

fn tmp_root(args: &Args) -> PathBuf {
    let base = args.path("--tmp").unwrap_or_else(|| {
        // target/release/examples/netbench -> target/tmp
        std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.parent()?.join("tmp")))
            .unwrap_or_else(std::env::temp_dir)
    });
    std::fs::create_dir_all(&base).unwrap();
    base
}

// ---------------------------------------------------------------------------------
// Sites, nodes and rows

fn create_site(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    let conn = app_connection(&db);
    conn.execute_batch(TABLE_DDL).unwrap();
    (dir, db)
}

/// A connection the way an application would open one (WAL is what `track` sets).
fn app_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    // The default 5 s would fail a write that waits for a long capture or apply.
    conn.busy_timeout(Duration::from_secs(600)).unwrap();
    conn
}

/// A read-only connection for watching another node's file.
fn watcher(path: &Path) -> Connection {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn text_a(i: i64, updated: bool) -> String {
    if updated {
        format!("renamed {i:08}")
    } else {
        format!("name {i:08}")
    }
}

fn text_d(i: i64, updated: bool) -> String {
    if updated {
        format!("an updated text payload for row number {i}")
    } else {
        format!("a somewhat longer text payload for row {i}")
    }
}

/// The value of column `b` of row `i` after the insert or the update.
fn b_of(i: i64, updated: bool) -> i64 {
    i * 7 + i64::from(updated)
}

/// Writes rows `first..=last` (inserts, or updates of every non-key column) in
/// transactions of `txn` rows, adding each committed transaction to `written`.
/// Returns the longest time one transaction took, begin to commit.
fn write_rows(
    conn: &mut Connection,
    first: i64,
    last: i64,
    txn: i64,
    update: bool,
    written: &AtomicU64,
) -> Duration {
    let mut i = first;
    let mut longest = Duration::ZERO;
    while i <= last {
        let end = (i + txn - 1).min(last);
        let began = Instant::now();
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(if update { UPDATE } else { INSERT })
                .unwrap();
            for j in i..=end {
                let c = j as f64 * 0.25 + if update { 1.0 } else { 0.0 };
                if update {
                    stmt.execute(params![
                        text_a(j, true),
                        b_of(j, true),
                        c,
                        text_d(j, true),
                        j
                    ])
                    .unwrap();
                } else {
                    stmt.execute(params![
                        j,
                        text_a(j, false),
                        b_of(j, false),
                        c,
                        text_d(j, false)
                    ])
                    .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        longest = longest.max(began.elapsed());
        written.fetch_add((end - i + 1) as u64, Ordering::Relaxed);
        i = end + 1;
    }
    longest
}

/// Highest sequence number the store in `conn` holds from any origin: on the writing
/// node its own captured sequence, on a receiver (which writes nothing) the writer's.
fn max_seq(conn: &Connection) -> u64 {
    conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM __concord_origins")
        .unwrap()
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()
        .ok()
        .flatten()
        .unwrap_or(0) as u64
}

/// Column `b` of row `id`, if the row is there.
fn b_at(conn: &Connection, id: i64) -> Option<i64> {
    conn.prepare_cached("SELECT b FROM t WHERE id = ?1")
        .unwrap()
        .query_row([id], |r| r.get(0))
        .optional()
        .unwrap()
}

/// A node running in its own tokio runtime, whose threads carry the node's name.
struct Running {
    rt: Runtime,
    node: Node,
}

impl Running {
    fn start(dir: &Path, config: NodeConfig, identity: Identity) -> Running {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(format!("node-{}", config.node.name))
            .build()
            .unwrap();
        let dir = dir.to_path_buf();
        let node = rt
            .block_on(Node::start_with(&dir, config, identity))
            .unwrap();
        Running { rt, node }
    }

    fn connected(&self) -> bool {
        let status = self.rt.block_on(self.node.status());
        status.peers.iter().all(|p| p.state == "connected")
    }

    fn stop(self) {
        self.rt.block_on(self.node.shutdown());
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

fn config(name: &str, db: Option<PathBuf>, peers: Vec<PeerConfig>) -> NodeConfig {
    NodeConfig {
        node: NodeSection {
            name: name.into(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            http: None,
        },
        store: StoreSection {
            relay: db.is_none(),
            sqlite: db,
            tables: vec!["t".into()],
            ..StoreSection::default()
        },
        // Everything at its default, as `concord init` writes it.
        sync: SyncSection::default(),
        peers,
    }
}

fn peer(name: &str, address: Option<&Running>, fingerprint: Fingerprint) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        address: address.map(|r| r.node.listen_addr().unwrap().to_string()),
        fingerprint,
        tables: Default::default(),
        propagate_schema: false,
    }
}

fn wait_connected(nodes: &[&Running]) {
    let start = Instant::now();
    while !nodes.iter().all(|n| n.connected()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nodes did not connect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two nodes, B dialing A, on tracked copies of the benchmark table.
fn start_pair(root: &Path) -> (Running, Running, PathBuf, PathBuf) {
    let (dir_a, db_a) = create_site(root, "a");
    let (dir_b, db_b) = create_site(root, "b");
    let (ia, ib) = (
        Identity::generate("a").unwrap(),
        Identity::generate("b").unwrap(),
    );
    let (fa, fb) = (ia.fingerprint(), ib.fingerprint());
    let a = Running::start(
        &dir_a,
        config("a", Some(db_a.clone()), vec![peer("b", None, fb)]),
        ia,
    );
    let b = Running::start(
        &dir_b,
        config("b", Some(db_b.clone()), vec![peer("a", Some(&a), fa)]),
        ib,
    );
    wait_connected(&[&a, &b]);
    (a, b, db_a, db_b)
}

/// A relay hub and two nodes A and B that dial it.
fn start_hub_trio(root: &Path) -> (Running, Running, Running, PathBuf, PathBuf, PathBuf) {
    let dir_h = root.join("hub");
    std::fs::create_dir_all(&dir_h).unwrap();
    let (dir_a, db_a) = create_site(root, "ha");
    let (dir_b, db_b) = create_site(root, "hb");
    let (ih, ia, ib) = (
        Identity::generate("hub").unwrap(),
        Identity::generate("ha").unwrap(),
        Identity::generate("hb").unwrap(),
    );
    let (fh, fa, fb) = (ih.fingerprint(), ia.fingerprint(), ib.fingerprint());
    let hub = Running::start(
        &dir_h,
        config(
            "hub",
            None,
            vec![peer("ha", None, fa), peer("hb", None, fb)],
        ),
        ih,
    );
    let a = Running::start(
        &dir_a,
        config("ha", Some(db_a.clone()), vec![peer("hub", Some(&hub), fh)]),
        ia,
    );
    let b = Running::start(
        &dir_b,
        config("hb", Some(db_b.clone()), vec![peer("hub", Some(&hub), fh)]),
        ib,
    );
    wait_connected(&[&hub, &a, &b]);
    (hub, a, b, db_a, db_b, dir_h.join("relay.db"))
}

// ---------------------------------------------------------------------------------
// CPU accounting from /proc

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `(comm, utime + stime in ticks)` from the text of a `stat` file.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn process_ticks(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |(_, ticks)| ticks)
}

/// A `/proc/<pid>/status` field, in its unit (kB for memory).
fn status_field(pid: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Context switches (voluntary and not) of every thread of a process.
fn context_switches(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let tid = t.file_name().to_string_lossy().into_owned();
            status_field(&format!("{pid}/task/{tid}"), "voluntary_ctxt_switches:")
                + status_field(&format!("{pid}/task/{tid}"), "nonvoluntary_ctxt_switches:")
        })
        .sum()
}

/// CPU time of each thread of a process since the tracker was made, grouped by thread
/// name. Threads that exit between two updates lose at most one interval.
struct ThreadCpu {
    pid: String,
    /// tid -> (name, ticks at the start, ticks last seen)
    threads: HashMap<u32, (String, u64, u64)>,
}

impl ThreadCpu {
    fn new(pid: &str) -> Self {
        let mut tracker = ThreadCpu {
            pid: pid.to_owned(),
            threads: HashMap::new(),
        };
        for (tid, name, ticks) in tracker.read() {
            tracker.threads.insert(tid, (name, ticks, ticks));
        }
        tracker
    }

    fn read(&self) -> Vec<(u32, String, u64)> {
        let mut out = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if let Some((name, ticks)) = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                out.push((tid, name, ticks));
            }
        }
        out
    }

    fn update(&mut self) {
        for (tid, name, ticks) in self.read() {
            let entry = self.threads.entry(tid).or_insert((name.clone(), 0, 0));
            entry.0 = name;
            entry.2 = ticks;
        }
    }

    /// Seconds of CPU per thread name, largest first.
    fn by_name(&self, hz: f64) -> Vec<(String, f64)> {
        let mut sums: HashMap<String, u64> = HashMap::new();
        for (name, first, last) in self.threads.values() {
            *sums.entry(group(name)).or_default() += last.saturating_sub(*first);
        }
        let mut out: Vec<(String, f64)> = sums
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(n, t)| (n, t as f64 / hz))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

fn group(name: &str) -> String {
    if name.starts_with("notify") {
        "file watchers".into()
    } else if name == "netbench" {
        "main (app writer, poller)".into()
    } else {
        name.into()
    }
}

// ---------------------------------------------------------------------------------
// Statistics

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The p-quantile by the nearest-rank method, of sorted values.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_list(values: &[f64], unit: &str) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------
// 1. Throughput

struct Sample {
    at: f64,
    written: u64,
    captured: u64,
    applied: u64,
    /// VmRSS of each watched process, in KiB.
    rss: Vec<u64>,
}

struct PhaseResult {
    /// From the first write until the last row was visible in B.
    total: f64,
    /// From the first write until the app's last commit.
    write: f64,
    /// The longest app transaction, begin to commit.
    longest_txn: f64,
    /// Until A had captured every row.
    captured: f64,
    /// Until B held its first change of the phase.
    first_applied: f64,
    /// CPU seconds by process and thread group.
    cpu: Vec<(String, f64)>,
    /// Largest VmRSS sampled, per watched process, in MiB.
    peak_rss: Vec<f64>,
    samples: Vec<Sample>,
}

/// Raw floor: the same rows into a fresh untracked file, one transaction each.
fn raw_floor(root: &Path, rows: i64) -> (f64, f64) {
    let path = root.join("raw.db");
    let mut conn = Connection::open(&path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
    conn.execute_batch(TABLE_DDL).unwrap();
    let sink = AtomicU64::new(0);
    let start = Instant::now();
    write_rows(&mut conn, 1, rows, rows, false, &sink);
    let insert = start.elapsed().as_secs_f64();
    let start = Instant::now();
    write_rows(&mut conn, 1, rows, rows, true, &sink);
    let update = start.elapsed().as_secs_f64();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    (insert, update)
}

/// Writes `rows` inserts or updates on A and waits until the last is visible in B.
/// `procs` are the `(label, pid)` of the processes whose CPU and memory are sampled.
fn sync_phase(
    (db_a, db_b): (&Path, &Path),
    procs: &[(String, String)],
    (rows, txn, update): (i64, i64, bool),
    hz: f64,
) -> PhaseResult {
    let mut app = app_connection(db_a);
    let poll_b = watcher(db_b);
    let base_a = max_seq(&watcher(db_a));
    let base_b = max_seq(&poll_b);
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let sampler = {
        let (written, stop) = (written.clone(), stop.clone());
        let (db_a, db_b) = (db_a.to_path_buf(), db_b.to_path_buf());
        let procs = procs.to_vec();
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let (a, b) = (watcher(&db_a), watcher(&db_b));
                let mut cpu: Vec<ThreadCpu> =
                    procs.iter().map(|(_, pid)| ThreadCpu::new(pid)).collect();
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    cpu.iter_mut().for_each(ThreadCpu::update);
                    samples.push(Sample {
                        at: start.elapsed().as_secs_f64(),
                        written: written.load(Ordering::Relaxed),
                        captured: max_seq(&a).saturating_sub(base_a),
                        applied: max_seq(&b).saturating_sub(base_b),
                        rss: procs
                            .iter()
                            .map(|(_, pid)| status_field(pid, "VmRSS:"))
                            .collect(),
                    });
                    std::thread::sleep(Duration::from_millis(50));
                }
                cpu.iter_mut().for_each(ThreadCpu::update);
                (cpu, samples)
            })
            .unwrap()
    };
    let longest_txn = write_rows(&mut app, 1, rows, txn, update, &written).as_secs_f64();
    let write = start.elapsed().as_secs_f64();
    let want = b_of(rows, update);
    while b_at(&poll_b, rows) != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(1200),
            "B never saw the last row"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (cpu, samples) = sampler.join().unwrap();
    // Check B holds all of it, and exactly A's sequence.
    let (seq_a, seq_b) = (max_seq(&watcher(db_a)), max_seq(&poll_b));
    assert_eq!(seq_b, seq_a, "B holds {seq_b} of A's {seq_a} changes");
    assert_eq!(seq_a - base_a, rows as u64, "A captured a different count");
    let first = |f: &dyn Fn(&Sample) -> bool| samples.iter().find(|s| f(s)).map_or(total, |s| s.at);
    let mut by_thread = Vec::new();
    for ((label, _), cpu) in procs.iter().zip(&cpu) {
        for (name, secs) in cpu.by_name(hz) {
            let name = if label.is_empty() {
                name
            } else {
                format!("{label}:{name}")
            };
            by_thread.push((name, secs));
        }
    }
    PhaseResult {
        total,
        write,
        longest_txn,
        captured: first(&|s| s.captured >= rows as u64),
        first_applied: first(&|s| s.applied > 0),
        cpu: by_thread,
        peak_rss: (0..procs.len())
            .map(|k| samples.iter().map(|s| s.rss[k]).max().unwrap_or(0) as f64 / 1024.0)
            .collect(),
        samples,
    }
}

/// A log line without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The two nodes of a throughput run: in this process, or `concord serve` processes.
enum Pair {
    InProcess(Box<(Running, Running)>),
    Processes(Vec<Proc>),
}

fn throughput(args: &Args) {
    let rows: i64 = args.get("--rows", 100_000);
    let txn: i64 = args.get("--txn", 10_000);
    let reps: usize = args.get("--reps", 3);
    let timeline = args.flag("--timeline");
    let separate = args.flag("--procs");
    let concord = separate.then(|| concord_binary(args));
    let hz = clock_ticks();
    let base = tmp_root(args);
    println!(
        "# throughput: {rows} inserts then {rows} updates on A, app transactions of {txn} rows, {reps} repetitions, nodes {}",
        if separate {
            "as `concord serve` processes"
        } else {
            "in this process"
        }
    );
    println!(
        "# command   netbench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut raw_rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut totals: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for rep in 1..=reps {
        let root = tempfile::Builder::new()
            .prefix("netbench-")
            .tempdir_in(&base)
            .unwrap();
        let (raw_insert, raw_update) = raw_floor(root.path(), rows);
        let (pair, db_a, db_b, procs) = match &concord {
            None => {
                let (a, b, db_a, db_b) = start_pair(root.path());
                let procs = vec![(String::new(), "self".to_owned())];
                (Pair::InProcess(Box::new((a, b))), db_a, db_b, procs)
            }
            Some(concord) => {
                let nodes = serve_sites(concord, root.path(), &["a", "b"], &[(1, 0)], |_, _| {});
                let (db_a, db_b) = (nodes[0].db.clone(), nodes[1].db.clone());
                let procs = vec![
                    ("a".to_owned(), nodes[0].pid()),
                    ("b".to_owned(), nodes[1].pid()),
                    ("bench".to_owned(), "self".to_owned()),
                ];
                (Pair::Processes(nodes), db_a, db_b, procs)
            }
        };
        let labels: Vec<&str> = procs
            .iter()
            .map(|(l, _)| if l.is_empty() { "process" } else { l.as_str() })
            .collect();
        for (k, update) in [false, true].into_iter().enumerate() {
            let op = if update { "update" } else { "insert" };
            let r = sync_phase((&db_a, &db_b), &procs, (rows, txn, update), hz);
            let raw = if update { raw_update } else { raw_insert };
            let rate = rows as f64 / r.total;
            let raw_rate = rows as f64 / raw;
            println!(
                "rep {rep} {op}: concord {:.2} s = {:.0} rows/s | raw {:.3} s = {:.0} rows/s | concord/raw rate {:.3} \
                 | app write done {:.2} s (longest {txn}-row txn {:.0} ms; raw {:.1} ms), A captured all {:.2} s, B first {:.2} s, B last {:.2} s",
                r.total,
                rate,
                raw,
                raw_rate,
                rate / raw_rate,
                r.write,
                r.longest_txn * 1e3,
                raw * 1e3 * txn.min(rows) as f64 / rows as f64,
                r.captured,
                r.first_applied,
                r.total
            );
            let cpu: Vec<String> = r
                .cpu
                .iter()
                .filter(|(_, s)| *s >= 0.005)
                .map(|(n, s)| format!("{n} {s:.2} s ({:.0}%)", 100.0 * s / r.total))
                .collect();
            println!("      cpu by thread: {}", cpu.join(", "));
            let rss: Vec<String> = labels
                .iter()
                .zip(&r.peak_rss)
                .map(|(l, m)| format!("{l} {m:.1} MiB"))
                .collect();
            println!("      peak VmRSS sampled every 50 ms: {}", rss.join(", "));
            if timeline {
                let mut next = 0.0;
                for s in &r.samples {
                    if s.at >= next {
                        let rss: Vec<String> = s
                            .rss
                            .iter()
                            .map(|k| format!("{:.0}", *k as f64 / 1024.0))
                            .collect();
                        println!(
                            "      t={:>6.2}s written {:>8} captured {:>8} applied {:>8}  rss MiB {}",
                            s.at,
                            s.written,
                            s.captured,
                            s.applied,
                            rss.join("/")
                        );
                        next = s.at + 0.5;
                    }
                }
            }
            ratios[k].push(rate / raw_rate);
            rates[k].push(rate);
            raw_rates[k].push(raw_rate);
            totals[k].push(r.total);
        }
        match pair {
            Pair::InProcess(nodes) => {
                let (a, b) = *nodes;
                a.stop();
                b.stop();
            }
            Pair::Processes(nodes) => {
                for n in &nodes {
                    // Log pruning runs under the store lock; say when it happened.
                    let log = std::fs::read_to_string(n.dir.join("serve.log")).unwrap_or_default();
                    let pruned: Vec<&str> = log
                        .lines()
                        .filter(|l| {
                            ["pruned", "retention", "failed"]
                                .iter()
                                .any(|w| l.contains(w))
                        })
                        .collect();
                    for line in pruned.iter().take(10) {
                        println!("      {} log: {}", n.name, strip_ansi(line));
                    }
                    println!(
                        "      {}: VmHWM {:.1} MiB at the end of the repetition",
                        n.name,
                        status_field(&n.pid(), "VmHWM:") as f64 / 1024.0
                    );
                }
                drop(nodes);
            }
        }
    }
    for (k, op) in ["insert", "update"].iter().enumerate() {
        println!(
            "median {op} over {reps}: concord {:.2} s ({:.0} rows/s), raw {:.0} rows/s, concord/raw {:.3}  [per rep: {}]",
            median(&mut totals[k].clone()),
            median(&mut rates[k].clone()),
            median(&mut raw_rates[k].clone()),
            median(&mut ratios[k].clone()),
            ratios[k]
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

// ---------------------------------------------------------------------------------
// 2. Latency

/// One writer-to-reader path: the file written, the files watched along the way.
struct Path3 {
    name: &'static str,
    app: Connection,
    a: Connection,
    hub: Option<Connection>,
    b: Connection,
    seq: u64,
    /// total, A captured, hub held, app commit returned (ms)
    results: Vec<(f64, f64, f64, f64)>,
    timeouts: usize,
}

impl Path3 {
    fn new(name: &'static str, db_a: &Path, hub: Option<&Path>, db_b: &Path) -> Self {
        let a = watcher(db_a);
        let hub = hub.map(watcher);
        let seq = max_seq(&a);
        Path3 {
            name,
            app: app_connection(db_a),
            a,
            hub,
            b: watcher(db_b),
            seq,
            results: Vec::new(),
            timeouts: 0,
        }
    }

    /// Writes row `id` and waits until it is visible in B.
    fn one(&mut self, id: i64, record: bool) {
        let start = Instant::now();
        self.app
            .execute(
                INSERT,
                params![
                    id,
                    text_a(id, false),
                    b_of(id, false),
                    0.5,
                    text_d(id, false)
                ],
            )
            .unwrap();
        let committed = start.elapsed();
        self.seq += 1;
        let (mut captured, mut hubbed) = (None, None);
        loop {
            if captured.is_none() && max_seq(&self.a) >= self.seq {
                captured = Some(start.elapsed());
            }
            if let Some(hub) = &self.hub
                && hubbed.is_none()
                && max_seq(hub) >= self.seq
            {
                hubbed = Some(start.elapsed());
            }
            if b_at(&self.b, id).is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                self.timeouts += 1;
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let total = start.elapsed();
        let ms = |d: Option<Duration>| d.unwrap_or(total).as_secs_f64() * 1e3;
        if record {
            self.results.push((
                total.as_secs_f64() * 1e3,
                ms(captured),
                ms(hubbed),
                ms(Some(committed)),
            ));
        }
    }

    fn report(&self) -> (f64, f64) {
        let mut total: Vec<f64> = self.results.iter().map(|r| r.0).collect();
        let mut cap: Vec<f64> = self.results.iter().map(|r| r.1).collect();
        let mut hub: Vec<f64> = self.results.iter().map(|r| r.2).collect();
        let mut commit: Vec<f64> = self.results.iter().map(|r| r.3).collect();
        commit.sort_by(f64::total_cmp);
        total.sort_by(f64::total_cmp);
        cap.sort_by(f64::total_cmp);
        hub.sort_by(f64::total_cmp);
        let line = |v: &[f64]| {
            format!(
                "p50 {:>6.2}  p90 {:>6.2}  p99 {:>6.2}  max {:>7.2} ms",
                quantile(v, 0.5),
                quantile(v, 0.9),
                quantile(v, 0.99),
                quantile(v, 1.0)
            )
        };
        println!(
            "  {:<7} n={} timeouts={}  visible in B: {}",
            self.name,
            total.len(),
            self.timeouts,
            line(&total)
        );
        println!(
            "  {:<7}   app's autocommit returned:      {}",
            "",
            line(&commit)
        );
        println!(
            "  {:<7}   captured on A (seq advanced):   {}",
            "",
            line(&cap)
        );
        if self.hub.is_some() {
            println!(
                "  {:<7}   held by the hub:                {}",
                "",
                line(&hub)
            );
        }
        (quantile(&total, 0.5), quantile(&total, 0.99))
    }
}

fn latency(args: &Args) {
    let writes: usize = args.get("--writes", 1_000);
    let gap_ms: u64 = args.get("--gap-ms", 5);
    let reps: usize = args.get("--reps", 3);
    let prefill: i64 = args.get("--prefill", 0);
    let warmup = 20;
    let base = tmp_root(args);
    println!(
        "# latency: {writes} single-row autocommit inserts per path (after {warmup} warm-up), {gap_ms} ms apart, {reps} repetitions; poll every 0.2 ms; change logs prefilled with {prefill} changes"
    );
    println!(
        "# command   netbench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut summary: [(Vec<f64>, Vec<f64>); 2] =
        [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for rep in 1..=reps {
        let root = tempfile::Builder::new()
            .prefix("netbench-")
            .tempdir_in(&base)
            .unwrap();
        let (a, b, db_a, db_b) = start_pair(root.path());
        let (hub, ha, hb, db_ha, db_hb, relay) = start_hub_trio(root.path());
        if prefill > 0 {
            // A long-running node's log holds up to `retention_changes` entries.
            let first = 100_000_001;
            let last = first + prefill - 1;
            for (from, to) in [(&db_a, &db_b), (&db_ha, &db_hb)] {
                let started = Instant::now();
                write_rows(
                    &mut app_connection(from),
                    first,
                    last,
                    10_000,
                    false,
                    &AtomicU64::new(0),
                );
                let poll = watcher(to);
                while b_at(&poll, last).is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                println!(
                    "prefilled {prefill} rows in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_secs(6));
        }
        let mut paths = [
            Path3::new("direct", &db_a, None, &db_b),
            Path3::new("via hub", &db_ha, Some(&relay), &db_hb),
        ];
        for i in 0..(warmup + writes) {
            for path in &mut paths {
                path.one(i as i64 + 1, i >= warmup);
                std::thread::sleep(Duration::from_millis(gap_ms));
            }
        }
        println!("rep {rep}:");
        for (k, path) in paths.iter().enumerate() {
            let (p50, p99) = path.report();
            summary[k].0.push(p50);
            summary[k].1.push(p99);
        }
        drop(paths);
        for node in [a, b, hub, ha, hb] {
            node.stop();
        }
    }
    for (k, name) in ["direct", "via hub"].iter().enumerate() {
        let (p50, p99) = &summary[k];
        println!(
            "median over {reps} of {name}: p50 {:.2} ms, p99 {:.2} ms  [p50s {}; p99s {}]",
            median(&mut p50.clone()),
            median(&mut p99.clone()),
            fmt_list(p50, ""),
            fmt_list(p99, "")
        );
    }
}

// ---------------------------------------------------------------------------------
// 3. Idle cost

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn concord_binary(args: &Args) -> PathBuf {
    let concord = args.path("--concord").unwrap_or_else(|| {
        // target/release/examples/netbench -> target/release/concord
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("concord")
    });
    assert!(
        concord.is_file(),
        "{} not found: run `cargo build --release -p concord` first or pass --concord",
        concord.display()
    );
    concord
}

/// A `concord serve` process on a site made by `concord init`. Killed when dropped.
struct Proc {
    name: String,
    dir: PathBuf,
    db: PathBuf,
    listen: String,
    http: String,
    fingerprint: String,
    child: Option<Child>,
}

impl Proc {
    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    fn status(&self) -> Option<serde_json::Value> {
        ureq::get(format!("http://{}/v1/status", self.http))
            .call()
            .ok()?
            .body_mut()
            .read_json()
            .ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes one site per name (the benchmark table, filled by `prepare`), runs
/// `concord init` on each, adds a `[[peers]]` entry on both ends of every
/// `(dialer, listener)` link, starts `concord serve` on each and waits until every
/// peer of every node is connected.
fn serve_sites(
    concord: &Path,
    root: &Path,
    names: &[&str],
    links: &[(usize, usize)],
    prepare: impl Fn(usize, &Path),
) -> Vec<Proc> {
    let mut procs: Vec<Proc> = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let (dir, db) = create_site(root, name);
            prepare(k, &db);
            let (listen, http) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            let out = Command::new(concord)
                .args(["init", "--dir"])
                .arg(&dir)
                .args(["--name", name, "--sqlite", "app.db", "--tables", "t"])
                .args(["--listen", &listen, "--http", &http])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let fingerprint = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("fingerprint: "))
                .unwrap()
                .trim()
                .to_owned();
            Proc {
                name: (*name).into(),
                dir,
                db,
                listen,
                http,
                fingerprint,
                child: None,
            }
        })
        .collect();
    let mut extra = vec![String::new(); procs.len()];
    for &(dialer, listener) in links {
        let (d, l) = (&procs[dialer], &procs[listener]);
        extra[dialer].push_str(&format!(
            "\n[[peers]]\nname = {:?}\nfingerprint = {:?}\naddress = {:?}\n",
            l.name, l.fingerprint, l.listen
        ));
        extra[listener].push_str(&format!(
            "\n[[peers]]\nname = {:?}\nfingerprint = {:?}\n",
            d.name, d.fingerprint
        ));
    }
    for (p, extra) in procs.iter_mut().zip(extra) {
        let path = p.dir.join("concord.toml");
        let config = std::fs::read_to_string(&path).unwrap() + &extra;
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(p.dir.join("serve.log")).unwrap();
        p.child = Some(
            Command::new(concord)
                .args(["serve", "--dir"])
                .arg(&p.dir)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let start = Instant::now();
    loop {
        let connected = procs.iter().all(|p| {
            p.status().is_some_and(|s| {
                s["peers"]
                    .as_array()
                    .is_some_and(|peers| peers.iter().all(|x| x["state"] == "connected"))
            })
        });
        if connected {
            return procs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the nodes did not connect; logs in {}",
            root.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn idle(args: &Args) {
    let secs: u64 = args.get("--secs", 60);
    let reps: usize = args.get("--reps", 1);
    let rows: i64 = 1_000;
    let concord = concord_binary(args);
    let hz = clock_ticks();
    let base = tmp_root(args);
    println!(
        "# idle: node X with 3 peers (A, B, C dial X), 4 `concord serve` processes, {rows} rows written per site before start, then {secs} s idle; binary {}",
        concord.display()
    );
    println!(
        "# command   netbench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut cpu_x = Vec::new();
    let mut rss_x = Vec::new();
    for rep in 1..=reps {
        let root = tempfile::Builder::new()
            .prefix("netbench-idle-")
            .tempdir_in(&base)
            .unwrap();
        // Each site's own rows, so the initial sync has something to move; A, B and C
        // dial X.
        let procs = serve_sites(
            &concord,
            root.path(),
            &["x", "a", "b", "c"],
            &[(1, 0), (2, 0), (3, 0)],
            |k, db| {
                let first = k as i64 * 1_000_000 + 1;
                write_rows(
                    &mut app_connection(db),
                    first,
                    first + rows - 1,
                    rows,
                    false,
                    &AtomicU64::new(0),
                );
            },
        );
        let start = Instant::now();
        let all = 4 * rows;
        loop {
            let counts: Vec<i64> = procs
                .iter()
                .map(|p| {
                    watcher(&p.db)
                        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                        .unwrap_or(0)
                })
                .collect();
            if counts.iter().all(|&c| c == all) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "initial sync did not finish: {counts:?}; logs in {}",
                root.path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let synced = start.elapsed().as_secs_f64();
        let status = procs[0].status().unwrap();
        let states: Vec<String> = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}={}",
                    p["name"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "rep {rep}: every site held all {all} rows {synced:.2} s after all peers were connected; X's peers: {}",
            states.join(" ")
        );
        std::thread::sleep(Duration::from_secs(5));

        let pids: Vec<String> = procs.iter().map(Proc::pid).collect();
        let t0 = Instant::now();
        let ticks0: Vec<u64> = pids.iter().map(|p| process_ticks(p)).collect();
        let ctx0: Vec<u64> = pids.iter().map(|p| context_switches(p)).collect();
        let mut threads = ThreadCpu::new(&pids[0]);
        let mut rss_max = 0;
        let mut per10 = Vec::new();
        let mut last = (t0, ticks0[0]);
        while t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(500));
            threads.update();
            rss_max = rss_max.max(status_field(&pids[0], "VmRSS:"));
            if last.0.elapsed() >= Duration::from_secs(10) {
                let t = process_ticks(&pids[0]);
                per10.push(100.0 * (t - last.1) as f64 / hz / last.0.elapsed().as_secs_f64());
                last = (Instant::now(), t);
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        for (k, p) in procs.iter().enumerate() {
            let pid = &pids[k];
            let cpu = 100.0 * (process_ticks(pid) - ticks0[k]) as f64 / hz / elapsed;
            let ctx = context_switches(pid).saturating_sub(ctx0[k]);
            let rss = status_field(pid, "VmRSS:") as f64 / 1024.0;
            let hwm = status_field(pid, "VmHWM:") as f64 / 1024.0;
            let threads_n = status_field(pid, "Threads:");
            println!(
                "  {} ({} peer{}): cpu {cpu:.3}% over {elapsed:.1} s, VmRSS {rss:.1} MiB (peak {hwm:.1} MiB), {threads_n} threads, {:.1} context switches/s",
                p.name,
                if k == 0 { 3 } else { 1 },
                if k == 0 { "s" } else { "" },
                ctx as f64 / elapsed
            );
            if k == 0 {
                cpu_x.push(cpu);
                rss_x.push(rss_max as f64 / 1024.0);
            }
        }
        println!("  x: cpu% per 10 s window: {}", fmt_list(&per10, "%"));
        println!(
            "  x: max VmRSS sampled every 0.5 s: {:.1} MiB",
            rss_max as f64 / 1024.0
        );
        let by: Vec<String> = threads
            .by_name(hz)
            .iter()
            .map(|(n, s)| format!("{n} {:.0} ms", s * 1e3))
            .collect();
        println!("  x: cpu by thread over the window: {}", by.join(", "));
        drop(procs);
    }
    println!(
        "median over {reps}: X cpu {:.3}%, X max RSS {:.1} MiB  [cpu per rep: {}]",
        median(&mut cpu_x.clone()),
        median(&mut rss_x.clone()),
        fmt_list(&cpu_x, "%")
    );
}
