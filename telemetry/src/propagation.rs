//! W3C trace context through NATS headers: the producer writes the message's `traceparent`,
//! the worker reads it back as its `process` span's parent. The standard propagator does
//! the encoding; these carriers adapt it to async-nats's header map.

use std::str::FromStr;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry::{Context, trace::SpanId, trace::TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Write `traceparent` for span `span_id` of trace `trace_id` into `headers`.
pub fn inject(headers: &mut HeaderMap, trace_id: TraceId, span_id: SpanId, sampled: bool) {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    let cx = Context::new().with_remote_span_context(context);
    TraceContextPropagator::new().inject_context(&cx, &mut Headers(headers));
}

/// The remote span context in `headers`, if they carry a valid `traceparent`.
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&HeadersRef(headers));
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.clone())
}

struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A name async-nats would refuse is skipped, never a panic on the publish path.
        if let Ok(name) = HeaderName::from_str(key) {
            self.0.insert(name, value);
        }
    }
}

struct HeadersRef<'a>(&'a HeaderMap);

impl Extractor for HeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageTrace;

    #[test]
    fn a_traceparent_survives_the_headers() {
        let ids = MessageTrace::of("run", 2, 9);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "2:9");
        inject(&mut headers, ids.trace_id, ids.send_span, true);
        let text = headers.get("traceparent").map(|v| v.as_str().to_string());
        assert_eq!(
            text,
            Some(format!("00-{}-{}-01", ids.trace_id, ids.send_span))
        );
        let back = extract(&headers).expect("a context");
        assert_eq!(back.trace_id(), ids.trace_id);
        assert_eq!(back.span_id(), ids.send_span);
        assert!(back.is_sampled() && back.is_remote());
    }

    #[test]
    fn no_or_broken_traceparent_is_no_context() {
        assert!(extract(&HeaderMap::new()).is_none());
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-zz-01");
        assert!(extract(&headers).is_none());
    }
}
