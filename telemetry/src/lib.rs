//! parti-sim's traces: one trace per message, from the producer's `send` through the
//! worker's `process` to the coordinator's `anomaly` verdict, exported over OTLP gRPC.
//!
//! Layout:
//! - [`ids`]: trace and span ids derived from the message (run, partition, seq) and the
//!   deterministic sampling decision — why any process can find a message's trace.
//! - [`propagation`]: `traceparent` through NATS headers.
//! - [`spans`]: spans as records of measured things, and their conventional attributes.
//! - [`export`]: the bounded, never-blocking export queue and its counts.
//! - [`links`]: Grafana Explore links to a trace.
//!
//! [`Traces`] ties them together for a process: what the producer, the worker and the
//! coordinator call. Nothing here knows the simulation's wire types; callers pass plain
//! values.

#![forbid(unsafe_code)]

#[cfg(feature = "export")]
pub mod export;
pub mod ids;
pub mod links;
#[cfg(feature = "export")]
pub mod propagation;
#[cfg(feature = "export")]
pub mod spans;
#[cfg(feature = "export")]
mod traces;

pub use ids::{MessageTrace, RunTrace, child_span};
#[cfg(feature = "export")]
pub use {
    export::{ExportStats, Exporter},
    opentelemetry::KeyValue,
    opentelemetry::trace::SpanKind,
    spans::{SpanRecord, at_us},
    traces::{MessageInfo, Processing, TelemetryError, TraceSettings, Traces},
};
