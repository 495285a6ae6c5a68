//! Keeping a partition's order across a change of owner.
//!
//! A partition's durable can hold messages that were delivered to somebody and never
//! acknowledged (`num_ack_pending` when we bind it). JetStream hands out redeliveries
//! before new messages, but only once a message *is* redeliverable:
//! - a previous owner that released the partition nakked what it had fetched, in stream
//!   order, after its last pull request had ended (see `consumer.rs`): those are waiting in
//!   the server's redelivery queue, and our first pull gets them first, in order;
//! - a previous owner that died, or was paused and fenced, nakked nothing: its messages
//!   come back one by one as their ack waits run out. Processing whatever arrives first
//!   breaks the order twice over: newer messages arrive before the old ones, and an old one
//!   that timed out early arrives before older ones that time out later (a paused owner's
//!   open pull request kept receiving messages for up to `fetch_expiry`).
//!
//! So the new owner processes nothing of a takeover until it is complete. It keeps every
//! message it receives, unprocessed and unacknowledged, and counts the redeliveries among
//! them (stream sequences at or below the durable's last delivered sequence at bind time).
//! When all the pending ones are back, it processes what it kept in stream order — at a
//! planned handoff that is the first pull, with no wait. If a pull ends with some still
//! missing, they are with a departed owner: it pulls nothing more (the kept messages are
//! kept alive with in-progress acks) until every delivery that owner could hold has timed
//! out — its last pull request expired at most `fetch_expiry` after we bound, its deliveries
//! time out `ack_wait` later — and then merges what the server redelivers with what it kept,
//! by stream sequence. That costs one ack wait after a crash, only when the dead owner held
//! messages: the price of order, which the Go library never paid (and never kept).
//!
//! The same happens in the middle of an ownership: every delivery of a durable, to anyone,
//! takes the next consumer sequence, so a gap in the consumer sequences we receive means
//! deliveries went to another puller. That is an old owner's pull request that reached the
//! server late (sent just before its lease ran out, held in a socket while its network was
//! cut: the lab saw the two interleave, every other message each), or a foreign client on
//! our durable. Those messages come back when their ack waits run out, unless that puller
//! acks them; the gap starts (or extends) a takeover just like pending messages at bind. While
//! holding, the consumer checks the durable: once nothing is pending but what we kept, the
//! rest was acknowledged elsewhere and the wait ends early.
//!
//! Kept messages are never nakked: a revoke or lost lease during a takeover drops them and
//! they time out like the departed owner's (an in-progress ack only ever moves a deadline
//! to before the next owner's bind), so the next owner finds them all pending and takes
//! over the same way. A nak would queue them for redelivery ahead of older ones.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

/// Margin past the last moment a departed owner's delivery can time out.
const MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Keeping everything until the pending messages are all back.
    Gathering,
    /// A pull ended with pending messages missing: not pulling until `resume_at`.
    Holding,
    /// The wait is over: what arrives now is merged with the kept messages.
    Merging,
    /// Nothing more to do.
    Done,
}

/// A bind that found unacknowledged messages in the durable. `M` is the message type (a
/// JetStream message in `consumer.rs`).
#[derive(Debug)]
pub(crate) struct Takeover<M> {
    /// `num_ack_pending` at bind time.
    pending: usize,
    /// The durable's last delivered stream sequence at bind time.
    last_delivered: u64,
    /// Pending sequences seen again (redelivered to us).
    returned: HashSet<u64>,
    /// When every delivery a departed owner could hold has timed out.
    resume_at: Instant,
    /// Messages kept unprocessed, by stream sequence.
    kept: Vec<(u64, M)>,
    phase: Phase,
}

impl<M> Takeover<M> {
    /// `pending` messages, at most up to stream sequence `last_delivered`, were delivered
    /// to somebody else by `since` (found pending at a bind, or a gap in the delivery
    /// sequence); `None` when there are none.
    pub(crate) fn new(
        pending: usize,
        last_delivered: u64,
        since: Instant,
        ack_wait: Duration,
        fetch_expiry: Duration,
    ) -> Option<Self> {
        (pending > 0).then(|| Self {
            pending,
            last_delivered,
            returned: HashSet::new(),
            resume_at: Self::deadline(since, ack_wait, fetch_expiry),
            kept: Vec::new(),
            phase: Phase::Gathering,
        })
    }

    /// When every delivery made to another puller by `since` has timed out: its open pull
    /// request can still receive for `fetch_expiry`, and each delivery times out `ack_wait`
    /// later.
    fn deadline(since: Instant, ack_wait: Duration, fetch_expiry: Duration) -> Instant {
        since + fetch_expiry + ack_wait + MARGIN
    }

    /// More deliveries went to somebody else (a gap in the delivery sequence) while the
    /// takeover was going on: wait for those too.
    pub(crate) fn more_pending(
        &mut self,
        gap: usize,
        last_delivered: u64,
        since: Instant,
        ack_wait: Duration,
        fetch_expiry: Duration,
    ) {
        self.pending += gap;
        self.last_delivered = self.last_delivered.max(last_delivered);
        self.resume_at = self
            .resume_at
            .max(Self::deadline(since, ack_wait, fetch_expiry));
        if matches!(self.phase, Phase::Merging | Phase::Done) {
            self.phase = Phase::Gathering;
        }
    }

    /// How many messages are kept.
    pub(crate) fn kept_count(&self) -> usize {
        self.kept.len()
    }

    /// Whether the takeover is over.
    pub(crate) fn complete(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether pulling must wait for [`Self::resume_at`].
    pub(crate) fn holding(&self) -> bool {
        self.phase == Phase::Holding
    }

    /// When pulling may go on after a pull that left pending messages missing.
    pub(crate) fn resume_at(&self) -> Instant {
        self.resume_at
    }

    /// The kept messages (to keep them alive with in-progress acks while waiting).
    pub(crate) fn kept(&self) -> impl Iterator<Item = &M> {
        self.kept.iter().map(|(_, message)| message)
    }

    /// The wait is over: what arrives next is merged with the kept messages.
    pub(crate) fn resume(&mut self) {
        self.phase = Phase::Merging;
    }

    fn keep(&mut self, stream_sequence: u64, message: M) {
        let at = self.kept.partition_point(|(s, _)| *s < stream_sequence);
        self.kept.insert(at, (stream_sequence, message));
    }

    fn drain(&mut self, before: Option<u64>) -> Vec<M> {
        let end = before.map_or(self.kept.len(), |sequence| {
            self.kept.partition_point(|(s, _)| *s < sequence)
        });
        self.kept.drain(..end).map(|(_, m)| m).collect()
    }

    /// The message at `stream_sequence` arrived: returns what to process now, in order
    /// (nothing while gathering).
    pub(crate) fn admit(&mut self, stream_sequence: u64, message: M) -> Vec<M> {
        let returning = stream_sequence <= self.last_delivered;
        if returning {
            self.returned.insert(stream_sequence);
        }
        match self.phase {
            Phase::Gathering | Phase::Holding => {
                self.keep(stream_sequence, message);
                if self.phase == Phase::Gathering && self.returned.len() >= self.pending {
                    self.phase = Phase::Done;
                    return self.drain(None);
                }
                Vec::new()
            }
            Phase::Merging => {
                // A redelivery goes after the kept messages older than it; a new message
                // after all of them (nothing older can still be out).
                let mut out = self.drain(returning.then_some(stream_sequence));
                out.push(message);
                if !returning {
                    self.phase = Phase::Done;
                }
                out
            }
            Phase::Done => vec![message],
        }
    }

    /// A pull ended: returns what to process now, in order. Gathering with pending messages
    /// still missing turns into holding; after the wait, the first pull brought back all
    /// that will come back (the server redelivers timed-out messages first), so the rest of
    /// what is kept goes.
    pub(crate) fn end_of_pull(&mut self) -> Vec<M> {
        match self.phase {
            Phase::Gathering => {
                self.phase = Phase::Holding;
                Vec::new()
            }
            Phase::Merging => {
                self.phase = Phase::Done;
                self.drain(None)
            }
            Phase::Holding | Phase::Done => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takeover(pending: usize, last_delivered: u64) -> (Takeover<u64>, Instant) {
        let bound = Instant::now();
        let t = Takeover::new(
            pending,
            last_delivered,
            bound,
            Duration::from_secs(10),
            Duration::from_secs(1),
        )
        .expect("pending");
        (t, bound)
    }

    fn admit(t: &mut Takeover<u64>, seq: u64) -> Vec<u64> {
        t.admit(seq, seq)
    }

    #[test]
    fn nothing_pending_is_no_takeover() {
        let bound = Instant::now();
        assert!(
            Takeover::<u64>::new(0, 9, bound, Duration::from_secs(1), Duration::ZERO).is_none()
        );
    }

    #[test]
    fn a_handed_back_batch_is_processed_in_order_once_all_of_it_is_back() {
        let (mut t, _) = takeover(3, 10);
        assert!(admit(&mut t, 9).is_empty());
        assert!(admit(&mut t, 7).is_empty());
        assert_eq!(admit(&mut t, 8), [7, 8, 9]);
        assert!(t.complete());
        assert_eq!(admit(&mut t, 11), [11]);
    }

    /// A paused owner's messages time out one by one; one that came back early must not be
    /// processed before older ones still out (found in the lab: seq 652 after 655).
    #[test]
    fn an_early_redelivery_waits_for_older_ones_still_out() {
        let (mut t, bound) = takeover(4, 10);
        assert!(admit(&mut t, 9).is_empty(), "kept, not processed");
        assert!(admit(&mut t, 12).is_empty(), "a new message is kept too");
        assert!(t.end_of_pull().is_empty());
        assert!(t.holding() && !t.complete());
        assert_eq!(t.kept().copied().collect::<Vec<_>>(), [9, 12]);
        // Until every delivery the departed owner could hold has timed out.
        assert_eq!(t.resume_at(), bound + Duration::from_millis(11_500));
        t.resume();
        // The rest come back oldest first; each goes after the kept ones older than it.
        assert_eq!(admit(&mut t, 6), [6]);
        assert_eq!(admit(&mut t, 8), [8]);
        assert_eq!(admit(&mut t, 10), [9, 10]);
        assert_eq!(admit(&mut t, 13), [12, 13]);
        assert!(t.complete());
    }

    #[test]
    fn deliveries_to_another_puller_mid_ownership_are_waited_for() {
        let (mut t, bound) = takeover(1, 10);
        assert_eq!(admit(&mut t, 10), [10]);
        assert!(t.complete());
        // Later, deliveries 2 went elsewhere before seq 15 reached us.
        let later = bound + Duration::from_secs(5);
        t.more_pending(
            2,
            14,
            later,
            Duration::from_secs(10),
            Duration::from_secs(1),
        );
        assert!(!t.complete());
        assert!(admit(&mut t, 15).is_empty(), "kept behind the two");
        assert!(t.end_of_pull().is_empty());
        assert_eq!(t.resume_at(), later + Duration::from_millis(11_500));
        t.resume();
        assert_eq!(admit(&mut t, 12), [12]);
        assert_eq!(admit(&mut t, 13), [13]);
        assert_eq!(admit(&mut t, 16), [15, 16]);
        assert!(t.complete());
    }

    #[test]
    fn a_pull_after_the_wait_flushes_what_is_kept() {
        let (mut t, _) = takeover(2, 10);
        assert!(admit(&mut t, 11).is_empty());
        assert!(t.end_of_pull().is_empty());
        t.resume();
        assert_eq!(admit(&mut t, 5), [5]);
        // The other pending one never came back (deleted, say): nothing older is out now.
        assert_eq!(t.end_of_pull(), [11]);
        assert!(t.complete());
    }
}
