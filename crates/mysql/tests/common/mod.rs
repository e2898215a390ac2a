//! Shared helpers of the MariaDB tests: a throwaway database per test on the server the
//! test is given, dropped when the test ends (pass or fail). Which server, and whether
//! the tests run at all, is decided once in `concord_harness::servers`
//! (`CONCORD_TEST_MYSQL_URL`, else the usual local server if it answers, else the tests
//! are reported as ignored).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use concord_core::{Change, VersionVector};
use concord_mysql::MyStore;
use concord_mysql::Store as _;
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Every change in a store's log, in log order.
pub fn all_changes(store: &MyStore) -> Vec<Change> {
    store
        .changes_for(&VersionVector::new())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A database created for one test and dropped at the end.
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin: String,
}

impl TestDb {
    /// Creates an empty database and runs each statement of `ddl` in it.
    pub fn new(server: &str, ddl: &[&str]) -> Self {
        let name = format!(
            "concord_c_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = Conn::new(Opts::from_url(server).unwrap()).expect("connect to the server");
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .unwrap();
        let db = TestDb {
            url: concord_harness::servers::with_database(server, &name),
            name,
            admin: server.to_owned(),
        };
        let mut conn = db.conn();
        for statement in ddl {
            conn.query_drop(statement).unwrap();
        }
        db
    }

    /// A fresh connection, as an ordinary application would open.
    pub fn conn(&self) -> Conn {
        Conn::new(Opts::from_url(&self.url).unwrap()).unwrap()
    }

    /// Runs `sql` through the `mariadb` command-line client (as root on 127.0.0.1),
    /// an ordinary client that knows nothing of Concord; panics with its stderr if it
    /// fails.
    pub fn cli(&self, sql: &str) {
        let out = std::process::Command::new("mariadb")
            .args(["-uroot", "-h127.0.0.1", &self.name, "-e", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Opts::from_url(&self.admin)
            .map_err(|_| ())
            .and_then(|o| Conn::new(o).map_err(|_| ()))
        {
            let _ = admin.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}
