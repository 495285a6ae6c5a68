//! Tracker benchmarks: ingest throughput on one core, plus the periodic `expire` and
//! `snapshot` calls, at 1500 partitions.
//!
//! Run with `cargo bench -p sim-core --bench tracker`. The ingest group reports
//! throughput in elements/s, where one element is one Sent or Processed report.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim_core::tracker::{Processed, Sent, Tracker, TrackerConfig, WorkerRef};

const PARTITIONS: u32 = 1500;
/// Messages per partition; 1500 × 200 messages = 600 000 reports per iteration.
const ROUNDS: u64 = 200;
/// The coordinator calls `expire` about once a second; at 5 M reports/s that is far rarer
/// than this, so expiry here costs more than it would live.
const EXPIRE_EVERY: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
enum Report {
    Sent(Sent),
    Processed(Processed),
}

/// Sent and Processed reports, partition after partition, each message in order, except
/// 1 %: half of those have their Processed overtake their Sent, the other half are
/// processed after the partition's next message (an out-of-order delivery).
/// Returns the reports and how many messages were reordered each way.
fn workload() -> (Vec<Report>, usize, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut out = Vec::with_capacity((PARTITIONS as u64 * ROUNDS * 2) as usize);
    let mut held: Vec<Option<Processed>> = vec![None; PARTITIONS as usize];
    let mut t: i64 = 1_700_000_000_000_000;
    let (mut overtaken, mut deferred) = (0, 0);
    for seq in 1..=ROUNDS {
        for p in 0..PARTITIONS {
            t += 1;
            let sent = Sent {
                partition: p,
                seq,
                at_us: t,
            };
            let processed = Processed {
                partition: p,
                seq,
                worker: WorkerRef(p % 100),
                delivered: 1,
                published_us: t,
                received_us: t + 200,
                processed_us: t + 250 + i64::from(p % 7),
            };
            let slot = &mut held[p as usize];
            match rng.random_range(0..200u32) {
                0 => {
                    overtaken += 1;
                    out.push(Report::Processed(processed));
                    out.push(Report::Sent(sent));
                }
                1 if slot.is_none() => {
                    deferred += 1;
                    out.push(Report::Sent(sent));
                    *slot = Some(processed);
                    continue;
                }
                _ => {
                    out.push(Report::Sent(sent));
                    out.push(Report::Processed(processed));
                }
            }
            if let Some(late) = slot.take() {
                out.push(Report::Processed(late));
            }
        }
    }
    out.extend(held.into_iter().flatten().map(Report::Processed));
    (out, overtaken, deferred)
}

fn ingest(tracker: &mut Tracker, reports: &[Report]) {
    for (i, r) in reports.iter().enumerate() {
        match *r {
            Report::Sent(s) => {
                let _ = black_box(tracker.sent(black_box(s)));
            }
            Report::Processed(p) => {
                let _ = black_box(tracker.processed(black_box(p)));
            }
        }
        if i % EXPIRE_EVERY == 0 {
            black_box(tracker.expire(1_700_000_000_000_000));
        }
    }
}

fn bench_tracker(c: &mut Criterion) {
    let (reports, overtaken, deferred) = workload();
    // The workload must be clean apart from its deliberate reordering, or the benchmark
    // would be timing the anomaly paths instead of the common one.
    let mut check = Tracker::new(TrackerConfig::default(), PARTITIONS);
    ingest(&mut check, &reports);
    check.finish(i64::MAX);
    let s = check.snapshot(0);
    let messages = u64::from(PARTITIONS) * ROUNDS;
    assert_eq!(
        (s.sent, s.received, s.lost, s.rejected),
        (messages, messages, 0, 0)
    );
    assert_eq!(
        s.duplicates_redelivery + s.duplicates_concurrent + s.ownership_overlaps,
        0
    );
    eprintln!(
        "workload: {} reports, {messages} messages, {overtaken} processed before their Sent, \
         {deferred} processed after their successor ({} order violations)",
        reports.len(),
        s.order_violations
    );
    let mut group = c.benchmark_group("tracker");
    group.throughput(Throughput::Elements(reports.len() as u64));
    group.bench_function("ingest/1500p_1pct_reorder", |b| {
        b.iter_batched(
            || Tracker::new(TrackerConfig::default(), PARTITIONS),
            |mut t| {
                ingest(&mut t, &reports);
                t
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // A tracker mid-run: every partition holds a few in-flight messages.
    let mut warm = Tracker::new(TrackerConfig::default(), PARTITIONS);
    ingest(&mut warm, &reports);
    for p in 0..PARTITIONS {
        for seq in ROUNDS + 1..=ROUNDS + 5 {
            let _ = warm.sent(Sent {
                partition: p,
                seq,
                at_us: 1_700_000_000_000_000,
            });
        }
    }
    let mut group = c.benchmark_group("tracker/1500p");
    group.bench_function("expire", |b| {
        b.iter(|| black_box(warm.expire(black_box(1_700_000_000_000_000))))
    });
    group.bench_function("snapshot", |b| {
        b.iter(|| black_box(warm.snapshot(black_box(1_700_000_000_000_000))))
    });
    group.finish();
}

criterion_group!(benches, bench_tracker);
criterion_main!(benches);
