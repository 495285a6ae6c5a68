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
            // Drawn by whoever has the run's timeline (`sim_core::html`).
            html: String::new(),
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

#[cfg(test)]
mod tests {
    use sim_core::chaos::FaultOutcome;
    use sim_core::verdict::ExitStatus;

    use crate::v1::{InjectResponse, ProcessExited};

    /// simctl decides on `injected`; the text is for people, as it always read.
    #[test]
    fn inject_replies_say_whether_the_fault_went_out() {
        let injected = InjectResponse::new("worker-1".into(), &FaultOutcome::Injected);
        assert!(injected.injected);
        assert_eq!(
            (injected.outcome.as_str(), injected.target.as_str()),
            ("injected", "worker-1")
        );
        let skipped = InjectResponse::new(
            String::new(),
            &FaultOutcome::Skipped("target worker-99 is not one of [worker-0]".into()),
        );
        assert!(!skipped.injected);
        assert_eq!(
            skipped.outcome,
            "skipped: target worker-99 is not one of [worker-0]"
        );
        let failed = InjectResponse::new("host-1".into(), &FaultOutcome::Failed("no tc".into()));
        assert!(!failed.injected);
        assert_eq!(failed.outcome, "failed: no tc");
    }

    #[test]
    fn exit_statuses_prefer_the_code() {
        let exited = |code, signal| ProcessExited {
            code,
            signal,
            ..ProcessExited::default()
        };
        assert_eq!(
            ExitStatus::from(&exited(Some(0), None)),
            ExitStatus::Code(0)
        );
        assert_eq!(
            ExitStatus::from(&exited(None, Some(9))),
            ExitStatus::Signal(9)
        );
        assert_eq!(ExitStatus::from(&exited(None, None)), ExitStatus::Unknown);
        assert_eq!(ExitStatus::Signal(9).to_string(), "signal 9");
    }
}
