//! Round-robin: partition `i` goes to worker `i mod n`.
//!
//! Perfectly even by count (max − min ≤ 1) but ignores weights and moves most partitions
//! whenever the worker set changes; use it for small, static fleets or as a baseline.

use super::ring::{canonical_workers, collect_assignment};
use super::{AssignmentMap, Strategy, StrategyError};
use crate::Partition;

/// Assigns partition `i` (in the given partition order) to the `i mod n`-th worker of the
/// sorted, de-duplicated worker list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn assign(
        &self,
        workers: &[String],
        partitions: &[Partition],
    ) -> Result<AssignmentMap, StrategyError> {
        // Sorting makes the result independent of the order the caller discovered workers in.
        let workers = canonical_workers(workers);
        if workers.is_empty() {
            return Err(StrategyError::NoWorkers);
        }
        let owners: Vec<usize> = (0..partitions.len()).map(|i| i % workers.len()).collect();
        Ok(collect_assignment(&workers, partitions, &owners))
    }

    fn name(&self) -> &'static str {
        "RoundRobin"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn parts(n: usize) -> Vec<Partition> {
        (0..n).map(|i| Partition::new(format!("p{i}"), 1)).collect()
    }

    #[test]
    fn no_workers_is_an_error() {
        assert_eq!(
            RoundRobin.assign(&[], &parts(3)),
            Err(StrategyError::NoWorkers)
        );
    }

    #[test]
    fn cycles_over_sorted_workers() {
        let result = RoundRobin
            .assign(&ids(&["c", "a", "b"]), &parts(5))
            .expect("workers present");
        let names = |w: &str| -> Vec<String> { result[w].iter().map(Partition::id).collect() };
        assert_eq!(names("a"), ["p0", "p3"]);
        assert_eq!(names("b"), ["p1", "p4"]);
        assert_eq!(names("c"), ["p2"]);
    }

    #[test]
    fn nine_partitions_three_workers_is_three_each() {
        let result = RoundRobin
            .assign(&ids(&["w1", "w2", "w3"]), &parts(9))
            .expect("workers present");
        assert!(result.values().all(|v| v.len() == 3));
    }

    #[test]
    fn every_worker_gets_an_entry_and_duplicates_collapse() {
        let result = RoundRobin
            .assign(&ids(&["x", "y", "x", "z"]), &parts(1))
            .expect("workers present");
        assert_eq!(result.len(), 3);
        assert_eq!(result.values().map(Vec::len).sum::<usize>(), 1);
    }

    #[test]
    fn name_is_stable() {
        assert_eq!(RoundRobin.name(), "RoundRobin");
    }
}
