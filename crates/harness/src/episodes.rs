//! Fault episodes that every fault test injects the same way, and the rounds of them.
//!
//! Why here: each test draws its own schedule (which faults, in which order, on which
//! links and nodes: that is what its seed replays), but a dropped connection, a delay,
//! a black hole or a SIGKILL with a restart is the same episode in every test, drawing
//! the same durations from the generator in the same order. Each episode sets itself
//! up, lasts, and heals before the next starts; the naps end early when the run stops.
//! [`Rounds`] is the short mode's single round or the long mode's rounds until a
//! deadline.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::process::ServeProcess;
use crate::rng::Rng;
use crate::run::{Control, lock, ms, nap};
use crate::topology::Link;

/// Drops every open connection of `link` (the dialer reconnects).
pub fn drop_connections(link: &Link) {
    link.proxy.drop_connections();
}

/// Delays `link` by 50-250 ms for 1.5-3 s, then heals it.
pub fn delay(control: &Control, rng: &mut Rng, link: &Link) {
    link.proxy.set_delay(ms(rng, 50, 250));
    nap(control, ms(rng, 1500, 3000));
    link.proxy.heal();
}

/// Black-holes `link` (connections accepted, nothing forwarded) for 1.5 s to 2 s more
/// than the stall timeout: longer than it sometimes, shorter other times.
pub fn black_hole(control: &Control, rng: &mut Rng, link: &Link, stall_timeout_s: u64) {
    link.proxy.black_hole();
    nap(control, ms(rng, 1500, 2000 + stall_timeout_s * 1000));
    link.proxy.heal();
}

/// SIGKILLs `node`, leaves it down for `down`, and restarts it on the same directory.
pub fn kill_and_restart(
    control: &Control,
    node: &Mutex<ServeProcess>,
    down: Duration,
) -> io::Result<()> {
    lock(node).kill()?;
    nap(control, down);
    lock(node).restart()
}

/// Runs one round's `schedule`: 1-2 s for some history to build up, then each fault
/// (`apply`) followed by a 0.3-1.2 s pause, until the schedule ends or the run stops.
pub fn run_schedule<F>(
    control: &Control,
    rng: &mut Rng,
    schedule: Vec<F>,
    mut apply: impl FnMut(F, &mut Rng),
) {
    // Let some history build up before the first fault.
    nap(control, ms(rng, 1000, 2000));
    for fault in schedule {
        if control.stopped() {
            return;
        }
        apply(fault, rng);
        nap(control, ms(rng, 300, 1200));
    }
}

/// When to stop starting rounds of faults.
#[derive(Clone, Copy, Debug)]
pub struct Rounds {
    deadline: Option<Instant>,
}

impl Rounds {
    /// One round (short mode, `minutes` `None`), or rounds for `minutes` from now.
    pub fn new(minutes: Option<u64>) -> Self {
        Self {
            deadline: minutes.map(|m| Instant::now() + Duration::from_secs(m * 60)),
        }
    }

    /// After a round: whether to run another (long mode, time left, run not stopped).
    pub fn another(&self, control: &Control) -> bool {
        matches!(self.deadline, Some(deadline) if Instant::now() < deadline && !control.stopped())
    }
}
