//! `simctl`: run a simulation on this machine, or drive a coordinator.
//!
//! Exit codes: 0 PASS, 1 FAIL, 2 bad input, 3 infrastructure error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nats_cluster::NatsCluster;
use nats_cluster::managed;
use proto::v1::control_client::ControlClient;
use proto::v1::{
    AgentsRequest, InjectRequest, ReportRequest, RunReport, RunStatus, StartRequest, StatusRequest,
    StopRequest, Verdict, WatchRequest,
};
use sim_core::config::Config;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "simctl",
    version,
    about = "parti-sim: chaos and simulation harness for NATS JetStream partitioned consumers"
)]
struct Cli {
    /// Coordinator endpoint (for every command but `run` and `config`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:7400")]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole simulation on this machine: a managed nats-server, a coordinator and one
    /// agent, all as processes; live progress; the verdict as exit code.
    Run {
        /// Run configuration (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Override simulation.duration (e.g. 90s, 5m).
        #[arg(long)]
        duration: Option<String>,
        /// Seed for weights and placement (default: the config's, else random).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Directory for logs (default: runs/<timestamp>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Start a run on a running coordinator.
    Start {
        /// Run configuration (YAML).
        #[arg(long)]
        config: PathBuf,
        /// Override simulation.duration (e.g. 90s, 5m).
        #[arg(long)]
        duration: Option<String>,
        /// Seed for weights and placement.
        #[arg(long)]
        seed: Option<u64>,
        /// Resume instead: the newest unfinished run started with this config (and
        /// duration), from its latest checkpoint — same run id, same schedule.
        #[arg(long)]
        resume: bool,
        /// With --resume: this run directory (a path on the coordinator's host).
        #[arg(long, requires = "resume")]
        run_dir: Option<PathBuf>,
    },
    /// Show the current run's status once.
    Status,
    /// Follow the current run's progress until it finishes.
    Watch,
    /// Stop the current run early (it drains and gives a verdict).
    Stop,
    /// Print the last finished run's report; the exit code is its verdict.
    Report {
        /// Judge this run directory offline instead (its final state, or its latest
        /// checkpoint if it did not finish); no coordinator needed.
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// List the agents the coordinator knows.
    Agents,
    /// Inject one fault into the current run now (exit 1 if it was not injected).
    Chaos {
        /// The fault, as in `chaos.events` (worker_crash, leader_pause, nats_disconnect, ...).
        event: String,
        /// A process slot (worker-3, producer-0) or, for network faults and scale_up, an
        /// agent id; default: drawn at random.
        #[arg(long)]
        target: Option<String>,
        /// How long pauses and network faults last (e.g. 10s); default: the fault's own.
        #[arg(long)]
        duration: Option<String>,
    },
    /// Check or print configurations.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
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

/// An error with its exit code.
struct Exit(u8, anyhow::Error);

fn bad_input(error: impl Into<anyhow::Error>) -> Exit {
    Exit(2, error.into())
}

fn infrastructure(error: impl Into<anyhow::Error>) -> Exit {
    Exit(3, error.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Exit(code, error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8, Exit> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Validate { file },
        } => {
            let config = load(&file)?;
            println!(
                "{}: valid ({} partitions, {} producers, {} workers, {})",
                file.display(),
                config.partitions.count,
                config.producers.count,
                config.workers.count,
                sim_core::config::format_duration(config.simulation.duration)
            );
            Ok(0)
        }
        Command::Config {
            command: ConfigCommand::Dump { file },
        } => {
            print!("{}", load(&file)?.effective_yaml());
            Ok(0)
        }
        Command::Run {
            config,
            duration,
            seed,
            json,
            junit,
            run_dir,
        } => run_all_in_one(&config, duration, seed, json, junit, run_dir).await,
        Command::Start {
            config,
            duration,
            seed,
            resume,
            run_dir,
        } => {
            let (text, _) = read_config(&config)?;
            let mut client = connect(&cli.coordinator).await?;
            let resume = resume.then(|| run_dir.unwrap_or_default());
            let run_id = start(&mut client, text, duration.as_deref(), seed, resume).await?;
            println!("started {run_id}");
            Ok(0)
        }
        Command::Status => {
            let mut client = connect(&cli.coordinator).await?;
            let status = client
                .status(StatusRequest {})
                .await
                .map_err(infrastructure)?
                .into_inner();
            println!("{}", status_line(&status));
            Ok(0)
        }
        Command::Watch => {
            let mut client = connect(&cli.coordinator).await?;
            watch(&mut client).await?;
            Ok(0)
        }
        Command::Stop => {
            let mut client = connect(&cli.coordinator).await?;
            client.stop(StopRequest {}).await.map_err(infrastructure)?;
            println!("stopping: the run drains and gives its verdict");
            Ok(0)
        }
        Command::Report {
            run_dir: Some(run_dir),
            json,
            junit,
        } => {
            let report = offline_report(&run_dir)?;
            finish(&report, json.as_deref(), junit.as_deref())
        }
        Command::Report {
            run_dir: None,
            json,
            junit,
        } => {
            let mut client = connect(&cli.coordinator).await?;
            let report = client
                .report(ReportRequest {})
                .await
                .map_err(infrastructure)?
                .into_inner();
            finish(&report, json.as_deref(), junit.as_deref())
        }
        Command::Chaos {
            event,
            target,
            duration,
        } => {
            let duration_ms = parse_duration(duration.as_deref())?;
            let mut client = connect(&cli.coordinator).await?;
            let response = client
                .inject(InjectRequest {
                    event: event.clone(),
                    target: target.unwrap_or_default(),
                    duration_ms,
                })
                .await
                .map_err(|status| {
                    if status.code() == tonic::Code::InvalidArgument {
                        bad_input(anyhow::anyhow!("{}", status.message()))
                    } else {
                        infrastructure(status)
                    }
                })?
                .into_inner();
            println!("{event} {}: {}", response.target, response.outcome);
            Ok(if response.injected { 0 } else { 1 })
        }
        Command::Agents => {
            let mut client = connect(&cli.coordinator).await?;
            let agents = client
                .agents(AgentsRequest {})
                .await
                .map_err(infrastructure)?
                .into_inner();
            for agent in agents.agents {
                println!(
                    "{:<16} {:<20} {:<12} {} processes",
                    agent.agent_id,
                    agent.hostname,
                    if agent.connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    agent.processes
                );
            }
            Ok(0)
        }
    }
}

fn read_config(path: &Path) -> Result<(String, Config), Exit> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(bad_input)?;
    let config = Config::from_yaml_str(&text)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", path.display())))?;
    Ok((text, config))
}

fn load(path: &Path) -> Result<Config, Exit> {
    read_config(path).map(|(_, config)| config)
}

fn parse_duration(text: Option<&str>) -> Result<u64, Exit> {
    match text {
        None => Ok(0),
        Some(text) => sim_core::config::parse_duration(text)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| bad_input(anyhow::anyhow!("--duration {text:?}: {e}"))),
    }
}

async fn connect(endpoint: &str) -> Result<ControlClient<Channel>, Exit> {
    ControlClient::connect(endpoint.to_string())
        .await
        .with_context(|| format!("connecting to the coordinator at {endpoint}"))
        .map_err(infrastructure)
}

async fn start(
    client: &mut ControlClient<Channel>,
    config_yaml: String,
    duration: Option<&str>,
    seed: Option<u64>,
    resume: Option<PathBuf>,
) -> Result<String, Exit> {
    let request = StartRequest {
        config_yaml,
        duration_ms: parse_duration(duration)?,
        seed,
        resume: resume.is_some(),
        run_dir: resume
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    match client.start(request).await {
        Ok(response) => Ok(response.into_inner().run_id),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            Err(bad_input(anyhow::anyhow!("{}", status.message())))
        }
        Err(status) => Err(infrastructure(anyhow::anyhow!(
            "starting the run: {}",
            status.message()
        ))),
    }
}

fn status_line(status: &RunStatus) -> String {
    format!(
        "{} {} {:>4}s/{}s  {}",
        status.run_id,
        status.phase,
        status.elapsed_ms / 1000,
        status.duration_ms / 1000,
        counters(status)
    )
}

/// The counters shown by `status`, `watch` and the progress bar.
fn counters(status: &RunStatus) -> String {
    let leader = if status.leader.is_empty() {
        "-"
    } else {
        &status.leader
    };
    format!(
        "sent {}  received {}  in-flight {}  lost {}  dup {}  workers {}  leader {leader}",
        status.sent,
        status.received,
        status.in_flight,
        status.lost,
        status.duplicates,
        status.workers
    )
}

/// Follow progress: a bar on a terminal, a plain line every 5 s otherwise.
async fn watch(client: &mut ControlClient<Channel>) -> Result<(), Exit> {
    let mut stream = client
        .watch(WatchRequest {})
        .await
        .map_err(infrastructure)?
        .into_inner();
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last_line = std::time::Instant::now() - Duration::from_secs(10);
    while let Some(status) = stream.message().await.map_err(infrastructure)? {
        match &bar {
            Some(bar) => {
                bar.set_length(status.duration_ms / 1000);
                bar.set_position((status.elapsed_ms / 1000).min(status.duration_ms / 1000));
                bar.set_message(format!("{} {}", status.phase, counters(&status)));
            }
            None => {
                if last_line.elapsed() >= Duration::from_secs(5) || status.phase == "finished" {
                    eprintln!("{}", status_line(&status));
                    last_line = std::time::Instant::now();
                }
            }
        }
        if status.phase == "finished" {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

/// Judge a run directory offline: its final state, or its latest checkpoint.
fn offline_report(dir: &Path) -> Result<RunReport, Exit> {
    use coordinator::run::{RunCheckpoint, summarize};
    use sim_core::rundir::RunDir;
    let config = load(&dir.join("config.yaml"))?;
    let run = RunDir::open(dir, &config.checkpointing.path);
    let (body, source) = match run.read_final() {
        Ok(body) => (body, "final state".to_string()),
        Err(final_error) => match run.latest_checkpoint() {
            Ok((generation, body)) => (
                body,
                format!(
                    "checkpoint {generation} (the run did not finish; messages in flight at that \
                     point are not judged lost)"
                ),
            ),
            Err(error) => {
                return Err(bad_input(anyhow::anyhow!(
                    "{}: no final state ({final_error}) and no checkpoint ({error})",
                    dir.display()
                )));
            }
        },
    };
    let state = RunCheckpoint::from_json(&body)
        .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", dir.display())))?;
    let summary = summarize(&state).map_err(|e| bad_input(anyhow::anyhow!("{e}")))?;
    let report = proto::v1::RunReport::from(&summary);
    eprintln!("parti-sim: judged {} from its {source}", dir.display());
    // The verdict recorded when the run finished, for comparison.
    if let Ok(text) = std::fs::read_to_string(dir.join("report.json")) {
        let recorded = sim_core::report::recorded_outcome(&text);
        let now = summary.judgement.outcome;
        match recorded {
            Some(recorded) if recorded == now => {
                eprintln!("parti-sim: same verdict as recorded ({recorded})");
            }
            recorded => {
                eprintln!("parti-sim: WARNING: recorded verdict {recorded:?}, re-judged {now:?}")
            }
        }
    }
    Ok(report)
}

fn finish(report: &RunReport, json: Option<&Path>, junit: Option<&Path>) -> Result<u8, Exit> {
    print!("{}", report.text);
    if let Some(path) = json {
        std::fs::write(path, &report.json)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(infrastructure)?;
    }
    if let Some(path) = junit {
        std::fs::write(path, &report.junit)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(infrastructure)?;
    }
    Ok(if report.infrastructure {
        3
    } else if report.verdict == Verdict::Pass as i32 {
        0
    } else {
        1
    })
}

async fn run_all_in_one(
    config_path: &Path,
    duration: Option<String>,
    seed: Option<u64>,
    json: Option<PathBuf>,
    junit: Option<PathBuf>,
    run_dir: Option<PathBuf>,
) -> Result<u8, Exit> {
    // Everything about the input is checked before anything starts.
    let (text, config) = read_config(config_path)?;
    parse_duration(duration.as_deref())?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = run_dir.unwrap_or_else(|| PathBuf::from(format!("runs/{stamp}")));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {}", dir.display()))
        .map_err(infrastructure)?;
    let mut nats = ManagedNats::None;
    let nats_url = match config.nats.managed_servers() {
        None => config.nats.url.clone(),
        // One server: the plain child process it has always been.
        Some(1) => {
            let (process, url) =
                managed::start_nats(&dir, &config.nats.jetstream).map_err(infrastructure)?;
            nats = ManagedNats::Server(process);
            url
        }
        Some(size) => {
            let cluster = NatsCluster::start(
                &dir.join("nats-cluster"),
                &config.nats.jetstream,
                size as usize,
            )
            .await
            .context("starting the NATS cluster")
            .map_err(infrastructure)?;
            let urls = cluster.urls();
            nats = ManagedNats::Cluster(cluster);
            urls
        }
    };
    let cluster_dir = match &nats {
        ManagedNats::Cluster(cluster) => Some(cluster.dir().to_path_buf()),
        _ => None,
    };
    let (mut coordinator, endpoint) =
        managed::start_coordinator(&dir, &nats_url, cluster_dir.as_deref())
            .map_err(infrastructure)?;
    let mut agent = managed::start_agent(&dir, &endpoint, "local").map_err(infrastructure)?;
    eprintln!(
        "parti-sim: nats {nats_url}, coordinator {endpoint}, logs in {}",
        dir.display()
    );
    let result = async {
        let mut client = connect(&endpoint).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let agents = client
                .agents(AgentsRequest {})
                .await
                .map_err(infrastructure)?
                .into_inner();
            if agents.agents.iter().any(|a| a.connected) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(infrastructure(anyhow::anyhow!(
                    "the local agent did not connect within 30s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let run_id = start(&mut client, text, duration.as_deref(), seed, None).await?;
        eprintln!("parti-sim: {run_id} started (run directory runs/{run_id})");
        {
            let mut stopper = client.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("parti-sim: interrupted; draining for a verdict");
                    let _ = stopper.stop(StopRequest {}).await;
                }
            });
        }
        watch(&mut client).await?;
        let report = client
            .report(ReportRequest {})
            .await
            .map_err(infrastructure)?
            .into_inner();
        finish(&report, json.as_deref(), junit.as_deref())
    }
    .await;
    agent.stop(Duration::from_secs(15));
    coordinator.stop(Duration::from_secs(5));
    match &mut nats {
        ManagedNats::None => {}
        ManagedNats::Server(process) => process.stop(Duration::from_secs(5)),
        ManagedNats::Cluster(cluster) => {
            if let Err(error) = cluster.stop_all(Duration::from_secs(5)) {
                eprintln!("parti-sim: stopping the NATS cluster: {error}");
            }
        }
    }
    result
}

/// The NATS servers `simctl run` started, if any.
enum ManagedNats {
    /// External servers: nothing to stop.
    None,
    /// `nats.cluster_size: 1`.
    Server(managed::ManagedProcess),
    /// `nats.cluster_size` 3 or 5.
    Cluster(NatsCluster),
}
