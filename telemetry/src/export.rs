//! Getting finished spans out of the process: a bounded queue, drained by one task that
//! sends batches with the OTLP gRPC exporter.
//!
//! Why not the SDK's tracer and batch processor: our spans are records of things already
//! measured (a publish, a processing, a fault and its recovery), with ids derived from the
//! message (see [`crate::ids`]) that the SDK's span builder can no longer take; and the SDK's
//! batch processor keeps its dropped-span count to itself, while a run must report what its
//! telemetry lost. The export itself is the SDK's OTLP exporter.
//!
//! Recording never waits: a full queue drops the span and counts it. An unreachable
//! collector costs each batch one export timeout, inside the task, never the caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::TelemetryError;

/// Spans waiting for export; past this, new ones are dropped (and counted).
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// How long a partial batch waits for more spans.
const BATCH_WAIT: Duration = Duration::from_millis(500);
/// One export's limit: an unreachable collector costs this per batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of the spans recorded so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Recorded (queued) spans.
    pub recorded: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans dropped because the queue was full.
    pub dropped: u64,
    /// Spans whose export failed (collector unreachable or refusing).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    recorded: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ExportStats {
        ExportStats {
            recorded: self.recorded.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A process's span exporter.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<SpanData>,
    counters: Arc<Counters>,
    /// Tells the export task to send what is queued and end.
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Exporter {
    /// Export to the OTLP gRPC `endpoint` (`http://host:port`) as service `service`, with
    /// `attributes` on the resource. The connection is made lazily: an unreachable
    /// collector is not an error here. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`TelemetryError::Exporter`] when the endpoint cannot be used at all.
    pub fn start(
        endpoint: &str,
        service: &str,
        attributes: Vec<KeyValue>,
    ) -> Result<Self, TelemetryError> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let resource = Resource::builder_empty()
            .with_service_name(service.to_string())
            .with_attributes(attributes)
            .build();
        exporter.set_resource(&resource);
        let (queue, spans) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(drain(exporter, spans, stopped, counters.clone()));
        Ok(Self {
            queue,
            counters,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Queue a finished span; never waits (a full queue drops it and counts it).
    pub fn record(&self, span: SpanData) {
        self.counters.recorded.fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What became of the spans so far.
    pub fn stats(&self) -> ExportStats {
        self.counters.snapshot()
    }

    /// Export what is queued, waiting at most `within`; what is left then is counted as
    /// dropped, and spans recorded afterwards are dropped too.
    pub async fn shutdown(&self, within: Duration) -> ExportStats {
        let task = self.task.lock().ok().and_then(|mut task| task.take());
        if let Some(mut task) = task {
            self.stop.send_replace(true);
            if tokio::time::timeout(within, &mut task).await.is_err() {
                task.abort();
            }
            let c = self.counters.snapshot();
            let left = c.recorded.saturating_sub(c.exported + c.dropped + c.failed);
            self.counters.dropped.fetch_add(left, Ordering::Relaxed);
        }
        self.counters.snapshot()
    }
}

/// The export task: batches of up to [`BATCH`]; a partial one waits up to [`BATCH_WAIT`]
/// for more, and goes as soon as it is full. One timer per batch, and spans are taken in
/// bulk: waking (and arming a timer) per span was a measurable share of a worker's CPU at
/// ratio 1.0.
async fn drain(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut stopping = false;
    loop {
        let taken = tokio::select! {
            taken = spans.recv_many(&mut batch, BATCH) => taken,
            _ = stop.changed(), if !stopping => {
                // What is queued now goes out; what comes later is dropped by `shutdown`.
                stopping = true;
                spans.close();
                spans.recv_many(&mut batch, BATCH).await
            }
        };
        if taken == 0 {
            break;
        }
        let deadline = tokio::time::sleep(BATCH_WAIT);
        tokio::pin!(deadline);
        while batch.len() < BATCH && !stopping {
            let room = BATCH - batch.len();
            tokio::select! {
                taken = spans.recv_many(&mut batch, room) => if taken == 0 { break },
                () = &mut deadline => break,
                _ = stop.changed() => {
                    // This batch goes now; the rest of the queue follows in the next ones.
                    stopping = true;
                    spans.close();
                }
            }
        }
        let n = batch.len() as u64;
        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        match exporter.export(full).await {
            Ok(()) => counters.exported.fetch_add(n, Ordering::Relaxed),
            Err(error) => {
                tracing::debug!(%error, spans = n, "span export failed");
                counters.failed.fetch_add(n, Ordering::Relaxed)
            }
        };
    }
    let _ = exporter.shutdown();
}
