//! Trace and span ids derived from what they describe, and the sampling decision made from
//! the trace id.
//!
//! A message's trace id is a hash of (run, partition, seq): the producer, the worker and the
//! coordinator each compute it without being told, so the coordinator can put an anomaly
//! span into the trace of a message it judges lost although nothing of that message ever
//! reached it — and `simctl trace PARTITION:SEQ` can name the trace of any message of a
//! finished run. The producer's `send` span id is derived too, so the anomaly span hangs
//! under it when the message was sampled.
//!
//! The sampling decision is the OpenTelemetry ratio sampler's rule applied to that trace id
//! (the lower 64 bits, shifted right by one, below `ratio · 2⁶³`): deterministic per
//! message, so producer and worker agree without coordination, and any process can tell
//! whether a message's trace exists.

use opentelemetry::trace::{SpanId, TraceId};
use xxhash_rust::xxh3::{xxh3_64_with_seed, xxh3_128_with_seed};

/// Seeds separating the kinds of derived id (a run's trace is not a message's).
const MESSAGE: u64 = 0x6d65_7373_6167_6501;
const SEND_SPAN: u64 = 0x7365_6e64_0000_0002;
const RUN: u64 = 0x7275_6e00_0000_0003;
const RUN_SPAN: u64 = 0x7275_6e73_7061_6e04;
const CHILD_SPAN: u64 = 0x6368_696c_6400_0005;

/// The ids of one message's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageTrace {
    /// The trace every span of the message belongs to.
    pub trace_id: TraceId,
    /// The producer's `send` span, the trace's root.
    pub send_span: SpanId,
}

impl MessageTrace {
    /// The ids of message `partition:seq` of run `run_id`. No allocation: the producer
    /// asks this of every message it publishes.
    pub fn of(run_id: &str, partition: u32, seq: u64) -> Self {
        let mut key = [0u8; 20];
        key[..8].copy_from_slice(&xxh3_64_with_seed(run_id.as_bytes(), RUN).to_le_bytes());
        key[8..12].copy_from_slice(&partition.to_le_bytes());
        key[12..].copy_from_slice(&seq.to_le_bytes());
        Self {
            trace_id: trace_id(xxh3_128_with_seed(&key, MESSAGE)),
            send_span: span_id(xxh3_64_with_seed(&key, SEND_SPAN)),
        }
    }

    /// Whether this message is sampled at `ratio`.
    pub fn sampled(&self, ratio: f64) -> bool {
        sampled(self.trace_id, ratio)
    }
}

/// The ids of a run's own trace (run, fault and recovery spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunTrace {
    /// The run's trace.
    pub trace_id: TraceId,
    /// The run span, the trace's root.
    pub run_span: SpanId,
}

impl RunTrace {
    /// The ids of run `run_id`'s trace.
    pub fn of(run_id: &str) -> Self {
        Self {
            trace_id: trace_id(xxh3_128_with_seed(run_id.as_bytes(), RUN)),
            run_span: span_id(xxh3_64_with_seed(run_id.as_bytes(), RUN_SPAN)),
        }
    }
}

/// A span id derived from a parent's and a name (a fault's number, "recovery"): the same
/// span written twice (a resumed coordinator repeating itself) keeps its id.
pub fn child_span(parent: SpanId, name: &str) -> SpanId {
    let mut key = parent.to_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    span_id(xxh3_64_with_seed(&key, CHILD_SPAN))
}

/// The ratio sampler's decision for `trace_id`: its lower 64 bits, shifted right by one,
/// below `ratio · 2⁶³` (ratio clamped to 0..=1).
pub fn sampled(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    // Exact for the ratios people write (0.01, 0.1): f64 holds 2⁶³·ratio to 53 bits.
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    x < bound
}

/// A valid (non-zero) trace id from a hash.
fn trace_id(hash: u128) -> TraceId {
    TraceId::from_bytes(hash.max(1).to_be_bytes())
}

/// A valid (non-zero) span id from a hash.
fn span_id(hash: u64) -> SpanId {
    SpanId::from_bytes(hash.max(1).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = MessageTrace::of("run-1", 3, 7);
        assert_eq!(a, MessageTrace::of("run-1", 3, 7));
        assert_ne!(a.trace_id, MessageTrace::of("run-1", 3, 8).trace_id);
        assert_ne!(a.trace_id, MessageTrace::of("run-2", 3, 7).trace_id);
        assert_ne!(a.trace_id, MessageTrace::of("run-1", 4, 7).trace_id);
        assert_ne!(a.trace_id, RunTrace::of("run-1").trace_id);
        assert_ne!(child_span(a.send_span, "x"), child_span(a.send_span, "y"));
    }

    #[test]
    fn the_sampled_share_follows_the_ratio() {
        for ratio in [0.0, 0.01, 0.1, 0.5, 1.0] {
            let n = 100_000u64;
            let sampled = (1..=n)
                .filter(|seq| MessageTrace::of("r", 0, *seq).sampled(ratio))
                .count() as f64;
            let share = sampled / n as f64;
            assert!(
                (share - ratio).abs() < 0.005,
                "ratio {ratio}: share {share}"
            );
        }
    }

    #[test]
    fn a_higher_ratio_samples_a_superset() {
        let low: Vec<u64> = (1..=10_000)
            .filter(|s| MessageTrace::of("r", 1, *s).sampled(0.05))
            .collect();
        assert!(
            low.iter()
                .all(|s| MessageTrace::of("r", 1, *s).sampled(0.2))
        );
    }
}
