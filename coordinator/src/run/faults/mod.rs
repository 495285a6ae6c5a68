//! Fault injection and self-healing inside the run engine.
//!
//! Every slot (producer or worker process) that exits during the run is started again after
//! `RESPAWN_AFTER` — with the same slot name, so a worker reclaims its stable id through its
//! identity token — unless a scale-down retired it. Exits the chaos caused are expected and
//! not reported as unexpected. After each fault that moves partitions, the time until every
//! partition is owned by exactly one live, unpaused worker and messages are being processed
//! again is the rebalance time; over `coordinator.rebalance_timeout` is a failure.
//!
//! Network faults (`nats_disconnect`, `network_degrade`) target a host: its agent installs
//! iptables/tc rules on the NATS ports and removes them itself when the time is up. Their
//! recovery is measured from the moment the agent reports the network healed; while a host
//! is impaired (and for [`HOST_FAULT_GRACE`] after), its processes exiting is expected —
//! a worker that lost its leases is fenced and restarts, as designed.
//!
//! An injection is planned without side effects ([`plan`]: target, command, bookkeeping),
//! applied to the state, recorded and checkpointed, and only then sent (write-ahead).
//!
//! Layout:
//! - this module: [`FaultState`] and the engine's orchestration (`fault_tick`, `inject`,
//!   `heal_all`, `on_network_report`);
//! - `plan`: the pure planner (`PlanInput` → `Plan` or `Skip`) and `apply`;
//! - `process`, `network`, `partitions`, `nats_server`: what is particular to each fault
//!   family;
//! - `recovery`: measuring the time to recover (`Measure`, `TargetDone`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use proto::v1::{
    HealNetwork, NetworkFaultPhase, NetworkFaultReport, Signal, SignalProcess, Spawn,
    coordinator_message, spawn,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{ActiveRun, Engine, Phase};
use crate::placement::Placement;
use nats_server::restart_nats_server;
use network::nats_endpoints;
use plan::{Action, NoDraw, Plan, PlanInput, Skip};
use recovery::Measure;
use sim_core::chaos::{ChaosPlan, ChaosPlanState, FaultOutcome, FaultRecord, RESPAWN_AFTER};
use sim_core::config::{ChaosEvent, Config};
use sim_core::events::{EventKind, RunEvent};
use sim_core::verdict::Failure;

mod nats_server;
mod network;
mod partitions;
mod plan;
#[cfg(test)]
mod plan_tests;
mod process;
mod recovery;

/// Chaos and healing state of one run. Every time in it is run time (since the run
/// started, on the run's clock), so the whole state goes into a checkpoint as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FaultState {
    /// Rebuilt from the config and seed on resume (see [`ChaosPlanState`]).
    #[serde(skip)]
    plan: Option<ChaosPlan>,
    plan_state: Option<ChaosPlanState>,
    /// Processes whose next exit the chaos caused.
    pub(super) expect_exit: HashSet<String>,
    retired: HashSet<String>,
    paused: BTreeMap<String, Duration>,
    respawn: BTreeMap<String, Duration>,
    slots: BTreeMap<String, (String, Spawn)>,
    agents: Vec<String>,
    next_worker: usize,
    /// What was injected.
    pub(super) records: Vec<FaultRecord>,
    measuring: Option<Measure>,
    /// `host:port` of every NATS server, for network faults.
    nats_endpoints: Vec<String>,
    /// Hosts (agents) under a network fault.
    host_faults: BTreeMap<String, HostFault>,
    /// The id the next added partition gets.
    next_partition: u32,
    /// The tracker's duplicate count when the last fault was injected.
    duplicates_at_last: Option<u64>,
    /// Restarted workers awaiting their next incarnation: process → (record, stable id,
    /// incarnation before the restart).
    restarts: BTreeMap<String, (usize, String, u64)>,
    /// Managed NATS servers killed by `nats_server_kill`, by index.
    #[serde(default)]
    nats_down: BTreeMap<usize, NatsDown>,
}

/// A NATS server killed by the chaos.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct NatsDown {
    /// When it is started again; `None` once that was asked for.
    restart_at: Option<Duration>,
    /// Until then, any process's exit is excused (every client of the killed server
    /// reconnects elsewhere, and a worker may lose its leases meanwhile); `None` while down.
    excused_until: Option<Duration>,
}

/// How long a `nats_server_kill` keeps its server down by default: past parti's heartbeat
/// lease (6 s), so clients of that server must fail over in time or be fenced.
pub(super) const NATS_KILL_FOR: Duration = Duration::from_secs(10);
/// After a killed server was asked to restart, exits stay excused this long (its start-up,
/// up to the cluster's ready timeout, plus the usual grace).
const NATS_RESTART_GRACE: Duration = Duration::from_secs(50);

/// How long after a network fault healed the exits of that host's processes still count as
/// caused by it (a fenced worker notices, reports and exits within seconds).
pub(super) const HOST_FAULT_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct HostFault {
    /// Index into `records` (also the fault id sent to the agent).
    record: usize,
    /// Exits on this host are expected until then; `None` while the fault is in place.
    excused_until: Option<Duration>,
}

/// What `simctl chaos` may specify about one injection.
#[derive(Debug, Clone, Default)]
pub struct InjectOptions {
    /// Process slot or agent id; `None`: random.
    pub target: Option<String>,
    /// Fault duration; `None`: the default.
    pub duration: Option<Duration>,
}

impl FaultState {
    pub(super) fn new(config: &Config, seed: u64, placement: &Placement, nats_url: &str) -> Self {
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
            plan_state: None,
            expect_exit: HashSet::new(),
            retired: HashSet::new(),
            paused: BTreeMap::new(),
            respawn: BTreeMap::new(),
            slots,
            agents,
            next_worker: placement.workers.len(),
            records: Vec::new(),
            measuring: None,
            nats_endpoints: nats_endpoints(nats_url),
            host_faults: BTreeMap::new(),
            next_partition: config.partitions.count,
            duplicates_at_last: None,
            restarts: BTreeMap::new(),
            nats_down: BTreeMap::new(),
        }
    }

    /// Ready for a checkpoint: the plan's position is copied into the serialized state.
    pub(super) fn prepare_checkpoint(&mut self) {
        self.plan_state = self.plan.as_ref().map(ChaosPlan::state);
    }

    /// After loading from a checkpoint: rebuild the plan from `config` and `seed`.
    pub(super) fn restore_plan(&mut self, config: &Config, seed: u64) -> Result<(), String> {
        self.plan = match &self.plan_state {
            Some(state) => ChaosPlan::restore(&config.chaos, seed, state)?,
            None => None,
        };
        Ok(())
    }

    /// A resumed run's coordinator was away for `downtime`: a recovery measured across it
    /// gets its deadline moved by as much (nothing could be observed meanwhile).
    pub(super) fn shift_deadlines(&mut self, downtime: Duration) {
        if let Some(measure) = &mut self.measuring {
            measure.deadline += downtime;
        }
    }

    /// The previous fault's duplicates end here (`duplicates`: the tracker's count now).
    pub(super) fn close_duplicates(&mut self, duplicates: u64) {
        if let (Some(start), Some(last)) = (self.duplicates_at_last, self.records.last_mut()) {
            last.duplicates = Some(duplicates.saturating_sub(start));
        }
    }

    /// A restarted worker's slot reports again: its new incarnation must hold the same stable
    /// id (the agent hands it the slot's identity token, parti gives the id back at once).
    pub(super) fn check_restarted_identity(
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
    pub(super) fn host_faulted(&self, process: &str, now: Duration) -> bool {
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
    pub(super) fn cancel_producer_respawns(&mut self) {
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
    pub(super) fn on_exit(&mut self, process: &str, running: bool, now: Duration) {
        self.paused.remove(process);
        if running && !self.retired.contains(process) && self.slots.contains_key(process) {
            self.respawn
                .insert(process.to_string(), now + RESPAWN_AFTER);
        }
    }
}

impl Engine {
    /// Heal, inject, and measure; called on every engine tick.
    pub(super) async fn fault_tick(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let now = run.clock.now();
        if run.phase == Phase::Finished {
            return;
        }
        let due: Vec<String> = run
            .faults
            .respawn
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for process in due {
            run.faults.respawn.remove(&process);
            if let Some((agent, spawn)) = run.faults.slots.get(&process).cloned() {
                if self
                    .registry
                    .send(&agent, coordinator_message::Body::Spawn(spawn))
                    .await
                {
                    run.events.push(RunEvent::new(
                        EventKind::Process,
                        format!("{process} respawned"),
                    ));
                } else {
                    warn!(run = %run.id, %process, %agent, "not respawned: agent went away");
                    run.events.push(RunEvent::new(
                        EventKind::Unexpected,
                        format!("{process} not respawned: agent {agent} went away"),
                    ));
                }
            }
        }
        let resume: Vec<String> = run
            .faults
            .paused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for process in resume {
            run.faults.paused.remove(&process);
            Self::signal(&self.registry, run, &process, Signal::Cont).await;
        }
        let due: Vec<usize> = run
            .faults
            .nats_down
            .iter()
            .filter(|(_, down)| down.restart_at.is_some_and(|at| at <= now))
            .map(|(index, _)| *index)
            .collect();
        for index in due {
            restart_nats_server(run, index, now);
        }
        run.faults
            .nats_down
            .retain(|_, down| down.excused_until.is_none_or(|until| now <= until));
        run.faults
            .host_faults
            .retain(|_, fault| fault.excused_until.is_none_or(|until| now <= until));
        recovery::check(run, now);
        if run.phase != Phase::Running || run.faults.measuring.is_some() {
            // One fault at a time: the next waits until the previous one has healed, so each
            // rebalance time belongs to one fault.
            return;
        }
        let elapsed = now;
        let chaos = &run.config.chaos;
        if elapsed < chaos.warmup || elapsed + chaos.cooldown >= run.duration {
            // Warm-up and cool-down are fault-free.
            return;
        }
        let Some(event) = run.faults.plan.as_mut().and_then(|plan| plan.due(now)) else {
            return;
        };
        self.inject(event, now, InjectOptions::default()).await;
    }

    /// An agent reports what became of a network fault.
    pub(super) fn on_network_report(&mut self, agent: &str, report: &NetworkFaultReport) {
        let Some(run) = self.run.as_mut() else { return };
        let now = run.clock.now();
        let Ok(index) = usize::try_from(report.id) else {
            return;
        };
        let Some(record) = run.faults.records.get_mut(index) else {
            return;
        };
        let phase = NetworkFaultPhase::try_from(report.phase).unwrap_or_default();
        run.events.push(RunEvent::new(
            EventKind::Fault,
            format!(
                "network fault {} on {agent}: {}: {}",
                record.event,
                phase.as_str_name(),
                report.detail
            ),
        ));
        let measuring_this = run.faults.measuring.clone().filter(|m| m.index == index);
        match phase {
            NetworkFaultPhase::Applied => record.detail.clone_from(&report.detail),
            NetworkFaultPhase::Failed => {
                record.outcome = FaultOutcome::Failed(report.detail.clone());
                run.faults.host_faults.remove(agent);
                if measuring_this.is_some() {
                    run.faults.measuring = None;
                }
            }
            NetworkFaultPhase::Healed => {
                if let Some(fault) = run.faults.host_faults.get_mut(agent)
                    && fault.record == index
                {
                    fault.excused_until = Some(now + HOST_FAULT_GRACE);
                }
                if let Some(mut measure) = measuring_this
                    && measure.awaiting_heal
                {
                    measure.awaiting_heal = false;
                    measure.since = now;
                    measure.deadline = now + run.config.coordinator.rebalance_timeout;
                    measure.received_at_since = run.tracker.progress_marker().0;
                    run.faults.measuring = Some(measure);
                }
            }
            NetworkFaultPhase::Unspecified => {}
        }
    }

    async fn signal(
        registry: &crate::agents::AgentRegistry,
        run: &ActiveRun,
        process: &str,
        signal: Signal,
    ) -> bool {
        let Some((agent, _)) = run.faults.slots.get(process) else {
            return false;
        };
        let command = SignalProcess {
            process: process.to_string(),
            signal: signal as i32,
        };
        registry
            .send(agent, coordinator_message::Body::Signal(command))
            .await
    }

    /// Inject `event` now; returns the target and the outcome.
    ///
    /// Written ahead: the fault is recorded (with its expectations: exits, pauses, the
    /// recovery to measure) and checkpointed before the command goes out, so a coordinator
    /// killed right after sending it resumes knowing what it did.
    pub(super) async fn inject(
        &mut self,
        event: ChaosEvent,
        now: Duration,
        options: InjectOptions,
    ) -> (String, FaultOutcome) {
        let no_run = || {
            (
                String::new(),
                FaultOutcome::Skipped(Skip::NoRun.to_string()),
            )
        };
        let Some(run) = self.run.as_mut() else {
            return no_run();
        };
        let duplicates = run.tracker.snapshot(super::now_us()).duplicates();
        run.faults.close_duplicates(duplicates);
        run.faults.duplicates_at_last = Some(duplicates);
        let index = run.faults.records.len();
        let planned = plan_fault(run, event, now, &options).and_then(|mut plan| {
            plan::apply(
                &mut plan,
                &mut run.faults,
                &mut run.tracker,
                &mut run.partition_map,
            )?;
            Ok(plan)
        });
        let (planned, outcome) = match planned {
            Ok(planned) => {
                if let Some(awaiting_heal) = planned.measure {
                    let timeout = run.config.coordinator.rebalance_timeout;
                    run.faults.measuring = Some(Measure {
                        index,
                        since: now,
                        deadline: now + planned.lasts + timeout,
                        awaiting_heal,
                        received_at_since: run.tracker.progress_marker().0,
                        moves_at_start: run.assignment_log.moves,
                        target_done: planned.target_done.clone(),
                    });
                }
                (Some(planned), FaultOutcome::Injected)
            }
            Err(skip) => (None, FaultOutcome::Skipped(skip.to_string())),
        };
        run.faults.records.push(FaultRecord {
            at_s: now.as_secs_f64(),
            event,
            target: planned
                .as_ref()
                .map(|p| p.target.clone())
                .unwrap_or_default(),
            outcome,
            detail: planned
                .as_ref()
                .map(|p| p.detail.clone())
                .unwrap_or_default(),
            rebalance_s: None,
            moved: None,
            ideal_moves: planned.as_ref().and_then(|p| p.ideal_moves),
            duplicates: None,
        });
        if let Some(planned) = planned {
            self.write_checkpoint("fault").await;
            let Some(run) = self.run.as_mut() else {
                return no_run();
            };
            let killed_nats = match planned.action {
                Action::KillNatsServer(index) => Some(index),
                _ => None,
            };
            let sent = match planned.action {
                Action::Signal(signal) => {
                    Self::signal(&self.registry, run, &planned.target, signal).await
                }
                Action::Send(agent, body) => self.registry.send(&agent, *body).await,
                Action::KillNatsServer(index) => nats_server::kill(run, index).await,
                Action::PublishMap => partitions::publish(run).await,
            };
            if !sent {
                if let Some(index) = killed_nats {
                    run.faults.nats_down.remove(&index);
                }
                run.faults.expect_exit.remove(&planned.target);
                run.faults.host_faults.remove(&planned.target);
                run.faults.paused.remove(&planned.target);
                if run
                    .faults
                    .measuring
                    .as_ref()
                    .is_some_and(|m| m.index == index)
                {
                    run.faults.measuring = None;
                }
                run.faults.records[index].outcome =
                    FaultOutcome::Skipped(Skip::AgentGone.to_string());
            }
        }
        let Some(run) = self.run.as_mut() else {
            return no_run();
        };
        let record = &run.faults.records[index];
        let (target, outcome, detail) = (
            record.target.clone(),
            record.outcome.clone(),
            record.detail.clone(),
        );
        if outcome.is_injected() {
            info!(run = %run.id, event = event.as_str(), %target, %detail, "fault injected");
        } else {
            warn!(run = %run.id, event = event.as_str(), %outcome, "fault not injected");
        }
        run.events.push(RunEvent::new(
            EventKind::Fault,
            format!(
                "chaos {:.0}s: {} {target}: {outcome}{}",
                now.as_secs_f64(),
                event.as_str(),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
        ));
        (target, outcome)
    }

    /// Heal everything (the drain runs with every fault healed): resume paused processes,
    /// lift network faults.
    pub(super) async fn heal_all(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let paused: Vec<String> = std::mem::take(&mut run.faults.paused).into_keys().collect();
        for process in paused {
            Self::signal(&self.registry, run, &process, Signal::Cont).await;
        }
        let hosts: Vec<String> = run
            .faults
            .host_faults
            .iter()
            .filter(|(_, fault)| fault.excused_until.is_none())
            .map(|(agent, _)| agent.clone())
            .collect();
        for agent in hosts {
            self.registry
                .send(
                    &agent,
                    coordinator_message::Body::HealNetwork(HealNetwork {}),
                )
                .await;
        }
        let now = run.clock.now();
        let down: Vec<usize> = run
            .faults
            .nats_down
            .iter()
            .filter(|(_, down)| down.restart_at.is_some())
            .map(|(index, _)| *index)
            .collect();
        for index in down {
            restart_nats_server(run, index, now);
        }
        if run.faults.measuring.take().is_some() {
            warn!(run = %run.id, "run ended while a recovery was still being measured");
        }
    }
}

/// Plan `event` on `run` (see [`plan::plan`]), drawing from the run's seeded schedule.
fn plan_fault(
    run: &mut ActiveRun,
    event: ChaosEvent,
    now: Duration,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    // The schedule is the one part of the state the plan draws from (mutably): taken out
    // while the rest is lent read-only.
    let mut schedule = run.faults.plan.take();
    let input = PlanInput {
        workers: &run.workers,
        producers_alive: &run.producers_alive,
        placement: &run.placement,
        partition_map: &run.partition_map,
        faults: &run.faults,
        nats_servers: run
            .nats_cluster
            .as_ref()
            .map(|cluster| (0..cluster.size()).map(|i| cluster.is_running(i)).collect()),
        now,
    };
    let planned = match schedule.as_mut() {
        Some(schedule) => plan::plan(&input, schedule, event, options),
        None => plan::plan(&input, &mut NoDraw, event, options),
    };
    run.faults.plan = schedule;
    planned
}
