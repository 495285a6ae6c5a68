//! Per-partition message accounting: the evidence behind the verdict (DESIGN §5).
//!
//! [`Tracker`] is a plain synchronous structure owned by one coordinator task: no locks,
//! no I/O, no clock of its own (time comes in with the reports and with `now_us`).
//!
//! Decisions worth knowing:
//! - **When a seq becomes known.** Sequences are gap-free, so a Sent or Processed report for
//!   seq `s` proves every seq ≤ `s` exists. The validation window runs from the later of the
//!   report's own timestamp and the last `now_us` the tracker was given, i.e. from roughly
//!   when the *coordinator* learned of the seq: reports held up in transit (an agent
//!   reconnecting) must not turn into false losses.
//! - **Late arrivals.** A seq declared lost that is processed later is moved from `lost` to
//!   `late`, with the worst publish→processed delay kept. Late fails the run like lost (the
//!   validation window is the promise, DESIGN §5), but is reported apart: it says "slow",
//!   not "gone".
//! - **Removed partitions.** Seqs missing when a partition is removed, or that become known
//!   while it is removed, are *excused*: never lost, counted separately, and counted as
//!   received if they still arrive — except those its consumer had already acknowledged
//!   (`taken_through`, the ack floor at the removal): somebody took them, so they are owed
//!   and lost after the validation window like any other. Sequences continue when the
//!   partition is added back.
//! - **Concurrency.** Each partition remembers the latest activity span of its last few
//!   workers (see [`TrackerConfig::activity_gap_us`]). A processed report overlapping
//!   another worker's span counts as an ownership overlap. A duplicate is a `redelivery` only
//!   when a delivery count says the broker delivered it again (> 1) and it overlaps no
//!   other worker; a second first delivery is `concurrent` however far apart in time (two
//!   consumers each got it once). The count may be on either report: a frozen worker's
//!   report of delivery 1 can arrive after its successor's report of delivery 2, so first
//!   processings that were redeliveries are remembered (bounded, see `redelivered`).
//! - **Order.** A message processed for the first time by a worker that already processed
//!   one of its successors is an order violation, whatever its delivery count: a redelivery
//!   that comes back after its successors broke the partition's order too. Per worker,
//!   because one worker's reports arrive in the order it sent them, while two workers'
//!   reports interleave however their agents happened to read them (a handoff's last report
//!   of the old owner may arrive after the new owner's first).
//! - **in_flight** counts confirmed-sent messages that are neither processed nor written
//!   off, so lost messages do not inflate it forever.
//! - **Latency** is measured on first-time processing only: a redelivery's latency says
//!   more about the fault than about delivery speed.
//!
//! Layout: [`types`] inputs and config, `partition` the per-partition window, `read` what
//! the tracker says when asked, [`snapshot`] the report, [`failure`] what it says is wrong,
//! [`checkpoint`] saving and restoring a tracker.

pub mod checkpoint;
pub mod failure;
mod partition;
mod read;
mod redelivered;
pub mod snapshot;
pub mod types;

#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod stored_tests;
#[cfg(test)]
mod tests;

use hdrhistogram::Histogram;

pub use checkpoint::{CheckpointError, TrackerState};
pub use failure::{Rules, TrackerFailure};
use partition::{LOST, PartitionState, ProcessedOutcome, Recovered, SentOutcome};
use redelivered::Redelivery;
pub use snapshot::{
    Anomaly, AnomalyKind, LatencySummary, PartitionProgress, TraceRef, TrackerSnapshot, WorkerLoad,
};
pub use types::{
    DuplicateKind, InputError, Observation, Processed, ProgressMarker, Sent, TrackerConfig,
    WorkerRef,
};

/// Worker refs at or above this are not given a load counter: the table is indexed by ref,
/// and a corrupt ref must not allocate gigabytes. Their reports are tracked all the same.
const MAX_WORKER_REFS: u32 = 1 << 20;

/// Highest latency the histogram resolves (one week in µs); larger values saturate.
const LATENCY_MAX_US: u64 = 7 * 24 * 3600 * 1_000_000;

/// Global counters; see [`TrackerSnapshot`] for their meaning.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    sent: u64,
    received: u64,
    /// Distinct seqs both confirmed sent and processed.
    sent_received: u64,
    /// Distinct seqs confirmed sent and currently lost or excused.
    sent_written_off: u64,
    lost: u64,
    late: u64,
    /// Worst publish→processed delay of a late message (µs).
    late_worst_us: i64,
    excused: u64,
    dup_redelivery: u64,
    dup_concurrent: u64,
    overlaps: u64,
    order_violations: u64,
    duplicate_sent: u64,
    malformed: u64,
    rejected: u64,
}

/// Tracks every message of a run and collects the evidence for the verdict.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    partitions: Vec<PartitionState>,
    /// Latest `now_us` given to `expire` or `finish`.
    now_us: i64,
    /// Counts processed reports; orders activity spans for eviction.
    tick: u64,
    counters: Counters,
    latency: Histogram<u64>,
    latency_clamped: u64,
    /// Indexed by `WorkerRef.0`.
    workers: Vec<WorkerLoad>,
    /// First anomalies of each kind, in arrival order (lost ones are sampled at snapshot).
    samples: Vec<Anomaly>,
    sampled: [usize; AnomalyKind::ALL.len()],
}

impl Tracker {
    /// A tracker for partitions `0..partitions`, all active.
    pub fn new(config: TrackerConfig, partitions: u32) -> Self {
        let count = partitions.min(config.max_partitions) as usize;
        let mut table = Vec::with_capacity(count);
        table.resize_with(count, PartitionState::default);
        Self {
            config,
            partitions: table,
            now_us: i64::MIN,
            tick: 0,
            counters: Counters::default(),
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("constant histogram bounds are valid"),
            latency_clamped: 0,
            workers: Vec::new(),
            samples: Vec::new(),
            sampled: [0; AnomalyKind::ALL.len()],
        }
    }

    /// The configuration it was built with.
    #[must_use]
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// A producer confirmed `report.seq` on `report.partition`.
    ///
    /// # Errors
    /// [`InputError`] for a partition beyond the limit, seq 0, or an impossible seq jump;
    /// the report is then ignored and counted as `rejected`.
    pub fn sent(&mut self, report: Sent) -> Result<(), InputError> {
        let idx = self.check(report.partition, report.seq, None)?;
        let now = self.now_us;
        let part = &mut self.partitions[idx];
        part.learn(report.seq, report.at_us.max(now));
        match part.mark_sent(report.seq) {
            SentOutcome::New {
                received,
                written_off,
            } => {
                self.counters.sent += 1;
                self.counters.sent_received += u64::from(received);
                self.counters.sent_written_off += u64::from(written_off);
            }
            SentOutcome::Duplicate => self.counters.duplicate_sent += 1,
        }
        Ok(())
    }

    /// A worker processed one delivery of a message; says what that revealed.
    ///
    /// # Errors
    /// As for [`Self::sent`].
    pub fn processed(&mut self, r: Processed) -> Result<Observation, InputError> {
        let idx = self.check(r.partition, r.seq, Some(r.worker))?;
        self.tick += 1;
        let (gap, tolerance) = (
            self.config.activity_gap_us,
            self.config.overlap_tolerance_us,
        );
        let part = &mut self.partitions[idx];
        part.learn(r.seq, r.processed_us.max(self.now_us));
        let outcome = part.mark_processed(r.seq);
        // A first processing that was a redelivery is remembered: the earlier delivery's
        // report may arrive after it (a frozen worker) and must then not look like a second
        // consumer. `excuse` admits only that case, once.
        let first_redelivered = match outcome {
            ProcessedOutcome::First { .. } => {
                if r.delivered > 1 {
                    let redelivery = Redelivery {
                        worker: r.worker,
                        received_us: r.received_us,
                    };
                    part.redelivered_first.insert(r.seq, redelivery);
                }
                None
            }
            ProcessedOutcome::Duplicate if r.delivered <= 1 => {
                part.redelivered_first
                    .excuse(r.seq, r.worker, r.processed_us, tolerance)
            }
            ProcessedOutcome::Duplicate => None,
        };
        let overlap = part.observe(
            r.worker,
            r.received_us,
            r.processed_us,
            self.tick,
            gap,
            tolerance,
        );
        let after_successor = part.processed_after_successor(r.worker, r.seq);

        let mut obs = Observation {
            overlap_with: overlap,
            ..Observation::default()
        };
        if let Some(other) = overlap {
            self.counters.overlaps += 1;
            self.note(AnomalyKind::OwnershipOverlap, &r, Some(other));
        }
        match outcome {
            ProcessedOutcome::First { sent, recovered } => {
                obs.first = true;
                self.counters.received += 1;
                self.counters.sent_received += u64::from(sent);
                match recovered {
                    Some(Recovered::Late) => {
                        obs.late = true;
                        self.counters.lost -= 1;
                        self.counters.late += 1;
                        self.counters.late_worst_us = self
                            .counters
                            .late_worst_us
                            .max(r.processed_us.saturating_sub(r.published_us));
                        self.counters.sent_written_off -= u64::from(sent);
                        self.note(AnomalyKind::Late, &r, None);
                    }
                    Some(Recovered::Excused) => {
                        self.counters.excused -= 1;
                        self.counters.sent_written_off -= u64::from(sent);
                    }
                    None => {}
                }
                // First processed by a worker after it processed a successor: the
                // partition's order is broken, be it a reordered delivery or a redelivery
                // that came back too late.
                if after_successor {
                    obs.order_violation = true;
                    self.counters.order_violations += 1;
                    self.note(AnomalyKind::OrderViolation, &r, None);
                }
                let latency = r.processed_us.saturating_sub(r.published_us);
                if latency < 0 {
                    self.latency_clamped += 1;
                }
                self.latency
                    .saturating_record(latency.max(0).unsigned_abs());
            }
            ProcessedOutcome::Duplicate => {
                // Two first deliveries of one message can only be two consumers. A
                // redelivery is one where either report says the broker delivered it again
                // — this one, or the remembered first processing (reports of two workers
                // arrive in any order).
                let redelivered = r.delivered > 1 || first_redelivered.is_some();
                let (kind, sample_kind) = if overlap.is_some() || !redelivered {
                    self.counters.dup_concurrent += 1;
                    (DuplicateKind::Concurrent, AnomalyKind::DuplicateConcurrent)
                } else {
                    self.counters.dup_redelivery += 1;
                    (DuplicateKind::Redelivery, AnomalyKind::DuplicateRedelivery)
                };
                obs.duplicate = Some(kind);
                let other = overlap.or(first_redelivered);
                self.note(sample_kind, &r, other);
            }
        }
        if let Some(load) = self.worker_load(r.worker) {
            load.processed += 1;
        }
        Ok(obs)
    }

    /// A worker received a message it could not parse.
    pub fn malformed(&mut self, worker: WorkerRef) {
        self.counters.malformed += 1;
        if let Some(load) = self.worker_load(worker) {
            load.malformed += 1;
        }
    }

    /// Stops counting `partition`'s missing messages as loss; returns how many were excused.
    ///
    /// # Errors
    /// [`InputError::PartitionOutOfRange`] beyond [`TrackerConfig::max_partitions`].
    ///
    /// `taken_through`: the highest seq its consumer had acknowledged (the ack floor read
    /// from the server; 0 if unknown). Those seqs exist and were taken, so a missing one
    /// among them is owed, not excused: it is lost if it stays missing for the validation
    /// window like any other.
    ///
    /// `now_us` dates the seqs the floor reveals (their validation window starts then).
    ///
    /// # Errors
    /// As for [`Self::add_partition`]; and [`InputError::SequenceJump`] for a floor further
    /// above the known seqs than a report may reach (a corrupt floor; nothing changes).
    pub fn remove_partition(
        &mut self,
        partition: u32,
        taken_through: u64,
        now_us: i64,
    ) -> Result<u64, InputError> {
        let (idx, _) = self.learn_from_server(partition, taken_through, now_us)?;
        let part = &mut self.partitions[idx];
        part.removed = true;
        part.taken_through = part.taken_through.max(taken_through);
        Ok(self.settle_removed(idx, Some(i64::MIN)))
    }

    /// The stream, read after the producers stopped, holds `partition`'s messages up to
    /// `seq`. Every one of them exists whether or not a report announced it (a producer
    /// killed between the PubAck and its `sent` report): those beyond the reports become
    /// known now, as of `now_us`, and are missing until processed — lost if never. Returns
    /// how many became known.
    ///
    /// # Errors
    /// As for [`Self::remove_partition`] (a stored seq further above the reports than a
    /// report may reach: nothing changes).
    pub fn stored_through(
        &mut self,
        partition: u32,
        seq: u64,
        now_us: i64,
    ) -> Result<u64, InputError> {
        let (_, known) = self.learn_from_server(partition, seq, now_us)?;
        Ok(seq.saturating_sub(known))
    }

    /// Every seq of `partition` up to `seq` exists, as the server says (an ack floor, the
    /// last stored message), as of `now_us`; returns the partition's index and the highest
    /// seq known before. A seq further above the reports than a report may reach is refused
    /// (a corrupt answer): nothing changes.
    fn learn_from_server(
        &mut self,
        partition: u32,
        seq: u64,
        now_us: i64,
    ) -> Result<(usize, u64), InputError> {
        let idx = self.slot(partition, 0, None)?;
        let known = self.partitions[idx].known_max();
        if seq > known.saturating_add(self.config.max_seq_jump) {
            return Err(InputError::SequenceJump {
                partition,
                seq,
                known,
                limit: self.config.max_seq_jump,
            });
        }
        self.partitions[idx].learn(seq, now_us.max(self.now_us));
        Ok((idx, known))
    }

    /// The highest seq of `partition` known to exist (sent, processed or stored).
    #[must_use]
    pub fn known_max(&self, partition: u32) -> u64 {
        self.partitions
            .get(partition as usize)
            .map_or(0, PartitionState::known_max)
    }

    /// How many of `partition`'s seqs up to `through` are neither processed nor written off
    /// yet: its backlog, when `through` was its newest seq at some moment.
    #[must_use]
    pub fn unresolved_through(&self, partition: u32, through: u64) -> u64 {
        self.partitions
            .get(partition as usize)
            .map_or(0, |part| part.unresolved_through(through))
    }

    /// How many of `partition`'s seqs in `above+1 ..= through` are lost now.
    #[must_use]
    pub fn lost_between(&self, partition: u32, above: u64, through: u64) -> u64 {
        self.partitions
            .get(partition as usize)
            .map_or(0, |part| part.lost_between(above, through))
    }

    /// Tracks `partition` (again) for loss. Seqs that went missing while it was removed stay
    /// excused; its sequence continues where it was.
    ///
    /// # Errors
    /// [`InputError::PartitionOutOfRange`] beyond [`TrackerConfig::max_partitions`].
    pub fn add_partition(&mut self, partition: u32) -> Result<(), InputError> {
        let idx = self.slot(partition, 0, None)?;
        if self.partitions[idx].removed {
            // Owed seqs are judged now rather than mixed with the new ones.
            self.settle_removed(idx, None);
            self.partitions[idx].removed = false;
        }
        Ok(())
    }

    /// Declares lost every missing seq known for at least the validation window; returns how
    /// many became lost. Call it periodically.
    pub fn expire(&mut self, now_us: i64) -> u64 {
        self.now_us = self.now_us.max(now_us);
        let deadline = now_us.saturating_sub(self.config.validation_window_us);
        let mut lost = self.write_off(Some(deadline));
        for idx in 0..self.partitions.len() {
            if self.partitions[idx].unsettled() {
                lost += self.settle_removed(idx, Some(deadline));
            }
        }
        lost
    }

    /// After the drain phase: every still-missing seq of an active partition is lost (of a
    /// removed one, excused). Returns how many became lost.
    pub fn finish(&mut self, now_us: i64) -> u64 {
        self.now_us = self.now_us.max(now_us);
        let mut lost = self.write_off(None);
        for idx in 0..self.partitions.len() {
            if self.partitions[idx].removed {
                lost += self.settle_removed(idx, None);
            }
        }
        lost
    }

    /// The latest `now_us` given to `expire` or `finish` (`i64::MIN` before the first).
    pub fn now_us(&self) -> i64 {
        self.now_us
    }

    /// Two markers differ if and only if new distinct messages were received in between.
    #[must_use]
    pub fn progress_marker(&self) -> ProgressMarker {
        ProgressMarker(self.counters.received)
    }

    /// Current window length of a partition; tests use it to prove memory stays bounded.
    #[cfg(test)]
    fn window_len(&self, partition: u32) -> usize {
        self.partitions
            .get(partition as usize)
            .map_or(0, PartitionState::window_len)
    }

    // === input checks ===

    /// Validates a report and returns its partition's index, growing the table if needed.
    fn check(
        &mut self,
        partition: u32,
        seq: u64,
        worker: Option<WorkerRef>,
    ) -> Result<usize, InputError> {
        let idx = self.slot(partition, seq, worker)?;
        let err = if seq == 0 {
            InputError::ZeroSequence { partition }
        } else {
            let known = self.partitions[idx].known_max();
            if seq <= known.saturating_add(self.config.max_seq_jump) {
                return Ok(idx);
            }
            InputError::SequenceJump {
                partition,
                seq,
                known,
                limit: self.config.max_seq_jump,
            }
        };
        self.reject(partition, seq, worker);
        Err(err)
    }

    /// The table index of `partition`, growing the table to it; partitions may show up
    /// before the coordinator announces them.
    fn slot(
        &mut self,
        partition: u32,
        seq: u64,
        worker: Option<WorkerRef>,
    ) -> Result<usize, InputError> {
        let limit = self.config.max_partitions;
        if partition >= limit {
            self.reject(partition, seq, worker);
            return Err(InputError::PartitionOutOfRange { partition, limit });
        }
        let idx = partition as usize;
        if idx >= self.partitions.len() {
            self.partitions
                .resize_with(idx + 1, PartitionState::default);
        }
        Ok(idx)
    }

    fn reject(&mut self, partition: u32, seq: u64, worker: Option<WorkerRef>) {
        self.counters.rejected += 1;
        self.sample(AnomalyKind::Rejected, partition, seq, worker, None, None);
    }

    // === bookkeeping ===

    fn write_off(&mut self, deadline: Option<i64>) -> u64 {
        let mut lost = 0;
        for part in self.partitions.iter_mut().filter(|p| !p.removed) {
            let done = part.write_off(deadline, LOST);
            lost += done.count;
            self.counters.sent_written_off += done.sent;
        }
        self.counters.lost += lost;
        lost
    }

    /// Write off a removed partition's owed seqs known before `deadline` as lost and, behind
    /// them, the rest as excused; returns how many became lost (the count excused when
    /// `deadline` is `Some(i64::MIN)`, as at the removal itself).
    fn settle_removed(&mut self, idx: usize, deadline: Option<i64>) -> u64 {
        let (lost, excused) = self.partitions[idx].write_off_removed(deadline);
        self.counters.lost += lost.count;
        self.counters.excused += excused.count;
        self.counters.sent_written_off += lost.sent + excused.sent;
        if deadline == Some(i64::MIN) {
            excused.count
        } else {
            lost.count
        }
    }

    /// Samples an anomaly revealed by a processed report.
    fn note(&mut self, kind: AnomalyKind, r: &Processed, other: Option<WorkerRef>) {
        let at = Some(r.processed_us);
        self.sample(kind, r.partition, r.seq, Some(r.worker), other, at);
    }

    fn sample(
        &mut self,
        kind: AnomalyKind,
        partition: u32,
        seq: u64,
        worker: Option<WorkerRef>,
        other_worker: Option<WorkerRef>,
        at_us: Option<i64>,
    ) {
        let n = &mut self.sampled[kind.index()];
        if *n < self.config.sample_limit {
            *n += 1;
            self.samples.push(Anomaly {
                kind,
                partition,
                seq,
                worker,
                other_worker,
                at_us,
                trace_id: None,
            });
        }
    }

    fn worker_load(&mut self, worker: WorkerRef) -> Option<&mut WorkerLoad> {
        if worker.0 >= MAX_WORKER_REFS {
            return None;
        }
        let idx = worker.0 as usize;
        if idx >= self.workers.len() {
            let start = self.workers.len();
            self.workers.extend((start..=idx).map(|i| WorkerLoad {
                worker: WorkerRef(u32::try_from(i).unwrap_or(u32::MAX)),
                ..WorkerLoad::default()
            }));
        }
        self.workers.get_mut(idx)
    }
}
