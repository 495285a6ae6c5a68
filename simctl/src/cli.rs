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
    /// Coordinator endpoint (for every command but `run` and `config`): http:// on
    /// loopback, https:// with the lab's certificates elsewhere.
    #[arg(
        long,
        global = true,
        env = "SIMCTL_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    pub coordinator: String,
    /// The lab CA's certificate (PEM) for an https:// coordinator (see `simctl certs`).
    #[arg(long, global = true, env = "SIMCTL_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// simctl's certificate (PEM), issued for the control role.
    #[arg(long, global = true, env = "SIMCTL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true, env = "SIMCTL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Allow plaintext (http://) to a coordinator that is not on loopback.
    #[arg(long, global = true)]
    pub insecure: bool,
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
    /// Create the lab's CA and certificates for mutual TLS (docs/SECURITY.md).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

/// `simctl certs`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// A new CA in DIR, with the coordinator's, simctl's and each agent's certificate.
    /// Refuses a DIR that already holds a CA.
    Init {
        /// Where the files go (ca.pem, ca.key, coordinator.*, control.*, agent-NAME.*).
        #[arg(long)]
        dir: PathBuf,
        /// The coordinator's host names or addresses, as agents and simctl will reach it
        /// (comma-separated or repeated).
        #[arg(long = "coordinator-host", value_delimiter = ',', required = true)]
        coordinator_hosts: Vec<String>,
        /// Agent names (comma-separated or repeated): one certificate each.
        #[arg(long = "agent", value_delimiter = ',')]
        agents: Vec<String>,
        /// Validity of the certificates in days, at most 3650 (the CA's is ten times longer).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// One more certificate from the CA in DIR: a new agent, or a rotation (--replace).
    Issue {
        /// The lab's directory (holds ca.pem and ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// What for.
        #[command(flatten)]
        leaf: LeafArgs,
        /// Validity in days, at most 3650.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Overwrite an existing certificate and key (rotation).
        #[arg(long)]
        replace: bool,
    },
}

/// Which certificate `certs issue` makes: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct LeafArgs {
    /// An agent's, by name.
    #[arg(long)]
    pub agent: Option<String>,
    /// The coordinator's, for these host names or addresses (comma-separated).
    #[arg(long = "coordinator-host", value_delimiter = ',')]
    pub coordinator_hosts: Vec<String>,
    /// simctl's.
    #[arg(long)]
    pub control: bool,
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
