//! The JetStream stream a run uses, made fresh for every run.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};

use crate::config::Config;

/// Delete what a previous run left (the stream and parti's control bucket), then create the
/// stream: limits retention (a restarted producer resumes from the last message of its
/// subject, which work-queue retention would have deleted), file storage, and room for one
/// durable consumer per partition (the server's default cap is 1000, see NATS-NOTES).
pub async fn prepare(url: &str, config: &Config) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting")?;
    let js = jetstream::new(client);
    let name = config.nats.stream.clone();
    let _ = js.delete_stream(&name).await;
    let _ = js.delete_key_value("parti").await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.>", config.nats.subject_prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_consumers: i32::try_from(config.partitions.count)
            .unwrap_or(i32::MAX)
            .saturating_add(100),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {name}"))?;
    Ok(())
}
