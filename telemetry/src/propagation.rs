//! W3C trace context through NATS headers: the producer writes the message's `traceparent`,
//! the worker reads it back as its `process` span's parent.
//!
//! Written and parsed here rather than by the SDK's `TraceContextPropagator`: the header is
//! one fixed-width line (`00-<trace id>-<span id>-<flags>`), and the propagator's way through
//! a `Context` (allocations, a thread-local stack) was a measurable share of a worker's CPU
//! at ratio 1.0. A `tracestate` is neither written nor read (we never set one).

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The header's name, lowercase as the specification writes it.
const TRACEPARENT: &str = "traceparent";

/// Write `traceparent` for span `span_id` of trace `trace_id` into `headers`.
pub fn inject(headers: &mut HeaderMap, trace_id: TraceId, span_id: SpanId, sampled: bool) {
    // An all-zero id is no context: the header would only be refused by every reader.
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return;
    }
    let flags = u8::from(sampled);
    headers.insert(
        TRACEPARENT,
        format!("00-{trace_id}-{span_id}-{flags:02x}").as_str(),
    );
}

/// The remote span context in `headers`, if they carry a valid `traceparent`.
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    parse(headers.get(TRACEPARENT)?.as_str())
}

/// A `traceparent` value as the W3C Trace Context (level 1) defines it: version, trace id,
/// parent id and flags in lowercase hex; version `ff`, an all-zero id or a malformed field
/// is no context. A later version may append fields after the flags (`-…`), which are
/// ignored as the specification asks.
fn parse(value: &str) -> Option<SpanContext> {
    let mut fields = value.trim().splitn(5, '-');
    let version = fields.next()?;
    let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
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
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = "00f067aa0ba902b7";
        for bad in [
            format!("ff-{trace}-{span}-01"),
            format!("00-{}-{span}-01", "0".repeat(32)),
            format!("00-{trace}-{}-01", "0".repeat(16)),
            format!("00-{}-{span}-01", trace.to_uppercase()),
            format!("00-{trace}-{span}-1"),
            format!("00-{trace}-{span}-01-extra"),
            format!("00-{trace}-{span}"),
        ] {
            assert!(parse(&bad).is_none(), "{bad}");
        }
        let unsampled = parse(&format!("00-{trace}-{span}-00")).expect("valid");
        assert!(!unsampled.is_sampled());
        let future = parse(&format!("cc-{trace}-{span}-03-what-ever")).expect("later version");
        assert_eq!(
            future.trace_flags(),
            TraceFlags::SAMPLED,
            "only the sampled bit is kept"
        );
        assert_eq!(future.trace_id().to_string(), trace);
    }
}
