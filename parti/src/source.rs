//! Where the leader learns which partitions exist.

use std::sync::{Arc, RwLock};

use crate::Partition;

/// The set of partitions to distribute. Only the leader's source is read.
pub trait PartitionSource: Send + Sync + std::fmt::Debug {
    /// The partitions that exist now.
    fn list_partitions(&self) -> Vec<Partition>;
}

/// A fixed list that can be replaced at run time (call `Manager::refresh_partitions`
/// afterwards so the leader redistributes without waiting for a membership change).
#[derive(Debug, Clone, Default)]
pub struct StaticSource {
    partitions: Arc<RwLock<Vec<Partition>>>,
}

impl StaticSource {
    /// A source holding `partitions`.
    pub fn new(partitions: Vec<Partition>) -> Self {
        Self {
            partitions: Arc::new(RwLock::new(partitions)),
        }
    }

    /// `count` single-key partitions named `0..count`, weight 1.
    pub fn numbered(count: usize) -> Self {
        Self::new(
            (0..count)
                .map(|i| Partition::new(i.to_string(), 1))
                .collect(),
        )
    }

    /// Replace the partition list; clones of this source see the change.
    pub fn update(&self, partitions: Vec<Partition>) {
        *self
            .partitions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = partitions;
    }
}

impl PartitionSource for StaticSource {
    fn list_partitions(&self) -> Vec<Partition> {
        self.partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
