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

/// Prints, per strategy and size, the fraction of partitions that change owner when one worker
/// joins, next to the ideal 1/(N+1). Not timed: the numbers go into docs/PERFORMANCE.md.
fn report_movement(_c: &mut Criterion) {
    for (n_parts, n_workers) in SIZES {
        let ps = partitions(n_parts);
        let ideal = 1.0 / (n_workers + 1) as f64;
        for s in strategies() {
            let before = owners(s.as_ref(), &workers(n_workers), &ps);
            let after = owners(s.as_ref(), &workers(n_workers + 1), &ps);
            let moved = ps
                .iter()
                .filter(|p| before.get(&p.id()) != after.get(&p.id()))
                .count();
            let fraction = moved as f64 / n_parts as f64;
            eprintln!(
                "movement {n_parts}x{n_workers} +1 worker: {:<24} moved {fraction:.4} ({:.2}x ideal {ideal:.4})",
                s.name(),
                fraction / ideal
            );
        }
    }
}

criterion_group!(benches, report_movement, bench_assign);
criterion_main!(benches);
