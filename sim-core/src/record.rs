//! A run's record: the part of a run state (a checkpoint, or `final.json`) that judging
//! needs, read straight from the state's JSON, and [`RunRecord::summarize`], the one function
//! that turns it into a verdict and a report.
//!
//! The coordinator writes run states (its engine's checkpoint holds more: placement specs,
//! timers, the chaos plan's position…); a record reads only the fields named here and ignores
//! the rest. The coordinator judges a finishing run by reading the record back from the very
//! bytes it writes as `final.json`, and `simctl report --run-dir` reads the same file: both
//! reach the verdict from the same input through the same code, with nothing but this crate.
//!
//! The state's format is versioned ([`STATE_FORMAT`]): a file written by a build with another
//! format is refused by name, never half-read.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::assignment::AssignmentLog;
use crate::authority::AuthorityCheck;
use crate::chaos::{FaultRecord, stats};
use crate::clock::ClockOffset;
use crate::config::Config;
use crate::events::{EndReason, RunEvent};
use crate::foreign_reports::ForeignReports;
use crate::ownership::OwnershipCheck;
use crate::report::RunSummary;
use crate::resources::ResourceWatch;
use crate::stream_check::StreamCheck;
use crate::tracker::Rules;
use crate::tracker::{CheckpointError, Tracker, TrackerConfig, TrackerState};
use crate::verdict::{Evidence, Failure, judge};

/// The format of run states this build writes and reads. Format 1 had no `format` field.
pub const STATE_FORMAT: u32 = 2;

/// Why a run state cannot be read or judged.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Written by a build with another state format: its fields would be misread.
    #[error("checkpoint format {found}, this build reads format {STATE_FORMAT}")]
    Format {
        /// The file's format.
        found: u32,
    },
    /// Not a run state (the JSON path of the problem is named).
    #[error("at {path}: {message}")]
    Invalid {
        /// Where in the JSON.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// The tracker's part does not import (a damaged or foreign file).
    #[error("tracker state: {0}")]
    Tracker(#[from] CheckpointError),
}

/// Refuse a state body of another format before reading the rest: "checkpoint format 1"
/// says more than the name of whichever field format 1 lacks.
///
/// # Errors
/// [`StateError::Format`] when the body declares (or, lacking the field, is) another format.
pub fn check_format(body: &[u8]) -> Result<(), StateError> {
    /// Only the format of a state body.
    #[derive(Deserialize)]
    struct FormatProbe {
        /// Absent in format 1, the last format without the field.
        #[serde(default = "format_one")]
        format: u32,
    }
    fn format_one() -> u32 {
        1
    }
    match serde_json::from_slice::<FormatProbe>(body) {
        Ok(FormatProbe { format }) if format != STATE_FORMAT => {
            Err(StateError::Format { found: format })
        }
        _ => Ok(()),
    }
}

/// Read a whole state body as `T`, naming the JSON path of the first problem.
///
/// # Errors
/// Another format ([`check_format`]), or a body that is not a `T`.
pub fn read_state<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, StateError> {
    check_format(body)?;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| StateError::Invalid {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// The tracker settings a run's config implies.
pub fn tracker_config(config: &Config) -> TrackerConfig {
    TrackerConfig {
        validation_window_us: i64::try_from(config.coordinator.validation_window.as_micros())
            .unwrap_or(i64::MAX),
        ..TrackerConfig::default()
    }
}

/// What judging a run needs, as its state holds it.
#[derive(Debug, Clone, Deserialize)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// The effective config.
    pub config: Config,
    /// Run time at the state, in milliseconds.
    pub elapsed_ms: u64,
    /// Wall clock at the state (µs since the epoch): the tracker is judged as of then.
    pub written_unix_us: i64,
    /// How the run ended; `None` in a checkpoint of a run still going.
    pub end: Option<EndReason>,
    /// Which processes run where (only counted here).
    pub placement: PlacementCounts,
    /// The tracker's books.
    pub tracker: TrackerState,
    /// Worker names, by tracker reference.
    pub worker_names: Vec<String>,
    /// Failures the run recorded as they happened.
    pub failures: Vec<Failure>,
    /// What happened, in order.
    pub events: Vec<RunEvent>,
    /// Processing without ownership.
    pub ownership: OwnershipCheck,
    /// Processing judged against the assignment document (absent in states written before
    /// this check existed).
    #[serde(default)]
    pub authority: AuthorityCheck,
    /// The stream read as the ground truth (absent in older states: not read).
    #[serde(default)]
    pub stream_check: StreamCheck,
    /// Reports of other runs' children, refused (absent in older states: none).
    #[serde(default)]
    pub foreign_reports: ForeignReports,
    /// Each process's resources (absent in older states: none sampled).
    #[serde(default)]
    pub resources: ResourceWatch,
    /// Each agent's host clock offset (absent in older states: not measured).
    #[serde(default)]
    pub clocks: BTreeMap<String, ClockOffset>,
    /// Every fault, injected or not.
    pub faults: FaultRecords,
    /// What parti's assignment history showed.
    pub assignment_log: AssignmentLog,
    /// The run over time, for its picture (absent in older states: none).
    #[serde(default)]
    pub timeline: crate::timeline::Timeline,
}

/// A state's placement, reduced to what the report shows: how many of each.
#[derive(Debug, Clone, Deserialize)]
pub struct PlacementCounts {
    /// One entry per producer process.
    producers: Vec<IgnoredAny>,
    /// One entry per worker process.
    workers: Vec<IgnoredAny>,
}

/// A state's fault bookkeeping, reduced to the records.
#[derive(Debug, Clone, Deserialize)]
pub struct FaultRecords {
    /// Every fault, in order.
    pub records: Vec<FaultRecord>,
}

impl RunRecord {
    /// Read the record of a state body (a checkpoint or `final.json`).
    ///
    /// # Errors
    /// The body is of another format, or not a run state.
    pub fn from_json(body: &[u8]) -> Result<Self, StateError> {
        read_state(body)
    }

    /// The verdict and report: the same function judges a finishing run and, offline, its
    /// `final.json` (`simctl report --run-dir`).
    ///
    /// # Errors
    /// The tracker state does not import (a damaged or foreign file).
    pub fn summarize(&self) -> Result<RunSummary, StateError> {
        let tracker = Tracker::import(tracker_config(&self.config), self.tracker.clone())?;
        let mut snapshot = tracker.snapshot(self.written_unix_us);
        if self.config.telemetry.traces.enabled {
            // Each sample names the trace its anomaly span went into.
            for anomaly in &mut snapshot.anomalies {
                *anomaly = anomaly.traced(&self.run_id);
            }
        }
        let log = &self.assignment_log;
        let unowned = self.authority.violations();
        // The leak gate is judged here, from the samples, like the books.
        let mut recorded = self.failures.clone();
        recorded.extend(
            self.resources
                .failures(self.config.coordinator.max_resource_growth),
        );
        let judgement = judge(&Evidence {
            tracker: &snapshot,
            rules: Rules {
                strict_duplicates: self.config.coordinator.strict_duplicates,
                ordered: self.config.workers.ordered,
            },
            recorded: &recorded,
            assignment_violations: &log.violations,
            ownership_violations: &self.ownership.violations(),
            unowned: &unowned,
        });
        Ok(RunSummary {
            run_id: self.run_id.clone(),
            judgement,
            end: self.end.unwrap_or(EndReason::Unfinished),
            elapsed_s: Duration::from_millis(self.elapsed_ms).as_secs_f64(),
            duration_s: self.config.simulation.duration.as_secs_f64(),
            partitions: self.config.partitions.count,
            producers: self.placement.producers.len(),
            workers: self.placement.workers.len(),
            tracker: snapshot,
            worker_names: self.worker_names.clone(),
            events: self.events.clone(),
            fault_stats: stats(&self.faults.records),
            faults: self.faults.records.clone(),
            assignment_versions: log.versions,
            partition_moves: log.moves,
            leaders: log.leaders.clone(),
            unowned,
            unjudged_ownership: self.authority.unjudged(),
            assignment_versions_missed: self.authority.versions_missed(),
            stream_check: self.stream_check.clone(),
            foreign_reports: self.foreign_reports.clone(),
            resources: self.resources.processes(),
            clocks: self.clocks.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{RunRecord, STATE_FORMAT, StateError};
    use crate::assignment::AssignmentLog;
    use crate::config::Config;
    use crate::ownership::OwnershipCheck;
    use crate::report::Outcome;
    use crate::tracker::{Processed, Sent, Tracker, WorkerRef};

    /// A finished run's state as the coordinator writes it (plus a field of its own the
    /// record ignores), where `process` tells which of seqs 1..=5 a worker processed.
    fn state(process: impl Fn(u64) -> bool) -> Value {
        let config = Config::from_yaml_str(
            "simulation: {duration: 10s}\n\
             partitions: {count: 1, message_rate_per_partition: 1}\n\
             workers: {count: 1}\n\
             coordinator: {validation_window: 1s}\n",
        )
        .expect("config");
        let mut tracker = Tracker::new(super::tracker_config(&config), 1);
        for seq in 1..=5 {
            let sent = Sent {
                partition: 0,
                seq,
                at_us: 1_000,
            };
            tracker.sent(sent).expect("sent");
            if process(seq) {
                let processed = Processed {
                    partition: 0,
                    seq,
                    worker: WorkerRef(0),
                    delivered: 1,
                    published_us: 1_000,
                    received_us: 2_000,
                    processed_us: 3_000,
                };
                tracker.processed(processed).expect("processed");
            }
        }
        tracker.finish(10_000_000);
        let mut assignment_log = AssignmentLog::default();
        assignment_log.versions = 3;
        assignment_log.moves = 1;
        assignment_log.leaders.push("worker-0".into());
        json!({
            "format": STATE_FORMAT,
            "run_id": "run-record",
            "config": config,
            "elapsed_ms": 12_000,
            "written_unix_us": 10_000_000,
            "end": "drained",
            "placement": {"producers": [{"any": "spec"}], "workers": [{}, {}]},
            "tracker": tracker.export(),
            "worker_names": ["worker-0/worker-0"],
            "failures": [],
            "events": [],
            "ownership": OwnershipCheck::default(),
            "faults": {"records": [], "engine_only": true},
            "assignment_log": assignment_log,
            "applied": {"host-1": [1, 2]},
        })
    }

    fn judged(state: &Value) -> Result<crate::report::RunSummary, StateError> {
        let body = serde_json::to_vec(state).expect("json");
        RunRecord::from_json(&body)?.summarize()
    }

    #[test]
    fn a_clean_state_passes_and_its_counts_come_from_the_state() {
        let summary = judged(&state(|_| true)).expect("judged");
        assert_eq!(summary.judgement.outcome, Outcome::Pass, "{summary:?}");
        assert_eq!((summary.producers, summary.workers), (1, 2));
        assert_eq!(summary.tracker.received, 5);
        assert_eq!(summary.assignment_versions, 3);
    }

    #[test]
    fn a_lost_message_in_the_state_fails_it_for_loss() {
        let summary = judged(&state(|seq| seq != 3)).expect("judged");
        assert_eq!(summary.judgement.outcome, Outcome::Fail);
        let kinds: Vec<&str> = summary
            .judgement
            .failures
            .iter()
            .map(|f| f.kind().as_str())
            .collect();
        assert_eq!(kinds, ["loss"], "{summary:?}");
    }

    #[test]
    fn another_format_is_refused_by_name_and_a_broken_field_by_path() {
        let mut old = state(|_| true);
        old.as_object_mut().expect("object").remove("format");
        let error = judged(&old).expect_err("format 1");
        assert!(matches!(error, StateError::Format { found: 1 }), "{error}");
        assert_eq!(
            error.to_string(),
            format!("checkpoint format 1, this build reads format {STATE_FORMAT}")
        );
        let mut broken = state(|_| true);
        broken["assignment_log"]["moves"] = json!("many");
        let error = judged(&broken).expect_err("bad field");
        assert!(
            matches!(&error, StateError::Invalid { path, .. } if path == "assignment_log.moves"),
            "{error}"
        );
    }
}
