//! exactly_once progress records (Materialize's design): each transaction a shard commits
//! carries one record, keyed by its transactional.id, naming the checkpoint the transaction
//! completes. At start the newest committed record per shard names the checkpoint to restore:
//! a checkpoint written after it belongs to a transaction that never committed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::ingest::kafka::{consumer_config, KafkaError};

const PREFIX: &str = "sluice-progress-v1 checkpoint=";

pub fn encode(seq: u64) -> Vec<u8> {
    format!("{PREFIX}{seq}").into_bytes()
}

pub fn decode(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix(PREFIX)?
        .parse()
        .ok()
}

/// Records read back from the end of each progress partition first; only if a shard's record
/// is not among them is the whole partition read.
const TAIL_RECORDS: i64 = 65_536;

/// Create the progress topic (1 partition, compacted: only the newest record per shard
/// matters) unless it exists.
fn ensure_topic(config: &Config, consumer: &BaseConsumer) -> Result<i32, KafkaError> {
    let topic = &config.egress.kafka.progress_topic;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(KafkaError::client("progress topic metadata"))?;
    if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
        if t.error().is_none() && !t.partitions().is_empty() {
            return Ok(t.partitions().len() as i32);
        }
    }
    let mut ac = rdkafka::ClientConfig::new();
    ac.set("bootstrap.servers", config.ingest.kafka.brokers.trim());
    let admin: AdminClient<DefaultClientContext> =
        ac.create().map_err(KafkaError::client("admin client"))?;
    // -1: the cluster's default replication (KIP-464); a broker that does not know it gets 1.
    for replication in [-1, 1] {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact");
        let results = futures_executor::block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .map_err(KafkaError::client("creating the progress topic"))?;
        match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic = %topic, "created the exactly_once progress topic");
                return Ok(1);
            }
            Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(1),
            Some(Err((_, rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor)))
                if replication == -1 => {}
            Some(Err((t, code))) => {
                return Err(KafkaError::Other(format!(
                    "creating progress topic {t}: {code}"
                )))
            }
            None => break,
        }
    }
    Ok(1)
}

/// The newest committed progress record of each transactional.id in `ids`: id -> checkpoint.
/// Call after the shards' producers have initialised their transactions, so that any
/// transaction a crashed process left open is aborted and read_committed reads past it.
pub fn last_committed(config: &Config, ids: &[String]) -> Result<HashMap<String, u64>, KafkaError> {
    let mut cc = consumer_config(config);
    cc.set("enable.partition.eof", "true");
    let consumer: BaseConsumer = cc.create().map_err(KafkaError::client("progress reader"))?;
    let partitions = ensure_topic(config, &consumer)?;
    let topic = config.egress.kafka.progress_topic.clone();
    let mut found = HashMap::new();
    let mut tail = true;
    loop {
        let mut tpl = TopicPartitionList::new();
        let mut open = 0;
        for p in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .map_err(KafkaError::client("progress topic watermarks"))?;
            if high <= low {
                continue;
            }
            let from = if tail {
                (high - TAIL_RECORDS).max(low)
            } else {
                low
            };
            tpl.add_partition_offset(&topic, p, Offset::Offset(from))
                .map_err(KafkaError::client("progress assignment"))?;
            open += 1;
        }
        if open == 0 {
            return Ok(found);
        }
        consumer
            .assign(&tpl)
            .map_err(KafkaError::client("progress assign"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while open > 0 {
            if Instant::now() > deadline {
                return Err(KafkaError::Other(format!(
                    "reading progress topic {topic} did not reach its end within 60 s (a transaction of another producer still open?)"
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(RdError::PartitionEOF(_))) => open -= 1,
                Some(Err(e)) => tracing::warn!("reading progress topic: {e}"),
                Some(Ok(m)) => {
                    let id = m.key().and_then(|k| std::str::from_utf8(k).ok());
                    if let (Some(id), Some(seq)) = (id, m.payload().and_then(decode)) {
                        if ids.iter().any(|i| i == id) {
                            found.insert(id.to_owned(), seq);
                        }
                    }
                }
            }
        }
        if !tail || ids.iter().all(|i| found.contains_key(i)) {
            return Ok(found);
        }
        // Some shard's newest record is older than the tail: read everything once.
        tail = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_values_round_trip_and_refuse_others() {
        assert_eq!(decode(&encode(42)), Some(42));
        assert_eq!(decode(b"checkpoint=42"), None);
        assert_eq!(decode(b"sluice-progress-v1 checkpoint=x"), None);
        assert_eq!(decode(&[0xff, 0xfe]), None);
    }
}
