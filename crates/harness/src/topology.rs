//! Links between nodes, and partitions of the network into two groups.
//!
//! Why groups: isolating one node is the partition everyone tests; a real network also
//! splits into islands that each keep more than one node (two racks, two sites, a hub
//! with some of its spokes). A partition here is described by one side of the cut,
//! `group`; every link with one end inside it and the other outside is partitioned,
//! links within a side keep working. In a three-node mesh every such cut isolates one
//! node ({0} | {1,2}); in a hub topology {hub, s0} | {s1, s2} leaves s1 and s2 each alone
//! but s0 still with the hub, which only groups can produce.
//!
//! The pure functions ([`crossing`], [`components`]) work on `(dialer, listener)` pairs
//! so the harness's own tests can check them without sockets.

use crate::proxy::Proxy;

/// A link: `dialer` dials `listener` through `proxy`.
#[derive(Debug)]
pub struct Link {
    /// The node whose `[[peers]] address` points at the proxy.
    pub dialer: usize,
    /// The node whose listener the proxy forwards to.
    pub listener: usize,
    /// The fault-injecting proxy in between.
    pub proxy: Proxy,
}

impl Link {
    /// Whether `node` is one end of the link.
    pub fn joins(&self, node: usize) -> bool {
        self.dialer == node || self.listener == node
    }

    /// The two ends.
    pub fn ends(&self) -> (usize, usize) {
        (self.dialer, self.listener)
    }
}

/// Indices of the links with exactly one end in `group`: the links a partition of
/// `group` from the rest must cut.
pub fn crossing(links: &[(usize, usize)], group: &[usize]) -> Vec<usize> {
    links
        .iter()
        .enumerate()
        .filter(|(_, (a, b))| group.contains(a) != group.contains(b))
        .map(|(i, _)| i)
        .collect()
}

/// A component label per node (`0..nodes`) over the links not listed in `cut`: two
/// nodes can exchange changes, directly or through others, exactly when their labels
/// are equal.
pub fn components(nodes: usize, links: &[(usize, usize)], cut: &[usize]) -> Vec<usize> {
    let mut label: Vec<usize> = (0..nodes).collect();
    // Few nodes: relabel until nothing changes.
    loop {
        let mut changed = false;
        for (i, (a, b)) in links.iter().enumerate() {
            if cut.contains(&i) || *a >= nodes || *b >= nodes {
                continue;
            }
            let low = label[*a].min(label[*b]);
            for end in [*a, *b] {
                if label[end] != low {
                    label[end] = low;
                    changed = true;
                }
            }
        }
        if !changed {
            return label;
        }
    }
}

/// Partitions `group` from the other nodes: every link crossing the cut is partitioned
/// (open connections closed, new ones refused) until healed. Returns the indices of the
/// links cut.
pub fn partition_groups(links: &[Link], group: &[usize]) -> Vec<usize> {
    let pairs: Vec<(usize, usize)> = links.iter().map(Link::ends).collect();
    let cut = crossing(&pairs, group);
    for &i in &cut {
        links[i].proxy.partition();
    }
    cut
}

/// Heals the links listed (see [`Proxy::heal`]).
pub fn heal(links: &[Link], which: &[usize]) {
    for &i in which {
        links[i].proxy.heal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: [(usize, usize); 3] = [(0, 1), (0, 2), (1, 2)];
    /// Spokes 0, 1, 2 dial hub 3.
    const HUB: [(usize, usize); 3] = [(0, 3), (1, 3), (2, 3)];

    #[test]
    fn a_cut_partitions_exactly_the_links_between_the_groups() {
        assert_eq!(crossing(&MESH, &[0]), vec![0, 1]);
        assert_eq!(crossing(&MESH, &[0, 1]), vec![1, 2]);
        assert_eq!(crossing(&MESH, &[]), Vec::<usize>::new());
        assert_eq!(crossing(&HUB, &[3, 0]), vec![1, 2]);
        assert_eq!(crossing(&HUB, &[3]), vec![0, 1, 2]);
    }

    #[test]
    fn components_follow_the_links_left_standing() {
        // {0} | {1,2} in a mesh: 1 and 2 still talk.
        assert_eq!(components(3, &MESH, &crossing(&MESH, &[0])), vec![0, 1, 1]);
        // The hub with spoke 0 | spokes 1 and 2: 1 and 2 are each alone (no direct link).
        assert_eq!(
            components(4, &HUB, &crossing(&HUB, &[3, 0])),
            vec![0, 1, 2, 0]
        );
        assert_eq!(components(4, &HUB, &[]), vec![0, 0, 0, 0]);
    }
}
