//! Consumption helper: processes the assigned partitions from JetStream.
//!
//! One durable pull consumer per partition (`<durable_prefix>-<partition id>`, filtered to
//! that partition's subject). The ack floor and unacked messages therefore travel with the
//! partition: the next owner binds the same durable and continues exactly where the server
//! says the previous owner stopped — the Go helper's per-worker filter rewrite could skip a
//! partition's backlog (parti-spec §4.1).
//!
//! Per partition one task pulls a batch, runs the handler on each message serially (order
//! kept), and acknowledges with a double ack (the server confirms it, so a lost ack cannot
//! silently turn into a redelivery to someone else later). A handler error naks with a
//! backoff by delivery count. On revoke the task finishes the current handler, lets its
//! open pull request run out, naks what that request brought in stream order (immediately
//! redeliverable to the next owner, oldest first) and ends; the manager confirms the
//! handoff only after that. Nakking while the request is still open would be worse than
//! useless: the server redelivers a nakked message at once to that same open request,
//! which naks it again, and the redelivery queue the next owner inherits ends up in
//! whatever order those round trips finished — the partition's order broken at every
//! planned move. A new owner that finds unacknowledged messages in the durable processes
//! nothing until they are back, waiting for a departed owner's to time out (`takeover.rs`).
//! A message that comes up while the fence is invalid (leases not renewed: the KV bucket's
//! leader moved, say) is not processed, nor is any after it in that pull; if the leases hold
//! again with the partition still ours, they are nakked in stream order and gathered
//! before anything newer — left to time out on their own, they came back an ack wait
//! later, behind their successors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::takeover::{Rival, Takeover};
use crate::{AssignmentChange, AssignmentListener, Fence, Partition};

/// How to consume.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Stream holding the partition subjects.
    pub stream: String,
    /// Subject of a partition; `{partition}` is replaced by `Partition::subject_key()`.
    pub subject_template: String,
    /// Durable names are `<durable_prefix>-<partition id>`.
    pub durable_prefix: String,
    /// Server redelivers an unacknowledged message after this long.
    pub ack_wait: Duration,
    /// Deliveries before the server gives up on a message (`-1`: never). Exhaustion is
    /// counted (see [`ConsumerStats::exhausted`]), never silent.
    pub max_deliver: i64,
    /// Messages pulled per request (and the durable's `max_ack_pending`).
    pub batch: usize,
    /// How long one pull waits for messages; bounds how long a revoke takes.
    pub fetch_expiry: Duration,
    /// First nak delay after a handler error; doubles per delivery up to `nak_backoff_max`.
    pub nak_backoff: Duration,
    /// Upper bound of the nak delay.
    pub nak_backoff_max: Duration,
    /// The server deletes a durable unused this long.
    pub inactive_threshold: Duration,
    /// Fault injection for parti-sim's self-test only: keep consuming a partition after it
    /// was revoked, which breaks the handoff guarantee on purpose. Never set it otherwise.
    #[doc(hidden)]
    pub fault_keep_consuming_after_revoke: bool,
}

impl ConsumerConfig {
    /// Defaults for `stream` with subjects built from `subject_template`.
    pub fn new(stream: impl Into<String>, subject_template: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            subject_template: subject_template.into(),
            durable_prefix: "parti".into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            batch: 16,
            fetch_expiry: Duration::from_secs(1),
            nak_backoff: Duration::from_millis(100),
            nak_backoff_max: Duration::from_secs(5),
            inactive_threshold: Duration::from_secs(24 * 3600),
            fault_keep_consuming_after_revoke: false,
        }
    }

    /// The subject of `partition`.
    pub fn subject(&self, partition: &Partition) -> String {
        self.subject_template
            .replace("{partition}", &partition.subject_key())
    }

    /// The durable consumer name of `partition`.
    pub fn durable(&self, partition: &Partition) -> String {
        let raw = format!("{}-{}", self.durable_prefix, partition.id());
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// One message handed to the handler.
#[derive(Debug)]
pub struct Delivery {
    /// The partition it belongs to.
    pub partition: Partition,
    /// Subject it was published on.
    pub subject: String,
    /// Body.
    pub payload: Bytes,
    /// Headers, if any.
    pub headers: Option<async_nats::HeaderMap>,
    /// Stream sequence.
    pub stream_sequence: u64,
    /// 1 on first delivery, more on redeliveries.
    pub delivered: i64,
    /// Permission to process; check right before any side effect.
    pub fence: Fence,
}

/// Error type handlers return; the message is nakked with backoff — unless it is
/// [`Fenced`], or the fence is invalid when it returns.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns when it stopped at the fence ([`Delivery::fence`] invalid before
/// its side effect). Not a failure of the message: it is not nakked with a backoff (which
/// would retry it behind its successors) but held with the rest of its pull and handed back
/// in order if the partition stays ours.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stopped at the fence: this worker may not process the partition now")]
pub struct Fenced;

/// Processes one message. Called serially per partition.
pub trait MessageHandler: Send + Sync + 'static {
    /// Handle `delivery`; `Ok` acks it, `Err` naks it.
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// Counters of the helper.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages acknowledged (server-confirmed).
    pub acked: AtomicU64,
    /// Handler errors (each nakked).
    pub handler_errors: AtomicU64,
    /// Messages whose last allowed delivery failed (the server will not deliver them again).
    pub exhausted: AtomicU64,
    /// Max-deliveries advisories seen for our consumers.
    pub exhausted_advisories: AtomicU64,
    /// Acks that failed (the message will be redelivered).
    pub ack_failures: AtomicU64,
    /// Messages returned unprocessed, in stream order: at revoke (nakked for the next
    /// owner), and after the fence held them back while the partition stayed ours (nakked
    /// for ourselves, then taken over like a planned handoff's).
    pub returned: AtomicU64,
    /// Messages a takeover received before it could process them (pending ones of a
    /// previous owner still missing), later processed in stream order.
    pub kept: AtomicU64,
    /// Takeovers that waited for a departed owner's messages to time out.
    pub takeover_waits: AtomicU64,
    /// Deliveries of our durables that went to another puller while we owned the partition
    /// (a gap in the delivery sequence: an old owner's late pull request, a foreign client).
    pub delivered_elsewhere: AtomicU64,
    /// Times another puller was found to keep taking a partition's messages (gaps past one
    /// late pull request's burst): its order is not kept while it does.
    pub rivals: AtomicU64,
    /// Messages not processed because the fence was invalid when they came up (or an
    /// earlier one of their pull was held back so): left to the next owner, or handed back
    /// to ourselves in order once the leases hold again.
    pub fenced: AtomicU64,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Consumes the partitions the manager assigns; plug it in as the manager's listener.
pub struct WorkerConsumer {
    js: jetstream::Context,
    config: ConsumerConfig,
    handler: Arc<dyn MessageHandler>,
    running: Mutex<HashMap<Partition, Running>>,
    stats: Arc<ConsumerStats>,
    advisories: JoinHandle<()>,
}

impl std::fmt::Debug for WorkerConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConsumer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for WorkerConsumer {
    fn drop(&mut self) {
        self.advisories.abort();
    }
}

impl WorkerConsumer {
    /// A consumer on `client` calling `handler`. Subscribes to max-delivery advisories.
    pub async fn new(
        client: async_nats::Client,
        config: ConsumerConfig,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Arc<Self>, async_nats::SubscribeError> {
        let stats = Arc::new(ConsumerStats::default());
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            config.stream
        );
        let mut advisories = client.subscribe(subject).await?;
        let js = jetstream::new(client);
        let prefix = format!("{}-", config.durable_prefix);
        let counter = stats.clone();
        let advisories = tokio::spawn(async move {
            while let Some(message) = advisories.next().await {
                let consumer = message.subject.rsplit('.').next().unwrap_or_default();
                if consumer.starts_with(&prefix) {
                    counter.exhausted_advisories.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        consumer,
                        "max deliveries reached: a message will not be delivered again"
                    );
                }
            }
        });
        Ok(Arc::new(Self {
            js,
            config,
            handler,
            running: Mutex::new(HashMap::new()),
            stats,
            advisories,
        }))
    }

    /// Counters.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// Partitions being consumed now.
    pub async fn partitions(&self) -> Vec<Partition> {
        let mut partitions: Vec<Partition> = self.running.lock().await.keys().cloned().collect();
        partitions.sort();
        partitions
    }

    async fn stop(&self, partitions: &[Partition]) {
        let stopping: Vec<(Partition, Running)> = {
            let mut running = self.running.lock().await;
            partitions
                .iter()
                .filter_map(|p| running.remove(p).map(|r| (p.clone(), r)))
                .collect()
        };
        if self.config.fault_keep_consuming_after_revoke {
            warn!(
                count = stopping.len(),
                "fault injection: revoked partitions keep being consumed"
            );
            return;
        }
        for (_, running) in &stopping {
            running.cancel.cancel();
        }
        for (partition, running) in stopping {
            if let Err(error) = running.task.await {
                warn!(partition = %partition.id(), %error, "partition task ended abnormally");
            }
            info!(partition = %partition.id(), "partition released");
        }
    }
}

impl AssignmentListener for WorkerConsumer {
    fn apply(&self, change: AssignmentChange) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Stop before start: a handoff must never run both at once in one process either.
            self.stop(&change.removed).await;
            let mut running = self.running.lock().await;
            for partition in change.added {
                if running.contains_key(&partition) {
                    continue;
                }
                let cancel = CancellationToken::new();
                let task = tokio::spawn(consume_partition(
                    self.js.clone(),
                    self.config.clone(),
                    partition.clone(),
                    self.handler.clone(),
                    change.fence.clone(),
                    self.stats.clone(),
                    cancel.clone(),
                ));
                info!(partition = %partition.id(), version = change.version, "partition acquired");
                running.insert(partition, Running { cancel, task });
            }
        })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<Partition> = self.running.lock().await.keys().cloned().collect();
            self.stop(&all).await;
        })
    }
}

async fn bind(
    js: &jetstream::Context,
    config: &ConsumerConfig,
    partition: &Partition,
) -> Result<jetstream::consumer::PullConsumer, async_nats::Error> {
    let durable = config.durable(partition);
    let stream = js.get_stream(&config.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: config.subject(partition),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_deliver: config.max_deliver,
                max_ack_pending: config.batch as i64,
                inactive_threshold: config.inactive_threshold,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await?;
    Ok(consumer)
}

fn nak_delay(config: &ConsumerConfig, delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    config
        .nak_backoff
        .saturating_mul(1 << exponent)
        .min(config.nak_backoff_max)
}

async fn consume_partition(
    js: jetstream::Context,
    config: ConsumerConfig,
    partition: Partition,
    handler: Arc<dyn MessageHandler>,
    fence: Fence,
    stats: Arc<ConsumerStats>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("partition", partition = %partition.id());
    let _entered = span.enter();
    drop(_entered);
    let mut consumer = None;
    let mut takeover: Option<Takeover<jetstream::Message>> = None;
    let mut rival = Rival::default();
    // The consumer sequence the durable's next delivery to anyone takes, if it is ours.
    let mut next_delivery = 0u64;
    let fenced_out = std::sync::Mutex::new(Vec::new());
    let processing = Processing {
        config: &config,
        partition: &partition,
        handler: handler.as_ref(),
        fence: &fence,
        stats: &stats,
        fenced_out: &fenced_out,
    };
    while !cancel.is_cancelled() {
        if let Some(waiting) = takeover.as_mut().filter(|t| t.hold().is_some()) {
            // Older messages are still with a departed owner: pull nothing until they
            // timed out and the server queued them for redelivery ahead of everything else.
            let durable = consumer.as_ref().map(|durable| (durable, next_delivery));
            match wait_for_departed_owner(waiting, durable, &config, &fence, &cancel).await {
                Wait::Cancelled => break,
                Wait::Over => {
                    debug!(partition = %partition.id(), "takeover wait over");
                    waiting.resume();
                }
                Wait::NothingElsePending => {
                    debug!(partition = %partition.id(), "nothing pending elsewhere: takeover over");
                    end_takeover(&processing, &mut takeover).await;
                }
                Wait::Rival => {
                    rival_found(&processing, &mut takeover, &mut rival).await;
                }
            }
            continue;
        }
        if !fence.is_valid() {
            // Degraded or fenced: do nothing, not even pull, until the leases hold again.
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(50)) => continue,
            }
        }
        let held = std::mem::take(&mut *fenced_out.lock().expect("fenced-out messages"));
        if !held.is_empty() {
            // The leases hold again and the partition is still ours: what the fence kept
            // us from processing goes before anything newer. Handed back in stream order
            // and gathered like a planned handoff's (CI's cluster run processed them after
            // their successors when they came back on their own, an ack wait later).
            let (count, last) = hand_back(held, &stats).await;
            let now = tokio::time::Instant::now();
            Takeover::start_or_extend(
                &mut takeover,
                count,
                last,
                now,
                config.ack_wait,
                config.fetch_expiry,
            );
            continue;
        }
        let pull = match &consumer {
            Some(consumer) => consumer,
            None => match bind(&js, &config, &partition).await {
                Ok(bound) => {
                    let info = bound.cached_info();
                    next_delivery = info.delivered.consumer_sequence + 1;
                    takeover = Takeover::new(
                        info.num_ack_pending,
                        info.delivered.stream_sequence,
                        tokio::time::Instant::now(),
                        config.ack_wait,
                        config.fetch_expiry,
                    );
                    if takeover.is_some() {
                        debug!(partition = %partition.id(), pending = info.num_ack_pending, "bound with unacknowledged messages");
                    }
                    consumer.insert(bound)
                }
                Err(error) => {
                    debug!(partition = %partition.id(), %error, "binding durable failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(250)) => continue,
                    }
                }
            },
        };
        let pull_started = tokio::time::Instant::now();
        let batch = pull
            .batch()
            .max_messages(config.batch)
            .expires(config.fetch_expiry)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                debug!(partition = %partition.id(), %error, "pull failed; rebinding");
                consumer = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Drain the whole batch even after a revoke: messages of this pull request can
        // still arrive, and each must be handed back (nak) rather than left to AckWait —
        // but only once the request has ended (module docs).
        let mut received = 0usize;
        let mut failed = false;
        let mut returning = Vec::new();
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    debug!(partition = %partition.id(), %error, "batch error");
                    failed = true;
                    break;
                }
            };
            received += 1;
            if cancel.is_cancelled() {
                returning.push(message);
                continue;
            }
            let (sequence, delivery) = message.info().map_or((0, 0), |info| {
                (info.stream_sequence, info.consumer_sequence)
            });
            if delivery > next_delivery && next_delivery > 0 {
                // Deliveries went to another puller (module docs of takeover.rs).
                let gap = usize::try_from(delivery - next_delivery).unwrap_or(usize::MAX);
                stats
                    .delivered_elsewhere
                    .fetch_add(gap as u64, Ordering::Relaxed);
                debug!(partition = %partition.id(), gap, "deliveries went to another puller");
                let now = tokio::time::Instant::now();
                let last = sequence.saturating_sub(1);
                // Between two deliveries of this pull, the gap is dated: after the pull began.
                let during_pull = received > 1;
                if rival.took(now, config.ack_wait, config.fetch_expiry) {
                    // Still there: nothing to wait for.
                } else if takeover
                    .as_ref()
                    .is_some_and(|t| t.gap_shows_rival(delivery - 1, during_pull, pull_started))
                {
                    rival_found(&processing, &mut takeover, &mut rival).await;
                } else {
                    Takeover::start_or_extend(
                        &mut takeover,
                        gap,
                        last,
                        now,
                        config.ack_wait,
                        config.fetch_expiry,
                    );
                }
            }
            next_delivery = next_delivery.max(delivery + 1);
            let Some(t) = takeover.as_mut() else {
                process(&processing, message).await;
                continue;
            };
            let ready = t.admit(sequence, message, pull_started);
            if ready.is_empty() {
                stats.kept.fetch_add(1, Ordering::Relaxed);
            }
            for message in ready {
                process(&processing, message).await;
            }
            if t.finished(tokio::time::Instant::now()) {
                takeover = None;
            }
        }
        if let Some(t) = takeover.as_mut() {
            if cancel.is_cancelled() {
                // Mid-takeover nothing is handed back: a nak would put newer messages
                // ahead of the departed owner's. They time out for the next owner.
                returning.clear();
            } else {
                let now = tokio::time::Instant::now();
                for message in t.end_of_pull(pull_started, received >= config.batch, now) {
                    process(&processing, message).await;
                }
                let now = tokio::time::Instant::now();
                if t.hold().is_some() {
                    stats.takeover_waits.fetch_add(1, Ordering::Relaxed);
                    info!(partition = %partition.id(), "older messages are still with a departed owner: waiting for them to time out");
                } else if t.finished(now) {
                    takeover = None;
                } else if fence.is_valid() && t.refresh_due(now, refresh_every(&config)) {
                    // Pulling on while kept messages wait (module docs of takeover.rs).
                    for message in t.kept() {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
        if fence.is_valid() && !returning.is_empty() {
            hand_back(returning, &stats).await;
        }
        // An idle pull is also the moment to notice a durable deleted behind our back
        // (a pull on a missing consumer just times out): rebind, recreating it.
        if received == 0 && !cancel.is_cancelled() {
            if let Some(bound) = &consumer
                && bound.get_info().await.is_err()
            {
                debug!(partition = %partition.id(), "durable missing; recreating");
                consumer = None;
            }
            if failed {
                // Server-side trouble (deleted durable, no responders): do not spin.
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Another puller keeps taking the partition's messages (module docs of takeover.rs): its
/// order cannot be kept, so wait for none of its deliveries and process what was kept.
async fn rival_found(
    processing: &Processing<'_>,
    takeover: &mut Option<Takeover<jetstream::Message>>,
    rival: &mut Rival,
) {
    let config = processing.config;
    warn!(partition = %processing.partition.id(), "another puller keeps taking this partition's messages: its order cannot be kept; not waiting for its deliveries");
    processing.stats.rivals.fetch_add(1, Ordering::Relaxed);
    rival.found(
        tokio::time::Instant::now(),
        config.ack_wait,
        config.fetch_expiry,
    );
    end_takeover(processing, takeover).await;
}

/// Nothing kept by the takeover can still come after an older message: process it all.
async fn end_takeover(
    processing: &Processing<'_>,
    takeover: &mut Option<Takeover<jetstream::Message>>,
) {
    for message in takeover
        .take()
        .map(Takeover::release_all)
        .unwrap_or_default()
    {
        process(processing, message).await;
    }
}

/// How a takeover's hold ended.
enum Wait {
    /// Every delivery to somebody else has timed out: pull again.
    Over,
    /// The durable holds nothing pending but what we kept: the rest was acknowledged by
    /// whoever had it.
    NothingElsePending,
    /// Somebody else received deliveries past any departed owner's last pull request: a
    /// puller that keeps pulling.
    Rival,
    Cancelled,
}

/// Waits out a takeover's hold, keeping its kept messages alive (in-progress acks, so they
/// do not time out and come back behind newer ones), and ends it early once the durable
/// holds nothing pending but what we kept. `durable` comes with the delivery number the
/// next delivery to us would take. When cancelled, the kept messages are left to time out
/// for the next owner.
async fn wait_for_departed_owner(
    takeover: &mut Takeover<jetstream::Message>,
    durable: Option<(&jetstream::consumer::PullConsumer, u64)>,
    config: &ConsumerConfig,
    fence: &Fence,
    cancel: &CancellationToken,
) -> Wait {
    let Some(until) = takeover.hold() else {
        return Wait::Over;
    };
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return Wait::Over;
        }
        if fence.is_valid() && takeover.refresh_due(now, refresh_every(config)) {
            for message in takeover.kept() {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
        if let Some((durable, next_delivery)) = durable
            && let Ok(info) = durable.get_info().await
        {
            // Trusted only from a server that has seen every delivery we have: a consumer
            // leader elected after a server died can lack the last deliveries (they come
            // back later, as new), and its count of pending ones is then too low.
            if info.num_ack_pending <= takeover.kept_count()
                && info.delivered.consumer_sequence + 1 >= next_delivery
            {
                return Wait::NothingElsePending;
            }
            // We pull nothing while holding: any delivery now goes to somebody else.
            let leader = info.cluster.as_ref().and_then(|c| c.leader.as_deref());
            if takeover.delivered_while_holding(
                info.delivered.consumer_sequence,
                leader,
                tokio::time::Instant::now(),
            ) {
                return Wait::Rival;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Wait::Cancelled,
            () = tokio::time::sleep_until((now + CHECK_PENDING).min(until)) => {}
        }
    }
}

/// How often kept messages get an in-progress ack: twice per ack wait.
fn refresh_every(config: &ConsumerConfig) -> Duration {
    (config.ack_wait / 2).max(Duration::from_millis(100))
}

/// How often a takeover's wait asks the server whether anything else is still pending.
const CHECK_PENDING: Duration = Duration::from_millis(250);

/// What processing one message of a partition needs.
struct Processing<'a> {
    config: &'a ConsumerConfig,
    partition: &'a Partition,
    handler: &'a dyn MessageHandler,
    fence: &'a Fence,
    stats: &'a ConsumerStats,
    /// Messages the fence kept us from processing, and every one after them, in arrival
    /// order: handed back before the next pull if the partition is still ours.
    fenced_out: &'a std::sync::Mutex<Vec<jetstream::Message>>,
}

/// Naks `messages` in stream order (immediately redeliverable, oldest first), counted as
/// returned; returns how many and the highest stream sequence among them.
async fn hand_back(mut messages: Vec<jetstream::Message>, stats: &ConsumerStats) -> (usize, u64) {
    let sequence = |m: &jetstream::Message| m.info().map_or(0, |info| info.stream_sequence);
    messages.sort_by_key(sequence);
    let last = messages.last().map_or(0, sequence);
    let count = messages.len();
    for message in messages {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
    stats.returned.fetch_add(count as u64, Ordering::Relaxed);
    (count, last)
}

async fn process(processing: &Processing<'_>, message: jetstream::Message) {
    let Processing {
        config,
        partition,
        handler,
        fence,
        stats,
        fenced_out,
    } = *processing;
    let Ok(info) = message.info() else {
        return;
    };
    let (stream_sequence, delivered) = (info.stream_sequence, info.delivered);
    {
        let mut held = fenced_out.lock().expect("fenced-out messages");
        if !fence.is_valid() || !held.is_empty() {
            // Lost our lease while this was in flight: touch nothing. If the partition
            // goes to another owner, that one gets it; if the leases come back, it is
            // handed back before anything newer (`consume_partition`).
            stats.fenced.fetch_add(1, Ordering::Relaxed);
            held.push(message);
            return;
        }
    }
    let delivery = Delivery {
        partition: partition.clone(),
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        headers: message.headers.clone(),
        stream_sequence,
        delivered,
        fence: fence.clone(),
    };
    match handler.handle(&delivery).await {
        Ok(()) => {
            if !fence.is_valid() {
                stats.fenced.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match message.double_ack().await {
                Ok(()) => {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    stats.ack_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(partition = %partition.id(), stream_sequence, %error, "ack not confirmed; expect a redelivery");
                }
            }
        }
        Err(error) if error.is::<Fenced>() || !fence.is_valid() => {
            debug!(partition = %partition.id(), stream_sequence, %error, "stopped at the fence; held");
            stats.fenced.fetch_add(1, Ordering::Relaxed);
            fenced_out
                .lock()
                .expect("fenced-out messages")
                .push(message);
        }
        Err(error) => {
            stats.handler_errors.fetch_add(1, Ordering::Relaxed);
            if config.max_deliver > 0 && delivered >= config.max_deliver {
                stats.exhausted.fetch_add(1, Ordering::Relaxed);
                warn!(partition = %partition.id(), stream_sequence, delivered, %error, "handler failed on the last allowed delivery");
            } else {
                debug!(partition = %partition.id(), stream_sequence, delivered, %error, "handler failed; nak");
            }
            if fence.is_valid() {
                let delay = nak_delay(config, delivered);
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
}
