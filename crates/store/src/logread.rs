//! Reading the change log, written once for every store.
//!
//! The log holds every change a replica has, local and relayed, in the order it logged
//! them (`pos`). That order is causal: a change is logged after every change it could
//! have seen. A [`LogReader`] reads it through its own connection, so a sync session
//! reads while the store captures and applies, and yields, in log order, exactly the
//! changes a target's version vector does not hold. It reads a page at a time, a page
//! bounded in entries and in bytes, so memory stays flat whatever the log's length and
//! however large its values.
//!
//! A database takes part through [`LogSource`]: the rows of its origin, table, column
//! and log tables, and nothing else. Decoding (origin indexes, column positions, the
//! stored formats of [`crate::format`]) is done here.

use std::collections::HashMap;

use concord_core::{
    CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Version, VersionVector,
};

use crate::bookkeeping::{self, SqlDriver};
use crate::engine::VERBATIM_TABLE;
use crate::format::{self, LogBody, StoredVersion};
use crate::{LogPage, LogRead, StoreError};

/// Entries read from the database per page, at most.
const PAGE_ENTRIES: usize = 1_000;

/// Bytes of log bodies per page, past which a page ends (after at least one entry).
const PAGE_BYTES: usize = 8 << 20;

/// One row of the log table, undecoded, borrowed from the driver's row so a large body
/// is not copied before it is decoded.
pub struct RawEntry<'a> {
    /// Its position in the log.
    pub pos: i64,
    /// The origin's index.
    pub origin: u32,
    /// The origin's sequence number.
    pub seq: u64,
    /// The change's clock.
    pub hlc: u64,
    /// The table's id, or [`VERBATIM_TABLE`].
    pub table: i64,
    /// The encoded primary key.
    pub key: &'a [u8],
    /// The row's causal length.
    pub causal_length: u64,
    /// The body ([`LogBody`], or a whole change for [`VERBATIM_TABLE`]).
    pub body: &'a [u8],
    /// Whether it ends its source transaction.
    pub txn_end: bool,
}

/// A tracked table's name and its columns by position, as the log names them.
pub struct TableColumns {
    /// The table's id.
    pub id: i64,
    /// The name changes carry.
    pub name: String,
    /// Column names by position.
    pub columns: Vec<String>,
}

/// A database's part in reading its change log. The queries every store runs alike are
/// [`crate::bookkeeping`]'s, through [`LogSource::sql`]; a store writes the rest.
pub trait LogSource: Send {
    /// The connection as a [`SqlDriver`].
    type Sql<'a>: SqlDriver
    where
        Self: 'a;
    /// The reader's connection, to run Concord's shared statements on.
    fn sql(&mut self) -> Self::Sql<'_>;
    /// The log table's name, for errors (`__concord_log`, `concord.log`, ...).
    fn log_table(&self) -> &'static str;
    /// Every origin with its index.
    fn origins(&mut self) -> Result<Vec<(u32, NodeId)>, StoreError> {
        bookkeeping::origins(&mut self.sql())
    }
    /// Every table the log may name (tracked now or before), with its columns.
    fn tables(&mut self) -> Result<Vec<TableColumns>, StoreError>;
    /// What the store holds from each origin: its version vector as stored.
    fn held(&mut self) -> Result<VersionVector, StoreError> {
        bookkeeping::held(&mut self.sql())
    }
    /// The last position in the log (0 if empty).
    fn last_position(&mut self) -> Result<i64, StoreError> {
        bookkeeping::last_position(&mut self.sql())
    }
    /// The position of `(origin index, seq)`, if it is still in the log.
    fn position_of(&mut self, origin: u32, seq: u64) -> Result<Option<i64>, StoreError> {
        bookkeeping::position_of(&mut self.sql(), origin, seq)
    }
    /// Visits up to `limit` entries after position `after`, in position order, until
    /// `visit` returns `false`. Rows are streamed, not collected. Without `bodies`, every
    /// entry's `body` is empty and never read from the database (a change's body may hold
    /// a value of hundreds of megabytes; its position and clock do not).
    fn scan(
        &mut self,
        after: i64,
        limit: usize,
        bodies: bool,
        visit: &mut dyn FnMut(RawEntry<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>;
    /// A cheap summary of every table's column names by position, which changes when a
    /// column is renamed (added columns are noticed without it). `None`: not tracked.
    fn columns_signature(&mut self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// A read-only view of a store's change log through its own connection.
pub struct LogReader<S: LogSource> {
    source: S,
    node_of: HashMap<u32, NodeId>,
    index_of: HashMap<NodeId, u32>,
    tables: HashMap<i64, TableColumns>,
    /// [`LogSource::columns_signature`] when the tables were last read.
    signature: Option<String>,
}

impl<S: LogSource> LogReader<S> {
    /// A reader over `source`, knowing its origins and tables.
    pub fn new(source: S) -> Result<Self, StoreError> {
        let mut reader = Self {
            source,
            node_of: HashMap::new(),
            index_of: HashMap::new(),
            tables: HashMap::new(),
            signature: None,
        };
        reader.refresh()?;
        Ok(reader)
    }

    /// Re-reads origins and tables: new ones appear as the store learns them, and a
    /// table's columns change with its schema.
    fn refresh(&mut self) -> Result<(), StoreError> {
        self.signature = self.source.columns_signature()?;
        for (index, node) in self.source.origins()? {
            self.node_of.insert(index, node);
            self.index_of.insert(node, index);
        }
        self.tables = self
            .source
            .tables()?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        Ok(())
    }

    /// How much the reader knows, to tell whether a refresh learned anything.
    fn known(&self) -> (usize, usize, usize) {
        let columns = self.tables.values().map(|t| t.columns.len()).sum();
        (self.node_of.len(), self.tables.len(), columns)
    }

    /// The last position in the log (0 if empty).
    pub fn last_position(&mut self) -> Result<i64, StoreError> {
        self.source.last_position()
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            table: self.source.log_table(),
            detail,
        }
    }

    fn read_once(
        &mut self,
        after: i64,
        target: &VersionVector,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        let mut page = LogPage {
            changes: Vec::new(),
            last_pos: after,
        };
        let mut bytes = 0usize;
        let log_table = self.source.log_table();
        let corrupt = |detail: String| StoreError::Corrupt {
            table: log_table,
            detail,
        };
        let (node_of, tables) = (&self.node_of, &self.tables);
        let limit = limit.max(1);
        self.source.scan(
            after,
            PAGE_ENTRIES.max(limit),
            true,
            &mut |entry: RawEntry<'_>| {
                if page.changes.len() >= limit || bytes >= PAGE_BYTES {
                    return Ok(false);
                }
                let pos = entry.pos;
                let origin = *node_of.get(&entry.origin).ok_or_else(|| {
                    corrupt(format!(
                        "entry {pos}: unknown origin index {}",
                        entry.origin
                    ))
                })?;
                page.last_pos = pos;
                if target.contains(&origin, entry.seq) {
                    return Ok(true);
                }
                bytes += entry.body.len();
                if entry.table == VERBATIM_TABLE {
                    let change: Change = format::decode(entry.body)
                        .map_err(|e| corrupt(format!("entry {pos}: {e}")))?;
                    page.changes.push(change);
                    return Ok(true);
                }
                let table = tables.get(&entry.table).ok_or_else(|| {
                    corrupt(format!("entry {pos}: unknown table {}", entry.table))
                })?;
                let body: LogBody =
                    format::decode(entry.body).map_err(|e| corrupt(format!("entry {pos}: {e}")))?;
                let version = |v: StoredVersion| -> Result<Version, StoreError> {
                    let origin = node_of.get(&v.1).ok_or_else(|| {
                        corrupt(format!("entry {pos}: unknown origin index {}", v.1))
                    })?;
                    Ok(Version {
                        hlc: Hlc::from_u64(v.0),
                        origin: *origin,
                    })
                };
                let mut columns = Vec::with_capacity(body.columns.len());
                for c in body.columns {
                    let name = table.columns.get(c.index as usize).ok_or_else(|| {
                        corrupt(format!("entry {pos}: column {} out of range", c.index))
                    })?;
                    columns.push(ColumnChange {
                        column: name.clone(),
                        value: c.value,
                        version: version(c.version)?,
                        replaced: c.replaced.map(version).transpose()?,
                    });
                }
                page.changes.push(Change {
                    origin,
                    seq: entry.seq,
                    hlc: Hlc::from_u64(entry.hlc),
                    table: table.name.clone(),
                    key: PrimaryKey::from_bytes_unchecked(entry.key.to_vec()),
                    causal_length: CausalLength(entry.causal_length),
                    columns,
                    delete_seen: body.delete_seen.map(version).transpose()?,
                    last_in_txn: entry.txn_end,
                });
                Ok(true)
            },
        )?;
        Ok(page)
    }
}

impl<S: LogSource> LogRead for LogReader<S> {
    fn first_missing_hlc(
        &mut self,
        after: i64,
        target: &VersionVector,
    ) -> Result<Option<Hlc>, StoreError> {
        let mut from = after;
        loop {
            let (mut found, mut seen) = (None, 0usize);
            let node_of = &self.node_of;
            self.source
                .scan(from, PAGE_ENTRIES, false, &mut |entry: RawEntry<'_>| {
                    seen += 1;
                    from = entry.pos;
                    // An origin the reader has not learned yet is one no peer was sent.
                    let held = node_of
                        .get(&entry.origin)
                        .is_some_and(|origin| target.contains(origin, entry.seq));
                    if held {
                        return Ok(true);
                    }
                    found = Some(Hlc::from_u64(entry.hlc));
                    Ok(false)
                })?;
            if found.is_some() || seen < PAGE_ENTRIES {
                return Ok(found);
            }
        }
    }

    fn held(&mut self) -> Result<VersionVector, StoreError> {
        self.source.held()
    }

    fn start_for(&mut self, target: &VersionVector) -> Result<i64, StoreError> {
        let held = self.source.held()?;
        if held.iter().any(|(n, _)| !self.index_of.contains_key(n)) {
            self.refresh()?;
        }
        let mut start = self.source.last_position()?;
        for (origin, &have) in held.iter() {
            let wanted = target.get(origin);
            if have <= wanted {
                continue;
            }
            let Some(&index) = self.index_of.get(origin) else {
                return Err(self.corrupt(format!("origin {origin} has no index")));
            };
            match self.source.position_of(index, wanted + 1)? {
                Some(pos) => start = start.min(pos - 1),
                None => {
                    return Err(StoreError::Pruned {
                        origin: origin.to_string(),
                        seq: wanted + 1,
                    });
                }
            }
        }
        Ok(start)
    }

    fn read(
        &mut self,
        after: i64,
        target: &VersionVector,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        loop {
            match self.read_once(after, target, limit) {
                // Changes carry column names: a column renamed since the names were
                // read must not travel under its old name. Checked once per page that
                // holds changes, so an idle stream costs nothing.
                Ok(page)
                    if !page.changes.is_empty()
                        && self.signature.is_some()
                        && self.source.columns_signature()? != self.signature =>
                {
                    self.refresh()?;
                }
                Err(e @ StoreError::Corrupt { .. }) => {
                    // An origin, table or column the reader has not seen yet (the store
                    // met a new node, or a table's schema changed): learn it and retry,
                    // as long as learning finds something new.
                    let known = self.known();
                    self.refresh()?;
                    if self.known() == known {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }
}
