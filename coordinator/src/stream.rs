//! The JetStream stream a run uses, made fresh for every run.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv, stream};
use proto::v1::PartitionMap;

use sim_core::config::{Config, NatsConfig};

/// How long the stream remembers a message id to drop a re-publish (`Nats-Msg-Id`). The
/// server's memory grows with it for that long: its leak baseline is taken after it.
pub(crate) const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Delete what a previous run left (the stream and parti's control bucket), then create the
/// stream: limits retention (a restarted producer resumes from the last message of its
/// subject, which work-queue retention would have deleted), file storage, and room for one
/// durable consumer per partition (the server's default cap is 1000, see NATS-NOTES).
///
/// Also (re)creates the simulation's own KV bucket ([`proto::SIM_BUCKET`], holding the
/// partition map) and returns it.
///
/// Both get `nats.replicas` replicas; parti's bucket gets them through the workers' parti
/// config (`bucket_replicas`, see `placement`), since the first worker creates it. `url` is
/// one URL or a comma-separated list of a cluster's servers.
pub async fn prepare(url: &str, config: &Config) -> anyhow::Result<kv::Store> {
    let js = jetstream_at(url).await?;
    let name = config.nats.stream.clone();
    let replicas = config.nats.replicas as usize;
    let _ = js.delete_stream(&name).await;
    let _ = js.delete_key_value("parti").await;
    let _ = js.delete_key_value(proto::SIM_BUCKET).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.>", config.nats.subject_prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_consumers: i32::try_from(config.partitions.count)
            .unwrap_or(i32::MAX)
            .saturating_add(100),
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {name}"))?;
    js.create_key_value(kv::Config {
        bucket: proto::SIM_BUCKET.into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating KV bucket {}", proto::SIM_BUCKET))
}

/// A JetStream context on the server(s) at `url` (one URL or a comma-separated list).
async fn jetstream_at(url: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(proto::nats_servers(url))
        .await
        .context("connecting")?;
    Ok(jetstream::new(client))
}

/// The run's KV bucket as it is (a resumed run: nothing is deleted or created).
pub async fn open_sim_kv(url: &str) -> anyhow::Result<kv::Store> {
    jetstream_at(url)
        .await?
        .get_key_value(proto::SIM_BUCKET)
        .await
        .with_context(|| format!("opening KV bucket {}", proto::SIM_BUCKET))
}

/// Publish `map` as the run's partition map.
pub async fn publish_partition_map(store: &kv::Store, map: &PartitionMap) -> anyhow::Result<()> {
    let json = serde_json::to_vec(map).context("encoding the partition map")?;
    store
        .put(proto::PARTITIONS_KEY, json.into())
        .await
        .context("writing the partition map")?;
    Ok(())
}

/// The highest partition sequence `partition`'s durable consumer had acknowledged at its ack
/// floor (every message up to it acknowledged); 0 when none was.
///
/// The floor is a stream sequence. Usually the message stored there is one of the
/// partition's, and says which partition sequence it carries (the durable filters one
/// partition's subject, whose sequences grow with the stream's). But a consumer that has
/// caught up moves its floor to the stream's end, onto another partition's message; then
/// every message of this partition up to the floor was acknowledged, and the partition's
/// last message (if it is below the floor) gives the sequence.
///
/// # Errors
/// No such consumer (a worker that does not bind [`proto::partition_durable`]), no server,
/// or a body that is not a simulation message.
pub async fn acked_through(url: &str, nats: &NatsConfig, partition: u32) -> anyhow::Result<u64> {
    let js = jetstream_at(url).await?;
    let stream = js
        .get_stream(&nats.stream)
        .await
        .with_context(|| format!("stream {}", nats.stream))?;
    let durable = proto::partition_durable(partition);
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&durable)
        .await
        .map_err(|error| anyhow::anyhow!("consumer {durable}: {error}"))?;
    let floor = consumer
        .info()
        .await
        .with_context(|| format!("consumer {durable}"))?
        .ack_floor
        .stream_sequence;
    if floor == 0 {
        return Ok(0);
    }
    let subject = format!("{}.{partition}", nats.subject_prefix);
    let at_floor = stream
        .get_raw_message(floor)
        .await
        .with_context(|| format!("stream message {floor} (ack floor of {durable})"))?;
    let message = if at_floor.subject.as_str() == subject {
        at_floor
    } else {
        let last = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .with_context(|| format!("the last message of {subject}"))?;
        anyhow::ensure!(
            last.sequence <= floor,
            "ack floor {floor} is on {} while {subject} has message {} above it",
            at_floor.subject,
            last.sequence
        );
        last
    };
    partition_sequence(&message)
}

/// The partition sequence of each of `partitions`' last stored message (0: none stored), or
/// why it could not be read — the stream as the ground truth at the end of a run
/// (`sim_core::stream_check`). Read 16 at a time.
///
/// # Errors
/// No server, or no stream.
pub async fn stored_through(
    url: &str,
    nats: &NatsConfig,
    partitions: &[u32],
) -> anyhow::Result<Vec<(u32, Result<u64, String>)>> {
    use futures::StreamExt;
    let js = jetstream_at(url).await?;
    let stream = js
        .get_stream(&nats.stream)
        .await
        .with_context(|| format!("stream {}", nats.stream))?;
    let stream = &stream;
    Ok(futures::stream::iter(partitions.iter().copied())
        .map(|partition| async move {
            let subject = format!("{}.{partition}", nats.subject_prefix);
            let last = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => partition_sequence(&message).map_err(|e| format!("{e:#}")),
                Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                    Ok(0)
                }
                Err(error) => Err(format!("the last message of {subject}: {error}")),
            };
            (partition, last)
        })
        .buffer_unordered(16)
        .collect()
        .await)
}

/// The `partition_sequence` a stored simulation message carries.
fn partition_sequence(message: &jetstream::message::StreamMessage) -> anyhow::Result<u64> {
    let body: serde_json::Value = serde_json::from_slice(&message.payload)
        .with_context(|| format!("stream message {} is not JSON", message.sequence))?;
    body["partition_sequence"].as_u64().with_context(|| {
        format!(
            "stream message {} has no partition_sequence",
            message.sequence
        )
    })
}
