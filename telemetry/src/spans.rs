//! Spans as records of what was measured: ids, parent, kind, name, start and end, attributes
//! and an outcome, turned into the SDK's [`SpanData`] for export.
//!
//! Names and attributes follow the OpenTelemetry messaging conventions (status development):
//! `send <subject>` (PRODUCER) in the producer, `process <subject>` (CONSUMER) in the worker,
//! its parent the message's `send` span — one trace per message, across processes and hosts.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

/// `messaging.system`: not a listed value; the conventions allow custom ones.
pub const MESSAGING_SYSTEM: &str = "nats";

/// One span, as measured.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// Its parent, and whether the parent lives in another process.
    pub parent: Option<(SpanId, bool)>,
    /// PRODUCER, CONSUMER, INTERNAL…
    pub kind: SpanKind,
    /// Its name.
    pub name: Cow<'static, str>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
    /// Why it failed (`error.type`, low cardinality), if it did.
    pub error: Option<&'static str>,
}

impl SpanRecord {
    /// The SDK's form of it, from instrumentation scope `scope`.
    pub fn into_data(self, scope: &InstrumentationScope) -> SpanData {
        let mut attributes = self.attributes;
        let status = match self.error {
            Some(kind) => {
                attributes.push(KeyValue::new("error.type", kind));
                Status::error(kind)
            }
            None => Status::Unset,
        };
        let (parent_span_id, parent_span_is_remote) =
            self.parent.unwrap_or((SpanId::INVALID, false));
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                self.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id,
            parent_span_is_remote,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: self.end.max(self.start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        }
    }
}

/// A wall-clock time from unix microseconds (the simulation's timestamps).
pub fn at_us(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The instrumentation scope of parti-sim's spans.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("parti-sim")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}
