//! Concord's own metadata writes, batched: row clocks and log entries.
//!
//! Capture and apply used to read and write `concord.rows` and `concord.log` one
//! statement per change, three or four round trips to the server for every row. A
//! [`MetaBatch`] keeps, for the rows of one batch, the clocks it read (in one query per
//! table, [`PgStore::prefetch_clocks`]) and the clocks and log entries it wrote, and
//! writes them with one `COPY` into the log and one multi-row upsert into `concord.rows`
//! ([`PgStore::flush_meta`]).
//!
//! A flush writes the clocks the batch changed and forgets them, but keeps those it
//! only read, and the next prefetch drops those: a chunk's prefetched clocks survive
//! the flushes in its middle (losing them sent every later row of the chunk back to one
//! query per clock), and memory stays bounded by one prefetch plus what waits to be
//! written.
//!
//! Nothing else changes: the batch lives inside the caller's transaction, under
//! Concord's lock (so no one else writes these tables meanwhile), it is flushed before
//! that transaction commits, and a clock it holds is the one a read of `concord.rows`
//! would return at that point. Log entries are copied in the order they were made, so
//! `pos` is allocated in the same order as before. A batch dropped unflushed (on error)
//! goes with the transaction it belonged to, which rolls back.

use std::collections::HashMap;

use concord_core::PrimaryKey;
use concord_core::merge::RowClock;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;

use crate::store::{LoadClockError, PgStore};

/// Entries (clocks held plus log entries) past which a batch is written out.
pub(crate) const FLUSH_AT: usize = 8_192;

/// A clock held by a batch: as read (`dirty = false`) or as written.
struct Held {
    /// A stored clock that cannot be read stays an error until someone asks for it.
    clock: Result<RowClock, String>,
    dirty: bool,
}

/// One `concord.log` entry to write.
pub(crate) struct LogEntry {
    pub(crate) origin: i32,
    pub(crate) seq: i64,
    pub(crate) hlc: i64,
    pub(crate) table: i32,
    pub(crate) pk: Vec<u8>,
    pub(crate) cl: i64,
    pub(crate) body: Vec<u8>,
    pub(crate) txn_end: bool,
}

/// Clocks read and written, and log entries made, since the last flush.
#[derive(Default)]
pub(crate) struct MetaBatch {
    clocks: HashMap<(i32, Vec<u8>), Held>,
    /// Clocks written and not flushed yet.
    dirty: usize,
    log: Vec<LogEntry>,
}

impl MetaBatch {
    /// Entries to write (clocks written plus log entries); flush past [`FLUSH_AT`].
    /// Clocks only read do not count: a prefetch may hold more than that.
    pub(crate) fn len(&self) -> usize {
        self.dirty + self.log.len()
    }

    /// Appends a log entry (written in append order).
    pub(crate) fn log(&mut self, entry: LogEntry) {
        self.log.push(entry);
    }

    /// The unwritten log entry of `(origin, seq)`, if it is still in the batch.
    pub(crate) fn log_entry_mut(&mut self, origin: i32, seq: i64) -> Option<&mut LogEntry> {
        self.log
            .iter_mut()
            .rev()
            .find(|e| e.origin == origin && e.seq == seq)
    }

    /// Records the clock a row now has.
    pub(crate) fn set_clock(&mut self, table: i32, key: &PrimaryKey, clock: RowClock) {
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

    /// Forgets everything (the transaction it belonged to is gone).
    pub(crate) fn clear(&mut self) {
        self.clocks.clear();
        self.dirty = 0;
        self.log.clear();
    }
}

impl PgStore {
    /// Reads in one query per table the clocks of `keys` not held by `batch` yet. A key
    /// without a row gets the default clock, as [`PgStore::load_clock`] would return.
    pub(crate) fn prefetch_clocks<'k>(
        &mut self,
        batch: &mut MetaBatch,
        keys: impl IntoIterator<Item = (i32, &'k [u8])>,
    ) -> Result<(), postgres::Error> {
        // Clocks read for earlier keys are dropped, so memory stays bounded by what
        // is written and one prefetch; those written stay until they are flushed.
        batch.clocks.retain(|_, held| held.dirty);
        let mut by_table: HashMap<i32, Vec<&[u8]>> = HashMap::new();
        for (table, pk) in keys {
            if !batch.clocks.contains_key(&(table, pk.to_vec())) {
                by_table.entry(table).or_default().push(pk);
            }
        }
        if by_table.is_empty() {
            return Ok(());
        }
        let stmt = self
            .statement("SELECT pk, cl, clock FROM concord.rows WHERE tbl = $1 AND pk = ANY($2)")?;
        for (table, keys) in by_table {
            for row in self.client.query(&stmt, &[&table, &keys])? {
                let pk: Vec<u8> = row.get(0);
                let clock = self.decode_clock(row.get(1), row.get(2));
                batch.clocks.insert(
                    (table, pk),
                    Held {
                        clock,
                        dirty: false,
                    },
                );
            }
            for pk in keys {
                batch
                    .clocks
                    .entry((table, pk.to_vec()))
                    .or_insert_with(|| Held {
                        clock: Ok(RowClock::default()),
                        dirty: false,
                    });
            }
        }
        Ok(())
    }

    /// A row's clock: the batch's if it holds one, else read from `concord.rows`.
    pub(crate) fn batched_clock(
        &mut self,
        batch: &MetaBatch,
        table: i32,
        key: &PrimaryKey,
    ) -> Result<RowClock, LoadClockError> {
        match batch.clocks.get(&(table, key.as_bytes().to_vec())) {
            Some(held) => held.clock.clone().map_err(LoadClockError::Corrupt),
            None => self.load_clock(table, key),
        }
    }

    /// Writes the batch's log entries (one `COPY`, in order) and changed clocks (one
    /// upsert), then empties it.
    pub(crate) fn flush_meta(&mut self, batch: &mut MetaBatch) -> Result<(), postgres::Error> {
        if !batch.log.is_empty() {
            let writer = self.client.copy_in(
                "COPY concord.log(origin, seq, hlc, tbl, pk, cl, body, txn_end)
                 FROM STDIN (FORMAT binary)",
            )?;
            let types = [
                Type::INT4,
                Type::INT8,
                Type::INT8,
                Type::INT4,
                Type::BYTEA,
                Type::INT8,
                Type::BYTEA,
                Type::BOOL,
            ];
            let mut writer = BinaryCopyInWriter::new(writer, &types);
            for e in &batch.log {
                writer.write(&[
                    &e.origin, &e.seq, &e.hlc, &e.table, &e.pk, &e.cl, &e.body, &e.txn_end,
                ])?;
            }
            writer.finish()?;
            batch.log.clear();
        }
        let mut tables = Vec::new();
        let mut pks = Vec::new();
        let mut cls = Vec::new();
        let mut blobs = Vec::new();
        // Clocks only read stay (they are what `concord.rows` holds); those written go
        // once written.
        let mut written = Vec::with_capacity(batch.dirty);
        for (key, held) in std::mem::take(&mut batch.clocks) {
            if held.dirty {
                written.push((key, held));
            } else {
                batch.clocks.insert(key, held);
            }
        }
        batch.dirty = 0;
        for ((table, pk), held) in written {
            // Only clocks the batch wrote are dirty, and those were readable.
            let Ok(clock) = held.clock else { continue };
            blobs.push(self.encode_clock(&clock)?);
            tables.push(table);
            pks.push(pk);
            cls.push(clock.causal_length.0 as i64);
        }
        if !tables.is_empty() {
            let stmt = self.statement(
                "INSERT INTO concord.rows(tbl, pk, cl, clock)
                 SELECT * FROM unnest($1::int4[], $2::bytea[], $3::int8[], $4::bytea[])
                 ON CONFLICT (tbl, pk) DO UPDATE SET cl = excluded.cl, clock = excluded.clock",
            )?;
            self.client.execute(&stmt, &[&tables, &pks, &cls, &blobs])?;
        }
        Ok(())
    }
}
