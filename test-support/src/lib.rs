//! Test helpers shared by the workspace's integration tests.
//!
//! Layout:
//! - [`NatsServer`]: a real `nats-server -js` on a free loopback port with a temporary store,
//!   killed on drop; restartable on the same port and store (for outage tests).
//! - [`edited_config`] / [`edit`]: a config of `configs/` with text replaced, refusing an edit
//!   that no longer matches.
//! - [`eventually`]: wait for a condition with a deadline instead of sleeping and hoping
//!   (async); [`wait_until`] / [`wait_for`] / [`wait_for_line`] are the blocking ones.
//! - [`fleet`]: a coordinator daemon and an agent on loopback ([`LocalFleet`]).
//! - [`report`]: reading a run's JSON report in assertions.
//! - [`otlp`]: an OTLP gRPC trace receiver in the test process, keeping what a run sends.
//! - [`prometheus`]: a real Prometheus on loopback scraping targets named at run time, and
//!   its query API.
//! - [`lab`]: a hub and N hosts as network namespaces on a private bridge, so faults (iptables,
//!   tc) hit one host at a time; torn down on drop.
//!
//! The nats-server binary is looked up in `$NATS_SERVER_BIN`, then `<workspace>/.tools/bin/nats-server`
//! (where `scripts/setup.sh` installs the pinned version), then `$PATH`.

pub mod fleet;
pub mod lab;
pub mod otlp;
pub mod prometheus;
pub mod report;

pub use fleet::{LocalFleet, status_number, wait_for, wait_for_line, wait_until};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A binary of this workspace (`agent`, `coordinator`, `simctl`), next to the running test
/// executable's directory (`target/<profile>/`); panics with the fix when it is absent.
///
/// `cargo test` builds only the binaries of the package under test, so tests that start
/// another package's binary rely on `cargo build --workspace --bins` (scripts/test.sh).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} missing: build every binary first (cargo build --workspace --bins), as scripts/test.sh does",
        path.display()
    );
    path
}

/// A daemon (coordinator, agent) a test started: SIGKILLed and reaped when dropped, so a
/// failing test leaves no process behind.
#[derive(Debug)]
pub struct Daemon(pub Child);

impl Daemon {
    /// SIGKILL it now (a crash) and reap it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The workspace's `configs/<name>` with `edits` made (see [`edit`]).
#[track_caller]
pub fn edited_config(name: &str, edits: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    edit(&text, edits)
}

/// `config` with the first occurrence of each `from` replaced by its `to`, in order. Panics
/// naming an edit whose text is not there: the config's layout moved, and a test must never
/// run a config other than the one it means.
#[track_caller]
pub fn edit(config: &str, edits: &[(&str, &str)]) -> String {
    let mut config = config.to_string();
    for (from, to) in edits {
        assert!(
            config.contains(from),
            "the config's layout moved: {from:?} is not in it (update the test)"
        );
        config = config.replacen(from, to, 1);
    }
    config
}

/// `--tls-ca <ca>/ca.pem --tls-cert <certs>/<stem>.pem --tls-key <certs>/<stem>.key`: the
/// flags of a daemon or simctl for certificate `stem` of a lab directory as `simctl certs
/// init` writes it (the CA may come from another lab's directory, to test refusals).
pub fn tls_flags(ca: &Path, certs: &Path, stem: &str) -> Vec<std::ffi::OsString> {
    vec![
        "--tls-ca".into(),
        ca.join("ca.pem").into(),
        "--tls-cert".into(),
        certs.join(format!("{stem}.pem")).into(),
        "--tls-key".into(),
        certs.join(format!("{stem}.key")).into(),
    ]
}

/// The chaos event list of `configs/lab-stress.yaml`, as the file spells it: the text a
/// test replaces (with [`edited_config`]) to run a short cut of the lab profile.
pub const LAB_STRESS_EVENTS: &str = "    - worker_crash\n    - worker_restart\n    - worker_pause\n    \
     - scale_up\n    - scale_down\n    - leader_failure\n    - producer_crash\n    \
     - nats_disconnect\n    - network_degrade\n    - partition_changes\n";

/// Run `simctl --coordinator <endpoint> <args>` to completion.
pub fn simctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("simctl"))
        .arg("--coordinator")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("running simctl")
}

/// A finished command's stdout and stderr, as one text (for assertions and messages).
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A running nats-server with JetStream, owned by a test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
}

/// Where the pinned nats-server is expected; panics with instructions when it is absent.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let local = workspace.join(".tools/bin/nats-server");
    if local.exists() {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    panic!(
        "nats-server not found: run ./scripts/setup.sh (installs the pinned version into .tools/), \
         or set NATS_SERVER_BIN"
    );
}

impl NatsServer {
    /// Start a fresh server on a free port (chosen by the server itself, read from its log).
    pub fn start() -> Self {
        let store = tempfile::Builder::new()
            .prefix("parti-nats-")
            .tempdir()
            .expect("create temp store dir");
        let binary = nats_server_binary();
        let (child, port) = spawn(&binary, store.path(), None);
        Self {
            child: Some(child),
            port,
            store,
            binary,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL the server (as a crash would); the store stays for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port with the same store (after [`NatsServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let (child, port) = spawn(&self.binary, self.store.path(), Some(self.port));
        assert_eq!(port, self.port, "restarted server must keep its port");
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(binary: &Path, store: &Path, port: Option<u16>) -> (Child, u16) {
    let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
    // A port freed by a killed server can stay busy for a moment; retry briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--store_dir"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Keep draining the log after startup so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(port) = listening_port(&line) {
                        let _ = tx.send(Ok(port));
                        sent = true;
                    } else if line.contains("[FTL]") || line.contains("[ERR]") {
                        let _ = tx.send(Err(line));
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(port)) => return (child, port),
            Ok(Err(line)) if Instant::now() < deadline => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("nats-server failed to start ({line}); retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => {
                let _ = child.kill();
                panic!("nats-server did not start: {other:?}");
            }
        }
    }
}

fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split("Listening for client connections on ").nth(1)?;
    rest.trim().rsplit(':').next()?.parse().ok()
}

/// Poll `condition` every 50 ms until it returns true; panic naming `what` after `timeout`.
#[track_caller]
pub fn eventually<F, Fut>(what: &str, timeout: Duration, condition: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let location = std::panic::Location::caller();
    poll_until(what, timeout, condition, location)
}

async fn poll_until<F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
    location: &'static std::panic::Location<'static>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what} (at {location})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
