//! A shard's part of Kafka, dealt at start: the partitions it owns, its Score producer and
//! which checkpoint it may restore. When the brokers do not answer at start, the shards start
//! without it and serve UDP; a thread of its own goes on asking the brokers and hands each
//! shard its part when they answer, which the shard attaches between two cycles.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{full_layout, start_checkpoints, AppError, Restored};
use crate::config::{Config, Delivery, Membership};
use crate::egress::kafka::changelog::{self, ChangelogSource, ChangelogSpec};
use crate::egress::kafka::positions::{unix_ms_now, Positions};
use crate::egress::kafka::{
    progress, second_transactional_id, start_producer, transactional_id, KafkaSink, ScoreProducer,
};
use crate::ingest::kafka::standby::{StandbyPartition, StandbyTail, Standbys};
use crate::ingest::kafka::{
    self as kafka_in, KafkaError, KafkaSource, PartitionGauge, PartitionGauges, PartitionId,
    PartitionTable, Role,
};
use crate::metrics::ShardCounters;
use crate::shard::{Control, GroupMember, KafkaAttach, ShardKafka};
use crate::state::checkpoint::{self, PartitionOffset, RestoreTarget};
use crate::wake::Waker;

/// A shard's part of Kafka, as its thread receives it.
pub(super) enum KafkaPart {
    Off,
    /// Dealt before the shard started (boxed: the other variants are a word or two).
    Dealt(Box<KafkaSeed>),
    /// The brokers did not answer at start: dealt later through this channel (or the reason
    /// it never will be).
    Later(mpsc::Receiver<Result<KafkaSeed, String>>),
}

/// The partitions a shard owns, its Score producers (transactions already initialised under
/// exactly_once, fencing any earlier process), and which checkpoint the last committed
/// transaction names.
pub(super) struct KafkaSeed {
    pub owned: Vec<PartitionId>,
    /// One per owned partition, shared with `Running` for the report (and the exporter).
    gauges: Vec<Arc<PartitionGauge>>,
    /// One, or two used in turn (exactly_once with `egress.kafka.overlap_commits`).
    producers: Vec<ScoreProducer>,
    pub target: RestoreTarget,
    /// Appended to the state layout: the partitions a checkpoint's state belongs to.
    pub layout: String,
    /// Per topic, the partition count its state was first dealt over (`PartitionTable::bases`).
    bases: Vec<i32>,
    /// `egress.kafka.changelog`: the shard's changelog partitions.
    pub changelog: Option<ChangelogSpec>,
    /// The last committed transaction says the changelog holds the state it completes.
    pub changelog_complete: bool,
    /// `ingest.kafka.standby_replicas`: this instance's warm copies.
    standbys: Option<Standbys>,
    /// How old changelog positions beside the restored checkpoint may be to be used.
    positions_max_age: Duration,
}

impl KafkaSeed {
    /// The checkpoint whose whole state the changelog holds, for a shard restored to exactly
    /// it (its first change set then leads on from there): the one the last committed
    /// transaction names, if that transaction says so.
    pub fn changelog_holds(&self) -> Option<u64> {
        match self.target {
            RestoreTarget::Exactly(seq) if self.changelog_complete => Some(seq),
            _ => None,
        }
    }

    /// (topic, partition) of each owned partition.
    pub fn owned_names(&self, config: &Config) -> Vec<(String, i32)> {
        self.owned
            .iter()
            .filter_map(|p| {
                let topic = config.ingest.kafka.topics.get(usize::from(p.topic))?;
                Some((topic.clone(), p.partition))
            })
            .collect()
    }
}

/// Deal every shard its part of Kafka. Brokers that do not answer within
/// `kafka_in::CONNECT_PATIENCE` are not fatal: the shards start with `KafkaPart::Later`, and
/// the returned thread deals their parts when the brokers answer. A missing topic (brokers
/// that answer) and every other error still stop the start.
pub(super) fn deal(
    config: &Config,
    shards: usize,
    counters: &[Arc<ShardCounters>],
    control: &Arc<Control>,
    (gauges, standbys): (&PartitionGauges, &Standbys),
) -> Result<(Vec<KafkaPart>, Option<JoinHandle<()>>), AppError> {
    if !config.ingest.kafka.enabled() {
        return Ok(((0..shards).map(|_| KafkaPart::Off).collect(), None));
    }
    match seeds(config, shards, counters, kafka_in::CONNECT_PATIENCE) {
        Ok(mut seeds) => {
            let _ = gauges.set(all_gauges(&seeds));
            let k = &config.ingest.kafka;
            let tail = match seeds.first() {
                Some(first) if k.membership == Membership::Group && k.standby_replicas > 0 => {
                    Some(start_standbys(config, first, gauges, standbys, control)?)
                }
                _ => None,
            };
            // A group member keeps handed-over partitions' copies there, tail or not.
            if k.membership == Membership::Group {
                for seed in &mut seeds {
                    seed.standbys = Some(standbys.clone());
                }
            }
            Ok((
                seeds
                    .into_iter()
                    .map(|s| KafkaPart::Dealt(Box::new(s)))
                    .collect(),
                tail,
            ))
        }
        Err(AppError::Kafka(e @ KafkaError::Unreachable { .. })) => {
            tracing::error!("{e}: serving UDP without Kafka meanwhile; asking the brokers again until they answer (Kafka partitions attach then)");
            let (senders, receivers): (Vec<_>, Vec<_>) =
                (0..shards).map(|_| mpsc::sync_channel(1)).unzip();
            let later = Later {
                config: config.clone(),
                counters: counters.to_vec(),
                control: control.clone(),
                gauges: gauges.clone(),
                standbys: standbys.clone(),
                senders,
            };
            let thread = std::thread::Builder::new()
                .name("sluice-kafka-connect".into())
                .spawn(move || later.run())
                .map_err(AppError::Thread)?;
            Ok((
                receivers.into_iter().map(KafkaPart::Later).collect(),
                Some(thread),
            ))
        }
        Err(e) => Err(e),
    }
}

/// The standby thread (`ingest::kafka::standby`).
fn start_standbys(
    config: &Config,
    seed: &KafkaSeed,
    gauges: &PartitionGauges,
    standbys: &Standbys,
    control: &Arc<Control>,
) -> Result<JoinHandle<()>, AppError> {
    let tail = standby_tail(config, seed, gauges, standbys);
    let control = control.clone();
    std::thread::Builder::new()
        .name("sluice-standby".into())
        .spawn(move || tail.run(&|| control.stop_requested()))
        .map_err(AppError::Thread)
}

/// The standbys' tail over every input partition (a group member's seed lists them all,
/// gauges and changelog partitions in the same order).
fn standby_tail(
    config: &Config,
    seed: &KafkaSeed,
    gauges: &PartitionGauges,
    standbys: &Standbys,
) -> StandbyTail {
    let partitions = seed
        .gauges
        .iter()
        .zip(seed.changelog.iter().flat_map(|c| c.partitions.iter()))
        .map(|(g, &(_, changelog))| StandbyPartition {
            topic: g.topic.clone(),
            partition: g.partition,
            changelog,
        })
        .collect();
    tracing::info!(
        replicas = config.ingest.kafka.standby_replicas,
        "standby replicas: on"
    );
    StandbyTail {
        config: config.clone(),
        partitions,
        gauges: gauges.clone(),
        standbys: standbys.clone(),
    }
}

fn all_gauges(seeds: &[KafkaSeed]) -> Vec<Arc<PartitionGauge>> {
    seeds
        .iter()
        .flat_map(|k| k.gauges.iter().cloned())
        .collect()
}

/// The connect thread's belongings.
struct Later {
    config: Config,
    counters: Vec<Arc<ShardCounters>>,
    control: Arc<Control>,
    gauges: PartitionGauges,
    standbys: Standbys,
    senders: Vec<mpsc::SyncSender<Result<KafkaSeed, String>>>,
}

impl Later {
    /// Ask the brokers (one 3 s metadata request at a time, so a stop is seen within that)
    /// until they answer, then deal; then, with standby replicas, tail them on this thread.
    fn run(self) {
        let mut attempt = 0u64;
        while !self.control.stop_requested() {
            attempt += 1;
            match seeds(
                &self.config,
                self.senders.len(),
                &self.counters,
                Duration::ZERO,
            ) {
                Ok(mut seeds) => {
                    let _ = self.gauges.set(all_gauges(&seeds));
                    tracing::warn!(
                        attempt,
                        "Kafka brokers answer: partitions dealt, shards attach them now"
                    );
                    let k = &self.config.ingest.kafka;
                    let tail = match seeds.first() {
                        Some(first)
                            if k.membership == Membership::Group && k.standby_replicas > 0 =>
                        {
                            Some(standby_tail(
                                &self.config,
                                first,
                                &self.gauges,
                                &self.standbys,
                            ))
                        }
                        _ => None,
                    };
                    if k.membership == Membership::Group {
                        for seed in &mut seeds {
                            seed.standbys = Some(self.standbys.clone());
                        }
                    }
                    for (tx, seed) in self.senders.iter().zip(seeds) {
                        let _ = tx.send(Ok(seed));
                    }
                    if let Some(tail) = tail {
                        tail.run(&|| self.control.stop_requested());
                    }
                    return;
                }
                Err(AppError::Kafka(e @ KafkaError::Unreachable { .. })) => {
                    // 1st, 2nd, 4th, ... attempt: an outage is visible, not a log storm.
                    if attempt.is_power_of_two() {
                        tracing::warn!(attempt, "{e}; UDP serves meanwhile, still asking");
                    }
                }
                Err(e) => {
                    let why = format!("Kafka could not be attached: {e}");
                    for tx in &self.senders {
                        let _ = tx.send(Err(why.clone()));
                    }
                    return;
                }
            }
        }
    }
}

/// Discover the input topics (asking up to `patience`), deal their partitions to shards,
/// start each shard's producer and (exactly_once) read back which checkpoint each shard's last
/// committed transaction names.
fn seeds(
    config: &Config,
    shards: usize,
    counters: &[Arc<ShardCounters>],
    patience: Duration,
) -> Result<Vec<KafkaSeed>, AppError> {
    let counts = kafka_in::discover(config, patience)?;
    crate::egress::kafka::check_output_topics(config)?;
    crate::egress::kafka::check_batch_limits(config)?;
    let group = config.ingest.kafka.membership == Membership::Group;
    // Group membership: every shard may be given any partition; the table is the changelog's
    // partition order (and the dealt layout's count check).
    let table = if group {
        PartitionTable::balanced(&counts, 1)
    } else {
        dealt_table(config, &counts, shards)
    };
    let layout = if group {
        table.group_layout(&config.ingest.kafka.topics)
    } else {
        table.layout(&config.ingest.kafka.topics, shards)
    };
    if table.owners.len() > crate::limits::KAFKA_PARTITIONS_MAX {
        return Err(AppError::Kafka(KafkaError::Other(format!(
            "{} partitions: one instance takes at most {}",
            table.owners.len(),
            crate::limits::KAFKA_PARTITIONS_MAX
        ))));
    }
    let exactly_once = config.egress.kafka.delivery == Delivery::ExactlyOnce;
    if exactly_once {
        kafka_in::check_group(config, &counts)?;
    }
    let ids: Vec<String> = (0..shards).map(|i| transactional_id(config, i)).collect();
    let mut producers = Vec::with_capacity(shards);
    for (i, id) in ids.iter().enumerate() {
        let tid = exactly_once.then_some(id.as_str());
        let counters = counters.get(i).cloned().unwrap_or_default();
        let mut own = vec![start_producer(config, tid, counters.clone())?];
        if exactly_once {
            // Fenced whether or not it is used: a transaction a crashed run left open on it
            // would hold every read_committed reader (the progress read below too) back.
            let second = start_producer(config, Some(&second_transactional_id(id)), counters)?;
            if config.egress.kafka.overlap_commits {
                own.push(second);
            }
        }
        producers.push(own);
    }
    let committed = if exactly_once {
        progress::last_committed(config, &ids)?
    } else {
        Default::default()
    };
    let (changelog_topic, changelog_new) = if exactly_once && config.egress.kafka.changelog {
        let (topic, created) = changelog::ensure_topic(config, table.owners.len() as i32)?;
        (Some(topic), created)
    } else {
        (None, false)
    };
    // Only a group member ever reads from a position (see `GroupMember::restored_positions`).
    let positions_max_age = match (&changelog_topic, group) {
        (Some(topic), true) => changelog::positions_max_age(config, topic),
        _ => crate::egress::kafka::positions::MAX_AGE,
    };
    if exactly_once {
        refuse_lost_progress(config, &ids, &committed)?;
    }
    tracing::info!(partitions = table.owners.len(), version = table.version, shards, delivery = ?config.egress.kafka.delivery, "Kafka partitions dealt to shards");
    Ok(producers
        .into_iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (producers, id))| {
            let target = match (exactly_once, committed.get(id)) {
                (false, _) => RestoreTarget::Newest,
                (true, Some(p)) => RestoreTarget::Exactly(p.seq),
                (true, None) => RestoreTarget::Nothing,
            };
            // A changelog created just now holds nothing, whatever the progress record says.
            let changelog_complete =
                !changelog_new && committed.get(id).is_some_and(|p| p.changelog);
            let owned = table.owned_by(if group { 0 } else { i });
            // A group member's shards each have a gauge for every input partition (its
            // role says which one owns it now); a dealt partition is its shard's for good.
            let role = if group { Role::None } else { Role::Active };
            let gauges = owned
                .iter()
                .map(|p| {
                    let topic = config
                        .ingest
                        .kafka
                        .topics
                        .get(usize::from(p.topic))
                        .map_or("?", String::as_str);
                    Arc::new(PartitionGauge::new(topic, p.partition, i, role))
                })
                .collect();
            // Changelog partition = the input partition's place in the table.
            let changelog = changelog_topic.as_ref().map(|topic| ChangelogSpec {
                topic: topic.clone(),
                partitions: table
                    .owners
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, s))| group || *s == i)
                    .map(|(at, (p, _))| (p.source_tag(), at as i32))
                    .collect(),
                marks_whole: !group,
            });
            KafkaSeed {
                owned,
                gauges,
                producers,
                target,
                layout: layout.clone(),
                bases: table.bases.clone(),
                changelog,
                changelog_complete,
                positions_max_age,
                standbys: None,
            }
        })
        .collect())
}

/// The dealt table: balanced over the partitions the topics have, unless the state on disk
/// was dealt over fewer and each topic grew to a multiple of its count since (`kafka-topics
/// --alter --partitions`): then the partitions dealt before keep their shards and each added
/// one goes to the shard of its family (`PartitionTable::grown`), where the keys a modulo
/// partitioner moved to it have their state. Not with the changelog (one changelog
/// partition per input partition, in table order: the state of a family would have to move
/// between changelog partitions), nor for counts that are not multiples (keys would move
/// between shards): those are refused by the restore, naming why.
fn dealt_table(config: &Config, counts: &[i32], shards: usize) -> PartitionTable {
    let now = PartitionTable::balanced(counts, shards);
    let changelog =
        config.egress.kafka.delivery == Delivery::ExactlyOnce && config.egress.kafka.changelog;
    if config.state.dir.is_empty() || changelog {
        return now;
    }
    let root = super::shard_dir(config, 0).join("checkpoints");
    let Ok(Some(layout)) = checkpoint::newest_layout(&root) else {
        return now;
    };
    let topics = &config.ingest.kafka.topics;
    let over = format!(";over={shards}");
    let Some((then, bases)) = PartitionTable::bases_of_layout(&layout, topics) else {
        return now;
    };
    if !layout.contains(&over) || (then == counts && bases == counts) {
        return now;
    }
    let Some(grown) = PartitionTable::grown(&bases, counts, shards) else {
        return now;
    };
    if then != counts {
        tracing::warn!(
            before = ?then,
            now = ?counts,
            families = ?bases,
            "Kafka input topics grew since the newest checkpoint: each added partition is taken up from its first record by the shard of its family (partition mod the count the state was first dealt over), whose keys' state it carries on"
        );
    }
    grown
}

/// The shard's consumer, at the offsets its restored state holds, and its Score sink; a
/// parked shard is woken when records arrive.
pub(super) fn shard_kafka(
    id: usize,
    config: &Config,
    seed: KafkaSeed,
    (offsets, words, holds): (&[PartitionOffset], usize, Option<u64>),
    wakers: &Arc<Vec<Waker>>,
    helpers: &[usize],
) -> Result<ShardKafka, KafkaError> {
    let member = config.ingest.kafka.membership == Membership::Group;
    let mut source = if member {
        KafkaSource::start_group(config, id, &seed.owned, seed.gauges)?
    } else {
        KafkaSource::start(config, &seed.owned, offsets, seed.gauges, &seed.bases)?
    };
    let root = super::shard_dir(config, id).join("checkpoints");
    let member = match (&seed.changelog, member) {
        (Some(spec), true) => Some(GroupMember {
            config: config.clone(),
            changelog: spec.clone(),
            restored: Some(offsets.to_vec()),
            // Only for the checkpoint the changelog holds whole (else its position says
            // nothing of the state here).
            restored_positions: holds.and_then(|seq| {
                Positions::read_usable(
                    &checkpoint::path_of(&root, seq),
                    unix_ms_now(),
                    seed.positions_max_age,
                )
            }),
            helpers: helpers.to_vec(),
            standbys: seed.standbys.clone(),
            keep_handed_over: Duration::from_millis(config.ingest.kafka.handed_over_keep_ms)
                .min(seed.positions_max_age),
            checkpoints: root.clone(),
        }),
        _ => None,
    };
    let changelog = seed
        .changelog
        .map(|spec| ChangelogSource { spec, root, words });
    let names: Vec<(String, i32)> = source
        .owned()
        .iter()
        .map(|p| (p.topic.clone(), p.id.partition))
        .collect();
    let wake = move |wakers: Arc<Vec<Waker>>| {
        move || {
            if let Some(w) = wakers.get(id) {
                w.wake_if_parked();
            }
        }
    };
    let sink = KafkaSink::new(
        config,
        id,
        seed.producers,
        &names,
        Box::new(wake(wakers.clone())),
        changelog.map(|c| (c, holds)),
    )?;
    source.wake_on_records(wake(wakers.clone()));
    Ok(ShardKafka {
        source,
        sink,
        records_max: config.ingest.kafka.records_per_cycle_max,
        in_flight_max: config.ingest.kafka.in_flight_records_max,
        in_flight_bytes_max: config.ingest.kafka.in_flight_bytes_max as u64,
        failed: false,
        next_group_commit_ns: 0,
        acks: crate::shard::AtLeastOnce::default(),
        txn: crate::shard::ExactlyOnce::default(),
        member,
        taking_up: None,
        settle_next: false,
        rebalances: Vec::new(),
        commit_mark: commit_mark(config, id),
    })
}

/// exactly_once: shards with no committed progress record whose directory says a transaction
/// did commit its checkpoints (the progress topic lost them): refused, all named.
fn refuse_lost_progress(
    config: &Config,
    ids: &[String],
    committed: &std::collections::HashMap<String, crate::egress::kafka::progress::Progress>,
) -> Result<(), AppError> {
    use crate::egress::kafka::committed_mark;
    let topic = &config.egress.kafka.progress_topic;
    let (dirs, lost): (Vec<std::path::PathBuf>, Vec<&str>) = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| !committed.contains_key(*id))
        .map(|(i, id)| (super::shard_dir(config, i), id.as_str()))
        .filter(|(dir, id)| committed_mark::committed_here(dir, id, topic))
        .unzip();
    if lost.is_empty() {
        return Ok(());
    }
    Err(AppError::Kafka(KafkaError::Other(committed_mark::lost(
        &dirs, &lost, topic,
    ))))
}

/// exactly_once: the shard directory's committed mark to write at its first commit, unless it
/// says so already.
fn commit_mark(config: &Config, id: usize) -> Option<(std::path::PathBuf, String)> {
    use crate::egress::kafka::committed_mark;
    if config.egress.kafka.delivery != Delivery::ExactlyOnce || config.state.dir.is_empty() {
        return None;
    }
    let path = committed_mark::path(&super::shard_dir(config, id));
    let text = committed_mark::text(
        &transactional_id(config, id),
        &config.egress.kafka.progress_topic,
    );
    (std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str())).then_some((path, text))
}

/// For a shard started without Kafka: between cycles, take its part once dealt and attach it
/// — if the state restored without the brokers is the one they would have had restored:
/// the partition layout its checkpoint was written for (at_least_once), and under
/// exactly_once the very checkpoint the last committed transaction names. If not, the service
/// stops with the reason and a restart (systemd's) restores the right one; UDP updates since
/// this start are then lost, as UDP replays nothing. Checkpoints start at the attach: before
/// it the layout (and under exactly_once the transaction) they belong to is not known.
pub(super) fn attach_later(
    (id, shards): (usize, usize),
    config: Config,
    rx: mpsc::Receiver<Result<KafkaSeed, String>>,
    restored: &Restored,
    wakers: Arc<Vec<Waker>>,
    helpers: Vec<usize>,
) -> KafkaAttach {
    let offsets = restored.offsets.clone();
    let restored_seq = restored.seq;
    let restored_layout = restored.kafka_layout.clone();
    let next_seq = restored.next_seq;
    Box::new(move |core| {
        let seed = match rx.try_recv() {
            Ok(seed) => seed,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => {
                return Some(Err("the Kafka connect thread stopped".into()))
            }
        };
        Some(seed.and_then(|seed| {
            // The same layout, or its input topics grown to multiples (`dealt_table`).
            let same = restored_layout.as_deref().is_some_and(|r| {
                r == seed.layout || kafka_in::partitions::layout_grows_into(r, &seed.layout)
            });
            if restored_seq.is_some() && !same {
                return Err(format!("shard {id}: Kafka's partitions are now dealt as {:?}, but the checkpoint restored while the brokers did not answer was written for {:?}: stopping (a restart reports the layout mismatch)", seed.layout, restored_layout.as_deref().unwrap_or("no Kafka")));
            }
            let named = match seed.target {
                RestoreTarget::Newest => restored_seq,
                RestoreTarget::Exactly(seq) | RestoreTarget::Elsewhere(seq) => Some(seq),
                RestoreTarget::Nothing => None,
            };
            if named != restored_seq {
                return Err(format!("shard {id}: the last committed Kafka transaction names checkpoint {named:?}, but {restored_seq:?} was restored while the brokers did not answer: stopping so a restart restores the named one (UDP updates since this start are lost)"));
            }
            let layout = full_layout(&config, shards, Some(&seed.layout));
            let words = core.state().plan().words();
            let kafka = crate::topology::with_cpus(&helpers, || {
                shard_kafka(id, &config, seed, (&offsets, words, None), &wakers, &helpers)
            })
            .map_err(|e| format!("shard {id}: attaching Kafka: {e}"))?;
            let checkpoints = start_checkpoints(
                id,
                &config,
                &layout,
                true,
                // Served UDP since its restore, untracked: its first change set leads on
                // from nothing.
                (None, next_seq),
                core.state_mut(),
                &helpers,
            )
            .map_err(|e| format!("shard {id}: starting checkpoints: {e}"))?;
            tracing::info!(shard = id, partitions = kafka.source.owned().len(), "Kafka attached");
            Ok((kafka, checkpoints))
        }))
    })
}
