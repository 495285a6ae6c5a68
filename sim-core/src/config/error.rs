//! Config errors: one type for everything that can be wrong with a config file, always
//! naming the field path, and one for the human value formats (durations, sizes).

use thiserror::Error;

/// Why a config could not be used: the dotted field path (e.g.
/// `workers.processing_delay.min`) and what is wrong there, including the offending value.
///
/// For a file that cannot be read, `path` is the file's path instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted field path (`chaos.events[2]`), or the file path for I/O errors.
    pub path: String,
    /// What is wrong, with the bad value.
    pub message: String,
}

impl ConfigError {
    /// An error at `path` with `message`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A human-written value (duration, interval, byte size) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseValueError {
    /// Not a duration such as `90s`, `5m`, `12h`, `10ms` or `1h30m`.
    #[error("invalid duration {input:?}: {reason} (expected e.g. 90s, 5m, 12h, 10ms, 1h30m)")]
    Duration {
        /// The text as written.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not an interval such as `10-30m`, `10m-30m` or `30s-60s`.
    #[error("invalid interval {input:?}: {reason} (expected e.g. 10-30m, 10m-30m, 30s-60s)")]
    Interval {
        /// The text as written.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a byte size such as `512MB` or `10GB`.
    #[error(
        "invalid byte size {input:?}: {reason} (expected e.g. 512MB, 10GB; units B, KB, MB, GB, TB)"
    )]
    ByteSize {
        /// The text as written.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}
