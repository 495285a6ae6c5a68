//! Planning an injection without touching anything: which target, which command, and what
//! the run must write down about it.
//!
//! [`plan`] reads a [`PlanInput`] (borrowed views of the run) and draws from the seeded
//! schedule ([`Draw`]); it returns a [`Plan`] or a typed [`Skip`]. Nothing changes until
//! [`apply`]. The engine then records and checkpoints the fault before it sends the command
//! (write-ahead), so the split keeps that order while making the choice testable without
//! NATS, agents or a clock.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::v1::{PartitionMap, Signal, Spawn, coordinator_message};
use sim_core::chaos::ChaosPlan;
use sim_core::config::ChaosEvent;
use sim_core::tracker::{InputError, Tracker};

use super::super::WorkerView;
use super::partitions::{self, PartitionChange};
use super::recovery::TargetDone;
use super::{FaultState, HostFault, InjectOptions, NatsDown, agent, nats_server, network, process};
use crate::placement::Placement;

/// Everything a plan reads, borrowed from the run.
pub(super) struct PlanInput<'a> {
    /// Workers as they last reported.
    pub(super) workers: &'a BTreeMap<String, WorkerView>,
    /// Producer processes and whether they run.
    pub(super) producers_alive: &'a BTreeMap<String, bool>,
    /// The run's processes (producer ids for partition changes).
    pub(super) placement: &'a Placement,
    /// The partitions that exist now.
    pub(super) partition_map: &'a PartitionMap,
    /// Chaos bookkeeping so far (pauses, expected exits, host faults, slots …).
    pub(super) faults: &'a FaultState,
    /// Per managed NATS server, whether it runs; `None`: no managed cluster.
    pub(super) nats_servers: Option<Vec<bool>>,
    /// Run time now.
    pub(super) now: Duration,
}

impl PlanInput<'_> {
    /// Workers alive, not paused and not already on their way out: fair game for a fault.
    pub(super) fn live_workers(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter(|(process, view)| {
                view.alive
                    && !self.faults.paused.contains_key(*process)
                    && !self.faults.expect_exit.contains(*process)
            })
            .map(|(process, _)| process.clone())
            .collect()
    }

    /// Agents whose host has no fault in force (one host fault at a time per host).
    pub(super) fn free_hosts(&self) -> Result<Vec<String>, Skip> {
        let free: Vec<String> = self
            .faults
            .agents
            .iter()
            .filter(|agent| !self.faults.host_faults.contains_key(*agent))
            .cloned()
            .collect();
        if free.is_empty() {
            Err(Skip::EveryHostImpaired)
        } else {
            Ok(free)
        }
    }

    /// The index the fault's record will get (also a network fault's id).
    pub(super) fn record_index(&self) -> usize {
        self.faults.records.len()
    }
}

/// The seeded choices a plan makes: the run's [`ChaosPlan`], or scripted in tests.
pub(super) trait Draw {
    /// An index below `len` (0 when `len` is 0).
    fn pick(&mut self, len: usize) -> usize;
    /// How long a `nats_disconnect` lasts.
    fn disconnect_duration(&mut self) -> Duration;
}

impl Draw for ChaosPlan {
    fn pick(&mut self, len: usize) -> usize {
        ChaosPlan::pick(self, len)
    }
    fn disconnect_duration(&mut self) -> Duration {
        ChaosPlan::disconnect_duration(self)
    }
}

/// No schedule (`simctl chaos` on a run without one): the first candidate, default lengths.
pub(super) struct NoDraw;

/// Disconnect length when no plan draws one (`simctl chaos` without `--duration` and
/// without a schedule).
const DISCONNECT_DEFAULT: Duration = Duration::from_secs(10);

impl Draw for NoDraw {
    fn pick(&mut self, _len: usize) -> usize {
        0
    }
    fn disconnect_duration(&mut self) -> Duration {
        DISCONNECT_DEFAULT
    }
}

/// What an injection will do, and what the run must remember about it.
#[derive(Debug)]
pub(super) struct Plan {
    /// Process, agent or server (`n<i>`); empty for partition changes.
    pub(super) target: String,
    pub(super) action: Action,
    /// For the record ([`apply`] completes it for a partition removal).
    pub(super) detail: String,
    /// Measure recovery: `Some(awaiting_heal)`; `None`: nothing to measure.
    pub(super) measure: Option<bool>,
    /// How long the fault itself lasts (the deadline starts after it).
    pub(super) lasts: Duration,
    /// See [`sim_core::chaos::FaultRecord::ideal_moves`].
    pub(super) ideal_moves: Option<u64>,
    /// See [`TargetDone`].
    pub(super) target_done: TargetDone,
    /// The bookkeeping the injection implies, applied by [`apply`] in this order.
    pub(super) effects: Vec<Effect>,
}

/// The command an injection sends.
#[derive(Debug)]
pub(super) enum Action {
    /// Signal the target process.
    Signal(Signal),
    /// SIGKILL this managed NATS server.
    KillNatsServer(usize),
    /// Send this to an agent.
    Send(String, Box<coordinator_message::Body>),
    /// Publish the run's partition map (already updated by [`apply`]).
    PublishMap,
}

/// One piece of bookkeeping; see [`FaultState`] for where each lands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// The process's next exit is the chaos's doing.
    ExpectExit(String),
    /// Scaled down: its slot is not healed.
    Retire(String),
    /// SIGSTOPped until this run time.
    Pause(String, Duration),
    /// Restarted: its next incarnation must keep this stable id.
    Restart {
        process: String,
        worker_id: String,
        incarnation: u64,
    },
    /// This agent's host is under a network fault.
    HostFault(String),
    /// This managed NATS server is killed until `restart_at`.
    NatsDown { index: usize, restart_at: Duration },
    /// A new worker slot (scale_up); the next one gets the following number.
    AddSlot { agent: String, spawn: Box<Spawn> },
    /// The partition map changes (the tracker learns of it first).
    Partitions(PartitionChange),
}

/// Why a fault is skipped; the text is what the record and the events say.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum Skip {
    /// No run to inject into.
    #[error("no run")]
    NoRun,
    /// A worker fault needs a survivor to take over.
    #[error("fewer than two live workers")]
    FewerThanTwoLive,
    /// No live leader, or nobody to succeed it.
    #[error("no leader among two or more live workers")]
    NoLeader,
    /// Every producer is down already.
    #[error("no live producer")]
    NoLiveProducer,
    /// scale_up copies a worker's spec onto an agent; there is none.
    #[error("no worker to copy")]
    NoWorkerToCopy,
    /// scale_up's `--target` is not an agent of the run.
    #[error("no agent {0}")]
    NoAgent(String),
    /// Every host has a network fault already.
    #[error("every host is already impaired")]
    EveryHostImpaired,
    /// nats_server_kill needs a cluster the daemon manages.
    #[error("no managed NATS cluster (nats.cluster_size 3 or 5 with simctl run)")]
    NoManagedCluster,
    /// Killing one server of fewer than three would lose the quorum.
    #[error("a cluster of fewer than three servers has no quorum without one")]
    ClusterTooSmall,
    /// One server down at a time: this one is not running.
    #[error("NATS server n{0} is not running")]
    NatsServerNotRunning(usize),
    /// A killed server has not been asked to restart yet.
    #[error("a NATS server is still down")]
    NatsServerStillDown,
    /// partition_changes with no producer to publish a new partition.
    #[error("no producer")]
    NoProducer,
    /// The tracker refused the partition change.
    #[error("tracker refused {} {partition}: {error}", if *.adding { "adding" } else { "removing" })]
    TrackerRefused {
        adding: bool,
        partition: u32,
        error: InputError,
    },
    /// `--target` is not among the candidates.
    #[error("target {target} is not one of [{}]", candidates.join(", "))]
    NotACandidate {
        target: String,
        candidates: Vec<String>,
    },
    /// The draw fell outside the candidates.
    #[error("no candidate")]
    NoCandidate,
    /// The command could not be delivered.
    #[error("the target's agent went away")]
    AgentGone,
    /// The agent could not deliver the signal (the process was gone).
    #[error("{agent} could not deliver the signal: {detail}")]
    NotDelivered { agent: String, detail: String },
}

/// Plan `event` (see the module docs): a [`Plan`], or why the fault is skipped.
pub(super) fn plan(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    event: ChaosEvent,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    match event {
        ChaosEvent::WorkerCrash
        | ChaosEvent::WorkerRestart
        | ChaosEvent::ScaleDown
        | ChaosEvent::WorkerPause => process::worker_fault(input, draw, event, options),
        ChaosEvent::LeaderFailure | ChaosEvent::LeaderPause => {
            process::leader_fault(input, draw, event, options)
        }
        ChaosEvent::ProducerCrash => process::producer_crash(input, draw, options),
        ChaosEvent::ScaleUp => process::scale_up(input, options),
        ChaosEvent::NatsDisconnect | ChaosEvent::NetworkDegrade => {
            network::host_fault(input, draw, event, options)
        }
        ChaosEvent::PartitionChanges => partitions::plan(input, draw, options),
        ChaosEvent::NatsServerKill => nats_server::plan_kill(input, draw, options),
        ChaosEvent::AgentCrash => agent::crash(input, draw, options),
    }
}

/// Write `plan`'s bookkeeping into the run (`faults`, and for a partition change the
/// `tracker` and `partition_map`). The fault's record is the next one pushed.
///
/// # Errors
/// [`Skip::TrackerRefused`]: the partition change did not happen.
pub(super) fn apply(
    plan: &mut Plan,
    faults: &mut FaultState,
    tracker: &mut Tracker,
    partition_map: &mut PartitionMap,
) -> Result<(), Skip> {
    let record = faults.records.len();
    for effect in &plan.effects {
        match effect.clone() {
            Effect::ExpectExit(process) => {
                faults.expect_exit.insert(process);
            }
            Effect::Retire(process) => {
                faults.retired.insert(process);
            }
            Effect::Pause(process, until) => {
                faults.paused.insert(process, until);
            }
            Effect::Restart {
                process,
                worker_id,
                incarnation,
            } => {
                faults
                    .restarts
                    .insert(process, (record, worker_id, incarnation));
            }
            Effect::HostFault(agent) => {
                let fault = HostFault {
                    record,
                    excused_until: None,
                    crash: None,
                };
                faults.host_faults.insert(agent, fault);
            }
            Effect::NatsDown { index, restart_at } => {
                let down = NatsDown {
                    restart_at: Some(restart_at),
                    excused_until: None,
                };
                faults.nats_down.insert(index, down);
            }
            Effect::AddSlot { agent, spawn } => {
                faults.next_worker += 1;
                faults.slots.insert(spawn.process.clone(), (agent, *spawn));
            }
            Effect::Partitions(change) => {
                if let Some(detail) = partitions::apply(&change, faults, tracker, partition_map)? {
                    plan.detail = detail;
                }
            }
        }
    }
    Ok(())
}

/// A named target must be one of `from`; otherwise one is drawn from the seeded plan.
pub(super) fn choose(
    draw: &mut dyn Draw,
    from: &[String],
    options: &InjectOptions,
) -> Result<String, Skip> {
    match &options.target {
        Some(target) if from.contains(target) => Ok(target.clone()),
        Some(target) => Err(Skip::NotACandidate {
            target: target.clone(),
            candidates: from.to_vec(),
        }),
        None => from
            .get(draw.pick(from.len()))
            .cloned()
            .ok_or(Skip::NoCandidate),
    }
}
