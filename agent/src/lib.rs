//! The parti-sim agent: one per host. Forks producer and worker processes from its own
//! binary, relays their reports to the coordinator losslessly, and executes signals on them.
//!
//! Layout:
//! - [`session`]: the daemon — coordinator session, command execution.
//! - [`outbox`]: report batches kept until the coordinator releases them (checkpoints).
//! - [`supervisor`]: forking and watching children.
//! - [`links`]: a child's exit reported only after its last report.
//! - [`journal`]: every report on disk first, replayed by the next agent after a crash;
//!   [`reclaim`]: the released part of a journal given back.
//! - [`socket`]: the report socket, a connection per child.
//! - [`netfault`]: iptables/tc network faults on this host, crash-safe.
//! - [`resources`]: RSS, file descriptors and threads of every process, for the leak gate.
//! - [`report`]: the child → agent report contract (JSON lines over a Unix socket).
//! - [`producer`], [`worker`]: what the children run.
//! - [`message`]: the simulation message body.
//!
//! Errors are `thiserror` enums per operation ([`ChildError`], [`producer::ProducerError`],
//! [`worker::WorkerError`], [`session::AgentError`], [`supervisor::SupervisorError`]). Each
//! message says what was being done and embeds its cause (`…: {source}`), so the one line a
//! child writes to its log when it fails is complete.

#![forbid(unsafe_code)]

mod gostyle;
pub mod journal;
pub mod links;
pub mod message;
pub mod netfault;
pub mod outbox;
mod partition_map;
pub mod producer;
pub mod reclaim;
pub mod report;
pub mod resources;
pub mod session;
pub mod socket;
pub mod supervisor;
pub mod worker;

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

/// Which child to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildMode {
    /// A producer.
    Producer,
    /// A worker.
    Worker,
}

/// Why a child process stopped with an error (its binary exits with status 1). Each message
/// names what was being done and embeds its cause: the child's stderr is its log.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// A variable the agent sets for every child is missing (the binary was not started by
    /// an agent) or not unicode.
    #[error("reading {name}: {source}")]
    Env {
        /// The variable.
        name: &'static str,
        /// The error.
        #[source]
        source: std::env::VarError,
    },
    /// The agent's report socket could not be reached.
    #[error("connecting to the report socket {}: {source}", path.display())]
    ReportSocket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The SIGTERM handler (graceful stop) could not be installed.
    #[error("installing the SIGTERM handler: {0}")]
    Signal(#[source] std::io::Error),
    /// `$PARTI_SIM_SPEC` is not JSON of the spec this mode runs.
    #[error("parsing the {mode} spec: {source}")]
    Spec {
        /// `producer` or `worker`.
        mode: &'static str,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// The producer stopped with an error.
    #[error(transparent)]
    Producer(#[from] producer::ProducerError),
    /// The worker stopped with an error (including [`worker::WorkerError::Fenced`]).
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
}

/// How long a child's last spans may take to leave at a graceful stop.
pub(crate) const TRACE_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// A child's tracing as the coordinator resolved it for the run.
pub(crate) fn trace_settings(spec: &proto::v1::TraceSpec) -> telemetry::TraceSettings {
    telemetry::TraceSettings {
        endpoint: spec.endpoint.clone(),
        sample_ratio: spec.sample_ratio,
        run_id: spec.run_id.clone(),
    }
}

/// `name` from the environment.
fn env(name: &'static str) -> Result<String, ChildError> {
    std::env::var(name).map_err(|source| ChildError::Env { name, source })
}

/// Entry point of a child process: read the spec and report socket from the environment,
/// run until SIGTERM (graceful) — SIGKILL is, of course, not handled.
pub async fn run_child(mode: ChildMode) -> Result<(), ChildError> {
    supervisor::child_guard();
    let spec = env(report::SPEC_ENV)?;
    let process = env(report::PROCESS_ENV)?;
    let socket = PathBuf::from(env(report::SOCKET_ENV)?);
    let journal = std::env::var_os(journal::JOURNAL_ENV).map(PathBuf::from);
    let (reports, writer) = report::ReportClient::connect(&socket, &process, journal.as_deref())
        .await
        .map_err(|source| ChildError::ReportSocket {
            path: socket.clone(),
            source,
        })?;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ChildError::Signal)?;
        tokio::spawn(async move {
            term.recv().await;
            stop.cancel();
        });
    }
    let spec_error = |mode| move |source| ChildError::Spec { mode, source };
    let result = match mode {
        ChildMode::Producer => {
            let spec = serde_json::from_str(&spec).map_err(spec_error("producer"))?;
            producer::run(spec, reports, stop).await.map_err(Into::into)
        }
        ChildMode::Worker => {
            let spec = serde_json::from_str(&spec).map_err(spec_error("worker"))?;
            worker::run(spec, reports, stop).await.map_err(Into::into)
        }
    };
    // Every report queued so far reaches the agent before we exit.
    let _ = writer.await;
    result
}
