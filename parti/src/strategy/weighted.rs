//! Weighted consistent hashing: bounded-load ring placement (a per-worker load cap) and
//! spreading of extreme partitions.
//!
//! Plain consistent hashing ignores weights, so one worker can end up with several heavy
//! partitions. This strategy keeps ring affinity (few moves when workers come and go) but:
//! - places "extreme" partitions (much heavier than average) first, so that no worker gets
//!   a second one before every worker has one. Each goes to the first worker clockwise from
//!   its hash that has the fewest extremes so far and stays under the cap, which is the
//!   ring owner when it qualifies. (The Go original spread them by index, which moved them
//!   on every change.)
//! - places each normal partition on the first worker clockwise from its hash that stays
//!   under the cap: the ring owner when it has room, otherwise the next worker along the
//!   ring that does.
//!
//! Only when no worker has room does a partition go to the lightest worker. It counts as
//! overflow, which is logged at debug level.
//!
//! Why spills walk clockwise instead of going to the lightest worker: it keeps movement low.
//! The clockwise target depends only on the ring and on the loads of the workers just after
//! the partition's hash, so a joining or leaving worker changes spills only near its own
//! arcs and wherever the cap change tips a worker over. The lightest worker is a global
//! minimum instead. It changes when any load anywhere changes (a joining worker is always the
//! lightest), and every changed spill shifts the ones placed after it. With lightest-worker
//! spills, one worker joining 1000 moved 46 % of 10 000 partitions (459× the ideal 1/(N+1));
//! with clockwise spills it moves 0.2 %. For the same reason, ties between equally
//! good workers go to the first one clockwise and not to the lowest sorted index. A leaving
//! worker shifts the index of every worker sorted after it, and with index tie-breaks 75 of
//! 100 extremes moved when one of 200 workers left. The balance guarantee does not change:
//! the cap is the same, and only the choice of which worker under it takes a spill differs.
//!
//! A placement from scratch still moves too much when the fleet changes: a joining worker
//! lowers the mean load and so the cap, and every worker near the cap then spills a little
//! more. With 1500 partitions (5 % of them weight 100) on 100 workers, 75 workers hold an
//! extreme and sit near the cap, and 6.3 × the ideal share moved. So the leader passes the
//! assignment in force ([`Strategy::assign_from`]) and this strategy keeps it where it can
//! (`keep.rs`): a fresh placement is computed with `FRESH_SLACK` of the cap left free, a kept
//! partition only has to fit under the full cap, so the cap dropping by a joiner's 1/N
//! forces nothing out; a joining worker takes the partitions its ring arcs own, and only
//! orphans (of a leaver, new ones, or ones over the cap) are placed afresh.
//!
//! When every partition has the same weight there is nothing to balance, and the result is
//! exactly `ConsistentHash` with the same virtual nodes and seed.

use super::consistent_hash::{DEFAULT_VIRTUAL_NODES, canonical_ring, ring_owners};
use super::keep::keep;
use super::ring::{HashRing, collect_assignment};
use super::{AssignmentMap, Strategy, StrategyError};
use crate::Partition;

/// Share of the load cap a placement from scratch leaves free, so that an assignment kept
/// under the full cap survives the cap dropping when workers join (1/N per joiner: up to
/// 4 % of the fleet joining at once forces nothing to move).
pub(super) const FRESH_SLACK: f64 = 0.04;

/// Consistent hashing that respects partition weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightedConsistentHash {
    /// Virtual nodes per worker (values below 1 are treated as 1).
    pub virtual_nodes: usize,
    /// Hash seed for ring positions and partition hashes; 0 means unseeded xxh3.
    pub seed: u64,
    /// Load cap as a multiple of the mean worker load (at least `Self::MIN_OVERLOAD_THRESHOLD`).
    pub overload_threshold: f64,
    /// A partition is extreme when heavier than this multiple of the mean partition weight
    /// (at least `Self::MIN_EXTREME_THRESHOLD`).
    pub extreme_threshold: f64,
    /// Weight used for partitions whose weight is `<= 0` (at least 1).
    pub default_weight: i64,
}

impl Default for WeightedConsistentHash {
    fn default() -> Self {
        Self {
            virtual_nodes: DEFAULT_VIRTUAL_NODES,
            seed: 0,
            overload_threshold: 1.3,
            extreme_threshold: 2.0,
            default_weight: 1,
        }
    }
}

impl WeightedConsistentHash {
    /// Lowest accepted `overload_threshold`: below ~1.15 the ring's natural unevenness makes
    /// most workers spill, so partitions walk far past their ring owner and affinity is lost.
    pub const MIN_OVERLOAD_THRESHOLD: f64 = 1.15;
    /// Lowest accepted `extreme_threshold`: lower values would treat ordinary variation in
    /// weights as extreme and spread partitions that the ring places well enough.
    pub const MIN_EXTREME_THRESHOLD: f64 = 1.5;

    /// Builds the strategy, clamping every parameter into its valid range (there is no
    /// separate validation step: out-of-range values, including NaN, take the minimum).
    pub fn new(
        virtual_nodes: usize,
        seed: u64,
        overload_threshold: f64,
        extreme_threshold: f64,
        default_weight: i64,
    ) -> Self {
        Self {
            virtual_nodes,
            seed,
            overload_threshold,
            extreme_threshold,
            default_weight,
        }
        .clamped()
    }

    /// The same settings with every field clamped. Applied again in `assign`, because the
    /// fields are public and may have been set directly.
    fn clamped(self) -> Self {
        Self {
            virtual_nodes: self.virtual_nodes.max(1),
            seed: self.seed,
            // f64::max returns the other operand for NaN, so NaN clamps to the minimum too.
            overload_threshold: self.overload_threshold.max(Self::MIN_OVERLOAD_THRESHOLD),
            extreme_threshold: self.extreme_threshold.max(Self::MIN_EXTREME_THRESHOLD),
            default_weight: self.default_weight.max(1),
        }
    }

    /// Weight used for placement: the partition's own weight, or the default when `<= 0`.
    fn effective_weight(&self, partition: &Partition) -> i64 {
        if partition.weight > 0 {
            partition.weight
        } else {
            self.default_weight
        }
    }

    /// The load cap: `overload` times the mean worker load.
    pub(super) fn cap(weights: &[i64], workers: usize, overload: f64) -> f64 {
        // i128 sums cannot overflow for any number of i64 weights we could hold in memory.
        let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
        total as f64 / workers as f64 * overload
    }

    /// Partition indices in placement order: the extremes (heaviest first), then the
    /// normal ones. The order must not depend on the caller's partition order, or two
    /// leaders with differently ordered sources would disagree. The index is only a
    /// tie-break between identical partitions, which end up in the same places either way.
    pub(super) fn placement_order(
        &self,
        partitions: &[Partition],
        weights: &[i64],
    ) -> (Vec<usize>, Vec<usize>) {
        let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
        let extreme_cutoff = total as f64 / partitions.len() as f64 * self.extreme_threshold;
        let (mut heavy, mut normal): (Vec<usize>, Vec<usize>) =
            (0..partitions.len()).partition(|&i| weights[i] as f64 > extreme_cutoff);
        heavy.sort_unstable_by(|&a, &b| {
            (weights[b].cmp(&weights[a]))
                .then_with(|| partitions[a].cmp(&partitions[b]))
                .then(a.cmp(&b))
        });
        normal.sort_unstable_by(|&a, &b| partitions[a].cmp(&partitions[b]).then(a.cmp(&b)));
        (heavy, normal)
    }

    /// Owner index (into `ring.workers()`) of every partition, placed from scratch under
    /// a cap of `overload` times the mean load; the core of the algorithm. `hashes[i]` is
    /// partition `i`'s placement hash.
    pub(super) fn place(
        &self,
        ring: &HashRing,
        partitions: &[Partition],
        weights: &[i64],
        hashes: &[u64],
        overload: f64,
    ) -> Vec<usize> {
        let workers = ring.workers().len();
        let cap = Self::cap(weights, workers, overload);
        let fits = |load: i128, w: i128| (load + w) as f64 <= cap;

        let mut owners = vec![0usize; partitions.len()];
        let mut load = vec![0i128; workers];
        let mut extremes = vec![0usize; workers];
        let mut overflow = 0usize;

        let (heavy, normal) = self.placement_order(partitions, weights);

        // Extremes first, while every worker is still empty enough to take one.
        for &i in &heavy {
            let w = i128::from(weights[i]);
            // The workers eligible for this extreme are those with the fewest extremes so
            // far, so no worker gets a second extreme before every worker has one.
            let (fewest, lightest) = extremes
                .iter()
                .copied()
                .zip(load.iter().copied())
                .min()
                .unwrap_or((0, 0));
            // The first eligible worker clockwise from the partition's hash that stays under
            // the cap (the ring owner when it qualifies). When none does, the lightest eligible
            // worker takes it, again the first one clockwise. Ring order, not the lowest sorted
            // index: a leaving worker shifts the index of every worker after it.
            let fitting = fits(lightest, w);
            if !fitting {
                overflow += 1;
            }
            let target = ring
                .clockwise_from(hashes[i])
                .find(|&j| {
                    extremes[j] == fewest
                        && if fitting {
                            fits(load[j], w)
                        } else {
                            load[j] == lightest
                        }
                })
                // Unreachable: the worker that gave (fewest, lightest) always matches.
                .unwrap_or(0);
            owners[i] = target;
            load[target] += w;
            extremes[target] += 1;
        }

        // Smallest weight for which a full walk found no worker with room. Loads only grow,
        // so no later partition at least this heavy can fit either, and its walk is skipped.
        let mut no_room_from: Option<i128> = None;
        for &i in &normal {
            let w = i128::from(weights[i]);
            let hash = hashes[i];
            let with_room = if no_room_from.is_some_and(|limit| w >= limit) {
                None
            } else {
                // The walk starts at the ring owner, so a partition whose owner has room stays
                // there; otherwise it goes to the next worker clockwise that has room.
                ring.clockwise_from(hash).find(|&j| fits(load[j], w))
            };
            let target = match with_room {
                Some(j) => j,
                None => {
                    // Nobody has room; the partition must go somewhere anyway. Take the
                    // lightest worker, the first clockwise among equally light ones.
                    no_room_from = Some(no_room_from.map_or(w, |limit| limit.min(w)));
                    overflow += 1;
                    let lightest = load.iter().copied().min().unwrap_or(0);
                    // Unreachable fallback: the lightest worker is on the ring.
                    ring.clockwise_from(hash)
                        .find(|&j| load[j] == lightest)
                        .unwrap_or(0)
                }
            };
            owners[i] = target;
            load[target] += w;
        }

        if overflow > 0 {
            tracing::debug!(
                overflow,
                cap,
                workers,
                partitions = partitions.len(),
                "weighted assignment placed partitions above the load cap"
            );
        }
        owners
    }
}

impl Strategy for WeightedConsistentHash {
    fn assign(
        &self,
        workers: &[String],
        partitions: &[Partition],
    ) -> Result<AssignmentMap, StrategyError> {
        self.assign_from(workers, partitions, &AssignmentMap::new())
    }

    fn assign_from(
        &self,
        workers: &[String],
        partitions: &[Partition],
        current: &AssignmentMap,
    ) -> Result<AssignmentMap, StrategyError> {
        let cfg = self.clamped();
        let ring = canonical_ring(workers, cfg.virtual_nodes, cfg.seed);
        if ring.workers().is_empty() {
            return Err(StrategyError::NoWorkers);
        }
        let weights: Vec<i64> = partitions.iter().map(|p| cfg.effective_weight(p)).collect();
        // Equal weights (including "no partitions"): caps and extremes would only add moves
        // without improving balance, so use the ring verbatim.
        if weights.windows(2).all(|pair| pair[0] == pair[1]) {
            let owners = ring_owners(&ring, partitions, cfg.seed);
            return Ok(collect_assignment(ring.workers(), partitions, &owners));
        }
        let hashes: Vec<u64> = partitions
            .iter()
            .map(|p| p.placement_hash(cfg.seed))
            .collect();
        let fresh = cfg.place(
            &ring,
            partitions,
            &weights,
            &hashes,
            cfg.overload_threshold * (1.0 - FRESH_SLACK),
        );
        let owners = if current.values().all(Vec::is_empty) {
            fresh
        } else {
            keep(&cfg, &ring, partitions, &weights, &hashes, &fresh, current)
        };
        Ok(collect_assignment(ring.workers(), partitions, &owners))
    }

    fn name(&self) -> &'static str {
        "WeightedConsistentHash"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::ConsistentHash;

    fn workers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    fn loads(map: &AssignmentMap, default_weight: i64) -> Vec<i64> {
        map.values()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        if p.weight > 0 {
                            p.weight
                        } else {
                            default_weight
                        }
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn defaults() {
        let d = WeightedConsistentHash::default();
        assert_eq!(d, WeightedConsistentHash::new(150, 0, 1.3, 2.0, 1));
        assert_eq!(d.name(), "WeightedConsistentHash");
    }

    #[test]
    fn new_clamps_every_parameter() {
        let s = WeightedConsistentHash::new(0, 5, 1.0, f64::NAN, -3);
        assert_eq!(s.virtual_nodes, 1);
        assert_eq!(s.seed, 5);
        assert_eq!(
            s.overload_threshold,
            WeightedConsistentHash::MIN_OVERLOAD_THRESHOLD
        );
        assert_eq!(
            s.extreme_threshold,
            WeightedConsistentHash::MIN_EXTREME_THRESHOLD
        );
        assert_eq!(s.default_weight, 1);
        let high = WeightedConsistentHash::new(7, 0, 3.0, 4.0, 9);
        assert_eq!(
            (high.overload_threshold, high.extreme_threshold),
            (3.0, 4.0)
        );
    }

    #[test]
    fn no_workers_and_no_partitions() {
        let s = WeightedConsistentHash::default();
        let one = [Partition::new("p", 1)];
        assert_eq!(s.assign(&[], &one), Err(StrategyError::NoWorkers));
        let empty = s.assign(&workers(3), &[]).expect("workers present");
        assert_eq!(empty.len(), 3);
        assert!(empty.values().all(Vec::is_empty));
    }

    #[test]
    fn equal_weights_match_consistent_hash() {
        let ws = workers(7);
        // Weight 0 and the default weight 1 are the same effective weight.
        let ps: Vec<Partition> = (0..300)
            .map(|i| Partition::new(format!("p{i}"), i64::from(i % 2)))
            .collect();
        for (vnodes, seed) in [(150, 0), (20, 999)] {
            let weighted = WeightedConsistentHash::new(vnodes, seed, 1.3, 2.0, 1);
            let plain = ConsistentHash::new(vnodes, seed);
            assert_eq!(weighted.assign(&ws, &ps), plain.assign(&ws, &ps));
        }
    }

    #[test]
    fn four_extremes_over_four_workers_one_each() {
        let mut ps: Vec<Partition> = [5000, 4000, 3000, 2000]
            .iter()
            .enumerate()
            .map(|(i, &w)| Partition::new(format!("heavy-{i}"), w))
            .collect();
        ps.extend((0..12).map(|i| Partition::new(format!("light-{i}"), 100)));
        let result = WeightedConsistentHash::default()
            .assign(&workers(4), &ps)
            .expect("workers present");
        for (worker, owned) in &result {
            let heavy = owned.iter().filter(|p| p.weight >= 2000).count();
            assert_eq!(heavy, 1, "{worker} has {heavy} extremes: {result:?}");
        }
        assert_eq!(result.values().map(Vec::len).sum::<usize>(), 16);
    }

    #[test]
    fn overweight_partition_is_still_placed() {
        // One partition alone exceeds the cap; it must be placed anyway.
        let ps = vec![
            Partition::new("huge", 1000),
            Partition::new("a", 1),
            Partition::new("b", 1),
        ];
        let result = WeightedConsistentHash::default()
            .assign(&workers(2), &ps)
            .expect("workers present");
        assert_eq!(result.values().map(Vec::len).sum::<usize>(), 3);
        // The light ones avoid the worker holding the huge one.
        let huge_owner = result
            .iter()
            .find(|(_, v)| v.iter().any(|p| p.weight == 1000))
            .map(|(w, _)| w.clone())
            .expect("huge placed");
        assert_eq!(result[&huge_owner].len(), 1);
    }

    #[test]
    fn cap_is_respected_when_feasible() {
        let ps: Vec<Partition> = (0..400)
            .map(|i| Partition::new(format!("p{i}"), if i % 10 == 0 { 5 } else { 1 }))
            .collect();
        let s = WeightedConsistentHash::default();
        let result = s.assign(&workers(10), &ps).expect("workers present");
        let l = loads(&result, 1);
        let mean = l.iter().sum::<i64>() as f64 / l.len() as f64;
        let max = l.iter().copied().max().unwrap_or(0) as f64;
        assert!(
            max / mean <= s.overload_threshold,
            "max/mean = {}",
            max / mean
        );
    }

    /// Every worker a partition's clockwise walk passes before reaching its owner must have
    /// been full for it. Loads only grow, so "full" still holds for the final loads.
    fn assert_spills_walk_clockwise(n_parts: usize, n_workers: usize) {
        let s = WeightedConsistentHash::default();
        let ws = workers(n_workers);
        let ps: Vec<Partition> = (0..n_parts)
            .map(|i| Partition::new(format!("p{i}"), if i % 20 == 0 { 100 } else { 1 }))
            .collect();
        let result = s.assign(&ws, &ps).expect("workers present");
        let ring = canonical_ring(&ws, s.virtual_nodes, s.seed);
        let index: std::collections::HashMap<&str, usize> = ring
            .workers()
            .iter()
            .enumerate()
            .map(|(i, w)| (w.as_str(), i))
            .collect();
        let load: Vec<i64> = ring
            .workers()
            .iter()
            .map(|w| result[w].iter().map(|p| p.weight).sum())
            .collect();
        let total: i64 = load.iter().sum();
        // A placement from scratch fills workers only up to the cap less FRESH_SLACK.
        let cap = total as f64 / n_workers as f64 * s.overload_threshold * (1.0 - FRESH_SLACK);
        let mut spilled = 0;
        for (worker, owned) in &result {
            let owner = index[worker.as_str()];
            for p in owned.iter().filter(|p| p.weight == 1) {
                let passed: Vec<usize> = ring
                    .clockwise_from(p.placement_hash(s.seed))
                    .take_while(|&j| j != owner)
                    .collect();
                spilled += usize::from(!passed.is_empty());
                for j in passed {
                    assert!(
                        (load[j] + 1) as f64 > cap,
                        "{} skipped {} with room",
                        p.id(),
                        ring.workers()[j]
                    );
                }
            }
        }
        assert!(spilled > 0, "the case should exercise spills");
    }

    #[test]
    fn spills_go_to_the_next_worker_clockwise_with_room() {
        // Extremes fit under the cap (1500 x 100) and exceed it (2000 x 200).
        assert_spills_walk_clockwise(1500, 100);
        assert_spills_walk_clockwise(2000, 200);
    }

    #[test]
    fn with_no_room_anywhere_the_lightest_worker_takes_it() {
        let s = WeightedConsistentHash::default();
        let ring = canonical_ring(&workers(3), s.virtual_nodes, s.seed);
        let hash_owned_by = |owner: usize| {
            (0u64..1000)
                .map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
                .find(|&h| ring.owner_index(h) == Some(owner))
                .unwrap_or_default()
        };
        // (weight, ring owner). Total 29, so the cap is 12.57. The 4s and the 3 stay on their
        // owners (loads 8, 8, 7); the 6 fits nowhere, so it goes to the lightest worker, 2,
        // rather than to its owner 0.
        let spec = [(4, 0), (4, 0), (4, 1), (4, 1), (4, 2), (3, 2), (6, 0)];
        let partitions: Vec<Partition> = (0..spec.len())
            .map(|i| Partition::new(format!("p{i}"), spec[i].0))
            .collect();
        let weights = spec.map(|(w, _)| w);
        let hashes = spec.map(|(_, owner)| hash_owned_by(owner));
        let owners = s.place(&ring, &partitions, &weights, &hashes, s.overload_threshold);
        assert_eq!(owners, vec![0, 0, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn partition_source_order_does_not_matter() {
        let ps: Vec<Partition> = (0..200)
            .map(|i| Partition::new(format!("p{i}"), (i % 7) + 1))
            .collect();
        let mut reversed = ps.clone();
        reversed.reverse();
        let s = WeightedConsistentHash::default();
        let a = s.assign(&workers(6), &ps).expect("ok");
        let b = s.assign(&workers(6), &reversed).expect("ok");
        for (worker, owned) in &a {
            let mut x = owned.clone();
            let mut y = b[worker].clone();
            x.sort();
            y.sort();
            assert_eq!(x, y, "{worker}");
        }
    }
}
