//! The run engine: one actor owning the current run — placement, tracking, phases, verdict.
//!
//! Phases: `starting` (stream ready, processes spawned) → `running` (until the duration) →
//! `draining` (producers stopped with SIGTERM; wait until everything sent was received, or
//! the drain timeout) → `finished` (verdict). A run whose messages stop flowing fails with
//! a stall instead of waiting forever; a run that loses all its agents fails as an
//! infrastructure error.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::{
    ProcessKind, RunReport, RunStatus, Signal, SignalProcess, Verdict, coordinator_message, report,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

mod checkpoint;
mod clock;
mod faults;

pub use checkpoint::RunCheckpoint;
pub use faults::InjectOptions;

use clock::RunClock;

use crate::agents::{AgentRegistry, IngestBatch};
use crate::assignment_log::AssignmentLog;
use crate::placement::{self, PlacedSpawn, Placement};
use sim_core::chaos::FaultOutcome;
use sim_core::config::{ChaosEvent, Config};
use sim_core::events::{EndReason, EventKind, RunEvent};
use sim_core::ownership::OwnershipCheck;
use sim_core::record::{RunRecord, tracker_config};
use sim_core::report::{Outcome, RunSummary};
use sim_core::rundir::RunDir;
use sim_core::tracker::{Processed, Sent, Tracker, WorkerRef};
use sim_core::verdict::{ExitStatus, Failure, Judgement};

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

    async fn start(&mut self, config: Config, seed: u64) -> Result<String, StartError> {
        if let Some(run) = &self.run
            && run.phase != Phase::Finished
        {
            return Err(StartError::Busy(run.id.clone()));
        }
        let agents = self.registry.connected().await;
        if agents.is_empty() {
            return Err(StartError::Infrastructure("no agent is connected".into()));
        }
        let nats_url = self
            .nats_url
            .clone()
            .unwrap_or_else(|| config.nats.url.clone());
        let sim_kv = crate::stream::prepare(&nats_url, &config)
            .await
            .map_err(|e| {
                StartError::Infrastructure(format!("preparing JetStream at {nats_url}: {e:#}"))
            })?;
        let placement = placement::place(&config, seed, &agents, &nats_url);
        let partition_map = placement.partition_map(config.partitions.count);
        crate::stream::publish_partition_map(&sim_kv, &partition_map)
            .await
            .map_err(|e| StartError::Infrastructure(format!("{e:#}")))?;
        let id = format!("run-{}-{seed:x}", now_us() / 1_000_000);
        let dir = RunDir::new(&self.runs_dir, &id, &config.checkpointing.path);
        dir.create(&config.effective_yaml(), seed)
            .map_err(|e| StartError::Infrastructure(format!("creating the run directory: {e}")))?;
        info!(run = %id, dir = %dir.root().display(), agents = agents.len(), producers = placement.producers.len(), workers = placement.workers.len(), "starting run");
        // Workers join in two waves, so every run moves partitions at least once and
        // exercises the handoff (a run where nothing ever moves proves little).
        let mut first_wave = placement.worker_spawns();
        let second_wave = first_wave.split_off(first_wave.len().div_ceil(2));
        let now = Instant::now();
        self.report_tx.send_replace(None);
        let faults = faults::FaultState::new(&config, seed, &placement, &nats_url);
        self.registry
            .set_checkpointing(config.checkpointing.enabled);
        self.run = Some(ActiveRun {
            id: id.clone(),
            seed,
            duration: config.simulation.duration,
            tracker: Tracker::new(tracker_config(&config), config.partitions.count),
            producers_alive: placement
                .producers
                .iter()
                .map(|(_, p, _)| (p.clone(), true))
                .collect(),
            config,
            placement: placement.clone(),
            clock: RunClock::start(),
            phase: Phase::Running,
            worker_refs: HashMap::new(),
            worker_names: Vec::new(),
            workers: BTreeMap::new(),
            progress: (0, now),
            failures: Vec::new(),
            events: Vec::new(),
            second_wave: Some((SECOND_WAVE_AFTER, second_wave)),
            ownership: OwnershipCheck::default(),
            faults,
            sim_kv,
            partition_map,
            assignment_log: AssignmentLog::default(),
            assignments: crate::assignment_log::watch(nats_url.clone()),
            nats_url,
            dir,
            applied: BTreeMap::new(),
            checkpoints: (0, now),
            events_logged: 0,
            resume_hold: None,
            checkpoint_stats: CheckpointStats::default(),
            gaps_seen: self.registry.gaps().len(),
            checkpointed: BTreeMap::new(),
            nats_cluster: self.open_nats_cluster(),
        });
        // Write-ahead: the run exists on disk before any process does, so a coordinator
        // killed from here on can be resumed.
        self.write_checkpoint("start").await;
        for (agent, spawn) in first_wave.into_iter().chain(placement.producer_spawns()) {
            if !self
                .registry
                .send(&agent, coordinator_message::Body::Spawn(spawn))
                .await
            {
                self.run = None;
                return Err(StartError::Infrastructure(format!(
                    "agent {agent} went away"
                )));
            }
        }
        // Visible before Start returns, so a watcher never sees the previous phase.
        self.publish_status();
        Ok(id)
    }

    async fn ingest(&mut self, batch: IngestBatch) {
        if !self.ingest_delay.is_zero() {
            tokio::time::sleep(self.ingest_delay).await;
        }
        let Some(run) = self.run.as_mut() else { return };
        if run.phase == Phase::Finished {
            // Only the logs a failed run asked for still count.
            for report in batch.reports {
                if let Some(report::Body::ChildLog(log)) = report.body {
                    save_child_log(run, &batch.agent, &log);
                }
            }
            return;
        }
        run.applied
            .insert(batch.agent.clone(), (batch.boot_id, batch.number));
        for report in batch.reports {
            let Some(body) = report.body else { continue };
            if let report::Body::Network(network) = &body {
                self.on_network_report(&batch.agent, network);
                continue;
            }
            let Some(run) = self.run.as_mut() else { return };
            match body {
                report::Body::Network(_) => {}
                report::Body::ChildLog(log) => save_child_log(run, &batch.agent, &log),
                report::Body::Sent(sent) => {
                    if let Err(error) = run.tracker.sent(Sent {
                        partition: sent.partition,
                        seq: sent.seq,
                        at_us: sent.published_us,
                    }) {
                        warn!(%error, "invalid sent report");
                    }
                }
                report::Body::Processed(processed) => {
                    let worker = run.worker_ref(
                        &processed.process,
                        processed.incarnation,
                        &processed.worker_id,
                    );
                    run.ownership.processed(
                        &processed.process,
                        processed.incarnation,
                        processed.assignment_version,
                        processed.partition,
                    );
                    let observed = run.tracker.processed(Processed {
                        partition: processed.partition,
                        seq: processed.seq,
                        worker,
                        delivered: processed.delivered,
                        published_us: processed.published_us,
                        received_us: processed.received_us,
                        processed_us: processed.processed_us,
                    });
                    if let Err(error) = observed {
                        warn!(%error, "invalid processed report");
                    }
                }
                report::Body::Malformed(malformed) => {
                    warn!(process = %malformed.process, subject = %malformed.subject, "malformed message");
                    let worker = run.worker_ref(&malformed.process, 0, "");
                    run.tracker.malformed(worker);
                }
                report::Body::Status(status) => {
                    run.ownership.status(
                        &status.process,
                        status.incarnation,
                        &status.worker_id,
                        status.assignment_version,
                        &status.partitions,
                    );
                    run.faults.check_restarted_identity(
                        &status.process,
                        &status.worker_id,
                        status.incarnation,
                        &mut run.failures,
                    );
                    let view = run.workers.entry(status.process.clone()).or_default();
                    view.worker_id = status.worker_id;
                    view.incarnation = status.incarnation;
                    view.leader = status.leader;
                    view.state = status.state;
                    view.alive = true;
                    view.partitions = status.partitions;
                }
                report::Body::Started(started) => {
                    self.registry.count_process(&batch.agent, 1).await;
                    run.events.push(RunEvent::new(
                        EventKind::Process,
                        format!("{} started (pid {})", started.process, started.pid),
                    ));
                    if started.kind == ProcessKind::Producer as i32 {
                        // A respawned producer counts again until the drain stops it.
                        run.producers_alive.insert(started.process.clone(), true);
                    }
                }
                report::Body::Exited(exited) => {
                    self.registry.count_process(&batch.agent, -1).await;
                    let status = ExitStatus::from(&exited);
                    let now = run.clock.now();
                    let caused_by_chaos = run.faults.expect_exit.remove(&exited.process)
                        || run.faults.host_faulted(&exited.process, now);
                    let expected = caused_by_chaos
                        || (matches!(run.phase, Phase::Draining { .. } | Phase::Finished)
                            && exited.code == Some(0));
                    let line = format!("{} (pid {}) exited: {status}", exited.process, exited.pid);
                    if !expected {
                        warn!(run = %run.id, "{line}");
                    }
                    let kind = if expected {
                        EventKind::Process
                    } else {
                        EventKind::Unexpected
                    };
                    run.events.push(RunEvent::new(kind, line));
                    run.faults
                        .on_exit(&exited.process, run.phase == Phase::Running, now);
                    if exited.kind == ProcessKind::Producer as i32 {
                        run.producers_alive.insert(exited.process.clone(), false);
                        if !matches!(run.phase, Phase::Draining { .. }) && !caused_by_chaos {
                            run.failures.push(Failure::ProducerDied {
                                process: exited.process.clone(),
                                status,
                            });
                        }
                    } else if let Some(view) = run.workers.get_mut(&exited.process) {
                        view.alive = false;
                        view.leader = false;
                    }
                }
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

    async fn finish(&mut self, reason: EndReason) {
        let agents = self.registry.connected().await;
        let Some(run) = self.run.as_mut() else { return };
        run.tracker.finish(now_us());
        run.phase = Phase::Finished;
        let duplicates = run.tracker.snapshot(now_us()).duplicates();
        run.faults.close_duplicates(duplicates);
        run.events.push(RunEvent::new(
            EventKind::Phase,
            format!("finished: {reason}"),
        ));
        // The evidence as judged: `simctl report --run-dir` re-judges this very state.
        let Some(run) = self.run.as_mut() else { return };
        let stats = run.checkpoint_stats;
        if stats.count > 0 {
            run.events.push(RunEvent::new(
                EventKind::Checkpoint,
                format!(
                    "checkpoints: {} written, last {} bytes, slowest {} ms",
                    stats.count,
                    stats.last_bytes,
                    stats.slowest.as_millis()
                ),
            ));
        }
        let fallback = (run.tracker.snapshot(now_us()), run.id.clone());
        // The anomalies behind the verdict, with partition and sequence, in the event log.
        for anomaly in &fallback.0.anomalies {
            let name = |w: Option<WorkerRef>| {
                w.and_then(|w| run.worker_names.get(w.0 as usize).cloned())
                    .unwrap_or_default()
            };
            run.events.push(RunEvent::new(
                EventKind::Anomaly,
                format!(
                    "anomaly {:?}: partition {} seq {} {} {}",
                    anomaly.kind,
                    anomaly.partition,
                    anomaly.seq,
                    name(anomaly.worker),
                    name(anomaly.other_worker)
                ),
            ));
        }
        run.faults.prepare_checkpoint();
        let run: &ActiveRun = run;
        let state = checkpoint::RunCheckpoint::capture(run, Some(reason));
        // Judged from the very bytes written as `final.json`: `simctl report --run-dir`
        // reads the same record of the same file with the same function.
        let body = serde_json::to_vec(&state).map_err(|e| e.to_string());
        let summary = body
            .as_deref()
            .map_err(Clone::clone)
            .and_then(|body| {
                RunRecord::from_json(body)
                    .and_then(|record| record.summarize())
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|error| {
                // Cannot happen short of a bug: the state was exported just now.
                warn!(%error, "judging the exported state failed");
                RunSummary::bare(
                    fallback.1.clone(),
                    Judgement::new(vec![Failure::Internal { error }]),
                    reason,
                    fallback.0.clone(),
                )
            });
        info!(run = %run.id, outcome = ?summary.judgement.outcome, "run finished");
        let report = proto::v1::RunReport::from(&summary);
        let files = match &body {
            Ok(body) => run.dir.write_final(body),
            Err(error) => {
                warn!(%error, "final state not serializable");
                Ok(())
            }
        }
        .and_then(|()| run.dir.write_file("report.txt", report.text.as_bytes()))
        .and_then(|()| {
            run.dir
                .write_file("report.junit.xml", report.junit.as_bytes())
        })
        // Last: its presence marks the run finished (not resumable).
        .and_then(|()| run.dir.write_file("report.json", report.json.as_bytes()));
        if let Err(error) = files {
            warn!(run = %run.id, %error, "run directory incomplete");
        }
        // The final state is durable: agents may drop everything the run applied.
        for (agent, (boot_id, number)) in &run.applied {
            self.registry.release(agent, *boot_id, *number);
        }
        // A failed run keeps its processes' logs (they arrive as ChildLog reports, written
        // to logs/ in the run directory); then every process stops.
        let failed = summary.judgement.outcome != Outcome::Pass;
        for agent in &agents {
            if failed {
                let collect = proto::v1::CollectLogs {
                    max_bytes_per_process: CHILD_LOG_TAIL,
                };
                self.registry
                    .send(agent, coordinator_message::Body::CollectLogs(collect))
                    .await;
            }
            self.registry
                .send(
                    agent,
                    coordinator_message::Body::Shutdown(proto::v1::Shutdown {}),
                )
                .await;
        }
        self.log_events();
        self.publish_status();
        self.status_tx
            .send_modify(|status| status.verdict = report.verdict);
        self.report_tx.send_replace(Some(report));
    }
}

impl Engine {
    /// The managed NATS cluster the daemon was pointed at, if any (a cluster that cannot be
    /// opened is logged: its `nats_server_kill` faults are then skipped, saying why).
    fn open_nats_cluster(&self) -> Option<nats_cluster::NatsCluster> {
        let dir = self.nats_cluster_dir.as_ref()?;
        match nats_cluster::NatsCluster::open(dir) {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                warn!(%error, "managed NATS cluster not usable");
                None
            }
        }
    }
}

/// Report batches of one agent not yet covered by a checkpoint that trigger one before the
/// interval is up (a batch holds up to 2000 reports; agents stop reading at 512 MiB).
const CHECKPOINT_AFTER_BATCHES: u64 = 1024;

/// How much of each child's log a failed run keeps.
const CHILD_LOG_TAIL: u64 = 256 * 1024;

/// Write a collected child log to `logs/<agent>-<process>.log` in the run directory.
fn save_child_log(run: &ActiveRun, agent: &str, log: &proto::v1::ChildLog) {
    let safe = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let name = format!("logs/{}-{}.log", safe(agent), safe(&log.process));
    let mut text = String::new();
    if log.truncated {
        text.push_str("[... earlier output not collected ...]\n");
    }
    text.push_str(&log.tail);
    let written = std::fs::create_dir_all(run.dir.root().join("logs"))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            run.dir
                .write_file(&name, text.as_bytes())
                .map_err(|e| e.to_string())
        });
    if let Err(error) = written {
        warn!(run = %run.id, %error, "child log not saved");
    }
}

/// The tracker's settings for `config`.
/// After a resume, loss detection waits at least this long once every agent is back (their
/// resent batches arrive in the first moments of a session)…
const RESUME_SETTLE: Duration = Duration::from_secs(5);
/// …and never longer than this.
const RESUME_HOLD_MAX: Duration = Duration::from_secs(60);
