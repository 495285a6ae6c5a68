//! Helpers shared by parti's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parti::{Config, ConsistentHash, Manager, Partition, StaticSource, Strategy};

/// Log to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .expect("connect to nats")
}

pub async fn start(url: &str, config: Config, source: &StaticSource) -> Manager {
    start_with(url, config, source, Arc::new(ConsistentHash::default())).await
}

pub async fn start_with(
    url: &str,
    config: Config,
    source: &StaticSource,
    strategy: Arc<dyn Strategy>,
) -> Manager {
    let client = connect(url).await;
    Manager::start(client, config, Arc::new(source.clone()), strategy, None)
        .await
        .expect("manager starts")
}

/// Partition id → owners, from every manager's current assignment.
pub fn owners(managers: &[&Manager]) -> BTreeMap<String, Vec<String>> {
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for manager in managers {
        for partition in manager.assignment().borrow().partitions.iter() {
            owners
                .entry(partition.id())
                .or_default()
                .push(manager.worker_id().to_string());
        }
    }
    owners
}

/// Every partition of `source` owned by exactly one of `managers`, all at one version.
pub fn fully_assigned(managers: &[&Manager], source: &StaticSource) -> bool {
    use parti::PartitionSource;
    let owners = owners(managers);
    let versions: std::collections::BTreeSet<u64> = managers
        .iter()
        .map(|m| m.assignment().borrow().version)
        .collect();
    versions.len() == 1
        && source
            .list_partitions()
            .iter()
            .all(|p| owners.get(&p.id()).is_some_and(|o| o.len() == 1))
        && owners.len() == source.list_partitions().len()
}

pub fn leaders(managers: &[&Manager]) -> usize {
    managers.iter().filter(|m| m.is_leader()).count()
}

pub fn partitions(count: usize) -> Vec<Partition> {
    (0..count)
        .map(|i| Partition::new(i.to_string(), 1))
        .collect()
}

pub const LONG: Duration = Duration::from_secs(30);
