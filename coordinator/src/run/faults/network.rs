//! Faults on a host's network: `nats_disconnect` and `network_degrade`. The agent installs
//! the rules and lifts them itself when the time is up; recovery is measured from its
//! report that the network healed.

use proto::v1::{NetworkFault, NetworkFaultKind, coordinator_message};
use sim_core::chaos::{DEGRADE_DELAY_MS, DEGRADE_FOR, DEGRADE_LOSS, DEGRADE_RATE_KBIT};
use sim_core::config::ChaosEvent;

use super::InjectOptions;
use super::plan::{Action, Draw, Effect, Plan, PlanInput, Skip, choose};
use super::recovery::TargetDone;

/// One fault at a time per host: an agent whose host is not impaired yet.
pub(super) fn host_fault(
    input: &PlanInput<'_>,
    draw: &mut dyn Draw,
    event: ChaosEvent,
    options: &InjectOptions,
) -> Result<Plan, Skip> {
    let faults = input.faults;
    let target = choose(draw, &input.free_hosts()?, options)?;
    let (kind, lasts, loss, rate, delay) = if event == ChaosEvent::NatsDisconnect {
        let lasts = options
            .duration
            .unwrap_or_else(|| draw.disconnect_duration());
        (NetworkFaultKind::Disconnect, lasts, 0.0, 0, 0)
    } else {
        (
            NetworkFaultKind::Degrade,
            options.duration.unwrap_or(DEGRADE_FOR),
            DEGRADE_LOSS,
            DEGRADE_RATE_KBIT,
            DEGRADE_DELAY_MS,
        )
    };
    let fault = NetworkFault {
        id: input.record_index() as u64,
        kind: kind as i32,
        nats_endpoints: faults.nats_endpoints.clone(),
        duration_ms: u64::try_from(lasts.as_millis()).unwrap_or(u64::MAX),
        loss_probability: loss,
        rate_kbit: rate,
        delay_ms: delay,
    };
    Ok(Plan {
        ideal_moves: None,
        target_done: TargetDone::Nothing,
        detail: format!("for {lasts:?}"),
        action: Action::Send(
            target.clone(),
            Box::new(coordinator_message::Body::NetworkFault(fault)),
        ),
        effects: vec![Effect::HostFault(target.clone())],
        target,
        measure: Some(true),
        lasts,
    })
}

/// `host:port` for each server in a comma-separated NATS URL list.
pub(super) fn nats_endpoints(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            let rest = rest.trim_end_matches('/');
            if rest
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            {
                rest.to_string()
            } else {
                format!("{rest}:4222")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::nats_endpoints;

    #[test]
    fn endpoints_from_urls() {
        assert_eq!(
            nats_endpoints("nats://10.0.0.1:4222, tls://user:pw@nats.example:7422,localhost"),
            vec!["10.0.0.1:4222", "nats.example:7422", "localhost:4222"]
        );
    }
}
