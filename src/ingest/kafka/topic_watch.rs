//! Input topics that changed under a running sluice. The shards consume the partitions the
//! input topics had when they were dealt (or, as group members, when the group formed), and a
//! key's state lives with its partition. Partitions added to an input topic later
//! (`kafka-topics --alter --partitions`) are consumed by no shard, and from then on the
//! producers' partitioner sends many keys to them: their events wait in Kafka, unscored, with
//! nothing in sluice's lag figures (which cover the partitions it consumes). Nothing in
//! librdkafka tells an assigned consumer of new partitions, so a helper thread asks the
//! brokers every `ingest.kafka.partition_check_ms` and says so: an error log naming the
//! topic, both counts and what to do, and gauges an alert can watch
//! (`sluice_kafka_topic_partitions_unconsumed`, `sluice_kafka_topic_records_unconsumed`).
//!
//! It does not take the new partitions up: sluice cannot carry a key's state from the
//! partition it lived with to the one its events now arrive on (see README, "Kafka", on
//! partitions added to an input topic).
//!
//! The output topics (Scores, alerts, dead letters; under exactly_once the progress and
//! changelog topics) are watched too: one deleted under sluice
//! left nothing in the log until the producer gave up and sluice stopped (measured: 1-22 s
//! later, naming "records of checkpoint 3's transaction not acknowledged within 10s" or an
//! "out of order sequence number" — the brokers had made the topic again with 1 partition of 4
//! at the producer's next request). The watch logs the deletion or the lost partitions when it
//! sees them, and a stop for a Kafka failure asks once more and names them in its message.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::client::{consumer_config, Discovery, TopicState};
use super::watermarks::{dealt, PartitionGauges};
use crate::config::Config;

/// One input topic as the watch last saw it. -1: not known yet.
#[derive(Debug)]
pub struct WatchedTopic {
    pub topic: String,
    /// Partitions this instance was given to consume (0..consumed), from the dealt gauges.
    pub consumed: AtomicI64,
    /// Partitions the brokers list now (0 when the topic is gone).
    pub listed: AtomicI64,
    /// Records in the listed partitions past `consumed` (their high minus low watermark).
    pub records_unconsumed: AtomicI64,
}

/// One output topic: its partitions when the watch first saw it. -1: not known yet.
#[derive(Debug)]
pub struct WatchedOutput {
    pub topic: String,
    /// The config key naming it.
    pub key: &'static str,
    pub first: AtomicI64,
}

impl WatchedOutput {
    /// The brokers asked now: what became of the topic since it was first seen (its first
    /// answer with partitions is kept as that). None: no answer, or nothing learnt.
    fn change(&self, consumer: &BaseConsumer<Discovery>) -> Option<OutputChange> {
        let md = consumer
            .fetch_metadata(Some(&self.topic), ASK_TIMEOUT)
            .ok()?;
        let state = TopicState::of(&md, &self.topic);
        if let TopicState::Partitions(n) = state {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            let _ = self
                .first
                .compare_exchange(-1, n, Ordering::Relaxed, Ordering::Relaxed);
        }
        OutputChange::of(self.first.load(Ordering::Relaxed), &state)
    }
}

/// Every input topic's figures, shared with the exporter and the shutdown report; the output
/// topics' first partition counts.
#[derive(Debug)]
pub struct TopicWatch {
    pub topics: Vec<WatchedTopic>,
    pub outputs: Vec<WatchedOutput>,
    /// For the question asked at a failing stop.
    config: Config,
}

/// A topic's partitions consumed by no shard, with the records waiting in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconsumed {
    pub topic: String,
    pub partitions: i64,
    /// None until the brokers told.
    pub records: Option<i64>,
}

impl TopicWatch {
    pub fn new(config: &Config) -> Arc<Self> {
        let topics = config
            .ingest
            .kafka
            .topics
            .iter()
            .map(|t| WatchedTopic {
                topic: t.clone(),
                consumed: AtomicI64::new(-1),
                listed: AtomicI64::new(-1),
                records_unconsumed: AtomicI64::new(-1),
            })
            .collect();
        let e = &config.egress.kafka;
        let mut named: Vec<(String, &'static str)> = crate::egress::kafka::output_topics(config)
            .into_iter()
            .map(|(topic, key)| (topic.to_owned(), key))
            .collect();
        // sluice's own topics: their records are in every exactly_once transaction too.
        if config.ingest.kafka.enabled() && e.delivery == crate::config::Delivery::ExactlyOnce {
            named.push((e.progress_topic.clone(), "egress.kafka.progress_topic"));
            if e.changelog {
                named.push((
                    e.changelog_topic(&config.ingest.kafka.group),
                    "egress.kafka.changelog_topic",
                ));
            }
        }
        let outputs = named
            .into_iter()
            .map(|(topic, key)| WatchedOutput {
                topic,
                key,
                first: AtomicI64::new(-1),
            })
            .collect();
        Arc::new(Self {
            topics,
            outputs,
            config: config.clone(),
        })
    }

    /// Asked when sluice stops for a Kafka failure: what became of the output topics since
    /// they were first seen (deleted, or made again with fewer partitions), one sentence
    /// each; empty when nothing did or the brokers do not answer within `ASK_TIMEOUT`.
    pub fn outputs_changed_now(&self) -> Vec<String> {
        if self.outputs.is_empty() {
            return Vec::new();
        }
        let Ok(consumer) = consumer_config(&self.config)
            .create_with_context::<_, BaseConsumer<Discovery>>(Discovery::default())
        else {
            return Vec::new();
        };
        self.outputs
            .iter()
            .filter_map(|o| o.change(&consumer)?.said(&o.topic, o.key))
            .collect()
    }

    /// The topics with partitions no shard consumes (added since they were dealt).
    pub fn unconsumed(&self) -> Vec<Unconsumed> {
        self.topics
            .iter()
            .filter_map(|t| {
                let consumed = t.consumed.load(Ordering::Relaxed);
                let listed = t.listed.load(Ordering::Relaxed);
                (consumed >= 0 && listed > consumed).then(|| Unconsumed {
                    topic: t.topic.clone(),
                    partitions: listed - consumed,
                    records: Some(t.records_unconsumed.load(Ordering::Relaxed)).filter(|&r| r >= 0),
                })
            })
            .collect()
    }
}

/// What the brokers' answer means for a topic sluice consumes `consumed` partitions of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Same,
    /// Partitions consumed..listed exist and no shard takes them.
    Grew {
        consumed: i64,
        listed: i64,
    },
    /// Fewer partitions than sluice consumes: the topic was deleted and made again.
    Shrank {
        consumed: i64,
        listed: i64,
    },
    Gone,
}

impl Change {
    pub fn of(consumed: i64, state: &TopicState) -> Option<Self> {
        match *state {
            TopicState::Partitions(n) => {
                let listed = i64::try_from(n).unwrap_or(i64::MAX);
                Some(match listed.cmp(&consumed) {
                    std::cmp::Ordering::Equal => Self::Same,
                    std::cmp::Ordering::Greater => Self::Grew { consumed, listed },
                    std::cmp::Ordering::Less => Self::Shrank { consumed, listed },
                })
            }
            TopicState::Missing => Some(Self::Gone),
            // An ACL's refusal is counted and logged by the client's context; nothing learnt.
            TopicState::NotAuthorized => None,
        }
    }

    /// What an operator reads, once per change (None: nothing to say).
    pub fn said(self, topic: &str) -> Option<String> {
        match self {
            Self::Same => None,
            Self::Grew { consumed, listed } => Some(format!(
                "input topic {topic} has {listed} partitions now, {consumed} when sluice was dealt them: partitions {consumed}..{} are consumed by no shard — their records wait in Kafka, unscored (sluice_kafka_topic_records_unconsumed) — and the producers' partitioner now sends many keys to them, away from the partition their state lives with. sluice does not take them up while it runs. A topic grown to a multiple of the partitions its state was first dealt over (2 -> 4, 6, 8), with dealt partitions, state.dir and no changelog, is taken up by a restart, each added partition on the shard of its family (partition mod that count), its keys' state carried on. Otherwise: restart with an empty state.dir (under exactly_once also a new egress.kafka.transactional_id_prefix, and with egress.kafka.changelog a new egress.kafka.changelog_topic) to take every partition up from ingest.kafka.start — earliest rebuilds the state from what the topic still holds and sends those Scores again, latest starts the state afresh; or keep serving the old partitions only. Create input topics with the partitions they will need (README, \"Kafka\")",
                listed - 1
            )),
            Self::Shrank { consumed, listed } => Some(format!(
                "input topic {topic} has {listed} partitions now, {consumed} when sluice was dealt them: it was deleted and made again; the positions sluice holds belong to the old topic"
            )),
            Self::Gone => Some(format!(
                "input topic {topic} no longer exists on the brokers (deleted?): its partitions' records stop. Made again (as many partitions), each partition is read from its first record once sluice's fetch finds its position past the new topic's end (a reset, logged per partition), each key's state going on; sluice knows the topic by its name only, so a new topic that already holds records up to that position when the fetch comes is read from there on, the records below unseen: make it again before producing to it"
            )),
        }
    }
}

/// What the brokers' answer means for an output topic first seen with `first` partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputChange {
    /// There, with at least as many partitions (more are used as librdkafka learns of them).
    Same,
    Gone,
    Fewer {
        first: i64,
        listed: i64,
    },
}

impl OutputChange {
    /// None: nothing learnt (an ACL's refusal is the client's context's to report).
    pub fn of(first: i64, state: &TopicState) -> Option<Self> {
        match *state {
            TopicState::Partitions(n) => {
                let listed = i64::try_from(n).unwrap_or(i64::MAX);
                Some(if first >= 0 && listed < first {
                    Self::Fewer { first, listed }
                } else {
                    Self::Same
                })
            }
            TopicState::Missing => Some(Self::Gone),
            TopicState::NotAuthorized => None,
        }
    }

    /// What an operator reads, once per change (None: nothing to say).
    pub fn said(self, topic: &str, key: &str) -> Option<String> {
        const THEN: &str = "records to it cannot be delivered: sluice stops when its producer gives up on one (under exactly_once at the next checkpoint's commit), and a restart sends what was not committed again";
        let progress = if key == "egress.kafka.progress_topic" {
            ". Its records, which name the checkpoints the committed Scores match, went with it: the restart will be refused (the shard directories' exactly-once-committed marks) until it has them back or state.dir is moved away"
        } else {
            ""
        };
        match self {
            Self::Same => None,
            Self::Gone => Some(format!(
                "output topic {topic} ({key}) no longer exists on the brokers (deleted?): {THEN}; with the brokers' auto.create.topics.enable it comes back with their default partitions, otherwise create it again{progress}"
            )),
            Self::Fewer { first, listed } => Some(format!(
                "output topic {topic} ({key}) has {listed} partition(s) now, {first} when sluice first looked: it was deleted and made again (the brokers' auto.create.topics.enable makes it with their default partitions at a producer's request); {THEN}, to the partitions it has now{progress}"
            )),
        }
    }
}

/// The watch thread's belongings.
pub struct Watcher {
    pub config: Config,
    pub watch: Arc<TopicWatch>,
    pub gauges: PartitionGauges,
}

/// A stop is noticed within this (the thread sleeps in these steps).
const STEP: Duration = Duration::from_millis(100);
/// How long one metadata or watermark question may wait for the brokers.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl Watcher {
    /// Ask every `ingest.kafka.partition_check_ms` until `stop()`.
    pub fn run(self, stop: &dyn Fn() -> bool) {
        let every = Duration::from_millis(self.config.ingest.kafka.partition_check_ms);
        let consumer: BaseConsumer<Discovery> = match consumer_config(&self.config)
            .create_with_context(Discovery::default())
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("Kafka: a client to watch the input topics' partitions: {e}; partitions added to them will not be noticed");
                return;
            }
        };
        let mut told: Vec<Option<Change>> = vec![None; self.watch.topics.len()];
        let mut told_outputs: Vec<Option<OutputChange>> = vec![None; self.watch.outputs.len()];
        // The output topics' first look at once: their partitions as sluice starts.
        let mut due = Instant::now();
        while !stop() {
            if Instant::now() < due {
                std::thread::sleep(STEP);
                continue;
            }
            due = Instant::now() + every;
            for (o, told) in self.watch.outputs.iter().zip(told_outputs.iter_mut()) {
                if stop() {
                    return;
                }
                ask_output(&consumer, o, told);
            }
            if !self.note_consumed() {
                continue;
            }
            for (t, told) in self.watch.topics.iter().zip(told.iter_mut()) {
                if stop() {
                    return;
                }
                self.ask(&consumer, t, told);
            }
        }
    }

    /// The partitions dealt per topic, from the gauges (false: not dealt yet).
    fn note_consumed(&self) -> bool {
        let gauges = dealt(&self.gauges);
        if gauges.is_empty() {
            return false;
        }
        for t in &self.watch.topics {
            let n = gauges
                .iter()
                .filter(|g| g.topic == t.topic)
                .map(|g| i64::from(g.partition) + 1)
                .max()
                .unwrap_or(0);
            t.consumed.store(n, Ordering::Relaxed);
        }
        true
    }

    fn ask(&self, consumer: &BaseConsumer<Discovery>, t: &WatchedTopic, told: &mut Option<Change>) {
        let md = match consumer.fetch_metadata(Some(&t.topic), ASK_TIMEOUT) {
            Ok(md) => md,
            // Unreachable brokers are the shards' consumers' to report (counted, logged).
            Err(e) => {
                tracing::debug!(topic = %t.topic, "Kafka: asking the input topic's partitions: {e}");
                return;
            }
        };
        let consumed = t.consumed.load(Ordering::Relaxed);
        let Some(change) = Change::of(consumed, &TopicState::of(&md, &t.topic)) else {
            return;
        };
        let listed = match change {
            Change::Same => consumed,
            Change::Grew { listed, .. } | Change::Shrank { listed, .. } => listed,
            Change::Gone => 0,
        };
        t.listed.store(listed, Ordering::Relaxed);
        if let Change::Grew { consumed, listed } = change {
            let waiting = (consumed..listed)
                .filter_map(|p| {
                    let p = i32::try_from(p).ok()?;
                    let (low, high) = consumer.fetch_watermarks(&t.topic, p, ASK_TIMEOUT).ok()?;
                    Some((high - low).max(0))
                })
                .sum::<i64>();
            t.records_unconsumed.store(waiting, Ordering::Relaxed);
        } else {
            t.records_unconsumed.store(0, Ordering::Relaxed);
        }
        if *told != Some(change) {
            match change.said(&t.topic) {
                Some(said) => tracing::error!("{said}"),
                None if told.is_some() => {
                    tracing::info!(topic = %t.topic, "input topic has the partitions sluice consumes again")
                }
                None => {}
            }
            *told = Some(change);
        }
    }
}

/// One output topic's partitions: the first answer kept, a change said once.
fn ask_output(
    consumer: &BaseConsumer<Discovery>,
    o: &WatchedOutput,
    told: &mut Option<OutputChange>,
) {
    let Some(change) = o.change(consumer) else {
        return;
    };
    if *told != Some(change) {
        match change.said(&o.topic, o.key) {
            Some(said) => tracing::error!("{said}"),
            None if told.is_some() => {
                tracing::info!(topic = %o.topic, "output topic has its partitions again")
            }
            None => {}
        }
        *told = Some(change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_with_more_partitions_than_dealt_is_named_with_the_ones_no_shard_takes() {
        let grew = Change::of(2, &TopicState::Partitions(4)).unwrap();
        assert_eq!(
            grew,
            Change::Grew {
                consumed: 2,
                listed: 4
            }
        );
        let said = grew.said("events").unwrap();
        assert!(
            said.contains("partitions 2..3 are consumed by no shard"),
            "{said}"
        );
        assert!(said.contains("empty state.dir"), "{said}");
        assert!(said.contains("taken up by a restart"), "{said}");
        assert_eq!(
            Change::of(4, &TopicState::Partitions(4)),
            Some(Change::Same)
        );
        assert_eq!(Change::Same.said("events"), None);
        let shrank = Change::of(4, &TopicState::Partitions(1)).unwrap();
        assert!(shrank
            .said("events")
            .unwrap()
            .contains("deleted and made again"));
        assert_eq!(Change::of(4, &TopicState::Missing), Some(Change::Gone));
        assert_eq!(Change::of(4, &TopicState::NotAuthorized), None);
    }

    #[test]
    fn an_output_topic_gone_or_with_fewer_partitions_is_named_more_are_not() {
        let fewer = OutputChange::of(4, &TopicState::Partitions(1)).unwrap();
        assert_eq!(
            fewer,
            OutputChange::Fewer {
                first: 4,
                listed: 1
            }
        );
        let said = fewer.said("scores", "egress.kafka.scores_topic").unwrap();
        assert!(
            said.contains("output topic scores (egress.kafka.scores_topic) has 1 partition(s) now, 4 when sluice first looked"),
            "{said}"
        );
        let gone = OutputChange::of(4, &TopicState::Missing).unwrap();
        assert!(gone
            .said("scores", "egress.kafka.scores_topic")
            .unwrap()
            .contains("no longer exists"));
        for same in [
            OutputChange::of(4, &TopicState::Partitions(4)),
            OutputChange::of(4, &TopicState::Partitions(8)),
            // Not seen before: nothing to compare with.
            OutputChange::of(-1, &TopicState::Partitions(1)),
        ] {
            assert_eq!(same, Some(OutputChange::Same));
        }
        assert_eq!(OutputChange::Same.said("scores", "k"), None);
        let progress = OutputChange::Gone
            .said("sluice-progress", "egress.kafka.progress_topic")
            .unwrap();
        assert!(
            progress.contains("the restart will be refused"),
            "{progress}"
        );
        assert!(!gone
            .said("scores", "egress.kafka.scores_topic")
            .unwrap()
            .contains("refused"));
        assert_eq!(OutputChange::of(4, &TopicState::NotAuthorized), None);
    }

    #[test]
    fn only_topics_grown_past_what_was_dealt_are_unconsumed() {
        let config = Config::from_layers(
            None,
            &[
                "ingest.kafka.brokers=127.0.0.1:9".into(),
                "ingest.kafka.topics=[\"a\", \"b\", \"c\"]".into(),
            ],
        )
        .unwrap();
        let w = TopicWatch::new(&config);
        assert!(w.unconsumed().is_empty(), "nothing known yet");
        for (t, (consumed, listed, records)) in
            w.topics.iter().zip([(2, 4, 7), (3, 3, 0), (-1, 5, -1)])
        {
            t.consumed.store(consumed, Ordering::Relaxed);
            t.listed.store(listed, Ordering::Relaxed);
            t.records_unconsumed.store(records, Ordering::Relaxed);
        }
        assert_eq!(
            w.unconsumed(),
            vec![Unconsumed {
                topic: "a".into(),
                partitions: 2,
                records: Some(7)
            }]
        );
    }
}
