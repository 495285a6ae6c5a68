//! Manager configuration: defaults from the Go parti where they were sound, validation that
//! names the field and the value.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a [`crate::Manager`] needs besides the NATS client, source and strategy.
///
/// Lease durations (`worker_id_ttl`, `heartbeat_ttl`, `election_timeout`) are enforced by the
/// server through per-message TTLs, which have one-second resolution: they must be whole
/// seconds. Every other duration is free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Worker ids are `<worker_id_prefix>-<n>`.
    pub worker_id_prefix: String,
    /// Lowest id number handed out (inclusive).
    pub worker_id_min: u32,
    /// Highest id number handed out (inclusive).
    pub worker_id_max: u32,
    /// Lease on the stable id; renewed every third of it.
    #[serde(with = "duration_serde")]
    pub worker_id_ttl: Duration,
    /// How often the heartbeat lease is renewed.
    #[serde(with = "duration_serde")]
    pub heartbeat_interval: Duration,
    /// Heartbeat lease: a worker silent this long is dead, and has stopped processing.
    #[serde(with = "duration_serde")]
    pub heartbeat_ttl: Duration,
    /// Leader lease; renewed every third of it.
    #[serde(with = "duration_serde")]
    pub election_timeout: Duration,
    /// Window after the first assignment of a cold start before the final one.
    #[serde(with = "duration_serde")]
    pub cold_start_window: Duration,
    /// Window after a join before rebalancing, so a burst of joins gives one rebalance.
    #[serde(with = "duration_serde")]
    pub planned_scale_window: Duration,
    /// How long a worker must stay gone (heartbeat expired) before its partitions move.
    #[serde(with = "duration_serde")]
    pub emergency_grace_period: Duration,
    /// Minimum time between two planned rebalances (does not delay emergencies or leaves).
    #[serde(with = "duration_serde")]
    pub min_rebalance_interval: Duration,
    /// `workers / (partitions / 10)` at or above this at leader start ⇒ cold-start window,
    /// else planned-scale window (a restart of many workers looks like a cold start).
    pub restart_detection_ratio: f64,
    /// Bound on `Manager::start` (connect, claim id, first assignment).
    #[serde(with = "duration_serde")]
    pub startup_timeout: Duration,
    /// Bound on a graceful `Manager::stop` (drain and release).
    #[serde(with = "duration_serde")]
    pub shutdown_timeout: Duration,
    /// Disconnected this long ⇒ state `Degraded` (processing continues while leases hold).
    #[serde(with = "duration_serde")]
    pub degraded_enter_threshold: Duration,
    /// KV bucket holding ids, heartbeats, the leader lease and the assignment.
    pub bucket: String,
    /// Replicas of the control bucket (3 on a cluster).
    pub bucket_replicas: usize,
    /// The identity a restarted process presents to take its previous id back at once.
    ///
    /// Must only be reused once the previous holder is dead (an agent passes a slot token
    /// after reaping the child). `None`: take the lowest free id.
    pub identity_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            worker_id_prefix: "worker".into(),
            worker_id_min: 0,
            worker_id_max: 999,
            worker_id_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_ttl: Duration::from_secs(6),
            election_timeout: Duration::from_secs(5),
            cold_start_window: Duration::from_secs(30),
            planned_scale_window: Duration::from_secs(10),
            emergency_grace_period: Duration::from_secs(3),
            min_rebalance_interval: Duration::from_secs(10),
            restart_detection_ratio: 0.5,
            startup_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            degraded_enter_threshold: Duration::from_secs(2),
            bucket: "parti".into(),
            bucket_replicas: 1,
            identity_token: None,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parti config: {field} = {value}: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Its value, as written.
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
}

impl Config {
    /// Timings for tests: sub-second windows, one-second leases (the smallest the server
    /// enforces).
    pub fn fast_for_tests() -> Self {
        Self {
            worker_id_ttl: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(300),
            heartbeat_ttl: Duration::from_secs(1),
            election_timeout: Duration::from_secs(1),
            cold_start_window: Duration::from_millis(800),
            planned_scale_window: Duration::from_millis(400),
            emergency_grace_period: Duration::from_millis(300),
            min_rebalance_interval: Duration::from_millis(200),
            startup_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(10),
            degraded_enter_threshold: Duration::from_millis(500),
            ..Self::default()
        }
    }

    /// Check every rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, value: String, reason: &str| ConfigError {
            field,
            value,
            reason: reason.into(),
        };
        if self.worker_id_prefix.is_empty() || !self.worker_id_prefix.chars().all(is_key_char) {
            return Err(err(
                "worker_id_prefix",
                self.worker_id_prefix.clone(),
                "must be non-empty and use only [A-Za-z0-9_-]",
            ));
        }
        if self.worker_id_min > self.worker_id_max {
            return Err(err(
                "worker_id_min",
                self.worker_id_min.to_string(),
                &format!("must be <= worker_id_max ({})", self.worker_id_max),
            ));
        }
        for (field, value) in [
            ("worker_id_ttl", self.worker_id_ttl),
            ("heartbeat_ttl", self.heartbeat_ttl),
            ("election_timeout", self.election_timeout),
        ] {
            if value < Duration::from_secs(1) || value.subsec_nanos() != 0 {
                return Err(err(
                    field,
                    format!("{value:?}"),
                    "server-enforced leases need whole seconds, at least 1s",
                ));
            }
        }
        if self.heartbeat_interval.is_zero() {
            return Err(err("heartbeat_interval", "0s".into(), "must be > 0"));
        }
        if self.heartbeat_ttl < self.heartbeat_interval * 2 {
            return Err(err(
                "heartbeat_ttl",
                format!("{:?}", self.heartbeat_ttl),
                &format!(
                    "must be >= 2 x heartbeat_interval ({:?}) so one lost renewal is survivable",
                    self.heartbeat_interval
                ),
            ));
        }
        if self.worker_id_ttl < self.heartbeat_ttl {
            return Err(err(
                "worker_id_ttl",
                format!("{:?}", self.worker_id_ttl),
                &format!("must be >= heartbeat_ttl ({:?})", self.heartbeat_ttl),
            ));
        }
        if self.cold_start_window < self.planned_scale_window {
            return Err(err(
                "cold_start_window",
                format!("{:?}", self.cold_start_window),
                &format!(
                    "must be >= planned_scale_window ({:?})",
                    self.planned_scale_window
                ),
            ));
        }
        if self.min_rebalance_interval.is_zero() {
            return Err(err("min_rebalance_interval", "0s".into(), "must be > 0"));
        }
        if self.emergency_grace_period > self.heartbeat_ttl {
            return Err(err(
                "emergency_grace_period",
                format!("{:?}", self.emergency_grace_period),
                &format!("must be <= heartbeat_ttl ({:?})", self.heartbeat_ttl),
            ));
        }
        if !(self.restart_detection_ratio > 0.0 && self.restart_detection_ratio.is_finite()) {
            return Err(err(
                "restart_detection_ratio",
                self.restart_detection_ratio.to_string(),
                "must be a positive number",
            ));
        }
        if self.bucket.is_empty() || !self.bucket.chars().all(is_key_char) {
            return Err(err(
                "bucket",
                self.bucket.clone(),
                "must be non-empty and use only [A-Za-z0-9_-]",
            ));
        }
        if !(1..=5).contains(&self.bucket_replicas) {
            return Err(err(
                "bucket_replicas",
                self.bucket_replicas.to_string(),
                "must be between 1 and 5",
            ));
        }
        if let Some(token) = &self.identity_token
            && (token.is_empty() || token.len() > 256)
        {
            return Err(err(
                "identity_token",
                token.clone(),
                "must be 1 to 256 characters",
            ));
        }
        Ok(())
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Durations as human strings (`"500ms"`, `"2s"`, `"5m"`) in serde.
pub(crate) mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// Parse `<number><unit>` with unit one of ms, s, m, h.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} has no unit (ms, s, m, h)"))?;
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("duration {text:?} does not start with a number"))?;
        let seconds = match unit {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            _ => return Err(format!("duration {text:?} has unknown unit {unit:?}")),
        };
        Ok(Duration::from_secs_f64(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults");
        Config::fast_for_tests().validate().expect("test timings");
    }

    #[test]
    fn errors_name_field_and_value() {
        let config = Config {
            heartbeat_ttl: Duration::from_secs(3),
            ..Config::default()
        };
        let error = config.validate().expect_err("ttl < 2 x interval");
        assert_eq!(error.field, "heartbeat_ttl");
        assert!(error.to_string().contains("heartbeat_ttl = 3s"), "{error}");

        let config = Config {
            election_timeout: Duration::from_millis(1500),
            ..Config::default()
        };
        assert_eq!(
            config.validate().expect_err("fraction").field,
            "election_timeout"
        );

        let config = Config {
            worker_id_min: 5,
            worker_id_max: 4,
            ..Config::default()
        };
        assert_eq!(config.validate().expect_err("range").field, "worker_id_min");

        let config = Config {
            worker_id_prefix: "a.b".into(),
            ..Config::default()
        };
        assert_eq!(
            config.validate().expect_err("dot").field,
            "worker_id_prefix"
        );

        let config = Config {
            cold_start_window: Duration::from_secs(1),
            ..Config::default()
        };
        assert_eq!(
            config.validate().expect_err("windows").field,
            "cold_start_window"
        );
    }

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(
            duration_serde::parse("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(duration_serde::parse("2m"), Ok(Duration::from_secs(120)));
        assert!(duration_serde::parse("5").is_err());
        assert!(duration_serde::parse("5d").is_err());
        let parsed: Config =
            serde_json::from_str(r#"{"heartbeat_interval":"1s","heartbeat_ttl":"4s"}"#)
                .expect("parse");
        assert_eq!(parsed.heartbeat_ttl, Duration::from_secs(4));
        assert!(serde_json::from_str::<Config>(r#"{"nope":1}"#).is_err());
    }
}
