//! The final report: human text, JSON, and JUnit XML for CI systems.

use serde::Serialize;

use crate::chaos::{FaultRecord, FaultStats};
use crate::tracker::TrackerSnapshot;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check passed.
    Pass,
    /// A check failed (loss, concurrent processing, stall, ...).
    Fail,
    /// The harness itself could not run the test (agents or producers lost).
    Infrastructure,
}

/// Everything the report shows.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Verdict.
    pub outcome: Outcome,
    /// One line per failed check.
    pub reasons: Vec<String>,
    /// How the run ended (drained, drain timeout, stall, ...).
    pub end: String,
    /// Wall time of the run.
    pub elapsed_s: f64,
    /// Configured duration.
    pub duration_s: f64,
    /// Partitions.
    pub partitions: u32,
    /// Producer processes.
    pub producers: usize,
    /// Worker processes.
    pub workers: usize,
    /// The tracker's evidence.
    pub tracker: TrackerSnapshot,
    /// Names behind the tracker's worker references.
    pub worker_names: Vec<String>,
    /// Process events.
    pub events: Vec<String>,
    /// Injected faults, in order.
    pub faults: Vec<FaultRecord>,
    /// Per fault type: count and rebalance times.
    pub fault_stats: Vec<FaultStats>,
    /// Assignment versions parti published (as watched in its KV bucket).
    pub assignment_versions: u64,
    /// Partition owner changes across those versions.
    pub partition_moves: u64,
    /// Leaders, in order of first appearance.
    pub leaders: Vec<String>,
}

impl RunSummary {
    /// Human-readable report.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let t = &self.tracker;
        let mut out = String::new();
        let verdict = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Infrastructure => "ERROR (infrastructure)",
        };
        let _ = writeln!(out, "run {}: {verdict}", self.run_id);
        let _ = writeln!(
            out,
            "  {:.0}s of {:.0}s, ended: {}; {} partitions, {} producers, {} workers",
            self.elapsed_s,
            self.duration_s,
            self.end,
            self.partitions,
            self.producers,
            self.workers
        );
        let _ = writeln!(
            out,
            "  sent {}  received {}  in flight {}  lost {}",
            t.sent, t.received, t.in_flight, t.lost
        );
        let _ = writeln!(
            out,
            "  duplicates: {} redelivered, {} concurrent; ownership overlaps {}; order violations {}; malformed {}",
            t.duplicates_redelivery,
            t.duplicates_concurrent,
            t.ownership_overlaps,
            t.order_violations,
            t.malformed
        );
        let _ = writeln!(
            out,
            "  latency publish→processed: p50 {} µs, p99 {} µs, max {} µs",
            t.latency.p50_us, t.latency.p99_us, t.latency.max_us
        );
        for stats in &self.fault_stats {
            let seconds =
                |value: Option<f64>| value.map_or("-".to_string(), |s| format!("{s:.1}s"));
            let _ = writeln!(
                out,
                "  fault {:<18} x{:<3} recovery median {:>6}  p99 {:>6}  max {:>6}",
                stats.event,
                stats.count,
                seconds(stats.rebalance_median_s),
                seconds(stats.rebalance_p99_s),
                seconds(stats.rebalance_max_s)
            );
        }
        let _ = writeln!(
            out,
            "  assignments: {} versions, {} partition moves, leaders {}",
            self.assignment_versions,
            self.partition_moves,
            if self.leaders.is_empty() {
                "-".to_string()
            } else {
                self.leaders.join(" → ")
            }
        );
        if !self.faults.is_empty() {
            let _ = writeln!(
                out,
                "  events:  at  {:<18} {:<12} {:<8} {:<10} {:<5} outcome",
                "fault", "target", "recovery", "moved/ideal", "dups"
            );
        }
        for fault in &self.faults {
            let recovery = fault
                .rebalance_s
                .map_or("-".to_string(), |s| format!("{s:.1}s"));
            let moved = match (fault.moved, fault.ideal_moves) {
                (Some(moved), Some(ideal)) => format!("{moved}/{ideal}"),
                (Some(moved), None) => format!("{moved}/-"),
                _ => "-".to_string(),
            };
            let dups = fault.duplicates.map_or("-".to_string(), |d| d.to_string());
            let _ = writeln!(
                out,
                "    {:>6.0}s {:<18} {:<12} {:<8} {:<11} {:<5} {}{}",
                fault.at_s,
                fault.event,
                fault.target,
                recovery,
                moved,
                dups,
                fault.outcome,
                if fault.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", fault.detail)
                }
            );
        }
        for reason in &self.reasons {
            let _ = writeln!(out, "  FAIL: {reason}");
        }
        let unexpected: Vec<&String> = self
            .events
            .iter()
            .filter(|e| e.starts_with("UNEXPECTED") || e.starts_with("NOTE"))
            .collect();
        for event in unexpected.iter().take(10) {
            let _ = writeln!(out, "  {event}");
        }
        out
    }

    /// JUnit XML: one test case per check.
    pub fn junit(&self) -> String {
        let checks = [
            (
                "no_loss",
                self.reasons
                    .iter()
                    .filter(|r| r.contains("lost") || r.contains("loss"))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            (
                "no_concurrent_processing",
                self.reasons
                    .iter()
                    .filter(|r| r.contains("concurrent") || r.contains("overlap"))
                    .cloned()
                    .collect(),
            ),
            (
                "no_stall",
                self.reasons
                    .iter()
                    .filter(|r| r.starts_with("stall"))
                    .cloned()
                    .collect(),
            ),
            (
                "infrastructure",
                if self.outcome == Outcome::Infrastructure {
                    self.reasons.clone()
                } else {
                    Vec::new()
                },
            ),
            (
                "verdict",
                if self.outcome == Outcome::Pass {
                    Vec::new()
                } else {
                    self.reasons.clone()
                },
            ),
        ];
        let failures = checks.iter().filter(|(_, f)| !f.is_empty()).count();
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"parti-sim\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">\n",
            checks.len(),
            self.elapsed_s
        );
        for (name, failures) in &checks {
            xml.push_str(&format!(
                "  <testcase classname=\"{}\" name=\"{name}\">",
                escape(&self.run_id)
            ));
            if !failures.is_empty() {
                xml.push_str(&format!(
                    "<failure message=\"{}\"/>",
                    escape(&failures.join("; "))
                ));
            }
            xml.push_str("</testcase>\n");
        }
        xml.push_str("</testsuite>\n");
        xml
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
