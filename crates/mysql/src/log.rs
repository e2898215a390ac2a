//! MySQL's and MariaDB's part in reading the change log: [`LogSource`] over its own
//! connection.
//!
//! Decoding and paging are [`concord_store::LogReader`]'s, the same for every store.
//! Positions come from a counter allocated under Concord's lock, so they are also
//! commit order: a reader never finds a smaller position appear after it read a larger
//! one. Rows are streamed from the server (`exec_iter`), never collected.

use std::collections::HashMap;

use concord_core::{NodeId, Value};
use mysql::Conn;
use mysql::prelude::Queryable;

use crate::driver::MySql;
use crate::schema::{TableInfo, quote};
use crate::store::connect;
use crate::types::{parse_read, to_param};
use concord_store::engine::quoted_keys;
use concord_store::{
    LogSource, RawEntry, RowPage, SnapshotSource, StoreError, TableColumns, in_key_order,
    keyset_page_sql, rows_by_keys_sql,
};

/// MySQL's change log, read through its own connection.
pub(crate) struct MyLog {
    conn: Conn,
    /// Tracked tables as introspected, by id, with the statement that reads a row by
    /// key as text (for snapshots).
    tables: HashMap<i64, (TableInfo, String)>,
}

/// Opens a reader on the change log of the database at `url`.
pub(crate) fn open_log(url: &str) -> Result<concord_store::LogReader<MyLog>, StoreError> {
    concord_store::LogReader::new(MyLog {
        conn: connect(url)?,
        tables: HashMap::new(),
    })
}

/// Opens a snapshot of the rows of the database at `url` (see
/// [`concord_store::SnapshotReader`]).
pub(crate) fn open_snapshot(
    url: &str,
    node: NodeId,
) -> Result<concord_store::SnapshotReader<MyLog>, StoreError> {
    concord_store::SnapshotReader::begin(
        MyLog {
            conn: connect(url)?,
            tables: HashMap::new(),
        },
        node,
    )
}

impl MyLog {
    /// Introspects the tracked table `id`, once.
    fn table(&mut self, id: i64) -> Result<(), StoreError> {
        if self.tables.contains_key(&id) {
            return Ok(());
        }
        let name: Option<String> = self
            .conn
            .exec_first("SELECT name FROM concord_tables WHERE id = ?", (id,))?;
        let name = name.ok_or(StoreError::Corrupt {
            table: "concord_tables",
            detail: format!("no table {id}"),
        })?;
        let info =
            TableInfo::introspect(&mut self.conn, &name).map_err(|e| StoreError::Capture {
                table: name.clone(),
                key: "-".into(),
                detail: concord_store::error_chain(&e),
            })?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            select_list(&info),
            info.qualified(),
            info.key_predicate()
        );
        self.tables.insert(id, (info, sql));
        Ok(())
    }
}

impl SnapshotSource for MyLog {
    fn begin_snapshot(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_drop("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
        self.conn
            .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")?;
        Ok(())
    }

    fn end_snapshot(&mut self) -> Result<(), StoreError> {
        self.conn.query_drop("COMMIT")?;
        Ok(())
    }

    fn row_values(&mut self, table: i64, key: &[Value]) -> Result<Option<Vec<Value>>, StoreError> {
        self.table(table)?;
        let MyLog { conn, tables } = self;
        let Some((info, sql)) = tables.get(&table) else {
            return Ok(None);
        };
        let params = key_params(info, key)?;
        let row: Option<mysql::Row> =
            conn.exec_first(sql.as_str(), mysql::Params::Positional(params))?;
        row.map(|row| decode_row(info, &row, key)).transpose()
    }

    fn rows_values(
        &mut self,
        table: i64,
        keys: &[Vec<Value>],
    ) -> Result<Vec<Option<Vec<Value>>>, StoreError> {
        self.table(table)?;
        let MyLog { conn, tables } = self;
        let Some((info, _)) = tables.get(&table) else {
            return Ok(vec![None; keys.len()]);
        };
        let tuple = format!("({})", vec!["?"; info.key_columns.len()].join(", "));
        let tuples = vec![tuple; keys.len()];
        let sql = rows_by_keys_sql(
            &select_list(info),
            &info.qualified(),
            &quoted_keys(info, quote),
            &tuples,
        );
        let mut params = Vec::with_capacity(keys.len() * info.key_columns.len());
        for key in keys {
            params.extend(key_params(info, key)?);
        }
        let rows: Vec<mysql::Row> = conn.exec(sql, mysql::Params::Positional(params))?;
        let found = rows
            .iter()
            .map(|row| decode_row(info, row, &[]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(in_key_order(keys, &info.key_columns, found))
    }

    fn user_rows(
        &mut self,
        table: i64,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<RowPage, StoreError> {
        self.table(table)?;
        let MyLog { conn, tables } = self;
        let Some((info, _)) = tables.get(&table) else {
            return Ok(RowPage {
                columns: Vec::new(),
                key: Vec::new(),
                rows: Vec::new(),
            });
        };
        let sql = keyset_page_sql(
            &select_list(info),
            &info.qualified(),
            &quoted_keys(info, quote),
            after.is_some(),
            |_| "?".to_owned(),
            limit,
        );
        let params = key_params(info, after.unwrap_or(&[]))?;
        let rows: Vec<mysql::Row> = if params.is_empty() {
            conn.query(sql)?
        } else {
            conn.exec(sql, mysql::Params::Positional(params))?
        };
        let rows = rows
            .iter()
            .map(|row| decode_row(info, row, &[]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RowPage {
            columns: info.columns.iter().map(|c| c.name.clone()).collect(),
            key: info.key_columns.clone(),
            rows,
        })
    }
}

/// Every column of `info` as the snapshot reads it ([`crate::types::parse_read`]).
fn select_list(info: &TableInfo) -> String {
    info.columns
        .iter()
        .map(|c| c.kind.read_expr(&quote(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row_error(info: &TableInfo, key: &[Value], detail: String) -> StoreError {
    StoreError::Capture {
        table: info.name.clone(),
        key: format!("{key:?}"),
        detail,
    }
}

/// `key`'s values as parameters for `info`'s key columns.
fn key_params(info: &TableInfo, key: &[Value]) -> Result<Vec<mysql::Value>, StoreError> {
    info.key_columns
        .iter()
        .zip(key)
        .map(|(&index, value)| to_param(info.columns[index].kind, value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| row_error(info, key, m.0))
}

/// A row read with [`select_list`], every column parsed.
fn decode_row(info: &TableInfo, row: &mysql::Row, key: &[Value]) -> Result<Vec<Value>, StoreError> {
    info.columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let bytes: Option<Vec<u8>> = row
                .get_opt(i)
                .transpose()
                .map_err(|e| row_error(info, key, e.to_string()))?
                .flatten();
            parse_read(c.kind, bytes)
                .map_err(|d| row_error(info, key, format!("column {:?}: {d}", c.name)))
        })
        .collect()
}

impl LogSource for MyLog {
    type Sql<'a> = MySql<'a>;

    fn sql(&mut self) -> MySql<'_> {
        MySql {
            conn: &mut self.conn,
            packet_room: usize::MAX,
        }
    }

    fn columns_signature(&mut self) -> Result<Option<String>, StoreError> {
        // GROUP_CONCAT is cut at `group_concat_max_len`: a count and a checksum instead.
        let row: Option<(u64, Option<u64>)> = self.conn.query_first(
            "SELECT COUNT(*), BIT_XOR(CRC32(CONCAT(tbl, '.', position, '=', name))) \
             FROM concord_columns",
        )?;
        Ok(Some(format!("{row:?}")))
    }

    fn log_table(&self) -> &'static str {
        "concord_log"
    }

    fn tables(&mut self) -> Result<Vec<TableColumns>, StoreError> {
        let tables: Vec<(i32, String)> = self.conn.query("SELECT id, name FROM concord_tables")?;
        let mut out = Vec::with_capacity(tables.len());
        for (id, name) in tables {
            let columns: Vec<String> = self.conn.exec(
                "SELECT name FROM concord_columns WHERE tbl = ? ORDER BY position",
                (id,),
            )?;
            out.push(TableColumns {
                id: i64::from(id),
                name,
                columns,
            });
        }
        Ok(out)
    }

    fn scan(
        &mut self,
        after: i64,
        limit: usize,
        bodies: bool,
        visit: &mut dyn FnMut(RawEntry<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        type Entry = (i64, i32, i64, i64, i32, Vec<u8>, i64, Vec<u8>, bool);
        let rows = self.conn.exec_iter(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl, IF(?, body, ''), txn_end FROM concord_log
             WHERE pos > ? ORDER BY pos LIMIT ?",
            (bodies, after, limit as i64),
        )?;
        for row in rows {
            let (pos, origin, seq, hlc, table, key, cl, body, txn_end): Entry =
                mysql::from_row_opt(row?).map_err(|e| StoreError::Corrupt {
                    table: "concord_log",
                    detail: e.to_string(),
                })?;
            let entry = RawEntry {
                pos,
                origin: origin as u32,
                seq: seq as u64,
                hlc: hlc as u64,
                table: i64::from(table),
                key: &key,
                causal_length: cl as u64,
                body: &body,
                txn_end,
            };
            if !visit(entry)? {
                break;
            }
        }
        Ok(())
    }
}
