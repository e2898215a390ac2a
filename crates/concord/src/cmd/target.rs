//! Which store a read-only command (`conflicts`, `failures`, `info`) looks at: a SQLite
//! file named directly, or the store of a node's data directory, whatever its kind
//! (SQLite, PostgreSQL, MySQL/MariaDB, relay). Both are opened through the `Store`
//! trait without tracking or installing anything, so looking never changes a database
//! (beyond upgrading, once, the metadata of a database an older Concord tracked).

use std::path::{Path, PathBuf};

use anyhow::Context;
use concord_node::NodeConfig;
use concord_sqlite::SqliteStore;
use concord_store::Store;

/// A tracked SQLite file, or a node's data directory.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
pub(crate) struct Target {
    /// A tracked SQLite file.
    #[arg(group = "target")]
    db: Option<PathBuf>,
    /// A node's data directory (made by `concord init`); works for every store kind.
    #[arg(long, group = "target")]
    dir: Option<PathBuf>,
}

/// An opened store with what is known about it from its configuration.
pub(crate) struct Opened {
    pub(crate) store: Box<dyn Store>,
    /// Tracked tables, when known.
    pub(crate) tables: Vec<String>,
    /// For people: the file, or the URL without its password.
    pub(crate) location: String,
    /// Writes waiting to be captured, where the store can say cheaply (a SQLite file).
    pub(crate) pending: Option<u64>,
}

impl Target {
    /// Takes the exclusive hold on the target's SQLite file, if it is one, for a command
    /// that writes: a running node (or another command) holding it is named.
    pub(crate) fn hold(&self, command: &str) -> anyhow::Result<Option<concord_sqlite::FileLock>> {
        let file = match (&self.db, &self.dir) {
            (Some(db), None) => Some(db.clone()),
            (_, Some(dir)) => {
                let config = NodeConfig::load(dir)?;
                if config.store.relay {
                    Some(dir.join("relay.db"))
                } else if config.store.postgres.is_some() || config.store.mysql.is_some() {
                    None
                } else {
                    let db = config.store.sqlite.clone().unwrap_or_default();
                    Some(if db.is_absolute() { db } else { dir.join(db) })
                }
            }
            (None, None) => None,
        };
        match file {
            Some(file) => super::hold_file(&file, command),
            None => Ok(None),
        }
    }

    /// The node's data directory, when one was given.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub(crate) fn open(&self) -> anyhow::Result<Opened> {
        match (&self.db, &self.dir) {
            (_, Some(dir)) => open_dir(dir),
            (Some(db), None) => {
                let store =
                    SqliteStore::open(db).with_context(|| format!("opening {}", db.display()))?;
                let tables = store.tables().iter().map(|t| t.name.clone()).collect();
                let pending = Some(store.pending_len()?);
                Ok(Opened {
                    store: Box::new(store),
                    tables,
                    location: db.display().to_string(),
                    pending,
                })
            }
            (None, None) => anyhow::bail!("name a SQLite file or give --dir NODE"),
        }
    }
}

fn open_dir(dir: &Path) -> anyhow::Result<Opened> {
    let config = NodeConfig::load(dir)?;
    let store = concord_node::open_existing_store(dir, &config)
        .with_context(|| format!("opening the store of the node in {}", dir.display()))?;
    let location = if config.store.relay {
        format!("{} (relay)", dir.join("relay.db").display())
    } else {
        store.location()
    };
    Ok(Opened {
        tables: config.store.tables.clone(),
        store,
        location,
        pending: None,
    })
}
