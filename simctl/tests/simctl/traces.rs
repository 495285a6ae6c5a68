//! A run that loses messages, traced at ratio 0: the verdict FAILs for loss, and every lost
//! message's trace — although none of its own spans were sampled — holds the coordinator's
//! `anomaly lost` span, under the trace id `simctl trace` names for it.

use std::process::Command;
use std::time::Duration;

use telemetry::MessageTrace;
use test_support::otlp::{Point, Receiver};
use test_support::report::{elements, failure_kinds};

use super::{run_edited, simctl, with_faults, workspace};

/// `telemetry.traces` sending everything to `receiver` at `ratio`.
pub(super) fn traced(config: String, receiver: &Receiver, ratio: f64) -> String {
    format!(
        "{config}\ntelemetry:\n  traces:\n    enabled: true\n    endpoint: {}\n    sample_ratio: {ratio}\n",
        receiver.endpoint()
    )
}

/// `config` (already [`traced`]) also pushing its metrics to `receiver` every second, with
/// per-partition series for at most `partition_series` partitions.
pub(super) fn pushed(config: String, receiver: &Receiver, partition_series: u32) -> String {
    let config = config.replacen(
        "metrics:\n  prometheus:",
        &format!("metrics:\n  partition_series: {partition_series}\n  prometheus:"),
        1,
    );
    format!(
        "{config}  metrics:\n    enabled: true\n    endpoint: {}\n    interval: 1s\n",
        receiver.endpoint()
    )
}

/// The points of the last metric push: the run's final values.
pub(super) fn final_push(receiver: &Receiver) -> Vec<Point> {
    receiver.metric_pushes().pop().expect("metrics were pushed")
}

/// The value of `name` with these labels in `points` (NaN when absent).
pub(super) fn point(points: &[Point], name: &str, labels: &[(&str, &str)]) -> f64 {
    points
        .iter()
        .find(|p| {
            p.name == name
                && p.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(f64::NAN, |p| p.value)
}

/// Also: the run's metrics pushed over OTLP say what the report says, the loss included,
/// partition by partition up to the cap.
#[test]
fn dropping_acked_messages_fails_with_loss_and_each_lost_message_has_its_anomaly_trace() {
    let receiver = Receiver::start();
    let outcome = run_edited(
        "drop",
        |config| {
            pushed(
                traced(
                    with_faults(config, Some("    drop_and_ack_one_in: 25")),
                    &receiver,
                    0.0,
                ),
                &receiver,
                100,
            )
        },
        "20s",
    );
    assert_eq!(outcome.code, 1, "expected FAIL:\n{}", outcome.stdout);
    let lost = outcome.json["tracker"]["lost"].as_u64().unwrap_or(0);
    assert!(lost > 0, "loss counted");
    assert_eq!(
        failure_kinds(&outcome.json),
        ["loss".to_string()].into(),
        "only loss fails it:\n{}",
        outcome.stdout
    );
    let run_id = outcome.json["run_id"].as_str().expect("run id").to_string();
    check_pushed_loss(&receiver, &outcome.json, &run_id);
    // The coordinator sends one anomaly span per lost message at the finish.
    receiver.wait_for(
        "an anomaly span per lost message",
        Duration::from_secs(30),
        |spans| spans.iter().filter(|s| s.name == "anomaly lost").count() as u64 >= lost,
    );
    let spans = receiver.spans();
    let anomalies: Vec<_> = spans.iter().filter(|s| s.name == "anomaly lost").collect();
    assert_eq!(
        anomalies.len() as u64,
        lost,
        "one per lost message, no more"
    );
    assert!(
        spans.iter().all(|s| s.service == "parti-sim-coordinator"),
        "ratio 0: no message span was sampled, only the coordinator's: {:?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );
    for span in &anomalies {
        let partition: u32 = span.attr("sim.partition").parse().expect("partition");
        let seq: u64 = span.attr("sim.seq").parse().expect("seq");
        let ids = MessageTrace::of(&run_id, partition, seq);
        assert_eq!(span.trace_id, ids.trace_id.to_string(), "{span:?}");
        assert_eq!(
            span.parent_span_id,
            ids.send_span.to_string(),
            "under its send span"
        );
        assert_eq!(span.attr("error.type"), "lost");
    }
    // The report's lost samples, each found by `simctl trace` from the run directory.
    let samples: Vec<_> = elements(&outcome.json["tracker"]["anomalies"])
        .iter()
        .filter(|a| a["kind"] == "lost")
        .collect();
    assert!(!samples.is_empty(), "lost samples in the report");
    let sample = samples[0];
    assert!(
        samples.iter().all(|s| anomalies
            .iter()
            .any(|span| s["trace_id"] == span.trace_id.as_str())),
        "every lost sample in the report names the trace of its anomaly span: {samples:?}"
    );
    let message = format!("{}:{}", sample["partition"], sample["seq"]);
    let output = Command::new(simctl())
        .current_dir(workspace())
        .args(["trace", &message, "--run-dir"])
        .arg(workspace().join("runs").join(&run_id))
        .output()
        .expect("simctl trace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let named = stdout
        .lines()
        .find_map(|line| line.strip_prefix("trace_id "))
        .expect("a trace_id line")
        .trim()
        .to_string();
    assert!(
        anomalies.iter().any(|span| span.trace_id == named
            && span.attr("sim.partition").parse::<u64>().ok() == sample["partition"].as_u64()
            && span.attr("sim.seq").parse::<u64>().ok() == sample["seq"].as_u64()),
        "simctl trace {message} names {named}, the trace of that message's anomaly span:\n{stdout}"
    );
    assert!(stdout.contains("sampled  no"), "{stdout}");
    assert!(
        stdout.contains("grafana  http://localhost:3000/explore?"),
        "{stdout}"
    );
}

/// The final push (sent before simctl printed the verdict) has the report's books: sent,
/// received and lost, and the per-partition lost series add up to the loss.
fn check_pushed_loss(receiver: &Receiver, json: &serde_json::Value, run_id: &str) {
    assert!(
        receiver.metric_pushes().len() >= 5,
        "a push a second over a 20 s run"
    );
    let last = final_push(receiver);
    assert!(last.iter().all(|p| p.instance == run_id), "{last:?}");
    let tracker = &json["tracker"];
    for (name, field) in [
        ("simulation_messages_sent_total", "sent"),
        ("simulation_messages_received_total", "received"),
        ("simulation_messages_lost", "lost"),
    ] {
        assert_eq!(
            point(&last, name, &[]),
            tracker[field].as_f64().unwrap_or(f64::NAN),
            "{name} against the report's {field}"
        );
    }
    let per_partition: Vec<&Point> = last
        .iter()
        .filter(|p| p.name == "simulation_partition_lost")
        .collect();
    let partitions = tracker["partitions_active"].as_u64().unwrap_or(0);
    assert_eq!(per_partition.len() as u64, partitions, "below the cap: all");
    assert_eq!(
        per_partition.iter().map(|p| p.value).sum::<f64>(),
        tracker["lost"].as_f64().unwrap_or(f64::NAN),
        "per-partition loss adds up"
    );
    assert_eq!(
        point(&last, "simulation_partition_series_omitted", &[]),
        0.0
    );
}
