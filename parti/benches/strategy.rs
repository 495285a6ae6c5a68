//! Assignment-strategy benchmarks: time per `assign` at two fleet sizes, and how many
//! partitions each strategy moves when one worker joins.
//!
//! Run with `cargo bench -p parti --bench strategy`; the movement report goes to stderr.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use parti::Partition;
use parti::strategy::{
    AssignmentMap, ConsistentHash, RoundRobin, Strategy, WeightedConsistentHash,
};

/// (partitions, workers) pairs benchmarked.
const SIZES: [(usize, usize); 2] = [(1500, 100), (10_000, 1000)];

fn workers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("worker-{i:04}")).collect()
}

/// Every 20th partition (5 %) weighs 100, the rest 1: the weighted strategy's target load.
fn partitions(n: usize) -> Vec<Partition> {
    (0..n)
        .map(|i| Partition::new(format!("partition-{i}"), if i % 20 == 0 { 100 } else { 1 }))
        .collect()
}

fn strategies() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(RoundRobin),
        Box::new(ConsistentHash::default()),
        Box::new(WeightedConsistentHash::default()),
    ]
}

fn bench_assign(c: &mut Criterion) {
    for (n_parts, n_workers) in SIZES {
        let ws = workers(n_workers);
        let ps = partitions(n_parts);
        let mut group = c.benchmark_group(format!("assign/{n_parts}x{n_workers}"));
        if n_workers >= 1000 {
            // Each iteration builds a 150k-node ring; fewer samples keep the run short on a
            // shared 2-core machine without hurting the millisecond-level precision we need.
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(5));
        }
        for s in strategies() {
            group.bench_with_input(
                BenchmarkId::from_parameter(s.name()),
                &(&ws, &ps),
                |b, (ws, ps)| b.iter(|| s.assign(black_box(ws), black_box(ps))),
            );
        }
        // The leader's path: one worker joined, the assignment in force given.
        let joined = workers(n_workers + 1);
        for s in strategies() {
            let current = s.assign(&ws, &ps).expect("workers");
            group.bench_with_input(
                BenchmarkId::new("assign_from +1", s.name()),
                &(&joined, &ps, &current),
                |b, (ws, ps, current)| {
                    b.iter(|| s.assign_from(black_box(ws), black_box(ps), black_box(current)))
                },
            );
        }
        group.finish();
    }
}

fn owners(map: &AssignmentMap) -> HashMap<String, String> {
    map.iter()
        .flat_map(|(w, owned)| owned.iter().map(move |p| (p.id(), w.clone())))
        .collect()
}

/// Heaviest worker's load divided by the mean load.
fn max_over_mean(map: &AssignmentMap) -> f64 {
    let loads: Vec<i64> = map
        .values()
        .map(|owned| owned.iter().map(|p| p.weight).sum())
        .collect();
    let mean = loads.iter().sum::<i64>() as f64 / loads.len() as f64;
    loads.iter().copied().max().unwrap_or(0) as f64 / mean
}

/// Fraction of partitions whose owner changes from `before` to `after`, the leader's way:
/// the new assignment is computed given the one in force. Also the heaviest worker's load
/// over the mean after the change (the balance bound must survive it).
fn moved_fraction(
    s: &dyn Strategy,
    before: &[String],
    after: &[String],
    ps: &[Partition],
) -> (f64, f64) {
    let current = s.assign(before, ps).expect("workers");
    let next = s.assign_from(after, ps, &current).expect("workers");
    let b = owners(&current);
    let a = owners(&next);
    let moved = ps
        .iter()
        .filter(|p| b.get(&p.id()) != a.get(&p.id()))
        .count();
    (moved as f64 / ps.len() as f64, max_over_mean(&next))
}

/// Prints, per strategy and size, the heaviest worker's load over the mean, and the fraction of
/// partitions that change owner when one worker joins (it sorts last; ideal 1/(N+1)) and when
/// one worker leaves (ideal 1/N: only its own partitions). The leaving case is averaged over
/// four workers spread through the sorted list, since a worker leaving shifts the sorted index
/// of every later one, which exposes index-based tie-breaks. Not timed: the numbers go into
/// docs/PERFORMANCE.md.
fn report_movement(_c: &mut Criterion) {
    for (n_parts, n_workers) in SIZES {
        let ps = partitions(n_parts);
        let ws = workers(n_workers);
        let joined = workers(n_workers + 1);
        let leavers = [1, 3, 5, 7].map(|eighths| eighths * n_workers / 8);
        let (join_ideal, leave_ideal) = (1.0 / (n_workers + 1) as f64, 1.0 / n_workers as f64);
        for s in strategies() {
            let s = s.as_ref();
            let (join, join_balance) = moved_fraction(s, &ws, &joined, &ps);
            let mut leave = 0.0;
            let mut leave_balance: f64 = 0.0;
            for &gone in &leavers {
                let mut left = ws.clone();
                left.remove(gone);
                let (moved, balance) = moved_fraction(s, &ws, &left, &ps);
                leave += moved / leavers.len() as f64;
                leave_balance = leave_balance.max(balance);
            }
            eprintln!(
                "movement {n_parts}x{n_workers} {:<24} max/mean {:.2}  +1 worker moved {join:.4} ({:.2}x ideal {join_ideal:.4}, max/mean after {join_balance:.2})  -1 worker moved {leave:.4} ({:.2}x ideal {leave_ideal:.4}, max/mean after {leave_balance:.2})",
                s.name(),
                max_over_mean(&s.assign(&ws, &ps).expect("workers")),
                join / join_ideal,
                leave / leave_ideal,
            );
        }
    }
}

criterion_group!(benches, report_movement, bench_assign);
criterion_main!(benches);
