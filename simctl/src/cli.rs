//! The command line: clap types only. Values are parsed here, so a bad flag (a duration, an
//! unknown chaos event) is refused by clap with exit 2 before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use sim_core::config::{ChaosEvent, parse_duration};

/// simctl's flags.
#[derive(Debug, Parser)]
#[command(
    name = "simctl",
    version,
    about = "parti-sim: chaos and simulation harness for NATS JetStream partitioned consumers"
)]
pub struct Cli {
    /// Coordinator endpoint (for every command but `run` and `config`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:7400")]
    pub coordinator: String,
    #[command(subcommand)]
    pub command: Command,
}

/// simctl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole simulation on this machine: a managed nats-server, a coordinator and one
    /// agent, all as processes; live progress; the verdict as exit code.
    Run(RunArgs),
    /// Start a run on a running coordinator.
    Start(StartArgs),
    /// Show the current run's status once.
    Status,
    /// Follow the current run's progress until it finishes.
    Watch,
    /// Stop the current run early (it drains and gives a verdict).
    Stop,
    /// Print the last finished run's report; the exit code is its verdict.
    Report(ReportArgs),
    /// List the agents the coordinator knows.
    Agents,
    /// Inject one fault into the current run now (exit 1 if it was not injected).
    Chaos(ChaosArgs),
    /// Name the trace of one message of a run (PARTITION:SEQ) and where to open it.
    Trace(TraceArgs),
    /// Check or print configurations.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// `simctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: RunInput,
    /// Seed for weights and placement (default: the config's, else random).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub files: ReportFiles,
    /// Directory for logs (default: `runs/<timestamp>`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// `simctl start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub input: RunInput,
    /// Seed for weights and placement.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Resume instead: the newest unfinished run started with this config (and
    /// duration), from its latest checkpoint — same run id, same schedule.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: this run directory (a path on the coordinator's host).
    #[arg(long, requires = "resume")]
    pub run_dir: Option<PathBuf>,
}

/// What `run` and `start` start: a configuration file and an optional duration override.
#[derive(Debug, Args)]
pub struct RunInput {
    /// Run configuration (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override simulation.duration (e.g. 90s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// `simctl report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Judge this run directory offline instead (its final state, or its latest
    /// checkpoint if it did not finish); no coordinator needed.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    #[command(flatten)]
    pub files: ReportFiles,
}

/// Where to write a report besides printing its text.
#[derive(Debug, Args)]
pub struct ReportFiles {
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write the report as a picture here: one self-contained HTML file (throughput and
    /// latency over time with every fault shaded, recoveries, partition ownership).
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// `simctl trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The message, as PARTITION:SEQ (as the report and the anomaly samples name it).
    pub message: crate::trace::MessageRef,
    /// The run directory (default: the newest under ./runs).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// `simctl chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// The fault, as in `chaos.events`.
    #[arg(value_parser = chaos_event())]
    pub event: ChaosEvent,
    /// A process slot (worker-3, producer-0), for network faults, agent_crash and scale_up an agent id,
    /// for partition_changes a partition to remove (partition-4); default: drawn at random.
    #[arg(long)]
    pub target: Option<String>,
    /// How long pauses and network faults last (e.g. 10s); default: the fault's own.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// `simctl config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (exit 2 and the field path if it is invalid).
    Validate {
        /// The file.
        file: PathBuf,
    },
    /// Print the effective configuration, defaults filled in.
    Dump {
        /// The file.
        file: PathBuf,
    },
}

/// Every chaos event by its config name, straight from [`ChaosEvent::ALL`], so `--help`
/// and the "possible values" of an unknown event always list exactly what is accepted.
fn chaos_event() -> impl TypedValueParser<Value = ChaosEvent> {
    PossibleValuesParser::new(ChaosEvent::ALL.map(ChaosEvent::as_str)).try_map(|name| {
        ChaosEvent::ALL
            .into_iter()
            .find(|event| event.as_str() == name)
            .ok_or("not a chaos event")
    })
}
