//! Faults on processes: worker and leader crashes, pauses and restarts, producer crashes,
//! scaling. Each is a signal to one live process, or a new slot started on an agent.

use std::time::Duration;

use proto::v1::{Signal, Spawn, coordinator_message, spawn};
use sim_core::chaos::PAUSE_FOR;
use sim_core::config::ChaosEvent;

use super::InjectOptions;
use super::plan::{Action, Draw, Effect, Plan, PlanInput, Skip, choose};
use super::recovery::TargetDone;

/// A signal to `target`, measured when `measure` is `Some` (ideal moves: what it holds).
fn signal(input: &PlanInput<'_>, target: String, signal: Signal, measure: Option<bool>) -> Plan {
    Plan {
        ideal_moves: measure.and_then(|_| {
            input
                .workers
                .get(&target)
                .map(|view| view.partitions.len() as u64)
        }),
        target_done: TargetDone::Nothing,
        effects: vec![Effect::ExpectExit(target.clone())],
        target,
        action: Action::Signal(signal),
        detail: String::new(),
        measure,
        lasts: Duration::ZERO,
    }
}

/// SIGSTOP `target` for the option's duration or [`PAUSE_FOR`].
fn pause(input: &PlanInput<'_>, target: String, options: &InjectOptions) -> Plan {
    let lasts = options.duration.unwrap_or(PAUSE_FOR);
    let mut plan = signal(input, target.clone(), Signal::Stop, Some(false));
    plan.effects.push(Effect::Pause(target, input.now + lasts));
    plan.detail = format!("SIGSTOP for {lasts:?}");
    plan.lasts = lasts;
    plan
}

/// `worker_crash` (SIGKILL), `worker_restart` and `scale_down` (SIGTERM), `worker_pause`
/// (SIGSTOP): one live worker, while another remains to take over.
pub(super) fn worker_fault(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    event: ChaosEvent,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    let live = input.live_workers();
    if live.len() < 2 {
        return Err(Skip::FewerThanTwoLive);
    }
    let target = choose(draw, &live, options)?;
    let mut plan = match event {
        ChaosEvent::WorkerCrash => signal(input, target.clone(), Signal::Kill, Some(false)),
        ChaosEvent::WorkerPause => pause(input, target.clone(), options),
        _ => signal(input, target.clone(), Signal::Term, Some(false)),
    };
    if event == ChaosEvent::ScaleDown {
        plan.effects.push(Effect::Retire(target.clone()));
        plan.target_done = TargetDone::Exited(target.clone());
    }
    if event == ChaosEvent::WorkerRestart
        && let Some(view) = input.workers.get(&target)
    {
        plan.effects.push(Effect::Restart {
            process: target.clone(),
            worker_id: view.worker_id.clone(),
            incarnation: view.incarnation,
        });
        plan.target_done = TargetDone::Reincarnated(target, view.incarnation);
    }
    Ok(plan)
}

/// `leader_failure` (SIGKILL) and `leader_pause` (SIGSTOP): the live leader, while another
/// worker remains to succeed it.
pub(super) fn leader_fault(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    event: ChaosEvent,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    let live = input.live_workers();
    let leader: Vec<String> = input
        .workers
        .iter()
        .filter(|(process, view)| view.leader && live.contains(process))
        .map(|(process, _)| process.clone())
        .collect();
    if live.len() < 2 || leader.is_empty() {
        return Err(Skip::NoLeader);
    }
    let target = choose(draw, &leader, options)?;
    let mut plan = if event == ChaosEvent::LeaderFailure {
        signal(input, target, Signal::Kill, Some(false))
    } else {
        pause(input, target, options)
    };
    plan.detail = if plan.detail.is_empty() {
        "the leader".into()
    } else {
        format!("the leader, {}", plan.detail)
    };
    Ok(plan)
}

/// `producer_crash`: SIGKILL a live producer (healed like any exit; nothing to measure).
pub(super) fn producer_crash(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    let producers: Vec<String> = input
        .producers_alive
        .iter()
        .filter(|(_, alive)| **alive)
        .map(|(process, _)| process.clone())
        .collect();
    if producers.is_empty() {
        return Err(Skip::NoLiveProducer);
    }
    let target = choose(draw, &producers, options)?;
    Ok(signal(input, target, Signal::Kill, None))
}

/// `scale_up`: a new worker slot (a copy of a worker's spec with its own identity token) on
/// the next agent in turn, or the one named.
pub(super) fn scale_up(input: &PlanInput<'_>, options: &InjectOptions) -> Result<Plan, Skip> {
    let faults = input.faults;
    let template = faults
        .slots
        .values()
        .find_map(|(_, spawn)| match &spawn.spec {
            Some(spawn::Spec::Worker(spec)) => Some(spec.clone()),
            _ => None,
        });
    let (Some(mut spec), false) = (template, faults.agents.is_empty()) else {
        return Err(Skip::NoWorkerToCopy);
    };
    let agent = match &options.target {
        Some(agent) if faults.agents.contains(agent) => agent.clone(),
        Some(other) => return Err(Skip::NoAgent(other.clone())),
        None => faults.agents[faults.next_worker % faults.agents.len()].clone(),
    };
    let process = format!("worker-{}", faults.next_worker);
    spec.identity_token = process.clone();
    let spawn = Spawn {
        process: process.clone(),
        spec: Some(spawn::Spec::Worker(spec)),
        // Stamped when sent.
        run_id: String::new(),
    };
    let partitions = input.partition_map.partitions.len() as u64;
    Ok(Plan {
        ideal_moves: Some(partitions / (input.live_workers().len() as u64 + 1)),
        target_done: TargetDone::Owning(process.clone()),
        target: process,
        detail: format!("on {agent}"),
        action: Action::Send(
            agent.clone(),
            Box::new(coordinator_message::Body::Spawn(spawn.clone())),
        ),
        effects: vec![Effect::AddSlot {
            agent,
            spawn: Box::new(spawn),
        }],
        measure: Some(false),
        lasts: Duration::ZERO,
    })
}
