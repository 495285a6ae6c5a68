//! What a config implies for the run: the weight of every partition and which partitions
//! each producer publishes. Pure and deterministic, so the coordinator, producers and the
//! report all derive the same answer from the same config and seed.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::random;
use super::{Config, Distribution};

impl Config {
    /// Number of extreme partitions for `distribution: exponential`:
    /// `round(partitions.count × extreme_percent)`, at most `partitions.count`
    /// (0 for `uniform`).
    pub fn extreme_partition_count(&self) -> u32 {
        match self.partitions.distribution {
            Distribution::Uniform => 0,
            Distribution::Exponential => {
                let count = self.partitions.count;
                let percent = self.partitions.weights.exponential.extreme_percent;
                let extremes = (f64::from(count) * percent).round();
                // NaN and negatives (an unvalidated config) mean no extremes.
                if extremes.is_nan() || extremes <= 0.0 {
                    0
                } else {
                    (extremes as u32).min(count)
                }
            }
        }
    }

    /// The weight of each partition, indexed by partition id.
    ///
    /// `uniform`: all 1. `exponential`: exactly [`Config::extreme_partition_count`]
    /// partitions weigh `extreme_weight` and the rest `normal_weight`; which ones are extreme
    /// is a uniformly random choice made by a ChaCha8 RNG seeded with `seed`, so the same
    /// config and seed give the same weights on every machine and build. Pass the run's
    /// seed ([`Config::resolve_seed`]).
    pub fn partition_weights(&self, seed: u64) -> Vec<i64> {
        let count = self.partitions.count as usize;
        let weights = &self.partitions.weights.exponential;
        match self.partitions.distribution {
            Distribution::Uniform => vec![1; count],
            Distribution::Exponential => {
                let mut ids: Vec<u32> = (0..self.partitions.count).collect();
                let extremes = self.extreme_partition_count() as usize;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                random::choose_front(&mut rng, &mut ids, extremes);
                let mut out = vec![weights.normal_weight; count];
                for &id in &ids[..extremes] {
                    out[id as usize] = weights.extreme_weight;
                }
                out
            }
        }
    }

    /// The partitions each producer publishes, indexed by producer: contiguous ranges of
    /// [`Config::partitions_per_producer`] (`0..n`, `n..2n`, …), the last one cut at
    /// `partitions.count`. Validation guarantees every producer gets at least one and every
    /// partition exactly one producer; on an unvalidated config, producers past the end get
    /// empty lists and uncovered partitions are simply absent.
    pub fn producer_partitions(&self) -> Vec<Vec<u32>> {
        let per = self.partitions_per_producer();
        let total = self.partitions.count;
        (0..self.producers.count)
            .map(|producer| {
                let start = producer.saturating_mul(per).min(total);
                let end = producer.saturating_add(1).saturating_mul(per).min(total);
                (start..end).collect()
            })
            .collect()
    }
}
