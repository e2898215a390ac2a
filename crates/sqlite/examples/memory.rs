//! Peak memory of the SQLite store as the number of changes grows (issue #2, figure 3).
//!
//! For each N given (default: 100000 1000000) it builds a tracked source file, writes N
//! inserts through a plain rusqlite connection, captures them, pulls them into a fresh
//! tracked destination, then does the same with N updates of every non-key column.
//! Around each Concord phase it resets the kernel's peak-RSS counter (writing `5` to
//! `/proc/self/clear_refs`) and reads `VmHWM` / `VmRSS` from `/proc/self/status`, so
//! each phase's peak is reported on its own.
//!
//! ```text
//! cargo run --release -p concord-sqlite --example memory -- [--group ROWS] [N ...]
//! ```
//!
//! `--group ROWS` writes and captures the source in transactions of ROWS rows (so apply
//! can commit every `apply_batch_changes`); by default each N is one source transaction,
//! the worst case: apply then has to hold all N changes in one local transaction.
//!
//! It doubles as a profiling driver:
//! `valgrind --tool=callgrind target/release/examples/memory 20000`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use concord_sqlite::{SqliteStore, StoreOptions, pull};
use rusqlite::{Connection, params};

type Res<T> = Result<T, Box<dyn Error>>;

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

/// Resets VmHWM to the current RSS (Linux >= 4.0). Returns whether it worked.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs `f` as one measured phase and prints its time and memory.
fn phase<T>(n: u64, name: &str, f: impl FnOnce() -> Res<T>) -> Res<T> {
    let reset = reset_peak();
    let (_, before) = memory_kib();
    let start = Instant::now();
    let out = f()?;
    let secs = start.elapsed().as_secs_f64();
    let (peak, after) = memory_kib();
    println!(
        "{n:>9} {name:<16} {secs:>8.2} s {:>9.0}/s  rss before {:>7.1} MiB  peak {:>7.1} MiB  (+{:>6.1})  after {:>7.1} MiB{}",
        n as f64 / secs,
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        mib(after),
        if reset { "" } else { "  [peak not reset]" }
    );
    Ok(out)
}

fn open_app(path: &Path) -> Res<Connection> {
    let conn = Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    Ok(conn)
}

fn create(path: &Path) -> Res<SqliteStore> {
    open_app(path)?.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d TEXT)",
    )?;
    Ok(SqliteStore::track(path, &["t"], StoreOptions::default())?)
}

/// Writes rows `from..=to` in one transaction: inserts, or updates of every non-key
/// column.
fn write_rows(conn: &mut Connection, from: u64, to: u64, update: bool) -> Res<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(if update {
            "UPDATE t SET a = ?2, b = ?3, c = ?4, d = ?5 WHERE id = ?1"
        } else {
            "INSERT INTO t(id, a, b, c, d) VALUES (?1, ?2, ?3, ?4, ?5)"
        })?;
        let tag = if update { "renamed" } else { "name" };
        for k in from as i64..=to as i64 {
            stmt.execute(params![
                k,
                format!("{tag} {k:08}"),
                k * 7 + i64::from(update),
                k as f64 * 0.25,
                format!("a {tag} text payload for row {k}")
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Writes rows `1..=n` in transactions of `group` rows, capturing after each one.
fn write_and_capture(
    conn: &mut Connection,
    store: &mut SqliteStore,
    n: u64,
    group: u64,
    update: bool,
) -> Res<u64> {
    let mut captured = 0;
    let mut from = 1;
    while from <= n {
        let to = (from + group - 1).min(n);
        write_rows(conn, from, to, update)?;
        captured += store.capture()?;
        from = to + 1;
    }
    Ok(captured)
}

fn run(dir: &Path, n: u64, group: u64) -> Res<()> {
    let src_path = dir.join(format!("src-{n}.db"));
    let dst_path = dir.join(format!("dst-{n}.db"));
    let mut src = create(&src_path)?;
    let mut dst = create(&dst_path)?;
    let mut app = open_app(&src_path)?;

    // Writing and capturing are separate phases only when the source is one
    // transaction; with groups they interleave.
    if group >= n {
        phase(n, "app inserts", || write_rows(&mut app, 1, n, false))?;
        let c = phase(n, "capture inserts", || Ok(src.capture()?))?;
        assert_eq!(c, n);
    } else {
        let c = phase(n, "write+capture ins", || {
            write_and_capture(&mut app, &mut src, n, group, false)
        })?;
        assert_eq!(c, n);
    }
    let r = phase(n, "apply inserts", || Ok(pull(&mut src, &mut dst)?))?;
    assert_eq!(r.applied, n);

    if group >= n {
        phase(n, "app updates", || write_rows(&mut app, 1, n, true))?;
        let c = phase(n, "capture updates", || Ok(src.capture()?))?;
        assert_eq!(c, n);
    } else {
        let c = phase(n, "write+capture upd", || {
            write_and_capture(&mut app, &mut src, n, group, true)
        })?;
        assert_eq!(c, n);
    }
    let r = phase(n, "apply updates", || Ok(pull(&mut src, &mut dst)?))?;
    assert_eq!(r.applied, n);

    let same: i64 =
        dst.connection()
            .query_row("SELECT count(*) FROM t WHERE a LIKE 'renamed %'", [], |r| {
                r.get(0)
            })?;
    assert_eq!(same as u64, n, "destination did not converge");
    drop((src, dst, app));
    for p in [&src_path, &dst_path] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let mut group: Option<u64> = None;
    let mut sizes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--group" {
            group = Some(args.next().ok_or("--group needs a value")?.parse()?);
        } else {
            sizes.push(arg.parse::<u64>()?);
        }
    }
    if sizes.is_empty() {
        sizes = vec![100_000, 1_000_000];
    }
    let dir = tempfile::tempdir()?;
    println!(
        "{:>9} {:<16} {:>10} {:>11}  (VmRSS before the phase, VmHWM during it; dir {})",
        "N",
        "phase",
        "time",
        "rate",
        dir.path().display()
    );
    for n in sizes {
        run(dir.path(), n, group.unwrap_or(n).max(1))?;
    }
    let (peak, _) = memory_kib();
    println!(
        "process VmHWM at exit (since the last reset): {:.1} MiB",
        mib(peak)
    );
    Ok(())
}
