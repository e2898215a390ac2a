//! Latency of a single-row write on PostgreSQL until it is visible on the peer:
//! Concord (two nodes over mutual TLS on loopback, each keeping its own PostgreSQL
//! database in sync) side by side with PostgreSQL's own logical replication
//! (a publication and a subscription between two other databases of the same server),
//! in one run (issue 11).
//!
//! ```text
//! CONCORD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p concord-node --example pglatency -- [--writes N] [--gap-ms G] [--capture log|triggers] [--bulk ROWS]
//! ```
//!
//! `--bulk ROWS` adds the large-transaction figure through the same two nodes: one
//! `INSERT ... SELECT generate_series` of ROWS rows, then one `UPDATE` of all of them,
//! each in one transaction, timed from just before the statement until the last row is
//! visible at the destination with the phase's value (both destinations apply a source
//! transaction in one transaction, so that row shows all of it). That is the pipeline a
//! user gets: the log reader staging, capture folding in bounded steps, the session
//! sending what is committed, the peer streaming it into one transaction. Native side
//! first; while Concord's side runs the subscription is disabled (its walsender would
//! decode Concord's WAL on the other core), and re-enabled before the native side.
//!
//! Each round writes one row with an autocommit `INSERT` through an application
//! connection to the native source, waits until the row is visible in the native
//! destination (polled every 0.2 ms through another connection by primary key), then
//! does the same on Concord's node A and node B; rounds are `--gap-ms` apart (default
//! 20). The first 20 rounds are a warm-up and not counted. Both paths share one
//! server and its WAL, so each decodes the other's writes too. The node runs with its
//! defaults (`capture = "log"`, the WAL position checked every `capture_check_ms`);
//! `--capture triggers` measures the trigger fallback instead. Databases are named
//! `concord_pglat_<pid>_*` and dropped at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use concord_node::config::{CaptureSetting, NodeSection, StoreSection, SyncSection};
use concord_node::{Identity, Node, NodeConfig, PeerConfig};
use postgres::{Client, NoTls};
use tokio::runtime::Runtime;

const TABLE: &str = "CREATE TABLE t(id bigint PRIMARY KEY, v text NOT NULL)";
const WARMUP: usize = 20;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let words: Vec<String> = std::env::args().collect();
    match words.iter().position(|w| w == name) {
        Some(i) => words
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a value")),
        None => default,
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{db}{query}", &base[..path_start])
}

/// A libpq connection string for the subscription, from the server URL.
fn conninfo(url: &str, db: &str) -> String {
    let config: postgres::Config = url.parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let mut out = format!(
        "host={host} port={port} dbname={db} user={}",
        config.get_user().unwrap_or("postgres")
    );
    if let Some(pw) = config.get_password() {
        out.push_str(&format!(" password={}", String::from_utf8_lossy(pw)));
    }
    out
}

struct Running {
    rt: Runtime,
    node: Node,
}

impl Running {
    fn start(dir: &Path, config: NodeConfig, identity: Identity) -> Running {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let node = rt
            .block_on(Node::start_with(dir, config, identity))
            .unwrap();
        Running { rt, node }
    }

    fn connected(&self) -> bool {
        let status = self.rt.block_on(self.node.status());
        status.peers.iter().all(|p| p.state == "connected")
    }

    fn stop(self) {
        self.rt.block_on(self.node.shutdown());
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

fn config(name: &str, url: String, capture: CaptureSetting, peers: Vec<PeerConfig>) -> NodeConfig {
    NodeConfig {
        node: NodeSection {
            name: name.into(),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            http: None,
        },
        store: StoreSection {
            postgres: Some(url),
            tables: vec!["t".into()],
            capture,
            ..StoreSection::default()
        },
        sync: SyncSection::default(),
        peers,
    }
}

/// Writes row `id` through `app` and returns how long until `watch` sees it.
fn round(app: &mut Client, watch: &mut Client, id: i64) -> f64 {
    let select = watch.prepare("SELECT 1 FROM t WHERE id = $1").unwrap();
    let started = Instant::now();
    app.execute("INSERT INTO t VALUES ($1, 'x')", &[&id])
        .unwrap();
    loop {
        if !watch.query(&select, &[&id]).unwrap().is_empty() {
            return started.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "row {id} never arrived"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs one bulk phase through `app` on ids `first..first + rows` and returns seconds
/// until `watch` sees its last row with the phase's value.
fn bulk_round(app: &mut Client, watch: &mut Client, phase: &str, first: i64, rows: i64) -> f64 {
    let last = first + rows - 1;
    let (sql, value) = match phase {
        "insert" => (
            format!("INSERT INTO t SELECT i, 'x' FROM generate_series({first}, {last}) i"),
            "x",
        ),
        _ => (
            format!("UPDATE t SET v = 'u' WHERE id BETWEEN {first} AND {last}"),
            "u",
        ),
    };
    let started = Instant::now();
    app.batch_execute(&sql).unwrap();
    loop {
        let seen = watch
            .query_opt("SELECT v FROM t WHERE id = $1", &[&last])
            .unwrap()
            .map(|r| r.get::<_, String>(0));
        if seen.as_deref() == Some(value) {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{phase} of {rows} rows never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Enables or disables the native subscription; when enabling, waits until a marker
/// written then has arrived, so the walsender has read everything before it.
fn native_subscription(nsrc: &mut Client, ndst: &mut Client, tag: &str, enable: bool, marker: i64) {
    if !enable {
        ndst.batch_execute(&format!("ALTER SUBSCRIPTION {tag} DISABLE"))
            .unwrap();
        return;
    }
    ndst.batch_execute(&format!("ALTER SUBSCRIPTION {tag} ENABLE"))
        .unwrap();
    round(nsrc, ndst, marker);
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let p99 = quantile(samples, 0.99);
    println!(
        "{name:<8} n {:>4}  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        samples.len(),
        quantile(samples, 0.5),
        quantile(samples, 0.9),
        p99,
        samples[samples.len() - 1]
    );
    p99
}

fn main() {
    let server = std::env::var("CONCORD_TEST_POSTGRES_URL")
        .expect("set CONCORD_TEST_POSTGRES_URL to a PostgreSQL server with wal_level = logical");
    let writes: usize = arg("--writes", 200);
    let bulk: i64 = arg("--bulk", 0);
    let gap_ms: u64 = arg("--gap-ms", 20);
    let capture = match arg::<String>("--capture", "log".into()).as_str() {
        "triggers" => CaptureSetting::Triggers,
        _ => CaptureSetting::Log,
    };
    let tag = format!("concord_pglat_{}", std::process::id());
    let names = ["nsrc", "ndst", "ca", "cb"].map(|n| format!("{tag}_{n}"));
    let mut admin = Client::connect(&server, NoTls).unwrap();
    for db in &names {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        Client::connect(&with_database(&server, db), NoTls)
            .unwrap()
            .batch_execute(TABLE)
            .unwrap();
    }
    let connect = |i: usize| Client::connect(&with_database(&server, &names[i]), NoTls).unwrap();

    // Native: publication, slot, subscription (a subscription to the same server
    // cannot create its own slot).
    let mut nsrc = connect(0);
    nsrc.batch_execute(&format!("CREATE PUBLICATION {tag} FOR TABLE t"))
        .unwrap();
    nsrc.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&tag],
    )
    .unwrap();
    let mut ndst = connect(1);
    ndst.batch_execute(&format!(
        "CREATE SUBSCRIPTION {tag} CONNECTION '{}' PUBLICATION {tag}
         WITH (create_slot = false, slot_name = '{tag}', copy_data = false)",
        conninfo(&server, &names[0]).replace('\'', "''")
    ))
    .unwrap();

    // Concord: node A on database ca, node B on cb, B dials A.
    let root = tempfile::tempdir().unwrap();
    let (ia, ib) = (
        Identity::generate("a").unwrap(),
        Identity::generate("b").unwrap(),
    );
    let (fa, fb) = (ia.fingerprint(), ib.fingerprint());
    let peer = |name: &str, address: Option<String>, fingerprint| PeerConfig {
        name: name.into(),
        address,
        fingerprint,
        tables: Default::default(),
        propagate_schema: false,
    };
    std::fs::create_dir_all(root.path().join("a")).unwrap();
    std::fs::create_dir_all(root.path().join("b")).unwrap();
    let a = Running::start(
        &root.path().join("a"),
        config(
            "a",
            with_database(&server, &names[2]),
            capture,
            vec![peer("b", None, fb)],
        ),
        ia,
    );
    let address = a.node.listen_addr().unwrap().to_string();
    let b = Running::start(
        &root.path().join("b"),
        config(
            "b",
            with_database(&server, &names[3]),
            capture,
            vec![peer("a", Some(address), fa)],
        ),
        ib,
    );
    let started = Instant::now();
    while !(a.connected() && b.connected()) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nodes did not connect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let method = a.rt.block_on(a.node.status()).capture;
    println!(
        "# pglatency: {writes} single-row autocommit inserts per path after {WARMUP} warm-up, {gap_ms} ms apart; Concord captures with {method}"
    );
    let (mut ca, mut cb) = (connect(2), connect(3));
    let (mut native, mut concord) = (Vec::new(), Vec::new());
    for i in 0..(WARMUP + writes) {
        let id = i as i64 + 1;
        let n = round(&mut nsrc, &mut ndst, id);
        std::thread::sleep(Duration::from_millis(gap_ms));
        let c = round(&mut ca, &mut cb, id);
        std::thread::sleep(Duration::from_millis(gap_ms));
        if i >= WARMUP {
            native.push(n);
            concord.push(c);
        }
    }
    if writes > 0 {
        let p99_native = report("native", &mut native);
        let p99_concord = report("concord", &mut concord);
        println!("p99 concord / native {:.2}x", p99_concord / p99_native);
    }
    if bulk > 0 {
        println!(
            "# bulk: {bulk} rows in one transaction, BEGIN until the last row is visible at the peer"
        );
        let first = 1_000_000_000;
        let mut marker = 2_000_000_000;
        for phase in ["insert", "update"] {
            ca.batch_execute("CHECKPOINT").unwrap();
            let n = bulk_round(&mut nsrc, &mut ndst, phase, first, bulk);
            native_subscription(&mut nsrc, &mut ndst, &tag, false, marker);
            ca.batch_execute("CHECKPOINT").unwrap();
            let c = bulk_round(&mut ca, &mut cb, phase, first, bulk);
            marker += 1;
            native_subscription(&mut nsrc, &mut ndst, &tag, true, marker);
            println!(
                "{phase:<7} native {n:8.2} s   concord {c:8.2} s   concord / native {:.2}x",
                c / n
            );
        }
    }

    a.stop();
    b.stop();
    drop((ca, cb, nsrc));
    ndst.batch_execute(&format!("ALTER SUBSCRIPTION {tag} DISABLE; ALTER SUBSCRIPTION {tag} SET (slot_name = NONE); DROP SUBSCRIPTION {tag}"))
        .unwrap();
    drop(ndst);
    drop(admin);
    for db in &names {
        concord_harness::servers::drop_postgres_database(&server, db);
    }
}
