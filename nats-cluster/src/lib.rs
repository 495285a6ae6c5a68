//! A managed JetStream cluster on loopback, described entirely by a directory, so that a
//! process other than the one that started it — the coordinator daemon injecting a
//! `nats_server_kill` fault, possibly after being restarted itself — can kill and restart
//! its servers with [`NatsCluster::open`].
//!
//! Layout of the directory:
//! - `cluster.json`: size, cluster name, the nats-server binary, and per server its name
//!   (`n<i>`), client URL, ports and config path ([`ClusterDescription`]).
//! - `nats-<i>/server.conf`: server `i`'s config (`server_name n<i>`, client and cluster
//!   ports, routes to every server, JetStream store and limits).
//! - `nats-<i>/store/`: its JetStream store, kept across restarts.
//! - `nats-<i>/server.log`: its output, appended to across restarts.
//! - `nats-<i>/pid`: the pid of its latest start.
//!
//! **Ports.** Free loopback ports are found by binding `127.0.0.1:0` (all of them at once,
//! so they differ) and releasing them before the servers start. Another process can take
//! such a port in between; the server then fails to listen, exits, and [`NatsCluster::start`]
//! reports it with its log path (start again to draw new ports). A restart reuses the ports,
//! with the same small risk.
//!
//! **Ready** means: the server's client port accepts a connection and a JetStream account
//! info request through it is answered. In a cluster only the meta leader answers that
//! request, so an answer proves the server is routed to a cluster that has elected one. We
//! use the client protocol rather than the monitoring endpoint (`/healthz`) so that no HTTP
//! ports are opened (fewer ports to race for, nothing else to configure).
//!
//! **Durability.** The servers keep nats-server's default `sync_interval` (lazy fsync, every
//! 2 minutes): a SIGKILL leaves written data in the page cache, so killing a server tests
//! process crashes, not power loss. See `docs/NATS.md`.
//!
//! Layout of the crate:
//! - this file: [`NatsCluster`], the handle (start, open, kill, restart, stop).
//! - [`managed`]: single managed processes — a child stopped on drop (synchronously or
//!   async), started and awaited by its "ready" line — and one managed nats-server; `simctl
//!   run` builds its local fleet from them.
//! - `layout`: the directory's files ([`ClusterDescription`], server configs, ports).
//! - `error`: [`NatsClusterError`].

mod error;
mod layout;
pub mod managed;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use error::NatsClusterError;
pub use layout::{ClusterDescription, ServerDescription};

use error::io_error;
use layout::{CLUSTER_NAME, FORMAT, free_ports, server_conf, server_dir, write_atomically};
use sim_core::config::JetStreamConfig;

/// The file in a cluster directory that describes the cluster.
pub const DESCRIPTION_FILE: &str = "cluster.json";

/// How long a start or restart may take before it is reported as failed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a SIGKILLed server may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on a managed JetStream cluster (see the module docs).
///
/// The handle that [`NatsCluster::start`]ed the cluster stops it when dropped; handles from
/// [`NatsCluster::open`] never do.
#[derive(Debug)]
pub struct NatsCluster {
    dir: PathBuf,
    description: ClusterDescription,
    /// Stop every server on drop (only the starting handle).
    owner: bool,
}

// === impl NatsCluster ===

impl NatsCluster {
    /// Start `size` servers described by `dir` (created if missing; it must not already
    /// describe a cluster), each with the JetStream `limits`, and wait until every one is
    /// ready (at most [`READY_TIMEOUT`]). Size 1 is a plain JetStream server (no cluster
    /// block) with the same layout. On failure, whatever was started is stopped again.
    pub async fn start(
        dir: &Path,
        limits: &JetStreamConfig,
        size: usize,
    ) -> Result<NatsCluster, NatsClusterError> {
        if size == 0 {
            return Err(NatsClusterError::NoServers);
        }
        std::fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        let dir = dir.canonicalize().map_err(io_error("resolving", dir))?;
        let description_path = dir.join(DESCRIPTION_FILE);
        if description_path.exists() {
            return Err(NatsClusterError::AlreadyDescribed {
                path: description_path,
            });
        }
        let binary = managed::nats_server_binary().map_err(|_| NatsClusterError::BinaryNotFound)?;
        let binary = std::path::absolute(&binary).map_err(io_error("resolving", &binary))?;
        let ports = free_ports(2 * size)?;
        let (client_ports, cluster_ports) = ports.split_at(size);
        let mut servers = Vec::with_capacity(size);
        for index in 0..size {
            let server_dir = server_dir(&dir, index);
            let store = server_dir.join("store");
            std::fs::create_dir_all(&store).map_err(io_error("creating", &store))?;
            let conf = server_dir.join("server.conf");
            let name = format!("n{index}");
            let text = server_conf(
                &name,
                client_ports[index],
                &store,
                limits,
                (size > 1).then_some((cluster_ports[index], cluster_ports)),
            );
            std::fs::write(&conf, text).map_err(io_error("writing", &conf))?;
            servers.push(ServerDescription {
                url: format!("nats://127.0.0.1:{}", client_ports[index]),
                name,
                client_port: client_ports[index],
                cluster_port: cluster_ports[index],
                conf,
            });
        }
        let description = ClusterDescription {
            format: FORMAT,
            size,
            name: CLUSTER_NAME.into(),
            binary,
            servers,
        };
        let json = serde_json::to_vec_pretty(&description).map_err(|e| {
            NatsClusterError::BadDescription {
                path: description_path.clone(),
                reason: e.to_string(),
            }
        })?;
        write_atomically(&description_path, &json)?;
        // From here on the handle owns the servers: an early return stops them on drop.
        let cluster = NatsCluster {
            dir,
            description,
            owner: true,
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        futures::future::try_join_all((0..size).map(|index| cluster.wait_ready(index, deadline)))
            .await?;
        Ok(cluster)
    }

    /// A handle on the cluster described by `dir`, for killing and restarting its servers
    /// from another process. Dropping it leaves the cluster running.
    pub fn open(dir: &Path) -> Result<NatsCluster, NatsClusterError> {
        let path = dir.join(DESCRIPTION_FILE);
        let text = std::fs::read(&path).map_err(|source| NatsClusterError::NotACluster {
            dir: dir.to_path_buf(),
            path: path.clone(),
            source,
        })?;
        let bad = |reason: String| NatsClusterError::BadDescription {
            path: path.clone(),
            reason,
        };
        let description: ClusterDescription =
            serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if description.format != FORMAT {
            return Err(bad(format!(
                "format {} (this build reads {FORMAT})",
                description.format
            )));
        }
        if description.size == 0 || description.servers.len() != description.size {
            return Err(bad(format!(
                "size {} but {} servers",
                description.size,
                description.servers.len()
            )));
        }
        let dir = dir.canonicalize().map_err(io_error("resolving", dir))?;
        Ok(NatsCluster {
            dir,
            description,
            owner: false,
        })
    }

    /// The cluster directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of servers.
    pub fn size(&self) -> usize {
        self.description.size
    }

    /// What `cluster.json` says.
    pub fn description(&self) -> &ClusterDescription {
        &self.description
    }

    /// Every server's client URL, comma-separated (for `--nats-url`, `nats.url` and
    /// `proto::nats_servers`).
    pub fn urls(&self) -> String {
        let urls: Vec<&str> = self
            .description
            .servers
            .iter()
            .map(|server| server.url.as_str())
            .collect();
        urls.join(",")
    }

    /// Server `index`'s client URL.
    pub fn url(&self, index: usize) -> Result<&str, NatsClusterError> {
        Ok(&self.server(index)?.url)
    }

    /// Server `index`'s JetStream name (`n<index>`), as stream cluster info reports it.
    pub fn server_name(&self, index: usize) -> Result<&str, NatsClusterError> {
        Ok(&self.server(index)?.name)
    }

    /// Server `index`'s log file.
    pub fn log_path(&self, index: usize) -> PathBuf {
        server_dir(&self.dir, index).join("server.log")
    }

    /// Whether server `index` runs: its pid file names a live process whose command line is
    /// this cluster's binary with this server's config (so a reused pid does not count).
    pub fn is_running(&self, index: usize) -> bool {
        self.running_pid(index).is_some()
    }

    /// Server `index`'s pid, while it runs (see [`NatsCluster::is_running`]).
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.running_pid(index)
    }

    /// SIGKILL server `index` (a crash: no goodbye to its peers or clients) and wait until it
    /// is gone. Checks first that the pid still is that server.
    pub fn kill(&self, index: usize) -> Result<(), NatsClusterError> {
        let server = self.server(index)?;
        let pid = self
            .running_pid(index)
            .ok_or_else(|| NatsClusterError::NotRunning {
                name: server.name.clone(),
            })?;
        self.signal(index, pid, Signal::SIGKILL)?;
        let deadline = Instant::now() + KILL_TIMEOUT;
        while self.running_pid(index) == Some(pid) {
            if Instant::now() > deadline {
                return Err(NatsClusterError::StillRunning {
                    name: server.name.clone(),
                    pid,
                    waited: KILL_TIMEOUT,
                    signal: "SIGKILL",
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Start server `index` again with the same config (same ports, same store) and wait
    /// until it is ready (at most [`READY_TIMEOUT`]). It then catches up with its peers in
    /// the background; stream cluster info says when its replicas are current.
    pub async fn restart(&self, index: usize) -> Result<(), NatsClusterError> {
        let server = self.server(index)?;
        if let Some(pid) = self.running_pid(index) {
            return Err(NatsClusterError::AlreadyRunning {
                name: server.name.clone(),
                pid,
            });
        }
        self.spawn(index)?;
        self.wait_ready(index, Instant::now() + READY_TIMEOUT).await
    }

    /// Stop every running server: SIGTERM, up to `grace` for them to exit, then SIGKILL.
    pub fn stop_all(&self, grace: Duration) -> Result<(), NatsClusterError> {
        let running: Vec<(usize, u32)> = (0..self.size())
            .filter_map(|index| self.running_pid(index).map(|pid| (index, pid)))
            .collect();
        for &(index, pid) in &running {
            // Gone in between: nothing to stop.
            let _ = self.signal(index, pid, Signal::SIGTERM);
        }
        let alive = |list: &[(usize, u32)]| -> Vec<(usize, u32)> {
            list.iter()
                .copied()
                .filter(|&(index, pid)| self.running_pid(index) == Some(pid))
                .collect()
        };
        let deadline = Instant::now() + grace;
        let mut remaining = alive(&running);
        while !remaining.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            remaining = alive(&remaining);
        }
        for &(index, pid) in &remaining {
            tracing::warn!(server = index, pid, "NATS server ignored SIGTERM; killing");
            let _ = self.signal(index, pid, Signal::SIGKILL);
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        while !remaining.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            remaining = alive(&remaining);
        }
        match remaining.first() {
            None => Ok(()),
            Some(&(index, pid)) => Err(NatsClusterError::StillRunning {
                name: self.description.servers[index].name.clone(),
                pid,
                waited: grace + KILL_TIMEOUT,
                signal: "SIGKILL",
            }),
        }
    }

    fn server(&self, index: usize) -> Result<&ServerDescription, NatsClusterError> {
        self.description
            .servers
            .get(index)
            .ok_or(NatsClusterError::NoSuchServer {
                index,
                size: self.description.size,
            })
    }

    fn pid_path(&self, index: usize) -> PathBuf {
        server_dir(&self.dir, index).join("pid")
    }

    /// The pid of server `index` if it runs (see [`NatsCluster::is_running`]).
    fn running_pid(&self, index: usize) -> Option<u32> {
        let server = self.description.servers.get(index)?;
        let pid: u32 = std::fs::read_to_string(self.pid_path(index))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A zombie has an empty command line, and a reused pid runs something else: neither
        // matches, so neither is signalled.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .collect();
        let expected: [&[u8]; 3] = [
            self.description.binary.as_os_str().as_bytes(),
            b"-c",
            server.conf.as_os_str().as_bytes(),
        ];
        (args == expected).then_some(pid)
    }

    fn signal(&self, index: usize, pid: u32, signal: Signal) -> Result<(), NatsClusterError> {
        let error = |source| NatsClusterError::Signal {
            name: self.description.servers[index].name.clone(),
            pid,
            source,
        };
        let raw = i32::try_from(pid).map_err(|_| error(nix::errno::Errno::ESRCH))?;
        kill(Pid::from_raw(raw), signal).map_err(error)
    }

    /// Start server `index`'s process: its own process group (a Ctrl-C meant for simctl
    /// must not reach it), output appended to its log, pid written for other processes.
    fn spawn(&self, index: usize) -> Result<(), NatsClusterError> {
        let server = self.server(index)?;
        let log_path = self.log_path(index);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("opening", &log_path))?;
        let log_err = log.try_clone().map_err(io_error("opening", &log_path))?;
        let mut child = Command::new(&self.description.binary)
            .arg("-c")
            .arg(&server.conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(io_error("starting", &self.description.binary))?;
        let pid = child.id();
        // Reap it whenever it exits, whoever kills it, so it never lingers as our zombie.
        // Without a thread the child merely stays unreaped until this process exits.
        let _ = std::thread::Builder::new()
            .name(format!("reap-{}", server.name))
            .spawn(move || child.wait());
        write_atomically(&self.pid_path(index), format!("{pid}\n").as_bytes())
    }

    /// Wait until server `index` is ready (see the module docs) or `deadline` passes.
    async fn wait_ready(&self, index: usize, deadline: Instant) -> Result<(), NatsClusterError> {
        let server = self.server(index)?;
        loop {
            if !self.is_running(index) {
                return Err(NatsClusterError::Exited {
                    name: server.name.clone(),
                    log: self.log_path(index),
                });
            }
            let last = match account_info(&server.url).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                return Err(NatsClusterError::NotReady {
                    name: server.name.clone(),
                    timeout: READY_TIMEOUT,
                    last,
                    log: self.log_path(index),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if self.owner
            && let Err(error) = self.stop_all(Duration::from_secs(5))
        {
            tracing::warn!(%error, "stopping the NATS cluster");
        }
    }
}

/// Connect to exactly `url` and ask for the JetStream account info.
async fn account_info(url: &str) -> Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        // Only this server is being checked: no hopping to the peers it advertises.
        .ignore_discovered_servers()
        .connect(url)
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    js.query_account()
        .await
        .map(|_| ())
        .map_err(|e| format!("JetStream account info via {url}: {e}"))
}
