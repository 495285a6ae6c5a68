//! The agent daemon: the report socket children write to, and the session with the
//! coordinator.
//!
//! Lossless by construction: a child's report waits in the socket until the agent reads
//! it; the agent reads only while fewer than `MAX_UNACKED` batches await acknowledgement;
//! every batch is kept until the coordinator acknowledges it and is resent after a
//! reconnect (the coordinator applies each batch number once).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal as NixSignal;
use proto::v1::agent_client::AgentClient;
use proto::v1::{
    AgentMessage, Hello, Report, ReportBatch, Signal, agent_message, coordinator_message,
};
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::netfault::{NetworkCommand, NetworkFaults};
use crate::report::ChildReport;
use crate::supervisor::Supervisor;

/// Batches awaiting acknowledgement before the agent stops reading reports (back-pressure).
const MAX_UNACKED: usize = 256;
/// Reports per batch.
const BATCH_SIZE: usize = 2000;
/// How long a partial batch waits before it is sent.
const BATCH_LINGER: Duration = Duration::from_millis(20);

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Coordinator endpoint, e.g. `http://127.0.0.1:7400`.
    pub coordinator: String,
    /// This agent's name (unique per run).
    pub agent_id: String,
    /// Where child logs go.
    pub log_dir: PathBuf,
    /// The report socket path.
    pub socket: PathBuf,
    /// The binary children are started from (normally the agent's own).
    pub binary: PathBuf,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The report socket could not be bound.
    #[error("binding the report socket {path}: {source}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A random id for this agent process, never 0 (0 is what an agent without boot ids sends).
fn new_boot_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// Run until `shutdown`: serve the report socket, keep a session with the coordinator
/// (reconnecting with backoff), execute its commands.
pub async fn run(options: AgentOptions, shutdown: CancellationToken) -> Result<(), AgentError> {
    let _ = std::fs::remove_file(&options.socket);
    let listener = UnixListener::bind(&options.socket).map_err(|source| AgentError::Socket {
        path: options.socket.clone(),
        source,
    })?;
    let (reports_tx, mut reports_rx) = mpsc::channel::<Report>(8192);
    tokio::spawn(serve_socket(listener, reports_tx.clone()));
    let network = NetworkFaults::new(
        options.socket.with_file_name("network-fault-devices"),
        reports_tx.clone(),
    );
    // Whatever a previous agent on this host left behind (it may have been SIGKILLed).
    network.clean_up().await;
    let network_commands = network.executor();
    let supervisor = Supervisor::new(
        options.binary.clone(),
        options.log_dir.clone(),
        options.socket.clone(),
        reports_tx,
    );

    let boot_id = new_boot_id();
    let mut unacked: VecDeque<ReportBatch> = VecDeque::new();
    let mut acked: u64 = 0;
    let mut next_number: u64 = 1;
    let mut backoff = Duration::from_millis(100);
    'sessions: while !shutdown.is_cancelled() {
        let mut client = match AgentClient::connect(options.coordinator.clone()).await {
            Ok(client) => client,
            Err(error) => {
                debug!(%error, "coordinator unreachable; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (outbound, outbound_rx) = mpsc::channel::<AgentMessage>(MAX_UNACKED + 16);
        let hello = Hello {
            agent_id: options.agent_id.clone(),
            hostname: hostname(),
            pid: std::process::id(),
            acked_batch: acked,
            boot_id,
        };
        let _ = outbound
            .send(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            })
            .await;
        for batch in &unacked {
            let _ = outbound
                .send(AgentMessage {
                    body: Some(agent_message::Body::Batch(batch.clone())),
                })
                .await;
        }
        let mut inbound = match client.session(tokio_stream_of(outbound_rx)).await {
            Ok(response) => response.into_inner(),
            Err(error) => {
                warn!(%error, "session refused; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        info!(coordinator = %options.coordinator, resent = unacked.len(), "session established");
        backoff = Duration::from_millis(100);
        let mut pending: Vec<Report> = Vec::new();
        let mut linger = tokio::time::interval(BATCH_LINGER);
        loop {
            let can_read = unacked.len() < MAX_UNACKED && pending.len() < BATCH_SIZE;
            tokio::select! {
                () = shutdown.cancelled() => break 'sessions,
                report = reports_rx.recv(), if can_read => {
                    let Some(report) = report else { break 'sessions };
                    pending.push(report);
                    if pending.len() < BATCH_SIZE { continue }
                }
                _ = linger.tick() => {}
                message = inbound.message() => {
                    match message {
                        Ok(Some(message)) => {
                            handle_command(&supervisor, &network_commands, message.body, &mut unacked, &mut acked).await;
                            continue;
                        }
                        Ok(None) | Err(_) => {
                            warn!("session with the coordinator ended; reconnecting");
                            // Keep what was read: it goes out in the next session.
                            if !pending.is_empty() {
                                unacked.push_back(ReportBatch { number: next_number, reports: std::mem::take(&mut pending) });
                                next_number += 1;
                            }
                            continue 'sessions;
                        }
                    }
                }
            }
            if !pending.is_empty() {
                let batch = ReportBatch {
                    number: next_number,
                    reports: std::mem::take(&mut pending),
                };
                next_number += 1;
                unacked.push_back(batch.clone());
                if outbound
                    .send(AgentMessage {
                        body: Some(agent_message::Body::Batch(batch)),
                    })
                    .await
                    .is_err()
                {
                    continue 'sessions;
                }
            }
        }
    }
    network.heal().await;
    network.clean_up().await;
    supervisor.shutdown(Duration::from_secs(10)).await;
    let _ = std::fs::remove_file(&options.socket);
    Ok(())
}

async fn handle_command(
    supervisor: &Supervisor,
    network: &mpsc::UnboundedSender<NetworkCommand>,
    body: Option<coordinator_message::Body>,
    unacked: &mut VecDeque<ReportBatch>,
    acked: &mut u64,
) {
    match body {
        Some(coordinator_message::Body::Ack(ack)) => {
            *acked = (*acked).max(ack.released_up_to);
            while unacked.front().is_some_and(|b| b.number <= ack.released_up_to) {
                unacked.pop_front();
            }
        }
        Some(coordinator_message::Body::Spawn(spawn)) => {
            if let Err(error) = supervisor.spawn(spawn).await {
                warn!(%error, "spawn failed");
            }
        }
        Some(coordinator_message::Body::Signal(command)) => {
            let signal = match Signal::try_from(command.signal) {
                Ok(Signal::Term) => NixSignal::SIGTERM,
                Ok(Signal::Kill) => NixSignal::SIGKILL,
                Ok(Signal::Stop) => NixSignal::SIGSTOP,
                Ok(Signal::Cont) => NixSignal::SIGCONT,
                _ => {
                    warn!(signal = command.signal, "unknown signal ignored");
                    return;
                }
            };
            if let Err(error) = supervisor.signal(&command.process, signal).await {
                warn!(%error, "signal failed");
            }
        }
        Some(coordinator_message::Body::Shutdown(_)) => {
            info!("coordinator asked to stop every process");
            let _ = network.send(NetworkCommand::Heal);
            supervisor.shutdown(Duration::from_secs(10)).await;
        }
        Some(coordinator_message::Body::NetworkFault(fault)) => {
            // Applied in the background: the session keeps acknowledging meanwhile.
            let _ = network.send(NetworkCommand::Apply(fault));
        }
        Some(coordinator_message::Body::HealNetwork(_)) => {
            let _ = network.send(NetworkCommand::Heal);
        }
        None => {}
    }
}

/// Read JSON lines from each child connection into `reports` (waiting when it is full).
async fn serve_socket(listener: UnixListener, reports: mpsc::Sender<Report>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let reports = reports.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            let mut process = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ChildReport>(&line) {
                    Ok(ChildReport::Hello { process: name }) => process = name,
                    Ok(report) => {
                        if let Some(report) = report.into_proto(&process) {
                            if reports.send(report).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => warn!(%process, %error, "unreadable report line ignored"),
                }
            }
        });
    }
}

fn tokio_stream_of(
    receiver: mpsc::Receiver<AgentMessage>,
) -> impl futures::Stream<Item = AgentMessage> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|m| (m, receiver))
    })
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}
