//! An OTLP gRPC receiver of traces and metrics on loopback, in the test process: what a
//! collector would get from a real run, decoded and kept for assertions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::wait_until;

/// One received span, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The resource's `service.name`.
    pub service: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id ("" for a root).
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    /// An attribute's value, or "".
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// One pushed data point, flattened: a counter's or gauge's value, or a histogram's count.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The metric's name.
    pub name: String,
    /// `sum` (monotonic), `gauge` or `histogram`.
    pub kind: &'static str,
    /// The point's attributes, values as text.
    pub labels: BTreeMap<String, String>,
    /// The value (a histogram's: its count).
    pub value: f64,
    /// The resource's `service.instance.id`.
    pub instance: String,
}

/// Metric pushes received: every push's points, in arrival order.
#[derive(Debug, Default, Clone)]
struct Pushes(Arc<Mutex<Vec<Vec<Point>>>>);

#[tonic::async_trait]
impl MetricsService for Pushes {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut points = Vec::new();
        for resource in request.into_inner().resource_metrics {
            let instance = resource_attr(
                resource.resource.as_ref().map(|r| &r.attributes[..]),
                "service.instance.id",
            );
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let mut push = |kind, attributes: &[KeyValue], value| {
                    points.push(Point {
                        name: metric.name.clone(),
                        kind,
                        labels: flatten(attributes),
                        value,
                        instance: instance.clone(),
                    });
                };
                let number =
                    |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => f64::NAN,
                    };
                match &metric.data {
                    Some(metric::Data::Sum(sum)) if sum.is_monotonic => {
                        for p in &sum.data_points {
                            push("sum", &p.attributes, number(p));
                        }
                    }
                    Some(metric::Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            push("gauge", &p.attributes, number(p));
                        }
                    }
                    Some(metric::Data::Histogram(histogram)) => {
                        for p in &histogram.data_points {
                            push("histogram", &p.attributes, p.count as f64);
                        }
                    }
                    _ => push("other", &[], f64::NAN),
                }
            }
        }
        if let Ok(mut pushes) = self.0.lock() {
            pushes.push(points);
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Attributes as key → value text.
fn flatten(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), value_text(kv)))
        .collect()
}

fn value_text(kv: &KeyValue) -> String {
    text(kv.value.as_ref().and_then(|v| v.value.as_ref()))
}

fn resource_attr(attributes: Option<&[KeyValue]>, key: &str) -> String {
    attributes
        .unwrap_or_default()
        .iter()
        .find(|kv| kv.key == key)
        .map(value_text)
        .unwrap_or_default()
}

#[derive(Debug, Default, Clone)]
struct Store {
    spans: Arc<Mutex<Vec<Span>>>,
    count: Arc<AtomicUsize>,
    /// Keep the spans (tests), or only count them (benchmarks).
    keep: bool,
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        if !self.keep {
            let n: usize = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.count.fetch_add(n, Ordering::Relaxed);
            return Ok(tonic::Response::new(ExportTraceServiceResponse::default()));
        }
        let mut flat = Vec::new();
        for resource in request.resource_spans {
            let service = resource_attr(
                resource.resource.as_ref().map(|r| &r.attributes[..]),
                "service.name",
            );
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                flat.push(Span {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: flatten(&span.attributes),
                });
            }
        }
        self.count.fetch_add(flat.len(), Ordering::Relaxed);
        if let Ok(mut spans) = self.spans.lock() {
            spans.extend(flat);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A receiver running on its own thread until dropped.
#[derive(Debug)]
pub struct Receiver {
    port: u16,
    spans: Store,
    pushes: Pushes,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Listen on a free loopback port, keeping every span.
    pub fn start() -> Self {
        Self::listen(true)
    }

    /// Listen on a free loopback port, only counting spans (a benchmark's sink).
    pub fn counting() -> Self {
        Self::listen(false)
    }

    fn listen(keep: bool) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let spans = Store {
            keep,
            ..Store::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = spans.clone();
        let pushes = Pushes::default();
        let metrics = pushes.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(service))
                    .add_service(MetricsServiceServer::new(metrics))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            port,
            spans,
            pushes,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The endpoint to configure: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many spans were received so far.
    pub fn span_count(&self) -> usize {
        self.spans.count.load(Ordering::Relaxed)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Every metric push received so far, each as its points, in arrival order.
    pub fn metric_pushes(&self) -> Vec<Vec<Point>> {
        self.pushes.0.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Wait until `condition` holds of the spans received (they arrive in batches, up to
    /// half a second after they were recorded).
    pub fn wait_for(&self, what: &str, within: Duration, condition: impl Fn(&[Span]) -> bool) {
        wait_until(what, within, || {
            let spans = self.spans();
            if condition(&spans) {
                Ok(())
            } else {
                Err(format!("{} spans so far", spans.len()))
            }
        });
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
