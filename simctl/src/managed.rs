//! The processes `simctl run` starts and owns: the nats-server(s) its config asks for, the
//! coordinator daemon and one agent ([`LocalFleet`]).
//!
//! Starting the coordinator and the agent is simctl's concern, so those functions live here;
//! the `nats-cluster` crate keeps the nats-servers and [`ManagedProcess`].
//!
//! **Blocking.** Starting a process waits (up to 30 s) for its "ready" line on a blocking
//! channel, and stopping a cluster polls with `thread::sleep`; both run on tokio's blocking
//! pool. Stopping a single process awaits its exit on tokio's timer
//! ([`ManagedProcess::stop_async`]). No runtime thread is blocked. Whatever is dropped
//! without a stop (an error half-way through starting) is still stopped by its own `Drop`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use nats_cluster::NatsCluster;
use nats_cluster::managed::{ManagedProcess, ReadyOn, sibling_binary, start_and_wait, start_nats};
use sim_core::config::NatsConfig;

/// How long the agent may take to stop: it stops its producers and workers first.
const AGENT_GRACE: Duration = Duration::from_secs(15);

/// How long the coordinator and each nats-server may take to stop.
const SERVER_GRACE: Duration = Duration::from_secs(5);

/// The agent's id (and its log and work directory's name) in a local run.
const AGENT_ID: &str = "local";

/// Everything `simctl run` started.
#[derive(Debug)]
pub struct LocalFleet {
    nats: ManagedNats,
    /// The NATS URL(s) clients use, comma-separated.
    pub nats_url: String,
    coordinator: ManagedProcess,
    /// The coordinator's `http://` endpoint.
    pub endpoint: String,
    agent: KeptAgent,
}

/// The local agent, started again whenever it dies (an `agent_crash` SIGKILLs it; on a lab
/// host its own supervisor must do this), until [`KeptAgent::stop`].
#[derive(Debug)]
struct KeptAgent {
    stop: tokio::sync::oneshot::Sender<()>,
    keeper: tokio::task::JoinHandle<()>,
}

/// How often the keeper looks whether the agent still runs.
const AGENT_CHECK_EVERY: Duration = Duration::from_millis(200);
/// More restarts than this within [`RESTART_WINDOW`] and the keeper gives up: an agent that
/// cannot stay up is an infrastructure failure the run reports (agents lost).
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

impl KeptAgent {
    fn start(dir: &Path, coordinator: &str) -> anyhow::Result<Self> {
        let mut agent = start_agent(dir, coordinator, AGENT_ID, false)?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (dir, coordinator) = (dir.to_path_buf(), coordinator.to_string());
        let keeper = tokio::spawn(async move {
            let mut restarts: Vec<std::time::Instant> = Vec::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => {
                        agent.stop_async(AGENT_GRACE).await;
                        return;
                    }
                    () = tokio::time::sleep(AGENT_CHECK_EVERY) => {}
                }
                if agent.is_running() {
                    continue;
                }
                restarts.retain(|at| at.elapsed() < RESTART_WINDOW);
                if restarts.len() >= MAX_RESTARTS {
                    eprintln!(
                        "parti-sim: the agent died {MAX_RESTARTS} times within {RESTART_WINDOW:?}; not restarted again"
                    );
                    let _ = stopped.await;
                    return;
                }
                restarts.push(std::time::Instant::now());
                match start_agent(&dir, &coordinator, AGENT_ID, true) {
                    Ok(started) => agent = started,
                    Err(error) => {
                        eprintln!("parti-sim: restarting the agent: {error:#}");
                        let _ = stopped.await;
                        return;
                    }
                }
            }
        });
        Ok(Self { stop, keeper })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.keeper.await;
    }
}

/// The NATS servers `simctl run` started, if any.
#[derive(Debug)]
enum ManagedNats {
    /// External servers: nothing to stop.
    External,
    /// `nats.cluster_size: 1`.
    Server(ManagedProcess),
    /// `nats.cluster_size` 3 or 5.
    Cluster(NatsCluster),
}

// === impl LocalFleet ===

impl LocalFleet {
    /// Start NATS as `nats` asks, then the coordinator, then the agent, all logging under
    /// `dir`. Returns once the coordinator listens (the agent connects on its own).
    pub async fn start(dir: &Path, nats: &NatsConfig) -> anyhow::Result<LocalFleet> {
        let (nats, nats_url) = ManagedNats::start(dir, nats).await?;
        let (coordinator, endpoint) = {
            let (dir, url) = (dir.to_path_buf(), nats_url.clone());
            let (cluster_dir, server_pid) = (nats.cluster_dir(), nats.server_pid());
            blocking(move || start_coordinator(&dir, &url, cluster_dir.as_deref(), server_pid))
                .await?
        };
        let agent = KeptAgent::start(dir, &endpoint)?;
        Ok(LocalFleet {
            nats,
            nats_url,
            coordinator,
            endpoint,
            agent,
        })
    }

    /// Stop everything, in reverse order of start: the agent stops its children while the
    /// coordinator still takes their last reports; the coordinator shuts down while NATS is
    /// still there.
    pub async fn stop(self) {
        let LocalFleet {
            nats,
            mut coordinator,
            agent,
            ..
        } = self;
        agent.stop().await;
        coordinator.stop_async(SERVER_GRACE).await;
        nats.stop().await;
    }
}

// === impl ManagedNats ===

impl ManagedNats {
    /// Start the servers `nats` asks for under `dir`; returns them and the URL(s) to use.
    async fn start(dir: &Path, nats: &NatsConfig) -> anyhow::Result<(ManagedNats, String)> {
        match nats.managed_servers() {
            None => Ok((ManagedNats::External, nats.url.clone())),
            // One server: the plain child process it has always been.
            Some(1) => {
                let (dir, limits) = (dir.to_path_buf(), nats.jetstream.clone());
                let (process, url) = blocking(move || start_nats(&dir, &limits)).await?;
                Ok((ManagedNats::Server(process), url))
            }
            Some(size) => {
                let cluster =
                    NatsCluster::start(&dir.join("nats-cluster"), &nats.jetstream, size as usize)
                        .await
                        .context("starting the NATS cluster")?;
                let urls = cluster.urls();
                Ok((ManagedNats::Cluster(cluster), urls))
            }
        }
    }

    /// A managed cluster's directory, for the coordinator's `nats_server_kill` faults.
    fn cluster_dir(&self) -> Option<PathBuf> {
        match self {
            ManagedNats::Cluster(cluster) => Some(cluster.dir().to_path_buf()),
            ManagedNats::External | ManagedNats::Server(_) => None,
        }
    }

    /// A single managed server's pid, for the coordinator's resource samples (a cluster's
    /// servers it finds through the cluster directory).
    fn server_pid(&self) -> Option<u32> {
        match self {
            ManagedNats::Server(process) => Some(process.pid()),
            ManagedNats::External | ManagedNats::Cluster(_) => None,
        }
    }

    async fn stop(self) {
        match self {
            ManagedNats::External => {}
            ManagedNats::Server(mut process) => process.stop_async(SERVER_GRACE).await,
            ManagedNats::Cluster(cluster) => {
                let stopped = tokio::task::spawn_blocking(move || cluster.stop_all(SERVER_GRACE));
                let error = match stopped.await {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                };
                eprintln!("parti-sim: stopping the NATS cluster: {error}");
            }
        }
    }
}

/// Run a blocking start on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    start: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(start)
        .await
        .context("a start task failed")?
}

/// Start the coordinator daemon on a free port; returns its `http://` endpoint. `nats_url`
/// may list several servers (comma-separated); `nats_cluster_dir` names a managed cluster's
/// directory (see [`nats_cluster`]); `nats_server_pid` a single managed server's pid (the
/// coordinator samples its resources).
fn start_coordinator(
    dir: &Path,
    nats_url: &str,
    nats_cluster_dir: Option<&Path>,
    nats_server_pid: Option<u32>,
) -> anyhow::Result<(ManagedProcess, String)> {
    let mut command = Command::new(sibling_binary("coordinator")?);
    command.args(["--listen", "127.0.0.1:0", "--nats-url", nats_url]);
    if let Some(cluster) = nats_cluster_dir {
        command.arg("--nats-cluster-dir").arg(cluster);
    }
    if let Some(pid) = nats_server_pid {
        command.args(["--nats-server-pid", &pid.to_string()]);
    }
    let (process, address) = start_and_wait(
        "coordinator",
        command,
        &dir.join("coordinator.log"),
        ReadyOn::Stdout,
        |line| {
            line.strip_prefix("listening on ")
                .map(|a| a.trim().to_string())
        },
    )?;
    Ok((process, format!("http://{address}")))
}

/// Start one agent connected to `coordinator`, working under `dir/<id>`; `again`: a restart,
/// whose log goes on after the dead one's.
fn start_agent(
    dir: &Path,
    coordinator: &str,
    id: &str,
    again: bool,
) -> anyhow::Result<ManagedProcess> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(again)
        .truncate(!again)
        .open(dir.join(format!("{id}.log")))?;
    let child = Command::new(sibling_binary("agent")?)
        .args(["run", "--coordinator", coordinator, "--id", id, "--dir"])
        .arg(dir.join(id))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    Ok(ManagedProcess::new(id, child))
}
