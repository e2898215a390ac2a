//! Users' row writes held back to be written set-based.
//!
//! Writing one statement per applied change costs a round trip to the server for every
//! row; a server store instead keeps consecutive writes of the same shape (table, kind,
//! column set) in a [`PendingRows`] and writes them with a few multi-row statements
//! when the shape changes, when the engine asks ([`crate::engine::ApplyBackend::
//! flush_rows`]) or past a size bound. The engine decides the other flush points (a key
//! written twice, a read of the user's row, commit), so the order of the writes is the
//! order a row-by-row apply would have used. The buffer only holds values; the SQL is
//! each store's dialect.

use std::sync::Arc;

use crate::engine::{RowWrite, TrackedTable};

/// What a write does to the user's row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WriteKind {
    /// `DELETE` by key.
    Delete,
    /// `UPDATE` of some columns by key.
    Update,
    /// `INSERT` of the key and some columns.
    Insert,
}

/// A run of writes of one shape, ready to be written.
pub struct RowRun<T, P> {
    /// The table written.
    pub table: Arc<T>,
    /// What the writes do.
    pub kind: WriteKind,
    /// The non-key columns written (empty for a delete).
    pub columns: Vec<usize>,
    /// The rows' parameters, row after row; each row is its key's values (in key order)
    /// then the values of `columns`.
    pub params: Vec<P>,
    /// Rows in the run.
    pub rows: usize,
}

impl<T, P> RowRun<T, P> {
    /// Parameters per row.
    pub fn width(&self, keys: usize) -> usize {
        keys + self.columns.len()
    }
}

/// Consecutive writes of one shape, not written yet.
pub struct PendingRows<T, P> {
    run: Option<RowRun<T, P>>,
    bytes: usize,
}

impl<T, P> Default for PendingRows<T, P> {
    fn default() -> Self {
        PendingRows {
            run: None,
            bytes: 0,
        }
    }
}

impl<T: TrackedTable, P> PendingRows<T, P> {
    /// Whether a write of this shape can join the rows held (or none are held).
    pub fn accepts(&self, table: &T, kind: WriteKind, columns: &[usize]) -> bool {
        match &self.run {
            None => true,
            Some(run) => run.table.id() == table.id() && run.kind == kind && run.columns == columns,
        }
    }

    /// Whether what is held should be written out now, so memory stays flat: past
    /// [`PendingRows::FLUSH_ROWS`] rows or [`PendingRows::FLUSH_BYTES`] bytes (the same
    /// bound for every store that holds rows back).
    pub fn is_full(&self) -> bool {
        self.rows() >= Self::FLUSH_ROWS || self.bytes >= Self::FLUSH_BYTES
    }

    /// Rows held past which they are written out.
    pub const FLUSH_ROWS: usize = 8_192;
    /// Bytes of values held past which they are written out.
    pub const FLUSH_BYTES: usize = 16 << 20;

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.rows)
    }

    /// Approximate bytes held (as measured by the caller's `size`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a write; the caller checked [`PendingRows::accepts`]. `table` gives the
    /// shared description of the table written, asked only when a run starts (`false`
    /// if it has none); `size` is a parameter's approximate size.
    pub fn push(
        &mut self,
        table: impl FnOnce() -> Option<Arc<T>>,
        write: RowWrite<'_, P>,
        size: impl Fn(&P) -> usize,
    ) -> bool
    where
        P: Clone,
    {
        let (kind, columns, key, values) = write.parts();
        let run = match &mut self.run {
            Some(run) => run,
            None => {
                let Some(table) = table() else {
                    return false;
                };
                self.run.insert(RowRun {
                    table,
                    kind,
                    columns: columns.to_vec(),
                    params: Vec::new(),
                    rows: 0,
                })
            }
        };
        for p in key {
            self.bytes += size(p);
            run.params.push(p.clone());
        }
        for p in values {
            self.bytes += size(p);
            run.params.push((*p).clone());
        }
        run.rows += 1;
        true
    }

    /// Takes the rows held, leaving none.
    pub fn take(&mut self) -> Option<RowRun<T, P>> {
        self.bytes = 0;
        self.run.take()
    }

    /// Forgets the rows held (their transaction is gone).
    pub fn clear(&mut self) {
        self.take();
    }
}
