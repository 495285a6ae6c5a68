//! Assignment-strategy benchmarks: time per `assign` at two fleet sizes, and how many
//! partitions each strategy moves when one worker joins.
//!
//! Run with `cargo bench -p parti --bench strategy`; the movement report goes to stderr.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use parti::Partition;
use parti::strategy::{ConsistentHash, RoundRobin, Strategy, WeightedConsistentHash};

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
        group.finish();
    }
}

fn owners(s: &dyn Strategy, ws: &[String], ps: &[Partition]) -> HashMap<String, String> {
    match s.assign(ws, ps) {
        Ok(map) => map
            .into_iter()
            .flat_map(|(w, owned)| owned.into_iter().map(move |p| (p.id(), w.clone())))
            .collect(),
        Err(e) => panic!("{}: {e}", s.name()),
    }
}

/// Heaviest worker's load divided by the mean load.
fn max_over_mean(s: &dyn Strategy, ws: &[String], ps: &[Partition]) -> f64 {
    let map = match s.assign(ws, ps) {
        Ok(map) => map,
        Err(e) => panic!("{}: {e}", s.name()),
    };
    let loads: Vec<i64> = map
        .values()
        .map(|owned| owned.iter().map(|p| p.weight).sum())
        .collect();
    let mean = loads.iter().sum::<i64>() as f64 / loads.len() as f64;
    loads.iter().copied().max().unwrap_or(0) as f64 / mean
}

fn moved_fraction(s: &dyn Strategy, before: &[String], after: &[String], ps: &[Partition]) -> f64 {
    let (b, a) = (owners(s, before, ps), owners(s, after, ps));
    let moved = ps
        .iter()
        .filter(|p| b.get(&p.id()) != a.get(&p.id()))
        .count();
    moved as f64 / ps.len() as f64
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
            let join = moved_fraction(s, &ws, &joined, &ps);
            let leave = leavers
                .iter()
                .map(|&gone| {
                    let mut left = ws.clone();
                    left.remove(gone);
                    moved_fraction(s, &ws, &left, &ps)
                })
                .sum::<f64>()
                / leavers.len() as f64;
            eprintln!(
                "movement {n_parts}x{n_workers} {:<24} max/mean {:.2}  +1 worker moved {join:.4} ({:.2}x ideal {join_ideal:.4})  -1 worker moved {leave:.4} ({:.2}x ideal {leave_ideal:.4})",
                s.name(),
                max_over_mean(s, &ws, &ps),
                join / join_ideal,
                leave / leave_ideal,
            );
        }
    }
}

criterion_group!(benches, report_movement, bench_assign);
criterion_main!(benches);
