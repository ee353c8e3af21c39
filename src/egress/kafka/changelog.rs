//! The changelog topic (`egress.kafka.changelog`): each exactly_once transaction also carries
//! the state changes of the checkpoint it completes, so the topic holds, per input partition,
//! the state as of the last committed transaction — what a shard restores from when its
//! checkpoint is not on its disk (a wiped `state.dir`, a new host), as a Kafka Streams task
//! restores from its changelog.
//!
//! Layout: one changelog partition per input partition, in topic then partition order (the
//! partition table's order); key = the entity key, 8 bytes big-endian; value = the key's
//! record image (`state::record`), or a tombstone when the key was deleted. Compacted: the
//! newest value per key is all a restore needs.
//!
//! A checkpoint's change set is what a transaction carries (the keys changed since the
//! previous checkpoint, whose transaction carried the ones before); a checkpoint without one
//! (the first of a run, or one whose change lists overflowed) is sent whole.
//!
//! A whole send by a shard whose partitions are dealt to it for good (static membership, so
//! its checkpoint holds every key of them) is preceded, in each of its changelog partitions,
//! by a marker record (`WHOLE_MARKER`): every live key of the partition follows it in the same
//! transaction. A changelog whose first records were deleted (retention or delete-records)
//! therefore still holds the whole state if its newest marker is left (`rebuild::read`), so
//! the first whole send after an input replay heals it. Compaction keeps the newest marker
//! (one key per partition). A group member's shard does not mark: its partitions come and go
//! between checkpoints, and a whole send then need not hold every key of each. It marks a
//! partition it imported whole (rebuilt from the changelog or replayed from its input)
//! between two flips and still owns at the second: the imported keys are changes, so that
//! checkpoint's transaction carries every key of the partition.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError as RdError;
use rdkafka::producer::BaseRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{ScoreProducer, CHANGELOG};
use crate::config::Config;
use crate::ingest::kafka::client_errors::Counted;
use crate::ingest::kafka::{consumer_config, KafkaError};
use crate::state::checkpoint::{self, Change, CheckpointError};
use crate::state::{Record, RECORD_BYTES};

/// One shard's changelog: its topic, and the changelog partition of each input partition it
/// owns (by the partition's source tag, `PartitionId::source_tag`).
#[derive(Debug, Clone)]
pub struct ChangelogSpec {
    pub topic: String,
    pub partitions: Vec<(u64, i32)>,
    /// Each whole send holds every key of `partitions`: it is marked (`WHOLE_MARKER`).
    pub marks_whole: bool,
}

/// The marker record's key: not 8 bytes, so it is never an entity key. Its value names the
/// checkpoint whose whole send follows (for a reader of the topic; sluice reads only its key).
pub const WHOLE_MARKER: &[u8] = b"sluice:whole-state-follows";

/// What one transaction's changelog part held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Records with an image.
    pub records: u64,
    pub tombstones: u64,
    /// Key and value bytes handed to the producer.
    pub bytes: u64,
    /// Whole-state markers, one per changelog partition of a marked whole send.
    pub markers: u64,
    /// The checkpoint was sent whole (no change set leading on from the last one sent).
    pub whole: bool,
    /// With it, the changelog holds the whole state as of this checkpoint: it was sent whole,
    /// or its change set leads on from a checkpoint the changelog held whole.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
enum ProduceError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

impl ChangelogSpec {
    pub fn partition_of(&self, source: u64) -> Option<i32> {
        self.partitions
            .iter()
            .find(|(tag, _)| *tag == source)
            .map(|(_, p)| *p)
    }

    /// Produce the changes of committed checkpoint `seq` (under `root`, records of `words`
    /// window words) into the open transaction; `holds`: the checkpoint whose state the
    /// changelog holds (committed in an earlier transaction of this run); `whole`: source tags
    /// of partitions whose every key is among the changes (imported whole since the previous
    /// flip), marked first. On the committer thread, while the shard hands no Score over: a
    /// full producer queue is waited out here (polling serves the delivery reports), up to
    /// `deadline`.
    pub fn produce(
        &self,
        producer: &ScoreProducer,
        (root, seq, words): (&std::path::Path, u64, usize),
        (holds, whole): (Option<u64>, &[u64]),
        deadline: Instant,
    ) -> Result<Sent, KafkaError> {
        let mut sent = Sent::default();
        let marker = format!("checkpoint={seq}");
        let mut marked: Vec<i32> = Vec::new();
        for p in whole.iter().filter_map(|&tag| self.partition_of(tag)) {
            if !marked.contains(&p) {
                self.send(producer, p, WHOLE_MARKER, Some(marker.as_bytes()), deadline)?;
                marked.push(p);
            }
        }
        sent.markers = marked.len() as u64;
        let path = checkpoint::path_of(root, seq);
        // Looked up per record: a group member lists every input partition.
        let partition_of: HashMap<u64, i32> = self.partitions.iter().copied().collect();
        let counts =
            checkpoint::read_changes(&path, words, holds, |change| -> Result<(), ProduceError> {
                match change {
                    Change::WholeFollows if self.marks_whole => {
                        for &(_, p) in &self.partitions {
                            if !marked.contains(&p) {
                                self.send(
                                    producer,
                                    p,
                                    WHOLE_MARKER,
                                    Some(marker.as_bytes()),
                                    deadline,
                                )?;
                                sent.markers += 1;
                            }
                        }
                    }
                    Change::WholeFollows => {}
                    Change::Put(image) => {
                        let Some(rec) = image.get(..RECORD_BYTES).and_then(Record::from_bytes)
                        else {
                            return Err(CheckpointError::Corrupt {
                                path: path.clone(),
                                reason: "a record image shorter than its head".into(),
                            }
                            .into());
                        };
                        // A key of no Kafka partition (UDP's): not changelogged.
                        let Some(&p) = partition_of.get(&rec.source) else {
                            return Ok(());
                        };
                        let key = rec.key.to_be_bytes();
                        self.send(producer, p, &key, Some(image), deadline)?;
                        sent.records += 1;
                        sent.bytes += (key.len() + image.len()) as u64;
                    }
                    // Its partition moved to another owner: the state there is the new owner's.
                    Change::Delete {
                        source: Some(crate::state::partition::MOVED),
                        ..
                    } => {}
                    Change::Delete { key, source } => {
                        let key = key.to_be_bytes();
                        // Without its source (a checkpoint older than format 4): every partition
                        // of the shard; compaction drops the tombstones of keys a partition never
                        // held.
                        let targets: Vec<i32> = match source {
                            Some(s) => partition_of.get(&s).copied().into_iter().collect(),
                            None => self.partitions.iter().map(|(_, p)| *p).collect(),
                        };
                        for p in targets {
                            self.send(producer, p, &key, None, deadline)?;
                            sent.tombstones += 1;
                            sent.bytes += key.len() as u64;
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| match e {
                ProduceError::Kafka(k) => k,
                ProduceError::Checkpoint(c) => {
                    KafkaError::Other(format!("reading checkpoint {seq}'s changes: {c}"))
                }
            })?;
        sent.whole = counts.whole;
        Ok(sent)
    }

    fn send(
        &self,
        producer: &ScoreProducer,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&self.topic, CHANGELOG)
            .partition(partition)
            .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    // A big change set outruns the producer's queue: let it drain.
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => return Err(KafkaError::client("changelog record")(e)),
            }
        }
    }
}

/// Create the changelog topic unless it exists (compacted, `partitions` = every input
/// partition), and check an existing one has that many partitions. Returns its name and
/// whether it was just created (then it holds nothing to restore from).
pub fn ensure_topic(config: &Config, partitions: i32) -> Result<(String, bool), KafkaError> {
    let topic = config
        .egress
        .kafka
        .changelog_topic(&config.ingest.kafka.group);
    let consumer: BaseConsumer<Counted> = consumer_config(config)
        .create_with_context(Counted("changelog admin"))
        .map_err(KafkaError::client("changelog admin"))?;
    let (found, created) = super::topic::ensure_compacted(
        config,
        &consumer,
        &topic,
        partitions,
        "the changelog topic",
    )?;
    if found != partitions {
        return Err(KafkaError::Other(format!(
            "changelog topic {topic} has {found} partitions, but the input topics have {partitions} together: one changelog partition per input partition is needed ({})",
            if found < partitions {
                "partitions added to an input topic? A key's state lives with its partition and sluice does not move it to another: start with an empty state.dir, a new egress.kafka.changelog_topic and a new egress.kafka.transactional_id_prefix, see README, Kafka, partitions added to an input topic. Or a changelog of other input topics: set egress.kafka.changelog_topic"
            } else {
                "a changelog of other input topics? set egress.kafka.changelog_topic"
            }
        )));
    }
    Ok((topic, created))
}

/// How old the changelog positions beside a checkpoint may be to be used: half the topic's
/// `delete.retention.ms` as the brokers describe it (see `positions`), or
/// `positions::MAX_AGE` when they do not say (logged).
pub fn positions_max_age(config: &Config, topic: &str) -> std::time::Duration {
    let described = super::topic::config_u64(config, topic, "delete.retention.ms");
    let retention = match &described {
        Ok(Some(ms)) => {
            tracing::info!(topic, delete_retention_ms = ms, "changelog positions are used up to half the changelog topic's delete.retention.ms old");
            Some(*ms)
        }
        Ok(None) => {
            tracing::info!(topic, "the brokers do not describe the changelog topic's delete.retention.ms: positions older than {:?} are not used", super::positions::MAX_AGE);
            None
        }
        Err(e) => {
            tracing::info!(
                topic,
                "{e}: changelog positions older than {:?} are not used",
                super::positions::MAX_AGE
            );
            None
        }
    };
    super::positions::max_age(retention)
}

/// The input partitions' offsets the group committed (in the transactions that carried the
/// changelog): where a shard rebuilt from the changelog resumes.
pub fn committed_offsets(
    config: &Config,
    owned: &[(String, i32)],
) -> Result<Vec<checkpoint::PartitionOffset>, KafkaError> {
    let consumer: BaseConsumer<Counted> = consumer_config(config)
        .create_with_context(Counted("offsets reader"))
        .map_err(KafkaError::client("offsets reader"))?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in owned {
        tpl.add_partition(t, *p);
    }
    let committed = crate::ingest::kafka::group_committed_offsets(
        &consumer,
        &config.ingest.kafka.group,
        tpl,
        Duration::from_secs(10),
    )?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) if n >= 0 => Some(checkpoint::PartitionOffset {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                next: n,
            }),
            _ => None,
        })
        .collect())
}

/// Where a shard's checkpoints lie, for the committer to read the change sets from.
#[derive(Debug, Clone)]
pub struct ChangelogSource {
    pub spec: ChangelogSpec,
    pub root: PathBuf,
    pub words: usize,
}
