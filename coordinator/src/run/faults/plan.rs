//! Planning an injection: choosing a target and what to do to it.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::v1::{NetworkFault, NetworkFaultKind, Signal, Spawn, coordinator_message, spawn};
use sim_core::chaos::{
    ChaosPlan, DEGRADE_DELAY_MS, DEGRADE_FOR, DEGRADE_LOSS, DEGRADE_RATE_KBIT, PAUSE_FOR,
};
use sim_core::config::ChaosEvent;

use super::super::ActiveRun;
use super::nats_server::kill_nats_server;
use super::partitions::change_partitions;
use super::recovery::TargetDone;
use super::{HostFault, InjectOptions};

/// What an injection will do.
pub(super) struct Planned {
    pub(super) target: String,
    pub(super) action: Action,
    pub(super) detail: String,
    /// Measure recovery: `Some(awaiting_heal)`; `None`: nothing to measure.
    pub(super) measure: Option<bool>,
    /// How long the fault itself lasts (the deadline starts after it).
    pub(super) lasts: Duration,
    /// See [`FaultRecord::ideal_moves`].
    pub(super) ideal_moves: Option<u64>,
    /// See [`TargetDone`].
    pub(super) target_done: TargetDone,
}

#[derive(Debug)]
pub(super) enum Action {
    /// Signal the target process.
    Signal(Signal),
    /// SIGKILL this managed NATS server.
    KillNatsServer(usize),
    /// Send this to an agent.
    Send(String, Box<coordinator_message::Body>),
    /// Publish the run's partition map (already updated in the run).
    PublishMap,
}

/// Choose a target and decide what to do; records the expectations (exits, pauses,
/// retirements, host faults) the injection creates. `Err`: why the fault is skipped.
pub(super) fn plan_fault(
    run: &mut ActiveRun,
    event: ChaosEvent,
    now: Duration,
    options: &InjectOptions,
) -> Result<Planned, String> {
    let live: Vec<String> = run
        .workers
        .iter()
        .filter(|(process, view)| {
            view.alive
                && !run.faults.paused.contains_key(*process)
                && !run.faults.expect_exit.contains(*process)
        })
        .map(|(process, _)| process.clone())
        .collect();
    let index = run.faults.records.len();
    let held: BTreeMap<String, u64> = run
        .workers
        .iter()
        .map(|(process, view)| (process.clone(), view.partitions.len() as u64))
        .collect();
    let process_fault = |target: String, signal: Signal, measure: Option<bool>| Planned {
        ideal_moves: measure.and_then(|_| held.get(&target).copied()),
        target_done: TargetDone::Nothing,
        target,
        action: Action::Signal(signal),
        detail: String::new(),
        measure,
        lasts: Duration::ZERO,
    };
    match event {
        ChaosEvent::WorkerCrash
        | ChaosEvent::WorkerRestart
        | ChaosEvent::ScaleDown
        | ChaosEvent::WorkerPause => {
            if live.len() < 2 {
                return Err("fewer than two live workers".into());
            }
            let target = choose(run, &live, options)?;
            let signal = match event {
                ChaosEvent::WorkerCrash => Signal::Kill,
                ChaosEvent::WorkerPause => Signal::Stop,
                _ => Signal::Term,
            };
            let mut planned = process_fault(target.clone(), signal, Some(false));
            if event == ChaosEvent::ScaleDown {
                run.faults.retired.insert(target.clone());
                planned.target_done = TargetDone::Exited(target.clone());
            }
            if event == ChaosEvent::WorkerRestart
                && let Some(view) = run.workers.get(&target)
            {
                run.faults.restarts.insert(
                    target.clone(),
                    (index, view.worker_id.clone(), view.incarnation),
                );
                planned.target_done = TargetDone::Reincarnated(target.clone(), view.incarnation);
            }
            if event == ChaosEvent::WorkerPause {
                let pause = options.duration.unwrap_or(PAUSE_FOR);
                run.faults.paused.insert(target.clone(), now + pause);
                planned.detail = format!("SIGSTOP for {pause:?}");
                planned.lasts = pause;
            }
            run.faults.expect_exit.insert(target);
            Ok(planned)
        }
        ChaosEvent::LeaderFailure | ChaosEvent::LeaderPause => {
            let leader: Vec<String> = run
                .workers
                .iter()
                .filter(|(p, v)| v.leader && live.contains(p))
                .map(|(p, _)| p.clone())
                .collect();
            if live.len() < 2 || leader.is_empty() {
                return Err("no leader among two or more live workers".into());
            }
            let target = choose(run, &leader, options)?;
            let mut planned = if event == ChaosEvent::LeaderFailure {
                process_fault(target.clone(), Signal::Kill, Some(false))
            } else {
                let pause = options.duration.unwrap_or(PAUSE_FOR);
                run.faults.paused.insert(target.clone(), now + pause);
                let mut planned = process_fault(target.clone(), Signal::Stop, Some(false));
                planned.detail = format!("SIGSTOP for {pause:?}");
                planned.lasts = pause;
                planned
            };
            planned.detail = if planned.detail.is_empty() {
                "the leader".into()
            } else {
                format!("the leader, {}", planned.detail)
            };
            run.faults.expect_exit.insert(target);
            Ok(planned)
        }
        ChaosEvent::ProducerCrash => {
            let producers: Vec<String> = run
                .producers_alive
                .iter()
                .filter(|(_, alive)| **alive)
                .map(|(p, _)| p.clone())
                .collect();
            if producers.is_empty() {
                return Err("no live producer".into());
            }
            let target = choose(run, &producers, options)?;
            run.faults.expect_exit.insert(target.clone());
            Ok(process_fault(target, Signal::Kill, None))
        }
        ChaosEvent::ScaleUp => {
            let template = run
                .faults
                .slots
                .values()
                .find_map(|(_, spawn)| match &spawn.spec {
                    Some(spawn::Spec::Worker(spec)) => Some(spec.clone()),
                    _ => None,
                });
            let (Some(mut spec), false) = (template, run.faults.agents.is_empty()) else {
                return Err("no worker to copy".into());
            };
            let agent = match &options.target {
                Some(agent) if run.faults.agents.contains(agent) => agent.clone(),
                Some(other) => return Err(format!("no agent {other}")),
                None => run.faults.agents[run.faults.next_worker % run.faults.agents.len()].clone(),
            };
            let process = format!("worker-{}", run.faults.next_worker);
            run.faults.next_worker += 1;
            spec.identity_token = process.clone();
            let spawn = Spawn {
                process: process.clone(),
                spec: Some(spawn::Spec::Worker(spec)),
            };
            run.faults
                .slots
                .insert(process.clone(), (agent.clone(), spawn.clone()));
            let partitions = run.partition_map.partitions.len() as u64;
            Ok(Planned {
                ideal_moves: Some(partitions / (live.len() as u64 + 1)),
                target_done: TargetDone::Owning(process.clone()),
                target: process,
                detail: format!("on {agent}"),
                action: Action::Send(agent, Box::new(coordinator_message::Body::Spawn(spawn))),
                measure: Some(false),
                lasts: Duration::ZERO,
            })
        }
        ChaosEvent::NatsDisconnect | ChaosEvent::NetworkDegrade => {
            let free: Vec<String> = run
                .faults
                .agents
                .iter()
                .filter(|agent| !run.faults.host_faults.contains_key(*agent))
                .cloned()
                .collect();
            if free.is_empty() {
                return Err("every host is already impaired".into());
            }
            let target = choose(run, &free, options)?;
            let (kind, lasts, loss, rate, delay) = if event == ChaosEvent::NatsDisconnect {
                let lasts = options.duration.unwrap_or_else(|| {
                    run.faults
                        .plan
                        .as_mut()
                        .map_or(DISCONNECT_DEFAULT, ChaosPlan::disconnect_duration)
                });
                (NetworkFaultKind::Disconnect, lasts, 0.0, 0, 0)
            } else {
                (
                    NetworkFaultKind::Degrade,
                    options.duration.unwrap_or(DEGRADE_FOR),
                    DEGRADE_LOSS,
                    DEGRADE_RATE_KBIT,
                    DEGRADE_DELAY_MS,
                )
            };
            let fault = NetworkFault {
                id: index as u64,
                kind: kind as i32,
                nats_endpoints: run.faults.nats_endpoints.clone(),
                duration_ms: u64::try_from(lasts.as_millis()).unwrap_or(u64::MAX),
                loss_probability: loss,
                rate_kbit: rate,
                delay_ms: delay,
            };
            run.faults.host_faults.insert(
                target.clone(),
                HostFault {
                    record: index,
                    excused_until: None,
                },
            );
            Ok(Planned {
                ideal_moves: None,
                target_done: TargetDone::Nothing,
                detail: format!("for {lasts:?}"),
                action: Action::Send(
                    target.clone(),
                    Box::new(coordinator_message::Body::NetworkFault(fault)),
                ),
                target,
                measure: Some(true),
                lasts,
            })
        }
        ChaosEvent::PartitionChanges => change_partitions(run),
        ChaosEvent::NatsServerKill => kill_nats_server(run, now, options),
    }
}

/// A named target must be one of `from`; otherwise one is drawn from the seeded plan.
pub(super) fn choose(
    run: &mut ActiveRun,
    from: &[String],
    options: &InjectOptions,
) -> Result<String, String> {
    match &options.target {
        Some(target) if from.contains(target) => Ok(target.clone()),
        Some(target) => Err(format!(
            "target {target} is not one of [{}]",
            from.join(", ")
        )),
        None => {
            let index = run
                .faults
                .plan
                .as_mut()
                .map_or(0, |plan| plan.pick(from.len()));
            from.get(index)
                .cloned()
                .ok_or_else(|| "no candidate".to_string())
        }
    }
}

/// Disconnect length when no plan draws one (`simctl chaos` without `--duration` and
/// without a schedule).
const DISCONNECT_DEFAULT: Duration = Duration::from_secs(10);
