//! The registry's admission, de-duplication, release and gap rules, without a network.

use super::*;

const AGENT: &str = "agent-1";

fn registry() -> (AgentRegistry, mpsc::Receiver<IngestBatch>) {
    let (ingest, ingest_rx) = mpsc::channel(16);
    (AgentRegistry::new(ingest), ingest_rx)
}

/// A session for `AGENT` as process `boot_id`, having released `acked`; its number and
/// the agent's end of the command channel.
fn connect(
    registry: &AgentRegistry,
    boot_id: u64,
    acked: u64,
) -> (u64, mpsc::Receiver<CoordinatorMessage>) {
    let (commands, commands_rx) = mpsc::channel(16);
    let hello = Hello {
        agent_id: AGENT.into(),
        hostname: "host".into(),
        pid: 1,
        acked_batch: acked,
        boot_id,
    };
    (registry.open_session(&hello, commands), commands_rx)
}

/// Admit `number` as the session loop does; `Some(ack)` if applied, `None` if a duplicate.
fn apply(registry: &AgentRegistry, session: u64, number: u64) -> Option<BatchAck> {
    match registry.admit(AGENT, session, number, true) {
        Admission::Apply(ack) => Some(ack),
        Admission::Duplicate(_) => None,
        Admission::Stale => panic!("session {session} is stale"),
    }
}

fn duplicate_ack(registry: &AgentRegistry, session: u64, number: u64) -> BatchAck {
    match registry.admit(AGENT, session, number, true) {
        Admission::Duplicate(ack) => ack,
        other => panic!("batch {number} should be a duplicate: {other:?}"),
    }
}

#[test]
fn a_new_agent_process_restarts_the_numbering() {
    let (registry, _ingest) = registry();
    let (session, _commands) = connect(&registry, 11, 0);
    for number in 1..=3 {
        assert!(apply(&registry, session, number).is_some());
    }
    // Same process reconnecting: resends are duplicates.
    let (session, _commands) = connect(&registry, 11, 3);
    assert_eq!(duplicate_ack(&registry, session, 2).up_to, 3);
    // Another process: batch 1 is new.
    let (session, _commands) = connect(&registry, 12, 0);
    assert!(apply(&registry, session, 1).is_some());
    assert_eq!(registry.positions()[AGENT], (12, 1));
    assert!(registry.gaps().is_empty(), "no restore, no gap");
}

#[test]
fn without_checkpointing_acks_release_at_once() {
    let (registry, _ingest) = registry();
    let (session, _commands) = connect(&registry, 1, 0);
    let ack = apply(&registry, session, 1).expect("applied");
    assert_eq!((ack.up_to, ack.released_up_to), (1, 1));
}

#[test]
fn with_checkpointing_only_release_releases() {
    let (registry, _ingest) = registry();
    registry.set_checkpointing(true);
    let (session, mut commands) = connect(&registry, 1, 0);
    for number in 1..=4 {
        let ack = apply(&registry, session, number).expect("applied");
        assert_eq!((ack.up_to, ack.released_up_to), (number, 0));
    }
    // A previous process's position means nothing for this one.
    registry.release(AGENT, 99, 3);
    assert!(commands.try_recv().is_err());
    registry.release(AGENT, 1, 3);
    let Ok(CoordinatorMessage {
        body: Some(coordinator_message::Body::Ack(ack)),
    }) = commands.try_recv()
    else {
        panic!("release must be sent at once");
    };
    assert_eq!((ack.up_to, ack.released_up_to), (4, 3));
    let ack = apply(&registry, session, 5).expect("applied");
    assert_eq!((ack.up_to, ack.released_up_to), (5, 3));
    // Never beyond what was applied.
    registry.release(AGENT, 1, 50);
    assert!(matches!(
        commands.try_recv(),
        Ok(CoordinatorMessage {
            body: Some(coordinator_message::Body::Ack(BatchAck {
                released_up_to: 5,
                ..
            }))
        })
    ));
}

#[test]
fn restored_positions_are_not_applied_again() {
    let (registry, _ingest) = registry();
    registry.set_checkpointing(true);
    registry.restore(BTreeMap::from([(AGENT.to_string(), (7, 5))]));
    assert_eq!(registry.positions()[AGENT], (7, 5));
    // The agent had released only 3 (the release after the checkpoint never reached it).
    let (session, _commands) = connect(&registry, 7, 3);
    for number in 4..=5 {
        let ack = duplicate_ack(&registry, session, number);
        assert_eq!((ack.up_to, ack.released_up_to), (5, 5));
    }
    let ack = apply(&registry, session, 6).expect("applied");
    assert_eq!((ack.up_to, ack.released_up_to), (6, 5));
    assert!(registry.gaps().is_empty());
}

#[test]
fn a_batch_beyond_the_restored_position_is_a_gap() {
    let (registry, _ingest) = registry();
    registry.restore(BTreeMap::from([(AGENT.to_string(), (7, 5))]));
    let (session, _commands) = connect(&registry, 7, 5);
    assert!(apply(&registry, session, 8).is_some());
    assert_eq!(
        registry.gaps(),
        [ReportGap {
            agent: AGENT.into(),
            boot_id: 7,
            missing: MissingReports::Batches { first: 6, last: 7 },
        }]
    );
}

#[test]
fn an_agent_that_released_more_than_the_checkpoint_holds_is_a_gap() {
    let (registry, _ingest) = registry();
    registry.restore(BTreeMap::from([(AGENT.to_string(), (7, 5))]));
    let (session, _commands) = connect(&registry, 7, 9);
    // Reported once, at the Hello; the batches that follow are in sequence.
    assert!(apply(&registry, session, 10).is_some());
    assert_eq!(
        registry.gaps(),
        [ReportGap {
            agent: AGENT.into(),
            boot_id: 7,
            missing: MissingReports::Batches { first: 6, last: 9 },
        }]
    );
}

#[test]
fn an_agent_restarted_during_the_outage_is_a_gap() {
    let (registry, _ingest) = registry();
    registry.restore(BTreeMap::from([(AGENT.to_string(), (7, 5))]));
    let (session, _commands) = connect(&registry, 8, 0);
    assert!(apply(&registry, session, 1).is_some(), "numbering restarts");
    let gaps = registry.gaps();
    assert_eq!(
        gaps,
        [ReportGap {
            agent: AGENT.into(),
            boot_id: 7,
            missing: MissingReports::AfterRestart {
                after: 5,
                new_boot_id: 8
            },
        }]
    );
    assert!(gaps[0].to_string().contains("restarted"));
    // A later restart, with the coordinator present all along, is an ordinary reset.
    let _ = connect(&registry, 9, 0);
    assert_eq!(registry.gaps().len(), 1);
}

#[test]
fn an_agent_unknown_to_the_checkpoint_that_dropped_batches_is_a_gap() {
    let (registry, _ingest) = registry();
    registry.restore(BTreeMap::new());
    let _ = connect(&registry, 3, 4);
    assert_eq!(
        registry.gaps()[0].missing,
        MissingReports::Batches { first: 1, last: 4 }
    );
}

#[test]
fn only_the_newest_session_applies_and_owns_the_commands() {
    let (registry, _ingest) = registry();
    let (old, _old_commands) = connect(&registry, 1, 0);
    assert!(apply(&registry, old, 1).is_some());
    let (new, _new_commands) = connect(&registry, 1, 0);
    assert!(matches!(
        registry.admit(AGENT, old, 2, true),
        Admission::Stale
    ));
    registry.close_session(AGENT, old);
    assert!(
        registry.lock().agents[AGENT].commands.is_some(),
        "the old session's end must not disconnect the new one"
    );
    assert!(apply(&registry, new, 2).is_some());
    registry.close_session(AGENT, new);
    assert!(registry.lock().agents[AGENT].commands.is_none());
}
