//! A chaos run with process faults, watched by a real Prometheus: the run heals itself and
//! passes, and what Prometheus scraped from the coordinator agrees with the report.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use telemetry::MessageTrace;
use test_support::otlp::{Receiver, Span};
use test_support::prometheus::{Prometheus, http_get, tool};
use test_support::report::elements;

/// OTLP span kinds.
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

use super::{KeepOnFailure, simctl, workspace};

/// Per-partition series of the run (of its 16 partitions).
const PARTITION_SERIES: u32 = 5;

/// What simctl prints once the run's metrics endpoint is up.
const METRICS_AT: &str = "parti-sim: metrics at http://";

/// Process faults every 3–5 s (crash, restart, leader kill, producer kill, pauses past the
/// heartbeat lease, scale up and down): the run heals itself and passes; every injected
/// worker fault gets a rebalance time. The last 10 s are fault-free, so Prometheus scrapes
/// the final fault counts many times over. The coordinator serves `/metrics` on a port of its
/// choosing (`port: 0`), a real Prometheus scrapes it every second: its exposition passes
/// `promtool check metrics`, and the stored series show messages flowing, nothing lost, and
/// exactly the report's injected faults per type. Traced at ratio 0.05 into an OTLP receiver:
/// a sampled message's `publish` and `process` spans share its derived trace id and the
/// parent link, with the messaging attributes; every fault has its span, every measured
/// recovery its `recovery` span.
#[test]
fn chaos_run_with_process_faults_passes_and_prometheus_and_tempo_see_it() {
    let prometheus = Prometheus::start();
    let receiver = Receiver::start();
    let dir = tempfile::Builder::new()
        .prefix("simctl-chaos-")
        .tempdir()
        .expect("tempdir");
    let dir = KeepOnFailure(Some(dir));
    let config = test_support::edited_config(
        "quick.yaml",
        &[
            (
                "chaos:\n  enabled: false",
                "chaos:\n  enabled: true\n  events: [worker_crash, worker_restart, leader_failure, producer_crash, worker_pause, leader_pause, scale_up, scale_down]\n  interval: 3s-5s\n  cooldown: 10s",
            ),
            ("workers:\n  count: 3", "workers:\n  count: 4"),
            ("validation_window: 15s", "validation_window: 30s"),
            (
                "prometheus:\n    enabled: false",
                "prometheus:\n    enabled: true\n    port: 0",
            ),
        ],
    );
    let config = super::traces::pushed(
        super::traces::traced(config, &receiver, 0.05),
        &receiver,
        PARTITION_SERIES,
    );
    let path = dir.path().join("chaos.yaml");
    std::fs::write(&path, config).expect("write");
    let json_path = dir.path().join("report.json");
    let mut child = Command::new(simctl())
        .current_dir(workspace())
        .args(["run", "--config"])
        .arg(&path)
        .args(["--duration", "60s", "--seed", "5", "--json"])
        .arg(&json_path)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("simctl");
    // simctl's stderr, passed through; the metrics line is sent on as it comes.
    let (port_tx, port_rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    let echo = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(at) = line.strip_prefix(METRICS_AT) {
                let port = at
                    .split_once(':')
                    .and_then(|(_, rest)| rest.split('/').next())
                    .and_then(|port| port.parse::<u16>().ok());
                let _ = port_tx.send(port);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .expect("simctl names the metrics endpoint");
    prometheus.scrape(&format!("127.0.0.1:{port}"));
    prometheus.wait_until_up(Duration::from_secs(30));
    lint_exposition(port);

    let output = child.wait_with_output().expect("simctl");
    let stderr = echo.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "expected PASS:\n{stdout}\n{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json")).expect("parse");
    let faults = elements(&json["faults"]);
    let injected: Vec<&serde_json::Value> = faults
        .iter()
        .filter(|f| f["outcome"] == "injected")
        .collect();
    assert!(
        injected.len() >= 6,
        "at least 6 faults injected: {faults:?}"
    );
    let kinds: std::collections::BTreeSet<&str> = injected
        .iter()
        .filter_map(|f| f["event"].as_str())
        .collect();
    assert!(kinds.len() >= 4, "several fault types: {kinds:?}");
    assert_eq!(json["tracker"]["lost"].as_u64(), Some(0));

    // The series stop when the coordinator does (Prometheus marks them stale), so the
    // queries look back over the run.
    let over_run = |expr: &str| format!("max_over_time({expr}[10m])");
    for counter in [
        "simulation_messages_sent_total",
        "simulation_messages_received_total",
    ] {
        let rate = prometheus.value(&format!("max_over_time(rate({counter}[5s])[10m:1s])"));
        assert!(rate > 0.0, "{counter} never rose: {rate}");
    }
    assert_eq!(prometheus.value(&over_run("simulation_messages_lost")), 0.0);
    assert_eq!(
        prometheus.value(&over_run("simulation_message_gaps_total")),
        0.0
    );
    // Injected minus withdrawn afterwards, per type: what the report counts as injected.
    let per_type = |name: &str| -> std::collections::BTreeMap<String, f64> {
        prometheus
            .query(&over_run(name))
            .into_iter()
            .map(|s| (s.labels.get("type").cloned().unwrap_or_default(), s.value))
            .collect()
    };
    let scraped = injected_per_type(
        per_type("simulation_chaos_events_total"),
        &per_type("simulation_chaos_withdrawn_total"),
    );
    let mut reported = std::collections::BTreeMap::<String, f64>::new();
    for fault in &injected {
        *reported
            .entry(fault["event"].as_str().unwrap_or_default().to_string())
            .or_default() += 1.0;
    }
    assert_eq!(
        scraped, reported,
        "faults per type: Prometheus's last scrape against the report"
    );
    assert!(
        prometheus.value(&over_run("simulation_workers_active")) >= 4.0,
        "workers seen"
    );
    let partitions = json["tracker"]["partitions_active"]
        .as_f64()
        .expect("partitions");
    let scraped_partitions = prometheus.query(&over_run("simulation_partition_processed_seq"));
    assert_eq!(
        scraped_partitions.len(),
        PARTITION_SERIES as usize,
        "per-partition series capped: {scraped_partitions:?}"
    );
    assert_eq!(
        prometheus.value(&over_run("simulation_partition_series_omitted")),
        partitions - f64::from(PARTITION_SERIES)
    );
    check_pushed_faults(&receiver, &reported, partitions);
    check_dashboard_metrics(&prometheus);
    let run_id = json["run_id"].as_str().expect("run id");
    check_html_report(run_id, injected.len());
    check_message_traces(&receiver, run_id);
    check_fault_traces(&receiver, faults);
}

/// The run directory's report.html shades one band per injected fault, and `simctl report
/// --run-dir D --html F` draws the same picture offline.
fn check_html_report(run_id: &str, injected: usize) {
    let dir = workspace().join("runs").join(run_id);
    let bands = |page: &str| -> std::collections::BTreeSet<String> {
        page.split("data-fault=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_string))
            .collect()
    };
    let page = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert_eq!(bands(&page).len(), injected, "one band per injected fault");
    assert!(
        page.contains("Partition ownership") && page.contains("<svg"),
        "the charts"
    );
    let offline = tempfile::NamedTempFile::new().expect("temp file");
    let output = Command::new(simctl())
        .args(["report", "--run-dir"])
        .arg(&dir)
        .arg("--html")
        .arg(offline.path())
        .output()
        .expect("simctl report");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let redrawn = std::fs::read_to_string(offline.path()).expect("html");
    assert_eq!(bands(&redrawn), bands(&page), "the same picture offline");
}

/// Every metric a Grafana dashboard of docker/observability queries is one this run's
/// coordinator really exported (Prometheus stored it), not a name kept by hand.
fn check_dashboard_metrics(prometheus: &Prometheus) {
    let stored = prometheus.metric_names();
    let dashboards = workspace().join("docker/observability/grafana/dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dashboards).expect("dashboards") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let json: serde_json::Value = serde_json::from_str(&text).expect("a dashboard parses");
        for expr in super::stack::queries(&json) {
            for name in super::stack::metric_names(&expr) {
                assert!(
                    stored.contains(&name),
                    "{}: {name} (in {expr:?}) is not exported by the coordinator",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 20,
        "the dashboards query the run's metrics ({checked} names)"
    );
}

/// A sampled message is one trace: the producer's `publish` span and the worker's
/// `process` span under it, both with the conventional attributes.
fn check_message_traces(receiver: &Receiver, run_id: &str) {
    receiver.wait_for(
        "a publish span with its process span",
        Duration::from_secs(30),
        |spans| {
            spans.iter().any(|p| {
                p.kind == PRODUCER
                    && spans
                        .iter()
                        .any(|c| c.kind == CONSUMER && c.parent_span_id == p.span_id)
            })
        },
    );
    let spans = receiver.spans();
    let sends: Vec<&Span> = spans.iter().filter(|s| s.kind == PRODUCER).collect();
    let pairs: Vec<(&Span, &Span)> = sends
        .iter()
        .filter_map(|send| {
            spans
                .iter()
                .find(|c| c.kind == CONSUMER && c.parent_span_id == send.span_id)
                .map(|process| (*send, process))
        })
        .collect();
    // Sampling is per message, so most sampled sends have their processing traced too.
    assert!(
        pairs.len() * 2 >= sends.len() && sends.len() > 10,
        "{} sends, {} with their process span",
        sends.len(),
        pairs.len()
    );
    for (send, process) in pairs {
        let partition: u32 = send.attr("sim.partition").parse().expect("partition");
        let seq: u64 = send.attr("sim.seq").parse().expect("seq");
        let ids = MessageTrace::of(run_id, partition, seq);
        assert_eq!(send.trace_id, ids.trace_id.to_string(), "derived trace id");
        assert_eq!(
            send.span_id,
            ids.send_span.to_string(),
            "derived send span id"
        );
        assert!(ids.sampled(0.05), "only sampled messages are traced");
        assert_eq!(process.trace_id, send.trace_id, "one trace per message");
        assert_eq!(send.service, "parti-sim-producer");
        assert_eq!(process.service, "parti-sim-worker");
        assert_eq!(
            send.name,
            format!("publish {}", send.attr("messaging.destination.name"))
        );
        assert_eq!(
            process.name,
            format!("process {}", process.attr("messaging.destination.name"))
        );
        for (span, operation) in [(send, "send"), (process, "process")] {
            assert_eq!(span.attr("messaging.system"), "nats", "{span:?}");
            assert_eq!(span.attr("messaging.operation.type"), operation, "{span:?}");
            assert_eq!(
                span.attr("messaging.message.id"),
                format!("{partition}:{seq}"),
                "{span:?}"
            );
            assert_eq!(
                span.attr("sim.partition"),
                partition.to_string(),
                "{span:?}"
            );
            assert_eq!(span.attr("sim.seq"), seq.to_string(), "{span:?}");
        }
        assert_eq!(
            process.attr("messaging.consumer.group.name"),
            proto::partition_durable(partition),
            "{process:?}"
        );
        assert!(
            process.attr("sim.worker").starts_with("worker-"),
            "{process:?}"
        );
        assert!(
            !process.attr("sim.assignment_version").is_empty(),
            "{process:?}"
        );
        assert!(
            process
                .attr("messaging.nats.message.delivery_count")
                .parse::<u32>()
                .is_ok_and(|d| d >= 1),
            "{process:?}"
        );
    }
}

/// One `fault` span per fault of the report, in the run's trace; a `recovery` span under
/// each fault whose recovery was measured.
fn check_fault_traces(receiver: &Receiver, faults: &[serde_json::Value]) {
    let injected = faults.iter().filter(|f| f["outcome"] == "injected").count();
    receiver.wait_for("the run span", Duration::from_secs(30), |spans| {
        spans.iter().any(|s| s.name.starts_with("run "))
    });
    let spans = receiver.spans();
    let run = spans
        .iter()
        .find(|s| s.name.starts_with("run "))
        .expect("run span");
    assert_eq!(run.parent_span_id, "", "the run span is its trace's root");
    assert_eq!(run.attr("sim.verdict"), "pass");
    let fault_spans: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("fault ") && s.attr("sim.fault.outcome") == "injected")
        .collect();
    assert_eq!(fault_spans.len(), injected, "one span per injected fault");
    for fault in &fault_spans {
        assert_eq!(fault.trace_id, run.trace_id, "{fault:?}");
        assert_eq!(fault.parent_span_id, run.span_id, "{fault:?}");
    }
    let measured = faults
        .iter()
        .filter(|f| f["outcome"] == "injected" && f["rebalance_s"].is_number())
        .count();
    let recoveries = spans
        .iter()
        .filter(|s| {
            s.name.starts_with("recovery ")
                && fault_spans.iter().any(|f| f.span_id == s.parent_span_id)
        })
        .count();
    assert_eq!(
        recoveries, measured,
        "a recovery span per measured recovery"
    );
}

/// The coordinator's exposition passes `promtool check metrics` (format and naming).
fn lint_exposition(port: u16) {
    let text = match http_get(port, "/metrics") {
        Ok((200, text)) => text,
        other => panic!("GET /metrics: {other:?}"),
    };
    assert!(text.contains("simulation_run_info{"), "{text}");
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (./scripts/setup.sh unpacks it into .tools/)");
    if let Some(mut stdin) = promtool.stdin.take() {
        std::io::Write::write_all(&mut stdin, text.as_bytes()).expect("promtool stdin");
    }
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metrics pushed over OTLP agree with the report as the scraped ones do: faults per
/// type in the final push, and the per-partition cap.
fn check_pushed_faults(
    receiver: &Receiver,
    reported: &std::collections::BTreeMap<String, f64>,
    partitions: f64,
) {
    let pushes = receiver.metric_pushes();
    assert!(pushes.len() >= 30, "a push a second: {}", pushes.len());
    let last = super::traces::final_push(receiver);
    let per_type = |name: &str| -> std::collections::BTreeMap<String, f64> {
        last.iter()
            .filter(|p| p.name == name && p.kind == "sum")
            .map(|p| (p.labels.get("type").cloned().unwrap_or_default(), p.value))
            .collect()
    };
    let pushed = injected_per_type(
        per_type("simulation_chaos_events_total"),
        &per_type("simulation_chaos_withdrawn_total"),
    );
    assert_eq!(
        &pushed, reported,
        "faults per type: the final push against the report"
    );
    let series = last
        .iter()
        .filter(|p| p.name == "simulation_partition_known_seq")
        .count();
    assert_eq!(series, PARTITION_SERIES as usize);
    assert_eq!(
        super::traces::point(&last, "simulation_partition_series_omitted", &[]),
        partitions - f64::from(PARTITION_SERIES)
    );
    assert!(
        last.iter()
            .any(|p| p.name == "simulation_rebalancing_duration_seconds" && p.kind == "histogram"),
        "histograms pushed as histograms"
    );
}

/// Faults per type that the report counts as injected: events minus those withdrawn
/// afterwards, types with none left out.
fn injected_per_type(
    events: std::collections::BTreeMap<String, f64>,
    withdrawn: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    events
        .into_iter()
        .map(|(kind, count)| {
            let gone = withdrawn.get(&kind).copied().unwrap_or(0.0);
            (kind, count - gone)
        })
        .filter(|(_, count)| *count > 0.0)
        .collect()
}
