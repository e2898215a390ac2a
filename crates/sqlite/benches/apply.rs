//! Applying remote changes to a SQLite file (issue #2, figure 2).
//!
//! A tracked source file receives 100k inserts (one transaction) and then 100k updates
//! of every non-key column (one transaction), each captured into its change log. Each
//! timed iteration merges one of those 100k-change batches into a fresh copy of a
//! destination file:
//!
//! * `apply/{insert,update}_100k/pull`: `concord_sqlite::pull(&mut src, &mut dst)`,
//!   i.e. reading the source log through `changes_for` and applying it, as a sync would.
//! * `apply/{insert,update}_100k/apply_from_memory`: `dst.apply_changes(..)` over
//!   changes already decoded into memory, i.e. the destination side alone.
//! * `apply/{insert,update}_100k/raw_sqlite`: the same 100k inserts (updates) written
//!   straight into an untracked copy of the destination table with a prepared statement
//!   in one transaction, with the store's pragmas (WAL, `synchronous = NORMAL`): the
//!   floor that apply is compared with, in the same run.
//!
//! After the group, raw_sqlite and pull are timed again in 5 interleaved rounds per
//! operation and their median ratio printed (`interleaved apply/...` lines), which is
//! robust to load drifting on a shared machine between two criterion benchmarks.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use concord_sqlite::Store as _;
use std::time::Duration;

use common::{
    ROWS, Workdir, create_table, create_tracked, insert_rows, timed_on_copies, update_rows,
};
use concord_sqlite::{SqliteStore, pull};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

fn apply(c: &mut Criterion) {
    let work = Workdir::new();

    // Source after the inserts, and after the inserts and the updates.
    let src_inserts = work.template("src-inserts");
    create_tracked(&src_inserts);
    insert_rows(&mut common::app_connection(&src_inserts), ROWS);
    assert_eq!(
        SqliteStore::open(&src_inserts).unwrap().capture().unwrap(),
        ROWS as u64
    );
    let src_all = work.template("src-all");
    std::fs::copy(&src_inserts, &src_all).unwrap();
    update_rows(&mut common::app_connection(&src_all), ROWS);
    assert_eq!(
        SqliteStore::open(&src_all).unwrap().capture().unwrap(),
        ROWS as u64
    );

    // Destination before anything, and holding the inserts.
    let dst_empty = work.template("dst-empty");
    create_tracked(&dst_empty);
    let dst_inserted = work.template("dst-inserted");
    std::fs::copy(&dst_empty, &dst_inserted).unwrap();
    {
        let mut src = SqliteStore::open(&src_inserts).unwrap();
        let mut dst = SqliteStore::open(&dst_inserted).unwrap();
        assert_eq!(pull(&mut src, &mut dst).unwrap().applied, ROWS as u64);
    }

    // Untracked destination table, empty and full, for the raw-write floor.
    let raw_empty = work.template("raw-empty");
    create_table(&raw_empty);
    let raw_full = work.template("raw-full");
    std::fs::copy(&raw_empty, &raw_full).unwrap();
    insert_rows(&mut common::app_connection(&raw_full), ROWS);

    // The two batches decoded into memory, for the destination-only figure.
    let (insert_changes, update_changes) = {
        let src = SqliteStore::open(&src_all).unwrap();
        let empty = SqliteStore::open(&dst_empty).unwrap();
        let inserted = SqliteStore::open(&dst_inserted).unwrap();
        let all: Vec<_> = src
            .changes_for(empty.version_vector())
            .unwrap()
            .take(ROWS as usize)
            .collect::<Result<_, _>>()
            .unwrap();
        let updates: Vec<_> = src
            .changes_for(inserted.version_vector())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (all, updates)
    };
    assert_eq!(insert_changes.len(), ROWS as usize);
    assert_eq!(update_changes.len(), ROWS as usize);

    let mut group = c.benchmark_group("apply");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(ROWS as u64));

    let cases = [
        (
            "insert_100k",
            &src_inserts,
            &dst_empty,
            &insert_changes,
            &raw_empty,
        ),
        (
            "update_100k",
            &src_all,
            &dst_inserted,
            &update_changes,
            &raw_full,
        ),
    ];
    for (op, src_path, dst_template, changes, raw_template) in cases {
        group.bench_function(BenchmarkId::new(op, "raw_sqlite"), |b| {
            b.iter_custom(|iters| {
                timed_on_copies(&work, raw_template, iters, raw_connection, |conn| {
                    if op == "insert_100k" {
                        insert_rows(conn, ROWS);
                    } else {
                        update_rows(conn, ROWS);
                    }
                })
            });
        });
        // The source is only read (it has nothing pending), so one handle serves all.
        let mut src = SqliteStore::open(src_path).unwrap();
        group.bench_function(BenchmarkId::new(op, "pull"), |b| {
            b.iter_custom(|iters| {
                timed_on_copies(
                    &work,
                    dst_template,
                    iters,
                    |p| SqliteStore::open(p).unwrap(),
                    |dst| {
                        let report = pull(&mut src, dst).unwrap();
                        assert_eq!(report.applied, ROWS as u64);
                    },
                )
            });
        });
        group.bench_function(BenchmarkId::new(op, "apply_from_memory"), |b| {
            b.iter_custom(|iters| {
                timed_on_copies(
                    &work,
                    dst_template,
                    iters,
                    |p| (SqliteStore::open(p).unwrap(), Some(changes.clone())),
                    |(dst, batch)| {
                        let batch = batch.take().unwrap();
                        let report = dst.apply_changes(&mut batch.into_iter().map(Ok)).unwrap();
                        assert_eq!(report.applied, ROWS as u64);
                    },
                )
            });
        });
    }
    group.finish();

    if common::pairs_wanted() {
        for (op, src_path, dst_template, _, raw_template) in cases {
            let src = std::cell::RefCell::new(SqliteStore::open(src_path).unwrap());
            let work = &work;
            let src = &src;
            let mut variants: Vec<common::Variant<'_>> = vec![
                (
                    "raw_sqlite",
                    Box::new(move || {
                        timed_on_copies(work, raw_template, 1, raw_connection, |conn| {
                            if op == "insert_100k" {
                                insert_rows(conn, ROWS);
                            } else {
                                update_rows(conn, ROWS);
                            }
                        })
                    }),
                ),
                (
                    "pull",
                    Box::new(move || {
                        timed_on_copies(
                            work,
                            dst_template,
                            1,
                            |p| SqliteStore::open(p).unwrap(),
                            |dst| {
                                let report = pull(&mut *src.borrow_mut(), dst).unwrap();
                                assert_eq!(report.applied, ROWS as u64);
                            },
                        )
                    }),
                ),
            ];
            common::interleaved(&format!("apply/{op}"), ROUNDS, &mut variants);
        }
    }
}

/// The raw-write floor's connection: same pragmas as the store's own connection
/// (WAL, `synchronous = NORMAL`), so the comparison is like for like.
fn raw_connection(path: &std::path::Path) -> rusqlite::Connection {
    let conn = common::app_connection(path);
    conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
    conn
}

/// Interleaved rounds measured after the criterion group.
const ROUNDS: usize = 5;

criterion_group!(benches, apply);
criterion_main!(benches);
