//! What a run looked like over time, for its picture (`report.html`, see [`crate::html`]):
//! the counters sampled at a fixed step with the latency of each step, and every change of a
//! partition's owner as parti's assignment document announced it.
//!
//! Part of the run state, so a checkpoint carries it and a resumed run's picture is whole.
//! Bounded: past [`MAX_SAMPLES`] samples every other one is dropped and the step doubles, so a
//! 12-hour run keeps about as many points as a 2-minute one, each covering longer.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::assignment::grants;

/// Samples kept before the step doubles.
pub const MAX_SAMPLES: usize = 2000;
/// The first step between samples, seconds.
const FIRST_STEP_S: f64 = 1.0;
/// Owner changes kept; later ones are counted, not kept (a checkpoint carries the list).
pub const MAX_OWNER_CHANGES: usize = 100_000;

/// One sample: the tracker's counters at `at_s`, and latency over the step that ended there.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Run time, seconds.
    pub at_s: f64,
    /// Distinct messages confirmed sent so far.
    pub sent: u64,
    /// Distinct messages processed so far.
    pub received: u64,
    /// Confirmed sent, not yet processed.
    pub in_flight: u64,
    /// Counted lost now.
    pub lost: u64,
    /// Median publish→processed latency of first processings in the step, ms (0: none).
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
}

/// A partition's owner from `at_s` on ("" : none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerChange {
    /// Run time, seconds.
    pub at_s: f64,
    /// The partition.
    pub partition: u32,
    /// Its new owner, a worker id ("" when no worker owns it).
    pub worker: String,
}

/// The run over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// Seconds between samples.
    pub step_s: f64,
    /// The samples, oldest first.
    pub samples: Vec<Sample>,
    /// Every owner change, in order, up to [`MAX_OWNER_CHANGES`].
    pub owners: Vec<OwnerChange>,
    /// Owner changes past the cap, not kept.
    #[serde(default)]
    pub owners_dropped: u64,
    /// Each partition's owner now.
    current: BTreeMap<u32, String>,
    /// Latency of the step in progress (µs); not kept across a restart of the coordinator.
    #[serde(skip)]
    window: Option<Histogram<u64>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            step_s: FIRST_STEP_S,
            samples: Vec::new(),
            owners: Vec::new(),
            owners_dropped: 0,
            current: BTreeMap::new(),
            window: None,
        }
    }
}

/// The tracker's counters a sample takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Distinct sent.
    pub sent: u64,
    /// Distinct processed.
    pub received: u64,
    /// In flight.
    pub in_flight: u64,
    /// Lost now.
    pub lost: u64,
}

impl Timeline {
    /// A first processing's publish→processed latency (µs), for the step in progress.
    pub fn latency(&mut self, us: u64) {
        let window = self.window.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
        });
        window.saturating_record(us.max(1));
    }

    /// Whether a sample is due at run time `at_s`.
    pub fn due(&self, at_s: f64) -> bool {
        self.samples
            .last()
            .is_none_or(|last| at_s - last.at_s >= self.step_s)
    }

    /// Take a sample at `at_s` (the step's latency window starts afresh).
    pub fn sample(&mut self, at_s: f64, counters: Counters) {
        let (p50_ms, p99_ms) = match self.window.take() {
            Some(h) if !h.is_empty() => (
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
            ),
            _ => (0.0, 0.0),
        };
        self.samples.push(Sample {
            at_s,
            sent: counters.sent,
            received: counters.received,
            in_flight: counters.in_flight,
            lost: counters.lost,
            p50_ms,
            p99_ms,
        });
        if self.samples.len() > MAX_SAMPLES {
            // Keep every other sample (and the newest): half the points, twice the step.
            let last = self.samples.len() - 1;
            let kept: Vec<Sample> = self
                .samples
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 0 || *i == last)
                .map(|(_, s)| *s)
                .collect();
            self.samples = kept;
            self.step_s *= 2.0;
        }
    }

    /// Take in one version of parti's assignment document, seen at run time `at_s`: each
    /// partition whose owner changed (or that lost its owner) becomes an [`OwnerChange`].
    pub fn assignment(&mut self, at_s: f64, doc: &Value) {
        let now: BTreeMap<u32, String> = grants(doc)
            .map(|(worker, id)| (id, worker.clone()))
            .collect();
        let mut changes: Vec<OwnerChange> = now
            .iter()
            .filter(|(partition, worker)| self.current.get(partition) != Some(worker))
            .map(|(partition, worker)| OwnerChange {
                at_s,
                partition: *partition,
                worker: worker.clone(),
            })
            .collect();
        changes.extend(
            self.current
                .keys()
                .filter(|partition| !now.contains_key(partition))
                .map(|partition| OwnerChange {
                    at_s,
                    partition: *partition,
                    worker: String::new(),
                }),
        );
        for change in changes {
            if self.owners.len() < MAX_OWNER_CHANGES {
                self.owners.push(change);
            } else {
                self.owners_dropped += 1;
            }
        }
        self.current = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn samples_are_bounded_by_doubling_the_step() {
        let mut t = Timeline::default();
        for i in 0..=(MAX_SAMPLES as u64 * 3) {
            let at = i as f64;
            if t.due(at) {
                t.sample(
                    at,
                    Counters {
                        received: i,
                        ..Counters::default()
                    },
                );
            }
        }
        assert!(t.samples.len() <= MAX_SAMPLES + 1, "{}", t.samples.len());
        assert!(t.step_s >= 2.0, "{}", t.step_s);
        assert_eq!(
            t.samples.last().map(|s| s.received),
            Some(MAX_SAMPLES as u64 * 3)
        );
        assert!(t.samples.windows(2).all(|w| w[0].at_s < w[1].at_s));
    }

    #[test]
    fn a_step_has_its_own_latency() {
        let mut t = Timeline::default();
        for us in [1_000, 2_000, 3_000] {
            t.latency(us);
        }
        t.sample(1.0, Counters::default());
        t.sample(2.0, Counters::default());
        assert!(
            (t.samples[0].p50_ms - 2.0).abs() < 0.05,
            "{:?}",
            t.samples[0]
        );
        assert_eq!(
            t.samples[1].p99_ms, 0.0,
            "nothing processed in the second step"
        );
    }

    #[test]
    fn owner_changes_are_recorded_once() {
        let mut t = Timeline::default();
        let doc = |owners| json!({"version": 1, "owners": owners});
        t.assignment(1.0, &doc(json!({"w1": ["0", "1"], "w2": ["2"]})));
        t.assignment(2.0, &doc(json!({"w1": ["0", "1"], "w2": ["2"]})));
        t.assignment(3.0, &doc(json!({"w1": ["0"], "w2": ["1", "2"]})));
        t.assignment(4.0, &doc(json!({"w2": ["1", "2"]})));
        let changes: Vec<(f64, u32, &str)> = t
            .owners
            .iter()
            .map(|c| (c.at_s, c.partition, c.worker.as_str()))
            .collect();
        assert_eq!(
            changes,
            [
                (1.0, 0, "w1"),
                (1.0, 1, "w1"),
                (1.0, 2, "w2"),
                (3.0, 1, "w2"),
                (4.0, 0, "")
            ]
        );
    }
}
