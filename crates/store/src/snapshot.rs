//! Snapshots: every tracked row's replicated state, for a replica the log cannot serve.
//!
//! The change log is bounded (`retention_changes`). A replica that was away longer than
//! the log reaches back, or one whose version vector names changes this store no longer
//! logs, cannot catch up by replaying. Instead it receives a *snapshot*: each tracked
//! row's values with its row clock (causal length, the winning version of each column,
//! the tombstone of a deleted row), read in one consistent read together with the
//! version vector that state reflects.
//!
//! A row's state travels as a [`Change`] with sequence number 0 (real changes start at
//! 1): its columns carry their own versions, a deleted row its tombstone. Merging such
//! a change is the same join as merging the writes that produced the state, so the
//! receiver merges it with the rules it always uses, records real conflicts, and may be
//! interrupted at any point: a row merged early is still a correct merge. Only when
//! every row has been merged does the receiver adopt the snapshot's version vector
//! ([`crate::ApplyTxn::adopt_held`]), and then the log takes over from there. A
//! receiver that adopted changes it never logged is itself unable to replay them to
//! its own peers; they find the gap ([`StoreError::Pruned`]) and take a snapshot from
//! it in turn.
//!
//! A database takes part through [`SnapshotSource`]: a consistent read, its row-clock
//! table in key order, and its users' rows by key. Decoding is done here, once.

use concord_core::merge::RowClock;
use concord_core::{
    CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Value, Version, VersionVector,
};

use crate::StoreError;
use crate::logread::{LogSource, TableColumns};
use crate::origins::Origins;

/// Row clocks read per page.
const PAGE_ROWS: usize = 1_000;

/// Bytes of values per page, past which a page ends (after at least one row).
const PAGE_BYTES: usize = 8 << 20;

/// One row of the row-clock table.
pub struct RawClock {
    /// The encoded primary key.
    pub key: Vec<u8>,
    /// The row's causal length.
    pub causal_length: i64,
    /// The stored clock ([`crate::format::StoredClock`]).
    pub clock: Vec<u8>,
}

/// A database's part in reading a snapshot, on the connection it reads its log with.
pub trait SnapshotSource: LogSource {
    /// Starts a consistent read-only transaction: everything read until
    /// [`SnapshotSource::end_snapshot`] sees one state of the database.
    fn begin_snapshot(&mut self) -> Result<(), StoreError>;
    /// Ends the read transaction.
    fn end_snapshot(&mut self) -> Result<(), StoreError>;
    /// The ids of the tables tracked now.
    fn tracked_tables(&mut self) -> Result<Vec<i64>, StoreError>;
    /// Up to `limit` row clocks of table `table` whose encoded keys sort above `after`
    /// (bytewise), in that order.
    fn clocks(
        &mut self,
        table: i64,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<RawClock>, StoreError>;
    /// The values of the user's row of `table` with key `key` (its key columns' values,
    /// in key order), every column by position, or `None` if there is no such row.
    fn row_values(&mut self, table: i64, key: &[Value]) -> Result<Option<Vec<Value>>, StoreError>;
}

/// A snapshot being read, page by page.
pub trait SnapshotRead: Send {
    /// The version vector the snapshot's state reflects.
    fn held(&self) -> &VersionVector;
    /// The next rows' states (changes with sequence 0), at most about `limit`; empty
    /// once every tracked row was read (the read transaction then ends).
    fn next_rows(&mut self, limit: usize) -> Result<Vec<Change>, StoreError>;
}

/// Reads a snapshot through any [`SnapshotSource`].
pub struct SnapshotReader<S: SnapshotSource> {
    source: S,
    node: NodeId,
    held: VersionVector,
    origins: Origins,
    tables: Vec<TableColumns>,
    /// The table being read (index into `tables`) and the last key read from it.
    current: usize,
    after: Vec<u8>,
    done: bool,
}

impl<S: SnapshotSource> SnapshotReader<S> {
    /// Opens a consistent read on `source` and reads the version vector and tables it
    /// will describe. `node` is the store's own id (the version of a deleted row whose
    /// delete was never recorded).
    pub fn begin(mut source: S, node: NodeId) -> Result<Self, StoreError> {
        source.begin_snapshot()?;
        let held = source.held()?;
        let mut origins = Origins::default();
        for (index, node) in source.origins()? {
            origins.insert(index, node, 0);
        }
        let tracked = source.tracked_tables()?;
        let mut tables: Vec<TableColumns> = source
            .tables()?
            .into_iter()
            .filter(|t| tracked.contains(&t.id))
            .collect();
        tables.sort_by_key(|t| t.id);
        Ok(Self {
            source,
            node,
            held,
            origins,
            tables,
            current: 0,
            after: Vec::new(),
            done: false,
        })
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            table: self.source.log_table(),
            detail,
        }
    }

    /// The change that carries `clock`'s state, or `None` for a live row whose user row
    /// is gone (its delete is still to be captured, and will travel by the log).
    fn row_state(
        &mut self,
        table: usize,
        raw: RawClock,
    ) -> Result<Option<(Change, usize)>, StoreError> {
        let clock: RowClock = self
            .origins
            .decode_clock(raw.causal_length, &raw.clock)
            .map_err(|e| {
                self.corrupt(format!(
                    "clock of a row of table {}: {e}",
                    self.tables[table].name
                ))
            })?;
        let key = PrimaryKey::from_bytes_unchecked(raw.key);
        let name = self.tables[table].name.clone();
        if !clock.causal_length.is_alive() {
            let (version, seen) = match clock.tombstone {
                Some(t) => (t.version, t.seen),
                None => (
                    Version {
                        hlc: Hlc::from_u64(0),
                        origin: self.node,
                    },
                    None,
                ),
            };
            return Ok(Some((
                Change {
                    origin: version.origin,
                    seq: 0,
                    hlc: version.hlc,
                    table: name,
                    key,
                    causal_length: clock.causal_length,
                    columns: Vec::new(),
                    delete_seen: seen,
                    last_in_txn: true,
                },
                0,
            )));
        }
        let key_values = key
            .decode()
            .map_err(|e| self.corrupt(format!("key of a row of table {name}: {e}")))?;
        let id = self.tables[table].id;
        let Some(values) = self.source.row_values(id, &key_values)? else {
            return Ok(None);
        };
        let mut columns = Vec::new();
        let mut bytes = 0;
        for (index, column) in clock.columns.iter().enumerate() {
            let Some(column) = column else { continue };
            let (Some(value), Some(column_name)) =
                (values.get(index), self.tables[table].columns.get(index))
            else {
                // A column dropped since it was written: its write has nowhere to go.
                continue;
            };
            bytes += value_size(value);
            columns.push(ColumnChange {
                column: column_name.clone(),
                value: value.clone(),
                version: column.version,
                replaced: column.replaced,
            });
        }
        let newest = clock.newest_version().unwrap_or(Version {
            hlc: Hlc::from_u64(0),
            origin: self.node,
        });
        Ok(Some((
            Change {
                origin: newest.origin,
                seq: 0,
                hlc: newest.hlc,
                table: name,
                key,
                causal_length: CausalLength(clock.causal_length.0),
                columns,
                delete_seen: None,
                last_in_txn: true,
            },
            bytes,
        )))
    }
}

/// Roughly how many bytes a value takes, to bound a page.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(s) | Value::Decimal(s) | Value::Json(s) => s.len(),
        Value::Blob(b) => b.len(),
        _ => 8,
    }
}

impl<S: SnapshotSource> SnapshotRead for SnapshotReader<S> {
    fn held(&self) -> &VersionVector {
        &self.held
    }

    fn next_rows(&mut self, limit: usize) -> Result<Vec<Change>, StoreError> {
        let limit = limit.clamp(1, PAGE_ROWS);
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        while !self.done && rows.len() < limit && bytes < PAGE_BYTES {
            let Some(table) = self.tables.get(self.current) else {
                self.done = true;
                self.source.end_snapshot()?;
                break;
            };
            let id = table.id;
            let clocks = self.source.clocks(id, &self.after, limit - rows.len())?;
            if clocks.is_empty() {
                self.current += 1;
                self.after.clear();
                continue;
            }
            for raw in clocks {
                if bytes >= PAGE_BYTES {
                    // The rest of this page is read again next time, from `after`.
                    break;
                }
                self.after.clone_from(&raw.key);
                if let Some((change, size)) = self.row_state(self.current, raw)? {
                    bytes += size;
                    rows.push(change);
                }
            }
        }
        Ok(rows)
    }
}
