//! The run's state: everything a checkpoint holds about a run, in the very form the engine
//! works on, so that one serializable value is both.
//!
//! A field added here is checkpointed and restored with no other edit (besides its value
//! when a run starts). Three things stay outside, each for a reason:
//! - the tracker and the run clock, written beside the state as the tracker's own versioned
//!   books and as "run time, wall clock" stamps (see `checkpoint::StateFile`);
//! - the run's I/O ([`super::RunIo`]): NATS handles, the assignment watch, the run
//!   directory, the managed cluster — reopened on resume, never saved;
//! - this coordinator process's bookkeeping ([`super::Local`]): when it last checkpointed,
//!   what it already appended to `events.log` — starting afresh in a resumed process.
//!
//! `sim_core::record::RunRecord` reads the judged part of the same file by the same field
//! names; a test in `checkpoint` checks that every field it reads is written.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proto::v1::PartitionMap;
use serde::{Deserialize, Serialize};

use super::faults::FaultState;
use super::startup::StartupWatch;
use super::{CHECKPOINT_FORMAT, SECOND_WAVE_AFTER};
use crate::placement::{PlacedSpawn, Placement};
use sim_core::assignment::AssignmentLog;
use sim_core::authority::AuthorityCheck;
use sim_core::clock::ClockOffset;
use sim_core::config::Config;
use sim_core::events::{EndReason, RunEvent};
use sim_core::foreign_reports::ForeignReports;
use sim_core::ownership::OwnershipCheck;
use sim_core::resources::ResourceWatch;
use sim_core::stream_check::StreamCheck;
use sim_core::tracker::WorkerRef;
use sim_core::verdict::Failure;

/// Where a run is. Times are run time (see `clock::RunClock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Producers publish, faults are injected.
    Running,
    /// Producers were stopped at `since`; waiting for everything sent to be received.
    Draining {
        /// When the drain began.
        since: Duration,
    },
    /// The verdict is in.
    Finished,
}

impl Phase {
    /// The phase's name, as `simctl status` and the logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Draining { .. } => "draining",
            Self::Finished => "finished",
        }
    }
}

/// What a worker last reported about itself.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub(super) worker_id: String,
    pub(super) incarnation: u64,
    pub(super) leader: bool,
    pub(super) state: String,
    pub(super) alive: bool,
    pub(super) partitions: Vec<u32>,
    /// When it was last heard of: a status or a processed message (run time, ms).
    #[serde(default)]
    pub(super) last_report_ms: u64,
}

/// The state of one run (see the module documentation).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RunState {
    /// [`CHECKPOINT_FORMAT`] (`sim_core::record::read_state` refuses other formats before
    /// this struct is read).
    pub(super) format: u32,
    #[serde(rename = "run_id")]
    pub(super) id: String,
    pub(super) seed: u64,
    /// The NATS URL(s) the run uses (the config's, or the daemon's override).
    pub(super) nats_url: String,
    pub(super) config: Config,
    pub(super) phase: Phase,
    /// How the run ended (the final state only).
    pub(super) end: Option<EndReason>,
    pub(super) placement: Placement,
    /// (process, incarnation) → the tracker's compact reference for it.
    #[serde(with = "worker_refs")]
    pub(super) worker_refs: HashMap<(String, u64), WorkerRef>,
    /// Worker names, by tracker reference.
    pub(super) worker_names: Vec<String>,
    pub(super) workers: BTreeMap<String, WorkerView>,
    pub(super) producers_alive: BTreeMap<String, bool>,
    /// Failures recorded as they happened (stall, slow recovery, lost identity,
    /// infrastructure); the verdict weighs them with the rest of the evidence.
    pub(super) failures: Vec<Failure>,
    pub(super) events: Vec<RunEvent>,
    pub(super) ownership: OwnershipCheck,
    /// Processing judged against parti's assignment document.
    #[serde(default)]
    pub(super) authority: AuthorityCheck,
    /// The stream read as the ground truth once the producers stopped (docs/VERDICT.md).
    #[serde(default)]
    pub(super) stream_check: StreamCheck,
    /// Reports of another run's children: refused, counted.
    #[serde(default)]
    pub(super) foreign_reports: ForeignReports,
    /// The startup gate's pending workers. Absent (a checkpoint written before the gate
    /// existed): nothing is judged — that run's start is long past.
    #[serde(default = "StartupWatch::judged")]
    pub(super) startup: StartupWatch,
    /// Each process's resource samples (the leak gate).
    #[serde(default)]
    pub(super) resources: ResourceWatch,
    /// Each agent's host clock against the coordinator's, as last measured: every
    /// timestamp from its reports is corrected by it (`sim_core::clock`).
    #[serde(default)]
    pub(super) clocks: BTreeMap<String, ClockOffset>,
    /// Process slot → pid of the child this run started in it (from `Started` reports): an
    /// exit of any other pid is a leftover of another run, not this run's business.
    #[serde(default)]
    pub(super) pids: BTreeMap<String, u32>,
    /// `pids` holds every child of this run (false in checkpoints written before it was
    /// kept: then an exit of an unknown slot is still applied).
    #[serde(default)]
    pub(super) pids_tracked: bool,
    /// Per journal (`Report.journal`, `agent::journal`): the highest line applied and the
    /// run time (ms) it was. A restarted agent replays its dead children's journals; a line
    /// at or below this was applied already and is skipped.
    #[serde(default)]
    pub(super) journals: HashMap<u64, (u64, u64)>,
    pub(super) faults: FaultState,
    /// When the second wave of workers starts (run time, ms), while it has not.
    pub(super) second_wave_at_ms: Option<u64>,
    /// The partitions that exist now (partition_changes edits it).
    pub(super) partition_map: PartitionMap,
    /// parti's assignment documents, as watched.
    pub(super) assignment_log: AssignmentLog,
    /// Per agent: (boot id, number) of the last report batch applied — a checkpoint's
    /// position in each agent's stream.
    pub(super) applied: BTreeMap<String, (u64, u64)>,
    /// The run over time, for report.html (absent in older checkpoints: starts empty).
    #[serde(default)]
    pub(super) timeline: sim_core::timeline::Timeline,
}

impl RunState {
    /// A run about to start: nothing happened yet, every producer is (about to be) alive.
    /// `partition_map` is the one published for it (`placement`'s).
    pub(super) fn new(
        id: String,
        config: Config,
        seed: u64,
        (placement, partition_map): (Placement, PartitionMap),
        nats_url: String,
    ) -> Self {
        let faults = FaultState::new(&config, seed, &placement, &nats_url);
        Self {
            format: CHECKPOINT_FORMAT,
            id,
            seed,
            nats_url,
            phase: Phase::Running,
            end: None,
            producers_alive: placement
                .producers
                .iter()
                .map(|(_, process, _)| (process.clone(), true))
                .collect(),
            placement,
            worker_refs: HashMap::new(),
            worker_names: Vec::new(),
            workers: BTreeMap::new(),
            failures: Vec::new(),
            events: Vec::new(),
            ownership: OwnershipCheck::default(),
            authority: AuthorityCheck::default(),
            stream_check: StreamCheck::default(),
            foreign_reports: ForeignReports::default(),
            startup: StartupWatch::default(),
            resources: ResourceWatch::default(),
            clocks: BTreeMap::new(),
            pids: BTreeMap::new(),
            pids_tracked: true,
            journals: HashMap::new(),
            faults,
            second_wave_at_ms: Some(super::clock::millis(SECOND_WAVE_AFTER)),
            partition_map,
            assignment_log: AssignmentLog::default(),
            applied: BTreeMap::new(),
            timeline: sim_core::timeline::Timeline::default(),
            config,
        }
    }

    /// How long the run publishes.
    pub(super) fn duration(&self) -> Duration {
        self.config.simulation.duration
    }

    /// The workers' two waves: the first starts with the run, the second at
    /// `second_wave_at_ms`, so every run moves partitions at least once and exercises the
    /// handoff (a run where nothing ever moves proves little).
    pub(super) fn worker_waves(&self) -> (Vec<PlacedSpawn>, Vec<PlacedSpawn>) {
        let mut first = self.placement.worker_spawns();
        let second = first.split_off(first.len().div_ceil(2));
        (first, second)
    }

    /// The tracker's compact reference for a worker process incarnation.
    pub(super) fn worker_ref(
        &mut self,
        process: &str,
        incarnation: u64,
        worker_id: &str,
    ) -> WorkerRef {
        let next = WorkerRef(u32::try_from(self.worker_names.len()).unwrap_or(u32::MAX));
        let names = &mut self.worker_names;
        *self
            .worker_refs
            .entry((process.to_string(), incarnation))
            .or_insert_with(|| {
                names.push(if worker_id.is_empty() {
                    process.to_string()
                } else {
                    format!("{worker_id}/{process}")
                });
                next
            })
    }
}

/// `worker_refs` as a list of (process, incarnation, reference), in reference order (JSON
/// maps have string keys only).
mod worker_refs {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use sim_core::tracker::WorkerRef;

    type Refs = HashMap<(String, u64), WorkerRef>;

    pub(super) fn serialize<S: Serializer>(refs: &Refs, serializer: S) -> Result<S::Ok, S::Error> {
        let mut list: Vec<(&str, u64, u32)> = refs
            .iter()
            .map(|((process, incarnation), worker)| (process.as_str(), *incarnation, worker.0))
            .collect();
        list.sort_by_key(|entry| entry.2);
        list.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Refs, D::Error> {
        let list = Vec::<(String, u64, u32)>::deserialize(deserializer)?;
        Ok(list
            .into_iter()
            .map(|(process, incarnation, reference)| ((process, incarnation), WorkerRef(reference)))
            .collect())
    }
}
