//! The xxh3 hash ring shared by `ConsistentHash` and `WeightedConsistentHash`.
//!
//! Each worker is placed on a 64-bit ring at `virtual_nodes` pseudo-random positions; a
//! hash is owned by the first virtual node at or after it (clockwise), wrapping around to
//! the start. Virtual nodes smooth out the share each worker gets, and because a worker's
//! positions depend only on its own id, adding or removing a worker only moves the hashes
//! that land on that worker's arcs.
//!
//! `HashRing::clockwise_from` lists the workers in ring order from a hash; the weighted
//! strategy uses it to send partitions whose owner is full to the next worker with room.

use std::collections::HashSet;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::AssignmentMap;
use crate::Partition;

/// A consistent-hash ring over a de-duplicated list of worker ids.
#[derive(Debug, Clone)]
pub(crate) struct HashRing {
    /// Distinct workers, in first-occurrence order; vnodes refer to them by index.
    workers: Vec<String>,
    /// `(position, worker index)`, sorted ascending. The index is part of the sort key so
    /// that two workers colliding on one position still order deterministically.
    vnodes: Vec<(u64, usize)>,
}

impl HashRing {
    /// Builds the ring. Duplicate worker ids keep their first occurrence only, so a worker
    /// listed twice does not get twice the share. `virtual_nodes` is used as given (callers
    /// clamp it); zero virtual nodes gives a ring that owns nothing.
    pub(crate) fn new(workers: &[String], virtual_nodes: usize, seed: u64) -> Self {
        let mut seen = HashSet::with_capacity(workers.len());
        let distinct: Vec<String> = workers
            .iter()
            .filter(|w| seen.insert(w.as_str()))
            .cloned()
            .collect();

        let mut vnodes = Vec::with_capacity(distinct.len().saturating_mul(virtual_nodes));
        for (index, worker) in distinct.iter().enumerate() {
            // The worker's base hash seeds the per-vnode hashes, so every worker gets its
            // own independent sequence of positions that no other worker's presence affects.
            let base = if seed != 0 {
                xxh3_64_with_seed(worker.as_bytes(), seed)
            } else {
                xxh3_64(worker.as_bytes())
            };
            for i in 0..virtual_nodes {
                let position = xxh3_64_with_seed(&(i as u64).to_le_bytes(), base);
                vnodes.push((position, index));
            }
        }
        // Unstable sort is fine: the (position, index) keys fully order the vnodes except for
        // exact duplicates, which are indistinguishable.
        vnodes.sort_unstable();

        Self {
            workers: distinct,
            vnodes,
        }
    }

    /// The distinct workers on the ring, in first-occurrence order. `owner_index` results
    /// index into this slice.
    pub(crate) fn workers(&self) -> &[String] {
        &self.workers
    }

    /// Number of virtual nodes on the ring.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.vnodes.len()
    }

    /// Index (into `workers()`) of the worker owning `hash`: the first virtual node whose
    /// position is `>= hash`, wrapping to the first node. `None` only for an empty ring.
    pub(crate) fn owner_index(&self, hash: u64) -> Option<usize> {
        // Binary search: O(log V) per lookup, which keeps 10k-partition assignments cheap.
        let at = self
            .vnodes
            .partition_point(|&(position, _)| position < hash);
        let (_, index) = self.vnodes.get(at).or_else(|| self.vnodes.first())?;
        Some(*index)
    }

    /// Id of the worker owning `hash`; `None` only for an empty ring.
    #[cfg(test)]
    pub(crate) fn owner(&self, hash: u64) -> Option<&str> {
        self.owner_index(hash).map(|i| self.workers[i].as_str())
    }

    /// Distinct worker indices (into `workers()`) in clockwise order from `hash`: the owner
    /// of `hash` first, then the worker of each later virtual node that has not been yielded
    /// yet, wrapping around the ring. Every worker is yielded exactly once; an empty ring
    /// yields nothing.
    ///
    /// This is the probe sequence of bounded-load consistent hashing: a hash whose owner is
    /// full moves to the next worker along the ring, so which worker takes it depends only on
    /// the ring near `hash`, and adding or removing a far-away worker does not change it.
    pub(crate) fn clockwise_from(&self, hash: u64) -> Clockwise<'_> {
        let start = self
            .vnodes
            .partition_point(|&(position, _)| position < hash);
        Clockwise {
            vnodes: &self.vnodes,
            start,
            visited: 0,
            // Every worker has at least one vnode unless there are no vnodes at all.
            remaining: if self.vnodes.is_empty() {
                0
            } else {
                self.workers.len()
            },
            workers: self.workers.len(),
            first: None,
            seen: Vec::new(),
        }
    }
}

/// Iterator returned by [`HashRing::clockwise_from`].
#[derive(Debug, Clone)]
pub(crate) struct Clockwise<'a> {
    vnodes: &'a [(u64, usize)],
    /// Index of the first vnode at or after the hash (`vnodes.len()` means "wrap to 0").
    start: usize,
    /// Vnodes stepped over so far; the walk ends after one full lap at the latest.
    visited: usize,
    /// Workers not yielded yet; the walk ends early once this reaches 0.
    remaining: usize,
    /// Number of distinct workers; every vnode's index is below it.
    workers: usize,
    /// The first worker yielded. Most walks stop at it (the owner has room), so the bitset
    /// below is only allocated when the walk goes past the owner.
    first: Option<usize>,
    /// Bitset of yielded worker indices other than `first`, allocated when the walk first
    /// meets a different worker.
    seen: Vec<u64>,
}

impl Iterator for Clockwise<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let len = self.vnodes.len();
        while self.remaining > 0 && self.visited < len {
            // `start <= len` and `visited < len`, so one subtraction wraps (no division).
            let mut at = self.start + self.visited;
            if at >= len {
                at -= len;
            }
            let (_, index) = self.vnodes[at];
            self.visited += 1;
            match self.first {
                None => self.first = Some(index),
                Some(first) => {
                    if index == first {
                        continue;
                    }
                    if self.seen.is_empty() {
                        self.seen = vec![0; self.workers.div_ceil(64)];
                    }
                    let (word, bit) = (index / 64, 1u64 << (index % 64));
                    if self.seen[word] & bit != 0 {
                        continue;
                    }
                    self.seen[word] |= bit;
                }
            }
            self.remaining -= 1;
            return Some(index);
        }
        None
    }
}

/// Workers sorted ascending with duplicates removed. Every strategy starts from this so
/// that the caller's worker order (which differs between leaders and KV watch events)
/// never changes the result.
pub(crate) fn canonical_workers(workers: &[String]) -> Vec<String> {
    let mut sorted = workers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// Builds the assignment from `owners[i]` = index into `workers` of partition `i`'s owner.
/// Every worker gets an entry, and each worker's list keeps the input partition order, so
/// all strategies present their output the same way.
pub(crate) fn collect_assignment(
    workers: &[String],
    partitions: &[Partition],
    owners: &[usize],
) -> AssignmentMap {
    let mut lists: Vec<Vec<Partition>> = vec![Vec::new(); workers.len()];
    for (partition, &owner) in partitions.iter().zip(owners) {
        lists[owner].push(partition.clone());
    }
    workers.iter().cloned().zip(lists).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_ring_owns_nothing() {
        let ring = HashRing::new(&[], 150, 0);
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.owner_index(42), None);
        let no_vnodes = HashRing::new(&ids(&["a"]), 0, 0);
        assert_eq!(no_vnodes.owner(42), None);
    }

    #[test]
    fn duplicates_keep_first_occurrence() {
        let ring = HashRing::new(&ids(&["b", "a", "b", "c", "a"]), 10, 0);
        assert_eq!(ring.workers(), ids(&["b", "a", "c"]).as_slice());
        assert_eq!(ring.len(), 30);
    }

    #[test]
    fn vnodes_are_sorted_and_positions_match_the_formula() {
        let ring = HashRing::new(&ids(&["w1", "w2"]), 5, 0);
        assert!(ring.vnodes.windows(2).all(|p| p[0] <= p[1]));
        let base = xxh3_64(b"w2");
        for i in 0..5u64 {
            let pos = xxh3_64_with_seed(&i.to_le_bytes(), base);
            assert!(ring.vnodes.contains(&(pos, 1)));
        }
        let seeded = HashRing::new(&ids(&["w1", "w2"]), 5, 7);
        let base = xxh3_64_with_seed(b"w1", 7);
        let pos = xxh3_64_with_seed(&0u64.to_le_bytes(), base);
        assert!(seeded.vnodes.contains(&(pos, 0)));
    }

    #[test]
    fn lookup_takes_first_position_at_or_after_and_wraps() {
        let ring = HashRing::new(&ids(&["a", "b", "c"]), 20, 0);
        let (first_pos, first_idx) = ring.vnodes[0];
        let (last_pos, _) = ring.vnodes[ring.len() - 1];
        assert_eq!(ring.owner_index(0), Some(first_idx));
        assert_eq!(ring.owner_index(first_pos), Some(first_idx));
        // Past the last vnode the lookup wraps to the first one.
        if last_pos < u64::MAX {
            assert_eq!(ring.owner_index(last_pos + 1), Some(first_idx));
        }
        let expected_max = if last_pos == u64::MAX {
            ring.vnodes[ring.len() - 1].1
        } else {
            first_idx
        };
        assert_eq!(ring.owner_index(u64::MAX), Some(expected_max));
        // Exactly between two vnodes: the later one wins.
        let (p5, i5) = ring.vnodes[5];
        let (p6, i6) = ring.vnodes[6];
        if p6 > p5 + 1 {
            assert_eq!(ring.owner_index(p5 + 1), Some(i6));
        }
        assert_eq!(ring.owner_index(p5), Some(i5));
    }

    #[test]
    fn order_of_workers_does_not_change_owners() {
        let a = HashRing::new(&ids(&["a", "b", "c", "d"]), 50, 9);
        let b = HashRing::new(&ids(&["d", "c", "b", "a"]), 50, 9);
        for h in (0..1000u64).map(|i| xxh3_64(&i.to_le_bytes())) {
            assert_eq!(a.owner(h), b.owner(h));
        }
    }

    /// Reference walk: scan the vnodes from the first at or after `hash`, wrapping, and keep
    /// each worker's first appearance.
    fn naive_clockwise(ring: &HashRing, hash: u64) -> Vec<usize> {
        let start = ring
            .vnodes
            .iter()
            .position(|&(p, _)| p >= hash)
            .unwrap_or(0);
        let mut seen = HashSet::new();
        (0..ring.len())
            .map(|k| ring.vnodes[(start + k) % ring.len()].1)
            .filter(|&i| seen.insert(i))
            .collect()
    }

    #[test]
    fn clockwise_yields_every_worker_once_starting_with_the_owner() {
        // 130 workers: more than two bitset words, so the word/bit split is exercised.
        let names: Vec<String> = (0..130).map(|i| format!("w{i}")).collect();
        for vnodes in [1, 3, 150] {
            let ring = HashRing::new(&names, vnodes, 5);
            let (first_pos, _) = ring.vnodes[0];
            let (last_pos, _) = ring.vnodes[ring.len() - 1];
            let probes = (0..200u64).map(|i| xxh3_64(&i.to_le_bytes())).chain([
                0,
                first_pos,
                last_pos,
                last_pos.saturating_add(1),
                u64::MAX,
            ]);
            for hash in probes {
                let walk: Vec<usize> = ring.clockwise_from(hash).collect();
                assert_eq!(walk, naive_clockwise(&ring, hash), "hash {hash}");
                assert_eq!(walk.len(), 130);
                assert_eq!(walk.first().copied(), ring.owner_index(hash));
            }
        }
    }

    #[test]
    fn clockwise_on_tiny_and_empty_rings() {
        let one = HashRing::new(&ids(&["a"]), 4, 0);
        assert_eq!(one.clockwise_from(7).collect::<Vec<_>>(), vec![0]);
        assert_eq!(HashRing::new(&[], 150, 0).clockwise_from(7).count(), 0);
        assert_eq!(
            HashRing::new(&ids(&["a", "b"]), 0, 0)
                .clockwise_from(7)
                .count(),
            0
        );
    }

    #[test]
    fn seed_changes_positions() {
        let a = HashRing::new(&ids(&["a", "b"]), 10, 0);
        let b = HashRing::new(&ids(&["a", "b"]), 10, 1);
        assert_ne!(a.vnodes, b.vnodes);
    }
}
