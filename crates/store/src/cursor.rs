//! Iterating over what a peer lacks, on top of any store's [`LogRead`].

use std::collections::VecDeque;

use concord_core::{Change, VersionVector};

use crate::{LogRead, StoreError};

/// Changes read per page.
const PAGE: usize = 1_000;

/// Iterates, in log (causal) order, over the changes a replica holding a target version
/// vector lacks. It reads a page at a time through the reader's own connection, so
/// memory stays flat whatever the log's length, and a store can keep applying while a
/// cursor reads.
pub struct ChangeCursor {
    reader: Box<dyn LogRead>,
    target: VersionVector,
    after: i64,
    buffer: VecDeque<Change>,
    done: bool,
}

impl ChangeCursor {
    /// A cursor over what `target` lacks. Fails with [`StoreError::Pruned`] naming the
    /// first change the target needs that is no longer in the log.
    pub fn new(mut reader: Box<dyn LogRead>, target: &VersionVector) -> Result<Self, StoreError> {
        let after = reader.start_for(target)?;
        Ok(Self {
            reader,
            target: target.clone(),
            after,
            buffer: VecDeque::new(),
            done: false,
        })
    }
}

impl Iterator for ChangeCursor {
    type Item = Result<Change, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(change) = self.buffer.pop_front() {
                return Some(Ok(change));
            }
            if self.done {
                return None;
            }
            match self.reader.read(self.after, &self.target, PAGE) {
                Ok(page) => {
                    if page.last_pos == self.after {
                        self.done = true;
                    }
                    self.after = page.last_pos;
                    self.buffer.extend(page.changes);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
