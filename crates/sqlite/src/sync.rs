//! Bringing SQLite files into agreement without a network.
//!
//! [`pull`] ships what one store lacks from another, exactly as a network session
//! would: the source's log, filtered by the destination's version vector, streamed into
//! the destination's apply path. [`merge_all`] does it for any number of files, first
//! gathering everything into the first store and then handing it back to the others, so
//! every file ends holding every change.

use crate::apply::ApplyReport;
use crate::error::ApplyError;
use crate::store::SqliteStore;

/// Applies to `destination` every change `source` holds that `destination` lacks.
/// Pending local writes of both are captured first.
pub fn pull(
    source: &mut SqliteStore,
    destination: &mut SqliteStore,
) -> Result<ApplyReport, ApplyError> {
    source.capture()?;
    let wanted = destination.version_vector().clone();
    let cursor = source.changes_for(&wanted)?;
    destination.apply_changes(cursor)
}

/// Merges every store with every other. Returns one report per store, in order, of what
/// it received.
pub fn merge_all(stores: &mut [SqliteStore]) -> Result<Vec<ApplyReport>, ApplyError> {
    let mut reports = vec![ApplyReport::default(); stores.len()];
    let Some((first, rest)) = stores.split_first_mut() else {
        return Ok(reports);
    };
    for other in rest.iter_mut() {
        let r = pull(other, first)?;
        reports[0].absorb(&r);
    }
    for (i, other) in rest.iter_mut().enumerate() {
        let r = pull(first, other)?;
        reports[i + 1].absorb(&r);
    }
    Ok(reports)
}
