//! Concord's own metadata writes, batched: row clocks and log entries.
//!
//! Capture and apply used to read and write the row-clock table and the log one
//! statement per change, three or four round trips to a server for every row. A
//! [`MetaBatch`] keeps, for the rows of one batch, the clocks read ahead (one query per
//! table: the store reads [`MetaBatch::keys_to_read`] and hands back what it found) and
//! the clocks and log entries written, which the store writes out in a few statements
//! ([`MetaBatch::take_log`], [`MetaBatch::take_written_clocks`]): PostgreSQL with `COPY`
//! and an `unnest` upsert, MariaDB with multi-row `INSERT`s. The bookkeeping of what is
//! held is the same for both and lives here; only the statements are the store's.
//!
//! A flush writes the clocks the batch changed and forgets them, but keeps those it
//! only read, and the next read-ahead drops those: a chunk's clocks survive the flushes
//! in its middle (losing them sent every later row of the chunk back to one query per
//! clock), and memory stays bounded by one read-ahead plus what waits to be written.
//!
//! The batch lives inside the caller's transaction, under Concord's lock (so no one else
//! writes these tables meanwhile); it is flushed before that transaction commits, and a
//! clock it holds is the one a read of the table would return at that point. Log entries
//! are written in the order they were made, so positions are allocated in the same order
//! as one statement per entry would. A batch dropped unflushed (on error) goes with its
//! transaction, which rolls back.

use std::collections::HashMap;

use concord_core::PrimaryKey;
use concord_core::merge::RowClock;

use crate::engine::LogEntry;

/// Entries (clocks written plus log entries) past which a batch is written out.
pub const FLUSH_ENTRIES: usize = 8_192;
/// Bytes of log bodies and keys held past which a batch is written out.
pub const FLUSH_BYTES: usize = 16 << 20;

/// A clock held by a batch: as read (`dirty = false`) or as written.
struct Held {
    /// A stored clock that cannot be read stays an error until someone asks for it.
    clock: Result<RowClock, String>,
    dirty: bool,
}

/// One log entry to write, owned.
pub struct LogRow {
    /// The origin's index.
    pub origin: u32,
    /// The origin's sequence number.
    pub seq: u64,
    /// The change's clock.
    pub hlc: u64,
    /// The table's id ([`crate::engine::VERBATIM_TABLE`] for a verbatim entry).
    pub table: i64,
    /// The encoded primary key.
    pub pk: Vec<u8>,
    /// The row's causal length.
    pub cl: u64,
    /// The entry's body.
    pub body: Vec<u8>,
    /// Whether it ends its source transaction.
    pub txn_end: bool,
}

impl From<LogEntry<'_>> for LogRow {
    fn from(e: LogEntry<'_>) -> Self {
        LogRow {
            origin: e.origin,
            seq: e.seq,
            hlc: e.hlc,
            table: e.table,
            pk: e.key.to_vec(),
            cl: e.causal_length,
            body: e.body,
            txn_end: e.txn_end,
        }
    }
}

/// A row clock the batch wrote, to be saved.
pub struct WrittenClock {
    /// The table's id.
    pub table: i64,
    /// The encoded primary key.
    pub pk: Vec<u8>,
    /// The clock.
    pub clock: RowClock,
}

/// Clocks read and written, and log entries made, since the last flush.
#[derive(Default)]
pub struct MetaBatch {
    clocks: HashMap<(i64, Vec<u8>), Held>,
    /// Clocks written and not flushed yet.
    dirty: usize,
    log: Vec<LogRow>,
    log_bytes: usize,
}

impl MetaBatch {
    /// Whether the batch should be written out now, so memory stays bounded. Clocks
    /// only read do not count: a read-ahead may hold more than that.
    pub fn is_full(&self) -> bool {
        self.dirty + self.log.len() >= FLUSH_ENTRIES || self.log_bytes >= FLUSH_BYTES
    }

    /// Appends a log entry (written in append order).
    pub fn log(&mut self, entry: LogRow) {
        self.log_bytes += entry.body.len() + entry.pk.len();
        self.log.push(entry);
    }

    /// The unwritten log entry of `(origin, seq)`, if it is still in the batch.
    pub fn log_entry_mut(&mut self, origin: u32, seq: u64) -> Option<&mut LogRow> {
        self.log
            .iter_mut()
            .rev()
            .find(|e| e.origin == origin && e.seq == seq)
    }

    /// Records the clock a row now has.
    pub fn set_clock(&mut self, table: i64, key: &PrimaryKey, clock: RowClock) {
        let previous = self.clocks.insert(
            (table, key.as_bytes().to_vec()),
            Held {
                clock: Ok(clock),
                dirty: true,
            },
        );
        if !previous.is_some_and(|p| p.dirty) {
            self.dirty += 1;
        }
    }

    /// The clock the batch holds for a row, if it holds one (an unreadable stored clock
    /// is the error that says why).
    pub fn clock(&self, table: i64, key: &PrimaryKey) -> Option<Result<RowClock, String>> {
        self.clocks
            .get(&(table, key.as_bytes().to_vec()))
            .map(|held| held.clock.clone())
    }

    /// Starts a read-ahead: drops the clocks only read before, and returns the keys of
    /// `keys` the batch does not hold, by table, each once and sorted. The store reads
    /// them, hands each found one to [`MetaBatch::hold_read`], then calls
    /// [`MetaBatch::hold_missing`] with the keys it asked for.
    pub fn keys_to_read<'k>(
        &mut self,
        keys: impl IntoIterator<Item = (i64, &'k [u8])>,
    ) -> HashMap<i64, Vec<&'k [u8]>> {
        // Clocks read for earlier keys are dropped, so memory stays bounded by what is
        // written and one read-ahead; those written stay until they are flushed.
        self.clocks.retain(|_, held| held.dirty);
        let mut by_table: HashMap<i64, Vec<&[u8]>> = HashMap::new();
        for (table, pk) in keys {
            if !self.clocks.contains_key(&(table, pk.to_vec())) {
                by_table.entry(table).or_default().push(pk);
            }
        }
        for keys in by_table.values_mut() {
            keys.sort_unstable();
            keys.dedup();
        }
        by_table
    }

    /// Holds a clock read from the table (or the error decoding it).
    pub fn hold_read(&mut self, table: i64, pk: Vec<u8>, clock: Result<RowClock, String>) {
        self.clocks.insert(
            (table, pk),
            Held {
                clock,
                dirty: false,
            },
        );
    }

    /// Holds the default clock for each of `keys` the read found no row for, as a
    /// read of a row never seen would return.
    pub fn hold_missing(&mut self, table: i64, keys: &[&[u8]]) {
        for pk in keys {
            self.clocks
                .entry((table, pk.to_vec()))
                .or_insert_with(|| Held {
                    clock: Ok(RowClock::default()),
                    dirty: false,
                });
        }
    }

    /// The log entries to write, in order; the batch forgets them.
    pub fn take_log(&mut self) -> Vec<LogRow> {
        self.log_bytes = 0;
        std::mem::take(&mut self.log)
    }

    /// The clocks written since the last flush, to be saved; the batch forgets them and
    /// keeps those it only read (they are what the table holds).
    pub fn take_written_clocks(&mut self) -> Vec<WrittenClock> {
        let mut written = Vec::with_capacity(self.dirty);
        for (key, held) in std::mem::take(&mut self.clocks) {
            if held.dirty {
                // Only clocks the batch wrote are dirty, and those were readable.
                if let Ok(clock) = held.clock {
                    written.push(WrittenClock {
                        table: key.0,
                        pk: key.1,
                        clock,
                    });
                }
            } else {
                self.clocks.insert(key, held);
            }
        }
        self.dirty = 0;
        written
    }

    /// Forgets everything (the transaction it belonged to is gone).
    pub fn clear(&mut self) {
        self.clocks.clear();
        self.dirty = 0;
        self.log.clear();
        self.log_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::Value;

    fn key(i: i64) -> PrimaryKey {
        PrimaryKey::encode(&[Value::Integer(i)]).expect("an integer key encodes")
    }

    #[test]
    fn clocks_read_ahead_survive_a_flush_and_written_ones_are_saved_once() {
        let mut batch = MetaBatch::default();
        let (k1, k2) = (key(1), key(2));
        let wanted = batch.keys_to_read([(7, k1.as_bytes()), (7, k2.as_bytes())]);
        assert_eq!(wanted[&7].len(), 2);
        batch.hold_read(7, k1.as_bytes().to_vec(), Err("bad clock".into()));
        batch.hold_missing(7, &wanted[&7]);
        assert_eq!(batch.clock(7, &k2), Some(Ok(RowClock::default())));
        assert_eq!(batch.clock(7, &k1), Some(Err("bad clock".into())));
        batch.set_clock(7, &k2, RowClock::default());
        batch.set_clock(7, &k2, RowClock::default());
        let written = batch.take_written_clocks();
        assert_eq!(written.len(), 1, "a clock written twice is saved once");
        // The clock only read is still held after the flush...
        assert!(batch.clock(7, &k1).is_some());
        // ...and dropped by the next read-ahead, which asks for nothing held.
        let again = batch.keys_to_read([(7, k1.as_bytes())]);
        assert_eq!(again[&7], vec![k1.as_bytes()]);
    }

    #[test]
    fn a_batch_is_full_by_entries_or_by_bytes() {
        let mut batch = MetaBatch::default();
        batch.log(LogRow {
            origin: 1,
            seq: 1,
            hlc: 0,
            table: 1,
            pk: vec![],
            cl: 1,
            body: vec![0; FLUSH_BYTES],
            txn_end: true,
        });
        assert!(batch.is_full());
        assert!(batch.log_entry_mut(1, 1).is_some());
        assert_eq!(batch.take_log().len(), 1);
        assert!(!batch.is_full());
    }
}
