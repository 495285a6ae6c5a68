//! The run engine: one actor owning the current run — placement, tracking, phases, verdict.
//!
//! Phases: `starting` (stream ready, processes spawned) → `running` (until the duration) →
//! `draining` (producers stopped with SIGTERM; wait until everything sent was received, or
//! the drain timeout) → `finished` (verdict). A run whose messages stop flowing fails with
//! a stall instead of waiting forever; a run that loses all its agents fails as an
//! infrastructure error.
//!
//! Layout: this module holds the run's state and the engine loop (`tick`, drain, status);
//! `start`, `ingest` (agents' report batches, exits) and `finish` (the verdict written
//! out) the rest of a run's life; `faults` the chaos; `checkpoint` resuming; `clock` run
//! time.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::{RunReport, RunStatus, Signal, SignalProcess, Verdict, coordinator_message};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

mod checkpoint;
mod clock;
mod faults;
mod finish;
mod ingest;
mod start;

pub use checkpoint::RunCheckpoint;
pub use faults::InjectOptions;

use clock::RunClock;

use crate::agents::{AgentRegistry, IngestBatch};
use crate::assignment_log::AssignmentLog;
use crate::placement::{PlacedSpawn, Placement};
use sim_core::chaos::FaultOutcome;
use sim_core::config::{ChaosEvent, Config};
use sim_core::events::{EndReason, EventKind, RunEvent};
use sim_core::ownership::OwnershipCheck;
use sim_core::rundir::RunDir;
use sim_core::tracker::{Tracker, WorkerRef};
use sim_core::verdict::Failure;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (exit code 2).
    #[error("{0}")]
    Config(String),
    /// A run is already in progress.
    #[error("a run is already in progress ({0})")]
    Busy(String),
    /// No agent is connected, or NATS is unusable (exit code 3).
    #[error("{0}")]
    Infrastructure(String),
}

/// Commands to the engine.
#[derive(Debug)]
pub enum Command {
    /// Start a run.
    Start {
        /// Parsed, validated configuration (duration and seed already applied).
        config: Box<Config>,
        /// Seed for weights and placement.
        seed: u64,
        /// Reply with the run id.
        reply: oneshot::Sender<Result<String, StartError>>,
    },
    /// Resume a run from its latest checkpoint: the run directory, or the newest unfinished
    /// run under the runs directory whose config equals this one.
    Resume {
        /// The run directory, if named.
        run_dir: Option<PathBuf>,
        /// The config the run must have been started with (when no directory is named).
        config: Option<Box<Config>>,
        /// Reply with the run id.
        reply: oneshot::Sender<Result<String, StartError>>,
    },
    /// Stop early: go to the drain phase now.
    Stop,
    /// Inject one fault now (`simctl chaos`).
    Inject {
        /// The fault.
        event: ChaosEvent,
        /// Target and duration, when given.
        options: InjectOptions,
        /// Reply with (target, outcome).
        reply: oneshot::Sender<(String, FaultOutcome)>,
    },
}

/// Handles to a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    /// Commands.
    pub commands: mpsc::Sender<Command>,
    /// Live status.
    pub status: watch::Receiver<RunStatus>,
    /// The final report, once there is one.
    pub report: watch::Receiver<Option<RunReport>>,
}

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

/// Why the drain began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainReason {
    /// The run's duration is up.
    DurationReached,
    /// `simctl stop`.
    StoppedByRequest,
}

impl std::fmt::Display for DrainReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DurationReached => "duration reached",
            Self::StoppedByRequest => "stopped by request",
        })
    }
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
    worker_id: String,
    incarnation: u64,
    leader: bool,
    state: String,
    alive: bool,
    partitions: Vec<u32>,
}

struct ActiveRun {
    id: String,
    seed: u64,
    /// The NATS URL(s) the run uses (the config's, or the daemon's override).
    nats_url: String,
    config: Config,
    placement: Placement,
    clock: RunClock,
    duration: Duration,
    phase: Phase,
    tracker: Tracker,
    worker_refs: HashMap<(String, u64), WorkerRef>,
    worker_names: Vec<String>,
    workers: BTreeMap<String, WorkerView>,
    producers_alive: BTreeMap<String, bool>,
    /// The tracker's progress marker and when it last moved (local: a resumed run's stall
    /// clock restarts).
    progress: (u64, Instant),
    /// Failures recorded as they happened (stall, slow recovery, lost identity,
    /// infrastructure); the verdict weighs them with the rest of the evidence.
    failures: Vec<Failure>,
    events: Vec<RunEvent>,
    ownership: OwnershipCheck,
    faults: faults::FaultState,
    /// Workers of the second wave and when they start (run time).
    second_wave: Option<(Duration, Vec<PlacedSpawn>)>,
    /// The run's KV bucket (partition map).
    sim_kv: async_nats::jetstream::kv::Store,
    /// The partitions that exist now (partition_changes edits it).
    partition_map: proto::v1::PartitionMap,
    /// parti's assignment documents, as watched.
    assignment_log: AssignmentLog,
    assignments: mpsc::Receiver<(u64, serde_json::Value)>,
    /// Where the run's files go.
    dir: RunDir,
    /// Per agent: (boot id, number) of the last report batch applied — a checkpoint's
    /// position in each agent's stream.
    applied: BTreeMap<String, (u64, u64)>,
    /// Checkpoints written so far (the next file's generation is this + 1) and when the
    /// last one was written.
    checkpoints: (u64, Instant),
    /// `events` already appended to `events.log`.
    events_logged: usize,
    /// After a resume: expiry of unprocessed messages waits until the checkpoint's agents
    /// are back and have resent what the checkpoint did not cover (see `tick`).
    resume_hold: Option<(Vec<String>, Instant)>,
    /// Size and write time of checkpoints (for the report and the soak numbers).
    checkpoint_stats: CheckpointStats,
    /// Report gaps of the registry already turned into failures.
    gaps_seen: usize,
    /// `applied` as of the last durable checkpoint.
    checkpointed: BTreeMap<String, (u64, u64)>,
    /// The managed NATS cluster, when the daemon was given one (`nats_server_kill`).
    nats_cluster: Option<nats_cluster::NatsCluster>,
}

/// Checkpoints written by this coordinator process for the run.
#[derive(Debug, Default, Clone, Copy)]
struct CheckpointStats {
    count: u64,
    last_bytes: usize,
    slowest: Duration,
}

impl CheckpointStats {
    fn record(&mut self, bytes: usize, took: Duration) {
        self.count += 1;
        self.last_bytes = bytes;
        self.slowest = self.slowest.max(took);
    }
}

/// Delay of the second wave of workers: past parti's cold-start window (5 s in the
/// simulator's parti config), so their join is a planned scale that moves partitions.
const SECOND_WAVE_AFTER: Duration = Duration::from_secs(8);

/// Start the engine task.
pub fn spawn_engine(
    registry: AgentRegistry,
    ingest: mpsc::Receiver<IngestBatch>,
    nats_url: Option<String>,
    ingest_delay: Duration,
    nats_cluster_dir: Option<PathBuf>,
    runs_dir: PathBuf,
) -> EngineHandle {
    let (commands, command_rx) = mpsc::channel(16);
    let (status_tx, status) = watch::channel(RunStatus {
        phase: "idle".into(),
        ..Default::default()
    });
    let (report_tx, report) = watch::channel(None);
    // Until a run says otherwise, agents keep every report batch: a daemon restarted after
    // a crash may be asked to resume (`simctl start --resume`), and the batches agents
    // resend meanwhile must still exist then.
    registry.set_checkpointing(true);
    let engine = Engine {
        registry,
        nats_url,
        ingest_delay,
        nats_cluster_dir,
        runs_dir,
        run: None,
        status_tx,
        report_tx,
    };
    tokio::spawn(engine.run(command_rx, ingest));
    EngineHandle {
        commands,
        status,
        report,
    }
}

struct Engine {
    registry: AgentRegistry,
    nats_url: Option<String>,
    ingest_delay: Duration,
    /// The managed NATS cluster's directory, for `nats_server_kill`.
    nats_cluster_dir: Option<PathBuf>,
    /// Run directories go here.
    runs_dir: PathBuf,
    run: Option<ActiveRun>,
    status_tx: watch::Sender<RunStatus>,
    report_tx: watch::Sender<Option<RunReport>>,
}

/// The next assignment document of the current run (pending while there is none).
async fn next_assignment(run: &mut Option<ActiveRun>) -> Option<(u64, serde_json::Value)> {
    match run {
        Some(run) => run.assignments.recv().await,
        None => std::future::pending().await,
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl ActiveRun {
    /// The tracker's compact reference for a worker process incarnation.
    fn worker_ref(&mut self, process: &str, incarnation: u64, worker_id: &str) -> WorkerRef {
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

impl Engine {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut ingest: mpsc::Receiver<IngestBatch>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Start { config, seed, reply }) => {
                        let result = self.start(*config, seed).await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Resume { run_dir, config, reply }) => {
                        let result = self.resume(run_dir, config.map(|c| *c)).await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Stop) => self.begin_drain(DrainReason::StoppedByRequest).await,
                    Some(Command::Inject { event, options, reply }) => {
                        let running = self.run.as_ref().is_some_and(|run| run.phase == Phase::Running);
                        let now = self.run.as_ref().map(|run| run.clock.now()).unwrap_or_default();
                        let result = if running {
                            self.inject(event, now, options).await
                        } else {
                            (String::new(), FaultOutcome::Skipped("no run is in its running phase".into()))
                        };
                        let _ = reply.send(result);
                    }
                    None => return,
                },
                batch = ingest.recv() => match batch {
                    Some(batch) => self.ingest(batch).await,
                    None => return,
                },
                Some((revision, doc)) = next_assignment(&mut self.run) => {
                    if let Some(run) = self.run.as_mut() {
                        // A resumed run's watch replays the document the checkpoint saw.
                        if run.phase != Phase::Finished
                            && revision > run.assignment_log.last_kv_revision
                        {
                            run.assignment_log.last_kv_revision = revision;
                            run.assignment_log.observe(&doc);
                        }
                    }
                }
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    async fn begin_drain(&mut self, why: DrainReason) {
        let Some(run) = self.run.as_mut() else { return };
        if run.phase != Phase::Running {
            return;
        }
        info!(run = %run.id, %why, "draining: stopping producers");
        // A producer crashed by chaos must not come back now: it would publish past the end.
        run.faults.cancel_producer_respawns();
        self.heal_all().await;
        let Some(run) = self.run.as_mut() else { return };
        run.events
            .push(RunEvent::new(EventKind::Phase, format!("drain: {why}")));
        run.phase = Phase::Draining {
            since: run.clock.now(),
        };
        // Write-ahead: a coordinator resumed after this point knows producers were stopped.
        self.write_checkpoint("drain").await;
        let Some(run) = self.run.as_mut() else { return };
        for (agent, process, _) in &run.placement.producers {
            let signal = SignalProcess {
                process: process.clone(),
                signal: Signal::Term as i32,
            };
            self.registry
                .send(agent, coordinator_message::Body::Signal(signal))
                .await;
        }
    }

    async fn tick(&mut self) {
        self.fault_tick().await;
        let now = Instant::now();
        let agents = self.registry.connected().await;
        let Some(run) = self.run.as_mut() else { return };
        if run.phase == Phase::Finished {
            return;
        }
        let run_time = run.clock.now();
        if run
            .second_wave
            .as_ref()
            .is_some_and(|(at, _)| run_time >= *at)
        {
            // Write-ahead: the spawns are recorded as done before they are sent.
            let workers = run.second_wave.take().map(|(_, w)| w).unwrap_or_default();
            self.write_checkpoint("second wave").await;
            let Some(run) = self.run.as_mut() else { return };
            {
                if !workers.is_empty() {
                    run.events.push(RunEvent::new(
                        EventKind::Phase,
                        format!("second wave: {} workers join", workers.len()),
                    ));
                }
                for (agent, spawn) in workers {
                    if !self
                        .registry
                        .send(&agent, coordinator_message::Body::Spawn(spawn))
                        .await
                    {
                        warn!(run = %run.id, %agent, "second-wave worker not started: agent went away");
                    }
                }
            }
        }
        let Some(run) = self.run.as_mut() else { return };
        // After a resume, messages the checkpoint saw unprocessed may have been processed
        // while the coordinator was away; the agents resend those reports when they are
        // back. Until then (bounded), nothing is declared lost.
        if let Some((expected, since)) = &run.resume_hold {
            let back = expected.iter().all(|agent| agents.contains(agent));
            let waited = now.duration_since(*since);
            if (back && waited >= RESUME_SETTLE) || waited >= RESUME_HOLD_MAX {
                run.events.push(RunEvent::new(
                    EventKind::Resume,
                    format!(
                        "resume: {} agent(s) back after {:.1}s, loss detection on again",
                        expected.iter().filter(|a| agents.contains(a)).count(),
                        waited.as_secs_f64()
                    ),
                ));
                run.resume_hold = None;
            }
        }
        if run.resume_hold.is_none() {
            run.tracker.expire(now_us());
        }
        // Reports that can never arrive (an agent dropped batches a restored checkpoint did
        // not hold, or restarted while the coordinator was away): the books are incomplete,
        // which no verdict may hide.
        let gaps = self.registry.gaps();
        for gap in gaps.iter().skip(run.gaps_seen) {
            warn!(run = %run.id, %gap, "report gap");
            run.failures.push(Failure::ReportGap(gap.clone()));
        }
        run.gaps_seen = gaps.len();
        let snapshot = run.tracker.snapshot(now_us());
        let marker = run.tracker.progress_marker().0;
        if marker != run.progress.0 {
            run.progress = (marker, now);
        }
        let stalled_for = now.duration_since(run.progress.1);
        let stall_timeout = run.config.coordinator.stall_timeout;
        let mut end_reason = None;
        // A resumed coordinator starts before its agents have reconnected.
        if agents.is_empty() && run.resume_hold.is_none() {
            run.failures.push(Failure::AgentsLost);
            end_reason = Some(EndReason::AgentsLost);
        } else if stalled_for >= stall_timeout
            && (snapshot.in_flight > 0 || matches!(run.phase, Phase::Running))
        {
            let failure = Failure::Stall {
                stalled_for,
                in_flight: snapshot.in_flight,
                sent: snapshot.sent,
                received: snapshot.received,
            };
            warn!(run = %run.id, "{failure}");
            run.failures.push(failure);
            end_reason = Some(EndReason::Stall);
        }
        match run.phase {
            Phase::Running if end_reason.is_none() && run_time >= run.duration => {
                self.begin_drain(DrainReason::DurationReached).await;
            }
            Phase::Draining { since } if end_reason.is_none() => {
                let producers_done = run.producers_alive.values().all(|alive| !alive);
                let caught_up = producers_done && snapshot.in_flight == 0 && snapshot.missing == 0;
                let draining_for = run_time.saturating_sub(since);
                let coordinator = &run.config.coordinator;
                if (caught_up && draining_for >= coordinator.drain_settle)
                    || draining_for >= coordinator.drain_timeout
                {
                    end_reason = Some(if caught_up {
                        EndReason::Drained
                    } else {
                        EndReason::DrainTimeout
                    });
                }
            }
            _ => {}
        }
        self.publish_status();
        if let Some(reason) = end_reason {
            self.finish(reason).await;
            return;
        }
        self.log_events();
        let due = self.run.as_ref().and_then(|run| {
            if !run.config.checkpointing.enabled {
                return None;
            }
            if now.duration_since(run.checkpoints.1) >= run.config.checkpointing.interval {
                return Some("interval");
            }
            // Agents keep every batch until a checkpoint covers it: a long interval at a
            // high report rate must not fill their outbox and stall the children.
            let backlog = run.applied.iter().any(|(agent, (boot, number))| {
                let covered = run
                    .checkpointed
                    .get(agent)
                    .filter(|(covered_boot, _)| covered_boot == boot)
                    .map_or(0, |(_, covered)| *covered);
                number.saturating_sub(covered) >= CHECKPOINT_AFTER_BATCHES
            });
            backlog.then_some("agent backlog")
        });
        if let Some(why) = due {
            self.write_checkpoint(why).await;
        }
    }

    fn publish_status(&self) {
        let Some(run) = &self.run else { return };
        let snapshot = run.tracker.snapshot(now_us());
        let phase = run.phase.name();
        let alive: Vec<&WorkerView> = run.workers.values().filter(|w| w.alive).collect();
        self.status_tx.send_replace(RunStatus {
            run_id: run.id.clone(),
            phase: phase.into(),
            elapsed_ms: clock::millis(run.clock.now()),
            duration_ms: u64::try_from(run.duration.as_millis()).unwrap_or(u64::MAX),
            sent: snapshot.sent,
            received: snapshot.received,
            in_flight: snapshot.in_flight,
            lost: snapshot.lost,
            duplicates: snapshot.duplicates_redelivery + snapshot.duplicates_concurrent,
            workers: u32::try_from(alive.len()).unwrap_or(u32::MAX),
            leader: alive
                .iter()
                .find(|w| w.leader)
                .map(|w| w.worker_id.clone())
                .unwrap_or_default(),
            verdict: Verdict::Unspecified as i32,
        });
    }
}

/// Report batches of one agent not yet covered by a checkpoint that trigger one before the
/// interval is up (a batch holds up to 2000 reports; agents stop reading at 512 MiB).
const CHECKPOINT_AFTER_BATCHES: u64 = 1024;

/// How much of each child's log a failed run keeps.
const CHILD_LOG_TAIL: u64 = 256 * 1024;

/// After a resume, loss detection waits at least this long once every agent is back (their
/// resent batches arrive in the first moments of a session)…
const RESUME_SETTLE: Duration = Duration::from_secs(5);
/// …and never longer than this.
const RESUME_HOLD_MAX: Duration = Duration::from_secs(60);
