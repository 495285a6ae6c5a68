//! The verdict against defects that do not come from our worker: a NATS client that is not
//! ours (`tests/foreign.py`, nats-py) misbehaves on a `simctl run` with an external
//! nats-server, the way a user's own buggy service would.
//!
//! One run carries five defects, each on a partition of its own, and each check must name
//! exactly its partition:
//! - partition 0: one message nakked with a 25 s delay under quick.yaml's 15 s validation
//!   window — it is processed, but late, and after its successors (late *and* order);
//! - partition 1: one message nakked with a 10 s delay — processed in time, after its
//!   successors (order only). Longer than parti's wait for a message another puller took
//!   (6.5 s here, `parti/src/takeover.rs`): a 3 s nak is now waited for and keeps the order;
//! - partition 2: a second consumer of the partition reporting 20 messages it processed,
//!   each on its first delivery, like our worker did: two first deliveries of one message
//!   are concurrent processing, however far apart in time; and processing by a worker no
//!   assignment named (ownership);
//! - partition 3: a consumer bound to the partition's own durable beside our worker,
//!   reporting 20 messages under assignment version 0: the broker hands each message to one
//!   of the two, so nothing is duplicated, and its own statuses say nothing. The assignment
//!   document convicts it at its first message, whatever the rate (ownership).
//!
//! - partition 4: one message taken and acknowledged by a foreign client that never
//!   reports it, then the partition removed (`simctl chaos partition_changes --target`):
//!   the removal does not excuse what the durable had acknowledged (loss, that seq only);
//!   partition 5 is removed with nothing taken, which excuses and fails nothing.
//!
//! A second run (quick.yaml as it is) has a worker killed by a signal the harness did not
//! send, from the test: an unexpected exit, and only that. Two more show the last fault's
//! recovery is judged: waited for when the duration passes, a FAIL when a stop cuts it.
//!
//! The config is quick.yaml with one worker and `workers.ordered: true` (the default, spelled
//! out because the order assertions depend on it). One worker, so every anomaly is the
//! foreign client's and the partitions it touches are exact. The clean control runs the same
//! config without the foreign client: PASS. Order across handoffs and crashes has its clean
//! controls in the runs with many workers and chaos (docs/VERDICT.md, "order").

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::time::Duration;

use test_support::NatsServer;
use test_support::report::{anomaly_partitions, elements, failure_kinds, reasons, strings};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `foreign.py` with the project's virtualenv (scripts/setup.sh installs nats-py there).
fn foreign(args: &[&str]) -> std::process::Child {
    let python = workspace().join(".tools/venv/bin/python");
    Command::new(&python)
        .arg(workspace().join("simctl/tests/foreign.py"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", python.display()))
}

#[track_caller]
fn succeeded(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn run_dir_socket(run_dir: &Path) -> PathBuf {
    // `simctl run`'s agent is "local" and keeps its report socket in its directory.
    run_dir.join("local").join("reports.sock")
}

/// quick.yaml against the external server `url`, with one worker that promises order.
fn config(url: &str) -> String {
    let external = format!("nats:\n  mode: external\n  url: {url}\n");
    test_support::edited_config(
        "quick.yaml",
        &[
            ("nats:\n  mode: embedded\n", &external),
            (
                "workers:\n  count: 3\n",
                "workers:\n  count: 1\n  ordered: true\n",
            ),
        ],
    )
}

/// A `simctl run` of `config` in `dir`, 45 s, started (not awaited).
fn start_run(dir: &Path, config: &str) -> std::process::Child {
    start_run_for(dir, config, "45s")
}

/// A `simctl run` of `config` in `dir` lasting `duration`, started (not awaited).
fn start_run_for(dir: &Path, config: &str, duration: &str) -> std::process::Child {
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_simctl"))
        .current_dir(workspace())
        .args(["run", "--config"])
        .arg(&config_path)
        // The agent's report socket refuses processes it did not start; the rogue and the
        // thief below are such processes, standing in for a user's consumer that the agent
        // did start and that misbehaves the same way (agent/src/socket.rs).
        .env("PARTI_SIM_TEST_ADMIT_FOREIGN_REPORTS", "1")
        .args(["--duration", duration, "--seed", "7", "--json"])
        .arg(dir.join("report.json"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("simctl run")
}

/// The coordinator endpoint a started `simctl run` announces on its stderr. A thread reads
/// (and echoes) its stderr from then on.
fn coordinator_of(run: &mut std::process::Child) -> String {
    announced(run).0
}

/// What a started `simctl run` announces on its stderr: its coordinator endpoint and its
/// run directory. A thread reads (and echoes) its stderr from then on.
fn announced(run: &mut std::process::Child) -> (String, PathBuf) {
    use std::io::BufRead;
    let stderr = run.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split(", coordinator ").nth(1) {
                let _ = tx.send(rest.split(',').next().unwrap_or_default().to_string());
            }
            if let Some(rest) = line.split("(run directory ").nth(1) {
                let _ = tx.send(rest.trim_end_matches(')').to_string());
            }
            eprintln!("simctl run: {line}");
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("simctl run announces its coordinator and run directory")
    };
    let coordinator = next();
    (coordinator, workspace().join(next()))
}

/// Wait (with a deadline) until the events of the run in `run_dir` contain `needle`.
fn wait_for_event(run_dir: &Path, needle: &str) {
    let events = run_dir.join("events.log");
    test_support::wait_for(
        &format!("an event saying {needle:?}"),
        Duration::from_secs(90),
        || std::fs::read_to_string(&events).is_ok_and(|text| text.contains(needle)),
    );
}

/// `simctl --coordinator <coordinator> <args>`.
fn simctl_at(coordinator: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simctl"))
        .args(["--coordinator", coordinator])
        .args(args)
        .output()
        .expect("simctl")
}

/// `simctl chaos partition_changes --target <target>` against `coordinator`; its output.
fn remove_partition(coordinator: &str, target: &str) -> String {
    let output = simctl_at(
        coordinator,
        &["chaos", "partition_changes", "--target", target],
    );
    succeeded(&format!("removing {target}"), &output)
}

/// `simctl chaos <event> --target <target> [--duration <duration>]`, again until the
/// coordinator takes it (a worker is a candidate once its first status arrived).
fn inject(coordinator: &str, event: &str, target: &str, duration: Option<&str>) {
    let mut args = vec!["chaos", event, "--target", target];
    if let Some(duration) = duration {
        args.extend(["--duration", duration]);
    }
    test_support::wait_until(
        &format!("{event} on {target} taken"),
        Duration::from_secs(60),
        || {
            let output = simctl_at(coordinator, &args);
            if output.status.success() {
                Ok(())
            } else {
                Err(test_support::output_text(&output))
            }
        },
    );
}

/// Wait for the run; its exit code, stdout and report.
fn finish_run(dir: &Path, run: std::process::Child) -> (Option<i32>, String, serde_json::Value) {
    let run = run.wait_with_output().expect("simctl");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    eprintln!(
        "--- simctl stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json = std::fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null);
    (run.status.code(), stdout, json)
}

/// A nats-server of the test's own and a directory for the run.
fn set_up(name: &str) -> (NatsServer, tempfile::TempDir) {
    test_support::workspace_binary("agent");
    let dir = tempfile::Builder::new()
        .prefix(&format!("simctl-{name}-"))
        .tempdir()
        .expect("tempdir");
    (NatsServer::start(), dir)
}

#[test]
fn the_same_run_without_the_foreign_client_passes() {
    let (nats, dir) = set_up("foreign-control");
    let run = start_run(dir.path(), &config(&nats.url()));
    let (code, stdout, json) = finish_run(dir.path(), run);
    assert_eq!(code, Some(0), "expected PASS:\n{stdout}");
    let sent = json["tracker"]["sent"].as_u64().unwrap_or(0);
    assert!(sent > 1000, "a run with traffic: {sent}");
    assert_eq!(json["tracker"]["received"].as_u64(), Some(sent));
    for counter in ["late", "order_violations", "duplicates_concurrent"] {
        assert_eq!(json["tracker"][counter], 0, "{counter}:\n{stdout}");
    }
}

#[test]
fn late_reordered_and_doubly_consumed_messages_from_a_foreign_client_fail_for_their_reasons() {
    let (nats, dir) = set_up("foreign");
    let config = config(&nats.url());
    let stream = sim_core::config::Config::from_yaml_str(&config)
        .expect("config")
        .nats
        .stream;
    let mut run = start_run(dir.path(), &config);
    let coordinator = coordinator_of(&mut run);
    // Each waits (with a deadline) for the partition's durable, i.e. for a worker to own it.
    let url = nats.url();
    let late = foreign(&["nak", &url, &stream, "sim-0", "25"]);
    let reordered = foreign(&["nak", &url, &stream, "sim-1", "10"]);
    let socket = run_dir_socket(&dir.path().join("run"));
    let socket = socket.to_str().expect("utf-8 path");
    let rogue = foreign(&["rogue", &url, &stream, "sim-2", socket, "rogue-2", "20"]);
    let steal = foreign(&["steal", &url, &stream, "sim-3", socket, "rogue-3", "20"]);
    // Partition 4: one message taken and acknowledged, never processed; then the partition
    // is removed. Partition 5 is removed too, with nothing taken: its removal excuses.
    let swallowed = foreign(&["swallow", &url, &stream, "sim-4"]);
    let swallowed = swallowed.wait_with_output().expect("swallow");
    let swallowed: serde_json::Value =
        serde_json::from_str(succeeded("swallow", &swallowed).trim()).expect("swallow's line");
    let swallowed_seq = swallowed["swallowed"]["seq"].as_u64().expect("seq");
    let removed = remove_partition(&coordinator, "partition-4");
    let removed_too = remove_partition(&coordinator, "partition-5");
    eprintln!("{removed}{removed_too}");
    let late = late.wait_with_output().expect("nak 0");
    let reordered = reordered.wait_with_output().expect("nak 1");
    let rogue = rogue.wait_with_output().expect("rogue");
    let steal = steal.wait_with_output().expect("steal");
    let (code, stdout, json) = finish_run(dir.path(), run);
    for (what, output) in [
        ("nak 0", &late),
        ("nak 1", &reordered),
        ("rogue", &rogue),
        ("steal", &steal),
    ] {
        eprintln!("{what}: {}", succeeded(what, output).trim());
    }

    assert_eq!(code, Some(1), "expected FAIL:\n{stdout}");
    assert_eq!(
        failure_kinds(&json),
        [
            "concurrent_processing",
            "late",
            "loss",
            "order",
            "ownership"
        ]
        .map(String::from)
        .into(),
        "each defect fails its own check, and nothing else fails:\n{stdout}"
    );
    // Both foreign consumers, and nobody else, processed what no assignment allowed: each of
    // their 20 messages, from the first.
    let unowned: Vec<(String, u64, u64)> = elements(&json["unowned"])
        .iter()
        .map(|u| {
            (
                u["worker"].as_str().unwrap_or_default().to_string(),
                u["partition"].as_u64().unwrap_or(u64::MAX),
                u["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        unowned,
        [("rogue".to_string(), 2, 20), ("rogue".to_string(), 3, 20)],
        "{stdout}"
    );
    // The swallowed message, and only it, is lost: its partition's removal does not excuse
    // what its durable had acknowledged.
    assert_eq!(json["tracker"]["lost"], 1, "late is not lost: {stdout}");
    let lost: Vec<(u64, u64)> = elements(&json["tracker"]["anomalies"])
        .iter()
        .filter(|a| a["kind"] == "lost")
        .map(|a| {
            (
                a["partition"].as_u64().unwrap_or(0),
                a["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(lost, [(4, swallowed_seq)], "{stdout}");
    assert_eq!(json["tracker"]["partitions_removed"], 2);
    let details: Vec<&str> = elements(&json["faults"])
        .iter()
        .filter_map(|f| f["detail"].as_str())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("removed partition 4 (acknowledged through seq")),
        "the ack floor was read: {details:?}"
    );
    assert_eq!(json["tracker"]["late"], 1);
    assert_eq!(anomaly_partitions(&json, "late"), [0].into());
    // Both nakked messages came back after their successors; the other partitions are in
    // order (the rogue reads partition 2 from its start, in order).
    assert_eq!(anomaly_partitions(&json, "order_violation"), [0, 1].into());
    assert_eq!(
        anomaly_partitions(&json, "duplicate_concurrent"),
        [2].into(),
        "the rogue's partition only"
    );
    // Each of the rogue's 20 messages was processed by our worker too, on its first delivery
    // to our durable (one worker, no handoff), so each duplicate is two first deliveries.
    assert_eq!(json["tracker"]["duplicates_concurrent"], 20, "{stdout}");
    assert_eq!(json["tracker"]["duplicates_redelivery"], 0, "{stdout}");
}

/// The pid of `process` among the children of the agent whose report socket is `socket`
/// (so a run of another test is never touched); waits for it with a deadline.
fn child_pid(socket: &Path, process: &str) -> u32 {
    let want_process = format!("PARTI_SIM_PROCESS={process}");
    let want_socket = format!("PARTI_SIM_REPORT_SOCKET={}", socket.display());
    let find = || {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .find_map(|entry| {
                let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let environ = std::fs::read(entry.path().join("environ")).ok()?;
                let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
                let has = |want: &str| vars.contains(&want.as_bytes());
                (has(&want_process) && has(&want_socket)).then_some(pid)
            })
    };
    let mut pid = None;
    test_support::wait_for(
        &format!("{process} started"),
        Duration::from_secs(60),
        || {
            pid = find();
            pid.is_some()
        },
    );
    pid.expect("found")
}

/// Send `signal` (`kill`'s spelling: `-STOP`) to `pid`, as something outside the harness
/// would.
fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Wait (with a deadline) until `process`'s log in the run of `dir` contains `needle`.
fn wait_for_log(dir: &Path, process: &str, needle: &str) {
    let log = dir.join(format!("run/local/logs/{process}.log"));
    test_support::wait_for(
        &format!("{process}'s log saying {needle:?}"),
        Duration::from_secs(60),
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle)),
    );
}

/// A worker killed by a signal the harness did not send (as the kernel's OOM killer or an
/// abort would) fails the run as an unexpected exit naming it, its status and its last log
/// line, and only for that; its log is kept in the run directory. The control is
/// `simctl.rs`'s `quick_run_passes` (the same config, nobody killed).
#[test]
fn a_worker_dying_of_a_signal_nobody_sent_fails_the_run_naming_it() {
    let (_nats, dir) = set_up("unexpected-exit");
    let run = start_run(dir.path(), &test_support::edited_config("quick.yaml", &[]));
    let pid = child_pid(&run_dir_socket(&dir.path().join("run")), "worker-1");
    // Once it is at work, so that there are last words to show.
    wait_for_log(dir.path(), "worker-1", "worker started");
    send_signal(pid, "-ABRT");
    let (code, stdout, json) = finish_run(dir.path(), run);

    assert_eq!(code, Some(1), "expected FAIL:\n{stdout}");
    assert_eq!(
        failure_kinds(&json),
        ["unexpected_exit".to_string()].into(),
        "{stdout}"
    );
    let reason = reasons(&json).join("\n");
    assert!(
        reason.starts_with("unexpected exit: worker-1 died (signal 6) and no fault targeted it")
            && reason.contains("; its log ends: "),
        "{reason}"
    );
    // Its last words are in the run directory.
    let run_id = json["run_id"].as_str().expect("run id");
    let logs = workspace().join(format!("runs/{run_id}/logs"));
    let kept: Vec<String> = std::fs::read_dir(&logs)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let exit_log = format!("local-worker-1-exit-{pid}.log");
    assert!(kept.contains(&exit_log), "{exit_log} in {kept:?}");
    let text = std::fs::read_to_string(logs.join(&exit_log)).expect("read");
    assert!(text.contains("parti"), "its own log: {text}");
}

/// The last fault's recovery is judged, never dropped. The duration passes while a pause's
/// recovery is measured: the drain waits for it (and the run passes, with its rebalance
/// time). A `simctl stop` during a recovery leaves it unjudged: a FAIL saying so.
#[test]
fn the_last_recovery_is_waited_for_and_a_stop_during_one_fails_it() {
    let (_nats, waited) = set_up("recovery-waited");
    let (_, stopped) = set_up("recovery-stopped");
    // A paused worker strands the messages it had fetched until their 10 s ack wait ends;
    // with the leader paused too, they come back later than quick.yaml's 15 s window. This
    // test is about the recovery, so the window is wide.
    let config = test_support::edited_config(
        "quick.yaml",
        &[("validation_window: 15s", "validation_window: 60s")],
    );
    // 8 s: the pause (injected as soon as two workers are live, in the first seconds)
    // recovers only after the workers' 6 s lease lapses and its partitions move, past 8 s.
    let mut waiting = start_run_for(waited.path(), &config, "8s");
    let mut stopping = start_run(stopped.path(), &config);
    let (waiting_at, stopping_at) = (coordinator_of(&mut waiting), coordinator_of(&mut stopping));
    // Paused once it holds partitions (else its partitions are all owned at once and the
    // recovery is over before anything happens).
    wait_for_log(waited.path(), "worker-1", "partition acquired");
    inject(&waiting_at, "worker_pause", "worker-1", Some("14s"));
    wait_for_log(stopped.path(), "worker-1", "partition acquired");
    inject(&stopping_at, "worker_pause", "worker-1", Some("20s"));
    succeeded("stop", &simctl_at(&stopping_at, &["stop"]));
    let (code, stdout, json) = finish_run(stopped.path(), stopping);
    assert_eq!(code, Some(1), "expected FAIL:\n{stdout}");
    assert_eq!(
        failure_kinds(&json),
        ["rebalance_timeout".to_string()].into(),
        "{stdout}"
    );
    let reason = reasons(&json).join("\n");
    assert!(
        reason.starts_with("recovery unfinished: after worker_pause on worker-1"),
        "{reason}"
    );

    let (code, stdout, json) = finish_run(waited.path(), waiting);
    assert_eq!(code, Some(0), "expected PASS:\n{stdout}");
    let events = strings(&json["events"]);
    assert!(
        events.iter().any(|e| e.contains(
            "duration reached: the drain waits for the recovery from worker_pause on worker-1"
        )),
        "{events:#?}"
    );
    let timed = elements(&json["fault_stats"])
        .iter()
        .find(|s| s["event"] == "worker_pause")
        .and_then(|s| s["rebalance_max_s"].as_f64());
    assert!(timed.is_some(), "the pause's recovery was timed: {stdout}");
}

/// After a fault, the gates that look past its recovery. One run has two defects:
/// - knob `takeover_stall: 10s`: a worker refuses (naks) the messages of every partition
///   it takes over from worker-1, scaled down, for 10 s, under `catch_up_timeout: 3s` — the
///   recovery is quick (the partitions are owned, the others flow), the catch-up is not:
///   `catch_up`, naming the scale-down. A graceful leave, because it strands nothing: after
///   a pause the paused worker's fetched messages come back only with their 10 s ack wait
///   (twice, when the resumed worker fetches them again before it finds itself fenced),
///   which makes a clean catch-up take up to ~11 s; a crash moves nothing (the restarted
///   worker reclaims its partitions under its stable id);
/// - worker-2 stopped (SIGSTOP) from the test once the catch-up failed, as a hung process
///   would be: it still owns partitions by its last status and never reports again
///   — `silent_after_chaos`, naming worker-2 only (its partitions move on, nothing is lost).
///
/// The control is the same config and scale-down without either defect: PASS, the catch-up
/// timed.
#[test]
fn a_slow_takeover_fails_the_catch_up_and_a_hung_worker_fails_seen_after_chaos() {
    let (_nats, defect) = set_up("catch-up-defect");
    let (_, control) = set_up("catch-up-control");
    // The windows are wide: the refused and the stranded messages come late, not lost.
    let config = |faults: &str| {
        test_support::edited_config(
            "quick.yaml",
            &[
                (
                    "coordinator:\n  validation_window: 15s\n",
                    "coordinator:\n  validation_window: 60s\n  catch_up_timeout: 3s\n",
                ),
                // 1 ms a message: the control's catch-up stays far below the 3 s on a busy
                // machine too.
                ("max: 5ms", "max: 1ms"),
                // The refusals are handler errors, retried after a backoff behind their
                // successors: out of order by nature. This test is about the catch-up and
                // silence gates, so the workers promise no order here.
                (
                    "workers:\n  count: 3\n",
                    &format!("workers:\n  count: 3\n  ordered: false\n{faults}"),
                ),
            ],
        )
    };
    let mut failing = start_run(
        defect.path(),
        &config("  faults:\n    takeover_stall: 10s\n"),
    );
    let mut passing = start_run(control.path(), &config(""));
    let (failing_at, failing_dir) = announced(&mut failing);
    let passing_at = coordinator_of(&mut passing);
    for (dir, at) in [(&defect, &failing_at), (&control, &passing_at)] {
        // Once the second wave holds partitions too (messages flow by then).
        wait_for_log(dir.path(), "worker-2", "partition acquired");
        inject(at, "scale_down", "worker-1", None);
    }
    // Hung once the catch-up failed: a worker stopped before the recovery would keep it
    // from ever being judged recovered (its last status still claims its partitions).
    wait_for_event(&failing_dir, "catch-up: after scale_down");
    let hung = child_pid(&run_dir_socket(&defect.path().join("run")), "worker-2");
    send_signal(hung, "-STOP");

    let (code, stdout, json) = finish_run(defect.path(), failing);
    assert_eq!(code, Some(1), "expected FAIL:\n{stdout}");
    assert_eq!(
        failure_kinds(&json),
        ["catch_up".to_string(), "silent_after_chaos".to_string()].into(),
        "{stdout}"
    );
    let reasons = reasons(&json);
    let named = |prefix: &str| -> Vec<&str> {
        reasons
            .iter()
            .copied()
            .filter(|r| r.starts_with(prefix))
            .collect()
    };
    assert!(
        matches!(named("catch-up").as_slice(), [one] if one.starts_with("catch-up: after scale_down on worker-1 at ")),
        "{reasons:#?}"
    );
    assert!(
        matches!(named("silent").as_slice(), [one] if one.starts_with("silent after chaos: worker-2 (owning ")),
        "only the hung worker is silent: {reasons:#?}"
    );

    let (code, stdout, json) = finish_run(control.path(), passing);
    assert_eq!(code, Some(0), "expected PASS:\n{stdout}");
    let leave = elements(&json["faults"])
        .iter()
        .find(|f| f["event"] == "scale_down")
        .cloned()
        .unwrap_or_default();
    let caught_up = leave["catch_up_s"].as_f64();
    assert!(
        leave["moved"].as_u64().is_some_and(|moved| moved > 0)
            && caught_up.is_some_and(|s| s < 3.0),
        "the scale-down moved partitions and its catch-up was timed: {leave}"
    );
    eprintln!(
        "control: recovery {} s, catch-up {caught_up:?} s",
        leave["rebalance_s"]
    );
}
