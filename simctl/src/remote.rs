//! The commands that drive a running coordinator over gRPC (`Control` in `sim.v1`): start,
//! status, watch, stop, report, agents, chaos. A request the coordinator refuses as invalid
//! is bad input (exit 2); one it cannot answer is an infrastructure error (exit 3).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use proto::v1::control_client::ControlClient;
use proto::v1::{
    AgentsRequest, InjectRequest, ReportRequest, StartRequest, StatusRequest, StopRequest,
};
use tonic::transport::Channel;

use crate::cli::{ChaosArgs, ReportFiles, StartArgs};
use crate::exit::{Exit, ExitError, bad_input, infrastructure};
use crate::{config, progress, report};

/// `simctl start`: start (or resume) a run; prints its id.
pub async fn start(endpoint: &str, args: StartArgs) -> Result<Exit, ExitError> {
    let (text, _) = config::read(&args.input.config)?;
    let mut client = connect(endpoint).await?;
    let resume = args.resume.then(|| args.run_dir.unwrap_or_default());
    let run_id = request_start(&mut client, text, args.input.duration, args.seed, resume).await?;
    println!("started {run_id}");
    announce_metrics(&mut client, endpoint).await;
    Ok(Exit::Pass)
}

/// `simctl status`: one line.
pub async fn status(endpoint: &str) -> Result<Exit, ExitError> {
    let status = connect(endpoint)
        .await?
        .status(StatusRequest {})
        .await
        .map_err(infrastructure)?
        .into_inner();
    println!("{}", progress::status_line(&status));
    Ok(Exit::Pass)
}

/// `simctl watch`: follow the run until it finishes.
pub async fn watch(endpoint: &str) -> Result<Exit, ExitError> {
    progress::follow(&mut connect(endpoint).await?).await?;
    Ok(Exit::Pass)
}

/// `simctl stop`: the run drains and gives its verdict.
pub async fn stop(endpoint: &str) -> Result<Exit, ExitError> {
    connect(endpoint)
        .await?
        .stop(StopRequest {})
        .await
        .map_err(infrastructure)?;
    println!("stopping: the run drains and gives its verdict");
    Ok(Exit::Pass)
}

/// `simctl report`: the last finished run's report; the exit is its verdict.
pub async fn report(endpoint: &str, files: &ReportFiles) -> Result<Exit, ExitError> {
    let run_report = connect(endpoint)
        .await?
        .report(ReportRequest {})
        .await
        .map_err(infrastructure)?
        .into_inner();
    report::deliver(&run_report, files)
}

/// `simctl agents`: one line per agent.
pub async fn agents(endpoint: &str) -> Result<Exit, ExitError> {
    let agents = connect(endpoint)
        .await?
        .agents(AgentsRequest {})
        .await
        .map_err(infrastructure)?
        .into_inner();
    for agent in agents.agents {
        let state = if agent.connected {
            "connected"
        } else {
            "disconnected"
        };
        println!(
            "{:<16} {:<20} {state:<12} {} processes",
            agent.agent_id, agent.hostname, agent.processes
        );
    }
    Ok(Exit::Pass)
}

/// `simctl chaos`: inject one fault now; [`Exit::Fail`] if it was not injected.
pub async fn chaos(endpoint: &str, args: ChaosArgs) -> Result<Exit, ExitError> {
    let mut client = connect(endpoint).await?;
    let request = InjectRequest {
        event: args.event.as_str().to_string(),
        target: args.target.unwrap_or_default(),
        duration_ms: args.duration.map_or(0, millis),
    };
    let response = client
        .inject(request)
        .await
        .map_err(|status| refused(status, "injecting the fault"))?
        .into_inner();
    println!("{} {}: {}", args.event, response.target, response.outcome);
    Ok(if response.injected {
        Exit::Pass
    } else {
        Exit::Fail
    })
}

/// A client of the coordinator at `endpoint`.
pub async fn connect(endpoint: &str) -> Result<ControlClient<Channel>, ExitError> {
    ControlClient::connect(endpoint.to_string())
        .await
        .with_context(|| format!("connecting to the coordinator at {endpoint}"))
        .map_err(infrastructure)
}

/// Ask the coordinator to start a run (or resume the one in `resume`, a directory on its
/// host; empty for the newest unfinished one); returns the run id.
pub async fn request_start(
    client: &mut ControlClient<Channel>,
    config_yaml: String,
    duration: Option<Duration>,
    seed: Option<u64>,
    resume: Option<PathBuf>,
) -> Result<String, ExitError> {
    let request = StartRequest {
        config_yaml,
        duration_ms: duration.map_or(0, millis),
        seed,
        resume: resume.is_some(),
        run_dir: resume
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let response = client
        .start(request)
        .await
        .map_err(|status| refused(status, "starting the run"))?;
    Ok(response.into_inner().run_id)
}

/// Say where the run's metrics are scraped, if its config enables them (on stderr: stdout
/// of `simctl start` is the run id, for scripts).
pub async fn announce_metrics(client: &mut ControlClient<Channel>, endpoint: &str) {
    let Ok(status) = client.status(StatusRequest {}).await else {
        return;
    };
    let port = status.into_inner().metrics_port;
    if port == 0 {
        return;
    }
    let host = endpoint
        .parse::<tonic::codegen::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_string))
        .unwrap_or_else(|| "<coordinator host>".into());
    eprintln!("parti-sim: metrics at http://{host}:{port}/metrics");
}

/// A refused request: invalid (the coordinator's message is the whole story) or not
/// answered (what we were doing, then why).
fn refused(status: tonic::Status, doing: &str) -> ExitError {
    if status.code() == tonic::Code::InvalidArgument {
        bad_input(anyhow::anyhow!("{}", status.message()))
    } else {
        infrastructure(anyhow::anyhow!("{doing}: {}", status.message()))
    }
}

/// Milliseconds on the wire, where 0 means "not given".
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
