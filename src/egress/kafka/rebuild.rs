//! Rebuilding partitions' state from the changelog topic, in two halves: `read` (the
//! changelog to its end, read_committed, into each partition's newest record images; no state
//! touched, so it runs on a helper thread while the shard serves its other partitions) and
//! `Import` (those images put into the shard's state, a bounded slice at a time between
//! cycles). `restore` does both at once (at start, before the shard serves).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::changelog::{ChangelogSpec, WHOLE_MARKER};
use super::input_replay::{self, InputEnd};
use super::to_the_end::{self, Next};
use crate::config::Config;
use crate::ingest::kafka::standby::WarmCopy;
use crate::ingest::kafka::KafkaError;
use crate::state::KeyedState;
use crate::state::{image_bytes, Record, RECORD_BYTES};

/// What a restore from the changelog read and rebuilt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Changelog records read (tombstones included).
    pub read: u64,
    pub bytes: u64,
    /// Keys in the rebuilt state.
    pub keys: u64,
    /// The newest event time among them (the shard's event-time watermark restarts there).
    pub max_event_ns: u64,
    /// Time spent reading the changelog (the rest of a rebuild is putting the keys in).
    pub read_ns: u64,
    /// Keys a standby's warm copy already held (the changelog read only after it).
    pub warm_keys: u64,
    /// Keys the shard's own older checkpoint held (the changelog read only after the
    /// position recorded with it).
    pub local_keys: u64,
    /// Partitions rebuilt from their input topic instead (`Fallback`), and the input
    /// records read for them.
    pub input_replays: u64,
    pub replayed_records: u64,
}

/// Where a changelog partition's state comes from when the changelog cannot give it (records
/// deleted from it, or the topic made anew): its input partition, replayed from its first
/// record to the offset the group committed with the state (`input_replay`).
#[derive(Debug, Clone, Default)]
pub struct Fallback {
    /// By changelog partition. A partition without one is refused as before.
    pub inputs: HashMap<i32, InputEnd>,
    /// The changelog is known not to hold the state (the last committed transaction says
    /// so, or the topic was made anew at start): every partition is replayed.
    pub all: bool,
}

impl Fallback {
    /// For `spec`'s partitions whose input partition (`inputs`: by source tag) the group
    /// committed an offset for in `committed`; a partition with none committed ends at 0.
    pub fn new(
        spec: &ChangelogSpec,
        inputs: &HashMap<u64, (String, i32)>,
        committed: &[crate::state::checkpoint::PartitionOffset],
    ) -> Self {
        let inputs = spec
            .partitions
            .iter()
            .filter_map(|&(tag, c)| {
                let (topic, partition) = inputs.get(&tag)?.clone();
                let until = committed
                    .iter()
                    .find(|o| o.topic == topic && o.partition == partition)
                    .map_or(0, |o| o.next);
                Some((
                    c,
                    InputEnd {
                        topic,
                        partition,
                        until,
                    },
                ))
            })
            .collect();
        Self { inputs, all: false }
    }
}

/// Why the changelog cannot rebuild a partition read from `from` (None: it can).
fn unusable(fallback: &Fallback, p: i32, (low, high): (i64, i64), from: i64) -> Option<String> {
    let until = fallback.inputs.get(&p).map_or(0, |i| i.until);
    if fallback.all {
        Some("is not known to hold the state (the last committed transaction carried no complete changelog part: the changelog was turned on after it, or the topic is new)".into())
    } else if low > from {
        Some(format!("starts at offset {low}, not {from}: records were deleted from it (retention.ms or delete-records on a changelog topic) and no whole state was sent into it since, so it does not hold the whole state"))
    } else if high < from {
        Some(format!("ends at offset {high}, before the position {from} its copy was taken at: the topic was made anew"))
    } else if high == 0 && until > 0 {
        Some(format!("is empty although the group committed offset {until} of its input: the topic was made anew"))
    } else {
        None
    }
}

/// The changelog read: per input partition (source tag), its keys' newest images, end to end.
#[derive(Debug, Default)]
pub struct ChangelogRead {
    pub partitions: Vec<(u64, i32, Vec<u8>)>,
    /// `keys` stays 0 until imported.
    pub rebuilt: Rebuilt,
}

/// Read `spec`'s changelog partitions to their end with read_committed: the state as of the
/// last committed transaction. `progress` is told the bytes read so far, every 4 MiB or so;
/// `cancel` stops the read (Err) within one poll. A changelog partition whose records were
/// deleted (its start offset above 0: retention or delete-records, which a compacted topic
/// never does by itself) holds the whole state only if a whole send was marked after them
/// (`changelog::WHOLE_MARKER`): it is read from its start offset and used if a marker is
/// among what is left. Without one, or made anew, such a partition is rebuilt from its input
/// instead (`fallback`), or refused, saying so.
///
/// `warm`: standby copies (or the shard's own older checkpoint's keys) by changelog partition;
/// such a partition is read from the copy's offset on, over the copy's images (only the tail
/// is read).
pub fn read(
    config: &Config,
    spec: &ChangelogSpec,
    words: usize,
    mut warm: HashMap<i32, WarmCopy>,
    fallback: &Fallback,
    (progress, cancel): (&dyn Fn(u64), &AtomicBool),
) -> Result<ChangelogRead, KafkaError> {
    // Bigger fetches for this bulk read (fetch.wait.max.ms 100, fetch.min.bytes 1 MiB,
    // max.partition.fetch.bytes 16 MiB) were tried: the read took as long (1.53 s for 200k
    // records here, `sluice-bench changelog --keys 100000`), so the consumer's own settings stay.
    let consumer = to_the_end::reader(config, "changelog reader", true)?;
    let topic = &spec.topic;
    let mut tpl = TopicPartitionList::new();
    let mut open = 0;
    let mut replays = Vec::new();
    // Partitions that lost their first records: read from their start offset, and used only
    // if a whole-state marker is among what is left (`changelog::WHOLE_MARKER`).
    let mut need_marker: HashMap<i32, (u64, i64, String)> = HashMap::new();
    for &(tag, p) in &spec.partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(KafkaError::client(format!(
                "changelog {topic}/{p} watermarks"
            )))?;
        let mut from = warm.get(&p).map_or(0, |w| w.next_offset);
        if let Some(why) = unusable(fallback, p, (low, high), from) {
            if !fallback.all && low > from {
                need_marker.insert(p, (tag, low, why));
                from = low;
            } else {
                replays.push(replay_or_refuse(topic, fallback, (tag, p), why)?);
                // A base older than what the replay rebuilds whole is of no use.
                warm.remove(&p);
                continue;
            }
        }
        if high > from {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(KafkaError::client("changelog assignment"))?;
            open += 1;
        }
    }
    let mut rebuilt = Rebuilt::default();
    let started = Instant::now();
    // Per partition: key -> newest image (None: deleted); a warm copy's images to start.
    let mut newest: HashMap<i32, HashMap<u64, Option<Vec<u8>>>> = HashMap::new();
    // Keys of each base, and whether it was the shard's own: counted once it is used.
    let mut bases: HashMap<i32, (u64, bool)> = HashMap::new();
    for &(_, p) in &spec.partitions {
        if let Some(w) = warm.remove(&p) {
            bases.insert(p, (w.images.len() as u64, w.local));
            newest.insert(p, w.images.into_iter().map(|(k, v)| (k, Some(v))).collect());
        }
    }
    let mut marked: std::collections::HashSet<i32> = std::collections::HashSet::new();
    if open > 0 {
        consumer
            .assign(&tpl)
            .map_err(KafkaError::client("changelog assign"))?;
    }
    if open > 0 {
        to_the_end::read(
            &consumer,
            &format!("reading changelog {topic}"),
            Some(cancel),
            |polled| {
                let Some(m) = polled else {
                    open -= 1;
                    return Ok(if open == 0 { Next::Done } else { Next::More });
                };
                rebuilt.read += 1;
                if m.key() == Some(WHOLE_MARKER) {
                    marked.insert(m.partition());
                    return Ok(Next::More);
                }
                let Some(key) = m
                    .key()
                    .and_then(|k| <[u8; 8]>::try_from(k).ok())
                    .map(u64::from_be_bytes)
                else {
                    return Err(KafkaError::Other(format!(
                        "changelog {topic}/{} offset {}: a key that is not 8 bytes: not a sluice changelog",
                        m.partition(),
                        m.offset()
                    )));
                };
                let value = m.payload().map(<[u8]>::to_vec);
                let before = rebuilt.bytes;
                rebuilt.bytes += 8 + value.as_ref().map_or(0, |v| v.len() as u64);
                if before >> 22 != rebuilt.bytes >> 22 {
                    progress(rebuilt.bytes);
                }
                apply_record(newest.entry(m.partition()).or_default(), key, value);
                Ok(Next::More)
            },
        )?;
    }
    rebuilt.read_ns = started.elapsed().as_nanos() as u64;
    for (p, (tag, low, why)) in need_marker {
        if marked.contains(&p) {
            tracing::info!(changelog = %topic, partition = p, start = low, "the changelog partition lost its first records, but a whole state was sent into it after them: rebuilt from what is left");
        } else {
            newest.remove(&p);
            bases.remove(&p);
            replays.push(replay_or_refuse(topic, fallback, (tag, p), why)?);
        }
    }
    for (keys, local) in bases.into_values() {
        if local {
            rebuilt.local_keys += keys;
        } else {
            rebuilt.warm_keys += keys;
        }
    }
    let mut out = ChangelogRead {
        partitions: Vec::with_capacity(spec.partitions.len()),
        rebuilt,
    };
    for &(tag, p) in &spec.partitions {
        let Some(keys) = newest.remove(&p) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(keys.len() * image_bytes(words));
        for image in keys.into_values().flatten() {
            if let Some(rec) = image.get(..RECORD_BYTES).and_then(Record::from_bytes) {
                out.rebuilt.max_event_ns = out.rebuilt.max_event_ns.max(rec.last_event_ns);
            }
            bytes.extend_from_slice(&image);
        }
        out.partitions.push((tag, p, bytes));
    }
    for (tag, p, input, why) in replays {
        let (image, max_event_ns, replayed) = input_replay::replay(config, tag, input, cancel)
            .map_err(|e| {
                KafkaError::Other(format!(
                    "changelog partition {topic}/{p} {why}, and {e}; nothing is restored from it. {REMEDY}"
                ))
            })?;
        tracing::info!(input = %input.topic, partition = input.partition, records = replayed.records, skipped = replayed.skipped, events = replayed.events_applied, keys = image.records, "partition state rebuilt from its input topic");
        out.rebuilt.max_event_ns = out.rebuilt.max_event_ns.max(max_event_ns);
        out.rebuilt.input_replays += 1;
        out.rebuilt.replayed_records += replayed.records;
        out.partitions.push((tag, p, image.bytes));
    }
    Ok(out)
}

/// A changelog partition that cannot rebuild its state (`why`): replayed from its input
/// (logged), or refused when no input is known for it.
fn replay_or_refuse<'f>(
    topic: &str,
    fallback: &'f Fallback,
    (tag, p): (u64, i32),
    why: String,
) -> Result<(u64, i32, &'f InputEnd, String), KafkaError> {
    let Some(input) = fallback.inputs.get(&p) else {
        return Err(KafkaError::Other(format!(
            "changelog partition {topic}/{p} {why}; nothing is restored from it. {REMEDY}"
        )));
    };
    tracing::warn!(changelog = %topic, partition = p, input = %input.topic, input_partition = input.partition, until = input.until, "the changelog partition {why}: rebuilding its state from the input partition's records instead (replayed, no Scores sent)");
    Ok((tag, p, input, why))
}

/// What an operator can do when no complete point is left.
const REMEDY: &str = "Restore the shard's checkpoint directory, or start over with a new egress.kafka.transactional_id_prefix and changelog topic";

/// One changelog record over a partition's newest images: the key's whole image, or None (a
/// tombstone: deleted). Never a delta, so applying a record that a base already reflects
/// changes nothing: why a copy may be read over from any offset up to the one it was taken at
/// (`positions`: a low position is safe). `a_low_position_rebuilds_the_same_state` checks it.
pub fn apply_record(images: &mut HashMap<u64, Option<Vec<u8>>>, key: u64, value: Option<Vec<u8>>) {
    images.insert(key, value);
}

/// A partition's keys as the shard's own state holds them (`export_partition`), as a copy
/// to read the changelog over from `next_offset` (the position recorded with the checkpoint
/// they were restored from). None if an image is malformed.
pub fn local_copy(
    image: &crate::state::partition::PartitionImage,
    words: usize,
    next_offset: i64,
) -> Option<WarmCopy> {
    let size = image_bytes(words);
    let mut images = HashMap::with_capacity(image.records as usize);
    for img in image.bytes.chunks(size.max(1)) {
        let rec = img.get(..RECORD_BYTES).and_then(Record::from_bytes)?;
        if img.len() != size {
            return None;
        }
        images.insert(rec.key, img.to_vec());
    }
    Some(WarmCopy {
        next_offset,
        images,
        local: true,
        kept_until: None,
        partial: false,
    })
}

/// A read changelog being put into a shard's state, `keys_per_step` keys at a time (each step
/// all or nothing; a record of another partition or layout, or a torn image, is refused).
/// A step allocates (`import_partition` checks its slice whole before any key lands): it runs
/// between cycles, only while a partition moves in.
pub struct Import {
    read: ChangelogRead,
    topic: String,
    /// The partition being imported and how far into its images.
    at: usize,
    offset: usize,
}

impl Import {
    pub fn new(read: ChangelogRead, topic: &str) -> Self {
        Self {
            read,
            topic: topic.to_owned(),
            at: 0,
            offset: 0,
        }
    }

    /// Put up to `keys_per_step` more keys in (none while a snapshot runs: a partition's keys
    /// go in between snapshots). Ok(true) once every key is in.
    pub fn step(
        &mut self,
        state: &mut KeyedState,
        keys_per_step: usize,
    ) -> Result<bool, KafkaError> {
        if state.snapshot_running() {
            return Ok(self.done());
        }
        let image = image_bytes(state.plan().words());
        let mut budget = keys_per_step.max(1);
        while let Some((tag, p, bytes)) = self.read.partitions.get(self.at) {
            let rest = bytes.get(self.offset..).unwrap_or(&[]);
            if rest.is_empty() {
                self.at += 1;
                self.offset = 0;
                continue;
            }
            if budget == 0 {
                break;
            }
            let take = rest.len().min(budget.saturating_mul(image));
            let slice = rest.get(..take).unwrap_or(rest);
            let n = state
                .import_partition(*tag, slice)
                .map_err(|e| KafkaError::Other(format!("changelog {}/{p}: {e}", self.topic)))?;
            self.read.rebuilt.keys += n;
            self.offset += take;
            budget = budget.saturating_sub((take / image.max(1)).max(1));
        }
        Ok(self.done())
    }

    fn done(&self) -> bool {
        self.at >= self.read.partitions.len()
    }

    /// The partitions it puts in (source tags), each with its whole state: a changelog read
    /// over its base, or its input replayed.
    pub fn tags(&self) -> impl Iterator<Item = u64> + '_ {
        self.read.partitions.iter().map(|&(tag, _, _)| tag)
    }

    /// What was read and, so far, put in.
    pub fn rebuilt(&self) -> Rebuilt {
        self.read.rebuilt
    }
}

/// Rebuild `spec`'s partitions into `state` (empty) from the changelog at once: `read`, then
/// every key put in.
pub fn restore(
    config: &Config,
    spec: &ChangelogSpec,
    state: &mut KeyedState,
    fallback: &Fallback,
    progress: &dyn Fn(u64),
) -> Result<Rebuilt, KafkaError> {
    if state.snapshot_running() {
        return Err(KafkaError::Other(
            "rebuilding from the changelog while a snapshot runs".into(),
        ));
    }
    let words = state.plan().words();
    let read = read(
        config,
        spec,
        words,
        HashMap::new(),
        fallback,
        (progress, &AtomicBool::new(false)),
    )?;
    let mut import = Import::new(read, &spec.topic);
    // No snapshot can start meanwhile (nothing else runs on this state): each step imports.
    while !import.step(state, usize::MAX)? {}
    Ok(import.rebuilt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Which changelog partitions go to the input instead: (start, end) offsets of the
    /// changelog partition, the base's offset, and the group's offset of the input.
    #[test]
    fn a_changelog_partition_is_replaced_by_its_input_only_when_it_cannot_hold_the_state() {
        let fallback = |until: i64, all: bool| Fallback {
            inputs: HashMap::from([(
                0,
                InputEnd {
                    topic: "events".into(),
                    partition: 0,
                    until,
                },
            )]),
            all,
        };
        let usable =
            |f: &Fallback, ends: (i64, i64), from: i64| unusable(f, 0, ends, from).is_none();
        let f = fallback(500, false);
        // Whole from 0, or from a base's offset the records after it start at or before.
        assert!(usable(&f, (0, 900), 0));
        assert!(usable(&f, (300, 900), 400));
        assert!(usable(&f, (400, 900), 400));
        // Records deleted below the base.
        assert!(!usable(&f, (1, 900), 0));
        assert!(!usable(&f, (401, 900), 400));
        // Made anew: ending before the base's offset, or empty while the input moved on.
        assert!(!usable(&f, (0, 300), 400));
        assert!(!usable(&f, (0, 0), 0));
        // Empty and nothing committed: an empty state is the state.
        assert!(usable(&fallback(0, false), (0, 0), 0));
        // Not vouched for by the last committed transaction: never read.
        assert!(!usable(&fallback(500, true), (0, 900), 0));
    }

    /// Records `from..` of a changelog applied over `base` (images only: None is gone).
    fn over(
        base: &HashMap<u64, Vec<u8>>,
        records: &[(u64, Option<Vec<u8>>)],
    ) -> HashMap<u64, Vec<u8>> {
        let mut images: HashMap<u64, Option<Vec<u8>>> =
            base.iter().map(|(k, v)| (*k, Some(v.clone()))).collect();
        for (key, value) in records {
            apply_record(&mut images, *key, value.clone());
        }
        images
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect()
    }

    proptest! {
        /// The state at offset `at` (everything before it applied), read over from any
        /// `from <= at`, ends as the whole changelog read from the start: the base the
        /// restored checkpoint holds plus the tail from a low recorded position.
        #[test]
        fn a_low_position_rebuilds_the_same_state(
            records in proptest::collection::vec((0u64..12, proptest::option::of(0u8..4)), 0..80),
            at in 0usize..80,
            back in 0usize..80,
        ) {
            let records: Vec<(u64, Option<Vec<u8>>)> = records
                .into_iter()
                .map(|(k, v)| (k, v.map(|b| vec![b; 3])))
                .collect();
            let at = at.min(records.len());
            let from = at.saturating_sub(back);
            let whole = over(&HashMap::new(), &records);
            let base = over(&HashMap::new(), &records[..at]);
            prop_assert_eq!(over(&base, &records[from..]), whole);
        }
    }
}
