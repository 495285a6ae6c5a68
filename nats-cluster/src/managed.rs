//! Processes `simctl run` starts and owns: a nats-server, the coordinator daemon and one
//! agent. Each is a real child process, stopped (SIGTERM, then SIGKILL) when dropped.
//! A cluster of several nats-servers is [`crate`]'s.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// A child process stopped on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
}

impl ManagedProcess {
    /// Stop it: SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(process = %self.name, "did not stop in time; killing");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop(Duration::from_secs(15));
        }
    }
}

/// A binary built next to the running one (`target/<profile>/<name>`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running binary")?;
    let path = exe
        .parent()
        .map(|dir| dir.join(name))
        .context("binary has no directory")?;
    if !path.exists() {
        bail!(
            "{} not found: build the workspace first (cargo build --release --workspace)",
            path.display()
        );
    }
    Ok(path)
}

/// The nats-server to manage: `$NATS_SERVER_BIN`, the project's `.tools/bin`, or `$PATH`.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let mut candidates = vec![PathBuf::from(".tools/bin/nats-server")];
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/simctl, or target/<profile>/deps/<test> for integration tests:
        // the workspace holding the binary is one of its ancestors.
        candidates.extend(
            exe.ancestors()
                .skip(1)
                .map(|dir| dir.join(".tools/bin/nats-server")),
        );
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|dir| dir.join("nats-server")));
    }
    candidates
        .into_iter()
        .find(|path| path.exists())
        .context("nats-server not found: run ./scripts/setup.sh or set NATS_SERVER_BIN")
}

/// Start `command`, wait for a stderr/stdout line for which `ready` returns a value, keep
/// the rest of its output flowing into `log`.
fn start_and_wait<T: Send + 'static>(
    name: &str,
    mut command: Command,
    log: &Path,
    from_stderr: bool,
    ready: fn(&str) -> Option<T>,
) -> anyhow::Result<(ManagedProcess, T)> {
    let mut log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let other = log_file.try_clone()?;
    if from_stderr {
        command.stderr(Stdio::piped()).stdout(other);
    } else {
        command.stdout(Stdio::piped()).stderr(other);
    }
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let pipe: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = writeln!(log_file, "{line}");
            if !sent && let Some(value) = ready(&line) {
                let _ = sender.send(value);
                sent = true;
            }
        }
    });
    let mut process = ManagedProcess {
        name: name.to_string(),
        child,
    };
    match receiver.recv_timeout(Duration::from_secs(30)) {
        Ok(value) => Ok((process, value)),
        Err(_) => {
            process.stop(Duration::from_secs(1));
            bail!(
                "{name} did not become ready within 30s (log: {})",
                log.display()
            )
        }
    }
}

/// Start a JetStream nats-server on a free loopback port, storing under `dir`, with the
/// run config's `nats.jetstream` limits (the server has no command-line flags for them, so
/// they go into a small config file).
pub fn start_nats(
    dir: &Path,
    limits: &sim_core::config::JetStreamConfig,
) -> anyhow::Result<(ManagedProcess, String)> {
    let store = dir.join("nats-store");
    std::fs::create_dir_all(&store)?;
    let conf = dir.join("nats-server.conf");
    let text = format!(
        "listen: \"127.0.0.1:-1\"\njetstream {{\n  store_dir: {:?}\n  max_memory_store: {}\n  max_file_store: {}\n}}\n",
        store.display().to_string(),
        limits.max_memory.0,
        limits.max_file_storage.0
    );
    std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    let mut command = Command::new(nats_server_binary()?);
    command.arg("-c").arg(&conf);
    let (process, port) = start_and_wait(
        "nats-server",
        command,
        &dir.join("nats-server.log"),
        true,
        |line| {
            line.split("Listening for client connections on ")
                .nth(1)?
                .trim()
                .rsplit(':')
                .next()?
                .parse::<u16>()
                .ok()
        },
    )?;
    Ok((process, format!("nats://127.0.0.1:{port}")))
}

/// Start the coordinator daemon on a free port; returns its `http://` endpoint. `nats_url`
/// may list several servers (comma-separated); `nats_cluster_dir` names a managed cluster's
/// directory (see [`crate`]).
pub fn start_coordinator(
    dir: &Path,
    nats_url: &str,
    nats_cluster_dir: Option<&Path>,
) -> anyhow::Result<(ManagedProcess, String)> {
    let mut command = Command::new(sibling_binary("coordinator")?);
    command.args(["--listen", "127.0.0.1:0", "--nats-url", nats_url]);
    if let Some(cluster) = nats_cluster_dir {
        command.arg("--nats-cluster-dir").arg(cluster);
    }
    let (process, address) = start_and_wait(
        "coordinator",
        command,
        &dir.join("coordinator.log"),
        false,
        |line| {
            line.strip_prefix("listening on ")
                .map(|a| a.trim().to_string())
        },
    )?;
    Ok((process, format!("http://{address}")))
}

/// Start one agent connected to `coordinator`, working under `dir/agent`.
pub fn start_agent(dir: &Path, coordinator: &str, id: &str) -> anyhow::Result<ManagedProcess> {
    let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
    let child = Command::new(sibling_binary("agent")?)
        .args(["run", "--coordinator", coordinator, "--id", id, "--dir"])
        .arg(dir.join(id))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    Ok(ManagedProcess {
        name: id.to_string(),
        child,
    })
}
