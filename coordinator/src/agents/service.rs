//! The `Agent` gRPC service: one bidirectional session per agent, run by the registry.

use std::pin::Pin;

use futures::Stream;
use proto::v1::agent_server::Agent;
use proto::v1::{AgentMessage, CoordinatorMessage};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

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
