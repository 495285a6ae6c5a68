//! The planner without NATS: one test per event family, and a property over generated run
//! states and every event (a plan or a typed skip, never a panic, and a target the input
//! offered).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use proto::v1::{PartitionEntry, PartitionMap, ProducerSpec, Signal, Spawn, WorkerSpec, spawn};
use sim_core::chaos::PAUSE_FOR;
use sim_core::config::ChaosEvent;
use sim_core::tracker::{Tracker, TrackerConfig};

use super::super::WorkerView;
use super::partitions::{PartitionChange, Taken};
use super::plan::{self, Action, Draw, Effect, NoDraw, Plan, PlanInput, Skip};
use super::{FaultState, HostFault, InjectOptions, NatsDown};
use crate::placement::Placement;

/// Draws scripted by the test (wrapped into range).
struct Script(Vec<usize>, usize);

impl Draw for Script {
    fn pick(&mut self, len: usize) -> usize {
        let value = self.0.get(self.1).copied().unwrap_or(0);
        self.1 += 1;
        if len == 0 { 0 } else { value % len }
    }
    fn disconnect_duration(&mut self) -> Duration {
        Duration::from_secs(5)
    }
}

/// A run state to plan on.
#[derive(Debug, Clone)]
struct Run {
    workers: BTreeMap<String, WorkerView>,
    producers_alive: BTreeMap<String, bool>,
    placement: Placement,
    partition_map: PartitionMap,
    faults: FaultState,
    nats_servers: Option<Vec<bool>>,
}

impl Run {
    fn input(&self) -> PlanInput<'_> {
        PlanInput {
            workers: &self.workers,
            producers_alive: &self.producers_alive,
            placement: &self.placement,
            partition_map: &self.partition_map,
            faults: &self.faults,
            nats_servers: self.nats_servers.clone(),
            now: Duration::from_secs(60),
        }
    }

    fn plan(&self, event: ChaosEvent) -> Result<Plan, Skip> {
        plan::plan(&self.input(), &mut NoDraw, event, &InjectOptions::default())
    }
}

fn fault_state(agents: &[&str], workers: &[&str]) -> FaultState {
    let slots = workers
        .iter()
        .enumerate()
        .map(|(i, process)| {
            let spawn = Spawn {
                process: (*process).to_string(),
                spec: Some(spawn::Spec::Worker(WorkerSpec::default())),
                run_id: String::new(),
            };
            let agent = agents.get(i % agents.len().max(1)).copied().unwrap_or("a0");
            ((*process).to_string(), (agent.to_string(), spawn))
        })
        .collect();
    FaultState {
        slots,
        agents: agents.iter().map(|a| (*a).to_string()).collect(),
        next_worker: workers.len(),
        nats_endpoints: vec!["127.0.0.1:4222".into()],
        ..FaultState::default()
    }
}

fn view(alive: bool, leader: bool, partitions: Vec<u32>) -> WorkerView {
    WorkerView {
        worker_id: "id".into(),
        incarnation: 1,
        leader,
        state: String::new(),
        alive,
        partitions,
        last_report_ms: 0,
    }
}

/// Producers `producer-<i>` (producer id `p<i>`) on agent `a0`, no workers.
fn producers_placement(count: usize) -> Placement {
    Placement {
        producers: (0..count)
            .map(|i| {
                let spec = ProducerSpec {
                    producer_id: format!("p{i}"),
                    ..ProducerSpec::default()
                };
                ("a0".to_string(), format!("producer-{i}"), spec)
            })
            .collect(),
        workers: Vec::new(),
    }
}

/// `workers` (alive) on two agents, producers `p<i>` with their partitions.
fn run(workers: &[(&str, bool)], producers: &[&[u32]]) -> Run {
    let names: Vec<&str> = workers.iter().map(|(name, _)| *name).collect();
    let mut faults = fault_state(&["a0", "a1"], &names);
    let mut entries = Vec::new();
    for (i, partitions) in producers.iter().enumerate() {
        for id in *partitions {
            entries.push(PartitionEntry {
                id: *id,
                weight: 1,
                producer: format!("p{i}"),
            });
        }
    }
    faults.next_partition = entries.iter().map(|e| e.id + 1).max().unwrap_or(0);
    Run {
        workers: workers
            .iter()
            .enumerate()
            .map(|(i, (name, alive))| ((*name).to_string(), view(*alive, i == 0, vec![i as u32])))
            .collect(),
        producers_alive: (0..producers.len())
            .map(|i| (format!("producer-{i}"), true))
            .collect(),
        placement: producers_placement(producers.len()),
        partition_map: PartitionMap {
            version: 1,
            partitions: entries,
        },
        faults,
        nats_servers: None,
    }
}

#[test]
fn worker_crash_kills_a_live_worker_and_expects_its_exit() {
    let mut run = run(&[("w0", true), ("w1", true), ("w2", false)], &[&[0, 1]]);
    let mut plan = run.plan(ChaosEvent::WorkerCrash).expect("planned");
    assert!(matches!(plan.action, Action::Signal(Signal::Kill)));
    assert!(["w0", "w1"].contains(&plan.target.as_str()));
    assert!(
        plan.effects
            .contains(&Effect::ExpectExit(plan.target.clone()))
    );
    let mut tracker = Tracker::new(TrackerConfig::default(), 2);
    plan::apply(
        &mut plan,
        &mut run.faults,
        &mut tracker,
        &mut run.partition_map,
    )
    .expect("applied");
    assert!(run.faults.expect_exit.contains(&plan.target));
}

#[test]
fn worker_faults_need_two_live_workers() {
    let run = run(&[("w0", false), ("w1", false)], &[&[0]]);
    for event in [
        ChaosEvent::WorkerCrash,
        ChaosEvent::WorkerRestart,
        ChaosEvent::WorkerPause,
        ChaosEvent::ScaleDown,
    ] {
        let skip = run.plan(event).expect_err("skipped");
        assert_eq!(skip, Skip::FewerThanTwoLive);
        assert_eq!(skip.to_string(), "fewer than two live workers");
    }
}

#[test]
fn scale_down_never_leaves_no_worker() {
    let one = run(&[("w0", true), ("w1", false)], &[&[0]]);
    assert_eq!(
        one.plan(ChaosEvent::ScaleDown).expect_err("skipped"),
        Skip::FewerThanTwoLive
    );
    let two = run(&[("w0", true), ("w1", true)], &[&[0]]);
    let plan = two.plan(ChaosEvent::ScaleDown).expect("planned");
    assert!(matches!(plan.action, Action::Signal(Signal::Term)));
    assert!(plan.effects.contains(&Effect::Retire(plan.target.clone())));
}

#[test]
fn worker_pause_stops_and_resumes_later() {
    let run = run(&[("w0", true), ("w1", true)], &[&[0]]);
    let plan = run.plan(ChaosEvent::WorkerPause).expect("planned");
    assert!(matches!(plan.action, Action::Signal(Signal::Stop)));
    let until = Duration::from_secs(60) + PAUSE_FOR;
    assert!(
        plan.effects
            .contains(&Effect::Pause(plan.target.clone(), until))
    );
    assert_eq!(plan.lasts, PAUSE_FOR);
}

#[test]
fn worker_restart_remembers_the_stable_id() {
    let run = run(&[("w0", true), ("w1", true)], &[&[0]]);
    let plan = run.plan(ChaosEvent::WorkerRestart).expect("planned");
    assert!(plan.effects.contains(&Effect::Restart {
        process: plan.target.clone(),
        worker_id: "id".into(),
        incarnation: 1,
    }));
}

#[test]
fn leader_faults_target_the_leader() {
    let run = run(&[("w0", true), ("w1", true), ("w2", true)], &[&[0]]);
    let plan = run.plan(ChaosEvent::LeaderFailure).expect("planned");
    assert_eq!(plan.target, "w0");
    assert_eq!(plan.detail, "the leader");
    let plan = run.plan(ChaosEvent::LeaderPause).expect("planned");
    assert_eq!(
        plan.detail,
        format!("the leader, SIGSTOP for {PAUSE_FOR:?}")
    );
}

#[test]
fn nats_server_kill_needs_a_managed_cluster() {
    let mut run = run(&[("w0", true), ("w1", true)], &[&[0]]);
    let skip = run.plan(ChaosEvent::NatsServerKill).expect_err("skipped");
    assert_eq!(
        skip.to_string(),
        "no managed NATS cluster (nats.cluster_size 3 or 5 with simctl run)"
    );
    run.nats_servers = Some(vec![true, false, true]);
    assert_eq!(
        run.plan(ChaosEvent::NatsServerKill).expect_err("skipped"),
        Skip::NatsServerNotRunning(1)
    );
    run.nats_servers = Some(vec![true; 3]);
    let plan = run.plan(ChaosEvent::NatsServerKill).expect("planned");
    assert!(matches!(plan.action, Action::KillNatsServer(0)));
    assert_eq!(plan.target, "n0");
}

#[test]
fn partition_changes_never_remove_a_producers_last_partition() {
    let run = run(&[("w0", true), ("w1", true)], &[&[0], &[1, 2]]);
    for first in 0..4 {
        for second in 0..4 {
            let mut draw = Script(vec![first, second], 0);
            let plan = plan::plan(
                &run.input(),
                &mut draw,
                ChaosEvent::PartitionChanges,
                &InjectOptions::default(),
            )
            .expect("planned");
            match &plan.effects[..] {
                [Effect::Partitions(PartitionChange::Remove { partition, .. })] => {
                    assert!(*partition != 0);
                }
                [Effect::Partitions(PartitionChange::Add { id, producer })] => {
                    assert_eq!((*id, producer.as_str()), (3, "p0"));
                }
                other => panic!("unexpected effects {other:?}"),
            }
        }
    }
}

#[test]
fn a_targeted_partition_change_removes_that_partition_or_nothing() {
    // Partition 0 is p0's last: not removable.
    let run = run(&[("w0", true), ("w1", true)], &[&[0], &[1, 2]]);
    let options = |target: &str| InjectOptions {
        target: Some(target.into()),
        ..InjectOptions::default()
    };
    let plan = plan::plan(
        &run.input(),
        &mut Script(vec![1], 0),
        ChaosEvent::PartitionChanges,
        &options("partition-1"),
    )
    .expect("planned");
    assert!(matches!(
        &plan.effects[..],
        [Effect::Partitions(PartitionChange::Remove {
            partition: 1,
            taken: Taken::Unread
        })]
    ));
    for bad in ["partition-0", "partition-99", "worker-0", "partition-x"] {
        let refused = plan::plan(
            &run.input(),
            &mut Script(vec![0], 0),
            ChaosEvent::PartitionChanges,
            &options(bad),
        );
        assert!(
            matches!(refused, Err(Skip::NotACandidate { .. })),
            "{bad}: {refused:?}"
        );
    }
}

#[test]
fn network_faults_skip_impaired_hosts() {
    let mut run = run(&[("w0", true), ("w1", true)], &[&[0]]);
    let plan = run.plan(ChaosEvent::NatsDisconnect).expect("planned");
    assert_eq!(plan.measure, Some(true));
    for agent in ["a0", "a1"] {
        let fault = HostFault {
            record: 0,
            excused_until: None,
            crash: None,
        };
        run.faults.host_faults.insert(agent.into(), fault);
    }
    assert_eq!(
        run.plan(ChaosEvent::NetworkDegrade)
            .expect_err("skipped")
            .to_string(),
        "every host is already impaired"
    );
}

#[test]
fn a_named_target_must_be_a_candidate() {
    let run = run(&[("w0", true), ("w1", true)], &[&[0]]);
    let options = InjectOptions {
        target: Some("w9".into()),
        duration: None,
    };
    let skip = plan::plan(&run.input(), &mut NoDraw, ChaosEvent::WorkerCrash, &options)
        .expect_err("skipped");
    assert_eq!(skip.to_string(), "target w9 is not one of [w0, w1]");
}

/// Generated: workers (alive, paused, expected to exit, leader, partitions), agents with or
/// without a host fault, producers and their partitions, a cluster or none.
fn arb_run() -> impl Strategy<Value = (Run, Vec<usize>, Option<String>)> {
    let worker = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u32..4,
    );
    (
        prop::collection::vec(worker, 0..6),
        prop::collection::vec(any::<bool>(), 0..4),
        prop::collection::vec((any::<bool>(), prop::collection::vec(0u32..12, 0..4)), 0..4),
        prop::option::of(prop::collection::vec(any::<bool>(), 0..6)),
        any::<bool>(),
        prop::collection::vec(0usize..100, 0..4),
        prop::option::of(prop::sample::select(vec![
            "worker-0",
            "worker-9",
            "a0",
            "n1",
            "producer-0",
        ])),
    )
        .prop_map(
            |(workers, agents, producers, cluster, nats_down, draws, target)| {
                // Named as the engine names worker slots, so a scale_up that reused one would show.
                let names: Vec<String> =
                    (0..workers.len()).map(|i| format!("worker-{i}")).collect();
                let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let agent_names: Vec<String> = (0..agents.len()).map(|i| format!("a{i}")).collect();
                let agent_refs: Vec<&str> = agent_names.iter().map(String::as_str).collect();
                let mut faults = fault_state(&agent_refs, &name_refs);
                let mut views = BTreeMap::new();
                for (i, (alive, paused, leaving, leader, held)) in workers.into_iter().enumerate() {
                    let name = format!("worker-{i}");
                    if paused {
                        faults.paused.insert(name.clone(), Duration::from_secs(90));
                    }
                    if leaving {
                        faults.expect_exit.insert(name.clone());
                    }
                    views.insert(name, view(alive, leader, (0..held).collect()));
                }
                for (agent, impaired) in agent_names.iter().zip(agents) {
                    if impaired {
                        let fault = HostFault {
                            record: 0,
                            excused_until: None,
                            crash: None,
                        };
                        faults.host_faults.insert(agent.clone(), fault);
                    }
                }
                if nats_down {
                    let down = NatsDown {
                        restart_at: Some(Duration::from_secs(70)),
                        excused_until: None,
                    };
                    faults.nats_down.insert(0, down);
                }
                let mut entries = Vec::new();
                let mut seen = HashSet::new();
                for (i, (_, ids)) in producers.iter().enumerate() {
                    for id in ids {
                        if seen.insert(*id) {
                            entries.push(PartitionEntry {
                                id: *id,
                                weight: 1,
                                producer: format!("p{i}"),
                            });
                        }
                    }
                }
                faults.next_partition = 12;
                let run = Run {
                    workers: views,
                    producers_alive: producers
                        .iter()
                        .enumerate()
                        .map(|(i, (alive, _))| (format!("producer-{i}"), *alive))
                        .collect(),
                    placement: producers_placement(producers.len()),
                    partition_map: PartitionMap {
                        version: 1,
                        partitions: entries,
                    },
                    faults,
                    nats_servers: cluster,
                };
                (run, draws, target.map(str::to_string))
            },
        )
}

/// The target of a planned fault is one the input offered.
fn check_target(run: &Run, event: ChaosEvent, plan: &Plan) {
    let input = run.input();
    let live = input.live_workers();
    match event {
        ChaosEvent::WorkerCrash
        | ChaosEvent::WorkerRestart
        | ChaosEvent::ScaleDown
        | ChaosEvent::WorkerPause => {
            assert!(live.contains(&plan.target), "{event:?} on {}", plan.target);
            assert!(live.len() >= 2, "{event:?} would leave no worker");
        }
        ChaosEvent::LeaderFailure | ChaosEvent::LeaderPause => {
            assert!(live.contains(&plan.target));
            assert!(run.workers[&plan.target].leader);
        }
        ChaosEvent::ProducerCrash => assert_eq!(run.producers_alive.get(&plan.target), Some(&true)),
        ChaosEvent::ScaleUp => {
            assert!(!run.faults.slots.contains_key(&plan.target));
            assert!(
                matches!(&plan.action, Action::Send(agent, _) if run.faults.agents.contains(agent))
            );
        }
        ChaosEvent::NatsDisconnect | ChaosEvent::NetworkDegrade => {
            assert!(run.faults.agents.contains(&plan.target));
            assert!(!run.faults.host_faults.contains_key(&plan.target));
        }
        ChaosEvent::AgentCrash => {
            assert!(run.faults.agents.contains(&plan.target));
            assert!(!run.faults.host_faults.contains_key(&plan.target));
            assert!(matches!(
                &plan.action,
                Action::Send(agent, body)
                    if *agent == plan.target
                        && matches!(**body, proto::v1::coordinator_message::Body::Crash(_))
            ));
        }
        ChaosEvent::PartitionChanges => {
            if let [Effect::Partitions(PartitionChange::Remove { partition, .. })] =
                &plan.effects[..]
            {
                let producer = run
                    .partition_map
                    .partitions
                    .iter()
                    .find(|e| e.id == *partition)
                    .map(|e| e.producer.clone())
                    .expect("an existing partition");
                let held = run
                    .partition_map
                    .partitions
                    .iter()
                    .filter(|e| e.producer == producer)
                    .count();
                assert!(held > 1, "removed {producer}'s last partition");
            }
        }
        ChaosEvent::NatsServerKill => {
            let servers = run.nats_servers.as_ref().expect("a cluster");
            assert!(servers.len() >= 3 && servers.iter().all(|up| *up));
            assert!(matches!(plan.action, Action::KillNatsServer(i) if i < servers.len()));
        }
    }
}

proptest! {
    #[test]
    fn plans_are_typed_and_target_what_was_offered(
        (run, draws, target) in arb_run(),
    ) {
        let options = InjectOptions { target, duration: None };
        for event in ChaosEvent::ALL {
            let mut draw = Script(draws.clone(), 0);
            match plan::plan(&run.input(), &mut draw, event, &options) {
                Ok(mut plan) => {
                    check_target(&run, event, &plan);
                    let mut applied = run.clone();
                    let mut tracker = Tracker::new(TrackerConfig::default(), 12);
                    let result = plan::apply(
                        &mut plan,
                        &mut applied.faults,
                        &mut tracker,
                        &mut applied.partition_map,
                    );
                    prop_assert!(
                        matches!(result, Ok(()) | Err(Skip::TrackerRefused { .. })),
                        "{result:?}"
                    );
                }
                Err(skip) => prop_assert!(!skip.to_string().is_empty()),
            }
        }
    }
}
