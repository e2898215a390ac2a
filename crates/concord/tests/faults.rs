//! The short mode of the fault harness (issue 5): three real `concord serve` processes
//! in a mesh, a fault-injecting proxy on every link, ordinary SQLite connections
//! writing on every node, and a checker that proves nothing committed was lost,
//! duplicated or seen in part.
//!
//! Risks covered:
//! * a write committed locally that never reaches the other nodes, or is lost by its
//!   own node, after dropped connections, a black-holed link, a partition, or a SIGKILL
//!   of a node (also right after a partition heals, while it catches up);
//! * a delete, a re-insert or a primary-key change lost or resurrected;
//! * a source transaction visible in part on another node, at any moment during the
//!   run (periodic snapshots) or at the end;
//! * a node that loses changes it had applied (its view of an origin going back);
//! * a row duplicated, a change logged twice, a value nobody wrote;
//! * nodes that do not converge (same rows, same version vectors, nothing pending)
//!   within a bound once the network heals.
//!
//! How the checking stays exact without knowing Concord's clocks is explained in
//! `concord_harness::model`. The seed is printed; set `CONCORD_HARNESS_SEED` to replay
//! the same schedule of writes and faults (thread timing still varies).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use concord_harness::model::{self, Effect, Key, Layout, Progress, Row, Table, Txn};
use concord_harness::process::ServeProcess;
use concord_harness::proxy::Proxy;
use concord_harness::rng::Rng;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

const NODES: usize = 3;
/// The fixed seed of the short mode.
const DEFAULT_SEED: u64 = 0x00C0_FFEE_5EED_0005;
/// Once the faults stop and the links heal, the nodes must agree within this.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// Any other wait (nodes connecting at start).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The session stall timeout the nodes run with, so a black hole is noticed quickly.
const STALL_TIMEOUT_S: u64 = 3;
/// The nodes' default `retention_changes`: a long run logs more and prunes the oldest.
const RETENTION_CHANGES: u64 = 1_000_000;

const SHARED: Range<Key> = 1..21;

fn own_range(node: usize) -> Range<Key> {
    let base = 1000 * (node as Key + 1);
    base..base + 40
}

fn layout() -> Layout {
    Layout {
        own: (0..NODES).map(own_range).collect(),
        shared: SHARED,
    }
}

fn seed() -> u64 {
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
        Err(_) if minutes().is_some() => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(DEFAULT_SEED, |d| d.as_nanos() as u64),
        Err(_) => DEFAULT_SEED,
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

/// One node's data directory and addresses.
struct NodeDir {
    dir: PathBuf,
    db: PathBuf,
    listen: SocketAddr,
    http: SocketAddr,
    fingerprint: String,
}

fn init_node(root: &Path, i: usize) -> NodeDir {
    let dir = root.join(format!("n{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("app.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        .unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["init", "--dir"])
        .arg(&dir)
        .args([
            "--name",
            &format!("n{i}"),
            "--sqlite",
            "app.db",
            "--tables",
            "t",
        ])
        .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
        .env_remove("CONCORD_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "init n{i}: {stdout}{}",
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
    let text = text.replace(
        "stall_timeout_s = 30",
        &format!("stall_timeout_s = {STALL_TIMEOUT_S}\nping_interval_s = 1"),
    );
    std::fs::write(&config, text).unwrap();
    NodeDir {
        dir,
        db,
        listen,
        http,
        fingerprint,
    }
}

fn add_peer(dir: &Path, name: &str, fingerprint: &str, address: Option<SocketAddr>) {
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

/// Per origin: (log entries, highest sequence). Equal numbers mean no entry is missing
/// or repeated (the log is never pruned in this test: retention is 1M entries).
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

/// Shared between the threads of the run.
struct Run {
    layout: Layout,
    dbs: Vec<PathBuf>,
    /// Committed transactions per writer. A writer holds its lock across COMMIT and
    /// the append, so a checker that snapshots a table *then* locks the histories sees
    /// every transaction the snapshot could contain.
    histories: Vec<Mutex<Vec<Txn>>>,
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

    /// Whether `node` misses the latest committed transaction of some other writer.
    fn lags_behind(&self, node: usize) -> Result<bool, String> {
        let table = snapshot(&self.dbs[node]).map_err(|e| format!("reading n{node}: {e}"))?;
        let guards: Vec<_> = self.histories.iter().map(|h| lock(h)).collect();
        for (writer, history) in guards.iter().enumerate().filter(|(w, _)| *w != node) {
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

/// One write the writer is about to make, with its SQL and the row count it must affect.
struct Step {
    sql: String,
    affects: usize,
    effects: Vec<Effect>,
}

/// Writes random transactions to node `me` through an ordinary connection until the run
/// stops. Own-range writes are planned against an exact model of the own range (only
/// this writer writes it); shared writes always set every column.
fn writer(run: &Run, me: usize, mut rng: Rng) {
    let _guard = StopOnExit(run);
    let mut conn = Connection::open(&run.dbs[me]).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
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
                        affects: 1,
                        effects: vec![Effect { key, after: Some(row) }],
                    });
                } else {
                    // Deleting a row that is absent here is fine: it affects 0 or 1 rows.
                    steps.push(Step {
                        sql: format!("DELETE FROM t WHERE id = {key}"),
                        affects: usize::MAX,
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
                    affects: 1,
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
                affects: 1,
                effects,
            });
        }
        if steps.is_empty() {
            continue;
        }
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) if is_busy(&e) => {
                run.busy_retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => panic!("n{me}: BEGIN IMMEDIATE failed: {e}"),
        };
        for step in &steps {
            let affected = tx
                .execute(&step.sql, [])
                .unwrap_or_else(|e| panic!("n{me}: {}: {e}", step.sql));
            if step.affects != usize::MAX && affected != step.affects {
                run.fail(format!(
                    "n{me}: `{}` affected {affected} rows, expected {}: the own range changed \
                     under its only writer (something else wrote it)",
                    step.sql, step.affects
                ));
                return;
            }
        }
        let effects: Vec<Effect> = steps.into_iter().flat_map(|s| s.effects).collect();
        let writes = effects.len() as u64;
        {
            let mut history = lock(&run.histories[me]);
            // Not retried: an error here leaves it unknown whether the write committed.
            tx.commit()
                .unwrap_or_else(|e| panic!("n{me}: COMMIT failed: {e}"));
            history.push(Txn { tag, effects });
        }
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

/// Snapshots every node in turn while the run goes on and checks each.
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
        node = (node + 1) % NODES;
    }
}

/// One fault episode; each sets itself up and heals before the next starts.
#[derive(Clone, Copy, Debug)]
enum Fault {
    DropConnections { link: usize },
    Delay { link: usize },
    BlackHole { link: usize },
    Partition { node: usize },
    Kill { node: usize },
}

/// Counts of what was injected, for the report.
#[derive(Debug, Default)]
struct Injected {
    rounds: u32,
    drops: u32,
    delays: u32,
    black_holes: u32,
    partitions: u32,
    kills: u32,
    kills_while_catching_up: u32,
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

fn kill_and_restart(run: &Run, node: &Mutex<ServeProcess>, down: Duration) {
    lock(node).kill().unwrap();
    nap(run, down);
    lock(node).restart().unwrap();
}

/// Runs the fault schedule; `links[l]` is (dialer, listener, proxy).
fn faults(
    run: &Run,
    mut rng: Rng,
    links: &[(usize, usize, Proxy)],
    nodes: &[Mutex<ServeProcess>],
    injected: &mut Injected,
) {
    let _guard = StopOnExit(run);
    let deadline = minutes().map(|m| Instant::now() + Duration::from_secs(m * 60));
    loop {
        fault_round(run, &mut rng, links, nodes, injected);
        injected.rounds += 1;
        match deadline {
            Some(deadline) if Instant::now() < deadline && !run.stopped() => {
                println!(
                    "round {} done; faults so far: {injected:?}",
                    injected.rounds
                );
            }
            _ => return,
        }
    }
}

/// One round: three dropped connections, a delay, a black hole, a partition followed by
/// a crash of the partitioned node while it catches up, and two more crashes, in a
/// shuffled order at seeded moments.
fn fault_round(
    run: &Run,
    rng: &mut Rng,
    links: &[(usize, usize, Proxy)],
    nodes: &[Mutex<ServeProcess>],
    injected: &mut Injected,
) {
    let mut schedule = Vec::new();
    for _ in 0..3 {
        schedule.push(Fault::DropConnections {
            link: rng.index(links.len()),
        });
    }
    schedule.push(Fault::Delay {
        link: rng.index(links.len()),
    });
    schedule.push(Fault::BlackHole {
        link: rng.index(links.len()),
    });
    schedule.push(Fault::Partition {
        node: rng.index(NODES),
    });
    schedule.push(Fault::Kill {
        node: rng.index(NODES),
    });
    schedule.push(Fault::Kill {
        node: rng.index(NODES),
    });
    rng.shuffle(&mut schedule);
    println!("fault schedule: {schedule:?}");
    // Let some history build up before the first fault.
    nap(run, ms(rng, 1000, 2000));
    for fault in schedule {
        if run.stopped() {
            return;
        }
        match fault {
            Fault::DropConnections { link } => {
                links[link].2.drop_connections();
                injected.drops += 1;
            }
            Fault::Delay { link } => {
                links[link].2.set_delay(ms(rng, 50, 250));
                nap(run, ms(rng, 1500, 3000));
                links[link].2.heal();
                injected.delays += 1;
            }
            Fault::BlackHole { link } => {
                links[link].2.black_hole();
                // Longer than the stall timeout sometimes, shorter other times.
                nap(run, ms(rng, 1500, 2000 + STALL_TIMEOUT_S * 1000));
                links[link].2.heal();
                injected.black_holes += 1;
            }
            Fault::Partition { node } => {
                let cut: Vec<&Proxy> = links
                    .iter()
                    .filter(|(a, b, _)| *a == node || *b == node)
                    .map(|(_, _, p)| p)
                    .collect();
                cut.iter().for_each(|p| p.partition());
                nap(run, ms(rng, 2000, 4000));
                // The harness checks itself: a partition that let changes through
                // would make the rest of this test prove less than it claims.
                if !run.stopped() {
                    let behind = run.lags_behind(node).unwrap_or_else(|e| panic!("{e}"));
                    assert!(
                        behind,
                        "n{node} was partitioned for seconds but holds every other writer's latest transaction"
                    );
                }
                cut.iter().for_each(|p| p.heal());
                injected.partitions += 1;
                // Crash the node while it catches up on what it missed: the moment a
                // crash is most likely to land inside an apply.
                nap(run, ms(rng, 20, 300));
                kill_and_restart(run, &nodes[node], ms(rng, 100, 800));
                injected.kills += 1;
                injected.kills_while_catching_up += 1;
            }
            Fault::Kill { node } => {
                kill_and_restart(run, &nodes[node], ms(rng, 200, 2000));
                injected.kills += 1;
            }
        }
        nap(run, ms(rng, 300, 1200));
    }
}

/// What the nodes look like after the run: tables, version vectors, pending writes,
/// and whether everything agrees.
struct Observed {
    tables: Vec<Result<Table, String>>,
    holds: Vec<Result<BTreeMap<String, u64>, String>>,
    pending: Vec<Result<i64, String>>,
    peers: Vec<String>,
}

impl Observed {
    fn take(dbs: &[PathBuf], dirs: &[NodeDir]) -> Self {
        let statuses: Vec<Result<serde_json::Value, String>> =
            dirs.iter().map(|d| status(d.http)).collect();
        Self {
            tables: dbs
                .iter()
                .map(|d| snapshot(d).map_err(|e| e.to_string()))
                .collect(),
            holds: statuses
                .iter()
                .map(|s| s.as_ref().map(holds).map_err(Clone::clone))
                .collect(),
            pending: dbs
                .iter()
                .map(|d| {
                    scalar(d, "SELECT count(*) FROM __concord_pending").map_err(|e| e.to_string())
                })
                .collect(),
            peers: statuses
                .iter()
                .map(|s| s.as_ref().map_or_else(Clone::clone, peer_summary))
                .collect(),
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
        for i in 0..NODES {
            out += &format!(
                "n{i}: holds {:?}, pending {:?}, peers [{}]\n",
                self.holds[i], self.pending[i], self.peers[i]
            );
        }
        if let Ok(first) = &self.tables[0] {
            for i in 1..NODES {
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
fn committed_writes_survive_dropped_links_partitions_and_node_crashes() {
    let seed = seed();
    println!("CONCORD_HARNESS_SEED={seed:#x} (set it to replay this run)");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<NodeDir> = (0..NODES).map(|i| init_node(root.path(), i)).collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A mesh: the lower-numbered node dials, through a proxy, the higher one.
    let mut links = Vec::new();
    for a in 0..NODES {
        for b in a + 1..NODES {
            let proxy = runtime.block_on(Proxy::start(dirs[b].listen)).unwrap();
            add_peer(
                &dirs[a].dir,
                &format!("n{b}"),
                &dirs[b].fingerprint,
                Some(proxy.addr()),
            );
            add_peer(&dirs[b].dir, &format!("n{a}"), &dirs[a].fingerprint, None);
            links.push((a, b, proxy));
        }
    }
    let nodes: Vec<Mutex<ServeProcess>> = dirs
        .iter()
        .map(|d| {
            Mutex::new(
                ServeProcess::start(Path::new(env!("CARGO_BIN_EXE_concord")), &d.dir).unwrap(),
            )
        })
        .collect();
    let logs = |nodes: &[Mutex<ServeProcess>]| {
        nodes
            .iter()
            .map(|n| lock(n).logs(6000))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Every node sees both peers connected before the workload starts.
    let wait_start = Instant::now();
    loop {
        let states: Vec<String> = dirs
            .iter()
            .map(|d| status(d.http).map_or_else(|e| e, |s| peer_summary(&s)))
            .collect();
        if states
            .iter()
            .all(|s| s.matches("\"connected\"").count() == NODES - 1)
        {
            break;
        }
        assert!(
            wait_start.elapsed() < TIMEOUT,
            "the mesh did not connect within {TIMEOUT:?}: {states:?}\n{}",
            logs(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let run = Run {
        layout: layout(),
        dbs: dirs.iter().map(|d| d.db.clone()).collect(),
        histories: (0..NODES).map(|_| Mutex::new(Vec::new())).collect(),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        row_writes: AtomicU64::new(0),
        busy_retries: AtomicU64::new(0),
        snapshots_checked: AtomicU64::new(0),
    };
    let mut injected = Injected::default();
    let workload_started = Instant::now();
    std::thread::scope(|s| {
        for me in 0..NODES {
            let writer_rng = rng.fork(me as u64);
            let run = &run;
            s.spawn(move || writer(run, me, writer_rng));
        }
        let checker_rng = rng.fork(100);
        let run_ref = &run;
        s.spawn(move || checker(run_ref, checker_rng));
        faults(&run, rng.fork(200), &links, &nodes, &mut injected);
        // A little more writing on a healthy network, then stop.
        nap(&run, Duration::from_millis(500));
        run.stop.store(true, Ordering::SeqCst);
    });
    let workload = workload_started.elapsed();
    if let Some(failure) = lock(&run.failure).take() {
        panic!("seed {seed:#x}: {failure}\n{}", logs(&nodes));
    }
    for (i, node) in nodes.iter().enumerate() {
        if let Some(status) = lock(node).exited().unwrap() {
            panic!(
                "seed {seed:#x}: n{i} exited on its own with {status}\n{}",
                logs(&nodes)
            );
        }
    }
    for (_, _, proxy) in &links {
        proxy.heal();
    }

    // Convergence: same rows, same version vectors, nothing left to capture.
    let healed = Instant::now();
    let observed = loop {
        let observed = Observed::take(&run.dbs, &dirs);
        if observed.converged() {
            break observed;
        }
        if healed.elapsed() > CONVERGE_WITHIN {
            panic!(
                "seed {seed:#x}: the nodes did not converge within {CONVERGE_WITHIN:?} of the network healing:\n{}\n{}",
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
        "seed {seed:#x}: the converged state is wrong:\n{}\n{}",
        problems.join("\n"),
        logs(&nodes)
    );
    // Every change is in every log exactly once: per origin the entries are min..=max
    // without holes or duplicates, and max is what the node holds. Below min they may
    // have been pruned (a long run passes the retention limit), never before.
    for (i, db) in run.dbs.iter().enumerate() {
        let counts = log_counts(db).unwrap();
        let held = observed.holds[i].as_ref().unwrap();
        let total: u64 = counts.values().map(|(c, _, _)| c).sum();
        for (origin, (count, min, max)) in &counts {
            assert_eq!(
                *count,
                max - min + 1,
                "seed {seed:#x}: n{i} logs {count} changes of origin {origin} for sequences {min}..={max}"
            );
            assert!(
                *min == 1 || total >= RETENTION_CHANGES,
                "seed {seed:#x}: n{i}'s log of origin {origin} starts at {min} although the log never reached the retention limit"
            );
        }
        let logged: BTreeMap<String, u64> = counts
            .into_iter()
            .map(|(o, (_, _, max))| (o, max))
            .collect();
        assert_eq!(
            &logged, held,
            "seed {seed:#x}: n{i}'s log differs from its version vector"
        );
    }

    let txns: usize = histories.iter().map(Vec::len).sum();
    let counts: Vec<_> = links
        .iter()
        .map(|(a, b, p)| (format!("n{a}->n{b}"), p.counts()))
        .collect();
    println!(
        "seed {seed:#x}: {txns} transactions ({} row writes, {} busy retries) checked; {} snapshots checked during the run; \
         faults: {injected:?}; node starts: {:?}; workload {workload:.1?}, converged {converged_in:.1?} after healing, \
         total {:.1?}; {} rows at the end\nproxies: {counts:?}",
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
            && injected.drops == 3 * rounds,
        "{injected:?}"
    );
    assert!(
        txns > 100,
        "too little workload to mean anything: {txns} transactions"
    );
}
