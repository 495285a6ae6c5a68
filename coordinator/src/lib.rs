//! The parti-sim coordinator: owns a run — validates the config, places producers and
//! workers on agents, tracks every message, and gives the verdict.
//!
//! Layout:
//! The offline half (config, tracker, ownership evidence, chaos schedule, run directory,
//! report) is the `sim-core` crate; managed nats-servers are the `nats-cluster` crate.
//!
//! - [`agents`]: connected agents and the `Agent` gRPC service (lossless report intake).
//! - [`run`]: the run engine (placement, phases, stall detection, verdict).
//! - [`placement`]: which process runs where, with which spec.
//! - [`stream`]: the JetStream stream of a run.
//! - [`control`]: the `Control` gRPC service for simctl.
//! - [`metrics`]: the Prometheus `/metrics` endpoint (the run engine renders the text).
//! - [`assignment_log`]: the watch of parti's assignment document (its checks are sim-core's).

#![forbid(unsafe_code)]

pub mod agents;
pub mod assignment_log;
pub mod control;
pub mod metrics;
pub mod placement;
pub mod run;
pub mod stream;

use std::future::Future;

use fleet_tls::{RequireRole, Role};
use proto::v1::agent_server::AgentServer;
use proto::v1::control_server::ControlServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

/// Options of a coordinator daemon.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Use this NATS URL instead of the config's (simctl run's managed server); one URL or a
    /// comma-separated list of a cluster's servers.
    pub nats_url: Option<String>,
    /// The directory of the managed NATS cluster simctl started (see the `nats-cluster` crate), for
    /// faults that kill and restart its servers (`nats_server_kill`).
    pub nats_cluster_dir: Option<std::path::PathBuf>,
    /// The managed NATS server's pid (simctl run's single server), sampled for the leak
    /// gate; a managed cluster's servers are found through `nats_cluster_dir`.
    pub nats_server_pid: Option<u32>,
    /// Test aid: pause this long before applying each report batch (a slow coordinator).
    pub ingest_delay: std::time::Duration,
    /// Where run directories go (default `runs`).
    pub runs_dir: Option<std::path::PathBuf>,
    /// Before serving, resume the newest unfinished run under `runs_dir` from its latest
    /// checkpoint (a coordinator restarted after a crash).
    pub resume: bool,
    /// Mutual TLS (the lab's certificates): required of every agent and simctl, each for its
    /// own service. `None` is plaintext, which the daemon allows on loopback only.
    pub tls: Option<fleet_tls::Material>,
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `resume` was asked for and failed.
    #[error("resuming: {0}")]
    Resume(String),
    /// The gRPC server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Serve the Agent and Control services on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Bounded: a slow tracker slows the agents' streams instead of buffering without limit.
    let (ingest, ingest_rx) = tokio::sync::mpsc::channel(64);
    let registry = agents::AgentRegistry::new(ingest);
    let engine = run::spawn_engine(
        registry.clone(),
        ingest_rx,
        options.nats_url,
        options.ingest_delay,
        options.nats_cluster_dir,
        options.nats_server_pid,
        options
            .runs_dir
            .unwrap_or_else(|| std::path::PathBuf::from("runs")),
    );
    if options.resume {
        // Before any agent can connect: the registry must know what the checkpoint applied
        // before the first resent batch arrives.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = run::Command::Resume {
            run_dir: None,
            config: None,
            reply,
        };
        let sent = engine.commands.send(command).await;
        let result = match sent {
            Ok(()) => answer.await.map_err(|_| "engine stopped".to_string()),
            Err(_) => Err("engine stopped".to_string()),
        };
        match result {
            Ok(Ok(run_id)) => tracing::info!(run = %run_id, "resumed"),
            Ok(Err(error)) => return Err(ServeError::Resume(error.to_string())),
            Err(error) => return Err(ServeError::Resume(error)),
        }
    }
    let mut server = tonic::transport::Server::builder();
    let tls = options.tls.is_some();
    if let Some(material) = &options.tls {
        server = server.tls_config(material.server())?;
    }
    // Each service admits only its own role's certificates: an agent's key cannot start or
    // fault a run, simctl's cannot pose as an agent.
    server
        .add_service(InterceptedService::new(
            AgentServer::new(agents::AgentService::new(registry.clone()))
                .max_decoding_message_size(64 << 20),
            RequireRole::new(Role::Agent, tls),
        ))
        .add_service(InterceptedService::new(
            ControlServer::new(control::ControlService::new(engine, registry)),
            RequireRole::new(Role::Control, tls),
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}
