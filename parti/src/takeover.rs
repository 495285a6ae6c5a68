//! Keeping a partition's order across a change of owner.
//!
//! A partition's durable can hold messages that were delivered to somebody and never
//! acknowledged (`num_ack_pending` when we bind it). JetStream hands out redeliveries
//! before new messages, but only once a message *is* redeliverable:
//! - a previous owner that released the partition nakked what it had fetched, in stream
//!   order, after its last pull request had ended (see `consumer.rs`): those are waiting in
//!   the server's redelivery queue, and our first pull gets them first, in order;
//! - a previous owner that died, or was paused and fenced, nakked nothing: its messages
//!   come back only when their ack wait runs out. Pulling before that gets newer messages
//!   first, and the old ones arrive after their successors — the order broken.
//!
//! So the new owner counts the redeliveries it receives (stream sequences at or below the
//! durable's last delivered sequence at bind time). If a *new* message arrives while some
//! of the pending ones are still missing, they are held by a departed owner: the new
//! message and the rest of that batch are kept, unprocessed and unacknowledged (kept alive
//! with in-progress acks), and nothing is pulled until every message the departed owner
//! could hold has timed out (its last pull request expired at most `fetch_expiry` after we
//! bound, and its deliveries time out `ack_wait` later). The server then redelivers those
//! first, oldest first; the kept ones are merged in behind them by stream sequence. That
//! costs one ack wait after a crash, only when the dead owner held messages — the price of
//! order, which the Go library never paid (and never kept).
//!
//! Kept messages are never nakked: a revoke or lost lease during the wait drops them and
//! they time out like the departed owner's, so the next owner finds them all pending and
//! waits the same way (a nak would queue them for redelivery ahead of the older ones).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

/// Margin past the last moment a departed owner's delivery can time out.
const MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving what was pending at bind time.
    Counting,
    /// A new message came before the pending ones: keeping messages, not pulling.
    Holding,
    /// The wait is over: the departed owner's messages come now; kept ones merge in.
    Merging,
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
    /// After a bind at `bound` that found `pending` unacknowledged messages, at most up to
    /// stream sequence `last_delivered`; `None` when nothing is pending.
    pub(crate) fn after_bind(
        pending: usize,
        last_delivered: u64,
        bound: Instant,
        ack_wait: Duration,
        fetch_expiry: Duration,
    ) -> Option<Self> {
        (pending > 0).then(|| Self {
            pending,
            last_delivered,
            returned: HashSet::new(),
            resume_at: bound + fetch_expiry + ack_wait + MARGIN,
            kept: Vec::new(),
            phase: Phase::Counting,
        })
    }

    /// Whether the takeover is over: nothing kept, nothing more to wait for.
    pub(crate) fn complete(&self) -> bool {
        self.kept.is_empty()
            && (self.phase == Phase::Merging || self.returned.len() >= self.pending)
    }

    /// Whether pulling must wait for [`Self::resume_at`].
    pub(crate) fn holding(&self) -> bool {
        self.phase == Phase::Holding
    }

    /// When pulling may go on after a new message was kept.
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

    /// The message at `stream_sequence` arrived: returns what to process now, in order
    /// (nothing while keeping).
    pub(crate) fn admit(&mut self, stream_sequence: u64, message: M) -> Vec<M> {
        let returning = stream_sequence <= self.last_delivered;
        match self.phase {
            Phase::Counting if returning || self.returned.len() >= self.pending => {
                if returning {
                    self.returned.insert(stream_sequence);
                }
                vec![message]
            }
            Phase::Counting | Phase::Holding => {
                self.phase = Phase::Holding;
                let at = self.kept.partition_point(|(s, _)| *s < stream_sequence);
                self.kept.insert(at, (stream_sequence, message));
                Vec::new()
            }
            Phase::Merging => {
                let older = if returning {
                    self.returned.insert(stream_sequence);
                    self.kept.partition_point(|(s, _)| *s < stream_sequence)
                } else {
                    self.kept.len()
                };
                let mut out: Vec<M> = self.kept.drain(..older).map(|(_, m)| m).collect();
                out.push(message);
                out
            }
        }
    }

    /// After a batch that followed the wait: what is still kept, in order (the departed
    /// owner's messages came first in that batch, or never will).
    pub(crate) fn flush(&mut self) -> Vec<M> {
        if self.phase != Phase::Merging {
            return Vec::new();
        }
        self.kept.drain(..).map(|(_, m)| m).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takeover(pending: usize, last_delivered: u64) -> (Takeover<u64>, Instant) {
        let bound = Instant::now();
        let t = Takeover::after_bind(
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
            Takeover::<u64>::after_bind(0, 9, bound, Duration::from_secs(1), Duration::ZERO)
                .is_none()
        );
    }

    #[test]
    fn redeliveries_first_then_new_messages_flow() {
        let (mut t, _) = takeover(2, 10);
        assert_eq!(admit(&mut t, 7), [7]);
        assert!(!t.complete());
        assert_eq!(admit(&mut t, 9), [9]);
        assert!(t.complete());
        assert_eq!(admit(&mut t, 11), [11]);
    }

    #[test]
    fn new_messages_before_the_pending_ones_wait_behind_them() {
        let (mut t, bound) = takeover(3, 10);
        assert_eq!(admit(&mut t, 4), [4]);
        // A new message while two pending ones are missing: kept, and so is the rest.
        assert!(admit(&mut t, 11).is_empty());
        assert!(admit(&mut t, 13).is_empty());
        assert!(admit(&mut t, 12).is_empty());
        assert!(t.holding() && !t.complete());
        assert_eq!(t.kept().copied().collect::<Vec<_>>(), [11, 12, 13]);
        // Until every delivery the departed owner could hold has timed out.
        assert_eq!(t.resume_at(), bound + Duration::from_millis(11_500));
        t.resume();
        // Its messages come back first, the kept ones merge in behind them.
        assert_eq!(admit(&mut t, 6), [6]);
        assert_eq!(admit(&mut t, 8), [8]);
        assert_eq!(admit(&mut t, 14), [11, 12, 13, 14]);
        assert!(t.complete());
    }

    #[test]
    fn a_batch_after_the_wait_flushes_what_is_kept() {
        let (mut t, _) = takeover(1, 10);
        assert!(admit(&mut t, 11).is_empty());
        assert!(t.flush().is_empty(), "nothing is flushed while waiting");
        t.resume();
        assert_eq!(admit(&mut t, 5), [5]);
        assert_eq!(t.flush(), [11]);
        assert!(t.complete());
    }
}
