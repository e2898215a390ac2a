//! The store handle: connecting, tracking, untracking, and the state kept in memory.
//!
//! Every transaction that writes Concord's metadata (capture, apply, track, untrack)
//! first takes a named lock (`GET_LOCK('concord:<database>')`), so Concord's own writers
//! are serialized per database even across processes and log positions are allocated
//! in commit order. After taking it, the store re-reads sequence numbers and clock, so
//! two handles on one database never issue the same sequence number.
//!
//! Every Concord connection sets a strict `sql_mode` (MariaDB otherwise truncates
//! silently), `time_zone = '+00:00'` (so `TIMESTAMP` values are read and written in
//! UTC) and `utf8mb4`.

use std::collections::HashMap;
use std::sync::Arc;

use concord_core::mapping::Kind;
use concord_core::merge::RowClock;
use concord_core::{Change, Hlc, HlcClock, NodeId, PrimaryKey, VersionVector};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts};

use crate::schema::{
    self, FORMAT_VERSION, METADATA_DDL, METADATA_TABLES, SQL_MODE, TableInfo, quote,
};
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

/// Seconds to wait for Concord's lock on a database.
const LOCK_WAIT_S: i64 = 60;

/// The type of a column added for values of `kind` (`None`: only NULLs were seen):
/// the widest type each kind is written to exactly (`docs/type-mapping.md`). A UUID is
/// kept as its hyphenated text (`CHAR(36)`), as this store keeps UUIDs; a decimal in
/// `DECIMAL(65,30)`, the widest MariaDB has (one with more digits is refused, visibly).
pub(crate) fn column_type(kind: Option<Kind>) -> &'static str {
    match kind {
        Some(Kind::Integer) => "BIGINT",
        Some(Kind::Real) => "DOUBLE",
        Some(Kind::Blob) => "LONGBLOB",
        Some(Kind::Decimal) => "DECIMAL(65,30)",
        Some(Kind::Bool) => "BOOLEAN",
        Some(Kind::Json) => "JSON",
        Some(Kind::Timestamp) => "DATETIME(6)",
        Some(Kind::Date) => "DATE",
        Some(Kind::Uuid) => "CHAR(36)",
        Some(Kind::Text) | None => "LONGTEXT",
    }
}

/// A MySQL/MariaDB database tracked by Concord.
pub struct MyStore {
    pub(crate) conn: Conn,
    pub(crate) url: String,
    pub(crate) node: NodeId,
    pub(crate) local_index: i32,
    pub(crate) options: StoreOptions,
    pub(crate) clock: HlcClock,
    pub(crate) tables: Vec<Arc<TableInfo>>,
    pub(crate) origins: Origins,
    /// Set when a transaction rolled back: in-memory state must be reloaded.
    pub(crate) stale: bool,
    lenient: bool,
    /// Why tracked tables are not synced (changed shape, gone); see `load_tables`.
    problems: Vec<String>,
    /// Set when tracked columns were added; taken by [`Store::take_schema_changed`].
    schema_changed: bool,
    /// The catalog summary the tables were last read at (`columns_signature`).
    columns_signature: Vec<i64>,
    /// The server's `max_allowed_packet`: a value larger than it cannot be written
    /// (the server would drop the connection), so it is refused before sending.
    pub(crate) max_packet: usize,
    /// Row clocks and log entries of the open apply transaction not written yet.
    pub(crate) apply_meta: MetaBatch,
    /// User-table writes held back to be written set-based ([`crate::batch`]).
    pub(crate) pending_rows: PendingRows<TableInfo, mysql::Value>,
    /// Whether local writes are read from the binary log ([`crate::binlog`]) rather
    /// than recorded by triggers; decided when the database is first tracked.
    pub(crate) binlog: bool,
    /// The binary-log reader, started at the first capture or apply.
    pub(crate) reader: Option<crate::stream::BinlogReader>,
    /// The reader's count of staged transactions at the last capture.
    pub(crate) staged_seen: u64,
    /// Set while a capture folds only what the reader has staged (no barrier).
    pub(crate) skip_barrier: bool,
    /// What the open apply transaction checks before it commits (binary-log capture).
    pub(crate) apply_guard: Option<crate::capture::ApplyGuard>,
    /// A second connection, for reading what other transactions committed while the
    /// store's own is open.
    pub(crate) side: Option<Conn>,
}

/// Connects and fixes the session settings values depend on.
pub(crate) fn connect(url: &str) -> Result<Conn, StoreError> {
    let opts = Opts::from_url(url).map_err(|e| StoreError::from(mysql::Error::UrlError(e)))?;
    let mut conn = Conn::new(opts)?;
    conn.query_drop(format!(
        "SET NAMES utf8mb4, time_zone = '+00:00', sql_mode = '{SQL_MODE}'"
    ))?;
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
    Ok(conn)
}

/// Takes Concord's lock on the connection's database.
pub(crate) fn lock(conn: &mut Conn) -> Result<(), StoreError> {
    let got: Option<Option<i64>> = conn.exec_first(
        "SELECT GET_LOCK(CONCAT('concord:', DATABASE()), ?)",
        (LOCK_WAIT_S,),
    )?;
    match got.flatten() {
        Some(1) => Ok(()),
        _ => Err(StoreError::Locked),
    }
}

/// Reads every named table (each once), reporting the problems of all of them together
/// so a user fixes them in one go rather than one per attempt.
fn introspect_all(conn: &mut Conn, tables: &[&str]) -> Result<Vec<TableInfo>, TrackError> {
    let mut infos: Vec<TableInfo> = Vec::with_capacity(tables.len());
    let mut problems = Vec::new();
    for &name in tables {
        if infos.iter().any(|t| t.name == name) {
            continue;
        }
        match TableInfo::introspect(conn, name) {
            Ok(info) => {
                if info.columns.iter().any(|c| c.name.contains('\0')) {
                    problems.push(TrackError::BadName(
                        name.to_owned(),
                        "a column name holds NUL".into(),
                    ));
                }
                infos.push(info);
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

pub(crate) fn unlock(conn: &mut Conn) {
    let _ = conn.query_drop("DO RELEASE_LOCK(CONCAT('concord:', DATABASE()))");
}

fn in_transaction<T, E: From<StoreError> + From<mysql::Error>>(
    conn: &mut Conn,
    body: impl FnOnce(&mut Conn) -> Result<T, E>,
) -> Result<T, E> {
    lock(conn)?;
    let result = conn
        .query_drop("START TRANSACTION")
        .map_err(E::from)
        .and_then(|()| body(conn));
    let result = match result {
        Ok(v) => conn.query_drop("COMMIT").map(|()| v).map_err(E::from),
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK");
            Err(e)
        }
    };
    unlock(conn);
    result
}

impl MyStore {
    /// Opens a tracked database with default options.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, StoreOptions::default())
    }

    /// Opens a tracked database.
    pub fn open_with(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_inner(url, options, false)
    }

    fn open_inner(url: &str, options: StoreOptions, lenient: bool) -> Result<Self, StoreError> {
        let mut conn = connect(url)?;
        let tracked: Option<i64> = conn.query_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'concord_meta'",
        )?;
        if tracked.is_none() {
            return Err(StoreError::NotTracked(redact(url)));
        }
        let mut store = MyStore {
            conn,
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
            max_packet: usize::MAX,
            apply_meta: MetaBatch::default(),
            pending_rows: PendingRows::default(),
            binlog: false,
            reader: None,
            staged_seen: 0,
            skip_barrier: false,
            apply_guard: None,
            side: None,
        };
        store.migrate()?;
        let capture: Option<String> = store
            .conn
            .query_first("SELECT v FROM concord_meta WHERE k = 'capture'")?;
        store.binlog = capture.as_deref() == Some("binlog");
        store.reload()?;
        Ok(store)
    }

    /// Installs capture on `tables` (creating Concord's metadata on first use) and
    /// returns the opened store. Capture reads the binary log when the server allows
    /// it and `options.capture` does not ask for triggers (decided once per database,
    /// see `choose_capture`); else triggers are installed. Existing rows are queued as inserts so replicas receive
    /// them. MySQL commits DDL implicitly, so tracking is not one transaction: it is
    /// idempotent instead, and tracking again after a failure completes it.
    ///
    /// Tables are tracked parents first: a table referenced by a foreign key of another
    /// table being tracked is backfilled before it, whatever order `tables` names them
    /// in, so a replica enforcing the key receives every referenced row first (see
    /// `schema::parents_first` for cycles). Tables already tracked are not
    /// backfilled again.
    pub fn track(url: &str, tables: &[&str], options: StoreOptions) -> Result<Self, TrackError> {
        let mut conn = connect(url)?;
        // MySQL cannot roll DDL back: read the tables before creating anything, so a
        // bad table leaves the database as it was.
        let mut infos = introspect_all(&mut conn, tables)?;
        for ddl in METADATA_DDL {
            conn.query_drop(*ddl)?;
        }
        let format: Option<String> =
            conn.query_first("SELECT v FROM concord_meta WHERE k = 'format'")?;
        match format {
            Some(found) => {
                let found = found.parse::<i64>().map_err(|e| StoreError::Corrupt {
                    table: "concord_meta",
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
            None => in_transaction(&mut conn, |c| -> Result<(), TrackError> {
                Ok(init_identity(c)?)
            })?,
        }
        let binlog = choose_capture(&mut conn, &options)?;
        let order = tracking_order(&mut conn, &infos)?;
        let mut backfill = Vec::with_capacity(order.len());
        for &i in &order {
            backfill.push(install_triggers(&mut conn, &mut infos[i], binlog)?);
        }
        // With the binary log, each backfill waits for a reader to stage every
        // transaction before its start position: those of tables tracked already are
        // then ordered before the backfill, as they committed (a parent row before the
        // backfilled child referencing it).
        let reader = if binlog && backfill.iter().any(|b| *b) {
            Some(
                crate::stream::BinlogReader::start(url).map_err(|e| StoreError::Capture {
                    table: "(binary log)".into(),
                    key: "-".into(),
                    detail: e.to_string(),
                })?,
            )
        } else {
            None
        };
        for (&i, backfill) in order.iter().zip(backfill) {
            record_and_backfill(&mut conn, &infos[i], backfill, reader.as_ref())?;
        }
        drop(reader);
        drop(conn);
        Ok(Self::open_with(url, options)?)
    }

    /// Checks, without changing anything, that `tables` of the database at `url` can be
    /// tracked: the server accepts the connection and each table exists, is a base
    /// table, has a primary key and only columns of types Concord can replicate. Every
    /// problem is reported at once (as [`TrackError::Problems`] when there are
    /// several). It reads `information_schema` with the same code as
    /// [`MyStore::track`], and only reads, so the two never disagree and the check
    /// cannot modify the database.
    pub fn check(url: &str, tables: &[&str]) -> Result<(), TrackError> {
        let mut conn = connect(url)?;
        introspect_all(&mut conn, tables).map(drop)
    }

    /// Removes capture from `tables`, or every trace of Concord (every `concord_*`
    /// table and trigger) if `tables` is empty or no tracked table remains.
    pub fn untrack(url: &str, tables: &[&str]) -> Result<(), TrackError> {
        let store = Self::open_inner(url, StoreOptions::default(), true)?;
        let known = store.tables.clone();
        let mut conn = store.conn;
        for &name in tables {
            let info = known
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| TrackError::NotTracked(name.to_owned()))?;
            for sql in info.drop_trigger_sql() {
                conn.query_drop(sql)?;
            }
            in_transaction(&mut conn, |c| -> Result<(), TrackError> {
                c.exec_drop("DELETE FROM concord_rows WHERE tbl = ?", (info.id,))?;
                c.exec_drop("DELETE FROM concord_pending WHERE tbl = ?", (info.id,))?;
                c.exec_drop(
                    "DELETE FROM concord_meta WHERE k = ?",
                    (format!("binlog_start.{}", info.id),),
                )?;
                c.exec_drop(
                    "UPDATE concord_tables SET tracked = 0 WHERE id = ?",
                    (info.id,),
                )?;
                Ok(())
            })?;
        }
        let remaining: Option<i64> =
            conn.query_first("SELECT count(*) FROM concord_tables WHERE tracked")?;
        if tables.is_empty() || remaining.unwrap_or(0) == 0 {
            // Every trigger with Concord's prefix, also of tables renamed or untracked.
            let triggers: Vec<String> = conn.query(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS
                 WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'concord\\_%'",
            )?;
            for t in triggers {
                conn.query_drop(format!("DROP TRIGGER IF EXISTS {}", quote(&t)))?;
            }
            for t in METADATA_TABLES {
                conn.query_drop(format!("DROP TABLE IF EXISTS {t}"))?;
            }
        }
        Ok(())
    }
    /// Reloads identity, tables, origins and clock from the database.
    /// Upgrades the metadata of a database an older Concord tracked. MySQL commits DDL
    /// implicitly, so each step is idempotent instead of transactional, and the format
    /// is raised last: an upgrade cut short is completed at the next open.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let format: Option<String> = self
            .conn
            .query_first("SELECT v FROM concord_meta WHERE k = 'format'")?;
        if format.as_deref() != Some("1") {
            return Ok(());
        }
        lock(&mut self.conn)?;
        let result = (|| -> Result<(), mysql::Error> {
            let has_body: Option<i64> = self.conn.query_first(
                "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
                 AND TABLE_NAME = 'concord_failures' AND COLUMN_NAME = 'body'",
            )?;
            if has_body.is_none() {
                self.conn
                    .query_drop("ALTER TABLE concord_failures ADD COLUMN body LONGBLOB NULL")?;
            }
            // Version 1 kept a set-aside change only in the log (verbatim, table 0).
            self.conn.query_drop(
                "UPDATE concord_failures f SET body = (
                     SELECT l.body FROM concord_log l JOIN concord_origins o ON o.id = l.origin
                     WHERE l.tbl = 0 AND lower(hex(o.node_id)) = f.origin AND l.seq = f.seq)
                 WHERE f.body IS NULL",
            )?;
            self.conn
                .query_drop("UPDATE concord_meta SET v = '2' WHERE k = 'format' AND v = '1'")
        })();
        unlock(&mut self.conn);
        Ok(result?)
    }

    pub(crate) fn reload(&mut self) -> Result<(), StoreError> {
        let meta: HashMap<String, String> = self
            .conn
            .query::<(String, String), _>("SELECT k, v FROM concord_meta")?
            .into_iter()
            .collect();
        self.node = concord_store::node_id_from_meta(&meta, "concord_meta", FORMAT_VERSION)?;
        self.load_progress()?;
        self.local_index =
            self.origins
                .index(self.node)
                .map(|i| i as i32)
                .ok_or(StoreError::Corrupt {
                    table: "concord_origins",
                    detail: "the local node has no origin row".into(),
                })?;
        let max_packet: Option<u64> = self.conn.query_first("SELECT @@max_allowed_packet")?;
        self.max_packet =
            max_packet.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let tables = self.load_tables()?;
        self.tables = tables;
        self.stale = false;
        Ok(())
    }

    /// Reads the tracked tables and follows what changed in their columns since they
    /// were recorded ([`concord_store::compare_columns`]): columns added after the last
    /// one are recorded and captured from now on (the triggers are rebuilt, and values
    /// written to them before are queued from the rows); a table changed in any other
    /// way, or gone, is left out with a problem saying so ([`Store::table_problems`]),
    /// its triggers dropped so they cannot fail the application's writes, and every
    /// other table keeps syncing. Runs outside any transaction: MySQL commits DDL
    /// implicitly. (When opened only to untrack, every table that can be read is kept.)
    fn load_tables(&mut self) -> Result<Vec<Arc<TableInfo>>, StoreError> {
        let mut tables = Vec::new();
        self.problems.clear();
        let rows: Vec<(i32, String)> = self
            .conn
            .query("SELECT id, name FROM concord_tables WHERE tracked ORDER BY id")?;
        for (id, name) in rows {
            let mut info = match TableInfo::introspect(&mut self.conn, &name) {
                Ok(info) => info,
                Err(TrackError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::warn!(table = %name, error = %e, "tracked table cannot be read; it is skipped until fixed");
                    self.problems.push(format!("tracked table {name} cannot be read ({e}); it is not synced until it is back or untracked"));
                    continue;
                }
            };
            info.id = id;
            let recorded: Vec<ColumnSignature> = self.conn.exec(
                "SELECT name, type_name FROM concord_columns WHERE tbl = ? ORDER BY position",
                (id,),
            )?;
            let current: Vec<ColumnSignature> = info
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.type_name.clone()))
                .collect();
            match compare_columns(&recorded, &current) {
                ColumnChange::Same => {}
                ColumnChange::Appended(added) => {
                    self.follow_added_columns(&info, recorded.len())?;
                    let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
                    tracing::info!(table = %info.name, added = ?names, "columns added; capturing them from now on");
                    self.schema_changed = true;
                }
                ColumnChange::Incompatible(why) if !self.lenient => {
                    lock(&mut self.conn)?;
                    let dropped = info
                        .drop_trigger_sql()
                        .into_iter()
                        .try_for_each(|sql| self.conn.query_drop(sql));
                    unlock(&mut self.conn);
                    dropped?;
                    tracing::warn!(table = %info.name, %why, "tracked table changed shape; capture of it stopped");
                    self.problems.push(format!(
                        "table {} changed in a way Concord cannot follow ({why}); it is not captured or applied until you untrack and track it again",
                        info.name
                    ));
                    continue;
                }
                ColumnChange::Incompatible(_) => {}
            }
            tables.push(Arc::new(info));
        }
        self.columns_signature = self.columns_signature()?;
        Ok(tables)
    }

    /// Rebuilds the triggers of `info` for its columns from position `from` on, records
    /// those columns, and queues what was written to them before the triggers knew
    /// them, under Concord's lock.
    fn follow_added_columns(&mut self, info: &TableInfo, from: usize) -> Result<(), StoreError> {
        lock(&mut self.conn)?;
        let binlog = self.binlog;
        let result = (|| -> Result<(), StoreError> {
            if !binlog {
                for sql in info.trigger_sql() {
                    self.conn.query_drop(sql)?;
                }
            }
            in_transaction(&mut self.conn, |c| -> Result<(), StoreError> {
                for (position, col) in info.columns.iter().enumerate().skip(from) {
                    c.exec_drop(
                        "INSERT INTO concord_columns(tbl, position, name, type_name, key_position) VALUES (?, ?, ?, ?, NULL)",
                        (info.id, position as i32, &col.name, &col.type_name),
                    )?;
                }
                c.query_drop(info.backfill_columns_sql(from))?;
                Ok(())
            })
        })();
        unlock(&mut self.conn);
        result
    }

    /// A summary of the tracked tables' columns in the catalog: it changes when a
    /// column is added, dropped, renamed or retyped, or a table dropped.
    fn columns_signature(&mut self) -> Result<Vec<i64>, StoreError> {
        let row: Option<(i64, i64, i64, i64)> = self.conn.query_first(
            "SELECT COUNT(*), COALESCE(SUM(c.ORDINAL_POSITION), 0),
                    COALESCE(SUM(CRC32(CONCAT(c.TABLE_NAME, '.', c.COLUMN_NAME, ':', c.COLUMN_TYPE))), 0),
                    (SELECT COUNT(*) FROM concord_tables WHERE tracked)
             FROM information_schema.COLUMNS c
             WHERE c.TABLE_SCHEMA = DATABASE()
               AND c.TABLE_NAME IN (SELECT name FROM concord_tables WHERE tracked)",
        )?;
        let (a, b, c, d) = row.unwrap_or_default();
        Ok(vec![a, b, c, d])
    }

    /// Follows schema changes of tracked tables since the last look (outside any
    /// transaction).
    fn follow_schema(&mut self) -> Result<(), StoreError> {
        if self.columns_signature()? != self.columns_signature {
            self.tables = self.load_tables()?;
        }
        Ok(())
    }

    /// Re-reads origins, sequence numbers and the clock. Called under Concord's lock
    /// before every metadata write.
    pub(crate) fn load_progress(&mut self) -> Result<(), StoreError> {
        let hlc: Option<String> = self
            .conn
            .query_first("SELECT v FROM concord_meta WHERE k = 'hlc'")?;
        let hlc: u64 = hlc
            .unwrap_or_default()
            .parse()
            .map_err(|e| StoreError::Corrupt {
                table: "concord_meta",
                detail: format!("hlc: {e}"),
            })?;
        let drift = self.clock.max_drift_ms();
        self.clock = HlcClock::new(Hlc::from_u64(hlc), drift);
        let mut origins = Origins::default();
        let rows: Vec<(i32, Vec<u8>, i64)> = self
            .conn
            .query("SELECT id, node_id, seq FROM concord_origins")?;
        for (id, bytes, seq) in rows {
            let node = NodeId::try_from(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                table: "concord_origins",
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
        // A connection the server closed (a restart, a KILL, `wait_timeout`) is
        // replaced. Nothing is lost: whatever was in flight was rolled back with it, and
        // the state kept in memory is reloaded from the database, where it was
        // committed together with the data.
        if self.conn.ping().is_err() {
            tracing::warn!(store = %concord_store::redact_url(&self.url), "the connection to MySQL was lost; reconnecting");
            self.conn = connect(&self.url)?;
            self.stale = true;
        }
        if self.stale {
            self.reload()?;
        }
        self.follow_schema()
    }

    /// Takes Concord's lock and opens a transaction, with fresh progress.
    pub(crate) fn begin_locked(&mut self) -> Result<(), StoreError> {
        self.begin_locked_inner(false)
    }

    /// Like [`MyStore::begin_locked`], for applying: first waits for application
    /// transactions still writing tracked tables, with a locking read of every pending
    /// row, and marks the session as Concord's own so the triggers stay silent. The
    /// locking read must come before any plain read: InnoDB takes a transaction's
    /// snapshot at its first plain read, and a snapshot taken before the wait would miss
    /// what those transactions committed, so their writes would be neither captured nor
    /// known to the merge (found by the mixed-store fault test).
    pub(crate) fn begin_locked_for_apply(&mut self) -> Result<(), StoreError> {
        self.begin_locked_inner(true)
    }

    fn begin_locked_inner(&mut self, for_apply: bool) -> Result<(), StoreError> {
        lock(&mut self.conn)?;
        if self.binlog
            && !self.skip_barrier
            && let Err(e) = self.stage_local_writes()
        {
            unlock(&mut self.conn);
            return Err(e);
        }
        let binlog = self.binlog;
        let r = self
            .conn
            .query_drop("START TRANSACTION")
            .and_then(|()| {
                if for_apply {
                    self.conn.query_drop("SET @concord_applying = 1")?;
                    if binlog {
                        // The binary-log reader skips every transaction holding this
                        // row: Concord's own writes are not captured again. Written
                        // first, before any consistent read (none has been made: the
                        // barrier above ran outside the transaction).
                        self.conn.query_drop(format!(
                            "INSERT INTO {} (id, n) VALUES (1, 1) ON DUPLICATE KEY UPDATE n = n + 1",
                            crate::binlog::MARKER_TABLE
                        ))?;
                    } else {
                        self.conn
                            .query_drop("SELECT id FROM concord_pending FOR UPDATE")?;
                    }
                }
                Ok(())
            })
            .map_err(StoreError::from)
            .and_then(|()| self.load_progress());
        let r = r.and_then(|()| {
            if for_apply && binlog {
                let floor: Option<i64> = self
                    .conn
                    .query_first("SELECT COALESCE(MAX(id), 0) FROM concord_pending")?;
                self.apply_guard = Some(crate::capture::ApplyGuard {
                    pending_floor: floor.unwrap_or(0),
                    log_floor: i64::MAX,
                });
            }
            Ok(())
        });
        if let Err(e) = r {
            self.rollback();
            self.stale = true;
            return Err(e);
        }
        Ok(())
    }

    /// Commits and releases Concord's lock. An apply on binary-log capture first
    /// checks that no local write to a row it wrote committed while it ran
    /// ([`MyStore::check_no_local_write_raced`]); if one did, it rolls back instead.
    pub(crate) fn commit(&mut self) -> Result<(), CommitFailed> {
        if let Some(guard) = self.apply_guard.take()
            && let Err(e) = self.check_no_local_write_raced(&guard)
        {
            self.rollback();
            return Err(CommitFailed(e));
        }
        let r = self.conn.query_drop("COMMIT");
        if r.is_err() {
            let _ = self.conn.query_drop("ROLLBACK");
        }
        let _ = self.conn.query_drop("SET @concord_applying = NULL");
        unlock(&mut self.conn);
        r.map_err(|e| CommitFailed(e.into()))
    }

    /// Rolls back and releases Concord's lock.
    pub(crate) fn rollback(&mut self) {
        self.apply_guard = None;
        let _ = self.conn.query_drop("ROLLBACK");
        let _ = self.conn.query_drop("SET @concord_applying = NULL");
        unlock(&mut self.conn);
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

    /// The underlying connection, for reading user tables. Writes made through it
    /// outside an apply session are captured like any client's.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Number of entries in the change log.
    pub fn log_len(&mut self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut self.sql(), "log")
    }

    /// Number of captured writes not yet folded into the change log.
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

    /// The local index of `node`, registering it if new.
    pub(crate) fn origin_index(&mut self, node: NodeId) -> Result<i32, mysql::Error> {
        if node == self.node {
            return Ok(self.local_index);
        }
        if let Some(i) = self.origins.index(node) {
            return Ok(i as i32);
        }
        self.conn.exec_drop(
            "INSERT INTO concord_origins(node_id, seq) VALUES (?, 0)",
            (node.as_bytes().to_vec(),),
        )?;
        let i = self.conn.last_insert_id() as i32;
        self.origins.insert(i as u32, node, 0);
        Ok(i)
    }

    /// Loads a row's clock; a row never seen has the default clock.
    pub(crate) fn load_clock(
        &mut self,
        table: i32,
        key: &PrimaryKey,
    ) -> Result<RowClock, LoadClockError> {
        let row: Option<(i64, Vec<u8>)> = self.conn.exec_first(
            "SELECT cl, clock FROM concord_rows WHERE tbl = ? AND pk = ?",
            (table, key.as_bytes()),
        )?;
        let Some((cl, blob)) = row else {
            return Ok(RowClock::default());
        };
        self.origins
            .decode_clock(cl, &blob)
            .map_err(LoadClockError::Corrupt)
    }

    /// Writes a row clock.
    pub(crate) fn save_clock(
        &mut self,
        table: i32,
        key: &PrimaryKey,
        clock: &RowClock,
    ) -> Result<(), mysql::Error> {
        let blob =
            concord_store::encode_clock(clock, |node| self.origin_index(node).map(|i| i as u32))?;
        self.conn.exec_drop(
            "INSERT INTO concord_rows(tbl, pk, cl, clock) VALUES (?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE cl = VALUES(cl), clock = VALUES(clock)",
            (table, key.as_bytes(), clock.causal_length.0 as i64, blob),
        )
    }

    /// Persists the clock and the held sequence of `origin` (inside the caller's
    /// transaction).
    pub(crate) fn save_progress(
        &mut self,
        origin_index: i32,
        seq: u64,
    ) -> Result<(), mysql::Error> {
        self.conn.exec_drop(
            "UPDATE concord_origins SET seq = ? WHERE id = ?",
            (seq as i64, origin_index),
        )?;
        self.conn.exec_drop(
            "UPDATE concord_meta SET v = ? WHERE k = 'hlc'",
            (self.clock.last().as_u64().to_string(),),
        )
    }
}

/// A commit that did not happen (rolled back instead).
#[derive(Debug)]
pub(crate) struct CommitFailed(pub(crate) StoreError);

impl From<CommitFailed> for StoreError {
    fn from(e: CommitFailed) -> Self {
        e.0
    }
}

/// Loading a row clock failed.
#[derive(Debug)]
pub(crate) enum LoadClockError {
    MySql(mysql::Error),
    Corrupt(String),
}

impl From<mysql::Error> for LoadClockError {
    fn from(e: mysql::Error) -> Self {
        LoadClockError::MySql(e)
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
fn init_identity(conn: &mut Conn) -> Result<(), mysql::Error> {
    let node = NodeId::from_bytes(rand::random());
    conn.exec_drop(
        "INSERT INTO concord_meta(k, v) VALUES ('format', ?), ('node_id', ?), ('hlc', '0')",
        (schema::TRIGGER_FORMAT_VERSION.to_string(), node.to_string()),
    )?;
    conn.exec_drop(
        "INSERT INTO concord_origins(node_id, seq) VALUES (?, 0)",
        (node.as_bytes().to_vec(),),
    )
}

/// Decides how the database being tracked is captured, once: from the binary log when
/// it is new to Concord, `options` prefer it and the server allows it
/// ([`crate::binlog::unavailable`]), else with triggers; a database tracked before keeps
/// its method (an older one, without the `capture` setting, has triggers). Records the
/// choice in `concord_meta`, with the position the binary-log reader starts at, before
/// any table is backfilled. Says which, and why, in the log.
fn choose_capture(conn: &mut Conn, options: &StoreOptions) -> Result<bool, TrackError> {
    let recorded: Option<String> =
        conn.query_first("SELECT v FROM concord_meta WHERE k = 'capture'")?;
    let why_not = crate::binlog::unavailable(conn)?;
    match recorded.as_deref() {
        Some("binlog") => {
            if let Some(why) = why_not {
                tracing::warn!(reason = %why, "this database is captured from the binary log, which the server no longer allows");
            } else {
                tracing::info!("capturing from the binary log");
            }
            return Ok(true);
        }
        Some(_) => {
            match why_not {
                None if options.capture == CaptureMethod::Log => tracing::info!(
                    "capturing with triggers, as when this database was first tracked; untrack and track it again to capture from the binary log instead"
                ),
                Some(why) => tracing::info!(reason = %why, "capturing with triggers"),
                None => tracing::info!("capturing with triggers, as configured"),
            }
            return Ok(false);
        }
        None => {}
    }
    let tracked_before: Option<i64> =
        conn.query_first("SELECT 1 FROM concord_tables WHERE tracked LIMIT 1")?;
    let binlog = if tracked_before.is_some() {
        tracing::info!(
            "capturing with triggers, as when this database was first tracked; untrack and track it again to capture from the binary log instead"
        );
        false
    } else if options.capture == CaptureMethod::Triggers {
        tracing::info!("capturing with triggers, as configured");
        false
    } else if let Some(why) = why_not {
        tracing::info!(reason = %why, "capturing with triggers");
        false
    } else {
        tracing::info!("capturing from the binary log");
        true
    };
    in_transaction(conn, |c| -> Result<(), TrackError> {
        if binlog {
            let start = crate::binlog::server_position(c)?.ok_or_else(|| StoreError::Capture {
                table: "(binary log)".into(),
                key: "-".into(),
                detail: "the server reports no binary-log position".into(),
            })?;
            crate::stream::store(c, &start)?;
            // Builds without the reader must not open it (`FORMAT_VERSION`).
            c.exec_drop(
                "UPDATE concord_meta SET v = ? WHERE k = 'format'",
                (FORMAT_VERSION.to_string(),),
            )?;
        }
        c.exec_drop(
            "INSERT INTO concord_meta(k, v) VALUES ('capture', ?)",
            (if binlog { "binlog" } else { "triggers" },),
        )?;
        Ok(())
    })?;
    Ok(binlog)
}

/// How many times tracking a table is attempted when InnoDB picks its transaction as
/// a deadlock victim (a writer holding rows of the table in one order while the
/// backfill's locking read takes them in another).
const TRACK_ATTEMPTS: usize = 5;

/// Indexes into `infos`, parents first, warning about referenced tables left untracked.
fn tracking_order(conn: &mut Conn, infos: &[TableInfo]) -> Result<Vec<usize>, TrackError> {
    let index = |name: &str| infos.iter().position(|t| t.name == name);
    let mut references = Vec::new();
    for (child, parent) in schema::foreign_keys(conn)? {
        let Some(c) = index(&child) else { continue };
        match index(&parent) {
            Some(p) => references.push((c, p)),
            None => {
                let tracked: Option<bool> = conn.exec_first(
                    "SELECT tracked FROM concord_tables WHERE name = ?",
                    (&parent,),
                )?;
                if tracked != Some(true) {
                    tracking::warn_untracked_parent(&child, &parent);
                }
            }
        }
    }
    Ok(tracking::parents_first(infos.len(), &references))
}

/// Registers a table (keeping its id if it was ever tracked) and (re)creates its
/// triggers; returns whether its rows must be backfilled (it is not tracked yet).
///
/// DDL commits, and waits for every transaction that used the table to end. Every
/// table's triggers are created before any backfill: DDL then never runs while writers
/// wait on a backfill's locks.
fn install_triggers(
    conn: &mut Conn,
    info: &mut TableInfo,
    binlog: bool,
) -> Result<bool, TrackError> {
    let name = info.name.clone();
    let existing: Option<(i32, bool)> = conn.exec_first(
        "SELECT id, tracked FROM concord_tables WHERE name = ?",
        (&name,),
    )?;
    let backfill = match existing {
        Some((id, tracked)) => {
            info.id = id;
            !tracked
        }
        None => {
            conn.exec_drop(
                "INSERT INTO concord_tables(name, tracked) VALUES (?, 0)",
                (&name,),
            )?;
            info.id = conn.last_insert_id() as i32;
            true
        }
    };
    if !binlog {
        for sql in info.trigger_sql() {
            conn.query_drop(sql)?;
        }
    }
    Ok(backfill)
}

/// Records a table's columns, queues its rows unless it was already tracked
/// (`backfill`), and marks it tracked, in one transaction.
///
/// The triggers already record every write. The transaction first reads the whole
/// table with shared locks, which waits for writers still running and holds new ones
/// back until commit; then deletes the pending rows the triggers recorded meanwhile
/// (their writes committed, so the backfill reads their result); then backfills. Every
/// write is thus in exactly one of the two: committed before the locking read (the
/// backfill has it, its pending row is gone) or after the commit (the trigger recorded
/// it, and capture orders it after the backfill, by commit order).
fn record_and_backfill(
    conn: &mut Conn,
    info: &TableInfo,
    backfill: bool,
    reader: Option<&crate::stream::BinlogReader>,
) -> Result<(), TrackError> {
    let mut attempt = 1;
    loop {
        let result = in_transaction(conn, |c| -> Result<(), TrackError> {
            c.exec_drop("DELETE FROM concord_columns WHERE tbl = ?", (info.id,))?;
            for (position, col) in info.columns.iter().enumerate() {
                let key_position = info
                    .key_columns
                    .iter()
                    .position(|&k| k == position)
                    .map(|k| k as i32);
                c.exec_drop(
                    "INSERT INTO concord_columns(tbl, position, name, type_name, key_position) VALUES (?, ?, ?, ?, ?)",
                    (info.id, position as i32, &col.name, &col.type_name, key_position),
                )?;
            }
            if backfill {
                c.query_drop(info.lock_rows_sql())?;
                // Nobody writes the table now, so these rows are all committed: a
                // consistent read lists them, and deleting each by its exact key locks
                // no gap other writers' triggers would wait on.
                let stale: Vec<i64> =
                    c.exec("SELECT id FROM concord_pending WHERE tbl = ?", (info.id,))?;
                c.exec_batch(
                    "DELETE FROM concord_pending WHERE id = ? AND trx_end = 18446744073709551615",
                    stale.iter().map(|id| (*id,)),
                )?;
                c.query_drop(info.backfill_sql())?;
                if let Some(reader) = reader {
                    // Writers are held back: transactions in the binary log before
                    // this position are in the backfill, later ones are read from it.
                    let start =
                        crate::binlog::server_position(c)?.ok_or_else(|| StoreError::Capture {
                            table: info.name.clone(),
                            key: "-".into(),
                            detail: "the server reports no binary-log position".into(),
                        })?;
                    crate::capture::wait_for_reader(reader, &start)?;
                    c.exec_drop(
                        "INSERT INTO concord_meta(k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)",
                        (format!("binlog_start.{}", info.id), start.to_string()),
                    )?;
                }
            }
            c.exec_drop(
                "UPDATE concord_tables SET tracked = 1 WHERE id = ?",
                (info.id,),
            )?;
            Ok(())
        });
        match result {
            Err(e) if attempt < TRACK_ATTEMPTS && deadlocked(&e) => {
                tracing::info!(table = %info.name, attempt, "tracking was a deadlock victim; retrying");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Whether InnoDB rolled the transaction back to break a deadlock (error 1213).
fn deadlocked(e: &TrackError) -> bool {
    let TrackError::Store(StoreError::Database(db)) = e else {
        return false;
    };
    matches!(
        db.driver.downcast_ref::<mysql::Error>(),
        Some(mysql::Error::MySqlError(server)) if server.code == 1213
    )
}

impl Store for MyStore {
    fn system(&self) -> &'static str {
        "mysql"
    }

    fn location(&self) -> String {
        concord_store::redact_url(&self.url)
    }

    fn node_id(&self) -> NodeId {
        MyStore::node_id(self)
    }

    fn version_vector(&self) -> &VersionVector {
        MyStore::version_vector(self)
    }

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    fn capture(&mut self) -> Result<u64, StoreError> {
        MyStore::capture(self)
    }

    fn capture_ready(&mut self) -> Result<u64, StoreError> {
        // With the reader streaming, fold what it has staged without waiting for it.
        let streaming = self
            .reader
            .as_ref()
            .is_some_and(|r| r.error().is_none() && r.position().is_some());
        self.skip_barrier = streaming;
        let result = MyStore::capture(self);
        self.skip_barrier = false;
        result
    }

    fn writes_may_be_pending(&mut self) -> Result<bool, StoreError> {
        match &self.reader {
            Some(reader) if !self.stale && reader.error().is_none() => {
                Ok(reader.staged_transactions() != self.staged_seen)
            }
            _ => Ok(true),
        }
    }

    fn answers_pending_cheaply(&self) -> bool {
        self.binlog
    }

    fn capture_state(&mut self) -> CaptureState {
        MyStore::capture_state(self)
    }

    fn begin_apply_in(&mut self, mode: WriteMode) -> Result<Box<dyn ApplyTxn + '_>, ApplyError> {
        Ok(Box::new(MyStore::begin_apply_in(self, mode)?))
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
        MyStore::add_column(self, table, column, kind)
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

impl concord_store::ColumnDdl for MyStore {
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
        Ok(self.conn.query_drop(sql)?)
    }
}
