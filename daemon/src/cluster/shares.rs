//! Reserved concurrency split across the cluster's live nodes.
//!
//! A function's reserved concurrency N is a cluster-wide figure, but each
//! node admits invocations on its own (no call to PostgreSQL on the invoke
//! path). So each node enforces a share of N: with `live` nodes (heartbeat
//! rows younger than [`MEMBER_EXPIRY`]) ordered by node id, the node of
//! rank `r` gets `floor(N / live)`, plus one when `r < N mod live`; and at
//! least 1 when N > 0, so that a function reserved below the node count
//! stays invokable through whichever node its tenant is routed to. The
//! approximation: the shares sum to N when N >= live; when 0 < N < live,
//! up to `live` invocations may run at once cluster-wide (one per node);
//! N = 0 throttles on every node. Membership is re-read after every
//! heartbeat, so shares follow a node's death (after [`MEMBER_EXPIRY`]) and
//! return; a node that cannot reach PostgreSQL keeps its last share.

use std::sync::RwLock;
use std::time::Duration;

/// How long after its last heartbeat a node stops counting as live.
pub const MEMBER_EXPIRY: Duration = Duration::from_secs(6);

/// Where this node stands among the live nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Its position among the live nodes, ordered by node id.
    pub rank: usize,
    /// How many nodes are live (this one included).
    pub live: usize,
}

/// This node's share of `reserved` at `placement` (see the module's text).
pub fn share(reserved: u32, placement: Placement) -> u32 {
    if reserved == 0 {
        return 0;
    }
    let live = placement.live.max(1) as u32;
    let extra = u32::from((placement.rank as u32) < reserved % live);
    (reserved / live + extra).max(1)
}

/// This node's last known [`Placement`]; `None` until membership was read
/// once (the node then enforces the whole reservation).
#[derive(Debug, Default)]
pub struct Membership {
    last: RwLock<Option<Placement>>,
}

impl Membership {
    /// The placement in force.
    pub fn placement(&self) -> Option<Placement> {
        *self.last.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the live nodes `live` (ids, any order) as read from the
    /// registry. Ignored when `node` is not among them (its own heartbeat
    /// was not written): the last placement stays. Returns whether the
    /// placement changed.
    pub fn update(&self, node: &str, live: &[String]) -> bool {
        let mut ids: Vec<&str> = live.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let Some(rank) = ids.iter().position(|n| *n == node) else {
            return false;
        };
        let new = Some(Placement {
            rank,
            live: ids.len(),
        });
        let mut last = self.last.write().unwrap_or_else(|p| p.into_inner());
        let changed = *last != new;
        *last = new;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(reserved: u32, live: usize) -> Vec<u32> {
        (0..live)
            .map(|rank| share(reserved, Placement { rank, live }))
            .collect()
    }

    #[test]
    fn shares_sum_to_the_reservation_when_it_covers_every_node() {
        assert_eq!(all(5, 3), [2, 2, 1]);
        assert_eq!(all(5, 2), [3, 2]);
        assert_eq!(all(6, 3), [2, 2, 2]);
        assert_eq!(all(100, 1), [100]);
        for n in 3..50 {
            for live in 1..=3 {
                assert_eq!(all(n, live).iter().sum::<u32>(), n);
            }
        }
    }

    #[test]
    fn a_small_reservation_stays_invokable_on_every_node_and_zero_throttles() {
        assert_eq!(all(1, 3), [1, 1, 1]);
        assert_eq!(all(2, 3), [1, 1, 1]);
        assert_eq!(all(0, 3), [0, 0, 0]);
    }

    #[test]
    fn membership_ranks_by_id_and_keeps_the_last_without_this_node() {
        let m = Membership::default();
        assert_eq!(m.placement(), None);
        assert!(m.update("n2", &["n3".into(), "n1".into(), "n2".into()]));
        assert_eq!(m.placement(), Some(Placement { rank: 1, live: 3 }));
        assert!(!m.update("n2", &["n3".into(), "n1".into(), "n2".into()]));
        // Its own row missing (its heartbeat failed): kept.
        assert!(!m.update("n2", &["n1".into()]));
        assert_eq!(m.placement(), Some(Placement { rank: 1, live: 3 }));
        assert!(m.update("n2", &["n2".into(), "n1".into()]));
        assert_eq!(m.placement(), Some(Placement { rank: 1, live: 2 }));
    }
}
