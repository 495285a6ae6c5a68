//! The lab's Ansible deployment, run for real (issue 12): bare hosts as containers (each with
//! its own filesystem, address and sshd, no project binary), `ansible-playbook site.yml`
//! over SSH, a chaos run with network faults against the deployed fleet over mutual TLS →
//! PASS; the playbook again → nothing changed; `teardown.yml` → nothing left.
//!
//! The containers sit on an internal Docker network this test creates (no route out); the
//! image is built from Debian's packages by `scripts/lab-image.sh` (no registry).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use test_support::{output_text, wait_until};

const HOSTS: [&str; 4] = ["ctl", "host-1", "host-2", "host-3"];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[track_caller]
fn ok(what: &str, output: Output) -> String {
    let text = output_text(&output);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{text}",
        output.status
    );
    text
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

/// The containers and network of one test, removed when dropped (also when it fails).
struct Hosts {
    prefix: String,
    network: String,
    ips: Vec<String>,
}

impl Hosts {
    fn start(image: &str, authorized_key: &str) -> Self {
        let prefix = format!("parti-sim-ansible-{}", std::process::id());
        let network = format!("{prefix}-net");
        let mut hosts = Self {
            prefix,
            network: network.clone(),
            ips: Vec::new(),
        };
        // Internal: the hosts reach each other and this machine, nothing beyond.
        ok(
            "docker network create",
            docker(&["network", "create", "--internal", &network]),
        );
        for host in HOSTS {
            let name = hosts.container(host);
            ok(
                "docker run",
                docker(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--hostname",
                    host,
                    "--network",
                    &network,
                    // iptables and tc for the agent's network faults.
                    "--cap-add",
                    "NET_ADMIN",
                    "-e",
                    &format!("LAB_AUTHORIZED_KEY={authorized_key}"),
                    image,
                ]),
            );
            let ip = ok(
                "docker inspect",
                docker(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    &name,
                ]),
            );
            hosts.ips.push(ip.trim().to_string());
        }
        hosts
    }

    fn container(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn exec(&self, host: &str, script: &str) -> Output {
        docker(&["exec", &self.container(host), "sh", "-c", script])
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in HOSTS {
            let _ = docker(&["rm", "-f", &self.container(host)]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// The inventory of the containers, for service manager `none` (no systemd in them).
fn inventory(hosts: &Hosts, key: &Path, certs: &Path, config: &Path) -> String {
    let ip = |i: usize| hosts.ips[i].clone();
    format!(
        "all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: {key}
    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    parti_sim_service_manager: none
    parti_sim_bin_dir: {bin}
    parti_sim_nats_server_bin: {nats}
    parti_sim_certs_dir: {certs}
    control_configs: [{config}]
  children:
    nats: {{hosts: {{ctl: }}}}
    coordinator: {{hosts: {{ctl: }}}}
    control: {{hosts: {{ctl: }}}}
    agents: {{hosts: {{host-1: , host-2: , host-3: }}}}
  hosts:
    ctl: {{ansible_host: {}}}
    host-1: {{ansible_host: {}}}
    host-2: {{ansible_host: {}}}
    host-3: {{ansible_host: {}}}
",
        ip(0),
        ip(1),
        ip(2),
        ip(3),
        key = key.display(),
        bin = test_support::workspace_binary("simctl")
            .parent()
            .expect("target dir")
            .display(),
        nats = test_support::nats_server_binary().display(),
        certs = certs.display(),
        config = config.display(),
    )
}

fn playbook(inventory: &Path, playbook: &str, extra: &[&str]) -> Output {
    let ansible = workspace().join(".tools/bin/ansible-playbook");
    Command::new(ansible)
        .current_dir(workspace().join("ansible"))
        .args(["-i"])
        .arg(inventory)
        .args(extra)
        .arg(playbook)
        .env("ANSIBLE_FORCE_COLOR", "0")
        .output()
        .expect("ansible-playbook")
}

/// The `changed=N` of every host in a play recap.
fn changed_counts(recap: &str) -> Vec<(String, u64)> {
    recap
        .lines()
        .filter(|line| line.contains(" : ok="))
        .filter_map(|line| {
            let host = line.split_whitespace().next()?.to_string();
            let changed = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("changed="))?
                .parse()
                .ok()?;
            Some((host, changed))
        })
        .collect()
}

/// A short chaos run of the lab profile on the deployed fleet: both network faults and a
/// process fault, each dealt once per round (the schedule is a shuffled deck), at least once
/// in the ~34 s of chaos.
fn short_lab_config() -> String {
    test_support::edited_config(
        "lab-stress.yaml",
        &[
            ("duration: 15m", "duration: 50s"),
            ("count: 96", "count: 24"),
            ("partitions_per_producer: 32", "partitions_per_producer: 8"),
            ("count: 12", "count: 6"),
            ("interval: 20-40s", "interval: 6-8s"),
            ("warmup: 30s", "warmup: 8s"),
            ("cooldown: 30s", "cooldown: 8s"),
            (
                test_support::LAB_STRESS_EVENTS,
                "    - nats_disconnect\n    - network_degrade\n    - worker_crash\n",
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
    )
}

#[test]
fn the_playbook_deploys_a_lab_that_passes_then_changes_nothing_then_leaves_nothing() {
    let built = Command::new(workspace().join("scripts/lab-image.sh"))
        .output()
        .expect("lab-image.sh");
    // The tag is stdout's last line (stderr says what was built, when anything was).
    let stdout = String::from_utf8_lossy(&built.stdout).into_owned();
    ok("scripts/lab-image.sh", built);
    let image = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .expect("lab-image.sh printed no tag")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("id_ed25519");
    ok(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen"),
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let hosts = Hosts::start(&image, public.trim());
    let config = dir.path().join("lab.yaml");
    std::fs::write(&config, short_lab_config()).expect("config");
    let certs = dir.path().join("certs");
    let inventory_path = dir.path().join("inventory.yml");
    std::fs::write(&inventory_path, inventory(&hosts, &key, &certs, &config)).expect("inventory");

    // sshd is up when a host accepts our key (the containers start in parallel).
    wait_until("sshd on every host", Duration::from_secs(60), || {
        for (host, ip) in HOSTS.iter().zip(&hosts.ips) {
            let probe = Command::new("ssh")
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-i"])
                .arg(&key)
                .arg(format!("root@{ip}"))
                .arg("true")
                .output()
                .expect("ssh");
            if !probe.status.success() {
                return Err(format!("{host}: {}", output_text(&probe)));
            }
        }
        Ok(())
    });

    let first = ok("site.yml", playbook(&inventory_path, "site.yml", &[]));
    assert!(
        changed_counts(&first).iter().any(|(_, n)| *n > 0),
        "the first run installs: {first}"
    );

    // The deployed fleet, driven as a user would on the control host: mutual TLS only.
    let simctl = |args: &str| {
        hosts.exec(
            "ctl",
            &format!(". /opt/parti-sim/etc/simctl.env && simctl {args}"),
        )
    };
    wait_until("three agents connected", Duration::from_secs(60), || {
        let agents = output_text(&simctl("agents"));
        (agents.matches(" connected").count() == 3)
            .then_some(())
            .ok_or(agents)
    });
    ok(
        "simctl start",
        simctl("start --config /opt/parti-sim/configs/lab.yaml --seed 5"),
    );
    ok("simctl watch", simctl("watch"));
    let report = simctl("report --json /tmp/report.json");
    let text = output_text(&report);
    assert_eq!(report.status.code(), Some(0), "PASS expected:\n{text}");
    let json = ok("report", hosts.exec("ctl", "cat /tmp/report.json"));
    for fault in ["nats_disconnect", "network_degrade"] {
        assert!(
            json.contains(&format!("\"{fault}\"")),
            "the run must include network faults ({fault}):\n{text}"
        );
    }

    // Idempotent, and --check predicts as much: a deployed lab has nothing to change.
    for extra in [&[][..], &["--check"][..]] {
        let again = ok(
            "site.yml again",
            playbook(&inventory_path, "site.yml", extra),
        );
        let counts = changed_counts(&again);
        assert_eq!(counts.len(), 5, "localhost and four hosts: {again}");
        assert!(
            counts.iter().all(|(_, n)| *n == 0),
            "site.yml {extra:?} must change nothing now: {counts:?}\n{again}"
        );
    }

    // Teardown leaves no process, file or iptables chain.
    ok(
        "teardown.yml",
        playbook(&inventory_path, "teardown.yml", &[]),
    );
    for host in HOSTS {
        let left = hosts.exec(
            host,
            "ps -eo args | grep -E '/opt/parti-sim/bin/' | grep -v grep; \
             ls -d /opt/parti-sim /var/lib/parti-sim /var/log/parti-sim 2>/dev/null; \
             iptables -w -S PARTI-SIM 2>/dev/null",
        );
        assert_eq!(
            String::from_utf8_lossy(&left.stdout).trim(),
            "",
            "{host} still holds parti-sim"
        );
    }
}
