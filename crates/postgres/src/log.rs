//! PostgreSQL's part in reading the change log: [`LogSource`] over its own connection.
//!
//! Decoding and paging are [`concord_store::LogReader`]'s, the same for every store.
//! Positions come from a sequence allocated under Concord's lock, so they are also
//! commit order: a reader never finds a smaller position appear after it read a larger
//! one. Rows are streamed from the server (`query_raw`), never collected.

use std::collections::HashMap;

use concord_core::{NodeId, Value};
use postgres::Statement;
use postgres::fallible_iterator::FallibleIterator;

use crate::driver::Pg;
use crate::schema::{TableInfo, quote};
use crate::store::{Connection, connect};
use crate::types::{Param, Raw, decode, sql_refs, to_param};
use concord_store::engine::quoted_keys;
use concord_store::{
    LogSource, RawEntry, RowPage, SnapshotSource, StoreError, TableColumns, in_key_order,
    keyset_page_sql, rows_by_keys_sql,
};

/// PostgreSQL's change log, read through its own connection.
pub(crate) struct PgLog {
    client: Connection,
    /// Prepared statements, by SQL.
    statements: HashMap<String, Statement>,
    /// Tracked tables as introspected, by id, with the statement that reads a row by
    /// key (for snapshots).
    tables: HashMap<i64, (TableInfo, Statement)>,
}

/// Opens a reader on the change log of the database at `url`.
pub(crate) fn open_log(url: &str) -> Result<concord_store::LogReader<PgLog>, StoreError> {
    concord_store::LogReader::new(PgLog {
        client: connect(url)?,
        statements: HashMap::new(),
        tables: HashMap::new(),
    })
}

/// Opens a snapshot of the rows of the database at `url` (see
/// [`concord_store::SnapshotReader`]).
pub(crate) fn open_snapshot(
    url: &str,
    node: NodeId,
) -> Result<concord_store::SnapshotReader<PgLog>, StoreError> {
    concord_store::SnapshotReader::begin(
        PgLog {
            client: connect(url)?,
            statements: HashMap::new(),
            tables: HashMap::new(),
        },
        node,
    )
}

impl PgLog {
    /// Introspects the tracked table `id`, once.
    fn table(&mut self, id: i64) -> Result<(), StoreError> {
        if !self.tables.contains_key(&id) {
            let row = self.client.query_one(
                "SELECT quote_ident(schema_name) || '.' || quote_ident(name) FROM concord.tables WHERE id = $1",
                &[&(id as i32)],
            )?;
            let name: String = row.get(0);
            let info = TableInfo::introspect(&mut self.client, &name).map_err(|e| {
                StoreError::Capture {
                    table: name.clone(),
                    key: "-".into(),
                    detail: concord_store::error_chain(&e),
                }
            })?;
            let sql = format!(
                "SELECT {} FROM {} WHERE {}",
                select_list(&info),
                info.qualified(),
                info.key_predicate(1)
            );
            let statement = self.client.prepare(&sql)?;
            self.tables.insert(id, (info, statement));
        }
        Ok(())
    }
}

impl SnapshotSource for PgLog {
    fn begin_snapshot(&mut self) -> Result<(), StoreError> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        Ok(())
    }

    fn end_snapshot(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("COMMIT")?;
        Ok(())
    }

    fn row_values(&mut self, table: i64, key: &[Value]) -> Result<Option<Vec<Value>>, StoreError> {
        self.table(table)?;
        let PgLog { client, tables, .. } = self;
        let Some((info, statement)) = tables.get(&table) else {
            return Ok(None);
        };
        let params = key_params(info, key)?;
        let refs: Vec<&Param> = params.iter().collect();
        let Some(row) = client.query_opt(statement, &sql_refs(&refs))? else {
            return Ok(None);
        };
        decode_row(info, &row, key).map(Some)
    }

    fn rows_values(
        &mut self,
        table: i64,
        keys: &[Vec<Value>],
    ) -> Result<Vec<Option<Vec<Value>>>, StoreError> {
        self.table(table)?;
        let PgLog { client, tables, .. } = self;
        let Some((info, _)) = tables.get(&table) else {
            return Ok(vec![None; keys.len()]);
        };
        let width = info.key_columns.len();
        let tuples: Vec<String> = (0..keys.len())
            .map(|row| {
                let params: Vec<String> = info
                    .key_columns
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| info.placeholder(p, row * width + i + 1))
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = rows_by_keys_sql(
            &select_list(info),
            &info.qualified(),
            &quoted_keys(info, quote),
            &tuples,
        );
        let mut params = Vec::with_capacity(keys.len() * width);
        for key in keys {
            params.extend(key_params(info, key)?);
        }
        let refs: Vec<&Param> = params.iter().collect();
        let found = client
            .query(&sql, &sql_refs(&refs))?
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
        let PgLog { client, tables, .. } = self;
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
            |i| info.placeholder(info.key_columns[i], i + 1),
            limit,
        );
        let params = key_params(info, after.unwrap_or(&[]))?;
        let refs: Vec<&Param> = params.iter().collect();
        let rows = client
            .query(&sql, &sql_refs(&refs))?
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

/// Every column of `info`, as the snapshot reads it.
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
fn key_params(info: &TableInfo, key: &[Value]) -> Result<Vec<Param>, StoreError> {
    info.key_columns
        .iter()
        .zip(key)
        .map(|(&index, value)| to_param(info.columns[index].kind, value))
        .collect::<Result<Vec<Param>, _>>()
        .map_err(|m| row_error(info, key, m.0))
}

/// A row read with [`select_list`], every column decoded.
fn decode_row(
    info: &TableInfo,
    row: &postgres::Row,
    key: &[Value],
) -> Result<Vec<Value>, StoreError> {
    info.columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let raw = row
                .try_get::<_, Raw<'_>>(i)
                .map_err(|e| row_error(info, key, e.to_string()))?;
            decode(c.kind, raw.0)
                .map_err(|d| row_error(info, key, format!("column {:?}: {d}", c.name)))
        })
        .collect()
}

impl LogSource for PgLog {
    type Sql<'a> = Pg<'a>;

    fn sql(&mut self) -> Pg<'_> {
        Pg {
            client: &mut self.client,
            statements: &mut self.statements,
        }
    }

    fn columns_signature(&mut self) -> Result<Option<String>, StoreError> {
        let signature: Option<String> = self
            .client
            .query_one(
                "SELECT string_agg(tbl || '.' || position || '=' || name, ',' ORDER BY tbl, position) \
                 FROM concord.columns",
                &[],
            )?
            .get(0);
        Ok(Some(signature.unwrap_or_default()))
    }

    fn log_table(&self) -> &'static str {
        "concord.log"
    }

    fn tables(&mut self) -> Result<Vec<TableColumns>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT t.id, CASE WHEN t.schema_name = 'public' THEN t.name
                                   ELSE t.schema_name || '.' || t.name END,
                        coalesce(array_agg(c.name ORDER BY c.position)
                                 FILTER (WHERE c.name IS NOT NULL), '{}')
                 FROM concord.tables t LEFT JOIN concord.columns c ON c.tbl = t.id
                 GROUP BY t.id",
                &[],
            )?
            .into_iter()
            .map(|row| TableColumns {
                id: i64::from(row.get::<_, i32>(0)),
                name: row.get(1),
                columns: row.get(2),
            })
            .collect())
    }

    fn scan(
        &mut self,
        after: i64,
        limit: usize,
        bodies: bool,
        visit: &mut dyn FnMut(RawEntry<'_>) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let limit = limit as i64;
        let params: [&(dyn postgres::types::ToSql + Sync); 3] = [&after, &limit, &bodies];
        let mut rows = self.client.query_raw(
            "SELECT pos, origin, seq, hlc, tbl, pk, cl,
                    CASE WHEN $3 THEN body ELSE '\\x'::bytea END, txn_end
             FROM concord.log WHERE pos > $1 ORDER BY pos LIMIT $2",
            params,
        )?;
        while let Some(r) = rows.next()? {
            let entry = RawEntry {
                pos: r.get(0),
                origin: r.get::<_, i32>(1) as u32,
                seq: r.get::<_, i64>(2) as u64,
                hlc: r.get::<_, i64>(3) as u64,
                table: i64::from(r.get::<_, i32>(4)),
                key: r.get(5),
                causal_length: r.get::<_, i64>(6) as u64,
                body: r.get(7),
                txn_end: r.get(8),
            };
            if !visit(entry)? {
                break;
            }
        }
        Ok(())
    }
}
