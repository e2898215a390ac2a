//! Capture overhead of the SQLite store (issue #2, figure 1).
//!
//! * `capture_writes/insert_100k/{untracked,tracked}`: an app inserts 100k rows in one
//!   transaction through a plain rusqlite connection, into a 5-column table with and
//!   without Concord's triggers. Same run, so the ratio is meaningful on a noisy box.
//! * `capture_writes/update_100k/{untracked,tracked}`: the same app updates every
//!   non-key column of the 100k rows in one transaction.
//! * `capture_writes/*/floor_{noop,minimal_row}_trigger`: the same writes on the
//!   untracked table with a trigger that does nothing, and with one that appends only
//!   the key to a one-column table: the floor of any trigger-based capture, for context.
//! * `capture_fold/{insert,update}_100k`: `SqliteStore::capture()` folding the 100k
//!   pending writes left by the triggers into the change log, the deferred half of the
//!   cost of capture.
//!
//! After the `capture_writes` group, the same four variants are timed again in 7
//! interleaved rounds and their median ratios to `untracked` printed (`interleaved
//! capture_writes/...` lines), which is robust to load drifting on a shared machine
//! between two criterion benchmarks.
//!
//! Every iteration runs on a fresh copy of a template file; only the writes (or the
//! fold) are timed, commit included.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{
    ROWS, Workdir, create_table, create_tracked, insert_rows, timed_on_copies, update_rows,
};
use concord_sqlite::SqliteStore;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

/// Interleaved rounds measured after the criterion group.
const ROUNDS: usize = 7;

/// A trigger per write that does nothing: the cost of firing a trigger at all.
const NOOP_TRIGGERS: &str = "
    CREATE TRIGGER floor_ins AFTER INSERT ON t BEGIN SELECT 1 WHERE 0; END;
    CREATE TRIGGER floor_upd AFTER UPDATE ON t BEGIN SELECT 1 WHERE 0; END;";

/// A trigger per write that appends only the key to a one-column table: about the least
/// a trigger can record.
const MINIMAL_TRIGGERS: &str = "
    CREATE TABLE floor_log(k);
    CREATE TRIGGER floor_ins AFTER INSERT ON t BEGIN INSERT INTO floor_log(k) VALUES (NEW.id); END;
    CREATE TRIGGER floor_upd AFTER UPDATE ON t BEGIN INSERT INTO floor_log(k) VALUES (NEW.id); END;";

fn capture(c: &mut Criterion) {
    let work = Workdir::new();

    // Templates, built once.
    let plain_empty = work.template("plain-empty");
    create_table(&plain_empty);
    let tracked_empty = work.template("tracked-empty");
    create_tracked(&tracked_empty);
    let plain_full = work.template("plain-full");
    create_table(&plain_full);
    insert_rows(&mut common::app_connection(&plain_full), ROWS);
    // Tracked, 100k rows inserted but not yet folded into the log.
    let pending_inserts = work.template("pending-inserts");
    create_tracked(&pending_inserts);
    insert_rows(&mut common::app_connection(&pending_inserts), ROWS);
    // Tracked, 100k rows captured (log and row clocks exist), nothing pending.
    let tracked_full = work.template("tracked-full");
    std::fs::copy(&pending_inserts, &tracked_full).unwrap();
    assert_eq!(
        SqliteStore::open(&tracked_full).unwrap().capture().unwrap(),
        ROWS as u64
    );
    // Tracked, 100k captured rows and then 100k updates pending.
    let pending_updates = work.template("pending-updates");
    std::fs::copy(&tracked_full, &pending_updates).unwrap();
    update_rows(&mut common::app_connection(&pending_updates), ROWS);
    // Floors of any trigger-based capture, for context: a trigger that does nothing,
    // and one that appends the smallest possible row (the key) to a side table.
    let floors = [
        ("floor_noop_trigger", NOOP_TRIGGERS),
        ("floor_minimal_row_trigger", MINIMAL_TRIGGERS),
    ]
    .map(|(name, ddl)| {
        let empty = work.template(&format!("{name}-empty"));
        std::fs::copy(&plain_empty, &empty).unwrap();
        common::app_connection(&empty).execute_batch(ddl).unwrap();
        let full = work.template(&format!("{name}-full"));
        std::fs::copy(&plain_full, &full).unwrap();
        common::app_connection(&full).execute_batch(ddl).unwrap();
        (name, empty, full)
    });

    let mut group = c.benchmark_group("capture_writes");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(ROWS as u64));
    for (op, untracked, tracked) in [
        ("insert_100k", &plain_empty, &tracked_empty),
        ("update_100k", &plain_full, &tracked_full),
    ] {
        let write = |conn: &mut rusqlite::Connection| {
            if op == "insert_100k" {
                insert_rows(conn, ROWS);
            } else {
                update_rows(conn, ROWS);
            }
        };
        group.bench_function(BenchmarkId::new(op, "untracked"), |b| {
            b.iter_custom(|iters| {
                timed_on_copies(&work, untracked, iters, common::app_connection, write)
            });
        });
        group.bench_function(BenchmarkId::new(op, "tracked"), |b| {
            b.iter_custom(|iters| {
                timed_on_copies(
                    &work,
                    tracked,
                    iters,
                    // The store stays open beside the app, as a running node would.
                    |p| (SqliteStore::open(p).unwrap(), common::app_connection(p)),
                    |(_store, conn)| write(conn),
                )
            });
        });
        for (name, empty, full) in &floors {
            let template = if op == "insert_100k" { empty } else { full };
            group.bench_function(BenchmarkId::new(op, name), |b| {
                b.iter_custom(|iters| {
                    timed_on_copies(&work, template, iters, common::app_connection, write)
                });
            });
        }
    }
    group.finish();

    if common::pairs_wanted() {
        for (op, untracked, tracked) in [
            ("insert_100k", &plain_empty, &tracked_empty),
            ("update_100k", &plain_full, &tracked_full),
        ] {
            let write = |conn: &mut rusqlite::Connection| {
                if op == "insert_100k" {
                    insert_rows(conn, ROWS);
                } else {
                    update_rows(conn, ROWS);
                }
            };
            let work = &work;
            let mut variants: Vec<common::Variant<'_>> = vec![
                (
                    "untracked",
                    Box::new(move || {
                        timed_on_copies(work, untracked, 1, common::app_connection, write)
                    }),
                ),
                (
                    "tracked",
                    Box::new(move || {
                        timed_on_copies(
                            work,
                            tracked,
                            1,
                            |p| (SqliteStore::open(p).unwrap(), common::app_connection(p)),
                            |(_store, conn)| write(conn),
                        )
                    }),
                ),
            ];
            for (name, empty, full) in &floors {
                let template = if op == "insert_100k" { empty } else { full };
                variants.push((
                    name,
                    Box::new(move || {
                        timed_on_copies(work, template, 1, common::app_connection, write)
                    }),
                ));
            }
            common::interleaved(&format!("capture_writes/{op}"), ROUNDS, &mut variants);
        }
    }

    let mut group = c.benchmark_group("capture_fold");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(ROWS as u64));
    for (op, template) in [
        ("insert_100k", &pending_inserts),
        ("update_100k", &pending_updates),
    ] {
        group.bench_function(op, |b| {
            b.iter_custom(|iters| {
                timed_on_copies(
                    &work,
                    template,
                    iters,
                    |p| SqliteStore::open(p).unwrap(),
                    |store| assert_eq!(store.capture().unwrap(), ROWS as u64),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, capture);
criterion_main!(benches);
