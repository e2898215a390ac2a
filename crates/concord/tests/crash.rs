//! Crash test: the real `concord merge` process is killed with SIGKILL while it applies
//! a long stream of source transactions, and the destination file is inspected cold.
//!
//! Risks covered:
//! * a source transaction applied in part (some rows of a generation updated, others
//!   not) because a local commit fell inside a source transaction;
//! * the version vector advancing apart from the data (progress committed without the
//!   rows, or rows without the progress), which after a restart means lost or
//!   duplicated changes;
//! * the "applying" marker that silences the capture triggers surviving a crash, which
//!   would make every later local write invisible to Concord;
//! * applied writes echoed into the destination's pending table;
//! * a restarted merge that does not finish the job exactly: rows lost, log entries
//!   duplicated, or work left over for a further merge.
//!
//! Source file A gets `ROWS` rows and then `GENERATIONS` transactions that each rewrite
//! every row, each captured separately so it is its own transaction group in A's log.
//! B is tracked with the same table and starts empty. Every consistent state of B is
//! therefore "empty" or "all rows at one generation", with B's held sequence for A equal
//! to the number of A's log entries it applied.
//!
//! Delays are random (stratified over the measured merge duration). The seed is printed;
//! set `CONCORD_CRASH_SEED` to replay one.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use concord_core::NodeId;
use concord_sqlite::{SqliteStore, StoreOptions};
use rusqlite::{Connection, OptionalExtension};

/// Rows of the table. Equal to the default `apply_batch_changes`, so the destination
/// commits after every source transaction and has many distinct states to be caught in.
const ROWS: i64 = 10_000;
/// Source transactions after the initial insert, each rewriting every row. With `ROWS`
/// that is 90,000 changes: about 2.5 s per merge in a debug build, so the whole test
/// (fixture, one measured merge, five destinations) stays near 20 s.
const GENERATIONS: i64 = 8;
/// Fresh destinations, each killed twice before being merged to completion.
const ITERATIONS: u32 = 5;
/// SIGKILL's number on every Unix (`Child::kill` sends it).
const SIGKILL: i32 = 9;

const SCHEMA: &str =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, gen INTEGER NOT NULL, payload TEXT NOT NULL)";

/// Changes A holds: the insert group plus one group per generation.
fn total_changes() -> u64 {
    (ROWS * (GENERATIONS + 1)) as u64
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_concord")
}

/// A small deterministic generator (splitmix64), so no dependency is needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    match std::env::var("CONCORD_CRASH_SEED") {
        Ok(s) => s.parse().expect("CONCORD_CRASH_SEED must be a u64"),
        Err(_) => RandomState::new().build_hasher().finish(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    a_template: PathBuf,
    b_template: PathBuf,
    a_node: NodeId,
    a_rows: Vec<(i64, i64, String)>,
}

/// Builds A (all generations captured) and an empty tracked B, once; every iteration
/// works on copies.
fn build_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let a = root.join("a-template.db");
    let b = root.join("b-template.db");
    for path in [&a, &b] {
        Connection::open(path)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();
    }
    let mut store_a = SqliteStore::track(&a, &["items"], StoreOptions::default()).unwrap();
    drop(SqliteStore::track(&b, &["items"], StoreOptions::default()).unwrap());
    let app = Connection::open(&a).unwrap();
    app.execute(
        "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < ?1)
         INSERT INTO items SELECT x, 0, printf('row %d gen 0', x) FROM s",
        [ROWS],
    )
    .unwrap();
    store_a.capture().unwrap();
    for generation in 1..=GENERATIONS {
        app.execute(
            "UPDATE items SET gen = ?1, payload = printf('row %d gen %d', id, ?1)",
            [generation],
        )
        .unwrap();
        // One capture per source transaction: one transaction group per generation.
        assert_eq!(store_a.capture().unwrap(), ROWS as u64);
    }
    assert_eq!(store_a.log_len().unwrap(), total_changes());
    let a_node = store_a.node_id();
    assert_eq!(store_a.version_vector().get(&a_node), total_changes());
    let a_rows = dump(&app);
    drop(store_a);
    // Fold the WAL into the main file so copying the main file copies everything.
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(app);
    Connection::open(&b)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    Fixture {
        _dir: dir,
        root,
        a_template: a,
        b_template: b,
        a_node,
        a_rows,
    }
}

impl Fixture {
    /// Fresh copies of A and B in their own folder.
    fn copies(&self, name: &str) -> (PathBuf, PathBuf) {
        let folder = self.root.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let a = folder.join("a.db");
        let b = folder.join("b.db");
        std::fs::copy(&self.a_template, &a).unwrap();
        std::fs::copy(&self.b_template, &b).unwrap();
        (a, b)
    }
}

fn dump(conn: &Connection) -> Vec<(i64, i64, String)> {
    conn.prepare("SELECT id, gen, payload FROM items ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn spawn_merge(b: &Path, a: &Path) -> Child {
    Command::new(binary())
        .arg("merge")
        .arg(b)
        .arg(a)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the child announced `merging`, i.e. the stores are open and work starts.
fn wait_for_merging(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("merging"),
        "concord merge did not start: first line {line:?}"
    );
    out
}

/// Runs one merge, killing it `delay` after it started working. Returns its exit status.
fn merge_and_kill_after(b: &Path, a: &Path, delay: Duration) -> ExitStatus {
    let mut child = spawn_merge(b, a);
    let _out = wait_for_merging(&mut child);
    std::thread::sleep(delay);
    // SIGKILL on Unix; succeeds on a finished, unreaped child too.
    child.kill().unwrap();
    child.wait().unwrap()
}

/// Runs one merge to its end and returns its stdout.
fn merge_to_completion(b: &Path, a: &Path, json: bool) -> String {
    let mut cmd = Command::new(binary());
    cmd.arg("merge").arg(b).arg(a);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "merge failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What a destination holds after a crash, checked against every invariant a crash must
/// not break. Returns the held sequence of A's origin.
fn check_consistent(b: &Path, a_node: &NodeId, context: &str) -> u64 {
    // Data, read cold through a plain connection (this also recovers the WAL).
    let plain = Connection::open(b).unwrap();
    let (count, distinct_gens, generation): (i64, i64, Option<i64>) = plain
        .query_row(
            "SELECT count(*), count(DISTINCT gen), max(gen) FROM items",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let torn_rows: i64 = plain
        .query_row(
            "SELECT count(*) FROM items WHERE payload IS NOT printf('row %d gen %d', id, gen)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        torn_rows, 0,
        "{context}: a change was applied in part (payload and gen disagree)"
    );
    assert!(
        count == 0 || (count == ROWS && distinct_gens == 1),
        "{context}: a source transaction was applied in part: {count} rows, {distinct_gens} distinct generations"
    );
    drop(plain);

    // Metadata, through the store.
    let store = SqliteStore::open(b).unwrap();
    let held = store.version_vector().get(a_node);
    let conn = store.connection();
    let index: Option<i64> = conn
        .query_row(
            "SELECT id FROM __concord_origins WHERE node_id = ?1",
            [a_node.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .optional()
        .unwrap();
    let (entries, distinct_seqs, max_seq): (i64, i64, Option<i64>) = match index {
        None => (0, 0, None),
        Some(index) => conn
            .query_row(
                "SELECT count(*), count(DISTINCT seq), max(seq) FROM __concord_log WHERE origin = ?1",
                [index],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap(),
    };
    assert_eq!(
        entries as u64, held,
        "{context}: B's log holds {entries} entries from A but its version vector says {held}"
    );
    assert_eq!(entries, distinct_seqs, "{context}: duplicated log entries");
    assert_eq!(
        max_seq.unwrap_or(0) as u64,
        held,
        "{context}: held sequence and log disagree"
    );
    assert_eq!(
        store.log_len().unwrap(),
        held,
        "{context}: B's log holds entries of another origin"
    );
    assert_eq!(
        held % ROWS as u64,
        0,
        "{context}: progress {held} is not at a source-transaction boundary"
    );
    let groups = held / ROWS as u64;
    if groups == 0 {
        assert_eq!(count, 0, "{context}: rows present without progress");
    } else {
        assert_eq!(count, ROWS, "{context}: progress {held} without its rows");
        assert_eq!(
            generation,
            Some(groups as i64 - 1),
            "{context}: data is at a different generation than the version vector says"
        );
    }
    let clocks: i64 = conn
        .query_row("SELECT count(*) FROM __concord_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        clocks, count,
        "{context}: row metadata does not match the rows"
    );
    let applying: i64 = conn
        .query_row("SELECT count(*) FROM __concord_applying", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        applying, 0,
        "{context}: the apply marker survived the crash; local writes would go uncaptured"
    );
    assert_eq!(
        store.pending_len().unwrap(),
        0,
        "{context}: applied writes were captured as local writes"
    );
    held
}

/// After a completed merge B must equal A exactly, and another merge must find nothing.
fn check_complete(f: &Fixture, a: &Path, b: &Path, context: &str) {
    let held = check_consistent(b, &f.a_node, context);
    assert_eq!(held, total_changes(), "{context}: B is missing changes");
    assert!(
        dump(&Connection::open(b).unwrap()) == f.a_rows,
        "{context}: B differs from A"
    );
    assert!(
        dump(&Connection::open(a).unwrap()) == f.a_rows,
        "{context}: A was changed by the merge"
    );
    let out = merge_to_completion(b, a, true);
    let json = out
        .split_once('\n')
        .map(|(_, rest)| rest)
        .expect("a report after the `merging` line");
    let reports: serde_json::Value = serde_json::from_str(json).unwrap();
    for report in reports.as_array().unwrap() {
        assert_eq!(
            report["applied"], 0,
            "{context}: a further merge still applied changes: {report}"
        );
    }
}

#[test]
fn sigkill_during_merge_never_leaves_half_a_transaction() {
    let seed = seed();
    eprintln!("crash test seed: {seed} (set CONCORD_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let f = build_fixture();
    eprintln!("fixture built in {:?}", started.elapsed());

    // One undisturbed merge, to learn how long a merge takes on this machine.
    let (a, b) = f.copies("measure");
    let mut child = spawn_merge(&b, &a);
    let _out = wait_for_merging(&mut child);
    let t = Instant::now();
    assert!(child.wait().unwrap().success());
    let duration = t.elapsed();
    eprintln!(
        "an uninterrupted merge of {} changes takes {duration:?}",
        total_changes()
    );
    check_complete(&f, &a, &b, "uninterrupted merge");

    let mut landed_mid_merge = 0;
    for i in 0..ITERATIONS {
        let (a, b) = f.copies(&format!("iteration-{i}"));
        // Stratified: iteration i kills somewhere in the i-th slice of the duration.
        let first = duration.mul_f64((f64::from(i) + rng.unit()) / f64::from(ITERATIONS));
        // The second kill hits the restarted merge, anywhere in its first half.
        let second = duration.mul_f64(rng.unit() / 2.0);
        let mut held_before = 0;
        for (round, delay) in [first, second].into_iter().enumerate() {
            let status = merge_and_kill_after(&b, &a, delay);
            let context = format!("iteration {i}, kill {round} after {delay:?} ({status})");
            let held = check_consistent(&b, &f.a_node, &context);
            assert!(
                held >= held_before,
                "{context}: committed progress went backwards from {held_before} to {held}"
            );
            let killed = status.signal() == Some(SIGKILL);
            if killed && held < total_changes() {
                landed_mid_merge += 1;
            } else if !killed {
                assert!(status.success(), "{context}: merge failed on its own");
            }
            eprintln!(
                "{context}: killed={killed}, B holds {held}/{} changes",
                total_changes()
            );
            held_before = held;
        }
        merge_to_completion(&b, &a, false);
        check_complete(&f, &a, &b, &format!("iteration {i}, after restarting"));
    }
    assert!(
        landed_mid_merge > 0,
        "no kill landed while the merge was still working; the test proved nothing"
    );
    eprintln!(
        "{landed_mid_merge} kills landed mid-merge; whole test took {:?}",
        started.elapsed()
    );
}
