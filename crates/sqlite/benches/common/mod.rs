//! Helpers shared by the SQLite store benchmarks: the benchmark table, an app-like
//! writer (plain rusqlite connection, prepared statements, one transaction), and
//! database templates copied into a fresh file for every timed iteration.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_sqlite::{SqliteStore, StoreOptions};
use rusqlite::{Connection, params};

/// Rows written per timed operation (the figure of issue #2).
pub const ROWS: i64 = 100_000;

/// The 5-column benchmark table.
pub const TABLE_DDL: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d TEXT)";

/// Opens a connection the way an application would. WAL is what `track` sets on the
/// file, so untracked files get it too, for a fair comparison. `synchronous` is left
/// at SQLite's default on every side.
pub fn app_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .expect("wal");
    conn
}

/// Creates `path` with the benchmark table, in WAL mode.
pub fn create_table(path: &Path) {
    let conn = app_connection(path);
    conn.execute_batch(TABLE_DDL).expect("create table");
}

/// Creates `path` with the benchmark table and tracks it.
pub fn create_tracked(path: &Path) {
    create_table(path);
    drop(SqliteStore::track(path, &["t"], StoreOptions::default()).expect("track"));
}

/// Inserts rows `1..=rows` in one transaction with a prepared statement.
pub fn insert_rows(conn: &mut Connection, rows: i64) {
    let tx = conn.transaction().expect("begin");
    {
        let mut stmt = tx
            .prepare("INSERT INTO t(id, a, b, c, d) VALUES (?1, ?2, ?3, ?4, ?5)")
            .expect("prepare");
        for i in 1..=rows {
            stmt.execute(params![
                i,
                format!("name {i:08}"),
                i * 7,
                i as f64 * 0.25,
                format!("a somewhat longer text payload for row {i}")
            ])
            .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

/// Updates every non-key column of rows `1..=rows` in one transaction.
pub fn update_rows(conn: &mut Connection, rows: i64) {
    let tx = conn.transaction().expect("begin");
    {
        let mut stmt = tx
            .prepare("UPDATE t SET a = ?1, b = ?2, c = ?3, d = ?4 WHERE id = ?5")
            .expect("prepare");
        for i in 1..=rows {
            stmt.execute(params![
                format!("renamed {i:08}"),
                i * 7 + 1,
                i as f64 * 0.25 + 1.0,
                format!("an updated text payload for row number {i}"),
                i
            ])
            .expect("update");
        }
    }
    tx.commit().expect("commit");
}

/// A directory of template databases and fresh per-iteration copies.
pub struct Workdir {
    dir: tempfile::TempDir,
    counter: std::cell::Cell<u64>,
}

impl Workdir {
    pub fn new() -> Self {
        // Under target/ rather than /tmp, so the files live on the same disk as the
        // build (and never on a RAM-backed /tmp that would hide I/O costs).
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).expect("tmpdir");
        Self {
            dir: tempfile::tempdir_in(base).expect("tempdir"),
            counter: std::cell::Cell::new(0),
        }
    }

    /// A path for a template.
    pub fn template(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// A fresh copy of `template` (every connection to the template must be closed, so
    /// that it has no WAL left).
    pub fn fresh_copy(&self, template: &Path) -> PathBuf {
        let n = self.counter.get();
        self.counter.set(n + 1);
        let path = self.dir.path().join(format!("run-{n}.db"));
        let wal = wal_of(template);
        assert!(
            !wal.exists() || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
            "template {} still has a WAL",
            template.display()
        );
        std::fs::copy(template, &path).expect("copy template");
        path
    }

    /// Removes a database copy and its WAL files.
    pub fn remove(&self, path: &Path) {
        for p in [path.to_path_buf(), wal_of(path), shm_of(path)] {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn wal_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

fn shm_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-shm", path.display()))
}

/// Runs `iters` iterations of: `setup` (untimed) on a fresh copy of `template`, then
/// `timed` (timed), then cleanup (untimed). Returns the summed time of `timed`.
pub fn timed_on_copies<S>(
    work: &Workdir,
    template: &Path,
    iters: u64,
    mut setup: impl FnMut(&Path) -> S,
    mut timed: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let path = work.fresh_copy(template);
        let mut state = setup(&path);
        let start = Instant::now();
        timed(&mut state);
        total += start.elapsed();
        drop(state);
        work.remove(&path);
    }
    total
}

/// Whether to run the interleaved pair measurements: not when criterion only lists,
/// tests or profiles the benchmarks.
pub fn pairs_wanted() -> bool {
    !std::env::args().any(|a| matches!(a.as_str(), "--list" | "--test" | "--profile-time"))
}

/// A named measurement for [`interleaved`]: runs once, returns its timed duration.
pub type Variant<'a> = (&'a str, Box<dyn FnMut() -> Duration + 'a>);

/// Runs every variant once per round, `rounds` times, rotating which goes first, and
/// prints each variant's median time and its median per-round ratio to the first
/// variant. Criterion runs one benchmark after another, so a load change on a shared
/// machine between two of them skews their ratio; variants measured within the same
/// few seconds are immune to slow drift.
pub fn interleaved(label: &str, rounds: usize, variants: &mut [Variant<'_>]) {
    let n = variants.len();
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let v = (round + k) % n;
            times[v].push((variants[v].1)().as_secs_f64());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "interleaved {label} ({rounds} rounds; ratio = per-round time / {}):",
        variants[0].0
    );
    for (k, (name, _)) in variants.iter().enumerate() {
        let (t, _, _) = median(times[k].clone());
        let ratios = times[k]
            .iter()
            .zip(&times[0])
            .map(|(x, base)| x / base)
            .collect();
        let (r, lo, hi) = median(ratios);
        println!(
            "    {name:<28} median {:>8.1} ms   ratio median {r:>5.2} (min {lo:.2}, max {hi:.2})",
            t * 1e3
        );
    }
}
