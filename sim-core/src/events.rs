//! What the run log says: the events of a run, typed by what they are about, and how the run
//! ended.
//!
//! An event's text is for people (`events.log`, the JSON report's `events`); its kind is
//! for code. The report picks the lines it repeats in its summary by kind — an
//! [`EventKind::Unexpected`] event is shown, whatever its text says — so rewording a line
//! changes nothing a program decides.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A process started, exited as expected, or was respawned.
    Process,
    /// Something went wrong that the chaos does not explain (a process exit, a slot not
    /// respawned); the report's summary repeats these lines.
    Unexpected,
    /// A fault: injected or not, what the agent or NATS server made of it.
    Fault,
    /// A fault's recovery: finished, or over its bound.
    Recovery,
    /// The run moved on: second wave, drain, finish.
    Phase,
    /// The coordinator resumed from a checkpoint, and what followed.
    Resume,
    /// Checkpoint trouble and statistics.
    Checkpoint,
    /// One of the tracker's sampled anomalies, with partition and sequence.
    Anomaly,
}

/// One line of the run's story.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    /// What it is about.
    pub kind: EventKind,
    /// What happened.
    pub text: String,
}

impl RunEvent {
    /// An event of `kind`.
    pub fn new(kind: EventKind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
        }
    }

    /// Whether the report's summary repeats it.
    pub fn is_unexpected(&self) -> bool {
        self.kind == EventKind::Unexpected
    }
}

/// The line as `events.log` and the report show it: unexpected ones say so up front.
impl fmt::Display for RunEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unexpected() {
            f.write_str("UNEXPECTED: ")?;
        }
        f.write_str(&self.text)
    }
}

/// Serializes events as their lines (the JSON report's `events`, as it always read).
///
/// # Errors
/// Whatever the serializer fails with.
pub fn serialize_lines<S: Serializer>(
    events: &[RunEvent],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(events.iter().map(ToString::to_string))
}

/// How a run ended. Serialized as its text (checkpoints and the JSON report's `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// Everything sent was received and the drain settled.
    #[serde(rename = "drained")]
    Drained,
    /// The drain ran out of time with messages still missing.
    #[serde(rename = "drain timeout")]
    DrainTimeout,
    /// Messages stopped flowing.
    #[serde(rename = "stall")]
    Stall,
    /// Every agent disconnected.
    #[serde(rename = "agents lost")]
    AgentsLost,
    /// Not ended: a checkpoint of a run that was still going.
    #[serde(rename = "unfinished")]
    Unfinished,
}

impl EndReason {
    /// The text the report shows (`drain timeout`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drained => "drained",
            Self::DrainTimeout => "drain timeout",
            Self::Stall => "stall",
            Self::AgentsLost => "agents lost",
            Self::Unfinished => "unfinished",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_before() {
        let exit = RunEvent::new(EventKind::Unexpected, "worker-0 (pid 42) exited: signal 9");
        let resumed = RunEvent::new(EventKind::Resume, "resumed from checkpoint 3");
        assert_eq!(
            exit.to_string(),
            "UNEXPECTED: worker-0 (pid 42) exited: signal 9"
        );
        assert_eq!(resumed.to_string(), "resumed from checkpoint 3");
        let mut json = serde_json::Serializer::new(Vec::new());
        serialize_lines(&[exit, resumed], &mut json).expect("serialize");
        assert_eq!(
            String::from_utf8(json.into_inner()).expect("utf-8"),
            r#"["UNEXPECTED: worker-0 (pid 42) exited: signal 9","resumed from checkpoint 3"]"#
        );
    }

    #[test]
    fn end_reasons_serialize_as_their_text() {
        for end in [
            EndReason::Drained,
            EndReason::DrainTimeout,
            EndReason::Stall,
            EndReason::AgentsLost,
            EndReason::Unfinished,
        ] {
            let json = serde_json::to_string(&end).expect("serialize");
            assert_eq!(json, format!("\"{end}\""));
            assert_eq!(
                serde_json::from_str::<EndReason>(&json).expect("parse"),
                end
            );
        }
    }
}
