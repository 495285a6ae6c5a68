//! A 30 s cut between one agent and the coordinator must lose and double no report.

use std::time::Duration;

use crate::fleet::{Fleet, MANUAL_CONFIG, lab_possible, one_fleet_at_a_time, received, text};
use test_support::wait_for;

/// A run for the link cut: the manual run (no chaos), 75 s — long enough for a 30 s cut in
/// its middle — with a validation window that outlasts the cut.
fn link_cut_config() -> String {
    MANUAL_CONFIG
        .replacen("duration: 150s", "duration: 75s", 1)
        .replacen("validation_window: 30s", "validation_window: 60s", 1)
}

/// iptables rules (in one host's namespace) that cut it off from the coordinator's port,
/// both directions: NATS stays reachable, so its producers and workers go on.
fn link_cut_rules(hub_ip: &str) -> [Vec<String>; 2] {
    let rule = |chain: &str, address: &str, port: &str| -> Vec<String> {
        [
            chain, "-p", "tcp", address, hub_ip, port, "7400", "-j", "DROP",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    };
    [
        rule("OUTPUT", "-d", "--dport"),
        rule("INPUT", "-s", "--sport"),
    ]
}

/// The agent↔coordinator link of one host cut for 30 s in the middle of a run: its
/// producers and workers keep going, the agent keeps every report (it notices the dead
/// link by HTTP/2 keepalive and reconnects once the link is back), resends what was not
/// accepted, and the coordinator applies each batch once — nothing lost, nothing doubled.
#[test]
fn a_30s_cut_between_an_agent_and_the_coordinator_loses_no_report() {
    assert!(lab_possible(), "the namespace lab needs root and iproute2");
    let _one = one_fleet_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("parti-lab-")
        .tempdir()
        .expect("tempdir");
    let config = dir.path().join("link-cut.yaml");
    std::fs::write(&config, link_cut_config()).expect("config");
    let fleet = Fleet::start(dir.path(), 2);
    let started = fleet.simctl(&[
        "start",
        "--config",
        config.to_str().expect("utf8"),
        "--seed",
        "21",
    ]);
    assert_eq!(started.status.code(), Some(0), "{}", text(&started));
    wait_for("messages flow", Duration::from_secs(60), || {
        received(&fleet) > 300
    });
    let host = fleet.lab.host(1).to_string();
    let hub_ip = fleet.lab.hub_ip().to_string();
    for rule in link_cut_rules(&hub_ip) {
        let mut args = vec!["-I".to_string()];
        args.extend(rule);
        fleet.lab.run(&host, "iptables", &args).expect("cut");
    }
    let at_cut = received(&fleet);
    // The other host's workers keep the books moving meanwhile.
    wait_for("host 2 still reports", Duration::from_secs(20), || {
        received(&fleet) > at_cut + 100
    });
    // The cut lasts 30 s: the length of the fault under test, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(30));
    for rule in link_cut_rules(&hub_ip) {
        let mut args = vec!["-D".to_string()];
        args.extend(rule);
        fleet.lab.run(&host, "iptables", &args).expect("heal");
    }
    let json_path = dir.path().join("report.json");
    let report = fleet.wait_for_report(Duration::from_secs(300), &json_path);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json")).expect("parse");
    let mut fleet = fleet;
    let leftovers = fleet.stop();
    let agent_log = std::fs::read_to_string(dir.path().join("agent-1.log")).unwrap_or_default();
    fleet.lab_teardown();
    assert_eq!(report.status.code(), Some(0), "{}", text(&report));
    assert!(leftovers.is_empty(), "{leftovers:#?}");
    let tracker = &json["tracker"];
    assert_eq!(tracker["lost"], 0, "{}", text(&report));
    assert_eq!(
        tracker["sent"],
        tracker["received"],
        "every confirmed message processed and reported: {}",
        text(&report)
    );
    assert_eq!(
        tracker["duplicates_redelivery"].as_u64().unwrap_or(0)
            + tracker["duplicates_concurrent"].as_u64().unwrap_or(0),
        0,
        "a resent batch was applied twice: {}",
        text(&report)
    );
    assert!(
        agent_log.matches("session established").count() >= 2,
        "host 1's agent never reconnected:\n{agent_log}"
    );
}
