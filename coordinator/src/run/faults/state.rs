//! The chaos bookkeeping of one run: what was injected, what is expected of it (exits,
//! pauses, respawns, impaired hosts, killed NATS servers) and the recovery being measured.
//! Plain data, checkpointed with the run; the engine's orchestration is in the parent.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use proto::v1::{Spawn, spawn};
use serde::{Deserialize, Serialize};

use super::catch_up::CatchUp;
use super::network::nats_endpoints;
use super::recovery::Measure;
use crate::placement::Placement;
use sim_core::chaos::{ChaosPlan, ChaosPlanState, FaultRecord, RESPAWN_AFTER};
use sim_core::config::Config;
use sim_core::verdict::{ExitStatus, Failure};

/// Chaos and healing state of one run. Every time in it is run time (since the run
/// started, on the run's clock), so the whole state goes into a checkpoint as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(in crate::run) struct FaultState {
    /// Rebuilt from the config and seed on resume (see [`ChaosPlanState`]).
    #[serde(skip)]
    pub(super) plan: Option<ChaosPlan>,
    pub(super) plan_state: Option<ChaosPlanState>,
    /// Processes whose next exit the chaos caused.
    pub(in crate::run) expect_exit: HashSet<String>,
    pub(super) retired: HashSet<String>,
    pub(in crate::run) paused: BTreeMap<String, Duration>,
    pub(super) respawn: BTreeMap<String, Duration>,
    pub(super) slots: BTreeMap<String, (String, Spawn)>,
    pub(super) agents: Vec<String>,
    pub(super) next_worker: usize,
    /// What was injected.
    pub(in crate::run) records: Vec<FaultRecord>,
    pub(super) measuring: Option<Measure>,
    /// `host:port` of every NATS server, for network faults.
    pub(super) nats_endpoints: Vec<String>,
    /// Hosts (agents) under a network fault or an agent crash.
    pub(in crate::run) host_faults: BTreeMap<String, HostFault>,
    /// The id the next added partition gets.
    pub(super) next_partition: u32,
    /// The tracker's duplicate count when the last fault was injected.
    pub(super) duplicates_at_last: Option<u64>,
    /// Restarted workers awaiting their next incarnation: process → (record, stable id,
    /// incarnation before the restart).
    pub(super) restarts: BTreeMap<String, (usize, String, u64)>,
    /// Managed NATS servers killed by `nats_server_kill`, by index.
    #[serde(default)]
    pub(super) nats_down: BTreeMap<usize, NatsDown>,
    /// Exits excused because a fault's signal targeted the process, until the agent
    /// confirms the signal reached it: process → (status, log tail). Not delivered, the
    /// exit was not the fault's doing and is judged after all.
    #[serde(default)]
    pub(in crate::run) excused_exits: BTreeMap<String, (ExitStatus, String)>,
    /// The catch-up after the last recovery, while its moved partitions work off their
    /// backlog.
    #[serde(default)]
    pub(super) catching_up: Option<CatchUp>,
    /// Faults injected, by type, never decreased: a record later found not to have taken
    /// effect (its signal not delivered, its agent gone) still counts here, so the metric
    /// built on it is a true counter (`run::metrics`).
    #[serde(default)]
    pub(in crate::run) injected_by_type: BTreeMap<sim_core::config::ChaosEvent, u64>,
    /// When the last fault was over: its end, its recovery, or its catch-up, whichever came
    /// last (run time). A silent worker's failure says it (`run::silence`).
    #[serde(default)]
    pub(in crate::run) settled_at: Option<Duration>,
}

/// A NATS server killed by the chaos.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct NatsDown {
    /// When it is started again; `None` once that was asked for.
    pub(super) restart_at: Option<Duration>,
    /// Until then, any process's exit is excused (every client of the killed server
    /// reconnects elsewhere, and a worker may lose its leases meanwhile); `None` while down.
    pub(super) excused_until: Option<Duration>,
}

/// How long a `nats_server_kill` keeps its server down by default: past parti's heartbeat
/// lease (6 s), so clients of that server must fail over in time or be fenced.
pub(super) const NATS_KILL_FOR: Duration = Duration::from_secs(10);
/// After a killed server was asked to restart, exits stay excused this long (its start-up,
/// up to the cluster's ready timeout, plus the usual grace).
pub(super) const NATS_RESTART_GRACE: Duration = Duration::from_secs(50);

/// How long after a network fault healed the exits of that host's processes still count as
/// caused by it (a fenced worker notices, reports and exits within seconds).
pub(super) const HOST_FAULT_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(in crate::run) struct HostFault {
    /// Index into `records` (also the fault id sent to the agent).
    pub(in crate::run) record: usize,
    /// Exits on this host are expected until then; `None` while the fault is in place.
    pub(in crate::run) excused_until: Option<Duration>,
    /// An `agent_crash`: the agent process killed, and when it must be back by.
    #[serde(default)]
    pub(in crate::run) crash: Option<HostCrash>,
}

/// The agent process an `agent_crash` killed: the fault is over when another process of
/// that agent says hello (`run::replay::watch_boots`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(in crate::run) struct HostCrash {
    /// The killed process (`Hello.boot_id`).
    pub(in crate::run) boot: u64,
    /// Run time by which a new process must have connected.
    pub(in crate::run) return_by: Duration,
}

/// How long an `agent_crash`'s agent may take to come back (restarted by `simctl run` or
/// systemd) before the evidence its children's journals hold counts as lost.
pub(in crate::run) const AGENT_RETURN_TIMEOUT: Duration = Duration::from_secs(60);

impl FaultState {
    /// Fault `index`'s recovery will not be measured after all.
    pub(in crate::run) fn unmeasure(&mut self, index: usize) {
        if self.measuring.as_ref().is_some_and(|m| m.index == index) {
            self.measuring = None;
        }
    }

    /// The recovery being measured, described for the run's events: fault, target and the
    /// run time of its deadline.
    pub(in crate::run) fn recovery_in_progress(&self) -> Option<String> {
        let (index, deadline, what) = match (&self.measuring, &self.catching_up) {
            (Some(measure), _) => (measure.index, measure.deadline, ""),
            (None, Some(catch)) => (catch.index, catch.deadline, " and its catch-up"),
            (None, None) => return None,
        };
        let record = self.records.get(index)?;
        Some(format!(
            "{} on {}{what} (at most until {:.0}s)",
            record.event,
            record.target,
            deadline.as_secs_f64()
        ))
    }

    /// The agent whose slot `process` is.
    pub(in crate::run) fn agent_of(&self, process: &str) -> Option<&str> {
        self.slots.get(process).map(|(agent, _)| agent.as_str())
    }

    /// A fault's effects were over at `at` (run time): the last fault settled then, unless
    /// it had already settled later.
    pub(in crate::run) fn settled(&mut self, at: Duration) {
        self.settled_at = Some(self.settled_at.map_or(at, |before| before.max(at)));
    }

    pub(in crate::run) fn new(
        config: &Config,
        seed: u64,
        placement: &Placement,
        nats_url: &str,
    ) -> Self {
        let slots: BTreeMap<String, (String, Spawn)> = placement
            .producer_spawns()
            .into_iter()
            .chain(placement.worker_spawns())
            .map(|(agent, spawn)| (spawn.process.clone(), (agent, spawn)))
            .collect();
        let mut agents: Vec<String> = slots.values().map(|(agent, _)| agent.clone()).collect();
        agents.sort();
        agents.dedup();
        Self {
            plan: ChaosPlan::new(&config.chaos, seed, Duration::ZERO),
            slots,
            agents,
            next_worker: placement.workers.len(),
            nats_endpoints: nats_endpoints(nats_url),
            next_partition: config.partitions.count,
            ..Self::default()
        }
    }

    /// Ready for a checkpoint: the plan's position is copied into the serialized state.
    pub(in crate::run) fn prepare_checkpoint(&mut self) {
        self.plan_state = self.plan.as_ref().map(ChaosPlan::state);
    }

    /// After loading from a checkpoint: rebuild the plan from `config` and `seed`.
    pub(in crate::run) fn restore_plan(
        &mut self,
        config: &Config,
        seed: u64,
    ) -> Result<(), String> {
        self.plan = match &self.plan_state {
            Some(state) => ChaosPlan::restore(&config.chaos, seed, state)?,
            None => None,
        };
        Ok(())
    }

    /// A resumed run's coordinator was away for `downtime`: a recovery measured across it
    /// gets its deadline moved by as much (nothing could be observed meanwhile).
    pub(in crate::run) fn shift_deadlines(&mut self, downtime: Duration) {
        if let Some(measure) = &mut self.measuring {
            measure.deadline += downtime;
        }
        if let Some(catch) = &mut self.catching_up {
            catch.deadline += downtime;
        }
    }

    /// The previous fault's duplicates end here (`duplicates`: the tracker's count now).
    pub(in crate::run) fn close_duplicates(&mut self, duplicates: u64) {
        if let (Some(start), Some(last)) = (self.duplicates_at_last, self.records.last_mut()) {
            last.duplicates = Some(duplicates.saturating_sub(start));
        }
    }

    /// Fault `index` on `target` did not happen (its command was not sent, or its signal not
    /// delivered): what it made the run expect is withdrawn — the exit it would excuse, the
    /// pause, the retirement, the restart, the host fault, and its recovery measurement.
    pub(in crate::run) fn withdraw(&mut self, index: usize, target: &str) {
        self.expect_exit.remove(target);
        self.host_faults.remove(target);
        self.paused.remove(target);
        self.retired.remove(target);
        if self
            .restarts
            .get(target)
            .is_some_and(|(record, _, _)| *record == index)
        {
            self.restarts.remove(target);
        }
        if self.measuring.as_ref().is_some_and(|m| m.index == index) {
            self.measuring = None;
        }
    }

    /// A restarted worker's slot reports again: its new incarnation must hold the same stable
    /// id (the agent hands it the slot's identity token, parti gives the id back at once).
    pub(in crate::run) fn check_restarted_identity(
        &mut self,
        process: &str,
        worker_id: &str,
        incarnation: u64,
        failures: &mut Vec<Failure>,
    ) {
        let Some((record, old_id, old_incarnation)) = self.restarts.get(process).cloned() else {
            return;
        };
        if incarnation == old_incarnation || worker_id.is_empty() {
            return;
        }
        self.restarts.remove(process);
        let note = if worker_id == old_id {
            format!("kept stable id {worker_id}")
        } else {
            failures.push(Failure::Identity {
                process: process.to_string(),
                before: old_id.clone(),
                after: worker_id.to_string(),
            });
            format!("stable id changed: {old_id} → {worker_id}")
        };
        if let Some(record) = self.records.get_mut(record) {
            record.detail = if record.detail.is_empty() {
                note
            } else {
                format!("{}; {note}", record.detail)
            };
        }
    }

    /// Whether `process` runs on a host whose network fault excuses its exit.
    /// Also true for every process while a killed NATS server is down or restarting.
    pub(in crate::run) fn host_faulted(&self, process: &str, now: Duration) -> bool {
        let nats_down = self
            .nats_down
            .values()
            .any(|down| down.excused_until.is_none_or(|until| now <= until));
        nats_down
            || self
                .slots
                .get(process)
                .and_then(|(agent, _)| self.host_faults.get(agent))
                .is_some_and(|fault| fault.excused_until.is_none_or(|until| now <= until))
    }

    /// The drain begins: producers waiting to be restarted stay down.
    pub(in crate::run) fn cancel_producer_respawns(&mut self) {
        let slots = &self.slots;
        self.respawn.retain(|process, _| {
            !matches!(
                slots.get(process),
                Some((
                    _,
                    Spawn {
                        spec: Some(spawn::Spec::Producer(_)),
                        ..
                    }
                ))
            )
        });
    }

    /// A process exited: heal its slot later, unless it was retired or the run is ending.
    pub(in crate::run) fn on_exit(&mut self, process: &str, running: bool, now: Duration) {
        self.paused.remove(process);
        if running && !self.retired.contains(process) && self.slots.contains_key(process) {
            self.respawn
                .insert(process.to_string(), now + RESPAWN_AFTER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::recovery::{Measure, TargetDone};
    use super::*;

    fn measuring(index: usize) -> Option<Measure> {
        Some(Measure {
            index,
            since: Duration::ZERO,
            deadline: Duration::from_secs(60),
            awaiting_heal: false,
            received_at_since: 0,
            moves_at_start: 0,
            target_done: TargetDone::Nothing,
            owners_at_start: BTreeMap::new(),
        })
    }

    /// A fault that did not happen leaves no expectation behind; another fault's stay.
    #[test]
    fn a_withdrawn_fault_leaves_no_expectation_behind() {
        let mut faults = FaultState::default();
        faults.expect_exit.insert("worker-1".into());
        faults.expect_exit.insert("worker-2".into());
        faults
            .paused
            .insert("worker-1".into(), Duration::from_secs(5));
        faults.retired.insert("worker-1".into());
        faults
            .restarts
            .insert("worker-1".into(), (3, "w1".into(), 1));
        faults.measuring = measuring(3);
        faults.withdraw(3, "worker-1");
        assert!(!faults.expect_exit.contains("worker-1"));
        assert!(faults.expect_exit.contains("worker-2"), "another fault's");
        assert!(faults.paused.is_empty() && faults.retired.is_empty());
        assert!(faults.restarts.is_empty() && faults.measuring.is_none());

        // A restart and a measurement of another fault are not this one's to withdraw.
        faults
            .restarts
            .insert("worker-1".into(), (2, "w1".into(), 1));
        faults.measuring = measuring(2);
        faults.withdraw(3, "worker-1");
        assert_eq!(faults.restarts.len(), 1);
        assert!(faults.measuring.is_some());
    }
}
