//! Cross-strategy properties (proptest) and balance/movement checks.
//!
//! The Go-compatibility cases live next to each strategy; this file checks the contract every
//! strategy shares and the numbers that justify choosing one over another.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

// Aliased: proptest's prelude also exports a `Strategy` trait, and its methods must stay in scope.
use super::Strategy as Assign;
use super::{AssignmentMap, ConsistentHash, RoundRobin, StrategyError, WeightedConsistentHash};
use crate::Partition;

/// Fixed seed and no persistence files: fast, reproducible, nothing written under `src/`.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(0x7061_7274_6921),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn all_strategies() -> Vec<Box<dyn Assign>> {
    vec![
        Box::new(RoundRobin),
        Box::new(ConsistentHash::default()),
        Box::new(WeightedConsistentHash::default()),
    ]
}

fn worker_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("worker-{i:03}")).collect()
}

fn owner_map(map: &AssignmentMap) -> HashMap<String, String> {
    map.iter()
        .flat_map(|(w, ps)| ps.iter().map(move |p| (p.id(), w.clone())))
        .collect()
}

/// Fraction of `partitions` whose owner differs between two assignments.
fn moved_fraction(before: &AssignmentMap, after: &AssignmentMap, partitions: &[Partition]) -> f64 {
    let (b, a) = (owner_map(before), owner_map(after));
    let moved = partitions
        .iter()
        .filter(|p| b.get(&p.id()) != a.get(&p.id()))
        .count();
    moved as f64 / partitions.len() as f64
}

/// Every partition assigned exactly once, and exactly the distinct workers have entries.
fn assert_complete(map: &AssignmentMap, workers: &[String], partitions: &[Partition]) {
    let expected: BTreeSet<&String> = workers.iter().collect();
    let got: BTreeSet<&String> = map.keys().collect();
    assert_eq!(got, expected, "worker entries");
    let mut assigned: Vec<&Partition> = map.values().flatten().collect();
    let mut wanted: Vec<&Partition> = partitions.iter().collect();
    assigned.sort();
    wanted.sort();
    assert_eq!(assigned, wanted, "partitions assigned exactly once");
}

fn arb_workers() -> impl Strategy<Value = Vec<String>> {
    // A small alphabet so duplicate ids are common and de-duplication gets exercised.
    prop::collection::vec("[a-f]{1,2}", 1..12)
}

fn arb_partitions() -> impl Strategy<Value = Vec<Partition>> {
    // Mostly light weights (including <= 0, i.e. "default") with occasional heavy ones, so
    // the weighted strategy's extreme and cap paths both run.
    let weight = prop_oneof![8 => -2i64..6, 1 => 40i64..200];
    let keys = prop::collection::vec("[a-z0-9]{1,4}", 1..3);
    prop::collection::vec(
        (keys, weight).prop_map(|(keys, weight)| Partition { keys, weight }),
        0..120,
    )
}

/// Workers plus a shuffled copy of them.
fn arb_workers_shuffled() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    arb_workers().prop_flat_map(|ws| (Just(ws.clone()), Just(ws).prop_shuffle()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_partition_once_and_every_worker_present(
        ws in arb_workers(),
        ps in arb_partitions(),
    ) {
        for s in all_strategies() {
            let map = s.assign(&ws, &ps).expect("workers present");
            assert_complete(&map, &ws, &ps);
        }
    }

    #[test]
    fn deterministic_and_independent_of_worker_order(
        (ws, shuffled) in arb_workers_shuffled(),
        ps in arb_partitions(),
    ) {
        for s in all_strategies() {
            let first = s.assign(&ws, &ps).expect("workers present");
            prop_assert_eq!(&first, &s.assign(&ws, &ps).expect("workers present"), "{}", s.name());
            prop_assert_eq!(&first, &s.assign(&shuffled, &ps).expect("workers present"), "{}", s.name());
        }
    }

    #[test]
    fn hashing_strategies_ignore_partition_order(
        ws in arb_workers(),
        ps in arb_partitions().prop_shuffle(),
    ) {
        let mut sorted = ps.clone();
        sorted.sort();
        for s in [&ConsistentHash::default() as &dyn Assign, &WeightedConsistentHash::default()] {
            prop_assert_eq!(
                owner_map(&s.assign(&ws, &ps).expect("workers present")),
                owner_map(&s.assign(&ws, &sorted).expect("workers present")),
                "{}", s.name()
            );
        }
    }

    #[test]
    fn no_workers_is_an_error(ps in arb_partitions()) {
        for s in all_strategies() {
            prop_assert_eq!(s.assign(&[], &ps), Err(StrategyError::NoWorkers));
        }
    }

    #[test]
    fn round_robin_counts_differ_by_at_most_one(n_workers in 1usize..40, n_parts in 0usize..500) {
        let ps: Vec<Partition> = (0..n_parts).map(|i| Partition::new(format!("p{i}"), 1)).collect();
        let map = RoundRobin.assign(&worker_ids(n_workers), &ps).expect("workers present");
        let counts: Vec<usize> = map.values().map(Vec::len).collect();
        let (max, min) = (counts.iter().max(), counts.iter().min());
        prop_assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1), "{:?}", counts);
    }
}

fn uniform_partitions(n: usize) -> Vec<Partition> {
    (0..n)
        .map(|i| Partition::new(format!("partition-{i}"), 1))
        .collect()
}

/// `n` partitions where every `every`-th weighs `heavy` and the rest weigh 1.
fn skewed_partitions(n: usize, every: usize, heavy: i64) -> Vec<Partition> {
    (0..n)
        .map(|i| {
            Partition::new(
                format!("partition-{i}"),
                if i % every == 0 { heavy } else { 1 },
            )
        })
        .collect()
}

#[test]
fn consistent_hash_adding_a_worker_moves_about_one_share() {
    let ps = uniform_partitions(1000);
    let ch = ConsistentHash::default();
    let before = ch.assign(&worker_ids(10), &ps).expect("workers present");
    let after = ch.assign(&worker_ids(11), &ps).expect("workers present");
    let fraction = moved_fraction(&before, &after, &ps);
    let ideal = 1.0 / 11.0;
    eprintln!("ConsistentHash 10→11: moved {fraction:.3} (ideal {ideal:.3})");
    assert!(fraction <= 2.0 * ideal, "moved {fraction}");
    // Only the new worker gains partitions.
    let (b, a) = (owner_map(&before), owner_map(&after));
    for p in &ps {
        if b[&p.id()] != a[&p.id()] {
            assert_eq!(a[&p.id()], "worker-010");
        }
    }
}

#[test]
fn consistent_hash_removing_a_worker_moves_only_its_partitions() {
    let ps = uniform_partitions(1000);
    let ch = ConsistentHash::default();
    let all = worker_ids(10);
    let removed = "worker-003";
    let remaining: Vec<String> = all.iter().filter(|w| *w != removed).cloned().collect();
    let before = owner_map(&ch.assign(&all, &ps).expect("workers present"));
    let after = owner_map(&ch.assign(&remaining, &ps).expect("workers present"));
    for p in &ps {
        let id = p.id();
        if before[&id] != removed {
            assert_eq!(before[&id], after[&id], "{id} moved needlessly");
        }
    }
}

/// Weighted load and extreme count per worker.
fn weighted_stats(map: &AssignmentMap, heavy: i64) -> (Vec<i64>, Vec<usize>) {
    let loads = map
        .values()
        .map(|ps| ps.iter().map(|p| p.weight.max(1)).sum())
        .collect();
    let extremes = map
        .values()
        .map(|ps| ps.iter().filter(|p| p.weight == heavy).count())
        .collect();
    (loads, extremes)
}

#[test]
fn weighted_balances_five_percent_extremes_over_one_hundred_workers() {
    let s = WeightedConsistentHash::default();
    let ps = skewed_partitions(1500, 20, 100);
    let map = s.assign(&worker_ids(100), &ps).expect("workers present");
    assert_complete(&map, &worker_ids(100), &ps);
    let (loads, extremes) = weighted_stats(&map, 100);
    let mean = loads.iter().sum::<i64>() as f64 / loads.len() as f64;
    let max = loads.iter().copied().max().unwrap_or(0) as f64;
    eprintln!("weighted 1500x100: max/mean load {:.3}", max / mean);
    assert!(
        max / mean <= s.overload_threshold,
        "max/mean = {}",
        max / mean
    );
    assert_eq!(extremes.iter().sum::<usize>(), 75);
    assert_eq!(extremes.iter().copied().max(), Some(1));
}

#[test]
fn weighted_gives_everyone_one_extreme_before_anyone_gets_two() {
    let ps = skewed_partitions(1500, 10, 100);
    let map = WeightedConsistentHash::default()
        .assign(&worker_ids(100), &ps)
        .expect("workers present");
    let (_, extremes) = weighted_stats(&map, 100);
    assert_eq!(extremes.iter().sum::<usize>(), 150);
    assert_eq!(extremes.iter().copied().max(), Some(2));
    assert_eq!(extremes.iter().copied().min(), Some(1));
}

/// Moved fraction, and number of moved extremes (weight `heavy`), when the weighted strategy
/// goes from `before` to `after` workers.
fn weighted_moves(
    ps: &[Partition],
    before: &[String],
    after: &[String],
    heavy: i64,
) -> (f64, usize) {
    let s = WeightedConsistentHash::default();
    let b = s.assign(before, ps).expect("workers present");
    let a = s.assign(after, ps).expect("workers present");
    assert_complete(&a, after, ps);
    let (ob, oa) = (owner_map(&b), owner_map(&a));
    let heavy_moved = ps
        .iter()
        .filter(|p| p.weight == heavy && ob[&p.id()] != oa[&p.id()])
        .count();
    (moved_fraction(&b, &a, ps), heavy_moved)
}

/// `workers` without the one at sorted position `gone`.
fn without(workers: &[String], gone: usize) -> Vec<String> {
    let mut left = workers.to_vec();
    left.remove(gone);
    left
}

// Movement bounds for the weighted strategy. Spills walk clockwise on the ring (bounded-load
// consistent hashing), so a joining or leaving worker disturbs only its ring neighbourhood plus
// the workers the changed cap tips over. The inputs are fixed, so the measured values in the
// comments are exact; the bounds leave ~15 % or more of headroom and fail for the previous
// "spill to the lightest worker, tie-break by index" rule (its values are given too).

#[test]
fn weighted_adding_a_worker_moves_a_bounded_fraction() {
    let ps = skewed_partitions(1500, 20, 100);
    let (fraction, heavy_moved) = weighted_moves(&ps, &worker_ids(100), &worker_ids(101), 100);
    let ideal = 1.0 / 101.0;
    eprintln!(
        "weighted 1500x100 +1: moved {fraction:.4} = {:.2}x ideal {ideal:.4}, {heavy_moved} of 75 extremes",
        fraction / ideal
    );
    // Measured 0.0687 (6.9x ideal; the lightest-worker rule: 8.2x). Most of it is the cap
    // shrinking from 116 to 114.9: workers holding an extreme spill one or two more normal
    // partitions to their clockwise neighbours.
    assert!(fraction <= 8.0 * ideal, "moved {fraction}");
    // Measured 1 of 75: the one whose ring arc the new worker took.
    assert!(heavy_moved <= 3, "{heavy_moved} of 75 extremes moved");
}

#[test]
fn weighted_removing_a_worker_moves_a_bounded_fraction() {
    let ps = skewed_partitions(1500, 20, 100);
    let all = worker_ids(100);
    let ideal = 1.0 / 100.0;
    for gone in [12, 50, 87] {
        let (fraction, heavy_moved) = weighted_moves(&ps, &all, &without(&all, gone), 100);
        eprintln!(
            "weighted 1500x100 -{gone}: moved {fraction:.4} = {:.2}x ideal {ideal:.4}, {heavy_moved} of 75 extremes",
            fraction / ideal
        );
        // Measured 2.9x, 2.6x, 2.7x ideal (lightest worker and index tie-breaks: 6.0x, 4.0x,
        // 5.5x), and 0, 1, 1 extremes moved (index tie-breaks: 15, 1, 11).
        assert!(fraction <= 3.5 * ideal, "removing {gone}: moved {fraction}");
        assert!(
            heavy_moved <= 3,
            "removing {gone}: {heavy_moved} extremes moved"
        );
    }
}

#[test]
fn weighted_moves_little_when_extremes_exceed_the_cap() {
    // Mean load 59.5, cap 77.4 < 100: every extreme overflows on its own, its worker takes
    // nothing else, and half the normal partitions spill. This is the regime where spilling to
    // the lightest worker moved ~90x ideal (and 46 % at 10000 x 1000).
    let ps = skewed_partitions(2000, 20, 100);
    let all = worker_ids(200);
    let map = WeightedConsistentHash::default()
        .assign(&all, &ps)
        .expect("workers present");
    let (loads, extremes) = weighted_stats(&map, 100);
    assert_eq!(extremes.iter().copied().max(), Some(1));
    assert_eq!(
        loads.iter().copied().max(),
        Some(100),
        "normals stay under the cap"
    );

    let (fraction, heavy_moved) = weighted_moves(&ps, &all, &worker_ids(201), 100);
    let ideal = 1.0 / 201.0;
    eprintln!(
        "weighted 2000x200 +1: moved {fraction:.4} = {:.2}x ideal {ideal:.4}, {heavy_moved} of 100 extremes",
        fraction / ideal
    );
    // Measured 2.6x ideal (lightest worker: 86x).
    assert!(fraction <= 3.0 * ideal, "moved {fraction}");
    assert!(heavy_moved <= 3, "{heavy_moved} of 100 extremes moved");

    let ideal = 1.0 / 200.0;
    for gone in [25, 100, 175] {
        let (fraction, heavy_moved) = weighted_moves(&ps, &all, &without(&all, gone), 100);
        eprintln!(
            "weighted 2000x200 -{gone}: moved {fraction:.4} = {:.2}x ideal {ideal:.4}, {heavy_moved} of 100 extremes",
            fraction / ideal
        );
        // Measured 2.2x, 1.8x, 1.7x ideal (lightest worker: 96x, 95x, 88x), and 1, 0, 0
        // extremes moved (index tie-breaks: 75 when worker 25 leaves).
        assert!(fraction <= 3.0 * ideal, "removing {gone}: moved {fraction}");
        assert!(
            heavy_moved <= 3,
            "removing {gone}: {heavy_moved} extremes moved"
        );
    }
}
