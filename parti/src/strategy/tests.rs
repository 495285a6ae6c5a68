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
/// goes from `before` to `after` workers the leader's way (given the assignment in force).
fn weighted_moves(
    ps: &[Partition],
    before: &[String],
    after: &[String],
    heavy: i64,
) -> (f64, usize) {
    let s = WeightedConsistentHash::default();
    let b = s.assign(before, ps).expect("workers present");
    let a = s.assign_from(after, ps, &b).expect("workers present");
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

// Movement bounds for the weighted strategy, the leader's way: the new assignment is computed
// given the one in force, which it keeps where it can (keep.rs). The target is 2 × the ideal
// share (issue 13). The inputs are fixed, so the measured values in the comments are exact.
// From scratch (no assignment in force) the same changes moved 6.9 × (join) and 2.6–2.9 ×
// (leave) at 1500 × 100, because the cap drops with the mean and workers near it spill.

#[test]
fn weighted_adding_a_worker_moves_a_bounded_fraction() {
    let ps = skewed_partitions(1500, 20, 100);
    let (fraction, heavy_moved) = weighted_moves(&ps, &worker_ids(100), &worker_ids(101), 100);
    let ideal = 1.0 / 101.0;
    eprintln!(
        "weighted 1500x100 +1: moved {fraction:.4} = {:.2}x ideal {ideal:.4}, {heavy_moved} of 75 extremes",
        fraction / ideal
    );
    // Measured 0.0100 (1.01x ideal: the joiner's ring arcs; from scratch 6.9x). The cap
    // shrinking from 116 to 114.9 forces nothing out: kept partitions only need the full cap.
    assert!(fraction <= 2.0 * ideal, "moved {fraction}");
    // Measured 0 of 75: extremes stay put.
    assert!(heavy_moved <= 1, "{heavy_moved} of 75 extremes moved");
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
        // Measured 1.87x, 0.87x, 0.80x ideal (from scratch: 2.9x, 2.6x, 2.7x), and 0, 1, 1
        // extremes moved (the leaver's own).
        assert!(fraction <= 2.0 * ideal, "removing {gone}: moved {fraction}");
        assert!(
            heavy_moved <= 1,
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
    // Measured 1.21x ideal (from scratch 2.6x; lightest worker: 86x).
    assert!(fraction <= 2.0 * ideal, "moved {fraction}");
    assert!(heavy_moved <= 1, "{heavy_moved} of 100 extremes moved");

    let ideal = 1.0 / 200.0;
    for gone in [25, 100, 175] {
        let (fraction, heavy_moved) = weighted_moves(&ps, &all, &without(&all, gone), 100);
        eprintln!(
            "weighted 2000x200 -{gone}: moved {fraction:.4} = {:.2}x ideal {ideal:.4}, {heavy_moved} of 100 extremes",
            fraction / ideal
        );
        // Measured 1.10x, 1.80x, 1.70x ideal (from scratch 2.2x, 1.8x, 1.7x; lightest
        // worker: 96x, 95x, 88x), and 1, 0, 0 extremes moved (the leaver's own).
        assert!(fraction <= 2.0 * ideal, "removing {gone}: moved {fraction}");
        assert!(
            heavy_moved <= 1,
            "removing {gone}: {heavy_moved} extremes moved"
        );
    }
}

// What the weighted strategy keeps of the assignment in force (keep.rs), on the benchmark's
// fleets: within 2 × the ideal share at 1500 × 100 and at 10 000 × 1000.

fn max_over_mean(map: &AssignmentMap) -> f64 {
    let (loads, _) = weighted_stats(map, i64::MAX);
    let mean = loads.iter().sum::<i64>() as f64 / loads.len() as f64;
    loads.iter().copied().max().unwrap_or(0) as f64 / mean
}

/// The fleet change `to` from the assignment `from` moves at most 2 × `ideal`, and keeps
/// the balance bound.
fn assert_kept_change(from: &AssignmentMap, to: &[String], ps: &[Partition], ideal: f64) {
    let s = WeightedConsistentHash::default();
    let after = s.assign_from(to, ps, from).expect("workers");
    assert_complete(&after, to, ps);
    let fraction = moved_fraction(from, &after, ps);
    assert!(
        fraction <= 2.0 * ideal,
        "moved {fraction:.4}, ideal {ideal:.4}"
    );
    // The bound where it is feasible; where one extreme outweighs the cap (10 000 × 1000:
    // mean 59.5, cap 77.4), no worse than a placement from scratch.
    let scratch = max_over_mean(&s.assign(to, ps).expect("workers"));
    assert!(max_over_mean(&after) <= s.overload_threshold.max(scratch) + 1e-9);
}

#[test]
fn weighted_keeps_movement_within_twice_the_ideal_at_both_benchmark_sizes() {
    let s = WeightedConsistentHash::default();
    for (n_parts, n_workers) in [(1500, 100), (10_000, 1000)] {
        let ps = skewed_partitions(n_parts, 20, 100);
        let ws = worker_ids(n_workers);
        let before = s.assign(&ws, &ps).expect("workers");
        assert_kept_change(
            &before,
            &worker_ids(n_workers + 1),
            &ps,
            1.0 / (n_workers + 1) as f64,
        );
        assert_kept_change(
            &before,
            &without(&ws, n_workers / 3),
            &ps,
            1.0 / n_workers as f64,
        );
    }
}

#[test]
fn weighted_moves_nothing_when_nothing_changed() {
    let s = WeightedConsistentHash::default();
    let (ps, ws) = (skewed_partitions(600, 20, 100), worker_ids(40));
    let before = s.assign(&ws, &ps).expect("workers");
    let again = s.assign_from(&ws, &ps, &before).expect("workers");
    assert_eq!(moved_fraction(&before, &again, &ps), 0.0);
}

#[test]
fn weighted_joiner_takes_normal_partitions_and_new_ones_are_placed() {
    let s = WeightedConsistentHash::default();
    let (ps, ws) = (skewed_partitions(600, 20, 100), worker_ids(40));
    let before = s.assign(&ws, &ps).expect("workers");
    let mut more = ps.clone();
    more.push(Partition::new("partition-new", 1));
    let joined = worker_ids(41);
    let after = s.assign_from(&joined, &more, &before).expect("workers");
    assert_complete(&after, &joined, &more);
    let joiner = &after[&joined[40]];
    assert!(!joiner.is_empty(), "the joiner got its share");
    assert!(
        joiner.iter().all(|p| p.weight == 1),
        "no extreme moved to the joiner"
    );
}

#[test]
fn weighted_kept_assignment_ignores_worker_order() {
    let s = WeightedConsistentHash::default();
    let (ps, ws) = (skewed_partitions(300, 20, 100), worker_ids(20));
    let before = s.assign(&ws, &ps).expect("workers");
    let mut joined = worker_ids(21);
    let forward = s.assign_from(&joined, &ps, &before).expect("workers");
    joined.reverse();
    let backward = s.assign_from(&joined, &ps, &before).expect("workers");
    assert_eq!(forward, backward);
}
