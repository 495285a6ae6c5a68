//! A crash-safe coordinator: SIGKILLed during a chaos run (right after injecting a fault,
//! and again while draining), restarted with `--resume`, the run goes on under the same id
//! and its verdict is the one an uninterrupted run would give. The books are checked
//! against the ground truth: the messages the stream holds.
//!
//! Real processes on loopback: a nats-server, the coordinator daemon, one agent with its
//! producers and workers; the coordinator is killed with SIGKILL.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{Daemon, NatsServer, simctl};

fn bin(name: &str) -> PathBuf {
    test_support::workspace_binary(name)
}

fn text(output: &Output) -> String {
    test_support::output_text(output)
}

/// A loopback port nobody listens on now (the coordinator must come back on the same one:
/// agents reconnect to the address they know).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Poll `condition` every 200 ms until it holds; panic naming `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    while let Some(last) = condition() {
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Fleet {
    nats: NatsServer,
    dir: tempfile::TempDir,
    port: u16,
    coordinator: Option<Daemon>,
    _agent: Daemon,
}

impl Fleet {
    fn start() -> Self {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut fleet = Self {
            nats,
            port,
            coordinator: None,
            _agent: Daemon(
                Command::new(bin("agent"))
                    .args(["run", "--coordinator"])
                    .arg(format!("http://127.0.0.1:{port}"))
                    .args(["--id", "host-1", "--dir"])
                    .arg(dir.path().join("agent"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("agent"),
            ),
            dir,
        };
        fleet.start_coordinator(false);
        fleet
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("coordinator.log")
    }

    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// Start the daemon (appending to one log) and wait until it serves and the agent is
    /// connected to it.
    fn start_coordinator(&mut self, resume: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log");
        let mut command = Command::new(bin("coordinator"));
        command
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--nats-url", &self.nats.url()])
            .arg("--runs-dir")
            .arg(self.runs())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if resume {
            command.arg("--resume");
        }
        self.coordinator = Some(Daemon(command.spawn().expect("coordinator")));
        let endpoint = self.endpoint();
        wait_for("the agent connects", Duration::from_secs(60), || {
            let agents = text(&simctl(&endpoint, &["agents"]));
            (!agents.contains(" connected")).then_some(agents)
        });
    }

    fn kill_coordinator(&mut self) {
        if let Some(mut daemon) = self.coordinator.take() {
            daemon.kill();
        }
    }

    fn status(&self) -> String {
        text(&simctl(&self.endpoint(), &["status"]))
    }

    /// Wait until the coordinator log, from byte `from`, holds `needle`; returns the log's
    /// length then.
    fn wait_log(&self, needle: &str, from: u64, timeout: Duration) -> u64 {
        let mut end = from;
        wait_for(&format!("the coordinator logs {needle:?}"), timeout, || {
            let mut file = std::fs::File::open(self.log()).ok()?;
            file.seek(std::io::SeekFrom::Start(from)).ok()?;
            let mut tail = String::new();
            file.read_to_string(&mut tail).ok()?;
            if tail.contains(needle) {
                end = from + tail.len() as u64;
                None
            } else {
                let start = tail.len().saturating_sub(3000);
                let start = (start..tail.len())
                    .find(|i| tail.is_char_boundary(*i))
                    .unwrap_or(0);
                Some(format!("log since then:\n{}", &tail[start..]))
            }
        });
        end
    }

    /// Messages the run's stream holds (what producers got stored: the ground truth).
    fn stream_messages(&self) -> u64 {
        let url = self.nats.url();
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async move {
                let client = async_nats::connect(url).await.expect("nats");
                let js = async_nats::jetstream::new(client);
                let mut stream = js.get_stream("SIMULATION").await.expect("stream");
                stream.info().await.expect("stream info").state.messages
            })
    }
}

const CONFIG: &str = r"
simulation:
  duration: 50s
partitions:
  count: 16
  message_rate_per_partition: 5
  distribution: uniform
producers:
  count: 2
  partitions_per_producer: 8
workers:
  count: 4
  assignment_strategy: ConsistentHash
  processing_delay:
    min: 1ms
    max: 5ms
coordinator:
  validation_window: 20s
  stall_timeout: 40s
  # The drain lasts at least this long, so the second kill lands inside it whatever the
  # machine's speed (it is triggered by the drain's log line, which cannot be missed).
  drain_settle: 15s
chaos:
  enabled: true
  interval: 4-6s
  warmup: 8s
  cooldown: 8s
  events:
    - worker_crash
    - worker_pause
    - producer_crash
    - worker_restart
    - partition_changes
    - leader_failure
checkpointing:
  enabled: true
  interval: 2s
";

/// `CONFIG` with `worker_lines` added to its `workers` section.
fn write_config(dir: &Path, worker_lines: &str) -> String {
    let path = dir.join("resume.yaml");
    let config = CONFIG.replacen("workers:\n", &format!("workers:\n{worker_lines}"), 1);
    std::fs::write(&path, config).expect("config");
    path.to_str().expect("utf8").to_string()
}

/// The run id of a `simctl status` line (its first word).
fn run_id(status: &str) -> String {
    status
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Run the config (with `worker_lines`) with the coordinator killed after the first fault
/// and (if `during_drain`) again while draining; returns (exit code, report JSON, report
/// text, fleet).
fn run_with_kills(
    worker_lines: &str,
    during_drain: bool,
) -> (i32, serde_json::Value, String, Fleet) {
    let mut fleet = Fleet::start();
    let config = write_config(fleet.dir.path(), worker_lines);
    let started = simctl(
        &fleet.endpoint(),
        &["start", "--config", &config, "--seed", "11"],
    );
    assert!(started.status.success(), "start: {}", text(&started));
    let id = text(&started)
        .trim()
        .strip_prefix("started ")
        .expect("run id")
        .to_string();

    // Kill 1: right after a fault went out (it was checkpointed before it was sent).
    let offset = fleet.wait_log("fault injected", 0, Duration::from_secs(90));
    fleet.kill_coordinator();
    // The coordinator stays away while producers and workers go on.
    std::thread::sleep(Duration::from_secs(3));
    fleet.start_coordinator(true);
    let status = fleet.status();
    assert_eq!(run_id(&status), id, "resumed under another id: {status}");
    fleet.wait_log("resuming run", offset, Duration::from_secs(10));

    if during_drain {
        // Kill 2: while draining (producers were told to stop; the rest is in flight). The
        // drain's log line is appended once and stays: waiting for it cannot miss a drain
        // that ends quickly, and `drain_settle` keeps the drain going well past the kill.
        let offset = fleet.wait_log(
            "draining: stopping producers",
            offset,
            Duration::from_secs(120),
        );
        fleet.kill_coordinator();
        std::thread::sleep(Duration::from_secs(2));
        fleet.start_coordinator(true);
        // The checkpoint it resumed from was taken while draining (the drain's own
        // write-ahead checkpoint or a later one): the kill landed inside the drain.
        fleet.wait_log("resuming run", offset, Duration::from_secs(10));
        let log = std::fs::read_to_string(fleet.log()).expect("coordinator log");
        let resumed = log[usize::try_from(offset).expect("offset")..]
            .lines()
            .find(|line| line.contains("resuming run"))
            .expect("the resume line");
        assert!(
            resumed.contains("\"draining\""),
            "the second kill landed outside the drain: {resumed}"
        );
    }
    wait_for("the run finishes", Duration::from_secs(180), || {
        let status = fleet.status();
        (!status.contains(" finished ")).then_some(status)
    });
    let json_path = fleet.dir.path().join("report.json");
    let report = simctl(
        &fleet.endpoint(),
        &["report", "--json", json_path.to_str().expect("utf8")],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json")).expect("parse");
    (
        report.status.code().unwrap_or(-1),
        json,
        text(&report),
        fleet,
    )
}

#[test]
fn coordinator_killed_twice_resumes_the_run_and_its_books_match_the_stream() {
    let (code, json, report, fleet) = run_with_kills("", true);
    // Shown with --nocapture: the resumes are in the events.
    println!("{report}");
    assert_eq!(code, 0, "expected PASS:\n{report}");
    let tracker = &json["tracker"];
    let received = tracker["received"].as_u64().expect("received");
    let sent = tracker["sent"].as_u64().expect("sent");
    let stored = fleet.stream_messages();
    assert_eq!(tracker["lost"], 0, "{report}");
    assert_eq!(
        received, stored,
        "every stored message processed and reported exactly once in the books:\n{report}"
    );
    assert!(
        sent <= stored && sent + 20 >= stored,
        "sent {sent}, stored {stored}"
    );
    let events: Vec<&str> = json["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("resumed from checkpoint"))
            .count(),
        2,
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e.starts_with("UNEXPECTED")),
        "{events:#?}"
    );
    // The run directory holds everything, and judging it offline gives the same verdict.
    let run_dir = fleet.runs().join(json["run_id"].as_str().expect("run id"));
    for file in [
        "config.yaml",
        "seed",
        "events.log",
        "final.json",
        "report.txt",
        "report.json",
        "report.junit.xml",
    ] {
        assert!(run_dir.join(file).exists(), "{file} missing in {run_dir:?}");
    }
    assert_eq!(
        std::fs::read_to_string(run_dir.join("seed")).expect("seed"),
        "11\n"
    );
    let offline = Command::new(bin("simctl"))
        .args(["report", "--run-dir"])
        .arg(&run_dir)
        .output()
        .expect("simctl report");
    assert_eq!(offline.status.code(), Some(0), "{}", text(&offline));
    assert!(
        text(&offline).contains("same verdict as recorded"),
        "{}",
        text(&offline)
    );
}

#[test]
fn a_resumed_run_still_fails_for_a_lossy_worker() {
    let (code, json, report, fleet) =
        run_with_kills("  faults:\n    drop_and_ack_one_in: 40\n", false);
    assert_eq!(code, 1, "expected FAIL:\n{report}");
    let reasons: Vec<&str> = json["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("loss")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().all(|r| r.starts_with("loss")),
        "only loss may fail it: {reasons:#?}"
    );
    // A failed run's directory gets its processes' logs from the agent.
    let logs = fleet
        .runs()
        .join(json["run_id"].as_str().expect("run id"))
        .join("logs");
    wait_for(
        "the agent's child logs arrive",
        Duration::from_secs(30),
        || {
            let names: Vec<String> = std::fs::read_dir(&logs)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let expected = ["host-1-worker-0.log", "host-1-producer-0.log"];
            (!expected.iter().all(|e| names.iter().any(|n| n == e))).then(|| format!("{names:?}"))
        },
    );
    let worker_log = std::fs::read_to_string(logs.join("host-1-worker-0.log")).expect("worker log");
    assert!(!worker_log.trim().is_empty(), "an empty log was collected");
}
