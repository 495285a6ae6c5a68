//! The agent's outbox: numbered report batches between the report socket and the
//! coordinator, kept until the coordinator *releases* them.
//!
//! Why it exists apart from the session: the coordinator may be away (restarting from a
//! checkpoint, or the link is cut) for longer than the report channel and the socket
//! buffers can hold. Children must keep running meanwhile, so a batcher task
//! ([`run_batcher`]) reads reports into the outbox whether or not a session is up; the
//! session only drains it.
//!
//! A batch is, in order of its life (see `BatchAck` in `proto/proto/sim/v1/sim.proto`):
//! - *queued*: made, not yet sent on the current stream; the newest one keeps growing (up to
//!   the batch size) until some stream has seen it, so while the coordinator is behind or
//!   away reports gather into few full batches instead of many small ones — a slow
//!   coordinator pays per batch;
//! - *sent*: on the current stream, not yet accepted — at most `window` of these, so a slow
//!   coordinator still slows the agent;
//! - *accepted* (`BatchAck.up_to`): the coordinator has it; not sent again on this stream,
//!   but still kept: the coordinator may crash before a checkpoint covers it;
//! - *released* (`BatchAck.released_up_to`): a durable checkpoint covers it (or the
//!   coordinator does not checkpoint); dropped.
//!
//! A new stream starts over from the first unreleased batch, in order. Memory is bounded by
//! a byte budget (prost `encoded_len`): over it the batcher stops reading, so children
//! block on the socket — back-pressure, never a dropped report.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message;
use proto::v1::{Report, ReportBatch};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use crate::reclaim::Reclaimer;

/// Encoded bytes of unreleased batches the agent keeps before it stops reading reports.
///
/// Sized for a coordinator restart, not for a slow coordinator (the in-flight window
/// handles that): the extreme config's ~6000 reports/s encode to about 0.5 MB/s, so
/// 512 MiB hold a quarter of an hour of outage or of reports awaiting a checkpoint. The
/// resident size is somewhat larger than the encoded size (Rust structs, string headers).
pub const OUTBOX_BUDGET: usize = 512 << 20;
/// Reports per batch.
pub const BATCH_SIZE: usize = 2000;
/// How long a partial batch waits for more reports before it is queued.
pub const BATCH_LINGER: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Stored {
    batch: ReportBatch,
    bytes: usize,
}

/// The outbox's bookkeeping, without synchronisation (see [`Outbox`]).
///
/// Invariant: `batches` holds exactly the numbers `released + 1 ..= last_number`, in order,
/// and `released <= accepted <= sent <= last_number`.
#[derive(Debug)]
pub struct OutboxState {
    batches: VecDeque<Stored>,
    /// Highest number made (0: none yet). Numbering starts at 1 per agent process.
    last_number: u64,
    /// Highest number released by the coordinator: gone from memory.
    released: u64,
    /// Highest number accepted on the current stream.
    accepted: u64,
    /// Highest number handed to the current stream.
    sent: u64,
    /// Highest number ever handed to any stream: no acknowledgement may go beyond it.
    highest_sent: u64,
    bytes: usize,
    budget: usize,
    window: u64,
    batch_size: usize,
    /// Per journal, the highest line released since [`Self::take_released_lines`].
    released_lines: HashMap<u64, u64>,
}

impl OutboxState {
    /// Empty, keeping at most `budget` encoded bytes before [`Self::over_budget`], at most
    /// `window` sent-but-not-accepted batches, and at most `batch_size` reports a batch.
    pub fn new(budget: usize, window: usize, batch_size: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            last_number: 0,
            released: 0,
            accepted: 0,
            sent: 0,
            highest_sent: 0,
            bytes: 0,
            budget,
            window: u64::try_from(window.max(1)).unwrap_or(u64::MAX),
            batch_size: batch_size.max(1),
            released_lines: HashMap::new(),
        }
    }

    /// Per journal, the highest line in the batches released since the last call.
    pub fn take_released_lines(&mut self) -> HashMap<u64, u64> {
        std::mem::take(&mut self.released_lines)
    }

    /// Queue `reports`, in order: into the newest batch while no stream has seen it and
    /// it has room, else into new batches. Returns the newest batch number.
    pub fn push(&mut self, mut reports: Vec<Report>) -> u64 {
        while !reports.is_empty() {
            let open = self.batches.back().is_some_and(|tail| {
                tail.batch.number > self.highest_sent && tail.batch.reports.len() < self.batch_size
            });
            if !open {
                self.last_number += 1;
                let batch = ReportBatch {
                    number: self.last_number,
                    reports: Vec::new(),
                };
                let bytes = batch.encoded_len();
                self.bytes += bytes;
                self.batches.push_back(Stored { batch, bytes });
            }
            let Some(tail) = self.batches.back_mut() else {
                break;
            };
            let room = self.batch_size - tail.batch.reports.len();
            let rest = if reports.len() > room {
                reports.split_off(room)
            } else {
                Vec::new()
            };
            // Repeated fields encode element by element, and a zero number is not encoded
            // at all: this is exactly what the batch's encoding grows by.
            let chunk = ReportBatch {
                number: 0,
                reports: std::mem::replace(&mut reports, rest),
            };
            let added = chunk.encoded_len();
            tail.batch.reports.extend(chunk.reports);
            tail.bytes += added;
            self.bytes += added;
        }
        self.last_number
    }

    /// The batcher must stop reading reports until something is released.
    pub fn over_budget(&self) -> bool {
        self.bytes >= self.budget
    }

    /// A new stream: everything unreleased is to be sent again, from the lowest number.
    /// Returns the highest released number, for `Hello.acked_batch`.
    pub fn begin_session(&mut self) -> u64 {
        self.sent = self.released;
        self.accepted = self.released;
        self.released
    }

    /// The next batch to send on the current stream, if there is one and the in-flight
    /// window has room.
    pub fn next_to_send(&mut self) -> Option<ReportBatch> {
        if self.sent - self.accepted >= self.window || self.sent >= self.last_number {
            return None;
        }
        let index = usize::try_from(self.sent - self.released).ok()?;
        let batch = self.batches.get(index)?.batch.clone();
        self.sent += 1;
        self.highest_sent = self.highest_sent.max(self.sent);
        Some(batch)
    }

    /// Apply a `BatchAck`. Returns `(released_any, clamped)`: whether batches were dropped
    /// (room for the batcher), and whether the coordinator acknowledged numbers this agent
    /// never sent (a coordinator bug, or state from another agent process; ignored beyond
    /// what was sent).
    pub fn acknowledge(&mut self, up_to: u64, released_up_to: u64) -> (bool, bool) {
        let clamped = up_to > self.highest_sent || released_up_to > self.highest_sent;
        let released_up_to = released_up_to.min(self.highest_sent);
        let up_to = up_to.min(self.highest_sent);
        let mut released_any = false;
        if released_up_to > self.released {
            self.released = released_up_to;
            while self
                .batches
                .front()
                .is_some_and(|stored| stored.batch.number <= released_up_to)
            {
                if let Some(stored) = self.batches.pop_front() {
                    self.bytes -= stored.bytes;
                    for report in stored.batch.reports.iter().filter(|r| r.journal != 0) {
                        let line = self.released_lines.entry(report.journal).or_default();
                        *line = (*line).max(report.line);
                    }
                }
            }
            released_any = true;
        }
        // Released implies accepted; a release may also cover batches not yet resent on
        // this stream, which then need no sending at all.
        self.sent = self.sent.max(self.released);
        self.accepted = self.accepted.max(up_to.min(self.sent)).max(self.released);
        (released_any, clamped)
    }

    /// Highest released number.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Batches kept (not released).
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// No batch kept.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Encoded bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The outbox shared by the batcher and the session, with their wake-ups.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    /// Gives back the journal space of released lines (`crate::reclaim`).
    reclaimer: Option<Arc<Reclaimer>>,
    /// Batcher → session: a batch was queued.
    queued: Notify,
    /// Session → batcher: batches were released (room under the budget).
    room: Notify,
    /// The highest released number, for whoever waits for one (`Self::released_through`).
    released: watch::Sender<u64>,
}

impl Outbox {
    /// See [`OutboxState::new`].
    pub fn new(budget: usize, window: usize, batch_size: usize) -> Self {
        Self {
            state: Mutex::new(OutboxState::new(budget, window, batch_size)),
            reclaimer: None,
            queued: Notify::new(),
            room: Notify::new(),
            released: watch::Sender::new(0),
        }
    }

    /// Released journal lines go to `reclaimer`.
    #[must_use]
    pub fn with_reclaimer(mut self, reclaimer: Arc<Reclaimer>) -> Self {
        self.reclaimer = Some(reclaimer);
        self
    }

    /// The state, locked (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic while holding the lock leaves consistent data (no method panics halfway).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue reports (see [`OutboxState::push`]) and wake the session.
    pub fn push(&self, reports: Vec<Report>) -> u64 {
        let number = self.lock().push(reports);
        self.queued.notify_one();
        number
    }

    /// Apply a `BatchAck` (see [`OutboxState::acknowledge`]), waking the batcher when room
    /// was made.
    pub fn acknowledge(&self, up_to: u64, released_up_to: u64) {
        let (released_any, clamped, lines, released) = {
            let mut state = self.lock();
            let (released_any, clamped) = state.acknowledge(up_to, released_up_to);
            (
                released_any,
                clamped,
                state.take_released_lines(),
                state.released(),
            )
        };
        if let Some(reclaimer) = &self.reclaimer
            && !lines.is_empty()
        {
            reclaimer.released(&lines);
        }
        if clamped {
            warn!(
                up_to,
                released_up_to, "coordinator acknowledged batches never sent; ignored"
            );
        }
        if released_any {
            self.room.notify_one();
            self.released.send_replace(released);
        }
    }

    /// Completes once every batch up to `number` is released.
    pub async fn released_through(&self, number: u64) {
        let mut released = self.released.subscribe();
        // The sender lives as long as `self`: the wait cannot fail while we borrow it.
        let _ = released.wait_for(|released| *released >= number).await;
    }

    /// Completes when a batch was queued since the last call (or is immediately ready if
    /// one was queued while nobody waited).
    pub async fn queued(&self) {
        self.queued.notified().await;
    }

    /// Wait until the outbox is under its budget.
    pub(crate) async fn wait_for_room(&self) {
        let mut warned = false;
        loop {
            if !self.lock().over_budget() {
                if warned {
                    info!("outbox below its budget again; reading reports");
                }
                return;
            }
            if !warned {
                let state = self.lock();
                warn!(
                    batches = state.len(),
                    bytes = state.bytes(),
                    "outbox full (reports not yet released by a checkpoint); children wait"
                );
                warned = true;
            }
            // notify_one keeps a permit when nobody waits, so a release between the check
            // above and this await is not lost.
            self.room.notified().await;
        }
    }
}

/// Read `reports` into numbered batches of up to [`BATCH_SIZE`], each queued at most
/// [`BATCH_LINGER`] after its first report, whether or not a session is up. Stops reading
/// while the outbox is over budget (children then wait on the socket). Returns when every
/// sender of `reports` is gone.
pub async fn run_batcher(mut reports: mpsc::Receiver<Report>, outbox: std::sync::Arc<Outbox>) {
    loop {
        outbox.wait_for_room().await;
        let mut pending = Vec::with_capacity(64);
        if reports.recv_many(&mut pending, BATCH_SIZE).await == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + BATCH_LINGER;
        let mut closed = false;
        while pending.len() < BATCH_SIZE {
            let limit = BATCH_SIZE - pending.len();
            match tokio::time::timeout_at(deadline, reports.recv_many(&mut pending, limit)).await {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        outbox.push(pending);
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::v1::{Sent, report};

    use super::*;

    fn sent(seq: u64) -> Report {
        Report {
            body: Some(report::Body::Sent(Sent {
                partition: 0,
                seq,
                producer_id: "producer-0".into(),
                published_us: 0,
                stream_seq: seq,
            })),
            ..Report::default()
        }
    }

    fn numbers(state: &mut OutboxState) -> Vec<u64> {
        std::iter::from_fn(|| state.next_to_send().map(|b| b.number)).collect()
    }

    #[test]
    fn accepted_batches_are_kept_and_resent_until_released() {
        let mut state = OutboxState::new(usize::MAX, 16, 1);
        for seq in 1..=3 {
            state.push(vec![sent(seq)]);
        }
        assert_eq!(state.begin_session(), 0);
        assert_eq!(numbers(&mut state), [1, 2, 3]);
        // Accepted, not released: kept.
        state.acknowledge(2, 0);
        assert_eq!(state.len(), 3);
        assert!(numbers(&mut state).is_empty(), "nothing new to send");
        state.acknowledge(3, 1);
        assert_eq!((state.len(), state.released()), (2, 1));
        // Reconnect: Hello says 1, then 2 and 3 again, in order, although accepted.
        assert_eq!(state.begin_session(), 1);
        state.push(vec![sent(4)]);
        assert_eq!(numbers(&mut state), [2, 3, 4]);
        // Out-of-order and repeated acks are harmless.
        state.acknowledge(4, 4);
        state.acknowledge(2, 1);
        assert!(state.is_empty());
        assert_eq!((state.released(), state.bytes()), (4, 0));
        assert_eq!(state.begin_session(), 4);
        assert!(numbers(&mut state).is_empty());
    }

    #[test]
    fn unsent_batches_grow_to_the_batch_size_and_sent_ones_never_change() {
        let mut state = OutboxState::new(usize::MAX, 8, 3);
        state.push(vec![sent(1)]);
        state.push(vec![sent(2), sent(3), sent(4), sent(5)]);
        state.begin_session();
        let first = state.next_to_send().expect("batch 1");
        assert_eq!((first.number, first.reports.len()), (1, 3));
        // Batch 2 is still unsent: it grows; batch 1 is frozen.
        assert_eq!(state.push(vec![sent(6)]), 2);
        let second = state.next_to_send().expect("batch 2");
        assert_eq!((second.number, second.reports.len()), (2, 3));
        // Sent on a stream that then died: still frozen, the next reports start batch 3.
        state.begin_session();
        assert_eq!(state.push(vec![sent(7)]), 3);
        let again: Vec<_> = std::iter::from_fn(|| state.next_to_send()).collect();
        assert_eq!(
            again.iter().map(|b| b.reports.len()).collect::<Vec<_>>(),
            [3, 3, 1]
        );
        let seqs: Vec<u64> = again
            .iter()
            .flat_map(|b| &b.reports)
            .filter_map(|r| match &r.body {
                Some(report::Body::Sent(s)) => Some(s.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
        // Byte accounting matches the encoding of what is kept.
        let encoded: usize = again.iter().map(Message::encoded_len).sum();
        assert_eq!(state.bytes(), encoded);
    }

    #[test]
    fn the_in_flight_window_caps_unaccepted_batches() {
        let mut state = OutboxState::new(usize::MAX, 2, 1);
        for seq in 1..=5 {
            state.push(vec![sent(seq)]);
        }
        state.begin_session();
        assert_eq!(numbers(&mut state), [1, 2]);
        state.acknowledge(1, 0);
        assert_eq!(numbers(&mut state), [3]);
        // Accepted but unreleased batches do not count against the window.
        state.acknowledge(3, 0);
        assert_eq!(numbers(&mut state), [4, 5]);
    }

    #[test]
    fn a_release_before_the_resend_skips_released_batches() {
        let mut state = OutboxState::new(usize::MAX, 8, 1);
        for seq in 1..=4 {
            state.push(vec![sent(seq)]);
        }
        state.begin_session();
        assert_eq!(numbers(&mut state), [1, 2, 3, 4]);
        // The link drops; on the new stream the coordinator releases 3 at once.
        assert_eq!(state.begin_session(), 0);
        state.acknowledge(0, 3);
        assert_eq!(numbers(&mut state), [4]);
    }

    #[test]
    fn acknowledgements_beyond_what_was_sent_are_ignored() {
        let mut state = OutboxState::new(usize::MAX, 1, 1);
        for seq in 1..=3 {
            state.push(vec![sent(seq)]);
        }
        state.begin_session();
        assert_eq!(numbers(&mut state), [1]);
        let (_, clamped) = state.acknowledge(9, 9);
        assert!(clamped);
        // Only batch 1 was ever sent: 2 and 3 must survive.
        assert_eq!((state.released(), state.len()), (1, 2));
    }

    #[test]
    fn the_byte_budget_counts_encoded_batches() {
        let one = ReportBatch {
            number: 1,
            reports: vec![sent(1)],
        }
        .encoded_len();
        let mut state = OutboxState::new(2 * one + 1, 8, 1);
        state.push(vec![sent(1)]);
        state.push(vec![sent(2)]);
        assert!(!state.over_budget());
        state.push(vec![sent(3)]);
        assert!(state.over_budget());
        state.begin_session();
        assert_eq!(numbers(&mut state), [1, 2, 3]);
        state.acknowledge(3, 1);
        assert!(!state.over_budget());
    }

    /// Over budget the batcher stops reading (the channel fills: children would block on
    /// the socket); a release resumes it; every report arrives once, in order.
    #[tokio::test]
    async fn the_batcher_applies_back_pressure_and_loses_nothing() {
        let one = ReportBatch {
            number: 1,
            reports: vec![sent(1)],
        }
        .encoded_len();
        let outbox = Arc::new(Outbox::new(one, 64, 1));
        let (tx, rx) = mpsc::channel(4);
        let batcher = tokio::spawn(run_batcher(rx, outbox.clone()));
        tx.send(sent(1)).await.expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while outbox.lock().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "first batch never queued"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Over budget now: these wait in the channel, and the channel fills up.
        let mut queued = 1;
        let full = loop {
            queued += 1;
            match tx.try_send(sent(queued)) {
                Ok(()) => tokio::time::sleep(BATCH_LINGER * 2).await,
                Err(mpsc::error::TrySendError::Full(_)) => break queued - 1,
                Err(error) => panic!("batcher gone: {error}"),
            }
            assert!(queued < 100, "the batcher never stopped reading");
        };
        assert_eq!(outbox.lock().len(), 1, "nothing read over budget");
        // Release: the batcher resumes and drains the channel, batch by batch.
        let mut received = Vec::new();
        outbox.lock().begin_session();
        while received.len() < usize::try_from(full).expect("small") {
            let batch = outbox.lock().next_to_send();
            match batch {
                Some(batch) => {
                    for report in &batch.reports {
                        if let Some(report::Body::Sent(s)) = &report.body {
                            received.push(s.seq);
                        }
                    }
                    outbox.acknowledge(batch.number, batch.number);
                }
                None => {
                    assert!(tokio::time::Instant::now() < deadline, "batcher stalled");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        assert_eq!(received, (1..=full).collect::<Vec<_>>());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), batcher)
            .await
            .expect("batcher ends with its channel")
            .expect("batcher task");
    }
}
