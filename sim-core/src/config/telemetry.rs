//! `telemetry` (extension): traces over OTLP, and where users look at them.
//!
//! The endpoint and the sampling ratio come from the config, else from the standard
//! `OTEL_*` variables of the coordinator's environment (the config wins), else defaults; the
//! coordinator resolves them when a run starts ([`TracesConfig::resolve`]) and records the
//! result in the run's effective config, so a run directory says where its traces went.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The OTLP gRPC endpoint used when neither the config nor the environment names one.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4317";
/// The share of messages traced when neither the config nor the environment says.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// `telemetry`: traces, and the Grafana that shows them (docs/OBSERVABILITY.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Message, fault and anomaly traces over OTLP gRPC.
    pub traces: TracesConfig,
    /// Grafana's base URL, for the links `simctl trace` prints (default
    /// `http://localhost:3000`, the compose stack's).
    pub tempo_url: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            traces: TracesConfig::default(),
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
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = env(name).filter(|p| !p.is_empty() && p != "grpc") {
                return Err(ConfigError::new(
                    name,
                    format!("{protocol:?}: only OTLP over gRPC (grpc) is supported"),
                ));
            }
        }
        if self.endpoint.is_none() {
            let from_env = [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ]
            .into_iter()
            .find_map(|name| env(name).filter(|v| !v.is_empty()).map(|v| (name, v)));
            if let Some((name, value)) = &from_env
                && let Err(message) = check_endpoint(value, self.insecure)
            {
                return Err(ConfigError::new(*name, message));
            }
            self.endpoint = Some(from_env.map_or_else(|| DEFAULT_OTLP_ENDPOINT.into(), |(_, v)| v));
        }
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

/// Whether `endpoint` is a usable OTLP gRPC endpoint: `http://host:port`, on loopback
/// unless `insecure`. TLS to the collector is not built: an `https://` endpoint is refused
/// rather than accepted and sent in plaintext.
pub(super) fn check_endpoint(endpoint: &str, insecure: bool) -> Result<(), String> {
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
             telemetry.traces.insecure: true to allow it"
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
        assert!(check_endpoint("http://127.0.0.1:4317", false).is_ok());
        assert!(check_endpoint("http://localhost:4317", false).is_ok());
        assert!(check_endpoint("http://[::1]:4317", false).is_ok());
        assert!(check_endpoint("http://collector:4317", true).is_ok());
        for bad in [
            "http://collector:4317",
            "https://127.0.0.1:4317",
            "127.0.0.1:4317",
            "http://127.0.0.1",
            "http://127.0.0.1:99999",
            "http://:4317",
        ] {
            assert!(check_endpoint(bad, false).is_err(), "{bad}");
        }
    }
}
