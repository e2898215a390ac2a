//! Reconciliation items kept on disk, sorted by key: what [`crate::SnapshotRead::scan`]
//! serves in [`Compare::Values`](concord_core::reconcile::Compare::Values) mode.
//!
//! Why: comparing by values must see every row of the users' table, including rows no
//! row clock describes (written while capture was off, a restored backup), so the items
//! come from the table itself. A database returns them in its own key order (collations,
//! SQLite's mixed storage classes), which is not the order of encoded keys that
//! reconciliation ranges use, and it cannot seek to an encoded bound. So the table is
//! read once, each row's key encoded and its values hashed, into a private temporary
//! SQLite file (`WITHOUT ROWID`, keyed by the encoded key) that serves every range as
//! one indexed query. Memory stays flat whatever the table's size: the file lives on
//! disk and is deleted when the spill is dropped.

use concord_core::reconcile::{Bound, ItemHash, ItemSource};
use rusqlite::Connection;

use crate::StoreError;

/// Items spilled to a temporary file, sorted by encoded key.
pub struct ItemSpill {
    conn: Connection,
    count: u64,
    loading: bool,
}

impl ItemSpill {
    /// An empty spill, open for [`ItemSpill::add`].
    pub fn new() -> Result<Self, StoreError> {
        // An empty path opens a private temporary database on disk, removed on close.
        let conn = Connection::open("")?;
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;
             CREATE TABLE items(pk BLOB PRIMARY KEY, hash BLOB NOT NULL) WITHOUT ROWID;
             BEGIN;",
        )?;
        Ok(Self {
            conn,
            count: 0,
            loading: true,
        })
    }

    /// Adds one item. Two rows whose keys encode alike (which a database's own key
    /// order may allow, e.g. `1` and `1.0` in SQLite) count as one item whose hash is the
    /// last added; they differ from any single row the other side holds.
    pub fn add(&mut self, key: &[u8], hash: &ItemHash) -> Result<(), StoreError> {
        let added = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO items(pk, hash) VALUES (?1, ?2)")?
            .execute(rusqlite::params![key, &hash[..]])?;
        self.count += added as u64;
        Ok(())
    }

    /// Ends loading; the spill then only answers ranges.
    pub fn seal(&mut self) -> Result<(), StoreError> {
        if self.loading {
            self.conn.execute_batch("COMMIT")?;
            self.loading = false;
        }
        Ok(())
    }

    /// How many items were added.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no item was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl ItemSource for ItemSpill {
    type Error = StoreError;

    fn scan(
        &mut self,
        from: &[u8],
        to: &Bound,
        visit: &mut dyn FnMut(&[u8], &ItemHash) -> bool,
    ) -> Result<(), StoreError> {
        self.seal()?;
        let mut stmt = match to {
            Bound::Below(_) => self.conn.prepare_cached(
                "SELECT pk, hash FROM items WHERE pk >= ?1 AND pk < ?2 ORDER BY pk",
            )?,
            Bound::End => self
                .conn
                .prepare_cached("SELECT pk, hash FROM items WHERE pk >= ?1 ORDER BY pk")?,
        };
        let mut rows = match to {
            Bound::Below(upper) => stmt.query(rusqlite::params![from, upper])?,
            Bound::End => stmt.query(rusqlite::params![from])?,
        };
        while let Some(row) = rows.next()? {
            let key: Vec<u8> = row.get(0)?;
            let hash: Vec<u8> = row.get(1)?;
            let hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Corrupt {
                table: "reconciliation spill",
                detail: "an item's hash is not 32 bytes".into(),
            })?;
            if !visit(&key, &hash) {
                break;
            }
        }
        Ok(())
    }
}
