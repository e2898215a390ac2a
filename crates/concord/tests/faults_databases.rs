//! The fault harness over mixed stores (issue 5): three real `concord serve` processes in
//! a mesh, one over SQLite, one over PostgreSQL and one over MariaDB, a fault-injecting
//! proxy on every link, and one writer per node writing through an ordinary client of
//! that node's database (rusqlite, postgres, mysql). Then a checker proves that nothing
//! committed was lost, duplicated, seen in part or invented, and that the three
//! databases converge to the same rows.
//!
//! The table is `t(id, v, n)` on each, typed so that every column is the same `Value`
//! kind in all three stores (`docs/type-mapping.md`): SQLite `INTEGER`/`TEXT`/`INTEGER`,
//! PostgreSQL `bigint`/`text`/`bigint`, MariaDB `BIGINT`/`VARCHAR(64)`/`BIGINT`, that is
//! `Integer`, `Text`, `Integer`; so the nodes need no schema mapping and rows compare as
//! plain `(id, v, n)` tuples.
//!
//! Risks covered, beyond those of the SQLite-only `faults.rs`:
//! * a write captured by a PostgreSQL or MariaDB trigger (whole source transactions, in
//!   commit order, from a pending table) lost or split when its `concord serve` is
//!   SIGKILLed with the database server still up: pending writes, an apply transaction
//!   cut off by the kill, an advisory lock (PostgreSQL) or `GET_LOCK` (MariaDB) held by
//!   a dead connection;
//! * a value changed on its way between stores of different types, or a change set
//!   aside instead of applied (`failures` in status must stay 0);
//! * the node's apply session and an application's transaction on the same server
//!   deadlocking (MariaDB rolls one back: the writer retries, the node must too);
//! * a delete, a re-insert or a primary-key change lost or resurrected across stores;
//! * a source transaction visible in part on another node, during the run (periodic
//!   snapshots of every database) or at the end; a node going back in time;
//! * a shared row that is not the last writer's, by version and per column (checked on
//!   the SQLite node's change log, which holds every origin's changes);
//! * a node panicking (its logs are searched), or the databases not converging within
//!   60 s once the network heals.
//!
//! Faults, per round, in a shuffled order at seeded moments: three dropped connections,
//! a delay, a black hole, a partition isolating one node (then healed, then that node
//! SIGKILLed while it catches up), a SIGKILL + restart of each node (so the
//! PostgreSQL and MariaDB nodes' serve processes are killed too) and a crash + restart of
//! the PostgreSQL and of the MariaDB server mid-stream (`immediate` shutdown, SIGKILL),
//! cutting the node's capture, log reader and apply connections. Crashing servers others
//! use would be hostile, so the run starts servers of its own
//! ([`concord_harness::private_servers`]) when the machine has the server binaries, and
//! says so when it cannot (then that fault is skipped). A writer never has a transaction
//! open across a server crash (it waits), so every commit it records is known. Short mode (what `cargo test` runs) is one round with a fixed seed;
//! `CONCORD_HARNESS_SEED` replays a seed, `CONCORD_HARNESS_MINUTES=N` repeats rounds for N
//! minutes with a fresh seed.
//!
//! Needs PostgreSQL and MariaDB: the admin URLs in `CONCORD_TEST_POSTGRES_URL` and
//! `CONCORD_TEST_MYSQL_URL`, or the usual local servers when those are unset (the test
//! creates uniquely named databases and drops them at the end, also when it fails).
//! Without a server the test is reported as ignored, with the reason; a variable naming
//! a server that does not answer fails it (`concord_harness::servers` has the rule). This
//! file is a `harness = false` test binary for that reason, built on Unix only as before
//! (elsewhere its `main` does nothing).
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use concord_core::{NodeId, Value};
use concord_harness::changelog;
use concord_harness::episodes::{self, Rounds};
use concord_harness::mode::{self, minutes};
use concord_harness::model::{self, Effect, Key, Row, Table, Txn};
use concord_harness::node::{self, Settings};
use concord_harness::private_servers::{PrivateMariadb, PrivatePostgres};
use concord_harness::process::{self, STDERR_FILE, STDOUT_FILE, ServeProcess};
use concord_harness::rng::Rng;
use concord_harness::run::{self, Control, Histories, StopOnExit, lock, ms, nap};
use concord_harness::servers;
use concord_harness::status;
use concord_harness::topology::{self, Link};
use concord_harness::workload::{self, Planner, SHARED, Step};
use mysql::prelude::Queryable;

const TEST: &str = "mixed_store_mesh_keeps_every_committed_write_under_faults_and_crashes";
/// The fixed seed of the short mode.
const SEED: u64 = 0x00C0_FFEE_5EED_0007;
const NODES: usize = 3;
/// Node `i` runs over `KINDS[i]`; writer `i` writes to node `i`'s database.
const KINDS: [Kind; NODES] = [Kind::Sqlite, Kind::Postgres, Kind::Mariadb];
/// Once the faults stop and the links heal, the databases must agree within this.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// Any other wait (nodes connecting at start). Generous: the database nodes track
/// their table (DDL, triggers) when they first start, on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The session stall timeout the nodes run with, so a black hole is noticed quickly.
const STALL_TIMEOUT_S: u64 = 3;
/// The nodes' default `retention_changes`: a short run stays far below it.
const RETENTION_CHANGES: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
    Mariadb,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Mariadb => "mariadb",
        }
    }
}

/// `n0 (sqlite)`, for messages.
fn label(node: usize) -> String {
    format!("n{node} ({})", KINDS[node].name())
}

fn seed() -> u64 {
    mode::seed(SEED)
}

// ---------------------------------------------------------------------------------
// The databases.

const SQLITE_DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)";
const PG_DDL: &str = "CREATE TABLE t(id bigint PRIMARY KEY, v text, n bigint)";
const MY_DDL: &str = "CREATE TABLE t(id BIGINT PRIMARY KEY, v VARCHAR(64), n BIGINT) \
                      ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// Database servers of the run's own, which it may crash and restart
/// ([`concord_harness::private_servers`]).
struct PrivateServers {
    postgres: PrivatePostgres,
    mariadb: PrivateMariadb,
}

impl PrivateServers {
    fn start() -> Result<Self, String> {
        Ok(Self {
            postgres: PrivatePostgres::start()?,
            mariadb: PrivateMariadb::start()?,
        })
    }
}

/// A PostgreSQL and a MariaDB database created for one run and dropped when this guard
/// is dropped, whether the test passed or panicked.
struct ServerDatabases {
    pg_admin: String,
    my_admin: String,
    name: String,
}

impl ServerDatabases {
    fn create(pg_admin: &str, my_admin: &str) -> Self {
        // The guard exists before anything is created, so a failure half-way drops
        // what was created.
        let dbs = Self {
            pg_admin: pg_admin.to_owned(),
            my_admin: my_admin.to_owned(),
            name: servers::unique_database_name("concord_mixed"),
        };
        let mut pg = pg_connect(pg_admin).unwrap();
        pg.batch_execute(&format!("CREATE DATABASE {}", dbs.name))
            .unwrap();
        pg_connect(&dbs.pg_url())
            .unwrap()
            .batch_execute(PG_DDL)
            .unwrap();
        let mut my = my_connect(my_admin).unwrap();
        my.query_drop(format!("CREATE DATABASE `{}`", dbs.name))
            .unwrap();
        my_connect(&dbs.my_url())
            .unwrap()
            .query_drop(MY_DDL)
            .unwrap();
        dbs
    }

    fn pg_url(&self) -> String {
        servers::with_database(&self.pg_admin, &self.name)
    }

    fn my_url(&self) -> String {
        servers::with_database(&self.my_admin, &self.name)
    }
}

impl Drop for ServerDatabases {
    fn drop(&mut self) {
        concord_harness::servers::drop_postgres_database(&self.pg_admin, &self.name);
        if let Ok(mut my) = my_connect(&self.my_admin) {
            // MariaDB's DROP DATABASE waits for every open transaction in it: end the
            // sessions still there (a node that outlived the test) first.
            let ids: Vec<u64> = my
                .exec(
                    "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                    (self.name.as_str(),),
                )
                .unwrap_or_default();
            for id in ids {
                let _ = my.query_drop(format!("KILL {id}"));
            }
            let _ = my.query_drop("SET SESSION lock_wait_timeout = 20");
            let _ = my.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

fn pg_connect(url: &str) -> Result<postgres::Client, String> {
    postgres::Client::connect(url, postgres::NoTls)
        .map_err(|e| format!("{url}: {}", pg_message(&e)))
}

fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn my_connect(url: &str) -> Result<mysql::Conn, String> {
    let opts = mysql::Opts::from_url(url).map_err(|e| format!("{url}: {e}"))?;
    // Affected rows = rows matched, as SQLite and PostgreSQL count them, not rows
    // changed, so an UPDATE that sets a column to its value still counts.
    let opts = mysql::OptsBuilder::from_opts(opts)
        .additional_capabilities(mysql::consts::CapabilityFlags::CLIENT_FOUND_ROWS);
    mysql::Conn::new(opts).map_err(|e| format!("{url}: {e}"))
}

fn open_sqlite_reader(db: &Path) -> Result<rusqlite::Connection, String> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: {e}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// A row as the checker compares them, whatever the store: `(id, v, n)`, with a NULL
/// (which no writer writes) shown so that every check rejects it.
fn normalize(id: i64, v: Option<String>, n: Option<i64>) -> (Key, Row) {
    (
        id,
        Row {
            v: v.unwrap_or_else(|| "<NULL>".to_owned()),
            n: n.unwrap_or(i64::MIN),
        },
    )
}

/// Where a node keeps its rows.
#[derive(Clone, Debug)]
enum Store {
    Sqlite(PathBuf),
    Postgres(String),
    Mariadb(String),
}

impl Store {
    /// The whole table, read in one statement (one consistent snapshot in all three).
    fn snapshot(&self) -> Result<Table, String> {
        match self {
            Store::Sqlite(db) => {
                let conn = open_sqlite_reader(db)?;
                let mut stmt = conn
                    .prepare("SELECT id, v, n FROM t")
                    .map_err(|e| e.to_string())?;
                let rows = stmt
                    .query_map([], |r| Ok(normalize(r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(|e| e.to_string())?;
                rows.collect::<rusqlite::Result<Table>>()
                    .map_err(|e| e.to_string())
            }
            Store::Postgres(url) => {
                let rows = pg_connect(url)?
                    .query("SELECT id, v, n FROM t", &[])
                    .map_err(|e| pg_message(&e))?;
                rows.iter()
                    .map(|r| Ok(normalize(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                    .collect::<Result<Table, postgres::Error>>()
                    .map_err(|e| pg_message(&e))
            }
            Store::Mariadb(url) => {
                let rows: Vec<(i64, Option<String>, Option<i64>)> = my_connect(url)?
                    .query("SELECT id, v, n FROM t")
                    .map_err(|e| e.to_string())?;
                Ok(rows
                    .into_iter()
                    .map(|(id, v, n)| normalize(id, v, n))
                    .collect())
            }
        }
    }

    /// Captured local writes not yet in the change log.
    fn pending(&self) -> Result<i64, String> {
        match self {
            Store::Sqlite(db) => open_sqlite_reader(db)?
                .query_row("SELECT count(*) FROM __concord_pending", [], |r| r.get(0))
                .map_err(|e| e.to_string()),
            Store::Postgres(url) => pg_connect(url)?
                .query_one("SELECT count(*)::int8 FROM concord.pending", &[])
                .and_then(|r| r.try_get(0))
                .map_err(|e| pg_message(&e)),
            Store::Mariadb(url) => my_connect(url)?
                .query_first::<i64, _>("SELECT COUNT(*) FROM concord_pending")
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "COUNT(*) returned no row".to_owned()),
        }
    }

    /// Per origin (hex node id): how many log entries, the lowest and the highest
    /// sequence number.
    fn log_counts(&self) -> Result<BTreeMap<String, (u64, u64, u64)>, String> {
        let rows: Vec<(String, i64, i64, i64)> = match self {
            Store::Sqlite(db) => return changelog::sqlite_log_counts(db),
            Store::Postgres(url) => pg_connect(url)?
                .query(
                    "SELECT encode(o.node_id, 'hex'), count(*)::int8, min(l.seq)::int8, max(l.seq)::int8
                     FROM concord.log l JOIN concord.origins o ON o.id = l.origin
                     GROUP BY o.node_id",
                    &[],
                )
                .map_err(|e| pg_message(&e))?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<Result<_, postgres::Error>>()
                .map_err(|e| pg_message(&e))?,
            Store::Mariadb(url) => my_connect(url)?
                .query(
                    "SELECT LOWER(HEX(o.node_id)), COUNT(*), MIN(l.seq), MAX(l.seq)
                     FROM concord_log l JOIN concord_origins o ON o.id = l.origin
                     GROUP BY o.node_id",
                )
                .map_err(|e| e.to_string())?,
        };
        Ok(rows
            .into_iter()
            .map(|(o, c, min, max)| (o, (c as u64, min as u64, max as u64)))
            .collect())
    }

    /// The changes this node set aside (could not apply), as `origin/seq key: error`.
    fn set_aside(&self) -> Result<Vec<String>, String> {
        const COLUMNS: &str = "origin, seq, tbl, key_text, error";
        let rows: Vec<(String, i64, String, String, String)> = match self {
            Store::Sqlite(db) => {
                let conn = open_sqlite_reader(db)?;
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT {COLUMNS} FROM __concord_failures ORDER BY id"
                    ))
                    .map_err(|e| e.to_string())?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .map_err(|e| e.to_string())?;
                rows.collect::<rusqlite::Result<_>>()
                    .map_err(|e| e.to_string())?
            }
            Store::Postgres(url) => pg_connect(url)?
                .query(
                    &format!("SELECT {COLUMNS} FROM concord.failures ORDER BY id"),
                    &[],
                )
                .map_err(|e| pg_message(&e))?
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                    ))
                })
                .collect::<Result<_, postgres::Error>>()
                .map_err(|e| pg_message(&e))?,
            Store::Mariadb(url) => my_connect(url)?
                .query(format!(
                    "SELECT {COLUMNS} FROM concord_failures ORDER BY id"
                ))
                .map_err(|e| e.to_string())?,
        };
        Ok(rows
            .into_iter()
            .map(|(origin, seq, table, key, error)| {
                format!("{origin}/{seq} {table} {key}: {error}")
            })
            .collect())
    }

    /// An ordinary client connection, as an application would open.
    fn writer(&self) -> Result<Client, String> {
        Ok(match self {
            Store::Sqlite(db) => {
                let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
                conn.busy_timeout(Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                Client::Sqlite(conn)
            }
            Store::Postgres(url) => Client::Postgres(pg_connect(url)?),
            Store::Mariadb(url) => Client::Mariadb(my_connect(url)?),
        })
    }
}

/// Why a statement failed.
enum SqlError {
    /// The database refused it for now and rolled back (SQLite busy, a deadlock, a lock
    /// wait timeout, a serialization failure): the transaction did not happen.
    Retry(String),
    /// Anything else.
    Fatal(String),
}

impl SqlError {
    fn message(&self) -> &str {
        match self {
            SqlError::Retry(m) | SqlError::Fatal(m) => m,
        }
    }
}

fn sqlite_error(e: rusqlite::Error) -> SqlError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            SqlError::Retry(e.to_string())
        }
        _ => SqlError::Fatal(e.to_string()),
    }
}

fn pg_error(e: postgres::Error) -> SqlError {
    use postgres::error::SqlState;
    let retry = e.code().is_some_and(|c| {
        [
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::LOCK_NOT_AVAILABLE,
        ]
        .contains(c)
    });
    if retry {
        SqlError::Retry(pg_message(&e))
    } else {
        SqlError::Fatal(pg_message(&e))
    }
}

/// ER_LOCK_WAIT_TIMEOUT and ER_LOCK_DEADLOCK.
const MY_RETRY_CODES: [u16; 2] = [1205, 1213];

fn my_error(e: mysql::Error) -> SqlError {
    match &e {
        mysql::Error::MySqlError(m) if MY_RETRY_CODES.contains(&m.code) => {
            SqlError::Retry(e.to_string())
        }
        _ => SqlError::Fatal(e.to_string()),
    }
}

/// A writer's connection to its node's database.
enum Client {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
    Mariadb(mysql::Conn),
}

impl Client {
    fn begin(&mut self) -> Result<(), SqlError> {
        match self {
            Client::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE").map_err(sqlite_error),
            Client::Postgres(c) => c.batch_execute("BEGIN").map_err(pg_error),
            Client::Mariadb(c) => c.query_drop("START TRANSACTION").map_err(my_error),
        }
    }

    /// Runs one statement; the rows it affected (matched, for MariaDB too).
    fn execute(&mut self, sql: &str) -> Result<u64, SqlError> {
        match self {
            Client::Sqlite(c) => c.execute(sql, []).map(|n| n as u64).map_err(sqlite_error),
            Client::Postgres(c) => c.execute(sql, &[]).map_err(pg_error),
            Client::Mariadb(c) => {
                c.query_drop(sql).map_err(my_error)?;
                Ok(c.affected_rows())
            }
        }
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        match self {
            Client::Sqlite(c) => c.execute_batch("COMMIT").map_err(sqlite_error),
            Client::Postgres(c) => c.batch_execute("COMMIT").map_err(pg_error),
            Client::Mariadb(c) => c.query_drop("COMMIT").map_err(my_error),
        }
    }

    /// Ends a transaction a retryable error interrupted (MariaDB rolls back only the
    /// statement on a lock wait timeout; the others have rolled back already or need
    /// it for the next BEGIN).
    fn rollback(&mut self) {
        let _ = match self {
            Client::Sqlite(c) => c.execute_batch("ROLLBACK").map_err(sqlite_error),
            Client::Postgres(c) => c.batch_execute("ROLLBACK").map_err(pg_error),
            Client::Mariadb(c) => c.query_drop("ROLLBACK").map_err(my_error),
        };
    }
}

/// An insert that updates the row if the key exists, in each dialect.
fn upsert_sql(kind: Kind, key: Key, row: &Row) -> String {
    match kind {
        Kind::Sqlite | Kind::Postgres => format!(
            "INSERT INTO t(id, v, n) VALUES ({key}, '{}', {}) \
             ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = excluded.n",
            row.v, row.n
        ),
        Kind::Mariadb => format!(
            "INSERT INTO t(id, v, n) VALUES ({key}, '{}', {}) \
             ON DUPLICATE KEY UPDATE v = VALUES(v), n = VALUES(n)",
            row.v, row.n
        ),
    }
}

// ---------------------------------------------------------------------------------
// Nodes.

/// One node's data directory and addresses.
type NodeDir = node::NodeDir<Store>;

fn init_node(root: &Path, node: usize, dbs: &ServerDatabases) -> NodeDir {
    let kind = KINDS[node];
    let name = kind.name().to_owned();
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let (url, store) = match kind {
        Kind::Sqlite => {
            let db = dir.join("app.db");
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute_batch(SQLITE_DDL)
                .unwrap();
            (None, Store::Sqlite(db))
        }
        Kind::Postgres => (
            Some(("--postgres", dbs.pg_url())),
            Store::Postgres(dbs.pg_url()),
        ),
        Kind::Mariadb => (
            Some(("--mysql", dbs.my_url())),
            Store::Mariadb(dbs.my_url()),
        ),
    };
    let args = match &url {
        None => vec!["--tables", "t", "--sqlite", "app.db"],
        Some((flag, url)) => vec!["--tables", "t", flag, url],
    };
    let settings = Settings {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_concord")),
        stall_timeout_s: STALL_TIMEOUT_S,
        default_retention: RETENTION_CHANGES,
        // A long run must not prune the log the last-writer check reads.
        retention: if minutes().is_some() {
            100_000_000
        } else {
            RETENTION_CHANGES
        },
    };
    node::init(&settings, dir, &name, &args, store).unwrap_or_else(|e| panic!("{e}"))
}

/// Lines of the nodes' output that report a panic, with the lines after each.
fn panics_in_logs(dirs: &[NodeDir]) -> Vec<String> {
    let mut found = Vec::new();
    for d in dirs {
        for file in [STDOUT_FILE, STDERR_FILE] {
            let text = std::fs::read_to_string(d.dir.join(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.contains("panicked at") {
                    let end = (i + 6).min(lines.len());
                    found.push(format!(
                        "{} {file}:\n  {}",
                        d.name,
                        lines[i..end].join("\n  ")
                    ));
                }
            }
        }
    }
    found
}

/// `text` without ANSI colour sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Per node, the warnings and errors it logged, grouped by message (numbers blanked
/// out), most frequent first: what the faults made the nodes go through, for the report.
fn log_warnings(dirs: &[NodeDir]) -> Vec<String> {
    dirs.iter()
        .map(|d| {
            let text =
                strip_ansi(&std::fs::read_to_string(d.dir.join(STDERR_FILE)).unwrap_or_default());
            let mut groups: BTreeMap<String, usize> = BTreeMap::new();
            let mut total = 0;
            for line in text.lines() {
                let Some(at) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                    continue;
                };
                total += 1;
                let message: String = line[at..]
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .take(140)
                    .collect();
                *groups.entry(message).or_default() += 1;
            }
            let mut groups: Vec<(String, usize)> = groups.into_iter().collect();
            groups.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            let top: Vec<String> = groups
                .iter()
                .take(4)
                .map(|(m, n)| format!("{n} x{m}"))
                .collect();
            format!(
                "{}: {total} warnings/errors\n    {}",
                d.name,
                top.join("\n    ")
            )
        })
        .collect()
}

/// What every node set aside and warned about: the first thing to read when a check
/// fails, because a change set aside on one node is a write missing there for good.
fn diagnosis(dirs: &[NodeDir]) -> String {
    let mut out = String::from("--- diagnosis\n");
    for (i, d) in dirs.iter().enumerate() {
        match d.store.set_aside() {
            Ok(records) if records.is_empty() => {
                out += &format!("{} set nothing aside\n", label(i));
            }
            Ok(records) => {
                out += &format!(
                    "{} set aside {} changes:\n  {}\n",
                    label(i),
                    records.len(),
                    records
                        .iter()
                        .take(8)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n  ")
                );
            }
            Err(e) => out += &format!("{}: could not read what it set aside: {e}\n", label(i)),
        }
    }
    out += &format!(
        "warnings and errors logged:\n  {}\n",
        log_warnings(dirs).join("\n  ")
    );
    out
}

// ---------------------------------------------------------------------------------
// The run: writers, checker, faults.

/// Shared between the threads of the run.
struct Run<'p> {
    control: Control,
    /// Committed transactions per writer.
    histories: Histories,
    stores: Vec<Store>,
    row_writes: AtomicU64,
    /// Per writer: transactions the database rolled back (busy, deadlock, lock wait
    /// timeout) and that were therefore not recorded.
    retries: Vec<AtomicU64>,
    /// Why they were rolled back: `store: message` -> count.
    retry_reasons: Mutex<BTreeMap<String, u64>>,
    /// Which writer each store's node id (the origin of its changes) belongs to.
    writer_of: HashMap<NodeId, usize>,
    /// Per node: the generation of its database server, bumped by each restart. A
    /// writer holds it shared for a whole transaction (so a restart never cuts one off
    /// before its COMMIT answered, which would leave unknown whether it committed), and
    /// reconnects when it changed; a restart holds it exclusively.
    servers_up: Vec<RwLock<u64>>,
    /// The private servers a restart crashes, when the run has them.
    private: Option<&'p PrivateServers>,
}

impl Run<'_> {
    fn read(&self, node: usize) -> Result<Table, String> {
        let _up = self.servers_up[node]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        self.stores[node]
            .snapshot()
            .map_err(|e| format!("reading {}: {e}", label(node)))
    }
}

/// The keys a checker's message names (`key 123: ...`), at most six.
fn keys_named(message: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    for part in message.split("key ").skip(1) {
        let digits: String = part
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        if let Ok(key) = digits.parse::<Key>()
            && !keys.contains(&key)
            && keys.len() < 6
        {
            keys.push(key);
        }
    }
    keys
}

impl Run<'_> {
    /// For each key: every committed write to it, in each writer's commit order, and
    /// every change to it in the SQLite node's change log (which holds what every
    /// origin captured: the PostgreSQL and MariaDB nodes' changes as they sent them),
    /// in log order. What a maintainer needs to tell a lost change from a misordered
    /// one or a wrong merge.
    fn explain(&self, keys: &[Key]) -> String {
        if keys.is_empty() {
            return String::new();
        }
        let Store::Sqlite(db) = &self.stores[0] else {
            return String::new();
        };
        let log = changelog::read_log(db);
        let show = |r: &Option<Row>| {
            r.as_ref()
                .map_or_else(|| "absent".to_owned(), Row::to_string)
        };
        let mut out = String::from("--- the keys named above\n");
        for &key in keys {
            out += &format!("key {key}, committed (writer:txn -> row after it):\n");
            for (w, kind) in KINDS.iter().enumerate() {
                let history = self.histories.writer(w);
                let writes: Vec<String> = history
                    .iter()
                    .flat_map(|t| {
                        t.effects
                            .iter()
                            .filter(|e| e.key == key)
                            .map(move |e| format!("{} -> {}", t.tag, show(&e.after)))
                    })
                    .collect();
                if !writes.is_empty() {
                    let skip = writes.len().saturating_sub(12);
                    out += &format!(
                        "  writer {w} ({}){}: {}\n",
                        kind.name(),
                        if skip > 0 {
                            format!(", last 12 of {}", writes.len())
                        } else {
                            String::new()
                        },
                        writes[skip..].join("; ")
                    );
                }
            }
            match &log {
                Ok(log) => {
                    let changes: Vec<String> = log
                        .iter()
                        .filter(|c| {
                            c.table == "t"
                                && c.key
                                    .decode()
                                    .is_ok_and(|k| k.as_slice() == [Value::Integer(key)])
                        })
                        .map(|c| {
                            let origin = self.writer_of.get(&c.origin).map_or_else(
                                || c.origin.short().to_string(),
                                |w| format!("writer {w}"),
                            );
                            let columns: Vec<String> = c
                                .columns
                                .iter()
                                .map(|col| {
                                    format!("{}={:?}@{}", col.column, col.value, col.version.hlc)
                                })
                                .collect();
                            format!(
                                "{origin} seq {} hlc {} cl {}{} [{}]",
                                c.seq,
                                c.hlc,
                                c.causal_length.0,
                                if c.last_in_txn { " end" } else { "" },
                                if c.is_delete() {
                                    "delete".to_owned()
                                } else {
                                    columns.join(", ")
                                }
                            )
                        })
                        .collect();
                    let skip = changes.len().saturating_sub(12);
                    out += &format!(
                        "  n0 (sqlite)'s log{}:\n    {}\n",
                        if skip > 0 {
                            format!(", last 12 of {}", changes.len())
                        } else {
                            String::new()
                        },
                        changes[skip..].join("\n    ")
                    );
                }
                Err(e) => out += &format!("  n0 (sqlite)'s log could not be read: {e}\n"),
            }
            if let Store::Mariadb(url) = &self.stores[2] {
                match mariadb_trail(url, key) {
                    Ok(trail) => out += &trail,
                    Err(e) => out += &format!("  n2 (mariadb)'s trail could not be read: {e}\n"),
                }
            }
        }
        out
    }
}

/// A row of MariaDB's pending table as [`mariadb_trail`] shows it: id, operation, the
/// writing transaction, the transaction that deleted it (`u64::MAX` while current), that
/// writing transaction's commit order, key and values.
type PendingTrail = (i64, i64, u64, u64, Option<u64>, String, Option<String>);

/// What the MariaDB node itself holds about `key`: its own log entries for the key
/// (sequence, clock, causal length, end of transaction), and the pending rows its
/// triggers recorded, current and historical (the table is system-versioned; a captured
/// row becomes history, until a capture purges it), with the commit order MariaDB gave
/// each writing transaction.
fn mariadb_trail(url: &str, key: Key) -> Result<String, String> {
    let mut conn = my_connect(url)?;
    let pk = concord_core::PrimaryKey::encode(&[Value::Integer(key)]).map_err(|e| e.to_string())?;
    let log: Vec<(String, i64, i64, i64, bool)> = conn
        .exec(
            "SELECT LOWER(HEX(o.node_id)), l.seq, l.hlc, l.cl, l.txn_end
             FROM concord_log l JOIN concord_origins o ON o.id = l.origin
             WHERE l.pk = ? ORDER BY l.pos",
            (pk.as_bytes(),),
        )
        .map_err(|e| e.to_string())?;
    let pending: Vec<PendingTrail> = conn
        .query(format!(
            "SELECT p.id, p.op, p.trx, p.trx_end, r.commit_id, p.k, p.v
             FROM concord_pending FOR SYSTEM_TIME ALL p
             LEFT JOIN mysql.transaction_registry r ON r.transaction_id = p.trx
             WHERE p.k LIKE '%\"{key}\"%' ORDER BY p.id"
        ))
        .map_err(|e| e.to_string())?;
    let log: Vec<String> = log
        .iter()
        .map(|(origin, seq, hlc, cl, end)| {
            format!(
                "{}/{seq} hlc {}ms+{} cl {cl}{}",
                &origin[..8.min(origin.len())],
                *hlc as u64 >> 16,
                *hlc as u64 & 0xffff,
                if *end { " end" } else { "" }
            )
        })
        .collect();
    let pending: Vec<String> = pending
        .iter()
        .map(|(id, op, trx, trx_end, commit, k, v)| {
            let state = if *trx_end == u64::MAX {
                "current".to_owned()
            } else {
                format!("deleted by trx {trx_end}")
            };
            format!("id {id} op {op} trx {trx} (commit {commit:?}) {state} k {k} v {v:?}")
        })
        .collect();
    let skip = log.len().saturating_sub(12);
    Ok(format!(
        "  n2 (mariadb)'s own log for the key{}:\n    {}\n  n2 (mariadb)'s pending rows for the key (current and history):\n    {}\n",
        if skip > 0 {
            format!(", last 12 of {}", log.len())
        } else {
            String::new()
        },
        log[skip..].join("\n    "),
        if pending.is_empty() {
            "none".to_owned()
        } else {
            pending.join("\n    ")
        }
    ))
}

/// Writes random transactions to node `me` through an ordinary client until the run
/// stops: inserts, updates of one or both columns, deletes, re-inserts, primary-key
/// changes, up to five rows a transaction, in its own range (planned against an exact
/// model of it, since only this writer writes there) and in the shared range. A
/// transaction is recorded only once its COMMIT succeeded.
fn writer(run: &Run, me: usize, mut rng: Rng) {
    let _guard = StopOnExit(&run.control);
    let kind = KINDS[me];
    let mut sql = run.stores[me]
        .writer()
        .unwrap_or_else(|e| panic!("{}: connecting the writer: {e}", label(me)));
    let mut planner = Planner::for_writer(me);
    let mut generation = 0;
    while !run.control.stopped() {
        let up = run.servers_up[me].read().unwrap_or_else(|p| p.into_inner());
        if *up != generation {
            // The server restarted since the last transaction: its connection is gone.
            sql = match run.stores[me].writer() {
                Ok(sql) => sql,
                Err(e) => {
                    run.control.fail(format!(
                        "{}: reconnecting after a server restart: {e}",
                        label(me)
                    ));
                    return;
                }
            };
            generation = *up;
        }
        let plan = planner.plan(&mut rng, |key, row| upsert_sql(kind, key, row));
        let (tag, steps) = (plan.tag, plan.steps);
        if steps.is_empty() {
            continue;
        }
        // Now and then the application thinks between statements and before COMMIT,
        // holding its transaction open a few milliseconds: the window in which a
        // node's apply session waits for it, and a commit can land during that wait.
        let think = (rng.chance(30)).then(|| Duration::from_millis(rng.range(1, 8)));
        match run_transaction(run, me, &mut sql, steps, think) {
            Ok(Outcome::Done(effects, writes)) => {
                {
                    let mut history = run.histories.writer(me);
                    // Not retried: an error here leaves it unknown whether it committed.
                    if let Err(e) = sql.commit() {
                        panic!("{}: COMMIT failed: {}", label(me), e.message());
                    }
                    history.push(Txn { tag, effects });
                }
                planner.committed(plan.planned);
                run.row_writes.fetch_add(writes, Ordering::Relaxed);
            }
            Ok(Outcome::Stopped) => sql.rollback(),
            Ok(Outcome::Refused(reason)) => {
                sql.rollback();
                run.retries[me].fetch_add(1, Ordering::Relaxed);
                let reason: String = reason.chars().take(70).collect();
                *lock(&run.retry_reasons)
                    .entry(format!("{}: {reason}", KINDS[me].name()))
                    .or_default() += 1;
            }
            Err(e) => {
                run.control.fail(e);
                return;
            }
        }
        drop(up);
        std::thread::sleep(Duration::from_millis(rng.range(2, 20)));
    }
}

/// How a transaction the writer ran ended, short of its COMMIT.
enum Outcome {
    /// Every statement ran: the effects to record once it commits, and their count.
    Done(Vec<Effect>, u64),
    /// The database refused it for now (busy, deadlock, lock wait timeout): it is rolled
    /// back and nothing of it is recorded.
    Refused(String),
    /// The run stopped in the middle: rolled back, nothing recorded.
    Stopped,
}

/// Begins a transaction and runs `steps`, pausing `think` after each if set, leaving it
/// open for the caller to commit or roll back.
fn run_transaction(
    run: &Run,
    me: usize,
    sql: &mut Client,
    steps: Vec<Step>,
    think: Option<Duration>,
) -> Result<Outcome, String> {
    match sql.begin() {
        Ok(()) => {}
        Err(SqlError::Retry(e)) => return Ok(Outcome::Refused(e)),
        Err(SqlError::Fatal(e)) => return Err(format!("{}: BEGIN failed: {e}", label(me))),
    }
    let mut effects = Vec::new();
    for step in steps {
        if run.control.stopped() {
            // Nothing of it is recorded; roll it back like a refused one.
            return Ok(Outcome::Stopped);
        }
        let affected = match sql.execute(&step.sql) {
            Ok(n) => n,
            Err(SqlError::Retry(e)) => return Ok(Outcome::Refused(e)),
            Err(SqlError::Fatal(e)) => return Err(format!("{}: {}: {e}", label(me), step.sql)),
        };
        if !step.affects.accepts(affected, KINDS[me] == Kind::Mariadb) {
            return Err(format!(
                "{}: `{}` affected {affected} rows, expected {:?}: the own range changed under \
                 its only writer (something else wrote it)",
                label(me),
                step.sql,
                step.affects
            ));
        }
        if affected > 0 {
            effects.extend(step.effects);
        }
        if let Some(think) = think {
            std::thread::sleep(think);
        }
    }
    let writes = effects.len() as u64;
    Ok(Outcome::Done(effects, writes))
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
    BlackHole {
        link: usize,
    },
    /// `node` alone on one side of the cut.
    Partition {
        node: usize,
    },
    Kill {
        node: usize,
    },
    /// Crash and restart the database server of `node` (PostgreSQL or MariaDB).
    CrashServer {
        node: usize,
    },
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
    /// SIGKILL + restart per node: sqlite, postgres, mariadb.
    kills_per_node: [u32; NODES],
    /// Crashes and restarts of each node's database server (none for SQLite).
    server_crashes: [u32; NODES],
}

fn kill_and_restart(
    run: &Run,
    nodes: &[Mutex<ServeProcess>],
    node: usize,
    down: Duration,
    injected: &mut Injected,
) {
    episodes::kill_and_restart(&run.control, &nodes[node], down).unwrap();
    injected.kills += 1;
    injected.kills_per_node[node] += 1;
}

/// Runs rounds of faults: one in short mode, as many as fit in long mode.
fn faults(
    run: &Run,
    mut rng: Rng,
    links: &[Link],
    nodes: &[Mutex<ServeProcess>],
    injected: &mut Injected,
) {
    let _guard = StopOnExit(&run.control);
    let rounds = Rounds::new(minutes());
    loop {
        fault_round(run, &mut rng, links, nodes, injected);
        injected.rounds += 1;
        if !rounds.another(&run.control) {
            return;
        }
        println!(
            "round {} done; faults so far: {injected:?}",
            injected.rounds
        );
    }
}

/// One round: three dropped connections, a delay, a black hole, a partition isolating
/// one node followed by a crash of that node while it catches up, and a crash of each
/// node, in a shuffled order at seeded moments.
fn fault_round(
    run: &Run,
    rng: &mut Rng,
    links: &[Link],
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
    for node in 0..NODES {
        schedule.push(Fault::Kill { node });
    }
    if run.private.is_some() {
        for (node, kind) in KINDS.iter().enumerate() {
            if *kind != Kind::Sqlite {
                schedule.push(Fault::CrashServer { node });
            }
        }
    }
    rng.shuffle(&mut schedule);
    println!("fault schedule: {schedule:?}");
    episodes::run_schedule(&run.control, rng, schedule, |fault, rng| {
        match fault {
            Fault::DropConnections { link } => {
                episodes::drop_connections(&links[link]);
                injected.drops += 1;
            }
            Fault::Delay { link } => {
                episodes::delay(&run.control, rng, &links[link]);
                injected.delays += 1;
            }
            Fault::BlackHole { link } => {
                episodes::black_hole(&run.control, rng, &links[link], STALL_TIMEOUT_S);
                injected.black_holes += 1;
            }
            Fault::Partition { node } => {
                let cut = topology::partition_groups(links, &[node]);
                println!("partition: {} cut off from the others", label(node));
                nap(&run.control, ms(rng, 2000, 4000));
                // The harness checks itself: a partition that let changes through
                // would make the rest of this test prove less than it claims.
                if !run.control.stopped() {
                    let away: Vec<usize> = (0..NODES).filter(|&o| o != node).collect();
                    let behind = run
                        .read(node)
                        .and_then(|table| run.histories.lags_behind(&table, &away))
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert!(
                        behind,
                        "{} was cut off from {away:?} for seconds but holds their latest transactions",
                        label(node)
                    );
                }
                topology::heal(links, &cut);
                injected.partitions += 1;
                // Crash it while it catches up on what it missed: the moment a crash is
                // most likely to land inside an apply transaction.
                nap(&run.control, ms(rng, 20, 300));
                kill_and_restart(run, nodes, node, ms(rng, 100, 800), injected);
                injected.kills_while_catching_up += 1;
            }
            Fault::Kill { node } => {
                kill_and_restart(run, nodes, node, ms(rng, 200, 2000), injected);
            }
            Fault::CrashServer { node } => {
                let Some(private) = run.private else { return };
                let down = ms(rng, 300, 2000);
                // Waits for the writer's open transaction to commit or roll back.
                let mut up = run.servers_up[node]
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                println!(
                    "crashing the database server of {} for {down:?}",
                    label(node)
                );
                let restarted = match KINDS[node] {
                    Kind::Postgres => private.postgres.crash_and_restart(down),
                    Kind::Mariadb => private.mariadb.crash_and_restart(down),
                    Kind::Sqlite => Ok(()),
                };
                if let Err(e) = restarted {
                    run.control
                        .fail(format!("restarting the server of {}: {e}", label(node)));
                    return;
                }
                *up += 1;
                injected.server_crashes[node] += 1;
            }
        }
    });
}

/// What the nodes look like after the run.
struct Observed {
    tables: Vec<Result<Table, String>>,
    holds: Vec<Result<BTreeMap<String, u64>, String>>,
    pending: Vec<Result<i64, String>>,
    /// Changes set aside (`failures` in status).
    set_aside: Vec<Option<u64>>,
    conflicts: Vec<Option<u64>>,
    peers: Vec<String>,
}

impl Observed {
    fn take(dirs: &[NodeDir]) -> Self {
        let statuses = status::all(dirs.iter().map(|d| d.http));
        let field = |name: &str| -> Vec<Option<u64>> {
            statuses
                .iter()
                .map(|s| s.as_ref().ok().and_then(|s| s[name].as_u64()))
                .collect()
        };
        Self {
            tables: dirs.iter().map(|d| d.store.snapshot()).collect(),
            holds: status::holds_of(&statuses),
            pending: dirs.iter().map(|d| d.store.pending()).collect(),
            set_aside: field("failures"),
            conflicts: field("conflicts"),
            peers: status::peers_of(&statuses),
        }
    }

    fn converged(&self) -> bool {
        run::converged(&self.tables, &self.holds, &self.pending)
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for i in 0..NODES {
            out += &format!(
                "{}: {} rows, holds {:?}, pending {:?}, set aside {:?}, peers [{}]\n",
                label(i),
                self.tables[i].as_ref().map_or(0, Table::len),
                self.holds[i],
                self.pending[i],
                self.set_aside[i],
                self.peers[i]
            );
        }
        match &self.tables[0] {
            Ok(first) => {
                for i in 1..NODES {
                    match &self.tables[i] {
                        Ok(t) if t == first => {
                            out += &format!("{}'s table equals n0's\n", label(i))
                        }
                        Ok(t) => {
                            out += &format!(
                                "{}'s table differs from n0's (expected = n0, found = n{i}):\n  {}\n",
                                label(i),
                                model::differences(first, t, 12).join("\n  ")
                            )
                        }
                        Err(e) => out += &format!("{}'s table could not be read: {e}\n", label(i)),
                    }
                }
            }
            Err(e) => out += &format!("n0's table could not be read: {e}\n"),
        }
        out
    }
}

#[cfg(unix)]
concord_harness::server_tests! {
    fn mixed_store_mesh_keeps_every_committed_write_under_faults_and_crashes(
        pg_admin: postgres,
        my_admin: mysql,
    ) {
        let seed = seed();
        mode::print_seed(TEST, seed);
        let started = Instant::now();
        let mut rng = Rng::new(seed);

        // Servers of its own when this machine can run them, so the run can crash and
        // restart them; the servers the test was given otherwise, without that fault.
        let private = match PrivateServers::start() {
            Ok(private) => {
                println!(
                    "database servers: private, restarted by the faults ({} and {})",
                    private.postgres.admin_url(),
                    private.mariadb.admin_url()
                );
                Some(private)
            }
            Err(e) => {
                println!(
                    "{TEST}: the database-server crash fault is skipped (it needs private servers: {e}); using the given servers"
                );
                None
            }
        };
        let (pg_admin, my_admin) = match &private {
            Some(p) => (p.postgres.admin_url(), p.mariadb.admin_url()),
            None => (pg_admin.to_owned(), my_admin.to_owned()),
        };
        let (pg_admin, my_admin) = (pg_admin.as_str(), my_admin.as_str());
        // Declared after the servers and before the rest, so it is dropped after the node
        // processes and the writers' connections (which would otherwise hold the
        // databases open) and before the servers.
        let dbs = ServerDatabases::create(pg_admin, my_admin);
        println!(
            "databases: {} on {} and on {}",
            dbs.name,
            servers::with_database(pg_admin, ""),
            servers::with_database(my_admin, "")
        );
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<NodeDir> = (0..NODES)
            .map(|i| init_node(root.path(), i, &dbs))
            .collect();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // A mesh: every pair linked, the lower-numbered node dials through a proxy.
        let pairs: Vec<(usize, usize)> = (0..NODES)
            .flat_map(|a| (a + 1..NODES).map(move |b| (a, b)))
            .collect();
        let links = node::link(&runtime, &dirs, &pairs).unwrap();
        let binary = Path::new(env!("CARGO_BIN_EXE_concord"));
        let nodes = node::start(binary, &dirs, |_| Vec::new()).unwrap();
        // On failure: what the nodes set aside and warned about, then the end of each log.
        let logs = |nodes: &[Mutex<ServeProcess>]| {
            let tails = process::all_logs(nodes, 6000);
            format!("{}{tails}", diagnosis(&dirs))
        };

        // Every node sees both peers connected before the workload starts.
        let https: Vec<_> = dirs.iter().map(|d| d.http).collect();
        let connected_in =
            status::wait_all_connected(&https, |_| NODES - 1, TIMEOUT, Duration::from_millis(200))
                .unwrap_or_else(|states| {
                    panic!(
                        "the mesh did not connect within {TIMEOUT:?}: {states:?}\n{}",
                        logs(&nodes)
                    )
                });
        // Each store's node id: the origin its writer's changes carry.
        let writer_of: HashMap<NodeId, usize> = dirs
            .iter()
            .enumerate()
            .map(|(w, d)| (status::node_id(d.http).unwrap(), w))
            .collect();

        let run = Run {
            control: Control::new(),
            histories: Histories::new(workload::layout(NODES)),
            stores: dirs.iter().map(|d| d.store.clone()).collect(),
            row_writes: AtomicU64::new(0),
            retries: (0..NODES).map(|_| AtomicU64::new(0)).collect(),
            retry_reasons: Mutex::new(BTreeMap::new()),
            writer_of,
            servers_up: (0..NODES).map(|_| RwLock::new(0)).collect(),
            private: private.as_ref(),
        };
        let mut injected = Injected::default();
        let workload = run::workload(
            &run.control,
            &mut rng,
            NODES,
            |me, writer_rng| writer(&run, me, writer_rng),
            NODES,
            |node, progress| {
                let table = run.read(node)?;
                run.histories
                    .check_snapshot(node, &label(node), &table, progress)
                    .map_err(|e| format!("{e}\n{}", run.explain(&keys_named(&e))))
            },
            |faults_rng| faults(&run, faults_rng, &links, &nodes, &mut injected),
        );
        run::end(&run.control, &nodes, &links, label)
            .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}\n{}", logs(&nodes)));

        // Convergence: same rows, same version vectors, nothing left to capture.
        let (observed, converged_in) = status::poll(
            CONVERGE_WITHIN,
            Duration::from_millis(250),
            || Observed::take(&dirs),
            Observed::converged,
        )
        .unwrap_or_else(|observed| {
            panic!(
                "seed {seed:#x}: the databases did not converge within {CONVERGE_WITHIN:?} of the network healing:\n{}\n{}{}",
                observed.describe(),
                run.explain(&keys_named(&observed.describe())),
                logs(&nodes)
            )
        });

        // No node panicked, even in a run it recovered from.
        let panics = panics_in_logs(&dirs);
        assert!(
            panics.is_empty(),
            "seed {seed:#x}: a node panicked:\n{}",
            panics.join("\n")
        );
        // Nothing set aside: every value fits every store's column.
        assert!(
            observed.set_aside.iter().all(|f| *f == Some(0)),
            "seed {seed:#x}: changes were set aside (failures per node: {:?}):\n{}\n{}",
            observed.set_aside,
            observed.describe(),
            logs(&nodes)
        );

        // Nothing lost, nothing partial, nothing duplicated, nothing invented.
        let table = observed.tables[0].as_ref().unwrap();
        let problems = run.histories.check_final(table);
        assert!(
            problems.is_empty(),
            "seed {seed:#x}: the converged state is wrong:\n{}\n{}{}",
            problems.join("\n"),
            run.explain(&keys_named(&problems.join("\n"))),
            logs(&nodes)
        );
        // Every change is in every store's log exactly once: per origin the entries are
        // 1..=max without holes or duplicates, and max is what the node holds.
        for (i, d) in dirs.iter().enumerate() {
            let counts = d.store.log_counts().unwrap();
            let held = observed.holds[i].as_ref().unwrap();
            changelog::check_log_counts(&label(i), counts, held, RETENTION_CHANGES)
                .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
        }

        // The exact check of the shared rows, on the SQLite node's log (it holds every
        // origin's changes, now that the version vectors agree).
        let writer_of = &run.writer_of;
        let Store::Sqlite(sqlite_db) = &dirs[0].store else {
            unreachable!("node 0 is the SQLite node")
        };
        let log = changelog::read_log(sqlite_db).unwrap();
        let logged = changelog::shared_changes(&log, writer_of, &SHARED).unwrap();
        let problems = run.histories.check_last_writer(&logged, table);
        assert!(
            problems.is_empty(),
            "seed {seed:#x}: the shared rows are not the last writers':\n{}\n{}",
            problems.join("\n"),
            logs(&nodes)
        );

        let txns: Vec<usize> = run.histories.transactions();
        let total_txns: usize = txns.iter().sum();
        let retries: Vec<u64> = run
            .retries
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect();
        let counts = node::link_counts(&links, &dirs);
        println!(
            "{TEST} seed {seed:#x}: PASSED. {total_txns} committed transactions checked (per writer sqlite/postgres/mariadb: {txns:?}; \
             {} row writes; rolled back and retried: {retries:?}); {} snapshots checked during the run; \
             faults: {injected:?}; node starts: {:?}; last-writer check: {} logged changes to {} shared rows; \
             conflicts recorded: {:?}; mesh connected in {connected_in:.1?}, workload {workload:.1?}, \
             converged {converged_in:.1?} after healing, total {:.1?}; {} rows at the end\nproxies: {counts:?}",
            run.row_writes.load(Ordering::Relaxed),
            run.histories.snapshots_checked(),
            process::starts(&nodes),
            logged.len(),
            table.range(SHARED).count(),
            observed.conflicts,
            started.elapsed(),
            table.len(),
        );
        println!(
            "writers' transactions rolled back by their database: {:?}",
            lock(&run.retry_reasons)
        );
        println!("node logs:\n  {}", log_warnings(&dirs).join("\n  "));
        let rounds = injected.rounds;
        assert!(
            rounds >= 1
                && injected.drops == 3 * rounds
                && injected.partitions == rounds
                && injected.kills_per_node.iter().all(|k| *k >= rounds)
                && (private.is_none()
                    || (0..NODES).all(|i| {
                        KINDS[i] == Kind::Sqlite || injected.server_crashes[i] >= rounds
                    })),
            "not every fault was injected: {injected:?}"
        );
        assert!(
            txns.iter().all(|t| *t > 20),
            "too little workload to mean anything: {txns:?} transactions per writer"
        );
    }
}

#[cfg(not(unix))]
fn main() {}
