//! What the tracker reports: a serialisable snapshot of its counters and evidence.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::types::WorkerRef;

/// The kinds of anomaly the tracker samples for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Known to exist, still unprocessed after the validation window (or at finish).
    Lost,
    /// Processed after it had been declared lost.
    Late,
    /// Processed again, not overlapping another worker.
    DuplicateRedelivery,
    /// Processed again while another worker was processing the partition.
    DuplicateConcurrent,
    /// Two workers processing one partition at overlapping times.
    OwnershipOverlap,
    /// First processing of a seq below the highest one processed, on its first delivery.
    OrderViolation,
    /// A report refused as invalid (bad partition, seq 0, impossible jump).
    Rejected,
}

impl AnomalyKind {
    /// Every kind, in the order the snapshot lists them.
    pub const ALL: [AnomalyKind; 7] = [
        AnomalyKind::Lost,
        AnomalyKind::Late,
        AnomalyKind::DuplicateRedelivery,
        AnomalyKind::DuplicateConcurrent,
        AnomalyKind::OwnershipOverlap,
        AnomalyKind::OrderViolation,
        AnomalyKind::Rejected,
    ];

    /// Its name as the report's JSON spells it (`duplicate_concurrent`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Late => "late",
            Self::DuplicateRedelivery => "duplicate_redelivery",
            Self::DuplicateConcurrent => "duplicate_concurrent",
            Self::OwnershipOverlap => "ownership_overlap",
            Self::OrderViolation => "order_violation",
            Self::Rejected => "rejected",
        }
    }

    /// Position in [`Self::ALL`]; indexes per-kind tables.
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// One sampled anomaly: where it happened and who was involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// What went wrong.
    pub kind: AnomalyKind,
    /// Partition id.
    pub partition: u32,
    /// Partition sequence.
    pub seq: u64,
    /// The worker whose report revealed it, when a report did.
    pub worker: Option<WorkerRef>,
    /// The other worker involved: in an overlap, the one active meanwhile; in a duplicate,
    /// the one whose report it overlapped or, for a redelivery, the one that processed the
    /// redelivery first when that report arrived before this one.
    pub other_worker: Option<WorkerRef>,
    /// When it was observed (report's processed time, µs); none for lost messages.
    pub at_us: Option<i64>,
    /// The message's trace id (derived from run, partition and seq; see
    /// `telemetry::ids`), filled in when the report is made: what to open in Tempo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceRef>,
}

/// A trace id, as 32 lowercase hex digits in JSON (as Tempo and `simctl trace` show it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRef(pub [u8; 16]);

impl fmt::Display for TraceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for TraceRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = u128::from_str_radix(&text, 16)
            .ok()
            .filter(|_| text.len() == 32)
            .ok_or_else(|| serde::de::Error::custom(format!("not a trace id: {text:?}")))?;
        Ok(Self(bytes.to_be_bytes()))
    }
}

impl Anomaly {
    /// The same anomaly, naming its message's trace in run `run_id`.
    #[must_use]
    pub fn traced(self, run_id: &str) -> Self {
        let ids = telemetry::MessageTrace::of(run_id, self.partition, self.seq);
        Self {
            trace_id: Some(TraceRef(ids.trace_id.to_bytes())),
            ..self
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} seq {}", self.partition, self.seq)?;
        match (self.worker, self.other_worker) {
            (Some(w), Some(o)) => write!(f, " ({w} while {o})"),
            (Some(w), None) => write!(f, " ({w})"),
            _ => Ok(()),
        }
    }
}

/// Publish→processed latency of first-time processing, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LatencySummary {
    /// Messages measured.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest value seen.
    pub max_us: u64,
    /// Measurements that came out negative (clock skew between hosts) and were taken as 0.
    pub clamped: u64,
}

/// One partition's progress, for per-partition metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The partition.
    pub partition: u32,
    /// The highest seq known to exist (sent, or processed above what was reported sent).
    pub known_seq: u64,
    /// The highest seq processed.
    pub processed_seq: u64,
    /// Known, not processed, not written off.
    pub missing: u64,
    /// Currently counted as lost.
    pub lost: u64,
}

/// Work done by one worker incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// The worker incarnation.
    pub worker: WorkerRef,
    /// Processed reports from it, duplicates included: the load it carried.
    pub processed: u64,
    /// Malformed messages it reported.
    pub malformed: u64,
}

/// The tracker's state at one moment: counters, latency, per-worker load and samples.
///
/// `sent` and `received` are counts of distinct messages. A message is `in_flight` while it
/// is confirmed sent but neither processed nor written off; `missing` also counts messages
/// known only through a higher seq.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackerSnapshot {
    /// The `now_us` the snapshot was taken at.
    pub at_us: i64,
    /// Partitions currently tracked for loss.
    pub partitions_active: u32,
    /// Partitions removed by partition changes.
    pub partitions_removed: u32,
    /// Distinct messages confirmed sent (PubAck).
    pub sent: u64,
    /// Distinct messages processed at least once.
    pub received: u64,
    /// Distinct messages processed whose Sent has not arrived (yet).
    pub received_unconfirmed: u64,
    /// Confirmed sent, not yet processed, not written off.
    pub in_flight: u64,
    /// Known to exist (sent, or below a sent/processed seq), not processed, not written off.
    pub missing: u64,
    /// Age of the oldest missing message at `at_us`, if any.
    pub oldest_missing_age_us: Option<i64>,
    /// Messages currently counted as lost.
    pub lost: u64,
    /// Messages that arrived after being declared lost (no longer counted in `lost`).
    pub late: u64,
    /// Worst publish→processed delay of a late message (µs; 0 when none was late).
    pub late_worst_us: i64,
    /// Messages missing when their partition was removed: not loss.
    pub excused: u64,
    /// Duplicates not overlapping another worker.
    pub duplicates_redelivery: u64,
    /// Duplicates processed while another worker was processing the partition.
    pub duplicates_concurrent: u64,
    /// Processed reports overlapping another worker's activity on the same partition.
    pub ownership_overlaps: u64,
    /// Messages first processed below the partition's highest processed seq.
    pub order_violations: u64,
    /// Sent reports repeated for an already confirmed seq (ignored).
    pub duplicate_sent: u64,
    /// Malformed messages reported by workers.
    pub malformed: u64,
    /// Reports refused as invalid.
    pub rejected: u64,
    /// Publish→processed latency.
    pub latency: LatencySummary,
    /// Load per worker incarnation that reported anything.
    pub workers: Vec<WorkerLoad>,
    /// The first anomalies of each kind (lost: the lowest lost seqs), up to the sample limit.
    pub anomalies: Vec<Anomaly>,
}

impl TrackerSnapshot {
    /// Duplicates of either kind.
    pub fn duplicates(&self) -> u64 {
        self.duplicates_redelivery + self.duplicates_concurrent
    }

    /// Sampled anomalies of one kind.
    pub fn samples(&self, kind: AnomalyKind) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().filter(move |a| a.kind == kind)
    }
}
