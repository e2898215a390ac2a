//! # concord-conformance: one suite, every store
//!
//! The three stores (SQLite, PostgreSQL, MariaDB) promise the same things: an initial
//! load that loses and duplicates nothing, refused input named and set aside with its
//! source transaction, local writes that commit while an apply waits captured first, a
//! lost connection that leaves nothing half applied. This crate lets a test say so once
//! and run against each kind of store:
//!
//! - [`Kind`]: a kind of store, with the few words of SQL that differ between them
//!   ([`Kind::sql`] renders `{int}`, `{text}`, `{blob}`, `{real}` in a DDL template;
//!   [`Kind::series`] is the rows `1..=n`).
//! - [`StoreUnderTest`]: what a test is given: its kind, and [`StoreUnderTest::database`]
//!   to create as many fresh databases of that kind as it needs (a SQLite file in a
//!   temporary directory; a PostgreSQL or MariaDB database with a unique name, dropped
//!   when the [`Database`] is dropped, pass or fail).
//! - [`Database`]: a fresh database. [`Database::track`] and [`Database::open`] give a
//!   [`Tracked`] store (a `dyn concord_store::Store` through `Deref`, with the concrete
//!   store kept for what only it exposes, such as its pending count);
//!   [`Database::client`], [`Database::execute`] and [`Database::rows`] run SQL on its own
//!   connection, as an application would, knowing nothing of Concord.
//! - [`run_suite`]: the `main` of a `harness = false` test binary. Each [`Case`] becomes
//!   one test per kind, named `<case>::<kind>`; a kind whose server is not available is
//!   reported as ignored with the variable to set (the rule of
//!   `concord_harness::servers`), and a kind a case cannot apply to is reported as
//!   ignored with the reason the case gives, by name: nothing passes by not running.
//!
//! The tests and benches that drive several kinds of store at once (a PostgreSQL source
//! and MariaDB and SQLite destinations) live here too, so no store crate depends on the
//! others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::ExitCode;

use concord_core::{Change, VersionVector};
use concord_harness::servers::{self, Server, Urls};
use concord_mysql::MyStore;
use concord_postgres::PgStore;
use concord_sqlite::SqliteStore;
use concord_store::{Store, StoreOptions};
use libtest_mimic::{Completion, Trial};
use mysql::prelude::Queryable;

/// A kind of store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A SQLite file, `concord-sqlite`.
    Sqlite,
    /// A PostgreSQL database, `concord-postgres`.
    Postgres,
    /// A MariaDB (or MySQL) database, `concord-mysql`.
    Mariadb,
}

impl Kind {
    /// Every kind, in the order the suite runs them.
    pub const ALL: [Kind; 3] = [Kind::Sqlite, Kind::Postgres, Kind::Mariadb];

    /// The kind's name in test names: `sqlite`, `postgres`, `mariadb`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Mariadb => "mariadb",
        }
    }

    /// The server the kind needs, if any.
    pub fn server(self) -> Option<Server> {
        match self {
            Kind::Sqlite => None,
            Kind::Postgres => Some(Server::Postgres),
            Kind::Mariadb => Some(Server::Mysql),
        }
    }

    /// `template` with its type words in this kind's dialect: `{int}` a 64-bit integer,
    /// `{text}` unbounded text, `{blob}` bytes, `{real}` a double.
    pub fn sql(self, template: &str) -> String {
        let [int, text, blob, real] = match self {
            Kind::Sqlite => ["INTEGER", "TEXT", "BLOB", "REAL"],
            Kind::Postgres => ["bigint", "text", "bytea", "double precision"],
            Kind::Mariadb => ["BIGINT", "TEXT", "LONGBLOB", "DOUBLE"],
        };
        template
            .replace("{int}", int)
            .replace("{text}", text)
            .replace("{blob}", blob)
            .replace("{real}", real)
    }

    /// A literal of the bytes `hex` (hexadecimal digits).
    pub fn bytes(self, hex: &str) -> String {
        match self {
            Kind::Sqlite | Kind::Mariadb => format!("X'{hex}'"),
            Kind::Postgres => format!("'\\x{hex}'::bytea"),
        }
    }

    /// An expression of `n` bytes, each the ASCII letter `letter`.
    pub fn repeated_bytes(self, letter: char, n: usize) -> String {
        match self {
            Kind::Sqlite => format!("CAST(replace(hex(zeroblob({n})), '00', '{letter}') AS BLOB)"),
            Kind::Postgres => format!("convert_to(repeat('{letter}', {n}), 'UTF8')"),
            Kind::Mariadb => format!("REPEAT('{letter}', {n})"),
        }
    }

    /// A subquery of the rows `1..=n` in one integer column `i`, for `FROM`.
    pub fn series(self, n: u64) -> String {
        match self {
            Kind::Sqlite => format!(
                "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
                 SELECT i FROM s) AS series"
            ),
            Kind::Postgres => format!("(SELECT generate_series(1, {n})::bigint AS i) AS series"),
            Kind::Mariadb => format!("(SELECT seq AS i FROM seq_1_to_{n}) AS series"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one test of the suite is given: the kind of store under test and, for a
/// server, the admin URL of the server to create its databases on.
pub struct StoreUnderTest {
    kind: Kind,
    admin_url: String,
    dir: tempfile::TempDir,
}

impl StoreUnderTest {
    /// A store of `kind` on the server at `admin_url` (ignored for SQLite).
    pub fn new(kind: Kind, admin_url: &str) -> Self {
        StoreUnderTest {
            kind,
            admin_url: admin_url.to_owned(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// The kind under test.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `template` in the kind's dialect ([`Kind::sql`]).
    pub fn sql(&self, template: &str) -> String {
        self.kind.sql(template)
    }

    /// A fresh, empty database of the kind, in which `ddl` (statements separated by `;`,
    /// in the kind's dialect: see [`StoreUnderTest::sql`]) has run.
    pub fn database(&self, ddl: &str) -> Database {
        let place = match self.kind {
            Kind::Sqlite => {
                let path = self
                    .dir
                    .path()
                    .join(format!("{}.db", servers::unique_database_name("db")));
                Place::File(path)
            }
            Kind::Postgres => {
                let name = servers::unique_database_name("concord_test_conf");
                let mut admin = postgres::Client::connect(&self.admin_url, postgres::NoTls)
                    .expect("connect to the PostgreSQL server");
                admin
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap();
                Place::Postgres {
                    url: servers::with_database(&self.admin_url, &name),
                    admin_url: self.admin_url.clone(),
                    name,
                }
            }
            Kind::Mariadb => {
                let name = servers::unique_database_name("concord_test_conf");
                let mut admin = mysql::Conn::new(mysql::Opts::from_url(&self.admin_url).unwrap())
                    .expect("connect to the MariaDB server");
                admin
                    .query_drop(format!("CREATE DATABASE `{name}`"))
                    .unwrap();
                Place::Mysql {
                    url: servers::with_database(&self.admin_url, &name),
                    admin_url: self.admin_url.clone(),
                    name,
                }
            }
        };
        let db = Database {
            kind: self.kind,
            place,
        };
        if !ddl.trim().is_empty() {
            db.execute(ddl);
        }
        db
    }
}

/// Where a test database is.
enum Place {
    File(PathBuf),
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
    Mysql {
        url: String,
        admin_url: String,
        name: String,
    },
}

/// A database created for one test, removed when dropped.
pub struct Database {
    kind: Kind,
    place: Place,
}

impl Database {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What a store opens: the file's path, or the database's URL.
    pub fn location(&self) -> String {
        match &self.place {
            Place::File(path) => path.display().to_string(),
            Place::Postgres { url, .. } | Place::Mysql { url, .. } => url.clone(),
        }
    }

    /// The database's name on its server (the file's name for SQLite).
    pub fn name(&self) -> String {
        match &self.place {
            Place::File(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Place::Postgres { name, .. } | Place::Mysql { name, .. } => name.clone(),
        }
    }

    /// Tracks `tables` with the default options.
    pub fn track(&self, tables: &[&str]) -> Tracked {
        self.try_track(tables, StoreOptions::default())
            .unwrap_or_else(|e| panic!("track {tables:?} in {}: {e}", self.kind))
    }

    /// Tracks `tables` with `options`, or says why not.
    pub fn try_track(
        &self,
        tables: &[&str],
        options: StoreOptions,
    ) -> Result<Tracked, concord_store::TrackError> {
        Ok(match &self.place {
            Place::File(path) => Tracked::Sqlite(SqliteStore::track(path, tables, options)?),
            Place::Postgres { url, .. } => Tracked::Postgres(PgStore::track(url, tables, options)?),
            Place::Mysql { url, .. } => Tracked::Mysql(MyStore::track(url, tables, options)?),
        })
    }

    /// Opens the store of a database tracked before.
    pub fn open(&self) -> Tracked {
        match &self.place {
            Place::File(path) => Tracked::Sqlite(SqliteStore::open(path).unwrap()),
            Place::Postgres { url, .. } => Tracked::Postgres(PgStore::open(url).unwrap()),
            Place::Mysql { url, .. } => Tracked::Mysql(MyStore::open(url).unwrap()),
        }
    }

    /// A new connection of its own, as an application opens one.
    pub fn client(&self) -> Client {
        match &self.place {
            Place::File(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                // Wait for Concord's write transactions instead of failing, and enforce
                // foreign keys, as an application that declares them would.
                conn.busy_timeout(std::time::Duration::from_secs(30))
                    .unwrap();
                conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
                Client::Sqlite(conn)
            }
            Place::Postgres { url, .. } => {
                Client::Postgres(postgres::Client::connect(url, postgres::NoTls).unwrap())
            }
            Place::Mysql { url, .. } => {
                Client::Mysql(mysql::Conn::new(mysql::Opts::from_url(url).unwrap()).unwrap())
            }
        }
    }

    /// Runs `sql` (one or more statements) on a new connection; panics naming the SQL if
    /// it fails.
    pub fn execute(&self, sql: &str) {
        if let Err(e) = self.client().execute(sql) {
            panic!("{} refused {sql:?}: {e}", self.kind);
        }
    }

    /// The rows `query` returns, each value as text (`None` for NULL).
    pub fn rows(&self, query: &str) -> Vec<Row> {
        self.client()
            .rows(query)
            .unwrap_or_else(|e| panic!("{} refused {query:?}: {e}", self.kind))
    }

    /// The single integer `query` returns (a count, a quantity).
    pub fn number(&self, query: &str) -> i64 {
        let rows = self.rows(query);
        let [row] = rows.as_slice() else {
            panic!("{query:?} returned {} rows", rows.len())
        };
        let text = row.first().cloned().flatten().unwrap_or_default();
        text.parse()
            .unwrap_or_else(|_| panic!("{query:?} returned {text:?}, not an integer"))
    }

    /// Ends the server session `id` ([`Tracked::server_session`]) from a connection of
    /// its own, as a server restart, a failover or an administrator would.
    pub fn end_session(&self, id: u64) {
        match self.kind {
            Kind::Sqlite => panic!("a SQLite database has no server session"),
            Kind::Postgres => assert_eq!(
                self.number(&format!(
                    "SELECT CASE WHEN pg_terminate_backend({id}) THEN 1 ELSE 0 END"
                )),
                1,
                "session {id} was terminated"
            ),
            Kind::Mariadb => self.execute(&format!("KILL CONNECTION {id}")),
        }
    }

    /// Every row of `table`, ordered by `order`.
    pub fn dump(&self, table: &str, order: &str) -> Vec<Row> {
        self.rows(&format!("SELECT * FROM {table} ORDER BY {order}"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        match &self.place {
            // The file goes with the test's temporary directory.
            Place::File(_) => {}
            Place::Postgres {
                admin_url, name, ..
            } => servers::drop_postgres_database(admin_url, name),
            Place::Mysql {
                admin_url, name, ..
            } => {
                let dropped = mysql::Opts::from_url(admin_url)
                    .map_err(|e| e.to_string())
                    .and_then(|o| mysql::Conn::new(o).map_err(|e| e.to_string()))
                    .and_then(|mut admin| {
                        admin
                            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                            .map_err(|e| e.to_string())
                    });
                if let Err(e) = dropped {
                    eprintln!("could not drop test database {name}: {e}");
                }
            }
        }
    }
}

/// One row read back as text, a value per column (`None` for NULL).
pub type Row = Vec<Option<String>>;

/// An application's connection to a test database, with no Concord code in it.
pub enum Client {
    /// A `rusqlite` connection (busy timeout 30 s, foreign keys enforced).
    Sqlite(rusqlite::Connection),
    /// A `postgres` client.
    Postgres(postgres::Client),
    /// A `mysql` connection (text protocol for what [`Client::execute`] runs).
    Mysql(mysql::Conn),
}

/// A statement a [`Client`] ran that the database refused, with its words.
#[derive(Debug)]
pub struct ClientError {
    /// The database's message.
    pub message: String,
    /// Whether the database chose this transaction as a deadlock or serialization
    /// victim (the application would retry it).
    pub retryable: bool,
    /// Whether the connection is unusable now.
    pub closed: bool,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Client {
    /// Runs `sql`, one or more statements.
    pub fn execute(&mut self, sql: &str) -> Result<(), ClientError> {
        match self {
            Client::Sqlite(conn) => conn.execute_batch(sql).map_err(|e| ClientError {
                retryable: matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ),
                message: e.to_string(),
                closed: false,
            }),
            Client::Postgres(client) => client.batch_execute(sql).map_err(|e| ClientError {
                retryable: e.code().is_some_and(|c| {
                    c == &postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                        || c == &postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                }),
                closed: client.is_closed() || e.code().is_none(),
                message: e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| format!("{}: {}", d.code().code(), d.message())),
            }),
            Client::Mysql(conn) => conn.query_drop(sql).map_err(|e| ClientError {
                retryable: matches!(&e, mysql::Error::MySqlError(s) if s.code == 1213 || s.code == 1205),
                closed: !matches!(&e, mysql::Error::MySqlError(_)),
                message: e.to_string(),
            }),
        }
    }

    /// Runs `statements` in one transaction: committed whole, or rolled back (and the
    /// error returned) at the first refusal.
    pub fn transaction(&mut self, statements: &[String]) -> Result<(), ClientError> {
        let begin = match self {
            // Take the write lock at once, as an application that writes should.
            Client::Sqlite(_) => "BEGIN IMMEDIATE",
            Client::Postgres(_) | Client::Mysql(_) => "BEGIN",
        };
        self.execute(begin)?;
        for statement in statements {
            if let Err(e) = self.execute(statement) {
                let _ = self.execute("ROLLBACK");
                return Err(e);
            }
        }
        self.execute("COMMIT").inspect_err(|_| {
            let _ = self.execute("ROLLBACK");
        })
    }

    /// The rows `query` returns, each value as text.
    pub fn rows(&mut self, query: &str) -> Result<Vec<Row>, String> {
        match self {
            Client::Sqlite(conn) => {
                let mut stmt = conn.prepare(query).map_err(|e| e.to_string())?;
                let n = stmt.column_count();
                let rows = stmt
                    .query_map([], |r| {
                        (0..n)
                            .map(|i| {
                                Ok(match r.get_ref(i)? {
                                    rusqlite::types::ValueRef::Null => None,
                                    rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                                    rusqlite::types::ValueRef::Real(v) => Some(v.to_string()),
                                    rusqlite::types::ValueRef::Text(t) => {
                                        Some(String::from_utf8_lossy(t).into_owned())
                                    }
                                    rusqlite::types::ValueRef::Blob(b) => Some(hex(b)),
                                })
                            })
                            .collect::<rusqlite::Result<Row>>()
                    })
                    .map_err(|e| e.to_string())?;
                rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
            }
            Client::Postgres(client) => Ok(client
                .simple_query(query)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()),
            Client::Mysql(conn) => {
                let rows: Vec<mysql::Row> = conn.query(query).map_err(|e| e.to_string())?;
                Ok(rows
                    .into_iter()
                    .map(|row| {
                        row.unwrap()
                            .into_iter()
                            .map(|v| match v {
                                mysql::Value::NULL => None,
                                // Bytes that are not text are shown in hex, never
                                // mangled, so two binary values compare exactly.
                                mysql::Value::Bytes(b) => Some(
                                    String::from_utf8(b)
                                        .unwrap_or_else(|e| format!("x'{}'", hex(e.as_bytes()))),
                                ),
                                other => Some(other.as_sql(true)),
                            })
                            .collect()
                    })
                    .collect())
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tracked store of any kind: a `dyn Store` (through `Deref`), with the concrete store
/// kept for what only it exposes.
// A few per test: the size of the largest store is of no consequence.
#[allow(clippy::large_enum_variant)]
pub enum Tracked {
    /// A SQLite store.
    Sqlite(SqliteStore),
    /// A PostgreSQL store.
    Postgres(PgStore),
    /// A MariaDB store.
    Mysql(MyStore),
}

impl Tracked {
    /// Writes recorded by capture triggers and not yet folded into the log.
    pub fn pending_len(&mut self) -> u64 {
        match self {
            Tracked::Sqlite(s) => s.pending_len(),
            Tracked::Postgres(s) => s.pending_len(),
            Tracked::Mysql(s) => s.pending_len(),
        }
        .unwrap()
    }

    /// Every change in the store's log, in log order.
    pub fn all_changes(&self) -> Vec<Change> {
        all_changes(&**self)
    }

    /// The store as a `Box<dyn Store>`, as a node holds it.
    pub fn boxed(self) -> Box<dyn Store> {
        match self {
            Tracked::Sqlite(s) => Box::new(s),
            Tracked::Postgres(s) => Box::new(s),
            Tracked::Mysql(s) => Box::new(s),
        }
    }

    /// The id of the store's own server session (PostgreSQL's backend pid, MariaDB's
    /// connection id), to end it from elsewhere with [`Database::end_session`]; `None`
    /// for a store with no server.
    pub fn server_session(&mut self) -> Option<u64> {
        match self {
            Tracked::Sqlite(_) => None,
            Tracked::Postgres(store) => {
                let pid: i32 = store
                    .client()
                    .query_one("SELECT pg_backend_pid()", &[])
                    .unwrap()
                    .get(0);
                Some(pid as u64)
            }
            Tracked::Mysql(store) => store.conn().query_first("SELECT CONNECTION_ID()").unwrap(),
        }
    }
}

impl Deref for Tracked {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            Tracked::Sqlite(s) => s,
            Tracked::Postgres(s) => s,
            Tracked::Mysql(s) => s,
        }
    }
}

impl DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut (dyn Store + 'static) {
        match self {
            Tracked::Sqlite(s) => s,
            Tracked::Postgres(s) => s,
            Tracked::Mysql(s) => s,
        }
    }
}

/// Every change in a store's log, in log order.
pub fn all_changes(store: &dyn Store) -> Vec<Change> {
    store
        .changes_for(&VersionVector::new())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One test of the suite, run once per kind.
pub struct Case {
    /// The test's name, after the risk it covers.
    pub name: &'static str,
    /// The test.
    pub run: fn(&StoreUnderTest),
    /// Kinds the test cannot apply to, each with the reason, reported by name as ignored.
    pub not_for: &'static [(Kind, &'static str)],
}

/// A [`Case`] that applies to every kind.
#[macro_export]
macro_rules! case {
    ($test:path) => {
        $crate::case!($test, &[])
    };
    ($test:path, $not_for:expr) => {
        $crate::Case {
            name: ::std::stringify!($test),
            run: $test,
            not_for: $not_for,
        }
    };
}

/// The trials of `cases`, one per case and kind, named `<case>::<kind>`.
pub fn trials(cases: &[Case]) -> Vec<Trial> {
    let mut trials = Vec::new();
    for case in cases {
        let short = case.name.rsplit("::").next().unwrap_or(case.name);
        let module = case.name.rsplit("::").nth(1);
        let base = match module {
            Some(module) => format!("{module}::{short}"),
            None => short.to_owned(),
        };
        for kind in Kind::ALL {
            let name = format!("{base}::{kind}");
            if let Some((_, reason)) = case.not_for.iter().find(|(k, _)| *k == kind) {
                let reason = format!("{kind} cannot run this case: {reason}");
                trials.push(Trial::ignorable_test(name, move || {
                    Ok(Completion::ignored_with(reason))
                }));
                continue;
            }
            let run = case.run;
            let needs: Vec<Server> = kind.server().into_iter().collect();
            trials.push(servers::trial(&name, &needs, move |urls: &Urls| {
                let url = kind.server().map_or("", |s| urls.get(s));
                run(&StoreUnderTest::new(kind, url));
            }));
        }
    }
    trials
}

/// The `main` of a `harness = false` binary of [`Case`]s (and any other trials).
pub fn run_suite(cases: &[Case], more: Vec<Trial>) -> ExitCode {
    let mut all = trials(cases);
    all.extend(more);
    servers::run_tests(all)
}
