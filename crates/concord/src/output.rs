//! How the CLI prints: through a locked stdout with `writeln!`, so that a closed pipe
//! (`concord info DB | head -3`) is an ordinary error the binary turns into a quiet exit
//! instead of a panic in `println!`; and tables whose cells are cut to a readable width,
//! so that data (a 70,000-character value, a newline in a key) can never break the
//! layout or panic the formatter. `--json` output is never cut.

use std::io;

/// Longest cell a table shows; longer ones are cut and say how long they were.
pub(crate) const MAX_CELL_CHARS: usize = 100;

/// Standard output, locked for the whole command.
pub(crate) fn stdout() -> io::StdoutLock<'static> {
    io::stdout().lock()
}

/// Whether the error is the reader of our standard output having gone away.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// A cell as a table shows it: control characters escaped so a row stays on one line,
/// and cut to [`MAX_CELL_CHARS`] with the full length said (`… (70000 chars)`).
pub(crate) fn cell(text: &str) -> String {
    let escaped: String = text
        .chars()
        .flat_map(char::escape_default_controls)
        .collect();
    let length = escaped.chars().count();
    if length <= MAX_CELL_CHARS {
        return escaped;
    }
    let kept: String = escaped.chars().take(MAX_CELL_CHARS).collect();
    format!("{kept}… ({length} chars)")
}

/// `char::escape_default` for control characters only, keeping the rest (accents,
/// quotes) as they are.
trait EscapeControls {
    fn escape_default_controls(self) -> Vec<char>;
}

impl EscapeControls for char {
    fn escape_default_controls(self) -> Vec<char> {
        if self.is_control() {
            self.escape_default().collect()
        } else {
            vec![self]
        }
    }
}

/// Renders rows as left-aligned columns; the first row is the header. Every cell goes
/// through [`cell`]; padding is computed, not left to `format!` widths (which panic
/// beyond 65,535).
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell(c)).collect())
        .collect();
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, s) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(s);
            let pad = widths[c].saturating_sub(s.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Milliseconds since the epoch as a UTC time, `2026-12-04 05:27:29Z`.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_cell_is_cut_and_says_its_length_instead_of_panicking() {
        let big = "x".repeat(70_000);
        let out = table(&[vec!["A".into(), "B".into()], vec![big, "y".into()]]);
        assert!(out.contains("… (70000 chars)"), "{out}");
        assert!(out.len() < 1_000);
    }

    #[test]
    fn control_characters_in_a_cell_keep_the_row_on_one_line() {
        let out = table(&[vec!["A".into()], vec!["a\nb".into()]]);
        assert_eq!(out, "A\na\\nb\n");
    }

    #[test]
    fn times_are_printed_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_796_362_049_000), "2026-12-04 05:27:29Z");
    }
}
