//! A partition's position the brokers no longer have. A restored checkpoint (or the group's
//! offset) names the next record to apply, but the topic's retention — or a delete-records, or
//! a topic deleted and made again — may have removed it by then: sluice stopped for longer
//! than the retention, or fell that far behind. The fetch fails "offset out of range" and
//! librdkafka moves the position by `auto.offset.reset`, logging one line. Its default
//! (`latest`) skipped every record still in the topic too (measured: 100 retained records of
//! 4 partitions never taken, lag shown as the old position's); sluice sets `earliest` unless
//! `[kafka.consumer]` says otherwise (Kafka Streams' default too), so only what is gone is
//! lost. The reset is then said as an error with what it means and counted
//! (`sluice_kafka_offset_resets_total`), and when the partition's next record arrives the
//! offsets skipped (`sluice_kafka_offsets_lost_total`: records deleted before sluice took
//! them, plus any transaction markers among them).
//!
//! A reset may also land *below* the old position: the partition's offsets went back, as when
//! the topic is deleted and made again (measured: the new topic's first records came at offset
//! 0 after sluice had taken 10 of the old one) or the brokers lost records. Those records are
//! new to sluice and are taken, each key's state going on; the old topic's records sluice had
//! not taken yet cannot be counted (the brokers no longer know them).

use std::sync::atomic::{AtomicU64, Ordering};

static RESETS: AtomicU64 = AtomicU64::new(0);
static OFFSETS_LOST: AtomicU64 = AtomicU64::new(0);

/// Resets librdkafka made of this process's consumers' positions.
pub fn resets() -> u64 {
    RESETS.load(Ordering::Relaxed)
}

/// Offsets skipped by those resets (counted when the partition's next record arrives).
pub fn offsets_lost() -> u64 {
    OFFSETS_LOST.load(Ordering::Relaxed)
}

/// One reset, from librdkafka's OFFSET line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub topic: String,
    pub partition: i32,
    /// The position that was out of range.
    pub at: i64,
    /// Where librdkafka moved it: its words (`offset BEGINNING`, `offset END`, `offset 75`).
    pub to: String,
}

impl Reset {
    /// librdkafka's line (`rd_kafka_offset_reset`, librdkafka 2.12): "events [1]: offset
    /// reset (at offset 52 (leader epoch -1), broker 1) to offset END (leader epoch -1): fetch
    /// failed due to requested offset not available on the broker: Broker: Offset out of
    /// range". None for any other line (the logical resets at an assignment are debug lines
    /// and never reach here).
    pub fn parse(message: &str) -> Option<Self> {
        // The thread tag librdkafka puts first ("[thrd:main]: "), if any.
        let message = message
            .strip_prefix('[')
            .and_then(|m| m.split_once("]: "))
            .map_or(message, |(_, m)| m);
        let (topic, rest) = message.split_once(" [")?;
        let (partition, rest) = rest.split_once("]: offset reset (at offset ")?;
        let (at, rest) = rest.split_once(' ')?;
        let (_, rest) = rest.split_once(") to ")?;
        let to = rest
            .split(" (leader epoch")
            .next()?
            .split(':')
            .next()?
            .trim();
        Some(Self {
            topic: topic.to_owned(),
            partition: partition.parse().ok()?,
            at: at.parse().ok()?,
            to: to.to_owned(),
        })
    }

    /// Counted; what an operator reads.
    pub fn said(&self) -> String {
        RESETS.fetch_add(1, Ordering::Relaxed);
        format!(
            "Kafka partition {} [{}]: offset {} is no longer in the topic (out of range: deleted by its retention or a delete-records before sluice took it — sluice was stopped or behind for longer than the topic keeps records — or the topic was made again); the position moved to {} (kafka.consumer.\"auto.offset.reset\"): the records in between are lost, counted in sluice_kafka_offsets_lost_total when the partition's next record arrives",
            self.topic, self.partition, self.at, self.to
        )
    }
}

/// The partition's first record after a reset from `at` is at `offset`: the offsets skipped,
/// counted and said, or the offsets gone back, said (None when the reset kept the place).
pub fn landed(topic: &str, partition: i32, at: i64, offset: i64) -> Option<String> {
    if offset < at {
        return Some(format!(
            "Kafka partition {topic} [{partition}]: taken up at offset {offset} after the reset from {at}: the partition's offsets went back (the topic was deleted and made again, or the brokers lost records), so its records from offset {offset} on are new to sluice and are taken, each key's state going on; records of the old topic sluice had not taken are lost and not counted"
        ));
    }
    let lost = offset.checked_sub(at).filter(|&n| n > 0)?;
    OFFSETS_LOST.fetch_add(lost as u64, Ordering::Relaxed);
    Some(format!(
        "Kafka partition {topic} [{partition}]: taken up at offset {offset} after the reset from {at}: {lost} offsets lost (records deleted before sluice took them, and any transaction markers among them)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafkas_reset_line_is_read_and_others_are_not() {
        let line = "[thrd:main]: events [1]: offset reset (at offset 52 (leader epoch -1), broker 1) to offset END (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range";
        assert_eq!(
            Reset::parse(line),
            Some(Reset {
                topic: "events".into(),
                partition: 1,
                at: 52,
                to: "offset END".into(),
            })
        );
        let cached = "[thrd:main]: my.topic [12]: offset reset (at offset 7 (leader epoch 3), broker 2) to cached BEGINNING offset offset 75 (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range";
        let r = Reset::parse(cached).unwrap();
        assert_eq!((r.topic.as_str(), r.partition, r.at), ("my.topic", 12, 7));
        assert_eq!(r.to, "cached BEGINNING offset offset 75");
        for other in [
            "[thrd:main]: events [1]: offset commit failed",
            "events [1]: offset reset (at offset x (leader epoch -1), broker 1) to offset END",
            "",
        ] {
            assert_eq!(Reset::parse(other), None, "{other}");
        }
        let before = resets();
        let said = r.said();
        assert!(
            said.contains("offset 7 is no longer in the topic"),
            "{said}"
        );
        assert!(resets() > before);
    }

    #[test]
    fn the_offsets_a_reset_skipped_are_counted_when_the_next_record_lands() {
        let before = offsets_lost();
        let said = landed("events", 0, 52, 77).unwrap();
        assert!(said.contains("25 offsets lost"), "{said}");
        // Other tests of this process may count too: at least these.
        assert!(offsets_lost() >= before + 25);
        assert_eq!(landed("events", 0, 52, 52), None);
    }

    #[test]
    fn a_reset_below_the_old_position_says_the_offsets_went_back_and_counts_none_lost() {
        let said = landed("events", 3, 10, 0).unwrap();
        assert!(
            said.contains("events [3]: taken up at offset 0 after the reset from 10")
                && said.contains("offsets went back"),
            "{said}"
        );
        assert!(!said.contains("offsets lost"), "{said}");
    }
}
