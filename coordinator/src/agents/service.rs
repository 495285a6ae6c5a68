//! The `Agent` gRPC service: one bidirectional session per agent, run by the registry.

use std::pin::Pin;

use futures::Stream;
use proto::v1::agent_server::Agent;
use proto::v1::{AgentMessage, CoordinatorMessage, agent_message};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use super::AgentRegistry;

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
        // With TLS, the agent's certificate names it: the name it claims must be that one,
        // or one agent's key could take over another's place in the fleet.
        let certified = request.extensions().get::<fleet_tls::PeerName>().cloned();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await {
            Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            })) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "an agent session starts with a hello",
                ));
            }
        };
        if let Some(fleet_tls::PeerName(name)) = certified
            && name != hello.agent_id
        {
            warn!(claimed = %hello.agent_id, certified = %name, "agent session refused");
            return Err(Status::permission_denied(format!(
                "agent id {:?} is not the one its certificate names ({name:?})",
                hello.agent_id
            )));
        }
        let (commands, receiver) = mpsc::channel::<CoordinatorMessage>(1024);
        tokio::spawn(self.registry.clone().run_session(hello, inbound, commands));
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (Ok(message), receiver))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
