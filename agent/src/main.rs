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
        /// The lab CA's certificate (PEM): the coordinator must present a certificate it
        /// issued for the endpoint's host. With --tls-cert and --tls-key, and an https://
        /// endpoint: mutual TLS (see `simctl certs`).
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// This agent's certificate (PEM), issued for the agent role.
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// Allow plaintext (http://) to a coordinator that is not on loopback: the agent then
        /// obeys whoever answers there. Only on a network you trust.
        #[arg(long)]
        insecure: bool,
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

/// An error and its causes on one line. The library's errors (and async-nats's) embed their
/// cause in their own message, so printing the chain as well (anyhow's `Caused by:`) would
/// repeat each cause; some sources do not embed theirs (tonic's transport errors), so a cause
/// is appended exactly when the text so far does not already contain it.
fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
}

/// Exit status for refused input: flags, TLS material, or certificates the coordinator
/// handshake refused (as simctl's bad input).
const EXIT_BAD_INPUT: u8 = 2;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure::BadInput(message)) => {
            eprintln!("agent: {message}");
            std::process::ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(Failure::Other(error)) => {
            eprintln!("agent: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Why the agent stopped with an error.
enum Failure {
    BadInput(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::Other(error)
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Child { mode } => {
            let mode = match mode.as_str() {
                "producer" => agent::ChildMode::Producer,
                "worker" => agent::ChildMode::Worker,
                other => return Err(Failure::BadInput(format!("unknown child mode {other:?}"))),
            };
            agent::run_child(mode)
                .await
                .map_err(|error| Failure::Other(anyhow::Error::msg(one_line(&error))))
        }
        Command::Run {
            coordinator,
            id,
            dir,
            tls_ca,
            tls_cert,
            tls_key,
            insecure,
        } => {
            let tls = fleet_tls::TlsFiles::from_flags(tls_ca, tls_cert, tls_key)
                .and_then(|files| files.map(|f| f.load(fleet_tls::Role::Agent)).transpose())
                .map_err(|error| Failure::BadInput(error.to_string()))?;
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
                journal_dir: dir.join("journal"),
                binary: std::env::current_exe().context("locating the agent binary")?,
                tls,
                insecure,
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
            agent::session::run(options, shutdown)
                .await
                .map_err(|error| {
                    if error.is_bad_input() {
                        Failure::BadInput(one_line(&error))
                    } else {
                        Failure::Other(anyhow::Error::msg(one_line(&error)))
                    }
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// Wraps `source`, embedding its message or not.
    #[derive(Debug, thiserror::Error)]
    enum Layer {
        #[error("opening the stream SIM: {source}")]
        Embeds {
            #[source]
            source: std::io::Error,
        },
        #[error("transport error")]
        Hides {
            #[source]
            source: std::io::Error,
        },
    }

    fn cause() -> std::io::Error {
        std::io::Error::other("connection refused")
    }

    #[test]
    fn a_cause_appears_once() {
        assert_eq!(
            one_line(&Layer::Embeds { source: cause() }),
            "opening the stream SIM: connection refused"
        );
        assert_eq!(
            one_line(&Layer::Hides { source: cause() }),
            "transport error: connection refused"
        );
    }
}
