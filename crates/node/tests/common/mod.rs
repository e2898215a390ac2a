//! Helpers shared by the node's integration tests: members (a data directory, a SQLite
//! file written by ordinary connections, a saved identity) started as real nodes on real
//! sockets, waits that always time out with a message, and readers of the tables and of
//! Concord's metadata.
//!
//! Every wait here gives up after [`TIMEOUT`] and says what it waited for and what it
//! saw last; nothing here measures time.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use concord_node::config::{NodeSection, StoreSection, SyncSection};
use concord_node::{Fingerprint, Identity, Node, NodeConfig, NodeStatus, PeerConfig, PeerStatus};
use rusqlite::Connection;

/// How long any wait lasts before the test fails.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// The table most tests sync.
pub(crate) const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)";

/// A node to be: its data directory, its SQLite file (none for a relay) and its
/// identity, saved in `dir/identity` so the node can be restarted with it.
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) db: Option<PathBuf>,
    pub(crate) fingerprint: Fingerprint,
}

impl Member {
    /// A member whose database is `dir/app.db`, created with `ddl` by a plain connection.
    pub(crate) fn new(root: &Path, name: &str, ddl: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("app.db");
        Connection::open(&db).unwrap().execute_batch(ddl).unwrap();
        Self::with_store(dir, name, Some(db))
    }

    /// A hub or relay: only Concord's own store.
    pub(crate) fn relay(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Self::with_store(dir, name, None)
    }

    fn with_store(dir: PathBuf, name: &str, db: Option<PathBuf>) -> Self {
        let identity = Identity::generate(name).unwrap();
        identity.save(&dir.join("identity")).unwrap();
        Self {
            name: name.into(),
            dir,
            db,
            fingerprint: identity.fingerprint(),
        }
    }

    /// The tracked SQLite file (panics for a relay).
    pub(crate) fn db(&self) -> &Path {
        self.db.as_deref().expect("a relay has no user database")
    }

    /// The file holding this member's change log: its database, or a relay's store.
    pub(crate) fn store_file(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(|| self.dir.join("relay.db"))
    }

    /// This member as a peer that dials whoever configures it.
    pub(crate) fn dialing_in(&self) -> PeerConfig {
        PeerConfig {
            name: self.name.clone(),
            address: None,
            fingerprint: self.fingerprint,
            tables: Default::default(),
            propagate_schema: false,
        }
    }

    /// This member, running as `node`, as a peer to dial.
    pub(crate) fn at(&self, node: &Node) -> PeerConfig {
        PeerConfig {
            name: self.name.clone(),
            address: Some(node.listen_addr().expect("the node listens").to_string()),
            fingerprint: self.fingerprint,
            tables: Default::default(),
            propagate_schema: false,
        }
    }

    /// The configuration tests use: listening on a free port, quick pings and a short
    /// capture safety net.
    pub(crate) fn config(&self, peers: Vec<PeerConfig>) -> NodeConfig {
        NodeConfig {
            node: NodeSection {
                name: self.name.clone(),
                listen: Some("127.0.0.1:0".parse().unwrap()),
                http: None,
            },
            store: StoreSection {
                relay: self.db.is_none(),
                sqlite: self.db.clone(),
                tables: if self.db.is_some() {
                    vec!["t".into()]
                } else {
                    vec![]
                },
                ..StoreSection::default()
            },
            sync: SyncSection {
                stall_timeout_s: 10,
                ping_interval_s: 1,
                capture_fallback_ms: 200,
                ..SyncSection::default()
            },
            peers,
        }
    }

    /// Starts the node with [`Member::config`].
    pub(crate) async fn start(&self, peers: Vec<PeerConfig>) -> Node {
        self.start_with(self.config(peers)).await
    }

    /// Starts the node with an explicit configuration and the saved identity.
    pub(crate) async fn start_with(&self, config: NodeConfig) -> Node {
        let identity = Identity::load(&self.dir.join("identity")).unwrap();
        Node::start_with(&self.dir, config, identity)
            .await
            .unwrap_or_else(|e| panic!("starting node {}: {e}", self.name))
    }
}

/// A plain connection, as an application would open it, waiting for Concord's locks.
pub(crate) fn app(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn
}

/// Runs `sql` in one transaction through a plain connection.
pub(crate) fn write(path: &Path, sql: &str) {
    app(path)
        .execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
        .unwrap_or_else(|e| panic!("writing {}: {e}\n{sql}", path.display()));
}

/// Inserts `ids` (with `v = '<prefix><id>'`) in one transaction.
pub(crate) fn insert_rows(path: &Path, ids: impl IntoIterator<Item = i64>, prefix: &str) {
    let mut conn = app(path);
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx.prepare("INSERT INTO t(id, v) VALUES (?1, ?2)").unwrap();
        for id in ids {
            stmt.execute(rusqlite::params![id, format!("{prefix}{id}")])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Every row of `t`, by id.
pub(crate) fn rows(path: &Path) -> Vec<(i64, String)> {
    let conn = app(path);
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A single integer a query returns.
pub(crate) fn scalar(path: &Path, sql: &str) -> i64 {
    app(path).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Local writes not yet folded into the change log.
pub(crate) fn pending(path: &Path) -> i64 {
    scalar(path, "SELECT count(*) FROM __concord_pending")
}

/// Per origin (printed node id): how many log entries the file holds, and the highest
/// sequence number among them.
pub(crate) fn log_counts(path: &Path) -> BTreeMap<String, (u64, u64)> {
    let conn = app(path);
    let mut stmt = conn
        .prepare(
            "SELECT lower(hex(o.node_id)), count(*), max(l.seq)
             FROM __concord_log l JOIN __concord_origins o ON o.id = l.origin
             GROUP BY o.node_id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// What a node's status says it holds, per origin, leaving out origins with nothing.
pub(crate) fn holds(status: &NodeStatus) -> BTreeMap<String, u64> {
    status
        .holds
        .iter()
        .filter(|h| h.seq > 0)
        .map(|h| (h.origin.clone(), h.seq))
        .collect()
}

/// Asserts that every change in the file's log appears exactly once: per origin, the
/// entries are numbered 1..=n without gaps or duplicates, and n is what the store says
/// it holds from that origin.
pub(crate) fn assert_log_matches_holds(what: &str, path: &Path, status: &NodeStatus) {
    let counted: BTreeMap<String, u64> = log_counts(path)
        .into_iter()
        .map(|(origin, (count, max))| {
            assert_eq!(
                count, max,
                "{what}: origin {origin} has {count} log entries but its highest sequence is {max}"
            );
            (origin, count)
        })
        .collect();
    assert_eq!(
        counted,
        holds(status),
        "{what}: log entries per origin differ from the version vector"
    );
}

/// A peer's entry in a status document.
pub(crate) fn peer<'s>(status: &'s NodeStatus, name: &str) -> &'s PeerStatus {
    status
        .peers
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no peer {name:?} in the status of {}", status.name))
}

/// Polls `check` until it returns `Ok`, failing after [`TIMEOUT`] with `what` and the
/// last `Err` it returned (a description of what it saw).
pub(crate) async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            start.elapsed() < TIMEOUT,
            "timed out after {TIMEOUT:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `condition` until it holds, failing after [`TIMEOUT`] with `what`.
pub(crate) async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < TIMEOUT,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `path` holds exactly `expected` in `t`.
pub(crate) async fn wait_for_rows(what: &str, path: &Path, expected: &[(i64, String)]) {
    wait_until(what, async || {
        let now = rows(path);
        if now == expected {
            Ok(())
        } else {
            Err(format!("{} rows, expected {}", now.len(), expected.len()))
        }
    })
    .await;
}

/// A small deterministic generator, so a failing history can be replayed.
pub(crate) struct Lcg(u64);

impl Lcg {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Runs a test body on its own runtime, whose threads are named after the test, and
/// fails if any of them panicked (a node task can panic without the test noticing: the
/// runtime swallows it). Tests use this instead of `#[tokio::test]`.
pub(crate) fn run(body: impl Future<Output = ()>) {
    watch_for_panics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(runtime_thread_name())
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(body);
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert_no_panics();
}

/// The name of the runtime threads of the test running on this thread.
fn runtime_thread_name() -> String {
    format!(
        "rt:{}",
        std::thread::current().name().unwrap_or("unnamed test")
    )
}

/// Records panics on every thread, by thread name.
fn watch_for_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            PANICS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((thread, info.to_string()));
            previous(info);
        }));
    });
}

/// Fails if a thread of this test's runtime (a node task, a blocking store call)
/// panicked so far. Call it from the test body.
pub(crate) fn assert_no_panics() {
    let mine = runtime_thread_name();
    let panics: Vec<String> = PANICS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(thread, _)| *thread == mine)
        .map(|(_, message)| message.clone())
        .collect();
    assert!(panics.is_empty(), "a node task panicked: {panics:#?}");
}
