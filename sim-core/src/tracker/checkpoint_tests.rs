//! Checkpoint tests: the saved form is small and stable, and import refuses what does not
//! add up, naming the field. (Round trips under random flows are in `proptests`.)

use serde_json::Value;

use super::checkpoint::{ExceptionRun, FORMAT, WindowRun};
use super::*;

/// A plausible wall clock (µs), so timestamps in the JSON have their real width.
const T0: i64 = 1_760_000_000_000_000;

fn config() -> TrackerConfig {
    TrackerConfig {
        validation_window_us: 1_000,
        ..TrackerConfig::default()
    }
}

#[track_caller]
fn feed_sent(t: &mut Tracker, partition: u32, seq: u64, at_us: i64) {
    assert_eq!(
        t.sent(Sent {
            partition,
            seq,
            at_us
        }),
        Ok(())
    );
}

#[track_caller]
fn feed_processed(t: &mut Tracker, partition: u32, seq: u64, worker: u32, at_us: i64) {
    let report = Processed {
        partition,
        seq,
        worker: WorkerRef(worker),
        delivered: 1,
        published_us: at_us - 900,
        received_us: at_us - 100,
        processed_us: at_us,
    };
    if let Err(e) = t.processed(report) {
        panic!("report refused: {e}");
    }
}

#[track_caller]
fn round_trip(t: &Tracker) -> (Tracker, usize) {
    let json = match serde_json::to_string(&t.export()) {
        Ok(json) => json,
        Err(e) => panic!("export does not serialise: {e}"),
    };
    let state: TrackerState = match serde_json::from_str(&json) {
        Ok(state) => state,
        Err(e) => panic!("export does not parse back: {e}"),
    };
    match Tracker::import(*t.config(), state) {
        Ok(copy) => (copy, json.len()),
        Err(e) => panic!("import refused an export: {e}"),
    }
}

/// A tracker with a bit of everything: a clean prefix, an in-flight tail, a loss, an
/// excused removal, a processed-before-sent seq, a duplicate and two workers' spans.
fn eventful() -> Tracker {
    let mut t = Tracker::new(config(), 3);
    for seq in 1..=20 {
        let at = T0 + i64::try_from(seq).unwrap_or(0) * 10;
        feed_sent(&mut t, 0, seq, at);
        feed_processed(&mut t, 0, seq, 1, at + 5);
    }
    feed_processed(&mut t, 0, 7, 2, T0 + 400);
    feed_sent(&mut t, 1, 5, T0 + 100);
    feed_processed(&mut t, 1, 2, 2, T0 + 120);
    t.expire(T0 + 2_000);
    feed_sent(&mut t, 1, 9, T0 + 2_100);
    feed_processed(&mut t, 2, 3, 1, T0 + 2_200);
    assert_eq!(t.remove_partition(2, 0, 0), Ok(2));
    feed_sent(&mut t, 0, 25, T0 + 2_300);
    t.malformed(WorkerRef(4));
    t
}

/// Damages a saved state in one place.
type Corruption = fn(&mut TrackerState);

#[track_caller]
fn refused(state: TrackerState) -> CheckpointError {
    match Tracker::import(config(), state) {
        Ok(_) => panic!("a corrupted state was accepted"),
        Err(e) => e,
    }
}

#[test]
fn an_eventful_tracker_round_trips() {
    let t = eventful();
    let (copy, _) = round_trip(&t);
    let now = T0 + 3_000;
    assert_eq!(copy.snapshot(now), t.snapshot(now));
    assert_eq!(copy.export(), t.export());
    let s = copy.snapshot(now);
    assert!(s.lost > 0 && s.excused > 0 && s.duplicates() > 0 && s.malformed > 0);
}

#[test]
fn the_saved_form_uses_its_documented_names() {
    let state = eventful().export();
    let json = match serde_json::to_value(&state) {
        Ok(json) => json,
        Err(e) => panic!("{e}"),
    };
    for key in [
        "format",
        "now_us",
        "tick",
        "counters",
        "latency",
        "latency_clamped",
        "worker_slots",
        "workers",
        "samples",
        "sampled",
        "partitions",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["format"], FORMAT);
    let p1 = &json["partitions"][1];
    for key in ["watermark", "window", "exceptions", "spans"] {
        assert!(p1.get(key).is_some(), "partition 1 lacks {key}: {p1}");
    }
    // Runs are plain arrays: [count, known_at_delta, flags] and [start, len, flags].
    assert!(p1["window"][0].as_array().is_some_and(|r| r.len() == 3));
    assert!(p1["exceptions"][0].as_array().is_some_and(|r| r.len() == 3));
    assert_eq!(json["partitions"][2]["removed"], Value::Bool(true));
}

#[test]
fn a_clean_1500_partition_run_is_small() {
    const PARTITIONS: u32 = 1500;
    let mut t = Tracker::new(TrackerConfig::default(), PARTITIONS);
    let mut now = T0;
    for seq in 1..=100 {
        for p in 0..PARTITIONS {
            now += 7;
            feed_sent(&mut t, p, seq, now);
            feed_processed(&mut t, p, seq, p % 20, now + 300);
        }
    }
    // A few messages in flight, as at any checkpoint of a live run.
    for seq in 101..=103 {
        for p in 0..PARTITIONS {
            now += 7;
            feed_sent(&mut t, p, seq, now);
        }
    }
    t.expire(now);
    let (copy, bytes) = round_trip(&t);
    println!("1500 partitions × 100 messages + 3 in flight: {bytes} bytes of JSON");
    assert!(bytes < 2 << 20, "{bytes} bytes");
    assert_eq!(copy.snapshot(now), t.snapshot(now));
}

#[test]
fn counters_that_disagree_with_the_partitions_are_refused() {
    let mut state = eventful().export();
    state.counters.sent += 1;
    let e = refused(state);
    assert!(
        matches!(
            e,
            CheckpointError::Inconsistent {
                field: "counters.sent",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("counters.sent"), "{e}");

    let mut state = eventful().export();
    state.counters.lost = 0;
    let e = refused(state);
    assert!(e.to_string().contains("counters.lost"), "{e}");
}

#[test]
fn a_decreasing_window_is_refused() {
    let mut t = Tracker::new(config(), 1);
    feed_sent(&mut t, 0, 5, T0);
    feed_sent(&mut t, 0, 10, T0 + 50);
    let mut state = t.export();
    let window = &mut state.partitions[0].window;
    assert!(window.len() >= 3, "{window:?}");
    window[2].known_at_delta = -50;
    let e = refused(state);
    assert!(
        matches!(
            e,
            CheckpointError::Partition {
                partition: 0,
                field: "window",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("partition 0: window"), "{e}");
}

#[test]
fn broken_partition_invariants_are_refused() {
    let base = eventful().export();
    let cases: [(&str, Corruption); 6] = [
        ("window", |s| s.partitions[1].window[0].flags = 2),
        ("window", |s| s.partitions[1].window[0].count = 0),
        ("window", |s| {
            // A count that would cost gigabytes is refused before anything is allocated.
            s.partitions[1].window[0].count = u64::MAX / 2;
        }),
        ("exceptions", |s| {
            let w = s.partitions[1].watermark;
            s.partitions[1].exceptions.push(ExceptionRun {
                start: w,
                len: 2,
                flags: 4,
            });
        }),
        ("exceptions", |s| s.partitions[1].exceptions[0].flags = 6),
        ("processed_max", |s| s.partitions[0].processed_max = 1_000),
    ];
    for (field, corrupt) in cases {
        let mut state = base.clone();
        corrupt(&mut state);
        let e = refused(state);
        assert!(
            matches!(e, CheckpointError::Partition { field: f, .. } if f == field),
            "expected {field}: {e:?}"
        );
    }
}

#[test]
fn broken_tracker_fields_are_refused() {
    let base = eventful().export();

    let mut state = base.clone();
    state.format = FORMAT + 1;
    assert!(matches!(refused(state), CheckpointError::Format { .. }));

    let mut state = base.clone();
    state.latency = "not base64!".into();
    assert!(matches!(
        refused(state),
        CheckpointError::LatencyEncoding(_)
    ));

    let mut state = base.clone();
    state.latency = "AAAA".into();
    let e = refused(state);
    assert!(e.to_string().contains("latency"), "{e}");

    // A histogram from an empty tracker: valid, but its count disagrees with `received`.
    let mut state = base.clone();
    state.latency = Tracker::new(config(), 0).export().latency;
    let e = refused(state);
    assert!(
        matches!(
            e,
            CheckpointError::Inconsistent {
                field: "latency",
                ..
            }
        ),
        "{e:?}"
    );

    let mut state = base.clone();
    state.sampled[AnomalyKind::DuplicateRedelivery.index()] += 1;
    assert!(refused(state).to_string().contains("sampled"));

    let mut state = base.clone();
    state.workers.reverse();
    assert!(refused(state).to_string().contains("workers"));

    let mut state = base.clone();
    state.partitions.push(super::checkpoint::SavedPartition {
        window: vec![WindowRun {
            count: 1,
            known_at_delta: T0,
            flags: 1,
        }],
        ..Default::default()
    });
    let e = refused(state);
    assert!(e.to_string().contains("counters.sent"), "{e}");

    let mut state = base;
    let small = TrackerConfig {
        max_partitions: 2,
        ..config()
    };
    state.partitions.truncate(3);
    assert!(matches!(
        Tracker::import(small, state),
        Err(CheckpointError::Inconsistent {
            field: "partitions",
            ..
        })
    ));
}
