//! Network faults on this agent's host: iptables rules in a dedicated chain and tc qdiscs,
//! touching only traffic to and from the NATS endpoints.
//!
//! Crash safety is the point of the design:
//! - every rule lives in one chain, [`CHAIN`], reached by one jump from `INPUT` and one from
//!   `OUTPUT`; removing the jumps and the chain removes the fault, whatever was in it;
//! - the devices that got a qdisc are written to a state file before the qdisc is added;
//! - [`NetworkFaults::clean_up`] runs when the agent starts, when a fault heals and when the
//!   agent stops, so an agent killed with SIGKILL leaves nothing behind once it restarts;
//! - the time limit is enforced here, by the agent, not by the coordinator: a fault outlives
//!   its `duration_ms` only as long as the agent process itself is frozen.
//!
//! One agent per network namespace (host) is assumed: two agents in one namespace would
//! share the chain.
//!
//! Delay needs the `netem` qdisc, which some kernels (these machines' among them) lack; its
//! absence is detected and reported in the fault's detail instead of failing the fault.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::{
    NetworkFault, NetworkFaultKind, NetworkFaultPhase, NetworkFaultReport, Report, report,
};
use tokio::process::Command;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::journal::OwnReports;

/// The dedicated iptables chain (one per host).
pub const CHAIN: &str = "PARTI-SIM";

/// Why a network fault could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum NetFaultError {
    /// A command could not be run or failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not start.
        detail: String,
    },
    /// An endpoint is not `host:port` or does not resolve.
    #[error("NATS endpoint {0:?} is not a resolvable host:port")]
    Endpoint(String),
}

/// Applies and heals this host's network faults.
#[derive(Debug, Clone)]
pub struct NetworkFaults {
    inner: Arc<Mutex<Inner>>,
    state_file: PathBuf,
    reports: OwnReports,
}

#[derive(Debug, Default)]
struct Inner {
    /// The fault in place, and the task that heals it when its time is up.
    active: Option<(u64, JoinHandle<()>)>,
}

async fn run(program: &str, args: &[&str]) -> Result<String, NetFaultError> {
    let command = format!("{program} {}", args.join(" "));
    debug!(%command, "network fault command");
    let output = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|error| NetFaultError::Command {
            command: command.clone(),
            detail: error.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetFaultError::Command {
            command,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// `iptables` for IPv4 endpoints, `ip6tables` for IPv6 ones.
fn iptables_for(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    }
}

/// A command for [`NetworkFaults::executor`].
#[derive(Debug)]
pub enum NetworkCommand {
    /// Apply a fault.
    Apply(NetworkFault),
    /// Heal now.
    Heal,
}

impl NetworkFaults {
    /// A task that executes commands one at a time, in the order the coordinator sent them
    /// (a heal sent after a fault must not overtake it), without blocking the session.
    pub fn executor(&self) -> mpsc::UnboundedSender<NetworkCommand> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(command) = rx.recv().await {
                match command {
                    NetworkCommand::Apply(fault) => this.apply(fault).await,
                    NetworkCommand::Heal => this.heal().await,
                }
            }
        });
        tx
    }

    /// Faults for this host; `state_file` remembers shaped devices across agent crashes.
    pub fn new(state_file: PathBuf, reports: OwnReports) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            state_file,
            reports,
        }
    }

    /// Remove every trace of a network fault: jumps, chain, qdiscs listed in the state file.
    /// Idempotent; missing tools or a missing chain are not errors.
    pub async fn clean_up(&self) {
        for program in ["iptables", "ip6tables"] {
            for hook in ["INPUT", "OUTPUT"] {
                // A crashed agent may have left more than one jump.
                for _ in 0..16 {
                    if run(program, &["-w", "-D", hook, "-j", CHAIN])
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            let _ = run(program, &["-w", "-F", CHAIN]).await;
            let _ = run(program, &["-w", "-X", CHAIN]).await;
        }
        if let Ok(devices) = tokio::fs::read_to_string(&self.state_file).await {
            for device in devices.lines().filter(|d| !d.is_empty()) {
                if let Err(error) = run("tc", &["qdisc", "del", "dev", device, "root"]).await {
                    debug!(%error, device, "no qdisc to remove");
                }
            }
            let _ = tokio::fs::remove_file(&self.state_file).await;
        }
    }

    /// Heal the fault in place now, if any, and report it healed.
    pub async fn heal(&self) {
        let active = self.inner.lock().await.active.take();
        if let Some((id, timer)) = active {
            timer.abort();
            self.clean_up().await;
            info!(id, "network fault healed on request");
            self.report(id, NetworkFaultPhase::Healed, "healed on request".into())
                .await;
        }
    }

    /// Apply `fault` (replacing any fault in place) and schedule its healing.
    pub async fn apply(&self, fault: NetworkFault) {
        let mut inner = self.inner.lock().await;
        if let Some((_, timer)) = inner.active.take() {
            timer.abort();
        }
        self.clean_up().await;
        let id = fault.id;
        match self.install(&fault).await {
            Ok(detail) => {
                info!(id, %detail, duration_ms = fault.duration_ms, "network fault applied");
                self.report(id, NetworkFaultPhase::Applied, detail).await;
                let this = self.clone();
                let duration = Duration::from_millis(fault.duration_ms);
                let timer = tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    let mut inner = this.inner.lock().await;
                    if inner
                        .active
                        .as_ref()
                        .is_some_and(|(active, _)| *active == id)
                    {
                        inner.active = None;
                        this.clean_up().await;
                        info!(id, "network fault healed: time limit reached");
                        this.report(id, NetworkFaultPhase::Healed, "time limit reached".into())
                            .await;
                    }
                });
                inner.active = Some((id, timer));
            }
            Err(error) => {
                // Half-applied rules must not stay.
                self.clean_up().await;
                warn!(id, %error, "network fault not applied");
                self.report(id, NetworkFaultPhase::Failed, error.to_string())
                    .await;
            }
        }
    }

    async fn report(&self, id: u64, phase: NetworkFaultPhase, detail: String) {
        let report = Report {
            body: Some(report::Body::Network(NetworkFaultReport {
                id,
                phase: phase as i32,
                detail,
            })),
            // The host's, not a child's: applied to the current run.
            run_id: String::new(),
            ..Report::default()
        };
        let _ = self.reports.send(report).await;
    }

    /// Install the rules; returns a description of what is in place.
    async fn install(&self, fault: &NetworkFault) -> Result<String, NetFaultError> {
        let endpoints = resolve(&fault.nats_endpoints).await?;
        let kind = NetworkFaultKind::try_from(fault.kind).unwrap_or_default();
        let probability = match kind {
            NetworkFaultKind::Disconnect => None,
            NetworkFaultKind::Degrade => Some(fault.loss_probability.clamp(0.0, 0.99)),
            NetworkFaultKind::Unspecified => {
                return Err(NetFaultError::Command {
                    command: "network fault".into(),
                    detail: "unspecified kind".into(),
                });
            }
        };
        let mut detail = Vec::new();
        let mut chains_made = Vec::new();
        for endpoint in &endpoints {
            let program = iptables_for(endpoint.ip());
            if !chains_made.contains(&program) {
                run(program, &["-w", "-N", CHAIN]).await?;
                run(program, &["-w", "-I", "INPUT", "1", "-j", CHAIN]).await?;
                run(program, &["-w", "-I", "OUTPUT", "1", "-j", CHAIN]).await?;
                chains_made.push(program);
            }
            let ip = endpoint.ip().to_string();
            let port = endpoint.port().to_string();
            let matches = |direction: [&'static str; 2]| {
                let mut args: Vec<String> = vec!["-w".into(), "-A".into(), CHAIN.into()];
                args.extend(
                    [
                        direction[0],
                        ip.as_str(),
                        "-p",
                        "tcp",
                        direction[1],
                        port.as_str(),
                        "-m",
                        "comment",
                        "--comment",
                        "parti-sim network fault",
                    ]
                    .map(String::from),
                );
                if let Some(p) = probability {
                    args.extend(
                        ["-m", "statistic", "--mode", "random", "--probability"].map(String::from),
                    );
                    args.push(format!("{p:.3}"));
                }
                args.extend(["-j", "DROP"].map(String::from));
                args
            };
            // Outgoing to the server, and incoming from it.
            for args in [matches(["-d", "--dport"]), matches(["-s", "--sport"])] {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run(program, &args).await?;
            }
        }
        let targets: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        match probability {
            None => detail.push(format!("DROP all tcp to/from {}", targets.join(", "))),
            Some(p) => detail.push(format!(
                "DROP {:.0}% of tcp to/from {}",
                p * 100.0,
                targets.join(", ")
            )),
        }
        if kind == NetworkFaultKind::Degrade && (fault.rate_kbit > 0 || fault.delay_ms > 0) {
            detail.push(self.shape(&endpoints, fault).await?);
        }
        Ok(detail.join("; "))
    }

    /// Bandwidth cap (tbf) and delay (netem, if present) on the traffic towards NATS only: an
    /// htb root that sends the NATS destinations (u32 filter) to a class whose leaf is the
    /// tbf. (htb rather than prio: the kernels of these machines have htb and tbf, not prio.)
    async fn shape(
        &self,
        endpoints: &[SocketAddr],
        fault: &NetworkFault,
    ) -> Result<String, NetFaultError> {
        let mut devices: Vec<String> = Vec::new();
        for endpoint in endpoints {
            let route = run("ip", &["route", "get", &endpoint.ip().to_string()]).await?;
            let device = route
                .split_whitespace()
                .skip_while(|word| *word != "dev")
                .nth(1)
                .map(str::to_string)
                .ok_or_else(|| NetFaultError::Command {
                    command: format!("ip route get {}", endpoint.ip()),
                    detail: format!("no device in {route:?}"),
                })?;
            if !devices.contains(&device) {
                devices.push(device);
            }
        }
        // Written first: a crash between here and the qdisc leaves at most a harmless delete.
        tokio::fs::write(&self.state_file, devices.join("\n"))
            .await
            .map_err(|error| NetFaultError::Command {
                command: format!("write {}", self.state_file.display()),
                detail: error.to_string(),
            })?;
        let mut notes = Vec::new();
        for device in &devices {
            // `DEV` in an argument list stands for this device.
            let tc = |args: &[&str]| {
                let device = device.clone();
                let args: Vec<String> = args
                    .iter()
                    .map(|a| {
                        if *a == "DEV" {
                            device.clone()
                        } else {
                            (*a).to_string()
                        }
                    })
                    .collect();
                async move {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    run("tc", &args).await
                }
            };
            // htb only classifies here: everything goes to 1:10 unshaped, except what the
            // filters send to 1:20, whose leaf qdiscs impose the cap (tbf) and the delay.
            tc(&[
                "qdisc", "add", "dev", "DEV", "root", "handle", "1:", "htb", "default", "10",
            ])
            .await?;
            for class in ["1:10", "1:20"] {
                tc(&[
                    "class", "add", "dev", "DEV", "parent", "1:", "classid", class, "htb", "rate",
                    "10gbit", "quantum", "1514",
                ])
                .await?;
            }
            let mut parent = "1:20".to_string();
            if fault.rate_kbit > 0 {
                let rate = format!("{}kbit", fault.rate_kbit);
                tc(&[
                    "qdisc", "add", "dev", "DEV", "parent", &parent, "handle", "20:", "tbf",
                    "rate", &rate, "burst", "16kbit", "latency", "400ms",
                ])
                .await?;
                parent = "20:1".into();
                notes.push(format!("tbf rate {rate} on {device}"));
            }
            if fault.delay_ms > 0 {
                let delay = format!("{}ms", fault.delay_ms);
                match tc(&[
                    "qdisc", "add", "dev", "DEV", "parent", &parent, "handle", "21:", "netem",
                    "delay", &delay,
                ])
                .await
                {
                    Ok(_) => notes.push(format!("netem delay {delay} on {device}")),
                    Err(error) => notes.push(format!(
                        "delay not applied: netem is not available on this kernel ({error})"
                    )),
                }
            }
            for endpoint in endpoints.iter().filter(|e| e.is_ipv4()) {
                let ip = format!("{}/32", endpoint.ip());
                let port = endpoint.port().to_string();
                tc(&[
                    "filter", "add", "dev", "DEV", "parent", "1:", "protocol", "ip", "prio", "1",
                    "u32", "match", "ip", "dst", &ip, "match", "ip", "dport", &port, "0xffff",
                    "flowid", "1:20",
                ])
                .await?;
            }
        }
        Ok(notes.join("; "))
    }
}

/// `host:port` strings to socket addresses (a host name may give several).
async fn resolve(endpoints: &[String]) -> Result<Vec<SocketAddr>, NetFaultError> {
    let mut out = Vec::new();
    for endpoint in endpoints {
        let addresses = tokio::net::lookup_host(endpoint.as_str())
            .await
            .map_err(|_| NetFaultError::Endpoint(endpoint.clone()))?;
        for address in addresses {
            if !out.contains(&address) {
                out.push(address);
            }
        }
    }
    if out.is_empty() {
        return Err(NetFaultError::Endpoint(endpoints.join(",")));
    }
    Ok(out)
}
