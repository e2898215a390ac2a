//! Shared helpers of the MariaDB tests: a throwaway database per test on the server
//! named by `CONCORD_TEST_MYSQL_URL`, dropped when the test ends (pass or fail).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server URL, or `None` after printing that `test` is skipped.
pub fn server_or_skip(test: &str) -> Option<String> {
    match std::env::var("CONCORD_TEST_MYSQL_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("skipping {test}: CONCORD_TEST_MYSQL_URL not set");
            None
        }
    }
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
        let mut admin = Conn::new(Opts::from_url(server).unwrap()).unwrap();
        admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .unwrap();
        admin
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .unwrap();
        let (root, _) = server.rsplit_once('/').unwrap();
        let db = TestDb {
            url: format!("{root}/{name}"),
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
