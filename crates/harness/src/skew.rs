//! One node with a wrong clock, through libfaketime.
//!
//! Why libfaketime: it shifts what `clock_gettime`, `gettimeofday` and `time` return
//! inside an unmodified process (`LD_PRELOAD`), so the skewed node runs the real
//! `concord serve` binary and the real SQLite, and no code path of Concord knows it is
//! being tested. The skew stays well inside the nodes' bound on remote timestamps
//! (`max_clock_drift_ms`, 5 minutes by default), where every change must still be
//! accepted and merged; beyond it refusal is the designed behaviour.
//!
//! What has to be skewed: a node's clock is read in two processes. `concord serve`
//! reads it to bound the timestamps it receives (and for its log lines); but the hybrid
//! logical clock a write gets starts from the wall time the capture trigger recorded,
//! `julianday('now')`, evaluated by SQLite *in the process that wrote*. A machine with
//! a wrong clock has both wrong, so a test skews both: `concord serve` through
//! [`crate::process::ServeProcess::start_with_env`] with [`ClockSkew::env`], and the
//! node's writer by running it as a child process with the same environment.
//!
//! Monotonic clocks are left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`): a skew is about
//! wall time, and timers and timeouts (tokio's, SQLite's busy wait) should not move.
//! The multithreaded build of the library (`libfaketimeMT.so.1`) is preferred when
//! present: both processes are multithreaded, and it serialises libfaketime's cached
//! state between threads.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Names the library to preload, overriding the search of the usual install paths.
pub const LIBRARY_ENV: &str = "CONCORD_HARNESS_LIBFAKETIME";

/// Finds libfaketime: `$CONCORD_HARNESS_LIBFAKETIME`, or where the Debian package
/// `libfaketime` (installed with `faketime`) and `make install` put it. `Err` says
/// where it looked.
pub fn find_libfaketime() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(LIBRARY_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{LIBRARY_ENV}={} is not a file", path.display()))
        };
    }
    let arch = std::env::consts::ARCH;
    let dirs = [
        format!("/usr/lib/{arch}-linux-gnu/faketime"),
        "/usr/lib/faketime".to_owned(),
        "/usr/local/lib/faketime".to_owned(),
        "/usr/local/lib".to_owned(),
    ];
    let candidates: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| ["libfaketimeMT.so.1", "libfaketime.so.1"].map(|f| Path::new(d).join(f)))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "libfaketime is not installed (looked for {}; install the Debian package \
                 `faketime`, or set {LIBRARY_ENV})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// A wall clock `offset_s` seconds off, for every process started with [`Self::env`].
#[derive(Clone, Debug)]
pub struct ClockSkew {
    library: PathBuf,
    offset_s: i64,
}

impl ClockSkew {
    /// A skew of `offset_s` seconds (negative: behind) through the library at `library`.
    pub fn new(library: PathBuf, offset_s: i64) -> Self {
        Self { library, offset_s }
    }

    /// The offset in seconds.
    pub fn offset_s(&self) -> i64 {
        self.offset_s
    }

    /// The offset in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_s * 1000
    }

    /// The preloaded library.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The variables that give a process this skew.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("LD_PRELOAD".into(), self.library.clone().into_os_string()),
            ("FAKETIME".into(), format!("{:+}s", self.offset_s).into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]
    }
}

/// The wall time, in milliseconds since the Unix epoch, that starts a log line of
/// `concord serve` (tracing's RFC 3339 UTC timestamp, `2026-11-27T10:29:35.613421Z`,
/// possibly inside ANSI colour codes). `None` if the line does not start with one.
pub fn log_line_millis(line: &str) -> Option<u64> {
    let plain = strip_ansi(line);
    let stamp = plain.split_whitespace().next()?;
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, u32, u32) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':');
    let (h, min, s): (u64, u64, u64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    // Milliseconds from the first three digits of the fraction.
    let ms_digits: String = frac.chars().chain("000".chars()).take(3).collect();
    let ms: u64 = ms_digits.parse().ok()?;
    let days = u64::try_from(days_from_civil(y, m, day)).ok()?;
    Some(((days * 86_400 + h * 3600 + min * 60 + s) * 1000) + ms)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn log_timestamps_parse_with_or_without_colour() {
        // 2026-11-27T10:29:35.613Z is the example of concord_core's Hlc display.
        assert_eq!(
            log_line_millis("2026-11-27T10:29:35.613421Z  INFO concord_node: listening"),
            Some(1_795_775_375_613)
        );
        assert_eq!(
            log_line_millis(
                "\u{1b}[2m2026-11-27T10:29:35.613421Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"
            ),
            Some(1_795_775_375_613)
        );
        assert_eq!(
            log_line_millis("2000-02-29T00:00:00Z x"),
            Some(951_782_400_000)
        );
        assert_eq!(log_line_millis("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(log_line_millis("thread 'main' panicked"), None);
        assert_eq!(log_line_millis(""), None);
    }

    #[test]
    fn the_environment_names_library_and_signed_offset() {
        let env = ClockSkew::new("/x/libfaketime.so.1".into(), -90).env();
        assert!(env.contains(&("FAKETIME".into(), "-90s".into())), "{env:?}");
        let env = ClockSkew::new("/x/libfaketime.so.1".into(), 90).env();
        assert!(env.contains(&("FAKETIME".into(), "+90s".into())), "{env:?}");
        assert!(env.contains(&("LD_PRELOAD".into(), "/x/libfaketime.so.1".into())));
    }
}
