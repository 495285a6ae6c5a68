//! `simctl run`: a whole simulation on this machine — the managed nats-server(s), a
//! coordinator and one agent as processes ([`LocalFleet`]), live progress, the report, and
//! the verdict as exit code. Ctrl-C stops the run early; it still drains for a verdict.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::v1::control_client::ControlClient;
use proto::v1::{AgentsRequest, ReportRequest, StopRequest};
use tonic::transport::Channel;

use crate::cli::RunArgs;
use crate::exit::{Exit, ExitError, infrastructure};
use crate::managed::LocalFleet;
use crate::{config, progress, remote, report};

/// How long the local agent may take to connect to the coordinator.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `simctl run`.
pub async fn run(args: RunArgs) -> Result<Exit, ExitError> {
    // Everything about the input is checked before anything starts (the flags by clap).
    let (config_yaml, config) = config::read(&args.input.config)?;
    let dir = create_run_dir(args.run_dir.clone())?;
    let fleet = LocalFleet::start(&dir, &config.nats)
        .await
        .map_err(infrastructure)?;
    eprintln!(
        "parti-sim: nats {}, coordinator {}, logs in {}",
        fleet.nats_url,
        fleet.endpoint,
        dir.display()
    );
    let result = drive(&fleet.endpoint, config_yaml, &args).await;
    fleet.stop().await;
    result
}

/// The directory for the processes' logs: `--run-dir`, else `runs/<unix seconds>`.
fn create_run_dir(asked: Option<PathBuf>) -> Result<PathBuf, ExitError> {
    let dir = asked.unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("runs/{stamp}"))
    });
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {}", dir.display()))
        .map_err(infrastructure)?;
    Ok(dir)
}

/// Start the run on the local coordinator, follow it, deliver its report.
async fn drive(endpoint: &str, config_yaml: String, args: &RunArgs) -> Result<Exit, ExitError> {
    let mut client = remote::connect(&remote::Coordinator::local(endpoint.to_string())).await?;
    wait_for_agent(&mut client).await?;
    let run_id = remote::request_start(
        &mut client,
        config_yaml,
        args.input.duration,
        args.seed,
        None,
    )
    .await?;
    eprintln!("parti-sim: {run_id} started (run directory runs/{run_id})");
    remote::announce_metrics(&mut client, endpoint).await;
    stop_on_interrupt(client.clone());
    progress::follow(&mut client).await?;
    let run_report = client
        .report(ReportRequest {})
        .await
        .map_err(infrastructure)?
        .into_inner();
    report::deliver(&run_report, &args.files)
}

/// Wait until the coordinator knows a connected agent: a run started before would find no
/// host to place its processes on.
async fn wait_for_agent(client: &mut ControlClient<Channel>) -> Result<(), ExitError> {
    let deadline = Instant::now() + AGENT_CONNECT_TIMEOUT;
    loop {
        let agents = client
            .agents(AgentsRequest {})
            .await
            .map_err(infrastructure)?
            .into_inner();
        if agents.agents.iter().any(|agent| agent.connected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(infrastructure(anyhow::anyhow!(
                "the local agent did not connect within {}s",
                AGENT_CONNECT_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// On Ctrl-C, ask the coordinator to stop the run: it drains and still gives a verdict,
/// which `simctl run` then reports as usual.
fn stop_on_interrupt(mut client: ControlClient<Channel>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("parti-sim: interrupted; draining for a verdict");
            let _ = client.stop(StopRequest {}).await;
        }
    });
}
