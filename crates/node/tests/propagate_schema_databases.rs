//! `propagate_schema = true` across store kinds, through real nodes over TLS: a SQLite
//! hub gains columns and a PostgreSQL (or MariaDB) node that follows it, with no DDL
//! run there by anyone, gains them too, typed in its own dialect from the values that
//! came, and ends with the same rows and nothing set aside.
//!
//! Risks covered: a fleet whose nodes each needed a person to run the hub's `ALTER
//! TABLE`; a column added with a type that changes the values it receives (the copies
//! then differ); the added column not captured on the node that added it, so its own
//! writes never travel back.
//!
//! Needs PostgreSQL and MariaDB (`CONCORD_TEST_POSTGRES_URL`, `CONCORD_TEST_MYSQL_URL`,
//! or the usual local servers); without one a test is reported as ignored, with the
//! reason (`concord_harness::servers`), which is why this is a `harness = false` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use concord_harness::servers::with_database;
use concord_node::{Identity, Node};
use mysql::prelude::Queryable;

const LITE_DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";
const ADD_COLUMNS: &str =
    "ALTER TABLE t ADD COLUMN phone TEXT; ALTER TABLE t ADD COLUMN score INTEGER;
     ALTER TABLE t ADD COLUMN ratio REAL; ALTER TABLE t ADD COLUMN data BLOB;
     ALTER TABLE t ADD COLUMN note TEXT;";

/// A row of `t` with every added column.
type Row = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<f64>,
    Option<Vec<u8>>,
    Option<String>,
);

fn expected() -> Vec<Row> {
    vec![
        (
            1,
            Some("one".into()),
            Some("111".into()),
            None,
            None,
            None,
            None,
        ),
        (
            2,
            Some("two".into()),
            Some("555".into()),
            Some(7),
            Some(0.5),
            Some(vec![0, 1, 2]),
            None,
        ),
    ]
}

/// Writes `dir/identity`; returns its fingerprint.
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

fn lite_rows(db: &Path) -> Result<Vec<Row>, String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT id, v, phone, score, ratio, data, note FROM t ORDER BY id")
        .map_err(|e| e.to_string())?;
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .map_err(|e| e.to_string())?
    .collect::<Result<_, _>>()
    .map_err(|e| e.to_string())
}

fn lite(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn lite_scalar(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// The peer's side: a database made for the test, its rows, its columns' types, what
/// it set aside, and a write by an ordinary client.
trait Peer {
    fn store_line(&self) -> String;
    fn rows(&self) -> Result<Vec<Row>, String>;
    fn count(&self) -> i64;
    fn column_types(&self) -> Vec<(String, String)>;
    fn set_aside(&self) -> i64;
    fn write(&self, sql: &str);
}

struct Pg {
    admin: String,
    name: String,
}

impl Pg {
    fn url(&self) -> String {
        with_database(&self.admin, &self.name)
    }
    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }
}

impl Peer for Pg {
    fn store_line(&self) -> String {
        format!("postgres = \"{}\"", self.url())
    }
    fn rows(&self) -> Result<Vec<Row>, String> {
        let rows = self
            .client()
            .query(
                "SELECT id, v, phone, score, ratio, data, note FROM t ORDER BY id",
                &[],
            )
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                )
            })
            .collect())
    }
    fn count(&self) -> i64 {
        self.client()
            .query_one("SELECT count(*) FROM t", &[])
            .unwrap()
            .get(0)
    }
    fn column_types(&self) -> Vec<(String, String)> {
        self.client()
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = 't' ORDER BY ordinal_position",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
    fn set_aside(&self) -> i64 {
        self.client()
            .query_one("SELECT count(*) FROM concord.failures", &[])
            .unwrap()
            .get(0)
    }
    fn write(&self, sql: &str) {
        self.client().batch_execute(sql).unwrap();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        concord_harness::servers::drop_postgres_database(&self.admin, &self.name);
    }
}

struct My {
    admin: String,
    name: String,
}

impl My {
    fn url(&self) -> String {
        with_database(&self.admin, &self.name)
    }
    fn conn(&self) -> mysql::Conn {
        mysql::Conn::new(mysql::Opts::from_url(&self.url()).unwrap()).unwrap()
    }
}

impl Peer for My {
    fn store_line(&self) -> String {
        format!("mysql = \"{}\"", self.url())
    }
    fn rows(&self) -> Result<Vec<Row>, String> {
        self.conn()
            .query_map(
                "SELECT id, v, phone, score, ratio, data, note FROM t ORDER BY id",
                |(id, v, phone, score, ratio, data, note)| (id, v, phone, score, ratio, data, note),
            )
            .map_err(|e| e.to_string())
    }
    fn count(&self) -> i64 {
        self.conn()
            .query_first("SELECT count(*) FROM t")
            .unwrap()
            .unwrap()
    }
    fn column_types(&self) -> Vec<(String, String)> {
        self.conn()
            .query(
                "SELECT column_name, column_type FROM information_schema.columns
                 WHERE table_schema = database() AND table_name = 't' ORDER BY ordinal_position",
            )
            .unwrap()
    }
    fn set_aside(&self) -> i64 {
        self.conn()
            .query_first("SELECT count(*) FROM concord_failures")
            .unwrap()
            .unwrap()
    }
    fn write(&self, sql: &str) {
        self.conn().query_drop(sql).unwrap();
    }
}

impl Drop for My {
    fn drop(&mut self) {
        if let Ok(mut c) = mysql::Conn::new(mysql::Opts::from_url(&self.admin).unwrap()) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

/// A SQLite hub gains columns; the node over `peer`, whose link to the hub has
/// `propagate_schema = true`, must gain them with `types` and end equal to the hub.
fn follows_the_hub(peer: &dyn Peer, types: &[(&str, &str)]) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let lite_db = root.path().join("hub.db");
    lite(&lite_db, LITE_DDL);
    let (hub_dir, peer_dir) = (root.path().join("hub"), root.path().join("peer"));
    let hub_fp = member(&hub_dir, "hub");
    let peer_fp = member(&peer_dir, "peer");
    std::fs::write(
        hub_dir.join("concord.toml"),
        format!(
            "[node]\nname = \"hub\"\nlisten = \"127.0.0.1:0\"\n[store]\nsqlite = \"{}\"\n\
             tables = [\"t\"]\n[[peers]]\nname = \"peer\"\nfingerprint = \"{peer_fp}\"\n",
            lite_db.display()
        ),
    )
    .unwrap();
    let hub = rt.block_on(Node::start(&hub_dir)).expect("the hub starts");
    let address = hub.listen_addr().unwrap();
    std::fs::write(
        peer_dir.join("concord.toml"),
        format!(
            "[node]\nname = \"peer\"\n[store]\n{}\ntables = [\"t\"]\n\
             [[peers]]\nname = \"hub\"\naddress = \"{address}\"\nfingerprint = \"{hub_fp}\"\n\
             propagate_schema = true\n",
            peer.store_line()
        ),
    )
    .unwrap();
    let node = rt
        .block_on(Node::start(&peer_dir))
        .expect("the peer starts");

    lite(&lite_db, "INSERT INTO t(id, v) VALUES (1, 'one')");
    eventually(
        "row 1 at the peer, before any column is added",
        || match peer.count() {
            1 => Ok(()),
            n => Err(format!("{n} rows")),
        },
    );
    lite(&lite_db, ADD_COLUMNS);
    eventually(
        "the hub's store to follow its columns",
        || match lite_scalar(&lite_db, "SELECT count(*) FROM __concord_columns") {
            7 => Ok(()),
            n => Err(format!("{n} columns recorded")),
        },
    );
    lite(
        &lite_db,
        "INSERT INTO t(id, v, phone, score, ratio, data) VALUES (2, 'two', '555', 7, 0.5, x'000102')",
    );
    lite(&lite_db, "UPDATE t SET phone = '111' WHERE id = 1");
    eventually("the peer to hold the hub's rows in the new columns", || {
        let rows = peer.rows()?;
        if rows == expected() {
            return Ok(());
        }
        Err(format!("{rows:?}"))
    });
    let owned: Vec<(String, String)> = types
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(
        peer.column_types(),
        owned,
        "added at the end, in the peer's types"
    );
    assert_eq!(peer.set_aside(), 0, "nothing set aside at the peer");
    assert_eq!(lite_rows(&lite_db).unwrap(), expected());

    // The peer's store captures the columns it was given: its writes travel back.
    peer.write("UPDATE t SET note = 'from the peer' WHERE id = 2");
    eventually("the peer's write at the hub", || {
        let rows = lite_rows(&lite_db)?;
        match rows.get(1) {
            Some(row) if row.6.as_deref() == Some("from the peer") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let status = rt.block_on(node.status());
    let hub_link = status.peers.iter().find(|p| p.name == "hub").unwrap();
    assert_eq!(hub_link.set_aside, 0, "nothing set aside, even for a while");
    assert_eq!(hub_link.last_error, None);
    assert_eq!(
        lite_scalar(&lite_db, "SELECT count(*) FROM __concord_failures"),
        0
    );
    rt.block_on(node.shutdown());
    rt.block_on(hub.shutdown());
}

concord_harness::server_tests! {
    fn a_postgres_node_follows_the_columns_its_sqlite_hub_adds(admin: postgres) {
        let name = format!("concord_propagate_{}", std::process::id());
        let mut c = postgres::Client::connect(admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let pg = Pg { admin: admin.into(), name };
        pg.write("CREATE TABLE t(id bigint PRIMARY KEY, v text)");
        follows_the_hub(
            &pg,
            &[
                ("id", "bigint"),
                ("v", "text"),
                ("phone", "text"),
                ("score", "bigint"),
                ("ratio", "double precision"),
                ("data", "bytea"),
                ("note", "text"),
            ],
        );
    }

    fn a_mariadb_node_follows_the_columns_its_sqlite_hub_adds(admin: mysql) {
        let name = format!("concord_propagate_{}", std::process::id());
        let mut c = mysql::Conn::new(mysql::Opts::from_url(admin).unwrap()).unwrap();
        c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`")).unwrap();
        c.query_drop(format!("CREATE DATABASE `{name}`")).unwrap();
        let my = My { admin: admin.into(), name };
        my.write("CREATE TABLE t(id BIGINT PRIMARY KEY, v LONGTEXT)");
        follows_the_hub(
            &my,
            &[
                ("id", "bigint(20)"),
                ("v", "longtext"),
                ("phone", "longtext"),
                ("score", "bigint(20)"),
                ("ratio", "double"),
                ("data", "longblob"),
                ("note", "longtext"),
            ],
        );
    }
}
