//! Connected agents and the `Agent` gRPC service.
//!
//! Each agent holds one bidirectional stream. Its report batches are forwarded, in order,
//! to the run's ingest channel; a batch is acknowledged only after the run accepted it,
//! and a batch number already applied (a resend after a reconnect) is acknowledged again
//! but not applied twice. The ingest channel is bounded, so a slow coordinator slows the
//! stream, which makes the agent stop sending and, past its outbox budget, reading reports,
//! which makes children wait: nothing is dropped anywhere.
//!
//! Batches are numbered per agent *process* (`Hello.boot_id`); de-duplication is by
//! (agent, boot_id, number). An acknowledgement says two things (`BatchAck`): `up_to`,
//! accepted on this stream, and `released_up_to`, which the agent may forget. Without
//! checkpointing both are equal (the agent forgets at once). With checkpointing
//! ([`AgentRegistry::set_checkpointing`]) the engine releases a position only once a
//! durable checkpoint covers it ([`AgentRegistry::release`]); a coordinator restarted from
//! that checkpoint seeds the positions ([`AgentRegistry::restore`]) and receives everything
//! after them again. Anything found missing is recorded ([`AgentRegistry::gaps`]), never
//! skipped silently.
//!
//! Every session is probed for its host's clock offset once a second (`ClockProbe`, answered
//! at once by a `ClockEcho`; `sim_core::clock`): the engine corrects the timestamps of that
//! agent's reports by it ([`AgentRegistry::clock_offset`]).

mod service;

pub use service::AgentService;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use proto::v1::{
    AgentInfo, AgentMessage, BatchAck, ClockEcho, ClockProbe, CoordinatorMessage, Hello, Report,
    agent_message, coordinator_message,
};
use sim_core::clock::{ClockEstimator, ClockOffset};
use tokio::sync::mpsc;
use tonic::Streaming;
use tracing::{debug, info, warn};

/// Reports that can no longer arrive; the verdict turns each into an infrastructure failure.
pub use sim_core::verdict::{MissingReports, ReportGap};

/// Reports of one batch, attributed to the agent that sent them.
#[derive(Debug)]
pub struct IngestBatch {
    /// Agent id.
    pub agent: String,
    /// The agent process whose numbering `number` belongs to (`Hello.boot_id`).
    pub boot_id: u64,
    /// The batch number (per agent process, from 1). A checkpoint records the last one
    /// applied per agent, and [`AgentRegistry::release`] / [`AgentRegistry::restore`]
    /// take it back.
    pub number: u64,
    /// The reports.
    pub reports: Vec<Report>,
}

#[derive(Debug)]
struct AgentEntry {
    hostname: String,
    commands: Option<mpsc::Sender<CoordinatorMessage>>,
    /// Bumped by every Hello: only the newest session of an agent applies batches and
    /// owns `commands` (an old stream on a silently cut link may linger for a while).
    session: u64,
    processes: u32,
    /// The process `applied` and `released` count for; `None` before the first Hello
    /// (unless restored).
    boot_id: Option<u64>,
    /// Highest number forwarded to the ingest channel (ahead of the engine: not what a
    /// checkpoint may record).
    applied: u64,
    /// Highest number the agent may forget (see `BatchAck.released_up_to`).
    released: u64,
    /// Seeded by [`AgentRegistry::restore`], no Hello since.
    restored: bool,
    /// Its host's clock against ours, from the probes of its sessions.
    clock: ClockEstimator,
}

impl AgentEntry {
    fn new() -> Self {
        Self {
            hostname: String::new(),
            commands: None,
            session: 0,
            processes: 0,
            boot_id: None,
            applied: 0,
            released: 0,
            restored: false,
            clock: ClockEstimator::default(),
        }
    }
}

#[derive(Debug, Default)]
struct RegistryState {
    agents: BTreeMap<String, AgentEntry>,
    checkpointing: bool,
    /// Positions came from a checkpoint: an unknown agent that already released batches
    /// lost them.
    restored: bool,
    gaps: Vec<ReportGap>,
}

impl RegistryState {
    fn record_gap(&mut self, gap: ReportGap) {
        warn!(%gap, "report gap");
        self.gaps.push(gap);
    }
}

/// What to do with a batch.
#[derive(Debug)]
enum Admission {
    /// A newer session of the agent exists: stop this one.
    Stale,
    /// Already applied: acknowledge only.
    Duplicate(BatchAck),
    /// Apply, then acknowledge.
    Apply(BatchAck),
}

/// The agents this coordinator knows, and the channel their reports go to.
///
/// The state is behind a synchronous mutex, never held across an await: the engine calls
/// in here from its loop while sessions wait for room in the ingest channel the engine
/// drains, so an async lock held over that wait could deadlock them.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    state: Arc<Mutex<RegistryState>>,
    ingest: mpsc::Sender<IngestBatch>,
}

impl AgentRegistry {
    /// A registry forwarding reports into `ingest`.
    pub fn new(ingest: mpsc::Sender<IngestBatch>) -> Self {
        Self {
            state: Arc::default(),
            ingest,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryState> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ids of the connected agents, sorted.
    pub async fn connected(&self) -> Vec<String> {
        self.lock()
            .agents
            .iter()
            .filter(|(_, a)| a.commands.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every agent ever seen, for `simctl agents`.
    pub async fn describe(&self) -> Vec<AgentInfo> {
        self.lock()
            .agents
            .iter()
            .map(|(id, a)| AgentInfo {
                agent_id: id.clone(),
                hostname: a.hostname.clone(),
                connected: a.commands.is_some(),
                processes: a.processes,
            })
            .collect()
    }

    /// Send a command to `agent`. `false` if it is not connected.
    pub async fn send(&self, agent: &str, body: coordinator_message::Body) -> bool {
        let sender = self
            .lock()
            .agents
            .get(agent)
            .and_then(|a| a.commands.clone());
        match sender {
            Some(sender) => sender
                .send(CoordinatorMessage { body: Some(body) })
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Adjust the process count shown for `agent`.
    pub async fn count_process(&self, agent: &str, delta: i32) {
        if let Some(entry) = self.lock().agents.get_mut(agent) {
            entry.processes = entry.processes.saturating_add_signed(delta);
        }
    }

    /// Checkpointing on: agents keep every batch until [`Self::release`] covers it. Off
    /// (the default): every acknowledgement releases what it accepts.
    pub fn set_checkpointing(&self, on: bool) {
        self.lock().checkpointing = on;
    }

    /// A checkpoint holding `agent`'s batches up to `up_to` of process `boot_id` is
    /// durable: tell the agent (at once, so it frees memory) that it may drop them.
    /// Ignored when the agent's process changed since (its numbering restarted) and capped
    /// at what was applied.
    pub fn release(&self, agent: &str, boot_id: u64, up_to: u64) {
        let (ack, commands) = {
            let mut state = self.lock();
            let Some(entry) = state.agents.get_mut(agent) else {
                return;
            };
            if entry.boot_id != Some(boot_id) {
                debug!(%agent, boot_id, "release for a previous agent process ignored");
                return;
            }
            let up_to = up_to.min(entry.applied);
            if up_to <= entry.released {
                return;
            }
            entry.released = up_to;
            let ack = BatchAck {
                up_to: entry.applied,
                released_up_to: up_to,
            };
            (ack, entry.commands.clone())
        };
        if let Some(commands) = commands {
            let message = CoordinatorMessage {
                body: Some(coordinator_message::Body::Ack(ack)),
            };
            // Never wait on a stuck agent from the engine's loop: the release also travels
            // with the agent's next batch acknowledgement.
            if commands.try_send(message).is_err() {
                debug!(%agent, "release not sent now; it goes with the next acknowledgement");
            }
        }
    }

    /// Seed per-agent positions `(boot_id, applied)` from a checkpoint, before the server
    /// accepts sessions: resent batches up to `applied` are acknowledged, not applied
    /// again, and `released_up_to` starts there. An agent that comes back as another
    /// process, or that dropped batches beyond `applied`, is recorded in [`Self::gaps`].
    ///
    /// Agents already connected (a daemon that was idle when asked to resume) are made to
    /// reconnect: their session is superseded, so it ends at its next batch, and the
    /// agent's next session resends everything not released.
    pub fn restore(&self, positions: BTreeMap<String, (u64, u64)>) {
        let mut state = self.lock();
        state.restored = true;
        for (agent, entry) in &mut state.agents {
            if entry.commands.take().is_some() {
                entry.session += 1;
                info!(%agent, "session superseded: the agent reconnects and resends");
            }
        }
        for (agent, (boot_id, applied)) in positions {
            let entry = state.agents.entry(agent).or_insert_with(AgentEntry::new);
            entry.boot_id = Some(boot_id);
            entry.applied = applied;
            entry.released = applied;
            entry.restored = true;
        }
    }

    /// Per agent `(boot_id, applied)`: the last batch number forwarded to the ingest
    /// channel (ahead of the engine; for tests and diagnostics, not for checkpoints).
    pub fn positions(&self) -> BTreeMap<String, (u64, u64)> {
        self.lock()
            .agents
            .iter()
            .filter_map(|(id, a)| a.boot_id.map(|boot| (id.clone(), (boot, a.applied))))
            .collect()
    }

    /// Every report gap found so far, oldest first.
    pub fn gaps(&self) -> Vec<ReportGap> {
        self.lock().gaps.clone()
    }

    /// `agent`'s host clock against the coordinator's; `None` before its first probe was
    /// answered.
    pub fn clock_offset(&self, agent: &str) -> Option<ClockOffset> {
        self.lock().agents.get(agent)?.clock.offset()
    }

    /// Every agent's current process (`Hello.boot_id`), as last heard of.
    pub fn boots(&self) -> BTreeMap<String, u64> {
        self.lock()
            .agents
            .iter()
            .filter_map(|(agent, entry)| Some((agent.clone(), entry.boot_id?)))
            .collect()
    }

    /// Every agent's host clock offset measured so far.
    pub fn clock_offsets(&self) -> BTreeMap<String, ClockOffset> {
        self.lock()
            .agents
            .iter()
            .filter_map(|(agent, entry)| Some((agent.clone(), entry.clock.offset()?)))
            .collect()
    }

    /// A probe sent by `session` of `agent` came back now.
    fn clock_echo(&self, agent: &str, session: u64, echo: &ClockEcho) {
        let received_us = now_us();
        let mut state = self.lock();
        if let Some(entry) = state.agents.get_mut(agent)
            && entry.session == session
        {
            entry
                .clock
                .probe(echo.coordinator_us, echo.agent_us, received_us);
        }
    }

    /// Register a session for `hello`; its session number.
    fn open_session(&self, hello: &Hello, commands: mpsc::Sender<CoordinatorMessage>) -> u64 {
        let mut state = self.lock();
        let restored_registry = state.restored;
        let agent = hello.agent_id.clone();
        let entry = state
            .agents
            .entry(agent.clone())
            .or_insert_with(AgentEntry::new);
        entry.session += 1;
        entry.commands = Some(commands);
        entry.hostname = hello.hostname.clone();
        let session = entry.session;
        let acked = hello.acked_batch;
        let mut gap = None;
        match entry.boot_id {
            None => {
                // First sight. After a restore, an agent the checkpoint does not know
                // that already dropped batches lost them; otherwise what it dropped
                // belonged to a previous coordinator's business.
                if restored_registry && acked > 0 {
                    gap = Some(MissingReports::Batches {
                        first: 1,
                        last: acked,
                    });
                }
                entry.applied = acked;
                entry.released = acked;
            }
            Some(boot) if boot == hello.boot_id => {
                if acked > entry.applied {
                    // Released by a coordinator whose checkpoint is newer than ours.
                    gap = Some(MissingReports::Batches {
                        first: entry.applied + 1,
                        last: acked,
                    });
                    entry.applied = acked;
                }
                entry.released = entry.released.max(acked);
            }
            Some(old) => {
                info!(%agent, old_boot = old, new_boot = hello.boot_id, "agent process changed: batch numbering restarts");
                if entry.restored {
                    gap = Some(MissingReports::AfterRestart {
                        after: entry.applied,
                        new_boot_id: hello.boot_id,
                    });
                }
                entry.applied = acked;
                entry.released = acked;
            }
        }
        let gap_boot = match (&gap, entry.boot_id) {
            (Some(MissingReports::AfterRestart { .. }), Some(old)) => old,
            _ => hello.boot_id,
        };
        entry.boot_id = Some(hello.boot_id);
        entry.restored = false;
        if let Some(missing) = gap {
            state.record_gap(ReportGap {
                agent,
                boot_id: gap_boot,
                missing,
            });
        }
        session
    }

    /// Decide about batch `number` of `agent`'s session `session`. With `claim`, an
    /// applicable batch is marked applied (the caller then must forward it, with no await
    /// in between, so the ingest order is the claim order) and a skipped range is recorded
    /// as a gap; without, nothing changes but the release bookkeeping.
    fn admit(&self, agent: &str, session: u64, number: u64, claim: bool) -> Admission {
        let mut state = self.lock();
        let checkpointing = state.checkpointing;
        let Some(entry) = state.agents.get_mut(agent) else {
            return Admission::Stale;
        };
        if entry.session != session {
            return Admission::Stale;
        }
        let apply = number > entry.applied;
        if apply && !claim {
            return Admission::Apply(BatchAck::default());
        }
        let mut gap = None;
        if apply {
            if number > entry.applied + 1 {
                gap = Some(MissingReports::Batches {
                    first: entry.applied + 1,
                    last: number - 1,
                });
            }
            entry.applied = number;
        }
        let up_to = entry.applied;
        if !checkpointing {
            entry.released = entry.released.max(up_to);
        }
        let ack = BatchAck {
            up_to,
            released_up_to: entry.released,
        };
        let boot_id = entry.boot_id.unwrap_or_default();
        if let Some(missing) = gap {
            state.record_gap(ReportGap {
                agent: agent.to_string(),
                boot_id,
                missing,
            });
        }
        if apply {
            Admission::Apply(ack)
        } else {
            Admission::Duplicate(ack)
        }
    }

    fn close_session(&self, agent: &str, session: u64) {
        let mut state = self.lock();
        if let Some(entry) = state.agents.get_mut(agent) {
            if entry.session == session {
                entry.commands = None;
                warn!(%agent, "agent disconnected");
            } else {
                debug!(%agent, "superseded agent session ended");
            }
        }
    }

    /// Runs an agent's session, opened by `hello` (read by the service, which checked it
    /// against the agent's certificate).
    async fn run_session(
        self,
        hello: Hello,
        mut inbound: Streaming<AgentMessage>,
        commands: mpsc::Sender<CoordinatorMessage>,
    ) {
        let agent = hello.agent_id.clone();
        let session = self.open_session(&hello, commands.clone());
        info!(%agent, host = %hello.hostname, boot_id = hello.boot_id, released = hello.acked_batch, "agent connected");
        let prober = tokio::spawn(probe_clock(commands.clone()));
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(error) => {
                    warn!(%agent, %error, "agent stream error");
                    break;
                }
            };
            let batch = match message.body {
                Some(agent_message::Body::Batch(batch)) => batch,
                Some(agent_message::Body::ClockEcho(echo)) => {
                    self.clock_echo(&agent, session, &echo);
                    continue;
                }
                Some(agent_message::Body::Hello(_)) | None => continue,
            };
            let number = batch.number;
            let ack = match self.admit(&agent, session, number, false) {
                Admission::Stale => break,
                Admission::Duplicate(ack) => ack,
                Admission::Apply(_) => {
                    // Room first (this is where a slow engine slows the agent), then claim
                    // and forward without an await in between.
                    let Ok(permit) = self.ingest.reserve().await else {
                        break;
                    };
                    match self.admit(&agent, session, number, true) {
                        Admission::Stale => break,
                        Admission::Duplicate(ack) => ack,
                        Admission::Apply(ack) => {
                            permit.send(IngestBatch {
                                agent: agent.clone(),
                                boot_id: hello.boot_id,
                                number,
                                reports: batch.reports,
                            });
                            ack
                        }
                    }
                }
            };
            let ack = coordinator_message::Body::Ack(ack);
            if commands
                .send(CoordinatorMessage { body: Some(ack) })
                .await
                .is_err()
            {
                break;
            }
        }
        prober.abort();
        self.close_session(&agent, session);
    }
}

/// How often a session's clock is probed.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Probe the clock of the agent behind `commands` until its session ends.
async fn probe_clock(commands: mpsc::Sender<CoordinatorMessage>) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for id in 1.. {
        every.tick().await;
        let probe = ClockProbe {
            id,
            coordinator_us: now_us(),
        };
        let probe = CoordinatorMessage {
            body: Some(coordinator_message::Body::ClockProbe(probe)),
        };
        // Never waited for: a full command stream is a slow agent (its acks and commands
        // come first), and a probe skipped costs nothing.
        if let Err(mpsc::error::TrySendError::Closed(_)) = commands.try_send(probe) {
            return;
        }
    }
}

/// Unix time in microseconds, on the coordinator's clock.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
