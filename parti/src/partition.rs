//! The unit of work that parti distributes: a partition, named by one or more keys.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A partition: an ordered list of keys and a weight (expected relative load).
///
/// `id()` (keys joined with `-`) names it in KV and consumer names; `subject_key()`
/// (keys joined with `.`) is what goes into NATS subjects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// The keys, most significant first.
    pub keys: Vec<String>,
    /// Relative load; `<= 0` means "use the strategy's default weight".
    #[serde(default)]
    pub weight: i64,
}

impl Partition {
    /// A single-key partition with the given weight.
    pub fn new(key: impl Into<String>, weight: i64) -> Self {
        Self {
            keys: vec![key.into()],
            weight,
        }
    }

    /// Stable identifier: keys joined with `-`.
    pub fn id(&self) -> String {
        self.keys.join("-")
    }

    /// Subject fragment: keys joined with `.`.
    pub fn subject_key(&self) -> String {
        self.keys.join(".")
    }

    /// Placement hash: xxh3 of the first key (seeded when `seed != 0`), then each following
    /// key hashed with the previous hash as its seed. Empty keys hash to 0.
    pub fn placement_hash(&self, seed: u64) -> u64 {
        let mut keys = self.keys.iter();
        let Some(first) = keys.next() else {
            return 0;
        };
        let mut hash = if seed != 0 {
            xxh3_64_with_seed(first.as_bytes(), seed)
        } else {
            xxh3_64(first.as_bytes())
        };
        for key in keys {
            hash = xxh3_64_with_seed(key.as_bytes(), hash);
        }
        hash
    }
}
