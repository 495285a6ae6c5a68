//! The run configuration: the plan's YAML schema (simulation, partitions, producers,
//! workers, coordinator, chaos, nats, metrics, checkpointing) plus optional extensions,
//! with defaults, validation and a dump of the effective config.
//!
//! ```
//! # use sim_core::config::Config;
//! let config = Config::from_yaml_str(
//!     "simulation: {duration: 45s}\n\
//!      partitions: {count: 16, message_rate_per_partition: 5}\n\
//!      workers: {count: 3}\n",
//! )?;
//! assert_eq!(config.producer_partitions(), vec![(0..16).collect::<Vec<u32>>()]);
//! # Ok::<(), sim_core::config::ConfigError>(())
//! ```
//!
//! YAML is read with `serde_yaml_ng`: a maintained fork of the archived `serde_yaml` with
//! the same serde interface, so `serde_path_to_error` can name the failing field.
//!
//! Layout:
//! - `schema`: the structs, one per section, with their defaults.
//! - `raw`: sections as written, where a default depends on a sibling field.
//! - `duration`: `90s`/`1h30m` durations and `10-30m` intervals.
//! - `bytes`: `10GB` byte sizes.
//! - `validate`: the rules a parsed config must satisfy.
//! - `weights`: partition weights and producer ranges derived from a config.
//! - `error`: [`ConfigError`] and [`ParseValueError`].

mod bytes;
mod duration;
mod error;
mod random;
mod raw;
mod schema;
mod telemetry;
mod validate;
mod weights;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub use bytes::ByteSize;
pub use duration::{Interval, format_duration, human, human_opt, parse_duration};
pub use error::{ConfigError, ParseValueError};
pub use schema::*;
pub use telemetry::{
    DEFAULT_OTLP_ENDPOINT, DEFAULT_PUSH_INTERVAL, DEFAULT_SAMPLE_RATIO, MIN_PUSH_INTERVAL,
    OtlpMetricsConfig, TelemetryConfig, TracesConfig,
};

/// Path shown for errors about the document as a whole (empty file, not a mapping).
const ROOT: &str = "(config)";

impl Config {
    /// Parses and validates a YAML config, filling in defaults that depend on other fields
    /// (`producers.partitions_per_producer`, `coordinator.drain_timeout`, `nats.url`).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Config =
            serde_path_to_error::deserialize(deserializer).map_err(serde_error)?;
        // Validate before filling in derived defaults, so errors can say which values were
        // defaulted rather than written.
        config.validate()?;
        config.fill_derived_defaults();
        Ok(config)
    }

    /// Reads, parses and validates the YAML config file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path.display().to_string(),
                format!("cannot read config: {e}"),
            )
        })?;
        Self::from_yaml_str(&text)
    }

    /// The effective config as YAML, every default filled in (for `simctl config dump`).
    /// Loading it again gives an equal `Config`. An unresolved seed is written as `null`;
    /// call [`Config::resolve_seed`] first to pin it.
    pub fn effective_yaml(&self) -> String {
        let mut config = self.clone();
        config.fill_derived_defaults();
        // Only strings, numbers, booleans, sequences and string-keyed maps: cannot fail.
        serde_yaml_ng::to_string(&config).expect("a Config always serializes to YAML")
    }

    /// The run's seed: `simulation.seed`, or — when absent — one derived from the clock and
    /// the process id, stored in `simulation.seed` so the dump of this run reproduces it.
    pub fn resolve_seed(&mut self) -> u64 {
        if let Some(seed) = self.simulation.seed {
            return seed;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // splitmix64 finaliser: spreads close timestamps over the whole seed space.
        let mut z = nanos ^ (u64::from(std::process::id()) << 32);
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let seed = z ^ (z >> 31);
        self.simulation.seed = Some(seed);
        seed
    }

    /// Partitions per producer in effect: the configured value, else
    /// ⌈partitions.count / producers.count⌉.
    pub fn partitions_per_producer(&self) -> u32 {
        self.producers
            .partitions_per_producer
            .unwrap_or_else(|| self.partitions.count.div_ceil(self.producers.count.max(1)))
    }

    /// Writes the defaults that depend on other fields into the config, so the dump shows
    /// the values in effect and reloads to the same config.
    fn fill_derived_defaults(&mut self) {
        self.producers.partitions_per_producer = Some(self.partitions_per_producer());
    }
}

/// Turns a serde error into a [`ConfigError`] naming the field.
fn serde_error(error: serde_path_to_error::Error<serde_yaml_ng::Error>) -> ConfigError {
    let path = error.path().to_string();
    let message = error.into_inner().to_string();
    // serde_yaml_ng prefixes some messages with its own notion of the path (the parent
    // map's, for unknown fields); ours from serde_path_to_error is the precise one, so drop
    // theirs rather than show two.
    let message = match message.split_once(": ") {
        Some((prefix, rest)) if is_path_prefix(prefix, &path) => rest.to_owned(),
        _ => message,
    };
    let message = readable_expectation(&message);
    // serde_path_to_error writes `.` for the root and `?` for a key it never got to read
    // (a YAML syntax error); neither helps a reader, so keep only the known part.
    let mut path = path.as_str();
    while let Some(parent) = path.strip_suffix(".?") {
        path = parent;
    }
    let path = if path == "." || path == "?" {
        String::new()
    } else {
        path.to_owned()
    };
    // serde reports missing and duplicate fields at their parent ("missing field `count`"
    // at `workers`); pointing at the field itself is what a reader of the error wants.
    for (prefix, problem) in [
        ("missing field `", "required field is missing"),
        ("duplicate field `", "given more than once"),
    ] {
        let field = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'));
        if let Some((field, location)) = field {
            let full = if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            return ConfigError::new(full, format!("{problem}{location}"));
        }
    }
    let path = if path.is_empty() {
        ROOT.to_owned()
    } else {
        path
    };
    ConfigError::new(path, message)
}

/// Whether `prefix` is `path` or one of its ancestors (`workers` of `workers.count`).
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    !prefix.is_empty()
        && path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Replaces serde's "expected struct WorkersConfig" (a Rust type name, meaningless to
/// someone editing YAML) with "expected a mapping of settings".
fn readable_expectation(message: &str) -> String {
    const STRUCT: &str = "expected struct ";
    match message.split_once(STRUCT) {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
            format!("{before}expected a mapping of settings{rest}")
        }
        None => message.to_owned(),
    }
}
