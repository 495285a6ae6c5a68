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

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// (process slot, incarnation).
type WorkerKey = (String, u64);

/// Collected evidence; memory is per (worker, version, partition), not per message.
#[derive(Debug, Default)]
pub struct OwnershipCheck {
    owned: BTreeMap<WorkerKey, BTreeMap<u64, BTreeSet<u32>>>,
    processed: HashSet<(WorkerKey, u64, u32)>,
    worker_ids: BTreeMap<WorkerKey, String>,
}

/// One violation, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        let key = (process.to_string(), incarnation);
        self.worker_ids.insert(key.clone(), worker_id.to_string());
        // Union, not replace: a fenced worker reports the same version again with an empty
        // list, and what it owned earlier in that version stays legitimately owned.
        self.owned
            .entry(key)
            .or_default()
            .entry(version)
            .or_default()
            .extend(partitions.iter().copied());
    }

    /// A worker processed a message of `partition` while at `version`.
    pub fn processed(&mut self, process: &str, incarnation: u64, version: u64, partition: u32) {
        if version == 0 {
            return;
        }
        self.processed
            .insert(((process.to_string(), incarnation), version, partition));
    }

    /// Every processed (worker, version, partition) the worker's own statuses contradict.
    /// Versions the worker never reported are not judged.
    pub fn violations(&self) -> Vec<Violation> {
        let mut found: Vec<Violation> = self
            .processed
            .iter()
            .filter_map(|(key, version, partition)| {
                let versions = self.owned.get(key)?;
                let at = versions.get(version)?;
                let next = versions.range(version + 1..).next().map(|(_, p)| p);
                let owned = at.contains(partition) || next.is_some_and(|p| p.contains(partition));
                (!owned).then(|| Violation {
                    worker: format!(
                        "{}/{}",
                        self.worker_ids.get(key).map_or("?", String::as_str),
                        key.0
                    ),
                    version: *version,
                    partition: *partition,
                })
            })
            .collect();
        found.sort_by(|a, b| {
            (&a.worker, a.version, a.partition).cmp(&(&b.worker, b.version, b.partition))
        });
        found
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
}
