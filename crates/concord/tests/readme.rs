//! The README's "Running nodes" section, run as written.
//!
//! Risk covered: a new user's first hour going wrong because the README's commands do
//! not work (a path `serve` cannot find, ports that collide on one machine, a missing
//! step in the fingerprint exchange, a `sqlite3` write lost to `database is locked`).
//! The commands are read from README.md when the test runs, so the two cannot drift;
//! each runs through `bash` in an empty directory with the real binary in place of
//! `concord`. Only two things are adapted, both for a machine running tests in
//! parallel: each port the README uses becomes a free one, and `sleep` becomes a wait
//! (up to 60 s) until the rows have arrived both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The first `sh` block after the heading `## Running nodes`.
fn running_nodes_block() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let section = &readme[readme
        .find("\n## Running nodes")
        .expect("README has a \"Running nodes\" section")..];
    let start = section.find("```sh\n").expect("the section has a sh block") + 6;
    let end = start + section[start..].find("\n```").expect("the block ends");
    section[start..end].to_owned()
}

/// One shell command of the block: a line, or a line opening a heredoc with its body.
struct Step {
    text: String,
    background: bool,
}

fn steps(block: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let line = strip_comment(line);
        if line.is_empty() {
            continue;
        }
        let mut text = line.to_owned();
        if let Some(marker) = line.split("<<").nth(1) {
            let marker = marker
                .trim()
                .trim_matches('\'')
                .trim_matches('"')
                .to_owned();
            for body in lines.by_ref() {
                text.push('\n');
                text.push_str(body);
                if body == marker {
                    break;
                }
            }
        }
        let background = text.ends_with('&');
        let text = text.trim_end_matches('&').trim_end().to_owned();
        steps.push(Step { text, background });
    }
    steps
}

/// The line without a trailing `# comment` (outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('#', None) if i == 0 || line[..i].ends_with(' ') => return line[..i].trim_end(),
            _ => {}
        }
    }
    line.trim_end()
}

/// The block with `concord` replaced by the binary under test and every
/// `127.0.0.1:PORT` by a free port (the same README port always maps to the same one).
fn adapt(block: &str) -> String {
    let binary = env!("CARGO_BIN_EXE_concord");
    let mut out = String::new();
    for (i, line) in block.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&replace_command(line, binary));
    }
    let mut ports: HashMap<String, String> = HashMap::new();
    let mut adapted = String::new();
    let mut rest = out.as_str();
    while let Some(at) = rest.find("127.0.0.1:") {
        let after = at + "127.0.0.1:".len();
        let digits = rest[after..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest.len(), |n| after + n);
        let port = &rest[after..digits];
        let free = ports.entry(port.to_owned()).or_insert_with(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port().to_string()
        });
        adapted.push_str(&rest[..after]);
        adapted.push_str(free);
        rest = &rest[digits..];
    }
    adapted.push_str(rest);
    adapted
}

/// `concord` as a command word (start of the line or after `$(`), replaced by `binary`.
fn replace_command(line: &str, binary: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("concord ") {
        let before = &rest[..at];
        let is_command = before.is_empty() && out.is_empty() || before.ends_with("$(");
        out.push_str(before);
        out.push_str(if is_command { binary } else { "concord" });
        out.push(' ');
        rest = &rest[at + "concord ".len()..];
    }
    out.push_str(rest);
    out
}

/// `serve` processes, killed when the test ends however it ends.
struct Servers(Vec<(String, Child)>);

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn customers(path: &Path) -> Vec<(i64, String)> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let Ok(mut stmt) = conn.prepare("SELECT id, name FROM customers ORDER BY id") else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

#[test]
fn the_readme_running_nodes_section_syncs_rows_both_ways_as_written() {
    let block = running_nodes_block();
    let inserts = block.matches("INSERT INTO customers").count();
    assert!(
        inserts >= 2,
        "the section writes no rows on both sides:\n{block}"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut servers = Servers(Vec::new());
    let mut log = String::new();
    for step in steps(&adapt(&block)) {
        log.push_str(&format!("$ {}\n", step.text));
        if step.background {
            let name = format!("serve{}.log", servers.0.len());
            let child = Command::new("bash")
                .arg("-c")
                .arg(format!("exec {}", step.text))
                .current_dir(d)
                .env_remove("CONCORD_LOG")
                .stdout(std::fs::File::create(d.join(&name)).unwrap())
                .stderr(std::fs::File::create(d.join(format!("{name}.err"))).unwrap())
                .spawn()
                .unwrap();
            servers.0.push((name, child));
            continue;
        }
        if step.text.starts_with("sleep ") {
            // Instead of a fixed sleep: wait until each file holds every row written.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (shop, office) = (
                    customers(&d.join("shop.db")),
                    customers(&d.join("office.db")),
                );
                if shop.len() == inserts && shop == office {
                    break;
                }
                if Instant::now() > deadline {
                    let mut logs = String::new();
                    for (name, _) in &servers.0 {
                        for file in [name.clone(), format!("{name}.err")] {
                            logs.push_str(
                                &std::fs::read_to_string(d.join(&file)).unwrap_or_default(),
                            );
                        }
                    }
                    panic!(
                        "rows did not arrive both ways within 60 s: shop {shop:?}, office {office:?}\n{log}\n{logs}"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(&step.text)
            .current_dir(d)
            .env_remove("CONCORD_LOG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        log.push_str(&stdout);
        assert!(
            out.status.success() && !stderr.contains("database is locked"),
            "README step failed ({}):\n{}\nstdout: {stdout}\nstderr: {stderr}\nso far:\n{log}",
            out.status,
            step.text
        );
        if step.text.contains("SELECT") {
            for (id, name) in customers(&d.join("shop.db")) {
                assert!(
                    stdout.contains(&format!("{id}|{name}")),
                    "the README's SELECT does not show {id}|{name}: {stdout}"
                );
            }
        }
    }
    for (name, child) in &mut servers.0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name}: serve exited early: {}",
            std::fs::read_to_string(d.join(format!("{name}.err"))).unwrap_or_default()
        );
    }
    let rows = customers(&d.join("office.db"));
    assert_eq!(rows.len(), inserts, "{rows:?}");
}

#[test]
fn the_step_parser_keeps_heredocs_whole_and_drops_comments() {
    let parsed = steps("a x  # note\ncat >> f <<EOF\nk = \"#1\"\nEOF\nb --dir y &   # bg\n");
    let texts: Vec<(&str, bool)> = parsed
        .iter()
        .map(|s| (s.text.as_str(), s.background))
        .collect();
    assert_eq!(
        texts,
        [
            ("a x", false),
            ("cat >> f <<EOF\nk = \"#1\"\nEOF", false),
            ("b --dir y", true)
        ]
    );
    assert_eq!(
        replace_command(
            "concord info --dir hub; x=\"$(concord info --dir a)\" concord.toml",
            "/b"
        ),
        "/b info --dir hub; x=\"$(/b info --dir a)\" concord.toml"
    );
}
