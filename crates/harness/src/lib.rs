//! Concord's fault harness (issue 5): the pieces that let a test run real `concord serve`
//! processes through cut cables, black holes and SIGKILLs, and then prove that nothing
//! committed was lost, duplicated or applied in part.
//!
//! Why a separate crate: the faults must be real (separate processes, real sockets,
//! real files written by ordinary SQLite connections), so the harness cannot live inside
//! the node's own tests, and the pieces are shared by the short test that `cargo test`
//! runs (`crates/concord/tests/faults.rs`) and a future long mode.
//!
//! * [`proxy`]: a TCP proxy placed on every link between two nodes, controlled at run
//!   time: added delay, dropped connections, black hole, partition.
//! * [`process`]: a `concord serve` child process that is always killed when dropped,
//!   and can be SIGKILLed and restarted on the same data directory.
//! * [`model`]: the recorded history of committed writes and the pure checks run on
//!   snapshots of every node's table.
//! * [`rng`]: a tiny seeded generator, owned here so that a printed seed replays the
//!   same schedule whatever version of an RNG crate the workspace moves to.

pub mod model;
pub mod process;
pub mod proxy;
pub mod rng;
