//! The verdict (DESIGN §5): the one place that decides PASS, FAIL or infrastructure error.
//!
//! [`judge`] takes the run's [`Evidence`] — the tracker's books, the failures the run
//! recorded as they happened (stalls, slow recoveries, lost identities, infrastructure
//! trouble), parti's assignment history and the ownership check — and returns a
//! [`Judgement`]: the outcome and every [`Failure`] behind it. The coordinator judges a
//! finishing run with it and `simctl report --run-dir` judges a run directory with it, so
//! both reach the same verdict from the same state.
//!
//! Decisions worth knowing:
//! - **Infrastructure wins.** Any infrastructure failure makes the outcome
//!   [`Outcome::Infrastructure`], whatever else failed: evidence with a hole proves neither
//!   a pass nor a fail of the system under test. The other failures are still listed.
//! - **Order.** Failures are listed tracker first, then the run's own, then assignment and
//!   ownership, infrastructure last; reports and CI histories read them in that order.
//! - **Kinds, not words.** Everything downstream (JUnit test cases, the JSON `failures`)
//!   files a failure by [`Failure::kind`]; its text is for people.
//!
//! Layout: this file the outcome and judging; `failure` the failures and their data;
//! `tests` one deliberate failure per kind, and a clean control.

mod failure;
#[cfg(test)]
mod tests;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

pub use failure::{
    ExitStatus, Failure, FailureKind, MissingReports, ReportGap, StartupMiss, Unrecovered,
};

use crate::authority::Unowned;
use crate::ownership::Violation;
use crate::tracker::Rules;
use crate::tracker::TrackerSnapshot;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check passed.
    Pass,
    /// A check failed (loss, concurrent processing, stall, ...).
    Fail,
    /// The harness itself could not run the test (agents or producers lost).
    Infrastructure,
}

impl Outcome {
    /// The name in the JSON report (`pass`, `fail`, `infrastructure`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Infrastructure => "infrastructure",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What judging a run needs, borrowed from wherever the run's state lives.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Evidence<'a> {
    /// The tracker's books, taken after [`crate::tracker::Tracker::finish`] for a finished
    /// run (before that, messages in flight are not lost yet).
    pub tracker: &'a TrackerSnapshot,
    /// The config's choices among the tracker's rules (strict duplicates, order).
    pub rules: Rules,
    /// Failures the run recorded as they happened, in that order (stalls, recoveries over
    /// the bound, lost identities, infrastructure trouble).
    pub recorded: &'a [Failure],
    /// What broke the rules in parti's assignment history, as the assignment log says it.
    pub assignment_violations: &'a [String],
    /// Processing without ownership.
    pub ownership_violations: &'a [Violation],
    /// Processing the assignment document did not allow, per worker and partition.
    pub unowned: &'a [Unowned],
}

/// The verdict and every reason for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// PASS, FAIL or infrastructure error.
    pub outcome: Outcome,
    /// Why it is not a pass; infrastructure failures last.
    pub failures: Vec<Failure>,
}

/// Judge a run.
pub fn judge(evidence: &Evidence<'_>) -> Judgement {
    let mut failures: Vec<Failure> = evidence
        .tracker
        .failures(evidence.rules)
        .into_iter()
        .map(Failure::from)
        .collect();
    failures.extend(evidence.recorded.iter().cloned());
    if let Some(first) = evidence.assignment_violations.first() {
        failures.push(Failure::Assignment {
            count: evidence.assignment_violations.len(),
            first: first.clone(),
        });
    }
    if let Some(first) = evidence.ownership_violations.first() {
        failures.push(Failure::Ownership {
            count: evidence.ownership_violations.len(),
            first: first.clone(),
        });
    }
    if let Some(first) = evidence.unowned.iter().min_by_key(|u| u.first_us) {
        failures.push(Failure::Unowned {
            count: evidence.unowned.iter().map(|u| u.count).sum(),
            first: first.clone(),
        });
    }
    Judgement::new(failures)
}

impl Judgement {
    /// The verdict of `failures`: a pass when there are none, an infrastructure error when
    /// any is one (those are moved last, keeping their order), a fail otherwise.
    pub fn new(failures: Vec<Failure>) -> Self {
        let (mut failures, infrastructure): (Vec<Failure>, Vec<Failure>) =
            failures.into_iter().partition(|f| !f.is_infrastructure());
        let outcome = if !infrastructure.is_empty() {
            Outcome::Infrastructure
        } else if failures.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        failures.extend(infrastructure);
        Self { outcome, failures }
    }

    /// One line per failure, as the report shows them.
    pub fn reasons(&self) -> Vec<String> {
        self.failures.iter().map(ToString::to_string).collect()
    }

    /// The failures of one kind.
    pub fn of_kind(&self, kind: FailureKind) -> impl Iterator<Item = &Failure> {
        self.failures.iter().filter(move |f| f.kind() == kind)
    }
}

/// A failure as the JSON report lists it.
#[derive(Debug, Serialize)]
struct FailureLine {
    kind: FailureKind,
    message: String,
}

/// `outcome`, `reasons` (the lines, as before failures were typed: users and tests parse
/// them) and `failures` (`{kind, message}`: file them by kind, not by wording).
impl Serialize for Judgement {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let lines: Vec<FailureLine> = self
            .failures
            .iter()
            .map(|failure| FailureLine {
                kind: failure.kind(),
                message: failure.to_string(),
            })
            .collect();
        let mut out = serializer.serialize_struct("Judgement", 3)?;
        out.serialize_field("outcome", &self.outcome)?;
        out.serialize_field("reasons", &self.reasons())?;
        out.serialize_field("failures", &lines)?;
        out.end()
    }
}
