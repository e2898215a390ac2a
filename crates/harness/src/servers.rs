//! Database servers for tests that run nodes over PostgreSQL or MariaDB.
//!
//! Why here: every such test does the same three things, and a mistake in any of them
//! costs a shared server or a silent pass. It finds the server from an environment
//! variable and, when it is not set, says loudly that the test is skipped rather than
//! passing in silence ([`server_url`]); it creates its own databases under a name no
//! other run (a concurrent one, or an earlier one that crashed) uses
//! ([`unique_database_name`]); and it points the server's URL at them
//! ([`with_database`]). Creating and dropping the databases needs the database client
//! crates, which this crate does not depend on, so the tests keep that part (behind a
//! `Drop` guard, so a failing test drops them too).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The PostgreSQL server tests use, as an admin URL (`postgres://postgres@127.0.0.1:5432/postgres`).
pub const POSTGRES_URL_ENV: &str = "CONCORD_TEST_POSTGRES_URL";
/// The MariaDB server tests use, as an admin URL (`mysql://root@127.0.0.1:3306/test`).
pub const MYSQL_URL_ENV: &str = "CONCORD_TEST_MYSQL_URL";

/// The URL in `var`, or `None` after printing `skipping <test>: <var> not set`.
///
/// The message goes straight to the process's stderr, not through `println!`, which the
/// test runner swallows for a passing test: a skipped test must never look like a pass.
pub fn server_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            let _ = writeln!(std::io::stderr(), "skipping {test}: {var} not set");
            None
        }
    }
}

/// `url` with its database (the last path segment) replaced by `database`; query
/// parameters, if any, are kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // The path starts after the authority (`scheme://user@host:port`).
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database name unique to this process and moment, `<prefix>_<pid>_<nanos in hex>`:
/// lowercase ASCII letters, digits and `_` only (valid unquoted in PostgreSQL and
/// MariaDB), at most 63 bytes (PostgreSQL's limit; MariaDB's is 64). `prefix` must be
/// made of the same characters.
pub fn unique_database_name(prefix: &str) -> String {
    assert!(
        prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "database name prefix {prefix:?} must be lowercase letters, digits and _"
    );
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut name = format!("{prefix}_{}_{nanos:x}", std::process::id());
    name.truncate(63);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306/test?prefer_socket=false", "y"),
            "mysql://root@127.0.0.1:3306/y?prefer_socket=false"
        );
        // A URL naming no database gets one.
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306", "z"),
            "mysql://root@127.0.0.1:3306/z"
        );
    }

    #[test]
    fn database_names_are_unique_and_plain() {
        let a = unique_database_name("concord_t");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = unique_database_name("concord_t");
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.starts_with("concord_t_"), "{name}");
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{name}"
            );
        }
    }
}
