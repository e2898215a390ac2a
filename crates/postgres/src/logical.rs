//! Log-based capture: reading local writes from PostgreSQL's write-ahead log.
//!
//! Why: a capture trigger runs plpgsql for every row every client writes, which made
//! the application's own 1M-row insert five times slower. Logical decoding costs the
//! writer nothing beyond the WAL it writes anyway (plus the whole old row of an update
//! or delete, see below): PostgreSQL decodes committed transactions afterwards, when
//! Concord asks.
//!
//! How, when the server allows it (`wal_level = logical`, a role with `REPLICATION` or
//! superuser, a free replication slot; see [`unavailable`]):
//! - `track` creates a logical replication slot using the built-in `pgoutput` plugin,
//!   a publication `concord` listing the tracked tables, and a replication origin, and
//!   sets each tracked table to `REPLICA IDENTITY FULL`, so an update carries the whole
//!   old row and capture knows exactly which columns it changed (per-column merge
//!   needs that) and which key it had.
//! - Capture reads the slot with `pg_logical_slot_peek_binary_changes` through a
//!   cursor (memory stays flat however large a transaction is), parses the messages
//!   ([`crate::pgoutput`]) and stages each row change into `concord.pending`, in
//!   commit order, exactly as the trigger would have written it; the fold in
//!   `capture.rs` then logs it. Source transactions come from `Begin`/`Commit`, so
//!   their boundaries and their order are PostgreSQL's own.
//! - **The slot's position is committed with the log entries**: the end LSN of the
//!   last transaction staged is stored in `concord.meta` (`slot_lsn`) in the capture's
//!   own transaction, and the slot is advanced to it only at the start of the next
//!   capture. A crash at any point leaves the slot at or behind the stored position;
//!   transactions before it are skipped when read again, so nothing is lost or logged
//!   twice.
//! - Concord's own applied writes carry its replication origin (set for the apply
//!   transaction only) and are skipped, so they are not captured again (no echo).
//! - A table tracked later gets a start LSN read while its lock holds writers back:
//!   its rows are queued from the table itself (the backfill), and decoded changes
//!   that committed before that point are skipped, since the backfill already has them.
//!
//! The slot keeps WAL until Concord has read it: a node stopped for long keeps the
//! server's WAL growing. Status reports the slot's lag; `max_slot_wal_keep_size` bounds
//! it (docs/postgres-store.md). `untrack` drops the slot, the publication and the origin.

use std::collections::HashMap;
use std::sync::Arc;

use postgres::Client;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::pgoutput::{self, Datum, Message, Relation};
use crate::schema::{OP_DELETE, OP_INSERT, OP_REKEY, OP_UPDATE, TableInfo, literal};
use crate::store::PgStore;
use concord_store::StoreError;

/// The publication listing the tracked tables (one per database).
pub(crate) const PUBLICATION: &str = "concord";

/// Rows fetched from the slot's cursor at a time, and staged per `COPY`.
const PAGE: usize = 5_000;

/// How long a barrier may take before capture reports the log reader as stuck.
const BARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The prefix of the marker messages capture writes into the WAL.
const MARKER_PREFIX: &str = "concord";

/// How far the slot may fall behind the server's WAL, through writes to tables it does
/// not track (of this database or any other), before capture writes a marker it can
/// move past: `pgoutput` sends nothing for a transaction without tracked rows, so
/// without one the slot would hold all of that WAL on the server's disk.
const MARKER_AFTER_BYTES: i64 = 16 << 20;

/// Log-based capture's settings, from `concord.meta`.
#[derive(Clone, Debug)]
pub(crate) struct Logical {
    /// The replication slot (also the replication origin's name).
    pub(crate) slot: String,
}

/// Why log-based capture cannot run on this server, or `None` when it can.
pub(crate) fn unavailable(client: &mut Client) -> Result<Option<String>, postgres::Error> {
    let row = client.query_one(
        "SELECT current_setting('wal_level'),
                (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),
                current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int",
        &[],
    )?;
    let wal_level: String = row.get(0);
    let may: Option<bool> = row.get(1);
    let free_slots: i32 = row.get(2);
    Ok(if wal_level != "logical" {
        Some(format!(
            "the server runs with wal_level = {wal_level}; set wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL) to capture from the write-ahead log"
        ))
    } else if may != Some(true) {
        Some("the role has neither REPLICATION nor SUPERUSER; ALTER ROLE ... REPLICATION lets Concord capture from the write-ahead log".into())
    } else if free_slots < 1 {
        Some("every replication slot is in use; raise max_replication_slots (and restart PostgreSQL) to capture from the write-ahead log".into())
    } else {
        None
    })
}

/// A name for a new slot: `concord_` and 16 random hex digits (slot names allow
/// lower-case letters, digits and underscores).
pub(crate) fn new_slot_name() -> String {
    format!("concord_{:016x}", rand::random::<u64>())
}

/// Creates the publication if it is missing, then the slot (outside any transaction
/// that wrote: PostgreSQL requires it). The publication must exist first: `pgoutput`
/// looks it up as of each decoded change, and fails on changes older than it.
pub(crate) fn create_slot(client: &mut Client, slot: &str) -> Result<(), postgres::Error> {
    create_publication(client)?;
    client.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )?;
    Ok(())
}

fn create_publication(client: &mut Client) -> Result<(), postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&PUBLICATION],
        )?
        .get(0);
    if !exists {
        client.batch_execute(&format!("CREATE PUBLICATION {PUBLICATION}"))?;
    }
    Ok(())
}

/// Drops the slot if it exists; a failure is logged (the caller already removed what
/// depended on it).
pub(crate) fn drop_slot(client: &mut Client, slot: &str) {
    let result = client.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    );
    if let Err(e) = result {
        tracing::warn!(slot, error = %e, "could not drop Concord's replication slot; drop it with pg_drop_replication_slot, or it keeps the server's WAL");
    }
}

/// Records log-based capture in `concord.meta` and creates the replication origin and
/// the publication if they are missing (inside `track`'s transaction).
pub(crate) fn prepare(client: &mut Client, slot: &str) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO concord.meta(key, value) VALUES ('capture', 'logical'), ('slot', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&slot],
    )?;
    // Origins belong to the cluster, not the database: one whose database was dropped
    // (its slot went with it) would stay forever, each holding one of the server's
    // `max_replication_slots` origin states, so orphans are dropped here.
    client.batch_execute(
        r"DO $concord$DECLARE r record; BEGIN
            FOR r IN SELECT roname FROM pg_replication_origin
                     WHERE roname LIKE 'concord\_%'
                       AND roname NOT IN (SELECT slot_name FROM pg_replication_slots) LOOP
              BEGIN PERFORM pg_replication_origin_drop(r.roname);
              EXCEPTION WHEN OTHERS THEN NULL; END;
            END LOOP;
          END$concord$",
    )?;
    client.execute(
        "SELECT pg_replication_origin_create($1)
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
        &[&slot],
    )?;
    create_publication(client)
}

/// Drops the publication and the replication origin (inside `untrack`'s transaction,
/// when no table stays tracked).
pub(crate) fn remove_publication_and_origin(
    client: &mut Client,
    slot: &str,
) -> Result<(), postgres::Error> {
    client.batch_execute(&format!("DROP PUBLICATION IF EXISTS {PUBLICATION}"))?;
    client.execute(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1",
        &[&slot],
    )?;
    Ok(())
}

/// An LSN in PostgreSQL's text form (`16/B374D848`).
pub(crate) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses PostgreSQL's text form of an LSN.
pub(crate) fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// Sets up a table for log-based capture inside `track`'s transaction: full old rows,
/// in the publication, and its start position. Returns nothing; the caller backfills.
pub(crate) fn install_table(
    client: &mut Client,
    info: &TableInfo,
    newly_tracked: bool,
) -> Result<(), postgres::Error> {
    let table = info.qualified();
    // Waits for the table's writers and holds new ones back until commit, so the start
    // position read next separates what the backfill sees from what decoding brings.
    client.batch_execute(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))?;
    let identity: i8 = client
        .query_one(
            "SELECT relreplident::\"char\" FROM pg_class WHERE oid = $1",
            &[&info.oid],
        )?
        .get(0);
    if identity as u8 != b'f' {
        client.execute(
            "INSERT INTO concord.meta(key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[
                &format!("replident.{}", info.id),
                &char::from(identity as u8).to_string(),
            ],
        )?;
        client.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL"))?;
    }
    let listed = in_publication(client, info)?;
    if !listed {
        client.batch_execute(&format!(
            "ALTER PUBLICATION {PUBLICATION} ADD TABLE {table}"
        ))?;
    }
    if newly_tracked {
        client.execute(
            "INSERT INTO concord.meta(key, value) VALUES ($1, pg_current_wal_insert_lsn()::text)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&format!("start_lsn.{}", info.id)],
        )?;
    }
    Ok(())
}

/// Whether the publication lists the table.
fn in_publication(client: &mut Client, info: &TableInfo) -> Result<bool, postgres::Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                            WHERE p.pubname = $1 AND pr.prrelid = $2)",
            &[&PUBLICATION, &info.oid],
        )?
        .get(0))
}

/// Undoes [`install_table`] for a table being untracked (inside `untrack`'s
/// transaction): out of the publication, its replica identity as it was.
pub(crate) fn uninstall_table(
    client: &mut Client,
    info: &TableInfo,
) -> Result<(), postgres::Error> {
    let table = info.qualified();
    let listed = in_publication(client, info)?;
    if listed {
        client.batch_execute(&format!(
            "ALTER PUBLICATION {PUBLICATION} DROP TABLE {table}"
        ))?;
    }
    let key = format!("replident.{}", info.id);
    if let Some(row) = client.query_opt("SELECT value FROM concord.meta WHERE key = $1", &[&key])? {
        let identity = match row.get::<_, &str>(0) {
            "n" => "NOTHING",
            // An index identity cannot be restored without its index's name; DEFAULT
            // (the primary key) is what Concord needs anyway.
            _ => "DEFAULT",
        };
        client.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY {identity}"))?;
        client.execute("DELETE FROM concord.meta WHERE key = $1", &[&key])?;
    }
    client.execute(
        "DELETE FROM concord.meta WHERE key = $1",
        &[&format!("start_lsn.{}", info.id)],
    )?;
    Ok(())
}

/// `concord.pending.xid`: PostgreSQL's `xid8`, binary-encoded as an 8-byte integer.
/// Staged rows carry their transaction's commit LSN there, unique per transaction and
/// increasing in commit order, which is all the fold needs to group them.
#[derive(Debug)]
struct Xid8(u64);

impl ToSql for Xid8 {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "xid8"
    }

    to_sql_checked!();
}

/// One row change staged into `concord.pending`.
pub(crate) struct Staged {
    group: u64,
    table: i32,
    op: i16,
    at: i64,
    cols: Option<Vec<i32>>,
    key: Vec<Option<String>>,
    old_key: Option<Vec<Option<String>>>,
    values: Option<Vec<Option<String>>>,
}

/// A relation of the decoded stream, matched to the tracked table it is.
struct Mapped {
    table: Arc<TableInfo>,
    /// For each of the relation's columns, its position in the tracked table.
    positions: Vec<Option<usize>>,
    /// Decoded changes committed before this position are already in the table's
    /// backfill.
    start_lsn: u64,
}

/// The transaction being read.
struct Txn {
    final_lsn: u64,
    at: i64,
    skip: bool,
    /// A barrier message this transaction carries (see [`BARRIER_PREFIX`]).
    barrier: bool,
}

/// The prefix of the barrier messages: a transaction carrying one is emitted by a
/// store that needs every local write committed before it staged (capture, and apply
/// before it overwrites rows); whoever reads the log records its end in `slot_lsn`.
pub(crate) const BARRIER_PREFIX: &str = "concord-barrier";

/// What a message meant for the reader.
pub(crate) enum Staging {
    /// Nothing to act on yet.
    Continue,
    /// A transaction to capture (or a barrier) ended at `end_lsn`: commit what was
    /// staged for it together with the new position.
    Commit { end_lsn: u64 },
    /// A transaction that is not captured ended (Concord's own writes, one older than
    /// the stored position): nothing was staged for it.
    Skipped { end_lsn: u64 },
}

/// Turns decoded messages into `concord.pending` rows, in commit order: the part of
/// log-based capture shared by the one-shot reader ([`PgStore::stage_from_slot`]) and
/// the streaming one ([`crate::stream`]).
pub(crate) struct Stager {
    /// The replication origin whose transactions are Concord's own.
    origin: String,
    /// Transactions whose commit is before this were staged already.
    stored: u64,
    /// Start positions of tables tracked after the slot was made (`start_lsn.<id>`).
    starts: HashMap<i32, u64>,
    relations: HashMap<u32, Option<Mapped>>,
    txn: Option<Txn>,
    pub(crate) staged: Vec<Staged>,
    /// The end of the last transaction (or marker) read whole.
    pub(crate) position: u64,
}

impl Stager {
    /// A stager starting after the position stored in `concord.meta`.
    pub(crate) fn load(client: &mut Client, origin: &str) -> Result<Self, postgres::Error> {
        let mut stored = 0;
        let mut starts = HashMap::new();
        for row in client.query(
            "SELECT key, value FROM concord.meta WHERE key = 'slot_lsn' OR key LIKE 'start\\_lsn.%'",
            &[],
        )? {
            let (key, value): (&str, &str) = (row.get(0), row.get(1));
            let lsn = parse_lsn(value).unwrap_or(0);
            match key.strip_prefix("start_lsn.") {
                Some(id) => {
                    if let Ok(id) = id.parse() {
                        starts.insert(id, lsn);
                    }
                }
                None => stored = lsn,
            }
        }
        Ok(Stager::new(origin, stored, starts))
    }

    fn new(origin: &str, stored: u64, starts: HashMap<i32, u64>) -> Self {
        Stager {
            origin: origin.to_owned(),
            stored,
            starts,
            relations: HashMap::new(),
            txn: None,
            staged: Vec::new(),
            position: stored,
        }
    }

    /// Whether the transaction being read is one that is not captured (its row
    /// messages need not even be parsed).
    pub(crate) fn skipping(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.skip)
    }

    /// Whether a transaction is being read (its rows may not all be staged yet).
    pub(crate) fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// The position stored when this stager was loaded.
    pub(crate) fn stored(&self) -> u64 {
        self.stored
    }

    /// Reads one message; `lookup` finds the tracked table a relation is.
    pub(crate) fn read(
        &mut self,
        message: Message,
        lookup: &mut dyn FnMut(&str, &str) -> Option<Arc<TableInfo>>,
    ) -> Result<Staging, StoreError> {
        match message {
            Message::Begin {
                final_lsn,
                commit_time,
                ..
            } => {
                self.txn = Some(Txn {
                    final_lsn,
                    at: pgoutput::unix_millis(commit_time),
                    skip: final_lsn < self.stored,
                    barrier: false,
                });
            }
            Message::Origin { name } => {
                if name == self.origin
                    && let Some(t) = self.txn.as_mut()
                {
                    t.skip = true;
                }
            }
            Message::Commit { end_lsn, .. } => {
                return Ok(match self.txn.take() {
                    Some(t) if !t.skip || t.barrier => {
                        self.position = self.position.max(end_lsn);
                        Staging::Commit { end_lsn }
                    }
                    _ => Staging::Skipped { end_lsn },
                });
            }
            Message::Relation(relation) => {
                let schema = if relation.namespace.is_empty() {
                    "pg_catalog"
                } else {
                    relation.namespace.as_str()
                };
                let mapped = lookup(schema, &relation.name).map(|table| self.map(&relation, table));
                self.relations.insert(relation.id, mapped);
            }
            Message::Insert { relation, new } => {
                if let Some((t, m)) = live(&self.txn, &self.relations, relation) {
                    let row = insert_row(t, m, &new)?;
                    self.staged.push(row);
                }
            }
            Message::Update { relation, old, new } => {
                if let Some((t, m)) = live(&self.txn, &self.relations, relation)
                    && let Some(row) = update_row(t, m, old.as_deref(), &new)?
                {
                    self.staged.push(row);
                }
            }
            Message::Delete { relation, old } => {
                if let Some((t, m)) = live(&self.txn, &self.relations, relation) {
                    let row = delete_row(t, m, &old)?;
                    self.staged.push(row);
                }
            }
            Message::Truncate { relations } => {
                if self.txn.as_ref().is_some_and(|t| !t.skip) {
                    for id in relations {
                        if let Some(Some(m)) = self.relations.get(&id) {
                            tracing::warn!(table = %m.table.name, "TRUNCATE of a tracked table is not replicated (it removes rows without row changes); delete the rows instead, or truncate every replica");
                        }
                    }
                }
            }
            Message::Logical {
                transactional: true,
                prefix,
                ..
            } if prefix == BARRIER_PREFIX => {
                if let Some(t) = self.txn.as_mut() {
                    t.barrier = true;
                }
            }
            Message::Logical {
                transactional: false,
                lsn,
                prefix,
            } if prefix == MARKER_PREFIX && self.txn.is_none() => {
                // Every transaction that committed before the marker was read above:
                // the slot may move to it.
                self.position = self.position.max(lsn);
            }
            Message::Logical { .. } | Message::Other(_) => {}
        }
        Ok(Staging::Continue)
    }

    fn map(&self, relation: &Relation, table: Arc<TableInfo>) -> Mapped {
        let positions = relation
            .columns
            .iter()
            .map(|c| table.position_of.get(&c.name).copied())
            .collect();
        if relation.replica_identity != b'f' {
            tracing::warn!(table = %table.name, "the table's REPLICA IDENTITY is no longer FULL: updates are captured as writes of every column they carry, so concurrent edits of different columns may conflict; ALTER TABLE ... REPLICA IDENTITY FULL restores it");
        }
        Mapped {
            start_lsn: self.starts.get(&table.id).copied().unwrap_or(0),
            table,
            positions,
        }
    }
}

/// Writes staged rows into `concord.pending` with one binary `COPY`, in order, so their
/// ids follow commit order.
pub(crate) fn copy_staged(
    client: &mut Client,
    staged: &mut Vec<Staged>,
) -> Result<u64, StoreError> {
    if staged.is_empty() {
        return Ok(0);
    }
    let xid8 = client
        .query_one("SELECT 'xid8'::regtype::oid", &[])?
        .get::<_, u32>(0);
    let xid8 = Type::from_oid(xid8).unwrap_or(Type::INT8);
    let types = [
        xid8,
        Type::INT4,
        Type::INT2,
        Type::INT8,
        Type::INT4_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
    ];
    let sink = client
        .copy_in("COPY concord.pending(xid, tbl, op, at, cols, k, o, v) FROM STDIN BINARY")?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for s in staged.iter() {
        let group = Xid8(s.group);
        writer.write(&[
            &group, &s.table, &s.op, &s.at, &s.cols, &s.key, &s.old_key, &s.values,
        ])?;
    }
    let n = writer.finish()?;
    staged.clear();
    Ok(n)
}

/// Stores the position staging reached (in the staging transaction).
pub(crate) fn store_position(client: &mut Client, lsn: u64) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO concord.meta(key, value) VALUES ('slot_lsn', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&lsn_text(lsn)],
    )?;
    Ok(())
}

impl PgStore {
    /// Makes sure every local write committed before this call is staged in
    /// `concord.pending`: commits a barrier (from a connection of its own, so it
    /// commits at once, also inside an apply transaction) and waits until whoever
    /// streams the slot stored a position past it. Falls back to reading the slot here
    /// when no stream can be opened (a Unix-socket URL).
    pub(crate) fn stage_local_writes(&mut self, logical: &Logical) -> Result<(), StoreError> {
        if self.stream.is_none() {
            match crate::stream::LogStream::start(&self.url, &logical.slot) {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => {
                    tracing::debug!(error = %e, "no streaming log reader; reading the slot directly");
                    self.stage_from_slot(logical)?;
                    return Ok(());
                }
            }
        }
        if self.side.as_ref().is_none_or(|c| c.is_closed()) {
            self.side = Some(crate::store::connect(&self.url)?);
        }
        let Some(side) = self.side.as_mut() else {
            return Ok(());
        };
        let barrier: String = side
            .query_one(
                "SELECT pg_logical_emit_message(true, $1, '')::text",
                &[&BARRIER_PREFIX],
            )?
            .get(0);
        let barrier = parse_lsn(&barrier).unwrap_or(u64::MAX);
        let stmt = self.statement("SELECT value FROM concord.meta WHERE key = 'slot_lsn'")?;
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            let stored = self
                .client
                .query_opt(&stmt, &[])?
                .and_then(|r| parse_lsn(r.get(0)))
                .unwrap_or(0);
            if stored >= barrier {
                return Ok(());
            }
            if started.elapsed() > BARRIER_WAIT {
                let why = self
                    .stream
                    .as_ref()
                    .and_then(|s| s.error())
                    .unwrap_or_else(|| "no reader of the slot is keeping up".into());
                return Err(StoreError::Capture {
                    table: "(write-ahead log)".into(),
                    key: "-".into(),
                    detail: format!(
                        "local writes were not read from the write-ahead log within {} s: {why}",
                        BARRIER_WAIT.as_secs()
                    ),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(5));
        }
    }

    /// Writes a marker into the WAL when the slot has fallen [`MARKER_AFTER_BYTES`]
    /// behind the server's WAL (outside any transaction; the next captures read it and
    /// move the slot past the WAL it held for nothing).
    pub(crate) fn mark_if_far_behind(&mut self, logical: &Logical) -> Result<(), StoreError> {
        if self
            .slot_lag_bytes(logical)?
            .is_some_and(|b| b > MARKER_AFTER_BYTES as u64)
        {
            self.client.execute(
                "SELECT pg_logical_emit_message(false, $1, '')",
                &[&MARKER_PREFIX],
            )?;
        }
        Ok(())
    }

    /// How far the slot is behind the server's WAL, in bytes.
    pub(crate) fn slot_lag_bytes(&mut self, logical: &Logical) -> Result<Option<u64>, StoreError> {
        Ok(self
            .client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&logical.slot],
            )?
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|b| b.max(0) as u64))
    }

    /// Stages every committed transaction the slot holds past the stored position into
    /// `concord.pending`, and stores the new position (inside the capture's locked
    /// transaction, before it writes anything else): the one-shot reader, for a store
    /// whose slot no streaming reader holds. Returns the rows staged.
    pub(crate) fn stage_from_slot(&mut self, logical: &Logical) -> Result<u64, StoreError> {
        let mut stager = Stager::load(&mut self.client, &logical.slot)?;
        let stored = stager.stored();
        if stored > 0 {
            // The slot may still be behind what was committed last time (it is moved
            // only now); moving it first spares decoding those transactions again.
            self.client.execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)
                 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&logical.slot, &lsn_text(stored)],
            )?;
        }
        self.client.batch_execute(&format!(
            "DECLARE concord_slot NO SCROLL CURSOR FOR
             SELECT data FROM pg_logical_slot_peek_binary_changes({}, NULL, NULL,
                 'proto_version', '1', 'publication_names', {}, 'messages', 'true')",
            literal(&logical.slot),
            literal(PUBLICATION)
        ))?;
        let fetch = format!("FETCH {PAGE} FROM concord_slot");
        let tables = self.tables.clone();
        let mut lookup = |schema: &str, name: &str| {
            tables
                .iter()
                .find(|t| t.schema == schema && t.relname == name)
                .cloned()
        };
        let mut total = 0u64;
        loop {
            let rows = self.client.query(&fetch, &[])?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let message = pgoutput::parse(row.get(0)).map_err(wal_error)?;
                stager.read(message, &mut lookup)?;
            }
            if stager.staged.len() >= PAGE {
                total += copy_staged(&mut self.client, &mut stager.staged)?;
            }
        }
        total += copy_staged(&mut self.client, &mut stager.staged)?;
        self.client.batch_execute("CLOSE concord_slot")?;
        if stager.position > stored {
            store_position(&mut self.client, stager.position)?;
        }
        Ok(total)
    }
}

/// A message of the write-ahead log that could not be read.
pub(crate) fn wal_error(e: pgoutput::ParseError) -> StoreError {
    StoreError::Capture {
        table: "(write-ahead log)".into(),
        key: "-".into(),
        detail: e.to_string(),
    }
}

/// The open transaction and the tracked table a row change of `relation` belongs to,
/// unless the change is not to be captured.
fn live<'a>(
    txn: &'a Option<Txn>,
    relations: &'a HashMap<u32, Option<Mapped>>,
    relation: u32,
) -> Option<(&'a Txn, &'a Mapped)> {
    let t = txn.as_ref().filter(|t| !t.skip)?;
    let m = relations.get(&relation)?.as_ref()?;
    (t.final_lsn >= m.start_lsn).then_some((t, m))
}

fn capture_error(m: &Mapped, detail: String) -> StoreError {
    StoreError::Capture {
        table: m.table.name.clone(),
        key: "-".into(),
        detail,
    }
}

/// A datum as the text the trigger would have recorded (`None` for NULL).
fn text(m: &Mapped, datum: &Datum) -> Result<Option<String>, StoreError> {
    match datum {
        Datum::Null | Datum::Unchanged => Ok(None),
        Datum::Text(bytes) => String::from_utf8(bytes.clone())
            .map(Some)
            .map_err(|_| capture_error(m, "a value in the write-ahead log is not UTF-8".into())),
        Datum::Binary(_) => Err(capture_error(
            m,
            "the slot sent a binary value; Concord reads text values".into(),
        )),
    }
}

/// The tuple's values in the tracked table's column order (columns the tuple lacks are
/// NULL), and which positions the tuple left out as unchanged.
fn by_position(
    m: &Mapped,
    tuple: &[Datum],
) -> Result<(Vec<Option<String>>, Vec<bool>), StoreError> {
    let n = m.table.columns.len();
    let mut values = vec![None; n];
    let mut unchanged = vec![false; n];
    for (datum, position) in tuple.iter().zip(&m.positions) {
        let Some(p) = *position else { continue };
        unchanged[p] = matches!(datum, Datum::Unchanged);
        values[p] = text(m, datum)?;
    }
    Ok((values, unchanged))
}

fn key_of(m: &Mapped, values: &[Option<String>]) -> Vec<Option<String>> {
    m.table
        .key_columns
        .iter()
        .map(|&p| values[p].clone())
        .collect()
}

fn insert_row(t: &Txn, m: &Mapped, new: &[Datum]) -> Result<Staged, StoreError> {
    let (values, _) = by_position(m, new)?;
    Ok(Staged {
        group: t.final_lsn,
        table: m.table.id,
        op: OP_INSERT,
        at: t.at,
        cols: None,
        key: key_of(m, &values),
        old_key: None,
        values: Some(values),
    })
}

fn update_row(
    t: &Txn,
    m: &Mapped,
    old: Option<&[Datum]>,
    new: &[Datum],
) -> Result<Option<Staged>, StoreError> {
    let (mut values, unchanged) = by_position(m, new)?;
    let key = key_of(m, &values);
    let old_values = old.map(|o| by_position(m, o)).transpose()?.map(|(v, _)| v);
    // Unchanged TOASTed values are not sent again: the old row has them.
    if let Some(old) = &old_values {
        for (p, same) in unchanged.iter().enumerate() {
            if *same {
                values[p] = old[p].clone();
            }
        }
    }
    let old_key = old_values.as_ref().map(|o| key_of(m, o));
    if let Some(old_key) = old_key.filter(|k| *k != key) {
        return Ok(Some(Staged {
            group: t.final_lsn,
            table: m.table.id,
            op: OP_REKEY,
            at: t.at,
            cols: None,
            key,
            old_key: Some(old_key),
            values: Some(values),
        }));
    }
    let changed: Vec<i32> = (0..values.len())
        .filter(|&p| match &old_values {
            // Without the old row (REPLICA IDENTITY not FULL), every column sent.
            None => !unchanged[p],
            Some(old) => old[p] != values[p],
        })
        .map(|p| p as i32)
        .collect();
    if changed.is_empty() {
        return Ok(None);
    }
    Ok(Some(Staged {
        group: t.final_lsn,
        table: m.table.id,
        op: OP_UPDATE,
        at: t.at,
        cols: Some(changed),
        key,
        old_key: None,
        values: Some(values),
    }))
}

fn delete_row(t: &Txn, m: &Mapped, old: &[Datum]) -> Result<Staged, StoreError> {
    let (values, _) = by_position(m, old)?;
    Ok(Staged {
        group: t.final_lsn,
        table: m.table.id,
        op: OP_DELETE,
        at: t.at,
        cols: None,
        key: key_of(m, &values),
        old_key: None,
        values: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pgoutput::RelationColumn;
    use crate::schema::ColumnInfo;
    use crate::types::ColumnKind;

    fn table() -> Arc<TableInfo> {
        let column = |name: &str| ColumnInfo {
            name: name.into(),
            type_name: "text".into(),
            kind: ColumnKind::TextIo,
            cast: String::new(),
        };
        Arc::new(TableInfo {
            id: 7,
            oid: 1,
            name: "t".into(),
            schema: "public".into(),
            relname: "t".into(),
            columns: vec![column("id"), column("v"), column("w")],
            key_columns: vec![0],
            position_of: [("id", 0), ("v", 1), ("w", 2)]
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect(),
        })
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.as_bytes().to_vec())
    }

    /// Feeds one transaction writing row 1 (an insert, then an update of `w` under a
    /// full old row) and returns what the stager staged and said at commit.
    fn transaction(stager: &mut Stager, final_lsn: u64, origin: Option<&str>) -> (usize, bool) {
        let mut lookup = |_: &str, _: &str| Some(table());
        let relation = Message::Relation(Relation {
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'f',
            columns: ["v", "id", "w"]
                .map(|n| RelationColumn {
                    key: true,
                    name: n.into(),
                    type_oid: 25,
                })
                .to_vec(),
        });
        let mut messages = vec![Message::Begin {
            final_lsn,
            commit_time: 0,
            xid: 1,
        }];
        if let Some(name) = origin {
            messages.push(Message::Origin { name: name.into() });
        }
        messages.extend([
            relation,
            Message::Insert {
                relation: 1,
                new: vec![text("a"), text("1"), Datum::Null],
            },
            Message::Update {
                relation: 1,
                old: Some(vec![text("a"), text("1"), Datum::Null]),
                new: vec![Datum::Unchanged, text("1"), text("x")],
            },
            Message::Commit {
                commit_lsn: final_lsn,
                end_lsn: final_lsn + 8,
                commit_time: 0,
            },
        ]);
        let before = stager.staged.len();
        let mut committed = false;
        for m in messages {
            if let Staging::Commit { .. } = stager.read(m, &mut lookup).unwrap() {
                committed = true;
            }
        }
        (stager.staged.len() - before, committed)
    }

    #[test]
    fn a_transaction_before_the_stored_position_or_of_concords_origin_is_not_staged() {
        let mut stager = Stager::new("concord_x", 1_000, HashMap::new());
        assert_eq!(
            transaction(&mut stager, 900, None),
            (0, false),
            "read before"
        );
        assert_eq!(
            transaction(&mut stager, 1_100, Some("concord_x")),
            (0, false),
            "own write"
        );
        assert_eq!(
            transaction(&mut stager, 1_200, Some("someone_else")),
            (2, true)
        );
        assert_eq!(stager.position, 1_208);
        let update = &stager.staged[1];
        assert_eq!(update.cols.as_deref(), Some(&[2][..]), "only w changed");
        assert_eq!(
            update.values.as_deref(),
            Some(&[Some("1".into()), Some("a".into()), Some("x".into())][..]),
            "values in the table's column order, the unchanged one from the old row"
        );
    }

    #[test]
    fn a_table_tracked_later_skips_what_its_backfill_holds() {
        let mut stager = Stager::new("concord_x", 0, [(7, 2_000)].into_iter().collect());
        assert_eq!(transaction(&mut stager, 1_500, None).0, 0);
        assert_eq!(transaction(&mut stager, 2_500, None).0, 2);
    }

    #[test]
    fn lsns_read_back_as_written() {
        for lsn in [0u64, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse_lsn(&lsn_text(lsn)), Some(lsn));
        }
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
