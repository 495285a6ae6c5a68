//! [`Traces`]: a process's exporter and the run's sampling, what the producer, the worker
//! and the coordinator call.

use std::time::{Duration, SystemTime};

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::SpanContext;

use crate::export::{ExportStats, Exporter};
use crate::ids::{MessageTrace, child_span};
use crate::spans::{self, SpanRecord};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its settings.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Where and how much to trace, as the coordinator resolved it for a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// OTLP gRPC endpoint, `http://host:port`.
    pub endpoint: String,
    /// Share of messages traced, 0..=1 (decided per message, see [`crate::ids`]).
    pub sample_ratio: f64,
    /// The run, part of every message's trace id.
    pub run_id: String,
}

/// A message's identity and where it travels, for its spans' attributes.
#[derive(Debug, Clone, Copy)]
pub struct MessageInfo<'a> {
    /// Partition.
    pub partition: u32,
    /// Partition sequence.
    pub seq: u64,
    /// The subject (`messaging.destination.name`).
    pub subject: &'a str,
    /// `Nats-Msg-Id` (`messaging.message.id`).
    pub message_id: &'a str,
}

impl MessageInfo<'_> {
    fn attributes(&self, operation: &'static str, verb: &'static str) -> Vec<KeyValue> {
        vec![
            KeyValue::new("messaging.system", spans::MESSAGING_SYSTEM),
            KeyValue::new("messaging.operation.type", operation),
            KeyValue::new("messaging.operation.name", verb),
            KeyValue::new("messaging.destination.name", self.subject.to_string()),
            KeyValue::new("messaging.message.id", self.message_id.to_string()),
            KeyValue::new("sim.partition", i64::from(self.partition)),
            KeyValue::new("sim.seq", i64::try_from(self.seq).unwrap_or(i64::MAX)),
        ]
    }
}

/// What the worker knows of a processing, beyond the message.
#[derive(Debug, Clone, Copy)]
pub struct Processing<'a> {
    /// The worker's id.
    pub worker: &'a str,
    /// The durable it consumed from (`messaging.consumer.group.name`).
    pub durable: &'a str,
    /// The assignment version it processed under.
    pub assignment_version: u64,
    /// JetStream's delivery count.
    pub delivered: i64,
}

/// A process's tracing: its exporter, and the run's sampling.
#[derive(Debug)]
pub struct Traces {
    exporter: Exporter,
    scope: InstrumentationScope,
    settings: TraceSettings,
}

impl Traces {
    /// Start exporting as `service` (`parti-sim-producer`, …) for process `process`.
    /// Within a tokio runtime.
    ///
    /// # Errors
    /// [`TelemetryError`] when the exporter cannot be built from the settings.
    pub fn start(
        settings: TraceSettings,
        service: &str,
        process: &str,
    ) -> Result<Self, TelemetryError> {
        let attributes = vec![
            KeyValue::new("service.instance.id", process.to_string()),
            KeyValue::new("sim.run", settings.run_id.clone()),
        ];
        Ok(Self {
            exporter: Exporter::start(&settings.endpoint, service, attributes)?,
            scope: spans::scope(),
            settings,
        })
    }

    /// The ids of message `partition:seq` if it is sampled, else `None` (no span, no
    /// `traceparent`: an unsampled message costs a hash).
    pub fn sampled(&self, partition: u32, seq: u64) -> Option<MessageTrace> {
        let ids = MessageTrace::of(&self.settings.run_id, partition, seq);
        ids.sampled(self.settings.sample_ratio).then_some(ids)
    }

    /// The producer's `send` span of a sampled message: from the publish to its PubAck (or
    /// failure).
    pub fn send(
        &self,
        ids: MessageTrace,
        message: &MessageInfo<'_>,
        producer: &str,
        (start, end): (SystemTime, SystemTime),
        error: Option<&'static str>,
    ) {
        let mut attributes = message.attributes("send", "publish");
        attributes.push(KeyValue::new("sim.producer", producer.to_string()));
        self.record(SpanRecord {
            trace_id: ids.trace_id,
            span_id: ids.send_span,
            parent: None,
            kind: SpanKind::Producer,
            name: format!("publish {}", message.subject).into(),
            start,
            end,
            attributes,
            error,
        });
    }

    /// The worker's `process` span of a message whose `traceparent` said it is sampled.
    pub fn process(
        &self,
        parent: &SpanContext,
        message: &MessageInfo<'_>,
        processing: &Processing<'_>,
        (start, end): (SystemTime, SystemTime),
        error: Option<&'static str>,
    ) {
        let mut attributes = message.attributes("process", "process");
        attributes.extend([
            KeyValue::new(
                "messaging.consumer.group.name",
                processing.durable.to_string(),
            ),
            KeyValue::new(
                "messaging.nats.message.delivery_count",
                processing.delivered,
            ),
            KeyValue::new("sim.worker", processing.worker.to_string()),
            KeyValue::new(
                "sim.assignment_version",
                i64::try_from(processing.assignment_version).unwrap_or(i64::MAX),
            ),
        ]);
        // The span id: a fresh one per delivery (a redelivery is another processing).
        let span_id = child_span(
            parent.span_id(),
            &format!("{}/{}", processing.worker, processing.delivered),
        );
        self.record(SpanRecord {
            trace_id: parent.trace_id(),
            span_id,
            parent: Some((parent.span_id(), true)),
            kind: SpanKind::Consumer,
            name: format!("process {}", message.subject).into(),
            start,
            end,
            attributes,
            error,
        });
    }

    /// Any other span (the coordinator's run, faults, recoveries and anomalies).
    pub fn record(&self, span: SpanRecord) {
        self.exporter.record(span.into_data(&self.scope));
    }

    /// What became of the spans so far.
    pub fn stats(&self) -> ExportStats {
        self.exporter.stats()
    }

    /// Export what is queued, waiting at most `within`; spans recorded afterwards are
    /// dropped (and counted).
    pub async fn shutdown(&self, within: Duration) -> ExportStats {
        self.exporter.shutdown(within).await
    }
}
