//! The run as traces (`telemetry.traces`): an `anomaly` span in the trace of every message
//! the tracker judges lost, late, duplicated, overlapping or out of order, and the run's own
//! trace — a `run` span, a `fault` span per injected fault, and under it the `recovery` and
//! `catch-up` spans whose durations are the measured ones.
//!
//! A message's trace id is derived from (run, partition, seq) (`telemetry::ids`), so its
//! anomaly lands in its trace whether or not the message itself was sampled: an anomaly is
//! always findable. Fault spans go out as soon as their measurements are settled (a 12-hour
//! run shows its faults while it runs); the run span, and the anomaly spans of messages
//! still lost, at the finish.

use std::time::{Duration, SystemTime};

use sim_core::chaos::FaultRecord;
use sim_core::config::Config;
use sim_core::tracker::{AnomalyKind, DuplicateKind, Observation};
use telemetry::{KeyValue, MessageTrace, RunTrace, SpanKind, SpanRecord, Traces, child_span};
use tracing::{info, warn};

use super::ActiveRun;
use super::start::trace_spec;

/// Anomaly spans one run may send; past this they are counted, not sent (a run losing a
/// million messages must not flood the collector with a million traces). Below the export
/// queue's size, so the finish's burst of lost-message spans fits.
const ANOMALY_SPANS_MAX: u64 = 5_000;

/// How long the coordinator's last spans may take to leave at the finish.
const FLUSH: Duration = Duration::from_secs(2);

/// The run's exporter, when its config traces. The endpoint was checked with the config,
/// so the exporter builds; should it not, the run goes on untraced and says so.
pub(super) fn start(config: &Config, run_id: &str) -> Option<Traces> {
    let spec = trace_spec(config, run_id)?;
    let settings = telemetry::TraceSettings {
        endpoint: spec.endpoint,
        sample_ratio: spec.sample_ratio,
        run_id: spec.run_id,
    };
    match Traces::start(settings, "parti-sim-coordinator", "coordinator") {
        Ok(traces) => Some(traces),
        Err(error) => {
            warn!(%error, "traces off for this run");
            None
        }
    }
}

/// The wall-clock time of run time `at`.
fn wall(run: &ActiveRun, at: Duration) -> SystemTime {
    let start = SystemTime::now()
        .checked_sub(run.clock.now())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    start + at
}

/// Who was involved in an anomaly, for its span.
#[derive(Debug, Clone, Copy)]
pub(super) struct Involved<'a> {
    /// The worker whose report revealed it ("" for a lost message).
    pub(super) worker: &'a str,
    /// The other worker (overlaps, concurrent duplicates).
    pub(super) other: Option<&'a str>,
    /// When it was observed (µs; the finish for a lost message).
    pub(super) at_us: i64,
}

/// An `anomaly` span in message `partition:seq`'s trace, under its `send` span.
pub(super) fn anomaly(
    run: &mut ActiveRun,
    kind: AnomalyKind,
    (partition, seq): (u32, u64),
    involved: Involved<'_>,
) {
    let Some(traces) = &run.io.traces else { return };
    run.local.anomaly_spans += 1;
    if run.local.anomaly_spans > ANOMALY_SPANS_MAX {
        return;
    }
    let ids = MessageTrace::of(&run.state.id, partition, seq);
    let mut attributes = vec![
        KeyValue::new("sim.anomaly", kind.as_str()),
        KeyValue::new("sim.partition", i64::from(partition)),
        KeyValue::new("sim.seq", i64::try_from(seq).unwrap_or(i64::MAX)),
        KeyValue::new("sim.run", run.state.id.clone()),
    ];
    if !involved.worker.is_empty() {
        attributes.push(KeyValue::new("sim.worker", involved.worker.to_string()));
    }
    if let Some(other) = involved.other {
        attributes.push(KeyValue::new("sim.other_worker", other.to_string()));
    }
    let at = telemetry::at_us(involved.at_us);
    traces.record(SpanRecord {
        trace_id: ids.trace_id,
        span_id: child_span(
            ids.send_span,
            &format!("anomaly/{}/{}", kind.as_str(), involved.at_us),
        ),
        parent: Some((ids.send_span, true)),
        kind: SpanKind::Internal,
        name: format!("anomaly {}", kind.as_str()).into(),
        start: at,
        end: at,
        attributes,
        error: Some(kind.as_str()),
    });
}

/// The anomalies one processed report revealed.
pub(super) fn observed(observation: &Observation) -> impl Iterator<Item = AnomalyKind> {
    [
        observation.late.then_some(AnomalyKind::Late),
        observation.duplicate.map(|kind| match kind {
            DuplicateKind::Redelivery => AnomalyKind::DuplicateRedelivery,
            DuplicateKind::Concurrent => AnomalyKind::DuplicateConcurrent,
        }),
        observation
            .overlap_with
            .map(|_| AnomalyKind::OwnershipOverlap),
        observation
            .order_violation
            .then_some(AnomalyKind::OrderViolation),
    ]
    .into_iter()
    .flatten()
}

/// Whether nothing more will be measured of fault `index` (`finished`: the run is over).
fn settled(records: &[FaultRecord], index: usize, finished: bool) -> bool {
    let record = &records[index];
    finished
        || !record.outcome.is_injected()
        || index + 1 < records.len()
        || (record.rebalance_s.is_some() && record.catch_up_s.is_some())
}

/// Send the spans of the faults whose measurements are settled, in order.
pub(super) fn faults(run: &mut ActiveRun, finished: bool) {
    let Some(traces) = &run.io.traces else { return };
    let ids = RunTrace::of(&run.state.id);
    let records = &run.state.faults.records;
    while run.local.faults_traced < records.len()
        && settled(records, run.local.faults_traced, finished)
    {
        let index = run.local.faults_traced;
        let record = &records[index];
        let fault_span = child_span(ids.run_span, &format!("fault/{index}"));
        let start = wall(run, Duration::from_secs_f64(record.at_s));
        let recovery = record
            .rebalance_s
            .zip(record.recovery_from_s)
            .map(|(took, from)| {
                let from = wall(run, Duration::from_secs_f64(from));
                (from, from + Duration::from_secs_f64(took))
            });
        let mut attributes = vec![
            KeyValue::new("sim.fault.type", record.event.as_str()),
            KeyValue::new("sim.fault.target", record.target.clone()),
            KeyValue::new("sim.fault.outcome", record.outcome.to_string()),
            KeyValue::new("sim.fault.detail", record.detail.clone()),
            KeyValue::new("sim.run", run.state.id.clone()),
        ];
        if let Some(moved) = record.moved {
            attributes.push(KeyValue::new(
                "sim.fault.partitions_moved",
                i64::try_from(moved).unwrap_or(i64::MAX),
            ));
        }
        if let Some(seconds) = record.rebalance_s {
            attributes.push(KeyValue::new("sim.recovery_s", seconds));
        }
        let error = match &record.outcome {
            sim_core::chaos::FaultOutcome::Failed(_) => Some("fault_failed"),
            _ => None,
        };
        traces.record(SpanRecord {
            trace_id: ids.trace_id,
            span_id: fault_span,
            parent: Some((ids.run_span, false)),
            kind: SpanKind::Internal,
            name: format!("fault {}", record.event.as_str()).into(),
            start,
            // The fault's own extent: to its recovery's end (when it recovered).
            end: recovery.map_or(start, |(_, end)| end),
            attributes,
            error,
        });
        if let Some((from, end)) = recovery {
            let recovery_span = child_span(fault_span, "recovery");
            traces.record(SpanRecord {
                trace_id: ids.trace_id,
                span_id: recovery_span,
                parent: Some((fault_span, false)),
                kind: SpanKind::Internal,
                name: format!("recovery {}", record.event.as_str()).into(),
                start: from,
                end,
                attributes: vec![KeyValue::new("sim.fault.type", record.event.as_str())],
                error: None,
            });
            if let Some(catch_up) = record.catch_up_s {
                traces.record(SpanRecord {
                    trace_id: ids.trace_id,
                    span_id: child_span(fault_span, "catch-up"),
                    parent: Some((fault_span, false)),
                    kind: SpanKind::Internal,
                    name: format!("catch-up {}", record.event.as_str()).into(),
                    start: end,
                    end: end + Duration::from_secs_f64(catch_up),
                    attributes: vec![KeyValue::new("sim.fault.type", record.event.as_str())],
                    error: None,
                });
            }
        }
        run.local.faults_traced += 1;
    }
}

/// At the finish: the anomaly spans of the messages still lost, the remaining fault spans,
/// the run span; then what is queued goes out (for at most [`FLUSH`]).
pub(super) async fn finish(run: &mut ActiveRun, verdict: &str) {
    if run.io.traces.is_none() {
        return;
    }
    let now = super::now_us();
    let lost: Vec<(u32, u64)> = run
        .tracker
        .lost()
        .take(usize::try_from(ANOMALY_SPANS_MAX).unwrap_or(usize::MAX))
        .collect();
    for (n, message) in lost.into_iter().enumerate() {
        let involved = Involved {
            worker: "",
            other: None,
            at_us: now,
        };
        anomaly(run, AnomalyKind::Lost, message, involved);
        if n % 512 == 511 {
            // Let the export task take a batch before the queue fills.
            tokio::task::yield_now().await;
        }
    }
    faults(run, true);
    let Some(traces) = &run.io.traces else { return };
    let ids = RunTrace::of(&run.state.id);
    let config = &run.state.config;
    traces.record(SpanRecord {
        trace_id: ids.trace_id,
        span_id: ids.run_span,
        parent: None,
        kind: SpanKind::Internal,
        name: format!("run {}", run.state.id).into(),
        start: wall(run, Duration::ZERO),
        end: SystemTime::now(),
        attributes: vec![
            KeyValue::new("sim.run", run.state.id.clone()),
            KeyValue::new("sim.seed", i64::from_ne_bytes(run.state.seed.to_ne_bytes())),
            KeyValue::new("sim.verdict", verdict.to_string()),
            KeyValue::new("sim.partitions", i64::from(config.partitions.count)),
            KeyValue::new("sim.workers", i64::from(config.workers.count)),
            KeyValue::new(
                "sim.faults",
                i64::try_from(run.state.faults.records.len()).unwrap_or(i64::MAX),
            ),
        ],
        error: (verdict != "pass").then_some("verdict"),
    });
    let stats = traces.shutdown(FLUSH).await;
    info!(run = %run.state.id, ?stats, anomalies = run.local.anomaly_spans, "spans");
}
