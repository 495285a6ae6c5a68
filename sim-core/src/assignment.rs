//! parti's assignment history, judged: the system under test's own record of ownership
//! (parti's assignment document, KV bucket `parti`, key `assignment`), one version at a time.
//!
//! Read as plain JSON (nothing here links parti: another implementation under test may not
//! write this document, and then these checks simply have nothing to say). Per version it
//! checks:
//! - versions strictly increase;
//! - the leader key revision the write was fenced on never decreases — a decrease means a
//!   deposed leader's write landed after its successor's: two acting leaders;
//! - no partition is owned by two workers in one version.
//!
//! It also keeps each partition's owner timeline, counting moves (a partition whose owner
//! changes, a handoff's "owned by nobody" step in between not counting twice). Watching the
//! document is the coordinator's (`assignment_log::watch`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the assignment documents showed so far. Serialisable as is, for checkpoints.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentLog {
    last_version: u64,
    last_revision: u64,
    last_leader: String,
    /// Partition → its last owner (a worker id).
    owner: BTreeMap<u32, String>,
    /// Versions seen.
    pub versions: u64,
    /// Partition moves seen.
    pub moves: u64,
    /// Leaders seen, in order of first appearance.
    pub leaders: Vec<String>,
    /// What broke the rules.
    pub violations: Vec<String>,
    /// KV revision of the last document taken in, set by the caller: after a resume the
    /// watch replays the current document, which must be skipped rather than read as a
    /// version that did not increase (design §5.4). 0: none yet.
    #[serde(default)]
    pub last_kv_revision: u64,
}

/// A partition id as parti writes it: a string, or `{"keys": [...]}` joined by dots.
pub(crate) fn partition_id(value: &Value) -> Option<u32> {
    match value {
        Value::String(id) => id.parse().ok(),
        Value::Object(map) => map
            .get("keys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .and_then(|id| id.parse().ok()),
        _ => None,
    }
}

/// Every (worker, partition) a version of the document grants, in the document's order
/// (partition ids it cannot read are skipped).
pub(crate) fn grants(doc: &Value) -> impl Iterator<Item = (&String, u32)> {
    doc["owners"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(worker, partitions)| {
            partitions
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(partition_id)
                .map(move |id| (worker, id))
        })
}

impl AssignmentLog {
    /// Take in one version of the document.
    pub fn observe(&mut self, doc: &Value) {
        let version = doc["version"].as_u64().unwrap_or(0);
        let revision = doc["leader_revision"].as_u64().unwrap_or(0);
        let leader = doc["leader"].as_str().unwrap_or_default().to_string();
        if self.versions > 0 && version <= self.last_version {
            self.violations.push(format!(
                "assignment version went from {} to {version} (leader {leader})",
                self.last_version
            ));
        }
        if revision > 0 && revision < self.last_revision {
            self.violations.push(format!(
                "two acting leaders: version {version} was written by {leader} fenced on leader \
                 revision {revision}, after {} had written version {} on revision {}",
                self.last_leader, self.last_version, self.last_revision
            ));
        }
        let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
        if let Some(owners) = doc["owners"].as_object() {
            for (worker, partitions) in owners {
                for partition in partitions.as_array().into_iter().flatten() {
                    let Some(id) = partition_id(partition) else {
                        continue;
                    };
                    if let Some(other) = seen.insert(id, worker) {
                        self.violations.push(format!(
                            "partition {id} owned by both {other} and {worker} in assignment \
                             version {version}"
                        ));
                    }
                    match self.owner.insert(id, worker.clone()) {
                        Some(previous) if previous != *worker => self.moves += 1,
                        _ => {}
                    }
                }
            }
        }
        if !leader.is_empty() && !self.leaders.contains(&leader) {
            self.leaders.push(leader.clone());
        }
        self.versions += 1;
        self.last_version = version;
        self.last_revision = self.last_revision.max(revision);
        self.last_leader = leader;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(version: u64, leader: &str, revision: u64, owners: Value) -> Value {
        json!({"version": version, "leader": leader, "leader_revision": revision, "owners": owners})
    }

    #[test]
    fn a_clean_history_has_no_violations_and_counts_moves() {
        let mut log = AssignmentLog::default();
        log.observe(&doc(
            1,
            "w0",
            5,
            json!({"w0": [{"keys": ["0"]}, {"keys": ["1"]}]}),
        ));
        log.observe(&doc(2, "w0", 9, json!({"w0": [{"keys": ["0"]}], "w1": []})));
        log.observe(&doc(
            3,
            "w1",
            12,
            json!({"w0": [{"keys": ["0"]}], "w1": [{"keys": ["1"]}]}),
        ));
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        assert_eq!(log.moves, 1, "partition 1 went w0 → (draining) → w1");
        assert_eq!(log.leaders, vec!["w0", "w1"]);
    }

    #[test]
    fn a_deposed_leaders_write_is_two_acting_leaders() {
        let mut log = AssignmentLog::default();
        log.observe(&doc(7, "w2", 40, json!({})));
        log.observe(&doc(8, "w0", 31, json!({})));
        assert_eq!(log.violations.len(), 1);
        assert!(
            log.violations[0].contains("two acting leaders"),
            "{:?}",
            log.violations
        );
    }

    #[test]
    fn two_owners_and_regressing_versions_are_violations() {
        let mut log = AssignmentLog::default();
        log.observe(&doc(
            3,
            "w0",
            1,
            json!({"w0": [{"keys": ["4"]}], "w1": [{"keys": ["4"]}]}),
        ));
        log.observe(&doc(2, "w0", 1, json!({})));
        assert_eq!(log.violations.len(), 2, "{:?}", log.violations);
        assert!(log.violations[0].contains("partition 4 owned by both"));
        assert!(log.violations[1].contains("version went from 3 to 2"));
    }
}
