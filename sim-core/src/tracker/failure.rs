//! The tracker's share of the verdict: what its counters and samples say is wrong
//! (DESIGN §5). The verdict itself, which weighs these with the rest of the run's evidence,
//! is [`crate::verdict::judge`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Tracker;
use super::snapshot::{Anomaly, AnomalyKind, TrackerSnapshot};

/// How many examples a one-line reason names; the JSON report carries the full sample.
const EXAMPLES: usize = 3;

/// The rules the tracker's evidence is judged by that the run's config chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rules {
    /// `coordinator.strict_duplicates`: redeliveries fail the run too.
    pub strict_duplicates: bool,
    /// `workers.ordered`: the system under test promises order within a partition, so an
    /// order violation fails the run.
    pub ordered: bool,
}

/// One reason the tracker's evidence fails the run, with a sample of that evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum TrackerFailure {
    /// Messages known to exist were never processed.
    Loss {
        /// Messages counted as lost.
        count: u64,
        /// The lowest lost seqs.
        sample: Vec<Anomaly>,
    },
    /// Two workers processed one partition at the same time: an ownership violation.
    ConcurrentProcessing {
        /// Duplicates processed while another worker was active on the partition.
        duplicates: u64,
        /// Processed reports overlapping another worker's activity.
        overlaps: u64,
        /// Overlaps and concurrent duplicates as first seen.
        sample: Vec<Anomaly>,
    },
    /// Messages processed more than once (strict mode: the plan's zero duplication).
    Duplicates {
        /// All duplicates.
        count: u64,
        /// Of which redeliveries.
        redelivered: u64,
        /// Of which concurrent.
        concurrent: u64,
        /// Duplicates as first seen.
        sample: Vec<Anomaly>,
    },
    /// Messages processed, but later than the validation window allows.
    Late {
        /// Messages processed after being declared lost.
        count: u64,
        /// The worst publish→processed delay among them (µs).
        worst_delay_us: i64,
        /// Late messages as first seen.
        sample: Vec<Anomaly>,
    },
    /// Messages first processed after a successor in their partition (ordered workers).
    OrderViolation {
        /// Messages processed out of order.
        count: u64,
        /// Violations as first seen.
        sample: Vec<Anomaly>,
    },
    /// Reports were refused, so the evidence is incomplete and cannot prove a pass.
    InvalidReports {
        /// Reports refused.
        count: u64,
        /// Refused reports as first seen.
        sample: Vec<Anomaly>,
    },
}

/// Writes ", e.g. a, b, c" for the first few anomalies.
struct Examples<'a>(&'a [Anomaly]);

impl fmt::Display for Examples<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().take(EXAMPLES).enumerate() {
            f.write_str(if i == 0 { ", e.g. " } else { ", " })?;
            write!(f, "{a}")?;
        }
        if self.0.len() > EXAMPLES {
            f.write_str(", …")?;
        }
        Ok(())
    }
}

/// One line per failure, as the report's reasons show it.
impl fmt::Display for TrackerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerFailure::Loss { count, sample } => write!(
                f,
                "loss: {count} message(s) known to exist were never processed{}",
                Examples(sample)
            ),
            TrackerFailure::ConcurrentProcessing {
                duplicates,
                overlaps,
                sample,
            } => write!(
                f,
                "concurrent processing: two workers processed one partition at once \
                 ({overlaps} overlapping report(s), {duplicates} concurrent duplicate(s)){}",
                Examples(sample)
            ),
            TrackerFailure::Duplicates {
                count,
                redelivered,
                concurrent,
                sample,
            } => write!(
                f,
                "duplicates (strict): {count} message(s) processed more than once \
                 ({redelivered} redelivered, {concurrent} by two workers at once){}",
                Examples(sample)
            ),
            TrackerFailure::Late {
                count,
                worst_delay_us,
                sample,
            } => write!(
                f,
                "late: {count} message(s) processed after the validation window (worst \
                 {:.1}s after publishing){}",
                *worst_delay_us as f64 / 1e6,
                Examples(sample)
            ),
            TrackerFailure::OrderViolation { count, sample } => write!(
                f,
                "order: {count} message(s) processed after a successor in their partition{}",
                Examples(sample)
            ),
            TrackerFailure::InvalidReports { count, sample } => write!(
                f,
                "invalid reports: {count} report(s) refused, the evidence is incomplete{}",
                Examples(sample)
            ),
        }
    }
}

impl TrackerSnapshot {
    /// Every reason this evidence fails the run; empty means it passes. Judge the snapshot
    /// taken after [`Tracker::finish`], when every missing message has been written off.
    pub fn failures(&self, rules: Rules) -> Vec<TrackerFailure> {
        let pick = |kinds: &[AnomalyKind]| -> Vec<Anomaly> {
            self.anomalies
                .iter()
                .filter(|a| kinds.contains(&a.kind))
                .copied()
                .collect()
        };
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(TrackerFailure::Loss {
                count: self.lost,
                sample: pick(&[AnomalyKind::Lost]),
            });
        }
        if self.duplicates_concurrent > 0 || self.ownership_overlaps > 0 {
            out.push(TrackerFailure::ConcurrentProcessing {
                duplicates: self.duplicates_concurrent,
                overlaps: self.ownership_overlaps,
                sample: pick(&[
                    AnomalyKind::DuplicateConcurrent,
                    AnomalyKind::OwnershipOverlap,
                ]),
            });
        }
        if self.late > 0 {
            out.push(TrackerFailure::Late {
                count: self.late,
                worst_delay_us: self.late_worst_us,
                sample: pick(&[AnomalyKind::Late]),
            });
        }
        if rules.ordered && self.order_violations > 0 {
            out.push(TrackerFailure::OrderViolation {
                count: self.order_violations,
                sample: pick(&[AnomalyKind::OrderViolation]),
            });
        }
        let duplicates = self.duplicates_redelivery + self.duplicates_concurrent;
        if rules.strict_duplicates && duplicates > 0 {
            out.push(TrackerFailure::Duplicates {
                count: duplicates,
                redelivered: self.duplicates_redelivery,
                concurrent: self.duplicates_concurrent,
                sample: pick(&[
                    AnomalyKind::DuplicateRedelivery,
                    AnomalyKind::DuplicateConcurrent,
                ]),
            });
        }
        if self.rejected > 0 {
            out.push(TrackerFailure::InvalidReports {
                count: self.rejected,
                sample: pick(&[AnomalyKind::Rejected]),
            });
        }
        out
    }
}

impl Tracker {
    /// [`TrackerSnapshot::failures`] of a snapshot at the tracker's latest `now`; the
    /// failures do not depend on the snapshot time, only the counters and samples do.
    pub fn failures(&self, rules: Rules) -> Vec<TrackerFailure> {
        self.snapshot(self.now_us()).failures(rules)
    }
}
