//! The lab against real namespaces: faults stay on the host they are applied to, and teardown
//! leaves no namespace and no process behind. Needs root, iproute2, iptables, tc, bash, python3.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::lab::Lab;

const PORT: u16 = 9000;

/// Accepts and closes connections until killed; a listener that outlives one probe.
const LISTENER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// Long enough for a SYN-ACK inside one machine, short enough to keep the DROP probe cheap.
const PROBE: Duration = Duration::from_millis(500);

#[test]
fn faults_stay_on_their_host_and_teardown_is_clean() {
    let lab = Lab::new(2).expect("create lab");
    let names = namespaces_of(&lab);
    assert_eq!(lab.hub_ip().to_string(), "10.77.0.1");
    assert_eq!(lab.host_ip(2).to_string(), "10.77.0.12");

    let mut listener = lab
        .spawn(
            lab.command(lab.hub(), "python3")
                .args(["-c", LISTENER, &lab.hub_ip().to_string(), &PORT.to_string()])
                .stdout(Stdio::null()),
        )
        .expect("spawn listener in the hub");

    // Until the listener is up the probe is refused at once, so polling costs little.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .tcp_reachable(lab.host(1), lab.hub_ip(), PORT, PROBE)
        .expect("probe from host 1")
    {
        assert!(
            listener.wait_timeout(Duration::ZERO).is_none(),
            "listener exited early"
        );
        assert!(Instant::now() < deadline, "host 1 never reached the hub");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reachable(&lab, 2), "host 2 reaches the hub");

    // Drop the hub's replies on host 1 only: its connects time out, as in a partition.
    lab.run(
        lab.host(1),
        "iptables",
        [
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--sport",
            &PORT.to_string(),
            "-j",
            "DROP",
        ],
    )
    .expect("insert DROP rule on host 1");
    let started = Instant::now();
    assert!(!reachable(&lab, 1), "host 1 is cut off by its DROP rule");
    assert!(
        started.elapsed() >= PROBE,
        "host 1's probe should time out, not be refused"
    );
    assert!(reachable(&lab, 2), "host 2 is unaffected by host 1's rule");
    let rules = |i| lab.iptables_save(lab.host(i)).expect("iptables-save");
    assert!(rules(1).contains("--sport 9000 -j DROP"), "{}", rules(1));
    assert!(!rules(2).contains("DROP"), "{}", rules(2));

    // tc (tbf; this kernel has no netem) is per host as well.
    lab.run(
        lab.host(1),
        "tc",
        [
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "32kbit",
            "latency", "400ms",
        ],
    )
    .expect("add tbf on host 1");
    assert!(lab.qdiscs(lab.host(1)).expect("qdiscs").contains("tbf"));
    assert!(!lab.qdiscs(lab.host(2)).expect("qdiscs").contains("tbf"));

    // The listener is still running: teardown has to kill it to come out clean.
    lab.teardown().expect("teardown leaves nothing behind");
    let status = listener
        .wait_timeout(Duration::from_secs(1))
        .expect("listener was killed by teardown");
    assert_eq!(
        status.signal(),
        Some(9),
        "listener died of SIGKILL: {status}"
    );

    let listed = netns_list();
    for name in &names {
        assert!(
            !listed.iter().any(|n| n == name),
            "{name} still exists: {listed:?}"
        );
    }
}

#[test]
fn drop_kills_processes_left_in_the_namespaces() {
    let lab = Lab::new(1).expect("create lab");
    let names = namespaces_of(&lab);
    let host = lab.host(1).to_string();

    // A direct child whose guard the test keeps (drop must not wait for the guard) ...
    let mut sleeper = lab
        .spawn(lab.command(&host, "sleep").arg("1000"))
        .expect("spawn sleep");
    // ... and an orphan, like a worker whose agent died: reparented away from the test.
    let orphan: u32 = lab
        .run(
            &host,
            "bash",
            ["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"],
        )
        .expect("start orphan")
        .trim()
        .parse()
        .expect("orphan pid");
    let in_host = lab.pids(&host).expect("pids");
    assert!(in_host.contains(&sleeper.pid()), "{in_host:?}");
    assert!(in_host.contains(&orphan), "{in_host:?}");
    assert!(alive(orphan));

    drop(lab);

    let status = sleeper
        .wait_timeout(Duration::from_secs(1))
        .expect("sleep was killed when the lab dropped");
    assert_eq!(status.signal(), Some(9), "sleep died of SIGKILL: {status}");
    // Drop waited until no live process was left, so there is nothing to poll for.
    assert!(!alive(orphan), "orphan {orphan} survived the lab");
    let listed = netns_list();
    for name in &names {
        assert!(!listed.iter().any(|n| n == name), "{name} still exists");
    }
}

#[test]
fn too_many_hosts_is_refused_before_creating_anything() {
    let err = Lab::new(1000).expect_err("1000 hosts do not fit the /24");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
}

fn reachable(lab: &Lab, host: usize) -> bool {
    lab.tcp_reachable(lab.host(host), lab.hub_ip(), PORT, PROBE)
        .expect("probe runs")
}

fn namespaces_of(lab: &Lab) -> Vec<String> {
    std::iter::once(lab.hub().to_string())
        .chain((1..=lab.hosts()).map(|i| lab.host(i).to_string()))
        .collect()
}

fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Running, as opposed to gone or a zombie (pid 1 here may not reap orphans).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
