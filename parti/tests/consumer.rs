//! The consumption helper: retries, exhaustion, recreation of a deleted durable,
//! back-pressure (spec §7.15, adapted to one durable per partition).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use futures::future::BoxFuture;
use parti::{
    Config, ConsistentHash, ConsumerConfig, Delivery, HandlerError, Manager, MessageHandler, State,
    StaticSource, WorkerConsumer,
};
use test_support::{NatsServer, eventually};

/// Fails messages whose body starts with "fail"; counts concurrent handlers.
#[derive(Debug, Default)]
struct Flaky {
    ok: Mutex<Vec<String>>,
    attempts: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl MessageHandler for Flaky {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let body = String::from_utf8_lossy(&delivery.payload).into_owned();
            if body.starts_with("fail") {
                return Err(format!("refusing {body}").into());
            }
            self.ok.lock().expect("ok").push(body);
            Ok(())
        })
    }
}

async fn setup(
    server: &NatsServer,
    consumer_config: ConsumerConfig,
    handler: Arc<Flaky>,
) -> (Manager, Arc<WorkerConsumer>, jetstream::Context) {
    let client = connect(&server.url()).await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "CONS".into(),
        subjects: vec!["cons.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let consumer = WorkerConsumer::new(client.clone(), consumer_config, handler)
        .await
        .expect("consumer");
    let manager = Manager::start(
        client,
        Config::fast_for_tests(),
        Arc::new(StaticSource::numbered(2)),
        Arc::new(ConsistentHash::default()),
        Some(consumer.clone()),
    )
    .await
    .expect("start");
    assert!(manager.wait_for_state(State::Stable, LONG).await);
    (manager, consumer, js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_are_retried_and_exhaustion_is_counted() {
    init_tracing();
    let server = NatsServer::start();
    let handler = Arc::new(Flaky::default());
    let config = ConsumerConfig {
        max_deliver: 3,
        nak_backoff: Duration::from_millis(20),
        ..ConsumerConfig::new("CONS", "cons.{partition}")
    };
    let (manager, consumer, js) = setup(&server, config, handler.clone()).await;
    for body in ["a", "fail-1", "b"] {
        js.publish("cons.0", body.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let stats = consumer.stats();
    eventually(
        "the failing message exhausted and the advisory seen",
        LONG,
        || async {
            stats.exhausted.load(Ordering::SeqCst) == 1
                && stats.exhausted_advisories.load(Ordering::SeqCst) == 1
        },
    )
    .await;
    assert_eq!(
        stats.handler_errors.load(Ordering::SeqCst),
        3,
        "three deliveries of the failing message"
    );
    eventually("the good messages processed", LONG, || async {
        handler.ok.lock().expect("ok").len() == 2
    })
    .await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn externally_deleted_durable_is_recreated_and_delivery_resumes() {
    init_tracing();
    let server = NatsServer::start();
    let handler = Arc::new(Flaky::default());
    let config = ConsumerConfig::new("CONS", "cons.{partition}");
    let (manager, _consumer, js) = setup(&server, config.clone(), handler.clone()).await;
    js.publish("cons.1", "before".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    eventually("first message", LONG, || async {
        handler.ok.lock().expect("ok").len() == 1
    })
    .await;
    let stream = js.get_stream("CONS").await.expect("stream");
    let durable = config.durable(&parti::Partition::new("1", 1));
    stream
        .delete_consumer(&durable)
        .await
        .expect("delete durable");
    js.publish("cons.1", "after".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    eventually("delivery resumes on a recreated durable", LONG, || async {
        handler.ok.lock().expect("ok").iter().any(|b| b == "after")
    })
    .await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_is_processed_serially_with_bounded_ack_pending() {
    init_tracing();
    let server = NatsServer::start();
    let handler = Arc::new(Flaky::default());
    let config = ConsumerConfig {
        batch: 2,
        ..ConsumerConfig::new("CONS", "cons.{partition}")
    };
    let (manager, consumer, js) = setup(&server, config.clone(), handler.clone()).await;
    for i in 0..10 {
        js.publish("cons.0", format!("m{i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    eventually("all ten acked", LONG, || async {
        consumer.stats().acked.load(Ordering::SeqCst) == 10
    })
    .await;
    let mut durable = js
        .get_stream("CONS")
        .await
        .expect("stream")
        .get_consumer::<jetstream::consumer::pull::Config>(
            &config.durable(&parti::Partition::new("0", 1)),
        )
        .await
        .expect("durable");
    let info = durable.info().await.expect("info");
    assert_eq!(
        info.config.max_ack_pending, 2,
        "ack pending bounded by the batch"
    );
    assert_eq!(
        handler.max_in_flight.load(Ordering::SeqCst),
        1,
        "one handler at a time"
    );
    let order: Vec<String> = handler.ok.lock().expect("ok").clone();
    assert_eq!(
        order,
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "in order"
    );
    manager.stop().await;
}
