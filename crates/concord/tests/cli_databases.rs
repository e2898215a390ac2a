//! `concord init`, `conflicts`, `failures` and `info` against nodes over PostgreSQL and
//! MariaDB, through the real binary.
//!
//! Risks covered:
//! * `init` accepting a server table `serve` would refuse (missing, no primary key, a
//!   column type the store cannot replicate), reporting one problem per attempt, or
//!   leaving a directory behind;
//! * `conflicts`, `failures` and `info` unable to reach a server node's store (they
//!   once took only a SQLite file), or showing encoded bytes instead of values;
//! * looking at a node's store changing it;
//! * PostgreSQL NOTICEs logged on every start, and colour codes in redirected logs.
//!
//! Each test is a plain function of the server's admin URL, run through
//! `concord_harness::server_tests!` (the local servers by default, `ignored` with the
//! reason when one is missing); each creates its own database under a unique name and
//! drops it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use concord_harness::servers;
use concord_sqlite::{SqliteStore, StoreOptions};
use concord_store::{Store, pull};

fn concord(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CONCORD_LOG")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "expected success, got {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fails(out: Output) -> String {
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "expected a clean failure, got {}: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The two servers, behind one interface: create and drop a database, run SQL in it,
/// track it as `serve` does.
trait Server {
    fn kind(&self) -> &'static str;
    fn admin(&self, sql: &str);
    fn url(&self, db: &str) -> String;
    fn run(&self, db: &str, sql: &str);
    fn track(&self, db: &str) -> Box<dyn Store>;
    fn drop_database(&self, db: &str);
    /// The user table, with a CHECK the SQLite side lacks (to refuse a change), and a
    /// table init must refuse (no primary key, a column type Concord cannot replicate).
    fn ddl(&self) -> &'static str;
}

struct Pg(String);
struct My(String);

impl Server for Pg {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn admin(&self, sql: &str) {
        postgres::Client::connect(&self.0, postgres::NoTls)
            .unwrap()
            .batch_execute(sql)
            .unwrap();
    }
    fn url(&self, db: &str) -> String {
        servers::with_database(&self.0, db)
    }
    fn run(&self, db: &str, sql: &str) {
        postgres::Client::connect(&self.url(db), postgres::NoTls)
            .unwrap()
            .batch_execute(sql)
            .unwrap();
    }
    fn track(&self, db: &str) -> Box<dyn Store> {
        Box::new(
            concord_postgres::PgStore::track(&self.url(db), &["t"], StoreOptions::default())
                .unwrap(),
        )
    }
    fn drop_database(&self, db: &str) {
        concord_harness::servers::drop_postgres_database(&self.0, db);
    }
    fn ddl(&self) -> &'static str {
        "CREATE TABLE t(id bigint PRIMARY KEY, v text CHECK (length(v) < 20));
         CREATE TABLE bad(x oid, y point);"
    }
}

impl Server for My {
    fn kind(&self) -> &'static str {
        "mysql"
    }
    fn admin(&self, sql: &str) {
        use mysql::prelude::Queryable;
        mysql::Conn::new(mysql::Opts::from_url(&self.0).unwrap())
            .unwrap()
            .query_drop(sql)
            .unwrap();
    }
    fn url(&self, db: &str) -> String {
        servers::with_database(&self.0, db)
    }
    fn run(&self, db: &str, sql: &str) {
        use mysql::prelude::Queryable;
        mysql::Conn::new(mysql::Opts::from_url(&self.url(db)).unwrap())
            .unwrap()
            .query_drop(sql)
            .unwrap();
    }
    fn track(&self, db: &str) -> Box<dyn Store> {
        Box::new(
            concord_mysql::MyStore::track(&self.url(db), &["t"], StoreOptions::default()).unwrap(),
        )
    }
    fn drop_database(&self, db: &str) {
        use mysql::prelude::Queryable;
        if let Ok(mut c) = mysql::Conn::new(mysql::Opts::from_url(&self.0).unwrap()) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"));
        }
    }
    fn ddl(&self) -> &'static str {
        "CREATE TABLE t(id BIGINT PRIMARY KEY, v VARCHAR(200), CHECK (char_length(v) < 20));
         CREATE TABLE bad(x INT, g GEOMETRY);"
    }
}

/// Drops the test's database however the test ends.
struct Database<'a> {
    server: &'a dyn Server,
    name: String,
}

impl Drop for Database<'_> {
    fn drop(&mut self) {
        self.server.drop_database(&self.name);
    }
}

/// `init` refuses every problem at once and writes nothing; then a real conflict and a
/// set-aside change, made by applying changes from a SQLite replica exactly as a node
/// session does, are listed by `conflicts`, `failures` and `info --dir` with their
/// values as values.
fn a_server_node_is_checked_at_init_and_its_conflicts_failures_and_info_are_listed(
    server: &dyn Server,
) {
    let db = Database {
        server,
        name: servers::unique_database_name(&format!("concord_cli_{}", server.kind())),
    };
    server.admin(&format!("CREATE DATABASE {}", db.name));
    server.run(&db.name, server.ddl());
    let url = server.url(&db.name);
    let flag = format!("--{}", server.kind());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let err = fails(concord(
        d,
        &[
            "init",
            "--dir",
            "node",
            &flag,
            &url,
            "--tables",
            "t,bad,nosuch",
        ],
    ));
    // PostgreSQL carries every column type (others than its usual ones as text);
    // MariaDB still refuses some, each named.
    let refused_type = (server.kind() == "mysql").then_some("cannot replicate");
    for needle in ["\"nosuch\"", "does not exist", "primary key"]
        .into_iter()
        .chain(refused_type)
    {
        assert!(err.contains(needle), "init does not say {needle:?}: {err}");
    }
    assert!(!d.join("node").exists(), "a failed init left its directory");
    ok(concord(
        d,
        &["init", "--dir", "node", &flag, &url, "--tables", "t"],
    ));
    // Never served: looking says so and installs nothing.
    let err = fails(concord(d, &["conflicts", "--dir", "node"]));
    assert!(err.contains("not tracked"), "{err}");

    // The node's store, tracked as `serve` tracks it, and a SQLite replica.
    let mut node = server.track(&db.name);
    let file = d.join("replica.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    let mut replica = SqliteStore::track(&file, &["t"], StoreOptions::default()).unwrap();
    let sqlite = |sql: &str| {
        rusqlite::Connection::open(&file)
            .unwrap()
            .execute_batch(sql)
            .unwrap()
    };

    server.run(&db.name, "INSERT INTO t VALUES (1, 'base')");
    pull(node.as_mut(), &mut replica).unwrap();
    // Concurrent edits of one column: the node records a conflict when it receives the
    // replica's.
    server.run(&db.name, "UPDATE t SET v = 'from the server' WHERE id = 1");
    std::thread::sleep(Duration::from_millis(20));
    sqlite("UPDATE t SET v = 'from sqlite' WHERE id = 1");
    let report = pull(&mut replica, node.as_mut()).unwrap();
    assert!(report.conflicts >= 1, "{report:?}");
    // A value the server refuses (its CHECK): applying fails, and the node sets the
    // source transaction aside as a session would.
    sqlite("INSERT INTO t VALUES (2, 'a value far too long for the check')");
    replica.capture().unwrap();
    let changes: Vec<_> = replica
        .changes_for(node.version_vector())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let refused = node.apply_batch(&changes).unwrap_err().to_string();
    node.set_aside(&changes, &refused).unwrap();
    drop(node);

    let table = ok(concord(d, &["conflicts", "--dir", "node"]));
    for value in ["'from the server'", "'from sqlite'"] {
        assert!(
            table.contains(value),
            "conflicts does not show {value}: {table}"
        );
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok(concord(d, &["conflicts", "--dir", "node", "--json"]))).unwrap();
    let c = &listed.as_array().unwrap()[0];
    assert_eq!(c["table"], "t", "{listed}");
    assert_eq!(c["column"], "v", "{listed}");

    let failures = ok(concord(d, &["failures", "--dir", "node"]));
    assert!(
        failures.contains("ORIGIN") && failures.lines().count() == 2,
        "one set-aside change expected: {failures}"
    );
    let f: serde_json::Value =
        serde_json::from_str(&ok(concord(d, &["failures", "--dir", "node", "--json"]))).unwrap();
    let f = &f.as_array().unwrap()[0];
    assert_eq!(f["table"], "t", "{f}");
    assert_eq!(
        f["origin"].as_str().unwrap(),
        &replica.node_id().to_string()[..f["origin"].as_str().unwrap().len()],
        "{f}"
    );
    assert!(f["reason"].as_str().unwrap().contains("refused"), "{f}");

    let info: serde_json::Value =
        serde_json::from_str(&ok(concord(d, &["info", "--dir", "node", "--json"]))).unwrap();
    assert_eq!(info["store"], server.kind(), "{info}");
    assert_eq!(info["tables"], serde_json::json!(["t"]), "{info}");
    assert!(info["conflicts"].as_u64().unwrap() >= 1, "{info}");
    assert_eq!(info["failures"], 1, "{info}");
    assert!(info["log_entries"].as_u64().unwrap() >= 3, "{info}");
    let human = ok(concord(d, &["info", "--dir", "node"]));
    assert!(human.contains(server.kind()), "{human}");
}

/// Starts `concord serve --dir DIR` in `cwd`, waits for it to say it serves, stops it,
/// and returns what it wrote to standard error (redirected, as to a log file).
fn serve_once(cwd: &Path, dir: &str) -> String {
    let err_path = cwd.join(format!("{dir}.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--dir", dir])
        .current_dir(cwd)
        .env_remove("CONCORD_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().map(Result::unwrap);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        first.as_deref().is_some_and(|l| l.contains("serving")),
        "serve did not start: {first:?}\n{stderr}"
    );
    stderr
}

/// PostgreSQL's NOTICEs for Concord's idempotent DDL (`relation ... already exists,
/// skipping`) were logged at INFO on every start, and colour codes went into redirected
/// logs.
fn restart_a_postgres_node_twice_and_read_its_logs(admin: &str) {
    let server = Pg(admin.to_owned());
    let db = Database {
        server: &server,
        name: servers::unique_database_name("concord_cli_notice"),
    };
    server.admin(&format!("CREATE DATABASE {}", db.name));
    server.run(&db.name, "CREATE TABLE t(id bigint PRIMARY KEY, v text)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url(&db.name);
    ok(concord(
        d,
        &["init", "--dir", "node", "--postgres", &url, "--tables", "t"],
    ));
    for start in ["first", "second"] {
        let log = serve_once(d, "node");
        assert!(
            !log.contains("skipping") && !log.contains("NOTICE"),
            "{start} start logged PostgreSQL notices:\n{log}"
        );
        assert!(
            !log.contains('\u{1b}'),
            "{start} start wrote colour codes into a redirected log:\n{log}"
        );
        assert!(log.contains("node started"), "{log}");
    }
}

concord_harness::server_tests! {
    fn a_postgres_node_is_checked_at_init_and_its_conflicts_failures_and_info_are_listed(url: postgres) {
        a_server_node_is_checked_at_init_and_its_conflicts_failures_and_info_are_listed(&Pg(url.to_owned()));
    }
    fn a_mariadb_node_is_checked_at_init_and_its_conflicts_failures_and_info_are_listed(url: mysql) {
        a_server_node_is_checked_at_init_and_its_conflicts_failures_and_info_are_listed(&My(url.to_owned()));
    }
    fn a_restarted_postgres_node_logs_no_notices_and_no_colour_codes(url: postgres) {
        restart_a_postgres_node_twice_and_read_its_logs(url);
    }
}
