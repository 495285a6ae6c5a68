//! Single managed processes: a child process stopped (SIGTERM, then SIGKILL) when dropped,
//! starting one and waiting for its "ready" line, and one managed nats-server. `simctl run`
//! builds its local fleet (nats-server, coordinator, agent) from these. A cluster of several
//! nats-servers is [`crate`]'s.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often a stop looks whether the process has exited.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// A child process stopped on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
}

// === impl ManagedProcess ===

impl ManagedProcess {
    /// Manage `child`, called `name` in logs.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        ManagedProcess {
            name: name.into(),
            child,
        }
    }

    /// Stop it: SIGTERM, wait up to `grace`, then SIGKILL. Blocks the calling thread, which
    /// suits `Drop` and synchronous code; async code calls [`ManagedProcess::stop_async`].
    pub fn stop(&mut self, grace: Duration) {
        self.terminate();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(EXIT_POLL);
        }
        self.kill();
        let _ = self.child.wait();
    }

    /// [`ManagedProcess::stop`] for async callers: the same signals and deadline, but it
    /// waits on tokio's timer, so no runtime thread is blocked while the process drains.
    pub async fn stop_async(&mut self, grace: Duration) {
        self.terminate();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        self.kill();
        // SIGKILL cannot be caught: the exit follows at once, reaped here without blocking.
        while self.is_running() {
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ask it to stop (SIGTERM), so it can shut down in order.
    fn terminate(&self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// It ignored SIGTERM for its whole grace: SIGKILL.
    fn kill(&mut self) {
        tracing::warn!(process = %self.name, "did not stop in time; killing");
        let _ = self.child.kill();
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

/// Which output stream carries a process's "ready" line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOn {
    /// Standard output (the coordinator's `listening on ...`).
    Stdout,
    /// Standard error (nats-server's log).
    Stderr,
}

/// Start `command`, wait (blocking, at most 30 s) for a line on `stream` for which `ready`
/// returns a value, keep the rest of its output flowing into `log`.
pub fn start_and_wait<T: Send + 'static>(
    name: &str,
    mut command: Command,
    log: &Path,
    stream: ReadyOn,
    ready: fn(&str) -> Option<T>,
) -> anyhow::Result<(ManagedProcess, T)> {
    let mut log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let other = log_file.try_clone()?;
    match stream {
        ReadyOn::Stderr => command.stderr(Stdio::piped()).stdout(other),
        ReadyOn::Stdout => command.stdout(Stdio::piped()).stderr(other),
    };
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let pipe: Box<dyn std::io::Read + Send> = match stream {
        ReadyOn::Stderr => Box::new(child.stderr.take().context("stderr")?),
        ReadyOn::Stdout => Box::new(child.stdout.take().context("stdout")?),
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
    let mut process = ManagedProcess::new(name, child);
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
        ReadyOn::Stderr,
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
