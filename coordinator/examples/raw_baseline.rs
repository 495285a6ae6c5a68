//! Raw async-nats baseline for the end-to-end benchmark (scripts/bench-e2e.sh): the same
//! stream settings, subjects and message size as a simulation run, published with PubAck
//! and consumed with server-confirmed acks, without parti, agents or the coordinator.
//!
//! `cargo run --release -p coordinator --example raw_baseline -- <nats-url> <partitions> <seconds>`
//! prints `baseline_msgs_per_sec=<n>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .context("usage: raw_baseline <nats-url> <partitions> <seconds>")?
        .clone();
    let partitions: u32 = args.get(2).map_or(Ok(16), |a| a.parse())?;
    let seconds: u64 = args.get(3).map_or(Ok(20), |a| a.parse())?;
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream("BASELINE").await;
    js.create_stream(stream::Config {
        name: "BASELINE".into(),
        subjects: vec!["baseline.partition.>".into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    // One publisher and one pull consumer per partition, one message in flight each way:
    // the same shape as the simulation's producer and parti's per-partition consumer.
    for partition in 0..partitions {
        let publisher = js.clone();
        tasks.push(tokio::spawn(async move {
            let js = publisher;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let body = format!(
                    "{{\"partition_id\":{partition},\"producer_id\":\"producer-0\",\"partition_sequence\":{seq},\"producer_sequence\":{seq},\"timestamp\":1795730000000000,\"weight\":1}}"
                );
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{partition}:{seq}").as_str());
                js.publish_with_headers(format!("baseline.partition.{partition}"), headers, body.into()).await?.await?;
            }
            anyhow::Ok(())
        }));
        let stream = js.get_stream("BASELINE").await?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("baseline-{partition}")),
                filter_subject: format!("baseline.partition.{partition}"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 16,
                ..Default::default()
            })
            .await?;
        let consumed = consumed.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut batch = consumer
                    .batch()
                    .max_messages(16)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await?;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                    message
                        .double_ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = consumed.load(Ordering::Relaxed) as f64 / seconds as f64;
    println!("baseline_msgs_per_sec={rate:.0}");
    Ok(())
}
