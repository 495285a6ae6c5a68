//! The stream as the ground truth at the end of a run.
//!
//! The books know a message from its `sent` report, or from a report of a later seq on its
//! partition (sequences are gap-free). A partition's *last* messages are known only from
//! their own reports: a producer killed between the PubAck and its report leaves messages in
//! the stream that no report announced, and if nobody processes them either, the books
//! would balance without them. So once every producer has stopped (the drain), the
//! coordinator reads each partition's last stored message; what lies beyond the reports
//! becomes known and must be processed like any other message before the drain ends, or
//! it is lost. [`StreamCheck`] is what that read found, kept with the run and shown in its
//! report.

use serde::{Deserialize, Serialize};

/// How many unreadable partitions are named (all are counted).
const UNREAD_SAMPLES: usize = 8;

/// Messages of one partition the stream held beyond every report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTail {
    /// The partition.
    pub partition: u32,
    /// The highest seq the reports had announced.
    pub reported_through: u64,
    /// The seq of its last stored message.
    pub stored_through: u64,
}

/// What the read of the stream at the end of the run found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamCheck {
    /// Whether the stream was read (a run that ended before its producers stopped was not).
    pub read: bool,
    /// Partitions whose last stored message was read.
    pub partitions_read: u32,
    /// Messages the stream held beyond every report (their `sent` never arrived).
    pub unannounced: u64,
    /// Of those, how many were never processed: lost (counted in the tracker's `lost` too).
    pub unannounced_lost: u64,
    /// The partitions with such messages.
    pub tails: Vec<StoredTail>,
    /// Partitions whose last stored message could not be read: not verified.
    pub unread: u32,
    /// The first few of them, with why.
    pub unread_samples: Vec<String>,
}

impl StreamCheck {
    /// `partition`'s last stored message is `stored_through`, `unannounced` of its seqs
    /// beyond the reports.
    pub fn read_partition(&mut self, partition: u32, stored_through: u64, unannounced: u64) {
        self.partitions_read += 1;
        if unannounced > 0 {
            self.unannounced += unannounced;
            self.tails.push(StoredTail {
                partition,
                reported_through: stored_through - unannounced,
                stored_through,
            });
        }
    }

    /// `partition` could not be verified, because of `why`.
    pub fn unreadable(&mut self, partition: u32, why: &str) {
        self.unread += 1;
        if self.unread_samples.len() < UNREAD_SAMPLES {
            self.unread_samples
                .push(format!("partition {partition}: {why}"));
        }
    }

    /// One line for the run's events.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "stream read after the producers stopped: {} partition(s), {} message(s) beyond the reports",
            self.partitions_read, self.unannounced
        );
        if self.unread > 0 {
            line.push_str(&format!(
                "; {} partition(s) not verified ({})",
                self.unread,
                self.unread_samples.join("; ")
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_and_unread_partitions_are_counted_and_named() {
        let mut check = StreamCheck::default();
        check.read_partition(0, 10, 0);
        check.read_partition(1, 12, 2);
        for partition in 2..12 {
            check.unreadable(partition, "not JSON");
        }
        assert_eq!((check.partitions_read, check.unannounced), (2, 2));
        assert_eq!(
            check.tails,
            [StoredTail {
                partition: 1,
                reported_through: 10,
                stored_through: 12
            }]
        );
        assert_eq!((check.unread, check.unread_samples.len()), (10, 8));
        assert!(
            check
                .summary()
                .ends_with("2 message(s) beyond the reports; 10 partition(s) not verified (partition 2: not JSON; partition 3: not JSON; partition 4: not JSON; partition 5: not JSON; partition 6: not JSON; partition 7: not JSON; partition 8: not JSON; partition 9: not JSON)")
        );
    }
}
