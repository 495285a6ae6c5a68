//! The lab-cluster way: coordinator and agent as separate daemons, driven by simctl
//! start / status / watch / stop / report / agents. Garbage published on a partition subject
//! is counted as malformed and does not change the verdict.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use test_support::{LocalFleet, NatsServer};

fn text(output: &Output) -> String {
    test_support::output_text(output)
}

/// These tests each run a whole fleet; on two cores, running them side by side (the
/// slow-coordinator one forks 12 workers) starves the others into timeouts. One at a time.
fn one_fleet_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLEET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn separate_daemons_run_watch_stop_and_report() {
    let _fleet = one_fleet_at_a_time();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(&nats.url(), dir.path(), "lab-1", &[]);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/quick.yaml");
    let config = config.to_str().expect("utf8 path");

    let started = fleet.simctl(&[
        "start",
        "--config",
        config,
        "--duration",
        "20s",
        "--seed",
        "3",
    ]);
    assert!(started.status.success(), "start: {}", text(&started));
    assert!(text(&started).contains("started run-"));
    let first_run = text(&started)
        .split_whitespace()
        .find(|word| word.starts_with("run-"))
        .expect("run id")
        .to_string();
    let busy = fleet.simctl(&["start", "--config", config]);
    assert_eq!(
        busy.status.code(),
        Some(3),
        "a second run is refused: {}",
        text(&busy)
    );
    let status = fleet.simctl(&["status"]);
    assert!(
        text(&status).contains("running"),
        "status: {}",
        text(&status)
    );

    // Garbage on a partition subject while the run is going.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        for body in ["not json", "{\"partition_id\": \"x\"}", ""] {
            js.publish("simulation.partition.3", body.into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    });

    // Another local process writing into the agent's report socket, claiming a real child's
    // name and reporting a second first delivery of a processed message: accepted, it would
    // fail the run for concurrent processing. It is refused (not a process the agent
    // started), counted, and the verdict below stays PASS.
    fleet.wait_until_received(50, Duration::from_secs(60));
    let socket = dir.path().join("agent").join("reports.sock");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let forged = format!(
        "{{\"type\":\"hello\",\"process\":\"worker-0\"}}\n\
         {{\"type\":\"processed\",\"partition\":0,\"seq\":1,\"worker_id\":\"w-forged\",\
         \"incarnation\":1,\"delivered\":1,\"stream_seq\":1,\"assignment_version\":1,\
         \"published_us\":{now_us},\"received_us\":{now_us},\"processed_us\":{now_us}}}\n"
    );
    let writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.settimeout(30)\n\
             s.connect(sys.argv[1])\n\
             s.sendall(sys.argv[2].encode())\n\
             s.recv(1)\n",
        )
        .arg(&socket)
        .arg(&forged)
        .output()
        .expect("python3");
    assert!(writer.status.success(), "writer: {}", text(&writer));
    test_support::wait_for_line(
        &dir.path().join("agent.log"),
        "report connection refused",
        0,
        Duration::from_secs(30),
    );
    let log = std::fs::read_to_string(dir.path().join("agent.log")).expect("agent log");
    // The log may be coloured: compare without the escape sequences.
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    assert!(plain.contains("refused=1"), "counted: {plain}");

    let watched = fleet.simctl(&["watch"]);
    assert!(watched.status.success(), "watch: {}", text(&watched));
    assert!(
        text(&watched).contains("finished"),
        "watch ends with the run: {}",
        text(&watched)
    );
    let json_path = dir.path().join("report.json");
    let report = fleet.simctl(&["report", "--json", json_path.to_str().expect("utf8")]);
    assert_eq!(
        report.status.code(),
        Some(0),
        "PASS expected: {}",
        text(&report)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json")).expect("parse");
    assert_eq!(
        json["tracker"]["malformed"].as_u64(),
        Some(3),
        "garbage counted: {json}"
    );

    // A second run, stopped early: it drains and still gives a verdict.
    let started = fleet.simctl(&["start", "--config", config, "--duration", "5m"]);
    assert!(started.status.success(), "start: {}", text(&started));
    fleet.wait_until_received(200, Duration::from_secs(60));
    assert!(fleet.simctl(&["stop"]).status.success());
    let watched = fleet.simctl(&["watch"]);
    assert!(watched.status.success());
    let report = fleet.simctl(&["report", "--json", json_path.to_str().expect("utf8")]);
    assert_eq!(
        report.status.code(),
        Some(0),
        "PASS after stop: {}",
        text(&report)
    );
    // What the first run's processes reported after it ended (their exits, as the agent
    // stopped them) may reach this run: refused and counted, never applied.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json")).expect("parse");
    let foreign = &json["foreign_reports"];
    let runs = foreign["runs"].as_array().cloned().unwrap_or_default();
    assert!(
        runs.iter()
            .all(|run| run.as_str() == Some(first_run.as_str())),
        "only the first run's: {foreign}"
    );
    let events = json["events"].to_string();
    assert_eq!(
        events.matches(" exited: ").count(),
        2,
        "only this run's producers' exits are in its events: {events}"
    );
    assert!(
        text(&report).contains("ended: drained"),
        "{}",
        text(&report)
    );
}

/// A fleet with agent `lab-1` under `dir`, running quick.yaml for `duration`, once 50
/// messages were processed.
fn quick_run_under_way(nats: &NatsServer, dir: &std::path::Path, duration: &str) -> LocalFleet {
    let fleet = LocalFleet::start(&nats.url(), dir, "lab-1", &[]);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/quick.yaml");
    let started = fleet.simctl(&[
        "start",
        "--config",
        config.to_str().expect("utf8"),
        "--duration",
        duration,
    ]);
    assert!(started.status.success(), "start: {}", text(&started));
    fleet.wait_until_received(50, Duration::from_secs(60));
    fleet
}

#[test]
fn losing_the_only_agent_is_an_infrastructure_error_not_a_hang() {
    let _fleet = one_fleet_at_a_time();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = quick_run_under_way(&nats, dir.path(), "2m");
    fleet.kill_agent(); // SIGKILL: its children die with it
    let began = Instant::now();
    let watched = fleet.simctl(&["watch"]);
    assert!(watched.status.success());
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "the run ended promptly"
    );
    let report = fleet.simctl(&["report"]);
    assert_eq!(
        report.status.code(),
        Some(3),
        "infrastructure error: {}",
        text(&report)
    );
    assert!(text(&report).contains("agent"), "{}", text(&report));
}

/// An agent is a harness process: killed and started again when no fault asked for it,
/// its children died with it, not by the system under test — an infrastructure error
/// naming it. An `agent_crash` whose agent nobody restarts leaves its children's journals
/// unreplayed: after 60 s, an infrastructure error saying so (then no agent is left).
#[test]
fn an_agent_restarted_by_no_fault_or_not_back_after_its_crash_is_an_infrastructure_error() {
    let _fleet = one_fleet_at_a_time();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = quick_run_under_way(&nats, dir.path(), "5m");
    fleet.restart_agent();
    fleet.wait_until_received(400, Duration::from_secs(60));
    let crash = fleet.simctl(&["chaos", "agent_crash"]);
    assert!(crash.status.success(), "chaos: {}", text(&crash));
    // Nobody restarts it: the run waits 60 s for it, then ends.
    let watched = fleet.simctl(&["watch"]);
    assert!(watched.status.success());
    let report = fleet.simctl(&["report"]);
    let report_text = text(&report);
    assert_eq!(report.status.code(), Some(3), "{report_text}");
    assert!(
        report_text.contains("agent lab-1: its process was replaced with no fault causing it"),
        "{report_text}"
    );
    assert!(
        report_text.contains("agent lab-1: crashed at")
            && report_text.contains("did not come back within 60s"),
        "{report_text}"
    );
}

/// A coordinator that takes 250 ms per report batch, many workers: the agent's batches wait
/// in its outbox (and grow; children would block on their report socket only past the
/// outbox's byte budget), and still no report is lost.
#[test]
fn reports_are_lossless_under_a_slow_coordinator_with_many_workers() {
    let _fleet = one_fleet_at_a_time();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(
        &nats.url(),
        dir.path(),
        "lab-1",
        &["--ingest-delay-ms", "250"],
    );
    let config = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/quick.yaml"),
    )
    .expect("quick.yaml")
    .replacen("count: 16", "count: 48", 1)
    .replacen(
        "partitions_per_producer: 8",
        "partitions_per_producer: 24",
        1,
    )
    .replacen(
        "message_rate_per_partition: 5",
        "message_rate_per_partition: 10",
        1,
    )
    .replacen("workers:\n  count: 3", "workers:\n  count: 12", 1)
    .replacen("validation_window: 15s", "validation_window: 90s", 1);
    assert!(
        config.contains("count: 12") && config.contains("count: 48"),
        "quick.yaml layout changed: update this test"
    );
    let path = dir.path().join("many.yaml");
    std::fs::write(&path, config).expect("write");
    let json_path = dir.path().join("report.json");
    let started = fleet.simctl(&[
        "start",
        "--config",
        path.to_str().expect("utf8"),
        "--duration",
        "20s",
    ]);
    assert!(started.status.success(), "start: {}", text(&started));
    assert!(fleet.simctl(&["watch"]).status.success());
    let report = fleet.simctl(&["report", "--json", json_path.to_str().expect("utf8")]);
    assert_eq!(
        report.status.code(),
        Some(0),
        "PASS expected: {}",
        text(&report)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json")).expect("parse");
    let sent = json["tracker"]["sent"].as_u64().unwrap_or(0);
    assert!(sent > 2000, "enough traffic to need back-pressure: {sent}");
    assert_eq!(json["tracker"]["received"].as_u64(), Some(sent));
    assert_eq!(json["tracker"]["lost"].as_u64(), Some(0));
}
