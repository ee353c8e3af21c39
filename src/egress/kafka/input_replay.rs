//! The changelog's fallback (`rebuild::read`): a partition whose changelog cannot rebuild it —
//! records deleted from it, or the topic made anew — is rebuilt from its input partition
//! instead, read from offset 0 up to the offset the group committed with the state, through a
//! Score-less `shard::Replay`. Possible only while the input still holds its first record;
//! otherwise no complete point is left and the rebuild is refused, saying so.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::to_the_end::{self, Next};
use crate::config::Config;
use crate::ingest::kafka::client_errors::Counted;
use crate::ingest::kafka::KafkaError;
use crate::shard::{Replay, Replayed};
use crate::state::partition::PartitionImage;

/// An input partition to replay, and where the replay ends: the next offset the group
/// committed with the state (0: nothing was committed, the state is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputEnd {
    pub topic: String,
    pub partition: i32,
    pub until: i64,
}

/// Replay `input` (source tag `tag`) into a state of its own: its records and newest event
/// time. `cancel` stops it within one poll.
pub fn replay(
    config: &Config,
    tag: u64,
    input: &InputEnd,
    cancel: &AtomicBool,
) -> Result<(PartitionImage, u64, Replayed), KafkaError> {
    let (topic, p, until) = (&input.topic, input.partition, input.until);
    let mut replay = Replay::new(config, tag)
        .map_err(|e| KafkaError::Other(format!("replaying {topic}/{p}: {e}")))?;
    if until > 0 {
        let consumer = to_the_end::reader(config, "input replay reader", true)?;
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(KafkaError::client(format!("input {topic}/{p} watermarks")))?;
        if low > 0 {
            return Err(KafkaError::Other(format!(
                "input partition {topic}/{p} starts at offset {low}, not 0 (its retention deleted the rest), so it cannot be replayed to rebuild the state either: no complete point is left"
            )));
        }
        if high < until {
            return Err(KafkaError::Other(format!(
                "input partition {topic}/{p} ends at offset {high}, before the offset {until} the group committed (the topic was made anew), so it cannot be replayed to rebuild the state either: no complete point is left"
            )));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(0))
            .map_err(KafkaError::client("input replay assignment"))?;
        consumer
            .assign(&tpl)
            .map_err(KafkaError::client("input replay assign"))?;
        read_until(&consumer, &mut replay, input, cancel)?;
    }
    let replayed = replay.replayed;
    let (image, max_event_ns) = replay
        .finish()
        .map_err(|e| KafkaError::Other(format!("replaying {topic}/{p}: {e}")))?;
    Ok((image, max_event_ns, replayed))
}

/// Records `0..until` into `replay`, in offset order (read_committed: aborted records and
/// transaction markers are not among them, as the shard never saw them).
fn read_until(
    consumer: &BaseConsumer<Counted>,
    replay: &mut Replay,
    input: &InputEnd,
    cancel: &AtomicBool,
) -> Result<(), KafkaError> {
    let (topic, p, until) = (&input.topic, input.partition, input.until);
    let what = format!("replaying {topic}/{p} up to offset {until}");
    to_the_end::read(consumer, &what, Some(cancel), |polled| {
        // The end of what read_committed may read: `until` was read once, so it is below
        // (the records after the last one taken were markers or aborted).
        let Some(m) = polled else {
            return Ok(Next::Done);
        };
        if m.offset() >= until {
            return Ok(Next::Done);
        }
        // The shard's own conversion (`ingest::kafka`): ms, as Kafka keeps it.
        let timestamp_ns = m
            .timestamp()
            .to_millis()
            .map_or(0, |ms| (ms.max(0) as u64).saturating_mul(1_000_000));
        replay
            .record(m.payload().unwrap_or(&[]), timestamp_ns)
            .map_err(|e| KafkaError::Other(format!("{what}: {e}")))?;
        Ok(if m.offset() + 1 >= until {
            Next::Done
        } else {
            Next::More
        })
    })
}
