//! The fault schedule: a seeded random event every U(interval), and the record of what each
//! fault did (target, start, how long the system took to rebalance).
//!
//! Events are dealt like cards from a shuffled deck holding each of `chaos.events` once; an
//! empty deck is reshuffled. Every configured fault therefore happens within each round of
//! `events.len()` injections, so a short run covers them all, and over a long run they are
//! still uniformly mixed.
//!
//! The same seed gives the same sequence of events and delays (targets depend on which
//! processes are alive at that moment, which the schedule does not control).
//! Faults not executed yet (partition changes, NATS server kills) are logged as skipped,
//! never silently dropped.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{ChaosConfig, ChaosEvent, Interval};

/// How long a pause fault keeps its target stopped: past parti's default heartbeat lease
/// (6 s), so the target is fenced and its partitions move.
pub const PAUSE_FOR: Duration = Duration::from_secs(8);
/// Delay before a crashed process's slot is started again.
pub const RESPAWN_AFTER: Duration = Duration::from_secs(3);
/// Range of a `nats_disconnect`'s length, drawn per fault: shorter ones end before parti's
/// heartbeat lease (6 s) runs out and test riding it out, longer ones force fencing.
pub const DISCONNECT_RANGE: (Duration, Duration) =
    (Duration::from_secs(3), Duration::from_secs(14));
/// How long a `network_degrade` lasts.
pub const DEGRADE_FOR: Duration = Duration::from_secs(20);
/// Packet loss of a `network_degrade` (both directions, NATS ports only).
pub const DEGRADE_LOSS: f64 = 0.2;
/// Bandwidth cap of a `network_degrade`, towards NATS.
pub const DEGRADE_RATE_KBIT: u64 = 1024;
/// Delay of a `network_degrade` where the kernel has netem.
pub const DEGRADE_DELAY_MS: u64 = 50;

/// The seeded schedule.
#[derive(Debug)]
pub struct ChaosPlan {
    rng: ChaCha8Rng,
    events: Vec<ChaosEvent>,
    /// What is left of the current round, dealt from the back.
    deck: Vec<ChaosEvent>,
    interval: Interval,
    next_at: Instant,
}

impl ChaosPlan {
    /// A plan for `config`, or `None` when chaos is off or has nothing to do.
    pub fn new(config: &ChaosConfig, seed: u64, start: Instant) -> Option<Self> {
        let interval = config.interval?;
        if !config.enabled || config.events.is_empty() {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc4a0_5eed);
        let next_at = start + interval.sample(&mut rng);
        Some(Self {
            rng,
            events: config.events.clone(),
            deck: Vec::new(),
            interval,
            next_at,
        })
    }

    /// The event due at `now`, if any; schedules the next one.
    pub fn due(&mut self, now: Instant) -> Option<ChaosEvent> {
        if now < self.next_at {
            return None;
        }
        if self.deck.is_empty() {
            self.deck.clone_from(&self.events);
            self.deck.shuffle(&mut self.rng);
        }
        let event = self.deck.pop()?;
        self.next_at = now + self.interval.sample(&mut self.rng);
        Some(event)
    }

    /// A disconnect length in [`DISCONNECT_RANGE`], from the same seeded stream.
    pub fn disconnect_duration(&mut self) -> Duration {
        let (low, high) = DISCONNECT_RANGE;
        Duration::from_millis(
            self.rng
                .random_range(low.as_millis() as u64..=high.as_millis() as u64),
        )
    }

    /// A random index below `len` (target choice), from the same seeded stream.
    pub fn pick(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.rng.random_range(0..len)
        }
    }
}

/// One injected fault, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Seconds since the run started.
    pub at_s: f64,
    /// The fault.
    pub event: String,
    /// Its target process, if any.
    pub target: String,
    /// What happened: `injected`, or why it was skipped or failed.
    pub outcome: String,
    /// What exactly was done (pause length, rules installed, what the kernel lacked).
    pub detail: String,
    /// Partitions that changed owner (parti's assignment document) until recovery.
    pub moved: Option<u64>,
    /// The fewest moves that fault could need (the partitions its target held; for a
    /// join, a fair share), where that is defined.
    pub ideal_moves: Option<u64>,
    /// Duplicates processed from this fault's start to the next fault's (or the end).
    pub duplicates: Option<u64>,
    /// Seconds until every partition was owned by a live worker and messages flowed again
    /// (for network faults: counted from the moment the network healed).
    pub rebalance_s: Option<f64>,
}

/// Summary per fault type.
#[derive(Debug, Clone, Serialize)]
pub struct FaultStats {
    /// The fault type.
    pub event: String,
    /// How many were injected.
    pub count: usize,
    /// Median rebalance time, seconds.
    pub rebalance_median_s: Option<f64>,
    /// 99th percentile rebalance time, seconds (nearest rank).
    pub rebalance_p99_s: Option<f64>,
    /// Longest rebalance time, seconds.
    pub rebalance_max_s: Option<f64>,
}

/// Per-type counts and rebalance times of `records`.
pub fn stats(records: &[FaultRecord]) -> Vec<FaultStats> {
    let mut kinds: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
        .into_iter()
        .map(|kind| {
            let of_kind: Vec<&FaultRecord> = records
                .iter()
                .filter(|r| r.event == kind && r.outcome == "injected")
                .collect();
            let mut times: Vec<f64> = of_kind.iter().filter_map(|r| r.rebalance_s).collect();
            times.sort_by(f64::total_cmp);
            FaultStats {
                event: kind.to_string(),
                count: of_kind.len(),
                rebalance_median_s: times.get(times.len() / 2).copied(),
                rebalance_p99_s: times
                    .get((times.len() * 99).div_ceil(100).saturating_sub(1))
                    .copied(),
                rebalance_max_s: times.last().copied(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let config = ChaosConfig {
            enabled: true,
            events: vec![
                ChaosEvent::WorkerCrash,
                ChaosEvent::WorkerPause,
                ChaosEvent::ProducerCrash,
            ],
            interval: Some(Interval::new(
                Duration::from_secs(1),
                Duration::from_secs(3),
            )),
            ..ChaosConfig::default()
        };
        let start = Instant::now();
        let schedule = |seed| {
            let mut plan = ChaosPlan::new(&config, seed, start).expect("plan");
            let mut out = Vec::new();
            let mut now = start;
            while out.len() < 20 {
                now += Duration::from_millis(100);
                if let Some(event) = plan.due(now) {
                    out.push((event, now.duration_since(start).as_millis()));
                }
            }
            out
        };
        assert_eq!(schedule(5), schedule(5));
        // Every round of three holds each event once.
        let mut all = config.events.clone();
        all.sort();
        for round in schedule(5).chunks_exact(3) {
            let mut events: Vec<ChaosEvent> = round.iter().map(|(e, _)| *e).collect();
            events.sort();
            assert_eq!(events, all, "round {round:?}");
        }
        assert_ne!(schedule(5), schedule(6));
        assert!(
            ChaosPlan::new(
                &ChaosConfig {
                    enabled: false,
                    ..config.clone()
                },
                5,
                start
            )
            .is_none()
        );
    }
}
