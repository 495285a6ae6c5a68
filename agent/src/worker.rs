//! Worker child: a `parti::Manager` with its consumption helper, processing simulation
//! messages: parse, simulate work (uniform delay), report, then ack.
//!
//! The fault knobs (`WorkerFaults`) break this on purpose so the harness can prove it
//! catches each defect; they are off unless the config turns them on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use parti::{
    ConsistentHash, ConsumerConfig, Delivery, HandlerError, Manager, MessageHandler, Partition,
    RoundRobin, StaticSource, Strategy, WeightedConsistentHash, WorkerConsumer,
};
use proto::v1::WorkerSpec;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::message::SimulationMessage;
use crate::report::{ChildReport, ReportClient, ReportClosed, now_us};

/// Why a worker stopped before `stop` fired. Each message names what was being done and
/// embeds its cause: it ends up in the child's log, read by users.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// NATS could not be reached.
    #[error("connecting to NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
    /// The spec's tracing could not start.
    #[error("tracing: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
    /// The spec's `parti_config_json` is not a parti config.
    #[error("parsing the spec's parti_config_json: {0}")]
    PartiConfig(#[source] serde_json::Error),
    /// The spec names no known strategy.
    #[error(transparent)]
    Strategy(#[from] UnknownStrategy),
    /// parti's consumption helper could not subscribe to its advisories.
    #[error("starting the consumer helper: {0}")]
    Consumer(#[source] async_nats::SubscribeError),
    /// The parti manager did not start.
    #[error("starting the parti manager: {0}")]
    Manager(#[source] parti::StartError),
    /// The agent's report socket is gone (the agent died).
    #[error(transparent)]
    Report(#[from] ReportClosed),
    /// The manager lost its lease. Not a bug: the agent restarts the slot, and the
    /// coordinator sees an exit like any other crash.
    #[error("lease lost: fenced (the agent restarts the slot)")]
    Fenced,
}

/// A spec's strategy name that is none of parti's.
#[derive(Debug, thiserror::Error)]
#[error("unknown strategy {0:?}")]
pub struct UnknownStrategy(pub String);

/// The strategy a spec names.
pub fn strategy(spec: &WorkerSpec) -> Result<Arc<dyn Strategy>, UnknownStrategy> {
    let virtual_nodes = if spec.virtual_nodes == 0 {
        150
    } else {
        spec.virtual_nodes as usize
    };
    Ok(match spec.strategy.as_str() {
        "RoundRobin" => Arc::new(RoundRobin),
        "ConsistentHash" => Arc::new(ConsistentHash::new(virtual_nodes, spec.hash_seed)),
        "WeightedConsistentHash" | "" => Arc::new(WeightedConsistentHash {
            virtual_nodes,
            seed: spec.hash_seed,
            overload_threshold: if spec.overload_threshold > 0.0 {
                spec.overload_threshold
            } else {
                1.3
            },
            extreme_threshold: if spec.extreme_threshold > 0.0 {
                spec.extreme_threshold
            } else {
                2.0
            },
            ..WeightedConsistentHash::default()
        }),
        other => return Err(UnknownStrategy(other.to_string())),
    })
}

pub(crate) struct SimHandler {
    reports: ReportClient,
    spec: WorkerSpec,
    worker_id: String,
    incarnation: u64,
    version: watch::Receiver<u64>,
    rng: std::sync::Mutex<rand_chacha::ChaCha8Rng>,
    handled: AtomicU64,
    /// What the `leak_kib_per_message` knob keeps, never freed.
    leaked: std::sync::Mutex<Vec<Box<[u8]>>>,
    /// The `takeover_stall` knob: the partitions of the first assignment (not taken over),
    /// and when each taken-over partition's first message came (and whether its stall was
    /// over yet).
    first_partitions: std::sync::OnceLock<std::collections::HashSet<u32>>,
    stalled: std::sync::Mutex<std::collections::HashMap<u32, (std::time::Instant, bool)>>,
    /// The run's tracing, when the spec asks for it.
    traces: Option<Arc<telemetry::Traces>>,
}

impl SimHandler {
    fn delay(&self) -> Duration {
        let (min, max) = (
            self.spec.processing_delay_min_us,
            self.spec
                .processing_delay_max_us
                .max(self.spec.processing_delay_min_us),
        );
        let micros = match self.rng.lock() {
            Ok(mut rng) => rng.random_range(min..=max),
            Err(_) => min,
        };
        Duration::from_micros(micros)
    }
}

/// `error.type` of a handler's failure (low cardinality, for the `process` span).
fn error_type(error: &(dyn std::error::Error + Send + Sync + 'static)) -> &'static str {
    if error.is::<parti::Fenced>() {
        "fenced"
    } else if error.is::<ReportClosed>() {
        "report_failed"
    } else {
        "refused"
    }
}

/// What the handler needs of a delivered message, whichever consumer delivered it.
pub(crate) struct Received<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
    pub headers: Option<&'a async_nats::HeaderMap>,
    pub stream_sequence: u64,
    pub delivered: i64,
}

impl MessageHandler for SimHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        let received = Received {
            subject: &delivery.subject,
            payload: &delivery.payload,
            headers: delivery.headers.as_ref(),
            stream_sequence: delivery.stream_sequence,
            delivered: delivery.delivered,
        };
        Box::pin(self.process(received, || delivery.fence.is_valid()))
    }
}

impl SimHandler {
    /// Parse, simulate the work, report; `may_commit` is asked right before the report (the
    /// commit point). A message whose `traceparent` says it is sampled gets a `process`
    /// span, child of its `send` span, covering all of it and saying how it ended.
    pub(crate) async fn process(
        &self,
        delivery: Received<'_>,
        may_commit: impl Fn() -> bool,
    ) -> Result<(), HandlerError> {
        let parent = match (&self.traces, delivery.headers) {
            // Only a sampled message carries a traceparent: the rest cost one lookup.
            (Some(_), Some(headers)) if headers.get("traceparent").is_some() => {
                telemetry::propagation::extract(headers).filter(|cx| cx.is_sampled())
            }
            _ => None,
        };
        let (Some(traces), Some(parent)) = (&self.traces, parent) else {
            return self.process_message(delivery, may_commit, &mut None).await;
        };
        let started = std::time::SystemTime::now();
        let (subject, delivered) = (delivery.subject, delivery.delivered);
        let mut seen = None;
        let result = self.process_message(delivery, may_commit, &mut seen).await;
        if let Some((partition, seq)) = seen {
            let id = crate::message::message_id(partition, seq);
            let message = telemetry::MessageInfo {
                partition,
                seq,
                subject,
                message_id: &id,
            };
            let durable = proto::partition_durable(partition);
            let processing = telemetry::Processing {
                worker: &self.worker_id,
                durable: &durable,
                assignment_version: *self.version.borrow(),
                delivered,
            };
            let error = result.as_ref().err().map(|e| error_type(e.as_ref()));
            let span = (started, std::time::SystemTime::now());
            traces.process(&parent, &message, &processing, span, error);
        }
        result
    }

    /// [`Self::process`] without the span; `seen` gets the message's partition and seq once
    /// it parsed.
    async fn process_message(
        &self,
        delivery: Received<'_>,
        may_commit: impl Fn() -> bool,
        seen: &mut Option<(u32, u64)>,
    ) -> Result<(), HandlerError> {
        {
            let received_us = now_us();
            let message: SimulationMessage = match serde_json::from_slice(delivery.payload) {
                Ok(message) => message,
                Err(error) => {
                    // Garbage is reported and acknowledged: it must neither crash us nor loop.
                    self.reports
                        .send(ChildReport::Malformed {
                            subject: delivery.subject.to_string(),
                            stream_seq: delivery.stream_sequence,
                            reason: error.to_string(),
                        })
                        .await?;
                    return Ok(());
                }
            };
            *seen = Some((message.partition_id, message.partition_sequence));
            let faults = self.spec.faults.unwrap_or_default();
            if faults.takeover_stall_ms > 0
                && self.stalls(
                    message.partition_id,
                    Duration::from_millis(faults.takeover_stall_ms),
                )
            {
                // Refused (nakked, redelivered later) rather than held: the handler returns
                // at once, so parti's handoffs are not slowed, only this backlog.
                return Err("takeover stall: not ready for this partition yet".into());
            }
            let count = self.handled.fetch_add(1, Ordering::SeqCst) + 1;
            if faults.leak_kib_per_message > 0 {
                // Self-test knob: a leak. Filled, so the pages are resident.
                let kept = vec![1u8; faults.leak_kib_per_message as usize * 1024];
                if let Ok(mut leaked) = self.leaked.lock() {
                    leaked.push(kept.into_boxed_slice());
                }
            }
            if faults.drop_and_ack_one_in > 0
                && count.is_multiple_of(u64::from(faults.drop_and_ack_one_in))
            {
                tracing::warn!(
                    partition = message.partition_id,
                    seq = message.partition_sequence,
                    "fault: dropping an acked message"
                );
                return Ok(());
            }
            if faults.ack_then_crash_after > 0 && count == u64::from(faults.ack_then_crash_after) {
                tracing::warn!(
                    partition = message.partition_id,
                    seq = message.partition_sequence,
                    "fault: ack before processing, then crash"
                );
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    std::process::abort();
                });
                return Ok(());
            }
            tokio::time::sleep(self.delay()).await;
            // The commit point: only report while this worker may still process. Its time is
            // taken first, so that a pause right after the check cannot date the processing
            // after a successor's grant.
            let processed_us = now_us();
            let keep_consuming = faults.process_after_revoke || faults.stalled_assignment_watch;
            if !may_commit() && !keep_consuming {
                return Err(parti::Fenced.into());
            }
            let assignment_version = if faults.stalled_assignment_watch {
                0
            } else {
                *self.version.borrow()
            };
            self.reports
                .send(ChildReport::Processed {
                    partition: message.partition_id,
                    seq: message.partition_sequence,
                    worker_id: self.worker_id.clone(),
                    incarnation: self.incarnation,
                    delivered: u32::try_from(delivery.delivered).unwrap_or(u32::MAX),
                    stream_seq: delivery.stream_sequence,
                    assignment_version,
                    published_us: message.timestamp,
                    received_us,
                    processed_us,
                })
                .await?;
            Ok(())
        }
    }
}

impl SimHandler {
    /// Whether a message of `partition` is refused by the `takeover_stall` knob: the
    /// partition was taken over after the first assignment, and its first message came less
    /// than `stall` ago.
    fn stalls(&self, partition: u32, stall: Duration) -> bool {
        let taken_over = self
            .first_partitions
            .get()
            .is_some_and(|first| !first.contains(&partition));
        if !taken_over {
            return false;
        }
        let Ok(mut stalled) = self.stalled.lock() else {
            return false;
        };
        let (since, over) = stalled.entry(partition).or_insert_with(|| {
            tracing::warn!(
                partition,
                "fault: refusing a taken-over partition (takeover_stall)"
            );
            (std::time::Instant::now(), false)
        });
        if since.elapsed() < stall {
            return true;
        }
        if !*over {
            *over = true;
            tracing::info!(partition, "takeover stall over");
        }
        false
    }
}

/// The workers' ack wait: 5 s, or longer when a batch of the slowest processing could take
/// more than half of it (a message must never time out while it waits its turn). It is
/// also what a takeover after a crash or pause waits for (parti's `takeover.rs`): 10 s made
/// messages caught in a pause wait up to 27 s, past a 20 s validation window.
fn ack_wait(spec: &WorkerSpec, batch: usize) -> Duration {
    let slowest = Duration::from_micros(
        spec.processing_delay_max_us
            .max(spec.processing_delay_min_us),
    );
    let batch = u32::try_from(batch).unwrap_or(u32::MAX);
    Duration::from_secs(5).max(slowest.saturating_mul(batch).saturating_mul(2))
}

/// Every partition of `map`, with its weight.
fn universe(map: &proto::v1::PartitionMap) -> Vec<Partition> {
    map.partitions
        .iter()
        .map(|entry| Partition::new(entry.id.to_string(), entry.weight.max(1)))
        .collect()
}

/// The handler needs the worker id, known only after the manager started: it is filled in
/// through this slot before any partition is assigned.
struct LateHandler(std::sync::OnceLock<Arc<SimHandler>>);

impl MessageHandler for LateHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        match self.0.get() {
            Some(handler) => handler.handle(delivery),
            None => Box::pin(async { Err::<(), HandlerError>("worker not ready".into()) }),
        }
    }
}

/// Run until `stop` fires (SIGTERM: graceful leave), or until the manager is fenced.
pub async fn run(
    spec: WorkerSpec,
    reports: ReportClient,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), WorkerError> {
    let delay = Duration::from_millis(spec.faults.as_ref().map_or(0, |f| f.startup_delay_ms));
    if !delay.is_zero() {
        // Self-test knob `startup_delay`: a worker slow to come up.
        tracing::info!(?delay, "joining late (startup_delay)");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return Ok(()),
        }
    }
    let traces = match &spec.trace {
        Some(trace) => Some(Arc::new(telemetry::Traces::start(
            crate::trace_settings(trace),
            "parti-sim-worker",
            &spec.identity_token,
        )?)),
        None => None,
    };
    let client = async_nats::connect(proto::nats_servers(&spec.nats_url))
        .await
        .map_err(WorkerError::Connect)?;
    let mut config: parti::Config = if spec.parti_config_json.is_empty() {
        parti::Config::default()
    } else {
        serde_json::from_str(&spec.parti_config_json).map_err(WorkerError::PartiConfig)?
    };
    if !spec.identity_token.is_empty() {
        config.identity_token = Some(spec.identity_token.clone());
    }
    // The partitions that exist: the run's partition map (followed below), else the spec's.
    let map_store = crate::partition_map::open(&async_nats::jetstream::new(client.clone())).await;
    let initial = match &map_store {
        Some(store) => crate::partition_map::current(store).await,
        None => None,
    };
    let partitions: Vec<Partition> = match &initial {
        Some(map) => universe(map),
        None => (0..spec.partition_count)
            .map(|p| {
                Partition::new(
                    p.to_string(),
                    spec.weights.get(p as usize).copied().unwrap_or(1),
                )
            })
            .collect(),
    };
    let source = StaticSource::new(partitions);
    let mut map_updates = match map_store {
        Some(store) => crate::partition_map::follow(store),
        None => tokio::sync::mpsc::channel(1).1,
    };
    let faults = spec.faults.unwrap_or_default();
    let mut consumer_config = ConsumerConfig {
        durable_prefix: proto::DURABLE_PREFIX.into(),
        fault_keep_consuming_after_revoke: faults.process_after_revoke
            || faults.stalled_assignment_watch,
        ..ConsumerConfig::new(
            spec.stream.clone(),
            format!("{}.{{partition}}", spec.subject_prefix),
        )
    };
    consumer_config.ack_wait = ack_wait(&spec, consumer_config.batch);
    let late = Arc::new(LateHandler(std::sync::OnceLock::new()));
    // The Go-style fault consumes by itself (crate::gostyle), without parti's helper.
    let consumer = if faults.go_style_handoff {
        None
    } else {
        Some(
            WorkerConsumer::new(client.clone(), consumer_config, late.clone())
                .await
                .map_err(WorkerError::Consumer)?,
        )
    };
    let manager = Manager::start(
        client.clone(),
        config,
        Arc::new(source.clone()),
        strategy(&spec)?,
        consumer.map(|c| c as _),
    )
    .await
    .map_err(WorkerError::Manager)?;
    let (version_tx, version_rx) = watch::channel(0u64);
    let handler = Arc::new(SimHandler {
        reports: reports.clone(),
        worker_id: manager.worker_id().to_string(),
        incarnation: manager.incarnation(),
        version: version_rx,
        rng: std::sync::Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(
            spec.seed ^ manager.incarnation(),
        )),
        handled: AtomicU64::new(0),
        leaked: std::sync::Mutex::default(),
        first_partitions: std::sync::OnceLock::new(),
        stalled: std::sync::Mutex::default(),
        traces: traces.clone(),
        spec: spec.clone(),
    });
    if faults.go_style_handoff {
        tokio::spawn(crate::gostyle::consume(
            client,
            spec.stream.clone(),
            spec.subject_prefix.clone(),
            manager.worker_id().to_string(),
            manager.assignment(),
            handler.clone(),
            stop.clone(),
        ));
    }
    let _ = late.0.set(handler.clone());
    tracing::info!(worker = manager.worker_id(), "worker started");
    let mut assignment = manager.assignment();
    let mut states = manager.state_watch();
    let mut leadership = manager.leadership();
    let status = |manager: &Manager| {
        let current = manager.assignment().borrow().clone();
        ChildReport::Status {
            worker_id: manager.worker_id().to_string(),
            incarnation: manager.incarnation(),
            state: format!("{:?}", manager.state()),
            leader: manager.is_leader(),
            assignment_version: current.version,
            partitions: current
                .partitions
                .iter()
                .filter_map(|p| p.id().parse().ok())
                .collect(),
            at_us: now_us(),
        }
    };
    reports.send(status(&manager)).await?;
    // The contract's heartbeat: a status at least this often, changed or not.
    let mut heartbeat = tokio::time::interval(proto::STATUS_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fenced = loop {
        tokio::select! {
            () = stop.cancelled() => break false,
            _ = heartbeat.tick() => {}
            changed = assignment.changed() => if changed.is_err() { break false },
            changed = states.changed() => if changed.is_err() { break false },
            changed = leadership.changed() => if changed.is_err() { break false },
            Some(map) = map_updates.recv() => {
                // Only the leader's source counts; every worker keeps its own current.
                source.update(universe(&map));
                manager.refresh_partitions();
                continue;
            }
        }
        version_tx.send_replace(manager.assignment().borrow().version);
        if handler.first_partitions.get().is_none() {
            let first: std::collections::HashSet<u32> = manager
                .assignment()
                .borrow()
                .partitions
                .iter()
                .filter_map(|p| p.id().parse().ok())
                .collect();
            if !first.is_empty() {
                let _ = handler.first_partitions.set(first);
            }
        }
        reports.send(status(&manager)).await?;
        if manager.state() == parti::State::Fenced {
            break true;
        }
    };
    manager.stop().await;
    if let Some(traces) = &traces {
        let stats = traces.shutdown(crate::TRACE_FLUSH).await;
        tracing::info!(?stats, "spans");
    }
    if fenced {
        return Err(WorkerError::Fenced);
    }
    Ok(())
}
