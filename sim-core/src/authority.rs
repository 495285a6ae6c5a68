//! Ownership judged against the assignment document: the oracle a worker cannot bend.
//!
//! [`crate::ownership`] compares a worker's processing with what that worker said it owned,
//! so a worker whose own account is wrong passes it: a stalled assignment watcher that
//! confirms every version but keeps consuming what it had, a report labelled version 0, a
//! foreign consumer bound to a partition's durable that never sent a status. The tracker's
//! overlap check needs two processing intervals to overlap in wall-clock time, which two
//! consumers sharing one durable almost never do: the server hands each message to one of
//! them, and each processes it in a few milliseconds, one after the other. This check uses
//! only what the worker cannot influence: parti's assignment document, each version stamped
//! with the time the server stored it.
//!
//! - **Rule.** A partition is *held* by a worker from the version that grants it to that
//!   worker until a version grants it to another one. A draining step (the partition owned
//!   by nobody while its old owner stops) does not end the hold. Processing of partition
//!   `p` by worker `w` at time `t` is a violation when the last version written at or before
//!   `t` that grants `p` grants it to another worker, or when no such version exists. parti
//!   grants a partition to its next owner only after the previous owner confirmed it stopped
//!   (or its lease expired, and it fenced itself). So in a correct system the previous
//!   owner's last processing comes before that grant was written, at any message rate and
//!   whether or not two processings overlap. Processing by an older owner after a newer
//!   owner has processed is one such case: the newer owner processed after its grant.
//! - **Time.** A version's time is the server's store time; a processing's time is the
//!   worker's clock when it committed (`processed_us`), corrected by the coordinator to its
//!   own clock (`crate::clock`); the server's clock is taken as the coordinator's (one host
//!   in `simctl run` and the lab; docs/VERDICT.md, "Whose clock").
//! - **Clock uncertainty.** A corrected time is known only within its host's clock error
//!   (`ClockOffset::error_bound_us`): the processing happened somewhere in `[t − e, t + e]`.
//!   It is a violation only if it is one across that whole interval: a worker that held the
//!   partition at any moment of it is given the benefit of the doubt (the error is half a
//!   probe's round trip, a fraction of a millisecond on a quiet network, so what this
//!   forgives is a processing within that much of a handoff). A processing from a host whose
//!   clock has not been measured yet is not judged (counted, as blind spans are).
//! - **When a verdict is final.** Versions arrive in the order they were written. When the
//!   newest one seen was written at `L`, every version written at or before `L` is known,
//!   so a processing at `t ≤ L` is judged for good. A processing at `t > L` that the known
//!   versions contradict is *pending*, because a grant to its worker written between `L` and
//!   `t` may still arrive (the worker's own watch can be faster than the coordinator's). It
//!   is judged again as versions arrive, and [`AuthorityCheck::violations`] judges it as of
//!   now. A processing the known versions allow is accepted at once. A grant to another
//!   worker written after `L` and before the processing would make it a violation; missing
//!   that costs at most the coordinator's watch delay.
//! - **Blind spans.** Versions increase by one. A jump means versions written while the
//!   coordinator was down, or replaced before its watch read them. The holds that changed
//!   between the two versions are unknown, so processing in that span of time is not judged.
//!   It is counted ([`AuthorityCheck::unjudged`]).
//! - **No document.** While no version has been seen, processing waits (pending). If none
//!   is ever seen, the implementation under test writes no such document and this check has
//!   nothing to say: nothing is a violation, everything is counted as not judged.
//! - **Memory.** Per partition, the last [`KEEP_GRANTS`] grants; per worker and partition,
//!   one tally of violations and at most [`PENDING_CAP`] pending times. Nothing per message.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::assignment::grants;

/// Grants kept per partition. A processing older than the oldest kept grant is not judged.
pub const KEEP_GRANTS: usize = 64;

/// Pending processing times kept per worker and partition. Beyond that, the extra ones are
/// counted and judged with the latest kept time.
pub const PENDING_CAP: usize = 1024;

/// Collected evidence. Serialisable as is, for checkpoints.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityCheck {
    /// Partition → who it was granted to, oldest first.
    #[serde(default)]
    timelines: BTreeMap<u32, Timeline>,
    /// Store time of the newest version seen (µs since the epoch); 0: none yet.
    #[serde(default)]
    seen_through_us: i64,
    /// The newest version seen.
    #[serde(default)]
    last_version: u64,
    /// Spans of store time `(after, up to)` whose versions were not all seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    blind: Vec<(i64, i64)>,
    /// Worker id → partition → processing the known versions contradict, not yet final.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pending: BTreeMap<String, BTreeMap<u32, Pending>>,
    /// Worker id → partition → final violations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    found: BTreeMap<String, BTreeMap<u32, Unowned>>,
    /// Processing in a blind span or older than the kept grants: not judged.
    #[serde(default)]
    unjudged: u64,
    /// Versions never seen (the jumps in the version numbers).
    #[serde(default)]
    versions_missed: u64,
}

/// One partition's grants.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Timeline {
    grants: Vec<Grant>,
    /// Older grants were dropped: a processing before the first kept one is not judged.
    #[serde(default)]
    pruned: bool,
}

/// A version granted a partition to a worker that did not hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Grant {
    /// Store time of the version (µs since the epoch).
    at_us: i64,
    version: u64,
    worker: String,
}

/// Processing of one partition by one worker, judged not held but not final.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    /// The reporting process (for the report).
    process: String,
    /// When it processed, in arrival order.
    times: Vec<i64>,
    /// Reports beyond [`PENDING_CAP`].
    #[serde(default)]
    overflow: u64,
    /// The largest clock error of those times (µs): all are judged with it, which can only
    /// forgive, never accuse.
    #[serde(default)]
    tolerance_us: i64,
}

/// Processing of one partition by one worker that the assignment document did not allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unowned {
    /// The worker id the reports carried.
    pub worker: String,
    /// The process slot that reported the first of them.
    pub process: String,
    /// The partition.
    pub partition: u32,
    /// How many processings.
    pub count: u64,
    /// When the first of them was processed (µs since the epoch).
    pub first_us: i64,
    /// The worker that held the partition then; `None`: no version had granted it.
    pub holder: Option<String>,
    /// The version that granted it to `holder` (0: none).
    pub version: u64,
    /// How long before `first_us` that version was written (µs; 0: none).
    pub after_grant_us: i64,
}

impl fmt::Display for Unowned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) processed partition {} {} time(s); ",
            self.worker, self.process, self.partition, self.count
        )?;
        match &self.holder {
            Some(holder) => write!(
                f,
                "the first {:.3} s after assignment v{} had granted it to {holder}",
                self.after_grant_us as f64 / 1e6,
                self.version
            ),
            None => write!(f, "no assignment had granted it to anyone before the first"),
        }
    }
}

/// A processing's standing against the known versions.
enum Standing<'a> {
    Held,
    Unjudged,
    /// Not held; the grant in effect, if any.
    Unowned(Option<&'a Grant>),
}

impl AuthorityCheck {
    /// Take in one version of the document, stored by the server at `written_us`. Versions
    /// not above the newest seen are ignored (a resumed watch replays the current one;
    /// a decrease is the assignment log's to report).
    pub fn document(&mut self, written_us: i64, doc: &Value) {
        let version = doc["version"].as_u64().unwrap_or(0);
        if version <= self.last_version {
            return;
        }
        if version != self.last_version + 1 {
            self.versions_missed += version - self.last_version - 1;
            let after = if self.last_version == 0 {
                i64::MIN
            } else {
                self.seen_through_us
            };
            self.blind.push((after, written_us));
        }
        for (worker, id) in grants(doc) {
            let timeline = self.timelines.entry(id).or_default();
            if timeline.grants.last().is_some_and(|g| g.worker == *worker) {
                continue;
            }
            timeline.grants.push(Grant {
                at_us: written_us,
                version,
                worker: worker.clone(),
            });
            if timeline.grants.len() > KEEP_GRANTS {
                timeline.grants.remove(0);
                timeline.pruned = true;
            }
        }
        self.last_version = version;
        self.seen_through_us = self.seen_through_us.max(written_us);
        self.settle();
    }

    /// `worker` (reporting as `process`) processed a message of `partition` at
    /// `processed_us`, on the coordinator's clock exactly.
    pub fn processed(&mut self, worker: &str, process: &str, partition: u32, processed_us: i64) {
        self.processed_within(worker, process, partition, processed_us, Some(0));
    }

    /// [`Self::processed`] at a time known within `tolerance_us` (the host's clock error;
    /// `None`: not measured yet, so not judged).
    pub fn processed_within(
        &mut self,
        worker: &str,
        process: &str,
        partition: u32,
        processed_us: i64,
        tolerance_us: Option<i64>,
    ) {
        let Some(tolerance) = tolerance_us.map(|t| t.max(0)) else {
            self.unjudged += 1;
            return;
        };
        match self.standing(worker, partition, processed_us, tolerance) {
            Standing::Held => {}
            Standing::Unjudged => self.unjudged += 1,
            Standing::Unowned(grant) => {
                if processed_us.saturating_add(tolerance) <= self.seen_through_us {
                    let found = tally(worker, process, partition, processed_us, grant);
                    add(&mut self.found, found);
                } else {
                    let pending = self
                        .pending
                        .entry(worker.to_string())
                        .or_default()
                        .entry(partition)
                        .or_insert_with(|| Pending {
                            process: process.to_string(),
                            ..Pending::default()
                        });
                    pending.tolerance_us = pending.tolerance_us.max(tolerance);
                    if pending.times.len() < PENDING_CAP {
                        pending.times.push(processed_us);
                    } else {
                        pending.overflow += 1;
                    }
                }
            }
        }
    }

    /// Every processing the document did not allow, one entry per worker and partition:
    /// the final ones plus the pending ones judged as of now.
    /// Nothing while no version was seen at all: an implementation under test that writes
    /// no such document is not judged by it (see [`Self::unjudged`]).
    pub fn violations(&self) -> Vec<Unowned> {
        if self.last_version == 0 {
            return Vec::new();
        }
        let mut all = self.found.clone();
        for (worker, partitions) in &self.pending {
            for (&partition, pending) in partitions {
                if let (Some(found), _) = self.judge_pending(worker, partition, pending, i64::MAX) {
                    add(&mut all, found);
                }
            }
        }
        all.into_values().flat_map(BTreeMap::into_values).collect()
    }

    /// Processings not judged: in a span whose versions were not seen, older than the kept
    /// grants of their partition, or (while no version was seen at all) every one so far.
    #[must_use]
    pub fn unjudged(&self) -> u64 {
        if self.last_version > 0 {
            return self.unjudged;
        }
        let waiting: u64 = self
            .pending
            .values()
            .flat_map(BTreeMap::values)
            .map(|p| p.times.len() as u64 + p.overflow)
            .sum();
        self.unjudged + waiting
    }

    /// Versions of the document never seen (written while the coordinator was away, or
    /// replaced before its watch read them).
    #[must_use]
    pub fn versions_missed(&self) -> u64 {
        self.versions_missed
    }

    /// Pending processing times kept, over all workers and partitions.
    #[must_use]
    pub fn pending_times(&self) -> usize {
        self.pending
            .values()
            .flat_map(BTreeMap::values)
            .map(|p| p.times.len())
            .sum()
    }

    /// How the known versions judge processing by `worker` of `partition` at some moment
    /// of `[at_us − tolerance, at_us + tolerance]`: held if held at any moment of it.
    fn standing(&self, worker: &str, partition: u32, at_us: i64, tolerance: i64) -> Standing<'_> {
        let (from, to) = (
            at_us.saturating_sub(tolerance),
            at_us.saturating_add(tolerance),
        );
        if self
            .blind
            .iter()
            .any(|&(after, up_to)| to > after && from <= up_to)
        {
            return Standing::Unjudged;
        }
        let Some(timeline) = self.timelines.get(&partition) else {
            return Standing::Unowned(None);
        };
        let grants = &timeline.grants;
        // The grant in force at `from`, and every grant written up to `to`.
        let first = grants.partition_point(|g| g.at_us <= from);
        let last = grants.partition_point(|g| g.at_us <= to);
        let in_force_from = first.checked_sub(1);
        let span = in_force_from.unwrap_or(first)..last;
        if grants[span].iter().any(|g| g.worker == worker) {
            return Standing::Held;
        }
        let at = grants.partition_point(|g| g.at_us <= at_us);
        match at.checked_sub(1).map(|i| &grants[i]) {
            Some(grant) => Standing::Unowned(Some(grant)),
            None if timeline.pruned => Standing::Unjudged,
            None => Standing::Unowned(None),
        }
    }

    /// Judge the pending times at or before `through_us` with what is known now: the
    /// violations among them, as one tally (none if all are held), and how many fell where
    /// nothing is judged.
    fn judge_pending(
        &self,
        worker: &str,
        partition: u32,
        pending: &Pending,
        through_us: i64,
    ) -> (Option<Unowned>, u64) {
        let mut found: Option<Unowned> = None;
        let mut unjudged = 0;
        let last = pending.times.last().copied();
        let overflow = last.map(|t| (t, pending.overflow)).into_iter();
        let times = pending.times.iter().map(|&t| (t, 1)).chain(overflow);
        let tolerance = pending.tolerance_us;
        let final_by = |t: i64| t.saturating_add(tolerance) <= through_us;
        for (at_us, weight) in times.filter(|&(t, w)| final_by(t) && w > 0) {
            let grant = match self.standing(worker, partition, at_us, tolerance) {
                Standing::Held => continue,
                Standing::Unjudged => {
                    unjudged += weight;
                    continue;
                }
                Standing::Unowned(grant) => grant,
            };
            let one = tally(worker, &pending.process, partition, at_us, grant);
            match &mut found {
                Some(found) => {
                    found.count += weight;
                    if at_us < found.first_us {
                        *found = Unowned {
                            count: found.count,
                            ..one
                        };
                    }
                }
                None => {
                    found = Some(Unowned {
                        count: weight,
                        ..one
                    });
                }
            }
        }
        (found, unjudged)
    }

    /// Make final what the versions seen now decide: pending times whose whole uncertainty
    /// lies at or before the newest version's store time.
    fn settle(&mut self) {
        let through = self.seen_through_us;
        let mut pending = std::mem::take(&mut self.pending);
        for (worker, partitions) in &mut pending {
            for (&partition, entry) in partitions.iter_mut() {
                let tolerance = entry.tolerance_us;
                let is_final = |t: i64| t.saturating_add(tolerance) <= through;
                // Later times now held are accepted, as a new processing would be.
                entry.times.retain(|&t| {
                    is_final(t)
                        || matches!(
                            self.standing(worker, partition, t, tolerance),
                            Standing::Unowned(_)
                        )
                });
                if !entry.times.iter().any(|&t| is_final(t)) {
                    continue;
                }
                // The overflow is judged with the latest kept time, so only once that is final.
                let with_overflow = entry.times.last().is_some_and(|&t| is_final(t));
                let settled = Pending {
                    overflow: if with_overflow { entry.overflow } else { 0 },
                    ..entry.clone()
                };
                let (found, unjudged) = self.judge_pending(worker, partition, &settled, through);
                if let Some(found) = found {
                    add(&mut self.found, found);
                }
                self.unjudged += unjudged;
                if with_overflow {
                    entry.overflow = 0;
                }
                entry.times.retain(|&t| !is_final(t));
            }
            partitions.retain(|_, entry| !entry.times.is_empty());
        }
        pending.retain(|_, partitions| !partitions.is_empty());
        self.pending = pending;
    }
}

/// One violation at `at_us`.
fn tally(
    worker: &str,
    process: &str,
    partition: u32,
    at_us: i64,
    grant: Option<&Grant>,
) -> Unowned {
    Unowned {
        worker: worker.to_string(),
        process: process.to_string(),
        partition,
        count: 1,
        first_us: at_us,
        holder: grant.map(|g| g.worker.clone()),
        version: grant.map_or(0, |g| g.version),
        after_grant_us: grant.map_or(0, |g| at_us.saturating_sub(g.at_us)),
    }
}

/// Merge `one` into the tallies: counts add up, the earliest stays as the example.
fn add(into: &mut BTreeMap<String, BTreeMap<u32, Unowned>>, one: Unowned) {
    let slot = into.entry(one.worker.clone()).or_default();
    match slot.get_mut(&one.partition) {
        Some(found) => {
            let count = found.count + one.count;
            if one.first_us < found.first_us {
                *found = one;
            }
            found.count = count;
        }
        None => {
            slot.insert(one.partition, one);
        }
    }
}

#[cfg(test)]
mod tests;
