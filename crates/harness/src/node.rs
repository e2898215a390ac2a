//! Setting nodes up: a data directory made by `concord init`, its configuration tuned
//! for faults, and the links (through proxies) between nodes.
//!
//! Why here: every fault test sets its nodes up the same way, whatever the store under
//! them. It runs the real `concord init` (so the tests exercise the configuration a
//! user gets), on free ports, reads the fingerprint it prints, shortens the session
//! stall timeout so that a black-holed link is noticed within seconds rather than the
//! default 30 s, sets the change-log retention (a long run must not prune what the
//! last-writer check reads), and then adds each node's peers: the dialer's `address`
//! points at the fault-injecting proxy in front of the listener. The store arguments of
//! `concord init` and what the test keeps about the store ([`NodeDir::store`]) are the
//! test's.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::process::ServeProcess;
use crate::proxy::{Proxy, ProxyCounts};
use crate::topology::Link;

/// A port free on 127.0.0.1 just now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `127.0.0.1:<a free port>`.
pub fn free_addr() -> io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// What `concord init` is told, and how its configuration is changed, for every node.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `concord` binary.
    pub binary: PathBuf,
    /// The session stall timeout the nodes run with (they ping every second).
    pub stall_timeout_s: u64,
    /// The `retention_changes` that `concord init` writes (checked, so a change of the
    /// default does not go unnoticed).
    pub default_retention: u64,
    /// The `retention_changes` the nodes run with.
    pub retention: u64,
}

/// One node's data directory and addresses, and what the test keeps about its store.
#[derive(Clone, Debug)]
pub struct NodeDir<S> {
    /// Its name, as its peers know it.
    pub name: String,
    /// The data directory.
    pub dir: PathBuf,
    /// The sync listener.
    pub listen: SocketAddr,
    /// The HTTP status endpoint.
    pub http: SocketAddr,
    /// The fingerprint of its certificate.
    pub fingerprint: String,
    /// The test's description of the store.
    pub store: S,
}

/// Runs `concord init --dir DIR --name NAME ARGS --listen .. --http ..` (on free ports)
/// in `dir`, created if missing, then tunes the configuration with `settings`.
pub fn init<S>(
    settings: &Settings,
    dir: PathBuf,
    name: &str,
    args: &[&str],
    store: S,
) -> Result<NodeDir<S>, String> {
    let at = |e: io::Error| format!("init {name} in {}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(at)?;
    let listen = free_addr().map_err(at)?;
    let http = free_addr().map_err(at)?;
    let out = Command::new(&settings.binary)
        .args(["init", "--dir"])
        .arg(&dir)
        .args(["--name", name])
        .args(args)
        .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
        .env_remove("CONCORD_LOG")
        .output()
        .map_err(at)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "init {name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let fingerprint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .ok_or_else(|| format!("init printed no fingerprint: {stdout}"))?
        .trim()
        .to_owned();
    // Notice a black-holed link within seconds rather than the default 30 s.
    let config = dir.join("concord.toml");
    let text = std::fs::read_to_string(&config).map_err(at)?;
    let default_retention = format!("retention_changes = {}", settings.default_retention);
    if !text.contains("stall_timeout_s = 30") || !text.contains(&default_retention) {
        return Err(format!(
            "{}: no `stall_timeout_s = 30` or `{default_retention}`:\n{text}",
            config.display()
        ));
    }
    let text = text
        .replace(
            "stall_timeout_s = 30",
            &format!(
                "stall_timeout_s = {}\nping_interval_s = 1",
                settings.stall_timeout_s
            ),
        )
        .replace(
            &default_retention,
            &format!("retention_changes = {}", settings.retention),
        );
    std::fs::write(&config, text).map_err(at)?;
    Ok(NodeDir {
        name: name.to_owned(),
        dir,
        listen,
        http,
        fingerprint,
        store,
    })
}

/// Appends a `[[peers]]` entry to `dir/concord.toml`, with an `address` to dial if given.
pub fn add_peer(
    dir: &Path,
    name: &str,
    fingerprint: &str,
    address: Option<SocketAddr>,
) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("concord.toml"))?;
    writeln!(
        file,
        "\n[[peers]]\nname = {name:?}\nfingerprint = {fingerprint:?}"
    )?;
    if let Some(address) = address {
        writeln!(file, "address = \"{address}\"")?;
    }
    Ok(())
}

/// For each `(dialer, listener)`: a proxy in front of the listener, the dialer told to
/// dial it, the listener told to accept the dialer.
pub fn link<S>(
    runtime: &tokio::runtime::Runtime,
    nodes: &[NodeDir<S>],
    pairs: &[(usize, usize)],
) -> io::Result<Vec<Link>> {
    let mut links = Vec::new();
    for &(a, b) in pairs {
        let proxy = runtime.block_on(Proxy::start(nodes[b].listen))?;
        add_peer(
            &nodes[a].dir,
            &nodes[b].name,
            &nodes[b].fingerprint,
            Some(proxy.addr()),
        )?;
        add_peer(&nodes[b].dir, &nodes[a].name, &nodes[a].fingerprint, None)?;
        links.push(Link {
            dialer: a,
            listener: b,
            proxy,
        });
    }
    Ok(links)
}

/// The byte and connection counts of every link's proxy, as `dialer->listener`.
pub fn link_counts<S>(links: &[Link], nodes: &[NodeDir<S>]) -> Vec<(String, ProxyCounts)> {
    links
        .iter()
        .map(|l| {
            (
                format!("{}->{}", nodes[l.dialer].name, nodes[l.listener].name),
                l.proxy.counts(),
            )
        })
        .collect()
}

/// Starts `concord serve` on every node, with `env(i)` added to node `i`'s environment
/// (for every restart too).
pub fn start<S>(
    binary: &Path,
    nodes: &[NodeDir<S>],
    env: impl Fn(usize) -> Vec<(std::ffi::OsString, std::ffi::OsString)>,
) -> io::Result<Vec<Mutex<ServeProcess>>> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, d)| ServeProcess::start_with_env(binary, &d.dir, env(i)).map(Mutex::new))
        .collect()
}
