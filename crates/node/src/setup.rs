//! Setting a node up: [`check_store`] checks what `init` is about to configure, `init`
//! writes a data directory, [`open_store`] opens (and tracks) the store a configuration
//! names for `serve`, and [`open_existing_store`] opens it without tracking or
//! installing anything. They live apart from the running node so that one-shot
//! commands (`concord init`, `conflicts --dir`, `info --dir`, `failures --dir`) reach a
//! node's store exactly as `serve` does, and so that `init` refuses, up front, every
//! configuration `serve` would refuse later.

use std::path::Path;
use std::time::Duration;

use concord_mysql::MyStore;
use concord_postgres::PgStore;
use concord_sqlite::{FileLock, SqliteStore};
use concord_store::{Store, StoreOptions, TrackError};

use crate::config::{ConfigError, NodeConfig, StoreChoice};
use crate::error::NodeError;
use crate::identity::{Fingerprint, Identity};

/// Checks, changing nothing, that `tables` of the database `store` names can be tracked:
/// the SQLite file exists (`store` holds its path as given, resolved against the current
/// directory), or the server accepts the connection; each table exists, has a primary
/// key and only columns of types the store can replicate. Uses each store's own `check`,
/// which reads the schema with the code `track` uses. Every problem is reported at once
/// ([`TrackError::Problems`] when there are several). A relay has nothing to check.
pub fn check_store(store: StoreChoice<'_>, tables: &[String]) -> Result<(), TrackError> {
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    match store {
        StoreChoice::Sqlite(path) => SqliteStore::check(path, &tables),
        StoreChoice::Postgres(url) => PgStore::check(url, &tables),
        StoreChoice::Mysql(url) => MyStore::check(url, &tables),
        StoreChoice::Relay => Ok(()),
    }
}

/// Writes a commented `concord.toml` and a new identity into `dir`, and returns the
/// identity's fingerprint (what peers pin).
pub fn init(
    dir: &Path,
    name: &str,
    store: StoreChoice<'_>,
    tables: &[String],
    listen: &str,
    http: &str,
) -> Result<Fingerprint, NodeError> {
    let config_path = dir.join(NodeConfig::FILE);
    if config_path.exists() {
        return Err(NodeError::AlreadyInitialized(dir.to_path_buf()));
    }
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let written = (|| -> Result<Fingerprint, NodeError> {
        let identity = Identity::generate(name)?;
        identity.save(&dir.join("identity"))?;
        let text = NodeConfig::template(name, store, tables, listen, http);
        std::fs::write(&config_path, text).map_err(|source| ConfigError::Io {
            path: config_path.clone(),
            source,
        })?;
        Ok(identity.fingerprint())
    })();
    if written.is_err() && created {
        // Nothing half-written: a directory this call created goes with its contents.
        let _ = std::fs::remove_dir_all(dir);
    }
    written
}

/// Opens the store `config` names as it is, without tracking, refreshing capture or
/// creating anything: for commands that only read (`conflicts`, `failures`, `info`).
/// A database that was never tracked (the node never served) is an error saying so.
/// Synchronous; call it off any async runtime's threads.
pub fn open_existing_store(dir: &Path, config: &NodeConfig) -> Result<Box<dyn Store>, NodeError> {
    let options = StoreOptions {
        max_clock_drift: Duration::from_millis(config.sync.max_clock_drift_ms),
        ..StoreOptions::default()
    };
    let store: Box<dyn Store> = if config.store.relay {
        Box::new(SqliteStore::open_with(dir.join("relay.db"), options)?)
    } else if let Some(url) = &config.store.postgres {
        Box::new(PgStore::open_with(url, options)?)
    } else if let Some(url) = &config.store.mysql {
        Box::new(MyStore::open_with(url, options)?)
    } else {
        let db = config.store.sqlite.clone().unwrap_or_default();
        let path = if db.is_absolute() { db } else { dir.join(db) };
        Box::new(SqliteStore::open_with(path, options)?)
    };
    Ok(store)
}

/// How long `serve` waits for another holder of its SQLite file to let go.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Tracks `tables` with `track`, leaving out configured tables that no longer exist (a
/// table dropped while the node was stopped must not stop the others): each left out
/// is returned as a problem, in words. Fails as `track` does if none is left.
fn track_present<S>(
    tables: &[String],
    track: impl Fn(&[&str]) -> Result<S, TrackError>,
) -> Result<(S, Vec<String>), TrackError> {
    let mut present: Vec<&str> = tables.iter().map(String::as_str).collect();
    let mut problems = Vec::new();
    loop {
        match track(&present) {
            Err(TrackError::NoSuchTable(gone))
                if present.len() > 1 && present.contains(&gone.as_str()) =>
            {
                tracing::warn!(table = %gone, "a configured table does not exist; the others are synced");
                problems.push(format!(
                    "table {gone} is in concord.toml but does not exist; it is not synced (create it again and restart the node, or remove it from the configuration)"
                ));
                present.retain(|t| *t != gone);
            }
            other => return other.map(|store| (store, problems)),
        }
    }
}

/// Opens (and tracks, refreshing capture) the store `config` names; `dir` resolves a
/// relative SQLite path and holds a relay's store. The synchronous drivers run off the
/// async runtime's threads. Configured tables that do not exist are left out and
/// returned as problems (see `track_present`).
pub async fn open_store(
    dir: &Path,
    config: &NodeConfig,
) -> Result<(Box<dyn Store>, Vec<String>), NodeError> {
    let options = StoreOptions {
        max_clock_drift: Duration::from_millis(config.sync.max_clock_drift_ms),
        capture: config.store.capture.method(),
        ..StoreOptions::default()
    };
    // One Concord process at a time per SQLite file: a second `serve` of this node, or a
    // copy of its directory, is refused naming this one. A node restarted in the same
    // process waits a moment for its previous instance to let go.
    let holder = format!("concord serve --dir {}", dir.display());
    let lock = |path: &Path| FileLock::acquire(path, &holder, LOCK_WAIT);
    let tables = config.store.tables.clone();
    let opened: (Box<dyn Store>, Vec<String>) = if config.store.relay {
        let path = dir.join("relay.db");
        let held = lock(&path)?;
        let mut store = SqliteStore::open_relay(path, options)?;
        store.hold(held);
        (Box::new(store), Vec::new())
    } else if let Some(url) = &config.store.postgres {
        let url = url.clone();
        // The synchronous drivers must not run on the async runtime's threads.
        let (store, problems) = tokio::task::spawn_blocking(move || {
            track_present(&tables, |t| PgStore::track(&url, t, options.clone()))
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
        (Box::new(store), problems)
    } else if let Some(url) = &config.store.mysql {
        let url = url.clone();
        let (store, problems) = tokio::task::spawn_blocking(move || {
            track_present(&tables, |t| MyStore::track(&url, t, options.clone()))
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
        (Box::new(store), problems)
    } else {
        let db = config.store.sqlite.clone().unwrap_or_default();
        let path = if db.is_absolute() { db } else { dir.join(db) };
        // No lock file beside a database that does not exist: tracking says so.
        let held = if path.exists() {
            Some(lock(&path)?)
        } else {
            None
        };
        let (mut store, problems) =
            track_present(&tables, |t| SqliteStore::track(&path, t, options.clone()))?;
        if let Some(held) = held {
            store.hold(held);
        }
        (Box::new(store), problems)
    };
    Ok(opened)
}
