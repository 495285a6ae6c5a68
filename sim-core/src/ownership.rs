//! Processing without ownership: a worker processed a partition that the assignment it had
//! applied did not give it.
//!
//! Two workers sharing one durable do not duplicate messages (the server hands each message
//! to one of them), so the tracker alone can miss a worker that keeps consuming after a
//! revoke. This check compares every processed report's (worker, assignment version,
//! partition) with the partitions that worker reported owning at that version.
//!
//! A worker labels a message with the version it has applied; a partition added by version
//! v+1 can start being processed a moment before the label moves from v to v+1 (the
//! consumer starts first), so a report labelled v is accepted for partitions of v or v+1.
//! Removals cannot race that way: a revoked partition has stopped before the label moves.
//!
//! Memory is bounded by judging each (worker, version, partition) as soon as the verdict on
//! it can no longer change, instead of keeping every tuple until the end of the run:
//!
//! - **Ordering assumption.** A worker's statuses arrive in non-decreasing version order
//!   (parti's versions only grow and a worker's reports travel one ordered stream), and a
//!   processed report's label is at most a couple of versions behind the worker's latest
//!   status (the label is read just before the report is queued).
//! - **Rule.** With `latest` the highest version the worker reported and `next` the lowest
//!   reported version above `v`, a tuple labelled `v` is final when it is owned (`p` in the
//!   statuses of `v` or `next`: sets only grow and, by the ordering, no version between `v`
//!   and `next` can still arrive); when `v < latest` and was never reported (it never will
//!   be, so it is never judged); or when `v < latest` and `next < latest` (both sets are
//!   final: a status for `latest` came after them) — then it is a violation. Anything else
//!   (no status yet, `v ≥ latest`, or `next == latest` whose set may still grow) is pending
//!   and is judged again on each status of that worker. [`OwnershipCheck::violations`]
//!   reports the final violations plus the pending tuples judged as of now, which is what
//!   judging all tuples at that moment would give.
//! - **Retention.** Only the last [`KEEP_VERSIONS`] reported versions of a worker are kept;
//!   pending tuples never need older ones. A label older than every kept version is counted
//!   as [`OwnershipCheck::stale_labels`] and not judged (it cannot happen under the ordering
//!   above; counting it keeps a broken assumption visible).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Reported versions kept per worker: `latest` and the one before it are needed for pending
/// tuples; the third is margin for a label lagging one more version behind.
pub const KEEP_VERSIONS: usize = 3;

/// Collected evidence; memory is per worker and pending (version, partition), not per
/// message or per version. Serialisable as is, for checkpoints.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipCheck {
    /// Process slot → incarnation → what that worker reported.
    workers: BTreeMap<String, BTreeMap<u64, WorkerRecord>>,
    /// Labels older than the kept history of their worker: not judged.
    #[serde(default)]
    stale: u64,
}

/// One worker incarnation's statuses and its not yet final processed tuples.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WorkerRecord {
    /// Stable worker id from its latest status; none before the first status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker_id: Option<String>,
    /// Reported version → partitions owned at it (the union of its statuses), last
    /// [`KEEP_VERSIONS`] versions only.
    #[serde(default)]
    owned: BTreeMap<u64, BTreeSet<u32>>,
    /// Every reported version ≥ this is in `owned`; older ones were dropped (0: none).
    #[serde(default)]
    horizon: u64,
    /// Processed (version, partition) whose verdict may still change.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pending: BTreeSet<(u64, u32)>,
    /// Processed (version, partition) finally judged as violations.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    violations: BTreeSet<(u64, u32)>,
}

/// Where a processed tuple stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judgement {
    /// Owned: final.
    Owned,
    /// Its version was never reported and never will be: not judged, final.
    Unjudged,
    /// Older than the kept history: not judged.
    Stale,
    /// Not owned, and nothing that can still arrive changes that: final.
    Violation,
    /// The verdict may still change.
    Pending,
}

impl WorkerRecord {
    /// See the module docs for the rule.
    fn judge(&self, version: u64, partition: u32) -> Judgement {
        let Some(&latest) = self.owned.keys().next_back() else {
            return Judgement::Pending;
        };
        if version < self.horizon {
            return Judgement::Stale;
        }
        let Some(at) = self.owned.get(&version) else {
            return if version < latest {
                Judgement::Unjudged
            } else {
                Judgement::Pending
            };
        };
        let next = self.owned.range(version + 1..).next();
        if at.contains(&partition) || next.is_some_and(|(_, p)| p.contains(&partition)) {
            return Judgement::Owned;
        }
        match next {
            Some((&n, _)) if n < latest => Judgement::Violation,
            _ => Judgement::Pending,
        }
    }

    /// Files a tuple by its judgement; returns whether its label was stale.
    fn file(&mut self, version: u64, partition: u32) -> bool {
        match self.judge(version, partition) {
            Judgement::Owned | Judgement::Unjudged => {}
            Judgement::Stale => return true,
            Judgement::Violation => {
                self.violations.insert((version, partition));
            }
            Judgement::Pending => {
                self.pending.insert((version, partition));
            }
        }
        false
    }

    /// The verdict on a pending tuple as of now: not owned at its version nor at the next
    /// reported one. Versions never reported are not judged.
    fn violates_now(&self, version: u64, partition: u32) -> bool {
        let Some(at) = self.owned.get(&version) else {
            return false;
        };
        let next = self.owned.range(version + 1..).next().map(|(_, p)| p);
        !(at.contains(&partition) || next.is_some_and(|p| p.contains(&partition)))
    }
}

/// One violation, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Stable worker id and slot.
    pub worker: String,
    /// The assignment version the worker had applied.
    pub version: u64,
    /// The partition it processed without owning.
    pub partition: u32,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} processed partition {} under assignment v{}, which does not give it that partition",
            self.worker, self.partition, self.version
        )
    }
}

impl OwnershipCheck {
    /// A worker reported owning `partitions` at `version`.
    pub fn status(
        &mut self,
        process: &str,
        incarnation: u64,
        worker_id: &str,
        version: u64,
        partitions: &[u32],
    ) {
        let record = self.record(process, incarnation);
        if record.worker_id.as_deref() != Some(worker_id) {
            record.worker_id = Some(worker_id.to_string());
        }
        // Union, not replace: a fenced worker reports the same version again with an empty
        // list, and what it owned earlier in that version stays legitimately owned.
        record
            .owned
            .entry(version)
            .or_default()
            .extend(partitions.iter().copied());
        let mut stale = 0;
        for (v, p) in std::mem::take(&mut record.pending) {
            stale += u64::from(record.file(v, p));
        }
        // Pending tuples are labelled at or above the second-latest version, so dropping
        // older versions never strands one.
        while record.owned.len() > KEEP_VERSIONS {
            record.owned.pop_first();
            record.horizon = record.owned.keys().next().map_or(0, |v| *v);
        }
        self.stale += stale;
    }

    /// A worker processed a message of `partition` while at `version`.
    pub fn processed(&mut self, process: &str, incarnation: u64, version: u64, partition: u32) {
        if version == 0 {
            return;
        }
        let record = self.record(process, incarnation);
        if record.file(version, partition) {
            self.stale += 1;
        }
    }

    /// Every processed (worker, version, partition) the worker's own statuses contradict.
    /// Versions the worker never reported are not judged.
    pub fn violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        for (process, incarnations) in &self.workers {
            for record in incarnations.values() {
                let worker = format!("{}/{process}", record.worker_id.as_deref().unwrap_or("?"));
                let pending = record
                    .pending
                    .iter()
                    .filter(|(v, p)| record.violates_now(*v, *p));
                found.extend(record.violations.iter().chain(pending).map(
                    |&(version, partition)| Violation {
                        worker: worker.clone(),
                        version,
                        partition,
                    },
                ));
            }
        }
        found.sort_by(|a, b| {
            (&a.worker, a.version, a.partition).cmp(&(&b.worker, b.version, b.partition))
        });
        found
    }

    /// Processed tuples kept because their verdict may still change, over all workers.
    #[must_use]
    pub fn pending_tuples(&self) -> usize {
        self.records().map(|r| r.pending.len()).sum()
    }

    /// Reported versions kept, over all workers (at most [`KEEP_VERSIONS`] each).
    #[must_use]
    pub fn retained_versions(&self) -> usize {
        self.records().map(|r| r.owned.len()).sum()
    }

    /// Processed reports labelled older than their worker's kept history, so not judged.
    #[must_use]
    pub fn stale_labels(&self) -> u64 {
        self.stale
    }

    fn records(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values().flat_map(BTreeMap::values)
    }

    /// The record of a worker incarnation; looks up by `&str` so the per-message path does
    /// not allocate.
    fn record(&mut self, process: &str, incarnation: u64) -> &mut WorkerRecord {
        if !self.workers.contains_key(process) {
            self.workers.insert(process.to_string(), BTreeMap::new());
        }
        self.workers
            .get_mut(process)
            .map(|incarnations| incarnations.entry(incarnation).or_default())
            .expect("inserted above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_a_revoked_partition_is_a_violation() {
        let mut check = OwnershipCheck::default();
        check.status("worker-0", 1, "worker-0", 1, &[1, 2]);
        check.status("worker-0", 1, "worker-0", 2, &[1]);
        check.processed("worker-0", 1, 1, 2);
        assert!(check.violations().is_empty(), "owned at v1");
        check.processed("worker-0", 1, 2, 2);
        let violations = check.violations();
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].partition, 2);
        assert!(
            violations[0]
                .to_string()
                .contains("partition 2 under assignment v2")
        );
    }

    #[test]
    fn a_fenced_worker_reporting_an_empty_list_keeps_what_it_owned() {
        let mut check = OwnershipCheck::default();
        check.status("w", 1, "worker-0", 4, &[11, 12]);
        check.processed("w", 1, 4, 11);
        check.status("w", 1, "worker-0", 4, &[]);
        assert!(check.violations().is_empty());
    }

    #[test]
    fn an_addition_racing_its_label_is_accepted() {
        let mut check = OwnershipCheck::default();
        check.status("w", 7, "worker-3", 4, &[1]);
        check.status("w", 7, "worker-3", 6, &[1, 5]);
        // Processed 5 while still labelled v4; v6 (the next version it reported) adds it.
        check.processed("w", 7, 4, 5);
        assert!(check.violations().is_empty());
        // Unreported versions are not judged.
        check.processed("w", 7, 5, 9);
        assert!(check.violations().is_empty());
    }

    #[test]
    fn many_fully_owned_versions_keep_memory_bounded() {
        let mut check = OwnershipCheck::default();
        let partitions: Vec<u32> = (0..10).collect();
        for version in 1..=1000 {
            check.status("w", 1, "worker-0", version, &partitions);
            for &p in &partitions {
                // A label one version behind (the race at every handoff) and the current one.
                check.processed("w", 1, version.saturating_sub(1).max(1), p);
                check.processed("w", 1, version, p);
            }
        }
        assert!(check.violations().is_empty());
        assert_eq!(check.pending_tuples(), 0);
        assert!(check.retained_versions() <= KEEP_VERSIONS);
        assert_eq!(check.stale_labels(), 0);
    }

    #[test]
    fn reports_ahead_of_their_status_stay_pending_only_until_it_arrives() {
        let mut check = OwnershipCheck::default();
        for version in 1..=100u64 {
            // The worker starts consuming version v's partitions before its status says so.
            let p = u32::try_from(version).unwrap_or(0);
            check.processed("w", 1, version, p);
            check.status("w", 1, "worker-0", version, &[p]);
        }
        assert!(check.violations().is_empty());
        assert_eq!(check.pending_tuples(), 0);
    }

    #[test]
    fn a_violation_is_caught_when_the_next_status_arrives_after_the_report() {
        let mut check = OwnershipCheck::default();
        check.status("w", 1, "worker-0", 1, &[1, 2]);
        // Labelled v1, partition 3: fine if v2 adds it (the addition race), a violation if not.
        check.processed("w", 1, 1, 3);
        let expected = vec![Violation {
            worker: "worker-0/w".into(),
            version: 1,
            partition: 3,
        }];
        // As of now it is a violation (as judging everything now would say), but pending.
        assert_eq!(check.violations(), expected);
        assert_eq!(check.pending_tuples(), 1);
        check.status("w", 1, "worker-0", 2, &[1, 2]);
        assert_eq!(check.violations(), expected);
        // Later versions make it final; it stays reported, once.
        for version in 3..=10 {
            check.status("w", 1, "worker-0", version, &[1, 2]);
            check.processed("w", 1, 1, 3);
        }
        assert_eq!(check.violations(), expected);
        assert_eq!(check.pending_tuples(), 0);

        // The same race, but the status for v2 does add partition 3: no violation.
        let mut check = OwnershipCheck::default();
        check.status("w", 1, "worker-0", 1, &[1, 2]);
        check.processed("w", 1, 1, 3);
        assert_eq!(check.violations().len(), 1, "until v2 arrives");
        check.status("w", 1, "worker-0", 2, &[1, 2, 3]);
        assert!(check.violations().is_empty());
        assert_eq!(check.pending_tuples(), 0);
    }

    #[test]
    fn a_version_processed_before_any_status_is_judged_later() {
        let mut check = OwnershipCheck::default();
        check.processed("w", 1, 2, 7);
        assert_eq!(check.pending_tuples(), 1);
        check.status("w", 1, "worker-0", 2, &[1]);
        check.status("w", 1, "worker-0", 3, &[1]);
        check.status("w", 1, "worker-0", 4, &[1]);
        assert_eq!(check.violations().len(), 1);
        assert_eq!(check.pending_tuples(), 0);
    }

    #[test]
    fn a_serde_round_trip_keeps_violations_and_pending_tuples() {
        let mut check = OwnershipCheck::default();
        check.status("a", 1, "worker-0", 1, &[1]);
        check.status("a", 1, "worker-0", 2, &[1]);
        check.status("a", 1, "worker-0", 3, &[1]);
        check.processed("a", 1, 1, 9); // final violation
        check.processed("a", 1, 3, 8); // pending, violating as of now
        check.processed("b", 2, 5, 4); // pending, no status yet
        let json = match serde_json::to_string(&check) {
            Ok(json) => json,
            Err(e) => panic!("{e}"),
        };
        let mut copy: OwnershipCheck = match serde_json::from_str(&json) {
            Ok(copy) => copy,
            Err(e) => panic!("{e}: {json}"),
        };
        assert_eq!(copy, check);
        assert_eq!(copy.violations(), check.violations());
        assert_eq!(copy.violations().len(), 2);
        assert_eq!(copy.pending_tuples(), 2);
        // Both go on the same way.
        for c in [&mut check, &mut copy] {
            c.status("a", 1, "worker-0", 4, &[1, 8]);
            c.status("b", 2, "worker-1", 5, &[3]);
        }
        assert_eq!(copy.violations(), check.violations());
        assert_eq!(copy.pending_tuples(), check.pending_tuples());
    }

    /// The check as it was before judging early: every tuple kept, all judged at the end.
    #[derive(Default)]
    struct Reference {
        owned: BTreeMap<u64, BTreeSet<u32>>,
        processed: BTreeSet<(u64, u32)>,
    }

    impl Reference {
        fn violations(&self) -> Vec<(u64, u32)> {
            self.processed
                .iter()
                .filter(|(v, p)| {
                    let Some(at) = self.owned.get(v) else {
                        return false;
                    };
                    let next = self.owned.range(v + 1..).next().map(|(_, s)| s);
                    !(at.contains(p) || next.is_some_and(|s| s.contains(p)))
                })
                .copied()
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A status `bump` versions above the latest (0: the same version again).
        Status { bump: u64, partitions: Vec<u32> },
        /// A report labelled `lag` versions below the latest (negative: ahead of it).
        Processed { lag: i64, partition: u32 },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            1 => (0u64..=2, proptest::collection::vec(0u32..6, 0..4))
                .prop_map(|(bump, partitions)| Op::Status { bump, partitions }),
            3 => (-2i64..=2, 0u32..6).prop_map(|(lag, partition)| Op::Processed { lag, partition }),
        ]
    }

    proptest::proptest! {
        /// Under the ordering the rule assumes (statuses in version order, labels at most two
        /// versions behind), judging early reports exactly what judging everything would.
        #[test]
        fn judging_early_agrees_with_judging_everything(
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let (mut check, mut reference, mut latest) =
                (OwnershipCheck::default(), Reference::default(), 1u64);
            for op in &ops {
                match op {
                    Op::Status { bump, partitions } => {
                        latest += bump;
                        check.status("w", 1, "worker-0", latest, partitions);
                        reference.owned.entry(latest).or_default().extend(partitions);
                    }
                    Op::Processed { lag, partition } => {
                        let version = latest.saturating_add_signed(-lag).max(1);
                        check.processed("w", 1, version, *partition);
                        reference.processed.insert((version, *partition));
                    }
                }
                let found: Vec<(u64, u32)> =
                    check.violations().iter().map(|v| (v.version, v.partition)).collect();
                proptest::prop_assert_eq!(found, reference.violations());
                proptest::prop_assert_eq!(check.stale_labels(), 0);
                proptest::prop_assert!(check.retained_versions() <= KEEP_VERSIONS);
            }
        }
    }
}
