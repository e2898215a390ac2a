//! Concord's fault harness (issue 5): the pieces that let a test run real `concord serve`
//! processes through cut cables, black holes and SIGKILLs, and then prove that nothing
//! committed was lost, duplicated or applied in part.
//!
//! Why a separate crate: the faults must be real (separate processes, real sockets,
//! real files written by ordinary SQLite connections), so the harness cannot live inside
//! the node's own tests, and the pieces are shared by the short test that `cargo test`
//! runs (`crates/concord/tests/faults.rs`), its long mode, and the test over SQLite,
//! PostgreSQL and MariaDB (`crates/concord/tests/faults_databases.rs`).
//!
//! * [`proxy`]: a TCP proxy placed on every link between two nodes, controlled at run
//!   time: added delay, a bandwidth cap, dropped connections, black hole, partition.
//! * [`topology`]: the links of a mesh or a hub, and partitions of the network into two
//!   groups (every link crossing the cut is partitioned).
//! * [`skew`]: one node's wall clock shifted with libfaketime, for its `concord serve`
//!   and for the process that writes to its database.
//! * [`process`]: a `concord serve` child process that is always killed when dropped,
//!   and can be SIGKILLed and restarted on the same data directory.
//! * [`model`]: the recorded history of committed writes and the pure checks run on
//!   snapshots of every node's table, including the exact last-writer check of the
//!   shared rows against the versions the change log recorded.
//! * [`servers`]: the PostgreSQL and MariaDB servers of tests that need them: the rule
//!   deciding once per test binary whether they run (the variable's URL, else the usual
//!   local one if it answers, else ignored with the reason) and the
//!   [`server_tests!`] macro that reports them that way; unique database names.
//! * [`rng`]: a tiny seeded generator, owned here so that a printed seed replays the
//!   same schedule whatever version of an RNG crate the workspace moves to.
//!
//! What every fault test does the same way, whatever its stores:
//!
//! * [`mode`]: short or long mode and the seed, from `CONCORD_HARNESS_MINUTES` and
//!   `CONCORD_HARNESS_SEED`.
//! * [`node`]: data directories made by `concord init` on free ports, tuned for faults,
//!   and the links between nodes through proxies.
//! * [`status`]: a node's `GET /v1/status`, and waiting for sessions or convergence.
//! * [`run`]: the stop flag and first failure the threads of a run share, the recorded
//!   histories and the checker thread that snapshots nodes during the run.
//! * [`workload`]: the seeded transactions a writer makes.
//! * [`episodes`]: dropped connections, delays, black holes and crashes, and the rounds.
//! * [`changelog`]: a node's change log, for the last-writer check and the check that
//!   every change is logged exactly once.

pub mod changelog;
pub mod episodes;
pub mod mode;
pub mod model;
pub mod node;
pub mod private_servers;
pub mod process;
pub mod proxy;
pub mod rng;
pub mod run;
pub mod servers;
pub mod skew;
pub mod status;
pub mod topology;
pub mod workload;
