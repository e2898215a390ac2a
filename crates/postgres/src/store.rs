//! The store handle: connecting, tracking, untracking, and the state kept in memory.
//!
//! Every transaction that writes Concord's metadata (capture, apply, track, untrack)
//! first takes one transaction-scoped advisory lock, so Concord's own writers are
//! serialized per database even across processes, and log positions are allocated in
//! commit order (a reader that saw position *p* committed never later finds a smaller
//! one appear). After taking it, the store re-reads the sequence numbers and clock, so
//! two handles on one database never issue the same sequence number.

use std::collections::HashMap;
use std::sync::Arc;

use concord_core::mapping::Kind;
use concord_core::merge::RowClock;
use concord_core::{Change, Hlc, HlcClock, NodeId, PrimaryKey, VersionVector};
use postgres::{Client, NoTls, Statement};

use crate::apply::WriteKind;
use crate::logical::{self, Logical};
use crate::schema::{
    self, CANONICAL_SETTINGS, FORMAT_VERSION, METADATA_DDL, TableInfo, literal, quote,
};
use crate::types::Param;
use concord_store::bookkeeping::{self, SqlDriver};
use concord_store::engine::ApplyBackend as _;
use concord_store::engine::WriteMode;
use concord_store::meta_batch::MetaBatch;
use concord_store::pending::PendingRows;
use concord_store::tracking;
use concord_store::{
    ApplyError, ApplyTxn, CaptureMethod, CaptureState, ConflictRecord, FailureRecord, LogRead,
    Origins, SnapshotRead, Store, StoreOptions,
};
use concord_store::{
    ApplyReport, ColumnChange, ColumnSignature, StoreError, TrackError, compare_columns,
};

/// Key of the advisory lock serializing Concord's writers in one database ("concord").
pub(crate) const LOCK_KEY: i64 = 0x0063_6f6e_636f_7264;

/// The type of a column added for values of `kind` (`None`: only NULLs were seen):
/// the type each kind is read from and written to exactly (`docs/type-mapping.md`).
/// `json`, not `jsonb`, keeps the text as written, as every other replica holds it.
pub(crate) fn column_type(kind: Option<Kind>) -> &'static str {
    match kind {
        Some(Kind::Integer) => "bigint",
        Some(Kind::Real) => "double precision",
        Some(Kind::Blob) => "bytea",
        Some(Kind::Decimal) => "numeric",
        Some(Kind::Bool) => "boolean",
        Some(Kind::Json) => "json",
        Some(Kind::Timestamp) => "timestamptz",
        Some(Kind::Date) => "date",
        Some(Kind::Uuid) => "uuid",
        Some(Kind::Text) | None => "text",
    }
}

/// A PostgreSQL database tracked by Concord.
pub struct PgStore {
    pub(crate) client: Connection,
    pub(crate) url: String,
    pub(crate) node: NodeId,
    pub(crate) local_index: i32,
    pub(crate) options: StoreOptions,
    pub(crate) clock: HlcClock,
    pub(crate) tables: Vec<Arc<TableInfo>>,
    pub(crate) origins: Origins,
    /// Set when a transaction rolled back: in-memory state must be reloaded.
    pub(crate) stale: bool,
    /// Load tables whose shape changed since tracking (for `untrack` only).
    lenient: bool,
    /// Why tracked tables are not synced (changed shape, gone); see `load_tables`.
    problems: Vec<String>,
    /// Set when tracked columns were added; taken by [`Store::take_schema_changed`].
    schema_changed: bool,
    /// The catalog summary the tables were last read at (`columns_signature`).
    columns_signature: Vec<i64>,
    pub(crate) statements: HashMap<String, Statement>,
    /// Row clocks and log entries of the open apply transaction not written yet.
    pub(crate) apply_meta: MetaBatch,
    /// User-table writes by (table id, kind, written columns), prepared once: building
    /// their SQL text for every change cost more than the rest of the apply.
    pub(crate) write_statements: HashMap<(i32, WriteKind, Vec<usize>), Statement>,
    /// Set when capture reads the write-ahead log ([`crate::logical`]) instead of
    /// trigger rows.
    pub(crate) logical: Option<Logical>,
    /// Backfills of added columns that wait until the write-ahead log was staged
    /// (log-based capture), so they are folded after the writes that preceded them.
    pub(crate) deferred_backfills: Vec<String>,
    /// The server's WAL insert position when the last successful capture started:
    /// nothing was written since while it has not moved.
    pub(crate) wal_seen: Option<String>,
    /// The streaming reader of the slot (log-based capture), once started.
    pub(crate) stream: Option<crate::stream::LogStream>,
    /// A connection of its own for barriers ([`PgStore::stage_local_writes`]).
    pub(crate) side: Option<Connection>,
    /// [`crate::stream::LogStream::staged_transactions`] when the last capture began.
    pub(crate) staged_seen: u64,
    /// Set by [`Store::capture_ready`]: fold what the stream staged, without a barrier.
    pub(crate) skip_barrier: bool,
    /// Pending rows one capture folds at most ([`crate::capture`]'s bounded steps);
    /// `None`: all of them.
    pub(crate) fold_step: Option<usize>,
    /// User-table writes held back to be written set-based ([`crate::rows`]).
    pub(crate) pending_rows: PendingRows<TableInfo, Param>,
    /// Multi-row statements by shape and row count, prepared once per transaction.
    pub(crate) set_statements: HashMap<(i32, WriteKind, Vec<usize>, usize), Statement>,
}

/// Connects and fixes the session settings value text depends on.
pub(crate) fn connect(url: &str) -> Result<Connection, StoreError> {
    let mut client = Client::connect(url, NoTls)?;
    let settings: String = CANONICAL_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {} = {};", quote(k), literal(v)))
        .collect();
    // Concord's own statements are idempotent DDL (`CREATE ... IF NOT EXISTS`), whose
    // NOTICEs ("relation ... already exists, skipping") the driver would log on every
    // start; only warnings and errors are worth a user's attention.
    client.batch_execute(&format!("{settings} SET client_min_messages = warning;"))?;
    Ok(Connection(Some(client)))
}

/// A blocking client that may be dropped anywhere.
///
/// The `postgres` crate's blocking `Client` runs a small tokio runtime of its own, and
/// dropping it blocks on that runtime to close the connection, which panics on a
/// thread that is driving another runtime's tasks (where the node may drop a store or
/// a log reader when a session ends). Inside a tokio runtime the client is therefore
/// closed on a thread of its own.
pub(crate) struct Connection(Option<Client>);

// The client is `Some` from construction until `drop` takes it.
#[allow(clippy::expect_used)]
impl std::ops::Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.0.as_ref().expect("the client is present until drop")
    }
}

#[allow(clippy::expect_used)]
impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("the client is present until drop")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(client) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

/// Runs `body` in a transaction holding Concord's lock; commits on success, rolls back
/// on failure.
///
/// The transaction is `READ COMMITTED` whatever the database's default
/// (`default_transaction_isolation`), so each statement reads what had committed when
/// it started: tracking relies on it (see [`PgStore::track`]). Under `REPEATABLE READ`
/// the backfill would read the snapshot taken by the transaction's first statement,
/// before the trigger's lock waited for the table's writers, and miss what they
/// committed meanwhile, which the trigger (created after) does not capture either.
fn in_transaction<T, E: From<postgres::Error>>(
    client: &mut Client,
    body: impl FnOnce(&mut Client) -> Result<T, E>,
) -> Result<T, E> {
    client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
    let result = client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .map_err(E::from)
        .and_then(|_| body(client));
    match result {
        Ok(v) => {
            client.batch_execute("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK");
            Err(e)
        }
    }
}

impl PgStore {
    /// Opens a tracked database with default options.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, StoreOptions::default())
    }

    /// Opens a tracked database.
    pub fn open_with(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_inner(url, options, false)
    }

    fn open_inner(url: &str, options: StoreOptions, lenient: bool) -> Result<Self, StoreError> {
        let mut client = connect(url)?;
        let tracked = client
            .query_one("SELECT to_regclass('concord.meta') IS NOT NULL", &[])?
            .get::<_, bool>(0);
        if !tracked {
            return Err(StoreError::NotTracked(redact(url)));
        }
        let mut store = PgStore {
            client,
            url: url.to_owned(),
            node: NodeId::from_bytes([0; 16]),
            local_index: 0,
            clock: HlcClock::new(Hlc::ZERO, options.max_clock_drift.as_millis() as u64),
            options,
            tables: Vec::new(),
            origins: Origins::default(),
            stale: true,
            lenient,
            problems: Vec::new(),
            schema_changed: false,
            columns_signature: Vec::new(),
            statements: HashMap::new(),
            apply_meta: MetaBatch::default(),
            write_statements: HashMap::new(),
            logical: None,
            deferred_backfills: Vec::new(),
            wal_seen: None,
            stream: None,
            side: None,
            staged_seen: 0,
            skip_barrier: false,
            fold_step: None,
            pending_rows: PendingRows::default(),
            set_statements: HashMap::new(),
        };
        store.migrate()?;
        store.reload()?;
        Ok(store)
    }

    /// Installs capture on `tables` (creating Concord's metadata on first use) and
    /// returns the opened store. Existing rows are queued as inserts so that replicas
    /// receive them. Tracking an already tracked table refreshes its trigger.
    ///
    /// Everything happens in one transaction, so the rows of all the tables are one
    /// source transaction, queued parents first: a table referenced by a foreign key of
    /// another table being tracked comes before it, whatever order `tables` names them
    /// in (see `schema::parents_first` for cycles). Tables already tracked are
    /// not queued again.
    ///
    /// Nothing is lost or queued twice while other sessions keep writing: creating the
    /// trigger locks the table in `SHARE ROW EXCLUSIVE` mode, which waits for every
    /// transaction writing it to end and keeps new writers waiting until commit; the
    /// backfill statement then starts, and (`READ COMMITTED`) reads everything committed
    /// before it. A writer that waited writes after the commit, when the trigger is in
    /// place; its pending rows get ids above the backfill's, so capture logs them
    /// after it. If PostgreSQL breaks a deadlock with a writer (one holding another
    /// tracked table while it waits for this one) by failing the transaction, it is run
    /// again, a few times at most.
    pub fn track(url: &str, tables: &[&str], options: StoreOptions) -> Result<Self, TrackError> {
        let mut client = connect(url)?;
        let (slot, created) = choose_capture(&mut client, &options)?;
        let mut attempt = 1;
        let result = loop {
            match in_transaction(&mut client, |client| {
                track_in_txn(client, tables, slot.as_deref())
            }) {
                Err(e) if attempt < TRACK_ATTEMPTS && deadlocked(&e) => {
                    tracing::info!(attempt, "tracking was a deadlock victim; retrying");
                    attempt += 1;
                }
                other => break other,
            }
        };
        if let Err(e) = result {
            if let (Some(slot), true) = (&slot, created) {
                logical::drop_slot(&mut client, slot);
            }
            return Err(e);
        }
        drop(client);
        Ok(Self::open_with(url, options)?)
    }

    /// Checks, without changing anything, that `tables` of the database at `url` can be
    /// tracked: the server accepts the connection and each table exists, is an
    /// ordinary table, has a primary key and only columns of types Concord can
    /// replicate. Every problem is reported at once (as [`TrackError::Problems`] when
    /// there are several). It reads the catalog with the same code as
    /// [`PgStore::track`], inside a `READ ONLY` transaction that is rolled back, so the
    /// two never disagree and the check cannot modify the database.
    pub fn check(url: &str, tables: &[&str]) -> Result<(), TrackError> {
        let mut client = connect(url)?;
        client.batch_execute("BEGIN READ ONLY")?;
        let result = introspect_all(&mut client, tables).map(drop);
        let _ = client.batch_execute("ROLLBACK");
        result
    }

    /// Removes capture from `tables`, or every trace of Concord (the `concord` schema
    /// and every trigger) if `tables` is empty or no tracked table remains. Change-log
    /// entries of a table that is untracked alone are kept, because peers may still
    /// need them.
    pub fn untrack(url: &str, tables: &[&str]) -> Result<(), TrackError> {
        // Lenient: a table whose shape changed can still be untracked.
        let store = Self::open_inner(url, StoreOptions::default(), true)?;
        let known = store.tables.clone();
        let logical = store.logical.clone();
        let mut client = store.client;
        let removed_all = in_transaction(&mut client, |client| -> Result<bool, TrackError> {
            for &name in tables {
                let info = known
                    .iter()
                    .find(|t| t.name == name || t.qualified() == name)
                    .ok_or_else(|| TrackError::NotTracked(name.to_owned()))?;
                client.batch_execute(&info.drop_trigger_sql())?;
                if logical.is_some() {
                    logical::uninstall_table(client, info)?;
                }
                client.execute("DELETE FROM concord.rows WHERE tbl = $1", &[&info.id])?;
                client.execute("DELETE FROM concord.pending WHERE tbl = $1", &[&info.id])?;
                client.execute(
                    "UPDATE concord.tables SET tracked = false WHERE id = $1",
                    &[&info.id],
                )?;
            }
            let remaining: i64 = client
                .query_one("SELECT count(*) FROM concord.tables WHERE tracked", &[])?
                .get(0);
            if tables.is_empty() || remaining == 0 {
                for info in &known {
                    client.batch_execute(&info.drop_trigger_sql())?;
                    if logical.is_some() {
                        logical::uninstall_table(client, info)?;
                    }
                }
                if let Some(logical) = &logical {
                    logical::remove_publication_and_origin(client, &logical.slot)?;
                }
                // CASCADE also drops any trigger whose table was renamed meanwhile: it
                // depends on its function in the schema.
                client.batch_execute("DROP SCHEMA concord CASCADE")?;
                return Ok(true);
            }
            Ok(false)
        })?;
        if let (true, Some(logical)) = (removed_all, &logical) {
            logical::drop_slot(&mut client, &logical.slot);
        }
        Ok(())
    }

    /// Upgrades the metadata of a database an older Concord tracked, in one transaction
    /// under Concord's lock; nothing happens if it is current.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let format: Option<String> = self
            .client
            .query_opt("SELECT value FROM concord.meta WHERE key = 'format'", &[])?
            .map(|r| r.get(0));
        if format.as_deref() != Some("1") {
            return Ok(());
        }
        in_transaction(&mut self.client, |client| -> Result<(), StoreError> {
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
            client.batch_execute(schema::MIGRATION_TO_2)?;
            Ok(())
        })
    }

    /// Reloads identity, tables, origins and clock from the database.
    pub(crate) fn reload(&mut self) -> Result<(), StoreError> {
        let meta: HashMap<String, String> = self
            .client
            .query("SELECT key, value FROM concord.meta", &[])?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        self.node = concord_store::node_id_from_meta(&meta, "concord.meta", FORMAT_VERSION)?;
        self.logical = match (meta.get("capture").map(String::as_str), meta.get("slot")) {
            (Some("logical"), Some(slot)) => Some(Logical { slot: slot.clone() }),
            _ => None,
        };
        self.load_progress()?;
        self.local_index =
            self.origins
                .index(self.node)
                .map(|i| i as i32)
                .ok_or(StoreError::Corrupt {
                    table: "concord.origins",
                    detail: "the local node has no origin row".into(),
                })?;
        let tables = self.load_tables(false)?;
        self.tables = tables;
        self.statements.clear();
        self.write_statements.clear();
        self.stale = false;
        Ok(())
    }

    /// Reads the tracked tables and follows what changed in their columns since they
    /// were recorded ([`concord_store::compare_columns`]): columns added after the last
    /// one are recorded and captured from now on (the trigger is rebuilt; `in_txn` says
    /// the caller holds Concord's lock in an open transaction, else this takes its own);
    /// a table changed in any other way, or gone, is left out with a problem saying so
    /// ([`Store::table_problems`]), and every other table keeps syncing. (When opened
    /// only to untrack, every table that can be read is kept.)
    fn load_tables(&mut self, in_txn: bool) -> Result<Vec<Arc<TableInfo>>, StoreError> {
        let mut tables = Vec::new();
        self.problems.clear();
        let rows = self.client.query(
            "SELECT id, schema_name, name FROM concord.tables WHERE tracked ORDER BY id",
            &[],
        )?;
        for row in rows {
            let id: i32 = row.get(0);
            let qualified = format!(
                "{}.{}",
                quote(row.get::<_, &str>(1)),
                quote(row.get::<_, &str>(2))
            );
            let mut info = match TableInfo::introspect(&mut self.client, &qualified) {
                Ok(info) => info,
                Err(TrackError::Store(e)) => return Err(e),
                Err(e) => {
                    let problem = format!(
                        "tracked table {qualified} cannot be read ({e}); it is not synced until it is back or untracked"
                    );
                    tracing::warn!(table = %qualified, error = %e, "tracked table cannot be read; it is skipped until fixed");
                    self.problems.push(problem);
                    continue;
                }
            };
            info.id = id;
            let recorded: Vec<ColumnSignature> = self
                .client
                .query(
                    "SELECT name, type_name FROM concord.columns WHERE tbl = $1 ORDER BY position",
                    &[&id],
                )?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let current: Vec<ColumnSignature> = info
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.type_name.clone()))
                .collect();
            match compare_columns(&recorded, &current) {
                ColumnChange::Same => {}
                ColumnChange::Appended(added) => {
                    let from = recorded.len();
                    // Rebuilding the trigger locks the table until commit, so the rows read
                    // next hold every write made before it, and later writes are captured
                    // whole. Writes of the new columns made before it (the old trigger
                    // did not know them) are queued from the rows themselves.
                    if self.logical.is_none() {
                        locked(&mut self.client, in_txn, |client| {
                            install_columns(client, &info, from)?;
                            client.batch_execute(&info.trigger_sql())?;
                            client.batch_execute(&info.backfill_columns_sql(from))
                        })?;
                    } else {
                        // Decoding brings every row written since the column was
                        // added, with its value; only values no row change carried
                        // (a column added with a default) are queued from the rows,
                        // after the decoded writes that precede them.
                        locked(&mut self.client, in_txn, |client| {
                            install_columns(client, &info, from)
                        })?;
                        let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
                        let defaulted: bool = self
                            .client
                            .query_one(
                                "SELECT coalesce(bool_or(atthasdef OR atthasmissing), false)
                                 FROM pg_attribute WHERE attrelid = $1 AND attname = ANY($2)",
                                &[&info.oid, &names],
                            )?
                            .get(0);
                        if defaulted && in_txn {
                            self.deferred_backfills
                                .push(info.backfill_columns_sql(from));
                        } else if defaulted {
                            // Opened without capturing: queue them now, lest they be
                            // forgotten (a change of such a row committed before
                            // and not captured yet is then logged after them; the
                            // merge still ends at the row's values).
                            locked(&mut self.client, false, |client| {
                                client.batch_execute(&info.backfill_columns_sql(from))
                            })?;
                        }
                    }
                    let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
                    tracing::info!(table = %info.name, added = ?names, "columns added; capturing them from now on");
                    self.schema_changed = true;
                }
                ColumnChange::Incompatible(why) if !self.lenient => {
                    // The trigger would name a column that is gone and fail every write
                    // of the application: capture of this table stops instead.
                    locked(&mut self.client, in_txn, |client| {
                        client.batch_execute(&info.drop_trigger_sql())
                    })?;
                    let problem = format!(
                        "table {} changed in a way Concord cannot follow ({why}); it is not captured or applied until you untrack and track it again",
                        info.name
                    );
                    tracing::warn!(table = %info.name, %why, "tracked table changed shape; capture of it stopped");
                    self.problems.push(problem);
                    continue;
                }
                ColumnChange::Incompatible(_) => {}
            }
            tables.push(Arc::new(info));
        }
        self.columns_signature = self.columns_signature()?;
        Ok(tables)
    }

    /// A summary of the tracked tables' columns in the catalog: it changes when a
    /// column is added, dropped, renamed or retyped, or a table dropped. Checked at
    /// every capture, so a schema change is followed without a restart.
    fn columns_signature(&mut self) -> Result<Vec<i64>, StoreError> {
        let row = self.client.query_one(
            "SELECT count(*), coalesce(sum(a.attnum), 0)::int8,
                    coalesce(sum(hashtext(a.attname)), 0)::int8,
                    coalesce(sum(a.atttypid::int8), 0)::int8,
                    (SELECT count(*) FROM concord.tables t2 WHERE t2.tracked)
             FROM concord.tables t
             JOIN pg_attribute a
               ON a.attrelid = to_regclass(quote_ident(t.schema_name) || '.' || quote_ident(t.name))
             WHERE t.tracked AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )?;
        Ok((0..5).map(|i| row.get::<_, i64>(i)).collect())
    }

    /// Follows schema changes of tracked tables since the last look (inside the
    /// caller's locked transaction).
    pub(crate) fn follow_schema(&mut self) -> Result<(), StoreError> {
        if self.columns_signature()? == self.columns_signature {
            return Ok(());
        }
        self.tables = self.load_tables(true)?;
        self.statements.clear();
        self.write_statements.clear();
        Ok(())
    }

    /// Re-reads origins, sequence numbers and the clock (cheap: one row per origin).
    /// Called under Concord's lock before every metadata write.
    pub(crate) fn load_progress(&mut self) -> Result<(), StoreError> {
        let hlc: String = self
            .client
            .query_one("SELECT value FROM concord.meta WHERE key = 'hlc'", &[])?
            .get(0);
        let hlc: u64 = hlc.parse().map_err(|e| StoreError::Corrupt {
            table: "concord.meta",
            detail: format!("hlc: {e}"),
        })?;
        let drift = self.clock.max_drift_ms();
        self.clock = HlcClock::new(Hlc::from_u64(hlc), drift);
        let mut origins = Origins::default();
        for row in self
            .client
            .query("SELECT id, node_id, seq FROM concord.origins", &[])?
        {
            let id: i32 = row.get(0);
            let bytes: &[u8] = row.get(1);
            let seq: i64 = row.get(2);
            let node = NodeId::try_from(bytes).map_err(|e| StoreError::Corrupt {
                table: "concord.origins",
                detail: e.to_string(),
            })?;
            origins.insert(id as u32, node, seq.max(0) as u64);
        }
        self.origins = origins;
        Ok(())
    }

    /// Adds `column` to tracked table `table` for a peer's changes
    /// ([`concord_store::add_column`], typed by [`column_type`]).
    pub fn add_column(
        &mut self,
        table: &str,
        column: &str,
        kind: Option<Kind>,
    ) -> Result<(), StoreError> {
        concord_store::add_column(self, table, column, kind)
    }

    pub(crate) fn ensure_fresh(&mut self) -> Result<(), StoreError> {
        // A connection the server closed (a restart, a failover, an administrator, an
        // idle timeout) is replaced. Nothing is lost: whatever was in flight was rolled
        // back with it, and the state kept in memory is reloaded from the database,
        // where it was committed together with the data.
        if self.client.is_closed() {
            tracing::warn!(store = %redact(&self.url), "the connection to PostgreSQL was closed; reconnecting");
            self.client = connect(&self.url)?;
            self.stale = true;
        }
        if self.stale {
            self.reload()?;
        }
        Ok(())
    }

    /// The server's current WAL insert position, as text.
    pub(crate) fn wal_position(&mut self) -> Result<String, StoreError> {
        let stmt = self.statement("SELECT pg_current_wal_insert_lsn()::text")?;
        Ok(self.client.query_one(&stmt, &[])?.get(0))
    }

    /// Opens a transaction holding Concord's lock, with fresh progress.
    pub(crate) fn begin_locked(&mut self) -> Result<(), StoreError> {
        // READ COMMITTED whatever the database's default: each statement then sees what
        // committed before it, so capture, after the table locks waited for writers in
        // flight, reads their pending rows. Under a REPEATABLE READ default the snapshot
        // would predate the wait and miss them, as it did for `track`.
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        let r = self
            .client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .map_err(StoreError::from)
            .and_then(|_| self.load_progress());
        if let Err(e) = r {
            let _ = self.client.batch_execute("ROLLBACK");
            self.stale = true;
            return Err(e);
        }
        Ok(())
    }

    /// This replica's identity.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Tracked tables.
    pub fn tables(&self) -> &[Arc<TableInfo>] {
        &self.tables
    }

    /// What this replica holds from each origin.
    pub fn version_vector(&self) -> &VersionVector {
        &self.origins.held
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The underlying connection, for reading user tables.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Number of entries in the change log.
    pub fn log_len(&mut self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut self.sql(), "log")
    }

    /// Number of captured writes not yet folded into the change log (committed ones).
    pub fn pending_len(&mut self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut self.sql(), "pending")
    }

    /// Changes set aside because they could not be applied, oldest first.
    pub fn failures(&mut self) -> Result<Vec<FailureRecord>, StoreError> {
        bookkeeping::failures(&mut self.sql())
    }

    /// Recorded conflicts, oldest first.
    pub fn conflicts(&mut self) -> Result<Vec<ConflictRecord>, StoreError> {
        bookkeeping::conflicts(&mut self.sql())
    }

    pub(crate) fn table_by_id(&self, id: i32) -> Option<&Arc<TableInfo>> {
        self.tables.iter().find(|t| t.id == id)
    }

    pub(crate) fn table_named(&self, name: &str) -> Option<Arc<TableInfo>> {
        self.tables.iter().find(|t| t.name == name).cloned()
    }

    /// A prepared statement for `sql`, prepared once per connection.
    pub(crate) fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        self.sql().prepared(sql)
    }

    /// The local index of `node`, registering it if new.
    pub(crate) fn origin_index(&mut self, node: NodeId) -> Result<i32, postgres::Error> {
        if node == self.node {
            return Ok(self.local_index);
        }
        if let Some(i) = self.origins.index(node) {
            return Ok(i as i32);
        }
        let stmt = self
            .statement("INSERT INTO concord.origins(node_id, seq) VALUES ($1, 0) RETURNING id")?;
        let i: i32 = self
            .client
            .query_one(&stmt, &[&node.as_bytes().as_slice()])?
            .get(0);
        self.origins.insert(i as u32, node, 0);
        Ok(i)
    }

    /// Loads a row's clock; a row never seen has the default clock.
    pub(crate) fn load_clock(
        &mut self,
        table: i32,
        key: &PrimaryKey,
    ) -> Result<RowClock, LoadClockError> {
        let stmt =
            self.statement("SELECT cl, clock FROM concord.rows WHERE tbl = $1 AND pk = $2")?;
        let row = self.client.query_opt(&stmt, &[&table, &key.as_bytes()])?;
        let Some(row) = row else {
            return Ok(RowClock::default());
        };
        self.decode_clock(row.get(0), row.get(1))
            .map_err(LoadClockError::Corrupt)
    }

    /// A row clock from its `concord.rows` columns.
    pub(crate) fn decode_clock(&self, cl: i64, clock: &[u8]) -> Result<RowClock, String> {
        self.origins.decode_clock(cl, clock)
    }

    /// A row clock as `concord.rows.clock` holds it (registers origins seen first).
    pub(crate) fn encode_clock(&mut self, clock: &RowClock) -> Result<Vec<u8>, postgres::Error> {
        concord_store::encode_clock(clock, |node| self.origin_index(node).map(|i| i as u32))
    }

    /// Persists the clock and the held sequence of `origin` (inside the caller's
    /// transaction).
    pub(crate) fn save_progress(
        &mut self,
        origin_index: i32,
        seq: u64,
    ) -> Result<(), postgres::Error> {
        let stmt = self.statement("UPDATE concord.origins SET seq = $2 WHERE id = $1")?;
        self.client
            .execute(&stmt, &[&origin_index, &(seq as i64)])?;
        let stmt = self.statement("UPDATE concord.meta SET value = $1 WHERE key = 'hlc'")?;
        self.client
            .execute(&stmt, &[&self.clock.last().as_u64().to_string()])?;
        Ok(())
    }
}

/// Loading a row clock failed.
#[derive(Debug)]
pub(crate) enum LoadClockError {
    Postgres(postgres::Error),
    Corrupt(String),
}

impl From<postgres::Error> for LoadClockError {
    fn from(e: postgres::Error) -> Self {
        LoadClockError::Postgres(e)
    }
}

/// A connection URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Writes a new replica's format, random node id and clock.
fn init_identity(client: &mut Client) -> Result<(), postgres::Error> {
    let node = NodeId::from_bytes(rand::random());
    client.execute(
        "INSERT INTO concord.meta(key, value) VALUES ('format', $1), ('node_id', $2), ('hlc', '0')",
        &[&FORMAT_VERSION.to_string(), &node.to_string()],
    )?;
    client.execute(
        "INSERT INTO concord.origins(node_id, seq) VALUES ($1, 0)",
        &[&node.as_bytes().as_slice()],
    )?;
    Ok(())
}

/// How many times tracking is attempted when PostgreSQL picks it as a deadlock victim.
const TRACK_ATTEMPTS: usize = 5;

/// Decides how a database being tracked is captured: from the write-ahead log when it
/// already is, or when it is new to Concord, `options` prefer it and the server allows
/// it (a slot is then created here, outside any transaction, as PostgreSQL requires);
/// else with triggers. Returns the slot, and whether it was created now.
fn choose_capture(
    client: &mut Client,
    options: &StoreOptions,
) -> Result<(Option<String>, bool), StoreError> {
    let tracked = client
        .query_one("SELECT to_regclass('concord.meta') IS NOT NULL", &[])?
        .get::<_, bool>(0);
    if tracked {
        let meta: HashMap<String, String> = client
            .query(
                "SELECT key, value FROM concord.meta WHERE key IN ('capture', 'slot')",
                &[],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let Some(slot) = meta
            .get("slot")
            .filter(|_| meta.get("capture").map(String::as_str) == Some("logical"))
        else {
            match logical::unavailable(client)? {
                None if options.capture == CaptureMethod::Log => tracing::info!(
                    "capturing with triggers, as when this database was first tracked; untrack and track it again to capture from the write-ahead log instead"
                ),
                Some(why) => tracing::info!(reason = %why, "capturing with triggers"),
                None => tracing::info!("capturing with triggers, as configured"),
            }
            return Ok((None, false));
        };
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[slot],
            )?
            .get::<_, bool>(0);
        if !exists {
            tracing::warn!(slot = %slot, "Concord's replication slot is gone (dropped by hand?); creating it again: writes made while it was missing are not captured until a peer reconciles (concord verify)");
            logical::create_slot(client, slot)?;
            return Ok((Some(slot.clone()), true));
        }
        tracing::info!(slot = %slot, "capturing from the write-ahead log (logical decoding)");
        return Ok((Some(slot.clone()), false));
    }
    if options.capture == CaptureMethod::Triggers {
        tracing::info!("capturing with triggers, as configured");
        return Ok((None, false));
    }
    if let Some(why) = logical::unavailable(client)? {
        tracing::info!(reason = %why, "capturing with triggers");
        return Ok((None, false));
    }
    let slot = logical::new_slot_name();
    logical::create_slot(client, &slot)?;
    tracing::info!(slot = %slot, "capturing from the write-ahead log (logical decoding)");
    Ok((Some(slot), true))
}

/// The body of [`PgStore::track`], inside its transaction; `slot` is set when capture
/// reads the write-ahead log.
fn track_in_txn(
    client: &mut Client,
    tables: &[&str],
    slot: Option<&str>,
) -> Result<(), TrackError> {
    client.batch_execute(METADATA_DDL)?;
    let format = client
        .query_opt("SELECT value FROM concord.meta WHERE key = 'format'", &[])?
        .map(|r| r.get::<_, String>(0));
    match format {
        Some(found) => {
            let found = found.parse::<i64>().map_err(|e| StoreError::Corrupt {
                table: "concord.meta",
                detail: format!("format: {e}"),
            })?;
            if found > FORMAT_VERSION {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                }
                .into());
            }
        }
        None => init_identity(client)?,
    }
    if let Some(slot) = slot {
        logical::prepare(client, slot)?;
    }
    let mut infos = introspect_all(client, tables)?;
    for i in tracking_order(client, &infos)? {
        let info = &mut infos[i];
        let existing = client.query_opt(
            "SELECT id, tracked FROM concord.tables WHERE schema_name = $1 AND name = $2",
            &[&info.schema, &info.relname],
        )?;
        let backfill = match existing {
            Some(row) => {
                info.id = row.get(0);
                let tracked: bool = row.get(1);
                client.execute(
                    "UPDATE concord.tables SET tracked = true WHERE id = $1",
                    &[&info.id],
                )?;
                !tracked
            }
            None => {
                info.id = client
                    .query_one(
                        "INSERT INTO concord.tables(schema_name, name) VALUES ($1, $2) RETURNING id",
                        &[&info.schema, &info.relname],
                    )?
                    .get(0);
                true
            }
        };
        match slot {
            Some(_) => {
                client.execute("DELETE FROM concord.columns WHERE tbl = $1", &[&info.id])?;
                install_columns(client, info, 0)?;
                client.batch_execute(&info.drop_trigger_sql())?;
                logical::install_table(client, info, backfill)?;
            }
            None => install_table(client, info)?,
        }
        if backfill {
            client.batch_execute(&info.backfill_sql())?;
        }
    }
    Ok(())
}

/// Indexes into `infos`, parents first, warning about referenced tables left untracked.
fn tracking_order(client: &mut Client, infos: &[TableInfo]) -> Result<Vec<usize>, TrackError> {
    let oids: Vec<u32> = infos.iter().map(|t| t.oid).collect();
    let index = |oid: u32| infos.iter().position(|t| t.oid == oid);
    let mut references = Vec::new();
    for (child, parent, schema, name) in schema::foreign_keys(client, &oids)? {
        let Some(c) = index(child) else { continue };
        match index(parent) {
            Some(p) => references.push((c, p)),
            None => {
                let tracked = client
                    .query_opt(
                        "SELECT tracked FROM concord.tables WHERE schema_name = $1 AND name = $2",
                        &[&schema, &name],
                    )?
                    .is_some_and(|r| r.get::<_, bool>(0));
                if !tracked {
                    tracking::warn_untracked_parent(&infos[c].name, &format!("{schema}.{name}"));
                }
            }
        }
    }
    Ok(tracking::parents_first(infos.len(), &references))
}

/// Reads every named table (each once), reporting the problems of all of them together
/// so a user fixes them in one go rather than one per attempt.
fn introspect_all(client: &mut Client, tables: &[&str]) -> Result<Vec<TableInfo>, TrackError> {
    let mut infos: Vec<TableInfo> = Vec::with_capacity(tables.len());
    let mut problems = Vec::new();
    for &name in tables {
        match TableInfo::introspect(client, name) {
            Ok(info) => {
                if !infos.iter().any(|t| t.oid == info.oid) {
                    infos.push(info);
                }
            }
            Err(e) if e.is_about_a_table() => problems.push(e),
            Err(e) => return Err(e),
        }
    }
    match TrackError::from_problems(problems) {
        Some(e) => Err(e),
        None => Ok(infos),
    }
}

/// Whether PostgreSQL failed the transaction to break a deadlock (SQLSTATE 40P01).
fn deadlocked(e: &TrackError) -> bool {
    let TrackError::Store(StoreError::Database(db)) = e else {
        return false;
    };
    db.driver
        .downcast_ref::<postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|code| *code == postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
}

/// Records a table's columns and (re)creates its trigger.
fn install_table(client: &mut Client, info: &TableInfo) -> Result<(), postgres::Error> {
    client.execute("DELETE FROM concord.columns WHERE tbl = $1", &[&info.id])?;
    install_columns(client, info, 0)?;
    client.batch_execute(&info.trigger_sql())
}

/// Runs `f` holding Concord's lock: in the caller's transaction (`in_txn`), or in one
/// of its own.
fn locked(
    client: &mut Client,
    in_txn: bool,
    f: impl FnOnce(&mut Client) -> Result<(), postgres::Error>,
) -> Result<(), StoreError> {
    if in_txn {
        return Ok(f(client)?);
    }
    in_transaction(client, |client| -> Result<(), StoreError> {
        client.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
        Ok(f(client)?)
    })
}

/// Records the columns of `info` from position `from` on.
fn install_columns(
    client: &mut Client,
    info: &TableInfo,
    from: usize,
) -> Result<(), postgres::Error> {
    for (position, col) in info.columns.iter().enumerate().skip(from) {
        let key_position = info
            .key_columns
            .iter()
            .position(|&k| k == position)
            .map(|k| k as i32);
        client.execute(
            "INSERT INTO concord.columns(tbl, position, name, type_name, key_position) VALUES ($1, $2, $3, $4, $5)",
            &[&info.id, &(position as i32), &col.name, &col.type_name, &key_position],
        )?;
    }
    Ok(())
}

impl Store for PgStore {
    fn system(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        concord_store::redact_url(&self.url)
    }

    fn node_id(&self) -> NodeId {
        PgStore::node_id(self)
    }

    fn version_vector(&self) -> &VersionVector {
        PgStore::version_vector(self)
    }

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    fn capture(&mut self) -> Result<u64, StoreError> {
        PgStore::capture(self)
    }

    fn begin_apply_in(&mut self, mode: WriteMode) -> Result<Box<dyn ApplyTxn + '_>, ApplyError> {
        Ok(Box::new(PgStore::begin_apply_in(self, mode)?))
    }

    fn apply_changes(
        &mut self,
        changes: &mut dyn Iterator<Item = Result<Change, StoreError>>,
    ) -> Result<ApplyReport, ApplyError> {
        self.ensure_fresh()?;
        let batch = self.options.apply_batch_changes;
        concord_store::engine::apply_stream(self, batch, changes)
    }

    fn driver(&mut self) -> Box<dyn SqlDriver + '_> {
        Box::new(self.sql())
    }

    fn log_reader(&self) -> Result<Box<dyn LogRead>, StoreError> {
        Ok(Box::new(crate::log::open_log(&self.url)?))
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotRead>, StoreError> {
        Ok(Box::new(crate::log::open_snapshot(&self.url, self.node)?))
    }

    fn capture_ready(&mut self) -> Result<u64, StoreError> {
        let streaming = self.stream.as_ref().is_some_and(|s| s.error().is_none());
        self.skip_barrier = streaming;
        // The reader stages whole transactions in commit order: a step may stop inside
        // one (see `crate::capture`), and the loop calls again while rows are left.
        self.fold_step = streaming.then_some(crate::capture::STEP_ROWS);
        let result = self.capture();
        self.skip_barrier = false;
        self.fold_step = None;
        result
    }

    fn writes_may_be_pending(&mut self) -> Result<bool, StoreError> {
        if self.stale || self.client.is_closed() {
            return Ok(true);
        }
        if let Some(stream) = &self.stream
            && stream.error().is_none()
        {
            return Ok(stream.staged_transactions() != self.staged_seen);
        }
        // The WAL position alone is not enough: a transaction's commit record is in the
        // WAL a moment (its fsync) before the transaction is visible, so a capture can
        // start after the record, see nothing, and nothing moves the WAL afterwards
        // (seen as 8-20 s stalls with triggers). A pending row that became visible since
        // is asked for directly.
        let stmt = self.statement(
            "SELECT pg_current_wal_insert_lsn()::text, EXISTS (SELECT 1 FROM concord.pending)",
        )?;
        let row = self.client.query_one(&stmt, &[])?;
        let (now, pending): (String, bool) = (row.get(0), row.get(1));
        Ok(pending || self.wal_seen.as_deref() != Some(now.as_str()))
    }

    fn answers_pending_cheaply(&self) -> bool {
        true
    }

    fn capture_state(&mut self) -> CaptureState {
        match self.logical.clone() {
            Some(logical) => {
                let lag = self.slot_lag_bytes(&logical);
                CaptureState {
                    method: "write-ahead log".into(),
                    note: match &lag {
                        Ok(Some(_)) => None,
                        Ok(None) => Some(format!("replication slot {} is missing; restart the node to create it again", logical.slot)),
                        Err(e) => Some(format!("reading the slot's position: {e}")),
                    },
                    lag_bytes: lag.ok().flatten(),
                }
            }
            None => CaptureState {
                method: "triggers".into(),
                note: match logical::unavailable(&mut self.client) {
                    _ if self.options.capture == CaptureMethod::Triggers => {
                        Some("as configured (capture = \"triggers\")".into())
                    }
                    Ok(Some(why)) => Some(why),
                    Ok(None) => Some("the server allows capture from the write-ahead log, which costs the application less: untrack and track the tables again to switch".into()),
                    Err(_) => None,
                },
                lag_bytes: None,
            },
        }
    }

    fn take_schema_changed(&mut self) -> bool {
        std::mem::take(&mut self.schema_changed)
    }

    fn table_columns(&self, table: &str) -> Option<Vec<String>> {
        let info = self.table_named(table)?;
        Some(info.columns.iter().map(|c| c.name.clone()).collect())
    }

    fn add_column(
        &mut self,
        table: &str,
        column: &str,
        kind: Option<Kind>,
    ) -> Result<(), StoreError> {
        PgStore::add_column(self, table, column, kind)
    }

    fn table_problems(&self) -> Vec<String> {
        self.problems.clone()
    }

    fn retry_set_aside(&mut self) -> Result<ApplyReport, ApplyError> {
        self.ensure_fresh()?;
        concord_store::engine::retry_set_aside(self)
    }

    fn discard_set_aside(&mut self, which: Option<(NodeId, u64)>) -> Result<u64, ApplyError> {
        self.ensure_fresh()?;
        concord_store::engine::discard_set_aside(self, which)
    }
}

impl concord_store::ColumnDdl for PgStore {
    fn refresh(&mut self) -> Result<(), StoreError> {
        self.ensure_fresh()
    }

    fn table_for_ddl(&self, table: &str, column: &str) -> Option<(String, bool)> {
        let info = self.table_named(table)?;
        Some((info.qualified(), info.position_of.contains_key(column)))
    }

    fn quote_ident(&self, name: &str) -> String {
        quote(name)
    }

    fn type_for(&self, kind: Option<Kind>) -> &'static str {
        column_type(kind)
    }

    fn execute_ddl(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client.batch_execute(sql)?)
    }
}
