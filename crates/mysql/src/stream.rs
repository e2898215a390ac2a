//! The binary-log reader: a thread per store staging local writes as MariaDB commits
//! them (see [`crate::binlog`] for what is staged and why).
//!
//! The thread opens two connections: one that the server turns into a binary-log
//! stream (`COM_BINLOG_DUMP` from the stored position, registered under a random
//! server id so it never displaces a real replica), and one to stage on. It reads
//! events, decodes the rows of tracked tables and stages each source transaction in
//! one transaction of its own, committing `binlog_pos` with it. After a failure (the
//! server restarted, the connection was killed) it waits, doubling the pause up to 5 s,
//! and resumes from the stored position.
//!
//! What it has read is shared with the store ([`BinlogReader::position`]): every
//! transaction before that position is staged (or was not to be staged). A store that
//! needs every local write committed so far (capture, an apply) reads the server's
//! position (`SHOW MASTER STATUS`) and waits until the reader has passed it: that is
//! the barrier. The count of staged transactions lets
//! [`concord_store::Store::writes_may_be_pending`] answer without a query.
//!
//! The stored position moves only when something is staged, plus every
//! [`STORE_EVERY_BYTES`] read past it, so a restart does not read much again and
//! status reports a lag that is real. That write is itself in the binary log, but holds
//! no tracked row, so it is read past without another write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mysql::binlog::events::{EventData, RowsEventData, TableMapEvent};
use mysql::prelude::Queryable;
use mysql::{BinlogRequest, Conn, Opts, OptsBuilder};
use thiserror::Error;

use crate::binlog::{
    self, BinlogPos, Cell, MARKER_TABLE, Mapped, Staged, decode_row, delete_row, insert_row,
    update_row,
};
use crate::schema::TableInfo;
use crate::store::connect;
use concord_store::StoreError;

/// Staged rows written per multi-row `INSERT` while a large transaction streams in.
const PAGE: usize = 500;

/// How far the reader may read past the stored position before storing where it is.
const STORE_EVERY_BYTES: u64 = 4 << 20;

/// The largest event the reader accepts: MariaDB's largest packet for replication.
const MAX_EVENT_BYTES: usize = 1 << 30;

/// The server's keepalive while no event comes (nanoseconds): also how often the
/// reader looks whether it was asked to stop.
const HEARTBEAT_NS: u64 = 200_000_000;

/// Why the stream stopped (it is opened again after a pause).
#[derive(Debug, Error)]
pub(crate) enum StreamError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("binary-log connection: {0}")]
    Server(#[from] mysql::Error),
    #[error(
        "the binary log Concord had read up to ({0}) is no longer on the server (purged after binlog_expire_logs_seconds?): the writes made since cannot be captured; reconcile this database with a peer (concord verify), or untrack and track it again"
    )]
    Purged(String),
    #[error("the database has no stored binary-log position (binlog_pos); track it again")]
    NoPosition,
    #[error("{table}: {detail}")]
    Value { table: String, detail: String },
    #[error("the server ended the binary-log stream")]
    Ended,
    #[error("starting the reader: {0}")]
    Thread(std::io::Error),
}

/// What the reader thread and the store share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Source transactions staged so far.
    staged: AtomicU64,
    /// Every transaction before this position is staged (or not to be staged).
    position: Mutex<Option<BinlogPos>>,
    /// Why the stream is down, while it is.
    error: Mutex<Option<String>>,
    /// Set while the reader fails in a way waiting does not cure: the stored
    /// position's binary log is gone, or a value cannot be read.
    stuck: AtomicBool,
    /// The server's id of the streaming connection (for tests that kill it).
    connection: AtomicU32,
}

/// A running reader; dropping it stops the thread.
pub(crate) struct BinlogReader {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BinlogReader {
    /// Starts reading the binary log for the database at `url`.
    pub(crate) fn start(url: &str) -> Result<BinlogReader, StreamError> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let (shared, url) = (shared.clone(), url.to_owned());
            std::thread::Builder::new()
                .name("concord-mysql-binlog".into())
                .spawn(move || run(&url, &shared))
                .map_err(StreamError::Thread)?
        };
        Ok(BinlogReader {
            shared,
            thread: Some(thread),
        })
    }

    /// Source transactions staged since the reader started.
    pub(crate) fn staged_transactions(&self) -> u64 {
        self.shared.staged.load(Ordering::SeqCst)
    }

    /// How far the reader has read and staged.
    pub(crate) fn position(&self) -> Option<BinlogPos> {
        self.shared.position.lock().ok().and_then(|p| p.clone())
    }

    /// Why the stream is down, while it is.
    pub(crate) fn error(&self) -> Option<String> {
        self.shared
            .error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Whether the reader fails in a way waiting does not cure (its position purged
    /// from the server, a value it cannot read).
    pub(crate) fn stuck(&self) -> bool {
        self.shared.stuck.load(Ordering::SeqCst)
    }

    /// The server's id of the streaming connection, once it is open.
    pub(crate) fn connection_id(&self) -> Option<u32> {
        Some(self.shared.connection.load(Ordering::SeqCst)).filter(|&id| id != 0)
    }
}

impl Drop for BinlogReader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: streams until asked to stop, opening the stream again after a failure.
fn run(url: &str, shared: &Shared) {
    let mut pause = Duration::from_millis(100);
    while !shared.stop.load(Ordering::SeqCst) {
        match stream(url, shared) {
            Ok(()) => return,
            Err(e) => {
                shared.stuck.store(
                    matches!(e, StreamError::Purged(_) | StreamError::Value { .. }),
                    Ordering::SeqCst,
                );
                let text = e.to_string();
                let mut error = shared.error.lock().unwrap_or_else(|p| p.into_inner());
                if error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "reading MariaDB's binary log failed; retrying");
                }
                *error = Some(text);
            }
        }
        let until = std::time::Instant::now() + pause;
        while std::time::Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One streaming session.
fn stream(url: &str, shared: &Shared) -> Result<(), StreamError> {
    let mut conn = connect(url)?;
    let stored = stored_position(&mut conn)?.ok_or(StreamError::NoPosition)?;
    let database: Option<String> = conn.query_first("SELECT DATABASE()")?;
    let database = database.unwrap_or_default();
    let opts = Opts::from_url(url).map_err(|e| StoreError::from(mysql::Error::UrlError(e)))?;
    // The server sends an event as large as the row it holds, up to its
    // `slave_max_allowed_packet` (1 GiB), whatever `max_allowed_packet` says.
    let mut dump = Conn::new(
        OptsBuilder::from_opts(opts)
            .read_timeout(Some(Duration::from_secs(30)))
            .max_allowed_packet(Some(MAX_EVENT_BYTES)),
    )?;
    dump.query_drop(format!("SET @master_heartbeat_period = {HEARTBEAT_NS}"))?;
    shared
        .connection
        .store(dump.connection_id(), Ordering::SeqCst);
    // A random id above any real server's: registering under another replica's id
    // would make the server disconnect that replica.
    let server_id = 0x8000_0000 | (rand::random::<u32>() >> 1);
    let request = BinlogRequest::new(server_id)
        .with_filename(stored.file.clone().into_bytes())
        .with_pos(stored.pos);
    let mut events = dump.get_binlog_stream(request)?;
    let mut reader = Reader::new(conn, database, stored);
    let mut first = true;
    // Whether the stream has described its format (the first artificial rotate comes
    // before that).
    let mut described = false;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            reader.abandon();
            return Ok(());
        }
        let Some(event) = events.next() else {
            return Err(StreamError::Ended);
        };
        let event = match event {
            Ok(event) => event,
            Err(e) if binlog::is_purged(&e) => {
                reader.abandon();
                return Err(StreamError::Purged(reader.stored.to_string()));
            }
            Err(e) => {
                reader.abandon();
                return Err(e.into());
            }
        };
        if first {
            first = false;
            if let Ok(mut error) = shared.error.lock() {
                *error = None;
            }
            shared.stuck.store(false, Ordering::SeqCst);
        }
        let header = event.header();
        if binlog::is_compressed_event(header.event_type_raw()) {
            reader.abandon();
            return Err(StreamError::Value {
                table: "(binary log)".into(),
                detail: "a compressed event (log_bin_compress = ON) cannot be read; turn log_bin_compress off, then reconcile this database with a peer (concord verify)".into(),
            });
        }
        let log_pos = u64::from(header.log_pos());
        // The wall time a change is stamped with. The event's own timestamp has whole
        // seconds only, and is when the statement started: a write made within the
        // second after Concord applied a row would be stamped before that apply, and
        // lose to it on every replica. The time it is read is after its commit.
        let at = (i64::from(header.timestamp()) * 1000).max(concord_store::engine::now_ms() as i64);
        let data = event.read_data().map_err(|e| StoreError::Capture {
            table: "(binary log)".into(),
            key: "-".into(),
            detail: format!("an event cannot be read: {e}"),
        })?;
        let result = match data {
            Some(EventData::RotateEvent(rotate)) => {
                // The stream's first, artificial rotate (position 0) names the file
                // asked for; its name is read before the checksum setting is known.
                // A later artificial one is the server moving on to the next file
                // after one that ends without a rotate of its own (the server crashed
                // while writing it): the file changes all the same.
                if log_pos != 0 || described {
                    reader.file = rotate.name().into_owned();
                    reader.boundary(BinlogPos {
                        file: reader.file.clone(),
                        pos: rotate.position(),
                    });
                }
                Ok(Step::None)
            }
            Some(EventData::QueryEvent(query)) => {
                let sql = query.query();
                let sql = sql.trim();
                if sql.eq_ignore_ascii_case("BEGIN") {
                    reader.begin();
                    Ok(Step::None)
                } else if sql.eq_ignore_ascii_case("COMMIT") {
                    reader.commit(log_pos)
                } else if sql.starts_with('#') || sql.starts_with("XA ") {
                    Ok(Step::None)
                } else {
                    // DDL, standalone: the tracked tables' shapes may have changed.
                    reader.catalog = None;
                    if reader.txn.is_none() {
                        reader.boundary_at(log_pos);
                    }
                    Ok(Step::None)
                }
            }
            Some(EventData::TableMapEvent(tme)) => {
                reader.begin_if_needed();
                reader.table_map(tme.into_owned())
            }
            Some(EventData::RowsEvent(rows)) => reader.rows(&rows, at),
            Some(EventData::XidEvent(_)) => reader.commit(log_pos),
            Some(EventData::TransactionPayloadEvent(_)) => Err(StreamError::Value {
                table: "(binary log)".into(),
                detail: "a compressed transaction (binlog_transaction_compression = ON) cannot be read; turn it off, then reconcile this database with a peer (concord verify)".into(),
            }),
            Some(EventData::FormatDescriptionEvent(_)) => {
                described = true;
                Ok(Step::None)
            }
            Some(EventData::HeartbeatEvent) => Ok(Step::None),
            _ => {
                if reader.txn.is_none() && log_pos != 0 {
                    reader.boundary_at(log_pos);
                }
                Ok(Step::None)
            }
        };
        match result {
            Ok(Step::Staged) => {
                shared.staged.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Step::None) => {}
            Err(e) => {
                reader.abandon();
                return Err(e);
            }
        }
        if reader.txn.is_none()
            && let Ok(mut p) = shared.position.lock()
        {
            *p = Some(reader.read.clone());
        }
    }
}

/// What an event led to.
enum Step {
    None,
    /// A source transaction was staged and committed.
    Staged,
}

/// A table of the stream, as the reader treats its rows.
enum Target {
    /// Not Concord's: another database, an untracked table, Concord's bookkeeping.
    Ignored,
    /// Concord's apply marker: the transaction is Concord's own.
    Marker,
    /// `concord_tables` / `concord_columns`: what is tracked changes with it.
    Catalog,
    Tracked(Arc<Mapped>),
}

/// The source transaction being read.
struct Txn {
    /// Where it began (the end of what came before it).
    begin: BinlogPos,
    /// Concord's own (or staged already by another reader).
    skip: bool,
    /// Whether the staging transaction is open.
    open: bool,
    rows: usize,
    catalog_changed: bool,
}

/// The tracked tables, as of the last look at `concord_tables`.
struct Catalog {
    tables: HashMap<String, (i32, Option<BinlogPos>)>,
    mapped: HashMap<String, Arc<Mapped>>,
}

struct Reader {
    conn: Conn,
    database: String,
    file: String,
    /// The position committed in `concord_meta`.
    stored: BinlogPos,
    /// The end of the last event read outside a transaction.
    read: BinlogPos,
    txn: Option<Txn>,
    catalog: Option<Catalog>,
    tmes: HashMap<u64, (TableMapEvent<'static>, Target)>,
    staged: Vec<Staged>,
}

impl Reader {
    fn new(conn: Conn, database: String, stored: BinlogPos) -> Self {
        Reader {
            conn,
            database,
            file: stored.file.clone(),
            read: stored.clone(),
            stored,
            txn: None,
            catalog: None,
            tmes: HashMap::new(),
            staged: Vec::new(),
        }
    }

    fn boundary(&mut self, pos: BinlogPos) {
        if pos > self.read {
            self.read = pos;
        }
    }

    fn boundary_at(&mut self, log_pos: u64) {
        self.boundary(BinlogPos {
            file: self.file.clone(),
            pos: log_pos,
        });
    }

    fn begin(&mut self) {
        self.abandon();
        self.txn = Some(Txn {
            begin: self.read.clone(),
            // Positions are stored only at transaction boundaries: one past this
            // transaction's start means it was staged before.
            skip: self.stored > self.read,
            open: false,
            rows: 0,
            catalog_changed: false,
        });
    }

    fn begin_if_needed(&mut self) {
        if self.txn.is_none() {
            self.begin();
        }
    }

    /// Rolls back what was staged for the transaction being read.
    fn abandon(&mut self) {
        if let Some(txn) = self.txn.take()
            && txn.open
        {
            let _ = self.conn.query_drop("ROLLBACK");
        }
        self.staged.clear();
    }

    fn table_map(&mut self, tme: TableMapEvent<'static>) -> Result<Step, StreamError> {
        let target = if tme.database_name() != self.database {
            Target::Ignored
        } else {
            let name = tme.table_name().into_owned();
            match name.as_str() {
                MARKER_TABLE => Target::Marker,
                "concord_tables" | "concord_columns" => Target::Catalog,
                n if n.starts_with("concord_") => Target::Ignored,
                _ => self.tracked(&name)?,
            }
        };
        self.tmes.insert(tme.table_id(), (tme, target));
        Ok(Step::None)
    }

    /// The tracked table `name` is, read from the catalog as it is now.
    fn tracked(&mut self, name: &str) -> Result<Target, StreamError> {
        if self.catalog.is_none() {
            let mut tables = HashMap::new();
            let rows: Vec<(i32, String)> = self
                .conn
                .query("SELECT id, name FROM concord_tables WHERE tracked")?;
            let starts: Vec<(String, String)> = self
                .conn
                .query("SELECT k, v FROM concord_meta WHERE k LIKE 'binlog\\_start.%'")?;
            for (id, table) in rows {
                let key = format!("binlog_start.{id}");
                let start = starts
                    .iter()
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, v)| BinlogPos::parse(v));
                tables.insert(table, (id, start));
            }
            self.catalog = Some(Catalog {
                tables,
                mapped: HashMap::new(),
            });
        }
        let Some(catalog) = self.catalog.as_mut() else {
            return Ok(Target::Ignored);
        };
        if let Some(m) = catalog.mapped.get(name) {
            return Ok(Target::Tracked(m.clone()));
        }
        let Some((id, start)) = catalog.tables.get(name).cloned() else {
            return Ok(Target::Ignored);
        };
        let mut info = match TableInfo::introspect(&mut self.conn, name) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "a tracked table cannot be read; its writes are not staged");
                return Ok(Target::Ignored);
            }
        };
        info.id = id;
        let mapped = Arc::new(Mapped::introspect(&mut self.conn, Arc::new(info), start)?);
        catalog.mapped.insert(name.to_owned(), mapped.clone());
        Ok(Target::Tracked(mapped))
    }

    fn rows(&mut self, rows: &RowsEventData<'_>, at: i64) -> Result<Step, StreamError> {
        let Some((tme, target)) = self.tmes.get(&rows.table_id()) else {
            return Ok(Step::None);
        };
        let Some(txn) = self.txn.as_mut() else {
            return Ok(Step::None);
        };
        let m = match target {
            Target::Ignored => return Ok(Step::None),
            Target::Marker => {
                txn.skip = true;
                return Ok(Step::None);
            }
            Target::Catalog => {
                txn.catalog_changed = true;
                return Ok(Step::None);
            }
            Target::Tracked(m) => m.clone(),
        };
        if txn.skip || m.start.as_ref().is_some_and(|s| txn.begin < *s) {
            return Ok(Step::None);
        }
        let width = rows.num_columns() as usize;
        let kinds: Vec<_> = m.table.columns.iter().map(|c| c.kind).collect();
        let value_error = |detail: String| StreamError::Value {
            table: m.table.name.clone(),
            detail,
        };
        let mut decoded = Vec::new();
        for row in rows.rows(tme) {
            let (before, after) =
                row.map_err(|e| value_error(format!("a row event cannot be read: {e}")))?;
            decoded.push((before.map(|r| r.unwrap()), after.map(|r| r.unwrap())));
        }
        let conn = &mut self.conn;
        let mut recode = |cs: &str, b: &[u8]| binlog::recode_on(conn, cs, b);
        let mut decode = |image: Vec<mysql::binlog::value::BinlogValue<'static>>| -> Result<Vec<Cell>, StreamError> {
            if image.len() != width {
                return Err(value_error(
                    "the row image is not whole; set binlog_row_image = FULL".into(),
                ));
            }
            let mut image: Vec<_> = image.into_iter().map(Some).collect();
            decode_row(&m, &kinds, |i| image.get_mut(i).and_then(Option::take), width, &mut recode)
                .map_err(value_error)
        };
        let mut staged = Vec::with_capacity(decoded.len());
        for (before, after) in decoded {
            let row = match (before, after) {
                (None, Some(new)) => Some(insert_row(&m, at, &decode(new)?)),
                (Some(old), None) => Some(delete_row(&m, at, &decode(old)?)),
                (Some(old), Some(new)) => update_row(&m, at, &decode(old)?, &decode(new)?),
                (None, None) => None,
            };
            staged.extend(row);
        }
        self.staged.extend(staged);
        if self.staged.len() >= PAGE {
            self.flush()?;
        }
        Ok(Step::None)
    }

    /// Writes what is held back into `concord_pending`, in the staging transaction.
    fn flush(&mut self) -> Result<(), StreamError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let Some(txn) = self.txn.as_mut() else {
            self.staged.clear();
            return Ok(());
        };
        if !txn.open {
            self.conn.query_drop("START TRANSACTION")?;
            txn.open = true;
        }
        txn.rows += self.staged.len();
        for chunk in self.staged.chunks(PAGE) {
            let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let mut params: Vec<mysql::Value> = Vec::with_capacity(chunk.len() * 7);
            for s in chunk {
                params.extend([
                    s.table.into(),
                    s.op.into(),
                    s.at.into(),
                    s.cols.clone().into(),
                    s.key.clone().into(),
                    s.old_key.clone().into(),
                    s.values.clone().into(),
                ]);
            }
            self.conn.exec_drop(
                format!(
                    "INSERT INTO concord_pending(tbl, op, at, cols, k, o, v) VALUES {placeholders}"
                ),
                params,
            )?;
        }
        self.staged.clear();
        Ok(())
    }

    /// Ends the transaction being read at `log_pos`: commits what was staged for it
    /// with the new position.
    fn commit(&mut self, log_pos: u64) -> Result<Step, StreamError> {
        let end = BinlogPos {
            file: self.file.clone(),
            pos: log_pos,
        };
        let Some(txn) = self.txn.as_ref() else {
            self.boundary(end);
            return Ok(Step::None);
        };
        let (skip, catalog_changed) = (txn.skip, txn.catalog_changed);
        let mut step = Step::None;
        if skip {
            self.abandon();
        } else {
            self.flush()?;
            let open = self.txn.as_ref().is_some_and(|t| t.open);
            if open {
                // Another process reading this database's log may have staged it.
                let stored: Option<String> = self
                    .conn
                    .query_first("SELECT v FROM concord_meta WHERE k = 'binlog_pos' FOR UPDATE")?;
                let stored = stored.as_deref().and_then(BinlogPos::parse);
                if stored.as_ref().is_some_and(|s| *s >= end) {
                    self.abandon();
                } else {
                    store(&mut self.conn, &end)?;
                    self.conn.query_drop("COMMIT")?;
                    self.stored = end.clone();
                    step = Step::Staged;
                }
            }
        }
        self.txn = None;
        self.staged.clear();
        if catalog_changed {
            self.catalog = None;
        }
        self.boundary(end);
        self.store_if_far_behind()?;
        Ok(step)
    }

    /// Stores the position read when it is far past the stored one.
    fn store_if_far_behind(&mut self) -> Result<(), StreamError> {
        let far = self.read.file != self.stored.file
            || self.read.pos.saturating_sub(self.stored.pos) > STORE_EVERY_BYTES;
        if far && self.read > self.stored {
            let read = self.read.clone();
            self.conn.query_drop("START TRANSACTION")?;
            let stored: Option<String> = self
                .conn
                .query_first("SELECT v FROM concord_meta WHERE k = 'binlog_pos' FOR UPDATE")?;
            if stored
                .as_deref()
                .and_then(BinlogPos::parse)
                .is_none_or(|s| s < read)
            {
                store(&mut self.conn, &read)?;
            }
            self.conn.query_drop("COMMIT")?;
            self.stored = read;
        }
        Ok(())
    }
}

/// The position stored in `concord_meta`.
pub(crate) fn stored_position(conn: &mut Conn) -> Result<Option<BinlogPos>, mysql::Error> {
    let v: Option<String> =
        conn.query_first("SELECT v FROM concord_meta WHERE k = 'binlog_pos'")?;
    Ok(v.as_deref().and_then(BinlogPos::parse))
}

/// Writes `binlog_pos` (in the caller's transaction).
pub(crate) fn store(conn: &mut Conn, pos: &BinlogPos) -> Result<(), mysql::Error> {
    conn.exec_drop(
        "INSERT INTO concord_meta(k, v) VALUES ('binlog_pos', ?) ON DUPLICATE KEY UPDATE v = VALUES(v)",
        (pos.to_string(),),
    )
}
