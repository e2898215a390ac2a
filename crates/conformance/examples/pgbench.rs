//! PostgreSQL as a source: Concord against PostgreSQL's own logical replication, and
//! Concord from PostgreSQL into MariaDB and SQLite (issue 4, performance part).
//!
//! ```text
//! cargo run --release -p concord-conformance --example pgbench -- [--rows N] [--skip-native]
//!     [--targets pg,mysql,sqlite] [--capture log|triggers]
//! ```
//!
//! `--capture` chooses how the Concord source captures (default `log`: logical decoding
//! when the server allows it, as `concord` itself does; `triggers`: the trigger
//! fallback), so the two can be compared run after run.
//!
//! Reads `CONCORD_TEST_POSTGRES_URL` (required) and `CONCORD_TEST_MYSQL_URL` (needed for
//! the `mysql` target). It creates its own databases, named `concord_pgbench_<pid>_*`,
//! and drops them at the end (also after an error; databases, slot and subscription
//! left by a bench process that no longer runs are dropped at the next start).
//!
//! Workload: `t(id bigint PRIMARY KEY, a text, b bigint, c numeric(12,2), d text)`. Phase
//! `insert` writes N rows in one transaction (`INSERT ... SELECT generate_series`); phase
//! `update` rewrites all four non-key columns of those N rows in one transaction.
//!
//! Native side: databases `..._nsrc` and `..._ndst` of the same server, a publication on
//! `t` in the source, a `pgoutput` slot made with `pg_create_logical_replication_slot`
//! and a subscription with `create_slot = false, copy_data = false` (a subscription to
//! the same server cannot create its own slot: `CREATE SUBSCRIPTION` would wait for its
//! own transaction). Timed from just before the source `BEGIN` until the row with the
//! last id is visible at the destination with the phase's values; the subscriber
//! applies a source transaction in one transaction, so that row shows the whole
//! transaction. A full check (count and `sum(b)` on both sides) follows, untimed.
//! Needs `wal_level = logical`: the bench says so and stops instead of waiting.
//!
//! Concord side: source `..._csrc` tracked by a `PgStore`. The app writes through its
//! own connection (the capture trigger runs inside its transaction); then
//! `PgStore::capture` folds the pending writes into the log, and each destination
//! (`..._cdst` tracked by a `PgStore`, a MariaDB database tracked by a `MyStore`, a
//! SQLite file tracked by a `SqliteStore`) applies them by streaming
//! `changes_for` into `apply_changes`. Each phase is timed on its own; the PostgreSQL
//! total is write + capture + apply (the destination's commit makes the rows visible);
//! the totals of the other destinations are computed the same way, as if each had been
//! the only one. Before each step the kernel's peak-RSS counter of this process is
//! reset and `VmHWM` read after it, so each step's peak memory is its own.
//!
//! Each phase runs the native side first, then Concord's. While Concord's side runs the
//! subscription is disabled (its walsender would otherwise decode Concord's WAL on the
//! other core); before the native side runs it is enabled again and the bench waits
//! until a marker row written then has arrived, so the walsender has read everything
//! before. Both sides start after a `CHECKPOINT`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use concord_store::Store as _;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_harness::servers::with_database;
use concord_mysql::MyStore;
use concord_postgres::{PgStore, StoreOptions};
use concord_sqlite::SqliteStore;
use mysql::prelude::Queryable;
use postgres::{Client, NoTls};

const PREFIX: &str = "concord_pgbench_";
const TABLE_PG: &str = "CREATE TABLE t(id bigint PRIMARY KEY, a text NOT NULL, b bigint NOT NULL,
     c numeric(12,2) NOT NULL, d text NOT NULL)";
/// The native side's marker: a write to it shows when the subscription has caught up.
const MARK: &str = "CREATE TABLE mark(id int PRIMARY KEY, v bigint NOT NULL);
     INSERT INTO mark VALUES (1, 0)";
const TABLE_MYSQL: &str = "CREATE TABLE t(id BIGINT PRIMARY KEY, a VARCHAR(64) NOT NULL,
     b BIGINT NOT NULL, c DECIMAL(12,2) NOT NULL, d VARCHAR(64) NOT NULL)";
const TABLE_SQLITE: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT NOT NULL,
     b INTEGER NOT NULL, c TEXT NOT NULL, d TEXT NOT NULL)";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Insert,
    Update,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Insert => "insert",
            Phase::Update => "update",
        }
    }

    fn sql(self, rows: u64) -> String {
        match self {
            Phase::Insert => format!(
                "INSERT INTO t(id, a, b, c, d)
                 SELECT g, 'row ' || g, g * 7, (g % 1000000) / 100.0, md5(g::text)
                 FROM generate_series(1, {rows}) g"
            ),
            Phase::Update => {
                "UPDATE t SET a = a || '+', b = b + 1, c = c + 0.01, d = upper(d)".to_owned()
            }
        }
    }

    /// `b` of the row with the last id once the phase is visible.
    fn last_b(self, rows: u64) -> i64 {
        let b = rows as i64 * 7;
        match self {
            Phase::Insert => b,
            Phase::Update => b + 1,
        }
    }

    /// `sum(b)` over the table once the phase is visible.
    fn sum_b(self, rows: u64) -> i128 {
        let n = rows as i128;
        let inserted = 7 * n * (n + 1) / 2;
        match self {
            Phase::Insert => inserted,
            Phase::Update => inserted + n,
        }
    }
}

struct Args {
    rows: u64,
    native: bool,
    targets: Vec<String>,
    capture: concord_store::CaptureMethod,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        rows: 1_000_000,
        native: true,
        targets: vec!["pg".into(), "mysql".into(), "sqlite".into()],
        capture: concord_store::CaptureMethod::Log,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rows" => {
                args.rows = it
                    .next()
                    .context("--rows needs a number")?
                    .replace('_', "")
                    .parse()
                    .context("--rows needs a number")?;
            }
            "--skip-native" => args.native = false,
            "--capture" => {
                args.capture = match it.next().as_deref() {
                    Some("log") => concord_store::CaptureMethod::Log,
                    Some("triggers") => concord_store::CaptureMethod::Triggers,
                    _ => bail!("--capture needs log or triggers"),
                };
            }
            "--targets" => {
                args.targets = it
                    .next()
                    .context("--targets needs a list")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                for t in &args.targets {
                    if !["pg", "mysql", "sqlite"].contains(&t.as_str()) {
                        bail!("unknown target {t:?} (pg, mysql, sqlite)");
                    }
                }
            }
            "-h" | "--help" => {
                println!(
                    "pgbench [--rows N] [--skip-native] [--targets pg,mysql,sqlite] [--capture log|triggers]\n\
                     env: CONCORD_TEST_POSTGRES_URL, CONCORD_TEST_MYSQL_URL"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.rows == 0 {
        bail!("--rows must be at least 1");
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------
// Memory

/// `(VmHWM, VmRSS)` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets VmHWM to the current RSS (Linux >= 4.0).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU seconds (user + system) used so far by this process, and by all processes
/// named `postgres` and `mariadbd` (the servers), from `/proc`.
#[derive(Clone, Copy, Default)]
struct Cpu {
    bench: f64,
    postgres: f64,
    mariadb: f64,
}

impl Cpu {
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            bench: self.bench - before.bench,
            // Server processes that ended meanwhile take their time with them.
            postgres: (self.postgres - before.postgres).max(0.0),
            mariadb: (self.mariadb - before.mariadb).max(0.0),
        }
    }

    fn text(&self) -> String {
        let mut s = format!(
            "cpu: bench {:.1} s, postgres {:.1} s",
            self.bench, self.postgres
        );
        if self.mariadb >= 0.05 {
            write!(s, ", mariadbd {:.1} s", self.mariadb).ok();
        }
        s
    }
}

/// `(comm, utime + stime in seconds)` from a `/proc/<pid>/stat` line.
fn ticks_of(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12th and 13th after comm.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / 100.0))
}

fn cpu_now() -> Cpu {
    let mut cpu = Cpu::default();
    if let Some((_, t)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(ticks_of)
    {
        cpu.bench = t;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        match ticks_of(&stat) {
            Some((comm, t)) if comm == "postgres" => cpu.postgres += t,
            Some((comm, t)) if comm == "mariadbd" => cpu.mariadb += t,
            _ => {}
        }
    }
    cpu
}

/// One timed step: seconds, this process's peak RSS during it (MiB), and the CPU time
/// this process and the database servers used meanwhile (the servers' includes work
/// for other clients of this shared machine, if any).
#[derive(Clone, Copy, Default)]
struct Step {
    secs: f64,
    peak_mib: f64,
    cpu: Cpu,
}

fn step<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Step)> {
    let reset = reset_peak();
    let cpu0 = cpu_now();
    let start = Instant::now();
    let out = f()?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_now().since(cpu0);
    let (peak, _) = memory_kib();
    let peak_mib = if reset {
        peak as f64 / 1024.0
    } else {
        f64::NAN
    };
    Ok((
        out,
        Step {
            secs,
            peak_mib,
            cpu,
        },
    ))
}

// ---------------------------------------------------------------------------------
// Servers and names

fn mysql_url(url: &str, db: &str) -> Result<String> {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let root = match url[scheme_end..].find('/') {
        Some(i) => &url[..scheme_end + i],
        None => url,
    };
    Ok(format!("{root}/{db}"))
}

/// A libpq connection string for the subscription, from the bench's URL.
fn conninfo(url: &str, db: &str) -> Result<String> {
    let config: postgres::Config = url.parse().context("CONCORD_TEST_POSTGRES_URL")?;
    let mut s = String::new();
    if let Some(postgres::config::Host::Tcp(h)) = config.get_hosts().first() {
        write!(s, "host={h} ")?;
    }
    if let Some(p) = config.get_ports().first() {
        write!(s, "port={p} ")?;
    }
    if let Some(u) = config.get_user() {
        write!(s, "user={u} ")?;
    }
    if let Some(p) = config.get_password() {
        write!(s, "password={} ", String::from_utf8_lossy(p))?;
    }
    write!(s, "dbname={db}")?;
    Ok(s)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name made by this bench (`concord_pgbench_<pid>_...`).
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('_').next()?.parse().ok()
}

/// Everything the bench created; dropped in `Drop`, best effort, with warnings.
struct Resources {
    pg_admin: String,
    mysql_admin: Option<String>,
    pg_dbs: Vec<String>,
    mysql_dbs: Vec<String>,
    /// (database holding the subscription, subscription name)
    subscription: Option<(String, String)>,
    slot: Option<String>,
}

impl Resources {
    fn drop_subscription(&mut self) -> Result<()> {
        if let Some((db, sub)) = self.subscription.take() {
            let mut c = Client::connect(&with_database(&self.pg_admin, &db), NoTls)?;
            // Detach the slot first: dropping it is ours to do (same server).
            c.batch_execute(&format!(
                "ALTER SUBSCRIPTION {sub} DISABLE;
                 ALTER SUBSCRIPTION {sub} SET (slot_name = NONE);
                 DROP SUBSCRIPTION {sub};"
            ))?;
        }
        if let Some(slot) = self.slot.take() {
            drop_slot(&self.pg_admin, &slot)?;
        }
        Ok(())
    }

    fn cleanup(&mut self) {
        if let Err(e) = self.drop_subscription() {
            eprintln!("warning: could not drop the subscription or slot: {e:#}");
        }
        // (With the slots of log-based capture, whose readers may still be stopping.)
        for db in self.pg_dbs.drain(..) {
            concord_harness::servers::drop_postgres_database(&self.pg_admin, &db);
        }
        if let Some(url) = &self.mysql_admin
            && let Ok(mut c) = mysql::Opts::from_url(url)
                .map_err(mysql::Error::from)
                .and_then(mysql::Conn::new)
        {
            for db in self.mysql_dbs.drain(..) {
                if let Err(e) = c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`")) {
                    eprintln!("warning: could not drop MariaDB database {db}: {e}");
                }
            }
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Drops a logical slot, waiting for its walsender to let go of it.
fn drop_slot(admin: &str, slot: &str) -> Result<()> {
    let mut c = Client::connect(admin, NoTls)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = c.query_opt(
            "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )?;
        match row {
            None => return Ok(()),
            Some(r) if !r.get::<_, bool>(0) => {
                c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])?;
                return Ok(());
            }
            Some(r) => {
                if Instant::now() > deadline {
                    let pid: Option<i32> = r.get(1);
                    if let Some(pid) = pid {
                        c.execute("SELECT pg_terminate_backend($1)", &[&pid])?;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Drops databases, subscriptions and slots of bench processes that are gone.
fn drop_stale(pg_admin: &str, mysql_admin: Option<&str>) -> Result<()> {
    let mut admin = Client::connect(pg_admin, NoTls)?;
    let like = format!("{PREFIX}%");
    let dbs: Vec<String> = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1",
            &[&like],
        )?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| !pid_alive(pid));
    for db in dbs.iter().filter(|d| stale(d)) {
        let mut c = Client::connect(&with_database(pg_admin, db), NoTls)?;
        for row in c.query(
            "SELECT subname::text FROM pg_subscription WHERE subdbid =
                 (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )? {
            let sub: String = row.get(0);
            eprintln!("dropping stale subscription {sub}");
            c.batch_execute(&format!(
                "ALTER SUBSCRIPTION {sub} DISABLE;
                 ALTER SUBSCRIPTION {sub} SET (slot_name = NONE);
                 DROP SUBSCRIPTION {sub};"
            ))?;
        }
    }
    let slots: Vec<String> = admin
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1",
            &[&like],
        )?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    for slot in slots.iter().filter(|s| stale(s)) {
        eprintln!("dropping stale replication slot {slot}");
        drop_slot(pg_admin, slot)?;
    }
    for db in dbs.iter().filter(|d| stale(d)) {
        eprintln!("dropping stale database {db}");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))?;
    }
    if let Some(url) = mysql_admin {
        let mut c = mysql::Conn::new(mysql::Opts::from_url(url)?)?;
        let names: Vec<String> = c.query(format!("SHOW DATABASES LIKE '{PREFIX}%'"))?;
        for db in names.iter().filter(|d| stale(d)) {
            eprintln!("dropping stale MariaDB database {db}");
            c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Native logical replication

struct Native {
    src: Client,
    dst: Client,
    admin: Client,
    slot: String,
    marker: i64,
}

impl Native {
    fn setup(res: &mut Resources, server: &str, tag: &str) -> Result<Self> {
        let (src_db, dst_db) = (format!("{tag}_nsrc"), format!("{tag}_ndst"));
        let mut admin = Client::connect(server, NoTls)?;
        for db in [&src_db, &dst_db] {
            admin.batch_execute(&format!("CREATE DATABASE {db}"))?;
            res.pg_dbs.push(db.clone());
        }
        let mut src = Client::connect(&with_database(server, &src_db), NoTls)?;
        let mut dst = Client::connect(&with_database(server, &dst_db), NoTls)?;
        for c in [&mut src, &mut dst] {
            c.batch_execute(TABLE_PG)?;
            c.batch_execute(MARK)?;
        }
        let name = tag.to_owned();
        src.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE t, mark"))?;
        src.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )?;
        res.slot = Some(name.clone());
        let conn = conninfo(server, &src_db)?;
        dst.batch_execute(&format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION {name}
             WITH (create_slot = false, slot_name = '{name}', copy_data = false)",
            conn.replace('\'', "''")
        ))?;
        res.subscription = Some((dst_db.clone(), name.clone()));
        let mut native = Native {
            src,
            dst,
            admin,
            slot: name,
            marker: 0,
        };
        // The subscription is enabled: wait for the apply worker to attach to the slot.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !native.slot_active()? {
            if Instant::now() > deadline {
                bail!(
                    "the subscription did not start streaming within 30 s \
                     (see the server log; max_logical_replication_workers, max_wal_senders?)"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(native)
    }

    /// Stops the subscription (its walsender exits), so that it does not decode the
    /// Concord side's WAL while that side is timed.
    fn pause(&mut self) -> Result<()> {
        self.dst
            .batch_execute(&format!("ALTER SUBSCRIPTION {} DISABLE", self.slot))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.slot_active()? {
            if Instant::now() > deadline {
                bail!("the subscription's walsender did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn slot_active(&mut self) -> Result<bool> {
        Ok(self
            .admin
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots
                 WHERE slot_name = $1",
                &[&self.slot],
            )?
            .get(0))
    }

    /// Restarts the subscription and waits until it has decoded all WAL written so far:
    /// a marker row written now must arrive at the destination (at most 10 minutes).
    fn resume_and_drain(&mut self) -> Result<()> {
        self.dst
            .batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", self.slot))?;
        self.marker += 1;
        self.src
            .execute("UPDATE mark SET v = $1 WHERE id = 1", &[&self.marker])?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let v: Option<i64> = self
                .dst
                .query_opt("SELECT v FROM mark WHERE id = 1", &[])?
                .map(|r| r.get(0));
            if v == Some(self.marker) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the subscription did not catch up within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a phase; returns (write incl. commit, commit → visible, total) seconds.
    fn run(&mut self, phase: Phase, rows: u64) -> Result<(f64, f64, f64, Cpu)> {
        let poll = self.dst.prepare("SELECT b FROM t WHERE id = $1")?;
        let last_id = rows as i64;
        let want = phase.last_b(rows);
        let sql = phase.sql(rows);
        let cpu0 = cpu_now();
        let start = Instant::now();
        let mut tx = self.src.transaction()?;
        tx.batch_execute(&sql)?;
        tx.commit()?;
        let committed = start.elapsed().as_secs_f64();
        loop {
            let b: Option<i64> = self.dst.query_opt(&poll, &[&last_id])?.map(|r| r.get(0));
            if b == Some(want) {
                break;
            }
            if start.elapsed() > Duration::from_secs(3600) {
                bail!(
                    "native replication did not deliver the {} phase within an hour",
                    phase.name()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let total = start.elapsed().as_secs_f64();
        let cpu = cpu_now().since(cpu0);
        check_pg(&mut self.dst, phase, rows, "native destination")?;
        Ok((committed, total - committed, total, cpu))
    }
}

fn check_pg(c: &mut Client, phase: Phase, rows: u64, what: &str) -> Result<()> {
    let r = c.query_one("SELECT count(*), sum(b)::text FROM t", &[])?;
    let (n, sum): (i64, Option<String>) = (r.get(0), r.get(1));
    check(phase, rows, what, n as u64, sum.unwrap_or_default())
}

fn check(phase: Phase, rows: u64, what: &str, n: u64, sum: String) -> Result<()> {
    let want = phase.sum_b(rows).to_string();
    if n != rows || sum != want {
        bail!(
            "{what} after {}: {n} rows, sum(b) {sum}; expected {rows} rows, sum(b) {want}",
            phase.name()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Concord

struct ConcordResult {
    write: Step,
    capture: Step,
    captured: u64,
    /// (target, apply step, changes applied)
    applies: Vec<(String, Step, u64)>,
}

struct Concord {
    app: Client,
    src: PgStore,
    pg: Option<(PgStore, Client)>,
    my: Option<MyStore>,
    lite: Option<(SqliteStore, rusqlite::Connection)>,
}

impl Concord {
    fn setup(
        res: &mut Resources,
        server: &str,
        mysql: Option<&str>,
        sqlite_dir: &Path,
        tag: &str,
        targets: &[String],
        capture: concord_store::CaptureMethod,
    ) -> Result<Self> {
        let mut admin = Client::connect(server, NoTls)?;
        let src_db = format!("{tag}_csrc");
        admin.batch_execute(&format!("CREATE DATABASE {src_db}"))?;
        res.pg_dbs.push(src_db.clone());
        let src_url = with_database(server, &src_db);
        let mut app = Client::connect(&src_url, NoTls)?;
        app.batch_execute(TABLE_PG)?;
        let options = StoreOptions {
            capture,
            ..StoreOptions::default()
        };
        let mut src = PgStore::track(&src_url, &["t"], options)?;
        println!(
            "Concord source captures with {}",
            src.capture_state().method
        );
        let mut out = Concord {
            app,
            src,
            pg: None,
            my: None,
            lite: None,
        };
        if targets.iter().any(|t| t == "pg") {
            let db = format!("{tag}_cdst");
            admin.batch_execute(&format!("CREATE DATABASE {db}"))?;
            res.pg_dbs.push(db.clone());
            let url = with_database(server, &db);
            let mut reader = Client::connect(&url, NoTls)?;
            reader.batch_execute(TABLE_PG)?;
            out.pg = Some((
                PgStore::track(&url, &["t"], StoreOptions::default())?,
                reader,
            ));
        }
        if targets.iter().any(|t| t == "mysql") {
            let base = mysql.context("the mysql target needs CONCORD_TEST_MYSQL_URL")?;
            let db = format!("{tag}_cmy");
            let mut c = mysql::Conn::new(mysql::Opts::from_url(base)?)?;
            c.query_drop(format!("CREATE DATABASE `{db}`"))?;
            res.mysql_dbs.push(db.clone());
            let url = mysql_url(base, &db)?;
            let mut c = mysql::Conn::new(mysql::Opts::from_url(&url)?)?;
            c.query_drop(TABLE_MYSQL)?;
            out.my = Some(MyStore::track(&url, &["t"], Default::default())?);
        }
        if targets.iter().any(|t| t == "sqlite") {
            let path = sqlite_dir.join("dst.db");
            let conn = rusqlite::Connection::open(&path)?;
            conn.execute_batch(TABLE_SQLITE)?;
            let store = SqliteStore::track(&path, &["t"], Default::default())?;
            out.lite = Some((store, conn));
        }
        Ok(out)
    }

    fn run(&mut self, phase: Phase, rows: u64) -> Result<ConcordResult> {
        let sql = phase.sql(rows);
        let ((), write) = step(|| {
            let mut tx = self.app.transaction()?;
            tx.batch_execute(&sql)?;
            tx.commit()?;
            Ok(())
        })?;
        let (captured, capture) = step(|| Ok(self.src.capture()?))?;
        let mut applies = Vec::new();
        if let Some((dst, reader)) = &mut self.pg {
            let (report, s) = step(|| {
                let mut cursor = self.src.changes_for(dst.version_vector())?;
                Ok(dst.apply_changes(&mut cursor)?)
            })?;
            check_pg(reader, phase, rows, "Concord PostgreSQL destination")?;
            applies.push(("PostgreSQL".to_owned(), s, report.applied));
        }
        if let Some(dst) = &mut self.my {
            let (report, s) = step(|| {
                let mut cursor = self.src.changes_for(dst.version_vector())?;
                Ok(dst.apply_changes(&mut cursor)?)
            })?;
            let (n, sum): (u64, String) = dst
                .conn()
                .query_first("SELECT count(*), CAST(sum(b) AS CHAR) FROM t")?
                .context("no count")?;
            check(phase, rows, "Concord MariaDB destination", n, sum)?;
            applies.push(("MariaDB".to_owned(), s, report.applied));
        }
        if let Some((dst, conn)) = &mut self.lite {
            let (report, s) = step(|| {
                let mut cursor = self.src.changes_for(dst.version_vector())?;
                Ok(dst.apply_changes(&mut cursor)?)
            })?;
            let (n, sum): (i64, i64) =
                conn.query_row("SELECT count(*), sum(b) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            check(
                phase,
                rows,
                "Concord SQLite destination",
                n as u64,
                sum.to_string(),
            )?;
            applies.push(("SQLite".to_owned(), s, report.applied));
        }
        Ok(ConcordResult {
            write,
            capture,
            captured,
            applies,
        })
    }
}

// ---------------------------------------------------------------------------------

fn checkpoint(admin: &mut Client) -> Result<()> {
    admin.batch_execute("CHECKPOINT")?;
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let server = std::env::var("CONCORD_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .context(
            "set CONCORD_TEST_POSTGRES_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres",
        )?;
    let mysql = std::env::var("CONCORD_TEST_MYSQL_URL")
        .ok()
        .filter(|s| !s.is_empty());
    if args.targets.iter().any(|t| t == "mysql") && mysql.is_none() {
        bail!(
            "the mysql target needs CONCORD_TEST_MYSQL_URL (e.g. mysql://root@127.0.0.1:3306/test), \
             or leave it out with --targets pg,sqlite"
        );
    }
    let mut admin = Client::connect(&server, NoTls).context("connect to PostgreSQL")?;
    let version: String = admin.query_one("SHOW server_version", &[])?.get(0);
    if args.native {
        let wal_level: String = admin.query_one("SHOW wal_level", &[])?.get(0);
        if wal_level != "logical" {
            eprintln!(
                "The native side needs wal_level = logical; this server has wal_level = {wal_level}.\n\
                 Logical replication slots cannot be made otherwise, so the bench stops here\n\
                 instead of waiting for them. To enable it (needs a server restart):\n\
                 \n    psql \"$CONCORD_TEST_POSTGRES_URL\" -c \"ALTER SYSTEM SET wal_level = logical\"\n\
                 \x20   pg_ctlcluster --skip-systemctl-redirect <version> main restart\n\
                 \nor run the Concord side alone with --skip-native."
            );
            std::process::exit(2);
        }
    }
    drop_stale(&server, mysql.as_deref())?;

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tag = format!("{PREFIX}{}_{stamp}", std::process::id());
    let mut res = Resources {
        pg_admin: server.clone(),
        mysql_admin: mysql.clone(),
        pg_dbs: Vec::new(),
        mysql_dbs: Vec::new(),
        subscription: None,
        slot: None,
    };
    let sqlite_dir = tempfile::tempdir()?;
    let rows = args.rows;
    println!(
        "pgbench: {rows} rows, PostgreSQL {version}, targets {:?}, native {}; nproc {}, load {}",
        args.targets,
        args.native,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    let mut native = if args.native {
        Some(Native::setup(&mut res, &server, &tag)?)
    } else {
        None
    };
    let mut concord = Concord::setup(
        &mut res,
        &server,
        mysql.as_deref(),
        sqlite_dir.path(),
        &tag,
        &args.targets,
        args.capture,
    )?;

    let mut summary = String::new();
    for phase in [Phase::Insert, Phase::Update] {
        let mut native_total = None;
        if let Some(n) = &mut native {
            n.resume_and_drain()?;
            checkpoint(&mut admin)?;
            let (write, lag, total, cpu) = n.run(phase, rows)?;
            println!(
                "{:<6} native   write+commit {write:7.2} s | commit -> visible {lag:7.2} s | total {total:7.2} s ({:.0} rows/s) [{}]  load {}",
                phase.name(),
                rows as f64 / total,
                cpu.text(),
                load_average()
            );
            native_total = Some(total);
        }
        if let Some(n) = &mut native {
            n.pause()?;
        }
        checkpoint(&mut admin)?;
        let r = concord.run(phase, rows)?;
        println!(
            "{:<6} concord  write+commit {:7.2} s (peak {:.0} MiB) [{}]\n{:<6} concord  capture {:7.2} s, {} changes, {:.0}/s (peak {:.0} MiB) [{}]  load {}",
            phase.name(),
            r.write.secs,
            r.write.peak_mib,
            r.write.cpu.text(),
            phase.name(),
            r.capture.secs,
            r.captured,
            r.captured as f64 / r.capture.secs,
            r.capture.peak_mib,
            r.capture.cpu.text(),
            load_average()
        );
        for (target, s, applied) in &r.applies {
            let total = r.write.secs + r.capture.secs + s.secs;
            let ratio = match (native_total, target.as_str()) {
                (Some(n), "PostgreSQL") => format!("  concord/native {:.2}x", total / n),
                _ => String::new(),
            };
            let line = format!(
                "{:<6} concord -> {target:<10} apply {:7.2} s, {applied} changes, {:.0}/s (peak {:.0} MiB) | total {total:7.2} s ({:.0} rows/s){ratio}",
                phase.name(),
                s.secs,
                *applied as f64 / s.secs,
                s.peak_mib,
                rows as f64 / total,
            );
            println!("{line}  [{}]", s.cpu.text());
            summary.push_str(&line);
            summary.push('\n');
        }
        if let Some(n) = native_total {
            let line = format!(
                "{:<6} native (PostgreSQL logical replication) total {n:7.2} s ({:.0} rows/s)",
                phase.name(),
                rows as f64 / n
            );
            summary.push_str(&line);
            summary.push('\n');
        }
    }
    let (peak, _) = memory_kib();
    println!(
        "\nsummary ({rows} rows):\n{summary}load at end {}; process VmHWM since the last reset {:.0} MiB",
        load_average(),
        peak as f64 / 1024.0
    );
    drop(concord);
    drop(native);
    res.cleanup();
    Ok(())
}
