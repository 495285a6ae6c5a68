//! The config structs: the plan's YAML schema, section by section, plus our extensions
//! (marked "extension"). Every struct rejects unknown keys, so a typo is an error instead
//! of a silently ignored setting.
//!
//! Required (no sensible default): `simulation.duration`, `partitions.count`,
//! `partitions.message_rate_per_partition` and `workers.count` — and therefore the
//! `simulation`, `partitions` and `workers` sections. Everything else has a default,
//! documented on its field.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bytes::ByteSize;
use super::duration::{Interval, human};
use super::raw::{RawCoordinator, RawNats};

/// The whole run configuration (see the module docs of `config` for loading).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run length, mode and seed.
    pub simulation: SimulationConfig,
    /// Partition count, rate and weights.
    pub partitions: PartitionsConfig,
    /// Producer processes and their rate variation.
    #[serde(default)]
    pub producers: ProducersConfig,
    /// Worker processes, assignment strategy, processing delay and fault knobs.
    pub workers: WorkersConfig,
    /// Verdict timing: validation window and timeouts.
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    /// Fault injection.
    #[serde(default)]
    pub chaos: ChaosConfig,
    /// The NATS server or cluster.
    #[serde(default)]
    pub nats: NatsConfig,
    /// Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Coordinator state snapshots.
    #[serde(default)]
    pub checkpointing: CheckpointConfig,
    /// Extension: traces over OTLP.
    #[serde(default)]
    pub telemetry: super::TelemetryConfig,
}

// === simulation ===

/// `simulation`: how long and in which mode to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationConfig {
    /// Run length (required), e.g. `12h`.
    #[serde(with = "human")]
    pub duration: Duration,
    /// Process mode (default `all-in-one`).
    #[serde(default)]
    pub mode: SimulationMode,
    /// Seed for weights, placement and the chaos schedule (extension). Absent: derived from
    /// the clock at run start by `Config::resolve_seed`, which writes it back so the
    /// config dump of a run reproduces it.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// `simulation.mode`: the plan's process modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimulationMode {
    /// Everything on this machine (`simctl run`).
    #[default]
    AllInOne,
    /// Producers only (kept from the plan; in this system agents run producers).
    Producer,
    /// Workers only (kept from the plan; in this system agents run workers).
    Worker,
    /// The coordinator only, driving remote agents.
    Coordinator,
}

// === partitions ===

/// `partitions`: how many, how fast, how heavy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsConfig {
    /// Number of partitions (required, > 0).
    pub count: u32,
    /// Messages per second published to each partition (required, > 0).
    pub message_rate_per_partition: f64,
    /// How weights are spread (default `uniform`).
    #[serde(default)]
    pub distribution: Distribution,
    /// Parameters of the weighted distributions.
    #[serde(default)]
    pub weights: WeightsConfig,
}

/// `partitions.distribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every partition has weight 1.
    #[default]
    Uniform,
    /// A few extreme partitions, the rest normal (see `ExponentialWeights`).
    Exponential,
}

/// `partitions.weights`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsConfig {
    /// Parameters for `distribution: exponential`.
    pub exponential: ExponentialWeights,
}

/// `partitions.weights.exponential`: `extreme_percent` of the partitions weigh
/// `extreme_weight`, the others `normal_weight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExponentialWeights {
    /// Fraction of extreme partitions, in (0, 1] (default 0.05).
    pub extreme_percent: f64,
    /// Weight of an extreme partition, ≥ 1 (default 100).
    pub extreme_weight: i64,
    /// Weight of a normal partition, ≥ 1 (default 1).
    pub normal_weight: i64,
}

impl Default for ExponentialWeights {
    fn default() -> Self {
        Self {
            extreme_percent: 0.05,
            extreme_weight: 100,
            normal_weight: 1,
        }
    }
}

// === producers ===

/// `producers`: the publishing processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducersConfig {
    /// Number of producer processes, > 0 and ≤ `partitions.count` (default 1).
    pub count: u32,
    /// Partitions per producer, as contiguous ranges (producer 0 gets 0..n, producer 1
    /// gets n..2n, …). Absent: ⌈partitions / producers⌉, filled in at load. The producers
    /// together must cover every partition; when the product is larger than
    /// `partitions.count`, the last producer gets fewer, but every producer must get at
    /// least one.
    pub partitions_per_producer: Option<u32>,
    /// Slow global swings of the publish rate.
    pub rate_variation: RateVariation,
    /// Self-test knobs (extension): harness-side mishaps the verdict must see through.
    pub faults: ProducerFaults,
}

impl Default for ProducersConfig {
    fn default() -> Self {
        Self {
            count: 1,
            partitions_per_producer: None,
            rate_variation: RateVariation::default(),
            faults: ProducerFaults::default(),
        }
    }
}

/// `producers.faults` (extension): what a producer does wrong on purpose, to test the
/// harness itself. All off by default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerFaults {
    /// At its graceful stop, publish one more message on each partition and exit without
    /// reporting it, as a producer killed between the PubAck and its `sent` report would:
    /// messages in the stream that no report announced. The stream read at the end must
    /// find them (processed: PASS; not processed: lost).
    pub unreported_tail: bool,
}

/// `producers.rate_variation`: the rate multiplier drifts between the bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateVariation {
    /// Whether the rate varies at all (default false).
    pub enabled: bool,
    /// How the multiplier is shared (default `global`).
    pub pattern: RatePattern,
    /// Lowest multiplier, > 0 (default 0.5).
    pub min_multiplier: f64,
    /// Highest multiplier, ≥ `min_multiplier` (default 2.0).
    pub max_multiplier: f64,
    /// Time to ramp to the next target multiplier, > 0 (default 5m).
    #[serde(with = "human")]
    pub ramp_interval: Duration,
}

impl Default for RateVariation {
    fn default() -> Self {
        Self {
            enabled: false,
            pattern: RatePattern::Global,
            min_multiplier: 0.5,
            max_multiplier: 2.0,
            ramp_interval: Duration::from_secs(300),
        }
    }
}

/// `producers.rate_variation.pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RatePattern {
    /// One multiplier for all partitions at any moment.
    #[default]
    Global,
}

// === workers ===

/// `workers`: the consuming processes running parti.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// Number of worker processes (required, > 0).
    pub count: u32,
    /// parti's assignment strategy (default `WeightedConsistentHash`).
    #[serde(default)]
    pub assignment_strategy: AssignmentStrategy,
    /// Strategy parameters (the plan left this untyped; typed here so typos fail).
    #[serde(default)]
    pub strategy_config: StrategyConfig,
    /// Simulated work per message.
    #[serde(default)]
    pub processing_delay: ProcessingDelay,
    /// Deliberate bugs, to prove the verdict can fail (extension; default all off).
    #[serde(default)]
    pub faults: WorkerFaults,
    /// Whether the workers promise order within a partition (extension; default true, as
    /// parti keeps a partition's order across handoffs and crashes): a message first
    /// processed after one of its successors fails the run. `false` for a consumer that
    /// promises no order: violations are then only counted (see docs/VERDICT.md, "order").
    #[serde(default = "promised")]
    pub ordered: bool,
}

/// `workers.ordered` unless set: parti promises order within a partition.
fn promised() -> bool {
    true
}

/// `workers.assignment_strategy`: parti's strategies, by the names parti uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum AssignmentStrategy {
    /// Consistent hashing with bounded load and spread extremes.
    #[default]
    WeightedConsistentHash,
    /// Plain consistent hashing (weights ignored).
    ConsistentHash,
    /// Partitions dealt out in order.
    RoundRobin,
}

/// `workers.strategy_config`: parameters of the hashing strategies (ignored by RoundRobin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrategyConfig {
    /// Ring positions per worker, ≥ 1 (default 150, parti's default).
    pub virtual_nodes: u32,
    /// Load cap as a multiple of the mean worker load, ≥ 1.15 (default 1.3).
    pub overload_threshold: f64,
    /// Weight multiple of the mean that makes a partition extreme, ≥ 1.5 (default 2.0).
    pub extreme_threshold: f64,
    /// Ring hash seed; 0 = parti's unseeded hash (default 0).
    pub hash_seed: u64,
}

impl StrategyConfig {
    /// Lowest `overload_threshold` parti accepts (it clamps lower values up; we reject them
    /// instead, so the config says what actually runs).
    pub const MIN_OVERLOAD_THRESHOLD: f64 = 1.15;
    /// Lowest `extreme_threshold` parti accepts (same reasoning).
    pub const MIN_EXTREME_THRESHOLD: f64 = 1.5;
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self {
            virtual_nodes: 150,
            overload_threshold: 1.3,
            extreme_threshold: 2.0,
            hash_seed: 0,
        }
    }
}

/// `workers.processing_delay`: each message takes a uniform random time in `min..=max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingDelay {
    /// Shortest processing time (default 10ms).
    #[serde(with = "human")]
    pub min: Duration,
    /// Longest processing time, ≥ `min` (default 100ms).
    #[serde(with = "human")]
    pub max: Duration,
}

impl Default for ProcessingDelay {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }
}

/// `workers.faults` (extension): bugs a worker commits on purpose, each of which must turn
/// the verdict to FAIL. All off by default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerFaults {
    /// Ack one message in N without processing it (lost); 0 = off.
    pub drop_and_ack_one_in: u32,
    /// Keep processing partitions after they were revoked (ownership violation).
    pub process_after_revoke: bool,
    /// Ack a message before processing it, then crash, after N messages; 0 = off.
    pub ack_then_crash_after: u32,
    /// Consume the way the Go library does (one durable per worker whose filter subjects
    /// are rewritten on reassignment, no fencing): loses the backlog of moved partitions.
    /// Proves the harness catches that class of bug.
    pub go_style_handoff: bool,
    /// Confirm every new assignment (the heartbeat says applied) but keep consuming what it
    /// had, as a worker whose assignment watcher silently stalled would; its processed
    /// reports carry assignment version 0 (a stalled watcher knows no version), so its own
    /// statuses cannot convict it and only the assignment document can.
    pub stalled_assignment_watch: bool,
    /// Wait this long after starting before joining (a worker slow to come up); 0 = off.
    #[serde(with = "human")]
    pub startup_delay: Duration,
    /// Keep this many KiB per processed message, never freed (a memory leak); 0 = off.
    pub leak_kib_per_message: u32,
    /// Refuse (nak) the messages of every partition taken over after the first assignment
    /// for this long after its first message (a new owner slow to get ready: the moved
    /// backlog waits, redelivered later); 0 = off.
    #[serde(with = "human")]
    pub takeover_stall: Duration,
}

// === coordinator ===

/// `coordinator`: how the verdict is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawCoordinator")]
pub struct CoordinatorConfig {
    /// How long a missing message may stay missing before it counts as lost (default 5m).
    #[serde(serialize_with = "human::serialize")]
    pub validation_window: Duration,
    /// Count redeliveries as failures too (extension; default false).
    pub strict_duplicates: bool,
    /// Longest allowed time from a fault until every partition is owned and consuming
    /// again (extension; default 60s, the plan's bound).
    #[serde(serialize_with = "human::serialize")]
    pub rebalance_timeout: Duration,
    /// No progress for this long while messages are in flight ⇒ FAIL (extension; default
    /// 30s).
    #[serde(serialize_with = "human::serialize")]
    pub stall_timeout: Duration,
    /// After producers stop, how long to wait for the last messages (extension; default:
    /// `validation_window` capped to 2m, see [`CoordinatorConfig::default_drain`]).
    #[serde(serialize_with = "human::serialize")]
    pub drain_timeout: Duration,
    /// Extension: the drain lasts at least this long even when everything sent has already
    /// been processed, so redeliveries and reports that arrive after the last message still
    /// count (default 0s: the run ends as soon as it has caught up). At most `drain_timeout`.
    #[serde(serialize_with = "human::serialize")]
    pub drain_settle: Duration,
    /// Extension: every worker must follow an assignment (parti state Stable, or leading)
    /// within this long of its start, and every partition must be owned within this long of
    /// the run's start ⇒ otherwise FAIL (`startup`; default 60s).
    #[serde(serialize_with = "human::serialize")]
    pub startup_timeout: Duration,
    /// Extension: after a fault's recovery, the messages its moved partitions held by then
    /// (their backlog) must all be processed within this long ⇒ otherwise FAIL
    /// (`catch_up`; default 60s).
    #[serde(serialize_with = "human::serialize")]
    pub catch_up_timeout: Duration,
    /// Extension: a process's RSS, open files or threads growing by more than this many
    /// percent from the end of warm-up to the end of the run (and by more than a floor:
    /// 64 MiB, 32 files, 16 threads) ⇒ FAIL (`resource_growth`; default 25).
    pub max_resource_growth: f64,
}

impl CoordinatorConfig {
    /// Upper bound of the default `drain_timeout`: waiting a full 10m window after the
    /// last publish would only make long runs end slowly.
    pub const MAX_DEFAULT_DRAIN: Duration = Duration::from_secs(120);

    /// The `drain_timeout` used when none is configured, for a given validation window.
    pub fn default_drain(validation_window: Duration) -> Duration {
        validation_window.min(Self::MAX_DEFAULT_DRAIN)
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        let validation_window = Duration::from_secs(300);
        Self {
            validation_window,
            strict_duplicates: false,
            rebalance_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            drain_timeout: Self::default_drain(validation_window),
            drain_settle: Duration::ZERO,
            startup_timeout: Duration::from_secs(60),
            catch_up_timeout: Duration::from_secs(60),
            max_resource_growth: 25.0,
        }
    }
}

// === chaos ===

/// `chaos`: which faults to inject, and how often.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    /// Whether to inject faults (default false).
    pub enabled: bool,
    /// Events to draw from; must be non-empty when enabled.
    pub events: Vec<ChaosEvent>,
    /// Time between events, e.g. `10-30m`; required when enabled.
    pub interval: Option<Interval>,
    /// Extension: fault-free time at the start of the run (the system settles first).
    #[serde(with = "human")]
    pub warmup: Duration,
    /// Extension: fault-free time before the drain (the system must run clean at the end).
    #[serde(with = "human")]
    pub cooldown: Duration,
}

/// A chaos event name (`chaos.events`). The plan's eight, then ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChaosEvent {
    /// SIGKILL a random worker.
    WorkerCrash,
    /// SIGTERM a worker, wait, respawn it in the same stable-id slot.
    WorkerRestart,
    /// Add workers.
    ScaleUp,
    /// Remove workers.
    ScaleDown,
    /// Add or remove partitions.
    PartitionChanges,
    /// Block NATS for one host for a while.
    NatsDisconnect,
    /// SIGKILL the current parti leader.
    LeaderFailure,
    /// SIGKILL a producer and respawn it.
    ProducerCrash,
    /// SIGSTOP a worker past its heartbeat TTL, then SIGCONT.
    WorkerPause,
    /// SIGSTOP the leader past its lease, then SIGCONT.
    LeaderPause,
    /// Packet loss / bandwidth limits towards NATS on one host.
    NetworkDegrade,
    /// Kill the NATS server (or one cluster node) and bring it back.
    NatsServerKill,
    /// SIGKILL an agent (its children die with it); it is restarted and replays its
    /// children's journals.
    AgentCrash,
}

impl ChaosEvent {
    /// Every event, in declaration order.
    pub const ALL: [ChaosEvent; 13] = [
        Self::WorkerCrash,
        Self::WorkerRestart,
        Self::ScaleUp,
        Self::ScaleDown,
        Self::PartitionChanges,
        Self::NatsDisconnect,
        Self::LeaderFailure,
        Self::ProducerCrash,
        Self::WorkerPause,
        Self::LeaderPause,
        Self::NetworkDegrade,
        Self::NatsServerKill,
        Self::AgentCrash,
    ];

    /// The name used in the YAML (`worker_crash`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkerCrash => "worker_crash",
            Self::WorkerRestart => "worker_restart",
            Self::ScaleUp => "scale_up",
            Self::ScaleDown => "scale_down",
            Self::PartitionChanges => "partition_changes",
            Self::NatsDisconnect => "nats_disconnect",
            Self::LeaderFailure => "leader_failure",
            Self::ProducerCrash => "producer_crash",
            Self::WorkerPause => "worker_pause",
            Self::LeaderPause => "leader_pause",
            Self::NetworkDegrade => "network_degrade",
            Self::NatsServerKill => "nats_server_kill",
            Self::AgentCrash => "agent_crash",
        }
    }
}

impl fmt::Display for ChaosEvent {
    /// Pads: reports align fault names in columns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl AssignmentStrategy {
    /// The name used in the YAML and by parti (`ConsistentHash`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WeightedConsistentHash => "WeightedConsistentHash",
            Self::ConsistentHash => "ConsistentHash",
            Self::RoundRobin => "RoundRobin",
        }
    }
}

impl fmt::Display for AssignmentStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === nats ===

/// `nats`: where the messages go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawNats")]
pub struct NatsConfig {
    /// Managed child server or an existing one (default `embedded`).
    pub mode: NatsMode,
    /// Server URL(s), comma-separated, each `nats://` or `tls://`. Required when external;
    /// when embedded, defaults to [`NatsConfig::DEFAULT_URL`] (the plan's value) and is
    /// ignored by `simctl run`, which connects to the servers it starts.
    pub url: String,
    /// Servers of the managed JetStream cluster (extension; embedded only): 1, 3 or 5,
    /// default 1. `None` when external: the size of someone else's cluster is not ours to
    /// set, so writing it there is an error. Each server gets the `jetstream` limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u32>,
    /// Replicas of the run's stream and of every KV bucket (the simulation's and parti's),
    /// 1..=5 (extension; default `cluster_size` when embedded, 1 when external). Embedded,
    /// at most `cluster_size`: JetStream places each replica on a different server.
    pub replicas: u32,
    /// JetStream stream name (extension; default `SIMULATION`).
    pub stream: String,
    /// Subjects are `{subject_prefix}.{partition}` (extension; default
    /// `simulation.partition`).
    pub subject_prefix: String,
    /// Limits for the managed server's JetStream.
    pub jetstream: JetStreamConfig,
}

impl NatsConfig {
    /// `nats.url` when embedded and not given.
    pub const DEFAULT_URL: &str = "nats://localhost:4222";
    /// `nats.cluster_size` values: odd, so that a majority survives a minority of failures
    /// (3 tolerates one server down, 5 two), and at most JetStream's replica limit.
    pub const CLUSTER_SIZES: [u32; 3] = [1, 3, 5];
    /// JetStream's largest replica count.
    pub const MAX_REPLICAS: u32 = 5;

    /// How many servers `simctl run` starts: `Some(cluster_size)` when embedded, `None`
    /// when the servers are external.
    pub fn managed_servers(&self) -> Option<u32> {
        match self.mode {
            NatsMode::Embedded => Some(self.cluster_size.unwrap_or(1)),
            NatsMode::External => None,
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            mode: NatsMode::Embedded,
            url: Self::DEFAULT_URL.into(),
            cluster_size: Some(1),
            replicas: 1,
            stream: "SIMULATION".into(),
            subject_prefix: "simulation.partition".into(),
            jetstream: JetStreamConfig::default(),
        }
    }
}

/// `nats.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsMode {
    /// A nats-server child process that the simulator starts and stops.
    #[default]
    Embedded,
    /// A server or cluster someone else runs, at `nats.url`.
    External,
}

/// `nats.jetstream`: storage limits of the managed server (ignored when external).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Memory store limit (default 1GB: enough for small runs on a laptop).
    pub max_memory: ByteSize,
    /// File store limit (default 10GB).
    pub max_file_storage: ByteSize,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            max_memory: ByteSize::gib(1),
            max_file_storage: ByteSize::gib(10),
        }
    }
}

// === metrics, checkpointing ===

/// `metrics`: the coordinator's Prometheus endpoint (docs/OBSERVABILITY.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus scrape endpoint.
    pub prometheus: PrometheusConfig,
    /// Per-partition series (`simulation_partition_*{partition}`) are exported for at most
    /// this many partitions, the lowest ids (default 100; 0: none). Each partition costs a
    /// few series in every scrape and every push: 1500 partitions would be 6000 series a
    /// scrape, which is what the aggregates exist to avoid.
    pub partition_series: u32,
}

/// Default of `metrics.partition_series`.
pub const DEFAULT_PARTITION_SERIES: u32 = 100;

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            prometheus: PrometheusConfig::default(),
            partition_series: DEFAULT_PARTITION_SERIES,
        }
    }
}

/// `metrics.prometheus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Serve `/metrics` on the coordinator's host, every interface (default false).
    pub enabled: bool,
    /// Port to serve on (default 9090, the plan's; 0: any free port, which simctl prints).
    /// A port that cannot be bound refuses the run (exit 3) before anything starts.
    pub port: u16,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 9090,
        }
    }
}

/// `checkpointing`: periodic snapshots of the coordinator's state, to resume after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write checkpoints (default false).
    pub enabled: bool,
    /// Time between checkpoints, > 0 (default 30m).
    #[serde(with = "human")]
    pub interval: Duration,
    /// Directory for checkpoint files (default `./checkpoints`).
    pub path: PathBuf,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(1800),
            path: PathBuf::from("./checkpoints"),
        }
    }
}
