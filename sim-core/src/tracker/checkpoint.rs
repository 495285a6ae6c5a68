//! Saving and restoring a [`Tracker`]: the evidence of a run must survive a coordinator
//! restart (design: `docs/design/checkpoint-resume.md` §1–2).
//!
//! [`Tracker::export`] gives a [`TrackerState`], a plain serde DTO; [`Tracker::import`]
//! rebuilds an identical tracker from it. The DTO rather than serde on the tracker itself,
//! so that the internals (packed window slots, span table) can change without breaking
//! saved files, and so that import has one place to check a file it cannot trust.
//!
//! Decisions worth knowing:
//! - **Stable, versioned format.** Field names below are the file format; [`FORMAT`] is
//!   bumped on any incompatible change and import refuses other versions.
//! - **Compact.** Memory is per in-flight and unusual message, and the file follows it: the
//!   window is stored as runs of equal slots (known-at times never decrease along it, so a
//!   burst learned at one moment is one run), the exceptions as runs of consecutive seqs
//!   with equal flags (a removal excuses one contiguous run, a stall loses one), zero and
//!   empty fields are left out. A clean 1500-partition run is a few hundred KB of JSON.
//! - **Derived state is recomputed, then checked.** A partition's processed-in-window and
//!   lost counts are rebuilt from its runs, and the tracker-wide counters that follow from
//!   the partitions (sent, received, lost, excused, …) must agree with the saved ones; so
//!   must the latency count and the per-kind sample counts. A disagreement is a corrupt or
//!   hand-edited file, refused with the field that is wrong, rather than a verdict built on
//!   inconsistent evidence.
//! - **Bounded allocation.** Run lengths are checked against fixed budgets before anything
//!   is expanded, so a corrupt count cannot make the coordinator allocate gigabytes.
//! - **Latency** is hdrhistogram's V2 encoding, base64. Uncompressed on purpose: the V2
//!   deserializer allocates whatever payload length the header claims, which in the
//!   deflated variant is only known after inflating; uncompressed, the header is checked
//!   against the actual length first. The file as a whole can still be compressed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{DeserializeError, Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::partition::PartitionState;
use super::snapshot::{Anomaly, AnomalyKind, WorkerLoad};
use super::types::{TrackerConfig, WorkerRef};
use super::{Counters, LATENCY_MAX_US, MAX_WORKER_REFS, Tracker};

/// Version of the [`TrackerState`] layout this build writes and reads.
pub const FORMAT: u32 = 1;

/// Most window slots an import restores across all partitions (8 B each): far above a real
/// run (the design's worst case is ~2 M), low enough that a corrupt file cannot exhaust
/// memory.
const MAX_SLOTS: u64 = 1 << 27;

/// Most exception entries an import restores across all partitions; see [`MAX_SLOTS`].
const MAX_EXCEPTIONS: u64 = 1 << 26;

/// Size of the V2 histogram header (cookie, payload length, offset, digits, bounds, ratio).
const V2_HEADER: usize = 40;

// === the saved form ===

/// Everything a [`Tracker`] knows, in a serialisable and stable form.
///
/// Not included: the [`TrackerConfig`], which is rebuilt from the run's config and passed
/// to [`Tracker::import`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackerState {
    /// Layout version; see [`FORMAT`].
    pub format: u32,
    /// The latest `now_us` given to `expire` or `finish` (`i64::MIN` before the first).
    pub now_us: i64,
    /// Processed reports seen; orders the activity spans for eviction.
    pub tick: u64,
    /// The global counters.
    pub counters: SavedCounters,
    /// Latency histogram: hdrhistogram V2 encoding (uncompressed), base64.
    pub latency: String,
    /// Latency measurements that came out negative and were taken as 0.
    pub latency_clamped: u64,
    /// Length of the per-worker load table (indexed by [`WorkerRef`]).
    pub worker_slots: u32,
    /// The non-zero entries of the load table, ordered by worker; the others are zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerLoad>,
    /// Sampled anomalies in arrival order (lost ones are sampled at snapshot time instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Anomaly>,
    /// Samples taken per kind, in [`AnomalyKind::ALL`] order; must match `samples`.
    pub sampled: Vec<usize>,
    /// Partition `i` at index `i`.
    pub partitions: Vec<SavedPartition>,
}

/// The tracker-wide counters; see [`super::TrackerSnapshot`] for their meaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCounters {
    /// Distinct seqs confirmed sent.
    pub sent: u64,
    /// Distinct seqs processed at least once.
    pub received: u64,
    /// Distinct seqs both confirmed sent and processed.
    pub sent_received: u64,
    /// Distinct seqs confirmed sent and currently lost or excused.
    pub sent_written_off: u64,
    /// Seqs currently lost.
    pub lost: u64,
    /// Seqs processed after being declared lost.
    pub late: u64,
    /// Worst publish→processed delay of those (µs); absent in states written before it was
    /// kept.
    #[serde(default)]
    pub late_worst_us: i64,
    /// Seqs currently excused by a partition removal.
    pub excused: u64,
    /// Duplicates not overlapping another worker.
    pub dup_redelivery: u64,
    /// Duplicates overlapping another worker.
    pub dup_concurrent: u64,
    /// Processed reports overlapping another worker's activity.
    pub overlaps: u64,
    /// First processings below the partition's highest processed seq.
    pub order_violations: u64,
    /// Repeated Sent reports.
    pub duplicate_sent: u64,
    /// Malformed messages reported.
    pub malformed: u64,
    /// Reports refused as invalid.
    pub rejected: u64,
}

/// One partition's accounting. Zero and empty fields are omitted from the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPartition {
    /// Removed by a partition change: missing seqs are excused, never lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Seqs its durable had acknowledged when it was removed: owed, not excused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub taken_through: u64,
    /// Every seq ≤ watermark is processed or listed in `exceptions`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub watermark: u64,
    /// Highest seq processed so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub processed_max: u64,
    /// Seqs `watermark+1 ..`, as runs of equal slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub window: Vec<WindowRun>,
    /// The unusual seqs below the watermark, as runs of consecutive seqs with equal flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<ExceptionRun>,
    /// The span table by position (eviction depends on it); trailing empty slots omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<Option<SavedSpan>>,
    /// Seqs whose first processing was a redelivery, with the worker that processed it and
    /// when it received it, as `[seq, worker, received_us]` in increasing seq order (absent
    /// in states written before they were remembered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redelivered_first: Vec<(u64, WorkerRef, i64)>,
}

/// `count` consecutive window slots with one known-at time and one set of flags; written as
/// the array `[count, known_at_delta, flags]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, i64, u8)", into = "(u64, i64, u8)")]
pub struct WindowRun {
    /// Slots in the run (at least 1).
    pub count: u64,
    /// Known-at time (µs) minus the previous run's; the first run's is absolute. Never
    /// negative after the first run: known-at times do not decrease along the window.
    pub known_at_delta: i64,
    /// 1 = sent confirmed, 2 = processed; the first run is never processed.
    pub flags: u8,
}

impl From<(u64, i64, u8)> for WindowRun {
    fn from((count, known_at_delta, flags): (u64, i64, u8)) -> Self {
        Self {
            count,
            known_at_delta,
            flags,
        }
    }
}

impl From<WindowRun> for (u64, i64, u8) {
    fn from(run: WindowRun) -> Self {
        (run.count, run.known_at_delta, run.flags)
    }
}

/// Seqs `start .. start+len` below the watermark, all with the same flags; written as the
/// array `[start, len, flags]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64, u8)", into = "(u64, u64, u8)")]
pub struct ExceptionRun {
    /// First seq of the run.
    pub start: u64,
    /// Seqs in the run (at least 1).
    pub len: u64,
    /// 2 = processed without a Sent; 4 = lost, 8 = excused, either possibly with 1 = sent.
    pub flags: u8,
}

impl From<(u64, u64, u8)> for ExceptionRun {
    fn from((start, len, flags): (u64, u64, u8)) -> Self {
        Self { start, len, flags }
    }
}

impl From<ExceptionRun> for (u64, u64, u8) {
    fn from(run: ExceptionRun) -> Self {
        (run.start, run.len, run.flags)
    }
}

/// One worker's latest stretch of activity on a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSpan {
    /// The worker incarnation.
    pub worker: WorkerRef,
    /// Start of the stretch (µs, worker clock).
    pub start: i64,
    /// End of the stretch (µs, worker clock).
    pub end: i64,
    /// Tick of the last update; the least recently touched span is evicted first.
    pub touched: u64,
    /// The highest seq the worker processed on the partition (absent in states written
    /// before order was judged per worker).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub high: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Why a [`TrackerState`] was refused; names what is inconsistent.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Written by a build with another layout.
    #[error("tracker checkpoint format {found} is not supported (this build reads {FORMAT})")]
    Format {
        /// The version in the file.
        found: u32,
    },
    /// A partition's saved state breaks an invariant.
    #[error("tracker checkpoint: partition {partition}: {field}: {detail}")]
    Partition {
        /// Partition id.
        partition: u32,
        /// The offending field of [`SavedPartition`].
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A tracker-wide field is invalid or disagrees with the partitions.
    #[error("tracker checkpoint: {field}: {detail}")]
    Inconsistent {
        /// The offending field of [`TrackerState`] (dotted for nested ones).
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The latency histogram is not valid base64.
    #[error("tracker checkpoint: latency: not valid base64")]
    LatencyEncoding(#[source] base64::DecodeError),
    /// The latency histogram could not be decoded.
    #[error("tracker checkpoint: latency: not a valid histogram")]
    LatencyHistogram(#[source] DeserializeError),
}

fn inconsistent(field: &'static str, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Inconsistent {
        field,
        detail: detail.into(),
    }
}

// === impl Tracker ===

impl Tracker {
    /// Everything the tracker knows except its config, for a checkpoint.
    #[must_use]
    pub fn export(&self) -> TrackerState {
        let workers = self
            .workers
            .iter()
            .filter(|w| w.processed > 0 || w.malformed > 0)
            .copied()
            .collect();
        TrackerState {
            format: FORMAT,
            now_us: self.now_us,
            tick: self.tick,
            counters: self.counters.into(),
            latency: BASE64.encode(encode_latency(&self.latency)),
            latency_clamped: self.latency_clamped,
            // The table never grows past MAX_WORKER_REFS entries, so this cannot saturate.
            worker_slots: u32::try_from(self.workers.len()).unwrap_or(u32::MAX),
            workers,
            samples: self.samples.clone(),
            sampled: self.sampled.to_vec(),
            partitions: self.partitions.iter().map(PartitionState::export).collect(),
        }
    }

    /// Rebuilds the tracker `state` was exported from, with `config` (normally the one it
    /// ran with: changing the validation window or the limits changes future judgements).
    ///
    /// # Errors
    /// [`CheckpointError`] naming the field when the state is of another format, breaks an
    /// invariant of the tracker, or its counters disagree with its partitions.
    pub fn import(config: TrackerConfig, state: TrackerState) -> Result<Tracker, CheckpointError> {
        if state.format != FORMAT {
            return Err(CheckpointError::Format {
                found: state.format,
            });
        }
        if state.partitions.len() > config.max_partitions as usize {
            return Err(inconsistent(
                "partitions",
                format!(
                    "{} partitions, the config allows {}",
                    state.partitions.len(),
                    config.max_partitions
                ),
            ));
        }

        let mut partitions = Vec::with_capacity(state.partitions.len());
        let mut total = Sums::default();
        for (idx, saved) in state.partitions.iter().enumerate() {
            let partition = u32::try_from(idx).unwrap_or(u32::MAX);
            let (part, tally) = PartitionState::import(
                saved,
                state.tick,
                MAX_SLOTS - total.slots,
                MAX_EXCEPTIONS - total.exceptions,
            )
            .map_err(|(field, detail)| CheckpointError::Partition {
                partition,
                field,
                detail,
            })?;
            total.add(&tally);
            partitions.push(part);
        }
        total.check(&state.counters)?;

        let latency = decode_latency(&state.latency)?;
        let received = state.counters.received;
        if latency.len() != received {
            return Err(inconsistent(
                "latency",
                format!(
                    "{} measurements, but {received} messages received",
                    latency.len()
                ),
            ));
        }
        if state.latency_clamped > received {
            return Err(inconsistent(
                "latency_clamped",
                format!("{} clamped of {received} measured", state.latency_clamped),
            ));
        }

        let workers = restore_workers(state.worker_slots, &state.workers, &state.counters)?;
        let sampled = check_samples(&state.sampled, &state.samples)?;

        Ok(Tracker {
            config,
            partitions,
            now_us: state.now_us,
            tick: state.tick,
            counters: state.counters.into(),
            latency,
            latency_clamped: state.latency_clamped,
            workers,
            samples: state.samples,
            sampled,
        })
    }
}

// === checks ===

/// The partitions' tallies summed, in `u128` so a corrupt watermark cannot overflow them.
#[derive(Debug, Default)]
struct Sums {
    received: u128,
    sent: u128,
    sent_received: u128,
    sent_written_off: u128,
    lost: u128,
    excused: u128,
    slots: u64,
    exceptions: u64,
}

impl Sums {
    fn add(&mut self, t: &super::partition::Tally) {
        self.received += u128::from(t.received);
        self.sent += u128::from(t.sent);
        self.sent_received += u128::from(t.sent_received);
        self.sent_written_off += u128::from(t.sent_written_off);
        self.lost += u128::from(t.lost);
        self.excused += u128::from(t.excused);
        self.slots += t.slots;
        self.exceptions += t.exceptions;
    }

    /// The counters that follow from the partitions must be what they say.
    fn check(&self, c: &SavedCounters) -> Result<(), CheckpointError> {
        let pairs: [(&'static str, u64, u128); 6] = [
            ("counters.sent", c.sent, self.sent),
            ("counters.received", c.received, self.received),
            (
                "counters.sent_received",
                c.sent_received,
                self.sent_received,
            ),
            (
                "counters.sent_written_off",
                c.sent_written_off,
                self.sent_written_off,
            ),
            ("counters.lost", c.lost, self.lost),
            ("counters.excused", c.excused, self.excused),
        ];
        for (field, saved, derived) in pairs {
            if u128::from(saved) != derived {
                return Err(inconsistent(
                    field,
                    format!("{saved} saved, but the partitions account for {derived}"),
                ));
            }
        }
        Ok(())
    }
}

/// Rebuilds the load table: `slots` entries, the saved non-zero ones in place.
fn restore_workers(
    slots: u32,
    saved: &[WorkerLoad],
    counters: &SavedCounters,
) -> Result<Vec<WorkerLoad>, CheckpointError> {
    if slots > MAX_WORKER_REFS {
        return Err(inconsistent(
            "worker_slots",
            format!("{slots} is above the limit {MAX_WORKER_REFS}"),
        ));
    }
    let mut table: Vec<WorkerLoad> = (0..slots)
        .map(|i| WorkerLoad {
            worker: WorkerRef(i),
            ..WorkerLoad::default()
        })
        .collect();
    let (mut processed, mut malformed, mut previous) = (0u128, 0u128, None::<u32>);
    for load in saved {
        let i = load.worker.0;
        if i >= slots || previous.is_some_and(|p| p >= i) {
            return Err(inconsistent(
                "workers",
                format!(
                    "{} is out of order or beyond worker_slots {slots}",
                    load.worker
                ),
            ));
        }
        previous = Some(i);
        processed += u128::from(load.processed);
        malformed += u128::from(load.malformed);
        table[i as usize] = *load;
    }
    // Every processed report is a first delivery or a duplicate; loads miss only refs beyond
    // the table limit, so they can fall short of the counters but never exceed them.
    let reports = u128::from(counters.received)
        + u128::from(counters.dup_redelivery)
        + u128::from(counters.dup_concurrent);
    if processed > reports {
        return Err(inconsistent(
            "workers",
            format!("{processed} processed in loads, only {reports} processed reports counted"),
        ));
    }
    if malformed > u128::from(counters.malformed) {
        return Err(inconsistent(
            "workers",
            format!(
                "{malformed} malformed in loads, only {} counted",
                counters.malformed
            ),
        ));
    }
    Ok(table)
}

/// `sampled` must count `samples` per kind.
fn check_samples(
    sampled: &[usize],
    samples: &[Anomaly],
) -> Result<[usize; AnomalyKind::ALL.len()], CheckpointError> {
    let Ok(saved) = <[usize; AnomalyKind::ALL.len()]>::try_from(sampled) else {
        return Err(inconsistent(
            "sampled",
            format!(
                "{} entries, expected one per kind ({})",
                sampled.len(),
                AnomalyKind::ALL.len()
            ),
        ));
    };
    let mut counted = [0usize; AnomalyKind::ALL.len()];
    for sample in samples {
        counted[sample.kind.index()] += 1;
    }
    if counted != saved {
        return Err(inconsistent(
            "sampled",
            format!("{saved:?} saved, but samples hold {counted:?}"),
        ));
    }
    Ok(saved)
}

// === latency ===

/// A histogram with the tracker's bounds; its encoding gives the expected V2 header.
fn empty_latency() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

fn encode_latency(h: &Histogram<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail, and the V2 encoder's own errors need a count above
    // i64::MAX or a counts array beyond usize: neither can happen with these bounds.
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("a V2 encoding of the latency histogram into memory cannot fail");
    bytes
}

fn decode_latency(text: &str) -> Result<Histogram<u64>, CheckpointError> {
    let bytes = BASE64
        .decode(text)
        .map_err(CheckpointError::LatencyEncoding)?;
    // The decoder trusts the header: check it against ours (same cookie and bounds) and the
    // payload length against the actual length before handing it over.
    let expected = encode_latency(&empty_latency());
    let header_ok = bytes.len() >= V2_HEADER
        && bytes[..4] == expected[..4]
        && bytes[8..V2_HEADER] == expected[8..V2_HEADER]
        && u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize
            == bytes.len() - V2_HEADER;
    if !header_ok {
        return Err(inconsistent(
            "latency",
            "not a V2 histogram with the tracker's bounds (1 µs ..= 1 week, 3 digits)",
        ));
    }
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(CheckpointError::LatencyHistogram)
}

// === counters ===

impl From<Counters> for SavedCounters {
    fn from(c: Counters) -> Self {
        Self {
            sent: c.sent,
            received: c.received,
            sent_received: c.sent_received,
            sent_written_off: c.sent_written_off,
            lost: c.lost,
            late: c.late,
            late_worst_us: c.late_worst_us,
            excused: c.excused,
            dup_redelivery: c.dup_redelivery,
            dup_concurrent: c.dup_concurrent,
            overlaps: c.overlaps,
            order_violations: c.order_violations,
            duplicate_sent: c.duplicate_sent,
            malformed: c.malformed,
            rejected: c.rejected,
        }
    }
}

impl From<SavedCounters> for Counters {
    fn from(c: SavedCounters) -> Self {
        Self {
            sent: c.sent,
            received: c.received,
            sent_received: c.sent_received,
            sent_written_off: c.sent_written_off,
            lost: c.lost,
            late: c.late,
            excused: c.excused,
            late_worst_us: c.late_worst_us,
            dup_redelivery: c.dup_redelivery,
            dup_concurrent: c.dup_concurrent,
            overlaps: c.overlaps,
            order_violations: c.order_violations,
            duplicate_sent: c.duplicate_sent,
            malformed: c.malformed,
            rejected: c.rejected,
        }
    }
}
