//! `concord init --postgres` and `serve` as a user runs them, against a real PostgreSQL
//! server: a node set up with `init --postgres` that does not capture or apply through
//! its PostgreSQL database, or does not sync with a SQLite node.
//!
//! Why a file of its own: it needs a PostgreSQL server, so it is a `harness = false`
//! binary run through `concord_harness::server_tests!` (`CONCORD_TEST_POSTGRES_URL`, else
//! the usual local server if it answers, else reported as ignored with the reason; a
//! variable naming a server that does not answer fails it). It used to sit in
//! `serve.rs`, where a missing server made it pass without running. It shares that
//! file's helpers (`serving/`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod serving;

use serving::*;

/// A PostgreSQL database created for one test and dropped at its end.
struct PgDatabase {
    admin: String,
    name: String,
}

impl PgDatabase {
    fn create(admin: &str, ddl: &str) -> Self {
        // Unique per test as well as per process: the tests of this file run at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("concord_serve_{}_{n}", std::process::id());
        let mut client = postgres::Client::connect(admin, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = Self {
            admin: admin.into(),
            name,
        };
        db.client().batch_execute(ddl).unwrap();
        db
    }

    fn url(&self) -> String {
        let (root, _) = self.admin.rsplit_once('/').unwrap();
        format!("{root}/{}", self.name)
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    fn rows(&self) -> Vec<(i64, String)> {
        self.client()
            .query("SELECT id::int8, v FROM t ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        concord_harness::servers::drop_postgres_database(&self.admin, &self.name);
    }
}

/// `concord init` of a node named `pg` over the PostgreSQL database `url`, tracking `t`:
/// its fingerprint and the port it listens on.
fn init_pg_node(dir: &std::path::Path, url: &str) -> (String, u16) {
    let (listen, http) = (free_port(), free_port());
    let out = ok(concord([
        "init",
        "--dir",
        &s(dir),
        "--name",
        "pg",
        "--postgres",
        url,
        "--tables",
        "t",
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--http",
        &format!("127.0.0.1:{http}"),
    ]));
    let fingerprint = out
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap()
        .trim()
        .to_owned();
    (fingerprint, listen)
}

concord_harness::server_tests! {
    fn a_node_served_over_postgres_syncs_with_a_node_served_over_sqlite(admin: postgres) {
        let pg = PgDatabase::create(admin, "CREATE TABLE t(id integer PRIMARY KEY, v text)");
        let root = tempfile::tempdir().unwrap();
        let (dp, dl) = (root.path().join("pg"), root.path().join("lite"));
        let (fp, listen) = init_pg_node(&dp, &pg.url());
        let (fl, _) = init_node(&dl, "lite");
        add_peer(&dp, "lite", &fl, None);
        add_peer(&dl, "pg", &fp, Some(format!("127.0.0.1:{listen}")));
        let mut np = Served::start(&dp);
        let mut nl = Served::start(&dl);
        let db = dl.join("app.db");

        pg.client()
            .batch_execute("INSERT INTO t VALUES (1, 'from postgres'), (2, 'also from postgres')")
            .unwrap();
        write(&db, "INSERT INTO t VALUES (3, 'from sqlite')");
        wait_until("both databases to hold all three rows", &[&np, &nl], || {
            let (p, l) = (pg.rows(), rows(&db));
            if p.len() == 3 && p == l {
                Ok(())
            } else {
                Err(format!("postgres {p:?}, sqlite {l:?}"))
            }
        });
        let json = status_json(&dp);
        assert!(
            json["store"].as_str().unwrap().starts_with("postgres://"),
            "status names the PostgreSQL store: {json}"
        );
        assert_eq!(json["peers"][0]["state"], "connected", "{json}");
        for node in [&mut nl, &mut np] {
            let status = node.terminate();
            assert!(status.success(), "{}", node.logs());
        }
    }

    /// A 100 MB value each way between a node over SQLite and a node over PostgreSQL,
    /// real processes over TLS: it must arrive whole (it is more than a frame holds, so
    /// it travels in pieces) and a row written after it must follow it.
    fn a_100_mb_value_crosses_between_sqlite_and_postgres_nodes_and_later_rows_follow(admin: postgres) {
        const MB: usize = 1 << 20;
        let pg = PgDatabase::create(admin, "CREATE TABLE t(id integer PRIMARY KEY, v text)");
        let root = tempfile::tempdir().unwrap();
        let (dp, dl) = (root.path().join("pg"), root.path().join("lite"));
        let (fp, listen) = init_pg_node(&dp, &pg.url());
        let (fl, _) = init_node(&dl, "lite");
        add_peer(&dp, "lite", &fl, None);
        add_peer(&dl, "pg", &fp, Some(format!("127.0.0.1:{listen}")));
        let np = Served::start(&dp);
        let nl = Served::start(&dl);
        let db = dl.join("app.db");
        // Text that is not one repeated byte, so a misplaced piece would show.
        let big = |seed: u8| -> String {
            (0..100 * MB).map(|i| char::from(b'a' + ((i / 7 + usize::from(seed)) % 26) as u8)).collect()
        };
        let (from_lite, from_pg) = (big(1), big(2));
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
        conn.execute("INSERT INTO t VALUES (1, ?1)", [&from_lite]).unwrap();
        conn.execute("INSERT INTO t VALUES (2, 'after the large one, from sqlite')", [])
            .unwrap();
        pg.client()
            .execute("INSERT INTO t VALUES (3, $1)", &[&from_pg])
            .unwrap();
        pg.client()
            .batch_execute("INSERT INTO t VALUES (4, 'after the large one, from postgres')")
            .unwrap();
        let lengths = |rows: Vec<(i64, String)>| -> Vec<(i64, usize)> {
            rows.into_iter().map(|(id, v)| (id, v.len())).collect()
        };
        wait_until("both databases to hold all four rows", &[&np, &nl], || {
            let (p, l) = (lengths(pg.rows()), lengths(rows(&db)));
            if p.len() == 4 && p == l {
                Ok(())
            } else {
                Err(format!("postgres {p:?}, sqlite {l:?}"))
            }
        });
        let value = |rows: Vec<(i64, String)>, id: i64| {
            rows.into_iter().find(|(i, _)| *i == id).map(|(_, v)| v).unwrap()
        };
        assert!(value(pg.rows(), 1) == from_lite, "the value from sqlite changed on its way");
        assert!(value(rows(&db), 3) == from_pg, "the value from postgres changed on its way");
    }
}
