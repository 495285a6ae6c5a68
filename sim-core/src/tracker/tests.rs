//! Unit tests: each check is shown quiet on a clean flow and firing on a deliberate fault.

use super::*;

const WINDOW: i64 = 1_000;

fn tracker(partitions: u32) -> Tracker {
    let config = TrackerConfig {
        validation_window_us: WINDOW,
        ..TrackerConfig::default()
    };
    Tracker::new(config, partitions)
}

fn sent(partition: u32, seq: u64, at_us: i64) -> Sent {
    Sent {
        partition,
        seq,
        at_us,
    }
}

/// First delivery processed by `worker` during `[start, end]`, published 10 µs before.
fn done(partition: u32, seq: u64, worker: u32, start: i64, end: i64) -> Processed {
    Processed {
        partition,
        seq,
        worker: WorkerRef(worker),
        delivered: 1,
        published_us: start - 10,
        received_us: start,
        processed_us: end,
    }
}

fn redelivered(partition: u32, seq: u64, worker: u32, start: i64, end: i64) -> Processed {
    Processed {
        delivered: 2,
        ..done(partition, seq, worker, start, end)
    }
}

#[track_caller]
fn feed_sent(t: &mut Tracker, r: Sent) {
    assert_eq!(t.sent(r), Ok(()));
}

#[track_caller]
fn feed(t: &mut Tracker, r: Processed) -> Observation {
    match t.processed(r) {
        Ok(o) => o,
        Err(e) => panic!("report refused: {e}"),
    }
}

/// Redeliveries fail; order is not promised.
const STRICT: Rules = Rules {
    strict_duplicates: true,
    ordered: false,
};
/// Neither redeliveries nor order fail.
const LENIENT: Rules = Rules {
    strict_duplicates: false,
    ordered: false,
};

#[track_caller]
fn reasons(s: &TrackerSnapshot, strict: bool) -> Vec<String> {
    let rules = Rules {
        strict_duplicates: strict,
        ordered: false,
    };
    s.failures(rules).iter().map(ToString::to_string).collect()
}

#[test]
fn in_order_flow_has_no_anomalies() {
    let mut t = tracker(3);
    let mut now = 0;
    for seq in 1..=1000 {
        for p in 0..3 {
            now += 10;
            feed_sent(&mut t, sent(p, seq, now));
            let o = feed(&mut t, done(p, seq, p, now + 1, now + 5));
            assert_eq!(
                o,
                Observation {
                    first: true,
                    ..Observation::default()
                }
            );
        }
        if seq % 100 == 0 {
            assert_eq!(t.expire(now), 0);
        }
    }
    assert_eq!(t.finish(now + 1), 0);
    let s = t.snapshot(now + 1);
    assert_eq!(
        (s.sent, s.received, s.in_flight, s.missing),
        (3000, 3000, 0, 0)
    );
    assert_eq!((s.lost, s.late, s.excused, s.rejected), (0, 0, 0, 0));
    assert_eq!((s.duplicates_redelivery, s.duplicates_concurrent), (0, 0));
    assert_eq!(
        (s.ownership_overlaps, s.order_violations, s.malformed),
        (0, 0, 0)
    );
    assert_eq!(s.received_unconfirmed, 0);
    assert!(s.anomalies.is_empty());
    assert!(s.failures(STRICT).is_empty());
    assert_eq!(s.latency.count, 3000);
    assert_eq!((s.latency.p50_us, s.latency.max_us), (14, 14));
    let loads: Vec<u64> = s.workers.iter().map(|w| w.processed).collect();
    assert_eq!(loads, [1000, 1000, 1000]);
    for p in 0..3 {
        assert_eq!(t.window_len(p), 0);
    }
}

#[test]
fn dropped_message_is_lost_only_after_the_window() {
    let mut t = tracker(1);
    for seq in 1..=5 {
        feed_sent(&mut t, sent(0, seq, 100));
        if seq != 3 {
            feed(&mut t, done(0, seq, 1, 100, 110));
        }
    }
    assert_eq!(t.expire(100 + WINDOW - 1), 0);
    let s = t.snapshot(100 + WINDOW - 1);
    assert_eq!((s.lost, s.missing, s.in_flight), (0, 1, 1));
    assert_eq!(s.oldest_missing_age_us, Some(WINDOW - 1));
    assert!(s.failures(LENIENT).is_empty());

    assert_eq!(t.expire(100 + WINDOW), 1);
    let s = t.snapshot(100 + WINDOW);
    assert_eq!((s.lost, s.missing, s.in_flight), (1, 0, 0));
    assert_eq!(s.received, 4);
    assert_eq!(
        reasons(&s, false),
        ["loss: 1 message(s) known to exist were never processed, e.g. partition 0 seq 3"]
    );
    assert!(matches!(
        s.failures(LENIENT)[0],
        TrackerFailure::Loss { count: 1, .. }
    ));
}

#[test]
fn dropped_message_is_lost_at_finish_even_within_the_window() {
    let mut t = tracker(2);
    feed_sent(&mut t, sent(1, 1, 0));
    feed_sent(&mut t, sent(1, 2, 0));
    feed(&mut t, done(1, 2, 1, 5, 6));
    assert_eq!(t.expire(10), 0);
    assert_eq!(t.finish(10), 1);
    let s = t.snapshot(10);
    assert_eq!(s.lost, 1);
    assert_eq!(
        s.samples(AnomalyKind::Lost)
            .next()
            .map(|a| (a.partition, a.seq)),
        Some((1, 1))
    );
}

#[test]
fn seq_known_only_through_a_higher_one_is_lost() {
    // The producer died between PubAck and its report for seq 2: no Sent ever arrives, yet
    // seq 3 proves seq 2 exists (sequences are gap-free), and nobody processed it.
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    feed(&mut t, done(0, 1, 1, 0, 1));
    feed(&mut t, done(0, 3, 1, 2, 3));
    assert_eq!(t.snapshot(3).missing, 1);
    assert_eq!(t.finish(4), 1);
    let s = t.snapshot(4);
    assert_eq!(
        (s.lost, s.sent, s.received, s.received_unconfirmed),
        (1, 1, 2, 1)
    );
}

#[test]
fn late_arrival_moves_from_lost_to_late() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    assert_eq!(t.expire(WINDOW), 1);
    assert_eq!(t.snapshot(WINDOW).in_flight, 0);
    let o = feed(&mut t, done(0, 1, 7, WINDOW + 5, WINDOW + 9));
    assert!(o.first && o.late);
    assert_eq!(t.finish(WINDOW + 10), 0);
    let s = t.snapshot(WINDOW + 10);
    assert_eq!((s.lost, s.late, s.received, s.in_flight), (0, 1, 1, 0));
    // Published at WINDOW - 5, processed at WINDOW + 9: late, not lost, and a failure.
    assert_eq!(s.late_worst_us, 14);
    assert!(
        matches!(
            s.failures(LENIENT).as_slice(),
            [TrackerFailure::Late {
                count: 1,
                worst_delay_us: 14,
                ..
            }]
        ),
        "{:?}",
        s.failures(LENIENT)
    );
    assert_eq!(
        reasons(&s, false),
        [
            "late: 1 message(s) processed after the validation window (worst 0.0s after \
          publishing), e.g. partition 0 seq 1 (w7)"
        ]
    );
    let late: Vec<_> = s.samples(AnomalyKind::Late).collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].worker, Some(WorkerRef(7)));
}

#[test]
fn window_runs_from_when_the_tracker_learned_of_the_seq() {
    // A Sent stamped long ago but delivered late (agent reconnecting) gets a full window.
    let mut t = tracker(1);
    t.expire(50_000);
    feed_sent(&mut t, sent(0, 1, 0));
    assert_eq!(t.expire(50_000 + WINDOW - 1), 0);
    assert_eq!(t.expire(50_000 + WINDOW), 1);
}

#[test]
fn reordering_is_not_loss() {
    let mut t = tracker(1);
    // Processed reports overtake their Sents, and arrive out of order.
    feed(&mut t, done(0, 3, 1, 10, 11));
    feed(&mut t, done(0, 1, 1, 12, 13));
    let s = t.snapshot(13);
    assert_eq!(
        (s.sent, s.received, s.in_flight, s.received_unconfirmed),
        (0, 2, 0, 2)
    );
    feed(&mut t, done(0, 2, 1, 14, 15));
    feed_sent(&mut t, sent(0, 2, 16));
    feed_sent(&mut t, sent(0, 3, 16));
    feed_sent(&mut t, sent(0, 1, 16));
    assert_eq!(t.window_len(0), 0);
    assert_eq!(t.finish(WINDOW * 10), 0);
    let s = t.snapshot(WINDOW * 10);
    assert_eq!(
        (s.sent, s.received, s.in_flight, s.received_unconfirmed),
        (3, 3, 0, 0)
    );
    assert_eq!((s.lost, s.duplicate_sent), (0, 0));
    // 1 and 2 arrived below 3 on their first delivery: counted, a failure only where the
    // workers promise order (not in STRICT).
    assert_eq!(s.order_violations, 2);
    assert!(s.failures(STRICT).is_empty());
}

#[test]
fn duplicate_sent_is_counted_once() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    feed_sent(&mut t, sent(0, 1, 0));
    feed(&mut t, done(0, 1, 1, 0, 1));
    feed_sent(&mut t, sent(0, 1, 0));
    let s = t.snapshot(1);
    assert_eq!((s.sent, s.duplicate_sent, s.in_flight), (1, 2, 0));
}

#[test]
fn redelivery_after_the_holder_let_go() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    feed(&mut t, done(0, 1, 1, 100, 110));
    // w1 crashed before its ack; w2 gets it again much later.
    let o = feed(&mut t, redelivered(0, 1, 2, 2_000_000, 2_000_010));
    assert_eq!(o.duplicate, Some(DuplicateKind::Redelivery));
    assert_eq!(o.overlap_with, None);
    // The same worker seeing it twice is a redelivery, never concurrency.
    let o = feed(&mut t, redelivered(0, 1, 2, 2_000_005, 2_000_020));
    assert_eq!(o.duplicate, Some(DuplicateKind::Redelivery));
    let s = t.snapshot(3_000_000);
    assert_eq!((s.duplicates_redelivery, s.duplicates_concurrent), (2, 0));
    assert_eq!((s.ownership_overlaps, s.received), (0, 1));
    assert!(
        s.failures(LENIENT).is_empty(),
        "redeliveries pass unless strict"
    );
    assert_eq!(
        reasons(&s, true),
        [
            "duplicates (strict): 2 message(s) processed more than once (2 redelivered, 0 by \
             two workers at once), e.g. partition 0 seq 1 (w2), partition 0 seq 1 (w2)"
        ]
    );
}

#[test]
fn duplicate_while_another_worker_is_active_is_concurrent() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    // w1 was paused while holding seq 1 (long interval); w2 took over meanwhile.
    feed(&mut t, done(0, 1, 1, 100, 9_000));
    let o = feed(&mut t, redelivered(0, 1, 2, 4_000, 4_010));
    assert_eq!(o.duplicate, Some(DuplicateKind::Concurrent));
    assert_eq!(o.overlap_with, Some(WorkerRef(1)));
    let s = t.snapshot(10_000);
    assert_eq!(
        (
            s.duplicates_redelivery,
            s.duplicates_concurrent,
            s.ownership_overlaps
        ),
        (0, 1, 1)
    );
    let r = reasons(&s, false);
    assert_eq!(r.len(), 1);
    assert!(r[0].starts_with("concurrent processing:"), "{r:?}");
    assert!(r[0].contains("partition 0 seq 1 (w2 while w1)"), "{r:?}");
    assert_eq!(
        s.failures(STRICT).len(),
        2,
        "strict adds the duplicate reason"
    );
}

#[test]
fn ownership_overlap_without_duplicate() {
    let mut t = tracker(2);
    feed(&mut t, done(0, 1, 1, 100, 200));
    let o = feed(&mut t, done(0, 2, 2, 150, 160));
    assert_eq!(
        (o.first, o.duplicate, o.overlap_with),
        (true, None, Some(WorkerRef(1)))
    );
    // Other partitions are independent.
    feed(&mut t, done(1, 1, 3, 150, 160));
    let s = t.snapshot(300);
    assert_eq!((s.ownership_overlaps, s.duplicates_concurrent), (1, 0));
    assert!(matches!(
        s.failures(LENIENT).as_slice(),
        [TrackerFailure::ConcurrentProcessing {
            duplicates: 0,
            overlaps: 1,
            ..
        }]
    ));
}

#[test]
fn clean_handoff_is_not_an_overlap() {
    let mut t = tracker(1);
    for seq in 1..=10 {
        feed(
            &mut t,
            done(0, seq, 1, seq as i64 * 100, seq as i64 * 100 + 50),
        );
    }
    // w2 starts after w1's last message ended, and w1 comes back a minute later.
    for seq in 11..=20 {
        feed(
            &mut t,
            done(0, seq, 2, seq as i64 * 100 + 1, seq as i64 * 100 + 50),
        );
    }
    feed(&mut t, done(0, 21, 1, 60_000_000, 60_000_050));
    assert_eq!(t.snapshot(0).ownership_overlaps, 0);
}

#[test]
fn activity_between_two_messages_counts_as_busy() {
    // w2's interval falls between two of w1's, touching neither: w1's merged span covers it.
    let mut t = tracker(1);
    feed(&mut t, done(0, 1, 1, 0, 10));
    feed(&mut t, done(0, 3, 1, 20, 30));
    let o = feed(&mut t, done(0, 2, 2, 12, 18));
    assert_eq!(o.overlap_with, Some(WorkerRef(1)));
}

#[test]
fn overlap_within_tolerance_is_ignored() {
    let config = TrackerConfig {
        overlap_tolerance_us: 10,
        ..TrackerConfig::default()
    };
    let mut t = Tracker::new(config, 1);
    feed(&mut t, done(0, 1, 1, 100, 200));
    assert_eq!(feed(&mut t, done(0, 2, 2, 195, 260)).overlap_with, None);
    assert_eq!(
        feed(&mut t, done(0, 3, 3, 180, 300)).overlap_with,
        Some(WorkerRef(1))
    );
}

#[test]
fn order_violations_count_first_processings_below_a_successor() {
    let mut t = tracker(1);
    feed(&mut t, done(0, 1, 1, 0, 1));
    feed(&mut t, done(0, 3, 1, 2, 3));
    assert!(feed(&mut t, done(0, 2, 1, 4, 5)).order_violation);
    feed(&mut t, done(0, 5, 1, 6, 7));
    // A redelivery that comes back after its successors broke the order as well (a
    // message nakked with a delay)…
    assert!(feed(&mut t, redelivered(0, 4, 1, 8, 9)).order_violation);
    // …but processing a message again is a duplicate, not a second violation.
    assert!(!feed(&mut t, redelivered(0, 2, 1, 10, 11)).order_violation);
    let s = t.snapshot(12);
    assert_eq!(s.order_violations, 2);
    let v: Vec<_> = s
        .samples(AnomalyKind::OrderViolation)
        .map(|a| a.seq)
        .collect();
    assert_eq!(v, [2, 4]);
    assert!(
        s.failures(LENIENT).is_empty(),
        "counted, not failed, where order is not promised"
    );
    let ordered = Rules {
        ordered: true,
        ..LENIENT
    };
    assert!(
        matches!(
            s.failures(ordered).as_slice(),
            [TrackerFailure::OrderViolation { count: 2, .. }]
        ),
        "{:?}",
        s.failures(ordered)
    );
}

#[test]
fn order_is_judged_per_worker_so_a_handoffs_interleaved_reports_are_not_a_violation() {
    let mut t = tracker(1);
    feed(&mut t, done(0, 1, 1, 0, 1));
    feed(&mut t, done(0, 2, 1, 2, 3));
    // The handoff: w2 took over at 3; its first report reaches the coordinator before w1's
    // last one (two agents, or two sockets of one agent, read in either order).
    assert!(!feed(&mut t, done(0, 4, 2, 6, 7)).order_violation);
    assert!(!feed(&mut t, done(0, 3, 1, 4, 5)).order_violation);
    // But w2 processing 5 after 6 is w2 breaking the order (a nakked 5 came back late).
    feed(&mut t, done(0, 6, 2, 8, 9));
    assert!(feed(&mut t, redelivered(0, 5, 2, 10, 11)).order_violation);
    assert_eq!(t.snapshot(12).order_violations, 1);
}

#[test]
fn two_first_deliveries_of_one_message_are_concurrent_however_far_apart() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    feed(&mut t, done(0, 1, 1, 100, 110));
    // No overlap in time, but the broker delivered it once to each: two consumers.
    let o = feed(&mut t, done(0, 1, 2, 2_000_000, 2_000_010));
    assert_eq!(o.overlap_with, None);
    assert_eq!(o.duplicate, Some(DuplicateKind::Concurrent));
    let s = t.snapshot(3_000_000);
    assert_eq!((s.duplicates_redelivery, s.duplicates_concurrent), (0, 1));
    assert!(matches!(
        s.failures(LENIENT).as_slice(),
        [TrackerFailure::ConcurrentProcessing {
            duplicates: 1,
            overlaps: 0,
            ..
        }]
    ));
}

/// The lab's false positive: worker 1, frozen after processing seq 1 (delivery 1) but
/// before reporting it, lets the ack wait expire; worker 2 processes the redelivery and
/// reports first; worker 1's report arrives when it is continued. Two reports, one of which
/// says the broker delivered the message again: a redelivery, whichever arrives first —
/// also across a checkpoint taken between the two.
#[test]
fn a_frozen_workers_late_report_of_the_first_delivery_is_a_redelivery() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    feed(&mut t, redelivered(0, 1, 2, 30_000_000, 30_000_010));
    let state = t.export();
    let mut t = match Tracker::import(*t.config(), state) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let o = feed(&mut t, done(0, 1, 1, 100, 110));
    assert_eq!(o.overlap_with, None);
    assert_eq!(o.duplicate, Some(DuplicateKind::Redelivery));
    let s = t.snapshot(40_000_000);
    assert_eq!((s.duplicates_redelivery, s.duplicates_concurrent), (1, 0));
    assert!(s.failures(LENIENT).is_empty(), "{:?}", s.failures(LENIENT));
    let sample = s.samples(AnomalyKind::DuplicateRedelivery).next();
    assert!(
        sample.is_some_and(|a| a.worker == Some(WorkerRef(1))
            && a.other_worker == Some(WorkerRef(2))),
        "the sample names both workers: {sample:?}"
    );

    // Only once, and only the earlier delivery: a third report of delivery 1 (a third
    // consumer) is concurrent.
    let o = feed(&mut t, done(0, 1, 3, 100, 110));
    assert_eq!(o.duplicate, Some(DuplicateKind::Concurrent));

    // The control: without the redelivery on record, the same late first delivery after a
    // first delivery is still two consumers.
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    feed(&mut t, done(0, 1, 2, 30_000_000, 30_000_010));
    let o = feed(&mut t, done(0, 1, 1, 100, 110));
    assert_eq!(o.duplicate, Some(DuplicateKind::Concurrent));
}

/// A report of delivery 1 processed *after* the redelivery was received, or by the worker
/// that processed the redelivery, is not the frozen worker's earlier delivery: concurrent.
#[test]
fn a_delivery_1_report_the_redelivery_cannot_explain_is_concurrent() {
    let cases = [
        ("processed after", done(0, 1, 1, 31_000_000, 31_000_010)),
        ("the same worker", done(0, 1, 2, 100, 110)),
    ];
    for (why, late) in cases {
        let mut t = tracker(1);
        feed_sent(&mut t, sent(0, 1, 0));
        feed(&mut t, redelivered(0, 1, 2, 30_000_000, 30_000_010));
        let o = feed(&mut t, late);
        assert_eq!(o.duplicate, Some(DuplicateKind::Concurrent), "{why}");
    }
}

/// The same reversed arrival while the two workers' processing overlapped in time is two
/// owners at once, not a redelivery: the delivery counts do not excuse an overlap.
#[test]
fn a_reversed_redelivery_that_overlaps_is_still_concurrent() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    feed(&mut t, redelivered(0, 1, 2, 1_000, 200_000));
    let o = feed(&mut t, done(0, 1, 1, 1_000, 200_000));
    assert_eq!(o.overlap_with, Some(WorkerRef(2)));
    assert_eq!(o.duplicate, Some(DuplicateKind::Concurrent));
}

#[test]
fn removed_partitions_are_not_lost() {
    let mut t = tracker(2);
    for seq in 1..=5 {
        feed_sent(&mut t, sent(1, seq, 0));
    }
    feed(&mut t, done(1, 1, 1, 0, 1));
    feed(&mut t, done(1, 2, 1, 0, 1));
    assert_eq!(t.remove_partition(1, 0, 0), Ok(3));
    // Stragglers while removed: a Sent (excused at the next expiry: a removed partition
    // keeps nothing in flight) and a missing seq processed.
    feed_sent(&mut t, sent(1, 6, 10));
    let o = feed(&mut t, done(1, 4, 1, 10, 11));
    assert!(o.first && o.duplicate.is_none() && !o.late);
    assert_eq!(t.expire(WINDOW * 100), 0);
    let s = t.snapshot(WINDOW * 100);
    assert_eq!((s.partitions_active, s.partitions_removed), (1, 1));
    assert_eq!((s.excused, s.received, s.lost, s.in_flight), (3, 3, 0, 0));
    assert_eq!(t.finish(WINDOW * 100), 0);
    let s = t.snapshot(WINDOW * 100);
    assert_eq!((s.excused, s.lost, s.in_flight), (3, 0, 0));
    assert!(s.failures(STRICT).is_empty());
}

#[test]
fn a_removed_partitions_acknowledged_seqs_are_owed_not_excused() {
    let mut t = tracker(1);
    for seq in 1..=6 {
        feed_sent(&mut t, sent(0, seq, 0));
    }
    // Seq 2 was taken and acknowledged by somebody who never reported it; 4 and 5 are in
    // flight with the worker, 6 was never delivered.
    feed(&mut t, done(0, 1, 1, 0, 1));
    feed(&mut t, done(0, 3, 1, 0, 1));
    // The ack floor at the removal: seqs up to 3 were acknowledged.
    assert_eq!(
        t.remove_partition(0, 3, 0),
        Ok(0),
        "nothing excused in front of an owed seq"
    );
    // 4's report arrives after the removal: counted, as for any removed partition.
    feed(&mut t, done(0, 4, 1, 0, 2));
    assert_eq!(t.expire(WINDOW / 2), 0, "within the window");
    assert_eq!(
        t.expire(WINDOW * 2),
        1,
        "the owed seq is lost after the window"
    );
    let s = t.snapshot(WINDOW * 2);
    assert_eq!((s.lost, s.excused), (1, 2), "5 and 6 excused behind it");
    assert_eq!(s.samples(AnomalyKind::Lost).next().map(|a| a.seq), Some(2));
    assert_eq!(t.finish(WINDOW * 3), 0);

    // The control: the owed seq's report arrives, late but within the window.
    let mut t = tracker(1);
    for seq in 1..=3 {
        feed_sent(&mut t, sent(0, seq, 0));
    }
    feed(&mut t, done(0, 1, 1, 0, 1));
    assert_eq!(t.remove_partition(0, 2, 0), Ok(0));
    feed(&mut t, done(0, 2, 1, 0, 2));
    assert_eq!(t.expire(WINDOW / 2), 0);
    assert_eq!(
        t.snapshot(WINDOW / 2).in_flight,
        0,
        "seq 3 excused once 2 arrived"
    );
    assert_eq!(t.expire(WINDOW * 2), 0);
    assert_eq!(t.finish(WINDOW * 2), 0);
    let s = t.snapshot(WINDOW * 2);
    assert_eq!((s.lost, s.excused, s.late), (0, 1, 0));

    // An ack floor beyond every report: those seqs exist, and are owed.
    let mut t = tracker(1);
    assert_eq!(t.remove_partition(0, 4, 0), Ok(0));
    assert_eq!(t.finish(10), 4);
    // A corrupt floor, further than any report may reach, changes nothing.
    let mut t = tracker(1);
    assert!(matches!(
        t.remove_partition(0, u64::MAX / 2, 0),
        Err(InputError::SequenceJump { .. })
    ));
    assert_eq!(t.snapshot(0).partitions_removed, 0);
}

#[test]
fn re_added_partition_is_tracked_again() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 1, 0));
    assert_eq!(t.remove_partition(0, 0, 0), Ok(1));
    feed_sent(&mut t, sent(0, 2, 5));
    assert_eq!(t.add_partition(0), Ok(()));
    assert_eq!(
        t.snapshot(5).excused,
        2,
        "seqs known while removed stay excused"
    );
    feed_sent(&mut t, sent(0, 3, 10));
    assert_eq!(t.finish(20), 1);
    let s = t.snapshot(20);
    assert_eq!((s.lost, s.excused), (1, 2));
    assert_eq!(s.samples(AnomalyKind::Lost).next().map(|a| a.seq), Some(3));
}

#[test]
fn ten_million_in_order_messages_keep_the_window_small() {
    let mut t = tracker(1);
    let mut widest = 0;
    // The producer runs up to 64 messages ahead of the worker, as a live run would.
    const AHEAD: u64 = 64;
    for seq in 1..=10_000_000u64 {
        feed_sent(&mut t, sent(0, seq, seq as i64));
        if seq > AHEAD {
            let s = seq - AHEAD;
            feed(&mut t, done(0, s, 1, s as i64, s as i64 + 3));
        }
        if seq % 1_000_000 == 0 {
            widest = widest.max(t.window_len(0));
            t.expire(seq as i64);
        }
    }
    assert_eq!(widest, AHEAD as usize);
    assert!(t.partitions[0].window_capacity() < 256);
    let s = t.snapshot(0);
    assert_eq!(
        (s.sent, s.received, s.in_flight),
        (10_000_000, 10_000_000 - AHEAD, AHEAD)
    );
}

#[test]
fn drained_backlog_gives_memory_back() {
    let mut t = tracker(1);
    for seq in 1..=100_000 {
        feed_sent(&mut t, sent(0, seq, 0));
    }
    assert!(t.partitions[0].window_capacity() >= 100_000);
    for seq in 1..=100_000 {
        feed(&mut t, done(0, seq, 1, 1, 2));
    }
    t.expire(3);
    assert!(t.partitions[0].window_capacity() < 1024);
}

#[test]
fn invalid_reports_are_refused_and_fail_the_run() {
    let config = TrackerConfig {
        max_partitions: 8,
        max_seq_jump: 100,
        ..TrackerConfig::default()
    };
    let mut t = Tracker::new(config, 4);
    assert_eq!(
        t.sent(sent(8, 1, 0)),
        Err(InputError::PartitionOutOfRange {
            partition: 8,
            limit: 8
        })
    );
    assert_eq!(
        t.sent(sent(0, 0, 0)),
        Err(InputError::ZeroSequence { partition: 0 })
    );
    assert_eq!(
        t.processed(done(1, 102, 1, 0, 1)),
        Err(InputError::SequenceJump {
            partition: 1,
            seq: 102,
            known: 0,
            limit: 100
        })
    );
    // Partitions the tracker was not told about are picked up, within the limit.
    feed(&mut t, done(6, 100, 1, 0, 1));
    assert_eq!(t.finish(0), 99);
    let s = t.snapshot(0);
    assert_eq!((s.rejected, s.received, s.partitions_active), (3, 1, 7));
    let r = reasons(&s, false);
    assert_eq!(r.len(), 2);
    assert!(
        r[1].starts_with("invalid reports: 3 report(s) refused"),
        "{r:?}"
    );
}

#[test]
fn malformed_and_worker_load() {
    let mut t = tracker(1);
    t.malformed(WorkerRef(2));
    t.malformed(WorkerRef(u32::MAX));
    feed(&mut t, done(0, 1, 2, 0, 1));
    feed(&mut t, redelivered(0, 1, 0, 5_000_000, 5_000_001));
    let s = t.snapshot(0);
    assert_eq!(s.malformed, 2);
    let loads: Vec<_> = s
        .workers
        .iter()
        .map(|w| (w.worker.0, w.processed, w.malformed))
        .collect();
    assert_eq!(loads, [(0, 1, 0), (2, 1, 1)]);
}

#[test]
fn progress_marker_moves_only_on_new_distinct_messages() {
    let mut t = tracker(1);
    let m0 = t.progress_marker();
    feed_sent(&mut t, sent(0, 1, 0));
    assert_eq!(t.progress_marker(), m0, "a Sent is not progress");
    feed(&mut t, done(0, 1, 1, 0, 1));
    let m1 = t.progress_marker();
    assert_ne!(m1, m0);
    feed(&mut t, redelivered(0, 1, 1, 5, 6));
    assert_eq!(t.progress_marker(), m1, "a duplicate is not progress");
}

#[test]
fn latency_percentiles_and_clock_skew() {
    let mut t = tracker(1);
    for seq in 1..=100u64 {
        let r = Processed {
            published_us: 0,
            ..done(0, seq, 1, seq as i64, seq as i64)
        };
        feed(&mut t, r);
    }
    let skewed = Processed {
        published_us: 1_000,
        ..done(0, 101, 1, 500, 500)
    };
    feed(&mut t, skewed);
    let l = t.snapshot(0).latency;
    assert_eq!(
        (l.count, l.p50_us, l.p90_us, l.p99_us, l.max_us, l.clamped),
        (101, 50, 90, 99, 100, 1)
    );
    // The same measurements as a histogram (the clamped one counts as 0).
    assert_eq!(
        t.latency_buckets(&[10, 50, 1_000]),
        (vec![11, 40, 50, 0], 5050.0)
    );
    assert_eq!(
        tracker(1).latency_buckets(&[10]),
        (vec![0, 0], 0.0),
        "empty"
    );
}

#[test]
fn anomaly_samples_are_capped_per_kind() {
    let config = TrackerConfig {
        sample_limit: 2,
        ..TrackerConfig::default()
    };
    let mut t = Tracker::new(config, 1);
    for seq in (1..=10).rev() {
        feed(&mut t, done(0, seq, 1, 0, 1));
    }
    t.finish(0);
    let s = t.snapshot(0);
    assert_eq!(s.order_violations, 9);
    assert_eq!(s.samples(AnomalyKind::OrderViolation).count(), 2);
}

#[test]
fn snapshot_serializes_to_json() {
    let mut t = tracker(1);
    feed_sent(&mut t, sent(0, 2, 0));
    t.finish(0);
    let s = t.snapshot(0);
    let json = match serde_json::to_value(&s) {
        Ok(v) => v,
        Err(e) => panic!("serialize: {e}"),
    };
    assert_eq!(json["lost"], 2);
    assert_eq!(json["anomalies"][0]["kind"], "lost");
    assert_eq!(json["latency"]["count"], 0);
    let failures = match serde_json::to_value(s.failures(LENIENT)) {
        Ok(v) => v,
        Err(e) => panic!("serialize: {e}"),
    };
    assert_eq!(failures[0]["reason"], "loss");
}

#[test]
fn partition_progress_is_capped_and_skips_removed_partitions() {
    let mut t = tracker(4);
    for seq in 1..=3 {
        feed_sent(&mut t, sent(0, seq, 0));
    }
    feed(&mut t, done(0, 1, 0, 100, 110));
    feed(&mut t, done(0, 3, 0, 120, 130));
    feed_sent(&mut t, sent(2, 1, 0));
    t.remove_partition(1, 0, 0).expect("removed");
    let (all, left_out) = t.partition_progress(10);
    assert_eq!(left_out, 0);
    assert_eq!(
        all.iter().map(|p| p.partition).collect::<Vec<_>>(),
        [0, 2, 3],
        "removed partition 1 has no series"
    );
    assert_eq!(
        all[0],
        PartitionProgress {
            partition: 0,
            known_seq: 3,
            processed_seq: 3,
            missing: 1,
            lost: 0,
        }
    );
    t.finish(10 * WINDOW);
    let (capped, left_out) = t.partition_progress(2);
    assert_eq!(
        capped.iter().map(|p| p.partition).collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(left_out, 1);
    assert_eq!((capped[0].missing, capped[0].lost), (0, 1), "seq 2 lost");
    assert_eq!(t.partition_progress(0), (Vec::new(), 3));
}
