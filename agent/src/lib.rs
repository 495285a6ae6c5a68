//! The parti-sim agent: one per host. Forks producer and worker processes from its own
//! binary, relays their reports to the coordinator losslessly, and executes signals on them.
//!
//! Layout:
//! - [`session`]: the daemon — report socket, coordinator session, command execution.
//! - [`outbox`]: report batches kept until the coordinator releases them (checkpoints).
//! - [`supervisor`]: forking and watching children.
//! - [`netfault`]: iptables/tc network faults on this host, crash-safe.
//! - [`report`]: the child → agent report contract (JSON lines over a Unix socket).
//! - [`producer`], [`worker`]: what the children run.
//! - [`message`]: the simulation message body.

#![forbid(unsafe_code)]

mod gostyle;
pub mod message;
pub mod netfault;
pub mod outbox;
mod partition_map;
pub mod producer;
pub mod report;
pub mod session;
pub mod supervisor;
pub mod worker;

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Which child to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildMode {
    /// A producer.
    Producer,
    /// A worker.
    Worker,
}

/// Entry point of a child process: read the spec and report socket from the environment,
/// run until SIGTERM (graceful) — SIGKILL is, of course, not handled.
pub async fn run_child(mode: ChildMode) -> anyhow::Result<()> {
    supervisor::child_guard();
    let spec = std::env::var(report::SPEC_ENV).context("PARTI_SIM_SPEC is not set")?;
    let process = std::env::var(report::PROCESS_ENV).context("PARTI_SIM_PROCESS is not set")?;
    let socket = PathBuf::from(
        std::env::var(report::SOCKET_ENV).context("PARTI_SIM_REPORT_SOCKET is not set")?,
    );
    let (reports, writer) = report::ReportClient::connect(&socket, &process)
        .await
        .with_context(|| format!("connecting to the report socket {}", socket.display()))?;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            stop.cancel();
        });
    }
    let result = match mode {
        ChildMode::Producer => {
            producer::run(
                serde_json::from_str(&spec).context("producer spec")?,
                reports,
                stop,
            )
            .await
        }
        ChildMode::Worker => {
            worker::run(
                serde_json::from_str(&spec).context("worker spec")?,
                reports,
                stop,
            )
            .await
        }
    };
    // Every report queued so far reaches the agent before we exit.
    let _ = writer.await;
    result
}
