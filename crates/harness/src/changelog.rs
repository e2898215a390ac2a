//! Reading a node's change log, and the checks every fault test makes of it.
//!
//! Why here: the exact last-writer check ([`crate::model::check_last_writer`]) needs
//! every change to the shared rows with its versions, and every fault test gets them the
//! same way, from a SQLite change log through Concord's own [`concord_store::LogReader`] (the decoding
//! sync uses; the merge itself is predicted independently in [`crate::model`]). And
//! every test checks that each node logs each origin's changes exactly once: per origin
//! the entries are `min..=max` without holes or duplicates, `max` is what the node
//! holds, and `min` is above 1 only once the log reached its retention limit.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use concord_core::{Change, NodeId, Value, VersionVector};
use concord_store::LogRead;

use crate::model::{Key, LoggedChange, Version};

/// Every change in the log of the SQLite file `store` (a database, or a relay's store).
pub fn read_log(store: &Path) -> Result<Vec<Change>, String> {
    let mut reader = concord_sqlite::open_log(store).map_err(|e| e.to_string())?;
    let everything = VersionVector::new();
    let mut after = 0;
    let mut changes = Vec::new();
    loop {
        let page = reader
            .read(after, &everything, 10_000)
            .map_err(|e| e.to_string())?;
        if page.last_pos == after {
            return Ok(changes);
        }
        after = page.last_pos;
        changes.extend(page.changes);
    }
}

/// The changes to `shared` keys of table `t(id, v, n)` in `changes`, as the model reads
/// them; `writer_of` names the writer behind each origin.
pub fn shared_changes(
    changes: &[Change],
    writer_of: &HashMap<NodeId, usize>,
    shared: &Range<Key>,
) -> Result<Vec<LoggedChange>, String> {
    let version = |v: &concord_core::Version| Version {
        hlc: v.hlc.as_u64(),
        origin: u128::from_be_bytes(*v.origin.as_bytes()),
    };
    let mut out = Vec::new();
    for c in changes.iter().filter(|c| c.table == "t") {
        let key = match c.key.decode().map_err(|e| e.to_string())?.as_slice() {
            [Value::Integer(k)] => *k,
            other => return Err(format!("a key of t is not one integer: {other:?}")),
        };
        if !shared.contains(&key) {
            continue;
        }
        let writer = *writer_of
            .get(&c.origin)
            .ok_or_else(|| format!("key {key}: a change from unknown origin {}", c.origin))?;
        // A delete's columns are the clocks its writer held, not values it wrote.
        let written: &[concord_core::ColumnChange] = if c.is_delete() { &[] } else { &c.columns };
        let column = |name: &str| written.iter().find(|col| col.column == name);
        let v = match column("v") {
            None => None,
            Some(col) => match &col.value {
                Value::Text(s) => Some((s.clone(), version(&col.version))),
                other => return Err(format!("key {key}: v is {} in the log", other.kind())),
            },
        };
        let n = match column("n") {
            None => None,
            Some(col) => match &col.value {
                Value::Integer(x) => Some((*x, version(&col.version))),
                other => return Err(format!("key {key}: n is {} in the log", other.kind())),
            },
        };
        out.push(LoggedChange {
            key,
            writer,
            seq: c.seq,
            cl: c.causal_length.0,
            v,
            n,
        });
    }
    Ok(out)
}

/// Per origin (hex node id): how many log entries, the lowest and the highest sequence.
pub type LogCounts = BTreeMap<String, (u64, u64, u64)>;

/// The [`LogCounts`] of the SQLite file `store`.
pub fn sqlite_log_counts(store: &Path) -> Result<LogCounts, String> {
    let conn = rusqlite::Connection::open_with_flags(
        store,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: {e}", store.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare(
            "SELECT lower(hex(o.node_id)), count(*), min(l.seq), max(l.seq)
             FROM __concord_log l JOIN __concord_origins o ON o.id = l.origin
             GROUP BY o.node_id",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ),
            ))
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| e.to_string())
}

/// Checks that node `name` logs every change exactly once: per origin the entries are
/// `min..=max` without holes, `min` is 1 unless the log reached `retention` entries (it
/// was pruned), and the highest sequences are what the node `held` (its version
/// vector). `Ok(true)` if some origin's oldest entries were pruned.
pub fn check_log_counts(
    name: &str,
    counts: LogCounts,
    held: &BTreeMap<String, u64>,
    retention: u64,
) -> Result<bool, String> {
    let total: u64 = counts.values().map(|(c, _, _)| c).sum();
    let mut pruned = false;
    for (origin, (count, min, max)) in &counts {
        if *count != max - min + 1 {
            return Err(format!(
                "{name} logs {count} changes of origin {origin} for sequences {min}..={max}"
            ));
        }
        if *min != 1 && total < retention {
            return Err(format!(
                "{name}'s log of origin {origin} starts at {min} although the log never reached the retention limit"
            ));
        }
        pruned |= *min > 1;
    }
    let logged: BTreeMap<String, u64> = counts
        .into_iter()
        .map(|(o, (_, _, max))| (o, max))
        .collect();
    if &logged != held {
        return Err(format!(
            "{name}'s log differs from its version vector: logged {logged:?}, holds {held:?}"
        ));
    }
    Ok(pruned)
}

/// The check of [`check_log_counts`] for nodes that may have caught up from snapshots:
/// a node that adopted a snapshot holds changes it never logged, and drops the entries
/// below them, so an origin's entries may start anywhere, or be absent although the
/// node holds some of its changes. What still holds: per origin the entries are
/// contiguous, nothing is logged twice, the newest entry is what the node holds, and no
/// origin is logged that the node does not hold. `Ok(true)` if some origin's entries do
/// not start at 1 or are absent.
pub fn check_log_counts_with_snapshots(
    name: &str,
    counts: LogCounts,
    held: &BTreeMap<String, u64>,
) -> Result<bool, String> {
    let mut shortened = false;
    for (origin, (count, min, max)) in &counts {
        if *count != max - min + 1 {
            return Err(format!(
                "{name} logs {count} changes of origin {origin} for sequences {min}..={max}"
            ));
        }
        if held.get(origin) != Some(max) {
            return Err(format!(
                "{name} logs origin {origin} up to {max} but holds {:?} of it",
                held.get(origin)
            ));
        }
        shortened |= *min > 1;
    }
    shortened |= held
        .iter()
        .any(|(origin, &seq)| seq > 0 && !counts.contains_key(origin));
    Ok(shortened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(entries: &[(&str, (u64, u64, u64))]) -> LogCounts {
        entries.iter().map(|(o, c)| ((*o).to_owned(), *c)).collect()
    }

    fn held(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
        entries.iter().map(|(o, s)| ((*o).to_owned(), *s)).collect()
    }

    #[test]
    fn a_complete_log_passes_and_says_it_was_not_pruned() {
        let c = counts(&[("a", (3, 1, 3)), ("b", (2, 1, 2))]);
        assert_eq!(
            check_log_counts("n0", c, &held(&[("a", 3), ("b", 2)]), 100),
            Ok(false)
        );
    }

    #[test]
    fn holes_early_pruning_and_a_wrong_version_vector_fail() {
        let hole = counts(&[("a", (2, 1, 3))]);
        let e = check_log_counts("n0", hole, &held(&[("a", 3)]), 100).unwrap_err();
        assert!(e.contains("logs 2 changes of origin a"), "{e}");
        let pruned = counts(&[("a", (2, 2, 3))]);
        let e = check_log_counts("n0", pruned.clone(), &held(&[("a", 3)]), 100).unwrap_err();
        assert!(e.contains("starts at 2"), "{e}");
        assert_eq!(
            check_log_counts("n0", pruned, &held(&[("a", 3)]), 2),
            Ok(true)
        );
        let behind = counts(&[("a", (3, 1, 3))]);
        let e = check_log_counts("n0", behind, &held(&[("a", 4)]), 100).unwrap_err();
        assert!(e.contains("differs from its version vector"), "{e}");
    }

    #[test]
    fn after_snapshots_a_log_may_start_late_or_be_absent_but_never_has_holes() {
        let adopted = counts(&[("a", (2, 7, 8))]);
        assert_eq!(
            check_log_counts_with_snapshots("n0", adopted, &held(&[("a", 8), ("b", 4)])),
            Ok(true)
        );
        let whole = counts(&[("a", (3, 1, 3))]);
        assert_eq!(
            check_log_counts_with_snapshots("n0", whole, &held(&[("a", 3)])),
            Ok(false)
        );
        let hole = counts(&[("a", (2, 6, 8))]);
        let e = check_log_counts_with_snapshots("n0", hole, &held(&[("a", 8)])).unwrap_err();
        assert!(e.contains("logs 2 changes"), "{e}");
        let stale = counts(&[("a", (2, 7, 8))]);
        let e = check_log_counts_with_snapshots("n0", stale, &held(&[("a", 9)])).unwrap_err();
        assert!(e.contains("holds Some(9)"), "{e}");
        let unknown = counts(&[("c", (1, 1, 1))]);
        let e = check_log_counts_with_snapshots("n0", unknown, &held(&[])).unwrap_err();
        assert!(e.contains("holds None"), "{e}");
    }
}
