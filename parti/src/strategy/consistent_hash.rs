//! Consistent hashing: each partition goes to the ring owner of its placement hash.
//!
//! Adding a worker moves only the partitions that land on its new arcs (≈ 1/(N+1) of them);
//! removing one moves only the partitions it owned. Weights are ignored; see
//! `WeightedConsistentHash` for load-aware placement.

use super::ring::{HashRing, canonical_workers, collect_assignment};
use super::{AssignmentMap, Strategy, StrategyError};
use crate::Partition;

/// Virtual nodes per worker when not configured: enough to keep per-worker shares within
/// roughly ±10–15 % of even, while a 1000-worker ring (150k nodes) still builds in a few ms.
pub(crate) const DEFAULT_VIRTUAL_NODES: usize = 150;

/// Consistent hashing over an xxh3 ring with virtual nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistentHash {
    /// Virtual nodes per worker (values below 1 are treated as 1).
    pub virtual_nodes: usize,
    /// Hash seed for ring positions and partition hashes; 0 means unseeded xxh3.
    pub seed: u64,
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self {
            virtual_nodes: DEFAULT_VIRTUAL_NODES,
            seed: 0,
        }
    }
}

impl ConsistentHash {
    /// A ring with `virtual_nodes` per worker (clamped to at least 1) and the given seed.
    pub fn new(virtual_nodes: usize, seed: u64) -> Self {
        Self {
            virtual_nodes: virtual_nodes.max(1),
            seed,
        }
    }
}

/// Builds the ring over the canonical (sorted, de-duplicated) workers. The ring's worker
/// indices therefore equal indices into `canonical_workers(workers)`.
pub(crate) fn canonical_ring(workers: &[String], virtual_nodes: usize, seed: u64) -> HashRing {
    HashRing::new(&canonical_workers(workers), virtual_nodes.max(1), seed)
}

/// Ring owner index of every partition, in input order.
pub(crate) fn ring_owners(ring: &HashRing, partitions: &[Partition], seed: u64) -> Vec<usize> {
    partitions
        .iter()
        // A non-empty ring always has an owner; 0 is only reached for an empty ring, which
        // callers reject before getting here.
        .map(|p| ring.owner_index(p.placement_hash(seed)).unwrap_or(0))
        .collect()
}

impl Strategy for ConsistentHash {
    fn assign(
        &self,
        workers: &[String],
        partitions: &[Partition],
    ) -> Result<AssignmentMap, StrategyError> {
        let ring = canonical_ring(workers, self.virtual_nodes, self.seed);
        if ring.workers().is_empty() {
            return Err(StrategyError::NoWorkers);
        }
        let owners = ring_owners(&ring, partitions, self.seed);
        Ok(collect_assignment(ring.workers(), partitions, &owners))
    }

    fn name(&self) -> &'static str {
        "ConsistentHash"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    fn parts(n: usize) -> Vec<Partition> {
        (0..n).map(|i| Partition::new(format!("p{i}"), 1)).collect()
    }

    fn owner_of(map: &AssignmentMap) -> std::collections::HashMap<String, String> {
        map.iter()
            .flat_map(|(w, ps)| ps.iter().map(move |p| (p.id(), w.clone())))
            .collect()
    }

    #[test]
    fn defaults_and_clamping() {
        assert_eq!(ConsistentHash::default(), ConsistentHash::new(150, 0));
        assert_eq!(ConsistentHash::new(0, 3).virtual_nodes, 1);
        // A hand-built zero is clamped at use time too.
        let zero = ConsistentHash {
            virtual_nodes: 0,
            seed: 0,
        };
        let result = zero
            .assign(&workers(2), &parts(10))
            .expect("workers present");
        assert_eq!(result.values().map(Vec::len).sum::<usize>(), 10);
    }

    #[test]
    fn no_workers_is_an_error() {
        assert_eq!(
            ConsistentHash::default().assign(&[], &parts(1)),
            Err(StrategyError::NoWorkers)
        );
    }

    #[test]
    fn thirty_partitions_three_workers_nobody_empty() {
        let result = ConsistentHash::default()
            .assign(&workers(3), &parts(30))
            .expect("workers present");
        assert_eq!(result.len(), 3);
        assert!(result.values().all(|v| !v.is_empty()), "{result:?}");
    }

    #[test]
    fn seed_changes_placement() {
        let ws = workers(3);
        let ps = parts(100);
        let a = owner_of(&ConsistentHash::new(150, 0).assign(&ws, &ps).expect("ok"));
        let b = owner_of(
            &ConsistentHash::new(150, 12345)
                .assign(&ws, &ps)
                .expect("ok"),
        );
        let differing = ps.iter().filter(|p| a[&p.id()] != b[&p.id()]).count();
        assert!(differing >= 30, "only {differing}/100 partitions differ");
    }

    #[test]
    fn matches_ring_lookup_of_placement_hash() {
        let ch = ConsistentHash::new(40, 77);
        let ws = workers(5);
        let ps = parts(50);
        let result = owner_of(&ch.assign(&ws, &ps).expect("ok"));
        let ring = HashRing::new(&canonical_workers(&ws), 40, 77);
        for p in &ps {
            assert_eq!(
                Some(result[&p.id()].as_str()),
                ring.owner(p.placement_hash(77))
            );
        }
    }

    #[test]
    fn keeps_input_order_within_a_worker() {
        let ps = parts(20);
        let result = ConsistentHash::default()
            .assign(&workers(1), &ps)
            .expect("ok");
        assert_eq!(result["worker-0"], ps);
    }

    #[test]
    fn name_is_stable() {
        assert_eq!(ConsistentHash::default().name(), "ConsistentHash");
    }
}
