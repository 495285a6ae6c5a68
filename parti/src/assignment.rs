//! The assignment document and the handoff planner.
//!
//! One document, one key, one version: every worker sees a whole version or none of it
//! (the Go library's put-loop let workers observe half a rebalance).
//!
//! Handoff is two-phase. A partition moving from a live worker A to B is first *draining*
//! (owned by nobody; A must stop it), and is granted to B only in a later version, once A
//! has confirmed it applied the draining version (its heartbeat carries the version it
//! applied) or A's heartbeat lease has expired (A has then fenced itself). A partition whose
//! holder is already gone is granted at once. So the old owner always stops before the new
//! one starts, and the per-partition durable consumer carries the ack floor across.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Partition;
use crate::strategy::AssignmentMap;

/// The assignment published by the leader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssignmentDoc {
    /// Strictly increasing across leaders (the document never expires).
    pub version: u64,
    /// Why this version was written (`cold_start`, `planned_scale`, `emergency`, ...).
    pub lifecycle: String,
    /// The leader that wrote it.
    pub leader: String,
    /// Revision of the leader key the write was fenced on (the server accepted the write
    /// only while the leader key was at this revision). Non-decreasing from one version to
    /// the next: a decrease would mean a deposed leader's write landed — two acting leaders.
    #[serde(default)]
    pub leader_revision: u64,
    /// Worker id → the incarnation this assignment is for. A restarted process (new
    /// incarnation) ignores its entry until the leader re-publishes it.
    pub members: BTreeMap<String, u64>,
    /// Worker id → partitions it may process.
    pub owners: BTreeMap<String, Vec<Partition>>,
    /// Partition id → handoff in progress.
    pub draining: BTreeMap<String, Drain>,
}

/// A partition leaving `from` for `to`, owned by nobody until `from` confirms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// The partition.
    pub partition: Partition,
    /// Current (stopping) owner.
    pub from: String,
    /// Next owner.
    pub to: String,
}

/// What the leader knows about a live worker (from its heartbeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Process incarnation.
    pub incarnation: u64,
    /// Highest assignment version it has fully applied (stopped what it lost).
    pub applied_version: u64,
    /// It is shutting down and has already stopped all its partitions.
    pub leaving: bool,
}

impl AssignmentDoc {
    /// The partitions `worker` (incarnation `incarnation`) may process in this version.
    pub fn partitions_for(&self, worker: &str, incarnation: u64) -> Vec<Partition> {
        if self.members.get(worker) != Some(&incarnation) {
            return Vec::new();
        }
        self.owners.get(worker).cloned().unwrap_or_default()
    }

    /// Where every partition is headed: owners plus drain destinations.
    pub fn intent(&self) -> AssignmentMap {
        let mut intent: AssignmentMap = self.owners.clone();
        for drain in self.draining.values() {
            intent
                .entry(drain.to.clone())
                .or_default()
                .push(drain.partition.clone());
        }
        intent
    }

    /// Same content, ignoring version, lifecycle and leader.
    pub fn same_content(&self, other: &Self) -> bool {
        self.members == other.members
            && self.owners == other.owners
            && self.draining == other.draining
    }

    /// Number of partitions held or draining.
    pub fn partition_count(&self) -> usize {
        self.owners.values().map(Vec::len).sum::<usize>() + self.draining.len()
    }
}

/// Whether `worker` still holds what `doc` says it holds: same incarnation, alive, not gone.
fn holds(doc: &AssignmentDoc, live: &BTreeMap<String, MemberStatus>, worker: &str) -> bool {
    match (live.get(worker), doc.members.get(worker)) {
        (Some(status), Some(incarnation)) => status.incarnation == *incarnation && !status.leaving,
        _ => false,
    }
}

/// Compute the next document moving from `current` towards `target`.
///
/// `live` is the heartbeat view; workers in `target` must be live. The result has version
/// `current.version + 1`; callers publish it only if its content differs.
pub fn plan(
    current: &AssignmentDoc,
    live: &BTreeMap<String, MemberStatus>,
    target: &AssignmentMap,
    lifecycle: &str,
    leader: &str,
) -> AssignmentDoc {
    let mut holder: BTreeMap<String, &str> = BTreeMap::new();
    for (worker, partitions) in &current.owners {
        for partition in partitions {
            holder.insert(partition.id(), worker);
        }
    }
    let mut next = AssignmentDoc {
        version: current.version + 1,
        lifecycle: lifecycle.to_string(),
        leader: leader.to_string(),
        ..Default::default()
    };
    for worker in target.keys() {
        if let Some(status) = live.get(worker) {
            next.members.insert(worker.clone(), status.incarnation);
            next.owners.insert(worker.clone(), Vec::new());
        }
    }
    for (to, partitions) in target {
        // A target worker that is not live still gets its entry (nobody processes it, as
        // it is no member): a partition must never drop out of the document, or no later
        // version would bring it back.
        for partition in partitions {
            let id = partition.id();
            // A drain in progress: still waiting unless the old owner confirmed or died.
            let stopping = if let Some(drain) = current.draining.get(&id) {
                let confirmed = live
                    .get(&drain.from)
                    .is_none_or(|status| status.applied_version >= current.version);
                (!confirmed && holds(current, live, &drain.from)).then_some(drain.from.as_str())
            } else {
                match holder.get(&id) {
                    Some(&from) if from != to && holds(current, live, from) => Some(from),
                    _ => None,
                }
            };
            match stopping {
                Some(from) => {
                    next.draining.insert(
                        id,
                        Drain {
                            partition: partition.clone(),
                            from: from.to_string(),
                            to: to.clone(),
                        },
                    );
                }
                None => next
                    .owners
                    .entry(to.clone())
                    .or_default()
                    .push(partition.clone()),
            }
        }
    }
    for partitions in next.owners.values_mut() {
        partitions.sort();
    }
    // A drain's source must stay a member (with its incarnation) so it keeps applying
    // versions and can confirm; it holds nothing else if it is not in the target.
    let sources: BTreeSet<String> = next.draining.values().map(|d| d.from.clone()).collect();
    for from in sources {
        if let Some(incarnation) = current.members.get(&from) {
            next.members.entry(from).or_insert(*incarnation);
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(workers: &[(&str, u64, u64)]) -> BTreeMap<String, MemberStatus> {
        workers
            .iter()
            .map(|(w, inc, applied)| {
                (
                    w.to_string(),
                    MemberStatus {
                        incarnation: *inc,
                        applied_version: *applied,
                        leaving: false,
                    },
                )
            })
            .collect()
    }

    fn target(pairs: &[(&str, &[&str])]) -> AssignmentMap {
        pairs
            .iter()
            .map(|(w, ps)| {
                (
                    w.to_string(),
                    ps.iter().map(|p| Partition::new(*p, 1)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn cold_start_grants_directly() {
        let live = live(&[("a", 1, 0), ("b", 2, 0)]);
        let doc = plan(
            &AssignmentDoc::default(),
            &live,
            &target(&[("a", &["p1"]), ("b", &["p2"])]),
            "cold_start",
            "a",
        );
        assert_eq!(doc.version, 1);
        assert!(doc.draining.is_empty());
        assert_eq!(doc.partitions_for("a", 1), vec![Partition::new("p1", 1)]);
        assert!(
            doc.partitions_for("a", 99).is_empty(),
            "other incarnation gets nothing"
        );
    }

    #[test]
    fn move_from_live_worker_drains_then_grants() {
        let mut members = live(&[("a", 1, 1), ("b", 2, 1)]);
        let v1 = plan(
            &AssignmentDoc::default(),
            &members,
            &target(&[("a", &["p1", "p2"]), ("b", &[])]),
            "x",
            "a",
        );
        let goal = target(&[("a", &["p1"]), ("b", &["p2"])]);
        let v2 = plan(&v1, &members, &goal, "x", "a");
        assert_eq!(v2.draining.len(), 1, "p2 drains first");
        assert!(
            v2.partitions_for("b", 2).is_empty(),
            "b must not start before a stops"
        );
        assert_eq!(v2.partitions_for("a", 1), vec![Partition::new("p1", 1)]);
        // a has not confirmed v2 yet: still draining.
        let v3 = plan(&v2, &members, &v2.intent(), "x", "a");
        assert!(v3.same_content(&v2));
        // a confirms v2: granted.
        members.get_mut("a").expect("a").applied_version = 2;
        let v3 = plan(&v2, &members, &v2.intent(), "x", "a");
        assert!(v3.draining.is_empty());
        assert_eq!(v3.partitions_for("b", 2), vec![Partition::new("p2", 1)]);
    }

    #[test]
    fn dead_or_restarted_holder_is_granted_at_once() {
        let members = live(&[("a", 1, 1), ("b", 2, 1)]);
        let v1 = plan(
            &AssignmentDoc::default(),
            &members,
            &target(&[("a", &["p1"]), ("b", &["p2"])]),
            "x",
            "a",
        );
        // b died.
        let only_a = live(&[("a", 1, 1)]);
        let v2 = plan(
            &v1,
            &only_a,
            &target(&[("a", &["p1", "p2"])]),
            "emergency",
            "a",
        );
        assert!(v2.draining.is_empty());
        assert_eq!(v2.partitions_for("a", 1).len(), 2);
        // b restarted with a new incarnation: its old entry is void, and it gets p2 back.
        let restarted = live(&[("a", 1, 1), ("b", 3, 0)]);
        let v2 = plan(
            &v1,
            &restarted,
            &target(&[("a", &["p1"]), ("b", &["p2"])]),
            "x",
            "a",
        );
        assert!(v2.draining.is_empty());
        assert_eq!(v2.partitions_for("b", 3), vec![Partition::new("p2", 1)]);
        assert!(v2.partitions_for("b", 2).is_empty());
    }

    #[test]
    fn partitions_of_a_missing_target_worker_stay_in_the_document() {
        let members = live(&[("a", 1, 1), ("b", 2, 1)]);
        let v1 = plan(
            &AssignmentDoc::default(),
            &members,
            &target(&[("a", &["p1"]), ("b", &["p2"])]),
            "x",
            "a",
        );
        let only_a = live(&[("a", 1, 1)]);
        let v2 = plan(&v1, &only_a, &v1.intent(), "handoff", "a");
        assert_eq!(v2.partition_count(), 2, "p2 kept: {v2:?}");
        assert!(
            v2.partitions_for("b", 2).is_empty(),
            "not processed by a non-member"
        );
    }

    #[test]
    fn drain_source_dying_releases_the_partition() {
        let members = live(&[("a", 1, 1), ("b", 2, 1)]);
        let v1 = plan(
            &AssignmentDoc::default(),
            &members,
            &target(&[("a", &["p1"]), ("b", &[])]),
            "x",
            "a",
        );
        let v2 = plan(
            &v1,
            &members,
            &target(&[("a", &[]), ("b", &["p1"])]),
            "x",
            "a",
        );
        assert_eq!(v2.draining.len(), 1);
        let only_b = live(&[("b", 2, 2)]);
        let v3 = plan(&v2, &only_b, &target(&[("b", &["p1"])]), "x", "b");
        assert!(v3.draining.is_empty());
        assert_eq!(v3.partitions_for("b", 2).len(), 1);
    }
}
