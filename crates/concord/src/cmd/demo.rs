//! `concord demo`: a hub and two nodes on loopback, in one process, in a temporary folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_node::config::{NodeSection, StoreSection, SyncSection};
use concord_node::{Fingerprint, Identity, Node, NodeConfig, PeerConfig};
use concord_sqlite::SqliteStore;
use rusqlite::Connection;

/// Show Concord at work: a hub and two nodes on loopback, syncing SQLite files live.
///
/// The shop and the office each keep a SQLite file; a hub (with no user database)
/// relays between them over mutual TLS. Writes go through ordinary SQLite connections;
/// the demo shows changes flowing both ways, the office going offline and catching up,
/// a field edited on both sides resolved and listed as a conflict, and the status of
/// every node. Exits non-zero if the files do not end identical.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Keep the files in this folder instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SCHEMA: &str = "CREATE TABLE customers(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    balance NUMERIC NOT NULL DEFAULT 0
)";

struct Site {
    name: &'static str,
    dir: PathBuf,
    db: Option<PathBuf>,
    identity: Option<Identity>,
    fingerprint: Fingerprint,
}

impl Site {
    fn new(root: &Path, name: &'static str, with_db: bool) -> anyhow::Result<Self> {
        let dir = root.join(name);
        // Start over: a previous run's store would replay its history into this one.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let db = if with_db {
            let path = dir.join(format!("{name}.db"));
            Connection::open(&path)?.execute_batch(SCHEMA)?;
            Some(path)
        } else {
            None
        };
        let identity = Identity::generate(name)?;
        Ok(Self {
            name,
            dir,
            db,
            fingerprint: identity.fingerprint(),
            identity: Some(identity),
        })
    }

    fn config(&self, peers: Vec<PeerConfig>) -> NodeConfig {
        NodeConfig {
            node: NodeSection {
                name: self.name.into(),
                listen: Some(([127, 0, 0, 1], 0).into()),
                http: None,
            },
            store: StoreSection {
                sqlite: self.db.clone(),
                tables: if self.db.is_some() {
                    vec!["customers".into()]
                } else {
                    Vec::new()
                },
                relay: self.db.is_none(),
                ..StoreSection::default()
            },
            sync: SyncSection {
                ping_interval_s: 2,
                stall_timeout_s: 10,
                ..SyncSection::default()
            },
            peers,
        }
    }

    async fn start(&mut self, peers: Vec<PeerConfig>) -> anyhow::Result<Node> {
        let identity = match self.identity.take() {
            Some(identity) => identity,
            None => {
                let identity_dir = self.dir.join("identity");
                Identity::load(&identity_dir)?
            }
        };
        identity.save(&self.dir.join("identity"))?;
        Node::start_with(&self.dir, self.config(peers), identity)
            .await
            .with_context(|| format!("starting {}", self.name))
    }

    fn db(&self) -> anyhow::Result<&Path> {
        self.db.as_deref().context("this site has no database")
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(demo(args))
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let begun = Instant::now();
    let temp = tempfile::tempdir()?;
    let root = args.dir.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    println!("Concord demo in {}", root.display());

    step(
        "1. A hub (no user database) and two sites, the shop and the office, each with a SQLite file.",
    );
    let mut hub = Site::new(&root, "hub", false)?;
    let mut shop = Site::new(&root, "shop", true)?;
    let mut office = Site::new(&root, "office", true)?;
    app(shop.db()?)?.execute_batch(
        "INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.org', 120.50);
         INSERT INTO customers VALUES (2, 'Alan Turing', 'alan@example.org', 80);",
    )?;
    let pin = |site: &Site, address: Option<String>| PeerConfig {
        name: site.name.into(),
        address,
        fingerprint: site.fingerprint,
        tables: Default::default(),
        propagate_schema: false,
    };
    let hub_node = hub
        .start(vec![pin(&shop, None), pin(&office, None)])
        .await?;
    let hub_addr = hub_node.listen_addr().context("hub listens")?.to_string();
    let shop_node = shop.start(vec![pin(&hub, Some(hub_addr.clone()))]).await?;
    let mut office_node = Some(
        office
            .start(vec![pin(&hub, Some(hub_addr.clone()))])
            .await?,
    );
    let office_fingerprint = office_node
        .as_ref()
        .map(Node::fingerprint)
        .context("the office runs")?;
    for (site, fingerprint) in [
        (&hub, hub_node.fingerprint()),
        (&shop, shop_node.fingerprint()),
        (&office, office_fingerprint),
    ] {
        println!("   {:<6} fingerprint {fingerprint}", site.name);
    }
    println!("   Every link is mutual TLS; each node accepts only the fingerprints it was given.");

    step("2. The shop's existing customers reach the office through the hub.");
    let took = wait_until(
        || Ok(rows(office.db()?)?.len() == 2),
        "the shop's rows at the office",
    )
    .await?;
    println!("   arrived in {}", human(took));
    show(&office)?;

    step("3. Both sides write through ordinary SQLite connections; changes flow both ways, live.");
    app(shop.db()?)?.execute(
        "INSERT INTO customers VALUES (3, 'Grace Hopper', 'grace@example.org', 0)",
        [],
    )?;
    println!("   the shop adds customer 3 (Grace Hopper)");
    app(office.db()?)?.execute_batch(
        "BEGIN;
         INSERT INTO customers VALUES (10, 'Edsger Dijkstra', 'ewd@example.org', 42);
         INSERT INTO customers VALUES (11, 'Barbara Liskov', 'liskov@example.org', 7);
         COMMIT;",
    )?;
    println!("   the office adds customers 10 and 11 in one transaction");
    let took = wait_until(|| same(&shop, &office), "both writes on both sides").await?;
    println!("   both sides agree after {}", human(took));
    show(&shop)?;

    step(
        "4. The office goes offline; the shop keeps writing; the office catches up when it returns.",
    );
    if let Some(node) = office_node.take() {
        node.shutdown().await;
    }
    let shop_app = app(shop.db()?)?;
    for i in 0..50 {
        shop_app.execute(
            "INSERT INTO customers VALUES (?1, ?2, NULL, 0)",
            rusqlite::params![100 + i, format!("walk-in customer {i}")],
        )?;
    }
    shop_app.execute("UPDATE customers SET balance = 99 WHERE id = 2", [])?;
    println!("   the shop wrote 51 changes while the office was offline");
    let office_app = app(office.db()?)?;
    office_app.execute(
        "UPDATE customers SET email = 'ada@office.example' WHERE id = 1",
        [],
    )?;
    println!("   meanwhile the office, offline, changed Ada's email");
    tokio::time::sleep(Duration::from_millis(20)).await;
    shop_app.execute(
        "UPDATE customers SET email = 'ada@shop.example' WHERE id = 1",
        [],
    )?;
    println!("   and then the shop changed Ada's email too");
    office_node = Some(
        office
            .start(vec![pin(&hub, Some(hub_addr.clone()))])
            .await?,
    );
    let took = wait_until(|| same(&shop, &office), "the office to catch up").await?;
    println!(
        "   the office is back and caught up in {}: {} customers on both sides",
        human(took),
        rows(office.db()?)?.len()
    );

    step(
        "5. The concurrent edit of Ada's email: the later write wins everywhere, and the conflict is listed.",
    );
    show_where(&office, "id = 1")?;
    let writers = [
        (shop_node.node_id(), shop.name),
        (
            office_node.as_ref().context("the office runs")?.node_id(),
            office.name,
        ),
    ];
    let mut seen = Vec::new();
    for site in [&shop, &office] {
        for conflict in SqliteStore::open(site.db()?)?.conflicts()? {
            seen.push((site.name, conflict));
        }
    }
    let conflicts = join_conflicts(&seen, &writers);
    if conflicts.len() < 2 {
        bail!("the concurrent edit was not recorded as a conflict");
    }
    let count = conflicts.len() - 1;
    println!(
        "   {count} conflict{} (`concord conflicts` on each node lists it from that node's side):",
        if count == 1 { "" } else { "s" }
    );
    print!("{}", indent(&super::info::table(&conflicts)));

    step("6. Status of every node (`concord status`).");
    for node in [Some(&hub_node), Some(&shop_node), office_node.as_ref()]
        .into_iter()
        .flatten()
    {
        print!("{}", indent(&super::status::render(&node.status().await)));
        println!();
    }

    same(&shop, &office)?
        .then_some(())
        .context("the shop and the office differ")?;
    println!(
        "The shop's and the office's files are identical. Done in {}.",
        human(begun.elapsed())
    );
    if let Some(node) = office_node {
        node.shutdown().await;
    }
    shop_node.shutdown().await;
    hub_node.shutdown().await;
    Ok(())
}

fn step(text: &str) {
    println!("\n{text}");
}

/// A connection like any application's: plain rusqlite, no Concord code.
fn app(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

async fn wait_until(
    mut done: impl FnMut() -> anyhow::Result<bool>,
    what: &str,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn rows(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    rows_where(path, "1")
}

fn rows_where(path: &Path, filter: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let conn = app(path)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT id, name, coalesce(email, ''), balance FROM customers WHERE {filter} ORDER BY id"
    ))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(vec![
                r.get::<_, i64>(0)?.to_string(),
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, rusqlite::types::Value>(3).map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    other => format!("{other:?}"),
                })?,
            ])
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Whether two sites hold the same rows and the same changes: equal rows alone may be
/// seen before the side whose write lost has received the winner's change (and so
/// before it recorded its side of the conflict).
fn same(a: &Site, b: &Site) -> anyhow::Result<bool> {
    if rows(a.db()?)? != rows(b.db()?)? {
        return Ok(false);
    }
    let held = |site: &Site| -> anyhow::Result<_> {
        Ok(SqliteStore::open(site.db()?)?.version_vector().clone())
    };
    Ok(held(a)? == held(b)?)
}

fn show(site: &Site) -> anyhow::Result<()> {
    show_where(site, "id < 100")
}

fn show_where(site: &Site, filter: &str) -> anyhow::Result<()> {
    let mut table = vec![
        ["ID", "NAME", "EMAIL", "BALANCE"]
            .map(String::from)
            .to_vec(),
    ];
    table.extend(rows_where(site.db()?, filter)?);
    println!("   {}.db:", site.name);
    print!("{}", indent(&super::info::table(&table)));
    Ok(())
}

/// One row per conflict, however many nodes recorded it: each node records the pair of
/// writes it saw meet, from its own side (its LOCAL is the other's REMOTE), so the
/// rows of all nodes are joined on the pair of versions, and each write is named by
/// the node that made it.
fn join_conflicts(
    seen: &[(&str, concord_sqlite::ConflictRecord)],
    writers: &[(concord_core::NodeId, &str)],
) -> Vec<Vec<String>> {
    let writer = |version: &str| {
        writers
            .iter()
            .find(|(id, _)| version.ends_with(&format!("@{}", id.short())))
            .map_or("another node", |(_, name)| *name)
    };
    let mut joined: Vec<(Vec<String>, Vec<&str>)> = Vec::new();
    for (node, c) in seen {
        let (mut first, mut second) = (
            (&c.local_value, &c.local_version),
            (&c.remote_value, &c.remote_version),
        );
        if first.1 > second.1 {
            std::mem::swap(&mut first, &mut second);
        }
        let kept = if c.winner == "local" {
            &c.local_version
        } else {
            &c.remote_version
        };
        let describe = |(value, version): (&concord_core::Value, &String)| {
            let what = if c.kind == "update-vs-delete" && version == kept {
                "deleted the row".to_owned()
            } else {
                format!("wrote {value}")
            };
            // The time of day is enough to tell the two writes apart here.
            let time = version.split('@').next().unwrap_or(version);
            let time = time.split_once('T').map_or(time, |(_, t)| t);
            format!("{} {what} at {time}", writer(version))
        };
        let row = vec![
            c.table.clone(),
            c.key.clone(),
            c.column.clone().unwrap_or_else(|| "-".into()),
            describe(first),
            describe(second),
            format!("{}'s", writer(kept)),
        ];
        match joined.iter_mut().find(|(r, _)| *r == row) {
            Some((_, nodes)) => nodes.push(node),
            None => joined.push((row, vec![node])),
        }
    }
    let mut table = vec![
        [
            "TABLE",
            "KEY",
            "COLUMN",
            "EARLIER WRITE",
            "LATER WRITE",
            "KEPT",
            "RECORDED BY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    table.extend(joined.into_iter().map(|(mut row, nodes)| {
        row.push(nodes.join(", "));
        row
    }));
    table
}

/// A duration as a person reads it: `9 ms`, `1.4 s`.
fn human(elapsed: Duration) -> String {
    if elapsed < Duration::from_secs(1) {
        format!("{} ms", elapsed.as_millis().max(1))
    } else {
        format!("{:.1} s", elapsed.as_secs_f64())
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("     {l}\n")).collect()
}
