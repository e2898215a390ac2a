//! The store handle: opening, tracking, untracking, and the state kept in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concord_core::mapping::Kind;
use concord_core::merge::RowClock;
use concord_core::{Change, Hlc, HlcClock, NodeId, PrimaryKey, VersionVector};
use concord_store::engine::{LogEntry, WriteMode};
use concord_store::tracking;
use rusqlite::blob::ZeroBlob;
use rusqlite::{Connection, OptionalExtension, params};

use crate::driver::Sqlite;
use concord_store::bookkeeping::{self, SqlDriver};
use concord_store::{
    ApplyError, ApplyReport, ApplyTxn, ConflictRecord, FailureRecord, LogRead, Origins,
    SnapshotRead, Store, StoreError, StoreOptions, TrackError,
};

use crate::schema::{self, FORMAT_VERSION, METADATA_DDL, TableInfo, drop_triggers, quote};

/// The declared type of a column added for values of `kind`, chosen so that every value
/// of the kind is stored as it is bound (`codec::Sql`) and read back as the same value:
/// `INTEGER` for integers, booleans, timestamps (µs) and dates (days); `REAL`; `BLOB`
/// for bytes and UUIDs; `TEXT` for text, decimals and JSON (an affinity other than TEXT
/// would convert a decimal). With no kind known (only NULLs seen, or several kinds),
/// no declared type: SQLite then keeps every value exactly as bound, where `TEXT`
/// would turn a later integer into text and the copies would differ.
pub(crate) fn column_type(kind: Option<Kind>) -> &'static str {
    match kind {
        Some(Kind::Integer | Kind::Bool | Kind::Timestamp | Kind::Date) => "INTEGER",
        Some(Kind::Real) => "REAL",
        Some(Kind::Blob | Kind::Uuid) => "BLOB",
        Some(Kind::Text | Kind::Decimal | Kind::Json) => "TEXT",
        None => "",
    }
}

/// A SQLite database tracked by Concord.
pub struct SqliteStore {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) node: NodeId,
    pub(crate) local_index: u32,
    pub(crate) options: StoreOptions,
    pub(crate) clock: HlcClock,
    pub(crate) tables: Vec<Arc<TableInfo>>,
    pub(crate) origins: Origins,
    schema_version: i64,
    /// Set when a transaction rolled back: in-memory state must be reloaded.
    pub(crate) stale: bool,
    /// Set when a tracked table's columns changed; taken by
    /// [`Store::take_schema_changed`].
    schema_changed: bool,
    /// A relay keeps and forwards changes without a user database.
    pub(crate) relay: bool,
    /// This process's exclusive hold on the file, when it took one ([`SqliteStore::hold`]).
    lock: Option<crate::FileLock>,
    /// Set in an apply transaction when the database itself may have written (a user
    /// trigger fired): those writes are folded into the log before the next change is
    /// merged and before the commit (`apply.rs`).
    pub(crate) unfolded: bool,
    /// In an apply transaction: whether the marker silences every row (`MARK_ALL`)
    /// rather than naming one.
    pub(crate) marked_all: bool,
}

pub(crate) use concord_store::engine::now_ms;

/// Opens an existing database file (never creates one: a typo must not leave an empty
/// file behind).
fn connect(path: &Path) -> Result<Connection, StoreError> {
    if !path.is_file() {
        return Err(StoreError::NoSuchFile(path.display().to_string()));
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    wait_briefly_when_busy(&mut conn)?;
    conn.set_prepared_statement_cache_capacity(256);
    // A 16 MiB page cache (SQLite's default is 2 MiB) keeps a large apply or capture
    // from spilling pages to the file in the middle of its transaction.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -16384;",
    )?;
    Ok(conn)
}

/// Waits for another writer's lock: every 100 µs for the first 10 ms, then every
/// millisecond, up to [`BUSY_LIMIT`]. SQLite's default busy handler sleeps at least a
/// millisecond from the first retry, and capture usually starts while the writer that
/// woke it is still committing: that sleep was most of a change's end-to-end latency.
fn wait_briefly_when_busy(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    fn handler(attempt: i32) -> bool {
        const FAST: i32 = 100;
        let waited = if attempt < FAST {
            Duration::from_micros(100 * attempt as u64)
        } else {
            Duration::from_millis(10 + (attempt - FAST) as u64)
        };
        if waited >= BUSY_LIMIT {
            return false;
        }
        std::thread::sleep(if attempt < FAST {
            Duration::from_micros(100)
        } else {
            Duration::from_millis(1)
        });
        true
    }
    conn.busy_handler(Some(handler))
}

/// Reads every named table (each once), reporting the problems of all of them together
/// so a user fixes them in one go rather than one per attempt.
fn introspect_all(conn: &Connection, tables: &[&str]) -> Result<Vec<TableInfo>, TrackError> {
    let mut infos: Vec<TableInfo> = Vec::with_capacity(tables.len());
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &name in tables {
        if !seen.insert(name) {
            continue;
        }
        match TableInfo::introspect(conn, name) {
            Ok(info) => infos.push(info),
            Err(e) if e.is_about_a_table() => problems.push(e),
            Err(e) => return Err(e),
        }
    }
    match TrackError::from_problems(problems) {
        Some(e) => Err(e),
        None => Ok(infos),
    }
}

/// How long a store waits for another writer's lock before giving up.
pub(crate) const BUSY_LIMIT: Duration = Duration::from_secs(30);

/// Log bodies from this size on are written in place through incremental blob I/O
/// ([`SqliteStore::insert_log`]) instead of bound as a parameter.
pub(crate) const STREAMED_BODY_BYTES: usize = 1 << 20;

/// WAL lets readers (and Concord's log reader) run while others write. It is a property
/// of the file, set once tracking succeeded and kept from then on.
fn use_wal(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
}

impl SqliteStore {
    /// Opens a tracked database with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens a tracked database.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path)?;
        let tracked: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '__concord_meta'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !tracked {
            return Err(StoreError::NotTracked(path.display().to_string()));
        }
        let mut store = SqliteStore {
            conn,
            path,
            node: NodeId::from_bytes([0; 16]),
            local_index: 0,
            clock: HlcClock::new(Hlc::ZERO, options.max_clock_drift.as_millis() as u64),
            options,
            tables: Vec::new(),
            origins: Origins::default(),
            schema_version: -1,
            stale: true,
            schema_changed: false,
            relay: false,
            lock: None,
            unfolded: false,
            marked_all: false,
        };
        schema::migrate(&store.conn)?;
        store.reload()?;
        Ok(store)
    }

    /// Creates (or opens) a relay store: a SQLite file holding only Concord's metadata and
    /// change log, for a hub or relay node that has no user database. A relay logs every
    /// change it receives, whatever its table, and forwards it unchanged.
    pub fn open_relay(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, TrackError> {
        let path = path.as_ref();
        if !path.exists() {
            Connection::open(path)?;
        }
        let conn = connect(path)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| -> Result<(), TrackError> {
            conn.execute_batch(METADATA_DDL)?;
            let format: Option<i64> = conn
                .query_row(
                    "SELECT value FROM __concord_meta WHERE key = 'format'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if format.is_none() {
                init_identity(&conn)?;
                conn.execute(
                    "INSERT INTO __concord_meta(key, value) VALUES ('relay', 1)",
                    [],
                )?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        use_wal(&conn)?;
        drop(conn);
        Ok(Self::open_with(path, options)?)
    }

    /// Checks, without changing anything, that `tables` of the file at `path` can be
    /// tracked: the file exists and each table exists, is an ordinary table and has a
    /// usable primary key. Every problem is reported at once (as
    /// [`TrackError::Problems`] when there are several). It reads the schema with the
    /// same code as [`SqliteStore::track`], through a read-only connection, so the two
    /// never disagree and the check cannot modify the file.
    pub fn check(path: impl AsRef<Path>, tables: &[&str]) -> Result<(), TrackError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(StoreError::NoSuchFile(path.display().to_string()).into());
        }
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)?;
        wait_briefly_when_busy(&mut conn)?;
        introspect_all(&conn, tables).map(drop)
    }

    /// Whether this is a relay store (no user tables; changes are kept verbatim).
    pub fn is_relay(&self) -> bool {
        self.relay
    }

    /// Installs capture on `tables` (creating Concord's metadata on first use) and
    /// returns the opened store. Existing rows are queued as inserts so that replicas
    /// receive them. Tracking an already tracked table refreshes its triggers.
    ///
    /// Everything happens in one `BEGIN IMMEDIATE` transaction: SQLite has one writer at
    /// a time, so every other connection's write commits either before it (the backfill
    /// reads it) or after it (the triggers capture it). The rows are queued parents
    /// first: a table referenced by a foreign key of another table being tracked comes
    /// before it, whatever order `tables` names them in (see
    /// `schema::parents_first` for cycles), so replicas enforcing the key
    /// receive every referenced row first. Tables already tracked are not queued again.
    pub fn track(
        path: impl AsRef<Path>,
        tables: &[&str],
        options: StoreOptions,
    ) -> Result<Self, TrackError> {
        let path = path.as_ref();
        let conn = connect(path)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| -> Result<(), TrackError> {
            conn.execute_batch(METADATA_DDL)?;
            let format: Option<i64> = conn
                .query_row(
                    "SELECT value FROM __concord_meta WHERE key = 'format'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(found) = format {
                if found > FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    }
                    .into());
                }
            } else {
                init_identity(&conn)?;
            }
            let mut infos = introspect_all(&conn, tables)?;
            for i in tracking_order(&conn, &infos)? {
                let info = &mut infos[i];
                let name = info.name.as_str();
                let existing: Option<(i64, bool)> = conn
                    .query_row(
                        "SELECT id, tracked FROM __concord_tables WHERE name = ?1",
                        [name],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match existing {
                    Some((id, tracked)) => {
                        info.id = id;
                        install_table(&conn, info)?;
                        if !tracked {
                            conn.execute(
                                "UPDATE __concord_tables SET tracked = 1 WHERE id = ?1",
                                [id],
                            )?;
                            backfill(&conn, info)?;
                        }
                    }
                    None => {
                        conn.execute("INSERT INTO __concord_tables(name) VALUES (?1)", [name])?;
                        info.id = conn.last_insert_rowid();
                        install_table(&conn, info)?;
                        backfill(&conn, info)?;
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        use_wal(&conn)?;
        drop(conn);
        Ok(Self::open_with(path, options)?)
    }

    /// Removes capture from `tables`, or every trace of Concord if `tables` is empty or
    /// no tracked table remains. Change-log entries of a table that is untracked alone
    /// are kept, because peers may still need them.
    pub fn untrack(path: impl AsRef<Path>, tables: &[&str]) -> Result<(), TrackError> {
        let path = path.as_ref();
        let store = Self::open(path)?;
        let conn = &store.conn;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| -> Result<(), TrackError> {
            for &name in tables {
                let info = store
                    .tables
                    .iter()
                    .find(|t| t.name == name)
                    .ok_or_else(|| TrackError::NotTracked(name.to_owned()))?;
                drop_triggers(conn, info.id)?;
                for table in ["__concord_rows", "__concord_pending"] {
                    conn.execute(&format!("DELETE FROM {table} WHERE tbl = ?1"), [info.id])?;
                }
                // The name and columns stay: log entries of the table refer to them.
                conn.execute(
                    "UPDATE __concord_tables SET tracked = 0 WHERE id = ?1",
                    [info.id],
                )?;
            }
            let remaining: i64 = conn.query_row(
                "SELECT count(*) FROM __concord_tables WHERE tracked = 1",
                [],
                |r| r.get(0),
            )?;
            if tables.is_empty() || remaining == 0 {
                let triggers: Vec<String> = conn
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_\\_concord\\_%' ESCAPE '\\'")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for t in triggers {
                    conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&t)))?;
                }
                let meta_tables: Vec<String> = conn
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_\\_concord\\_%' ESCAPE '\\'")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for t in meta_tables {
                    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&t)))?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reloads identity, tables, origins and clock from the database.
    pub(crate) fn reload(&mut self) -> Result<(), StoreError> {
        let conn = &self.conn;
        let format: i64 = conn.query_row(
            "SELECT value FROM __concord_meta WHERE key = 'format'",
            [],
            |r| r.get(0),
        )?;
        if format > FORMAT_VERSION {
            return Err(StoreError::UnsupportedFormat {
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        self.relay = conn
            .query_row(
                "SELECT value FROM __concord_meta WHERE key = 'relay'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|v| v == 1);
        let node_bytes: Vec<u8> = conn.query_row(
            "SELECT value FROM __concord_meta WHERE key = 'node_id'",
            [],
            |r| r.get(0),
        )?;
        self.node = NodeId::try_from(node_bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            table: "__concord_meta",
            detail: e.to_string(),
        })?;
        let hlc: i64 = conn.query_row(
            "SELECT value FROM __concord_meta WHERE key = 'hlc'",
            [],
            |r| r.get(0),
        )?;
        let drift = self.clock.max_drift_ms();
        self.clock = HlcClock::new(Hlc::from_u64(hlc as u64), drift);
        self.origins = load_origins(conn)?;
        self.local_index = self.origins.index(self.node).ok_or(StoreError::Corrupt {
            table: "__concord_origins",
            detail: "the local node has no origin row".into(),
        })?;
        self.schema_version = -1;
        self.refresh_schema()?;
        self.stale = false;
        Ok(())
    }

    /// Re-reads tracked tables if the database schema changed. A table that gained
    /// columns (ALTER TABLE ADD COLUMN) or renamed one gets its capture rebuilt; writes
    /// captured by the old triggers are treated as touching every column.
    pub(crate) fn refresh_schema(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        if version == self.schema_version {
            return Ok(());
        }
        let mut tables = Vec::new();
        let tracked: Vec<(i64, String)> = self
            .conn
            .prepare("SELECT id, name FROM __concord_tables WHERE tracked = 1 ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, name) in tracked {
            let stored = load_columns(&self.conn, id)?;
            let mut current = match TableInfo::introspect(&self.conn, &name) {
                Ok(info) => info,
                Err(e) => {
                    tracing::warn!(table = %name, error = %e, "tracked table cannot be read; it is skipped until fixed");
                    continue;
                }
            };
            current.id = id;
            let same = stored.len() == current.columns.len()
                && stored
                    .iter()
                    .zip(&current.columns)
                    .all(|(s, c)| s.0 == c.name && s.1 == c.declared_type);
            if !same {
                self.schema_changed = true;
                tracing::info!(table = %name, columns = current.columns.len(), "table schema changed; rebuilding capture");
                let in_txn = !self.conn.is_autocommit();
                if !in_txn {
                    self.conn.execute_batch("BEGIN IMMEDIATE")?;
                }
                let r = install_table(&self.conn, &current);
                if !in_txn {
                    match r {
                        Ok(()) => self.conn.execute_batch("COMMIT")?,
                        Err(_) => self.conn.execute_batch("ROLLBACK")?,
                    }
                }
                r.map_err(|e| match e {
                    TrackError::Store(s) => s,
                    other => StoreError::Corrupt {
                        table: "__concord_tables",
                        detail: other.to_string(),
                    },
                })?;
            }
            tables.push(Arc::new(current));
        }
        self.tables = tables;
        self.schema_version = self
            .conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        Ok(())
    }

    /// Adds `column` to tracked table `table` for a peer's changes
    /// ([`concord_store::add_column`], typed by [`column_type`]); a relay has no tables
    /// and does nothing.
    pub fn add_column(
        &mut self,
        table: &str,
        column: &str,
        kind: Option<Kind>,
    ) -> Result<(), StoreError> {
        if self.relay {
            return Ok(());
        }
        concord_store::add_column(self, table, column, kind)
    }

    pub(crate) fn ensure_fresh(&mut self) -> Result<(), StoreError> {
        if self.stale {
            self.reload()?;
        }
        Ok(())
    }

    /// Keeps `lock` (this process's exclusive hold on the file) for as long as the store
    /// lives, so no other Concord process works on the file meanwhile.
    pub fn hold(&mut self, lock: crate::FileLock) {
        self.lock = Some(lock);
    }

    /// This replica's identity.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Number of entries in the change log.
    pub fn log_len(&self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut Sqlite(&self.conn), "log")
    }

    /// Number of captured writes not yet folded into the change log.
    pub fn pending_len(&self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut Sqlite(&self.conn), "pending")
    }

    /// Number of recorded conflicts.
    pub fn conflict_count(&self) -> Result<u64, StoreError> {
        bookkeeping::count(&mut Sqlite(&self.conn), "conflicts")
    }

    /// Changes set aside because they could not be applied, oldest first.
    pub fn failures(&self) -> Result<Vec<FailureRecord>, StoreError> {
        bookkeeping::failures(&mut Sqlite(&self.conn))
    }

    /// Recorded conflicts, oldest first.
    pub fn conflicts(&self) -> Result<Vec<ConflictRecord>, StoreError> {
        bookkeeping::conflicts(&mut Sqlite(&self.conn))
    }

    pub(crate) fn table_by_id(&self, id: i64) -> Option<&Arc<TableInfo>> {
        self.tables.iter().find(|t| t.id == id)
    }

    pub(crate) fn table_index(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == name)
    }

    /// The local index of `node`, registering it if new.
    pub(crate) fn origin_index(&mut self, node: NodeId) -> Result<u32, rusqlite::Error> {
        // Most versions are this node's own (capture): answer those without hashing.
        if node == self.node {
            return Ok(self.local_index);
        }
        if let Some(i) = self.origins.index(node) {
            return Ok(i);
        }
        self.conn.execute(
            "INSERT INTO __concord_origins(node_id, seq) VALUES (?1, 0)",
            [node.as_bytes().as_slice()],
        )?;
        let i = self.conn.last_insert_rowid() as u32;
        self.origins.insert(i, node, 0);
        Ok(i)
    }

    /// Loads a row's clock; a row never seen has the default clock.
    /// Appends `e` to the change log and returns its position. A body of
    /// [`STREAMED_BODY_BYTES`] or more is written through incremental blob I/O: bound as a
    /// parameter, SQLite would copy it and then build the row's record around a second
    /// copy, holding a large value three times over.
    pub(crate) fn insert_log(&self, e: &LogEntry<'_>) -> rusqlite::Result<i64> {
        let streamed = e.body.len() >= STREAMED_BODY_BYTES;
        let placeholder = ZeroBlob(e.body.len() as u64);
        let body: &dyn rusqlite::ToSql = if streamed { &placeholder } else { &e.body };
        self.conn
            .prepare_cached(
                "INSERT INTO __concord_log(origin, seq, hlc, tbl, pk, cl, body, txn_end) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                e.origin,
                e.seq as i64,
                e.hlc as i64,
                e.table,
                e.key,
                e.causal_length as i64,
                body,
                e.txn_end
            ])?;
        let pos = self.conn.last_insert_rowid();
        if streamed {
            self.conn
                .blob_open(rusqlite::MAIN_DB, "__concord_log", "body", pos, false)?
                .write_all_at(&e.body, 0)?;
        }
        Ok(pos)
    }

    pub(crate) fn load_clock(
        &self,
        table: i64,
        key: &PrimaryKey,
    ) -> Result<RowClock, LoadClockError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT cl, clock FROM __concord_rows WHERE tbl = ?1 AND pk = ?2")?;
        let row = stmt
            .query_row(params![table, key.as_bytes()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .optional()?;
        let Some((cl, blob)) = row else {
            return Ok(RowClock::default());
        };
        self.origins
            .decode_clock(cl, &blob)
            .map_err(LoadClockError::Corrupt)
    }

    /// Writes a row clock; `existed` says whether the row already had one (so one index
    /// seek suffices: an UPDATE or an INSERT, not an upsert).
    pub(crate) fn save_clock(
        &mut self,
        table: i64,
        key: &PrimaryKey,
        clock: &RowClock,
        existed: bool,
    ) -> Result<(), rusqlite::Error> {
        let blob = concord_store::encode_clock(clock, |node| self.origin_index(node))?;
        let mut stmt = self.conn.prepare_cached(if existed {
            "UPDATE __concord_rows SET cl = ?3, clock = ?4 WHERE tbl = ?1 AND pk = ?2"
        } else {
            "INSERT INTO __concord_rows(tbl, pk, cl, clock) VALUES (?1, ?2, ?3, ?4)"
        })?;
        stmt.execute(params![
            table,
            key.as_bytes(),
            clock.causal_length.0 as i64,
            blob
        ])?;
        Ok(())
    }

    /// Persists the clock and the held sequence of `origin` (inside the caller's
    /// transaction).
    pub(crate) fn save_progress(&self, origin_index: u32, seq: u64) -> Result<(), rusqlite::Error> {
        self.conn
            .prepare_cached("UPDATE __concord_origins SET seq = ?2 WHERE id = ?1")?
            .execute(params![origin_index, seq as i64])?;
        self.conn
            .prepare_cached("UPDATE __concord_meta SET value = ?1 WHERE key = 'hlc'")?
            .execute([self.clock.last().as_u64() as i64])?;
        Ok(())
    }
}

/// Loading a row clock failed.
#[derive(Debug)]
pub(crate) enum LoadClockError {
    Sqlite(rusqlite::Error),
    Corrupt(String),
}

impl From<rusqlite::Error> for LoadClockError {
    fn from(e: rusqlite::Error) -> Self {
        LoadClockError::Sqlite(e)
    }
}

/// Writes a new replica's format, random node id and clock.
fn init_identity(conn: &Connection) -> Result<(), rusqlite::Error> {
    let node = NodeId::from_bytes(rand::random());
    conn.execute(
        "INSERT INTO __concord_meta(key, value) VALUES ('format', ?1)",
        [FORMAT_VERSION],
    )?;
    conn.execute(
        "INSERT INTO __concord_meta(key, value) VALUES ('node_id', ?1)",
        [node.as_bytes().as_slice()],
    )?;
    conn.execute(
        "INSERT INTO __concord_meta(key, value) VALUES ('hlc', 0)",
        [],
    )?;
    conn.execute(
        "INSERT INTO __concord_origins(node_id, seq) VALUES (?1, 0)",
        [node.as_bytes().as_slice()],
    )?;
    Ok(())
}

fn load_origins(conn: &Connection) -> Result<Origins, StoreError> {
    let mut origins = Origins::default();
    let mut stmt = conn.prepare("SELECT id, node_id, seq FROM __concord_origins")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (id, bytes, seq) = row?;
        let node = NodeId::try_from(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            table: "__concord_origins",
            detail: e.to_string(),
        })?;
        origins.insert(id as u32, node, seq.max(0) as u64);
    }
    Ok(origins)
}

fn load_columns(conn: &Connection, table: i64) -> Result<Vec<(String, String)>, rusqlite::Error> {
    conn.prepare(
        "SELECT name, declared_type FROM __concord_columns WHERE tbl = ?1 ORDER BY position",
    )?
    .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

/// Records a table's columns and (re)creates its triggers.
fn install_table(conn: &Connection, info: &TableInfo) -> Result<(), TrackError> {
    conn.execute("DELETE FROM __concord_columns WHERE tbl = ?1", [info.id])?;
    for (position, col) in info.columns.iter().enumerate() {
        let key_position = info.key_columns.iter().position(|&k| k == position);
        conn.execute(
            "INSERT INTO __concord_columns(tbl, position, name, declared_type, key_position) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![info.id, position as i64, col.name, col.declared_type, key_position.map(|k| k as i64)],
        )?;
    }
    schema::widen_pending(conn, info.key_columns.len(), info.mask_count())?;
    drop_triggers(conn, info.id)?;
    for sql in info.trigger_sql() {
        conn.execute_batch(&sql)?;
    }
    Ok(())
}

/// Indexes into `infos`, parents first, warning about referenced tables left untracked.
fn tracking_order(conn: &Connection, infos: &[TableInfo]) -> Result<Vec<usize>, TrackError> {
    let index = |name: &str| infos.iter().position(|t| t.name.eq_ignore_ascii_case(name));
    let mut references = Vec::new();
    for (child, info) in infos.iter().enumerate() {
        for parent in schema::referenced_tables(conn, &info.name)? {
            match index(&parent) {
                Some(p) => references.push((child, p)),
                None => {
                    let tracked: bool = conn
                        .query_row(
                            "SELECT count(*) FROM __concord_tables WHERE name = ?1 COLLATE NOCASE AND tracked = 1",
                            [&parent],
                            |r| r.get::<_, i64>(0),
                        )
                        .map(|n| n > 0)?;
                    if !tracked {
                        tracking::warn_untracked_parent(&info.name, &parent);
                    }
                }
            }
        }
    }
    Ok(tracking::parents_first(infos.len(), &references))
}

/// Queues every existing row as an insert, so it is captured like any other write.
fn backfill(conn: &Connection, info: &TableInfo) -> Result<(), rusqlite::Error> {
    let keys = (0..info.key_columns.len())
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let vals = info
        .key_columns
        .iter()
        .map(|&p| quote(&info.columns[p].name))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute(
        &format!(
            "INSERT INTO __concord_pending(tbl, op, ncols, at, {keys}) SELECT ?1, ?2, ?3, ?4, {vals} FROM {}",
            quote(&info.name)
        ),
        params![info.id, schema::OP_INSERT, info.columns.len() as i64, now_ms() as i64],
    )?;
    Ok(())
}

impl Store for SqliteStore {
    fn system(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn node_id(&self) -> NodeId {
        self.node
    }

    fn version_vector(&self) -> &VersionVector {
        SqliteStore::version_vector(self)
    }

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    fn capture_state(&mut self) -> concord_store::CaptureState {
        concord_store::CaptureState {
            // A relay has no database of its own to capture.
            method: if self.is_relay() {
                String::new()
            } else {
                "triggers".into()
            },
            ..Default::default()
        }
    }

    fn is_relay(&self) -> bool {
        SqliteStore::is_relay(self)
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        vec![self.path.clone(), PathBuf::from(wal)]
    }

    fn capture(&mut self) -> Result<u64, StoreError> {
        SqliteStore::capture(self)
    }

    fn begin_apply_in(&mut self, mode: WriteMode) -> Result<Box<dyn ApplyTxn + '_>, ApplyError> {
        Ok(Box::new(SqliteStore::begin_apply_in(self, mode)?))
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
        Box::new(Sqlite(&self.conn))
    }

    fn log_reader(&self) -> Result<Box<dyn LogRead>, StoreError> {
        Ok(Box::new(crate::log::open_log(&self.path)?))
    }

    fn snapshot(&self) -> Result<Box<dyn SnapshotRead>, StoreError> {
        // A relay holds changes, not rows: a snapshot of it would describe no row and
        // yet claim its whole version vector, and a peer adopting it would lose every
        // change pruned from the relay's log. It refuses instead, and says so.
        if self.relay {
            return Err(StoreError::NoSnapshot("relay"));
        }
        Ok(Box::new(crate::log::open_snapshot(&self.path, self.node)?))
    }

    fn take_schema_changed(&mut self) -> bool {
        std::mem::take(&mut self.schema_changed)
    }

    fn table_columns(&self, table: &str) -> Option<Vec<String>> {
        let index = self.table_index(table)?;
        Some(
            self.tables[index]
                .columns
                .iter()
                .map(|c| c.name.clone())
                .collect(),
        )
    }

    fn add_column(
        &mut self,
        table: &str,
        column: &str,
        kind: Option<Kind>,
    ) -> Result<(), StoreError> {
        SqliteStore::add_column(self, table, column, kind)
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

impl concord_store::ColumnDdl for SqliteStore {
    fn refresh(&mut self) -> Result<(), StoreError> {
        self.ensure_fresh()
    }

    fn table_for_ddl(&self, table: &str, column: &str) -> Option<(String, bool)> {
        let info = &self.tables[self.table_index(table)?];
        Some((quote(&info.name), info.position_of.contains_key(column)))
    }

    fn quote_ident(&self, name: &str) -> String {
        quote(name)
    }

    fn type_for(&self, kind: Option<Kind>) -> &'static str {
        column_type(kind)
    }

    fn execute_ddl(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch(sql)?)
    }
}
