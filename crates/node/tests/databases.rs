//! The same customers kept by three real nodes over three real databases: PostgreSQL
//! `customers(id uuid, full_name text, email text, balance numeric(12,2), updated_at
//! timestamptz)`, MariaDB `crm_contacts(contact_id char(36), name varchar(200), email
//! varchar(320), balance decimal(12,2))` and a SQLite `customers` table with text
//! columns. The PostgreSQL node sits between the other two and maps each link in its
//! `concord.toml` (renames, a subset, uuid <-> text and decimal <-> text casts, a default
//! for the column MariaDB lacks).
//!
//! Risks covered: a value changed on its way between databases of different types; a
//! mapping applied on one link but not relayed correctly to the other; rows that existed
//! before tracking not arriving; a value the mapping cannot convert blocking the stream
//! (it must be set aside, recorded where status shows it, and later rows still arrive).
//!
//! Needs PostgreSQL and MariaDB: `CONCORD_TEST_POSTGRES_URL` and `CONCORD_TEST_MYSQL_URL`,
//! or the usual local servers when those are unset. Without a server the test is
//! reported as ignored, with the reason; a variable naming a server that does not answer
//! fails it (`concord_harness::servers` has the rule, which is why this file is a
//! `harness = false` test binary).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use concord_harness::servers::with_database;
use concord_node::{Identity, Node};
use mysql::prelude::Queryable;

type Row = (String, Option<String>, Option<String>, Option<String>);

const PG_DDL: &str = "CREATE TABLE customers(id uuid PRIMARY KEY, full_name text, email text, \
                      balance numeric(12,2), updated_at timestamptz)";
const MY_DDL: &str = "CREATE TABLE crm_contacts(contact_id char(36) PRIMARY KEY, \
                      name varchar(200), email varchar(320), balance decimal(12,2))";
const LITE_DDL: &str = "CREATE TABLE customers(id TEXT PRIMARY KEY NOT NULL, full_name TEXT, \
                        email TEXT, balance TEXT)";

/// A PostgreSQL and a MariaDB database created for this test and dropped at its end.
struct Databases {
    pg_admin: String,
    my_admin: String,
    name: String,
}

impl Databases {
    fn create(pg_admin: &str, my_admin: &str) -> Self {
        let name = format!("concord_dbs_{}", std::process::id());
        let mut pg = postgres::Client::connect(pg_admin, postgres::NoTls).unwrap();
        pg.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        pg.batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let mut my = mysql::Conn::new(mysql::Opts::from_url(my_admin).unwrap()).unwrap();
        my.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .unwrap();
        my.query_drop(format!("CREATE DATABASE `{name}`")).unwrap();
        let dbs = Self {
            pg_admin: pg_admin.into(),
            my_admin: my_admin.into(),
            name,
        };
        dbs.pg().batch_execute(PG_DDL).unwrap();
        dbs.my().query_drop(MY_DDL).unwrap();
        dbs
    }

    fn pg_url(&self) -> String {
        with_database(&self.pg_admin, &self.name)
    }

    fn my_url(&self) -> String {
        with_database(&self.my_admin, &self.name)
    }

    fn pg(&self) -> postgres::Client {
        postgres::Client::connect(&self.pg_url(), postgres::NoTls).unwrap()
    }

    fn my(&self) -> mysql::Conn {
        mysql::Conn::new(mysql::Opts::from_url(&self.my_url()).unwrap()).unwrap()
    }

    /// Runs `sql` through the `mariadb` command-line client, as a person would.
    fn mariadb_cli(&self, sql: &str) {
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

    /// Runs `sql` through `psql`, as a person would.
    fn psql(&self, sql: &str) {
        let out = std::process::Command::new("psql")
            .args([&self.pg_url(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_rows(&self) -> Vec<Row> {
        self.pg()
            .query(
                "SELECT id::text, full_name, email, balance::text FROM customers ORDER BY id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    fn my_rows(&self) -> Vec<Row> {
        self.my()
            .query(
                "SELECT contact_id, name, email, CAST(balance AS CHAR) FROM crm_contacts \
                 ORDER BY contact_id",
            )
            .unwrap()
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        concord_harness::servers::drop_postgres_database(&self.pg_admin, &self.name);
        if let Ok(opts) = mysql::Opts::from_url(&self.my_admin)
            && let Ok(mut my) = mysql::Conn::new(opts)
        {
            let _ = my.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

fn lite_rows(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, full_name, email, balance FROM customers ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Writes `dir/concord.toml` and a new identity; returns the identity's fingerprint.
fn member(dir: &Path, name: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let identity = Identity::generate(name).unwrap();
    identity.save(&dir.join("identity")).unwrap();
    identity.fingerprint().to_string()
}

fn eventually<F: FnMut() -> Result<(), String>>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const ANN: &str = "0a1b2c3d-0000-4000-8000-000000000001";
const BOB: &str = "0a1b2c3d-0000-4000-8000-000000000002";
const CAROL: &str = "0a1b2c3d-0000-4000-8000-000000000003";
const DAN: &str = "0a1b2c3d-0000-4000-8000-000000000004";
const ERIN: &str = "0a1b2c3d-0000-4000-8000-000000000005";

concord_harness::server_tests! {
    // The nodes run on a runtime of their own; the test talks to the databases with
    // blocking clients from its own thread, as applications would.
    fn customers_stay_equal_across_postgres_mariadb_and_sqlite_through_schema_mappings(
        pg_admin: postgres,
        my_admin: mysql,
    ) {
        let dbs = Databases::create(pg_admin, my_admin);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let lite_db = root.path().join("shop.db");
        rusqlite::Connection::open(&lite_db)
            .unwrap()
            .execute_batch(LITE_DDL)
            .unwrap();

        // A row that exists before anything is tracked.
        dbs.psql(&format!(
            "INSERT INTO customers VALUES ('{ANN}', 'Ann Lee', 'ann@example.com', 1200.50, now())"
        ));

        let (pg_dir, my_dir, lite_dir) = (
            root.path().join("pg"),
            root.path().join("crm"),
            root.path().join("shop"),
        );
        let pg_fp = member(&pg_dir, "pg");
        let my_fp = member(&my_dir, "crm");
        let lite_fp = member(&lite_dir, "shop");
        std::fs::write(
            pg_dir.join("concord.toml"),
            format!(
                r#"
    [node]
    name = "pg"
    listen = "127.0.0.1:0"

    [store]
    postgres = "{pg_url}"
    tables = ["customers"]

    [[peers]]
    name = "crm"
    fingerprint = "{my_fp}"

    [[peers.tables]]
    local = "customers"
    remote = "crm_contacts"
    key = ["id"]
    only_listed = true
    columns = [
      {{ local = "id", remote = "contact_id", local_type = "uuid", remote_type = "text" }},
      {{ local = "full_name", remote = "name" }},
      {{ local = "email" }},
      {{ local = "balance" }},
      {{ local = "updated_at", local_type = "timestamp", default = {{ special = "change_time" }} }},
    ]

    [[peers]]
    name = "shop"
    fingerprint = "{lite_fp}"

    [[peers.tables]]
    local = "customers"
    remote = "customers"
    key = ["id"]
    only_listed = true
    columns = [
      {{ local = "id", local_type = "uuid", remote_type = "text" }},
      {{ local = "full_name" }},
      {{ local = "email" }},
      {{ local = "balance", local_type = "decimal", remote_type = "text" }},
      {{ local = "updated_at", local_type = "timestamp", default = {{ special = "change_time" }} }},
    ]
    "#,
                pg_url = dbs.pg_url()
            ),
        )
        .unwrap();
        let pg_node = rt
            .block_on(Node::start(&pg_dir))
            .expect("the PostgreSQL node starts");
        let hub = pg_node.listen_addr().unwrap();
        std::fs::write(
            my_dir.join("concord.toml"),
            format!(
                "[node]\nname = \"crm\"\n[store]\nmysql = \"{}\"\ntables = [\"crm_contacts\"]\n\
                 [[peers]]\nname = \"pg\"\naddress = \"{hub}\"\nfingerprint = \"{pg_fp}\"\n",
                dbs.my_url()
            ),
        )
        .unwrap();
        std::fs::write(
            lite_dir.join("concord.toml"),
            format!(
                "[node]\nname = \"shop\"\n[store]\nsqlite = \"{}\"\ntables = [\"customers\"]\n\
                 [[peers]]\nname = \"pg\"\naddress = \"{hub}\"\nfingerprint = \"{pg_fp}\"\n",
                lite_db.display()
            ),
        )
        .unwrap();
        let my_node = rt
            .block_on(Node::start(&my_dir))
            .expect("the MariaDB node starts");
        let lite_node = rt
            .block_on(Node::start(&lite_dir))
            .expect("the SQLite node starts");

        // Live writes by ordinary clients of each database.
        dbs.mariadb_cli(&format!(
            "INSERT INTO crm_contacts VALUES ('{BOB}', 'Bob Ng', 'bob@example.com', 80.00)"
        ));
        {
            let conn = rusqlite::Connection::open(&lite_db).unwrap();
            conn.execute(
                "INSERT INTO customers VALUES (?1, 'Carol Diaz', 'carol@example.com', '7.25')",
                [CAROL],
            )
            .unwrap();
        }
        dbs.psql(&format!(
            "BEGIN; INSERT INTO customers VALUES ('{DAN}', 'Dan Öz', NULL, -3.10, now()); \
             UPDATE customers SET email = 'ann@lee.example' WHERE id = '{ANN}'; COMMIT;"
        ));

        let expected: Vec<Row> = vec![
            (
                ANN.into(),
                Some("Ann Lee".into()),
                Some("ann@lee.example".into()),
                Some("1200.50".into()),
            ),
            (
                BOB.into(),
                Some("Bob Ng".into()),
                Some("bob@example.com".into()),
                Some("80.00".into()),
            ),
            (
                CAROL.into(),
                Some("Carol Diaz".into()),
                Some("carol@example.com".into()),
                Some("7.25".into()),
            ),
            (
                DAN.into(),
                Some("Dan Öz".into()),
                None,
                Some("-3.10".into()),
            ),
        ];
        let same_everywhere = |expected: &Vec<Row>| {
            let (pg, my, lite) = (dbs.pg_rows(), dbs.my_rows(), lite_rows(&lite_db));
            if &pg == expected && &my == expected && &lite == expected {
                Ok(())
            } else {
                Err(format!("postgres {pg:?}\nmariadb {my:?}\nsqlite {lite:?}"))
            }
        };
        eventually("every row in all three databases", || {
            same_everywhere(&expected)
        });

        // The column MariaDB lacks got the change's own time for the row MariaDB created,
        // and kept the value PostgreSQL wrote for its own rows.
        let missing: i64 = dbs
            .pg()
            .query_one(
                "SELECT count(*) FROM customers WHERE updated_at IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            missing, 0,
            "updated_at is filled for rows that came from MariaDB and SQLite"
        );

        // Updates from two sides and a delete from the third.
        dbs.mariadb_cli(&format!(
            "UPDATE crm_contacts SET balance = 99.99 WHERE contact_id = '{BOB}'"
        ));
        rusqlite::Connection::open(&lite_db)
            .unwrap()
            .execute(
                "UPDATE customers SET full_name = 'Carol D. Diaz' WHERE id = ?1",
                [CAROL],
            )
            .unwrap();
        dbs.psql(&format!("DELETE FROM customers WHERE id = '{DAN}'"));
        let expected: Vec<Row> = vec![
            expected[0].clone(),
            (
                BOB.into(),
                Some("Bob Ng".into()),
                Some("bob@example.com".into()),
                Some("99.99".into()),
            ),
            (
                CAROL.into(),
                Some("Carol D. Diaz".into()),
                Some("carol@example.com".into()),
                Some("7.25".into()),
            ),
        ];
        eventually("updates and the delete everywhere", || {
            same_everywhere(&expected)
        });

        // A contact id that is not a UUID cannot become a PostgreSQL key: the PostgreSQL
        // node sets that transaction aside and records it; what comes after still arrives.
        dbs.mariadb_cli("INSERT INTO crm_contacts VALUES ('not-a-uuid', 'Bad Key', NULL, 1.00)");
        dbs.mariadb_cli(&format!(
            "INSERT INTO crm_contacts VALUES ('{ERIN}', 'Erin Wu', 'erin@example.com', 5.00)"
        ));
        eventually("the row after the bad one in PostgreSQL and SQLite", || {
            let has = |rows: Vec<Row>| rows.iter().any(|r| r.0 == ERIN);
            if has(dbs.pg_rows()) && has(lite_rows(&lite_db)) {
                Ok(())
            } else {
                Err(format!("postgres {:?}", dbs.pg_rows()))
            }
        });
        let status = rt.block_on(pg_node.status());
        assert!(
            status.failures >= 1,
            "the unmappable row is recorded: {status:?}"
        );
        assert!(
            !dbs.pg_rows()
                .iter()
                .any(|r| r.1.as_deref() == Some("Bad Key")),
            "nothing of the bad transaction was applied"
        );
        let failures: Vec<String> = dbs
            .pg()
            .query("SELECT error FROM concord.failures", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            failures
                .iter()
                .any(|e| e.contains("not-a-uuid") || e.contains("contact_id")),
            "the recorded failure names the value or the column: {failures:?}"
        );

        rt.block_on(async {
            lite_node.shutdown().await;
            my_node.shutdown().await;
            pg_node.shutdown().await;
        });
    }
}
