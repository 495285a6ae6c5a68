//! The lab in containers (issue 12 item 4): `scripts/lab-up.sh` builds the lab-node image
//! from our binaries and Debian's packages (no registry) and starts NATS, the coordinator
//! and three agents with docker-compose on an internal network; a short chaos run with a
//! network fault over mutual TLS, driven from the coordinator's container, PASSes.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use test_support::{output_text, wait_until};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `scripts/lab-up.sh [args]` for this test's project, on the binaries the tests use.
fn lab_up(project: &str, state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(workspace().join("scripts/lab-up.sh"))
        .args(args)
        .env("LAB_PROJECT", project)
        .env("LAB_DIR", state)
        .env(
            "LAB_BIN_DIR",
            test_support::workspace_binary("simctl")
                .parent()
                .expect("target dir"),
        )
        .output()
        .expect("lab-up.sh")
}

/// Takes the lab down when the test ends, passed or not.
struct Down<'a> {
    project: &'a str,
    state: &'a std::path::Path,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = lab_up(self.project, self.state, &["down"]);
    }
}

#[test]
fn the_compose_lab_comes_up_with_one_command_and_a_chaos_run_passes() {
    let project = format!("parti-sim-compose-{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let _down = Down {
        project: &project,
        state: &state,
    };
    let up = lab_up(&project, &state, &[]);
    assert!(up.status.success(), "lab-up.sh: {}", output_text(&up));

    let config = test_support::edited_config(
        "lab-stress.yaml",
        &[
            ("duration: 15m", "duration: 40s"),
            // Workers first: the partitions' new count would match theirs.
            ("count: 12", "count: 3"),
            ("count: 96", "count: 12"),
            ("partitions_per_producer: 32", "partitions_per_producer: 4"),
            ("interval: 20-40s", "interval: 6-8s"),
            ("warmup: 30s", "warmup: 8s"),
            ("cooldown: 30s", "cooldown: 8s"),
            (
                test_support::LAB_STRESS_EVENTS,
                "    - nats_disconnect\n    - worker_crash\n",
            ),
            ("validation_window: 60s", "validation_window: 40s"),
            (
                "enabled: true\n    port: 9090",
                "enabled: false\n    port: 9090",
            ),
            (
                "enabled: true\n  interval: 30s",
                "enabled: false\n  interval: 30s",
            ),
        ],
    );
    std::fs::write(state.join("configs/compose-test.yaml"), config).expect("config");

    let simctl = |args: &[&str]| {
        Command::new("docker-compose")
            .args(["-p", &project, "-f"])
            .arg(workspace().join("docker/lab/compose.yaml"))
            .args(["exec", "-T", "coordinator", "simctl"])
            .args(args)
            .env("LAB_IMAGE", "unused")
            .env("LAB_CERTS", state.join("certs"))
            .env("LAB_CONFIGS", state.join("configs"))
            .output()
            .expect("docker-compose exec")
    };
    wait_until("three agents connected", Duration::from_secs(60), || {
        let agents = output_text(&simctl(&["agents"]));
        (agents.matches(" connected").count() == 3)
            .then_some(())
            .ok_or(agents)
    });
    let started = simctl(&[
        "start",
        "--config",
        "/configs/compose-test.yaml",
        "--seed",
        "3",
    ]);
    assert!(started.status.success(), "{}", output_text(&started));
    let watched = simctl(&["watch"]);
    assert!(watched.status.success(), "{}", output_text(&watched));
    let report = simctl(&["report"]);
    let text = output_text(&report);
    assert_eq!(report.status.code(), Some(0), "PASS expected:\n{text}");
    assert!(
        text.contains("nats_disconnect"),
        "a network fault ran:\n{text}"
    );
}
