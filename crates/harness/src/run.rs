//! What the threads of one fault run share: a stop flag with the first failure, naps
//! that end early, and the recorded histories the checks run against.
//!
//! Why here: a fault run is a handful of threads (one writer per node, a checker, the
//! fault schedule) that must all end as soon as any of them finds a problem, and that
//! must all see the same histories. Every fault test needs exactly that, whatever its
//! stores; only how a table is read and how a node is named differ, and those stay in
//! the tests.
//!
//! * [`Control`]: the stop flag and the first failure; [`StopOnExit`] sets it when a
//!   thread panics, so the others end too.
//! * [`nap`]: sleeps in small steps, so a failure elsewhere ends the run quickly.
//! * [`Histories`]: the committed transactions of every writer and the checks of a
//!   snapshot against them ([`crate::model`] does the checking itself).
//! * [`checker`]: the thread that snapshots one node after another during the run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::model::{self, Layout, LoggedChange, Progress, Table, Txn};
use crate::process::{self, ServeProcess};
use crate::rng::Rng;
use crate::topology::Link;

/// Locks `m`, also after a thread panicked while holding it (the run then fails anyway,
/// and its report still wants the data).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stop flag of a run and its first failure.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Control {
    /// A run going on, with no failure.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `message` (unless a failure was recorded already) and stops the run.
    pub fn fail(&self, message: String) {
        lock(&self.failure).get_or_insert(message);
        self.stop();
    }

    /// Stops the run without a failure (the workload is over).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the run stopped, failed or not.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The first failure, if any.
    pub fn take_failure(&self) -> Option<String> {
        lock(&self.failure).take()
    }
}

/// Sets the stop flag when a thread ends by panicking, so the others end too.
#[derive(Debug)]
pub struct StopOnExit<'a>(pub &'a Control);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail("a harness thread panicked (see its message above)".into());
        }
    }
}

/// Sleeps `d`, in small steps so a failure elsewhere ends the run quickly.
pub fn nap(control: &Control, d: Duration) {
    let end = Instant::now() + d;
    while !control.stopped() {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A seeded duration of `lo..hi` milliseconds.
pub fn ms(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo, hi))
}

/// The committed transactions of every writer, and the snapshots checked against them.
///
/// A writer holds its history's lock across COMMIT and the append
/// ([`Histories::writer`]), so a checker that snapshots a table *then* locks the
/// histories sees every transaction the snapshot could contain.
#[derive(Debug)]
pub struct Histories {
    layout: Layout,
    histories: Vec<Mutex<Vec<Txn>>>,
    snapshots_checked: AtomicU64,
}

impl Histories {
    /// Empty histories, one per writer of `layout` (one per own range).
    pub fn new(layout: Layout) -> Self {
        Self {
            histories: (0..layout.own.len())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            layout,
            snapshots_checked: AtomicU64::new(0),
        }
    }

    /// The key ranges the writers write.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Writer `w`'s history, locked: hold it across COMMIT and the append.
    pub fn writer(&self, w: usize) -> MutexGuard<'_, Vec<Txn>> {
        lock(&self.histories[w])
    }

    /// A copy of every history, for the final checks.
    pub fn copy(&self) -> Vec<Vec<Txn>> {
        self.histories.iter().map(|h| lock(h).clone()).collect()
    }

    /// How many transactions each writer committed.
    pub fn transactions(&self) -> Vec<usize> {
        self.histories.iter().map(|h| lock(h).len()).collect()
    }

    /// The problems of the final `table` (the converged state) against every history:
    /// lost, partial, duplicated or invented writes ([`model::check_final`]).
    pub fn check_final(&self, table: &Table) -> Vec<String> {
        let histories = self.copy();
        let views: Vec<&[Txn]> = histories.iter().map(Vec::as_slice).collect();
        model::check_final(&self.layout, &views, table)
    }

    /// The shared rows of the final `table` that are not the last writer's, given every
    /// `logged` change to them ([`model::check_last_writer`]).
    pub fn check_last_writer(&self, logged: &[LoggedChange], table: &Table) -> Vec<String> {
        let histories = self.copy();
        let views: Vec<&[Txn]> = histories.iter().map(Vec::as_slice).collect();
        model::check_last_writer(&views, &self.layout.shared, logged, table)
    }

    /// How many snapshots [`Histories::check_snapshot`] passed.
    pub fn snapshots_checked(&self) -> u64 {
        self.snapshots_checked.load(Ordering::Relaxed)
    }

    /// Whether `table` (a node's, read just now) misses the latest committed transaction
    /// of one of `writers`.
    pub fn lags_behind(&self, table: &Table, writers: &[usize]) -> Result<bool, String> {
        let guards: Vec<_> = self.histories.iter().map(|h| lock(h)).collect();
        for &writer in writers {
            let history = &guards[writer];
            let prefix = model::prefix_of(history, &self.layout.own[writer], table)?;
            if prefix.max < history.len() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks `table`, a snapshot of node `node` (called `name` in messages) read just
    /// now, against every history, and that the node did not go back in any of them.
    pub fn check_snapshot(
        &self,
        node: usize,
        name: &str,
        table: &Table,
        progress: &mut Progress,
    ) -> Result<(), String> {
        let guards: Vec<_> = self.histories.iter().map(|h| lock(h)).collect();
        let views: Vec<&[Txn]> = guards.iter().map(|g| g.as_slice()).collect();
        let prefixes = model::check_snapshot(&self.layout, &views, table).map_err(|p| {
            format!(
                "snapshot of {name} during the run is inconsistent:\n{}",
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

/// The checker thread: every 200-500 ms (seeded), `check(node, progress)` on nodes
/// `0..nodes` in turn, until the run stops; the first error fails the run.
pub fn checker(
    control: &Control,
    mut rng: Rng,
    nodes: usize,
    mut check: impl FnMut(usize, &mut Progress) -> Result<(), String>,
) {
    let _guard = StopOnExit(control);
    let mut progress = Progress::default();
    let mut node = 0;
    while !control.stopped() {
        std::thread::sleep(Duration::from_millis(rng.range(200, 500)));
        if let Err(e) = check(node, &mut progress) {
            control.fail(e);
            return;
        }
        node = (node + 1) % nodes;
    }
}

/// The workload with its checks and faults, on scoped threads: one `writer(i, rng)`
/// per writer, the [`checker`] thread with `check` over `checked` nodes, and `faults`
/// on this thread; once `faults` returns, half a second more of writing on a healthy
/// network, then the run stops. The generators are forked from `rng` in a fixed order
/// (writer `i` with salt `i`, the checker 100, the faults 200), so a seed replays the
/// same workload and schedule. Returns how long it took.
pub fn workload(
    control: &Control,
    rng: &mut Rng,
    writers: usize,
    writer: impl Fn(usize, Rng) + Sync,
    checked: usize,
    check: impl FnMut(usize, &mut Progress) -> Result<(), String> + Send,
    faults: impl FnOnce(Rng),
) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        let writer = &writer;
        for me in 0..writers {
            let writer_rng = rng.fork(me as u64);
            s.spawn(move || writer(me, writer_rng));
        }
        let checker_rng = rng.fork(100);
        s.spawn(move || checker(control, checker_rng, checked, check));
        faults(rng.fork(200));
        // A little more writing on a healthy network, then stop.
        nap(control, Duration::from_millis(500));
        control.stop();
    });
    started.elapsed()
}

/// After the workload: the run's first failure, or a node that exited on its own
/// (`name` names it), as an error; otherwise every link healed for the convergence
/// that follows.
pub fn end(
    control: &Control,
    nodes: &[Mutex<ServeProcess>],
    links: &[Link],
    name: impl Fn(usize) -> String,
) -> Result<(), String> {
    if let Some(failure) = control.take_failure() {
        return Err(failure);
    }
    if let Some((i, status)) = process::first_exited(nodes).map_err(|e| e.to_string())? {
        return Err(format!("{} exited on its own with {status}", name(i)));
    }
    for link in links {
        link.proxy.heal();
    }
    Ok(())
}

/// Whether every item is `Ok` and all are equal: the nodes agree.
pub fn all_equal<T: PartialEq>(v: &[Result<T, String>]) -> bool {
    v.iter().all(Result::is_ok) && v.windows(2).all(|w| w[0] == w[1])
}

/// Whether the nodes converged: the same rows, the same version vectors (`holds`), and
/// nothing captured but not yet logged (`pending`) anywhere.
pub fn converged<T: PartialEq, H: PartialEq>(
    tables: &[Result<T, String>],
    holds: &[Result<H, String>],
    pending: &[Result<i64, String>],
) -> bool {
    all_equal(tables) && all_equal(holds) && pending.iter().all(|p| matches!(p, Ok(0)))
}
