//! Reports of another run's children that reached this run: refused, never applied, counted.
//!
//! Agents stamp each child's reports with the run it was started for. A child of the
//! previous run still writing when the next run began (the agent stops such children before
//! it starts the new run's, but what they wrote meanwhile is in flight) must not count for
//! the new run: its `processed` would excuse a loss, its exit would fail the run.

use serde::{Deserialize, Serialize};

/// How many distinct foreign runs are named.
const RUNS_NAMED: usize = 4;

/// What reached this run from other runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForeignReports {
    /// Reports refused.
    pub count: u64,
    /// The runs they came from (the first few).
    pub runs: Vec<String>,
}

impl ForeignReports {
    /// Whether a report stamped `stamp` belongs to run `run_id`; counts it when not. An
    /// empty stamp (the agent could not tell, an older agent) belongs.
    pub fn admits(&mut self, run_id: &str, stamp: &str) -> bool {
        if stamp.is_empty() || stamp == run_id {
            return true;
        }
        self.count += 1;
        if self.runs.len() < RUNS_NAMED && !self.runs.iter().any(|r| r == stamp) {
            self.runs.push(stamp.to_string());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_runs_reports_are_refused_and_counted_unstamped_ones_admitted() {
        let mut foreign = ForeignReports::default();
        assert!(foreign.admits("run-2", "run-2"));
        assert!(foreign.admits("run-2", ""));
        assert!(!foreign.admits("run-2", "run-1"));
        assert!(!foreign.admits("run-2", "run-1"));
        assert!(!foreign.admits("run-2", "run-0"));
        assert_eq!(foreign.count, 3);
        assert_eq!(foreign.runs, ["run-1", "run-0"]);
    }
}
