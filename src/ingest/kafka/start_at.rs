//! Where a partition starts by `ingest.kafka.start` when nothing sluice keeps holds an offset
//! for it: Kafka's logical offsets for `earliest` and `latest`; for a point in time, the
//! offset of each partition's first record at or after it, asked of the brokers
//! (ListOffsets by timestamp, librdkafka's `offsets_for_times`), or its end when none is.

use std::time::{Duration, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaError;
use crate::config::KafkaStart;

/// How long the brokers have to answer (a start, or a take-up in a rebalance, waits on it).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The offset each of `parts` (topic, partition) starts at, in order, for partitions taken up
/// at `now`. Blocks for one broker round trip when `start` is a point in time: called at
/// start, or when a rebalance hands a partition over that nothing holds an offset for (its
/// first take-up in the group), never per record.
pub fn first_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    start: KafkaStart,
    parts: &[(&str, i32)],
    now: SystemTime,
) -> Result<Vec<Offset>, KafkaError> {
    let at_ms = match (start, start.point_ms(now)) {
        (KafkaStart::Latest, _) => return Ok(vec![Offset::End; parts.len()]),
        (_, None) => return Ok(vec![Offset::Beginning; parts.len()]),
        (_, Some(ms)) => ms,
    };
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let mut ask = TopicPartitionList::with_capacity(parts.len());
    for &(topic, partition) in parts {
        ask.add_partition_offset(topic, partition, Offset::Offset(at_ms))
            .map_err(KafkaError::client("offsets by time"))?;
    }
    let answer = consumer
        .offsets_for_times(ask, ASK_TIMEOUT)
        .map_err(KafkaError::client(format!(
            "the offsets of ingest.kafka.start = {start}"
        )))?;
    parts
        .iter()
        .map(|&(topic, partition)| {
            let e = answer.find_partition(topic, partition).ok_or_else(|| {
                KafkaError::Other(format!(
                    "the brokers' offsets for ingest.kafka.start = {start} left out {topic} [{partition}]"
                ))
            })?;
            e.error().map_err(KafkaError::client(format!(
                "the offset of ingest.kafka.start = {start} in {topic} [{partition}]"
            )))?;
            Ok(match e.offset() {
                Offset::Offset(n) if n >= 0 => Offset::Offset(n),
                // No record at or after the time: from the end, as the brokers say.
                _ => Offset::End,
            })
        })
        .collect()
}
