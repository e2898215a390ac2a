//! A table's rows as reconciliation items: what `concord verify` compares.
//!
//! Reconciliation reads a side's rows by ranges of *encoded* keys
//! ([`concord_core::PrimaryKey`]), many times, in that order. SQLite orders a table by
//! its key columns' values, which agrees with the encoding within one storage class but
//! not across them (SQLite interleaves integers and reals numerically), and it cannot
//! seek to an encoded bound. So the table is read once, each row's key encoded and its
//! values hashed ([`concord_store::values_hash`], as nodes hash rows for `verify`), into
//! an [`ItemSpill`] on disk that answers every range; memory stays flat whatever the
//! table's size.
//!
//! Any table with a primary key can be digested, tracked or not: comparing a restored
//! backup, or a file written while capture was off, is the point.

use std::path::Path;

use concord_core::reconcile::{Bound, ItemHash, ItemSource};
use concord_core::{PrimaryKey, Value};
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use concord_store::ItemSpill;

use crate::codec;
use crate::schema::{TableInfo, quote};

/// Why a table could not be digested or read.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The table cannot be compared (missing, no primary key, ...).
    #[error(transparent)]
    Table(#[from] concord_store::TrackError),
    /// SQLite failed.
    #[error("{0}")]
    Database(#[from] rusqlite::Error),
    /// A stored value or key could not be read as a Concord value.
    #[error("table {table:?}: {detail}")]
    Value {
        /// The table.
        table: String,
        /// What was wrong.
        detail: String,
    },
}

/// One table of one SQLite file, digested for reconciliation.
pub struct TableDigest {
    conn: Connection,
    table: TableInfo,
    items: ItemSpill,
}

impl TableDigest {
    /// Reads every row of `table` in the file at `path` once, recording its encoded key
    /// and a hash of its values (column names and values, in name order, so two files
    /// whose columns are declared in different orders still compare equal).
    pub fn build(path: &Path, table: &str) -> Result<Self, DigestError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let info = TableInfo::introspect_for_reading(&conn, table)?;
        let mut items = ItemSpill::new().map_err(|e| bad_spill(table, &e))?;
        let columns: Vec<String> = info.columns.iter().map(|c| quote(&c.name)).collect();
        let bad = |detail: String| DigestError::Value {
            table: table.to_owned(),
            detail,
        };
        {
            let mut read = conn.prepare(&format!(
                "SELECT {} FROM main.{}",
                columns.join(", "),
                quote(table)
            ))?;
            let mut cursor = read.query([])?;
            while let Some(row) = cursor.next()? {
                let mut values = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    values.push(codec::from_sql(row.get_ref(i)?).map_err(bad)?);
                }
                let key_values: Vec<Value> = info
                    .key_columns
                    .iter()
                    .map(|&p| values[p].clone())
                    .collect();
                let key = PrimaryKey::encode(&key_values).map_err(|e| bad(e.to_string()))?;
                let hash = concord_store::values_hash(
                    info.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .zip(values.iter()),
                );
                items
                    .add(key.as_bytes(), &hash)
                    .map_err(|e| bad_spill(table, &e))?;
            }
        }
        items.seal().map_err(|e| bad_spill(table, &e))?;
        Ok(Self {
            conn,
            table: info,
            items,
        })
    }

    /// How many rows the table holds.
    pub fn rows(&self) -> u64 {
        self.items.len()
    }

    /// The row with encoded key `key`, as column names and values, if the table holds it.
    pub fn row(&self, key: &[u8]) -> Result<Option<Vec<(String, Value)>>, DigestError> {
        let bad = |detail: String| DigestError::Value {
            table: self.table.name.clone(),
            detail,
        };
        let key_values = PrimaryKey::from_bytes(key.to_vec())
            .and_then(|k| k.decode())
            .map_err(|e| bad(e.to_string()))?;
        let columns: Vec<String> = self.table.columns.iter().map(|c| quote(&c.name)).collect();
        let sql = format!(
            "SELECT {} FROM main.{} WHERE {}",
            columns.join(", "),
            quote(&self.table.name),
            self.table.key_predicate(1)
        );
        let found = self
            .conn
            .query_row(
                &sql,
                params_from_iter(key_values.iter().map(codec::Sql)),
                |r| {
                    (0..columns.len())
                        .map(|i| r.get_ref(i).map(codec::from_sql))
                        .collect::<Result<Vec<_>, _>>()
                },
            )
            .optional()?;
        let Some(values) = found else {
            return Ok(None);
        };
        let values = values
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        Ok(Some(
            self.table
                .columns
                .iter()
                .map(|c| c.name.clone())
                .zip(values)
                .collect(),
        ))
    }
}

impl ItemSource for TableDigest {
    type Error = DigestError;

    fn scan(
        &mut self,
        from: &[u8],
        to: &Bound,
        visit: &mut dyn FnMut(&[u8], &ItemHash) -> bool,
    ) -> Result<(), DigestError> {
        let table = self.table.name.clone();
        self.items
            .scan(from, to, visit)
            .map_err(|e| bad_spill(&table, &e))
    }
}

fn bad_spill(table: &str, e: &concord_store::StoreError) -> DigestError {
    DigestError::Value {
        table: table.to_owned(),
        detail: format!("keeping its digest: {e}"),
    }
}
