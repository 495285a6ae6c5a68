//! Measuring recovery: when a fault counts as healed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sim_core::events::{EventKind, RunEvent};
use sim_core::verdict::{Failure, Unrecovered};
use tracing::info;

use super::super::ActiveRun;

/// The recovery being measured (one fault at a time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Measure {
    /// Index into `records`.
    pub(super) index: usize,
    /// Recovery is measured from here.
    pub(super) since: Duration,
    /// Over this: a rebalance failure.
    pub(super) deadline: Duration,
    /// A network fault still in place: recovery has not begun.
    pub(super) awaiting_heal: bool,
    /// The tracker's received count at `since`: recovered means more were processed since.
    pub(super) received_at_since: u64,
    /// The assignment log's move count at injection.
    pub(super) moves_at_start: u64,
    /// What must have happened to the target before recovery can count.
    pub(super) target_done: TargetDone,
    /// Each partition's owner at the injection: what the recovery moved must catch up.
    #[serde(default)]
    pub(super) owners_at_start: BTreeMap<u32, String>,
}

/// The fault's own effect that recovery must wait for: a graceful leave or restart takes a
/// second or two, during which the target still owns its partitions and "fully owned"
/// would be true before anything moved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum TargetDone {
    /// Nothing to wait for (crashes and pauses: the target is down or paused at once).
    Nothing,
    /// The killed NATS server (index) runs again.
    NatsServerBack(usize),
    /// The process has exited (scale_down).
    Exited(String),
    /// The process reported an incarnation other than this one (worker_restart).
    Reincarnated(String, u64),
    /// The process reported owning partitions (scale_up).
    Owning(String),
}

impl TargetDone {
    pub(super) fn reached(&self, run: &ActiveRun) -> bool {
        match self {
            Self::Nothing => true,
            Self::NatsServerBack(index) => run
                .io
                .nats_cluster
                .as_ref()
                .is_some_and(|cluster| cluster.is_running(*index)),
            Self::Exited(process) => run
                .state
                .workers
                .get(process)
                .is_none_or(|view| !view.alive),
            Self::Reincarnated(process, before) => run
                .state
                .workers
                .get(process)
                .is_some_and(|view| view.alive && view.incarnation != *before),
            Self::Owning(process) => run
                .state
                .workers
                .get(process)
                .is_some_and(|view| view.alive && !view.partitions.is_empty()),
        }
    }
}

/// Every partition of the map owned by exactly one live, unpaused worker.
fn fully_owned(run: &ActiveRun) -> bool {
    unsettled_partitions(run) == 0
}

/// Each live, unpaused worker and the partitions its last status lists: ownership as the
/// recovery and the catch-up count it (a paused worker's last status still lists what it
/// held).
pub(super) fn holdings(run: &ActiveRun) -> impl Iterator<Item = (&String, &[u32])> {
    run.state
        .workers
        .iter()
        .filter(|(process, view)| view.alive && !run.state.faults.paused.contains_key(*process))
        .map(|(process, view)| (process, view.partitions.as_slice()))
}

/// How many partitions of the map are not owned by exactly one live, unpaused worker (a
/// worker owning a partition the map does not have counts as one more).
pub(in crate::run) fn unsettled_partitions(run: &ActiveRun) -> usize {
    let mut stray = 0;
    let mut owners: BTreeMap<u32, u8> = run
        .state
        .partition_map
        .partitions
        .iter()
        .map(|entry| (entry.id, 0))
        .collect();
    for (_, partitions) in holdings(run) {
        for partition in partitions {
            match owners.get_mut(partition) {
                Some(count) => *count = count.saturating_add(1),
                // Owns a partition that no longer exists: not settled yet.
                None => stray += 1,
            }
        }
    }
    stray + owners.values().filter(|count| **count != 1).count()
}

/// The fault being measured has recovered (its time goes into the record) or is over its
/// deadline (a rebalance failure); either way the next fault may come.
pub(super) fn check(run: &mut ActiveRun, now: Duration) {
    if let Some(measure) = run.state.faults.measuring.clone() {
        let received = run.tracker.progress_marker().0;
        if !measure.awaiting_heal
            && measure.target_done.reached(run)
            && fully_owned(run)
            && received > measure.received_at_since
        {
            let took = now.saturating_sub(measure.since).as_secs_f64();
            let record = &mut run.state.faults.records[measure.index];
            record.rebalance_s = Some(took);
            record.recovery_from_s = Some(measure.since.as_secs_f64());
            record.moved = Some(run.state.assignment_log.moves - measure.moves_at_start);
            run.state.faults.measuring = None;
            info!(run = %run.state.id, event = %record.event, took, "recovered");
            let line = format!(
                "recovered from {} {} in {took:.1}s ({} partition moves)",
                record.event,
                record.target,
                record.moved.unwrap_or(0)
            );
            run.state
                .events
                .push(RunEvent::new(EventKind::Recovery, line));
            run.state.faults.settled(now);
            super::catch_up::begin(run, measure.index, &measure.owners_at_start, now);
        } else if now > measure.deadline {
            let record = &run.state.faults.records[measure.index];
            let failure = Failure::RebalanceTimeout {
                event: record.event,
                target: record.target.clone(),
                at_s: record.at_s,
                stuck: if measure.awaiting_heal {
                    Unrecovered::NetworkNotHealed
                } else {
                    Unrecovered::NotOwnedAndConsuming
                },
                timeout: run.state.config.coordinator.rebalance_timeout,
            };
            run.state
                .events
                .push(RunEvent::new(EventKind::Recovery, failure.to_string()));
            run.state.failures.push(failure);
            run.state.faults.measuring = None;
            run.state.faults.settled(now);
        }
    }
}
