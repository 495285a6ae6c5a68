//! One coordinator daemon and one agent on loopback, as real processes — the fleet most
//! end-to-end tests need — and the blocking waits they use.
//!
//! The coordinator listens on a port it picks itself (`--listen 127.0.0.1:0`, read back from
//! its "listening on" line, so no other process can take the port in between) and keeps it
//! across restarts: agents reconnect to the address they know. Both daemons log into the
//! fleet's directory (`coordinator.log` is appended to across restarts, so a test can wait
//! for a line in it), and both are SIGKILLed when the fleet is dropped.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Daemon, output_text, simctl, workspace_binary};

/// Poll `condition` every 200 ms until it returns `Ok`; panic naming `what` and the last
/// `Err` (what was seen instead) after `within`.
///
/// Only for conditions that, once true, stay true (a counter reached, a line appended, a
/// process gone): polling for a state that can begin and end between two polls is a flaky
/// test.
#[track_caller]
pub fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        let last = match condition() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}; last seen: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// [`wait_until`] for a condition with nothing to show while it does not hold.
#[track_caller]
pub fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    wait_until(what, within, || {
        if condition() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
}

/// The number after `field ` in a `simctl status` line (`received 1234`), if any.
pub fn status_number(status: &str, field: &str) -> Option<u64> {
    status
        .split(&format!("{field} "))
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Wait until the append-only file `path`, from byte `from`, holds a line containing
/// `needle`; returns the file's length then (to wait for the next line after this one).
#[track_caller]
pub fn wait_for_line(path: &Path, needle: &str, from: u64, within: Duration) -> u64 {
    let mut end = from;
    wait_until(&format!("{needle:?} in {}", path.display()), within, || {
        let tail = read_from(path, from);
        if tail.lines().any(|line| line.contains(needle)) {
            end = from + tail.len() as u64;
            Ok(())
        } else {
            let start = tail.len().saturating_sub(3000);
            let start = (start..tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(0);
            Err(format!("the file's end:\n{}", &tail[start..]))
        }
    });
    end
}

/// The text of `path` from byte `from` (empty when unreadable).
fn read_from(path: &Path, from: u64) -> String {
    let mut tail = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(std::io::SeekFrom::Start(from)).is_ok()
    {
        let _ = file.read_to_string(&mut tail);
    }
    tail
}

/// A coordinator daemon and one agent connected to it.
#[derive(Debug)]
pub struct LocalFleet {
    dir: PathBuf,
    nats_url: String,
    agent_id: String,
    coordinator_args: Vec<String>,
    port: u16,
    coordinator: Option<Daemon>,
    agent: Option<Daemon>,
}

impl LocalFleet {
    /// Start the coordinator (with `coordinator_args` added to every start, e.g.
    /// `--ingest-delay-ms 250`) against `nats_url`, its run directories under `dir/runs`,
    /// then an agent `agent_id`; returns once the agent is connected.
    pub fn start(nats_url: &str, dir: &Path, agent_id: &str, coordinator_args: &[&str]) -> Self {
        let mut fleet = Self {
            dir: dir.to_path_buf(),
            nats_url: nats_url.to_string(),
            agent_id: agent_id.to_string(),
            coordinator_args: coordinator_args.iter().map(ToString::to_string).collect(),
            port: 0,
            coordinator: None,
            agent: None,
        };
        fleet.spawn_coordinator(false);
        fleet.spawn_agent();
        fleet.wait_for_agent();
        fleet
    }

    /// Start the agent (its log appended to across restarts, its directory kept).
    fn spawn_agent(&mut self) {
        let agent_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        self.agent = Some(Daemon(
            Command::new(workspace_binary("agent"))
                .args([
                    "run",
                    "--coordinator",
                    &self.endpoint(),
                    "--id",
                    &self.agent_id,
                ])
                .arg("--dir")
                .arg(self.dir.join("agent"))
                .stdout(Stdio::null())
                .stderr(agent_log)
                .spawn()
                .expect("agent"),
        ));
    }

    /// SIGKILL the agent and start it again in the same directory (as a supervisor
    /// would), once the coordinator has seen it gone (so the run does go through a moment
    /// without agents); returns once it is connected.
    pub fn restart_agent(&mut self) {
        self.kill_agent();
        wait_until(
            "the coordinator sees the agent gone",
            Duration::from_secs(30),
            || match self.agent_connected() {
                (true, agents) => Err(agents),
                (false, _) => Ok(()),
            },
        );
        self.spawn_agent();
        self.wait_for_agent();
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The coordinator's log (appended to across restarts).
    pub fn coordinator_log(&self) -> PathBuf {
        self.dir.join("coordinator.log")
    }

    /// Where the coordinator writes run directories.
    pub fn runs(&self) -> PathBuf {
        self.dir.join("runs")
    }

    /// `simctl --coordinator <endpoint> <args>`.
    pub fn simctl(&self, args: &[&str]) -> Output {
        simctl(&self.endpoint(), args)
    }

    /// `simctl status`, as text.
    pub fn status(&self) -> String {
        output_text(&self.simctl(&["status"]))
    }

    /// SIGKILL the coordinator (a crash).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut daemon) = self.coordinator.take() {
            daemon.kill();
        }
    }

    /// SIGKILL the agent (its children die with it).
    pub fn kill_agent(&mut self) {
        if let Some(mut daemon) = self.agent.take() {
            daemon.kill();
        }
    }

    /// Start the coordinator again on the same port (`--resume` if `resume`) and wait until
    /// the agent has reconnected.
    pub fn restart_coordinator(&mut self, resume: bool) {
        self.kill_coordinator();
        self.spawn_coordinator(resume);
        self.wait_for_agent();
    }

    /// Wait (60 s) until the agent is connected.
    pub fn wait_for_agent(&self) {
        wait_until(
            "the agent connects",
            Duration::from_secs(60),
            || match self.agent_connected() {
                (true, _) => Ok(()),
                (false, agents) => Err(agents),
            },
        );
    }

    /// Whether the coordinator lists our agent as connected, and its listing.
    fn agent_connected(&self) -> (bool, String) {
        let agents = output_text(&self.simctl(&["agents"]));
        let connected = agents
            .lines()
            .any(|line| line.contains(&self.agent_id) && line.contains(" connected"));
        (connected, agents)
    }

    /// Wait until the current run has processed at least `count` messages.
    pub fn wait_until_received(&self, count: u64, within: Duration) {
        wait_until(&format!("{count} messages processed"), within, || {
            let status = self.status();
            match status_number(&status, "received") {
                Some(received) if received >= count => Ok(()),
                _ => Err(status),
            }
        });
    }

    /// Wait until the coordinator's log, from byte `from`, holds `needle` (see
    /// [`wait_for_line`]).
    pub fn wait_log(&self, needle: &str, from: u64, within: Duration) -> u64 {
        wait_for_line(&self.coordinator_log(), needle, from, within)
    }

    /// Start the coordinator: on a port of its choosing the first time, on the same port
    /// afterwards; returns once it listens.
    fn spawn_coordinator(&mut self, resume: bool) {
        let log_path = self.coordinator_log();
        let from = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("coordinator log");
        let mut command = Command::new(workspace_binary("coordinator"));
        command
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--nats-url", &self.nats_url])
            .arg("--runs-dir")
            .arg(self.runs())
            .args(&self.coordinator_args)
            .stdout(log.try_clone().expect("coordinator log"))
            .stderr(log);
        if resume {
            command.arg("--resume");
        }
        self.coordinator = Some(Daemon(command.spawn().expect("coordinator")));
        wait_for_line(&log_path, "listening on ", from, Duration::from_secs(60));
        if self.port == 0 {
            let text = read_from(&log_path, from);
            self.port = text
                .lines()
                .find_map(|line| line.split("listening on ").nth(1))
                .and_then(|address| address.trim().rsplit(':').next())
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("no port in the coordinator's log:\n{text}"));
        }
    }
}
