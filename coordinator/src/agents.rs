//! Connected agents and the `Agent` gRPC service.
//!
//! Each agent holds one bidirectional stream. Its report batches are forwarded, in order,
//! to the run's ingest channel; a batch is acknowledged only after the run accepted it,
//! and a batch number already applied (a resend after a reconnect) is acknowledged again
//! but not applied twice. The ingest channel is bounded, so a slow coordinator slows the
//! stream, which makes the agent stop reading reports, which makes children wait: nothing
//! is dropped anywhere.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use proto::v1::agent_server::Agent;
use proto::v1::{
    AgentInfo, AgentMessage, BatchAck, CoordinatorMessage, Report, agent_message,
    coordinator_message,
};
use tokio::sync::{Mutex, mpsc};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

/// Reports of one batch, attributed to the agent that sent them.
#[derive(Debug)]
pub struct IngestBatch {
    /// Agent id.
    pub agent: String,
    /// The reports.
    pub reports: Vec<Report>,
}

#[derive(Debug)]
struct AgentEntry {
    hostname: String,
    commands: Option<mpsc::Sender<CoordinatorMessage>>,
    applied: u64,
    processes: u32,
}

/// The agents this coordinator knows, and the channel their reports go to.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: Arc<Mutex<BTreeMap<String, AgentEntry>>>,
    ingest: mpsc::Sender<IngestBatch>,
}

impl AgentRegistry {
    /// A registry forwarding reports into `ingest`.
    pub fn new(ingest: mpsc::Sender<IngestBatch>) -> Self {
        Self {
            agents: Arc::default(),
            ingest,
        }
    }

    /// Ids of the connected agents, sorted.
    pub async fn connected(&self) -> Vec<String> {
        self.agents
            .lock()
            .await
            .iter()
            .filter(|(_, a)| a.commands.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every agent ever seen, for `simctl agents`.
    pub async fn describe(&self) -> Vec<AgentInfo> {
        self.agents
            .lock()
            .await
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
            .agents
            .lock()
            .await
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
        if let Some(entry) = self.agents.lock().await.get_mut(agent) {
            entry.processes = entry.processes.saturating_add_signed(delta);
        }
    }

    async fn run_session(
        self,
        mut inbound: Streaming<AgentMessage>,
        commands: mpsc::Sender<CoordinatorMessage>,
    ) {
        let hello = match inbound.message().await {
            Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            })) => hello,
            _ => {
                warn!("agent session without hello dropped");
                return;
            }
        };
        let agent = hello.agent_id.clone();
        {
            let mut agents = self.agents.lock().await;
            let entry = agents.entry(agent.clone()).or_insert(AgentEntry {
                hostname: hello.hostname.clone(),
                commands: None,
                applied: 0,
                processes: 0,
            });
            entry.commands = Some(commands.clone());
            entry.hostname = hello.hostname.clone();
        }
        info!(%agent, host = %hello.hostname, acked = hello.acked_batch, "agent connected");
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(error) => {
                    warn!(%agent, %error, "agent stream error");
                    break;
                }
            };
            let Some(agent_message::Body::Batch(batch)) = message.body else {
                continue;
            };
            let applied = self
                .agents
                .lock()
                .await
                .get(&agent)
                .map_or(0, |a| a.applied);
            if batch.number > applied {
                if self
                    .ingest
                    .send(IngestBatch {
                        agent: agent.clone(),
                        reports: batch.reports,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
                if let Some(entry) = self.agents.lock().await.get_mut(&agent) {
                    entry.applied = batch.number;
                }
            }
            // Not checkpointing: what is accepted is released at once.
            let up_to = batch.number.max(applied);
            let ack = coordinator_message::Body::Ack(BatchAck {
                up_to,
                released_up_to: up_to,
            });
            if commands
                .send(CoordinatorMessage { body: Some(ack) })
                .await
                .is_err()
            {
                break;
            }
        }
        if let Some(entry) = self.agents.lock().await.get_mut(&agent) {
            entry.commands = None;
        }
        warn!(%agent, "agent disconnected");
    }
}

/// The gRPC face of the registry.
#[derive(Debug, Clone)]
pub struct AgentService {
    registry: AgentRegistry,
}

impl AgentService {
    /// Serve `registry`.
    pub fn new(registry: AgentRegistry) -> Self {
        Self { registry }
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    type SessionStream = CommandStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (commands, receiver) = mpsc::channel::<CoordinatorMessage>(1024);
        tokio::spawn(
            self.registry
                .clone()
                .run_session(request.into_inner(), commands),
        );
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (Ok(message), receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
