//! Forks producer and worker children from the agent's own binary and watches them.
//!
//! The agent runs only its own binary (hidden `child` subcommands), never a command it was
//! sent. Each child's stdout and stderr go to `<log_dir>/<process>.log`; its reports come
//! over the report socket. Children die with the agent: each sets a parent-death signal at
//! start (see `child_guard`).

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto::v1::{
    ChildLog, ProcessExited, ProcessKind, ProcessStarted, Report, SignalResult, Spawn, report,
    spawn,
};
use tokio::sync::Mutex;

use crate::journal::{JOURNAL_ENV, Journals, OwnReports, TEST_UNJOURNALED_ENV};
use crate::links::Links;
use crate::report::{PROCESS_ENV, SOCKET_ENV, SPEC_ENV};

/// Environment variable a child reads to verify its parent (see `child_guard`).
pub const PARENT_ENV: &str = "PARTI_SIM_PARENT_PID";

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The spawn message had no spec.
    #[error("spawn of {0} has no spec")]
    NoSpec(String),
    /// The slot is already running.
    #[error("{0} is already running")]
    Running(String),
    /// No such process.
    #[error("no running process {0}")]
    Unknown(String),
    /// OS failure.
    #[error("{action} {process}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Which process.
        process: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The signal could not be delivered.
    #[error("signal {process}: {source}")]
    Signal {
        /// Which process.
        process: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
}

#[derive(Debug)]
struct Running {
    pid: u32,
    /// The run it was started for.
    run_id: String,
    /// It exited and was reaped; its exit is not reported yet (its last reports first).
    /// Its pid may belong to another process by now: never signalled.
    reaped: bool,
}

/// How long the children of another run get to stop (SIGTERM) before they are killed, when
/// a child of a new run is about to start.
const OTHER_RUN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The children of this agent.
#[derive(Debug, Clone)]
pub struct Supervisor {
    binary: PathBuf,
    log_dir: PathBuf,
    socket: PathBuf,
    running: Arc<Mutex<HashMap<String, Running>>>,
    events: OwnReports,
    links: Links,
    /// Where children journal their reports; `None`: they keep none (tests).
    journals: Option<Journals>,
}

impl Supervisor {
    /// Children are `binary child <kind>`, each journaling into `journals`; lifecycle events
    /// go to `events`, a child's exit after the reports its connection (matched through
    /// `links`) carried.
    pub fn new(
        binary: PathBuf,
        log_dir: PathBuf,
        socket: PathBuf,
        events: OwnReports,
        links: Links,
        journals: Option<Journals>,
    ) -> Self {
        Self {
            binary,
            log_dir,
            socket,
            running: Arc::default(),
            events,
            links,
            journals,
        }
    }

    /// Send the last `max_bytes` of every child log in the log directory as [`ChildLog`]
    /// reports (the coordinator keeps them with a failed run). Unreadable logs are skipped.
    pub async fn collect_logs(&self, max_bytes: u64) {
        let Ok(entries) = std::fs::read_dir(&self.log_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some(process) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .map(str::to_string)
            else {
                continue;
            };
            let Ok((tail, truncated)) = read_tail(&path, max_bytes) else {
                continue;
            };
            let report = Report {
                body: Some(report::Body::ChildLog(ChildLog {
                    process,
                    tail,
                    truncated,
                })),
                // A slot's log spans its runs; the coordinator saves it for the run that
                // asked.
                run_id: String::new(),
                ..Report::default()
            };
            if self.events.send(report).await.is_err() {
                return;
            }
        }
    }

    /// Start the process a spawn command describes.
    pub async fn spawn(&self, command: Spawn) -> Result<(), SupervisorError> {
        let process = command.process.clone();
        let (kind, mode, spec_json) = match command.spec {
            Some(spawn::Spec::Producer(spec)) => (
                ProcessKind::Producer,
                "producer",
                serde_json::to_string(&spec),
            ),
            Some(spawn::Spec::Worker(spec)) => {
                (ProcessKind::Worker, "worker", serde_json::to_string(&spec))
            }
            None => return Err(SupervisorError::NoSpec(process)),
        };
        let run_id = command.run_id.clone();
        // One run's processes never live on into the next: whatever is left of another run
        // stops first (its reports, stamped with its run, are refused by this one).
        if !run_id.is_empty() {
            self.stop_where(OTHER_RUN_GRACE, |child| child.run_id != run_id)
                .await;
        }
        let spec_json = spec_json.map_err(|e| SupervisorError::Io {
            action: "encode spec",
            process: process.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut running = self.running.lock().await;
        // A reaped child whose exit is still being reported (its last reports first) no
        // longer holds its slot: the new child replaces its entry.
        if running.get(&process).is_some_and(|child| !child.reaped) {
            return Err(SupervisorError::Running(process));
        }
        let io = |action: &'static str| {
            let process = process.clone();
            move |source| SupervisorError::Io {
                action,
                process,
                source,
            }
        };
        std::fs::create_dir_all(&self.log_dir).map_err(io("create log dir"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{process}.log")))
            .map_err(io("open log"))?;
        let stderr = log.try_clone().map_err(io("open log"))?;
        let journal = self
            .journals
            .as_ref()
            .map_or(0, |_| crate::journal::new_id());
        let mut command = tokio::process::Command::new(&self.binary);
        if let Some(journals) = &self.journals
            && std::env::var_os(TEST_UNJOURNALED_ENV).is_none()
        {
            let path = journals.child_path(journal);
            command.env(JOURNAL_ENV, &path);
            journals.reclaimer().track(journal, path);
        }
        let mut child = command
            .args(["child", mode])
            .env(SPEC_ENV, spec_json)
            .env(PROCESS_ENV, &process)
            .env(SOCKET_ENV, &self.socket)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("spawn"))?;
        let pid = child.id().unwrap_or_default();
        let gate = self.links.started(&process, pid, &run_id, journal);
        running.insert(
            process.clone(),
            Running {
                pid,
                run_id: run_id.clone(),
                reaped: false,
            },
        );
        drop(running);
        tracing::info!(%process, pid, mode, "started");
        let _ = self
            .events
            .send(Report {
                body: Some(report::Body::Started(ProcessStarted {
                    process: process.clone(),
                    kind: kind as i32,
                    pid,
                    journal,
                })),
                run_id: run_id.clone(),
                ..Report::default()
            })
            .await;
        let supervisor = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            if let Some(child) = supervisor.running.lock().await.get_mut(&process)
                && child.pid == pid
            {
                child.reaped = true;
            }
            // Its last reports first: they may still be in its socket.
            if !gate.passed().await {
                tracing::warn!(%process, pid, "its report connection stayed open after it exited; exit reported anyway");
            }
            let (code, signal) = match &status {
                Ok(status) => (status.code(), status.signal()),
                Err(_) => (None, None),
            };
            tracing::info!(%process, pid, ?code, ?signal, "exited");
            let log_tail = exit_log_tail(&supervisor.log_dir, &process);
            let _ = supervisor
                .events
                .send(Report {
                    body: Some(report::Body::Exited(ProcessExited {
                        process: process.clone(),
                        kind: kind as i32,
                        pid,
                        code,
                        signal,
                        log_tail,
                    })),
                    run_id,
                    ..Report::default()
                })
                .await;
            if let Some(journals) = &supervisor.journals {
                journals.reclaimer().forget(journal);
            }
            // Gone only now (unless a new child took the slot meanwhile): a new run's
            // children start after this exit is reported.
            let mut running = supervisor.running.lock().await;
            if running.get(&process).is_some_and(|child| child.pid == pid) {
                running.remove(&process);
            }
        });
        Ok(())
    }

    /// Send `signal` to `process`.
    pub async fn signal(&self, process: &str, signal: Signal) -> Result<(), SupervisorError> {
        let pid = self
            .running
            .lock()
            .await
            .get(process)
            .filter(|r| !r.reaped)
            .map(|r| r.pid)
            .ok_or_else(|| SupervisorError::Unknown(process.to_string()))?;
        let pid = i32::try_from(pid).map_err(|_| SupervisorError::Unknown(process.to_string()))?;
        kill(Pid::from_raw(pid), signal).map_err(|source| SupervisorError::Signal {
            process: process.to_string(),
            source,
        })
    }

    /// Tell the coordinator whether the signal of fault `fault` reached `process`.
    pub async fn confirm_signal(&self, fault: u64, process: &str, result: Result<(), String>) {
        let report = Report {
            body: Some(report::Body::SignalResult(SignalResult {
                fault,
                process: process.to_string(),
                delivered: result.is_ok(),
                detail: result.err().unwrap_or_default(),
            })),
            // About the host's command, not a child's words: for the current run.
            run_id: String::new(),
            ..Report::default()
        };
        let _ = self.events.send(report).await;
    }

    /// (process, pid, run) of every child not reaped yet.
    pub async fn live_children(&self) -> Vec<(String, u32, String)> {
        self.running
            .lock()
            .await
            .iter()
            .filter(|(_, child)| !child.reaped)
            .map(|(process, child)| (process.clone(), child.pid, child.run_id.clone()))
            .collect()
    }

    /// Names of the running processes.
    pub async fn processes(&self) -> Vec<String> {
        self.running.lock().await.keys().cloned().collect()
    }

    /// SIGTERM everything, wait up to `grace`, then SIGKILL what is left.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.stop_where(grace, |_| true).await;
    }

    /// SIGTERM the children `which` selects, wait up to `grace`, SIGKILL what is left of
    /// them and wait until they have exited (a SIGKILLed child is reaped at once); then, at
    /// most [`EXIT_REPORT_WAIT`] more, until their exits are reported (each waits for its
    /// last reports first, `crate::links`), so that those come before anything that follows.
    async fn stop_where(&self, grace: std::time::Duration, which: impl Fn(&Running) -> bool) {
        let listed = |alive_only: bool| {
            let which = &which;
            async move {
                let running = self.running.lock().await;
                running
                    .iter()
                    .filter(|(_, child)| which(child) && !(alive_only && child.reaped))
                    .map(|(process, _)| process.clone())
                    .collect::<Vec<_>>()
            }
        };
        let selected = || listed(true);
        let first = selected().await;
        if first.is_empty() {
            return;
        }
        tracing::info!(processes = ?first, "stopping");
        for process in &first {
            let _ = self.signal(process, Signal::SIGTERM).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !selected().await.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for process in selected().await {
            let _ = self.signal(&process, Signal::SIGKILL).await;
        }
        let reaped = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !selected().await.is_empty() && tokio::time::Instant::now() < reaped {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let reported = tokio::time::Instant::now() + EXIT_REPORT_WAIT;
        while !listed(false).await.is_empty() && tokio::time::Instant::now() < reported {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Called first thing in a child: die with the agent. The parent-death signal is set, then
/// the parent checked, so an agent that died before the call is not missed.
pub fn child_guard() {
    let _ = nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL));
    if let Ok(expected) = std::env::var(PARENT_ENV)
        && nix::unistd::getppid().as_raw().to_string() != expected
    {
        std::process::exit(70);
    }
}

/// How long stopping children waits for their exit reports once they have exited: a child
/// whose connection stays open holds its report back for up to a minute (`crate::links`),
/// and the agent must not wait that long before it starts the next run's child.
const EXIT_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How much of a child's log its exit report carries.
const EXIT_LOG_TAIL_BYTES: u64 = 2048;

/// The end of `process`'s log in `log_dir`, for its exit report (empty if unreadable).
pub(crate) fn exit_log_tail(log_dir: &std::path::Path, process: &str) -> String {
    read_tail(&log_dir.join(format!("{process}.log")), EXIT_LOG_TAIL_BYTES)
        .map(|(tail, _)| tail)
        .unwrap_or_default()
}

/// The last `max_bytes` of a file, as text, and whether there was more.
fn read_tail(path: &std::path::Path, max_bytes: u64) -> std::io::Result<(String, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), start > 0))
}
