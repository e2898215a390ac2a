//! Setting a node up: `init` writes a data directory, and [`open_store`] opens the
//! store a configuration names. Both live apart from the running node so that one-shot
//! commands (`concord conflicts --dir`, `info`, `failures`) open a node's store exactly
//! as `serve` does.

use std::path::Path;
use std::time::Duration;

use concord_mysql::MyStore;
use concord_postgres::PgStore;
use concord_sqlite::SqliteStore;
use concord_store::{Store, StoreOptions};

use crate::config::{ConfigError, NodeConfig, StoreChoice};
use crate::identity::{Fingerprint, Identity};
use crate::node::NodeError;

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
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let identity = Identity::generate(name)?;
    identity.save(&dir.join("identity"))?;
    let text = NodeConfig::template(name, store, tables, listen, http);
    std::fs::write(&config_path, text).map_err(|source| ConfigError::Io {
        path: config_path,
        source,
    })?;
    Ok(identity.fingerprint())
}

/// Opens (and tracks, refreshing capture) the store `config` names; `dir` resolves a
/// relative SQLite path and holds a relay's store. The synchronous drivers run off the
/// async runtime's threads.
pub async fn open_store(dir: &Path, config: &NodeConfig) -> Result<Box<dyn Store>, NodeError> {
    let options = StoreOptions {
        max_clock_drift: Duration::from_millis(config.sync.max_clock_drift_ms),
        ..StoreOptions::default()
    };
    let tables: Vec<&str> = config.store.tables.iter().map(String::as_str).collect();
    let store: Box<dyn Store> = if config.store.relay {
        Box::new(SqliteStore::open_relay(dir.join("relay.db"), options)?)
    } else if let Some(url) = &config.store.postgres {
        let (url, tables, options) = (url.clone(), config.store.tables.clone(), options);
        // The synchronous drivers must not run on the async runtime's threads.
        Box::new(
            tokio::task::spawn_blocking(move || {
                let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
                PgStore::track(&url, &tables, options)
            })
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))??,
        )
    } else if let Some(url) = &config.store.mysql {
        let (url, tables, options) = (url.clone(), config.store.tables.clone(), options);
        Box::new(
            tokio::task::spawn_blocking(move || {
                let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
                MyStore::track(&url, &tables, options)
            })
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))??,
        )
    } else {
        let db = config.store.sqlite.clone().unwrap_or_default();
        let path = if db.is_absolute() { db } else { dir.join(db) };
        Box::new(SqliteStore::track(&path, &tables, options)?)
    };
    Ok(store)
}
