//! Chaos across hosts: a network-namespace lab (one hub namespace with nats-server and the
//! coordinator, three agent hosts joined to it by veth pairs on a bridge inside the hub),
//! a multi-minute run with every executable fault type, then checks that nothing is left
//! behind: no iptables chain or qdisc in any namespace, no process.
//!
//! Everything runs inside namespaces the test creates (test_support::lab); no traffic
//! leaves them. Host 2's clock is 300 ms ahead (`fleet::SKEWED_HOST`, `SKEW_MS`).
//!
//! Layout: `fleet` (the lab's daemons and run helper), this file (the chaos run, the defect
//! knobs, network faults by hand), `link_cut` (a cut between an agent and the coordinator),
//! `soak` (the 30-minute run, ignored by default).

mod fleet;
mod link_cut;
mod soak;

use std::time::Duration;

use fleet::{
    Fleet, LAB_CONFIG, MANUAL_CONFIG, one_fleet_at_a_time, received, run_in_lab, spawn_agent, text,
};
use test_support::{wait_for, wait_for_line};

#[test]
fn chaos_across_three_hosts_passes_and_leaves_nothing_behind() {
    let run = run_in_lab(LAB_CONFIG, 3, 4);
    if run.code != Some(0) {
        run.fail("expected PASS");
    }
    let report_text = &run.report;
    // Shown with --nocapture, and left in the temp dir: the recovery table is worth reading.
    println!("{report_text}");
    let _ = std::fs::write(
        std::env::temp_dir().join("parti-lab-last-report.txt"),
        report_text,
    );
    let json = &run.json;
    let faults = json["faults"].as_array().expect("faults array");
    let injected: Vec<&serde_json::Value> = faults
        .iter()
        .filter(|f| f["outcome"] == "injected")
        .collect();
    assert!(
        injected.len() >= 12,
        "only {} faults injected:\n{report_text}",
        injected.len()
    );
    for event in [
        "worker_crash",
        "worker_restart",
        "scale_up",
        "scale_down",
        "leader_failure",
        "producer_crash",
        "worker_pause",
        "leader_pause",
        "nats_disconnect",
        "network_degrade",
        "partition_changes",
    ] {
        assert!(
            injected.iter().any(|f| f["event"] == event),
            "{event} never injected:\n{report_text}"
        );
    }
    // Warm-up and cool-down were fault-free.
    for fault in faults {
        let at = fault["at_s"].as_f64().unwrap_or(0.0);
        assert!(
            (10.0..=190.0).contains(&at),
            "fault at {at}s:\n{report_text}"
        );
    }
    // parti's own record was watched: versions, moves, and more than one leader (the
    // leader was killed and paused).
    assert!(
        json["assignment_versions"].as_u64().unwrap_or(0) > 5,
        "{report_text}"
    );
    assert!(
        json["partition_moves"].as_u64().unwrap_or(0) > 0,
        "{report_text}"
    );
    assert!(
        json["leaders"].as_array().map_or(0, Vec::len) >= 2,
        "{report_text}"
    );
    // A restarted worker comes back with its stable id (the coordinator checks each one).
    let restarts: Vec<&&serde_json::Value> = injected
        .iter()
        .filter(|f| f["event"] == "worker_restart")
        .collect();
    assert!(
        restarts.iter().all(|f| f["detail"]
            .as_str()
            .is_some_and(|d| d.contains("kept stable id"))),
        "{report_text}"
    );
    // Partition changes really changed the map.
    assert!(
        injected.iter().any(|f| f["event"] == "partition_changes"
            && f["detail"]
                .as_str()
                .is_some_and(|d| d.contains("partition"))),
        "{report_text}"
    );
    // Every host's clock was measured (host 2's shifted by `fleet::SKEW_MS`).
    for host in 1..=3 {
        let clock = &json["clocks"][format!("host-{host}")];
        let want = if host == fleet::SKEWED_HOST {
            fleet::SKEW_MS * 1_000
        } else {
            0
        };
        let offset = clock["offset_us"].as_i64().unwrap_or(i64::MIN);
        let uncertainty = clock["uncertainty_us"].as_i64().unwrap_or_default();
        assert!(
            (offset - want).abs() <= uncertainty + 2_000,
            "host-{host}'s clock: {clock}\n{report_text}"
        );
    }
    // Network faults really were in place: the agent said what it installed.
    assert!(
        injected.iter().any(|f| f["event"] == "nats_disconnect"
            && f["detail"].as_str().unwrap_or("").contains("DROP all tcp")),
        "no disconnect rules reported:\n{report_text}"
    );
}

#[test]
fn network_faults_are_per_host_time_limited_and_removed_after_an_agent_is_killed() {
    let _one = one_fleet_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("parti-lab-")
        .tempdir()
        .expect("tempdir");
    let config = dir.path().join("manual.yaml");
    std::fs::write(&config, MANUAL_CONFIG).expect("config");
    let mut fleet = Fleet::start(dir.path(), 2);
    let started = fleet.simctl(&["start", "--config", config.to_str().expect("utf8")]);
    assert_eq!(started.status.code(), Some(0), "{}", text(&started));
    let run_id = text(&started)
        .trim()
        .strip_prefix("started ")
        .expect("run id")
        .to_string();
    wait_for("messages flowing", Duration::from_secs(60), || {
        received(&fleet) > 50
    });

    // Bad requests: an unknown event is bad input (2), an impossible target is "not
    // injected" (1); neither touches anything.
    let unknown = fleet.simctl(&["chaos", "network_meltdown"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("nats_disconnect"),
        "{}",
        text(&unknown)
    );
    let nobody = fleet.simctl(&["chaos", "worker_crash", "--target", "worker-99"]);
    assert_eq!(nobody.status.code(), Some(1), "{}", text(&nobody));

    // A long disconnect on host 1 only.
    let lab = &fleet.lab;
    let chain_on = |host: usize| {
        lab.iptables_save(lab.host(host))
            .expect("iptables-save")
            .contains(":PARTI-SIM")
    };
    let cut = fleet.simctl(&[
        "chaos",
        "nats_disconnect",
        "--target",
        "host-1",
        "--duration",
        "300s",
    ]);
    assert_eq!(cut.status.code(), Some(0), "{}", text(&cut));
    wait_for("the DROP rules on host 1", Duration::from_secs(15), || {
        chain_on(1)
    });
    assert!(!chain_on(2), "host 2 must not be touched");
    let rules = lab.iptables_save(lab.host(1)).expect("iptables-save");
    assert!(
        rules.contains("--dport 4222") && rules.contains("--sport 4222") && rules.contains("DROP"),
        "{rules}"
    );

    // SIGKILL the agent: its children die with it, the rules stay (nobody removed them)...
    fleet.agents[0]
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill agent 1");
    assert!(
        fleet.agents[0]
            .wait_timeout(Duration::from_secs(10))
            .is_some()
    );
    wait_for("no process left on host 1", Duration::from_secs(20), || {
        fleet.lab.pids(fleet.lab.host(1)).expect("pids").is_empty()
    });
    assert!(chain_on(1), "the rules outlive a SIGKILLed agent");
    // ...until an agent starts on that host again.
    fleet.agents[0] = spawn_agent(&fleet.lab, &fleet.dir, &fleet.endpoint, 1);
    wait_for(
        "the restarted agent removing the chain",
        Duration::from_secs(20),
        || !chain_on(1),
    );
    fleet.wait_for_agents(2);

    // A time-limited degrade on host 2: loss rule and shaping appear, then the agent itself
    // removes them when the time is up. The test follows the run's events.log (appended,
    // never rewritten), so neither phase can slip by between two looks; the rules are read
    // once the agent reported them applied, well inside the fault's 15 s.
    let degrade = fleet.simctl(&[
        "chaos",
        "network_degrade",
        "--target",
        "host-2",
        "--duration",
        "15s",
    ]);
    assert_eq!(degrade.status.code(), Some(0), "{}", text(&degrade));
    let events = dir.path().join("runs").join(&run_id).join("events.log");
    let lab = &fleet.lab;
    let offset = wait_for_line(
        &events,
        "network fault network_degrade on host-2: NETWORK_FAULT_PHASE_APPLIED",
        0,
        Duration::from_secs(20),
    );
    let rules = lab.iptables_save(lab.host(2)).expect("iptables-save");
    let qdiscs = lab.qdiscs(lab.host(2)).expect("qdiscs");
    assert!(
        rules.contains("statistic") && qdiscs.contains("tbf"),
        "loss rule and tbf on host 2 once applied:\n{rules}\n{qdiscs}"
    );
    wait_for_line(
        &events,
        "network fault network_degrade on host-2: NETWORK_FAULT_PHASE_HEALED",
        offset,
        Duration::from_secs(40),
    );
    // Healed for good: nothing re-adds the rules now, so this wait cannot miss its state.
    wait_for(
        "host 2 clean after its agent healed it",
        Duration::from_secs(10),
        || {
            !lab.iptables_save(lab.host(2))
                .expect("iptables-save")
                .contains("PARTI-SIM")
                && !lab.qdiscs(lab.host(2)).expect("qdiscs").contains("htb")
        },
    );

    let stop = fleet.simctl(&["stop"]);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop));
    let json_path = dir.path().join("report.json");
    let report = fleet.wait_for_report(Duration::from_secs(120), &json_path);
    let report_text = text(&report);
    let leftovers = fleet.stop();
    assert!(leftovers.is_empty(), "{leftovers:#?}\n{report_text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("report json"))
            .expect("json");
    let events: Vec<&str> = json["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| f["event"].as_str().unwrap_or(""))
        .collect();
    assert!(
        events.contains(&"nats_disconnect") && events.contains(&"network_degrade"),
        "{report_text}"
    );
    fleet.lab_teardown();
}

/// The lab chaos run, shortened to 75 s, with one deliberate defect in every worker.
fn defective(knob: &str) -> String {
    let config = LAB_CONFIG
        .replacen("duration: 200s", "duration: 75s", 1)
        .replacen(
            "workers:\n  count: 6\n",
            &format!("workers:\n  count: 6\n  faults:\n    {knob}\n"),
            1,
        );
    assert!(
        config.contains(knob) && config.contains("75s"),
        "LAB_CONFIG layout changed"
    );
    config
}

/// The same chaos with a defect must FAIL, and for the reason the defect implies (not,
/// say, a stall or an infrastructure error the chaos happened to cause).
fn assert_fails_for(knob: &str, reason: &str, seed: u64) {
    let run = run_in_lab(&defective(knob), 3, seed);
    let reasons: Vec<String> = run.json["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if run.code != Some(1) || !reasons.iter().any(|r| r.contains(reason)) {
        let code = run.code;
        run.fail(&format!(
            "{knob}: expected FAIL (exit 1) naming {reason:?}, got exit {code:?} with reasons {reasons:#?}"
        ));
    }
}

#[test]
fn chaos_run_with_acked_but_dropped_messages_fails_with_loss() {
    assert_fails_for("drop_and_ack_one_in: 50", "loss:", 11);
}

#[test]
fn chaos_run_with_processing_after_revoke_fails_with_an_ownership_violation() {
    assert_fails_for("process_after_revoke: true", "ownership violation", 12);
}

#[test]
fn chaos_run_with_ack_before_processing_then_crash_fails_with_loss() {
    assert_fails_for("ack_then_crash_after: 40", "loss:", 13);
}

/// The Go library's handoff (one durable per worker, filters rewritten on reassignment):
/// partitions that move lose their backlog, and the chaos run proves it.
#[test]
fn chaos_run_with_go_style_handoff_fails_with_loss() {
    assert_fails_for("go_style_handoff: true", "loss:", 14);
}
