//! Zero-loss, ordered handoff: a backlogged partition moved repeatedly between workers
//! while publishing continues (no gap, never two workers processing it at once, every
//! message first processed in stream order), and a partition taken over from an owner that
//! died holding messages (they are processed before anything newer).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use futures::StreamExt;
use futures::future::BoxFuture;
use parti::{
    AssignmentMap, Config, ConsumerConfig, Delivery, HandlerError, Manager, MessageHandler,
    Partition, StaticSource, Strategy, StrategyError, WorkerConsumer,
};
use test_support::{NatsServer, eventually};

/// Puts every partition on the worker whose index the test selects (then `refresh`).
#[derive(Debug, Default)]
struct Pinned {
    index: AtomicUsize,
}

impl Strategy for Pinned {
    fn assign(
        &self,
        workers: &[String],
        partitions: &[Partition],
    ) -> Result<AssignmentMap, StrategyError> {
        let mut sorted = workers.to_vec();
        sorted.sort();
        let chosen = sorted
            .get(self.index.load(Ordering::SeqCst) % sorted.len().max(1))
            .ok_or(StrategyError::NoWorkers)?;
        Ok(sorted
            .iter()
            .map(|w| {
                (
                    w.clone(),
                    if w == chosen {
                        partitions.to_vec()
                    } else {
                        Vec::new()
                    },
                )
            })
            .collect())
    }
    fn name(&self) -> &'static str {
        "Pinned"
    }
}

#[derive(Debug, Clone)]
struct Processed {
    seq: u64,
    worker: String,
    delivered: i64,
}

/// Records each processed message and flags two handlers inside one partition at once.
#[derive(Debug)]
struct Recorder {
    worker: Mutex<String>,
    log: Arc<Mutex<Vec<Processed>>>,
    busy: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
}

impl MessageHandler for Recorder {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if self.busy.swap(true, Ordering::SeqCst) {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let seq: u64 = std::str::from_utf8(&delivery.payload)?.parse()?;
            tokio::time::sleep(Duration::from_micros(300)).await;
            self.log.lock().expect("log").push(Processed {
                seq,
                worker: self.worker.lock().expect("worker").clone(),
                delivered: delivery.delivered,
            });
            self.busy.store(false, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backlog_survives_repeated_moves_without_gap_or_overlap() {
    init_tracing();
    let server = NatsServer::start();
    let client = connect(&server.url()).await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "HANDOFF".into(),
        subjects: vec!["handoff.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");

    const BACKLOG: u64 = 1000;
    for seq in 1..=BACKLOG {
        publish_seq(&js, seq).await;
    }

    let source = StaticSource::new(vec![Partition::new("p0", 1)]);
    let strategy = Arc::new(Pinned::default());
    let log = Arc::new(Mutex::new(Vec::new()));
    let busy = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut managers: Vec<Manager> = Vec::new();
    for _ in 0..3 {
        let recorder = Arc::new(Recorder {
            worker: Mutex::new(String::new()),
            log: log.clone(),
            busy: busy.clone(),
            overlaps: overlaps.clone(),
        });
        let client = connect(&server.url()).await;
        let consumer = WorkerConsumer::new(
            client.clone(),
            ConsumerConfig::new("HANDOFF", "handoff.{partition}"),
            recorder.clone(),
        )
        .await
        .expect("consumer");
        let config = Config {
            worker_id_max: 9,
            ..Config::fast_for_tests()
        };
        let manager = Manager::start(
            client,
            config,
            Arc::new(source.clone()),
            strategy.clone(),
            Some(consumer),
        )
        .await
        .expect("start");
        *recorder.worker.lock().expect("worker") = manager.worker_id().to_string();
        managers.push(manager);
    }

    // Keep publishing while the partition moves, until the last move is done: every round
    // then finds fresh messages for its new owner. The task returns the last sequence it
    // published (each one acknowledged by the stream), so 1..=that is everything there is.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = {
        let js = js.clone();
        let stop = stop_publishing.clone();
        tokio::spawn(async move {
            let mut seq = BACKLOG;
            while !stop.load(Ordering::SeqCst) {
                // At most ~250 messages/s, about half what one worker drains (~500/s: the
                // handler's sleep is ~1 ms, plus the ack), so the backlog keeps shrinking however
                // long the moves take.
                for _ in 0..5 {
                    seq += 1;
                    publish_seq(&js, seq).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seq
        })
    };

    let mut moves = 0;
    let mut owners_seen = BTreeSet::new();
    for round in 1..=9usize {
        let processed_before = log.lock().expect("log").len();
        strategy.index.store(round, Ordering::SeqCst);
        let leader = managers.iter().find(|m| m.is_leader());
        if let Some(leader) = leader {
            leader.refresh_partitions();
        }
        let target = {
            let mut ids: Vec<String> = managers.iter().map(|m| m.worker_id().to_string()).collect();
            ids.sort();
            ids[round % ids.len()].clone()
        };
        // Wait until the new owner has processed something since the move was asked for
        // (monotone: once true it stays true, whoever processes the next message).
        eventually(
            &format!("round {round}: {target} processes p0"),
            LONG,
            || async {
                log.lock().expect("log")[processed_before..]
                    .iter()
                    .any(|p| p.worker == target)
            },
        )
        .await;
        owners_seen.insert(target);
        moves += 1;
    }
    stop_publishing.store(true, Ordering::SeqCst);
    let total = publisher.await.expect("publisher");
    eventually(
        "every message processed",
        Duration::from_secs(60),
        || async {
            let seen: BTreeSet<u64> = log.lock().expect("log").iter().map(|p| p.seq).collect();
            seen.len() as u64 == total
        },
    )
    .await;

    let log = log.lock().expect("log").clone();
    let seen: BTreeSet<u64> = log.iter().map(|p| p.seq).collect();
    assert_eq!(seen, (1..=total).collect(), "no gap");
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two workers processed p0 at once"
    );
    assert_first_processed_in_order(&log);
    let duplicates = log.len() - seen.len();
    eprintln!(
        "moves: {moves}, owners: {owners_seen:?}, published: {total}, processed: {}, duplicates: {duplicates}",
        log.len()
    );
    assert_eq!(owners_seen.len(), 3, "the partition visited every worker");
    for manager in managers {
        manager.stop().await;
    }
}

/// Every message's first processing comes after its predecessors' (redeliveries included:
/// the next owner must get what the previous one handed back before anything newer).
fn assert_first_processed_in_order(log: &[Processed]) {
    let mut highest = 0;
    for entry in log {
        if entry.seq <= highest {
            continue; // processed again: a duplicate, not a reorder
        }
        assert_eq!(
            entry.seq,
            highest + 1,
            "order broken: seq {} (delivery {}, {}) first processed after {highest}",
            entry.seq,
            entry.delivered,
            entry.worker
        );
        highest = entry.seq;
    }
}

/// How the departed owner left its messages.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Departed {
    /// Took five at once and died: they time out together.
    AllAtOnce,
    /// Took three, then two more (a paused owner's open pull request goes on receiving),
    /// and kept the first three alive a little longer with an in-progress ack: the last two
    /// time out first. The next owner binds after they did and before the first three.
    Staggered,
}

/// A worker that dies holding fetched messages naks nothing: they come back only when
/// their ack wait runs out. The next owner must process them before newer messages.
/// The dead holder is a plain JetStream client that pulls from the partition's durable and
/// exits without acknowledging, as a killed worker of any implementation would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_by_a_dead_owner_are_processed_before_newer_ones() {
    let stats = takeover_after(Departed::AllAtOnce).await;
    assert_eq!(stats.takeover_waits.load(Ordering::Relaxed), 1, "one wait");
}

/// The same when they time out out of order: a redelivery that comes back early waits for
/// the older ones still out (the lab once saw seq 652 processed after 655 and 656).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_messages_timing_out_out_of_order_are_processed_in_order() {
    takeover_after(Departed::Staggered).await;
}

async fn takeover_after(departed: Departed) -> Arc<parti::ConsumerStats> {
    init_tracing();
    let server = NatsServer::start();
    let (js, stream) = handoff_stream(&server).await;
    const TOTAL: u64 = 40;
    for seq in 1..=TOTAL {
        publish_seq(&js, seq).await;
    }
    let mut consumer_config = ConsumerConfig::new("HANDOFF", "handoff.{partition}");
    consumer_config.ack_wait = Duration::from_secs(2);
    let partition = Partition::new("p0", 1);
    // The departed owner: binds the durable as parti would, takes five, never acks.
    {
        let durable = consumer_config.durable(&partition);
        let dead: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &durable,
                jetstream::consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: consumer_config.subject(&partition),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: consumer_config.ack_wait,
                    max_ack_pending: consumer_config.batch as i64,
                    ..Default::default()
                },
            )
            .await
            .expect("durable");
        let take = |n: usize| {
            let dead = dead.clone();
            async move {
                let taken: Vec<jetstream::Message> = dead
                    .fetch()
                    .max_messages(n)
                    .messages()
                    .await
                    .expect("fetch")
                    .map(|m| m.expect("message"))
                    .collect()
                    .await;
                assert_eq!(taken.len(), n, "the dead owner holds {n} more");
                taken
            }
        };
        match departed {
            Departed::AllAtOnce => {
                take(5).await;
            }
            Departed::Staggered => {
                // Scenario time, not a wait for a condition: the timeline is the fault.
                let start = tokio::time::Instant::now();
                let first = take(3).await;
                tokio::time::sleep_until(start + Duration::from_millis(500)).await;
                take(2).await;
                tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
                for message in &first {
                    message
                        .ack_with(jetstream::AckKind::Progress)
                        .await
                        .expect("progress");
                }
                // Seqs 4 and 5 time out at 2.5 s, 1–3 at 3.5 s.
                tokio::time::sleep_until(start + Duration::from_millis(2800)).await;
            }
        }
    }

    let (manager, log, stats) = start_owner(&server, consumer_config, partition).await;
    eventually("every message processed", LONG, || async {
        let seen: BTreeSet<u64> = log.lock().expect("log").iter().map(|p| p.seq).collect();
        seen.len() as u64 == TOTAL
    })
    .await;
    let log = log.lock().expect("log").clone();
    assert_first_processed_in_order(&log);
    assert!(
        log.iter().take(5).all(|p| p.delivered > 1),
        "the dead owner's five came first, as redeliveries: {log:?}"
    );
    manager.stop().await;
    stats
}

/// Mid-ownership, another puller takes deliveries from our durable and never acks them: an
/// old owner's pull request that reached the server late (the lab saw two owners receive
/// every other message after a network cut healed), or a foreign client. The owner sees the
/// gap in the delivery sequence and processes those messages, once they time out, before
/// their successors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_taken_by_another_puller_are_processed_before_their_successors() {
    init_tracing();
    let server = NatsServer::start();
    let (js, stream) = handoff_stream(&server).await;
    let publish = |range: std::ops::RangeInclusive<u64>| {
        let js = js.clone();
        async move {
            for seq in range {
                publish_seq(&js, seq).await;
            }
        }
    };
    publish(1..=10).await;
    let mut consumer_config = ConsumerConfig::new("HANDOFF", "handoff.{partition}");
    consumer_config.ack_wait = Duration::from_secs(2);
    let partition = Partition::new("p0", 1);
    let durable = consumer_config.durable(&partition);
    let (manager, log, stats) = start_owner(&server, consumer_config, partition).await;
    eventually("the backlog processed", LONG, processed_at_least(&log, 10)).await;

    // The other puller: a pull request for three, waiting behind the owner's, never acked.
    let other: jetstream::consumer::PullConsumer =
        stream.get_consumer(&durable).await.expect("durable");
    let mut taken = other
        .batch()
        .max_messages(3)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("pull");
    publish(11..=40).await;
    let mut held = Vec::new();
    while let Some(message) = taken.next().await {
        held.push(message.expect("message"));
    }
    assert_eq!(held.len(), 3, "the other puller got three deliveries");
    drop(held);

    eventually(
        "every message processed",
        LONG,
        processed_at_least(&log, 40),
    )
    .await;
    let log = log.lock().expect("log").clone();
    assert_first_processed_in_order(&log);
    assert_eq!(stats.delivered_elsewhere.load(Ordering::Relaxed), 3);
    manager.stop().await;
}

/// Another puller keeps pulling our durable and acking what it gets (a worker whose
/// assignment watch stalled, a foreign client). Waiting for its deliveries would gain no
/// order and pass one batch per ack wait between the two: the stalled-watch simulation lost
/// half its messages so. The owner finds it is a rival, stops keeping messages back while it
/// pulls, and between the two every message is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_that_keeps_pulling_is_a_rival_and_holds_nothing_back() {
    init_tracing();
    let server = NatsServer::start();
    let (js, stream) = handoff_stream(&server).await;
    let mut consumer_config = ConsumerConfig::new("HANDOFF", "handoff.{partition}");
    consumer_config.ack_wait = Duration::from_secs(2);
    consumer_config.batch = 10;
    let partition = Partition::new("p0", 1);
    let durable = consumer_config.durable(&partition);
    let (manager, log, stats) = start_owner(&server, consumer_config, partition).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Publishes 50 a second until stopped; counts what it published.
    let published = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn({
        let (js, stop, published) = (js.clone(), stop.clone(), published.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let seq = published.load(Ordering::SeqCst) + 1;
                publish_seq(&js, seq).await;
                published.store(seq, Ordering::SeqCst);
            }
        }
    });
    eventually("the owner processing", LONG, || {
        let log = log.clone();
        async move { !log.lock().expect("log").is_empty() }
    })
    .await;
    // The rival: pulls five at a time and acks each a second later (as a parti consumer
    // keeping messages back would), so the durable always holds some of its messages.
    let taken = Arc::new(Mutex::new(BTreeSet::new()));
    let rival = tokio::spawn({
        let (stop, taken) = (stop.clone(), taken.clone());
        let rival: jetstream::consumer::PullConsumer =
            stream.get_consumer(&durable).await.expect("durable");
        async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut batch) = rival
                    .batch()
                    .max_messages(5)
                    .expires(Duration::from_millis(300))
                    .messages()
                    .await
                else {
                    continue;
                };
                while let Some(Ok(message)) = batch.next().await {
                    let seq: u64 = std::str::from_utf8(&message.payload)
                        .expect("utf-8")
                        .parse()
                        .expect("seq");
                    tokio::spawn({
                        let taken = taken.clone();
                        async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            message.ack().await.expect("ack");
                            taken.lock().expect("taken").insert(seq);
                        }
                    });
                }
            }
        }
    });
    eventually("the owner finds the rival", LONG, || {
        let stats = stats.clone();
        async move { stats.rivals.load(Ordering::Relaxed) >= 1 }
    })
    .await;
    // From now on nothing is kept back while the rival pulls.
    let kept = stats.kept.load(Ordering::Relaxed);
    let from = published.load(Ordering::SeqCst);
    eventually("100 more published", LONG, || {
        let published = published.clone();
        async move { published.load(Ordering::SeqCst) >= from + 100 }
    })
    .await;
    let last = published.load(Ordering::SeqCst);
    eventually("every message processed by one of the two", LONG, || {
        let (log, taken) = (log.clone(), taken.clone());
        async move {
            let mut seen: BTreeSet<u64> = log.lock().expect("log").iter().map(|p| p.seq).collect();
            seen.extend(taken.lock().expect("taken").iter().copied());
            (1..=last).all(|seq| seen.contains(&seq))
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    publisher.await.expect("publisher");
    rival.await.expect("rival");
    let owners: BTreeSet<u64> = log.lock().expect("log").iter().map(|p| p.seq).collect();
    assert!(
        owners.iter().any(|seq| *seq > from),
        "the owner kept processing alongside the rival"
    );
    assert_eq!(
        stats.kept.load(Ordering::Relaxed),
        kept,
        "nothing kept back while the rival pulled"
    );
    assert_eq!(
        stats.rivals.load(Ordering::Relaxed),
        1,
        "found once: it never left"
    );
    manager.stop().await;
}

/// A handler that stops at the fence (its lease not renewed in time: CI's cluster run saw
/// it while a server was down) returns [`parti::Fenced`] for message 5, once. That message
/// is no failure to retry with a backoff behind its successors: it and the rest of its pull
/// are handed back in order, and everything is first processed in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stopped_at_the_fence_is_processed_before_its_successors() {
    init_tracing();
    let server = NatsServer::start();
    let (js, _stream) = handoff_stream(&server).await;
    for seq in 1..=20u64 {
        publish_seq(&js, seq).await;
    }
    let consumer_config = ConsumerConfig::new("HANDOFF", "handoff.{partition}");
    let (manager, log, stats) = start_owner_with(
        &server,
        consumer_config,
        Partition::new("p0", 1),
        |recorder| {
            Arc::new(StopsAtTheFenceOnce {
                inner: recorder,
                at: 5,
                stopped: AtomicBool::new(false),
            })
        },
    )
    .await;
    eventually(
        "every message processed",
        LONG,
        processed_at_least(&log, 20),
    )
    .await;
    assert_first_processed_in_order(&log.lock().expect("log"));
    assert!(
        stats.fenced.load(Ordering::Relaxed) >= 1,
        "held at the fence"
    );
    assert!(stats.returned.load(Ordering::Relaxed) >= 1, "handed back");
    assert_eq!(
        stats.handler_errors.load(Ordering::Relaxed),
        0,
        "not a failure"
    );
    manager.stop().await;
}

/// Returns [`parti::Fenced`] the first time it sees message `at`.
struct StopsAtTheFenceOnce {
    inner: Arc<Recorder>,
    at: u64,
    stopped: AtomicBool,
}

impl MessageHandler for StopsAtTheFenceOnce {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let seq: u64 = std::str::from_utf8(&delivery.payload)?.parse()?;
            if seq == self.at && !self.stopped.swap(true, Ordering::SeqCst) {
                return Err(parti::Fenced.into());
            }
            self.inner.handle(delivery).await
        })
    }
}

/// Publishes message `seq` on partition p0 and waits for its PubAck.
async fn publish_seq(js: &jetstream::Context, seq: u64) {
    js.publish("handoff.p0", seq.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
}

/// A condition for [`eventually`]: at least `n` distinct messages processed.
fn processed_at_least(
    log: &Arc<Mutex<Vec<Processed>>>,
    n: usize,
) -> impl Fn() -> std::future::Ready<bool> {
    let log = log.clone();
    move || {
        let seen: BTreeSet<u64> = log.lock().expect("log").iter().map(|p| p.seq).collect();
        std::future::ready(seen.len() >= n)
    }
}

/// The test stream `HANDOFF` on `handoff.>`.
async fn handoff_stream(server: &NatsServer) -> (jetstream::Context, jetstream::stream::Stream) {
    let js = jetstream::new(connect(&server.url()).await);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "HANDOFF".into(),
            subjects: vec!["handoff.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    (js, stream)
}

/// One worker owning `partition`, recording what it processes.
async fn start_owner(
    server: &NatsServer,
    consumer_config: ConsumerConfig,
    partition: Partition,
) -> (
    Manager,
    Arc<Mutex<Vec<Processed>>>,
    Arc<parti::ConsumerStats>,
) {
    start_owner_with(server, consumer_config, partition, |recorder| recorder).await
}

/// [`start_owner`] with the recorder wrapped by `handler`.
async fn start_owner_with(
    server: &NatsServer,
    consumer_config: ConsumerConfig,
    partition: Partition,
    handler: impl FnOnce(Arc<Recorder>) -> Arc<dyn MessageHandler>,
) -> (
    Manager,
    Arc<Mutex<Vec<Processed>>>,
    Arc<parti::ConsumerStats>,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::new(Recorder {
        worker: Mutex::new("owner".into()),
        log: log.clone(),
        busy: Arc::new(AtomicBool::new(false)),
        overlaps: Arc::new(AtomicUsize::new(0)),
    });
    let client = connect(&server.url()).await;
    let consumer = WorkerConsumer::new(client.clone(), consumer_config, handler(recorder))
        .await
        .expect("consumer");
    let stats = consumer.stats();
    let manager = Manager::start(
        client,
        Config::fast_for_tests(),
        Arc::new(StaticSource::new(vec![partition])),
        Arc::new(Pinned::default()),
        Some(consumer),
    )
    .await
    .expect("start");
    (manager, log, stats)
}
