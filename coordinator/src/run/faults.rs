//! Fault injection and self-healing inside the run engine.
//!
//! Every slot (producer or worker process) that exits during the run is started again after
//! `RESPAWN_AFTER` — with the same slot name, so a worker reclaims its stable id through its
//! identity token — unless a scale-down retired it. Exits the chaos caused are expected and
//! not reported as unexpected. After each fault that moves partitions, the time until every
//! partition is owned by exactly one live, unpaused worker is the rebalance time; over
//! `coordinator.rebalance_timeout` is a failure.

use std::collections::{BTreeMap, HashSet};

use proto::v1::{Signal, SignalProcess, Spawn, coordinator_message, spawn};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{ActiveRun, Engine, Phase};
use crate::chaos::{ChaosPlan, FaultRecord, PAUSE_FOR, RESPAWN_AFTER};
use crate::config::{ChaosEvent, Config};
use crate::placement::Placement;

/// Chaos and healing state of one run.
#[derive(Debug)]
pub(super) struct FaultState {
    plan: Option<ChaosPlan>,
    /// Processes whose next exit the chaos caused.
    pub(super) expect_exit: HashSet<String>,
    retired: HashSet<String>,
    paused: BTreeMap<String, Instant>,
    respawn: BTreeMap<String, Instant>,
    slots: BTreeMap<String, (String, Spawn)>,
    agents: Vec<String>,
    next_worker: usize,
    /// What was injected.
    pub(super) records: Vec<FaultRecord>,
    rebalancing: Option<(usize, Instant)>,
    started: Instant,
}

impl FaultState {
    pub(super) fn new(config: &Config, seed: u64, placement: &Placement, now: Instant) -> Self {
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
            plan: ChaosPlan::new(&config.chaos, seed, now),
            expect_exit: HashSet::new(),
            retired: HashSet::new(),
            paused: BTreeMap::new(),
            respawn: BTreeMap::new(),
            slots,
            agents,
            next_worker: placement.workers.len(),
            records: Vec::new(),
            rebalancing: None,
            started: now,
        }
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
    pub(super) fn on_exit(&mut self, process: &str, running: bool, now: Instant) {
        self.paused.remove(process);
        if running && !self.retired.contains(process) && self.slots.contains_key(process) {
            self.respawn
                .insert(process.to_string(), now + RESPAWN_AFTER);
        }
    }
}

/// Every partition owned by exactly one live, unpaused worker.
fn fully_owned(run: &ActiveRun) -> bool {
    let mut owners = vec![0u8; run.config.partitions.count as usize];
    for (process, view) in &run.workers {
        if !view.alive || run.faults.paused.contains_key(process) {
            continue;
        }
        for partition in &view.partitions {
            match owners.get_mut(*partition as usize) {
                Some(count) => *count = count.saturating_add(1),
                None => return false,
            }
        }
    }
    owners.iter().all(|count| *count == 1)
}

impl Engine {
    /// Heal, inject, and measure; called on every engine tick.
    pub(super) async fn fault_tick(&mut self) {
        let now = Instant::now();
        let Some(run) = self.run.as_mut() else { return };
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
                    run.events.push(format!("{process} respawned"));
                } else {
                    warn!(run = %run.id, %process, %agent, "not respawned: agent went away");
                    run.events.push(format!(
                        "UNEXPECTED: {process} not respawned: agent {agent} went away"
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
        if let Some((index, since)) = run.faults.rebalancing {
            if fully_owned(run) {
                let took = now.duration_since(since).as_secs_f64();
                run.faults.records[index].rebalance_s = Some(took);
                run.faults.rebalancing = None;
                info!(run = %run.id, event = %run.faults.records[index].event, took, "rebalanced");
            } else if now.duration_since(since) > run.config.coordinator.rebalance_timeout {
                let record = &run.faults.records[index];
                run.extra_failures.push(format!(
                    "rebalance: after {} on {} at {:.0}s, partitions were not all owned by live workers within {:?}",
                    record.event, record.target, record.at_s, run.config.coordinator.rebalance_timeout
                ));
                run.faults.rebalancing = None;
            }
        }
        if run.phase != Phase::Running || run.faults.rebalancing.is_some() {
            // One fault at a time: the next waits until the previous one has healed, so each
            // rebalance time belongs to one fault.
            return;
        }
        let Some(event) = run.faults.plan.as_mut().and_then(|plan| plan.due(now)) else {
            return;
        };
        self.inject(event, now).await;
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

    async fn inject(&mut self, event: ChaosEvent, now: Instant) {
        let Some(run) = self.run.as_mut() else { return };
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
        let leader = run
            .workers
            .iter()
            .find(|(p, v)| v.alive && v.leader && live.contains(p))
            .map(|(p, _)| p.clone());
        let pick = |run: &mut ActiveRun, from: &[String]| -> Option<String> {
            let plan = run.faults.plan.as_mut()?;
            from.get(plan.pick(from.len())).cloned()
        };
        let (target, outcome, moves) = match event {
            ChaosEvent::WorkerCrash
            | ChaosEvent::WorkerRestart
            | ChaosEvent::ScaleDown
            | ChaosEvent::WorkerPause
                if live.len() < 2 =>
            {
                (
                    String::new(),
                    "skipped: fewer than two live workers".to_string(),
                    false,
                )
            }
            ChaosEvent::WorkerCrash
            | ChaosEvent::WorkerRestart
            | ChaosEvent::ScaleDown
            | ChaosEvent::WorkerPause => {
                let target = pick(run, &live).unwrap_or_default();
                let signal = match event {
                    ChaosEvent::WorkerCrash => Signal::Kill,
                    ChaosEvent::WorkerPause => Signal::Stop,
                    _ => Signal::Term,
                };
                if event == ChaosEvent::ScaleDown {
                    run.faults.retired.insert(target.clone());
                }
                if event == ChaosEvent::WorkerPause {
                    run.faults.paused.insert(target.clone(), now + PAUSE_FOR);
                }
                run.faults.expect_exit.insert(target.clone());
                Self::signal(&self.registry, run, &target, signal).await;
                (target, "injected".to_string(), true)
            }
            ChaosEvent::LeaderFailure | ChaosEvent::LeaderPause => match leader {
                Some(target) if live.len() >= 2 => {
                    let signal = if event == ChaosEvent::LeaderFailure {
                        Signal::Kill
                    } else {
                        Signal::Stop
                    };
                    if event == ChaosEvent::LeaderPause {
                        run.faults.paused.insert(target.clone(), now + PAUSE_FOR);
                    }
                    run.faults.expect_exit.insert(target.clone());
                    Self::signal(&self.registry, run, &target, signal).await;
                    (target, "injected".to_string(), true)
                }
                _ => (
                    String::new(),
                    "skipped: no leader among two or more live workers".to_string(),
                    false,
                ),
            },
            ChaosEvent::ProducerCrash => {
                let producers: Vec<String> = run
                    .producers_alive
                    .iter()
                    .filter(|(_, alive)| **alive)
                    .map(|(p, _)| p.clone())
                    .collect();
                match pick(run, &producers) {
                    Some(target) => {
                        run.faults.expect_exit.insert(target.clone());
                        Self::signal(&self.registry, run, &target, Signal::Kill).await;
                        (target, "injected".to_string(), false)
                    }
                    None => (
                        String::new(),
                        "skipped: no live producer".to_string(),
                        false,
                    ),
                }
            }
            ChaosEvent::ScaleUp => {
                let template =
                    run.faults
                        .slots
                        .iter()
                        .find_map(|(_, (_, spawn))| match &spawn.spec {
                            Some(spawn::Spec::Worker(spec)) => Some(spec.clone()),
                            _ => None,
                        });
                match template {
                    Some(mut spec) if !run.faults.agents.is_empty() => {
                        let process = format!("worker-{}", run.faults.next_worker);
                        let agent = run.faults.agents
                            [run.faults.next_worker % run.faults.agents.len()]
                        .clone();
                        run.faults.next_worker += 1;
                        spec.identity_token = process.clone();
                        let spawn = Spawn {
                            process: process.clone(),
                            spec: Some(spawn::Spec::Worker(spec)),
                        };
                        run.faults
                            .slots
                            .insert(process.clone(), (agent.clone(), spawn.clone()));
                        self.registry
                            .send(&agent, coordinator_message::Body::Spawn(spawn))
                            .await;
                        (process, "injected".to_string(), true)
                    }
                    _ => (
                        String::new(),
                        "skipped: no worker to copy".to_string(),
                        false,
                    ),
                }
            }
            other => (
                String::new(),
                format!("skipped: {} is not implemented yet", other.as_str()),
                false,
            ),
        };
        let at_s = now.duration_since(run.faults.started).as_secs_f64();
        if outcome == "injected" {
            info!(run = %run.id, event = event.as_str(), %target, "fault injected");
        } else {
            warn!(run = %run.id, event = event.as_str(), %outcome, "fault not injected");
        }
        run.events.push(format!(
            "chaos {:.0}s: {} {target}: {outcome}",
            at_s,
            event.as_str()
        ));
        run.faults.records.push(FaultRecord {
            at_s,
            event: event.as_str().to_string(),
            target,
            outcome,
            rebalance_s: None,
        });
        if moves {
            run.faults.rebalancing = Some((run.faults.records.len() - 1, now));
        }
    }

    /// Resume everything paused (the drain runs with every fault healed).
    pub(super) async fn heal_all(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        let paused: Vec<String> = std::mem::take(&mut run.faults.paused).into_keys().collect();
        for process in paused {
            Self::signal(&self.registry, run, &process, Signal::Cont).await;
        }
        if run.faults.rebalancing.take().is_some() {
            warn!(run = %run.id, "run ended while a rebalance was still being measured");
        }
    }
}
