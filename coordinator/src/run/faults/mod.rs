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
//! - this module: the engine's orchestration (`fault_tick`, `inject`, `heal_all`,
//!   `on_network_report`);
//! - `state`: [`FaultState`], the run's chaos bookkeeping;
//! - `plan`: the pure planner (`PlanInput` → `Plan` or `Skip`) and `apply`;
//! - `process`, `network`, `partitions`, `nats_server`: what is particular to each fault
//!   family;
//! - `recovery`: measuring the time to recover (`Measure`, `TargetDone`).

use std::time::Duration;

use proto::v1::{
    HealNetwork, NetworkFaultPhase, NetworkFaultReport, Signal, SignalProcess, SignalResult,
    coordinator_message,
};
use tracing::{info, warn};

use super::{ActiveRun, Engine, Phase};
use nats_server::restart_nats_server;
use plan::{Action, NoDraw, Plan, PlanInput, Skip};
use recovery::Measure;
use sim_core::chaos::{FaultOutcome, FaultRecord};
use sim_core::config::ChaosEvent;
use sim_core::events::{EventKind, RunEvent};
use sim_core::verdict::Failure;

mod agent;
mod catch_up;
mod nats_server;
mod network;
mod partitions;
mod plan;
#[cfg(test)]
mod plan_tests;
mod process;
mod recovery;
mod state;

pub(super) use catch_up::check as check_catch_up;
pub(super) use recovery::unsettled_partitions;
pub(super) use state::FaultState;
pub(super) use state::{AGENT_RETURN_TIMEOUT, HostCrash};
use state::{HOST_FAULT_GRACE, HostFault, NATS_KILL_FOR, NATS_RESTART_GRACE, NatsDown};

/// What `simctl chaos` may specify about one injection.
#[derive(Debug, Clone, Default)]
pub struct InjectOptions {
    /// Process slot or agent id; `None`: random.
    pub target: Option<String>,
    /// Fault duration; `None`: the default.
    pub duration: Option<Duration>,
}

impl Engine {
    /// Heal, inject, and measure; called on every engine tick.
    pub(super) async fn fault_tick(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let now = run.clock.now();
        if run.state.phase == Phase::Finished {
            return;
        }
        let due: Vec<String> = run
            .state
            .faults
            .respawn
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for process in due {
            run.state.faults.respawn.remove(&process);
            if let Some((agent, spawn)) = run.state.faults.slots.get(&process).cloned() {
                if self
                    .registry
                    .send(&agent, super::spawn_for(&run.state.id, spawn))
                    .await
                {
                    run.state.events.push(RunEvent::new(
                        EventKind::Process,
                        format!("{process} respawned"),
                    ));
                } else {
                    warn!(run = %run.state.id, %process, %agent, "not respawned: agent went away");
                    run.state.events.push(RunEvent::new(
                        EventKind::Unexpected,
                        format!("{process} not respawned: agent {agent} went away"),
                    ));
                }
            }
        }
        let resume: Vec<String> = run
            .state
            .faults
            .paused
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for process in resume {
            run.state.faults.paused.remove(&process);
            Self::signal(&self.registry, run, &process, Signal::Cont, None).await;
        }
        let due: Vec<usize> = run
            .state
            .faults
            .nats_down
            .iter()
            .filter(|(_, down)| down.restart_at.is_some_and(|at| at <= now))
            .map(|(index, _)| *index)
            .collect();
        for index in due {
            restart_nats_server(run, index, now);
        }
        run.state
            .faults
            .nats_down
            .retain(|_, down| down.excused_until.is_none_or(|until| now <= until));
        run.state
            .faults
            .host_faults
            .retain(|_, fault| fault.excused_until.is_none_or(|until| now <= until));
        recovery::check(run, now);
        catch_up::check(run, now, false);
        if run.state.phase != Phase::Running
            || run.state.faults.measuring.is_some()
            || run.state.faults.catching_up.is_some()
        {
            // One fault at a time: the next waits until the previous one has healed and
            // caught up, so each rebalance and catch-up time belongs to one fault.
            return;
        }
        let elapsed = now;
        let chaos = &run.state.config.chaos;
        if elapsed < chaos.warmup || elapsed + chaos.cooldown >= run.state.duration() {
            // Warm-up and cool-down are fault-free.
            return;
        }
        let Some(event) = run
            .state
            .faults
            .plan
            .as_mut()
            .and_then(|plan| plan.due(now))
        else {
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
        let Some(record) = run.state.faults.records.get_mut(index) else {
            return;
        };
        let phase = NetworkFaultPhase::try_from(report.phase).unwrap_or_default();
        run.state.events.push(RunEvent::new(
            EventKind::Fault,
            format!(
                "network fault {} on {agent}: {}: {}",
                record.event,
                phase.as_str_name(),
                report.detail
            ),
        ));
        let measuring_this = run
            .state
            .faults
            .measuring
            .clone()
            .filter(|m| m.index == index);
        match phase {
            NetworkFaultPhase::Applied => record.detail.clone_from(&report.detail),
            NetworkFaultPhase::Failed => {
                record.outcome = FaultOutcome::Failed(report.detail.clone());
                run.state.faults.host_faults.remove(agent);
                if measuring_this.is_some() {
                    run.state.faults.measuring = None;
                }
            }
            NetworkFaultPhase::Healed => host_healed(run, agent, index, now),
            NetworkFaultPhase::Unspecified => {}
        }
    }

    /// An agent says whether a fault's signal reached a live process. Not delivered (the
    /// process had exited, or was not the agent's): the fault did nothing, so it is skipped
    /// with the reason and its expectations are withdrawn — an exit it would have excused
    /// is judged as what it is.
    pub(super) fn on_signal_result(&mut self, agent: &str, result: &SignalResult) {
        let Some(run) = self.run.as_mut() else { return };
        let Some(index) = usize::try_from(result.fault)
            .ok()
            .and_then(|fault| fault.checked_sub(1))
        else {
            return;
        };
        let Some(record) = run.state.faults.records.get_mut(index) else {
            return;
        };
        if record.target != result.process {
            return;
        }
        let excused = run.state.faults.excused_exits.remove(&result.process);
        if result.delivered {
            return;
        }
        let why = Skip::NotDelivered {
            agent: agent.to_string(),
            detail: result.detail.clone(),
        };
        warn!(run = %run.state.id, event = record.event.as_str(), target = %record.target, %why, "fault not injected after all");
        run.state.events.push(RunEvent::new(
            EventKind::Fault,
            format!("{} on {}: skipped: {why}", record.event, record.target),
        ));
        record.outcome = FaultOutcome::Skipped(why.to_string());
        let target = record.target.clone();
        run.state.faults.withdraw(index, &target);
        // Its exit, already applied, was excused by this fault: it was not the fault's doing.
        if let Some((status, log_tail)) = excused {
            run.state.failures.push(Failure::UnexpectedExit {
                process: target,
                status,
                log_tail,
            });
        }
    }

    /// Send `signal` to `process` through its agent; `fault`: the index of the fault it
    /// carries out, which the agent confirms (`on_signal_result`).
    async fn signal(
        registry: &crate::agents::AgentRegistry,
        run: &ActiveRun,
        process: &str,
        signal: Signal,
        fault: Option<usize>,
    ) -> bool {
        let Some((agent, _)) = run.state.faults.slots.get(process) else {
            return false;
        };
        let command = SignalProcess {
            process: process.to_string(),
            signal: signal as i32,
            fault: fault.map_or(0, |index| index as u64 + 1),
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
        run.state.faults.close_duplicates(duplicates);
        run.state.faults.duplicates_at_last = Some(duplicates);
        let index = run.state.faults.records.len();
        let mut planned = plan_fault(run, event, now, &options);
        if let Ok(plan) = planned.as_mut() {
            partitions::ack_floor(plan, run).await;
        }
        let planned = planned.and_then(|mut plan| {
            plan::apply(
                &mut plan,
                &mut run.state.faults,
                &mut run.tracker,
                &mut run.state.partition_map,
            )?;
            Ok(plan)
        });
        let (planned, outcome) = match planned {
            Ok(planned) => {
                if let Some(awaiting_heal) = planned.measure {
                    let timeout = run.state.config.coordinator.rebalance_timeout;
                    run.state.faults.measuring = Some(Measure {
                        index,
                        since: now,
                        deadline: now + planned.lasts + timeout,
                        awaiting_heal,
                        received_at_since: run.tracker.progress_marker().0,
                        moves_at_start: run.state.assignment_log.moves,
                        target_done: planned.target_done.clone(),
                        owners_at_start: catch_up::owners(run),
                    });
                }
                if event == ChaosEvent::AgentCrash
                    && let Some(fault) = run.state.faults.host_faults.get_mut(&planned.target)
                {
                    // Over when another process of the agent says hello.
                    fault.crash =
                        self.registry
                            .boots()
                            .get(&planned.target)
                            .map(|boot| HostCrash {
                                boot: *boot,
                                return_by: now + AGENT_RETURN_TIMEOUT,
                            });
                }
                run.state.faults.settled(now + planned.lasts);
                (Some(planned), FaultOutcome::Injected)
            }
            Err(skip) => (None, FaultOutcome::Skipped(skip.to_string())),
        };
        if outcome.is_injected() {
            *run.state.faults.injected_by_type.entry(event).or_default() += 1;
        }
        run.state.faults.records.push(FaultRecord {
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
            recovery_from_s: None,
            catch_up_s: None,
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
                    let fault = Some(index);
                    Self::signal(&self.registry, run, &planned.target, signal, fault).await
                }
                Action::Send(agent, body) => {
                    let body = match *body {
                        coordinator_message::Body::Spawn(spawn) => {
                            super::spawn_for(&run.state.id, spawn)
                        }
                        other => other,
                    };
                    self.registry.send(&agent, body).await
                }
                Action::KillNatsServer(index) => nats_server::kill(run, index).await,
                Action::PublishMap => partitions::publish(run).await,
            };
            if !sent {
                if let Some(index) = killed_nats {
                    run.state.faults.nats_down.remove(&index);
                }
                run.state.faults.withdraw(index, &planned.target);
                run.state.faults.records[index].outcome =
                    FaultOutcome::Skipped(Skip::AgentGone.to_string());
            }
        }
        let Some(run) = self.run.as_mut() else {
            return no_run();
        };
        let record = &run.state.faults.records[index];
        let (target, outcome, detail) = (
            record.target.clone(),
            record.outcome.clone(),
            record.detail.clone(),
        );
        if outcome.is_injected() {
            info!(run = %run.state.id, event = event.as_str(), %target, %detail, "fault injected");
        } else {
            warn!(run = %run.state.id, event = event.as_str(), %outcome, "fault not injected");
        }
        run.state.events.push(RunEvent::new(
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
        let paused: Vec<String> = std::mem::take(&mut run.state.faults.paused)
            .into_keys()
            .collect();
        for process in paused {
            Self::signal(&self.registry, run, &process, Signal::Cont, None).await;
        }
        let hosts: Vec<String> = run
            .state
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
            .state
            .faults
            .nats_down
            .iter()
            .filter(|(_, down)| down.restart_at.is_some())
            .map(|(index, _)| *index)
            .collect();
        for index in down {
            restart_nats_server(run, index, now);
        }
        // The duration waits for a recovery in progress (`tick`); only a stop by request
        // gets here with one, and leaves it unjudged: a failure, not a log line.
        if let Some(measure) = run.state.faults.measuring.take()
            && let Some(record) = run.state.faults.records.get(measure.index)
        {
            let failure = Failure::RecoveryUnfinished {
                event: record.event,
                target: record.target.clone(),
                at_s: record.at_s,
                drain_at_s: now.as_secs_f64(),
            };
            warn!(run = %run.state.id, "{failure}");
            run.state.failures.push(failure);
        }
    }
}

/// The host fault `index` on `agent` is over (its network healed, its agent is back): its
/// exits stay excused for a grace, and the recovery is measured from now.
pub(super) fn host_healed(run: &mut ActiveRun, agent: &str, index: usize, now: Duration) {
    if let Some(fault) = run.state.faults.host_faults.get_mut(agent)
        && fault.record == index
    {
        fault.excused_until = Some(now + HOST_FAULT_GRACE);
    }
    if let Some(mut measure) = run
        .state
        .faults
        .measuring
        .clone()
        .filter(|m| m.index == index && m.awaiting_heal)
    {
        measure.awaiting_heal = false;
        measure.since = now;
        measure.deadline = now + run.state.config.coordinator.rebalance_timeout;
        measure.received_at_since = run.tracker.progress_marker().0;
        run.state.faults.measuring = Some(measure);
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
    let mut schedule = run.state.faults.plan.take();
    let input = PlanInput {
        workers: &run.state.workers,
        producers_alive: &run.state.producers_alive,
        placement: &run.state.placement,
        partition_map: &run.state.partition_map,
        faults: &run.state.faults,
        nats_servers: run
            .io
            .nats_cluster
            .as_ref()
            .map(|cluster| (0..cluster.size()).map(|i| cluster.is_running(i)).collect()),
        now,
    };
    let planned = match schedule.as_mut() {
        Some(schedule) => plan::plan(&input, schedule, event, options),
        None => plan::plan(&input, &mut NoDraw, event, options),
    };
    run.state.faults.plan = schedule;
    planned
}
