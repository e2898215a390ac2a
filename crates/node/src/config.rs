//! The node's configuration file, `concord.toml` in the data directory.
//!
//! Loading checks everything that can be checked without the network and reports every
//! problem found at once, so a person fixes the file in one pass rather than one error
//! per start. A peer configured with this node's own fingerprint would make the node
//! dial itself forever, and two peers sharing a fingerprint would make one of them
//! unreachable; both are refused with the names involved. The node's own fingerprint
//! is only known with its identity, so that check runs when the node starts
//! ([`NodeConfig::check_own_fingerprint`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use concord_core::mapping::LinkMapping;
use serde::{Deserialize, Serialize};

use crate::identity::Fingerprint;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong, with line and column.
        source: toml::de::Error,
    },
    /// The values are inconsistent: every problem found, each in words.
    #[error("{path}: {}", list(problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        problems: Vec<String>,
    },
}

fn list(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        many => {
            let mut out = format!("{} problems:", many.len());
            for p in many {
                out.push_str("\n  - ");
                out.push_str(p);
            }
            out
        }
    }
}

/// Reads `listen` and `http`: an IP address and port. Host names are not resolved (a
/// listening address names an interface), so the error says what is expected.
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    text.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port: expected one such as 127.0.0.1:7400 \
             (this machine only) or 0.0.0.0:7400 (every interface); host names are not resolved"
        ))
    })
}

/// Everything a node needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeSection,
    /// The database this node keeps in sync.
    pub store: StoreSection,
    /// Sync tunables.
    #[serde(default)]
    pub sync: SyncSection,
    /// Configured peers.
    #[serde(default, rename = "peers")]
    pub peers: Vec<PeerConfig>,
}

/// `[node]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// A name for logs and status.
    pub name: String,
    /// Where peers connect; none to accept no connections.
    #[serde(default, deserialize_with = "socket_addr")]
    pub listen: Option<SocketAddr>,
    /// Where `/metrics`, `/health` and `/v1/status` are served; none to disable.
    #[serde(default, deserialize_with = "socket_addr")]
    pub http: Option<SocketAddr>,
}

/// `[store]`: the database to keep in sync (a SQLite file, a PostgreSQL or a
/// MySQL/MariaDB database), or a relay store in the data directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The SQLite file to keep in sync (relative paths are relative to the data directory).
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL database to keep in sync, as a URL
    /// (`postgres://user:password@host:5432/database`).
    #[serde(default)]
    pub postgres: Option<String>,
    /// A MySQL or MariaDB database to keep in sync, as a URL
    /// (`mysql://user:password@host:3306/database`).
    #[serde(default)]
    pub mysql: Option<String>,
    /// Tables of the database to track.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Run as a hub or relay with only Concord's own store (`relay.db` in the data
    /// directory), forwarding every change.
    #[serde(default)]
    pub relay: bool,
    /// How a PostgreSQL database's writes are captured when it is first tracked:
    /// `"log"` (the default: from the write-ahead log when the server allows it, else
    /// triggers) or `"triggers"`.
    #[serde(default, skip_serializing_if = "CaptureSetting::is_default")]
    pub capture: CaptureSetting,
}

/// `[store] capture`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureSetting {
    /// From the database's log when the server allows it, else triggers.
    #[default]
    Log,
    /// Triggers, always.
    Triggers,
}

impl CaptureSetting {
    fn is_default(&self) -> bool {
        *self == CaptureSetting::Log
    }

    /// The store option it stands for.
    pub fn method(self) -> concord_store::CaptureMethod {
        match self {
            CaptureSetting::Log => concord_store::CaptureMethod::Log,
            CaptureSetting::Triggers => concord_store::CaptureMethod::Triggers,
        }
    }
}

/// Which store `concord init` configures.
#[derive(Clone, Copy, Debug)]
pub enum StoreChoice<'a> {
    /// A SQLite file.
    Sqlite(&'a str),
    /// A PostgreSQL database, by URL.
    Postgres(&'a str),
    /// A MySQL/MariaDB database, by URL.
    Mysql(&'a str),
    /// A hub or relay with only Concord's own store.
    Relay,
}

/// `[sync]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    /// Remote timestamps further ahead of local time than this are refused.
    pub max_clock_drift_ms: u64,
    /// Changes per batch sent to a peer.
    pub batch_changes: usize,
    /// Batches sent to a peer and not yet acknowledged, at most.
    pub window: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: u32,
    /// Seconds between liveness pings.
    pub ping_interval_s: u64,
    /// A peer that neither reads nor writes for this long is disconnected.
    pub stall_timeout_s: u64,
    /// The change log keeps at most this many entries (the newest); older ones are
    /// pruned. Entries no peer has acknowledged yet are pruned too once the limit is
    /// reached, and a peer that still needs them is reported as behind retention: it
    /// needs a snapshot.
    pub retention_changes: u64,
    /// Safety-net capture interval, in milliseconds. Capture normally runs the moment
    /// the database file changes; this only bounds how long a missed file event delays it.
    pub capture_fallback_ms: u64,
    /// Capture interval for PostgreSQL and MySQL stores, in milliseconds: a server has
    /// no file to watch, so the node polls its change table.
    pub capture_poll_ms: u64,
    /// How often, in milliseconds, a server store that can say cheaply whether
    /// anything was written (PostgreSQL: its WAL position) is asked; capture runs as
    /// soon as the answer is yes. Replaces `capture_poll_ms` for such stores.
    pub capture_check_ms: u64,
}

impl Default for SyncSection {
    fn default() -> Self {
        Self {
            max_clock_drift_ms: 5 * 60 * 1000,
            batch_changes: 1_000,
            window: 4,
            max_frame_bytes: concord_wire::DEFAULT_MAX_FRAME,
            ping_interval_s: 10,
            stall_timeout_s: 30,
            retention_changes: 1_000_000,
            capture_fallback_ms: 1_000,
            capture_poll_ms: 50,
            capture_check_ms: 2,
        }
    }
}

impl SyncSection {
    /// `stall_timeout_s` as a duration.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_s.max(1))
    }
}

/// `[[peers]]`: another node this one syncs with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// A name for logs and status.
    pub name: String,
    /// Where to dial the peer; without it, the peer is expected to dial this node.
    #[serde(default)]
    pub address: Option<String>,
    /// The peer's certificate fingerprint (printed by its `concord init`).
    pub fingerprint: Fingerprint,
    /// How the peer's tables and columns map onto this node's (`[[peers.tables]]`):
    /// renames, a subset of columns, casts and defaults. Tables not listed keep their
    /// names. See `docs/schema-mapping.md`.
    #[serde(default, skip_serializing_if = "LinkMapping::is_empty")]
    pub tables: LinkMapping,
    /// Whether a column this peer's changes name and a tracked table here lacks is
    /// added here (at the end, nullable, typed from the values the changes carry)
    /// instead of the changes being set aside until a person adds it. Drops, renames
    /// and new tables never travel. Off by default. See `docs/schema-changes.md`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub propagate_schema: bool,
}

impl NodeConfig {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "concord.toml";

    /// Reads and checks `dir/concord.toml`.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let config: NodeConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path, problems });
        }
        Ok(config)
    }

    /// Every problem of the configuration, in words; empty if there is none.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let store = &self.store;
        let chosen = [
            store.sqlite.is_some(),
            store.postgres.is_some(),
            store.mysql.is_some(),
            store.relay,
        ]
        .iter()
        .filter(|&&set| set)
        .count();
        if chosen == 0 {
            problems.push("[store] needs one of `sqlite = \"file.db\"`, `postgres = \"postgres://...\"`, `mysql = \"mysql://...\"` or `relay = true`".into());
        }
        if chosen > 1 {
            problems.push(
                "[store] takes only one of `sqlite`, `postgres`, `mysql` and `relay = true`".into(),
            );
        }
        if !store.relay && store.tables.is_empty() {
            problems.push("[store] `tables` must name at least one table to track".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut fingerprints: std::collections::HashMap<Fingerprint, &str> =
            std::collections::HashMap::new();
        for peer in &self.peers {
            if !names.insert(&peer.name) {
                problems.push(format!("two [[peers]] are named \"{}\"", peer.name));
            }
            if let Some(first) = fingerprints.insert(peer.fingerprint, &peer.name) {
                problems.push(format!(
                    "[[peers]] \"{first}\" and \"{}\" have the same fingerprint {}: one node \
                     can be only one peer; remove one or correct its fingerprint",
                    peer.name, peer.fingerprint
                ));
            }
            if let Err(e) = peer.tables.validate() {
                problems.push(format!("peer \"{}\": [[peers.tables]]: {e}", peer.name));
            }
        }
        if self.sync.batch_changes == 0 || self.sync.batch_changes > concord_wire::MAX_BATCH_CHANGES
        {
            problems.push(format!(
                "[sync] batch_changes must be between 1 and {}",
                concord_wire::MAX_BATCH_CHANGES
            ));
        }
        if self.sync.window == 0 {
            problems.push("[sync] window must be at least 1".into());
        }
        problems
    }

    /// Refuses a `[[peers]]` entry with this node's own fingerprint: the node would dial
    /// (or wait for) itself forever. `path` names the file in the error.
    pub fn check_own_fingerprint(&self, own: Fingerprint, path: &Path) -> Result<(), ConfigError> {
        let problems: Vec<String> = self
            .peers
            .iter()
            .filter(|p| p.fingerprint == own)
            .map(|p| {
                format!(
                    "[[peers]] \"{}\" has this node's own fingerprint {own}: a node cannot be its \
                     own peer; put the other node's fingerprint there (its `concord init` or \
                     `concord status` prints it)",
                    p.name
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// The commented configuration `concord init` writes.
    pub fn template(
        name: &str,
        store: StoreChoice<'_>,
        tables: &[String],
        listen: &str,
        http: &str,
    ) -> String {
        let tables = tables
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let store = match store {
            StoreChoice::Sqlite(db) => format!(
                "# The SQLite file to keep in sync (relative to this directory) and the tables to\n\
                 # track. Every write to them, by any program, is captured.\n\
                 sqlite = {db:?}\ntables = [{tables}]\n"
            ),
            StoreChoice::Postgres(url) => format!(
                "# The PostgreSQL database to keep in sync and the tables to track. Capture\n\
                 # triggers and Concord's metadata go in its `concord` schema.\n\
                 postgres = {url:?}\ntables = [{tables}]\n"
            ),
            StoreChoice::Mysql(url) => format!(
                "# The MySQL/MariaDB database to keep in sync and the tables to track. Capture\n\
                 # triggers and Concord's metadata (concord_* tables) go in the same database.\n\
                 mysql = {url:?}\ntables = [{tables}]\n"
            ),
            StoreChoice::Relay => {
                "# A hub or relay: no user database, only Concord's own store (relay.db here),\n\
                     # forwarding every change between its peers.\nrelay = true\n"
                    .to_owned()
            }
        };
        let max_frame = concord_wire::DEFAULT_MAX_FRAME;
        format!(
            "# Concord node configuration. `concord serve --dir <this directory>` runs it.\n\
             \n\
             [node]\n\
             # A name for logs and status.\n\
             name = {name:?}\n\
             # Where peers connect (mutual TLS). Remove to accept no connections.\n\
             listen = {listen:?}\n\
             # /metrics (Prometheus), /health and /v1/status. Remove to disable.\n\
             http = {http:?}\n\
             \n\
             [store]\n\
             {store}\
             \n\
             [sync]\n\
             # Remote timestamps further ahead of local time than this are refused.\n\
             max_clock_drift_ms = 300000\n\
             # Changes per batch, and unacknowledged batches in flight per peer.\n\
             batch_changes = 1000\n\
             window = 4\n\
             # Largest frame accepted from a peer, in bytes (batches are cut to fit the\n\
             # smaller of both ends' limits).\n\
             max_frame_bytes = {max_frame}\n\
             # A peer that stops reading or writing for this long is disconnected.\n\
             stall_timeout_s = 30\n\
             # The change log keeps at most this many entries; a peer that needs older ones\n\
             # catches up from the rows that differ (range reconciliation) instead.\n\
             retention_changes = 1000000\n\
             \n\
             # One [[peers]] table per node this one syncs with. Give `address` to dial the\n\
             # peer; leave it out if the peer dials this node. The fingerprint is printed by\n\
             # the peer's `concord init` and `concord status`.\n\
             #\n\
             # [[peers]]\n\
             # name = \"hub\"\n\
             # address = \"127.0.0.1:7400\"\n\
             # fingerprint = \"sha256:...\"\n\
             # Add here the columns this peer's tables gain (at the end, nullable, typed\n\
             # from the values it sends) instead of setting its changes aside until you\n\
             # add them. Drops, renames and new tables never travel.\n\
             # propagate_schema = false\n\
             #\n\
             # A peer whose tables differ from this node's gets a mapping per table (renames,\n\
             # a subset of columns, casts, defaults; see docs/schema-mapping.md):\n\
             #\n\
             # [[peers.tables]]\n\
             # local = \"customers\"\n\
             # remote = \"crm_contacts\"\n\
             # key = [\"id\"]\n\
             # only_listed = true\n\
             # columns = [\n\
             #   {{ local = \"id\", remote = \"contact_id\", local_type = \"uuid\", remote_type = \"text\" }},\n\
             #   {{ local = \"full_name\", remote = \"name\" }},\n\
             #   {{ local = \"email\" }},\n\
             # ]\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_and_passes_its_own_checks() {
        let text = NodeConfig::template(
            "shop",
            StoreChoice::Sqlite("shop.db"),
            &["customers".into()],
            "127.0.0.1:7400",
            "127.0.0.1:7401",
        );
        let config: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.problems(), Vec::<String>::new());
        assert_eq!(config.store.tables, vec!["customers".to_string()]);
        assert!(text.contains("\nmax_frame_bytes = "), "{text}");
        assert_eq!(config.sync.max_frame_bytes, concord_wire::DEFAULT_MAX_FRAME);
        for store in [
            StoreChoice::Postgres("postgres://app@db/crm"),
            StoreChoice::Mysql("mysql://app@db/crm"),
        ] {
            let text =
                NodeConfig::template("x", store, &["t".into()], "127.0.0.1:1", "127.0.0.1:2");
            let config: NodeConfig = toml::from_str(&text).unwrap();
            assert_eq!(config.problems(), Vec::<String>::new());
        }
        let relay: NodeConfig = toml::from_str(&NodeConfig::template(
            "hub",
            StoreChoice::Relay,
            &[],
            "127.0.0.1:1",
            "127.0.0.1:2",
        ))
        .unwrap();
        assert_eq!(relay.problems(), Vec::<String>::new());
        assert!(relay.store.relay);
    }

    #[test]
    fn propagate_schema_is_off_unless_a_peer_entry_turns_it_on() {
        let fingerprint = format!("sha256:{}", hex::encode([7u8; 32]));
        let peers = |extra: &str| {
            format!(
                "[node]\nname = \"x\"\n[store]\nrelay = true\n\
                 [[peers]]\nname = \"hub\"\nfingerprint = \"{fingerprint}\"\n{extra}"
            )
        };
        let off: NodeConfig = toml::from_str(&peers("")).unwrap();
        assert!(!off.peers[0].propagate_schema);
        let on: NodeConfig = toml::from_str(&peers("propagate_schema = true\n")).unwrap();
        assert!(on.peers[0].propagate_schema);
        assert_eq!(on.problems(), Vec::<String>::new());
        // The template documents it, commented out.
        let text = NodeConfig::template(
            "shop",
            StoreChoice::Sqlite("shop.db"),
            &["customers".into()],
            "127.0.0.1:7400",
            "127.0.0.1:7401",
        );
        assert!(text.contains("# propagate_schema = false"), "{text}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name_and_line() {
        let text = "[node]\nname = \"x\"\nlisten_on = \"1.2.3.4:5\"\n[store]\nrelay = true\n";
        let err = toml::from_str::<NodeConfig>(text).unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    fn with_peers(peers: &[(&str, Fingerprint)]) -> NodeConfig {
        let mut text = String::from("[node]\nname = \"x\"\n[store]\nrelay = true\n");
        for (name, fingerprint) in peers {
            text.push_str(&format!(
                "[[peers]]\nname = \"{name}\"\nfingerprint = \"{fingerprint}\"\n"
            ));
        }
        toml::from_str(&text).unwrap()
    }

    fn fingerprint(byte: u8) -> Fingerprint {
        format!("sha256:{}", hex::encode([byte; 32]))
            .parse()
            .unwrap()
    }

    #[test]
    fn two_peers_with_one_fingerprint_are_refused_naming_both() {
        let config = with_peers(&[("office", fingerprint(1)), ("shop", fingerprint(1))]);
        let problems = config.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"office\"") && problems[0].contains("\"shop\""),
            "{problems:?}"
        );
        assert!(
            problems[0].contains(&fingerprint(1).to_string()),
            "{problems:?}"
        );
    }

    #[test]
    fn a_peer_with_the_nodes_own_fingerprint_is_refused() {
        let config = with_peers(&[("hub", fingerprint(2)), ("me", fingerprint(3))]);
        let err = config
            .check_own_fingerprint(fingerprint(3), Path::new("concord.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"me\"") && err.contains("own fingerprint"),
            "{err}"
        );
        assert!(!err.contains("\"hub\""), "{err}");
        assert!(
            config
                .check_own_fingerprint(fingerprint(4), Path::new("concord.toml"))
                .is_ok()
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut config = with_peers(&[("a", fingerprint(5)), ("a", fingerprint(5))]);
        config.sync.window = 0;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(NodeConfig::FILE),
            toml::to_string(&config).unwrap(),
        )
        .unwrap();
        let err = NodeConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("3 problems"), "{err}");
        assert!(err.contains("named \"a\""), "{err}");
        assert!(err.contains("same fingerprint"), "{err}");
        assert!(err.contains("window"), "{err}");
    }

    #[test]
    fn a_host_name_as_listen_address_says_what_is_expected() {
        let text = "[node]\nname = \"x\"\nlisten = \"localhost:7400\"\n[store]\nrelay = true\n";
        let err = toml::from_str::<NodeConfig>(text).unwrap_err().to_string();
        assert!(
            err.contains("\"localhost:7400\" is not an IP address and port"),
            "{err}"
        );
        assert!(
            err.contains("127.0.0.1:7400") && err.contains("0.0.0.0:7400"),
            "{err}"
        );
        let ok = "[node]\nname = \"x\"\nlisten = \"0.0.0.0:7400\"\n[store]\nrelay = true\n";
        let config = toml::from_str::<NodeConfig>(ok).unwrap();
        assert_eq!(config.node.listen, Some("0.0.0.0:7400".parse().unwrap()));
        assert_eq!(config.node.http, None);
    }
}
