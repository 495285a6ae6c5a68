//! Metrics of the current run, served for scraping at `metrics.prometheus.port` when a
//! run's config enables it, and pushed over OTLP when `telemetry.metrics` is on ([`otlp`]).
//!
//! A scrape asks the run engine for the text (see [`Endpoint`]): the numbers are the
//! tracker's and the engine's own, read at that moment — there is no second set of counters
//! to drift from what the verdict counts. What is exported, and why each metric means what
//! it says, is in docs/OBSERVABILITY.md; `run::metrics` renders it.
//!
//! The endpoint outlives the run that opened it, so the last values of a finished run stay
//! scrapable until the next run starts (or the daemon stops); a run with another port moves
//! it, a run with metrics disabled closes it.

pub mod exposition;
pub mod otlp;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A scrape waiting for the engine's text.
pub type Scrape = oneshot::Sender<String>;

/// How long a scrape waits for a busy engine before it answers 503 (Prometheus's default
/// scrape timeout is 10 s).
const SCRAPE_WAIT: Duration = Duration::from_secs(8);

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` listener; dropping it closes the port.
#[derive(Debug)]
pub struct Endpoint {
    /// The port the config asked for (0: any).
    asked: u16,
    addr: SocketAddr,
    scrapes: mpsc::Receiver<Scrape>,
    server: JoinHandle<()>,
}

impl Endpoint {
    /// Listen on every interface at `port` (0: a free one), as Prometheus exporters do: the
    /// scraper usually runs elsewhere (a container, the lab's control host). What is served
    /// is read-only run statistics.
    ///
    /// # Errors
    /// The port cannot be bound (in use, or privileged).
    pub async fn bind(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
        let addr = listener.local_addr()?;
        // One scrape at a time is plenty; a second waits for the first.
        let (requests, scrapes) = mpsc::channel::<Scrape>(1);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || scrape(requests.clone())),
        );
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "metrics endpoint stopped");
            }
        });
        Ok(Self {
            asked: port,
            addr,
            scrapes,
            server,
        })
    }

    /// Whether this endpoint is what a config asking for `port` wants.
    pub fn serves(&self, port: u16) -> bool {
        port == 0 || port == self.asked || port == self.addr.port()
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next scrape to answer (never `None` while the server runs).
    pub async fn next(&mut self) -> Option<Scrape> {
        self.scrapes.recv().await
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Ask the engine for the text; a busy engine costs the scraper a 503, never the run a wait.
async fn scrape(requests: mpsc::Sender<Scrape>) -> axum::response::Response {
    let (reply, text) = oneshot::channel();
    let answered = async {
        requests.send(reply).await.ok()?;
        text.await.ok()
    };
    match tokio::time::timeout(SCRAPE_WAIT, answered).await {
        Ok(Some(text)) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the run engine did not answer in time\n",
        )
            .into_response(),
    }
}
