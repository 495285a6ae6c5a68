//! [`NatsClusterError`]: everything a cluster operation can fail with, naming the server
//! and, where it helps, its log.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsClusterError {
    /// A cluster needs at least one server.
    #[error("a NATS cluster needs at least one server")]
    NoServers,
    /// No nats-server binary was found.
    #[error("nats-server not found: run ./scripts/setup.sh or set NATS_SERVER_BIN")]
    BinaryNotFound,
    /// The directory already describes a cluster; starting another there would mix stores.
    #[error(
        "{} already describes a NATS cluster: open it, or start in an empty directory",
        path.display()
    )]
    AlreadyDescribed {
        /// The existing `cluster.json`.
        path: PathBuf,
    },
    /// `open` found no cluster description.
    #[error("no NATS cluster in {}: cannot read {}: {source}", dir.display(), path.display())]
    NotACluster {
        /// The directory given.
        dir: PathBuf,
        /// The description file looked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The description exists but is not one this code wrote.
    #[error("{} is not a NATS cluster description: {reason}", path.display())]
    BadDescription {
        /// The description file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A server index beyond the cluster.
    #[error("no server {index}: the cluster has {size} servers (0..{size})")]
    NoSuchServer {
        /// The index asked for.
        index: usize,
        /// The cluster's size.
        size: usize,
    },
    /// `kill` of a server that is not running.
    #[error("NATS server {name} is not running")]
    NotRunning {
        /// The server's name.
        name: String,
    },
    /// `restart` of a server that is still running.
    #[error("NATS server {name} is already running (pid {pid})")]
    AlreadyRunning {
        /// The server's name.
        name: String,
        /// Its pid.
        pid: u32,
    },
    /// The server process could not be signalled.
    #[error("signalling NATS server {name} (pid {pid}): {source}")]
    Signal {
        /// The server's name.
        name: String,
        /// Its pid.
        pid: u32,
        /// The OS error.
        source: nix::errno::Errno,
    },
    /// A killed or stopped server is still there.
    #[error("NATS server {name} (pid {pid}) still runs {waited:?} after {signal}")]
    StillRunning {
        /// The server's name.
        name: String,
        /// Its pid.
        pid: u32,
        /// How long we waited.
        waited: Duration,
        /// The last signal sent.
        signal: &'static str,
    },
    /// The server process exited while we waited for it to become ready.
    #[error("NATS server {name} exited during start-up (log: {})", log.display())]
    Exited {
        /// The server's name.
        name: String,
        /// Its log.
        log: PathBuf,
    },
    /// The server did not become ready in time.
    #[error(
        "NATS server {name} not ready within {}s: {last} (log: {})",
        timeout.as_secs(),
        log.display()
    )]
    NotReady {
        /// The server's name.
        name: String,
        /// The deadline.
        timeout: Duration,
        /// The last readiness check's failure.
        last: String,
        /// Its log.
        log: PathBuf,
    },
}

pub(super) fn io_error(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> NatsClusterError {
    let path = path.to_path_buf();
    move |source| NatsClusterError::Io { what, path, source }
}
