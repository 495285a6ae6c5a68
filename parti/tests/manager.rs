//! Manager scenarios against a real nats-server (parti-spec §7, adapted).

mod common;

use common::*;
use parti::{Config, StaticSource, State};
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
    eventually("all stable, one leader, every partition owned once", LONG, || async {
        refs.iter().all(|m| m.state() == State::Stable) && leaders(&refs) == 1 && fully_assigned(&refs, &source)
    })
    .await;
    let mut ids: Vec<&str> = managers.iter().map(|m| m.worker_id()).collect();
    ids.sort();
    assert_eq!(ids, ["worker-0", "worker-1", "worker-2"], "lowest free ids");
    for manager in managers {
        manager.stop().await;
    }
}
