//! Per-partition accounting: the resolved watermark, the sliding window above it, the sparse
//! exceptions below it, and the recent activity spans of the workers processing it.
//!
//! Layout of one partition's sequence space:
//!
//! ```text
//!   1 ..= watermark                  watermark+1 ..= known_max
//!   resolved: processed, or          window: one Slot per seq (known-at time + flags);
//!   listed in `exceptions`           the front slot is always unprocessed
//! ```
//!
//! A seq leaves the window once it is processed and everything below it is resolved, or
//! when it is written off (lost after the validation window, excused by a partition
//! removal). Only the unusual cases are remembered below the watermark, so memory follows
//! the number of in-flight and missing messages, not the length of the run.

use std::collections::{BTreeMap, VecDeque};

use super::checkpoint::{ExceptionRun, SavedPartition, SavedSpan, WindowRun};
use super::redelivered::RedeliveredFirst;
use super::types::WorkerRef;

/// Exception flags of a seq below the watermark. A seq that is both sent and processed is
/// the normal case and has no entry.
pub(super) const SENT: u8 = 1;
/// The seq was processed at least once.
pub(super) const PROCESSED: u8 = 2;
/// The seq was written off as lost (validation window expired, or the run finished).
pub(super) const LOST: u8 = 4;
/// The seq was missing when its partition was removed: not counted as loss.
pub(super) const EXCUSED: u8 = 8;

/// How many workers' activity spans a partition remembers. More than one owner at a time is
/// already a violation; four leaves room for a few chaotic handoffs in a row.
const SPANS: usize = 4;

/// Timestamps are stored shifted left by two bits; clamping keeps the shift lossless.
const T_MAX: i64 = i64::MAX >> 2;
const T_MIN: i64 = i64::MIN >> 2;

/// One window entry packed into 8 bytes: known-at time (µs) in the high bits, `SENT` and
/// `PROCESSED` in the low two. Small slots keep a stalled partition's backlog cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(i64);

impl Slot {
    fn new(known_at: i64) -> Self {
        Self(known_at.clamp(T_MIN, T_MAX) << 2)
    }
    fn known_at(self) -> i64 {
        self.0 >> 2
    }
    fn flags(self) -> u8 {
        // Masked to two bits, so the cast cannot truncate anything meaningful.
        (self.0 & 3) as u8
    }
    fn set(&mut self, flag: u8) {
        self.0 |= i64::from(flag);
    }
}

/// The latest stretch of time during which one worker was processing this partition.
#[derive(Debug, Clone, Copy)]
struct Span {
    worker: WorkerRef,
    start: i64,
    end: i64,
    /// Tracker-wide report counter at the last update: least recently used is evicted.
    touched: u64,
    /// The highest seq this worker processed on this partition (order is judged per worker:
    /// its reports arrive in the order it sent them, while two workers' reports interleave
    /// however the agents happened to read them).
    high: u64,
}

/// What marking a seq as sent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SentOutcome {
    /// First Sent for this seq.
    New {
        /// It had already been processed.
        received: bool,
        /// It had already been written off (lost or excused).
        written_off: bool,
    },
    /// A Sent for this seq had been seen before.
    Duplicate,
}

/// How a written-off seq came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovered {
    /// It had been declared lost.
    Late,
    /// Its partition had been removed while it was missing.
    Excused,
}

/// What marking a seq as processed did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProcessedOutcome {
    /// First processing of this seq.
    First {
        /// Its Sent had already arrived.
        sent: bool,
        /// It had been written off before.
        recovered: Option<Recovered>,
    },
    /// It had been processed before.
    Duplicate,
}

/// Seqs moved from the window to the exceptions as lost or excused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct WriteOff {
    /// How many seqs were written off.
    pub count: u64,
    /// How many of them had been confirmed sent.
    pub sent: u64,
}

/// All state of one partition.
#[derive(Debug, Default)]
pub(super) struct PartitionState {
    /// Removed by a partition change: missing seqs above `taken_through` are excused,
    /// never lost.
    pub removed: bool,
    /// Seqs its durable had acknowledged (below its ack floor) when it was removed: a
    /// missing one is owed, not excused (somebody took it and did not report it).
    pub taken_through: u64,
    /// Every seq ≤ watermark is processed or has an entry in `exceptions`.
    watermark: u64,
    /// Seqs `watermark+1 ..= watermark+len`, i.e. up to the highest seq known to exist.
    window: VecDeque<Slot>,
    /// Processed slots in `window` (all behind its unprocessed front).
    processed_in_window: u64,
    /// Unusual seqs below the watermark: lost, excused, or processed without a Sent yet.
    exceptions: BTreeMap<u64, u8>,
    /// Entries in `exceptions` flagged `LOST`; lets sampling skip clean partitions.
    pub lost: u64,
    /// Highest seq processed so far; order violations are measured against it.
    processed_max: u64,
    spans: [Option<Span>; SPANS],
    /// First processings that were already redeliveries, so a late report of the earlier
    /// delivery is not mistaken for a second consumer (see `redelivered`).
    pub redelivered_first: RedeliveredFirst,
}

impl PartitionState {
    /// The highest seq known to exist on this partition.
    pub fn known_max(&self) -> u64 {
        self.watermark + self.window.len() as u64
    }

    /// The highest seq processed so far.
    pub fn processed_max(&self) -> u64 {
        self.processed_max
    }

    /// Seqs known to exist, not processed, and not written off.
    pub fn missing(&self) -> u64 {
        self.window.len() as u64 - self.processed_in_window
    }

    /// When the oldest missing seq became known; the window's front is always missing.
    pub fn oldest_missing_known_at(&self) -> Option<i64> {
        self.window.front().map(|s| s.known_at())
    }

    /// How many seqs `..= through` are still unresolved: neither processed nor written off.
    pub fn unresolved_through(&self, through: u64) -> u64 {
        let Some(len) = through.checked_sub(self.watermark) else {
            return 0;
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.window
            .iter()
            .take(len)
            .filter(|slot| slot.flags() & PROCESSED == 0)
            .count() as u64
    }

    /// How many seqs in `above+1 ..= through` are written off as lost.
    pub fn lost_between(&self, above: u64, through: u64) -> u64 {
        if through <= above {
            return 0;
        }
        let written_off = self
            .exceptions
            .range(above + 1..=through)
            .filter(|(_, flags)| **flags & LOST != 0)
            .count();
        written_off as u64
    }

    /// Current window length; tests use it to prove memory stays bounded.
    #[cfg(test)]
    pub fn window_len(&self) -> usize {
        self.window.len()
    }

    /// Current window capacity; tests use it to prove drained backlogs give memory back.
    #[cfg(test)]
    pub fn window_capacity(&self) -> usize {
        self.window.capacity()
    }

    /// Records that every seq up to `seq` exists, as of `at_us`.
    ///
    /// The new slots take a known-at time no earlier than the window's last one, so known-at
    /// times never decrease along the window and `write_off` only looks at a prefix.
    pub fn learn(&mut self, seq: u64, at_us: i64) {
        let known = self.known_max();
        if seq <= known {
            return;
        }
        let at = self
            .window
            .back()
            .map_or(at_us, |s| s.known_at().max(at_us));
        let add = usize::try_from(seq - known).unwrap_or(usize::MAX);
        self.window.extend(std::iter::repeat_n(Slot::new(at), add));
    }

    /// Marks `seq` as confirmed sent. Call [`Self::learn`] first.
    pub fn mark_sent(&mut self, seq: u64) -> SentOutcome {
        if seq > self.watermark {
            let Some(slot) = self.slot_mut(seq) else {
                return SentOutcome::Duplicate;
            };
            if slot.flags() & SENT != 0 {
                return SentOutcome::Duplicate;
            }
            slot.set(SENT);
            return SentOutcome::New {
                received: slot.flags() & PROCESSED != 0,
                written_off: false,
            };
        }
        let Some(flags) = self.exceptions.get_mut(&seq) else {
            // Below the watermark without an entry: already sent and processed.
            return SentOutcome::Duplicate;
        };
        if *flags & SENT != 0 {
            return SentOutcome::Duplicate;
        }
        if *flags & PROCESSED != 0 {
            self.exceptions.remove(&seq);
            return SentOutcome::New {
                received: true,
                written_off: false,
            };
        }
        *flags |= SENT;
        SentOutcome::New {
            received: false,
            written_off: true,
        }
    }

    /// Marks `seq` as processed. Call [`Self::learn`] first.
    pub fn mark_processed(&mut self, seq: u64) -> ProcessedOutcome {
        if seq > self.watermark {
            let Some(slot) = self.slot_mut(seq) else {
                return ProcessedOutcome::Duplicate;
            };
            let flags = slot.flags();
            if flags & PROCESSED != 0 {
                return ProcessedOutcome::Duplicate;
            }
            slot.set(PROCESSED);
            self.processed_in_window += 1;
            self.processed_max = self.processed_max.max(seq);
            if seq == self.watermark + 1 {
                self.advance();
            }
            return ProcessedOutcome::First {
                sent: flags & SENT != 0,
                recovered: None,
            };
        }
        let Some(flags) = self.exceptions.get_mut(&seq) else {
            return ProcessedOutcome::Duplicate;
        };
        if *flags & PROCESSED != 0 {
            return ProcessedOutcome::Duplicate;
        }
        let recovered = if *flags & LOST != 0 {
            self.lost -= 1;
            Recovered::Late
        } else {
            Recovered::Excused
        };
        let sent = *flags & SENT != 0;
        if sent {
            self.exceptions.remove(&seq);
        } else {
            *flags = PROCESSED;
        }
        self.processed_max = self.processed_max.max(seq);
        ProcessedOutcome::First {
            sent,
            recovered: Some(recovered),
        }
    }

    /// Writes off the missing seqs that became known at or before `deadline` (all of them
    /// when `None`), flagging them `how` (`LOST` or `EXCUSED`), and slides the window on.
    pub fn write_off(&mut self, deadline: Option<i64>, how: u8) -> WriteOff {
        self.write_off_through(deadline, how, u64::MAX)
    }

    /// [`Self::write_off`], stopping after seq `through`.
    fn write_off_through(&mut self, deadline: Option<i64>, how: u8, through: u64) -> WriteOff {
        let mut done = WriteOff::default();
        while let Some(&slot) = self.window.front() {
            if deadline.is_some_and(|d| slot.known_at() > d) || self.watermark >= through {
                break;
            }
            self.window.pop_front();
            self.watermark += 1;
            let flags = slot.flags();
            if flags & PROCESSED != 0 {
                self.processed_in_window -= 1;
                if flags & SENT == 0 {
                    self.exceptions.insert(self.watermark, PROCESSED);
                }
                continue;
            }
            self.exceptions.insert(self.watermark, how | (flags & SENT));
            done.count += 1;
            done.sent += u64::from(flags & SENT);
            if how == LOST {
                self.lost += 1;
            }
        }
        self.advance();
        self.compact();
        done
    }

    /// Removed with seqs still in the window: owed ones waiting for their deadline, or
    /// others (left behind owed ones, or learnt after the removal) to excuse.
    pub fn unsettled(&self) -> bool {
        self.removed && !self.window.is_empty()
    }

    /// [`Self::write_off`] for a removed partition: seqs up to `taken_through` are owed and
    /// written off as lost once known before `deadline` (all when `None`); those above are
    /// excused, once no owed seq is left in front of them (the window goes in order).
    pub fn write_off_removed(&mut self, deadline: Option<i64>) -> (WriteOff, WriteOff) {
        let lost = self.write_off_through(deadline, LOST, self.taken_through);
        if self.watermark < self.taken_through.min(self.known_max()) {
            return (lost, WriteOff::default());
        }
        (lost, self.write_off(None, EXCUSED))
    }

    /// Seqs currently written off as lost, lowest first.
    pub fn lost_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.exceptions
            .iter()
            .filter(|(_, f)| **f & LOST != 0)
            .map(|(s, _)| *s)
    }

    /// Records `worker`'s processing interval and returns another worker whose recent
    /// activity on this partition overlaps it by more than `tolerance` µs.
    ///
    /// Each worker keeps one span; an interval within `gap` µs of it extends it, so a busy
    /// owner looks continuously busy and a second worker active meanwhile is caught even
    /// when its reports arrive in a different order or batch.
    pub fn observe(
        &mut self,
        worker: WorkerRef,
        start: i64,
        end: i64,
        tick: u64,
        gap: i64,
        tolerance: i64,
    ) -> Option<WorkerRef> {
        let (start, end) = if start <= end {
            (start, end)
        } else {
            (end, start)
        };
        let mut overlap = None;
        let mut own = None;
        let mut victim = 0;
        let mut oldest = u64::MAX;
        for (i, entry) in self.spans.iter().enumerate() {
            match entry {
                None => {
                    if oldest != 0 {
                        victim = i;
                        oldest = 0;
                    }
                }
                Some(s) if s.worker == worker => own = Some(i),
                Some(s) => {
                    if overlap.is_none()
                        && s.end.min(end).saturating_sub(s.start.max(start)) > tolerance
                    {
                        overlap = Some(s.worker);
                    }
                    if s.touched < oldest {
                        oldest = s.touched;
                        victim = i;
                    }
                }
            }
        }
        match own.and_then(|i| self.spans[i].as_mut()) {
            Some(s) => {
                if start <= s.end.saturating_add(gap) && end >= s.start.saturating_sub(gap) {
                    s.start = s.start.min(start);
                    s.end = s.end.max(end);
                    s.touched = tick;
                } else if end > s.end {
                    // A new stretch of work after a pause: the old span must not be
                    // stretched across time this worker may not have owned the partition.
                    *s = Span {
                        worker,
                        start,
                        end,
                        touched: tick,
                        high: s.high,
                    };
                }
                // An older, disjoint interval arriving late is checked but not kept.
            }
            None => {
                self.spans[victim] = Some(Span {
                    worker,
                    start,
                    end,
                    touched: tick,
                    high: 0,
                });
            }
        }
        overlap
    }

    /// Whether `worker` processing `seq` comes after it processed a successor of `seq`
    /// here; remembers `seq`. Call after [`Self::observe`], which keeps the worker's span.
    pub fn processed_after_successor(&mut self, worker: WorkerRef, seq: u64) -> bool {
        let Some(span) = self.spans.iter_mut().flatten().find(|s| s.worker == worker) else {
            return false;
        };
        let after = seq < span.high;
        span.high = span.high.max(seq);
        after
    }

    /// Whether `seq` has been processed (at least once).
    pub fn is_processed(&self, seq: u64) -> bool {
        if seq == 0 || seq > self.known_max() {
            return false;
        }
        if seq > self.watermark {
            let idx = usize::try_from(seq - self.watermark - 1).unwrap_or(usize::MAX);
            return self
                .window
                .get(idx)
                .is_some_and(|slot| slot.flags() & PROCESSED != 0);
        }
        // Below the watermark no entry means sent and processed.
        self.exceptions
            .get(&seq)
            .is_none_or(|flags| flags & PROCESSED != 0)
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let idx = usize::try_from(seq - self.watermark - 1).ok()?;
        self.window.get_mut(idx)
    }

    /// Slides the watermark over the processed prefix of the window.
    fn advance(&mut self) {
        while let Some(&slot) = self.window.front() {
            let flags = slot.flags();
            if flags & PROCESSED == 0 {
                break;
            }
            self.window.pop_front();
            self.watermark += 1;
            self.processed_in_window -= 1;
            if flags & SENT == 0 {
                // Processed before its Sent arrived: remember it so that the Sent, when it
                // comes, is counted as a new distinct sent message rather than a duplicate.
                self.exceptions.insert(self.watermark, PROCESSED);
            }
        }
    }

    /// Gives back memory after a backlog drained; a VecDeque never shrinks on its own.
    fn compact(&mut self) {
        let cap = self.window.capacity();
        if cap > 1024 && self.window.len() < cap / 4 {
            self.window.shrink_to((self.window.len() * 2).max(64));
        }
    }
}

// === impl PartitionState: checkpoint ===

/// What a restored partition contributes to the tracker-wide counters; the importer sums
/// these and compares them with the saved counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Distinct seqs processed.
    pub received: u64,
    /// Distinct seqs confirmed sent.
    pub sent: u64,
    /// Distinct seqs both confirmed sent and processed.
    pub sent_received: u64,
    /// Confirmed sent and currently lost or excused.
    pub sent_written_off: u64,
    /// Currently lost.
    pub lost: u64,
    /// Currently excused.
    pub excused: u64,
    /// Window slots restored (for the memory budget).
    pub slots: u64,
    /// Exception entries restored (for the memory budget).
    pub exceptions: u64,
}

/// Why a saved partition was refused: the field and what is wrong with it. The importer adds
/// the partition id.
pub(super) type Refusal = (&'static str, String);

impl PartitionState {
    /// The partition in its saved form: window and exceptions run-length encoded.
    pub(super) fn export(&self) -> SavedPartition {
        let mut window: Vec<WindowRun> = Vec::new();
        let mut previous = (None::<Slot>, 0i64);
        for &slot in &self.window {
            match window.last_mut() {
                Some(run) if previous.0 == Some(slot) => run.count += 1,
                _ => {
                    // Both values lie within T_MIN..=T_MAX, so the difference cannot overflow.
                    window.push(WindowRun {
                        count: 1,
                        known_at_delta: slot.known_at() - previous.1,
                        flags: slot.flags(),
                    });
                    previous = (Some(slot), slot.known_at());
                }
            }
        }
        let mut exceptions: Vec<ExceptionRun> = Vec::new();
        for (&seq, &flags) in &self.exceptions {
            match exceptions.last_mut() {
                Some(run) if run.flags == flags && run.start + run.len == seq => run.len += 1,
                _ => exceptions.push(ExceptionRun {
                    start: seq,
                    len: 1,
                    flags,
                }),
            }
        }
        let mut spans: Vec<Option<SavedSpan>> = self
            .spans
            .iter()
            .map(|s| {
                s.map(|s| SavedSpan {
                    worker: s.worker,
                    start: s.start,
                    end: s.end,
                    touched: s.touched,
                    high: s.high,
                })
            })
            .collect();
        while spans.last().is_some_and(Option::is_none) {
            spans.pop();
        }
        SavedPartition {
            removed: self.removed,
            taken_through: self.taken_through,
            watermark: self.watermark,
            processed_max: self.processed_max,
            window,
            exceptions,
            spans,
            redelivered_first: self.redelivered_first.iter().collect(),
        }
    }

    /// Rebuilds a partition from its saved form, recomputing `processed_in_window` and
    /// `lost`, and checking every invariant the live structure relies on. `tick` is the
    /// tracker's report counter (no span can have been touched later); `slots_left` and
    /// `exceptions_left` bound what a corrupt run length may make us allocate.
    pub(super) fn import(
        saved: &SavedPartition,
        tick: u64,
        slots_left: u64,
        exceptions_left: u64,
    ) -> Result<(Self, Tally), Refusal> {
        let mut tally = Tally::default();
        let mut part = Self {
            removed: saved.removed,
            taken_through: saved.taken_through,
            watermark: saved.watermark,
            processed_max: saved.processed_max,
            ..Self::default()
        };

        // The window: known-at times never decrease, the front is unprocessed.
        for (i, run) in saved.window.iter().enumerate() {
            if run.count == 0 {
                return Err(("window", format!("run {i} is empty")));
            }
            if i > 0 && run.known_at_delta < 0 {
                return Err((
                    "window",
                    format!(
                        "run {i} decreases known_at by {} µs (known_at never decreases along the window)",
                        -i128::from(run.known_at_delta)
                    ),
                ));
            }
            if run.flags & !(SENT | PROCESSED) != 0 {
                return Err(("window", format!("run {i} has invalid flags {}", run.flags)));
            }
            if i == 0 && run.flags & PROCESSED != 0 {
                return Err((
                    "window",
                    "the first slot is processed (the window starts at the first unprocessed seq)"
                        .into(),
                ));
            }
            tally.slots = tally.slots.saturating_add(run.count);
            if tally.slots > slots_left {
                return Err((
                    "window",
                    format!("more slots than a checkpoint may restore ({slots_left} left)"),
                ));
            }
        }
        let mut known_at = 0i64;
        for run in &saved.window {
            known_at = known_at
                .checked_add(run.known_at_delta)
                .filter(|t| (T_MIN..=T_MAX).contains(t))
                .ok_or_else(|| ("window", format!("known_at out of range after {known_at}")))?;
            let count = usize::try_from(run.count)
                .map_err(|_| ("window", format!("run of {} slots", run.count)))?;
            let mut slot = Slot::new(known_at);
            slot.set(run.flags);
            part.window.extend(std::iter::repeat_n(slot, count));
            if run.flags & PROCESSED != 0 {
                part.processed_in_window += run.count;
            }
            if run.flags & SENT != 0 {
                tally.sent += run.count;
            }
            if run.flags == SENT | PROCESSED {
                tally.sent_received += run.count;
            }
        }
        let known_max = saved
            .watermark
            .checked_add(tally.slots)
            .ok_or_else(|| ("window", "watermark + window length overflows".to_string()))?;
        if saved.processed_max > known_max {
            return Err((
                "processed_max",
                format!(
                    "{} is above the highest known seq {known_max}",
                    saved.processed_max
                ),
            ));
        }

        // The exceptions: sorted, disjoint, at or below the watermark, valid flag sets.
        let mut next_free = 1u64;
        for (i, run) in saved.exceptions.iter().enumerate() {
            let last = run
                .start
                .checked_add(run.len)
                .and_then(|end| end.checked_sub(1))
                .filter(|_| run.len > 0)
                .ok_or_else(|| ("exceptions", format!("run {i} has length {}", run.len)))?;
            if run.start < next_free {
                return Err((
                    "exceptions",
                    format!(
                        "run {i} starts at seq {}, not above the previous run",
                        run.start
                    ),
                ));
            }
            if last > saved.watermark {
                return Err((
                    "exceptions",
                    format!(
                        "run {i} reaches seq {last}, above the watermark {}",
                        saved.watermark
                    ),
                ));
            }
            let flags = run.flags;
            let valid = flags == PROCESSED || flags & !SENT == LOST || flags & !SENT == EXCUSED;
            if !valid {
                return Err(("exceptions", format!("run {i} has invalid flags {flags}")));
            }
            tally.exceptions = tally.exceptions.saturating_add(run.len);
            if tally.exceptions > exceptions_left {
                return Err((
                    "exceptions",
                    format!("more entries than a checkpoint may restore ({exceptions_left} left)"),
                ));
            }
            part.exceptions
                .extend((run.start..=last).map(|seq| (seq, flags)));
            next_free = last.saturating_add(1);
            if flags & LOST != 0 {
                tally.lost += run.len;
            }
            if flags & EXCUSED != 0 {
                tally.excused += run.len;
            }
            if flags & (LOST | EXCUSED) != 0 && flags & SENT != 0 {
                tally.sent_written_off += run.len;
            }
        }
        part.lost = tally.lost;
        // Below the watermark a seq without an entry is both sent and processed; the entries
        // flagged SENT are exactly the sent-and-written-off ones.
        let unsent_below = tally.exceptions - tally.sent_written_off;
        let unprocessed_below = tally.lost + tally.excused;
        tally.sent += saved.watermark - unsent_below;
        tally.received = saved.watermark - unprocessed_below + part.processed_in_window;
        tally.sent_received += saved.watermark - tally.exceptions;

        // The spans: at most SPANS, one per worker, ordered intervals, touched in the past.
        if saved.spans.len() > SPANS {
            return Err((
                "spans",
                format!("{} spans, at most {SPANS} are kept", saved.spans.len()),
            ));
        }
        for (i, saved_span) in saved.spans.iter().enumerate() {
            let Some(s) = saved_span else { continue };
            if s.start > s.end {
                return Err(("spans", format!("span {i} ends before it starts")));
            }
            if s.touched > tick {
                return Err((
                    "spans",
                    format!("span {i} was touched at {}, after tick {tick}", s.touched),
                ));
            }
            if part.spans.iter().flatten().any(|o| o.worker == s.worker) {
                return Err(("spans", format!("worker {} has two spans", s.worker)));
            }
            part.spans[i] = Some(Span {
                worker: s.worker,
                start: s.start,
                end: s.end,
                touched: s.touched,
                high: s.high,
            });
        }
        part.redelivered_first =
            RedeliveredFirst::import(&saved.redelivered_first, |seq| part.is_processed(seq))
                .map_err(|detail| ("redelivered_first", detail))?;
        Ok((part, tally))
    }
}
