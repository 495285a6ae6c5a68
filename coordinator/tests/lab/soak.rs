//! The 30-minute realistic soak (ignored by default; see docs/CHAOS.md).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, text};
use test_support::{status_number, wait_for};

/// Resident set size of `pid` in KiB (0 if it is gone).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// RSS of each component: nats-server, coordinator, each agent, and the sum of each host's
/// children (producers and workers).
fn rss_line(fleet: &Fleet) -> String {
    let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
    let mut parts = vec![
        format!(
            "nats-server {}",
            mib(fleet.nats.as_ref().map_or(0, |p| rss_kib(p.pid())))
        ),
        format!(
            "coordinator {}",
            mib(fleet.coordinator.as_ref().map_or(0, |p| rss_kib(p.pid())))
        ),
    ];
    for (index, agent) in fleet.agents.iter().enumerate() {
        let host = index + 1;
        let children: u64 = fleet
            .lab
            .pids(fleet.lab.host(host))
            .unwrap_or_default()
            .into_iter()
            .filter(|pid| *pid != agent.pid())
            .map(rss_kib)
            .sum();
        let count = fleet.lab.pids(fleet.lab.host(host)).map_or(0, |p| p.len()) - 1;
        parts.push(format!(
            "host-{host}: agent {} + {count} children {}",
            mib(rss_kib(agent.pid())),
            mib(children)
        ));
    }
    parts.join(", ")
}

/// Beyond CI (docs/CHAOS.md): configs/realistic.yaml — 1500 partitions, 10 producers, 100
/// workers — on three lab hosts for `PARTI_SIM_SOAK` (default 30m), chaos every 20–60 s
/// with every executable fault type; prints the report and each component's RSS at the start
/// and the end, and every 5 minutes. `PARTI_SIM_CHECKPOINT_INTERVAL` (e.g. `30s`) overrides
/// the config's `checkpointing.interval` (30m) for checkpoint numbers (docs/CHECKPOINTS.md).
/// Run with
/// `cargo test --release -p coordinator --test lab realistic -- --ignored --nocapture`.
#[test]
#[ignore = "a 30-minute run; see docs/CHAOS.md"]
fn realistic_chaos_soak() {
    let duration = std::env::var("PARTI_SIM_SOAK").unwrap_or_else(|_| "30m".into());
    let realistic = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/realistic.yaml"),
    )
    .expect("configs/realistic.yaml");
    let events = "  events:\n    - worker_crash\n    - worker_restart\n    - scale_up\n    \
                  - scale_down\n    - partition_changes\n    - nats_disconnect\n    \
                  - leader_failure\n    - producer_crash\n    - worker_pause\n    \
                  - leader_pause\n    - network_degrade\n  interval: 20-60s\n  \
                  warmup: 90s\n  cooldown: 60s\n";
    let chaos_start = realistic.find("  events:").expect("chaos.events");
    let chaos_end = realistic.find("\nnats:").expect("nats section");
    let config = format!(
        "{}{events}{}",
        &realistic[..chaos_start],
        &realistic[chaos_end + 1..]
    )
    .replacen("duration: 12h", &format!("duration: {duration}"), 1)
    .replacen("mode: all-in-one", "mode: coordinator", 1)
    .replacen("mode: embedded", "mode: external", 1);
    let config = match std::env::var("PARTI_SIM_CHECKPOINT_INTERVAL") {
        Ok(interval) => config.replacen(
            "checkpointing:\n  enabled: true\n  interval: 30m",
            &format!("checkpointing:\n  enabled: true\n  interval: {interval}"),
            1,
        ),
        Err(_) => config,
    };
    let dir = tempfile::Builder::new()
        .prefix("parti-soak-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let config_path = dir.join("soak.yaml");
    std::fs::write(&config_path, &config).expect("config");
    let mut fleet = Fleet::start(&dir, 3);
    let started = fleet.simctl(&[
        "start",
        "--config",
        config_path.to_str().expect("utf8"),
        "--seed",
        "30",
    ]);
    assert_eq!(started.status.code(), Some(0), "{}", text(&started));
    wait_for("all workers up", Duration::from_secs(300), || {
        // At least 100: a fault may already have added one (the count is live, not monotone).
        status_number(&text(&fleet.simctl(&["status"])), "workers").is_some_and(|n| n >= 100)
    });
    let at_start = rss_line(&fleet);
    let started_at = Instant::now();
    println!("RSS at start: {at_start}");
    let total = sim_core::config::parse_duration(&duration).expect("PARTI_SIM_SOAK");
    // Sample until shortly before the drain, so "end" is measured with everything running.
    let end_sample = Instant::now() + total.saturating_sub(Duration::from_secs(120));
    let mut next_sample = Instant::now() + Duration::from_secs(300);
    while Instant::now() < end_sample {
        std::thread::sleep(Duration::from_secs(5));
        if Instant::now() >= next_sample {
            println!("RSS after {:?}: {}", started_at.elapsed(), rss_line(&fleet));
            next_sample += Duration::from_secs(300);
        }
    }
    let at_end = rss_line(&fleet);
    println!("RSS near the end: {at_end}");
    let json_path = dir.join("report.json");
    let report = fleet.wait_for_report(total + Duration::from_secs(900), &json_path);
    let report_text = text(&report);
    let leftovers = fleet.stop();
    println!("{report_text}\nRSS at start: {at_start}\nRSS near the end: {at_end}");
    println!("logs and report.json in {}", dir.display());
    assert!(leftovers.is_empty(), "{leftovers:#?}");
    assert_eq!(report.status.code(), Some(0), "expected PASS");
    fleet.lab_teardown();
}
