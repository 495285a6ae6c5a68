//! The final report: human text, JSON, and JUnit XML for CI systems.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::authority::Unowned;
use crate::chaos::{FaultRecord, FaultStats};
use crate::clock::ClockOffset;
use crate::events::{EndReason, RunEvent};
use crate::foreign_reports::ForeignReports;
use crate::resources::ProcessResources;
use crate::stream_check::StreamCheck;
use crate::tracker::TrackerSnapshot;
use crate::verdict::{FailureKind, Judgement};

pub use crate::verdict::Outcome;

/// Everything the report shows.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// The verdict: `outcome`, `reasons` (one line per failure) and `failures` (the same
    /// with their kind) in the JSON.
    #[serde(flatten)]
    pub judgement: Judgement,
    /// How the run ended.
    pub end: EndReason,
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
    /// Process events (lines in the JSON).
    #[serde(serialize_with = "crate::events::serialize_lines")]
    pub events: Vec<RunEvent>,
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
    /// Processing the assignment document did not allow, per worker and partition.
    pub unowned: Vec<Unowned>,
    /// Processings the assignment document could not judge (versions not seen).
    pub unjudged_ownership: u64,
    /// Versions of the assignment document the coordinator never saw: a gap in the
    /// evidence, shown rather than hidden.
    pub assignment_versions_missed: u64,
    /// The stream read as the ground truth once the producers stopped.
    pub stream_check: StreamCheck,
    /// Reports of other runs' children that reached this run: refused, counted.
    pub foreign_reports: ForeignReports,
    /// Each long-lived process's baseline and last resource sample (the leak gate).
    pub resources: Vec<ProcessResources>,
    /// Each agent's host clock against the coordinator's: the offset every timestamp from
    /// it was corrected by, and its uncertainty.
    pub clocks: BTreeMap<String, ClockOffset>,
}

/// The JUnit test case of each kind of failure. Names that CI histories already track
/// (`no_loss`, `no_concurrent_processing`, `no_stall`, `infrastructure`) stay.
pub(crate) fn check_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Loss => "no_loss",
        FailureKind::ConcurrentProcessing => "no_concurrent_processing",
        FailureKind::Duplicates => "no_duplicates",
        FailureKind::Late => "within_validation_window",
        FailureKind::Order => "in_order",
        FailureKind::InvalidReports => "valid_reports",
        FailureKind::Stall => "no_stall",
        FailureKind::RebalanceTimeout => "recovery_within_timeout",
        FailureKind::Identity => "stable_identity",
        FailureKind::Assignment => "assignment_history",
        FailureKind::Ownership => "no_ownership_violation",
        FailureKind::UnexpectedExit => "no_unexpected_exit",
        FailureKind::Startup => "startup_within_timeout",
        FailureKind::ResourceGrowth => "no_resource_growth",
        FailureKind::CatchUp => "caught_up_within_timeout",
        FailureKind::SilentAfterChaos => "every_worker_seen_after_chaos",
        FailureKind::Infrastructure => "infrastructure",
    }
}

impl RunSummary {
    /// A summary of a verdict and the books alone, everything else empty: the report of a
    /// run whose state could not be judged in full.
    pub fn bare(
        run_id: String,
        judgement: Judgement,
        end: EndReason,
        tracker: TrackerSnapshot,
    ) -> Self {
        Self {
            run_id,
            judgement,
            end,
            elapsed_s: 0.0,
            duration_s: 0.0,
            partitions: 0,
            producers: 0,
            workers: 0,
            tracker,
            worker_names: Vec::new(),
            events: Vec::new(),
            faults: Vec::new(),
            fault_stats: Vec::new(),
            assignment_versions: 0,
            partition_moves: 0,
            leaders: Vec::new(),
            unowned: Vec::new(),
            unjudged_ownership: 0,
            assignment_versions_missed: 0,
            stream_check: StreamCheck::default(),
            foreign_reports: ForeignReports::default(),
            resources: Vec::new(),
            clocks: BTreeMap::new(),
        }
    }

    /// Human-readable report.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let t = &self.tracker;
        let mut out = String::new();
        let verdict = match self.judgement.outcome {
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
                "  fault {:<18} x{:<3} recovery median {:>6}  p99 {:>6}  max {:>6}  catch-up max {:>6}",
                stats.event,
                stats.count,
                seconds(stats.rebalance_median_s),
                seconds(stats.rebalance_p99_s),
                seconds(stats.rebalance_max_s),
                seconds(stats.catch_up_max_s)
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
        let stream = &self.stream_check;
        if !stream.read {
            let _ = writeln!(
                out,
                "  stream not read at the end (the run ended before its producers stopped): \
                 messages beyond the last reports are not verified"
            );
        } else if stream.unannounced > 0 || stream.unread > 0 {
            let _ = writeln!(
                out,
                "  stream at the end: {} message(s) beyond the reports ({} lost); {} partition(s) not verified",
                stream.unannounced, stream.unannounced_lost, stream.unread
            );
        }
        if let Some(line) = crate::resources::summary_line(&self.resources) {
            let _ = writeln!(out, "  {line}");
        }
        if !self.clocks.is_empty() {
            let clocks: Vec<String> = self
                .clocks
                .iter()
                .map(|(agent, clock)| {
                    format!(
                        "{agent} {:+.1} ms ±{:.1} ms",
                        clock.offset_us as f64 / 1000.0,
                        clock.uncertainty_us as f64 / 1000.0
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  host clocks against the coordinator's (corrected): {}",
                clocks.join(", ")
            );
        }
        if self.foreign_reports.count > 0 {
            let _ = writeln!(
                out,
                "  reports of other runs' processes refused: {} (from {})",
                self.foreign_reports.count,
                self.foreign_reports.runs.join(", ")
            );
        }
        if self.assignment_versions_missed > 0 {
            let _ = writeln!(
                out,
                "  assignment versions never seen: {} (the time they cover is not judged)",
                self.assignment_versions_missed
            );
        }
        if !self.unowned.is_empty() || self.unjudged_ownership > 0 {
            let _ = writeln!(
                out,
                "  processing the assignment document did not allow: {} worker/partition pair(s); \
                 not judged (versions not seen): {}",
                self.unowned.len(),
                self.unjudged_ownership
            );
            for unowned in self.unowned.iter().take(5) {
                let _ = writeln!(out, "    {unowned}");
            }
        }
        if !self.faults.is_empty() {
            let _ = writeln!(
                out,
                "  events:  at  {:<18} {:<12} {:<8} {:<8} {:<10} {:<5} outcome",
                "fault", "target", "recovery", "catch-up", "moved/ideal", "dups"
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
            let catch_up = fault
                .catch_up_s
                .map_or("-".to_string(), |s| format!("{s:.1}s"));
            let _ = writeln!(
                out,
                "    {:>6.0}s {:<18} {:<12} {:<8} {:<8} {:<11} {:<5} {}{}",
                fault.at_s,
                fault.event,
                fault.target,
                recovery,
                catch_up,
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
        for failure in &self.judgement.failures {
            let _ = writeln!(out, "  FAIL: {failure}");
        }
        for event in self.events.iter().filter(|e| e.is_unexpected()).take(10) {
            let _ = writeln!(out, "  {event}");
        }
        out
    }

    /// JUnit XML: one test case per kind of failure, then `verdict` (fails unless PASS).
    pub fn junit(&self) -> String {
        let judgement = &self.judgement;
        let lines = |failures: Vec<&crate::verdict::Failure>| -> Vec<String> {
            failures.iter().map(ToString::to_string).collect()
        };
        let mut checks: Vec<(&str, Vec<String>)> = FailureKind::ALL
            .into_iter()
            .map(|kind| (check_name(kind), lines(judgement.of_kind(kind).collect())))
            .collect();
        checks.push(("verdict", judgement.reasons()));
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

/// The outcome a `report.json` recorded, if it is one.
pub fn recorded_outcome(report_json: &str) -> Option<Outcome> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        outcome: Outcome,
    }
    serde_json::from_str::<Recorded>(report_json)
        .ok()
        .map(|recorded| recorded.outcome)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
