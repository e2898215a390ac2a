//! What tracking tables needs the same way in every store: the order to track them in.
//!
//! Rows of a table referenced by a foreign key must reach a replica before the rows
//! that reference them, or a replica enforcing the key refuses them; so tables are
//! tracked (and backfilled) parents first. Each store finds its foreign keys in its own
//! catalog and hands the pairs here.

/// The order in which to track `count` tables so that a table referenced by a foreign
/// key of another comes first: parents before children, so their backfilled rows reach
/// a replica before the rows that reference them. `references` holds `(child, parent)`
/// index pairs. Tables that reference each other, directly or through others (a cycle),
/// cannot all come first: among them the given order is kept, and so is the given order
/// of tables unrelated to each other. A self-reference is ignored (one table's rows are
/// backfilled in the order the table is read).
pub fn parents_first(count: usize, references: &[(usize, usize)]) -> Vec<usize> {
    // reach[a][b]: b can be reached from a by following references (child to parent).
    let reach: Vec<Vec<bool>> = (0..count)
        .map(|start| {
            let mut seen = vec![false; count];
            let mut stack = vec![start];
            while let Some(t) = stack.pop() {
                for &(child, parent) in references {
                    if child == t && parent < count && !seen[parent] {
                        seen[parent] = true;
                        stack.push(parent);
                    }
                }
            }
            seen
        })
        .collect();
    // A parent must come first unless it is in a cycle with the child.
    let waits_for = |child: usize, parent: usize| {
        child != parent && reach[child][parent] && !reach[parent][child]
    };
    let mut placed = vec![false; count];
    let mut order = Vec::with_capacity(count);
    while order.len() < count {
        let next =
            (0..count).find(|&t| !placed[t] && (0..count).all(|p| placed[p] || !waits_for(t, p)));
        // Some table is always ready: "waits for" is a strict order (acyclic).
        let Some(next) = next.or_else(|| (0..count).find(|&t| !placed[t])) else {
            break;
        };
        placed[next] = true;
        order.push(next);
    }
    order
}

/// Warns that tracked `table` references `parent`, which is not tracked: replicas that
/// enforce the foreign key will refuse its rows.
pub fn warn_untracked_parent(table: &str, parent: &str) {
    tracing::warn!(
        table = %table,
        references = %parent,
        "a tracked table references a table that is not tracked; replicas enforcing the foreign key will refuse its rows"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_tracked_before_the_tables_referencing_them() {
        // orders -> customers, lines -> orders, lines -> products; given child first.
        let order = parents_first(4, &[(0, 1), (2, 0), (2, 3)]);
        assert_eq!(order, vec![1, 0, 3, 2]);
        // No references: the given order.
        assert_eq!(parents_first(3, &[]), vec![0, 1, 2]);
        // A self-reference is ignored.
        assert_eq!(parents_first(2, &[(0, 0), (0, 1)]), vec![1, 0]);
        // A cycle (0 <-> 1) keeps its given order; 2 references the cycle and follows
        // it, 3 is referenced by the cycle and precedes it.
        assert_eq!(
            parents_first(4, &[(2, 0), (0, 1), (1, 0), (1, 3)]),
            vec![3, 0, 1, 2]
        );
    }
}
