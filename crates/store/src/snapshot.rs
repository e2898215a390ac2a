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
//!
//! The same consistent read serves range-based reconciliation
//! ([`concord_core::reconcile`]): the row-clock table is already ordered by encoded key,
//! so a side's items are its row clocks (or its rows' values) read range by range, and
//! only the rows found to differ are then read whole and sent. A catch-up that finds ten
//! rows different among a million sends ten rows, not a million.

use concord_core::merge::RowClock;
use concord_core::reconcile::{Bound, Compare, ItemHash, ItemSource, clock_hash};
use concord_core::{
    CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Value, Version, VersionVector,
};

use crate::StoreError;
use crate::logread::{LogSource, TableColumns};
use crate::origins::Origins;
use crate::spill::ItemSpill;

/// Row clocks read per page.
const PAGE_ROWS: usize = 1_000;

/// Bytes of values per page, past which a page ends (after at least one row).
const PAGE_BYTES: usize = 8 << 20;

/// Users' rows read in one query, at most.
const VALUE_BATCH: usize = 200;

/// Where a read of row clocks starts, in encoded-key order.
#[derive(Clone, Copy, Debug)]
pub enum KeyStart<'a> {
    /// At keys strictly above these bytes.
    After(&'a [u8]),
    /// At these bytes or above.
    AtLeast(&'a [u8]),
}

/// The query a store runs for [`SnapshotSource::clocks`], in its dialect: `rows` is its
/// row-clock table and `placeholder(n)` its n-th parameter (from 1). Parameters: the
/// table id, the start key, the upper bound (only when `below`), the row limit.
pub fn clock_page_sql(
    rows: &str,
    start: KeyStart<'_>,
    below: bool,
    placeholder: impl Fn(usize) -> String,
) -> String {
    let from = match start {
        KeyStart::After(_) => ">",
        KeyStart::AtLeast(_) => ">=",
    };
    let (upper, limit) = if below {
        (format!(" AND pk < {}", placeholder(3)), placeholder(4))
    } else {
        (String::new(), placeholder(3))
    };
    format!(
        "SELECT pk, cl, clock FROM {rows} WHERE tbl = {} AND pk {from} {}{upper} ORDER BY pk LIMIT {limit}",
        placeholder(1),
        placeholder(2)
    )
}

impl KeyStart<'_> {
    /// The start key's bytes.
    pub fn key(&self) -> &[u8] {
        match self {
            KeyStart::After(key) | KeyStart::AtLeast(key) => key,
        }
    }
}

/// A page of a table's own rows, read in the database's key order.
pub struct RowPage {
    /// The table's columns, by position.
    pub columns: Vec<String>,
    /// The positions of its key columns, in key order.
    pub key: Vec<usize>,
    /// The rows: every column's value, by position.
    pub rows: Vec<Vec<Value>>,
}

/// The query a store runs for [`SnapshotSource::user_rows`]: `list` selects every
/// column, `keys` are the quoted key columns, and with `after` the page starts after the
/// key given as parameters (`placeholder(i)` is the i-th key column's, from 0), in the
/// store's dialect. Row-value comparison (`(a, b) > (?, ?)`) is keyset pagination in the
/// database's own order, which every supported database evaluates with the primary
/// key's index.
pub fn keyset_page_sql(
    list: &str,
    table: &str,
    keys: &[String],
    after: bool,
    placeholder: impl Fn(usize) -> String,
    limit: usize,
) -> String {
    let filter = if after {
        let params: Vec<String> = (0..keys.len()).map(placeholder).collect();
        format!(" WHERE ({}) > ({})", keys.join(", "), params.join(", "))
    } else {
        String::new()
    };
    format!(
        "SELECT {list} FROM {table}{filter} ORDER BY {} LIMIT {limit}",
        keys.join(", ")
    )
}

/// The query a store runs for [`SnapshotSource::rows_values`]: every column (`list`)
/// of the rows whose key columns (`keys`, quoted) equal one of `tuples` (each the
/// parenthesised placeholders of one key, in the store's dialect).
pub fn rows_by_keys_sql(list: &str, table: &str, keys: &[String], tuples: &[String]) -> String {
    format!(
        "SELECT {list} FROM {table} WHERE ({}) IN ({})",
        keys.join(", "),
        tuples.join(", ")
    )
}

/// Puts rows found by [`rows_by_keys_sql`] (in any order, each with every column) in
/// the order of `keys`, `None` where no row has that key. Rows are matched by their
/// encoded keys, as the store encodes them everywhere else.
pub fn in_key_order(
    keys: &[Vec<Value>],
    key_columns: &[usize],
    found: Vec<Vec<Value>>,
) -> Vec<Option<Vec<Value>>> {
    let encode = |values: &[Value]| {
        PrimaryKey::encode(values)
            .ok()
            .map(|k| k.as_bytes().to_vec())
    };
    let mut by_key: std::collections::HashMap<Vec<u8>, Vec<Value>> = found
        .into_iter()
        .filter_map(|row| {
            let key: Vec<Value> = key_columns
                .iter()
                .map(|&p| row.get(p).cloned().unwrap_or(Value::Null))
                .collect();
            Some((encode(&key)?, row))
        })
        .collect();
    keys.iter()
        .map(|key| encode(key).and_then(|k| by_key.remove(&k)))
        .collect()
}

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
    fn tracked_tables(&mut self) -> Result<Vec<i64>, StoreError> {
        crate::bookkeeping::tracked_tables(&mut self.sql())
    }
    /// Up to `limit` row clocks of table `table` whose encoded keys sort from `start`
    /// and below `below` (bytewise), in that order ([`clock_page_sql`]).
    fn clocks(
        &mut self,
        table: i64,
        start: KeyStart<'_>,
        below: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<RawClock>, StoreError> {
        crate::bookkeeping::clock_page(&mut self.sql(), table, start, below, limit)
    }
    /// The values of the user's row of `table` with key `key` (its key columns' values,
    /// in key order), every column by position, or `None` if there is no such row.
    fn row_values(&mut self, table: i64, key: &[Value]) -> Result<Option<Vec<Value>>, StoreError>;
    /// [`SnapshotSource::row_values`] of each key, in order. A server store answers in
    /// one query; the default asks row by row.
    fn rows_values(
        &mut self,
        table: i64,
        keys: &[Vec<Value>],
    ) -> Result<Vec<Option<Vec<Value>>>, StoreError> {
        keys.iter().map(|key| self.row_values(table, key)).collect()
    }
    /// Up to `limit` rows of the users' table `table` whose keys (its key columns'
    /// values, in key order) sort after `after` in the database's own order
    /// ([`keyset_page_sql`]), from the first when `after` is `None`.
    fn user_rows(
        &mut self,
        table: i64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<RowPage, StoreError>;
}

/// A snapshot being read, page by page.
pub trait SnapshotRead: Send {
    /// The version vector the snapshot's state reflects.
    fn held(&self) -> &VersionVector;
    /// The next rows' states (changes with sequence 0), at most about `limit`; empty
    /// once every tracked row was read (the read transaction then ends).
    fn next_rows(&mut self, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// The names of the tables the snapshot describes.
    fn table_names(&self) -> Vec<String>;
    /// Calls `visit` with each row of `table` whose encoded key lies in `[from, to)`, in
    /// key order, with its hash as `compare` defines it, until `visit` returns false. A
    /// table the snapshot does not describe holds no rows.
    fn scan(
        &mut self,
        table: &str,
        compare: Compare,
        from: &[u8],
        to: &Bound,
        visit: &mut dyn FnMut(&[u8], &ItemHash) -> bool,
    ) -> Result<(), StoreError>;
    /// The states of the rows of `table` with these encoded keys (as [`SnapshotRead::
    /// next_rows`] gives them), skipping keys it does not hold.
    fn rows_by_key(&mut self, table: &str, keys: &[Vec<u8>]) -> Result<Vec<Change>, StoreError>;
    /// The states of up to `limit` rows of `table` whose encoded keys sort above
    /// `after`, in key order, and the last key read (`None` at the table's end): for
    /// sending a whole table to a peer that holds none of it.
    fn table_rows(
        &mut self,
        table: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<(Vec<Change>, Option<Vec<u8>>), StoreError>;
    /// Ends the read early (it also ends when the snapshot is dropped).
    fn finish(&mut self) -> Result<(), StoreError>;
}

/// One table of a snapshot as an [`ItemSource`], for [`concord_core::reconcile`].
pub struct TableItems<'a> {
    /// The snapshot read.
    pub snapshot: &'a mut dyn SnapshotRead,
    /// The table, by its name in this store.
    pub table: &'a str,
    /// What the hashes cover.
    pub compare: Compare,
}

impl ItemSource for TableItems<'_> {
    type Error = StoreError;

    fn scan(
        &mut self,
        from: &[u8],
        to: &Bound,
        visit: &mut dyn FnMut(&[u8], &ItemHash) -> bool,
    ) -> Result<(), StoreError> {
        self.snapshot
            .scan(self.table, self.compare, from, to, visit)
    }
}

/// The hash of a live row's values for [`Compare::Values`]: each column's name and
/// stored encoding, in name order, so two stores that declare the columns in different
/// orders agree. `concord verify` of two files hashes rows the same way.
pub fn values_hash<'a>(columns: impl IntoIterator<Item = (&'a str, &'a Value)>) -> ItemHash {
    use sha2::{Digest, Sha256};
    let mut columns: Vec<(&str, &Value)> = columns.into_iter().collect();
    columns.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = Sha256::new();
    for (name, value) in columns {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(crate::format::encode(value));
    }
    hasher.finalize().into()
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
    /// The items of the table last compared by values.
    spill: Option<(String, ItemSpill)>,
    /// The largest row's values seen so far, in bytes: sizes the batches of rows read.
    largest_row: usize,
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
            spill: None,
            largest_row: 0,
        })
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            table: self.source.log_table(),
            detail,
        }
    }

    fn decode(&self, table: usize, raw: &RawClock) -> Result<RowClock, StoreError> {
        self.origins
            .decode_clock(raw.causal_length, &raw.clock)
            .map_err(|e| {
                self.corrupt(format!(
                    "clock of a row of table {}: {e}",
                    self.tables[table].name
                ))
            })
    }

    /// Reads every row of the users' table once into a spill of (encoded key, values
    /// hash), for comparing by values.
    fn spill_values(&mut self, index: usize) -> Result<ItemSpill, StoreError> {
        let id = self.tables[index].id;
        let name = self.tables[index].name.clone();
        let mut spill = ItemSpill::new()?;
        let mut after: Option<Vec<Value>> = None;
        loop {
            let page = self.source.user_rows(id, after.as_deref(), PAGE_ROWS)?;
            let full = page.rows.len() == PAGE_ROWS;
            for row in page.rows {
                let key: Vec<Value> = page
                    .key
                    .iter()
                    .map(|&p| row.get(p).cloned().unwrap_or(Value::Null))
                    .collect();
                let encoded = PrimaryKey::encode(&key)
                    .map_err(|e| self.corrupt(format!("a key of table {name}: {e}")))?;
                let hash = values_hash(page.columns.iter().map(String::as_str).zip(row.iter()));
                spill.add(encoded.as_bytes(), &hash)?;
                after = Some(key);
            }
            if !full {
                break;
            }
        }
        spill.seal()?;
        Ok(spill)
    }

    fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == name)
    }

    /// The change that carries a deleted row's state.
    fn dead_change(&self, table: usize, key: PrimaryKey, clock: &RowClock) -> Change {
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
        // What the delete had seen of each column (a dead row's clock columns).
        let columns = clock
            .columns
            .iter()
            .enumerate()
            .filter_map(|(index, column)| {
                let column = (*column)?;
                Some(ColumnChange {
                    column: self.tables[table].columns.get(index)?.clone(),
                    value: Value::Null,
                    version: column.version,
                    replaced: column.replaced,
                })
            })
            .collect();
        Change {
            origin: version.origin,
            seq: 0,
            hlc: version.hlc,
            table: self.tables[table].name.clone(),
            key,
            causal_length: clock.causal_length,
            columns,
            delete_seen: seen,
            last_in_txn: true,
        }
    }

    /// The change that carries a live row's state, from its clock and its values, and
    /// roughly how many bytes its values take.
    fn live_change(
        &self,
        table: usize,
        key: PrimaryKey,
        clock: &RowClock,
        values: &[Value],
    ) -> (Change, usize) {
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
        let change = Change {
            origin: newest.origin,
            seq: 0,
            hlc: newest.hlc,
            table: self.tables[table].name.clone(),
            key,
            causal_length: CausalLength(clock.causal_length.0),
            columns,
            delete_seen: None,
            last_in_txn: true,
        };
        (change, bytes)
    }

    /// The states of the rows `raws` of table `table` (in order), reading the users'
    /// rows a batch at a time, until their values reach `budget` bytes: the changes,
    /// their bytes, and how many of `raws` were used. A live row whose user row is gone
    /// has no state here (its delete is still to be captured, and travels by the log).
    ///
    /// Batches grow while rows are small and shrink to one row once a large value was
    /// seen, so a page holds about `budget` bytes, never many large values at once.
    fn states(
        &mut self,
        table: usize,
        raws: Vec<RawClock>,
        budget: usize,
    ) -> Result<(Vec<Change>, usize, usize), StoreError> {
        let id = self.tables[table].id;
        let name = self.tables[table].name.clone();
        let mut changes = Vec::with_capacity(raws.len());
        let (mut bytes, mut used) = (0usize, 0usize);
        let mut raws = raws.into_iter().peekable();
        while raws.peek().is_some() && bytes < budget {
            let batch = (PAGE_BYTES / self.largest_row.max(1)).clamp(1, VALUE_BATCH);
            let mut live: Vec<(usize, PrimaryKey, RowClock)> = Vec::new();
            let mut keys: Vec<Vec<Value>> = Vec::new();
            let mut slots: Vec<Option<Change>> = Vec::new();
            for raw in raws.by_ref().take(batch) {
                used += 1;
                let clock = self.decode(table, &raw)?;
                let key = PrimaryKey::from_bytes_unchecked(raw.key);
                if clock.causal_length.is_alive() {
                    keys.push(
                        key.decode().map_err(|e| {
                            self.corrupt(format!("key of a row of table {name}: {e}"))
                        })?,
                    );
                    live.push((slots.len(), key, clock));
                    slots.push(None);
                } else {
                    slots.push(Some(self.dead_change(table, key, &clock)));
                }
            }
            let values = if keys.is_empty() {
                Vec::new()
            } else {
                self.source.rows_values(id, &keys)?
            };
            for ((slot, key, clock), values) in live.into_iter().zip(values) {
                if let Some(values) = values {
                    let (change, size) = self.live_change(table, key, &clock, &values);
                    self.largest_row = self.largest_row.max(size);
                    bytes = bytes.saturating_add(size);
                    slots[slot] = Some(change);
                }
            }
            changes.extend(slots.into_iter().flatten());
        }
        Ok((changes, bytes, used))
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
            let clocks =
                self.source
                    .clocks(id, KeyStart::After(&self.after), None, limit - rows.len())?;
            if clocks.is_empty() {
                self.current += 1;
                self.after.clear();
                continue;
            }
            let keys: Vec<Vec<u8>> = clocks.iter().map(|raw| raw.key.clone()).collect();
            let (states, size, used) = self.states(self.current, clocks, PAGE_BYTES - bytes)?;
            // What was not used is read again next time, from `after`.
            if let Some(last) = used.checked_sub(1).and_then(|i| keys.get(i)) {
                self.after.clone_from(last);
            }
            bytes += size;
            rows.extend(states);
        }
        Ok(rows)
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.name.clone()).collect()
    }

    fn scan(
        &mut self,
        table: &str,
        compare: Compare,
        from: &[u8],
        to: &Bound,
        visit: &mut dyn FnMut(&[u8], &ItemHash) -> bool,
    ) -> Result<(), StoreError> {
        let Some(index) = self.table_index(table) else {
            return Ok(());
        };
        if compare == Compare::Values {
            if self.spill.as_ref().is_none_or(|(t, _)| t != table) {
                self.spill = None;
                let spill = self.spill_values(index)?;
                self.spill = Some((table.to_owned(), spill));
            }
            return match &mut self.spill {
                Some((_, spill)) => spill.scan(from, to, visit),
                None => Ok(()),
            };
        }
        let id = self.tables[index].id;
        let below = match to {
            Bound::Below(bytes) => Some(bytes.as_slice()),
            Bound::End => None,
        };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let start = match &after {
                Some(key) => KeyStart::After(key),
                None => KeyStart::AtLeast(from),
            };
            let page = self.source.clocks(id, start, below, PAGE_ROWS)?;
            let full = page.len() == PAGE_ROWS;
            for raw in page {
                let clock = self.decode(index, &raw)?;
                if !visit(&raw.key, &clock_hash(&clock)) {
                    return Ok(());
                }
                after = Some(raw.key);
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn rows_by_key(&mut self, table: &str, keys: &[Vec<u8>]) -> Result<Vec<Change>, StoreError> {
        let Some(index) = self.table_index(table) else {
            return Ok(Vec::new());
        };
        let id = self.tables[index].id;
        let mut raws = Vec::with_capacity(keys.len());
        for key in keys {
            let mut upper = key.clone();
            upper.push(0);
            raws.extend(
                self.source
                    .clocks(id, KeyStart::AtLeast(key), Some(&upper), 1)?
                    .into_iter()
                    .next(),
            );
        }
        Ok(self.states(index, raws, usize::MAX)?.0)
    }

    fn table_rows(
        &mut self,
        table: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<(Vec<Change>, Option<Vec<u8>>), StoreError> {
        let Some(index) = self.table_index(table) else {
            return Ok((Vec::new(), None));
        };
        let id = self.tables[index].id;
        let limit = limit.clamp(1, PAGE_ROWS);
        let page = self
            .source
            .clocks(id, KeyStart::After(after), None, limit)?;
        let full = page.len() == limit;
        let keys: Vec<Vec<u8>> = page.iter().map(|raw| raw.key.clone()).collect();
        let (rows, _, used) = self.states(index, page, PAGE_BYTES)?;
        // Continue after the last row used: the rest of a page cut short by its bytes,
        // or the next page.
        let last = match used.checked_sub(1).and_then(|i| keys.get(i)) {
            Some(last) if full || used < keys.len() => Some(last.clone()),
            _ => None,
        };
        Ok((rows, last))
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        if !self.done {
            self.done = true;
            self.source.end_snapshot()?;
        }
        Ok(())
    }
}
