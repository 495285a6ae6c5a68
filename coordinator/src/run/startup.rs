//! The startup gate (`coordinator.startup_timeout`): every worker follows an assignment
//! within the timeout of its start, and every partition has a single live owner within the
//! timeout of the run's start. A worker that never gets there, or a partition nobody takes,
//! is a FAIL (`startup`), named — not a run that merely looks slow.
//!
//! "Following" is parti's `Stable`, or a leader's working states (`Scaling`, `Rebalancing`,
//! `Emergency`): a worker past its first assignment. Each start of a worker slot is judged
//! (first wave, second wave, respawns, scale-ups); one that exits first is not (its exit is
//! judged on its own); one the chaos paused, or whose host (or NATS) is under a fault,
//! starts its time again when that is over. Times are run time, so a resumed run counts its
//! coordinator's downtime too; nothing is judged while a resume waits for its agents. A run
//! shorter than the timeout never judges what was still pending at its end.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ActiveRun;
use sim_core::verdict::{Failure, StartupMiss};

/// parti states of a worker that follows an assignment.
const FOLLOWING: [&str; 4] = ["Stable", "Scaling", "Rebalancing", "Emergency"];

/// What the startup gate is waiting for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StartupWatch {
    /// Workers started and not following an assignment yet: process → when it started (run
    /// time, ms).
    pending: BTreeMap<String, u64>,
    /// The partitions were all owned once (or found not to be in time): judged.
    partitions_judged: bool,
}

impl StartupWatch {
    /// A watch with nothing left to judge.
    pub(super) fn judged() -> Self {
        Self {
            pending: BTreeMap::new(),
            partitions_judged: true,
        }
    }

    /// A worker slot started (again) at run time `now_ms`.
    pub(super) fn started(&mut self, process: &str, now_ms: u64) {
        self.pending.insert(process.to_string(), now_ms);
    }

    /// A worker reported parti state `state`.
    pub(super) fn status(&mut self, process: &str, state: &str) {
        if FOLLOWING.contains(&state) {
            self.pending.remove(process);
        }
    }

    /// A worker exited: its start is not judged.
    pub(super) fn exited(&mut self, process: &str) {
        self.pending.remove(process);
    }
}

/// Judge what is due at run time `now`; each miss is a failure, once.
pub(super) fn check(run: &mut ActiveRun, now: Duration) {
    if run.local.resume_hold.is_some() {
        return;
    }
    let timeout = run.state.config.coordinator.startup_timeout;
    let now_ms = super::clock::millis(now);
    let timeout_ms = super::clock::millis(timeout);
    // A worker paused by the chaos, or on a host (or NATS) under a fault, cannot be
    // following yet: its time starts again when that is over.
    let faults = &run.state.faults;
    for (process, since) in &mut run.state.startup.pending {
        if faults.paused.contains_key(process) || faults.host_faulted(process, now) {
            *since = now_ms;
        }
    }
    let due: Vec<String> = run
        .state
        .startup
        .pending
        .iter()
        .filter(|(_, since)| now_ms.saturating_sub(**since) >= timeout_ms)
        .map(|(process, _)| process.clone())
        .collect();
    for process in due {
        run.state.startup.pending.remove(&process);
        let state = run
            .state
            .workers
            .get(&process)
            .map(|view| view.state.clone())
            .unwrap_or_default();
        run.state
            .failures
            .push(Failure::Startup(StartupMiss::Worker {
                process,
                state,
                timeout,
            }));
    }
    if run.state.startup.partitions_judged {
        return;
    }
    let unowned = super::faults::unsettled_partitions(run);
    if unowned == 0 {
        run.state.startup.partitions_judged = true;
    } else if now >= timeout {
        run.state.startup.partitions_judged = true;
        run.state
            .failures
            .push(Failure::Startup(StartupMiss::Partitions {
                // A worker owning a partition the map no longer has counts too: at most all.
                unowned: unowned.min(run.state.partition_map.partitions.len()),
                of: run.state.partition_map.partitions.len(),
                timeout,
            }));
    }
}
