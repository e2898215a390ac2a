//! Bringing MySQL/MariaDB databases into agreement without a network.
//!
//! [`pull`] ships what one store lacks from another, exactly as a network session
//! would: the source's log, filtered by the destination's version vector, streamed into
//! the destination's apply path.

use crate::apply::ApplyReport;
use crate::error::ApplyError;
use crate::store::MyStore;

/// Applies to `destination` every change `source` holds that `destination` lacks.
/// Pending local writes of both are captured first.
pub fn pull(source: &mut MyStore, destination: &mut MyStore) -> Result<ApplyReport, ApplyError> {
    source.capture()?;
    let wanted = destination.version_vector().clone();
    let cursor = source.changes_for(&wanted)?;
    destination.apply_changes(cursor)
}
