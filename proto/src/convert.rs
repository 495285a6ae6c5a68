//! Conversions between the wire types and `sim-core`'s: the wire carries what the core
//! decided, it never decides anything itself.

use sim_core::chaos::FaultOutcome;
use sim_core::report::{Outcome, RunSummary};
use sim_core::verdict::ExitStatus;

use crate::v1::{InjectResponse, ProcessExited, RunReport, Verdict};

impl From<&RunSummary> for RunReport {
    /// The wire report of a judged run: the verdict (an infrastructure failure is a FAIL
    /// with `infrastructure` set, so old clients never read it as a pass), its reasons, and
    /// the three renderings.
    fn from(summary: &RunSummary) -> Self {
        let verdict = match summary.judgement.outcome {
            Outcome::Pass => Verdict::Pass,
            Outcome::Fail | Outcome::Infrastructure => Verdict::Fail,
        };
        Self {
            verdict: verdict as i32,
            reasons: summary.judgement.reasons(),
            text: summary.text(),
            json: serde_json::to_string_pretty(summary).unwrap_or_default(),
            junit: summary.junit(),
            infrastructure: summary.judgement.outcome == Outcome::Infrastructure,
        }
    }
}

impl InjectResponse {
    /// The reply to `simctl chaos`: the fault's target and what became of it.
    pub fn new(target: String, outcome: &FaultOutcome) -> Self {
        Self {
            outcome: outcome.to_string(),
            target,
            injected: outcome.is_injected(),
        }
    }
}

impl From<&ProcessExited> for ExitStatus {
    fn from(exited: &ProcessExited) -> Self {
        ExitStatus::new(exited.code, exited.signal)
    }
}
