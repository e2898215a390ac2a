//! Log-based capture: reading local writes from MariaDB's row-based binary log.
//!
//! Why: a capture trigger runs for every row every client writes, inside the client's
//! transaction, and appends to a system-versioned table; the binary log is written
//! anyway when the server keeps one, so reading it afterwards costs the application's
//! writes nothing.
//!
//! When the server allows it (`log_bin = ON`, `binlog_format = ROW`,
//! `binlog_row_image = FULL`, and a user with `REPLICATION SLAVE` and `BINLOG MONITOR`
//! / `REPLICATION CLIENT`, or all privileges; see [`unavailable`]), `track` installs no
//! trigger. Instead a reader thread per store ([`crate::stream`]) asks the server for
//! its binary log as a replica would (`COM_BINLOG_DUMP`, through the `mysql` crate's
//! `BinlogStream`; `mysql_common` parses the events) and stages each committed source
//! transaction that wrote a tracked table into `concord_pending`, exactly as the
//! triggers would have written it: the same JSON arrays of canonical text
//! ([`crate::types`]), so the fold in `capture.rs` is the same for both.
//!
//! - **Transactions whole, in commit order.** A transaction's events are written to the
//!   binary log together at commit, from `BEGIN` to its `XID` (or `COMMIT`). The reader
//!   stages one source transaction per transaction of its own, so the fold, which
//!   groups pending rows by the inserting transaction and orders the groups by commit
//!   (`mysql.transaction_registry`), sees the source transactions whole and in order.
//! - **The position is committed with what was staged.** The end of the last staged
//!   transaction (binary-log file and offset, [`BinlogPos`]) is `binlog_pos` in
//!   `concord_meta`, written in the staging transaction; the reader resumes there. A
//!   crash loses nothing and stages nothing twice. The reader checks the stored
//!   position under a row lock before committing, so two processes reading one
//!   database's log never stage a transaction twice either.
//! - **Exact changed columns.** With `binlog_row_image = FULL` an update carries the
//!   whole row before and after, so the changed columns are those whose values differ.
//! - **Concord's own writes are skipped (no echo).** An apply transaction first bumps a
//!   counter row in `concord_applying`; the reader skips every transaction holding a
//!   row event of that table. Why a marker row rather than `SET sql_log_bin = 0` (which
//!   needs SUPER and would hide Concord's writes from the user's own MariaDB replicas)
//!   or a server-id filter (`SET server_id` needs SUPER too): any user may write the
//!   marker, and the transaction reaches every replica unchanged.
//! - **Tables tracked later.** `track` records `binlog_start.<table id>`, the server's
//!   position read while the table's writers are held back by the backfill's locking
//!   read: transactions that began before it are in the backfill, and only later ones
//!   are staged from the log.
//!
//! Values: the binary log carries raw column images, not the text the triggers compute,
//! and several differ from what a client reads: `ENUM` and `SET` as member numbers,
//! integers without their signedness (`binlog_row_metadata` defaults to `NO_LOG`),
//! `BINARY(n)` without its trailing zero bytes, `YEAR` 0 as 1900, strings in the
//! column's character set. [`column_text`] turns each into the trigger's canonical text
//! with the column's catalog type (read from `information_schema`), and refuses what
//! it cannot read, naming the column.
//!
//! The server keeps its binary logs for `binlog_expire_logs_seconds`, whether Concord
//! has read them or not: a node stopped for longer finds its position purged, and
//! capture then fails saying so (the writes of that time can only come back through a
//! reconcile, `concord verify`) rather than skipping them silently. Status reports how
//! many bytes of binary log the reader is behind (`CaptureState::lag_bytes`).

use std::cmp::Ordering;
use std::fmt;

use mysql::Conn;
use mysql::binlog::value::BinlogValue;
use mysql::prelude::Queryable;

use crate::schema::{OP_DELETE, OP_INSERT, OP_REKEY, OP_UPDATE, TableInfo, quote};
use crate::types::{BIG_VALUE, ColumnKind, INLINE_VALUE_BYTES};

/// The table whose row an apply transaction writes first, so the reader skips it.
pub(crate) const MARKER_TABLE: &str = "concord_applying";

/// A position in the server's binary log: a file and a byte offset in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BinlogPos {
    pub(crate) file: String,
    pub(crate) pos: u64,
}

impl BinlogPos {
    /// Parses `file:offset`, as stored in `concord_meta`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (file, pos) = text.rsplit_once(':')?;
        Some(BinlogPos {
            file: file.to_owned(),
            pos: pos.parse().ok()?,
        })
    }

    /// The number MariaDB appends to a binary log's base name (`mysql-bin.000012`).
    fn sequence(&self) -> Option<u64> {
        self.file.rsplit_once('.')?.1.parse().ok()
    }
}

impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

impl PartialOrd for BinlogPos {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BinlogPos {
    fn cmp(&self, other: &Self) -> Ordering {
        let file = match (self.sequence(), other.sequence()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.file.cmp(&other.file),
        };
        file.then(self.pos.cmp(&other.pos))
    }
}

/// Why log-based capture cannot run on this server, or `None` when it can.
pub(crate) fn unavailable(conn: &mut Conn) -> Result<Option<String>, mysql::Error> {
    let row: Option<(i64, String, String)> =
        conn.query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image")?;
    let Some((log_bin, format, image)) = row else {
        return Ok(Some(
            "the server's binary-log settings cannot be read".into(),
        ));
    };
    if log_bin != 1 {
        return Ok(Some(
            "the server keeps no binary log; set log_bin (and binlog_format = ROW, binlog_row_image = FULL) in the server's configuration and restart MariaDB to capture from the binary log".into(),
        ));
    }
    if !format.eq_ignore_ascii_case("ROW") {
        return Ok(Some(format!(
            "the server logs with binlog_format = {format}; set binlog_format = ROW (SET GLOBAL and in the configuration) to capture from the binary log"
        )));
    }
    if !image.eq_ignore_ascii_case("FULL") {
        return Ok(Some(format!(
            "the server logs with binlog_row_image = {image}; set binlog_row_image = FULL (SET GLOBAL and in the configuration) so updates carry whole rows, to capture from the binary log"
        )));
    }
    // MariaDB's `log_bin_compress`, MySQL's `binlog_transaction_compression`.
    let compressed: Vec<(String, String)> = conn.query(
        "SHOW VARIABLES WHERE Variable_name IN ('log_bin_compress', 'binlog_transaction_compression')",
    )?;
    if let Some((name, _)) = compressed
        .iter()
        .find(|(_, v)| v.eq_ignore_ascii_case("ON"))
    {
        return Ok(Some(format!(
            "the server compresses its binary log ({name} = ON), which Concord cannot read; turn it off to capture from the binary log"
        )));
    }
    let grants: Vec<String> = conn.query("SHOW GRANTS FOR CURRENT_USER()")?;
    let on_all = |g: &&String| g.contains(" ON *.* ");
    let global: Vec<String> = grants
        .iter()
        .filter(on_all)
        .map(|g| g.to_ascii_uppercase())
        .collect();
    let has = |p: &str| global.iter().any(|g| g.contains(p));
    if has("ALL PRIVILEGES") {
        return Ok(None);
    }
    if !has("REPLICATION SLAVE") {
        return Ok(Some("the user lacks REPLICATION SLAVE; GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO the user to capture from the binary log".into()));
    }
    if !(has("BINLOG MONITOR") || has("REPLICATION CLIENT") || has("SUPER")) {
        return Ok(Some("the user lacks BINLOG MONITOR (REPLICATION CLIENT); GRANT BINLOG MONITOR ON *.* TO the user to capture from the binary log".into()));
    }
    Ok(None)
}

/// The server's current end of the binary log.
pub(crate) fn server_position(conn: &mut Conn) -> Result<Option<BinlogPos>, mysql::Error> {
    let row: Option<mysql::Row> = conn.query_first("SHOW MASTER STATUS")?;
    Ok(row.and_then(|r| {
        let file: Option<String> = r.get(0);
        let pos: Option<u64> = r.get(1);
        Some(BinlogPos {
            file: file?,
            pos: pos?,
        })
    }))
}

/// How far a position is behind the server's binary log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lag {
    Bytes(u64),
    /// The position's file is no longer on the server.
    Purged,
}

/// How many bytes of binary log the server holds after `from`.
pub(crate) fn lag(conn: &mut Conn, from: &BinlogPos) -> Result<Lag, mysql::Error> {
    let logs: Vec<mysql::Row> = conn.query("SHOW BINARY LOGS")?;
    let logs: Vec<(String, u64)> = logs
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect();
    let Some(start) = logs.iter().position(|(f, _)| *f == from.file) else {
        return Ok(Lag::Purged);
    };
    let mut bytes = 0u64;
    for (i, (_, size)) in logs.iter().enumerate().skip(start) {
        bytes += if i == start {
            size.saturating_sub(from.pos)
        } else {
            *size
        };
    }
    Ok(Lag::Bytes(bytes))
}

/// MariaDB's compressed query and row events (165 to 171, written with
/// `log_bin_compress = ON`), which `mysql_common` does not parse: reading past one
/// would lose the writes it holds.
pub(crate) fn is_compressed_event(event_type: u8) -> bool {
    (165..=171).contains(&event_type)
}

/// Whether a server error says the binary log the reader asked for is gone (1236,
/// `ER_MASTER_FATAL_ERROR_READING_BINLOG`, for a file purged or never there).
pub(crate) fn is_purged(e: &mysql::Error) -> bool {
    // The same code also reports other fatal reading errors (an event too large, a
    // corrupt log); only a missing file means the position was purged.
    matches!(e, mysql::Error::MySqlError(s)
        if s.code == 1236
            && (s.message.contains("Could not find first log file")
                || s.message.contains("purged")))
}

/// What the reader needs to know of one column of a table's binary-log row image
/// (every column the table has, generated ones too, in table order).
#[derive(Clone, Debug)]
pub(crate) struct Physical {
    /// The column's position among the tracked columns, or `None` (generated).
    pub(crate) position: Option<usize>,
    pub(crate) name: String,
    /// `DATA_TYPE`: `enum`, `set`, `year`, `time` read differently.
    pub(crate) data_type: String,
    /// The column's character set when its bytes are not UTF-8 (`latin1`, ...).
    pub(crate) charset: Option<String>,
    /// The members of an `ENUM` or `SET`, in order.
    pub(crate) members: Vec<String>,
    /// Whether the column type is `unsigned`.
    pub(crate) unsigned: bool,
    /// Fractional-second digits of a `TIME` column.
    pub(crate) fsp: u32,
}

/// A tracked table as the reader maps its row images.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub(crate) table: std::sync::Arc<TableInfo>,
    pub(crate) physical: Vec<Physical>,
    /// Transactions that began before this position are in the table's backfill.
    pub(crate) start: Option<BinlogPos>,
}

type CatalogRow = (String, String, String, Option<String>, Option<u64>, String);

impl Mapped {
    /// Reads the physical columns of `table` from the catalog.
    pub(crate) fn introspect(
        conn: &mut Conn,
        table: std::sync::Arc<TableInfo>,
        start: Option<BinlogPos>,
    ) -> Result<Self, mysql::Error> {
        let rows: Vec<CatalogRow> = conn.exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, DATETIME_PRECISION, EXTRA
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?
             ORDER BY ORDINAL_POSITION",
            (&table.name,),
        )?;
        let physical = rows
            .into_iter()
            .map(|(name, data_type, column_type, charset, fsp, _extra)| {
                let lower = column_type.to_ascii_lowercase();
                let members = if data_type == "enum" || data_type == "set" {
                    members(&column_type)
                } else {
                    Vec::new()
                };
                Physical {
                    position: table.position_of.get(&name).copied(),
                    unsigned: lower.contains("unsigned"),
                    charset: charset.filter(|c| !is_utf8(c)),
                    fsp: fsp.and_then(|f| u32::try_from(f).ok()).unwrap_or(0),
                    name,
                    data_type,
                    members,
                }
            })
            .collect();
        Ok(Mapped {
            table,
            physical,
            start,
        })
    }
}

/// Whether text of a character set is UTF-8 bytes already.
fn is_utf8(charset: &str) -> bool {
    matches!(
        charset.to_ascii_lowercase().as_str(),
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "binary"
    )
}

/// The members of `enum('a','b')` / `set('x','y')` as `COLUMN_TYPE` prints them (a
/// quote inside a member doubled).
pub(crate) fn members(column_type: &str) -> Vec<String> {
    let Some(open) = column_type.find('(') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut chars = column_type[open + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut member = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    member.push('\'');
                } else {
                    break;
                }
            } else {
                member.push(c);
            }
        }
        out.push(member);
    }
    out
}

/// One column's value in a row image, as a pending row records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    Null,
    /// The canonical text of [`ColumnKind::text_expr`].
    Text(String),
    /// A string, JSON or blob above [`INLINE_VALUE_BYTES`]: recorded as [`BIG_VALUE`]
    /// (the fold reads it from the row, as for the triggers), compared by its bytes.
    Big(Vec<u8>),
}

impl Cell {
    fn recorded(&self) -> Option<&str> {
        match self {
            Cell::Null => None,
            Cell::Text(t) => Some(t),
            Cell::Big(_) => Some(BIG_VALUE),
        }
    }
}

/// Converts a string of a non-UTF-8 character set to UTF-8 (through the server, which
/// knows every character set it stores).
pub(crate) type Recode<'a> = dyn FnMut(&str, &[u8]) -> Result<Vec<u8>, String> + 'a;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// An integer image as the unsigned number of a column `bits` wide (the binary log
/// does not say which integers are unsigned).
fn unsigned_of(i: i64, bits: u32) -> u64 {
    if bits >= 64 {
        i as u64
    } else {
        (i as u64) & ((1u64 << bits) - 1)
    }
}

/// The value of a `BIT(n)` image (big-endian bytes).
fn bits_value(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() > 8 {
        return Err(format!("a BIT value of {} bytes", bytes.len()));
    }
    Ok(bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

/// The canonical text (as the capture triggers record it) of one column's image.
pub(crate) fn column_text(
    p: &Physical,
    kind: ColumnKind,
    value: BinlogValue<'_>,
    recode: &mut Recode<'_>,
) -> Result<Cell, String> {
    use mysql::Value as My;
    let unexpected = |v: &dyn fmt::Debug| {
        Err(format!(
            "the binary log holds {v:?}, which Concord cannot read as a {kind:?} value"
        ))
    };
    let value = match value {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            // MySQL's binary JSON; MariaDB's JSON is text.
            let json = serde_json::Value::try_from(j).map_err(|e| e.to_string())?;
            My::Bytes(json.to_string().into_bytes())
        }
        BinlogValue::JsonDiff(_) => {
            return Err(
                "a partial JSON update (binlog_row_value_options = PARTIAL_JSON) cannot be captured; turn it off"
                    .into(),
            );
        }
    };
    if value == My::NULL {
        return Ok(Cell::Null);
    }
    let text = |s: String| Ok(Cell::Text(s));
    match kind {
        ColumnKind::Int { min, max } => {
            let n: i128 = match value {
                My::Int(i) if min >= 0 && i < 0 => {
                    i128::from(unsigned_of(i, 64 - (max as u64).leading_zeros()))
                }
                My::Int(i) => i128::from(i),
                My::UInt(u) => i128::from(u),
                My::Bytes(b) => i128::from(bits_value(&b)?),
                other => return unexpected(&other),
            };
            text(n.to_string())
        }
        ColumnKind::Bool => match value {
            My::Int(i) if p.unsigned => text(unsigned_of(i, 8).to_string()),
            My::Int(i) => text(i.to_string()),
            My::UInt(u) => text(u.to_string()),
            other => unexpected(&other),
        },
        ColumnKind::UnsignedBig => match value {
            My::Int(i) => text((i as u64).to_string()),
            My::UInt(u) => text(u.to_string()),
            My::Bytes(b) => text(bits_value(&b)?.to_string()),
            other => unexpected(&other),
        },
        ColumnKind::Decimal { .. } => match value {
            My::Bytes(b) => text(String::from_utf8(b).map_err(|e| e.to_string())?),
            other => unexpected(&other),
        },
        ColumnKind::Double => match value {
            My::Double(f) => text(f.to_string()),
            My::Float(f) => text(f64::from(f).to_string()),
            other => unexpected(&other),
        },
        ColumnKind::Float => match value {
            My::Float(f) => text(f.to_string()),
            My::Double(f) => text((f as f32).to_string()),
            other => unexpected(&other),
        },
        ColumnKind::TextIo => {
            let s = text_io(p, value)?;
            text(hex(s.as_bytes()))
        }
        ColumnKind::Text { .. } | ColumnKind::Json => match value {
            My::Bytes(b) => {
                let b = match &p.charset {
                    Some(cs) => recode(cs, &b)?,
                    None => b,
                };
                if std::str::from_utf8(&b).is_err() {
                    return Err("text is not valid UTF-8".into());
                }
                Ok(big_or_hex(b))
            }
            other => unexpected(&other),
        },
        ColumnKind::Blob { max_bytes, fixed } => match value {
            My::Bytes(mut b) => {
                // BINARY(n) is logged without its trailing zero bytes.
                if fixed && let Some(n) = max_bytes {
                    b.resize(b.len().max(n), 0);
                }
                Ok(big_or_hex(b))
            }
            other => unexpected(&other),
        },
        ColumnKind::DateTime { .. } => match value {
            My::Date(y, m, d, h, mi, s, us) => text(format!(
                "{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
            )),
            other => unexpected(&other),
        },
        ColumnKind::Timestamp { .. } => match value {
            // TIMESTAMP2 comes as `seconds[.micros]` since the epoch.
            My::Bytes(b) => text(String::from_utf8(b).map_err(|e| e.to_string())?),
            My::Int(secs) => text(secs.to_string()),
            other => unexpected(&other),
        },
        ColumnKind::Date => match value {
            My::Date(y, m, d, ..) => text(format!("{y:04}-{m:02}-{d:02}")),
            other => unexpected(&other),
        },
    }
}

fn big_or_hex(bytes: Vec<u8>) -> Cell {
    if bytes.len() > INLINE_VALUE_BYTES {
        Cell::Big(bytes)
    } else {
        Cell::Text(hex(&bytes))
    }
}

/// The text `CAST(col AS CHAR)` gives for an `ENUM`, `SET`, `YEAR` or `TIME` image.
fn text_io(p: &Physical, value: mysql::Value) -> Result<String, String> {
    use mysql::Value as My;
    let member = |i: usize| {
        p.members
            .get(i)
            .cloned()
            .ok_or_else(|| format!("member {} of {} is not in its type", i + 1, p.name))
    };
    match (p.data_type.as_str(), value) {
        // Number 0 is the empty string MariaDB stores for an invalid member.
        ("enum", My::Int(0)) => Ok(String::new()),
        ("enum", My::Int(i)) => member(usize::try_from(i - 1).map_err(|e| e.to_string())?),
        ("set", My::Bytes(bits)) => {
            let mut names = Vec::new();
            for (byte_index, byte) in bits.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        names.push(member(byte_index * 8 + bit)?);
                    }
                }
            }
            Ok(names.join(","))
        }
        // YEAR 0000 is logged as 0, which the parser turns into 1900 + 0.
        ("year", My::Bytes(b)) if b == b"1900" => Ok("0000".into()),
        ("year", My::Bytes(b)) => String::from_utf8(b).map_err(|e| e.to_string()),
        ("time", My::Time(negative, days, h, m, s, us)) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let mut out = format!(
                "{}{hours:02}:{m:02}:{s:02}",
                if negative { "-" } else { "" }
            );
            if p.fsp > 0 {
                let digits = format!("{us:06}");
                out.push('.');
                out.push_str(&digits[..(p.fsp as usize).min(6)]);
            }
            Ok(out)
        }
        (t, other) => Err(format!(
            "the binary log holds {other:?}, which Concord cannot read as a {t} value"
        )),
    }
}

/// One row change staged into `concord_pending`, as the trigger would have written it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Staged {
    pub(crate) table: i32,
    pub(crate) op: i16,
    pub(crate) at: i64,
    pub(crate) cols: Option<String>,
    pub(crate) key: String,
    pub(crate) old_key: Option<String>,
    pub(crate) values: Option<String>,
}

/// A row image decoded in the tracked table's column order (columns the image lacks,
/// added since it was written, are NULL).
pub(crate) fn decode_row(
    m: &Mapped,
    kinds: &[ColumnKind],
    mut take: impl FnMut(usize) -> Option<BinlogValue<'static>>,
    width: usize,
    recode: &mut Recode<'_>,
) -> Result<Vec<Cell>, String> {
    let mut cells = vec![Cell::Null; m.table.columns.len()];
    for (i, p) in m.physical.iter().enumerate().take(width) {
        let Some(position) = p.position else {
            continue;
        };
        let Some(value) = take(i) else { continue };
        cells[position] = column_text(p, kinds[position], value, recode)
            .map_err(|e| format!("column {:?}: {e}", p.name))?;
    }
    Ok(cells)
}

fn json(cells: &[Cell], positions: impl Iterator<Item = usize>) -> String {
    let items: Vec<Option<&str>> = positions.map(|p| cells[p].recorded()).collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

fn key_json(m: &Mapped, cells: &[Cell]) -> String {
    // A key is recorded whole even when large, as the trigger's key text is.
    let items: Vec<Option<String>> = m
        .table
        .key_columns
        .iter()
        .map(|&p| match &cells[p] {
            Cell::Null => None,
            Cell::Text(t) => Some(t.clone()),
            Cell::Big(b) => Some(hex(b)),
        })
        .collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

/// The pending row of an insert.
pub(crate) fn insert_row(m: &Mapped, at: i64, new: &[Cell]) -> Staged {
    Staged {
        table: m.table.id,
        op: OP_INSERT,
        at,
        cols: None,
        key: key_json(m, new),
        old_key: None,
        values: Some(json(new, 0..new.len())),
    }
}

/// The pending row of a delete.
pub(crate) fn delete_row(m: &Mapped, at: i64, old: &[Cell]) -> Staged {
    Staged {
        table: m.table.id,
        op: OP_DELETE,
        at,
        cols: None,
        key: key_json(m, old),
        old_key: None,
        values: None,
    }
}

/// The pending row of an update: the columns whose values differ between the images,
/// or a key change; `None` when it changed nothing.
pub(crate) fn update_row(m: &Mapped, at: i64, old: &[Cell], new: &[Cell]) -> Option<Staged> {
    let key = key_json(m, new);
    let old_key = key_json(m, old);
    if key != old_key {
        return Some(Staged {
            table: m.table.id,
            op: OP_REKEY,
            at,
            cols: None,
            key,
            old_key: Some(old_key),
            values: Some(json(new, 0..new.len())),
        });
    }
    let changed: Vec<String> = (0..new.len())
        .filter(|&p| old[p] != new[p])
        .map(|p| p.to_string())
        .collect();
    if changed.is_empty() {
        return None;
    }
    Some(Staged {
        table: m.table.id,
        op: OP_UPDATE,
        at,
        cols: Some(changed.join(",")),
        key,
        old_key: None,
        values: Some(json(new, 0..new.len())),
    })
}

/// Converts `bytes` of character set `charset` to UTF-8 through the server.
pub(crate) fn recode_on(conn: &mut Conn, charset: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    if !charset
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("unknown character set {charset:?}"));
    }
    let sql = format!(
        "SELECT CONVERT(CONVERT(UNHEX(?) USING {}) USING utf8mb4)",
        quote(charset).trim_matches('`')
    );
    let out: Option<Option<Vec<u8>>> = conn
        .exec_first(sql, (hex(bytes),))
        .map_err(|e| e.to_string())?;
    out.flatten()
        .ok_or_else(|| format!("the server cannot read {charset} text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_file_number_then_offset() {
        let p = |s: &str| BinlogPos::parse(s).unwrap();
        assert!(p("mysql-bin.000009:900") < p("mysql-bin.000010:4"));
        assert!(p("mysql-bin.000010:4") < p("mysql-bin.000010:5"));
        assert_eq!(p("a:b.1:7").file, "a:b.1");
        assert_eq!(p("mysql-bin.000001:42").to_string(), "mysql-bin.000001:42");
        assert!(BinlogPos::parse("nonsense").is_none());
    }

    #[test]
    fn enum_and_set_members_are_read_from_the_column_type() {
        assert_eq!(members("enum('a','b''c','')"), ["a", "b'c", ""]);
        assert_eq!(members("set('x,y')"), ["x,y"]);
    }

    fn physical(name: &str, data_type: &str, position: usize) -> Physical {
        Physical {
            position: Some(position),
            name: name.into(),
            data_type: data_type.into(),
            charset: None,
            members: members("enum('a','b')"),
            unsigned: false,
            fsp: 3,
        }
    }

    fn text_of(p: &Physical, kind: ColumnKind, v: mysql::Value) -> Cell {
        column_text(p, kind, BinlogValue::Value(v), &mut |_, b| Ok(b.to_vec())).unwrap()
    }

    #[test]
    fn images_read_as_the_triggers_text() {
        use mysql::Value as My;
        let io = ColumnKind::TextIo;
        let hex_of = |s: &str| Cell::Text(hex(s.as_bytes()));
        assert_eq!(
            text_of(&physical("e", "enum", 0), io, My::Int(2)),
            hex_of("b")
        );
        assert_eq!(
            text_of(&physical("e", "enum", 0), io, My::Int(0)),
            hex_of("")
        );
        let set = Physical {
            members: members("set('x','y','z')"),
            ..physical("s", "set", 0)
        };
        assert_eq!(text_of(&set, io, My::Bytes(vec![5])), hex_of("x,z"));
        let year = physical("y", "year", 0);
        assert_eq!(
            text_of(&year, io, My::Bytes(b"1900".to_vec())),
            hex_of("0000")
        );
        let time = physical("t", "time", 0);
        assert_eq!(
            text_of(&time, io, My::Time(true, 1, 2, 3, 4, 500_000)),
            hex_of("-26:03:04.500")
        );
        let binary = ColumnKind::Blob {
            max_bytes: Some(4),
            fixed: true,
        };
        assert_eq!(
            text_of(&physical("b", "binary", 0), binary, My::Bytes(vec![1])),
            Cell::Text("01000000".into())
        );
        let tiny = ColumnKind::Int { min: 0, max: 255 };
        assert_eq!(
            text_of(&physical("u", "tinyint", 0), tiny, My::Int(-1)),
            Cell::Text("255".into())
        );
        assert_eq!(
            text_of(
                &physical("u", "bigint", 0),
                ColumnKind::UnsignedBig,
                My::Int(-1)
            ),
            Cell::Text(u64::MAX.to_string())
        );
        let bad = column_text(
            &physical("e", "enum", 0),
            io,
            BinlogValue::Value(My::Int(9)),
            &mut |_, b| Ok(b.to_vec()),
        );
        assert!(bad.unwrap_err().contains("member 9"));
    }

    fn mapped() -> Mapped {
        let column = |name: &str| crate::schema::ColumnInfo {
            name: name.into(),
            type_name: "int".into(),
            kind: ColumnKind::Int {
                min: i64::from(i32::MIN),
                max: i64::from(i32::MAX),
            },
        };
        let table = TableInfo {
            id: 7,
            name: "t".into(),
            columns: vec![column("id"), column("v"), column("w")],
            key_columns: vec![0],
            position_of: [("id", 0), ("v", 1), ("w", 2)]
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect(),
        };
        Mapped {
            table: std::sync::Arc::new(table),
            physical: Vec::new(),
            start: None,
        }
    }

    #[test]
    fn an_update_records_the_columns_that_differ_or_a_key_change() {
        let m = mapped();
        let t = |s: &str| Cell::Text(s.into());
        let old = [t("1"), t("2"), Cell::Null];
        let same = update_row(&m, 0, &old, &old);
        assert!(same.is_none(), "an update that changed nothing");
        let w = update_row(&m, 0, &old, &[t("1"), t("2"), t("3")]).unwrap();
        assert_eq!((w.op, w.cols.as_deref()), (OP_UPDATE, Some("2")));
        assert_eq!(w.key, r#"["1"]"#);
        assert_eq!(w.values.as_deref(), Some(r#"["1","2","3"]"#));
        let rekey = update_row(&m, 0, &old, &[t("9"), t("2"), Cell::Null]).unwrap();
        assert_eq!(rekey.op, OP_REKEY);
        assert_eq!(rekey.old_key.as_deref(), Some(r#"["1"]"#));
        let big = [t("1"), Cell::Big(vec![1; 4]), Cell::Null];
        let staged = insert_row(&m, 0, &big);
        assert_eq!(staged.values.as_deref(), Some(r#"["1","big",null]"#));
    }

    #[test]
    fn integers_are_read_with_the_columns_signedness() {
        assert_eq!(unsigned_of(-1, 8), 255);
        assert_eq!(unsigned_of(-1, 24), 16_777_215);
        assert_eq!(unsigned_of(-1, 64), u64::MAX);
        assert_eq!(bits_value(&[2, 1]).unwrap(), 513);
    }
}
