//! The run's metrics pushed over OTLP gRPC (`telemetry.metrics`): the very families a
//! scrape of `/metrics` serves, with the same names, so one set of dashboards reads either
//! path (the collector's Prometheus exporter keeps a name that already ends in `_total`).
//!
//! Counters go as cumulative monotonic sums and histograms as cumulative explicit-bucket
//! histograms, all starting when this coordinator process took the run; gauges as gauges.
//! The resource is `service.name=parti-sim-coordinator` with the run id as
//! `service.instance.id` (the collector turns them into `job` and `instance`).
//!
//! The engine only hands a rendered [`Exposition`] to a slot of one; the conversion and the
//! export happen on the pusher's own task, so a collector that is slow or gone costs the run
//! nothing. The slot keeps the newest metrics: one the task has not taken yet when the next
//! arrives is replaced (and counted as dropped), so an export never sends stale values when
//! fresher ones exist. A failed export is counted and logged once until a success.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::exposition::{Exposition, Family, Kind, Value};

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The resource's `service.name`.
const SERVICE: &str = "parti-sim-coordinator";

/// Why a pusher cannot start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.metrics.endpoint {endpoint:?}: {source}")]
pub struct PushError {
    endpoint: String,
    source: tonic::transport::Error,
}

/// Pushes so far: done, failed (collector unreachable or refusing) and dropped (replaced
/// by newer metrics before the task could take them, the task busy with an export).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushStats {
    /// Exports the collector accepted.
    pub pushed: u64,
    /// Exports that failed or timed out.
    pub failed: u64,
    /// Pushes replaced by newer metrics before they could go out.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counts {
    pushed: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Counts {
    fn read(&self) -> PushStats {
        PushStats {
            pushed: self.pushed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// One export for the pusher's task: its metrics, taken at `at`, and who waits for it.
struct Job {
    metrics: Exposition,
    at: SystemTime,
    done: Option<oneshot::Sender<()>>,
}

/// The newest job not yet taken by the task, and the bell that tells it one is there.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    bell: Notify,
}

impl Slot {
    /// Put `job` in, replacing one not taken yet (whether one was replaced).
    fn put(&self, job: Job) -> bool {
        let replaced = match self.job.lock() {
            Ok(mut slot) => slot.replace(job).is_some(),
            Err(_) => return false,
        };
        self.bell.notify_one();
        replaced
    }

    fn take(&self) -> Option<Job> {
        self.job.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A run's metric pusher: due every `interval`, exporting on its own task.
pub struct Pusher {
    interval: Duration,
    next: Instant,
    slot: Arc<Slot>,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("interval", &self.interval)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// A pusher to `endpoint` (`http://host:port`, already checked by the config) for run
    /// `run_id`, its cumulative series starting now. The connection is made at the first
    /// push, so a collector started after the run still gets its metrics.
    ///
    /// # Errors
    /// The endpoint is not a URI tonic can connect to.
    pub fn start(endpoint: &str, interval: Duration, run_id: &str) -> Result<Self, PushError> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|source| PushError {
                endpoint: endpoint.to_string(),
                source,
            })?
            .connect_timeout(EXPORT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let client = MetricsServiceClient::new(channel);
        let counts = Arc::new(Counts::default());
        let slot = Arc::new(Slot::default());
        let task = tokio::spawn(export_loop(
            client,
            Arc::clone(&slot),
            Arc::clone(&counts),
            (resource(run_id), SystemTime::now()),
            endpoint.to_string(),
        ));
        Ok(Self {
            interval,
            next: Instant::now(),
            slot,
            counts,
            task,
        })
    }

    /// Whether a push is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Push `metrics` (replacing, and counting as dropped, any not yet taken); the next is
    /// due an interval from `now`.
    pub fn offer(&mut self, metrics: Exposition, now: Instant) {
        self.next = now + self.interval;
        let job = Job {
            metrics,
            at: SystemTime::now(),
            done: None,
        };
        if self.slot.put(job) {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Push the run's final `metrics` (replacing any not yet taken) and wait until the
    /// collector has them or the export failed: at most one export under way plus this
    /// one, each bounded by the export timeout.
    pub async fn flush(&mut self, metrics: Exposition) -> PushStats {
        let (done, exported) = oneshot::channel();
        let job = Job {
            metrics,
            at: SystemTime::now(),
            done: Some(done),
        };
        if self.slot.put(job) {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // The task counts the export's outcome; a wait cut short leaves it to count.
        let _ = tokio::time::timeout(2 * EXPORT_TIMEOUT + Duration::from_secs(1), exported).await;
        self.stats()
    }

    /// Pushes so far.
    pub fn stats(&self) -> PushStats {
        self.counts.read()
    }
}

/// The export task: take the newest job when rung, export it, count the outcome.
async fn export_loop(
    mut client: MetricsServiceClient<tonic::transport::Channel>,
    slot: Arc<Slot>,
    counts: Arc<Counts>,
    (resource, start): (Resource, SystemTime),
    endpoint: String,
) {
    let mut warned = false;
    loop {
        slot.bell.notified().await;
        let Some(job) = slot.take() else { continue };
        let request = request(&job.metrics, resource.clone(), start, job.at);
        match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(_)) => {
                counts.pushed.fetch_add(1, Ordering::Relaxed);
                warned = false;
            }
            failure => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                if !warned {
                    let error = match failure {
                        Ok(Err(status)) => status.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::warn!(%endpoint, %error, "pushing metrics failed (logged again only after a success)");
                    warned = true;
                }
            }
        }
        if let Some(done) = job.done {
            let _ = done.send(());
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource(run_id: &str) -> Resource {
    Resource {
        attributes: vec![
            attribute("service.name", SERVICE),
            attribute("service.instance.id", run_id),
            attribute("sim.run_id", run_id),
        ],
        ..Resource::default()
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The export request of `metrics`, taken at `at`, cumulative since `start`.
pub fn request(
    metrics: &Exposition,
    resource: Resource,
    start: SystemTime,
    at: SystemTime,
) -> ExportMetricsServiceRequest {
    let times = (unix_nanos(start), unix_nanos(at));
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "parti-sim".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                // A family without series (no leader yet, `partition_series: 0`) is no
                // metric: some backends refuse one without data points.
                metrics: metrics
                    .families()
                    .iter()
                    .filter(|family| !family.series().is_empty())
                    .map(|family| metric(family, times))
                    .collect(),
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn metric(family: &Family, (start, at): (u64, u64)) -> Metric {
    let attributes = |labels: &[(String, String)]| -> Vec<KeyValue> {
        labels
            .iter()
            .map(|(name, value)| attribute(name, value))
            .collect()
    };
    let numbers = || -> Vec<NumberDataPoint> {
        family
            .series()
            .iter()
            .filter_map(|series| match series.value {
                Value::Number(value) => Some(NumberDataPoint {
                    attributes: attributes(&series.labels),
                    start_time_unix_nano: start,
                    time_unix_nano: at,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..NumberDataPoint::default()
                }),
                Value::Histogram(_) => None,
            })
            .collect()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match family.kind() {
        Kind::Counter => metric::Data::Sum(Sum {
            data_points: numbers(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        Kind::Gauge => metric::Data::Gauge(Gauge {
            data_points: numbers(),
        }),
        Kind::Histogram => metric::Data::Histogram(Histogram {
            data_points: family
                .series()
                .iter()
                .filter_map(|series| match &series.value {
                    Value::Histogram(buckets) => Some(HistogramDataPoint {
                        attributes: attributes(&series.labels),
                        start_time_unix_nano: start,
                        time_unix_nano: at,
                        count: buckets.count(),
                        sum: Some(buckets.sum()),
                        bucket_counts: buckets.counts().to_vec(),
                        explicit_bounds: buckets.bounds().to_vec(),
                        ..HistogramDataPoint::default()
                    }),
                    Value::Number(_) => None,
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
    };
    Metric {
        name: family.name().to_string(),
        description: family.help().to_string(),
        data: Some(data),
        ..Metric::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::Buckets;

    #[test]
    fn families_become_sums_gauges_and_histograms() {
        static BOUNDS: [f64; 2] = [0.1, 1.0];
        let mut e = Exposition::new();
        e.family("a_total", Kind::Counter, "A.")
            .sample(&[("type", "x")], 3.0);
        e.family("b", Kind::Gauge, "B.").sample(&[], 1.5);
        let mut buckets = Buckets::new(&BOUNDS);
        for v in [0.05, 0.5, 7.0] {
            buckets.record(v);
        }
        e.family("c_seconds", Kind::Histogram, "C.")
            .histogram(&[], &buckets);
        e.family("no_series", Kind::Gauge, "Nothing to say yet.");
        let start = UNIX_EPOCH + Duration::from_secs(10);
        let at = UNIX_EPOCH + Duration::from_secs(12);
        let request = request(&e, resource("run-1"), start, at);
        let resource = &request.resource_metrics[0];
        assert!(
            resource
                .resource
                .as_ref()
                .expect("resource")
                .attributes
                .contains(&attribute("service.instance.id", "run-1"))
        );
        let metrics = &resource.scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 3, "a family without series is left out");
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("a sum: {:?}", metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!(point.attributes, vec![attribute("type", "x")]);
        assert_eq!(
            (point.start_time_unix_nano, point.time_unix_nano),
            (10_000_000_000, 12_000_000_000)
        );
        assert!(
            matches!(&metrics[1].data, Some(metric::Data::Gauge(g)) if g.data_points.len() == 1)
        );
        let Some(metric::Data::Histogram(histogram)) = &metrics[2].data else {
            panic!("a histogram: {:?}", metrics[2]);
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.bucket_counts, vec![1, 1, 1], "not cumulative");
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!((point.count, point.sum), (3, Some(7.55)));
    }
}
