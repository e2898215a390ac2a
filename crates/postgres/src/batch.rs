//! PostgreSQL's statements for Concord's batched metadata writes
//! ([`concord_store::meta_batch`], which keeps what a batch holds): row clocks read in
//! one query per table ([`PgStore::prefetch_clocks`]; keys joined from `unnest`, not
//! `pk = ANY(...)`, which the planner turned into a scan of every row of the table
//! filtered against the whole array when its statistics were older than a large
//! transaction: 1-2 s per page of 2,000 keys), and log entries and clocks
//! written with one `COPY` into the log and one `unnest` upsert into `concord.rows`
//! ([`PgStore::flush_meta`]).

use concord_core::PrimaryKey;
use concord_core::merge::RowClock;
use concord_store::meta_batch::MetaBatch;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;

use crate::store::{LoadClockError, PgStore};

impl PgStore {
    /// Reads in one query per table the clocks of `keys` not held by `batch` yet. A key
    /// without a row gets the default clock, as [`PgStore::load_clock`] would return.
    pub(crate) fn prefetch_clocks<'k>(
        &mut self,
        batch: &mut MetaBatch,
        keys: impl IntoIterator<Item = (i32, &'k [u8])>,
    ) -> Result<(), postgres::Error> {
        let wanted = batch.keys_to_read(keys.into_iter().map(|(t, k)| (i64::from(t), k)));
        if wanted.is_empty() {
            return Ok(());
        }
        let stmt = self.statement(
            "SELECT r.pk, r.cl, r.clock FROM unnest($2::bytea[]) k(pk)
                 JOIN concord.rows r ON r.tbl = $1 AND r.pk = k.pk",
        )?;
        for (table, keys) in wanted {
            for row in self.client.query(&stmt, &[&(table as i32), &keys])? {
                let clock = self.decode_clock(row.get(1), row.get(2));
                batch.hold_read(table, row.get(0), clock);
            }
            batch.hold_missing(table, &keys);
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
        match batch.clock(i64::from(table), key) {
            Some(held) => held.map_err(LoadClockError::Corrupt),
            None => self.load_clock(table, key),
        }
    }

    /// Writes the batch's log entries (one `COPY`, in order) and changed clocks (one
    /// upsert), then empties it.
    pub(crate) fn flush_meta(&mut self, batch: &mut MetaBatch) -> Result<(), postgres::Error> {
        let log = batch.take_log();
        if !log.is_empty() {
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
            for e in &log {
                writer.write(&[
                    &(e.origin as i32),
                    &(e.seq as i64),
                    &(e.hlc as i64),
                    &(e.table as i32),
                    &e.pk,
                    &(e.cl as i64),
                    &e.body,
                    &e.txn_end,
                ])?;
            }
            writer.finish()?;
        }
        let written = batch.take_written_clocks();
        if written.is_empty() {
            return Ok(());
        }
        let mut tables = Vec::with_capacity(written.len());
        let mut pks = Vec::with_capacity(written.len());
        let mut cls = Vec::with_capacity(written.len());
        let mut blobs = Vec::with_capacity(written.len());
        for w in written {
            blobs.push(self.encode_clock(&w.clock)?);
            tables.push(w.table as i32);
            pks.push(w.pk);
            cls.push(w.clock.causal_length.0 as i64);
        }
        let stmt = self.statement(
            "INSERT INTO concord.rows(tbl, pk, cl, clock)
             SELECT * FROM unnest($1::int4[], $2::bytea[], $3::int8[], $4::bytea[])
             ON CONFLICT (tbl, pk) DO UPDATE SET cl = excluded.cl, clock = excluded.clock",
        )?;
        self.client.execute(&stmt, &[&tables, &pks, &cls, &blobs])?;
        Ok(())
    }
}
