//! The demo read cold: a newcomer's first run of `concord demo` must tell each event
//! once and plainly. Risks covered: one conflict printed as two rows with LOCAL and
//! REMOTE swapped (each node records the pair from its own side); a node's fingerprint
//! missing; durations in Rust's debug format (`6.977513ms`); step 3 not saying who wrote
//! what.
#![allow(clippy::expect_used, missing_docs)]

use std::process::Command;

fn demo_output() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("demo")
        .output()
        .expect("run concord demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The lines of the step whose heading starts with `number`.
fn step(out: &str, number: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with(number))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_demo_tells_one_concurrent_edit_as_one_conflict_naming_both_writers() {
    let out = demo_output();
    let conflict_step = step(&out, "5.");
    let rows: Vec<&String> = conflict_step
        .iter()
        .filter(|l| l.trim_start().starts_with("customers"))
        .collect();
    assert_eq!(rows.len(), 1, "one conflict, one row:\n{out}");
    let row = rows[0];
    assert!(row.contains("office wrote 'ada@office.example'"), "{row}");
    assert!(row.contains("shop wrote 'ada@shop.example'"), "{row}");
    assert!(
        row.contains("shop's"),
        "the later write (the shop's) is kept: {row}"
    );
    assert!(
        row.contains("shop, office"),
        "both nodes recorded it: {row}"
    );
    assert!(
        conflict_step.iter().any(|l| l.contains("1 conflict ")),
        "{out}"
    );
}

#[test]
fn the_demo_shows_every_fingerprint_and_who_wrote_what_in_plain_durations() {
    let out = demo_output();
    let first = step(&out, "1.");
    for node in ["hub", "shop", "office"] {
        assert!(
            first
                .iter()
                .any(|l| l.trim_start().starts_with(node) && l.contains("fingerprint sha256:")),
            "{node}'s fingerprint is shown:\n{out}"
        );
    }
    let third = step(&out, "3.").join("\n");
    assert!(third.contains("the shop adds customer 3"), "{third}");
    assert!(
        third.contains("the office adds customers 10 and 11"),
        "{third}"
    );
    // Durations read `12 ms` or `1.4 s`, never `9.298565ms` or `1.2µs`.
    for line in out
        .lines()
        .filter(|l| l.contains(" in ") || l.contains(" after "))
    {
        assert!(!line.contains("µs"), "{line}");
        let debug_style = line.split_whitespace().any(|word| {
            word.trim_end_matches([':', '.'])
                .strip_suffix("ms")
                .is_some_and(|n| n.contains('.'))
        });
        assert!(!debug_style, "a duration in debug format: {line}");
    }
}
