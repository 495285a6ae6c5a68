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
//! acks them; the gap extends the takeover just like pending messages at bind. While
//! holding, the consumer checks the durable: once nothing is pending but what we kept, the
//! rest was acknowledged elsewhere and everything kept goes at once.
//!
//! A puller that never stops (a worker whose assignment watch stalled, a foreign client)
//! makes a gap in nearly every pull. Each kept message therefore carries its own deadline —
//! the wait in force when it arrived, which covers every delivery older than it made to
//! anyone else — and a pull that began after it releases it and everything older. A
//! later gap delays only what arrives after it: order is lost to such a puller anyway, but
//! no message waits longer than one ack wait plus a pull (CI once held a partition's
//! messages for the whole run when every gap sent all of them back to waiting). Waiting is
//! not even worth that much there: kept messages count against the durable's
//! `max_ack_pending` (one batch), so two pullers that both wait for each other's deliveries
//! pass a batch per ack wait between them, and the backlog grows without bound (the
//! stalled-watch simulation lost half its messages so). A departed owner's open pull
//! request, or a late one, receives for at most `fetch_expiry` (`others_until`); a
//! delivery to somebody else after that is a puller that keeps pulling ([`Rival`]). Two
//! such deliveries can be dated: one counted by the holding consumer's checks of the durable
//! (it pulls nothing then), and a gap between two deliveries of one pull that began later —
//! two holders resume together (their waits were started by the same moves) and see each
//! other only then. The consumer then processes what it
//! kept, says so, and waits for no gap until the rival has taken nothing for one wait.
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

/// When every delivery made to another puller by `since` has timed out: its open pull
/// request can still receive for `fetch_expiry`, and each delivery times out `ack_wait`
/// later. Also how long a rival must take nothing to be taken for gone.
fn timed_out_by(since: Instant, ack_wait: Duration, fetch_expiry: Duration) -> Instant {
    since + fetch_expiry + ack_wait + MARGIN
}

/// Another puller that keeps pulling our durable (module docs): while it does, gaps are
/// not waited for.
#[derive(Debug, Default)]
pub(crate) struct Rival {
    until: Option<Instant>,
}

impl Rival {
    /// A rival was found at `now`.
    pub(crate) fn found(&mut self, now: Instant, ack_wait: Duration, fetch_expiry: Duration) {
        self.until = Some(timed_out_by(now, ack_wait, fetch_expiry));
    }

    /// A gap was seen at `now`: whether it is the rival's (then it is still there).
    pub(crate) fn took(
        &mut self,
        now: Instant,
        ack_wait: Duration,
        fetch_expiry: Duration,
    ) -> bool {
        let active = self.until.is_some_and(|until| now < until);
        self.until = active.then(|| timed_out_by(now, ack_wait, fetch_expiry));
        active
    }
}

/// A delivery count, with the consumer leader that counted it: a leader elected after a
/// server died counts from its own replicated state.
#[derive(Debug)]
struct Floor {
    delivered: u64,
    leader: Option<String>,
}

/// A message kept unprocessed.
#[derive(Debug)]
struct Kept<M> {
    stream_sequence: u64,
    /// The takeover's `resume_at` when it arrived: every delivery of an older message to
    /// somebody else has timed out by then.
    release_at: Instant,
    message: M,
}

/// Unacknowledged messages of our durable that somebody else had (found pending at a bind,
/// or a gap in the delivery sequence). `M` is the message type (a JetStream message in
/// `consumer.rs`).
#[derive(Debug)]
pub(crate) struct Takeover<M> {
    /// Deliveries to somebody else (`num_ack_pending` at bind, plus gaps).
    pending: usize,
    /// The highest stream sequence among those deliveries.
    last_delivered: u64,
    /// Pending sequences seen again (redelivered to us).
    returned: HashSet<u64>,
    /// When every delivery to somebody else seen so far has timed out.
    resume_at: Instant,
    /// Until when somebody else can legitimately still receive deliveries: the open pull
    /// request of a departed owner, or a late one, lasts `fetch_expiry`.
    others_until: Instant,
    /// The durable's delivery count at a moment past `others_until`: a delivery numbered
    /// above it went to a rival.
    rival_floor: Option<Floor>,
    /// Messages kept unprocessed, in stream order.
    kept: Vec<Kept<M>>,
    /// Not pulling until then: a pull ended with older messages still out.
    hold: Option<Instant>,
    /// When the kept messages were last kept alive (in-progress acks).
    refreshed_at: Instant,
    /// Whether the current pull brought a message that is not a redelivery (the server
    /// sends redeliveries first, so none was left behind).
    pull_brought_new: bool,
}

impl<M> Takeover<M> {
    /// `pending` messages, at most up to stream sequence `last_delivered`, were delivered
    /// to somebody else by `since`; `None` when there are none.
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
            resume_at: timed_out_by(since, ack_wait, fetch_expiry),
            others_until: since + fetch_expiry + MARGIN,
            rival_floor: None,
            kept: Vec::new(),
            hold: None,
            refreshed_at: since,
            pull_brought_new: false,
        })
    }

    /// `pending` more deliveries went to somebody else by `since`: extends the takeover in
    /// `slot`, or starts one.
    pub(crate) fn start_or_extend(
        slot: &mut Option<Self>,
        pending: usize,
        last_delivered: u64,
        since: Instant,
        ack_wait: Duration,
        fetch_expiry: Duration,
    ) {
        match slot {
            Some(t) => t.more_pending(pending, last_delivered, since, ack_wait, fetch_expiry),
            None => *slot = Self::new(pending, last_delivered, since, ack_wait, fetch_expiry),
        }
    }

    /// More deliveries went to somebody else (a gap in the delivery sequence) while the
    /// takeover was going on: what arrives from now on waits for those too.
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
            .max(timed_out_by(since, ack_wait, fetch_expiry));
        self.others_until = self.others_until.max(since + fetch_expiry + MARGIN);
        self.rival_floor = None;
    }

    /// While holding (pulling nothing), the durable had made `delivered` deliveries at
    /// `now`, counted by consumer leader `leader`: true if somebody else received one past
    /// `others_until` (a rival).
    pub(crate) fn delivered_while_holding(
        &mut self,
        delivered: u64,
        leader: Option<&str>,
        now: Instant,
    ) -> bool {
        if now <= self.others_until {
            return false;
        }
        match &self.rival_floor {
            Some(floor) if floor.leader.as_deref() == leader && floor.delivered <= delivered => {
                floor.delivered < delivered
            }
            _ => {
                // The first count past `others_until`, or a new leader's.
                self.rival_floor = Some(Floor {
                    delivered,
                    leader: leader.map(str::to_owned),
                });
                false
            }
        }
    }

    /// A gap: deliveries up to `last_skipped` went elsewhere, the last of them `during_pull`
    /// (between two of ours in a pull that began at `pull_started`) or at an unknown time
    /// since our previous one. True if that dates one past `others_until` (a rival).
    pub(crate) fn gap_shows_rival(
        &self,
        last_skipped: u64,
        during_pull: bool,
        pull_started: Instant,
    ) -> bool {
        (during_pull && pull_started > self.others_until)
            || self
                .rival_floor
                .as_ref()
                .is_some_and(|floor| last_skipped > floor.delivered)
    }

    /// How many messages are kept.
    pub(crate) fn kept_count(&self) -> usize {
        self.kept.len()
    }

    /// Whether the takeover is over: nothing kept, nothing to wait for.
    pub(crate) fn finished(&self, now: Instant) -> bool {
        self.kept.is_empty() && self.hold.is_none() && (self.all_back() || self.resume_at <= now)
    }

    /// Until when pulling must wait, if it must.
    pub(crate) fn hold(&self) -> Option<Instant> {
        self.hold
    }

    /// The hold is over: pull again.
    pub(crate) fn resume(&mut self) {
        self.hold = None;
    }

    /// The kept messages (to keep them alive with in-progress acks).
    pub(crate) fn kept(&self) -> impl Iterator<Item = &M> {
        self.kept.iter().map(|kept| &kept.message)
    }

    /// Whether the kept messages are due for an in-progress ack (every `every`); true
    /// counts as done.
    pub(crate) fn refresh_due(&mut self, now: Instant, every: Duration) -> bool {
        let due = !self.kept.is_empty() && now >= self.refreshed_at + every;
        if due {
            self.refreshed_at = now;
        }
        due
    }

    fn all_back(&self) -> bool {
        self.returned.len() >= self.pending
    }

    fn keep(&mut self, stream_sequence: u64, message: M) {
        let at = self
            .kept
            .partition_point(|kept| kept.stream_sequence < stream_sequence);
        self.kept.insert(
            at,
            Kept {
                stream_sequence,
                release_at: self.resume_at,
                message,
            },
        );
    }

    /// The kept messages older than `before` (all of them with `None`), in order.
    fn drain_before(&mut self, before: Option<u64>) -> Vec<M> {
        let end = before.map_or(self.kept.len(), |sequence| {
            self.kept
                .partition_point(|kept| kept.stream_sequence < sequence)
        });
        self.kept.drain(..end).map(|kept| kept.message).collect()
    }

    /// Nothing is pending in the durable but what we kept: whatever was out elsewhere was
    /// acknowledged there, so the takeover is over. Returns everything kept, in order.
    pub(crate) fn release_all(mut self) -> Vec<M> {
        self.drain_before(None)
    }

    /// The message at `stream_sequence` arrived in a pull that began at `pull_started`:
    /// returns what to process now, in order.
    pub(crate) fn admit(
        &mut self,
        stream_sequence: u64,
        message: M,
        pull_started: Instant,
    ) -> Vec<M> {
        let returning = stream_sequence <= self.last_delivered;
        if returning {
            self.returned.insert(stream_sequence);
        } else {
            self.pull_brought_new = true;
        }
        if self.resume_at <= pull_started {
            // Every delivery to somebody else had timed out before this pull began, and
            // the server redelivers before it delivers anything new, oldest first: a
            // redelivery goes after the kept messages older than it, a new message after
            // all of them.
            let mut out = self.drain_before(returning.then_some(stream_sequence));
            out.push(message);
            return out;
        }
        self.keep(stream_sequence, message);
        if self.all_back() {
            // A planned handoff: the old owner's nakked messages all came back first.
            return self.drain_before(None);
        }
        Vec::new()
    }

    /// The pull that began at `pull_started` ended (`full`: it brought as many messages as
    /// it asked for). Returns what to process now, in order: the kept messages whose wait
    /// was over before the pull began — what timed out elsewhere was redelivered to it
    /// ahead of anything new, unless a full batch of redeliveries left some behind. Holds
    /// pulling while the oldest kept message (or, with none, a missing one) is waiting.
    pub(crate) fn end_of_pull(
        &mut self,
        pull_started: Instant,
        full: bool,
        now: Instant,
    ) -> Vec<M> {
        let complete = !full || self.pull_brought_new;
        self.pull_brought_new = false;
        let out = if complete {
            let end = self
                .kept
                .iter()
                .take_while(|kept| kept.release_at <= pull_started)
                .count();
            self.kept.drain(..end).map(|kept| kept.message).collect()
        } else {
            Vec::new()
        };
        let waiting = match self.kept.first() {
            Some(oldest) => Some(oldest.release_at),
            None => (!self.all_back()).then_some(self.resume_at),
        };
        self.hold = waiting.filter(|until| *until > now);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK_WAIT: Duration = Duration::from_secs(10);
    const FETCH_EXPIRY: Duration = Duration::from_secs(1);
    /// `fetch_expiry + ack_wait + MARGIN`.
    const WAIT: Duration = Duration::from_millis(11_500);
    const MS: Duration = Duration::from_millis(1);

    fn takeover(pending: usize, last_delivered: u64) -> (Takeover<u64>, Instant) {
        let bound = Instant::now();
        let t =
            Takeover::new(pending, last_delivered, bound, ACK_WAIT, FETCH_EXPIRY).expect("pending");
        (t, bound)
    }

    /// Admits each of `seqs` in a pull that began at `pull`; returns what was released.
    fn pull(t: &mut Takeover<u64>, pull: Instant, seqs: &[u64]) -> Vec<u64> {
        seqs.iter().flat_map(|&s| t.admit(s, s, pull)).collect()
    }

    fn kept(t: &Takeover<u64>) -> Vec<u64> {
        t.kept().copied().collect()
    }

    #[test]
    fn a_rival_is_there_until_it_took_nothing_for_one_wait() {
        let mut rival = Rival::default();
        let start = Instant::now();
        assert!(!rival.took(start, ACK_WAIT, FETCH_EXPIRY), "none found yet");
        rival.found(start, ACK_WAIT, FETCH_EXPIRY);
        assert!(rival.took(start + Duration::from_secs(10), ACK_WAIT, FETCH_EXPIRY));
        assert!(rival.took(start + Duration::from_secs(20), ACK_WAIT, FETCH_EXPIRY));
        assert!(!rival.took(
            start + Duration::from_secs(20) + WAIT,
            ACK_WAIT,
            FETCH_EXPIRY
        ));
        assert!(!rival.took(
            start + Duration::from_secs(21) + WAIT,
            ACK_WAIT,
            FETCH_EXPIRY
        ));
    }

    /// Deliveries elsewhere past `fetch_expiry` after the takeover's cause are a rival's:
    /// counted while holding, or dated by a later gap against that count.
    #[test]
    fn deliveries_elsewhere_past_the_last_pull_request_show_a_rival() {
        let (mut t, bound) = takeover(2, 10);
        let others_until = bound + FETCH_EXPIRY + MARGIN;
        let n1 = Some("n1");
        assert!(!t.delivered_while_holding(5, n1, bound + MS));
        assert!(
            !t.delivered_while_holding(7, n1, bound + MS),
            "a departed owner's request"
        );
        assert!(
            !t.gap_shows_rival(7, true, bound),
            "this pull began too early to date it"
        );
        assert!(
            t.gap_shows_rival(7, true, others_until + MS),
            "between two of ours, later"
        );
        assert!(
            !t.delivered_while_holding(7, n1, others_until + MS),
            "the floor"
        );
        assert!(
            !t.gap_shows_rival(7, false, others_until + MS),
            "made before the floor"
        );
        assert!(
            t.gap_shows_rival(8, false, others_until + MS),
            "made after it"
        );
        // A new consumer leader counts from its own state: a new floor, not a rival.
        assert!(!t.delivered_while_holding(9, Some("n2"), others_until + 2 * MS));
        assert!(
            !t.delivered_while_holding(6, Some("n2"), others_until + 3 * MS),
            "nor less"
        );
        assert!(t.delivered_while_holding(8, Some("n2"), others_until + 4 * MS));
        // A new burst waited for moves the floor away.
        t.more_pending(1, 12, others_until, ACK_WAIT, FETCH_EXPIRY);
        assert!(!t.gap_shows_rival(9, false, others_until + MS));
    }

    #[test]
    fn nothing_pending_is_no_takeover() {
        let bound = Instant::now();
        assert!(Takeover::<u64>::new(0, 9, bound, ACK_WAIT, Duration::ZERO).is_none());
    }

    #[test]
    fn a_handed_back_batch_is_processed_in_order_once_all_of_it_is_back() {
        let (mut t, bound) = takeover(3, 10);
        assert!(pull(&mut t, bound, &[9, 7]).is_empty());
        assert_eq!(pull(&mut t, bound, &[8]), [7, 8, 9]);
        assert!(t.end_of_pull(bound, false, bound + MS).is_empty());
        assert!(t.finished(bound + MS), "no wait at a planned handoff");
    }

    /// A paused owner's messages time out one by one; one that came back early must not be
    /// processed before older ones still out (found in the lab: seq 652 after 655).
    #[test]
    fn an_early_redelivery_waits_for_older_ones_still_out() {
        let (mut t, bound) = takeover(4, 10);
        assert!(
            pull(&mut t, bound, &[9, 12]).is_empty(),
            "kept, new ones too"
        );
        assert!(t.end_of_pull(bound, false, bound + MS).is_empty());
        assert_eq!(kept(&t), [9, 12]);
        // Until every delivery the departed owner could hold has timed out.
        assert_eq!(t.hold(), Some(bound + WAIT));
        assert!(!t.finished(bound + MS));
        t.resume();
        // The rest come back oldest first; each goes after the kept ones older than it.
        let after = bound + WAIT;
        assert_eq!(pull(&mut t, after, &[6]), [6]);
        assert_eq!(pull(&mut t, after, &[8]), [8]);
        assert_eq!(pull(&mut t, after, &[10]), [9, 10]);
        assert_eq!(pull(&mut t, after, &[13]), [12, 13]);
        assert!(t.end_of_pull(after, false, after + MS).is_empty());
        assert!(t.finished(after + MS));
    }

    #[test]
    fn deliveries_to_another_puller_mid_ownership_are_waited_for() {
        let (mut t, bound) = takeover(1, 10);
        assert_eq!(pull(&mut t, bound, &[10]), [10]);
        // Later, two deliveries went elsewhere before seq 15 reached us.
        let later = bound + Duration::from_secs(5);
        t.more_pending(2, 14, later, ACK_WAIT, FETCH_EXPIRY);
        assert!(pull(&mut t, later, &[15]).is_empty(), "kept behind the two");
        assert!(t.end_of_pull(later, false, later + MS).is_empty());
        assert_eq!(t.hold(), Some(later + WAIT));
        t.resume();
        let after = later + WAIT;
        assert_eq!(pull(&mut t, after, &[12, 13]), [12, 13]);
        assert_eq!(pull(&mut t, after, &[16]), [15, 16]);
        assert!(t.finished(after));
    }

    #[test]
    fn a_pull_after_the_wait_flushes_what_is_kept() {
        let (mut t, bound) = takeover(2, 10);
        assert!(pull(&mut t, bound, &[11]).is_empty());
        assert!(t.end_of_pull(bound, false, bound + MS).is_empty());
        t.resume();
        let after = bound + WAIT;
        assert_eq!(pull(&mut t, after, &[5]), [5]);
        // The other pending one never came back (acknowledged elsewhere, say): nothing
        // older is out now.
        assert_eq!(t.end_of_pull(after, false, after + MS), [11]);
        assert!(t.finished(after + MS));
    }

    /// A full batch of redeliveries may have left older ones in the server's queue: what is
    /// kept waits for a pull that brings something new, or ends short.
    #[test]
    fn a_full_batch_of_redeliveries_releases_nothing_it_may_have_left_behind() {
        let (mut t, bound) = takeover(4, 30);
        assert!(pull(&mut t, bound, &[25]).is_empty());
        assert!(t.end_of_pull(bound, false, bound + MS).is_empty());
        t.resume();
        let after = bound + WAIT;
        // 25's wait is over, but a gap in this pull makes what arrives now wait again.
        t.more_pending(1, 30, after, ACK_WAIT, FETCH_EXPIRY);
        assert!(pull(&mut t, after, &[27]).is_empty());
        assert!(
            t.end_of_pull(after, true, after + MS).is_empty(),
            "full, all redeliveries"
        );
        assert_eq!(t.hold(), None, "25's wait is over: pull again at once");
        let next = after + MS;
        assert!(pull(&mut t, next, &[26]).is_empty());
        assert_eq!(t.end_of_pull(next, false, next + MS), [25]);
        assert_eq!(kept(&t), [26, 27]);
        assert_eq!(t.hold(), Some(after + WAIT));
    }

    /// A puller that never stops makes a gap in every pull: each message still goes one
    /// wait after it arrived (CI saw a partition's messages held for the whole run).
    #[test]
    fn a_puller_that_never_stops_delays_each_message_by_one_wait_only() {
        let (mut t, start) = takeover(1, 10);
        let mut released = Vec::new();
        let mut at = start;
        for round in 0..5u64 {
            let seq = 20 + 2 * round;
            if round > 0 {
                t.more_pending(1, seq - 1, at, ACK_WAIT, FETCH_EXPIRY);
            }
            released.extend(pull(&mut t, at, &[seq]));
            released.extend(t.end_of_pull(at, false, at + MS));
            let until = t.hold().expect("holding for the newest gap");
            assert!(until <= at + WAIT, "one wait, not more");
            t.resume();
            at = until;
        }
        assert_eq!(released, [20, 22, 24, 26], "each released by the next pull");
        assert_eq!(kept(&t), [28]);
    }

    #[test]
    fn nothing_else_pending_releases_everything_kept() {
        let (mut t, bound) = takeover(2, 10);
        assert!(pull(&mut t, bound, &[12, 11]).is_empty());
        assert!(t.end_of_pull(bound, false, bound + MS).is_empty());
        assert!(t.hold().is_some());
        assert_eq!(t.release_all(), [11, 12]);
    }

    #[test]
    fn kept_messages_are_refreshed_every_so_often() {
        let (mut t, bound) = takeover(1, 10);
        let every = Duration::from_secs(2);
        assert!(!t.refresh_due(bound + every, every), "nothing kept");
        assert!(pull(&mut t, bound, &[12]).is_empty());
        assert!(!t.refresh_due(bound + MS, every));
        assert!(t.refresh_due(bound + every, every));
        assert!(!t.refresh_due(bound + every + MS, every), "just done");
    }
}
