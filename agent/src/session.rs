//! The agent daemon: the report socket children write to, and the session with the
//! coordinator.
//!
//! Lossless by construction: a child's report waits in the socket until the agent reads
//! it; a batcher task reads reports into the [`crate::outbox`] continuously — also while
//! the coordinator is away — and stops only when the outbox is over its byte budget. The
//! session sends what the outbox holds (at most `MAX_UNACKED` batches unaccepted), and a
//! batch is dropped only once the coordinator *releases* it (covered by a durable
//! checkpoint, or checkpointing is off). After a reconnect everything unreleased is sent
//! again, in order; the coordinator applies each (boot_id, number) once. The contract is
//! documented in `proto/proto/sim/v1/sim.proto` ("Report delivery").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal as NixSignal;
use proto::v1::agent_client::AgentClient;
use proto::v1::{AgentMessage, Hello, Report, Signal, agent_message, coordinator_message};
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::netfault::{NetworkCommand, NetworkFaults};
use crate::outbox::{BATCH_SIZE, OUTBOX_BUDGET, Outbox};
use crate::report::ChildReport;
use crate::supervisor::Supervisor;

/// Batches sent but not yet accepted before the agent stops sending (a slow coordinator
/// slows the agent; past the outbox budget, children wait).
const MAX_UNACKED: usize = 256;
/// HTTP/2 ping interval on the coordinator link. A link cut silently (iptables DROP, a
/// dead host) shows no error: without pings the session would wait forever while the
/// outbox fills. A missed ping ack ends the connection, and the agent reconnects.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered: a cut link is noticed within interval + timeout.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TCP connect to a cut link would otherwise wait for the kernel's SYN retries (minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Opening the session stream on a connected channel.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// The coordinator endpoint is not a valid URI.
    #[error("invalid coordinator endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// The error.
        #[source]
        source: tonic::transport::Error,
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
    let endpoint = Endpoint::from_shared(options.coordinator.clone())
        .map_err(|source| AgentError::Endpoint {
            endpoint: options.coordinator.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let _ = std::fs::remove_file(&options.socket);
    let listener = UnixListener::bind(&options.socket).map_err(|source| AgentError::Socket {
        path: options.socket.clone(),
        source,
    })?;
    let (reports_tx, reports_rx) = mpsc::channel::<Report>(8192);
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
    let outbox = Arc::new(Outbox::new(OUTBOX_BUDGET, MAX_UNACKED, BATCH_SIZE));
    let batcher = tokio::spawn(crate::outbox::run_batcher(reports_rx, outbox.clone()));
    let mut backoff = Duration::from_millis(100);
    'sessions: while !shutdown.is_cancelled() {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
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
        let mut client = AgentClient::new(channel);
        // Room for the Hello and a full window: sending below never waits on the transport
        // (at most MAX_UNACKED batches are unaccepted), so the loop always reads acks.
        let (outbound, outbound_rx) = mpsc::channel::<AgentMessage>(MAX_UNACKED + 16);
        let released = outbox.lock().begin_session();
        let hello = Hello {
            agent_id: options.agent_id.clone(),
            hostname: hostname(),
            pid: std::process::id(),
            acked_batch: released,
            boot_id,
        };
        let _ = outbound
            .send(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            })
            .await;
        let opened = tokio::time::timeout(
            SESSION_OPEN_TIMEOUT,
            client.session(tokio_stream_of(outbound_rx)),
        )
        .await;
        let mut inbound = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(error)) => {
                warn!(%error, "session refused; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
            Err(_) => {
                warn!("session did not open in time; retrying");
                continue;
            }
        };
        {
            let kept = outbox.lock();
            info!(coordinator = %options.coordinator, boot_id, released, resend = kept.len(), "session established");
        }
        backoff = Duration::from_millis(100);
        loop {
            loop {
                let next = outbox.lock().next_to_send();
                let Some(batch) = next else { break };
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
            tokio::select! {
                () = shutdown.cancelled() => break 'sessions,
                () = outbox.queued() => {}
                message = inbound.message() => {
                    match message {
                        Ok(Some(message)) => {
                            handle_command(&supervisor, &network_commands, message.body, &outbox).await;
                        }
                        Ok(None) | Err(_) => {
                            // What was read stays in the outbox for the next session.
                            warn!("session with the coordinator ended; reconnecting");
                            continue 'sessions;
                        }
                    }
                }
            }
        }
    }
    batcher.abort();
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
    outbox: &Outbox,
) {
    match body {
        Some(coordinator_message::Body::Ack(ack)) => {
            outbox.acknowledge(ack.up_to, ack.released_up_to);
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
        Some(coordinator_message::Body::CollectLogs(collect)) => {
            supervisor.collect_logs(collect.max_bytes_per_process).await;
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
                        if let Some(report) = report.into_proto(&process)
                            && reports.send(report).await.is_err()
                        {
                            return;
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
