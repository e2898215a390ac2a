//! Hybrid logical clock.
//!
//! A timestamp packs milliseconds since the Unix epoch into the high 48 bits and a
//! logical counter into the low 16. Ordering timestamps as plain integers therefore
//! orders them by wall time first and by counter second. The clock never goes
//! backwards, and after observing a remote timestamp every later local timestamp is
//! larger, so a write that causally follows another always carries a larger HLC.
//!
//! The clock takes wall time as an argument instead of reading it: the crate stays
//! pure, and tests can play any clock, including a skewed one.

use std::fmt;

use serde::{Deserialize, Serialize};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid logical clock timestamp.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hlc(u64);

impl Hlc {
    /// The zero timestamp, older than any real one.
    pub const ZERO: Hlc = Hlc(0);

    /// Rebuilds a timestamp from its packed form (as stored or sent).
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    /// The packed form.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// A timestamp at `millis` with logical counter `logical`.
    pub const fn new(millis: u64, logical: u16) -> Self {
        Self((millis << LOGICAL_BITS) | logical as u64)
    }

    /// Wall-clock part, in milliseconds since the Unix epoch.
    pub const fn millis(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// Logical counter part.
    pub const fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

/// Renders as UTC wall time with milliseconds, plus `+counter` when the logical counter
/// is not zero: `2026-11-27T10:29:35.613Z+2`.
impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis();
        let (secs, milli) = (ms / 1000, ms % 1000);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )?;
        if self.logical() != 0 {
            write!(f, "+{}", self.logical())?;
        }
        Ok(())
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({self})")
    }
}

/// Why a remote timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The remote timestamp is further ahead of local wall time than the bound allows.
    #[error(
        "timestamp {remote} is {ahead_ms} ms ahead of local time, more than the allowed {max_drift_ms} ms (is the sender's clock wrong?)"
    )]
    TooFarAhead {
        /// The refused timestamp.
        remote: Hlc,
        /// How far ahead of local wall time it was.
        ahead_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
}

/// A node's clock: the last timestamp it issued or saw, and the drift bound.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
    max_drift_ms: u64,
}

impl HlcClock {
    /// The default bound on how far a remote timestamp may lead local time: 5 minutes.
    pub const DEFAULT_MAX_DRIFT_MS: u64 = 5 * 60 * 1000;

    /// A clock that resumes after `last` (persisted by the caller) and refuses remote
    /// timestamps more than `max_drift_ms` ahead of local wall time.
    pub fn new(last: Hlc, max_drift_ms: u64) -> Self {
        Self { last, max_drift_ms }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The configured drift bound.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// Issues a timestamp for a local event at wall time `wall_ms`. The result is larger
    /// than every timestamp issued or observed before.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        let next = if wall_ms > self.last.millis() {
            Hlc::new(wall_ms, 0)
        } else {
            // Same or earlier millisecond: count up. The counter carries into the
            // millisecond part if it overflows, which keeps the order strict.
            Hlc(self.last.0 + 1)
        };
        self.last = next;
        next
    }

    /// Checks a remote timestamp against the drift bound without changing the clock.
    pub fn check(&self, remote: Hlc, wall_ms: u64) -> Result<(), ClockError> {
        let limit = wall_ms.saturating_add(self.max_drift_ms);
        if remote.millis() > limit {
            return Err(ClockError::TooFarAhead {
                remote,
                ahead_ms: remote.millis() - wall_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }

    /// Observes a remote timestamp: refuses it if it is too far ahead, otherwise moves
    /// the clock so that every later local timestamp exceeds it.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Result<(), ClockError> {
        self.check(remote, wall_ms)?;
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_when_wall_time_goes_back() {
        let mut clock = HlcClock::new(Hlc::ZERO, 1000);
        let a = clock.tick(5_000);
        let b = clock.tick(4_000);
        let c = clock.tick(5_000);
        let d = clock.tick(6_000);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(d, Hlc::new(6_000, 0));
    }

    #[test]
    fn a_tick_after_observing_a_remote_timestamp_is_larger_than_it() {
        let mut clock = HlcClock::new(Hlc::ZERO, 1000);
        let remote = Hlc::new(10_500, 7);
        clock.observe(remote, 10_000).unwrap();
        assert!(clock.tick(10_000) > remote);
    }

    #[test]
    fn remote_timestamp_beyond_the_drift_bound_is_refused_and_leaves_the_clock_alone() {
        let mut clock = HlcClock::new(Hlc::new(9_000, 0), 1000);
        let err = clock.observe(Hlc::new(11_001, 0), 10_000).unwrap_err();
        assert_eq!(
            err,
            ClockError::TooFarAhead {
                remote: Hlc::new(11_001, 0),
                ahead_ms: 1001,
                max_drift_ms: 1000
            }
        );
        assert!(err.to_string().contains("1001 ms ahead"));
        assert!(
            err.to_string().contains("1970-01-01T00:00:11.001Z"),
            "{err}"
        );
        assert_eq!(clock.last(), Hlc::new(9_000, 0));
        // Exactly at the bound is accepted.
        clock.observe(Hlc::new(11_000, 0), 10_000).unwrap();
    }

    #[test]
    fn display_is_utc_wall_time_with_the_counter() {
        assert_eq!(Hlc::new(0, 0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Hlc::new(1_795_775_375_613, 2).to_string(),
            "2026-11-27T10:29:35.613Z+2"
        );
        assert_eq!(
            Hlc::new(951_782_400_000, 0).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn logical_counter_overflow_carries_into_millis_keeping_order() {
        let mut clock = HlcClock::new(Hlc::new(100, u16::MAX), 1000);
        let next = clock.tick(100);
        assert!(next > Hlc::new(100, u16::MAX));
        assert_eq!(next, Hlc::new(101, 0));
    }
}
