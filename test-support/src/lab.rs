//! A network-namespace lab: one "hub" and N "hosts" on a private bridge, for tests that need
//! real, separately faultable machines without touching the machine the tests run on.
//!
//! Why namespaces: the agent applies faults with iptables and tc. Run on loopback, a DROP rule
//! would hit every agent (and the test itself) at once; in a namespace per host it hits only
//! that host, so a test can partition one host while the others keep talking to the hub.
//!
//! Address plan (identical in every lab; labs never see each other, so parallel labs may reuse
//! it):
//! - `<prefix>-hub`: bridge `br0` with `10.77.0.1/24` — run nats-server and the coordinator here.
//! - `<prefix>-hI` (I = 1..=N): `eth0` with `10.77.0.(10+I)/24`, the peer of `vhI` in the hub,
//!   which is a port of `br0`.
//!
//! `<prefix>` is `ps<pid>n<counter>`, unique per lab within a test process, and short because
//! namespace names show up in every `ip` command line.
//!
//! The rule the lab keeps: all traffic stays on loopback or inside namespaces the lab created.
//! The veth pairs are created from inside the hub, so neither end ever exists in the root
//! namespace, and no route, interface or firewall rule of the root namespace is touched. Helpers
//! that take a namespace name panic when it is not one of the lab's.
//!
//! Teardown (on drop, also while a test unwinds from a panic, or explicitly with
//! [`Lab::teardown`] to assert that it was clean): SIGKILL every process in every lab namespace
//! until none is left, then delete the namespaces, which destroys their veths, bridge, iptables
//! rules and qdiscs with them.

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The hub's address on the lab bridge.
const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Host I gets `10.77.0.(HOST_IP_BASE + I)`.
const HOST_IP_BASE: u8 = 10;
/// Keeps host addresses inside the /24 (and below the broadcast address).
const MAX_HOSTS: usize = 200;
/// How long teardown keeps killing before it reports the processes that would not die.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// Poll interval for processes to exit; short, because teardown runs once per test.
const POLL: Duration = Duration::from_millis(10);

/// Makes prefixes unique among the labs of one test process (tests run in parallel threads).
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One hub namespace and N host namespaces on a bridge; torn down on drop.
#[derive(Debug)]
pub struct Lab {
    hub: String,
    hosts: Vec<String>,
    /// Namespaces that exist and are ours to delete, in creation order. Filled while building,
    /// so a failed [`Lab::new`] cleans up exactly what it made.
    created: Vec<String>,
}

// === impl Lab ===

impl Lab {
    /// Create the hub and `hosts` host namespaces, wired and up. On failure everything created so
    /// far is removed and the error names the failing command and its stderr.
    pub fn new(hosts: usize) -> io::Result<Lab> {
        if hosts > MAX_HOSTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a lab holds at most {MAX_HOSTS} hosts, asked for {hosts}"),
            ));
        }
        reap_stale_labs();
        let prefix = format!(
            "ps{}n{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            hub: format!("{prefix}-hub"),
            hosts: (1..=hosts).map(|i| format!("{prefix}-h{i}")).collect(),
            created: Vec::new(),
        };
        // On error `lab` is dropped here, which tears down whatever `build` got to.
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> io::Result<()> {
        let hub = self.hub.clone();
        self.create_namespace(&hub)?;
        let hub_cidr = format!("{HUB_IP}/24");
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", &hub_cidr, "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;

        for i in 1..=self.hosts.len() {
            let host = self.hosts[i - 1].clone();
            self.create_namespace(&host)?;
            let hub_end = format!("vh{i}");
            let host_cidr = format!("{}/24", self.host_ip(i));
            // Created from inside the hub with the peer moved straight into the host, so no end
            // of the pair ever appears in the root namespace.
            ip(&[
                "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &host,
            ])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0", "up"])?;
            ip(&["-n", &host, "addr", "add", &host_cidr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Create `name` with `lo` up, first removing a namespace of the same name left by a crashed
    /// run (names carry the pid, so only a reused pid can collide).
    fn create_namespace(&mut self, name: &str) -> io::Result<()> {
        if namespace_exists(name)? {
            let mut problems = Vec::new();
            let pids = kill_all_in(&[name.to_string()], &mut problems);
            ip(&["netns", "del", name]).map_err(|e| {
                io::Error::other(format!(
                    "stale namespace {name} (pids {pids:?}) could not be removed: {e}; {problems:?}"
                ))
            })?;
        }
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The hub's address, `10.77.0.1`.
    pub fn hub_ip(&self) -> Ipv4Addr {
        HUB_IP
    }

    /// Host `i`'s address (1-based), `10.77.0.(10+i)`. Panics when there is no host `i`.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        self.check_host(i);
        let last = HOST_IP_BASE + u8::try_from(i).expect("host index is at most MAX_HOSTS");
        Ipv4Addr::new(10, 77, 0, last)
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Host `i`'s namespace name (1-based). Panics when there is no host `i`.
    pub fn host(&self, i: usize) -> &str {
        self.check_host(i);
        &self.hosts[i - 1]
    }

    /// How many hosts the lab has.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// `ip netns exec <ns> <program>`; the caller adds arguments and stdio. `ip` execs the
    /// program without forking, so the spawned child's pid is the program's own pid.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        self.check_namespace(ns);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }

    /// Spawn `command` (normally from [`Lab::command`]) under a guard that SIGKILLs it on drop.
    pub fn spawn(&self, command: &mut Command) -> io::Result<LabProcess> {
        let child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {}: {e}", describe(command))))?;
        Ok(LabProcess {
            child,
            status: None,
        })
    }

    /// Run `program args..` in `ns` to completion; its stdout, or an error naming the command and
    /// its stderr when it fails (e.g. for `iptables -I ...` in a test).
    pub fn run<I, S>(&self, ns: &str, program: &str, args: I) -> io::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(ns, program);
        command.args(args);
        output_of(&mut command)
    }

    /// The pids of all live processes in `ns` (zombies are not listed).
    pub fn pids(&self, ns: &str) -> io::Result<Vec<u32>> {
        self.check_namespace(ns);
        namespace_pids(ns)
    }

    /// `iptables-save` inside `ns`: the firewall state a fault left behind.
    pub fn iptables_save(&self, ns: &str) -> io::Result<String> {
        self.run(ns, "iptables-save", std::iter::empty::<&str>())
    }

    /// `tc qdisc show` inside `ns`: the traffic-control state a fault left behind.
    pub fn qdiscs(&self, ns: &str) -> io::Result<String> {
        self.run(ns, "tc", ["qdisc", "show"])
    }

    /// Whether a TCP connection from `from_ns` to `ip:port` is established within `timeout`.
    ///
    /// `Ok(false)` means refused, unreachable or timed out (a DROP rule shows up as a timeout);
    /// `Err` means the probe itself could not run, so a test asserting "unreachable" cannot pass
    /// by accident. Uses bash's `/dev/tcp`, so no ping or nc is needed.
    pub fn tcp_reachable(
        &self,
        from_ns: &str,
        ip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> io::Result<bool> {
        let mut command = self.command(from_ns, "bash");
        command
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let what = describe(&command);
        let mut probe = self.spawn(&mut command)?;
        let Some(status) = probe.wait_timeout(timeout) else {
            return Ok(false);
        };
        // bash exits 1 when the redirection fails; anything else (ip's 255 for a missing
        // namespace, 127 for a missing bash) is a broken probe, not an answer.
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => {
                let mut stderr = String::new();
                if let Some(mut pipe) = probe.take_stderr() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                Err(io::Error::other(format!(
                    "`{what}` exited with {status}: {}",
                    stderr.trim()
                )))
            }
        }
    }

    /// Tear down now and report what would not go: processes that survived SIGKILL until the
    /// deadline, namespaces that could not be deleted. `Ok` means the lab left nothing behind.
    pub fn teardown(mut self) -> Result<(), String> {
        let problems = self.shutdown();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Kill everything in the lab's namespaces, then delete them. Idempotent: `created` is
    /// drained, so the drop after [`Lab::teardown`] has nothing left to do.
    fn shutdown(&mut self) -> Vec<String> {
        let namespaces = std::mem::take(&mut self.created);
        if namespaces.is_empty() {
            return Vec::new();
        }
        let mut problems = Vec::new();
        kill_all_in(&namespaces, &mut problems);
        // Hosts first: deleting a host takes its veth peer in the hub with it.
        for ns in namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                problems.push(format!("namespace {ns} not deleted: {e}"));
            }
        }
        problems
    }

    #[track_caller]
    fn check_host(&self, i: usize) {
        assert!(
            (1..=self.hosts.len()).contains(&i),
            "host index {i} out of range: this lab has hosts 1..={}",
            self.hosts.len()
        );
    }

    /// Keeps tests inside their own namespaces (the lab's rule), catching typos early.
    #[track_caller]
    fn check_namespace(&self, ns: &str) {
        assert!(
            ns == self.hub || self.hosts.iter().any(|h| h == ns),
            "namespace {ns:?} is not part of this lab ({}, {:?})",
            self.hub,
            self.hosts
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let problems = self.shutdown();
        if !problems.is_empty() {
            // Cannot fail a test from drop (it may already be unwinding); say what leaked.
            eprintln!("lab teardown incomplete: {}", problems.join("; "));
        }
    }
}

// === impl LabProcess ===

/// A process spawned into the lab; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct LabProcess {
    child: Child,
    /// Set once reaped: after that the pid may belong to someone else and must not be signalled.
    status: Option<ExitStatus>,
}

impl LabProcess {
    /// The process id (the program's own: `ip netns exec` does not fork).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` (e.g. SIGSTOP/SIGCONT to freeze a daemon, SIGTERM for a clean stop).
    /// Fails with ESRCH once the process has been reaped, rather than hit a reused pid.
    pub fn signal(&mut self, signal: Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Err(io::Error::from(nix::errno::Errno::ESRCH));
        }
        kill(to_pid(self.pid())?, signal).map_err(io::Error::from)
    }

    /// Wait up to `timeout` for the process to exit; `None` if it is still running. A failing
    /// `waitpid` counts as "not exited", which a caller asserting an exit will notice.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The child's stdout, if the command was given `Stdio::piped()` (taken once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stderr, if the command was given `Stdio::piped()` (taken once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// === namespace plumbing ===

/// Run `ip args..`; its stdout, or an error naming the command and its stderr.
fn ip(args: &[&str]) -> io::Result<String> {
    let mut command = Command::new("ip");
    command.args(args);
    output_of(&mut command)
}

fn output_of(command: &mut Command) -> io::Result<String> {
    let what = describe(command);
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("`{what}` could not run: {e}")))?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{what}` failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        )))
    }
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Remove the labs of test processes that are gone (killed before their Drop could run):
/// namespaces named `ps<pid>n<k>-...` whose `<pid>` no longer exists. Best effort.
fn reap_stale_labs() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    let stale: Vec<String> = list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix("ps")
                .and_then(|rest| rest.split_once('n'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(str::to_string)
        .collect();
    if stale.is_empty() {
        return;
    }
    let mut problems = Vec::new();
    kill_all_in(&stale, &mut problems);
    for ns in stale.iter().rev() {
        let _ = ip(&["netns", "del", ns]);
    }
}

fn namespace_exists(name: &str) -> io::Result<bool> {
    // `ip netns list` prints "name" or "name (id: N)" per line.
    Ok(ip(&["netns", "list"])?
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name)))
}

fn namespace_pids(ns: &str) -> io::Result<Vec<u32>> {
    ip(&["netns", "pids", ns])?
        .split_whitespace()
        .map(|pid| {
            pid.parse()
                .map_err(|e| io::Error::other(format!("`ip netns pids {ns}` printed {pid:?}: {e}")))
        })
        .collect()
}

/// SIGKILL every process in `namespaces` until none is left or the deadline passes (a daemon
/// may fork while we kill, so one pass is not enough). Returns every pid it signalled; what is
/// still alive at the deadline goes into `problems`.
///
/// Killed children of the test process linger as zombies until their guard reaps them; `ip
/// netns pids` does not list zombies, so they do not hold up the loop. The pid-reuse window
/// between listing and killing is a few milliseconds on a test machine; accepted.
fn kill_all_in(namespaces: &[String], problems: &mut Vec<String>) -> Vec<u32> {
    let me = std::process::id();
    let deadline = Instant::now() + KILL_DEADLINE;
    let mut listable: Vec<&String> = namespaces.iter().collect();
    let mut signalled = Vec::new();
    loop {
        let mut alive = Vec::new();
        listable.retain(|ns| match namespace_pids(ns) {
            // Never ourselves or init, whatever a confused namespace reports.
            Ok(pids) => {
                alive.extend(pids.into_iter().filter(|&pid| pid != me && pid != 1));
                true
            }
            Err(e) => {
                problems.push(format!("cannot list processes in {ns}: {e}"));
                false
            }
        });
        if alive.is_empty() {
            return signalled;
        }
        if Instant::now() >= deadline {
            problems.push(format!(
                "processes still alive after SIGKILL for {KILL_DEADLINE:?}: {alive:?}"
            ));
            return signalled;
        }
        for pid in alive {
            if let Ok(target) = to_pid(pid) {
                // ESRCH just means it exited between listing and killing.
                let _ = kill(target, Signal::SIGKILL);
                if !signalled.contains(&pid) {
                    signalled.push(pid);
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

fn to_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid).map(Pid::from_raw).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pid {pid} out of range"),
        )
    })
}
