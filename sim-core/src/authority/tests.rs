use serde_json::{Value, json};

use super::*;

/// Version `version` of the document: `owners` as (worker, partitions).
fn doc(version: u64, owners: &[(&str, &[u32])]) -> Value {
    let owners: serde_json::Map<String, Value> = owners
        .iter()
        .map(|(worker, partitions)| {
            let ids: Vec<Value> = partitions.iter().map(|p| json!(p.to_string())).collect();
            ((*worker).to_string(), Value::Array(ids))
        })
        .collect();
    json!({"version": version, "leader": "worker-0", "owners": owners})
}

#[test]
fn a_two_phase_handoff_processed_on_both_sides_of_it_is_clean() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0, 1])]));
    check.processed("a", "worker-0", 0, 1_500);
    // Draining: 0 owned by nobody; the old owner may still finish.
    check.document(2_000, &doc(2, &[("a", &[1])]));
    check.processed("a", "worker-0", 0, 2_500);
    check.document(3_000, &doc(3, &[("a", &[1]), ("b", &[0])]));
    check.processed("b", "worker-1", 0, 3_001);
    check.processed("a", "worker-0", 1, 9_000);
    assert!(check.violations().is_empty(), "{:?}", check.violations());
    assert_eq!(check.unjudged(), 0);
}

#[test]
fn one_message_after_the_grant_to_another_worker_is_a_violation() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    check.document(3_000, &doc(2, &[("b", &[0])]));
    // No overlap with anything: b has processed nothing; the grant alone decides.
    check.processed("a", "worker-0", 0, 2_999);
    assert!(check.violations().is_empty());
    check.processed("a", "worker-0", 0, 3_500);
    let found = check.violations();
    assert_eq!(found.len(), 1);
    let first = &found[0];
    assert_eq!((first.partition, first.count, first.version), (0, 1, 2));
    assert_eq!(first.holder.as_deref(), Some("b"));
    assert_eq!(first.after_grant_us, 500);
    assert_eq!(
        first.to_string(),
        "a (worker-0) processed partition 0 1 time(s); the first 0.001 s after assignment v2 \
         had granted it to b"
    );
}

#[test]
fn an_older_owner_processing_after_the_newer_one_did_is_a_violation_at_any_gap() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    check.document(2_000, &doc(2, &[("b", &[0])]));
    check.processed("b", "worker-1", 0, 2_100);
    // A minute later, one message: still the old owner at work.
    check.processed("a", "worker-0", 0, 62_000_000);
    check.document(63_000_000, &doc(3, &[("b", &[0])]));
    let found = check.violations();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].worker, "a");
    assert_eq!(
        check.pending_times(),
        0,
        "final once a later version was seen"
    );
}

#[test]
fn a_worker_that_no_version_ever_named_is_caught_at_its_first_message() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0, 1])]));
    check.processed("rogue", "rogue-2", 1, 500);
    let found = check.violations();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].holder, None);
    assert!(
        found[0]
            .to_string()
            .contains("no assignment had granted it")
    );
    // Also for a partition no version mentions at all.
    check.processed("rogue", "rogue-2", 7, 600);
    assert_eq!(check.violations().len(), 2);
}

#[test]
fn a_grant_the_coordinator_sees_after_the_processing_clears_it() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    // b saw version 2 (written at 2_000) before the coordinator did.
    check.processed("b", "worker-1", 0, 2_050);
    assert_eq!(check.pending_times(), 1);
    assert_eq!(check.violations().len(), 1, "as of now, it is one");
    check.document(2_000, &doc(2, &[("b", &[0])]));
    assert!(check.violations().is_empty());
    assert_eq!(check.pending_times(), 0);
}

#[test]
fn a_grant_written_after_the_processing_does_not_excuse_it() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    check.processed("b", "worker-1", 0, 1_500);
    check.processed("b", "worker-1", 0, 2_500);
    check.document(2_000, &doc(2, &[("b", &[0])]));
    let found = check.violations();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].count, found[0].first_us), (1, 1_500));
    assert_eq!(check.pending_times(), 0);
}

#[test]
fn a_round_trip_back_to_the_first_owner_is_held_again() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    check.document(2_000, &doc(2, &[("b", &[0])]));
    check.document(3_000, &doc(3, &[("a", &[0])]));
    check.processed("a", "worker-0", 0, 3_500);
    check.processed("b", "worker-1", 0, 2_500);
    assert!(check.violations().is_empty());
    check.processed("a", "worker-0", 0, 2_500);
    assert_eq!(check.violations().len(), 1);
}

#[test]
fn versions_not_seen_leave_a_span_that_is_not_judged() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    // Versions 2..=4 were written while the coordinator was down.
    check.document(5_000, &doc(5, &[("b", &[0])]));
    check.processed("b", "worker-1", 0, 3_000);
    check.processed("a", "worker-0", 0, 4_000);
    assert!(check.violations().is_empty());
    assert_eq!(check.unjudged(), 2);
    assert_eq!(check.versions_missed(), 3);
    // After the span, judged again.
    check.processed("a", "worker-0", 0, 5_001);
    assert_eq!(check.violations().len(), 1);
    // A replayed or older version changes nothing.
    check.document(6_000, &doc(5, &[("a", &[0])]));
    check.processed("a", "worker-0", 0, 6_001);
    assert_eq!(check.violations()[0].count, 2);
}

#[test]
fn a_first_version_above_one_leaves_everything_before_it_unjudged() {
    let mut check = AuthorityCheck::default();
    check.document(5_000, &doc(3, &[("a", &[0])]));
    check.processed("b", "worker-1", 0, 4_000);
    assert!(check.violations().is_empty());
    assert_eq!(check.unjudged(), 1);
}

#[test]
fn memory_is_bounded_by_grants_kept_and_pending_cap() {
    let mut check = AuthorityCheck::default();
    let workers = ["a", "b"];
    for version in 1..=1_000u64 {
        let at = i64::try_from(version).unwrap_or(0) * 1_000;
        check.document(
            at,
            &doc(version, &[(workers[(version % 2) as usize], &[0])]),
        );
    }
    assert_eq!(check.timelines[&0].grants.len(), KEEP_GRANTS);
    check.processed("a", "worker-0", 0, 10);
    assert_eq!(check.unjudged(), 1, "older than the kept grants");
    // A stalled old owner at full speed while no version is written.
    for i in 0..(PENDING_CAP as i64 + 500) {
        check.processed("b", "worker-1", 0, 2_000_000 + i);
    }
    assert_eq!(check.pending_times(), PENDING_CAP);
    assert_eq!(check.violations()[0].count, PENDING_CAP as u64 + 500);
    check.document(3_000_000, &doc(1_001, &[("b", &[0])]));
    assert_eq!(check.pending_times(), 0);
    let found = check.violations();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].count, PENDING_CAP as u64 + 500);
}

#[test]
fn a_serde_round_trip_keeps_holds_pending_and_violations() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0, 1])]));
    check.document(2_000, &doc(2, &[("a", &[1]), ("b", &[0])]));
    check.processed("a", "worker-0", 0, 1_900); // held
    check.processed("a", "worker-0", 0, 1_999_000); // pending
    check.processed("c", "worker-2", 1, 1_500); // final
    let json = serde_json::to_string(&check).unwrap_or_default();
    let mut copy: AuthorityCheck = match serde_json::from_str(&json) {
        Ok(copy) => copy,
        Err(e) => panic!("{e}: {json}"),
    };
    assert_eq!(copy, check);
    for c in [&mut check, &mut copy] {
        c.document(3_000_000, &doc(3, &[("a", &[1]), ("b", &[0])]));
    }
    assert_eq!(copy.violations(), check.violations());
    assert_eq!(copy.violations().len(), 2);
}

#[test]
fn without_any_version_nothing_is_judged_and_everything_is_counted() {
    let mut check = AuthorityCheck::default();
    check.processed("w", "worker-0", 0, 1_000);
    check.processed("w", "worker-0", 1, 2_000);
    assert!(check.violations().is_empty());
    assert_eq!(check.unjudged(), 2);
    // The first version arrives late (the watch found the bucket after the worker started).
    check.document(500, &doc(1, &[("w", &[0, 1])]));
    assert!(check.violations().is_empty());
    assert_eq!(check.unjudged(), 0);
}

#[test]
fn pending_processing_that_lands_in_a_blind_span_is_counted_as_not_judged() {
    let mut check = AuthorityCheck::default();
    // Reports before the coordinator saw any version; the first it sees is v3.
    check.processed("b", "worker-1", 0, 1_000);
    check.processed("b", "worker-1", 0, 2_000);
    check.document(5_000, &doc(3, &[("a", &[0])]));
    assert!(check.violations().is_empty());
    assert_eq!(check.unjudged(), 2);
    assert_eq!(check.pending_times(), 0);
}

/// A processing's time is known within its host's clock error: right after its own grant
/// but dated up to that error before it, it is forgiven; beyond the error it is not; after
/// the grant to another worker, within the error it is forgiven, beyond it a violation; and
/// a time from a host never measured is not judged.
#[test]
fn a_processing_within_its_clock_error_of_a_grant_is_forgiven_and_beyond_it_is_not() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    check.document(5_000, &doc(2, &[("b", &[0])]));
    check.document(9_000, &doc(3, &[("b", &[0])]));
    // b's first processing, dated 400 µs before its grant, with a 500 µs error: forgiven.
    check.processed_within("b", "worker-1", 0, 4_600, Some(500));
    // a's last one, dated 300 µs after b's grant, with a 500 µs error: forgiven.
    check.processed_within("a", "worker-0", 0, 5_300, Some(500));
    assert!(check.violations().is_empty(), "{:?}", check.violations());
    // The same times with a 100 µs error: both violations.
    check.processed_within("b", "worker-1", 0, 4_600, Some(100));
    check.processed_within("a", "worker-0", 0, 5_300, Some(100));
    let found = check.violations();
    assert_eq!(found.len(), 2, "{found:?}");
    // Never measured: not judged, whatever the time.
    let unjudged = check.unjudged();
    check.processed_within("a", "worker-0", 0, 8_000, None);
    assert_eq!(check.unjudged(), unjudged + 1);
    assert_eq!(check.violations().len(), 2);
}

/// A processing whose error reaches past the newest version seen waits (a grant to its
/// worker may still come), and is judged once a version covers its whole interval.
#[test]
fn a_processing_is_final_only_once_its_whole_interval_is_covered() {
    let mut check = AuthorityCheck::default();
    check.document(1_000, &doc(1, &[("a", &[0])]));
    check.processed_within("b", "worker-1", 0, 1_800, Some(500));
    assert_eq!(check.pending_times(), 1, "1 800 + 500 is past 1 000");
    check.document(2_000, &doc(2, &[("a", &[0]), ("c", &[1])]));
    assert_eq!(check.pending_times(), 1, "2 300 is still past 2 000");
    check.document(3_000, &doc(3, &[("a", &[0])]));
    assert_eq!(check.pending_times(), 0);
    assert_eq!(check.violations().len(), 1);
}
