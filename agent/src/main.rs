//! `agent`: the per-host daemon, and (hidden) the producer and worker children it forks.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about = "parti-sim agent: runs producers and workers on this host for a coordinator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to a coordinator and run the processes it asks for.
    Run {
        /// Coordinator agent endpoint.
        #[arg(long, default_value = "http://127.0.0.1:7400")]
        coordinator: String,
        /// This agent's name (default: the hostname).
        #[arg(long)]
        id: Option<String>,
        /// Directory for child logs and the report socket.
        #[arg(long, default_value = "./agent-run")]
        dir: PathBuf,
    },
    /// Internal: run as a child process (started by the agent itself).
    #[command(hide = true)]
    Child {
        /// producer or worker.
        mode: String,
    },
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Child { mode } => {
            let mode = match mode.as_str() {
                "producer" => agent::ChildMode::Producer,
                "worker" => agent::ChildMode::Worker,
                other => anyhow::bail!("unknown child mode {other:?}"),
            };
            Ok(agent::run_child(mode).await?)
        }
        Command::Run {
            coordinator,
            id,
            dir,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let agent_id = id.unwrap_or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| "agent".into())
            });
            let options = agent::session::AgentOptions {
                coordinator,
                agent_id,
                log_dir: dir.join("logs"),
                socket: dir.join("reports.sock"),
                binary: std::env::current_exe().context("locating the agent binary")?,
            };
            let shutdown = CancellationToken::new();
            {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut term = match tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    ) {
                        Ok(term) => term,
                        Err(_) => return,
                    };
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    shutdown.cancel();
                });
            }
            agent::session::run(options, shutdown).await?;
            Ok(())
        }
    }
}
