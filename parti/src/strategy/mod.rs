//! Assignment strategies: pure functions from (workers, partitions) to an assignment.
//!
//! Layout:
//! - `round_robin`: partition i → worker i mod n.
//! - `consistent_hash`: xxh3 ring with virtual nodes.
//! - `weighted`: bounded-load ring placement; extreme partitions spread one per worker first.
//! - `keep`: what the weighted placement keeps of the assignment in force.
//! - `ring`: the hash ring shared by the two hashing strategies.

use std::collections::BTreeMap;

use crate::Partition;

mod consistent_hash;
mod keep;
mod ring;
mod round_robin;
mod weighted;

#[cfg(test)]
mod tests;

pub use consistent_hash::ConsistentHash;
pub use round_robin::RoundRobin;
pub use weighted::WeightedConsistentHash;

/// Worker id → the partitions it owns. Every worker passed in gets an entry (maybe empty).
pub type AssignmentMap = BTreeMap<String, Vec<Partition>>;

/// Errors a strategy can return.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StrategyError {
    /// `assign` was called with no workers.
    #[error("no workers available for assignment")]
    NoWorkers,
}

/// Computes which worker owns which partition.
///
/// Implementations must be deterministic: the same workers (in any order) and the same
/// partitions give the same result, because a new leader recomputes from scratch and must
/// not move partitions needlessly.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// Assign every partition to exactly one of `workers`.
    fn assign(
        &self,
        workers: &[String],
        partitions: &[Partition],
    ) -> Result<AssignmentMap, StrategyError>;

    /// Like [`Strategy::assign`], given the assignment in force (`current`: worker →
    /// partitions it owns or is receiving), so a strategy can keep partitions where they are
    /// and move fewer when the fleet changes. Must stay deterministic in all three inputs.
    /// The default ignores `current`.
    fn assign_from(
        &self,
        workers: &[String],
        partitions: &[Partition],
        current: &AssignmentMap,
    ) -> Result<AssignmentMap, StrategyError> {
        let _ = current;
        self.assign(workers, partitions)
    }

    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
}
