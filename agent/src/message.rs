//! The simulation message body (the plan's JSON) and subject naming.

use serde::{Deserialize, Serialize};

/// Body of every message on `<subject_prefix>.<partition>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulationMessage {
    /// Partition number.
    pub partition_id: u32,
    /// Producer that published it.
    pub producer_id: String,
    /// Per-partition sequence, 1, 2, 3, ... without gaps.
    pub partition_sequence: u64,
    /// Per-producer sequence.
    pub producer_sequence: u64,
    /// Publish time, unix microseconds.
    pub timestamp: i64,
    /// Partition weight.
    pub weight: i64,
}

/// Subject of `partition`.
pub fn subject(prefix: &str, partition: u32) -> String {
    format!("{prefix}.{partition}")
}

/// JetStream de-duplication id: a retried publish of the same message is stored once.
pub fn message_id(partition: u32, seq: u64) -> String {
    format!("{partition}:{seq}")
}
