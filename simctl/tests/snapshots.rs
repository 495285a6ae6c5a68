//! Snapshots of what users read: `simctl --help` (and its main subcommands) and the report
//! text. `UPDATE_SNAPSHOTS=1 cargo test -p simctl --test snapshots` rewrites them after
//! an intended change; review the diff.

use std::path::PathBuf;
use std::process::Command;

use sim_core::events::{EndReason, EventKind, RunEvent};
use sim_core::report::{Outcome, RunSummary};
use sim_core::tracker::{Processed, Sent, Tracker, TrackerConfig, WorkerRef};
use sim_core::verdict::{Evidence, judge};

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing snapshot {}", path.display()));
    assert_eq!(
        actual, expected,
        "snapshot {name} differs (UPDATE_SNAPSHOTS=1 to accept)"
    );
}

#[test]
fn simctl_help_texts() {
    for (name, args) in [
        ("simctl-help.txt", vec!["--help"]),
        ("simctl-run-help.txt", vec!["run", "--help"]),
        ("simctl-start-help.txt", vec!["start", "--help"]),
        ("simctl-chaos-help.txt", vec!["chaos", "--help"]),
        ("simctl-report-help.txt", vec!["report", "--help"]),
        ("simctl-config-help.txt", vec!["config", "--help"]),
        ("simctl-trace-help.txt", vec!["trace", "--help"]),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_simctl"))
            .args(&args)
            .output()
            .expect("simctl");
        assert!(output.status.success());
        check(name, &String::from_utf8_lossy(&output.stdout));
    }
}

#[test]
fn report_text_of_a_failed_run() {
    let mut tracker = Tracker::new(
        TrackerConfig {
            validation_window_us: 1_000_000,
            ..TrackerConfig::default()
        },
        2,
    );
    for seq in 1..=5 {
        tracker
            .sent(Sent {
                partition: 0,
                seq,
                at_us: 1_000,
            })
            .expect("sent");
        if seq != 3 {
            let processed = Processed {
                partition: 0,
                seq,
                worker: WorkerRef(0),
                delivered: 1,
                published_us: 1_000,
                received_us: 1_000 + 500 * seq as i64,
                processed_us: 1_200 + 500 * seq as i64,
            };
            tracker.processed(processed).expect("processed");
        }
    }
    tracker.finish(10_000_000);
    let books = tracker.snapshot(10_000_000);
    let judgement = judge(&Evidence {
        tracker: &books,
        rules: sim_core::tracker::Rules::default(),
        recorded: &[],
        assignment_violations: &[],
        ownership_violations: &[],
        unowned: &[],
    });
    assert_eq!(judgement.outcome, Outcome::Fail);
    let summary = RunSummary {
        run_id: "run-snapshot".into(),
        judgement,
        end: EndReason::Drained,
        elapsed_s: 61.0,
        duration_s: 45.0,
        partitions: 2,
        producers: 1,
        workers: 1,
        tracker: books,
        worker_names: vec!["worker-0/worker-0".into()],
        events: vec![RunEvent::new(
            EventKind::Unexpected,
            "worker-0 (pid 42) exited: signal 9",
        )],
        faults: Vec::new(),
        fault_stats: Vec::new(),
        assignment_versions: 3,
        partition_moves: 1,
        leaders: vec!["worker-0".into()],
        unowned: Vec::new(),
        unjudged_ownership: 0,
        assignment_versions_missed: 0,
        stream_check: sim_core::stream_check::StreamCheck {
            read: true,
            partitions_read: 16,
            ..Default::default()
        },
        foreign_reports: sim_core::foreign_reports::ForeignReports::default(),
        resources: Vec::new(),
        clocks: [(
            "local".to_string(),
            sim_core::clock::ClockOffset {
                offset_us: 300_120,
                uncertainty_us: 180,
                samples: 40,
            },
        )]
        .into(),
    };
    check("report-fail.txt", &summary.text());
    let junit = summary.junit();
    assert!(
        junit.contains("<testcase classname=\"run-snapshot\" name=\"no_loss\"><failure"),
        "{junit}"
    );
}
