//! NATS restarts under running workers: they go degraded, keep their assignment, recover,
//! and no partition is left unowned or processed twice at once.

mod common;

use std::collections::BTreeSet;
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

#[derive(Debug, Default)]
struct Collect {
    seen: Mutex<Vec<String>>,
}

impl MessageHandler for Collect {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.seen
                .lock()
                .expect("seen")
                .push(String::from_utf8_lossy(&delivery.payload).into_owned());
            Ok(())
        })
    }
}

async fn publish_round(js: &jetstream::Context, round: u32, partitions: usize) {
    for p in 0..partitions {
        js.publish(format!("deg.{p}"), format!("{round}:{p}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_degrades_and_recovers_without_unowned_partitions() {
    init_tracing();
    let mut server = NatsServer::start();
    let js = jetstream::new(connect(&server.url()).await);
    js.create_stream(jetstream::stream::Config {
        name: "DEG".into(),
        subjects: vec!["deg.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    const PARTITIONS: usize = 10;
    let source = StaticSource::numbered(PARTITIONS);
    // Leases long enough to outlive a server restart.
    let config = Config {
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_ttl: Duration::from_secs(5),
        worker_id_ttl: Duration::from_secs(6),
        election_timeout: Duration::from_secs(3),
        emergency_grace_period: Duration::from_secs(1),
        ..Config::fast_for_tests()
    };
    let collector = Arc::new(Collect::default());
    let mut managers = Vec::new();
    let mut degraded_seen = Vec::new();
    for _ in 0..3 {
        let client = connect(&server.url()).await;
        let consumer = WorkerConsumer::new(
            client.clone(),
            ConsumerConfig::new("DEG", "deg.{partition}"),
            collector.clone(),
        )
        .await
        .expect("consumer");
        let manager = Manager::start(
            client,
            config.clone(),
            Arc::new(source.clone()),
            Arc::new(ConsistentHash::default()),
            Some(consumer),
        )
        .await
        .expect("start");
        let mut states = manager.state_watch();
        degraded_seen.push(tokio::spawn(async move {
            states.wait_for(|s| *s == State::Degraded).await.is_ok()
        }));
        managers.push(manager);
    }
    let refs: Vec<&Manager> = managers.iter().collect();
    eventually("stable", LONG, || async {
        refs.iter().all(|m| m.state() == State::Stable) && fully_assigned(&refs, &source)
    })
    .await;
    publish_round(&js, 1, PARTITIONS).await;
    eventually("round 1 processed", LONG, || async {
        collector.seen.lock().expect("seen").len() >= PARTITIONS
    })
    .await;
    let owners_before = owners(&refs);

    server.kill();
    eventually("every manager degraded", LONG, || async {
        refs.iter().all(|m| m.state() == State::Degraded)
    })
    .await;
    assert_eq!(
        owners(&refs),
        owners_before,
        "assignment kept while disconnected"
    );
    server.restart();
    eventually("every manager recovered", LONG, || async {
        refs.iter().all(|m| m.state() == State::Stable) && fully_assigned(&refs, &source)
    })
    .await;
    for seen in degraded_seen {
        assert!(
            seen.await.expect("join"),
            "a manager never reported Degraded"
        );
    }
    publish_round(&js, 2, PARTITIONS).await;
    eventually("round 2 processed after recovery", LONG, || async {
        let seen: BTreeSet<String> = collector
            .seen
            .lock()
            .expect("seen")
            .iter()
            .cloned()
            .collect();
        seen.len() == 2 * PARTITIONS
    })
    .await;
    futures::future::join_all(managers.into_iter().map(Manager::stop)).await;
}
