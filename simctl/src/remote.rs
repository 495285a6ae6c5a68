//! The commands that drive a running coordinator over gRPC (`Control` in `sim.v1`): start,
//! status, watch, stop, report, agents, chaos. A request the coordinator refuses as invalid
//! is bad input (exit 2); one it cannot answer is an infrastructure error (exit 3).

use std::path::PathBuf;
use std::time::Duration;

use proto::v1::control_client::ControlClient;
use proto::v1::{
    AgentsRequest, InjectRequest, ReportRequest, StartRequest, StatusRequest, StopRequest,
};
use tonic::transport::Channel;

use crate::cli::{ChaosArgs, ReportFiles, StartArgs};
use crate::exit::{Exit, ExitError, bad_input, infrastructure};
use crate::{config, progress, report};

/// `simctl start`: start (or resume) a run; prints its id.
pub async fn start(coordinator: &Coordinator, args: StartArgs) -> Result<Exit, ExitError> {
    let (text, _) = config::read(&args.input.config)?;
    let mut client = connect(coordinator).await?;
    let resume = args.resume.then(|| args.run_dir.unwrap_or_default());
    let run_id = request_start(&mut client, text, args.input.duration, args.seed, resume).await?;
    println!("started {run_id}");
    announce_metrics(&mut client, &coordinator.url).await;
    Ok(Exit::Pass)
}

/// `simctl status`: one line.
pub async fn status(coordinator: &Coordinator) -> Result<Exit, ExitError> {
    let status = connect(coordinator)
        .await?
        .status(StatusRequest {})
        .await
        .map_err(failed)?
        .into_inner();
    println!("{}", progress::status_line(&status));
    Ok(Exit::Pass)
}

/// `simctl watch`: follow the run until it finishes.
pub async fn watch(coordinator: &Coordinator) -> Result<Exit, ExitError> {
    progress::follow(&mut connect(coordinator).await?).await?;
    Ok(Exit::Pass)
}

/// `simctl stop`: the run drains and gives its verdict.
pub async fn stop(coordinator: &Coordinator) -> Result<Exit, ExitError> {
    connect(coordinator)
        .await?
        .stop(StopRequest {})
        .await
        .map_err(failed)?;
    println!("stopping: the run drains and gives its verdict");
    Ok(Exit::Pass)
}

/// `simctl report`: the last finished run's report; the exit is its verdict.
pub async fn report(coordinator: &Coordinator, files: &ReportFiles) -> Result<Exit, ExitError> {
    let run_report = connect(coordinator)
        .await?
        .report(ReportRequest {})
        .await
        .map_err(failed)?
        .into_inner();
    report::deliver(&run_report, files)
}

/// `simctl agents`: one line per agent.
pub async fn agents(coordinator: &Coordinator) -> Result<Exit, ExitError> {
    let agents = connect(coordinator)
        .await?
        .agents(AgentsRequest {})
        .await
        .map_err(failed)?
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
pub async fn chaos(coordinator: &Coordinator, args: ChaosArgs) -> Result<Exit, ExitError> {
    let mut client = connect(coordinator).await?;
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

/// Where the coordinator is, and how simctl proves who it is.
#[derive(Debug, Clone)]
pub struct Coordinator {
    /// Its URL.
    pub url: String,
    /// simctl's TLS material (control role), for https://.
    pub tls: Option<fleet_tls::Material>,
    /// Plaintext to a non-loopback host allowed.
    pub insecure: bool,
}

impl Coordinator {
    /// A coordinator on loopback, plaintext (the one `simctl run` starts).
    pub fn local(url: String) -> Self {
        Self {
            url,
            tls: None,
            insecure: false,
        }
    }
}

/// A client of `coordinator`. TLS refusals (its certificate not the lab's, ours refused,
/// a URL that does not fit the certificates given) are bad input: retrying cannot help.
pub async fn connect(coordinator: &Coordinator) -> Result<ControlClient<Channel>, ExitError> {
    let endpoint = fleet_tls::endpoint(
        &coordinator.url,
        coordinator.tls.as_ref(),
        coordinator.insecure,
    )
    .map_err(|error| bad_input(anyhow::Error::new(error)))?;
    match endpoint.connect().await {
        Ok(channel) if coordinator.tls.is_none() => Ok(ControlClient::new(channel)),
        Ok(channel) => {
            // Under TLS 1.3 the coordinator judges our certificate after our half of the
            // handshake: a first call proves we were admitted, and a connection closed under
            // it is a refusal (bad input), not a coordinator that went away.
            let mut client = ControlClient::new(channel);
            match client.status(StatusRequest {}).await {
                Ok(_) => Ok(client),
                Err(status) => {
                    let refusal = fleet_tls::refused_after_handshake(&status);
                    Err(match refusal {
                        Some(detail) => bad_input(anyhow::anyhow!(
                            "the coordinator at {} refused simctl: {detail}",
                            coordinator.url
                        )),
                        None => failed(status),
                    })
                }
            }
        }
        Err(error) => {
            let refusal = fleet_tls::tls_failure(&error);
            let error = anyhow::Error::new(error).context(format!(
                "connecting to the coordinator at {}",
                coordinator.url
            ));
            Err(match refusal {
                Some(detail) => bad_input(error.context(detail)),
                None => infrastructure(error),
            })
        }
    }
}

/// A failed call: refused for our certificate or role (bad input, exit 2), or not answered
/// (infrastructure, exit 3).
fn failed(status: tonic::Status) -> ExitError {
    let refusal = fleet_tls::tls_failure(&status).or_else(|| {
        matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        )
        .then(|| status.message().to_string())
    });
    match refusal {
        Some(detail) => bad_input(anyhow::anyhow!("the coordinator refused simctl: {detail}")),
        None => infrastructure(status),
    }
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
    if status.code() == tonic::Code::PermissionDenied || fleet_tls::tls_failure(&status).is_some() {
        failed(status)
    } else if status.code() == tonic::Code::InvalidArgument {
        bad_input(anyhow::anyhow!("{}", status.message()))
    } else {
        infrastructure(anyhow::anyhow!("{doing}: {}", status.message()))
    }
}

/// Milliseconds on the wire, where 0 means "not given".
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
