//! Producer child: publishes sequenced messages on its static partition range.
//!
//! Per partition one publish is in flight at a time and a sequence number is consumed only
//! after its PubAck: a failed publish is retried with the same `Nats-Msg-Id`, so the stream
//! stores it once and sequences stay gap-free. On start each partition resumes after the
//! last message of its subject in the stream, so a restarted producer continues the count.
//!
//! The partitions published are those the run's partition map gives this producer
//! (`partition_map`), followed while running: a partition added mid-run starts at
//! its stream's last sequence + 1, a removed one stops (its in-flight publish completes).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proto::v1::{PartitionMap, ProducerSpec};
use telemetry::Traces;
use tokio::time::Instant;

use crate::message::{SimulationMessage, message_id, subject};
use crate::partition_map;
use crate::report::{ChildReport, ReportClient, ReportClosed, now_us};

/// Why a producer stopped before `stop` fired. Each message names what was being done and
/// embeds its cause: it ends up in the child's log, read by users.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// NATS could not be reached.
    #[error("connecting to NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
    /// The stream named in the spec could not be opened.
    #[error("opening the stream {stream}: {source}")]
    Stream {
        /// The stream name.
        stream: String,
        /// The error.
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// A partition's resume point could not be read.
    #[error("reading the last message of {subject}: {source}")]
    LastMessage {
        /// The partition subject.
        subject: String,
        /// The error.
        #[source]
        source: jetstream::stream::LastRawMessageError,
    },
    /// A partition subject could not be read through (creating the ordered consumer,
    /// pulling, or reading a message).
    #[error("scanning {subject}: {source}")]
    Scan {
        /// The partition subject.
        subject: String,
        /// The error.
        #[source]
        source: async_nats::Error,
    },
    /// The agent's report socket is gone (the agent died).
    #[error(transparent)]
    Report(#[from] ReportClosed),
    /// The spec's tracing could not start.
    #[error("tracing: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
}

struct PartitionState {
    partition: u32,
    weight: i64,
    next_seq: u64,
    credit: f64,
    in_flight: bool,
    /// In the partition map now; a removed partition's state stays (acks index into the
    /// list) but publishes nothing.
    active: bool,
}

/// `(partition, weight)` this producer publishes according to `map`.
fn mine(map: &PartitionMap, producer_id: &str) -> Vec<(u32, i64)> {
    map.partitions
        .iter()
        .filter(|entry| entry.producer == producer_id)
        .map(|entry| (entry.id, entry.weight))
        .collect()
}

/// Make `partitions` follow `wanted`: deactivate what left, add (resuming from the stream)
/// or reactivate what came.
async fn follow_map(
    stream: &jetstream::stream::Stream,
    spec: &ProducerSpec,
    partitions: &mut Vec<PartitionState>,
    wanted: &[(u32, i64)],
) -> Result<(), ProducerError> {
    for state in partitions.iter_mut() {
        state.active = wanted.iter().any(|(p, _)| *p == state.partition);
    }
    for (partition, weight) in wanted {
        if partitions.iter().any(|s| s.partition == *partition) {
            continue;
        }
        let next_seq = resume_seq(stream, &subject(&spec.subject_prefix, *partition)).await? + 1;
        tracing::info!(partition, next_seq, "partition added");
        partitions.push(PartitionState {
            partition: *partition,
            weight: (*weight).max(1),
            next_seq,
            credit: phase(*partition),
            in_flight: false,
            active: true,
        });
    }
    Ok(())
}

/// A partition's starting credit in [0, 1), fixed per partition id. Starting every
/// partition at 0 would make a partition at 0.01 messages/s publish its first message only
/// after 100 s, and all such partitions in the same instant; a spread phase makes slow
/// partitions publish evenly over time from the start, as independent sources do.
fn phase(partition: u32) -> f64 {
    // splitmix64: a well-mixed 64-bit value from the id.
    let mut z = u64::from(partition).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The top 53 bits as a fraction of 2^53: exactly representable, below 1.
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Global rate multiplier: a triangle wave between min and max over `ramp_interval`.
fn multiplier(spec: &ProducerSpec, elapsed: Duration) -> f64 {
    if !spec.rate_variation || spec.ramp_interval_ms == 0 {
        return 1.0;
    }
    let period = spec.ramp_interval_ms as f64 / 1000.0;
    let phase = (elapsed.as_secs_f64() / period) % 2.0;
    let up = if phase <= 1.0 { phase } else { 2.0 - phase };
    spec.min_multiplier + (spec.max_multiplier - spec.min_multiplier) * up
}

/// Where `partition`'s sequence resumes: after the last simulation message of its subject,
/// if any. Usually that is the subject's last message (one direct get); when the last message
/// is something else (garbage someone published on the subject), the subject is read from the
/// start and the highest sequence of a simulation message wins — a restarted producer must
/// neither die on a foreign body nor restart its count.
pub(crate) async fn resume_seq(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<u64, ProducerError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => match serde_json::from_slice::<SimulationMessage>(&message.payload) {
            Ok(body) => Ok(body.partition_sequence),
            Err(_) => {
                tracing::warn!(
                    subject,
                    "last message is not a simulation message; scanning the subject"
                );
                scan_for_last_seq(stream, subject).await
            }
        },
        Err(error)
            if error.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            Ok(0)
        }
        Err(source) => Err(ProducerError::LastMessage {
            subject: subject.to_string(),
            source,
        }),
    }
}

/// The highest simulation sequence on `subject`, reading it all with an ephemeral consumer.
async fn scan_for_last_seq(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<u64, ProducerError> {
    let scan = |source: async_nats::Error| ProducerError::Scan {
        subject: subject.to_string(),
        source,
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|error| scan(error.into()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| scan(error.into()))?;
    let mut highest = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|error| scan(error.into()))?;
        if let Ok(body) = serde_json::from_slice::<SimulationMessage>(&message.payload) {
            highest = highest.max(body.partition_sequence);
        }
        let pending = message.info().map(|info| info.pending).unwrap_or(0);
        if pending == 0 {
            break;
        }
    }
    Ok(highest)
}

type PublishOutcome = (
    usize,
    SimulationMessage,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

/// Publish `state`'s next sequence; marks the partition in flight. A sampled message
/// carries its `traceparent`, and its `send` span covers the publish up to its PubAck.
fn publish(
    js: &jetstream::Context,
    spec: &ProducerSpec,
    (index, state): (usize, &mut PartitionState),
    producer_seq: u64,
    traces: Option<&Arc<Traces>>,
) -> impl std::future::Future<Output = PublishOutcome> + use<> {
    state.in_flight = true;
    let body = SimulationMessage {
        partition_id: state.partition,
        producer_id: spec.producer_id.clone(),
        partition_sequence: state.next_seq,
        producer_sequence: producer_seq,
        timestamp: now_us(),
        weight: state.weight,
    };
    let js = js.clone();
    let subject = subject(&spec.subject_prefix, state.partition);
    let id = message_id(state.partition, state.next_seq);
    let traced = traces.and_then(|traces| {
        let ids = traces.sampled(state.partition, state.next_seq)?;
        Some((traces.clone(), ids))
    });
    let producer = spec.producer_id.clone();
    async move {
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        if let Some((_, ids)) = &traced {
            telemetry::propagation::inject(&mut headers, ids.trace_id, ids.send_span, true);
        }
        let started = std::time::SystemTime::now();
        let result = match js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        if let Some((traces, ids)) = traced {
            let message = telemetry::MessageInfo {
                partition: body.partition_id,
                seq: body.partition_sequence,
                subject: &subject,
                message_id: &id,
            };
            let error = result.is_err().then_some("publish_failed");
            let span = (started, std::time::SystemTime::now());
            traces.send(ids, &message, &producer, span, error);
        }
        (index, body, result)
    }
}

/// Run until `stop` fires (SIGTERM), then let in-flight publishes finish.
pub async fn run(
    spec: ProducerSpec,
    reports: ReportClient,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), ProducerError> {
    let traces = match &spec.trace {
        Some(trace) => Some(Arc::new(Traces::start(
            crate::trace_settings(trace),
            "parti-sim-producer",
            &spec.producer_id,
        )?)),
        None => None,
    };
    let client = async_nats::connect(proto::nats_servers(&spec.nats_url))
        .await
        .map_err(ProducerError::Connect)?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|source| ProducerError::Stream {
            stream: spec.stream.clone(),
            source,
        })?;
    let map_store = partition_map::open(&js).await;
    let initial = match &map_store {
        Some(store) => partition_map::current(store).await,
        None => None,
    };
    let wanted: Vec<(u32, i64)> = match &initial {
        Some(map) => mine(map, &spec.producer_id),
        None => spec
            .partitions
            .iter()
            .enumerate()
            .map(|(index, p)| (*p, spec.weights.get(index).copied().unwrap_or(1)))
            .collect(),
    };
    let mut partitions = Vec::with_capacity(wanted.len());
    follow_map(&stream, &spec, &mut partitions, &wanted).await?;
    let mut map_updates = match map_store {
        Some(store) => partition_map::follow(store),
        None => tokio::sync::mpsc::channel(1).1,
    };
    tracing::info!(producer = %spec.producer_id, partitions = partitions.len(), "producing");
    let started = Instant::now();
    let mut last_tick = started;
    let mut producer_seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = stop.cancelled(), if acks.is_empty() => break,
            _ = tick.tick(), if !stop.is_cancelled() => {
                let now = Instant::now();
                let dt = now.duration_since(last_tick).as_secs_f64();
                last_tick = now;
                let rate = spec.rate_per_partition * multiplier(&spec, now.duration_since(started));
                for (index, state) in partitions.iter_mut().enumerate() {
                    if !state.active {
                        continue;
                    }
                    // Credit is capped so a long stall is not followed by a large burst.
                    state.credit = (state.credit + rate * state.weight as f64 * dt).min(100.0);
                    if state.credit < 1.0 || state.in_flight {
                        continue;
                    }
                    producer_seq += 1;
                    acks.push(publish(&js, &spec, (index, state), producer_seq, traces.as_ref()));
                }
            }
            Some(map) = map_updates.recv(), if !stop.is_cancelled() => {
                let wanted = mine(&map, &spec.producer_id);
                follow_map(&stream, &spec, &mut partitions, &wanted).await?;
            }
            Some((index, body, result)) = acks.next() => {
                let state = &mut partitions[index];
                state.in_flight = false;
                match result {
                    Ok(ack) => {
                        state.next_seq += 1;
                        state.credit -= 1.0;
                        // Credit left: go on at once instead of waiting for the next tick,
                        // so a partition's rate is bounded by the PubAck round trip only.
                        if state.credit >= 1.0 && state.active && !stop.is_cancelled() {
                            producer_seq += 1;
                            acks.push(publish(&js, &spec, (index, state), producer_seq, traces.as_ref()));
                        }
                        reports
                            .send(ChildReport::Sent {
                                partition: body.partition_id,
                                seq: body.partition_sequence,
                                producer_id: body.producer_id,
                                published_us: body.timestamp,
                                stream_seq: ack.sequence,
                            })
                            .await?;
                    }
                    Err(error) => {
                        // Same sequence next tick; Nats-Msg-Id de-duplicates a stored retry.
                        tracing::warn!(partition = body.partition_id, seq = body.partition_sequence, %error, "publish failed; retrying");
                    }
                }
            }
        }
    }
    if spec.unreported_tail {
        unreported_tail(&js, &spec, &mut partitions, producer_seq).await;
    }
    if let Some(traces) = &traces {
        let stats = traces.shutdown(crate::TRACE_FLUSH).await;
        tracing::info!(?stats, "spans");
    }
    tracing::info!(producer = %spec.producer_id, "stopped");
    Ok(())
}

/// Self-test knob `producers.faults.unreported_tail`: one more message on each partition,
/// confirmed by the server and never reported, as a producer killed between the PubAck and
/// its report leaves behind. Best effort: a failed publish is only logged.
async fn unreported_tail(
    js: &jetstream::Context,
    spec: &ProducerSpec,
    partitions: &mut [PartitionState],
    mut producer_seq: u64,
) {
    let mut acks = FuturesUnordered::new();
    for (index, state) in partitions.iter_mut().enumerate() {
        if state.active {
            producer_seq += 1;
            acks.push(publish(js, spec, (index, state), producer_seq, None));
        }
    }
    while let Some((_, body, result)) = acks.next().await {
        match result {
            Ok(_) => tracing::info!(
                partition = body.partition_id,
                seq = body.partition_sequence,
                "published and not reported (unreported_tail)"
            ),
            Err(error) => {
                tracing::warn!(partition = body.partition_id, %error, "unreported tail not published")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restarted producer continues each partition after the last stored message.
    #[tokio::test]
    async fn sequences_resume_from_the_stream() {
        let server = test_support::NatsServer::start();
        let js = jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: "RESUME".into(),
                subjects: vec!["resume.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
        assert_eq!(resume_seq(&stream, "resume.1").await.expect("empty"), 0);
        for seq in 1..=7 {
            let body = SimulationMessage {
                partition_id: 1,
                producer_id: "producer-0".into(),
                partition_sequence: seq,
                producer_sequence: seq,
                timestamp: 0,
                weight: 1,
            };
            let payload = serde_json::to_vec(&body).expect("json");
            js.publish("resume.1", payload.into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
        // Garbage at the tail of a subject: the last simulation message still counts.
        js.publish("resume.1", "garbage".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        js.publish("resume.2", "only garbage".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        assert_eq!(resume_seq(&stream, "resume.1").await.expect("resume"), 7);
        assert_eq!(resume_seq(&stream, "resume.2").await.expect("resume"), 0);
    }

    #[test]
    fn phases_are_spread_over_the_unit_interval() {
        let phases: Vec<f64> = (0..1000).map(phase).collect();
        assert!(phases.iter().all(|p| (0.0..1.0).contains(p)));
        // Each tenth of [0, 1) holds about a tenth of them.
        for decile in 0..10 {
            let low = f64::from(decile) / 10.0;
            let n = phases
                .iter()
                .filter(|p| (low..low + 0.1).contains(*p))
                .count();
            assert!((60..=140).contains(&n), "decile {decile}: {n}");
        }
        assert_eq!(
            phase(7).to_bits(),
            phase(7).to_bits(),
            "fixed per partition"
        );
    }

    #[test]
    fn multiplier_ramps_between_bounds() {
        let spec = ProducerSpec {
            rate_variation: true,
            min_multiplier: 0.5,
            max_multiplier: 2.0,
            ramp_interval_ms: 1000,
            ..Default::default()
        };
        assert!((multiplier(&spec, Duration::ZERO) - 0.5).abs() < 1e-9);
        assert!((multiplier(&spec, Duration::from_millis(1000)) - 2.0).abs() < 1e-9);
        assert!((multiplier(&spec, Duration::from_millis(1500)) - 1.25).abs() < 1e-9);
        assert!((multiplier(&ProducerSpec::default(), Duration::from_secs(3)) - 1.0).abs() < 1e-9);
    }
}
