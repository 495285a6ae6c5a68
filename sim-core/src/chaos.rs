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
//! A fault that cannot be executed (a `nats_server_kill` without a managed cluster, a crash
//! with too few live workers) is recorded as skipped with the reason, never silently dropped.

use std::fmt;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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

/// The seeded schedule. Times are run time: since the run started, on the run's clock
/// (which keeps counting across a coordinator restart).
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    rng: ChaCha8Rng,
    events: Vec<ChaosEvent>,
    /// What is left of the current round, dealt from the back.
    deck: Vec<ChaosEvent>,
    interval: Interval,
    next_at: Duration,
}

/// Where a [`ChaosPlan`] stands, for a checkpoint: with the seed and the config it rebuilds
/// the same plan, so a resumed run continues the same schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChaosPlanState {
    /// The random stream's position (ChaCha word position, as decimal text: it is a u128).
    pub word_pos: String,
    /// What is left of the current round.
    pub deck: Vec<ChaosEvent>,
    /// When the next event is due (run time, ms).
    pub next_at_ms: u64,
}

/// Salt that separates the schedule's random stream from the placement's.
const PLAN_SALT: u64 = 0xc4a0_5eed;

impl ChaosPlan {
    /// A plan for `config`, or `None` when chaos is off or has nothing to do.
    pub fn new(config: &ChaosConfig, seed: u64, start: Duration) -> Option<Self> {
        let interval = config.interval?;
        if !config.enabled || config.events.is_empty() {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ PLAN_SALT);
        let next_at = start + interval.sample(&mut rng);
        Some(Self {
            rng,
            events: config.events.clone(),
            deck: Vec::new(),
            interval,
            next_at,
        })
    }

    /// Where the plan stands (see [`ChaosPlanState`]).
    pub fn state(&self) -> ChaosPlanState {
        ChaosPlanState {
            word_pos: self.rng.get_word_pos().to_string(),
            deck: self.deck.clone(),
            next_at_ms: u64::try_from(self.next_at.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The plan of `config` and `seed`, continued from `state`.
    ///
    /// # Errors
    /// A state that does not belong to this config (an event not configured, an unreadable
    /// stream position).
    pub fn restore(
        config: &ChaosConfig,
        seed: u64,
        state: &ChaosPlanState,
    ) -> Result<Option<Self>, String> {
        let Some(mut plan) = Self::new(config, seed, Duration::ZERO) else {
            return Ok(None);
        };
        let word_pos: u128 = state
            .word_pos
            .parse()
            .map_err(|_| format!("chaos plan: word_pos {:?} is not a number", state.word_pos))?;
        if let Some(stranger) = state.deck.iter().find(|e| !config.events.contains(e)) {
            return Err(format!("chaos plan: {stranger} is not in chaos.events"));
        }
        plan.rng.set_word_pos(word_pos);
        plan.deck.clone_from(&state.deck);
        plan.next_at = Duration::from_millis(state.next_at_ms);
        Ok(Some(plan))
    }

    /// The event due at `now` (run time), if any; schedules the next one.
    pub fn due(&mut self, now: Duration) -> Option<ChaosEvent> {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Seconds since the run started.
    pub at_s: f64,
    /// The fault.
    pub event: ChaosEvent,
    /// Its target process, if any.
    pub target: String,
    /// What happened: injected, or why it was skipped or failed.
    pub outcome: FaultOutcome,
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
    /// When that measurement began, seconds since the run started (the injection, or the
    /// heal of a network fault); set with `rebalance_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_from_s: Option<f64>,
    /// Seconds from the recovery until the partitions it moved had worked off their backlog
    /// (0: nothing to work off).
    #[serde(default)]
    pub catch_up_s: Option<f64>,
}

/// What became of one fault.
///
/// Serialized as its text (`injected`, `skipped: <why>`, `failed: <why>`), as reports
/// always showed it; [`FaultOutcome::from_str`](std::str::FromStr) is the one place that
/// reads that text back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum FaultOutcome {
    /// The command went out.
    Injected,
    /// Not attempted: why (no candidate target, the target's agent went away, ...).
    Skipped(String),
    /// Attempted, and the agent reported it could not be done: why.
    Failed(String),
}

impl FaultOutcome {
    /// Whether the fault was injected (counts in the statistics, may be measured).
    pub fn is_injected(&self) -> bool {
        matches!(self, Self::Injected)
    }
}

const SKIPPED: &str = "skipped: ";
const FAILED: &str = "failed: ";

impl fmt::Display for FaultOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Injected => f.write_str("injected"),
            Self::Skipped(why) => write!(f, "{SKIPPED}{why}"),
            Self::Failed(why) => write!(f, "{FAILED}{why}"),
        }
    }
}

/// Text that is not a fault outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fault outcome: {0:?} (injected, skipped: …, failed: …)")]
pub struct UnknownFaultOutcome(String);

impl std::str::FromStr for FaultOutcome {
    type Err = UnknownFaultOutcome;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "injected" {
            Ok(Self::Injected)
        } else if let Some(why) = text.strip_prefix(SKIPPED) {
            Ok(Self::Skipped(why.to_string()))
        } else if let Some(why) = text.strip_prefix(FAILED) {
            Ok(Self::Failed(why.to_string()))
        } else {
            Err(UnknownFaultOutcome(text.to_string()))
        }
    }
}

impl TryFrom<String> for FaultOutcome {
    type Error = UnknownFaultOutcome;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<FaultOutcome> for String {
    fn from(outcome: FaultOutcome) -> Self {
        outcome.to_string()
    }
}

/// Summary per fault type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultStats {
    /// The fault type.
    pub event: ChaosEvent,
    /// How many were injected.
    pub count: usize,
    /// Median rebalance time, seconds.
    pub rebalance_median_s: Option<f64>,
    /// 99th percentile rebalance time, seconds (nearest rank).
    pub rebalance_p99_s: Option<f64>,
    /// Longest rebalance time, seconds.
    pub rebalance_max_s: Option<f64>,
    /// Longest catch-up after a recovery, seconds.
    #[serde(default)]
    pub catch_up_max_s: Option<f64>,
}

/// Per-type counts and rebalance times of `records`, by event name.
pub fn stats(records: &[FaultRecord]) -> Vec<FaultStats> {
    let mut kinds: Vec<ChaosEvent> = records.iter().map(|r| r.event).collect();
    kinds.sort_unstable_by_key(|kind| kind.as_str());
    kinds.dedup();
    kinds
        .into_iter()
        .map(|kind| {
            let of_kind: Vec<&FaultRecord> = records
                .iter()
                .filter(|r| r.event == kind && r.outcome.is_injected())
                .collect();
            let mut times: Vec<f64> = of_kind.iter().filter_map(|r| r.rebalance_s).collect();
            times.sort_by(f64::total_cmp);
            FaultStats {
                event: kind,
                count: of_kind.len(),
                rebalance_median_s: times.get(times.len() / 2).copied(),
                rebalance_p99_s: times
                    .get((times.len() * 99).div_ceil(100).saturating_sub(1))
                    .copied(),
                rebalance_max_s: times.last().copied(),
                catch_up_max_s: of_kind
                    .iter()
                    .filter_map(|r| r.catch_up_s)
                    .max_by(f64::total_cmp),
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
        let start = Duration::ZERO;
        let schedule = |seed| {
            let mut plan = ChaosPlan::new(&config, seed, start).expect("plan");
            let mut out = Vec::new();
            let mut now = start;
            while out.len() < 20 {
                now += Duration::from_millis(100);
                if let Some(event) = plan.due(now) {
                    out.push((event, now.as_millis()));
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

    /// A plan saved mid-way and restored (a resumed coordinator) deals the same events at
    /// the same times as the plan that was never interrupted.
    #[test]
    fn a_restored_plan_continues_the_same_schedule() {
        let config = ChaosConfig {
            enabled: true,
            events: vec![
                ChaosEvent::WorkerCrash,
                ChaosEvent::ScaleUp,
                ChaosEvent::LeaderPause,
                ChaosEvent::PartitionChanges,
            ],
            interval: Some(Interval::new(
                Duration::from_secs(2),
                Duration::from_secs(9),
            )),
            ..ChaosConfig::default()
        };
        let step = Duration::from_millis(100);
        let deal = |plan: &mut ChaosPlan, from: Duration, count: usize| {
            let mut now = from;
            let mut out = Vec::new();
            while out.len() < count {
                now += step;
                if let Some(event) = plan.due(now) {
                    out.push((event, now, plan.pick(7), plan.disconnect_duration()));
                }
            }
            (out, now)
        };
        let mut original = ChaosPlan::new(&config, 77, Duration::ZERO).expect("plan");
        let (_, cut) = deal(&mut original, Duration::ZERO, 6);
        let state = original.state();
        let json = serde_json::to_string(&state).expect("serialize");
        let state: ChaosPlanState = serde_json::from_str(&json).expect("deserialize");
        let mut restored = ChaosPlan::restore(&config, 77, &state)
            .expect("restore")
            .expect("plan");
        assert_eq!(deal(&mut original, cut, 10), deal(&mut restored, cut, 10));
        let foreign = ChaosPlanState {
            deck: vec![ChaosEvent::NatsServerKill],
            ..state
        };
        let error = ChaosPlan::restore(&config, 77, &foreign).expect_err("foreign deck");
        assert!(error.contains("nats_server_kill"), "{error}");
    }

    /// Outcomes serialize as the text reports always showed, and read back the same.
    #[test]
    fn fault_outcomes_round_trip_through_their_text() {
        for (outcome, text) in [
            (FaultOutcome::Injected, "injected"),
            (
                FaultOutcome::Skipped("fewer than two live workers".into()),
                "skipped: fewer than two live workers",
            ),
            (
                FaultOutcome::Failed("tc: netem missing".into()),
                "failed: tc: netem missing",
            ),
            (FaultOutcome::Skipped(String::new()), "skipped: "),
        ] {
            assert_eq!(outcome.to_string(), text);
            let json = serde_json::to_string(&outcome).expect("serialize");
            assert_eq!(json, serde_json::to_string(text).expect("string"));
            assert_eq!(
                serde_json::from_str::<FaultOutcome>(&json).expect("parse"),
                outcome
            );
        }
        assert!(serde_json::from_str::<FaultOutcome>("\"done\"").is_err());
    }

    /// Statistics count injected faults only, per event, in the order of the event names.
    #[test]
    fn stats_count_injected_faults_per_event() {
        let record = |event, outcome, rebalance_s| FaultRecord {
            at_s: 1.0,
            event,
            target: String::new(),
            outcome,
            detail: String::new(),
            moved: None,
            ideal_moves: None,
            duplicates: None,
            rebalance_s,
            recovery_from_s: None,
            catch_up_s: rebalance_s.map(|s| s / 2.0),
        };
        let stats = stats(&[
            record(ChaosEvent::WorkerPause, FaultOutcome::Injected, Some(2.0)),
            record(ChaosEvent::ScaleUp, FaultOutcome::Injected, Some(1.0)),
            record(
                ChaosEvent::WorkerPause,
                FaultOutcome::Skipped("no".into()),
                None,
            ),
            record(ChaosEvent::WorkerPause, FaultOutcome::Injected, Some(4.0)),
        ]);
        let summary: Vec<(ChaosEvent, usize, Option<f64>)> = stats
            .iter()
            .map(|s| (s.event, s.count, s.rebalance_max_s))
            .collect();
        assert_eq!(
            summary,
            [
                (ChaosEvent::ScaleUp, 1, Some(1.0)),
                (ChaosEvent::WorkerPause, 2, Some(4.0)),
            ]
        );
    }
}
