//! Property tests: random interleavings against the definition of loss and duplicates.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

/// Short enough that expiry fires in the middle of the random flows, exercising late
/// arrivals, long enough that not everything expires.
const WINDOW: i64 = 25;

#[derive(Debug, Clone)]
enum Event {
    Sent {
        partition: u32,
        seq: u64,
    },
    Processed {
        partition: u32,
        seq: u64,
        worker: u32,
        delivered: u32,
        /// How long before the event the worker received it (µs): wide enough intervals
        /// make two workers overlap.
        busy: i64,
    },
    Expire,
    /// Remove a partition whose consumer had acknowledged seqs up to the second field.
    Remove(u32, u64),
    Add(u32),
    Malformed(u32),
}

fn tracker() -> Tracker {
    Tracker::new(
        TrackerConfig {
            validation_window_us: WINDOW,
            ..TrackerConfig::default()
        },
        4,
    )
}

/// Applies one event at time `now`; events are 10 µs apart.
fn apply(t: &mut Tracker, event: &Event, now: i64) {
    let ok = match *event {
        Event::Sent { partition, seq } => t.sent(Sent {
            partition,
            seq,
            at_us: now,
        }),
        Event::Processed {
            partition,
            seq,
            worker,
            delivered,
            busy,
        } => t
            .processed(Processed {
                partition,
                seq,
                worker: WorkerRef(worker),
                delivered,
                published_us: now - 5,
                received_us: now - busy,
                processed_us: now + 1,
            })
            .map(|_| ()),
        Event::Expire => {
            t.expire(now);
            Ok(())
        }
        Event::Remove(p, taken) => t.remove_partition(p, taken, now).map(|_| ()),
        Event::Add(p) => t.add_partition(p),
        Event::Malformed(worker) => {
            t.malformed(WorkerRef(worker));
            Ok(())
        }
    };
    assert_eq!(ok, Ok(()), "{event:?}");
}

/// Every partition's messages, each sent once and processed 1–3 times, plus a few expiry
/// ticks, in random order. Returns the events and (messages, duplicates).
fn complete_flow() -> impl Strategy<Value = (Vec<Event>, u64, u64)> {
    prop::collection::vec(prop::collection::vec(1u32..=3, 0..40), 1..5).prop_flat_map(|parts| {
        let mut events = Vec::new();
        let (mut messages, mut duplicates) = (0, 0);
        for (p, msgs) in parts.iter().enumerate() {
            let partition = u32::try_from(p).unwrap_or(0);
            for (i, &times) in msgs.iter().enumerate() {
                let seq = i as u64 + 1;
                messages += 1;
                duplicates += u64::from(times - 1);
                events.push(Event::Sent { partition, seq });
                for k in 0..times {
                    events.push(Event::Processed {
                        partition,
                        seq,
                        worker: k,
                        delivered: k + 1,
                        busy: 0,
                    });
                }
            }
        }
        events.extend(std::iter::repeat_n(Event::Expire, 6));
        (
            Just(events).prop_shuffle(),
            Just(messages),
            Just(duplicates),
        )
    })
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (0u32..3, 1u64..=30).prop_map(|(partition, seq)| Event::Sent { partition, seq }),
        8 => (0u32..3, 1u64..=30, 0u32..6, 1u32..=3, 0i64..40).prop_map(
            |(partition, seq, worker, delivered, busy)| {
                Event::Processed { partition, seq, worker, delivered, busy }
            }
        ),
        2 => Just(Event::Expire),
        1 => (0u32..3, prop_oneof![Just(0u64), 0u64..=30])
            .prop_map(|(p, taken)| Event::Remove(p, taken)),
        1 => (0u32..3).prop_map(Event::Add),
        1 => (0u32..5).prop_map(Event::Malformed),
    ]
}

proptest! {
    #[test]
    fn every_message_processed_means_no_loss((events, messages, duplicates) in complete_flow()) {
        let mut t = tracker();
        let mut now = 0;
        for e in &events {
            now += 10;
            apply(&mut t, e, now);
        }
        prop_assert_eq!(t.finish(now), 0);
        let s = t.snapshot(now);
        prop_assert_eq!(s.lost, 0);
        prop_assert_eq!(s.sent, messages);
        prop_assert_eq!(s.received, messages);
        prop_assert_eq!((s.in_flight, s.missing, s.received_unconfirmed), (0, 0, 0));
        prop_assert_eq!(s.duplicates_redelivery + s.duplicates_concurrent, duplicates);
        let loss = s.failures(Rules::default()).iter().any(|f| matches!(f, TrackerFailure::Loss { .. }));
        prop_assert!(!loss, "a loss failure was reported");
        for p in 0..4 {
            prop_assert_eq!(t.window_len(p), 0);
        }
    }

    /// Against a naive model that remembers every seq: each known seq is exactly one of
    /// received, missing, lost or excused at every step, and the distinct counts agree.
    #[test]
    fn agrees_with_a_naive_model(events in prop::collection::vec(any_event(), 0..300)) {
        let mut t = tracker();
        let mut sent = BTreeSet::new();
        let mut processed: BTreeMap<(u32, u64), u64> = BTreeMap::new();
        let mut known = [0u64; 4];
        let mut now = 0;
        for e in &events {
            now += 10;
            apply(&mut t, e, now);
            match *e {
                Event::Sent { partition, seq } => {
                    sent.insert((partition, seq));
                    known[partition as usize] = known[partition as usize].max(seq);
                }
                Event::Processed { partition, seq, .. } => {
                    *processed.entry((partition, seq)).or_default() += 1;
                    known[partition as usize] = known[partition as usize].max(seq);
                }
                // Acknowledged seqs exist.
                Event::Remove(partition, taken) => {
                    known[partition as usize] = known[partition as usize].max(taken);
                }
                _ => {}
            }
            let s = t.snapshot(now);
            prop_assert_eq!(
                s.received + s.missing + s.lost + s.excused,
                known.iter().sum::<u64>()
            );
            prop_assert_eq!(s.sent, sent.len() as u64);
            prop_assert_eq!(s.received, processed.len() as u64);
            let confirmed = processed.keys().filter(|k| sent.contains(k)).count() as u64;
            prop_assert_eq!(s.received_unconfirmed, s.received - confirmed);
            prop_assert!(s.in_flight <= s.sent - confirmed);
        }
        t.finish(now);
        let s = t.snapshot(now);
        let never: u64 = (0..4u32)
            .map(|p| (1..=known[p as usize]).filter(|q| !processed.contains_key(&(p, *q))).count() as u64)
            .sum();
        prop_assert_eq!(s.lost + s.excused, never);
        prop_assert_eq!((s.missing, s.in_flight), (0, 0));
        let dups: u64 = processed.values().map(|n| n - 1).sum();
        prop_assert_eq!(s.duplicates_redelivery + s.duplicates_concurrent, dups);
    }
}

/// Export, JSON, import: the copy a resumed coordinator would work with.
fn round_trip(t: &Tracker) -> Tracker {
    let json = serde_json::to_string(&t.export()).expect("a tracker state serialises");
    let state: TrackerState = serde_json::from_str(&json).expect("its own JSON parses");
    match Tracker::import(*t.config(), state) {
        Ok(copy) => copy,
        Err(e) => panic!("import refused an exported state: {e}"),
    }
}

proptest! {
    /// A checkpoint at any point gives a tracker that goes on exactly like the original:
    /// same snapshot and verdict after the remaining events and `finish`.
    #[test]
    fn a_checkpoint_resumes_identically(
        events in prop::collection::vec(any_event(), 0..300),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(events.len() + 1);
        let mut original = tracker();
        let mut now = 0;
        for e in &events[..cut] {
            now += 10;
            apply(&mut original, e, now);
        }
        let mut resumed = round_trip(&original);
        // Restoring changes nothing by itself, and saving the restored copy again gives the
        // same state.
        prop_assert_eq!(resumed.snapshot(now), original.snapshot(now));
        prop_assert_eq!(resumed.export(), original.export());
        for e in &events[cut..] {
            now += 10;
            apply(&mut original, e, now);
            apply(&mut resumed, e, now);
        }
        prop_assert_eq!(original.finish(now), resumed.finish(now));
        prop_assert_eq!(resumed.snapshot(now), original.snapshot(now));
        for (strict_duplicates, ordered) in [(false, false), (true, true)] {
            let rules = Rules { strict_duplicates, ordered };
            prop_assert_eq!(resumed.failures(rules), original.failures(rules));
        }
        prop_assert_eq!(resumed.export(), original.export());
    }
}
