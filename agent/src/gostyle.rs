//! The Go library's consumption, reproduced on purpose — for the harness's self-test only
//! (`workers.faults.go_style_handoff`), never a way to run parti.
//!
//! What the Go helper does (../shared/parti-spec.md §4.1): one durable consumer per worker,
//! `<prefix>-<worker id>`, whose filter subjects are rewritten whenever that worker sees a new
//! assignment; nothing coordinates the old and the new owner, nothing fences. A consumer's
//! cursor is a stream sequence of its own, so when a partition moves to a worker whose cursor
//! is already past that partition's unprocessed messages (the backlog the old owner had not
//! fetched, everything published while a crashed owner was down), those messages are never
//! delivered to anyone. The harness must report that as loss.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::worker::{Received, SimHandler};

/// Consume `assignment`'s partitions the Go way until `stop`.
pub(crate) async fn consume(
    client: async_nats::Client,
    stream: String,
    subject_prefix: String,
    worker_id: String,
    mut assignment: watch::Receiver<parti::Assignment>,
    handler: Arc<SimHandler>,
    stop: CancellationToken,
) {
    let js = jetstream::new(client);
    let durable = format!("gostyle-{worker_id}");
    let mut filters: Vec<String> = Vec::new();
    let mut consumer: Option<jetstream::consumer::PullConsumer> = None;
    assignment.mark_changed();
    while !stop.is_cancelled() {
        if assignment.has_changed().unwrap_or(false) {
            let mut wanted: Vec<String> = assignment
                .borrow_and_update()
                .partitions
                .iter()
                .map(|p| format!("{subject_prefix}.{}", p.id()))
                .collect();
            wanted.sort();
            if wanted != filters {
                consumer = if wanted.is_empty() {
                    // Go leaves the durable with its old filter; nothing to pull now.
                    None
                } else {
                    // Create, or rewrite the filter of, this worker's durable: the cursor
                    // stays where it was.
                    let config = pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subjects: wanted.clone(),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(10),
                        deliver_policy: jetstream::consumer::DeliverPolicy::All,
                        ..Default::default()
                    };
                    match js.get_stream(&stream).await {
                        Ok(stream) => match stream.create_consumer(config).await {
                            Ok(consumer) => Some(consumer),
                            Err(error) => {
                                tracing::warn!(%error, "go-style: filter update failed");
                                None
                            }
                        },
                        Err(error) => {
                            tracing::warn!(%error, "go-style: stream lookup failed");
                            None
                        }
                    }
                };
                tracing::info!(?wanted, "go-style: filter subjects rewritten");
                filters = wanted;
            }
        }
        let Some(pull) = &consumer else {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = assignment.changed() => continue,
                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        };
        let batch = pull
            .batch()
            .max_messages(64)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let Ok(mut batch) = batch else {
            consumer = None;
            filters.clear();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(Ok(message)) = batch.next().await {
            let (stream_sequence, delivered) = message
                .info()
                .map(|info| (info.stream_sequence, info.delivered))
                .unwrap_or((0, 1));
            let received = Received {
                subject: message.subject.as_str(),
                payload: &message.payload,
                headers: message.headers.as_ref(),
                stream_sequence,
                delivered,
            };
            // No fence: the Go helper has none.
            if handler.process(received, || true).await.is_ok() {
                let _ = message.ack().await;
            }
        }
    }
}
