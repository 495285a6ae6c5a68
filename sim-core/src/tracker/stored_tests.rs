//! The stream as ground truth: messages it holds beyond every report.

use super::*;

const WINDOW: i64 = 1_000;

fn tracker() -> Tracker {
    let config = TrackerConfig {
        validation_window_us: WINDOW,
        ..TrackerConfig::default()
    };
    Tracker::new(config, 2)
}

fn sent(t: &mut Tracker, seq: u64) {
    let report = Sent {
        partition: 0,
        seq,
        at_us: 10,
    };
    assert_eq!(t.sent(report), Ok(()));
}

fn processed(t: &mut Tracker, seq: u64) {
    let report = Processed {
        partition: 0,
        seq,
        worker: WorkerRef(0),
        delivered: 1,
        published_us: 10,
        received_us: 20,
        processed_us: 30,
    };
    t.processed(report).expect("accepted");
}

/// Sent and processed 1..=3; the stream holds 1..=5 (4 and 5 never reported sent).
fn with_an_unreported_tail() -> Tracker {
    let mut t = tracker();
    for seq in 1..=3 {
        sent(&mut t, seq);
        processed(&mut t, seq);
    }
    assert_eq!(t.stored_through(0, 5, 100), Ok(2));
    t
}

#[test]
fn an_unreported_tail_never_processed_is_lost() {
    let mut t = with_an_unreported_tail();
    assert_eq!(t.snapshot(100).missing, 2, "the drain waits for them");
    t.finish(200);
    let s = t.snapshot(200);
    assert_eq!(s.lost, 2);
    assert_eq!(t.lost_between(0, 3, 5), 2);
    assert_eq!(t.lost_between(0, 0, 3), 0);
}

#[test]
fn an_unreported_tail_processed_balances_the_books() {
    let mut t = with_an_unreported_tail();
    processed(&mut t, 4);
    processed(&mut t, 5);
    t.finish(200);
    let s = t.snapshot(200);
    assert_eq!((s.lost, s.missing, s.received, s.sent), (0, 0, 5, 3));
    assert_eq!(t.lost_between(0, 3, 5), 0);
}

#[test]
fn a_stream_at_or_below_the_reports_changes_nothing() {
    let mut t = tracker();
    sent(&mut t, 1);
    processed(&mut t, 1);
    assert_eq!(t.stored_through(0, 1, 100), Ok(0));
    assert_eq!(t.stored_through(1, 0, 100), Ok(0), "an empty subject");
    t.finish(200);
    assert_eq!(t.snapshot(200).lost, 0);
}

#[test]
fn a_stored_seq_beyond_any_report_jump_is_refused() {
    let mut t = tracker();
    sent(&mut t, 1);
    let far = 2 + TrackerConfig::default().max_seq_jump;
    assert!(matches!(
        t.stored_through(0, far, 100),
        Err(InputError::SequenceJump { .. })
    ));
    assert_eq!(t.snapshot(100).missing, 1, "nothing learned");
}

#[test]
fn a_removed_partitions_unreported_tail_is_excused() {
    let mut t = with_an_unreported_tail();
    assert_eq!(t.remove_partition(0, 3, 150), Ok(2));
    t.finish(200);
    let s = t.snapshot(200);
    assert_eq!((s.lost, s.excused), (0, 2));
}

/// A backlog is what is unresolved up to a seq: processed or lost seqs leave it, newer
/// seqs are not part of it.
#[test]
fn the_backlog_up_to_a_seq_counts_what_is_unresolved() {
    let mut t = tracker();
    for seq in 1..=6 {
        sent(&mut t, seq);
    }
    assert_eq!(t.known_max(0), 6);
    assert_eq!(t.unresolved_through(0, 4), 4);
    processed(&mut t, 1);
    processed(&mut t, 3);
    assert_eq!(t.unresolved_through(0, 4), 2, "2 and 4 are left");
    processed(&mut t, 2);
    processed(&mut t, 4);
    assert_eq!(t.unresolved_through(0, 4), 0, "5 and 6 are after it");
    assert_eq!(t.unresolved_through(0, 6), 2);
    // Written off as lost: resolved, whatever the verdict says of it.
    t.finish(10 + WINDOW + 1);
    assert_eq!(t.unresolved_through(0, 6), 0);
    assert_eq!(
        t.unresolved_through(1, 6),
        0,
        "an untouched partition has no backlog"
    );
}
