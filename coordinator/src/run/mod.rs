//! The run engine: one actor owning the current run — placement, tracking, phases, verdict.
//!
//! Phases: `starting` (stream ready, processes spawned) → `running` (until the duration) →
//! `draining` (producers stopped with SIGTERM; wait until everything sent was received, or
//! the drain timeout) → `finished` (verdict). A run whose messages stop flowing fails with
//! a stall instead of waiting forever; a run that loses all its agents fails as an
//! infrastructure error.
//!
//! Layout: this module holds the engine loop, the drain and status; `state` the run's
//! state (what a checkpoint holds); `tick` the periodic step, phase by phase; `start`,
//! `ingest` (agents' report batches, exits) and `finish` (the verdict written out) the rest
//! of a run's life; `ground_truth` the stream read once the producers stopped; `startup` the startup gate; `faults` the chaos; `checkpoint` writing and resuming; `clock` run time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::{RunReport, RunStatus, Signal, SignalProcess, Verdict, coordinator_message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::info;

mod checkpoint;
mod clock;
mod clocks;
mod faults;
mod finish;
mod ground_truth;
mod ingest;
mod metrics;
mod replay;
mod silence;
mod start;
mod startup;
mod state;
mod tick;
mod traces;

pub use checkpoint::CHECKPOINT_FORMAT;
pub use faults::InjectOptions;
pub use state::{Phase, WorkerView};

use clock::RunClock;
use state::RunState;

use crate::agents::{AgentRegistry, IngestBatch, now_us};
use sim_core::chaos::FaultOutcome;
use sim_core::config::{ChaosEvent, Config};
use sim_core::events::{EventKind, RunEvent};
use sim_core::rundir::RunDir;
use sim_core::tracker::Tracker;

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

/// A spawn command for run `run_id`: the agent stamps the child's reports with it, and stops
/// every child of another run before it starts this one.
fn spawn_for(run_id: &str, spawn: proto::v1::Spawn) -> coordinator_message::Body {
    coordinator_message::Body::Spawn(proto::v1::Spawn {
        run_id: run_id.to_string(),
        ..spawn
    })
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

/// A run: its state, the tracker and clock beside it, its I/O and this process's
/// bookkeeping (see `state` for why these are apart).
struct ActiveRun {
    /// Everything a checkpoint holds.
    state: RunState,
    /// The message books (checkpointed in their own versioned form).
    tracker: Tracker,
    /// Run time (checkpointed as run time and wall clock at writing).
    clock: RunClock,
    io: RunIo,
    local: Local,
}

/// What a run uses but does not own as state: rebuilt on resume, never checkpointed.
struct RunIo {
    /// The run's KV bucket (partition map).
    sim_kv: async_nats::jetstream::kv::Store,
    /// parti's assignment documents, as the watch delivers them.
    assignments: mpsc::Receiver<crate::assignment_log::Version>,
    /// Where the run's files go.
    dir: RunDir,
    /// The managed NATS cluster, when the daemon was given one (`nats_server_kill`).
    nats_cluster: Option<nats_cluster::NatsCluster>,
    /// The run's span exporter, when its config traces (`traces`).
    traces: Option<telemetry::Traces>,
    /// The run's metric pusher, when its config pushes (`telemetry.metrics`).
    metrics_push: Option<crate::metrics::otlp::Pusher>,
}

/// This coordinator process's bookkeeping of the run: not checkpointed, starting afresh in
/// a resumed process.
struct Local {
    /// The tracker's progress marker and when it last moved (a resumed run's stall clock
    /// restarts).
    progress: (u64, Instant),
    /// Checkpoints written so far (the next file's generation is this + 1) and when the
    /// last one was written.
    checkpoints: (u64, Instant),
    /// Events already appended to `events.log`.
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
    /// The duration passed while a recovery was measured, and the event saying so is out.
    overtime_noted: bool,
    /// When the coordinator samples its own resources next (the leak gate).
    next_resource_sample: Instant,
    /// Partition → the agent of its producer, whose clock its publish times are on.
    publishers: std::collections::HashMap<u32, String>,
    /// Each agent's process (boot id) as of the last tick: a change is a restart
    /// (`replay::watch_boots`).
    boots: BTreeMap<String, u64>,
    /// Since when no agent has been connected (`tick::end_conditions`).
    agentless_since: Option<Instant>,
    /// Received→processed time of every processed report, for the metrics.
    processing: crate::metrics::exposition::Buckets,
    /// Anomaly spans sent (and, past the cap, not sent) so far.
    anomaly_spans: u64,
    /// Fault records whose spans went out (a resumed coordinator sends them again, with the
    /// same ids).
    faults_traced: usize,
}

impl Local {
    /// A run started (or resumed) now; `gaps_seen`: the registry's gaps so far.
    fn new(gaps_seen: usize) -> Self {
        let now = Instant::now();
        Self {
            progress: (0, now),
            checkpoints: (0, now),
            events_logged: 0,
            resume_hold: None,
            checkpoint_stats: CheckpointStats::default(),
            gaps_seen,
            checkpointed: BTreeMap::new(),
            overtime_noted: false,
            next_resource_sample: now,
            publishers: std::collections::HashMap::new(),
            boots: BTreeMap::new(),
            agentless_since: None,
            processing: crate::metrics::exposition::Buckets::new(&metrics::PROCESSING_BOUNDS),
            anomaly_spans: 0,
            faults_traced: 0,
        }
    }
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
    nats_server_pid: Option<u32>,
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
        nats_server_pid,
        runs_dir,
        run: None,
        metrics: None,
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
    /// The managed single NATS server's pid, sampled for the leak gate.
    nats_server_pid: Option<u32>,
    /// Run directories go here.
    runs_dir: PathBuf,
    run: Option<ActiveRun>,
    /// The `/metrics` endpoint a run's config asked for (it outlives the run).
    metrics: Option<crate::metrics::Endpoint>,
    status_tx: watch::Sender<RunStatus>,
    report_tx: watch::Sender<Option<RunReport>>,
}

/// The next assignment document of the current run (pending while there is none).
async fn next_assignment(run: &mut Option<ActiveRun>) -> Option<crate::assignment_log::Version> {
    match run {
        Some(run) => run.io.assignments.recv().await,
        None => std::future::pending().await,
    }
}

/// The next scrape of the metrics endpoint (pending while there is none).
async fn next_scrape(
    endpoint: &mut Option<crate::metrics::Endpoint>,
) -> Option<crate::metrics::Scrape> {
    match endpoint {
        Some(endpoint) => endpoint.next().await,
        None => std::future::pending().await,
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
                        let running = self.run.as_ref().is_some_and(|run| run.state.phase == Phase::Running);
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
                Some(version) = next_assignment(&mut self.run) => {
                    if let Some(run) = self.run.as_mut() {
                        // A resumed run's watch replays the document the checkpoint saw.
                        if run.state.phase != Phase::Finished
                            && version.revision > run.state.assignment_log.last_kv_revision
                        {
                            run.state.assignment_log.last_kv_revision = version.revision;
                            run.state.assignment_log.observe(&version.doc);
                            let at_s = run.clock.now().as_secs_f64();
                            run.state.timeline.assignment(at_s, &version.doc);
                            run.state.authority.document(version.written_us, &version.doc);
                        }
                    }
                }
                Some(scrape) = next_scrape(&mut self.metrics) => {
                    let _ = scrape.send(self.render_metrics());
                }
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    async fn begin_drain(&mut self, why: DrainReason) {
        let Some(run) = self.run.as_mut() else { return };
        if run.state.phase != Phase::Running {
            return;
        }
        info!(run = %run.state.id, %why, "draining: stopping producers");
        // A producer crashed by chaos must not come back now: it would publish past the end.
        run.state.faults.cancel_producer_respawns();
        self.heal_all().await;
        let Some(run) = self.run.as_mut() else { return };
        run.state
            .events
            .push(RunEvent::new(EventKind::Phase, format!("drain: {why}")));
        run.state.phase = Phase::Draining {
            since: run.clock.now(),
        };
        // Write-ahead: a coordinator resumed after this point knows producers were stopped.
        self.write_checkpoint("drain").await;
        let Some(run) = self.run.as_mut() else { return };
        for (agent, process, _) in &run.state.placement.producers {
            let signal = SignalProcess {
                process: process.clone(),
                signal: Signal::Term as i32,
                fault: 0,
            };
            self.registry
                .send(agent, coordinator_message::Body::Signal(signal))
                .await;
        }
    }

    fn publish_status(&self) {
        let Some(run) = &self.run else { return };
        let snapshot = run.tracker.snapshot(now_us());
        let phase = run.state.phase.name();
        let alive: Vec<&WorkerView> = run.state.workers.values().filter(|w| w.alive).collect();
        self.status_tx.send_replace(RunStatus {
            run_id: run.state.id.clone(),
            phase: phase.into(),
            elapsed_ms: clock::millis(run.clock.shown()),
            duration_ms: u64::try_from(run.state.duration().as_millis()).unwrap_or(u64::MAX),
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
            metrics_port: self
                .metrics
                .as_ref()
                .map_or(0, |endpoint| u32::from(endpoint.addr().port())),
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
