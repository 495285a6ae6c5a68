//! Manager scenarios against a real nats-server (parti-spec §7, adapted).

mod common;

use common::*;
use parti::{Config, State, StaticSource};
use test_support::{NatsServer, eventually};

#[tokio::test]
async fn managers_reach_stable_with_one_leader_and_full_coverage() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(30);
    let mut managers = Vec::new();
    for _ in 0..3 {
        managers.push(start(&server.url(), Config::fast_for_tests(), &source).await);
    }
    let refs: Vec<&_> = managers.iter().collect();
    eventually(
        "all stable, one leader, every partition owned once",
        LONG,
        || async {
            refs.iter().all(|m| m.state() == State::Stable)
                && leaders(&refs) == 1
                && fully_assigned(&refs, &source)
        },
    )
    .await;
    let mut ids: Vec<&str> = managers.iter().map(|m| m.worker_id()).collect();
    ids.sort();
    assert_eq!(ids, ["worker-0", "worker-1", "worker-2"], "lowest free ids");
    for manager in managers {
        manager.stop().await;
    }
}

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use parti::{Manager, Partition, PartitionSource, RoundRobin};

async fn start_many(
    url: &str,
    count: usize,
    config: &Config,
    source: &StaticSource,
) -> Vec<Manager> {
    let starts = (0..count).map(|_| start(url, config.clone(), source));
    futures::future::join_all(starts).await
}

async fn stable(managers: &[Manager], source: &StaticSource) {
    let refs: Vec<&Manager> = managers.iter().collect();
    eventually("stable, one leader, full coverage", LONG, || async {
        refs.iter().all(|m| m.state() == State::Stable)
            && leaders(&refs) == 1
            && fully_assigned(&refs, source)
            && refs.iter().all(|m| m.assignment().borrow().version > 0)
    })
    .await;
}

/// The control bucket the managers of `config` share.
async fn control_bucket(url: &str, config: &Config) -> kv::Store {
    jetstream::new(connect(url).await)
        .get_key_value(&config.bucket)
        .await
        .expect("control bucket")
}

/// Whether `key` holds a live value (not absent, deleted or expired). A read error counts
/// as live: the caller waits on, up to its deadline.
async fn live(bucket: &kv::Store, key: &str) -> bool {
    match bucket.entry(key).await {
        Ok(entry) => entry.is_some_and(|e| e.operation == kv::Operation::Put),
        Err(_) => true,
    }
}

/// Whether a fresh claimer (no identity token) may take `worker_id`: its `id.` lease is
/// gone and no identity token reserves it any more (`token.<hash>` → id, with a TTL) — what
/// parti's claim checks.
async fn id_claimable(bucket: &kv::Store, worker_id: &str) -> bool {
    if live(bucket, &format!("id.{worker_id}")).await {
        return false;
    }
    let Ok(mut keys) = bucket.keys().await else {
        return false;
    };
    while let Some(key) = keys.next().await {
        let Ok(key) = key else {
            return false;
        };
        if !key.starts_with("token.") {
            continue;
        }
        match bucket.entry(&key).await {
            Ok(Some(entry))
                if entry.operation == kv::Operation::Put
                    && entry.value.as_ref() == worker_id.as_bytes() =>
            {
                return false;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Wait (bounded) until the server has expired `worker_id`'s lease and any reservation of it.
async fn until_id_claimable(bucket: &kv::Store, worker_id: &str) {
    eventually(&format!("{worker_id} expired and unreserved"), LONG, || {
        id_claimable(bucket, worker_id)
    })
    .await;
}

async fn stop_all(managers: Vec<Manager>) {
    futures::future::join_all(managers.into_iter().map(Manager::stop)).await;
}

/// §7.2 / §7.11: simultaneous starters get distinct ids and exactly one leader, always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starters_get_distinct_ids_and_one_leader() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(20);
    let managers = start_many(&server.url(), 8, &Config::fast_for_tests(), &source).await;
    let ids: BTreeSet<&str> = managers.iter().map(|m| m.worker_id()).collect();
    assert_eq!(ids.len(), 8, "distinct ids: {ids:?}");
    let refs: Vec<&Manager> = managers.iter().collect();
    // Sample leadership for a while: never two at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        assert!(leaders(&refs) <= 1, "two leaders at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stable(&managers, &source).await;
    stop_all(managers).await;
}

/// §7.3: an id whose holder died without releasing it is free again after its TTL; an
/// identity token takes it back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_holders_id_expires_and_token_reclaims_at_once() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(4);
    let with_token = Config {
        identity_token: Some("slot-7".into()),
        ..Config::fast_for_tests()
    };
    let first = start(&server.url(), with_token.clone(), &source).await;
    assert_eq!(first.worker_id(), "worker-0");
    drop(first); // a crash: nothing released
    let started = std::time::Instant::now();
    let again = start(&server.url(), with_token.clone(), &source).await;
    assert_eq!(again.worker_id(), "worker-0", "token reclaims the id");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "without waiting for the TTL"
    );
    let other = start(&server.url(), Config::fast_for_tests(), &source).await;
    assert_eq!(other.worker_id(), "worker-1", "a live id is never shared");
    drop(again);
    drop(other);
    // Without a token: once the server has expired the dead holder's lease (and the token's
    // reservation of it), the lowest id is free again.
    let bucket = control_bucket(&server.url(), &with_token).await;
    until_id_claimable(&bucket, "worker-0").await;
    let fresh = start(&server.url(), Config::fast_for_tests(), &source).await;
    assert_eq!(fresh.worker_id(), "worker-0");
    fresh.stop().await;
}

/// A graceful stop releases the id; the same identity token takes that id again even when a
/// lower id was released meanwhile and a fresh worker starts in between (the harness caught
/// both: a restarted worker coming back under the id a scale-down had freed, and one losing
/// its own id to a second-wave worker starting at that moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_gets_its_released_id_back_not_the_lowest_free() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(4);
    let slot = |name: &str| Config {
        identity_token: Some(name.into()),
        ..Config::fast_for_tests()
    };
    let zero = start(&server.url(), slot("slot-a"), &source).await;
    let one = start(&server.url(), slot("slot-b"), &source).await;
    assert_eq!(
        (zero.worker_id(), one.worker_id()),
        ("worker-0", "worker-1")
    );
    zero.stop().await; // scale-down: worker-0 released
    one.stop().await; // restart, step 1: worker-1 released
    // A worker starting at this moment must not take the ids just released for a restart.
    let newcomer = start(&server.url(), Config::fast_for_tests(), &source).await;
    assert_eq!(
        newcomer.worker_id(),
        "worker-2",
        "released ids are reserved"
    );
    let again = start(&server.url(), slot("slot-b"), &source).await;
    assert_eq!(
        again.worker_id(),
        "worker-1",
        "the token's own id, not worker-0"
    );
    // The reservation of a slot that never returns ends with worker_id_ttl.
    let bucket = control_bucket(&server.url(), &Config::fast_for_tests()).await;
    until_id_claimable(&bucket, "worker-0").await;
    let later = start(&server.url(), Config::fast_for_tests(), &source).await;
    assert_eq!(
        later.worker_id(),
        "worker-0",
        "free again after the reservation expired"
    );
    again.stop().await;
    newcomer.stop().await;
    later.stop().await;
}

/// §7.4 / §7.5: every partition once, balanced; no change without a topology change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_is_complete_balanced_and_stable() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(100);
    let config = Config::fast_for_tests();
    let mut managers = Vec::new();
    for _ in 0..5 {
        managers
            .push(start_with(&server.url(), config.clone(), &source, Arc::new(RoundRobin)).await);
    }
    stable(&managers, &source).await;
    for manager in &managers {
        let owned = manager.assignment().borrow().partitions.len();
        assert!(
            (10..=40).contains(&owned),
            "{} owns {owned} of 100 with 5 workers",
            manager.worker_id()
        );
    }
    let before: Vec<u64> = managers
        .iter()
        .map(|m| m.assignment().borrow().version)
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<u64> = managers
        .iter()
        .map(|m| m.assignment().borrow().version)
        .collect();
    assert_eq!(before, after, "versions changed without a topology change");
    stop_all(managers).await;
}

/// §7.6: growing 3 → 5 moves partitions off existing workers, after the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_scale_up_moves_partitions_to_new_workers() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(60);
    let config = Config::fast_for_tests();
    let mut managers = start_many(&server.url(), 3, &config, &source).await;
    stable(&managers, &source).await;
    let before: BTreeMap<String, usize> = managers
        .iter()
        .map(|m| {
            (
                m.worker_id().to_string(),
                m.assignment().borrow().partitions.len(),
            )
        })
        .collect();
    managers.extend(start_many(&server.url(), 2, &config, &source).await);
    stable(&managers, &source).await;
    eventually("new workers own partitions", LONG, || async {
        managers
            .iter()
            .all(|m| !m.assignment().borrow().partitions.is_empty())
    })
    .await;
    let shrank = managers
        .iter()
        .filter(|m| {
            before
                .get(m.worker_id())
                .is_some_and(|n| m.assignment().borrow().partitions.len() < *n)
        })
        .count();
    assert!(shrank >= 1, "no existing worker gave anything up");
    stop_all(managers).await;
}

/// §7.7 / §7.8 / §7.9: a crashed worker's and then a stopped leader's partitions go to
/// the survivors; versions only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_leader_loss_reassign_with_growing_versions() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(12);
    let config = Config::fast_for_tests();
    let mut managers = start_many(&server.url(), 4, &config, &source).await;
    stable(&managers, &source).await;
    // Crash a follower (drop = no release; its leases expire).
    let follower = managers
        .iter()
        .position(|m| !m.is_leader())
        .expect("follower");
    drop(managers.remove(follower));
    stable(&managers, &source).await;
    let version_before = managers
        .iter()
        .map(|m| m.assignment().borrow().version)
        .max()
        .unwrap_or(0);
    // Stop the leader gracefully: someone else leads and versions keep growing.
    let leader = managers
        .iter()
        .position(Manager::is_leader)
        .expect("leader");
    let old_leader = managers.remove(leader);
    let old_id = old_leader.worker_id().to_string();
    old_leader.stop().await;
    stable(&managers, &source).await;
    let refs: Vec<&Manager> = managers.iter().collect();
    assert!(
        refs.iter()
            .find(|m| m.is_leader())
            .is_some_and(|m| m.worker_id() != old_id)
    );
    for manager in &managers {
        assert!(
            manager.assignment().borrow().version > version_before,
            "version regressed"
        );
    }
    stop_all(managers).await;
}

/// §7.12: a burst of joins gives few rebalances (windows coalesce them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_scaling_is_coalesced() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(50);
    let config = Config {
        planned_scale_window: Duration::from_secs(1),
        cold_start_window: Duration::from_secs(1),
        ..Config::fast_for_tests()
    };
    let mut managers = start_many(&server.url(), 2, &config, &source).await;
    stable(&managers, &source).await;
    let lifecycles = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut watch = managers[0].assignment();
    let recorder = {
        let lifecycles = lifecycles.clone();
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                let lifecycle = watch.borrow_and_update().lifecycle.clone();
                lifecycles.lock().expect("log").push(lifecycle);
            }
        })
    };
    for _ in 0..8 {
        managers.push(start(&server.url(), config.clone(), &source).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stable(&managers, &source).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    recorder.abort();
    let lifecycles = lifecycles.lock().expect("log").clone();
    let rebalances = lifecycles.iter().filter(|l| *l != "handoff").count();
    assert!(
        rebalances <= 3,
        "too many rebalances for one burst: {lifecycles:?}"
    );
    stop_all(managers).await;
}

/// §7.13: all workers restart at once with their identity tokens: ids and most
/// partitions stay where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thundering_herd_restart_keeps_ids_and_partitions() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(50);
    let configs: Vec<Config> = (0..10)
        .map(|i| Config {
            identity_token: Some(format!("slot-{i}")),
            ..Config::fast_for_tests()
        })
        .collect();
    let url = server.url();
    let managers =
        futures::future::join_all(configs.iter().map(|c| start(&url, c.clone(), &source))).await;
    stable(&managers, &source).await;
    let before: BTreeMap<String, String> = owners(&managers.iter().collect::<Vec<_>>())
        .into_iter()
        .map(|(p, o)| (p, o[0].clone()))
        .collect();
    let slots_before: Vec<String> = managers.iter().map(|m| m.worker_id().to_string()).collect();
    drop(managers); // all crash at once
    let managers =
        futures::future::join_all(configs.iter().map(|c| start(&url, c.clone(), &source))).await;
    let slots_after: Vec<String> = managers.iter().map(|m| m.worker_id().to_string()).collect();
    assert_eq!(slots_before, slots_after, "each slot got its id back");
    stable(&managers, &source).await;
    let after = owners(&managers.iter().collect::<Vec<_>>());
    let kept = before
        .iter()
        .filter(|(p, o)| after.get(*p).is_some_and(|a| a[0] == **o))
        .count();
    assert!(
        kept * 100 >= before.len() * 80,
        "only {kept}/{} partitions stayed",
        before.len()
    );
    stop_all(managers).await;
}

/// §7.14: partitions added, removed and re-weighted; back-to-back refreshes not blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_partitions_follows_the_source() {
    init_tracing();
    let server = NatsServer::start();
    let source = StaticSource::numbered(50);
    let managers = start_many(&server.url(), 3, &Config::fast_for_tests(), &source).await;
    stable(&managers, &source).await;
    for count in [70, 30] {
        source.update(partitions(count));
        managers.iter().for_each(Manager::refresh_partitions);
        stable(&managers, &source).await;
    }
    let version_before = managers
        .iter()
        .map(|m| m.assignment().borrow().version)
        .max()
        .unwrap_or(0);
    let reweighted: Vec<Partition> = source
        .list_partitions()
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.weight = if i < 3 { 100 } else { 1 };
            p
        })
        .collect();
    source.update(reweighted);
    managers.iter().for_each(Manager::refresh_partitions);
    // The old assignment already covers the same partition ids once, so `stable` alone
    // would pass at once: first wait for a version written after the reweight.
    eventually("every manager past the reweight", LONG, || async {
        managers
            .iter()
            .all(|m| m.assignment().borrow().version > version_before)
    })
    .await;
    stable(&managers, &source).await;
    let weights: BTreeMap<String, i64> = source
        .list_partitions()
        .iter()
        .map(|p| (p.id(), p.weight))
        .collect();
    for manager in &managers {
        for partition in &manager.assignment().borrow().partitions {
            assert_eq!(
                weights.get(&partition.id()),
                Some(&partition.weight),
                "{} holds {} with a stale weight",
                manager.worker_id(),
                partition.id()
            );
        }
    }
    stop_all(managers).await;
}
