//! `telemetry` (extension): traces and metrics over OTLP, and where users look at them.
//!
//! Endpoints, the sampling ratio and the push interval come from the config, else from the
//! standard `OTEL_*` variables of the coordinator's environment (the config wins), else
//! defaults; the coordinator resolves them when a run starts ([`TracesConfig::resolve`],
//! [`OtlpMetricsConfig::resolve`]) and records the result in the run's effective config, so
//! a run directory says where its telemetry went.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::duration::human_opt;

/// The OTLP gRPC endpoint used when neither the config nor the environment names one.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4317";
/// The share of messages traced when neither the config nor the environment says.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// Time between metric pushes when neither the config nor the environment says (a few
/// points per Prometheus scrape interval of the compose stack, whose collector re-exposes
/// them for scraping).
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(5);

/// `telemetry`: traces, pushed metrics, and the Grafana that shows them
/// (docs/OBSERVABILITY.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Message, fault and anomaly traces over OTLP gRPC.
    pub traces: TracesConfig,
    /// The run's metrics (those `/metrics` serves) pushed over OTLP gRPC.
    pub metrics: OtlpMetricsConfig,
    /// Grafana's base URL, for the links `simctl trace` prints (default
    /// `http://localhost:3000`, the compose stack's).
    pub tempo_url: String,
}

impl TelemetryConfig {
    /// Take what this config leaves to the environment (endpoints, ratio, interval) as
    /// `resolved` has it: a config compared with the one a run recorded at its start.
    pub fn resolve_as(&mut self, resolved: &Self) {
        let traces = &mut self.traces;
        if traces.endpoint.is_none() {
            traces.endpoint.clone_from(&resolved.traces.endpoint);
        }
        if traces.sample_ratio.is_none() {
            traces.sample_ratio = resolved.traces.sample_ratio;
        }
        let pushed = &mut self.metrics;
        if pushed.endpoint.is_none() {
            pushed.endpoint.clone_from(&resolved.metrics.endpoint);
        }
        if pushed.interval.is_none() {
            pushed.interval = resolved.metrics.interval;
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            traces: TracesConfig::default(),
            metrics: OtlpMetricsConfig::default(),
            tempo_url: "http://localhost:3000".into(),
        }
    }
}

/// `telemetry.traces`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Export traces (default false: nothing is exported, and nothing complains).
    pub enabled: bool,
    /// OTLP gRPC endpoint, `http://host:port` (default: `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// then `$OTEL_EXPORTER_OTLP_ENDPOINT`, then `http://127.0.0.1:4317`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Share of messages traced, 0 to 1, decided per message (default: from
    /// `$OTEL_TRACES_SAMPLER` — `always_on` 1, `always_off` 0, `traceidratio`
    /// `$OTEL_TRACES_SAMPLER_ARG` — else 0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// Allow plaintext to a collector that is not on loopback (default false: message
    /// metadata would cross the network unencrypted).
    pub insecure: bool,
}

impl TracesConfig {
    /// Fill what the config leaves out from `env` (the standard `OTEL_*` variables), then
    /// the defaults; check what the environment supplied as the config's values are checked.
    ///
    /// # Errors
    /// A variable's value that the config would refuse, named by the variable.
    pub fn resolve(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        resolve_endpoint(Signal::Traces, &mut self.endpoint, self.insecure, &env)?;
        if self.sample_ratio.is_none() {
            let sampler = env("OTEL_TRACES_SAMPLER").unwrap_or_default();
            let sampler = sampler.strip_prefix("parentbased_").unwrap_or(&sampler);
            let argument = match sampler {
                "always_on" => Some("1".to_string()),
                "always_off" => Some("0".to_string()),
                // The specification's default argument of the ratio sampler is 1.
                "traceidratio" => {
                    Some(env("OTEL_TRACES_SAMPLER_ARG").unwrap_or_else(|| "1".into()))
                }
                _ => None,
            };
            let ratio = match argument {
                Some(text) => {
                    let ratio = text
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r));
                    ratio.ok_or_else(|| {
                        ConfigError::new(
                            "OTEL_TRACES_SAMPLER_ARG",
                            format!("must be a number from 0 to 1, got {text:?}"),
                        )
                    })?
                }
                None => DEFAULT_SAMPLE_RATIO,
            };
            self.sample_ratio = Some(ratio);
        }
        Ok(())
    }

    /// The endpoint and ratio, once [`Self::resolve`]d (the defaults before).
    pub fn effective(&self) -> (&str, f64) {
        (
            self.endpoint.as_deref().unwrap_or(DEFAULT_OTLP_ENDPOINT),
            self.sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO),
        )
    }
}

/// `telemetry.metrics`: the run's metrics pushed to an OTLP collector, for a Prometheus that
/// cannot reach the coordinator to scrape it (a lab behind NAT, a laptop's compose stack)
/// or a backend that only takes OTLP. The same families as `/metrics`, with the same names,
/// so the same dashboards work on either path.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpMetricsConfig {
    /// Push metrics (default false).
    pub enabled: bool,
    /// OTLP gRPC endpoint, `http://host:port` (default:
    /// `$OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, then `$OTEL_EXPORTER_OTLP_ENDPOINT`, then
    /// `http://127.0.0.1:4317`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Time between pushes, ≥ 1s (default: `$OTEL_METRIC_EXPORT_INTERVAL` milliseconds,
    /// else 5s). The run's final values are pushed once more when it ends.
    #[serde(with = "human_opt", skip_serializing_if = "Option::is_none", default)]
    pub interval: Option<Duration>,
    /// Allow plaintext to a collector that is not on loopback (default false).
    pub insecure: bool,
}

/// The shortest push interval accepted: the coordinator pushes from its 200 ms tick, so a
/// shorter one would not be honoured, and a push a second is already finer than any
/// dashboard's step.
pub const MIN_PUSH_INTERVAL: Duration = Duration::from_secs(1);

impl OtlpMetricsConfig {
    /// Fill what the config leaves out from `env` (the standard `OTEL_*` variables), then
    /// the defaults.
    ///
    /// # Errors
    /// A variable's value that the config would refuse, named by the variable.
    pub fn resolve(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        resolve_endpoint(Signal::Metrics, &mut self.endpoint, self.insecure, &env)?;
        if self.interval.is_none() {
            let name = "OTEL_METRIC_EXPORT_INTERVAL";
            let interval = match env(name).filter(|v| !v.trim().is_empty()) {
                Some(text) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_millis)
                    .filter(|d| *d >= MIN_PUSH_INTERVAL)
                    .ok_or_else(|| {
                        ConfigError::new(
                            name,
                            format!("must be milliseconds, at least 1000, got {text:?}"),
                        )
                    })?,
                None => DEFAULT_PUSH_INTERVAL,
            };
            self.interval = Some(interval);
        }
        Ok(())
    }

    /// The endpoint and interval, once [`Self::resolve`]d (the defaults before).
    pub fn effective(&self) -> (&str, Duration) {
        (
            self.endpoint.as_deref().unwrap_or(DEFAULT_OTLP_ENDPOINT),
            self.interval.unwrap_or(DEFAULT_PUSH_INTERVAL),
        )
    }
}

/// Which OTLP signal an endpoint is for: its section in the config and its variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The config section, `telemetry.<name>`.
    pub(super) fn section(self) -> &'static str {
        match self {
            Self::Traces => "telemetry.traces",
            Self::Metrics => "telemetry.metrics",
        }
    }

    fn protocol_vars(self) -> [&'static str; 2] {
        match self {
            Self::Traces => [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
            Self::Metrics => [
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        }
    }

    fn endpoint_vars(self) -> [&'static str; 2] {
        match self {
            Self::Traces => [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
            Self::Metrics => [
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
        }
    }
}

/// Refuse a protocol other than gRPC, and fill an endpoint the config leaves out from the
/// signal's variables, then the default.
fn resolve_endpoint(
    signal: Signal,
    endpoint: &mut Option<String>,
    insecure: bool,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    // The signal's own variable wins over the shared one, as the specification says.
    let protocol = signal
        .protocol_vars()
        .into_iter()
        .find_map(|name| env(name).filter(|p| !p.is_empty()).map(|p| (name, p)));
    if let Some((name, protocol)) = protocol
        && protocol != "grpc"
    {
        return Err(ConfigError::new(
            name,
            format!("{protocol:?}: only OTLP over gRPC (grpc) is supported"),
        ));
    }
    if endpoint.is_none() {
        let from_env = signal
            .endpoint_vars()
            .into_iter()
            .find_map(|name| env(name).filter(|v| !v.is_empty()).map(|v| (name, v)));
        if let Some((name, value)) = &from_env
            && let Err(message) = check_endpoint(signal, value, insecure)
        {
            return Err(ConfigError::new(*name, message));
        }
        *endpoint = Some(from_env.map_or_else(|| DEFAULT_OTLP_ENDPOINT.into(), |(_, v)| v));
    }
    Ok(())
}

/// Whether `endpoint` is a usable OTLP gRPC endpoint: `http://host:port`, on loopback
/// unless `insecure`. TLS to the collector is not built: an `https://` endpoint is refused
/// rather than accepted and sent in plaintext.
pub(super) fn check_endpoint(signal: Signal, endpoint: &str, insecure: bool) -> Result<(), String> {
    if endpoint.starts_with("https://") {
        return Err(format!(
            "{endpoint:?}: TLS to the collector is not supported yet; use http:// to a \
             collector on this host (which may forward with TLS)"
        ));
    }
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(format!("{endpoint:?}: must be http://host:port"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port)
        }
        _ => return Err(format!("{endpoint:?}: must be http://host:port")),
    };
    if port.parse::<u16>().is_err() || host.is_empty() {
        return Err(format!("{endpoint:?}: must be http://host:port"));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !insecure {
        return Err(format!(
            "{endpoint:?}: plaintext to a collector not on loopback; set \
             {}.insecure: true to allow it",
            signal.section()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn enabled() -> TracesConfig {
        TracesConfig {
            enabled: true,
            ..TracesConfig::default()
        }
    }

    #[test]
    fn the_config_wins_then_the_environment_then_the_defaults() {
        let mut t = TracesConfig {
            endpoint: Some("http://127.0.0.1:1234".into()),
            sample_ratio: Some(0.5),
            ..enabled()
        };
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:9"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        t.resolve(env(&vars)).expect("resolves");
        assert_eq!(t.effective(), ("http://127.0.0.1:1234", 0.5));
        let mut t = enabled();
        t.resolve(env(&vars)).expect("resolves");
        assert_eq!(t.effective(), ("http://localhost:9", 0.25));
        let mut t = enabled();
        t.resolve(env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://[::1]:7"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:9"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]))
        .expect("resolves");
        assert_eq!(
            t.effective(),
            ("http://[::1]:7", DEFAULT_SAMPLE_RATIO),
            "no ratio sampler named"
        );
        let mut t = enabled();
        t.resolve(env(&[])).expect("resolves");
        assert_eq!(t.effective(), (DEFAULT_OTLP_ENDPOINT, DEFAULT_SAMPLE_RATIO));
    }

    #[test]
    fn standard_samplers_and_protocols() {
        for (sampler, ratio) in [
            ("always_on", 1.0),
            ("parentbased_always_off", 0.0),
            ("traceidratio", 1.0),
        ] {
            let mut t = enabled();
            t.resolve(env(&[("OTEL_TRACES_SAMPLER", sampler)]))
                .expect(sampler);
            assert_eq!(t.effective().1, ratio, "{sampler}");
        }
        let mut t = enabled();
        let e = t
            .resolve(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]))
            .expect_err("http");
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let mut t = enabled();
        t.resolve(env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .expect("the signal's own variable wins");
    }

    #[test]
    fn a_bad_variable_is_named() {
        let mut t = enabled();
        let e = t
            .resolve(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://10.1.2.3:4317",
            )]))
            .expect_err("not loopback");
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
        let mut t = enabled();
        let e = t
            .resolve(env(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ]))
            .expect_err("ratio");
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    #[test]
    fn endpoints() {
        let check = |e, insecure| check_endpoint(Signal::Traces, e, insecure);
        assert!(check("http://127.0.0.1:4317", false).is_ok());
        assert!(check("http://localhost:4317", false).is_ok());
        assert!(check("http://[::1]:4317", false).is_ok());
        assert!(check("http://collector:4317", true).is_ok());
        for bad in [
            "http://collector:4317",
            "https://127.0.0.1:4317",
            "127.0.0.1:4317",
            "http://127.0.0.1",
            "http://127.0.0.1:99999",
            "http://:4317",
        ] {
            assert!(check(bad, false).is_err(), "{bad}");
        }
        let e = check_endpoint(Signal::Metrics, "http://collector:4317", false).expect_err("lan");
        assert!(e.contains("telemetry.metrics.insecure"), "{e}");
    }

    #[test]
    fn resolve_as_fills_only_what_the_config_leaves_out() {
        let recorded = TelemetryConfig {
            traces: TracesConfig {
                endpoint: Some("http://localhost:1".into()),
                sample_ratio: Some(0.5),
                ..enabled()
            },
            metrics: OtlpMetricsConfig {
                endpoint: Some("http://localhost:2".into()),
                interval: Some(Duration::from_secs(3)),
                ..OtlpMetricsConfig::default()
            },
            ..TelemetryConfig::default()
        };
        let mut wanted = TelemetryConfig {
            traces: TracesConfig {
                sample_ratio: Some(0.25),
                ..TracesConfig::default()
            },
            ..TelemetryConfig::default()
        };
        wanted.resolve_as(&recorded);
        assert_eq!(wanted.traces.effective(), ("http://localhost:1", 0.25));
        assert_eq!(
            wanted.metrics.effective(),
            ("http://localhost:2", Duration::from_secs(3))
        );
    }

    #[test]
    fn pushed_metrics_take_their_own_variables_then_the_shared_ones() {
        let on = || OtlpMetricsConfig {
            enabled: true,
            ..OtlpMetricsConfig::default()
        };
        let mut m = on();
        m.resolve(env(&[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://localhost:7"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://localhost:8"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:9"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "2500"),
        ]))
        .expect("resolves");
        assert_eq!(
            m.effective(),
            ("http://localhost:7", Duration::from_millis(2500))
        );
        let mut m = on();
        m.resolve(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://localhost:9",
        )]))
        .expect("resolves");
        assert_eq!(m.effective(), ("http://localhost:9", DEFAULT_PUSH_INTERVAL));
        let mut m = OtlpMetricsConfig {
            interval: Some(Duration::from_secs(2)),
            ..on()
        };
        m.resolve(env(&[("OTEL_METRIC_EXPORT_INTERVAL", "x")]))
            .expect("the config wins");
        assert_eq!(m.effective().1, Duration::from_secs(2));
        for (name, value) in [
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5s"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://10.0.0.1:4317",
            ),
        ] {
            let e = on().resolve(env(&[(name, value)])).expect_err(value);
            assert!(e.to_string().contains(name), "{e}");
        }
        let mut off = OtlpMetricsConfig::default();
        off.resolve(env(&[("OTEL_METRIC_EXPORT_INTERVAL", "x")]))
            .expect("nothing resolved when off");
        assert_eq!(off.interval, None);
    }
}
