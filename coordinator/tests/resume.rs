//! A crash-safe coordinator: SIGKILLed during a chaos run (right after injecting a fault,
//! and again while draining), restarted with `--resume`, the run goes on under the same id
//! and its verdict is the one an uninterrupted run would give. The books are checked
//! against the ground truth: the messages the stream holds.
//!
//! Real processes on loopback: a nats-server, the coordinator daemon, one agent with its
//! producers and workers; the coordinator is killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use test_support::{LocalFleet, NatsServer, wait_until};

fn bin(name: &str) -> PathBuf {
    test_support::workspace_binary(name)
}

fn text(output: &Output) -> String {
    test_support::output_text(output)
}

/// A nats-server and a coordinator with one agent, in a temporary directory.
struct Fleet {
    nats: NatsServer,
    dir: tempfile::TempDir,
    daemons: LocalFleet,
}

impl Fleet {
    fn start() -> Self {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let daemons = LocalFleet::start(&nats.url(), dir.path(), "host-1", &[]);
        Self { nats, dir, daemons }
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
  # A worker_pause's partitions wait for the paused owner's messages to time out before
  # the next owner processes them in order (parti's takeover): with the heartbeat expiry,
  # up to about 22 s from publish to processing.
  validation_window: 30s
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
    let started = fleet
        .daemons
        .simctl(&["start", "--config", &config, "--seed", "11"]);
    assert!(started.status.success(), "start: {}", text(&started));
    let id = text(&started)
        .trim()
        .strip_prefix("started ")
        .expect("run id")
        .to_string();

    // Kill 1: right after a fault went out (it was checkpointed before it was sent).
    let daemons = &mut fleet.daemons;
    let offset = daemons.wait_log("fault injected", 0, Duration::from_secs(90));
    daemons.kill_coordinator();
    // The coordinator stays away while producers and workers go on.
    std::thread::sleep(Duration::from_secs(3));
    daemons.restart_coordinator(true);
    let status = daemons.status();
    assert_eq!(run_id(&status), id, "resumed under another id: {status}");
    daemons.wait_log("resuming run", offset, Duration::from_secs(10));

    if during_drain {
        // Kill 2: while draining (producers were told to stop; the rest is in flight). The
        // drain's log line is appended once and stays: waiting for it cannot miss a drain
        // that ends quickly, and `drain_settle` keeps the drain going well past the kill.
        let offset = daemons.wait_log(
            "draining: stopping producers",
            offset,
            Duration::from_secs(120),
        );
        // The drain's line comes before its write-ahead checkpoint: wait for a checkpoint
        // written after it (the engine writes none in between, so it is a draining one).
        let offset = daemons.wait_log("checkpoint written", offset, Duration::from_secs(30));
        daemons.kill_coordinator();
        std::thread::sleep(Duration::from_secs(2));
        daemons.restart_coordinator(true);
        // The checkpoint it resumed from was taken while draining: the kill landed inside
        // the drain.
        daemons.wait_log("resuming run", offset, Duration::from_secs(10));
        let log = std::fs::read_to_string(daemons.coordinator_log()).expect("coordinator log");
        let resumed = log[usize::try_from(offset).expect("offset")..]
            .lines()
            .find(|line| line.contains("resuming run"))
            .expect("the resume line");
        assert!(
            resumed.contains("\"draining\""),
            "the second kill landed outside the drain: {resumed}"
        );
    }
    wait_until("the run finishes", Duration::from_secs(180), || {
        let status = daemons.status();
        if status.contains(" finished ") {
            Ok(())
        } else {
            Err(status)
        }
    });
    let json_path = fleet.dir.path().join("report.json");
    let report = fleet
        .daemons
        .simctl(&["report", "--json", json_path.to_str().expect("utf8")]);
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
    let run_dir = fleet
        .daemons
        .runs()
        .join(json["run_id"].as_str().expect("run id"));
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
        .daemons
        .runs()
        .join(json["run_id"].as_str().expect("run id"))
        .join("logs");
    wait_until(
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
            if expected.iter().all(|e| names.iter().any(|n| n == e)) {
                Ok(())
            } else {
                Err(format!("{names:?}"))
            }
        },
    );
    let worker_log = std::fs::read_to_string(logs.join("host-1-worker-0.log")).expect("worker log");
    assert!(!worker_log.trim().is_empty(), "an empty log was collected");
}
