//! Turning the tracker's evidence into verdict failures (DESIGN §5).

use std::fmt;

use serde::Serialize;

use super::Tracker;
use super::snapshot::{Anomaly, AnomalyKind, TrackerSnapshot};

/// How many examples a one-line reason names; the JSON report carries the full sample.
const EXAMPLES: usize = 3;

/// One reason the run fails, with a sample of the evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Failure {
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

/// One line per failure. Each kind's wording is distinct (only a loss says "loss", only
/// concurrent processing says "concurrent"), so reports can file reasons by keyword.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Loss { count, sample } => write!(
                f,
                "loss: {count} message(s) known to exist were never processed{}",
                Examples(sample)
            ),
            Failure::ConcurrentProcessing {
                duplicates,
                overlaps,
                sample,
            } => write!(
                f,
                "concurrent processing: two workers processed one partition at once \
                 ({overlaps} overlapping report(s), {duplicates} concurrent duplicate(s)){}",
                Examples(sample)
            ),
            Failure::Duplicates {
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
            Failure::InvalidReports { count, sample } => write!(
                f,
                "invalid reports: {count} report(s) refused, the evidence is incomplete{}",
                Examples(sample)
            ),
        }
    }
}

/// Something that can say why a run fails.
///
/// A trait rather than a method so the coordinator's other evidence (ownership timeline,
/// rebalance times) can contribute failures the same way.
pub trait Verdict {
    /// Every reason to fail; empty means this evidence passes.
    fn failures(&self, strict_duplicates: bool) -> Vec<Failure>;

    /// No failures.
    fn passed(&self, strict_duplicates: bool) -> bool {
        self.failures(strict_duplicates).is_empty()
    }
}

impl Verdict for TrackerSnapshot {
    /// Judges the snapshot as it stands; call it on the snapshot taken after
    /// [`super::Tracker::finish`], when every missing message has been written off.
    fn failures(&self, strict_duplicates: bool) -> Vec<Failure> {
        let pick = |kinds: &[AnomalyKind]| -> Vec<Anomaly> {
            self.anomalies
                .iter()
                .filter(|a| kinds.contains(&a.kind))
                .copied()
                .collect()
        };
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(Failure::Loss {
                count: self.lost,
                sample: pick(&[AnomalyKind::Lost]),
            });
        }
        if self.duplicates_concurrent > 0 || self.ownership_overlaps > 0 {
            out.push(Failure::ConcurrentProcessing {
                duplicates: self.duplicates_concurrent,
                overlaps: self.ownership_overlaps,
                sample: pick(&[
                    AnomalyKind::DuplicateConcurrent,
                    AnomalyKind::OwnershipOverlap,
                ]),
            });
        }
        let duplicates = self.duplicates_redelivery + self.duplicates_concurrent;
        if strict_duplicates && duplicates > 0 {
            out.push(Failure::Duplicates {
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
            out.push(Failure::InvalidReports {
                count: self.rejected,
                sample: pick(&[AnomalyKind::Rejected]),
            });
        }
        out
    }
}

impl Verdict for Tracker {
    /// Judges a snapshot taken at the tracker's latest `now`; the verdict does not depend on
    /// the snapshot time, only the counters and samples do.
    fn failures(&self, strict_duplicates: bool) -> Vec<Failure> {
        self.snapshot(self.now_us()).failures(strict_duplicates)
    }
}
