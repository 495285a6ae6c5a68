//! Chaos across hosts: a network-namespace lab (one hub namespace with nats-server and the
//! coordinator, three agent hosts joined to it by veth pairs on a bridge inside the hub),
//! a multi-minute run with every executable fault type, then checks that nothing is left
//! behind: no iptables chain or qdisc in any namespace, no process.
//!
//! Everything runs inside namespaces the test creates (test_support::lab); no traffic
//! leaves them.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use test_support::lab::{Lab, LabProcess};
use test_support::{status_number, wait_for, wait_for_line, wait_until};

fn bin(name: &str) -> PathBuf {
    test_support::workspace_binary(name)
}

fn text(output: &Output) -> String {
    test_support::output_text(output)
}

/// An agent daemon in host namespace `host`, logging to `<dir>/agent-<host>.log` (appended:
/// a restarted agent keeps the earlier log).
fn spawn_agent(lab: &Lab, dir: &Path, endpoint: &str, host: usize) -> LabProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("agent-{host}.log")))
        .expect("agent log");
    lab.spawn(
        lab.command(lab.host(host), bin("agent"))
            .args(["run", "--coordinator", endpoint, "--id"])
            .arg(format!("host-{host}"))
            .arg("--dir")
            .arg(dir.join(format!("host-{host}")))
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("agent")
}

/// The running lab: namespaces, daemons, and where their logs go.
struct Fleet {
    lab: Lab,
    endpoint: String,
    dir: PathBuf,
    nats: Option<LabProcess>,
    coordinator: Option<LabProcess>,
    agents: Vec<LabProcess>,
}

/// Each test runs a whole fleet; on two cores, two at once starve each other. One at a time.
fn one_fleet_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLEET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Fleet {
    fn start(dir: &Path, hosts: usize) -> Self {
        let lab = Lab::new(hosts).expect("creating the namespace lab");
        let hub_ip = lab.hub_ip().to_string();
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("log file");
        let nats = lab
            .spawn(
                lab.command(lab.hub(), test_support::nats_server_binary())
                    .args(["-js", "-a", "0.0.0.0", "-p", "4222", "-sd"])
                    .arg(dir.join("nats-store"))
                    .stdout(Stdio::null())
                    .stderr(log("nats-server.log")),
            )
            .expect("nats-server");
        let nats_url = format!("nats://{hub_ip}:4222");
        let coordinator = lab
            .spawn(
                lab.command(lab.hub(), bin("coordinator"))
                    .args([
                        "--listen",
                        &format!("{hub_ip}:7400"),
                        "--nats-url",
                        &nats_url,
                    ])
                    .arg("--runs-dir")
                    .arg(dir.join("runs"))
                    .stdout(Stdio::null())
                    .stderr(log("coordinator.log")),
            )
            .expect("coordinator");
        let endpoint = format!("http://{hub_ip}:7400");
        let agents = (1..=hosts)
            .map(|host| spawn_agent(&lab, dir, &endpoint, host))
            .collect();
        let fleet = Self {
            lab,
            endpoint,
            dir: dir.to_path_buf(),
            nats: Some(nats),
            coordinator: Some(coordinator),
            agents,
        };
        fleet.wait_for_agents(hosts);
        fleet
    }

    fn simctl(&self, args: &[&str]) -> Output {
        self.lab
            .command(self.lab.hub(), bin("simctl"))
            .arg("--coordinator")
            .arg(&self.endpoint)
            .args(args)
            .output()
            .expect("simctl")
    }

    fn wait_for_agents(&self, count: usize) {
        wait_until(
            &format!("{count} agents connected (logs in {})", self.dir.display()),
            Duration::from_secs(60),
            || {
                let agents = text(&self.simctl(&["agents"]));
                if agents.matches(" connected").count() >= count {
                    Ok(())
                } else {
                    Err(agents)
                }
            },
        );
    }

    /// Poll `simctl report` until the run has a verdict (deadline `within`).
    fn wait_for_report(&self, within: Duration, json: &Path) -> Output {
        let deadline = Instant::now() + within;
        loop {
            let report = self.simctl(&["report", "--json", json.to_str().expect("utf8")]);
            if !text(&report).contains("no finished run") {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "no verdict within {within:?}; status: {}\nlogs in {}",
                text(&self.simctl(&["status"])),
                self.dir.display()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Stop the agents gracefully, then the daemons; what remains in the namespaces.
    fn stop(&mut self) -> Vec<String> {
        for agent in &mut self.agents {
            let _ = agent.signal(nix::sys::signal::Signal::SIGTERM);
        }
        for agent in &mut self.agents {
            assert!(
                agent.wait_timeout(Duration::from_secs(30)).is_some(),
                "an agent did not stop within 30 s of SIGTERM"
            );
        }
        let mut leftovers = Vec::new();
        for host in 1..=self.lab.hosts() {
            let ns = self.lab.host(host);
            let rules = self.lab.iptables_save(ns).expect("iptables-save");
            if rules.contains("PARTI-SIM") {
                leftovers.push(format!("{ns}: iptables chain left:\n{rules}"));
            }
            let qdiscs = self.lab.qdiscs(ns).expect("tc qdisc show");
            if qdiscs.contains("prio") || qdiscs.contains("tbf") || qdiscs.contains("netem") {
                leftovers.push(format!("{ns}: qdisc left:\n{qdiscs}"));
            }
            let pids = self.lab.pids(ns).expect("ip netns pids");
            if !pids.is_empty() {
                leftovers.push(format!("{ns}: processes left: {pids:?}"));
            }
        }
        self.coordinator.take();
        self.nats.take();
        leftovers
    }
}

const LAB_CONFIG: &str = r"
simulation:
  duration: 200s
  mode: coordinator
partitions:
  count: 24
  message_rate_per_partition: 4
  distribution: exponential
  weights:
    exponential:
      extreme_percent: 0.125
      extreme_weight: 10
      normal_weight: 1
producers:
  count: 3
  partitions_per_producer: 8
  rate_variation:
    enabled: false
workers:
  count: 6
  assignment_strategy: WeightedConsistentHash
  processing_delay:
    min: 1ms
    max: 5ms
coordinator:
  validation_window: 40s
chaos:
  enabled: true
  interval: 4-7s
  warmup: 10s
  cooldown: 10s
  events:
    - worker_crash
    - worker_restart
    - scale_up
    - scale_down
    - leader_failure
    - producer_crash
    - worker_pause
    - leader_pause
    - nats_disconnect
    - network_degrade
    - partition_changes
nats:
  mode: external
  url: nats://127.0.0.1:4222
metrics:
  prometheus:
    enabled: false
checkpointing:
  enabled: false
";

/// Whether this machine can build the lab (root, iproute2, namespaces).
fn lab_possible() -> bool {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A finished lab run.
struct LabRun {
    code: Option<i32>,
    report: String,
    json: serde_json::Value,
    /// Kept (not deleted) when the caller's expectation failed.
    dir: Option<tempfile::TempDir>,
}

impl LabRun {
    /// Panic with the report, the leftovers and where the logs were kept.
    fn fail(mut self, why: &str) -> ! {
        let dir = self.dir.take().expect("run directory");
        let _ = std::fs::write(dir.path().join("report.txt"), &self.report);
        let path = dir.keep();
        panic!(
            "{why}\nreport:\n{}\nlogs kept in {}",
            self.report,
            path.display()
        );
    }
}

/// Run `config` on a fresh lab of `hosts` agent hosts (seed `seed`) until its verdict; the
/// lab must be clean afterwards whatever the verdict.
fn run_in_lab(config: &str, hosts: usize, seed: u64) -> LabRun {
    assert!(
        lab_possible(),
        "the namespace lab needs root and iproute2 (scripts/setup.sh installs iproute2)"
    );
    let _one = one_fleet_at_a_time();
    let dir = tempfile::Builder::new()
        .prefix("parti-lab-")
        .tempdir()
        .expect("tempdir");
    let config_path = dir.path().join("run.yaml");
    std::fs::write(&config_path, config).expect("config");
    let mut fleet = Fleet::start(dir.path(), hosts);
    let started = fleet.simctl(&[
        "start",
        "--config",
        config_path.to_str().expect("utf8"),
        "--seed",
        &seed.to_string(),
    ]);
    assert_eq!(started.status.code(), Some(0), "{}", text(&started));
    let json_path = dir.path().join("report.json");
    let report = fleet.wait_for_report(Duration::from_secs(480), &json_path);
    let leftovers = fleet.stop();
    let json = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let run = LabRun {
        code: report.status.code(),
        report: text(&report),
        json,
        dir: Some(dir),
    };
    fleet.lab_teardown();
    if !leftovers.is_empty() {
        run.fail(&format!(
            "the lab was not clean after the run: {leftovers:#?}"
        ));
    }
    run
}

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
    // Network faults really were in place: the agent said what it installed.
    assert!(
        injected.iter().any(|f| f["event"] == "nats_disconnect"
            && f["detail"].as_str().unwrap_or("").contains("DROP all tcp")),
        "no disconnect rules reported:\n{report_text}"
    );
}

impl Fleet {
    fn lab_teardown(self) {
        let Fleet { lab, agents, .. } = self;
        drop(agents);
        lab.teardown().expect("lab teardown");
    }
}

/// A run without scheduled chaos, for faults injected by hand with `simctl chaos`.
const MANUAL_CONFIG: &str = r"
simulation:
  duration: 150s
  mode: coordinator
partitions:
  count: 8
  message_rate_per_partition: 5
producers:
  count: 2
  partitions_per_producer: 4
workers:
  count: 4
  processing_delay:
    min: 1ms
    max: 3ms
coordinator:
  validation_window: 30s
chaos:
  enabled: false
nats:
  mode: external
  url: nats://127.0.0.1:4222
metrics:
  prometheus:
    enabled: false
checkpointing:
  enabled: false
";

fn received(fleet: &Fleet) -> u64 {
    status_number(&text(&fleet.simctl(&["status"])), "received").unwrap_or(0)
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
