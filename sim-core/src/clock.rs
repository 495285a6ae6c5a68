//! Clock offsets between hosts: how far each agent's host clock is from the coordinator's.
//!
//! Every timestamp a child takes (`published_us`, `received_us`, `processed_us`) is on its
//! host's clock, and the verdict compares them with each other and with the NATS server's
//! store times. On one machine that is one clock; on a lab cluster hosts differ, and a host
//! 300 ms ahead makes its worker's processing look later than it was — after a grant to
//! another worker, say. So the coordinator probes each agent over the session (NTP-style:
//! it sends its time `t1`, the agent answers with its own `t2`, the answer arrives at `t3`)
//! and corrects every timestamp from that host by the offset.
//!
//! One probe's offset is `t2 − (t1 + t3) / 2`, exact if the two legs took equally long and
//! off by at most half the round trip otherwise: that half is the uncertainty. Queueing
//! only ever lengthens a round trip, so of the recent probes the one with the shortest round
//! trip is the best; a window of recent probes follows a slow drift.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many recent probes an estimate keeps (at one a second, about a minute).
pub const WINDOW: usize = 60;

/// One host's clock against the coordinator's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockOffset {
    /// The host's clock minus the coordinator's, µs (positive: the host is ahead).
    pub offset_us: i64,
    /// At most this far off, µs (half the best probe's round trip).
    pub uncertainty_us: i64,
    /// Probes answered so far.
    pub samples: u64,
}

impl ClockOffset {
    /// `at_us`, taken on this host's clock, on the coordinator's. An offset within its own
    /// uncertainty is not measurably different from none: left alone, so that hosts sharing
    /// the coordinator's clock keep exactly their timestamps (an estimate's error, up to half
    /// a round trip, would otherwise be added to them).
    #[must_use]
    pub fn correct(&self, at_us: i64) -> i64 {
        if self.offset_us.abs() <= self.uncertainty_us {
            return at_us;
        }
        at_us.saturating_sub(self.offset_us)
    }

    /// How far a time [corrected](Self::correct) may still be from the truth, µs:
    /// the uncertainty when the offset is applied; when it is left alone (within its own
    /// uncertainty), the offset itself may be missing as well. `None` before the first
    /// probe answered: unknown.
    #[must_use]
    pub fn error_bound_us(&self) -> Option<i64> {
        if self.samples == 0 {
            return None;
        }
        if self.offset_us.abs() <= self.uncertainty_us {
            Some(self.offset_us.abs() + self.uncertainty_us)
        } else {
            Some(self.uncertainty_us)
        }
    }
}

/// The estimate of one host's offset from its recent probes.
#[derive(Debug, Clone, Default)]
pub struct ClockEstimator {
    /// (round trip, offset) of the recent probes, µs.
    recent: VecDeque<(i64, i64)>,
    samples: u64,
}

impl ClockEstimator {
    /// A probe sent at `sent_us` (coordinator's clock), answered with the host's time
    /// `host_us`, received at `received_us` (coordinator's clock). A probe whose answer
    /// arrived before it was sent is ignored (the coordinator's clock stepped back).
    pub fn probe(&mut self, sent_us: i64, host_us: i64, received_us: i64) {
        let round_trip = received_us.saturating_sub(sent_us);
        if round_trip < 0 {
            return;
        }
        let midpoint = sent_us.saturating_add(round_trip / 2);
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent
            .push_back((round_trip, host_us.saturating_sub(midpoint)));
        self.samples += 1;
    }

    /// The current estimate: the recent probe with the shortest round trip. `None` before
    /// the first answer.
    #[must_use]
    pub fn offset(&self) -> Option<ClockOffset> {
        let (round_trip, offset_us) = self.recent.iter().min_by_key(|(rtt, _)| *rtt)?;
        Some(ClockOffset {
            offset_us: *offset_us,
            uncertainty_us: round_trip / 2 + round_trip % 2,
            samples: self.samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host 300 ms ahead, probed over a link whose legs vary: the estimate is the
    /// shortest round trip's, within its half round trip of the truth.
    #[test]
    fn the_shortest_round_trip_wins_and_bounds_the_error() {
        let ahead = 300_000;
        let mut clock = ClockEstimator::default();
        assert_eq!(clock.offset(), None);
        // (send time, outbound leg, return leg), µs.
        for (sent, out, back) in [
            (0, 9_000, 1_000),
            (1_000_000, 200, 300),
            (2_000_000, 50, 4_000),
        ] {
            clock.probe(sent, sent + out + ahead, sent + out + back);
        }
        let estimate = clock.offset().expect("probed");
        assert_eq!(estimate.samples, 3);
        assert_eq!(estimate.uncertainty_us, 250, "half of 500 µs");
        assert!((estimate.offset_us - ahead).abs() <= estimate.uncertainty_us);
        assert_eq!(
            estimate.correct(10_300_000),
            10_300_000 - estimate.offset_us
        );
    }

    /// Old probes leave the window, so a drifting clock is followed; a probe answered
    /// before it was sent is ignored.
    #[test]
    fn the_window_follows_a_drift_and_a_backward_step_is_ignored() {
        let mut clock = ClockEstimator::default();
        clock.probe(0, 5_000, 10);
        for i in 1..=WINDOW as i64 {
            let sent = i * 1_000_000;
            clock.probe(sent, sent + 50 + 7_000, sent + 100);
        }
        let estimate = clock.offset().expect("probed");
        assert_eq!(estimate.offset_us, 7_000, "the 10 µs probe left the window");
        clock.probe(100, 0, 50);
        assert_eq!(clock.offset().map(|o| o.samples), Some(WINDOW as u64 + 1));
    }
}
