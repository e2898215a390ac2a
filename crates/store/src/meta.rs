//! Reading a server store's identity from its metadata table.
//!
//! PostgreSQL and MySQL keep the same key/value metadata as text: `format` (the layout
//! version) and `node_id`. Both read it the same way, and both refuse metadata written
//! by a newer Concord rather than guessing at it.

use std::collections::HashMap;

use concord_core::NodeId;

use crate::StoreError;

/// The node id in `meta` (the rows of the metadata table named `table`), after
/// checking that its format is at most `supported`.
pub fn node_id_from_meta(
    meta: &HashMap<String, String>,
    table: &'static str,
    supported: i64,
) -> Result<NodeId, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { table, detail };
    let format: i64 = meta
        .get("format")
        .ok_or_else(|| corrupt("no format".into()))?
        .parse()
        .map_err(|e| corrupt(format!("format: {e}")))?;
    if format > supported {
        return Err(StoreError::UnsupportedFormat {
            found: format,
            supported,
        });
    }
    meta.get("node_id")
        .ok_or_else(|| corrupt("no node_id".into()))?
        .parse()
        .map_err(|e| corrupt(format!("node_id: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_of_a_newer_format_or_without_identity_is_refused_by_name() {
        let id = NodeId::from_bytes([7; 16]);
        let good = meta(&[("format", "1"), ("node_id", &id.to_string())]);
        assert_eq!(node_id_from_meta(&good, "m", 1).unwrap(), id);
        let newer = meta(&[("format", "2"), ("node_id", &id.to_string())]);
        assert!(matches!(
            node_id_from_meta(&newer, "m", 1),
            Err(StoreError::UnsupportedFormat {
                found: 2,
                supported: 1
            })
        ));
        let missing = meta(&[("format", "1")]);
        let err = node_id_from_meta(&missing, "m", 1).unwrap_err().to_string();
        assert!(err.contains("no node_id") && err.contains('m'), "{err}");
    }
}
