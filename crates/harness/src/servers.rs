//! Database servers for tests that run over PostgreSQL or MariaDB, and the rule that
//! decides, once per test binary, whether those tests run.
//!
//! Why here: a test that needs a server used to find it in an environment variable and,
//! when the variable was unset, return early, so `cargo test` counted it as passed in
//! 0.00 s and only `--nocapture` showed that it had not run. The rule now lives in one
//! place ([`availability`]), and test binaries that need a server are built with
//! `harness = false` and the [`server_tests!`](crate::server_tests) macro, which runs
//! them through `libtest-mimic` so that a test that cannot run is reported as *ignored*,
//! with its reason, in cargo's summary line, never as passed.
//!
//! The rule, for each server ([`Server::Postgres`]: `CONCORD_TEST_POSTGRES_URL`,
//! [`Server::Mysql`]: `CONCORD_TEST_MYSQL_URL`):
//!
//! 1. The variable is set and not empty: its URL is used. If nothing answers at its
//!    address, every test that needs it **fails**, with a message naming the URL: CI
//!    sets the variables, and a CI server that is down must turn the run red, not skip.
//! 2. The variable is set to the empty string: the tests are not run (ignored, reason
//!    "`<VAR>` is empty"). This is how to opt out on a machine whose server is not
//!    meant for tests.
//! 3. The variable is unset: the server's usual local URL
//!    (`postgres://postgres@127.0.0.1:5432/postgres`, `mysql://root@127.0.0.1:3306/test`)
//!    is used if something accepts a TCP connection at its address within a second;
//!    otherwise the tests are ignored with a reason naming the variable and the address
//!    tried. A server that answers but refuses the usual login makes the tests fail,
//!    with the URL used and how to set another.
//!
//! The probe is a TCP connect, not a login, so this crate needs no database client: a
//! test that then cannot log in fails in its own words, and the runner adds which URL it
//! used and where that URL came from.
//!
//! Tests also create their own databases under a name no other run (a concurrent one, or
//! an earlier one that crashed) uses ([`unique_database_name`]) and point the server's
//! URL at them ([`with_database`]). Creating and dropping the databases needs the
//! database client crates, so the tests keep that part (behind a `Drop` guard, so a
//! failing test drops them too).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The PostgreSQL server tests use, as an admin URL (`postgres://postgres@127.0.0.1:5432/postgres`).
pub const POSTGRES_URL_ENV: &str = "CONCORD_TEST_POSTGRES_URL";
/// The MariaDB server tests use, as an admin URL (`mysql://root@127.0.0.1:3306/test`).
pub const MYSQL_URL_ENV: &str = "CONCORD_TEST_MYSQL_URL";

/// How long the probe of a server's address waits for a TCP connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A database server some tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// PostgreSQL, from `CONCORD_TEST_POSTGRES_URL`.
    Postgres,
    /// MariaDB (or MySQL), from `CONCORD_TEST_MYSQL_URL`.
    Mysql,
}

impl Server {
    /// The environment variable naming this server's admin URL.
    pub fn env_var(self) -> &'static str {
        match self {
            Server::Postgres => POSTGRES_URL_ENV,
            Server::Mysql => MYSQL_URL_ENV,
        }
    }

    /// The URL of a local server installed the usual way for tests (trust or empty-password
    /// login as the admin user), used when the variable is unset.
    pub fn default_url(self) -> &'static str {
        match self {
            Server::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
            Server::Mysql => "mysql://root@127.0.0.1:3306/test",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Server::Postgres => 5432,
            Server::Mysql => 3306,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Server::Postgres => "PostgreSQL",
            Server::Mysql => "MariaDB",
        }
    }
}

/// What the tests of one binary do about one server; decided once ([`availability`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Run the tests against `url`; `from_env` says whether the variable named it (else
    /// it is the usual local URL).
    Use {
        /// The admin URL.
        url: String,
        /// Whether the URL came from the environment variable.
        from_env: bool,
    },
    /// The variable names a server that does not answer: the tests fail with this message.
    Broken(String),
    /// The tests are not run (reported as ignored) for this reason.
    NotRun(String),
}

/// The decision for `server` in this process: made on first use, from the environment and
/// a probe of the address, and kept for every later test of the binary.
pub fn availability(server: Server) -> &'static Availability {
    static POSTGRES: OnceLock<Availability> = OnceLock::new();
    static MYSQL: OnceLock<Availability> = OnceLock::new();
    let cell = match server {
        Server::Postgres => &POSTGRES,
        Server::Mysql => &MYSQL,
    };
    cell.get_or_init(|| decide(server, std::env::var(server.env_var()), probe))
}

/// The rule of the module docs, given the variable's value and a probe that says whether
/// something accepts connections at `host:port` (kept apart so it can be tested).
pub fn decide(
    server: Server,
    var: Result<String, std::env::VarError>,
    probe: impl Fn(&str, u16) -> Result<(), String>,
) -> Availability {
    let var_name = server.env_var();
    match var {
        Err(std::env::VarError::NotPresent) => {
            let port = server.default_port();
            match probe("127.0.0.1", port) {
                Ok(()) => Availability::Use {
                    url: server.default_url().to_owned(),
                    from_env: false,
                },
                Err(e) => Availability::NotRun(format!(
                    "{var_name} not set and no {} at 127.0.0.1:{port}: {e}",
                    server.name()
                )),
            }
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Availability::Broken(format!("{var_name} is not valid UTF-8"))
        }
        Ok(url) if url.trim().is_empty() => Availability::NotRun(format!("{var_name} is empty")),
        Ok(url) => {
            let url = url.trim().to_owned();
            // A URL whose address this cannot read (a Unix socket in the query, say) is
            // used as it is: the test's own connection says what is wrong with it.
            if let Some((host, port)) = host_port(&url, server.default_port())
                && let Err(e) = probe(&host, port)
            {
                return Availability::Broken(format!(
                    "{var_name}={} names a {} that does not answer at {host}:{port}: {e} \
                         (set {var_name} to the empty string to not run these tests)",
                    redacted(&url),
                    server.name()
                ));
            }
            Availability::Use {
                url,
                from_env: true,
            }
        }
    }
}

/// Whether something accepts a TCP connection at `host:port` within [`PROBE_TIMEOUT`].
fn probe(host: &str, port: u16) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// The host and port of a `scheme://[user[:password]@]host[:port][/db][?query]` URL, or
/// `None` when it names no host (a Unix socket given in the query, for instance).
fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        // An IPv6 literal: `[::1]:5432`.
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    Some((host.to_owned(), port))
}

/// `url` with its password, if any, replaced by `***`, for messages that CI logs keep.
fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!(
                "{}{user}:***@{host}{}",
                &url[..scheme_end],
                &url[authority_end..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The admin URLs a test was given, one per server it needs.
#[derive(Debug, Default)]
pub struct Urls(Vec<(Server, String)>);

impl Urls {
    /// The URL of `server` (empty if the test did not declare that it needs it, which the
    /// [`server_tests!`](crate::server_tests) macro rules out).
    pub fn get(&self, server: Server) -> &str {
        self.0
            .iter()
            .find(|(s, _)| *s == server)
            .map_or("", |(_, url)| url.as_str())
    }
}

/// One test for [`run_tests`]: `test` runs with the URLs of the servers in `needs`, is
/// ignored (with the reason) when one of them is not to be run, and fails when one of
/// them is broken. A test that panics fails with its message and the URLs it used.
pub fn trial<F>(name: &str, needs: &[Server], test: F) -> Trial
where
    F: FnOnce(&Urls) + Send + 'static,
{
    let needs = needs.to_vec();
    Trial::ignorable_test(name, move || {
        let decisions: Vec<(Server, &Availability)> =
            needs.iter().map(|&s| (s, availability(s))).collect();
        // A broken server fails the test even if another one is merely absent.
        for (_, decision) in &decisions {
            if let Availability::Broken(message) = decision {
                return Err(Failed::from(message));
            }
        }
        let mut urls = Urls::default();
        let mut used = Vec::new();
        for (server, decision) in decisions {
            match decision {
                Availability::Use { url, from_env } => {
                    used.push(if *from_env {
                        format!("{} from {}", redacted(url), server.env_var())
                    } else {
                        format!(
                            "{} (the usual local URL, as {} is not set; set it to your \
                             server's admin URL, or to the empty string to not run these tests)",
                            url,
                            server.env_var()
                        )
                    });
                    urls.0.push((server, url.clone()));
                }
                Availability::NotRun(reason) => return Ok(Completion::ignored_with(reason)),
                Availability::Broken(_) => {}
            }
        }
        catch_unwind(AssertUnwindSafe(|| test(&urls)))
            .map(|()| Completion::Completed)
            .map_err(|payload| {
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                let mut text = format!("test panicked: {message}");
                for server in used {
                    text.push_str("\nserver: ");
                    text.push_str(&server);
                }
                Failed::from(text)
            })
    })
}

/// Runs `trials` as libtest would (name filters, `--include-ignored`, `--nocapture`,
/// `--test-threads` or `RUST_TEST_THREADS`, `--list`, and the closing `test result:` line) and returns the
/// process's exit code. The `main` of a [`server_tests!`](crate::server_tests) binary.
pub fn run_tests(trials: Vec<Trial>) -> ExitCode {
    let mut args = Arguments::from_args();
    // libtest also reads the thread count from the environment; libtest-mimic does not.
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .filter(|&n: &usize| n > 0);
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Declares the tests of a `harness = false` test binary, and its `main`, so that each
/// test is listed exactly once and tests whose server is not available are reported as
/// ignored with the reason (see [`servers`](crate::servers) for the rule).
///
/// Each test is written as a function whose parameters name the servers it needs, by
/// kind (`postgres` or `mysql`); each becomes a `&str` holding that server's admin URL.
/// A test with no parameters needs no server and always runs. Doc comments and other
/// attributes are kept on the generated functions.
///
/// The test file needs `[[test]] name = "<file>"` with `harness = false` in its crate's
/// `Cargo.toml`. The usual command line works (name filters, `--exact`, `--list`,
/// `--test-threads`, `--include-ignored`); unlike libtest's, this runner does not capture
/// a passing test's output, so what a test prints always shows.
///
/// ```text
/// concord_harness::server_tests! {
///     /// Both databases converge.
///     fn converge(server: postgres) { /* server: &str */ }
///     fn across(pg: postgres, my: mysql) { /* ... */ }
///     fn pure() { /* no server */ }
/// }
/// ```
#[macro_export]
macro_rules! server_tests {
    (@server postgres) => { $crate::servers::Server::Postgres };
    (@server mysql) => { $crate::servers::Server::Mysql };
    ($(
        $(#[$attr:meta])*
        fn $name:ident ( $($arg:ident : $kind:ident),* $(,)? ) $body:block
    )*) => {
        $(
            $(#[$attr])*
            fn $name($($arg: &str),*) $body
        )*

        // Under the default test harness the `main` below never runs and the file would
        // report "0 tests", silently: this test fails instead. (With `harness = false`,
        // as such a file needs, `#[test]` functions are not compiled at all.)
        #[test]
        fn this_file_needs_harness_false_in_cargo_toml() {
            ::std::panic!(
                "the tests of this file did not run: add `[[test]] name = \"{}\" harness = false` to its crate's Cargo.toml",
                ::std::module_path!()
            );
        }

        fn main() -> ::std::process::ExitCode {
            $crate::servers::run_tests(::std::vec![$(
                $crate::servers::trial(
                    ::std::stringify!($name),
                    &[$($crate::server_tests!(@server $kind)),*],
                    |_urls: &$crate::servers::Urls| {
                        $name($(_urls.get($crate::server_tests!(@server $kind))),*)
                    },
                )
            ),*])
        }
    };
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

/// Drops a test database of the PostgreSQL server at `admin_url`, with its replication
/// slots. A log reader still attached (a node that is stopping) keeps its slot active,
/// and `DROP DATABASE` then fails: the database would stay, and its slot would keep the
/// server's WAL forever (it filled this machine's disk once). So the readers are
/// ended first, and the drop is retried for up to 10 s; a failure is printed, never
/// ignored silently.
pub fn drop_postgres_database(admin_url: &str, name: &str) {
    let mut client = match postgres::Client::connect(admin_url, postgres::NoTls) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("could not connect to drop test database {name}: {e}");
            return;
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let _ = client.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE database = $1 AND active_pid IS NOT NULL",
            &[&name],
        );
        let drop = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "\"\"")
        );
        match client.batch_execute(&drop) {
            Ok(()) => return,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                eprintln!("could not drop test database {name}: {e}");
                return;
            }
        }
    }
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

    fn no_probe(_: &str, _: u16) -> Result<(), String> {
        panic!("the probe must not run")
    }

    #[test]
    fn a_set_variable_is_used_and_a_dead_one_fails_naming_the_url() {
        let live = decide(
            Server::Postgres,
            Ok(" postgres://u@db.example:5433/x ".into()),
            |host, port| {
                assert_eq!((host, port), ("db.example", 5433));
                Ok(())
            },
        );
        assert_eq!(
            live,
            Availability::Use {
                url: "postgres://u@db.example:5433/x".into(),
                from_env: true
            }
        );
        let dead = decide(
            Server::Mysql,
            Ok("mysql://root:secret@127.0.0.1/test".into()),
            |_, _| Err("Connection refused".into()),
        );
        let Availability::Broken(message) = dead else {
            panic!("a dead server named by the variable must fail, got {dead:?}")
        };
        assert!(
            message.contains("CONCORD_TEST_MYSQL_URL=mysql://root:***@127.0.0.1/test"),
            "{message}"
        );
        assert!(message.contains("127.0.0.1:3306"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn an_empty_variable_means_not_run_without_probing() {
        assert_eq!(
            decide(Server::Postgres, Ok(String::new()), no_probe),
            Availability::NotRun("CONCORD_TEST_POSTGRES_URL is empty".into())
        );
    }

    #[test]
    fn an_unset_variable_uses_the_usual_url_only_if_it_answers() {
        let unset = || Err(std::env::VarError::NotPresent);
        assert_eq!(
            decide(Server::Mysql, unset(), |host, port| {
                assert_eq!((host, port), ("127.0.0.1", 3306));
                Ok(())
            }),
            Availability::Use {
                url: "mysql://root@127.0.0.1:3306/test".into(),
                from_env: false
            }
        );
        let down = decide(Server::Postgres, unset(), |_, _| {
            Err("Connection refused".into())
        });
        let Availability::NotRun(reason) = down else {
            panic!("an absent local server must mean not run, got {down:?}")
        };
        assert!(
            reason.contains("CONCORD_TEST_POSTGRES_URL not set"),
            "{reason}"
        );
        assert!(reason.contains("127.0.0.1:5432"), "{reason}");
    }

    #[test]
    fn addresses_are_read_from_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/postgres", 1),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            host_port("mysql://root:p@ss@db?x=1", 3306),
            Some(("db".into(), 3306))
        );
        assert_eq!(
            host_port("postgres://u@[::1]:6000/d", 5432),
            Some(("::1".into(), 6000))
        );
        // A Unix socket in the query: no address to probe.
        assert_eq!(host_port("postgres:///db?host=/run/postgresql", 5432), None);
        assert_eq!(redacted("mysql://root@h:1/t"), "mysql://root@h:1/t");
        assert_eq!(redacted("mysql://a:b@h/t?x"), "mysql://a:***@h/t?x");
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
