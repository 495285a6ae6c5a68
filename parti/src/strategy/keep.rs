//! What a weighted placement keeps of the assignment in force.
//!
//! A placement from scratch fills workers up to the load cap, and the cap is a multiple of
//! the mean load, which drops by 1/N when a worker joins: every worker near the cap then
//! has to shed a partition or two, and each shed partition spills along the ring. At 1500
//! partitions × 100 workers that moved 6.3 × the ideal 1/(N+1) (docs/PERFORMANCE.md). The
//! fix is hysteresis, which needs the assignment in force:
//! - a partition stays with its current owner while that owner is alive and stays under
//!   the *full* cap, whereas a fresh placement only fills workers to the cap less
//!   `FRESH_SLACK`, so the cap dropping by a joiner's share forces nothing out;
//! - a joining worker (one the assignment in force does not name) takes the normal
//!   partitions its ring arcs own: the ideal share, and the same ones a from-scratch ring
//!   would give it, so affinity to the ring is kept over many changes;
//! - an extreme partition stays put (a joiner gets none unless one is orphaned: moving a
//!   heavy partition for balance is the expensive kind of move), also where it outweighs
//!   the cap on its own; an orphaned one goes, among the workers with the fewest extremes,
//!   to the one whose kept partitions weigh least (it pushes out the fewest);
//! - an orphaned normal partition (its owner left, the partition is new, or its owner is
//!   full) goes where the fresh placement puts it if that worker stays under the full cap,
//!   otherwise to the first worker clockwise from its hash under the fresh cap, otherwise
//!   to the lightest worker.
//!
//! The balance bound is the same as from scratch: nobody ends above the full cap unless
//! nobody had room.

use std::collections::HashMap;

use super::AssignmentMap;
use super::ring::HashRing;
use super::weighted::{FRESH_SLACK, WeightedConsistentHash};
use crate::Partition;

/// Owner index (into `ring.workers()`) of every partition, keeping `current` where it can;
/// `fresh` is the from-scratch placement of the same inputs.
pub(super) fn keep(
    cfg: &WeightedConsistentHash,
    ring: &HashRing,
    partitions: &[Partition],
    weights: &[i64],
    hashes: &[u64],
    fresh: &[usize],
    current: &AssignmentMap,
) -> Vec<usize> {
    let workers = ring.workers();
    let index: HashMap<&str, usize> = workers
        .iter()
        .enumerate()
        .map(|(j, w)| (w.as_str(), j))
        .collect();
    // A worker the assignment in force names (even with nothing) is not joining.
    let joining: Vec<bool> = workers.iter().map(|w| !current.contains_key(w)).collect();
    // Who holds each partition now (by its keys: a reweighted partition is the same one),
    // looked up once per partition.
    let mut by_keys: HashMap<&[String], usize> = HashMap::with_capacity(partitions.len());
    for (worker, owned) in current {
        if let Some(&j) = index.get(worker.as_str()) {
            for partition in owned {
                by_keys.entry(partition.keys.as_slice()).or_insert(j);
            }
        }
    }
    let held: Vec<Option<usize>> = partitions
        .iter()
        .map(|p| by_keys.get(p.keys.as_slice()).copied())
        .collect();
    let full = WeightedConsistentHash::cap(weights, workers.len(), cfg.overload_threshold);
    let fresh_cap = full * (1.0 - FRESH_SLACK);

    let mut owners = vec![0usize; partitions.len()];
    let mut load = vec![0i128; workers.len()];
    let (heavy, normal) = cfg.placement_order(partitions, weights);

    // What each worker's kept normal partitions weigh: an extreme that has to go somewhere
    // new goes where it displaces the least.
    let mut held_normal = vec![0i128; workers.len()];
    for &i in &normal {
        if let Some(owner) = held[i] {
            held_normal[owner] += i128::from(weights[i]);
        }
    }
    // Kept extremes first, so an orphan never lands on a worker whose own extreme comes
    // later: kept while it fits, or while it is its owner's only load (an extreme heavier
    // than the cap fits nowhere; moving it would only push another worker's out).
    let mut extremes = vec![0usize; workers.len()];
    let mut orphans = Vec::new();
    for i in heavy {
        let w = i128::from(weights[i]);
        match held[i] {
            Some(owner) if (load[owner] + w) as f64 <= full || load[owner] == 0 => {
                owners[i] = owner;
                load[owner] += w;
                extremes[owner] += 1;
            }
            _ => orphans.push(i),
        }
    }
    for i in orphans {
        // Among the workers with the fewest extremes, the one whose kept partitions weigh
        // least; the first clockwise among equals.
        let fewest = extremes.iter().copied().min().unwrap_or(0);
        let mut best: Option<usize> = None;
        for j in ring.clockwise_from(hashes[i]) {
            if extremes[j] == fewest && best.is_none_or(|b| held_normal[j] < held_normal[b]) {
                best = Some(j);
            }
        }
        // Unreachable fallback: some worker has the fewest extremes.
        let target = best.unwrap_or(0);
        owners[i] = target;
        load[target] += i128::from(weights[i]);
        extremes[target] += 1;
    }

    for i in normal {
        let w = i128::from(weights[i]);
        let preferred = match held[i] {
            Some(owner) => match ring.owner_index(hashes[i]) {
                Some(arc) if joining[arc] => arc,
                _ => owner,
            },
            None => fresh[i],
        };
        let target = if (load[preferred] + w) as f64 <= full {
            preferred
        } else {
            ring.clockwise_from(hashes[i])
                .find(|&j| (load[j] + w) as f64 <= fresh_cap)
                .unwrap_or_else(|| {
                    // No room anywhere: the lightest worker, first clockwise.
                    let lightest = load.iter().copied().min().unwrap_or(0);
                    // Unreachable fallback: the lightest worker is on the ring.
                    ring.clockwise_from(hashes[i])
                        .find(|&j| load[j] == lightest)
                        .unwrap_or(0)
                })
        };
        owners[i] = target;
        load[target] += w;
    }
    owners
}
