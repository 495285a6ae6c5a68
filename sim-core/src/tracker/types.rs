//! The tracker's inputs, its configuration, and what it says back per report.
//!
//! Everything here is `Copy` and free of `String`s: reports arrive at millions per second
//! and the tracker must not allocate per report.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One worker process incarnation, as an index into the coordinator's table of names.
///
/// A restarted worker gets a new `WorkerRef`, so a crashed incarnation and its successor are
/// different workers for the duplicate and overlap checks.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct WorkerRef(pub u32);

impl std::fmt::Display for WorkerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// A producer's PubAck confirmed this message: it exists in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Partition id.
    pub partition: u32,
    /// Partition sequence; starts at 1 and is gap-free per partition.
    pub seq: u64,
    /// When the PubAck arrived (unix µs, producer clock).
    pub at_us: i64,
}

/// A worker finished processing one delivery of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Partition id.
    pub partition: u32,
    /// Partition sequence of the message.
    pub seq: u64,
    /// The worker incarnation that processed it.
    pub worker: WorkerRef,
    /// JetStream delivery count (1 on the first delivery).
    pub delivered: u32,
    /// When the producer published it (unix µs, producer clock).
    pub published_us: i64,
    /// When the worker received it (unix µs, worker clock).
    pub received_us: i64,
    /// When the worker finished processing it (unix µs, worker clock).
    pub processed_us: i64,
}

/// Tuning of the tracker; [`Default`] gives the values a run uses unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// How long a message known to exist may stay unprocessed before it counts as lost (µs).
    pub validation_window_us: i64,
    /// Two workers' processing intervals must overlap by more than this to count as
    /// concurrent (µs); absorbs clock skew between hosts.
    pub overlap_tolerance_us: i64,
    /// Consecutive intervals of one worker on one partition closer than this are merged into
    /// one activity span (µs). It makes overlap detection see a worker as busy between two
    /// messages; it must stay well below the fastest possible A→B→A reassignment, or a
    /// legitimate round trip would look like an overlap.
    pub activity_gap_us: i64,
    /// Anomalies kept per kind for the report.
    pub sample_limit: usize,
    /// Partition ids at or above this are rejected; bounds the per-partition table.
    pub max_partitions: u32,
    /// A report may extend a partition's highest known seq by at most this much; a larger jump
    /// is a corrupt report, not a million missing messages, and would cost memory.
    pub max_seq_jump: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            validation_window_us: 60_000_000,
            overlap_tolerance_us: 0,
            activity_gap_us: 500_000,
            sample_limit: 100,
            max_partitions: 1 << 16,
            max_seq_jump: 1 << 20,
        }
    }
}

/// Why a report was refused; the tracker also counts it as `rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InputError {
    /// The partition id is beyond [`TrackerConfig::max_partitions`].
    #[error("partition {partition} is out of range (limit {limit})")]
    PartitionOutOfRange {
        /// The offending partition id.
        partition: u32,
        /// The configured limit.
        limit: u32,
    },
    /// Sequences start at 1.
    #[error("partition {partition}: sequence 0 is invalid (sequences start at 1)")]
    ZeroSequence {
        /// The partition of the report.
        partition: u32,
    },
    /// The seq jumps too far above everything known on its partition.
    #[error(
        "partition {partition}: seq {seq} jumps more than {limit} above the highest known seq {known}"
    )]
    SequenceJump {
        /// The partition of the report.
        partition: u32,
        /// The offending seq.
        seq: u64,
        /// The highest seq known to exist before this report.
        known: u64,
        /// The configured limit.
        limit: u64,
    },
}

/// How a duplicate came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateKind {
    /// Processed again after its first holder let go (crash, pause, cut-off, release).
    Redelivery,
    /// Processed by two workers at overlapping times: an ownership violation.
    Concurrent,
}

/// What one processed report revealed, so the coordinator can emit events as they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// First time this seq was processed.
    pub first: bool,
    /// Set when the seq had been processed before.
    pub duplicate: Option<DuplicateKind>,
    /// The seq had already been declared lost; it is now recovered late.
    pub late: bool,
    /// First processing of a seq below the partition's highest processed seq, whatever its
    /// delivery count.
    pub order_violation: bool,
    /// Another worker whose processing interval on this partition overlaps this one.
    pub overlap_with: Option<WorkerRef>,
}

/// Changes whenever a new distinct message is received; equal markers mean no progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ProgressMarker(pub u64);
