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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use concord_core::merge::{ColumnClock, RowClock, Tombstone};
use concord_core::{
    CausalLength, Hlc, HlcClock, NodeId, PrimaryKey, Value, Version, VersionVector,
};
use postgres::{Client, NoTls, Statement};

use crate::codec::{self, StoredClock, StoredColumnClock, StoredVersion};
use crate::error::{StoreError, TrackError};
use crate::schema::{CANONICAL_SETTINGS, FORMAT_VERSION, METADATA_DDL, TableInfo, literal, quote};

/// Key of the advisory lock serializing Concord's writers in one database ("concord").
pub(crate) const LOCK_KEY: i64 = 0x0063_6f6e_636f_7264;

/// Tunables of a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How far ahead of local time a remote timestamp may be before it is refused.
    pub max_clock_drift: Duration,
    /// Changes applied per local transaction before committing at the next source
    /// transaction boundary. Bounds how long local writers wait.
    pub apply_batch_changes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_clock_drift: Duration::from_millis(HlcClock::DEFAULT_MAX_DRIFT_MS),
            apply_batch_changes: 10_000,
        }
    }
}

/// A conflict recorded while applying: two concurrent writes, or an update overridden by
/// a concurrent delete.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictRecord {
    /// Row id of the record.
    pub id: i64,
    /// Table name.
    pub table: String,
    /// Printable key.
    pub key: String,
    /// `column` or `update-vs-delete`.
    pub kind: String,
    /// The column, for column conflicts.
    pub column: Option<String>,
    /// The value held locally when the pair met.
    pub local_value: Value,
    /// Its version.
    pub local_version: String,
    /// The incoming value.
    pub remote_value: Value,
    /// Its version.
    pub remote_version: String,
    /// `local` or `remote`: which one the merge rules kept.
    pub winner: String,
}

/// A change that was set aside because it could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureRecord {
    /// Origin node id.
    pub origin: String,
    /// Sequence number.
    pub seq: u64,
    /// Table named by the change.
    pub table: String,
    /// Printable key.
    pub key: String,
    /// Why it could not be applied.
    pub error: String,
    /// When, in ms since the epoch.
    pub at_ms: u64,
}

/// Origin ids and what is held from each.
#[derive(Default, Debug)]
pub(crate) struct Origins {
    pub(crate) index_of: HashMap<NodeId, i32>,
    pub(crate) node_of: HashMap<i32, NodeId>,
    pub(crate) held: VersionVector,
}

/// A PostgreSQL database tracked by Concord.
pub struct PgStore {
    pub(crate) client: Client,
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
    statements: HashMap<String, Statement>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Connects and fixes the session settings value text depends on.
pub(crate) fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls)?;
    let settings: String = CANONICAL_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {} = {};", quote(k), literal(v)))
        .collect();
    client.batch_execute(&settings)?;
    Ok(client)
}

/// Runs `body` in a transaction holding Concord's lock; commits on success, rolls back
/// on failure.
fn in_transaction<T, E: From<postgres::Error>>(
    client: &mut Client,
    body: impl FnOnce(&mut Client) -> Result<T, E>,
) -> Result<T, E> {
    client.batch_execute("BEGIN")?;
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
            statements: HashMap::new(),
        };
        store.reload()?;
        Ok(store)
    }

    /// Installs capture on `tables` (creating Concord's metadata on first use) and
    /// returns the opened store. Existing rows are queued as inserts so that replicas
    /// receive them. Tracking an already tracked table refreshes its trigger.
    pub fn track(url: &str, tables: &[&str], options: StoreOptions) -> Result<Self, TrackError> {
        let mut client = connect(url)?;
        in_transaction(&mut client, |client| -> Result<(), TrackError> {
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
            for &name in tables {
                let mut info = TableInfo::introspect(client, name)?;
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
                install_table(client, &info)?;
                if backfill {
                    client.batch_execute(&info.backfill_sql())?;
                }
            }
            Ok(())
        })?;
        drop(client);
        Ok(Self::open_with(url, options)?)
    }

    /// Removes capture from `tables`, or every trace of Concord (the `concord` schema
    /// and every trigger) if `tables` is empty or no tracked table remains. Change-log
    /// entries of a table that is untracked alone are kept, because peers may still
    /// need them.
    pub fn untrack(url: &str, tables: &[&str]) -> Result<(), TrackError> {
        // Lenient: a table whose shape changed can still be untracked.
        let store = Self::open_inner(url, StoreOptions::default(), true)?;
        let known = store.tables.clone();
        let mut client = store.client;
        in_transaction(&mut client, |client| -> Result<(), TrackError> {
            for &name in tables {
                let info = known
                    .iter()
                    .find(|t| t.name == name || t.qualified() == name)
                    .ok_or_else(|| TrackError::NotTracked(name.to_owned()))?;
                client.batch_execute(&info.drop_trigger_sql())?;
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
                }
                // CASCADE also drops any trigger whose table was renamed meanwhile: it
                // depends on its function in the schema.
                client.batch_execute("DROP SCHEMA concord CASCADE")?;
            }
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
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "concord.meta",
            detail,
        };
        let format: i64 = meta
            .get("format")
            .ok_or_else(|| corrupt("no format".into()))?
            .parse()
            .map_err(|e| corrupt(format!("format: {e}")))?;
        if format > FORMAT_VERSION {
            return Err(StoreError::UnsupportedFormat {
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        self.node = meta
            .get("node_id")
            .ok_or_else(|| corrupt("no node_id".into()))?
            .parse()
            .map_err(|e| corrupt(format!("node_id: {e}")))?;
        self.load_progress()?;
        self.local_index = *self
            .origins
            .index_of
            .get(&self.node)
            .ok_or(StoreError::Corrupt {
                table: "concord.origins",
                detail: "the local node has no origin row".into(),
            })?;
        let mut tables = Vec::new();
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
                    tracing::warn!(table = %qualified, error = %e, "tracked table cannot be read; it is skipped until fixed");
                    continue;
                }
            };
            info.id = id;
            let stored: Vec<(String, String)> = self
                .client
                .query(
                    "SELECT name, type_name FROM concord.columns WHERE tbl = $1 ORDER BY position",
                    &[&id],
                )?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let same = stored.len() == info.columns.len()
                && stored
                    .iter()
                    .zip(&info.columns)
                    .all(|(s, c)| s.0 == c.name && s.1 == c.type_name);
            if !same && !self.lenient {
                return Err(StoreError::Corrupt {
                    table: "concord.columns",
                    detail: format!(
                        "table {} changed shape since it was tracked; schema changes are not supported yet (untrack and track it again)",
                        info.name
                    ),
                });
            }
            tables.push(Arc::new(info));
        }
        self.tables = tables;
        self.statements.clear();
        self.stale = false;
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
            origins.index_of.insert(node, id);
            origins.node_of.insert(id, node);
            if seq > 0 {
                origins.held.set(node, seq as u64);
            }
        }
        self.origins = origins;
        Ok(())
    }

    pub(crate) fn ensure_fresh(&mut self) -> Result<(), StoreError> {
        if self.stale {
            self.reload()?;
        }
        Ok(())
    }

    /// Opens a transaction holding Concord's lock, with fresh progress.
    pub(crate) fn begin_locked(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("BEGIN")?;
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

    fn count(&mut self, table: &str) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {table}");
        Ok(self.client.query_one(&sql, &[])?.get::<_, i64>(0) as u64)
    }

    /// Number of entries in the change log.
    pub fn log_len(&mut self) -> Result<u64, StoreError> {
        self.count("concord.log")
    }

    /// Number of captured writes not yet folded into the change log (committed ones).
    pub fn pending_len(&mut self) -> Result<u64, StoreError> {
        self.count("concord.pending")
    }

    /// Changes set aside because they could not be applied, oldest first.
    pub fn failures(&mut self) -> Result<Vec<FailureRecord>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT origin, seq, tbl, key_text, error, at FROM concord.failures ORDER BY id",
                &[],
            )?
            .into_iter()
            .map(|r| FailureRecord {
                origin: r.get(0),
                seq: r.get::<_, i64>(1) as u64,
                table: r.get(2),
                key: r.get(3),
                error: r.get(4),
                at_ms: r.get::<_, i64>(5) as u64,
            })
            .collect())
    }

    /// Recorded conflicts, oldest first.
    pub fn conflicts(&mut self) -> Result<Vec<ConflictRecord>, StoreError> {
        let rows = self.client.query(
            "SELECT id, tbl, key_text, kind, column_name, local_value, local_version,
                    remote_value, remote_version, winner
             FROM concord.conflicts ORDER BY id",
            &[],
        )?;
        let value = |bytes: &[u8]| codec::decode::<Value>(bytes).unwrap_or(Value::Null);
        Ok(rows
            .into_iter()
            .map(|r| ConflictRecord {
                id: r.get(0),
                table: r.get(1),
                key: r.get(2),
                kind: r.get(3),
                column: r.get(4),
                local_value: value(r.get(5)),
                local_version: r.get(6),
                remote_value: value(r.get(7)),
                remote_version: r.get(8),
                winner: r.get(9),
            })
            .collect())
    }

    pub(crate) fn table_by_id(&self, id: i32) -> Option<&Arc<TableInfo>> {
        self.tables.iter().find(|t| t.id == id)
    }

    pub(crate) fn table_named(&self, name: &str) -> Option<Arc<TableInfo>> {
        self.tables.iter().find(|t| t.name == name).cloned()
    }

    /// A prepared statement for `sql`, prepared once per connection.
    pub(crate) fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// The local index of `node`, registering it if new.
    pub(crate) fn origin_index(&mut self, node: NodeId) -> Result<i32, postgres::Error> {
        if node == self.node {
            return Ok(self.local_index);
        }
        if let Some(&i) = self.origins.index_of.get(&node) {
            return Ok(i);
        }
        let stmt = self
            .statement("INSERT INTO concord.origins(node_id, seq) VALUES ($1, 0) RETURNING id")?;
        let i: i32 = self
            .client
            .query_one(&stmt, &[&node.as_bytes().as_slice()])?
            .get(0);
        self.origins.index_of.insert(node, i);
        self.origins.node_of.insert(i, node);
        Ok(i)
    }

    pub(crate) fn stored(&mut self, v: Version) -> Result<StoredVersion, postgres::Error> {
        Ok(StoredVersion(
            v.hlc.as_u64(),
            self.origin_index(v.origin)? as u32,
        ))
    }

    pub(crate) fn version(&self, v: StoredVersion) -> Result<Version, String> {
        let origin = self
            .origins
            .node_of
            .get(&(v.1 as i32))
            .ok_or_else(|| format!("unknown origin index {}", v.1))?;
        Ok(Version {
            hlc: Hlc::from_u64(v.0),
            origin: *origin,
        })
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
        let stored: StoredClock = codec::decode(clock)?;
        let conv = |v: StoredVersion| self.version(v);
        let mut columns = Vec::with_capacity(stored.columns.len());
        for c in stored.columns {
            columns.push(match c {
                None => None,
                Some(c) => Some(ColumnClock {
                    version: conv(c.version)?,
                    replaced: c.replaced.map(conv).transpose()?,
                }),
            });
        }
        let tombstone = match stored.tombstone {
            None => None,
            Some((v, seen)) => Some(Tombstone {
                version: conv(v)?,
                seen: seen.map(conv).transpose()?,
            }),
        };
        if cl < 0 {
            return Err(format!("negative causal length {cl}"));
        }
        Ok(RowClock {
            causal_length: CausalLength(cl as u64),
            columns,
            tombstone,
        })
    }

    /// A row clock as `concord.rows.clock` holds it (registers origins seen first).
    pub(crate) fn encode_clock(&mut self, clock: &RowClock) -> Result<Vec<u8>, postgres::Error> {
        let mut stored = StoredClock {
            columns: Vec::with_capacity(clock.columns.len()),
            tombstone: None,
        };
        for c in &clock.columns {
            stored.columns.push(match c {
                None => None,
                Some(c) => Some(StoredColumnClock {
                    version: self.stored(c.version)?,
                    replaced: c.replaced.map(|v| self.stored(v)).transpose()?,
                }),
            });
        }
        if let Some(t) = clock.tombstone {
            stored.tombstone = Some((
                self.stored(t.version)?,
                t.seen.map(|v| self.stored(v)).transpose()?,
            ));
        }
        Ok(codec::encode(&stored))
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

/// Records a table's columns and (re)creates its trigger.
fn install_table(client: &mut Client, info: &TableInfo) -> Result<(), postgres::Error> {
    client.execute("DELETE FROM concord.columns WHERE tbl = $1", &[&info.id])?;
    for (position, col) in info.columns.iter().enumerate() {
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
    client.batch_execute(&info.trigger_sql())
}
