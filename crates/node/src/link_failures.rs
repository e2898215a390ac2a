//! What one link could not carry: source transactions withheld from a peer because the
//! link's schema mapping cannot convert them.
//!
//! A store's failures table lists the changes *this database* refused; it holds only
//! local names and knows nothing of peers. A withheld transaction is a matter of one
//! link (the same change reaches every other peer), so it is recorded here, beside the
//! node's configuration, in `link-failures.json` of the data directory, whatever the
//! store kind (a relay too). Two kinds of entries:
//!
//! - **outgoing**: this node did not send a transaction to `peer` (its origin and
//!   sequence range, the tables and keys of its rows, the mapping's error). `concord
//!   failures retry` marks it; at its next session with that peer the node sends those
//!   rows' current states (sequence 0, merged as a join) and forgets the entry, or
//!   keeps it with the new reason if they still cannot be converted.
//!   A row's state sent by a snapshot or a reconciliation (sequence 0) that cannot be
//!   converted is left out and recorded the same way, with sequence 0.
//! - **withheld**: `peer` told this node it withheld a range (protocol version 5); this
//!   node counted the range as held so the changes after it flow, and lists it here so
//!   it is never lost silently.
//!
//! An entry is written (to a temporary file, synced, renamed over the old one) before
//! the peer is told or the version vector advances, so a crash in between at worst
//! records an entry twice, never loses one; entries are keyed by direction, peer,
//! origin and first sequence, so recording again replaces.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use concord_core::NodeId;
use serde::{Deserialize, Serialize};

/// The file, in a node's data directory.
pub const FILE: &str = "link-failures.json";

/// Which way the withheld transaction went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This node withheld it from the peer.
    Outgoing,
    /// The peer withheld it from this node.
    Withheld,
}

impl Direction {
    /// The word `concord failures` prints.
    pub fn word(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Withheld => "withheld",
        }
    }
}

/// One row of a withheld transaction, by this node's names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRow {
    /// The local table.
    pub table: String,
    /// The encoded primary key, in hex.
    pub key: String,
    /// The key, for people.
    pub key_text: String,
}

/// One source transaction a link did not carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFailure {
    /// Outgoing (this node withheld it) or withheld (the peer did).
    pub direction: Direction,
    /// The peer's name in `[[peers]]`.
    pub peer: String,
    /// The transaction's origin.
    pub origin: String,
    /// Its first sequence number.
    pub first_seq: u64,
    /// Its last sequence number.
    pub last_seq: u64,
    /// Its rows (outgoing only: the peer does not say which rows it withheld).
    #[serde(default)]
    pub rows: Vec<LinkRow>,
    /// Why.
    pub reason: String,
    /// When it was recorded, in ms since the epoch.
    pub at_ms: u64,
    /// Outgoing only: the rows are to be sent again at the next session with the peer.
    #[serde(default)]
    pub retry: bool,
}

impl LinkFailure {
    /// How many changes it covers.
    pub fn changes(&self) -> u64 {
        self.last_seq.saturating_sub(self.first_seq) + 1
    }

    /// Whether both record the same transaction (or, for a row's state, sequence 0,
    /// the same row) on the same link.
    fn same(&self, other: &LinkFailure) -> bool {
        self.direction == other.direction
            && self.peer == other.peer
            && self.origin == other.origin
            && self.first_seq == other.first_seq
            && (self.first_seq != 0 || self.rows == other.rows)
    }

    /// The table and key of its first row, or empty strings.
    pub fn first_row(&self) -> (String, String) {
        self.rows
            .first()
            .map(|r| (r.table.clone(), r.key_text.clone()))
            .unwrap_or_default()
    }
}

/// Why the link-failures file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LinkFailuresError {
    /// Reading or writing the file.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not what this module writes.
    #[error("{} does not hold link failures", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        source: serde_json::Error,
    },
}

/// The link failures of one data directory.
pub struct LinkFailures {
    path: PathBuf,
    /// Serializes this process's read-modify-write cycles.
    lock: Mutex<()>,
}

impl LinkFailures {
    /// The link failures of data directory `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE),
            lock: Mutex::new(()),
        }
    }

    /// Every entry, oldest first; none when the file does not exist.
    pub fn load(&self) -> Result<Vec<LinkFailure>, LinkFailuresError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(LinkFailuresError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text).map_err(|source| LinkFailuresError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    fn save(&self, entries: &[LinkFailure]) -> Result<(), LinkFailuresError> {
        let io = |source| LinkFailuresError::Io {
            path: self.path.clone(),
            source,
        };
        let text =
            serde_json::to_vec_pretty(entries).map_err(|source| LinkFailuresError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        let temporary = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary).map_err(io)?;
            file.write_all(&text).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            // Makes the rename durable; a file system that cannot sync a directory
            // still renamed atomically.
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Reads the entries, lets `change` edit them, and writes them back if it says so.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<LinkFailure>) -> (bool, T),
    ) -> Result<T, LinkFailuresError> {
        let _held = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut entries = self.load()?;
        let (changed, result) = change(&mut entries);
        if changed {
            self.save(&entries)?;
        }
        Ok(result)
    }

    /// Records `entry`, replacing an entry for the same transaction and peer.
    pub fn record(&self, entry: LinkFailure) -> Result<(), LinkFailuresError> {
        self.record_all(vec![entry])
    }

    /// Records every entry in one write, each replacing an entry for the same
    /// transaction (or row) and peer.
    pub fn record_all(&self, new: Vec<LinkFailure>) -> Result<(), LinkFailuresError> {
        self.update(|entries| {
            for entry in new {
                entries.retain(|e| !e.same(&entry));
                entries.push(entry);
            }
            (true, ())
        })
    }

    /// Marks every outgoing entry (or the one holding change `origin`/`seq`) to be sent
    /// again at the next session with its peer; returns how many were marked.
    pub fn request_retry(&self, which: Option<(NodeId, u64)>) -> Result<usize, LinkFailuresError> {
        self.update(|entries| {
            let mut marked = 0;
            for e in entries
                .iter_mut()
                .filter(|e| e.direction == Direction::Outgoing && holds(e, which))
            {
                e.retry = true;
                marked += 1;
            }
            (marked > 0, marked)
        })
    }

    /// Forgets every entry (or the one holding change `origin`/`seq`); returns how many
    /// changes they covered.
    pub fn discard(&self, which: Option<(NodeId, u64)>) -> Result<u64, LinkFailuresError> {
        self.update(|entries| {
            let mut forgotten = 0;
            entries.retain(|e| {
                let chosen = holds(e, which);
                if chosen {
                    forgotten += e.changes();
                }
                !chosen
            });
            (forgotten > 0, forgotten)
        })
    }
}

/// Whether `entry` is the one `which` names (every entry when `which` is `None`).
fn holds(entry: &LinkFailure, which: Option<(NodeId, u64)>) -> bool {
    match which {
        None => true,
        Some((origin, seq)) => {
            entry.origin == origin.to_string() && (entry.first_seq..=entry.last_seq).contains(&seq)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(first_seq: u64) -> LinkFailure {
        LinkFailure {
            direction: Direction::Outgoing,
            peer: "b".into(),
            origin: NodeId::from_bytes([1; 16]).to_string(),
            first_seq,
            last_seq: first_seq + 1,
            rows: Vec::new(),
            reason: "no".into(),
            at_ms: 1,
            retry: false,
        }
    }

    #[test]
    fn recording_the_same_transaction_twice_keeps_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let failures = LinkFailures::at(dir.path());
        assert!(failures.load().unwrap().is_empty());
        failures.record(entry(3)).unwrap();
        failures.record(entry(3)).unwrap();
        failures.record(entry(7)).unwrap();
        assert_eq!(failures.load().unwrap().len(), 2);
        let origin = NodeId::from_bytes([1; 16]);
        assert_eq!(failures.request_retry(Some((origin, 8))).unwrap(), 1);
        assert!(failures.load().unwrap()[1].retry);
        assert_eq!(failures.discard(Some((origin, 4))).unwrap(), 2);
        assert_eq!(
            failures.load().unwrap(),
            vec![{
                let mut e = entry(7);
                e.retry = true;
                e
            }]
        );
    }
}
