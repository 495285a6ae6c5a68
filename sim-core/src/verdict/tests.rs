//! The verdict proves it can fail: one deliberate failure per kind turns the outcome and
//! exactly its JUnit test case (besides `verdict`), and a clean control stays PASS.

use std::time::Duration;

use super::*;
use crate::authority::Unowned;
use crate::config::ChaosEvent;
use crate::events::EndReason;
use crate::report::RunSummary;
use crate::tracker::{Anomaly, AnomalyKind, Tracker, TrackerConfig, TrackerFailure, WorkerRef};

fn clean_books() -> TrackerSnapshot {
    Tracker::new(TrackerConfig::default(), 2).snapshot(0)
}

fn anomaly(kind: AnomalyKind, seq: u64) -> Anomaly {
    Anomaly {
        kind,
        partition: 0,
        seq,
        worker: Some(WorkerRef(1)),
        other_worker: None,
        at_us: None,
        trace_id: None,
    }
}

/// Evidence with one thing wrong, and what judging it must say.
struct Case {
    books: TrackerSnapshot,
    rules: Rules,
    recorded: Vec<Failure>,
    assignment: Vec<String>,
    ownership: Vec<Violation>,
    unowned: Vec<Unowned>,
    kind: FailureKind,
    outcome: Outcome,
    /// The report's line: today's wording, kept.
    text: &'static str,
}

impl Case {
    fn new(kind: FailureKind, outcome: Outcome, text: &'static str) -> Self {
        Self {
            books: clean_books(),
            rules: Rules::default(),
            recorded: Vec::new(),
            assignment: Vec::new(),
            ownership: Vec::new(),
            unowned: Vec::new(),
            kind,
            outcome,
            text,
        }
    }

    fn recorded(mut self, failure: Failure) -> Self {
        self.recorded.push(failure);
        self
    }

    fn books(mut self, change: impl FnOnce(&mut TrackerSnapshot)) -> Self {
        change(&mut self.books);
        self
    }

    fn evidence(&self) -> Evidence<'_> {
        Evidence {
            tracker: &self.books,
            rules: self.rules,
            recorded: &self.recorded,
            assignment_violations: &self.assignment,
            ownership_violations: &self.ownership,
            unowned: &self.unowned,
        }
    }
}

fn slow_recovery(event: ChaosEvent, target: &str, at_s: f64, stuck: Unrecovered) -> Failure {
    Failure::RebalanceTimeout {
        event,
        target: target.into(),
        at_s,
        stuck,
        timeout: Duration::from_secs(60),
    }
}

fn cases() -> Vec<Case> {
    use FailureKind as K;
    use Outcome::{Fail, Infrastructure};
    let mut strict = Case::new(
        K::Duplicates,
        Fail,
        "duplicates (strict): 2 message(s) processed more than once (2 redelivered, 0 by two \
         workers at once), e.g. partition 0 seq 7 (w1)",
    )
    .books(|b| {
        b.duplicates_redelivery = 2;
        b.anomalies = vec![anomaly(AnomalyKind::DuplicateRedelivery, 7)];
    });
    strict.rules.strict_duplicates = true;
    let mut order = Case::new(
        K::Order,
        Fail,
        "order: 3 message(s) processed after a successor in their partition, e.g. partition 0 \
         seq 5 (w1)",
    )
    .books(|b| {
        b.order_violations = 3;
        b.anomalies = vec![anomaly(AnomalyKind::OrderViolation, 5)];
    });
    order.rules.ordered = true;
    let mut assignment = Case::new(
        K::Assignment,
        Fail,
        "assignment: 2 violation(s) in parti's assignment history, e.g. assignment version \
         went from 4 to 3 (leader w0)",
    );
    assignment.assignment = vec![
        "assignment version went from 4 to 3 (leader w0)".into(),
        "partition 1 owned by both w0 and w1 in assignment version 5".into(),
    ];
    let mut ownership = Case::new(
        K::Ownership,
        Fail,
        "ownership violation: 1 processing(s) without owning the partition, e.g. w1/worker-1 \
         processed partition 3 under assignment v7, which does not give it that partition",
    );
    ownership.ownership = vec![Violation {
        worker: "w1/worker-1".into(),
        version: 7,
        partition: 3,
    }];
    let mut unowned = Case::new(
        K::Ownership,
        Fail,
        "ownership violation: 5 processing(s) the assignment document did not allow, e.g. \
         rogue (rogue-2) processed partition 2 3 time(s); no assignment had granted it to anyone \
         before the first",
    );
    let stale = Unowned {
        worker: "w1".into(),
        process: "worker-1".into(),
        partition: 4,
        count: 2,
        first_us: 9_000_000,
        holder: Some("w2".into()),
        version: 6,
        after_grant_us: 1_500_000,
    };
    unowned.unowned = vec![
        stale.clone(),
        Unowned {
            worker: "rogue".into(),
            process: "rogue-2".into(),
            partition: 2,
            count: 3,
            first_us: 2_000_000,
            holder: None,
            version: 0,
            after_grant_us: 0,
        },
    ];
    assert_eq!(
        stale.to_string(),
        "w1 (worker-1) processed partition 4 2 time(s); the first 1.500 s after assignment v6 \
         had granted it to w2"
    );
    vec![
        Case::new(
            K::Loss,
            Fail,
            "loss: 1 message(s) known to exist were never processed, e.g. partition 0 seq 3 (w1)",
        )
        .books(|b| {
            b.lost = 1;
            b.anomalies = vec![anomaly(AnomalyKind::Lost, 3)];
        }),
        Case::new(
            K::ConcurrentProcessing,
            Fail,
            "concurrent processing: two workers processed one partition at once (1 overlapping \
             report(s), 0 concurrent duplicate(s))",
        )
        .books(|b| b.ownership_overlaps = 1),
        strict,
        Case::new(
            K::Late,
            Fail,
            "late: 2 message(s) processed after the validation window (worst 42.5s after \
             publishing), e.g. partition 0 seq 4 (w1)",
        )
        .books(|b| {
            b.late = 2;
            b.late_worst_us = 42_500_000;
            b.anomalies = vec![anomaly(AnomalyKind::Late, 4)];
        }),
        order,
        Case::new(
            K::InvalidReports,
            Fail,
            "invalid reports: 1 report(s) refused, the evidence is incomplete",
        )
        .books(|b| b.rejected = 1),
        Case::new(
            K::Stall,
            Fail,
            "stall: no new message processed for 30.2s (5 in flight, 100 sent, 95 received)",
        )
        .recorded(Failure::Stall {
            stalled_for: Duration::from_millis(30_200),
            in_flight: 5,
            sent: 100,
            received: 95,
        }),
        Case::new(
            K::RebalanceTimeout,
            Fail,
            "rebalance: after worker_crash on worker-1 at 12s, partitions were not all owned by \
             live workers and consuming within 60s",
        )
        .recorded(slow_recovery(
            ChaosEvent::WorkerCrash,
            "worker-1",
            12.4,
            Unrecovered::NotOwnedAndConsuming,
        )),
        Case::new(
            K::RebalanceTimeout,
            Fail,
            "rebalance: after nats_disconnect on agent-1 at 30s, the network fault was not \
             healed by its agent within 60s",
        )
        .recorded(slow_recovery(
            ChaosEvent::NatsDisconnect,
            "agent-1",
            30.0,
            Unrecovered::NetworkNotHealed,
        )),
        Case::new(
            K::RebalanceTimeout,
            Fail,
            "recovery unfinished: after worker_pause on worker-2 at 40s, the run was stopped at \
             43s before it had recovered",
        )
        .recorded(Failure::RecoveryUnfinished {
            event: ChaosEvent::WorkerPause,
            target: "worker-2".into(),
            at_s: 40.2,
            drain_at_s: 43.0,
        }),
        Case::new(
            K::Identity,
            Fail,
            "identity: worker-2 was restarted as w2 and came back as w9",
        )
        .recorded(Failure::Identity {
            process: "worker-2".into(),
            before: "w2".into(),
            after: "w9".into(),
        }),
        assignment,
        ownership,
        unowned,
        Case::new(
            K::Infrastructure,
            Infrastructure,
            "report gap: agent a1: report batches 6..=7 of boot 0x2a are missing (dropped by the \
             agent, not in the restored checkpoint)",
        )
        .recorded(Failure::ReportGap(ReportGap {
            agent: "a1".into(),
            boot_id: 42,
            missing: MissingReports::Batches { first: 6, last: 7 },
        })),
        Case::new(
            K::Infrastructure,
            Infrastructure,
            "report gap: agent a1: restarted while the coordinator was away (boot 0x2a -> 0x2b); \
             reports it sent after batch 9 are lost",
        )
        .recorded(Failure::ReportGap(ReportGap {
            agent: "a1".into(),
            boot_id: 42,
            missing: MissingReports::AfterRestart {
                after: 9,
                new_boot_id: 43,
            },
        })),
        Case::new(
            K::Infrastructure,
            Infrastructure,
            "every agent disconnected",
        )
        .recorded(Failure::AgentsLost),
        Case::new(
            K::Infrastructure,
            Infrastructure,
            "producer producer-0 died: signal 9",
        )
        .recorded(Failure::ProducerDied {
            process: "producer-0".into(),
            status: ExitStatus::Signal(9),
        }),
        Case::new(
            K::UnexpectedExit,
            Fail,
            "unexpected exit: worker-1 died (signal 6) and no fault targeted it; its log ends: \
             thread 'main' panicked at agent/src/worker.rs:9:5",
        )
        .recorded(Failure::UnexpectedExit {
            process: "worker-1".into(),
            status: ExitStatus::Signal(6),
            log_tail:
                "started\n\u{1b}[31mthread 'main' panicked at agent/src/worker.rs:9:5\u{1b}[0m\n\n"
                    .into(),
        }),
        Case::new(
            K::UnexpectedExit,
            Fail,
            "unexpected exit: producer-0 died (exit code 1) and no fault targeted it",
        )
        .recorded(Failure::UnexpectedExit {
            process: "producer-0".into(),
            status: ExitStatus::Code(1),
            log_tail: String::new(),
        }),
        Case::new(
            K::Startup,
            Fail,
            "startup: worker-2 was not following an assignment 60s after it started (last \
             state: WaitingAssignment)",
        )
        .recorded(Failure::Startup(StartupMiss::Worker {
            process: "worker-2".into(),
            state: "WaitingAssignment".into(),
            timeout: Duration::from_secs(60),
        })),
        Case::new(
            K::Startup,
            Fail,
            "startup: 3 of 16 partitions had no single live owner 60s after the run started",
        )
        .recorded(Failure::Startup(StartupMiss::Partitions {
            unowned: 3,
            of: 16,
            timeout: Duration::from_secs(60),
        })),
        Case::new(
            K::ResourceGrowth,
            Fail,
            "resource growth: local/worker-1 (pid 7): open files grew from 20 fds to 200 fds \
             between 15s and 35s (limit 25% and 32 fds)",
        )
        .recorded(Failure::ResourceGrowth(crate::resources::Growth {
            process: "local/worker-1".into(),
            harness: false,
            pid: 7,
            resource: crate::resources::Resource::Fds,
            first: crate::resources::Usage {
                rss_bytes: 1 << 20,
                fds: 20,
                threads: 4,
                at_ms: 15_000,
            },
            last: crate::resources::Usage {
                rss_bytes: 1 << 20,
                fds: 200,
                threads: 4,
                at_ms: 35_000,
            },
            limit_percent: 25.0,
        })),
        Case::new(
            K::CatchUp,
            Fail,
            "catch-up: after worker_crash on worker-2 at 30s, 2 moved partition(s) still had \
             backlog 60.0s after the recovery (limit 60s) (partition 3: 40 left, partition 9: \
             2 left)",
        )
        .recorded(Failure::CatchUp {
            event: crate::config::ChaosEvent::WorkerCrash,
            target: "worker-2".into(),
            at_s: 30.2,
            behind: vec![(3, 40), (9, 2)],
            partitions: 2,
            waited: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
        }),
        Case::new(
            K::SilentAfterChaos,
            Fail,
            "silent after chaos: worker-3 (owning 4 partition(s) by its last status) was last \
             heard of at 49s, the run ended at 75s; the last fault settled at 52s",
        )
        .recorded(Failure::SilentAfterChaos {
            process: "worker-3".into(),
            partitions: 4,
            last_report_s: 49.0,
            end_s: 75.0,
            settled_s: Some(52.0),
        }),
        Case::new(
            K::Infrastructure,
            Infrastructure,
            "producer producer-1 died: exit code 2",
        )
        .recorded(Failure::ProducerDied {
            process: "producer-1".into(),
            status: ExitStatus::new(Some(2), Some(9)),
        }),
        Case::new(
            K::Infrastructure,
            Infrastructure,
            "internal: the run's state did not re-import: tracker state: counters do not add up",
        )
        .recorded(Failure::Internal {
            error: "tracker state: counters do not add up".into(),
        }),
    ]
}

fn summary(judgement: Judgement) -> RunSummary {
    RunSummary::bare(
        "run-test".into(),
        judgement,
        EndReason::Drained,
        clean_books(),
    )
}

/// The JUnit test cases that failed, by name.
fn failed_checks(junit: &str) -> Vec<&str> {
    junit
        .lines()
        .filter(|line| line.contains("<failure"))
        .filter_map(|line| line.split(" name=\"").nth(1)?.split('"').next())
        .collect()
}

#[test]
fn clean_evidence_passes() {
    let case = Case::new(FailureKind::Loss, Outcome::Pass, "");
    let judgement = judge(&case.evidence());
    assert_eq!(judgement.outcome, Outcome::Pass);
    assert!(judgement.failures.is_empty());
    let summary = summary(judgement);
    assert!(
        failed_checks(&summary.junit()).is_empty(),
        "{}",
        summary.junit()
    );
    assert!(summary.junit().contains("tests=\"18\" failures=\"0\""));
}

#[test]
fn each_kind_fails_its_outcome_and_only_its_test_case() {
    let cases = cases();
    for kind in FailureKind::ALL {
        assert!(
            cases.iter().any(|case| case.kind == kind),
            "no case for {kind}"
        );
    }
    for case in cases {
        let judgement = judge(&case.evidence());
        assert_eq!(judgement.outcome, case.outcome, "{}", case.text);
        let [failure] = judgement.failures.as_slice() else {
            panic!("one failure expected: {:#?}", judgement.failures);
        };
        assert_eq!(failure.kind(), case.kind, "{failure}");
        assert_eq!(failure.to_string(), case.text);
        assert_eq!(
            failure.is_infrastructure(),
            case.outcome == Outcome::Infrastructure
        );
        let junit = summary(judgement).junit();
        assert_eq!(
            failed_checks(&junit),
            [crate::report::check_name(case.kind), "verdict"],
            "{junit}"
        );
    }
}

/// Reasons and failures line up, and each JSON failure names its kind: nothing downstream
/// has to guess a kind from wording.
#[test]
fn the_json_files_every_failure_by_kind() {
    let cases = cases();
    let failures: Vec<Failure> = cases
        .iter()
        .flat_map(|case| judge(&case.evidence()).failures)
        .collect();
    let expected: Vec<(FailureKind, &str)> = cases.iter().map(|c| (c.kind, c.text)).collect();
    let judgement = Judgement::new(failures);
    let json = serde_json::to_value(summary(judgement)).expect("serialize");
    assert_eq!(json["outcome"], "infrastructure");
    let listed: Vec<(&str, &str)> = json["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().expect("kind"),
                f["message"].as_str().expect("message"),
            )
        })
        .collect();
    let reasons: Vec<&str> = json["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r.as_str().expect("reason"))
        .collect();
    assert_eq!(
        reasons,
        listed
            .iter()
            .map(|(_, message)| *message)
            .collect::<Vec<_>>()
    );
    // Same set, infrastructure moved last.
    let mut want: Vec<(&str, &str)> = expected
        .iter()
        .map(|(kind, text)| (kind.as_str(), *text))
        .collect();
    want.sort_by_key(|(kind, _)| *kind == FailureKind::Infrastructure.as_str());
    assert_eq!(listed, want);
    for kind in FailureKind::ALL {
        assert_eq!(
            serde_json::to_value(kind).expect("kind"),
            kind.as_str(),
            "the JSON name is as_str"
        );
    }
}

/// An infrastructure failure makes the run an infrastructure error even when the system
/// under test failed too; the order is tracker, recorded, assignment, ownership, then
/// infrastructure.
#[test]
fn infrastructure_wins_and_goes_last() {
    let mut case = Case::new(FailureKind::Loss, Outcome::Infrastructure, "")
        .books(|b| b.lost = 1)
        .recorded(Failure::AgentsLost)
        .recorded(Failure::Identity {
            process: "worker-1".into(),
            before: "a".into(),
            after: "b".into(),
        });
    case.assignment = vec!["x".into()];
    let judgement = judge(&case.evidence());
    assert_eq!(judgement.outcome, Outcome::Infrastructure);
    let kinds: Vec<FailureKind> = judgement.failures.iter().map(Failure::kind).collect();
    assert_eq!(
        kinds,
        [
            FailureKind::Loss,
            FailureKind::Identity,
            FailureKind::Assignment,
            FailureKind::Infrastructure
        ]
    );
    let junit = summary(judgement).junit();
    assert_eq!(
        failed_checks(&junit),
        [
            "no_loss",
            "stable_identity",
            "assignment_history",
            "infrastructure",
            "verdict"
        ]
    );
}

/// Recorded failures go into checkpoints: every variant reads back as it was written.
#[test]
fn failures_round_trip_through_a_checkpoint() {
    let mut all: Vec<Failure> = cases()
        .iter()
        .flat_map(|case| judge(&case.evidence()).failures)
        .collect();
    all.push(Failure::Tracker(TrackerFailure::Loss {
        count: 2,
        sample: vec![anomaly(AnomalyKind::Lost, 1)],
    }));
    let json = serde_json::to_string(&all).expect("serialize");
    let back: Vec<Failure> = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, all);
}

/// `simctl report --run-dir` compares the outcome a report.json recorded with its own.
#[test]
fn a_recorded_outcome_reads_back() {
    let clean = Case::new(FailureKind::Loss, Outcome::Pass, "");
    let mut seen = Vec::new();
    for case in std::iter::once(clean).chain(cases()) {
        let judgement = judge(&case.evidence());
        let outcome = judgement.outcome;
        let json = serde_json::to_string(&summary(judgement)).expect("serialize");
        assert_eq!(crate::report::recorded_outcome(&json), Some(outcome));
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["outcome"], outcome.as_str());
        seen.push(outcome);
    }
    for outcome in [Outcome::Pass, Outcome::Fail, Outcome::Infrastructure] {
        assert!(seen.contains(&outcome), "{outcome} not covered");
    }
    assert_eq!(crate::report::recorded_outcome("{}"), None);
}
