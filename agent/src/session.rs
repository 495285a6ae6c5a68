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

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal as NixSignal;
use proto::v1::agent_client::AgentClient;
use proto::v1::{
    AgentMessage, ClockEcho, Hello, Report, Signal, agent_message, coordinator_message,
};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::journal::{Journals, OwnReports};
use crate::links::Links;
use crate::netfault::{NetworkCommand, NetworkFaults};
use crate::outbox::{BATCH_SIZE, OUTBOX_BUDGET, Outbox};
use crate::socket::serve_socket;
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
/// TLS connections closed under a session's opening, in a row, before the agent takes it
/// as the coordinator refusing its certificate and stops.
const CLOSED_AFTER_HANDSHAKE_LIMIT: u32 = 3;

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
    /// Where reports are journaled (`crate::journal`); kept across agent restarts.
    pub journal_dir: PathBuf,
    /// The binary children are started from (normally the agent's own).
    pub binary: PathBuf,
    /// Mutual TLS with the coordinator (`https://` endpoints): the lab CA verifies the
    /// coordinator before anything it says is obeyed.
    pub tls: Option<fleet_tls::Material>,
    /// Allow plaintext to a coordinator that is not on loopback.
    pub insecure: bool,
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
    /// The journal directory could not be created.
    #[error("creating the journal directory {path}: {source}")]
    Journal {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The coordinator endpoint is not a valid URI, or does not fit the TLS material.
    #[error(transparent)]
    Endpoint(#[from] fleet_tls::TlsError),
    /// The TLS handshake with the coordinator failed on a certificate: its certificate is not
    /// the lab's, or ours is not accepted. Retrying cannot help, and obeying is out of the
    /// question.
    #[error("coordinator {endpoint}: {detail}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// What the handshake said.
        detail: String,
    },
}

impl AgentError {
    /// A refusal of the command line or of the TLS material and certificates (bad input,
    /// exit 2), as opposed to a failure while running.
    #[must_use]
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Endpoint(_) | Self::Refused { .. })
    }
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
    let endpoint =
        fleet_tls::endpoint(&options.coordinator, options.tls.as_ref(), options.insecure)?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
    let _ = std::fs::remove_file(&options.socket);
    // Only our own user may even reach the socket (the children run as it): the directory is
    // closed before the socket exists, and the socket itself is 0600.
    if let Some(dir) = options.socket.parent() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| AgentError::Socket {
                path: dir.to_path_buf(),
                source,
            },
        )?;
    }
    let listener = UnixListener::bind(&options.socket).map_err(|source| AgentError::Socket {
        path: options.socket.clone(),
        source,
    })?;
    // Only our own user may connect (the children run as it); the peer check in
    // `crate::socket` then admits only our children.
    std::fs::set_permissions(&options.socket, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| AgentError::Socket {
            path: options.socket.clone(),
            source,
        },
    )?;
    let boot_id = new_boot_id();
    let journals =
        Journals::create(&options.journal_dir, boot_id).map_err(|source| AgentError::Journal {
            path: options.journal_dir.clone(),
            source,
        })?;
    let (reports_tx, reports_rx) = mpsc::channel::<Report>(8192);
    let own_reports = OwnReports::new(reports_tx.clone(), &journals);
    let links = Links::default();
    tokio::spawn(serve_socket(
        listener,
        reports_tx.clone(),
        links.clone(),
        journals.reclaimer(),
    ));
    let network = NetworkFaults::new(
        options.socket.with_file_name("network-fault-devices"),
        own_reports.clone(),
    );
    // Whatever a previous agent on this host left behind (it may have been SIGKILLed).
    network.clean_up().await;
    let network_commands = network.executor();
    let supervisor = Supervisor::new(
        options.binary.clone(),
        options.log_dir.clone(),
        options.socket.clone(),
        own_reports.clone(),
        links,
        Some(journals.clone()),
    );

    tokio::spawn(crate::resources::run(supervisor.clone(), own_reports));
    let outbox = Arc::new(
        Outbox::new(OUTBOX_BUDGET, MAX_UNACKED, BATCH_SIZE).with_reclaimer(journals.reclaimer()),
    );
    // What the agent process before this one (SIGKILLed, say) left unsaid.
    {
        let (journals, log_dir, outbox) =
            (journals.clone(), options.log_dir.clone(), outbox.clone());
        tokio::spawn(async move { journals.replay_previous(&log_dir, outbox).await });
    }
    let batcher = tokio::spawn(crate::outbox::run_batcher(reports_rx, outbox.clone()));
    let mut backoff = Duration::from_millis(100);
    let mut closed_after_handshake = 0;
    'sessions: while !shutdown.is_cancelled() {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                if let Some(detail) = fleet_tls::tls_failure(&error) {
                    return Err(AgentError::Refused {
                        endpoint: options.coordinator.clone(),
                        detail,
                    });
                }
                // Not a handshake refusal: the coordinator is away. A refusal is three closed
                // connections in a row without one of these in between.
                closed_after_handshake = 0;
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
                // Our certificate refused in the handshake (TLS 1.3 tells the client after
                // it finished), or the coordinator's service refusing its role.
                let refused = fleet_tls::tls_failure(&error).or_else(|| {
                    matches!(
                        error.code(),
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    )
                    .then(|| error.message().to_string())
                });
                if let Some(detail) = refused {
                    return Err(AgentError::Refused {
                        endpoint: options.coordinator.clone(),
                        detail,
                    });
                }
                // A TLS connection closed under the session's opening is how a TLS 1.3
                // server's refusal of our certificate usually arrives; a coordinator going
                // away at that instant looks the same once, not several times in a row.
                if options.tls.is_some()
                    && let Some(detail) = fleet_tls::refused_after_handshake(&error)
                {
                    closed_after_handshake += 1;
                    if closed_after_handshake >= CLOSED_AFTER_HANDSHAKE_LIMIT {
                        return Err(AgentError::Refused {
                            endpoint: options.coordinator.clone(),
                            detail,
                        });
                    }
                }
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
        closed_after_handshake = 0;
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
                            if let Some(coordinator_message::Body::ClockProbe(probe)) = &message.body {
                                // Answered at once: the round trip is the measurement.
                                let echo = ClockEcho {
                                    id: probe.id,
                                    coordinator_us: probe.coordinator_us,
                                    agent_us: crate::report::now_us(),
                                };
                                let echo = AgentMessage {
                                    body: Some(agent_message::Body::ClockEcho(echo)),
                                };
                                // Never waited for, and never into the room kept for a
                                // full window of batches: a filling stream is a slow
                                // coordinator, and a probe left unanswered costs nothing.
                                if outbound.capacity() > MAX_UNACKED
                                    && let Err(mpsc::error::TrySendError::Closed(_)) =
                                        outbound.try_send(echo)
                                {
                                    continue 'sessions;
                                }
                                continue;
                            }
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
    journals.remove();
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
                Ok(Signal::Term) => Some(NixSignal::SIGTERM),
                Ok(Signal::Kill) => Some(NixSignal::SIGKILL),
                Ok(Signal::Stop) => Some(NixSignal::SIGSTOP),
                Ok(Signal::Cont) => Some(NixSignal::SIGCONT),
                _ => None,
            };
            let result = match signal {
                Some(signal) => supervisor
                    .signal(&command.process, signal)
                    .await
                    .map_err(|error| error.to_string()),
                None => Err(format!("unknown signal {}", command.signal)),
            };
            if let Err(error) = &result {
                warn!(%error, "signal failed");
            }
            // A fault's signal is confirmed: it counts only if it reached a live process.
            if command.fault != 0 {
                supervisor
                    .confirm_signal(command.fault, &command.process, result)
                    .await;
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
        Some(coordinator_message::Body::Crash(crash)) => {
            // The chaos event agent_crash: a real SIGKILL, nothing cleaned up. The children
            // die with us (parent-death signal); the next agent replays the journals.
            warn!(fault = crash.fault, "agent_crash: SIGKILL to myself");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), NixSignal::SIGKILL);
        }
        // Answered by the session loop as it arrives.
        Some(coordinator_message::Body::ClockProbe(_)) | None => {}
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use proto::v1::{ProducerSpec, Spawn, report, spawn};

    use super::*;

    /// An executable Python child at `path`: it connects to the report socket, says hello as
    /// `$PARTI_SIM_PROCESS`, then runs `body` (with `send(dict)` at hand).
    fn python_child(path: &Path, body: &str) {
        let script = format!(
            "#!/usr/bin/env python3\n\
             import json, os, signal, socket, time\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect(os.environ['{socket}'])\n\
             def send(*reports):\n    s.sendall(''.join(json.dumps(r) + '\\n' for r in reports).encode())\n\
             send({{'type': 'hello', 'process': os.environ['{process}']}})\n\
             def sent(n):\n    return {{'type': 'sent', 'partition': 0, 'seq': n, 'producer_id': 'p', 'published_us': n, 'stream_seq': n}}\n\
             {body}\n",
            socket = crate::report::SOCKET_ENV,
            process = crate::report::PROCESS_ENV,
        );
        std::fs::write(path, script).expect("write child");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// A report socket served as the agent does, and a supervisor starting `child`; reports
    /// go to a small channel, so that reading lags behind the children as under load.
    fn agent_with(dir: &Path, child: &Path) -> (Supervisor, mpsc::Receiver<Report>) {
        let socket = dir.join("reports.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let (tx, rx) = mpsc::channel::<Report>(16);
        let links = Links::default();
        tokio::spawn(serve_socket(
            listener,
            tx.clone(),
            links.clone(),
            Arc::default(),
        ));
        let supervisor = Supervisor::new(
            child.into(),
            dir.join("logs"),
            socket,
            OwnReports::unjournaled(tx),
            links,
            None,
        );
        (supervisor, rx)
    }

    fn producer(process: &str, run_id: &str) -> Spawn {
        Spawn {
            process: process.into(),
            spec: Some(spawn::Spec::Producer(ProducerSpec::default())),
            run_id: run_id.into(),
        }
    }

    /// A child that writes many reports and SIGKILLs itself at once: its exit is passed on
    /// only after every one of them, though `wait()` returns while they are still unread.
    #[tokio::test]
    async fn a_killed_childs_exit_comes_after_its_last_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = dir.path().join("child");
        python_child(
            &child,
            "send(*[sent(n) for n in range(1, 5001)])\nos.kill(os.getpid(), signal.SIGKILL)",
        );
        let (supervisor, mut rx) = agent_with(dir.path(), &child);
        supervisor
            .spawn(producer("producer-0", "run-1"))
            .await
            .expect("spawn");
        let mut sent = 0;
        let exited = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(report) = rx.recv().await {
                assert_eq!(report.run_id, "run-1", "stamped with its run");
                match report.body {
                    Some(report::Body::Sent(_)) => sent += 1,
                    Some(report::Body::Exited(exited)) => return exited,
                    _ => {}
                }
            }
            panic!("the channel closed before the exit");
        })
        .await
        .expect("the exit within 60s");
        assert_eq!(exited.signal, Some(9), "{exited:?}");
        assert_eq!(sent, 5000, "every report before the exit");
    }

    /// A fault's signal is confirmed: delivered to a live child, not delivered to a slot
    /// with nobody in it (the fault then did nothing).
    #[tokio::test]
    async fn a_faults_signal_is_confirmed_only_when_it_reached_a_live_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = dir.path().join("child");
        python_child(&child, "send(sent(1))\ntime.sleep(60)");
        let (supervisor, mut rx) = agent_with(dir.path(), &child);
        supervisor
            .spawn(producer("producer-0", "run-1"))
            .await
            .expect("spawn");
        let (network, _network_rx) = mpsc::unbounded_channel();
        let outbox = Outbox::new(OUTBOX_BUDGET, MAX_UNACKED, BATCH_SIZE);
        let mut result_of = async |process: &str, fault: u64| {
            let command = coordinator_message::Body::Signal(proto::v1::SignalProcess {
                process: process.into(),
                signal: Signal::Kill.into(),
                fault,
            });
            handle_command(&supervisor, &network, Some(command), &outbox).await;
            loop {
                let report = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .expect("a report within 30s")
                    .expect("open");
                if let Some(report::Body::SignalResult(result)) = report.body {
                    return result;
                }
            }
        };
        let missed = result_of("worker-9", 4).await;
        assert_eq!((missed.fault, missed.delivered), (4, false), "{missed:?}");
        assert!(missed.detail.contains("worker-9"), "{missed:?}");
        let hit = result_of("producer-0", 5).await;
        assert_eq!((hit.fault, hit.delivered), (5, true), "{hit:?}");
        assert_eq!(hit.process, "producer-0");
    }

    /// A child of run-a that ignores SIGTERM and keeps reporting is stopped (killed after the
    /// grace) before run-b's child starts; every report says which run it belongs to.
    #[tokio::test]
    async fn a_new_runs_child_starts_only_after_the_previous_runs_are_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = dir.path().join("child");
        python_child(
            &child,
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
             n = 0\n\
             while True:\n    n += 1\n    send(sent(n))\n    time.sleep(0.01)",
        );
        let (supervisor, mut rx) = agent_with(dir.path(), &child);
        supervisor
            .spawn(producer("producer-0", "run-a"))
            .await
            .expect("spawn a");
        // Once it reports (so it ignores SIGTERM by now), start run-b's child in the same
        // slot.
        let first_sent = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(report) = rx.recv().await {
                assert_eq!(report.run_id, "run-a");
                if matches!(report.body, Some(report::Body::Sent(_))) {
                    return;
                }
            }
        });
        first_sent.await.expect("a report within 30s");
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(report) = rx.recv().await {
                let kind = match report.body {
                    Some(report::Body::Started(_)) => "started",
                    // SIGKILLed: it ignored the SIGTERM, as it was written to.
                    Some(report::Body::Exited(exited)) if exited.signal == Some(9) => "killed",
                    Some(report::Body::Exited(_)) => "exited",
                    Some(report::Body::Sent(_)) => "sent",
                    _ => "other",
                };
                let done = kind == "started" && report.run_id == "run-b";
                seen.push((report.run_id, kind));
                if done {
                    return seen;
                }
            }
            seen
        });
        supervisor
            .spawn(producer("producer-0", "run-b"))
            .await
            .expect("spawn b");
        let seen = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("run-b's child started within 30s")
            .expect("join");
        let exit_a = seen
            .iter()
            .position(|(run, kind)| run == "run-a" && *kind == "killed")
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(dir.path().join("logs/producer-0.log"));
                panic!("run-a's child killed: {seen:?}; its log: {log:?}")
            });
        assert_eq!(
            seen.last(),
            Some(&("run-b".to_string(), "started")),
            "{seen:?}"
        );
        assert!(
            seen[..exit_a].iter().all(|(run, _)| run == "run-a"),
            "before its exit, only run-a's reports: {seen:?}"
        );
        assert!(
            seen[exit_a + 1..seen.len() - 1].is_empty(),
            "nothing of run-a after its exit, run-b's start next: {seen:?}"
        );
        supervisor.shutdown(Duration::from_secs(1)).await;
    }
}
