//! Short mode or long mode, and the seed of a run, from the environment.
//!
//! Why here: every fault test reads the same two variables the same way, and
//! RELIABILITY.md documents them once for all: `CONCORD_HARNESS_SEED` replays a printed
//! seed (decimal or `0x` hex), `CONCORD_HARNESS_MINUTES=N` turns the single round of
//! the short mode that `cargo test` runs into rounds of faults for N minutes with a
//! fresh seed. libtest takes no options of its own, so both come from the environment.
//! A malformed value panics with the variable's name: it is a mistake of whoever runs
//! the test, and a test that ran something else than asked must not pass.

use std::time::{SystemTime, UNIX_EPOCH};

/// Replays a run: its printed seed.
pub const SEED_ENV: &str = "CONCORD_HARNESS_SEED";
/// Long mode: minutes of rounds of faults.
pub const MINUTES_ENV: &str = "CONCORD_HARNESS_MINUTES";

/// Long mode: `Some(N)` when `CONCORD_HARNESS_MINUTES=N` is set, `None` in short mode.
///
/// # Panics
/// If the variable is set but not a number.
pub fn minutes() -> Option<u64> {
    std::env::var(MINUTES_ENV).ok().map(|m| {
        m.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{MINUTES_ENV}={m:?}: {e}"))
    })
}

/// The seed of a run: `CONCORD_HARNESS_SEED` if set; otherwise a fresh one in long mode
/// (printed by the caller, so a failure can be replayed) and `default` in short mode,
/// so the run `cargo test` makes is always the same one.
///
/// # Panics
/// If `CONCORD_HARNESS_SEED` is set but not a number.
pub fn seed(default: u64) -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{SEED_ENV}={s:?}: {e}"))
        }
        Err(_) if minutes().is_some() => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(default, |d| d.as_nanos() as u64),
        Err(_) => default,
    }
}

/// Prints `<what>: CONCORD_HARNESS_SEED=<seed> (set it to replay this run)`, the line
/// RELIABILITY.md tells a reader to look for.
pub fn print_seed(what: &str, seed: u64) {
    println!("{what}: {SEED_ENV}={seed:#x} (set it to replay this run)");
}
