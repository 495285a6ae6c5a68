//! A short tour of parti on a real nats-server: four workers share 16 partitions while a
//! producer publishes; one worker leaves gracefully, one crashes; every message is checked.
//!
//! `cargo run -p parti --example demo` (needs the nats-server that scripts/setup.sh installs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use futures::future::BoxFuture;
use parti::{
    Config, ConsumerConfig, Delivery, HandlerError, Manager, MessageHandler, State, StaticSource,
    WeightedConsistentHash, WorkerConsumer,
};

const PARTITIONS: usize = 16;
const MESSAGES_PER_PARTITION: u64 = 50;

#[derive(Debug, Default)]
struct Tally {
    processed: Mutex<Vec<(String, u64)>>,
}

impl MessageHandler for Tally {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let seq: u64 = std::str::from_utf8(&delivery.payload)?.parse()?;
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.processed
                .lock()
                .map_err(|_| "poisoned")?
                .push((delivery.partition.id(), seq));
            Ok(())
        })
    }
}

async fn start_worker(
    url: &str,
    source: &StaticSource,
    tally: Arc<Tally>,
) -> anyhow::Result<Manager> {
    let client = async_nats::connect(url)
        .await
        .context("connecting to nats")?;
    let consumer = WorkerConsumer::new(
        client.clone(),
        ConsumerConfig::new("DEMO", "demo.{partition}"),
        tally,
    )
    .await?;
    let config = Config {
        cold_start_window: Duration::from_secs(2),
        planned_scale_window: Duration::from_secs(1),
        min_rebalance_interval: Duration::from_secs(1),
        ..Config::default()
    };
    let strategy = Arc::new(WeightedConsistentHash::default());
    Ok(Manager::start(
        client,
        config,
        Arc::new(source.clone()),
        strategy,
        Some(consumer),
    )
    .await?)
}

fn print_assignment(label: &str, managers: &[Manager]) {
    println!("{label}:");
    for manager in managers {
        let assignment = manager.assignment().borrow().clone();
        let ids: Vec<String> = assignment.partitions.iter().map(|p| p.id()).collect();
        println!(
            "  {:<9} {:<6} v{:<3} {:?} {}",
            manager.worker_id(),
            if manager.is_leader() { "leader" } else { "" },
            assignment.version,
            manager.state(),
            ids.join(",")
        );
    }
}

async fn wait_stable(managers: &[Manager]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owned: usize = managers
            .iter()
            .map(|m| m.assignment().borrow().partitions.len())
            .sum();
        let versions: BTreeSet<u64> = managers
            .iter()
            .map(|m| m.assignment().borrow().version)
            .collect();
        if owned == PARTITIONS
            && versions.len() == 1
            && managers.iter().all(|m| m.state() == State::Stable)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("workers did not settle within 60s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = test_support::NatsServer::start();
    let url = server.url();
    println!("nats-server on {url}");
    let js = jetstream::new(async_nats::connect(&url).await?);
    js.create_stream(jetstream::stream::Config {
        name: "DEMO".into(),
        subjects: vec!["demo.>".into()],
        ..Default::default()
    })
    .await?;
    let source = StaticSource::numbered(PARTITIONS);
    let tally = Arc::new(Tally::default());
    let mut managers = Vec::new();
    for _ in 0..4 {
        managers.push(start_worker(&url, &source, tally.clone()).await?);
    }
    wait_stable(&managers).await?;
    print_assignment("four workers", &managers);

    let producer = {
        let js = js.clone();
        tokio::spawn(async move {
            for seq in 1..=MESSAGES_PER_PARTITION {
                for p in 0..PARTITIONS {
                    js.publish(format!("demo.{p}"), seq.to_string().into())
                        .await?
                        .await?;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            anyhow::Ok(())
        })
    };

    tokio::time::sleep(Duration::from_millis(600)).await;
    let leaving = managers.remove(1);
    println!("{} leaves gracefully", leaving.worker_id());
    leaving.stop().await;
    wait_stable(&managers).await?;
    print_assignment("after a graceful leave", &managers);

    let crashed = managers.remove(0);
    println!(
        "{} crashes (no release; its leases expire)",
        crashed.worker_id()
    );
    drop(crashed);
    let crashed_at = Instant::now();
    wait_stable(&managers).await?;
    println!(
        "partitions reassigned {:.1}s after the crash",
        crashed_at.elapsed().as_secs_f64()
    );
    print_assignment("after a crash", &managers);

    producer.await??;
    let expected = PARTITIONS as u64 * MESSAGES_PER_PARTITION;
    let deadline = Instant::now() + Duration::from_secs(60);
    let distinct = loop {
        let distinct: BTreeSet<(String, u64)> = tally
            .processed
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
            .cloned()
            .collect();
        if distinct.len() as u64 == expected || Instant::now() > deadline {
            break distinct;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = tally
        .processed
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .len();
    let mut per_partition: BTreeMap<String, u64> = BTreeMap::new();
    for (partition, _) in &distinct {
        *per_partition.entry(partition.clone()).or_default() += 1;
    }
    println!(
        "published {expected}, processed {} distinct ({} redeliveries after the crash)",
        distinct.len(),
        total - distinct.len()
    );
    for manager in managers {
        manager.stop().await;
    }
    if distinct.len() as u64 != expected {
        bail!("lost {} messages", expected - distinct.len() as u64);
    }
    println!("OK: no message lost");
    Ok(())
}
