//! The `Control` gRPC service simctl talks to.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use proto::v1::control_server::Control;
use proto::v1::{
    AgentsRequest, AgentsResponse, InjectRequest, InjectResponse, ReportRequest, RunReport,
    RunStatus, StartRequest, StartResponse, StatusRequest, StopRequest, StopResponse, WatchRequest,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::agents::AgentRegistry;
use crate::run::{Command, EngineHandle, InjectOptions, StartError};
use sim_core::config::{ChaosEvent, Config};

/// Serves simctl.
#[derive(Debug, Clone)]
pub struct ControlService {
    engine: EngineHandle,
    registry: AgentRegistry,
}

impl ControlService {
    /// Control `engine`; list `registry`'s agents.
    pub fn new(engine: EngineHandle, registry: AgentRegistry) -> Self {
        Self { engine, registry }
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<RunStatus, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<StartResponse>, Status> {
        let request = request.into_inner();
        let mut config = Config::from_yaml_str(&request.config_yaml)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if request.duration_ms > 0 {
            config.simulation.duration = Duration::from_millis(request.duration_ms);
        }
        let seed = request.seed.or(config.simulation.seed).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        config.simulation.seed = Some(seed);
        let (reply, answer) = oneshot::channel();
        let command = if request.resume {
            // The file (and duration) name the run, seed aside: the run keeps the seed it
            // drew, saved in its directory.
            Command::Resume {
                run_dir: (!request.run_dir.is_empty()).then(|| request.run_dir.clone().into()),
                config: Some(Box::new(config)),
                reply,
            }
        } else {
            Command::Start {
                config: Box::new(config),
                seed,
                reply,
            }
        };
        self.engine
            .commands
            .send(command)
            .await
            .map_err(|_| Status::unavailable("engine stopped"))?;
        match answer
            .await
            .map_err(|_| Status::unavailable("engine stopped"))?
        {
            Ok(run_id) => Ok(Response::new(StartResponse { run_id })),
            Err(StartError::Config(message)) => Err(Status::invalid_argument(message)),
            Err(StartError::Busy(message)) => Err(Status::failed_precondition(format!(
                "a run is already in progress ({message})"
            ))),
            Err(StartError::Infrastructure(message)) => Err(Status::unavailable(message)),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<RunStatus>, Status> {
        Ok(Response::new(self.engine.status.borrow().clone()))
    }

    type WatchStream = StatusStream;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let mut receiver = self.engine.status.clone();
        let stream = async_stream(move |sender| async move {
            let mut first = true;
            loop {
                let status = receiver.borrow_and_update().clone();
                // Idle only ends the stream when there was no run to watch to begin with.
                let finished = status.phase == "finished" || (first && status.phase == "idle");
                first = false;
                if sender.send(Ok(status)).await.is_err() || finished {
                    return;
                }
                if receiver.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn stop(&self, _: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        self.engine
            .commands
            .send(Command::Stop)
            .await
            .map_err(|_| Status::unavailable("engine stopped"))?;
        Ok(Response::new(StopResponse {}))
    }

    async fn inject(
        &self,
        request: Request<InjectRequest>,
    ) -> Result<Response<InjectResponse>, Status> {
        let request = request.into_inner();
        let event = ChaosEvent::ALL
            .into_iter()
            .find(|event| event.as_str() == request.event)
            .ok_or_else(|| {
                let names: Vec<&str> = ChaosEvent::ALL.iter().map(|e| e.as_str()).collect();
                Status::invalid_argument(format!(
                    "unknown chaos event {:?}; one of: {}",
                    request.event,
                    names.join(", ")
                ))
            })?;
        let options = InjectOptions {
            target: Some(request.target).filter(|t| !t.is_empty()),
            duration: Some(Duration::from_millis(request.duration_ms)).filter(|d| !d.is_zero()),
        };
        let (reply, result) = oneshot::channel();
        self.engine
            .commands
            .send(Command::Inject {
                event,
                options,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("engine stopped"))?;
        let (target, outcome) = result
            .await
            .map_err(|_| Status::unavailable("engine stopped"))?;
        Ok(Response::new(InjectResponse::new(target, &outcome)))
    }

    async fn report(&self, _: Request<ReportRequest>) -> Result<Response<RunReport>, Status> {
        self.engine
            .report
            .borrow()
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::failed_precondition("no finished run yet"))
    }

    async fn agents(&self, _: Request<AgentsRequest>) -> Result<Response<AgentsResponse>, Status> {
        Ok(Response::new(AgentsResponse {
            agents: self.registry.describe().await,
        }))
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(produce: F) -> StatusStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<RunStatus, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
