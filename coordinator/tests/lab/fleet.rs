//! The lab's fleet: nats-server and the coordinator in the hub namespace, one agent per host
//! namespace; running a config to its verdict on a fresh lab; the configs the tests share.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use test_support::lab::{Lab, LabProcess};
use test_support::{status_number, wait_until};

pub(crate) fn bin(name: &str) -> PathBuf {
    test_support::workspace_binary(name)
}

pub(crate) fn text(output: &Output) -> String {
    test_support::output_text(output)
}

/// The host whose clock is off in the lab, and by how much (milliseconds; the test aid
/// `PARTI_SIM_TEST_CLOCK_SHIFT_MS` of `agent/src/report.rs`): every lab run has one host
/// 300 ms ahead, and must still pass (its defect runs still fail). Once, before the
/// ownership check tolerated each time's clock error, the link-cut run failed with a false
/// violation: a first processing right after its grant, moved before it by the correction's
/// error (half a probe's round trip, larger under start-up load).
pub(crate) const SKEWED_HOST: usize = 2;
pub(crate) const SKEW_MS: i64 = 300;

/// The lab's certificates (`simctl certs init`'s layout): the fleet talks mutual TLS, as a
/// real lab does across hosts.
pub(crate) fn certs(dir: &Path) -> PathBuf {
    dir.join("certs")
}

/// `--tls-ca`, `--tls-cert`, `--tls-key` for the certificate `stem` of the lab in `dir`.
pub(crate) fn tls_flags(dir: &Path, stem: &str) -> Vec<std::ffi::OsString> {
    test_support::tls_flags(&certs(dir), &certs(dir), stem)
}

/// An agent daemon in host namespace `host`, logging to `<dir>/agent-<host>.log` (appended:
/// a restarted agent keeps the earlier log). Host [`SKEWED_HOST`]'s clock is [`SKEW_MS`]
/// ahead.
pub(crate) fn spawn_agent(lab: &Lab, dir: &Path, endpoint: &str, host: usize) -> LabProcess {
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
            .args(tls_flags(dir, &format!("agent-host-{host}")))
            .env(
                "PARTI_SIM_TEST_CLOCK_SHIFT_MS",
                if host == SKEWED_HOST {
                    SKEW_MS.to_string()
                } else {
                    "0".to_string()
                },
            )
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("agent")
}

/// The running lab: namespaces, daemons, and where their logs go.
pub(crate) struct Fleet {
    pub(crate) lab: Lab,
    pub(crate) endpoint: String,
    pub(crate) dir: PathBuf,
    pub(crate) nats: Option<LabProcess>,
    pub(crate) coordinator: Option<LabProcess>,
    pub(crate) agents: Vec<LabProcess>,
}

/// Each test runs a whole fleet; on two cores, two at once starve each other. One at a time.
pub(crate) fn one_fleet_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLEET
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Fleet {
    pub(crate) fn start(dir: &Path, hosts: usize) -> Self {
        let lab = Lab::new(hosts).expect("creating the namespace lab");
        let hub_ip = lab.hub_ip().to_string();
        let agent_names: Vec<String> = (1..=hosts).map(|h| format!("host-{h}")).collect();
        fleet_tls::issue::init(&certs(dir), std::slice::from_ref(&hub_ip), &agent_names, 1)
            .expect("the lab's certificates");
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
                    .args(tls_flags(dir, "coordinator"))
                    .stdout(Stdio::null())
                    .stderr(log("coordinator.log")),
            )
            .expect("coordinator");
        let endpoint = format!("https://{hub_ip}:7400");
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

    pub(crate) fn simctl(&self, args: &[&str]) -> Output {
        self.lab
            .command(self.lab.hub(), bin("simctl"))
            .arg("--coordinator")
            .arg(&self.endpoint)
            .args(tls_flags(&self.dir, "control"))
            .args(args)
            .output()
            .expect("simctl")
    }

    pub(crate) fn wait_for_agents(&self, count: usize) {
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
    pub(crate) fn wait_for_report(&self, within: Duration, json: &Path) -> Output {
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
    pub(crate) fn stop(&mut self) -> Vec<String> {
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

pub(crate) const LAB_CONFIG: &str = r"
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
pub(crate) fn lab_possible() -> bool {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A finished lab run.
pub(crate) struct LabRun {
    pub(crate) code: Option<i32>,
    pub(crate) report: String,
    pub(crate) json: serde_json::Value,
    /// Kept (not deleted) when the caller's expectation failed.
    pub(crate) dir: Option<tempfile::TempDir>,
}

impl LabRun {
    /// Panic with the report, the leftovers and where the logs were kept.
    pub(crate) fn fail(mut self, why: &str) -> ! {
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
pub(crate) fn run_in_lab(config: &str, hosts: usize, seed: u64) -> LabRun {
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

impl Fleet {
    pub(crate) fn lab_teardown(self) {
        let Fleet { lab, agents, .. } = self;
        drop(agents);
        lab.teardown().expect("lab teardown");
    }
}

/// A run without scheduled chaos, for faults injected by hand with `simctl chaos`.
pub(crate) const MANUAL_CONFIG: &str = r"
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

pub(crate) fn received(fleet: &Fleet) -> u64 {
    status_number(&text(&fleet.simctl(&["status"])), "received").unwrap_or(0)
}
