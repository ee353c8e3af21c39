//! exactly_once progress records (Materialize's design): each transaction a shard commits
//! carries one record, keyed by its transactional.id, naming the checkpoint the transaction
//! completes. At start the newest committed record per shard names the checkpoint to restore:
//! a checkpoint written after it belongs to a transaction that never committed.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::to_the_end::{self, Next};
use crate::config::Config;
use crate::ingest::kafka::KafkaError;

const PREFIX: &str = "sluice-progress-v1 checkpoint=";
const CHANGELOG: &str = " changelog=complete";

/// What a committed transaction completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The checkpoint it completes.
    pub seq: u64,
    /// It carried its checkpoint's changelog part, and so did every transaction since the
    /// shard's last full checkpoint: the changelog holds the state as of `seq` (a restart
    /// begins with a full checkpoint, so the first transaction of a run with the changelog
    /// on completes it).
    pub changelog: bool,
}

pub fn encode(p: Progress) -> Vec<u8> {
    let tail = if p.changelog { CHANGELOG } else { "" };
    format!("{PREFIX}{}{tail}", p.seq).into_bytes()
}

/// A progress record's value (records written before the changelog existed read as without).
pub fn decode(value: &[u8]) -> Option<Progress> {
    let rest = std::str::from_utf8(value).ok()?.strip_prefix(PREFIX)?;
    let (seq, changelog) = match rest.strip_suffix(CHANGELOG) {
        Some(seq) => (seq, true),
        None => (rest, false),
    };
    Some(Progress {
        seq: seq.parse().ok()?,
        changelog,
    })
}

/// Records read back from the end of each progress partition first; only if a shard's record
/// is not among them is the whole partition read.
const TAIL_RECORDS: i64 = 65_536;

/// The newest committed progress record of each transactional.id in `ids`.
/// Call after the shards' producers have initialised their transactions, so that any
/// transaction a crashed process left open is aborted and read_committed reads past it.
pub fn last_committed(
    config: &Config,
    ids: &[String],
) -> Result<HashMap<String, Progress>, KafkaError> {
    let consumer = to_the_end::reader(config, "progress reader", false)?;
    let topic = &config.egress.kafka.progress_topic;
    // One partition, compacted: only the newest record per shard matters.
    let (partitions, _) = super::topic::ensure_compacted(
        config,
        &consumer,
        topic,
        1,
        "the exactly_once progress topic",
    )?;
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
        let what = format!("reading progress topic {topic}");
        to_the_end::read(&consumer, &what, None, |polled| {
            let Some(m) = polled else {
                open -= 1;
                return Ok(if open == 0 { Next::Done } else { Next::More });
            };
            let id = m.key().and_then(|k| std::str::from_utf8(k).ok());
            if let (Some(id), Some(p)) = (id, m.payload().and_then(decode)) {
                if ids.iter().any(|i| i == id) {
                    found.insert(id.to_owned(), p);
                }
            }
            Ok(Next::More)
        })?;
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
        for changelog in [false, true] {
            let p = Progress { seq: 42, changelog };
            assert_eq!(decode(&encode(p)), Some(p));
        }
        // Written before the changelog existed.
        assert_eq!(
            decode(b"sluice-progress-v1 checkpoint=7"),
            Some(Progress {
                seq: 7,
                changelog: false
            })
        );
        assert_eq!(
            decode(b"sluice-progress-v1 checkpoint=7 changelog=maybe"),
            None
        );
        assert_eq!(decode(b"checkpoint=42"), None);
        assert_eq!(decode(b"sluice-progress-v1 checkpoint=x"), None);
        assert_eq!(decode(&[0xff, 0xfe]), None);
    }
}
