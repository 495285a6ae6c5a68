//! A run that loses messages, traced at ratio 0: the verdict FAILs for loss, and every lost
//! message's trace — although none of its own spans were sampled — holds the coordinator's
//! `anomaly lost` span, under the trace id `simctl trace` names for it.

use std::process::Command;
use std::time::Duration;

use telemetry::MessageTrace;
use test_support::otlp::Receiver;
use test_support::report::{elements, failure_kinds};

use super::{run_edited, simctl, with_faults, workspace};

/// `telemetry.traces` sending everything to `receiver` at `ratio`.
pub(super) fn traced(config: String, receiver: &Receiver, ratio: f64) -> String {
    format!(
        "{config}\ntelemetry:\n  traces:\n    enabled: true\n    endpoint: {}\n    sample_ratio: {ratio}\n",
        receiver.endpoint()
    )
}

#[test]
fn dropping_acked_messages_fails_with_loss_and_each_lost_message_has_its_anomaly_trace() {
    let receiver = Receiver::start();
    let outcome = run_edited(
        "drop",
        |config| {
            traced(
                with_faults(config, Some("    drop_and_ack_one_in: 25")),
                &receiver,
                0.0,
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
