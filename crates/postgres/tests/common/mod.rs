//! Shared helpers: a throwaway database per test on the PostgreSQL server the test is
//! given, dropped when the test ends (pass or fail). Which server, and whether the tests
//! run at all, is decided once in `concord_harness::servers` (`CONCORD_TEST_POSTGRES_URL`,
//! else the usual local server if it answers, else the tests are reported as ignored).
#![allow(dead_code, unreachable_pub)]

use concord_postgres::Store as _;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use concord_core::{Change, VersionVector};
use concord_postgres::PgStore;
use postgres::{Client, NoTls};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database created for one test and dropped at the end.
pub struct TestDb {
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates an empty database and runs `ddl` in it.
    pub fn new(server: &str, ddl: &str) -> Self {
        let name = format!(
            "concord_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = Client::connect(server, NoTls).expect("connect to the test server");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = TestDb {
            url: concord_harness::servers::with_database(server, &name),
            name,
            admin_url: server.to_owned(),
        };
        if !ddl.is_empty() {
            db.client().batch_execute(ddl).unwrap();
        }
        db
    }

    /// A fresh connection, as an ordinary application would open.
    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).unwrap()
    }

    /// Runs `sql` through the `psql` shell, failing the test on any SQL error.
    pub fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .arg(&self.url)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every row of `table` as JSON text, ordered by `order`.
    pub fn dump(&self, table: &str, order: &str) -> Vec<String> {
        self.client()
            .query(
                &format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY {order}"),
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Number of rows `sql` (a `SELECT count(*) ...`) counts.
    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        concord_harness::servers::drop_postgres_database(&self.admin_url, &self.name);
    }
}

/// Every change in a store's log, in log order.
pub fn all_changes(store: &PgStore) -> Vec<Change> {
    store
        .changes_for(&VersionVector::new())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}
