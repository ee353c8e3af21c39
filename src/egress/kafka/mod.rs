//! Kafka out: the Scores of each consumed record become one record of `scores_topic` (value =
//! one ScoreBatch, key = the entity key as 8 bytes big-endian when the batch holds one key,
//! else the input record's key; header `sluice-src` = topic/partition/offset), and alerts also
//! go to `alerts_topic`. One producer per shard, handed the cycle's records at its end. Input
//! records that are not a valid EventBatch, and the events refused inside valid ones, go to
//! `dead_letter_topic` through the same producer, in the same epoch or transaction as the
//! Scores around them (`dead_letter.rs`).
//!
//! `at_least_once`: an idempotent producer; a checkpoint waits until every Score handed over
//! before it is acknowledged, so a restart from it re-sends only Scores after it.
//! `exactly_once`: a transactional producer; each checkpoint commits the transaction holding
//! the Scores since the previous one, the consumed offsets and a progress record naming the
//! checkpoint (`progress.rs`), so a read_committed consumer sees each Score once. With
//! `overlap_commits` (the default) each shard has two transactional producers used in turn:
//! at a flip the Scores move to the other one while the flipped transaction commits.

pub mod changelog;
pub mod committed_mark;
pub mod dead_letter;
pub mod input_replay;
pub mod positions;
pub mod progress;
pub mod rebuild;
mod reports;
mod to_the_end;
mod topic;
mod transaction;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use rdkafka::{ClientContext, TopicPartitionList};
pub use topic::{check_batch_limits, check_output_topics, not_authorized, output_topics};
pub use transaction::Committed;
use transaction::{send_progress, Committer, Transactions};

use super::PendingScore;
use crate::clock;
use crate::config::{Config, Delivery};
use crate::ingest::kafka::{producer_config, KafkaError};
use crate::metrics::{DropReason, ShardCounters, ShardLatency};
use crate::wire::{EventBatchEncoder, ScoreBatchEncoder};

/// Counts Score records the producer gave up on, and the records of each epoch (the Scores
/// produced between two at_least_once checkpoint flips) not yet reported. Delivery reports are
/// served by `poll` and `flush`, both called on the shard thread, so the single-writer
/// counters stay single-writer.
pub struct DeliveryCounter {
    counters: Arc<ShardCounters>,
    epochs: Epochs,
    /// Score and alert records given up on by the producer or refused by it: each is a Score
    /// downstream never gets, so the shard stops (see `ShardKafka::check_delivered`).
    undelivered: std::sync::atomic::AtomicU64,
    /// Value bytes of the counted records (those of an epoch slot) handed over and not yet
    /// reported: the shard's byte bound on intake (`ingest.kafka.in_flight_bytes_max`), as
    /// librdkafka holds value bytes against `queue.buffering.max.kbytes`. Signed: a slip in
    /// the counting could never wrap it into a bound that stops intake for good.
    bytes: std::sync::atomic::AtomicI64,
    /// Per changelog partition, the offset after the newest changelog record acknowledged
    /// since the committer last took them: where the changelog stands once its transaction
    /// commits (recorded beside the checkpoint, see `positions::Positions`).
    changelog_ends: std::sync::Mutex<std::collections::HashMap<i32, i64>>,
}

impl DeliveryCounter {
    pub fn new(counters: Arc<ShardCounters>) -> Self {
        Self {
            counters,
            epochs: Epochs::default(),
            undelivered: Default::default(),
            bytes: Default::default(),
            changelog_ends: Default::default(),
        }
    }

    /// Records given up on or refused (see `undelivered`).
    pub fn undelivered(&self) -> u64 {
        self.undelivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The changelog ends acknowledged since the last call, forgotten here.
    pub fn take_changelog_ends(&self) -> std::collections::HashMap<i32, i64> {
        self.changelog_ends
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }

    /// A record of epoch `slot` with a value of `bytes` about to be handed over. Counted
    /// before the send: its delivery report may come with any later poll.
    pub(super) fn handing(&self, slot: usize, bytes: usize) {
        self.epochs.sent(slot);
        self.add_bytes(slot, bytes as i64);
    }

    /// A record of epoch `slot` (value `bytes`) the producer refused: never handed over, so
    /// no report will come for it; counted undelivered (the shard stops:
    /// `ShardKafka::check_delivered`).
    pub(super) fn refused(&self, slot: usize, bytes: usize) {
        self.not_handed(slot, bytes);
        self.lost();
    }

    /// A record counted by `handing` that the producer did not take after all (lost, or a
    /// dead letter sent again without its value).
    pub(super) fn not_handed(&self, slot: usize, bytes: usize) {
        self.epochs.done(slot);
        self.add_bytes(slot, -(bytes as i64));
    }

    /// A record that will never be delivered (the shard stops: `ShardKafka::check_delivered`).
    pub(super) fn lost(&self) {
        self.undelivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn add_bytes(&self, slot: usize, bytes: i64) {
        if slot < EPOCHS {
            self.bytes
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Value bytes handed over and not yet reported (see `bytes`).
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64
    }
}

/// Orders a cycle's Scores or refusals by input record: those of events that waited for a
/// cold read (`shard::cold_wait`) come after the cycle's others. A stable sort, so each
/// record's order per key is kept; only when needed (it may take a buffer then).
fn order_by_source<T>(items: &mut [T], src: impl Fn(&T) -> u32 + Copy) {
    if !items.is_sorted_by_key(src) {
        items.sort_by_key(src);
    }
}

/// The end of the run of `items` (ordered by `order_by_source`) of the input record of
/// `items[start]`.
fn source_run_end<T>(items: &[T], start: usize, src: impl Fn(&T) -> u32) -> usize {
    let first = src(&items[start]);
    start
        + items[start..]
            .iter()
            .take_while(|i| src(i) == first)
            .count()
}

/// Epochs tracked at once: a checkpoint cannot start while the slot its new epoch would reuse
/// still has records in flight (that many intervals behind).
const EPOCHS: usize = 8;

/// A record's delivery opaque: its epoch's slot, or this for one not counted (the progress
/// record of exactly_once, which its transaction's commit covers).
const UNTRACKED: usize = usize::MAX;

/// The delivery opaque of a changelog record: not counted either (its transaction's commit
/// covers it), but its acknowledged offset is kept.
const CHANGELOG: usize = usize::MAX - 1;

/// Records handed to the producer and not yet reported, per epoch slot.
#[derive(Default)]
pub struct Epochs([std::sync::atomic::AtomicU64; EPOCHS]);

impl Epochs {
    /// A record of `slot` handed over (UNTRACKED and other out-of-range slots are ignored).
    fn sent(&self, slot: usize) {
        if let Some(c) = self.0.get(slot) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A record of `slot` reported, or never handed over after all.
    fn done(&self, slot: usize) {
        if let Some(c) = self.0.get(slot) {
            c.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn outstanding(&self, slot: usize) -> u64 {
        self.0
            .get(slot)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl ClientContext for DeliveryCounter {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::ingest::kafka::client_errors::record("producer", &error, reason);
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        // Delivered or given up on, the record is no longer in flight. A record given up on
        // (only with a `message.timeout.ms` > 0) is a lost Score: counted here, and the shard
        // stops before any checkpoint or group commit could move past it.
        self.epochs.done(slot);
        let value_len = match result {
            Ok(m) | Err((_, m)) => m.payload_len(),
        };
        self.add_bytes(slot, -(value_len as i64));
        if let (Ok(m), CHANGELOG) = (result, slot) {
            // A lock per changelog record, never per Score: changelog records go out only
            // at a commit, mostly acknowledged on the committer thread.
            if let Ok(mut ends) = self.changelog_ends.lock() {
                let end = ends.entry(m.partition()).or_default();
                *end = (*end).max(m.offset() + 1);
            }
        }
        if let Err((e, _)) = result {
            if slot < EPOCHS {
                self.undelivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let c = &self.counters;
            // Two threads may serve reports (the shard, and the committer during a commit).
            c.kafka_delivery_failures.add_shared(1);
            let n = c.kafka_delivery_failures.get();
            if n.is_power_of_two() {
                tracing::error!(failures = n, "Kafka Score record not delivered: {e}");
            }
        }
    }
}

pub type ScoreProducer = BaseProducer<DeliveryCounter>;

/// Wait up to `timeout` until every record handed to `producer` is acknowledged (its
/// delivery reports served here). False: some still are not.
///
/// Not rdkafka's `Producer::flush`: in rdkafka 0.39 it polls in rounds of 100 ms, and
/// `BaseProducer::poll` waits out its whole timeout even after serving a report, so a flush
/// that found one record in flight took at least 100 ms. Every exactly_once commit paid that
/// (`commit_transaction` flushes first): 100-102 ms of each commit's 104-128 ms, measured with
/// the changelog on. Rounds of 1 ms here (librdkafka's poll timeout is in whole ms).
pub fn drain(producer: &ScoreProducer, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if producer.in_flight_count() <= 0 {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        producer.poll(Duration::from_millis(1));
    }
}

/// Create a shard's producer; with `transactional_id`, initialise its transactions (which
/// fences any earlier producer with the same id and aborts its open transaction).
pub fn start_producer(
    config: &Config,
    transactional_id: Option<&str>,
    counters: Arc<ShardCounters>,
) -> Result<ScoreProducer, KafkaError> {
    let producer: ScoreProducer = producer_config(config, transactional_id)
        .create_with_context(DeliveryCounter::new(counters))
        .map_err(KafkaError::client("producer"))?;
    if transactional_id.is_some() {
        let timeout = Duration::from_millis(config.egress.kafka.transaction_timeout_ms);
        producer
            .init_transactions(timeout)
            .map_err(KafkaError::client("init_transactions"))?;
    }
    Ok(producer)
}

/// Fence every earlier producer of `transactional_id`, aborting a transaction it left open
/// (`sluice state rescale`, before it reads the progress records a start would read).
pub fn fence(config: &Config, transactional_id: &str) -> Result<(), KafkaError> {
    start_producer(config, Some(transactional_id), Arc::default()).map(drop)
}

/// Commit a transaction of `transactional_id` that carries only the progress record `p`,
/// fencing any earlier producer of that id first: `sluice state rescale` names each new
/// shard's checkpoint this way, as the shard's own first commit would have.
pub fn commit_progress_alone(
    config: &Config,
    transactional_id: &str,
    p: progress::Progress,
) -> Result<(), KafkaError> {
    let producer = start_producer(config, Some(transactional_id), Arc::default())?;
    producer
        .begin_transaction()
        .map_err(KafkaError::client("begin_transaction"))?;
    let topic = &config.egress.kafka.progress_topic;
    send_progress(&producer, topic, transactional_id, p)?;
    let timeout = Duration::from_millis(config.egress.kafka.transaction_timeout_ms);
    producer
        .commit_transaction(timeout)
        .map_err(KafkaError::client("commit_transaction"))
}

/// The input record a group of Scores answers.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// Index into the shard's owned partitions (names the topic and partition).
    owned: u32,
    offset: i64,
    /// The input record's key in `keys`, or None if longer than `KEY_BYTES_MAX`.
    key: Option<(u32, u16)>,
    /// When the record became available to the shard, a lower bound (`Polled::available_ns`).
    available_ns: u64,
    /// The record's Kafka timestamp (ns since the epoch), 0 = none: its refused events'
    /// dead-letter record carries it.
    timestamp_ns: u64,
    /// Its headers, for its refused events' dead letter (`dead_letter::keep_headers`).
    headers: dead_letter::KeptHeaders,
}

/// Longest input-record key kept to key a multi-key Score record (longer: the first Score's
/// entity key is used instead).
pub const KEY_BYTES_MAX: usize = 256;
/// Cycles' worth of record sources kept for events waiting for cold reads off the shard
/// thread. Two (the shard waiting for its reads every other cycle under steady cold traffic)
/// drained a Kafka backlog slower than reading on the shard; at four the waits are rarer
/// (bench/README.md, "Larger than memory": Kafka). Each is 24 bytes and a key of up to
/// `KEY_BYTES_MAX`, and a Score slot per event a record may hold.
pub const SOURCE_CYCLES: usize = 4;

pub struct KafkaSink {
    /// Per producer (same order), its reply queue watched, so that the shard polls it only
    /// when something waits there (`reports.rs`); None where librdkafka gave no queue (polled
    /// every turn). Declared before `producers`: dropped while they are alive.
    reports: Vec<Option<reports::ReportQueue>>,
    /// Shared with the committer thread (exactly_once), which commits on them. One, or two
    /// under exactly_once with `overlap_commits` (used in turn, one transaction each).
    producers: Vec<Arc<ScoreProducer>>,
    /// The producer Score records go to now.
    active: usize,
    /// A record was handed to `active` since the last switch.
    sent_since_switch: bool,
    transactional: bool,
    scores_topic: String,
    alerts_topic: String,
    /// Input records that are not a valid EventBatch, and refused events, go here ("" =
    /// nowhere).
    dead_letter_topic: String,
    /// `egress.kafka.dead_letter_events` as `DropReason` bits (`dead_letter::reason_mask`);
    /// 0 without a dead-letter topic.
    dead_letter_events: u32,
    /// Events refused this cycle, for the dead-letter topic: no capacity until the first
    /// (`dead_letter.rs`), then `scores_max`.
    refused: Vec<dead_letter::RefusedEvent>,
    /// Encodes a record's refused events as one EventBatch (its buffer kept).
    events_encoder: EventBatchEncoder,
    /// The sluice-reason header of refused events (a label per event, comma-separated).
    reasons_header: Vec<u8>,
    /// Input records' headers kept for their refused events' dead letters
    /// (`dead_letter::KeptHeaders`): no capacity until the first, then
    /// `HEADER_BYTES_KEPT_MAX` per source. Cleared with the sources.
    kept_headers: Vec<u8>,
    /// `wire.batch_events_max`.
    events_per_record: usize,
    /// exactly_once: commits run on their own thread.
    committer: Option<Committer>,
    /// Shared with the committer: started when the shard stops (`hurry`).
    hurry: Arc<transaction::Hurry>,
    /// `egress.kafka.shutdown_commit_ms`.
    shutdown_commit: Duration,
    /// exactly_once without the changelog: (progress topic, record key); a flipped
    /// transaction's progress record is fully known at the flip and sent then.
    progress_at_flip: Option<(String, String)>,
    /// "topic/partition/" per owned partition, for the sluice-src header.
    src_prefix: Vec<String>,
    /// The sluice-src header's value ("topic/partition/offset"), written anew per Score
    /// record into this one buffer (sized at start for the longest prefix and an offset).
    src_header: Vec<u8>,
    sources: Vec<Source>,
    keys: Vec<u8>,
    pending: Vec<(u32, PendingScore)>,
    encoder: ScoreBatchEncoder,
    sources_max: usize,
    /// `ingest.kafka.records_per_cycle_max`: the sources one cycle may add.
    cycle_records: usize,
    scores_max: usize,
    /// The open epoch: Score records produced now belong to it (slot `epoch % EPOCHS`).
    epoch: u64,
    /// Partitions imported whole before flip `seq`: (seq, source tag, topic, partition).
    /// At most the shard's partition count (kept for one flip).
    imported_whole: Vec<(u64, u64, String, i32)>,
}

impl KafkaSink {
    /// `owned_names[i]` = (topic, partition) of the shard's i-th owned partition.
    /// `wake` wakes the shard when a commit ends (exactly_once); `changelog`: where its
    /// commits read their checkpoints' changes from, and the checkpoint whose whole state the
    /// changelog holds already (the restored one, if so). `producers`: one, or two used in
    /// turn (exactly_once with `overlap_commits`).
    pub fn new(
        config: &Config,
        shard: usize,
        producers: Vec<ScoreProducer>,
        owned_names: &[(String, i32)],
        wake: Box<dyn Fn() + Send>,
        changelog: Option<(changelog::ChangelogSource, Option<u64>)>,
    ) -> Result<Self, KafkaError> {
        let k = &config.egress.kafka;
        let transactional = k.delivery == Delivery::ExactlyOnce;
        if producers.is_empty() || producers.len() > 2 || (producers.len() == 2 && !transactional) {
            return Err(KafkaError::Other(format!(
                "{} Score producers for one shard (one, or two under exactly_once)",
                producers.len()
            )));
        }
        let producers: Vec<Arc<ScoreProducer>> = producers.into_iter().map(Arc::new).collect();
        let hurry = Arc::new(transaction::Hurry::default());
        let committer = if transactional {
            for producer in &producers {
                producer
                    .begin_transaction()
                    .map_err(KafkaError::client("begin_transaction"))?;
            }
            let tx = Transactions {
                producers: producers.clone(),
                timeout: Duration::from_millis(k.transaction_timeout_ms),
                hurry: hurry.clone(),
                progress_topic: k.progress_topic.clone(),
                transactional_id: transactional_id(config, shard),
                changelog_holds: changelog.as_ref().and_then(|(_, h)| h.map(|s| (s, true))),
                changelog: changelog.map(|(c, _)| c),
                changelog_positions: Default::default(),
            };
            Some(Committer::start(tx, wake, format!("sluice-txn-{shard}"))?)
        } else {
            None
        };
        // Room for `SOURCE_CYCLES` cycles' records: with cold reads off the shard thread, a
        // record's events may wait for a read past its cycle, and its source stays until
        // they are applied (the shard waits for the reads once one cycle's room is left).
        let cycle_records = config.ingest.kafka.records_per_cycle_max;
        let cycles = match config.state.cold_reader {
            // Reads land within their cycle: nothing is kept.
            crate::config::ColdReaderPlace::Shard => 1,
            _ => SOURCE_CYCLES,
        };
        let sources_max = cycles * cycle_records;
        let scores_max = sources_max * config.wire.batch_events_max;
        let progress_at_flip = (transactional && !k.changelog)
            .then(|| (k.progress_topic.clone(), transactional_id(config, shard)));
        Ok(Self {
            progress_at_flip,
            reports: producers
                .iter()
                .map(|p| reports::ReportQueue::of(p))
                .collect(),
            producers,
            active: 0,
            sent_since_switch: false,
            transactional,
            scores_topic: k.scores_topic.clone(),
            alerts_topic: k.alerts_topic.clone(),
            dead_letter_topic: k.dead_letter_topic.clone(),
            // No topic: nothing to send for any reason.
            dead_letter_events: if k.dead_letter_topic.is_empty() {
                0
            } else {
                dead_letter::reason_mask(&k.dead_letter_events)
            },
            refused: Vec::new(),
            events_encoder: EventBatchEncoder::new(),
            reasons_header: Vec::new(),
            kept_headers: Vec::new(),
            events_per_record: config.wire.batch_events_max,
            committer,
            hurry,
            shutdown_commit: Duration::from_millis(k.shutdown_commit_ms),
            src_prefix: owned_names
                .iter()
                .map(|(t, p)| format!("{t}/{p}/"))
                .collect(),
            // Topic names are at most 249 bytes; a partition and an offset at most 11 and 20.
            src_header: Vec::with_capacity(249 + 1 + 11 + 1 + 20),
            sources: Vec::with_capacity(sources_max),
            keys: Vec::with_capacity(sources_max * KEY_BYTES_MAX),
            pending: Vec::with_capacity(scores_max),
            encoder: ScoreBatchEncoder::new(config.wire.batch_events_max),
            sources_max,
            cycle_records,
            scores_max,
            epoch: 0,
            imported_whole: Vec::new(),
        })
    }

    fn slot(epoch: u64) -> usize {
        (epoch % EPOCHS as u64) as usize
    }

    /// The producer Score records go to now.
    fn producer(&self) -> &ScoreProducer {
        // `new` refuses an empty list and `active` only ever names one of them.
        &self.producers[self.active]
    }

    /// exactly_once with two producers, at a checkpoint's flip: the Scores from now on go to
    /// the other producer (its transaction was begun when its last commit ended; flips come
    /// only once the previous commit has), and the one holding the flipped transaction is
    /// returned for `start_commit`. With one producer: that one, and nothing changes.
    pub fn switch(&mut self) -> usize {
        let closed = self.active;
        if self.producers.len() > 1 {
            self.active = (self.active + 1) % self.producers.len();
        }
        self.sent_since_switch = false;
        closed
    }

    /// exactly_once without the changelog, at a flip: hand checkpoint `seq`'s progress record
    /// to producer `which` now, into the flipped transaction, instead of at its commit (a lone
    /// record there took ~100 ms to be acknowledged on the test broker: that wait now runs
    /// beside the checkpoint's write). True if it was handed over; the commit then does not
    /// send it. If the checkpoint is then not written and the transaction stays open, the next
    /// checkpoint's record follows it in the same transaction, and restore reads the newest.
    pub fn send_progress_at_flip(&self, which: usize, seq: u64) -> bool {
        let (Some((topic, key)), Some(producer)) =
            (&self.progress_at_flip, self.producers.get(which))
        else {
            return false;
        };
        let p = progress::Progress {
            seq,
            changelog: false,
        };
        match send_progress(producer, topic, key, p) {
            Ok(()) => true,
            // The commit sends it then (and reports the error if it persists).
            Err(e) => {
                tracing::warn!(seq, "progress record not handed over at the flip: {e}");
                false
            }
        }
    }

    /// Scores go on into another transaction while one commits (`overlap_commits`).
    pub fn overlaps(&self) -> bool {
        self.producers.len() > 1
    }

    /// Every Score and alert record handed to producer `which` has been acknowledged (its
    /// delivery report served: by the shard's polls, or during a commit by the committer's
    /// flush): Scores sent now by another producer land after all of them on every partition.
    /// Counted per record (the epochs' counts), so the commit's own changelog and progress
    /// records, in flight too while it runs, do not hold intake back.
    pub fn acknowledged(&self, which: usize) -> bool {
        self.producers.get(which).is_none_or(|p| {
            let epochs = &p.context().epochs;
            (0..EPOCHS).all(|s| epochs.outstanding(s) == 0)
        })
    }

    /// at_least_once, at a checkpoint's flip: close the open epoch (its Scores answer what the
    /// snapshot holds) and open the next. Returns false, changing nothing, when the next
    /// epoch's slot still has records in flight from `EPOCHS` flips ago.
    pub fn begin_epoch(&mut self) -> bool {
        let next = self.epoch + 1;
        if self
            .producer()
            .context()
            .epochs
            .outstanding(Self::slot(next))
            > 0
        {
            return false;
        }
        self.epoch = next;
        true
    }

    /// Every Score record produced before the open epoch has been reported (delivered or
    /// given up on): a checkpoint flipped when it opened may be committed.
    pub fn settled_before_open_epoch(&self) -> bool {
        let epochs = &self.producer().context().epochs;
        let open = Self::slot(self.epoch);
        (0..EPOCHS).all(|s| s == open || epochs.outstanding(s) == 0)
    }

    /// Less than a cycle's room left for sources (see `flush`; `SOURCE_CYCLES`): the shard
    /// must wait for its cold reads before this cycle's flush, so the sources can go.
    pub fn sources_filling(&self) -> bool {
        self.sources.len() + self.cycle_records > self.sources_max
    }

    /// Register a consumed record whose events are about to be applied; its Scores go to
    /// `ReplyTo::Kafka(returned index)`. At most `records_per_cycle_max` per cycle (the
    /// source's poll bound), cleared by `flush` (`SOURCE_CYCLES` cycles' worth kept at most).
    pub fn begin_source(
        &mut self,
        owned: usize,
        offset: i64,
        key: &[u8],
        available_ns: u64,
        timestamp_ns: u64,
    ) -> u32 {
        crate::invariant!(
            self.sources.len() < self.sources_max,
            "more records than a cycle takes"
        );
        let key = (key.len() <= KEY_BYTES_MAX).then(|| {
            let at = self.keys.len() as u32;
            self.keys.extend_from_slice(key);
            (at, key.len() as u16)
        });
        self.sources.push(Source {
            owned: owned as u32,
            offset,
            key,
            available_ns,
            timestamp_ns,
            headers: dead_letter::KeptHeaders::None,
        });
        (self.sources.len() - 1) as u32
    }

    pub fn push(&mut self, source: u32, s: PendingScore) {
        crate::invariant!((source as usize) < self.sources.len());
        // Bounded by the cycle's records x events per record, which `pending` was sized for.
        crate::invariant!(
            self.pending.len() < self.scores_max,
            "Kafka Scores past their bound"
        );
        self.pending.push((source, s));
    }

    /// End of a cycle: one Score record per input record that produced Scores (and one alert
    /// record where some were alerts), handed to the producer; then serve delivery reports.
    /// `send` copies key and value (librdkafka's F_COPY), and the crate builds the topic
    /// CString and librdkafka the header list per record: allocations per record, not per
    /// event, in code that is not ours (the header's value is written into a kept buffer).
    /// `in_use`: events of this or an earlier cycle's records still wait for a cold read
    /// (their Scores will name those records): the sources stay. `now_ns`: the cycle's start
    /// (CLOCK_REALTIME), for the reply queues' safety net.
    pub fn flush(
        &mut self,
        counters: &ShardCounters,
        latency: &mut ShardLatency,
        in_use: bool,
        now_ns: u64,
    ) {
        if !self.pending.is_empty() {
            order_by_source(&mut self.pending, |(src, _)| *src);
            let emit_ns = clock::realtime_ns();
            for (_, p) in &mut self.pending {
                p.score.latency_ns = emit_ns.saturating_sub(p.pickup_ns);
                latency.record_kafka(emit_ns.saturating_sub(p.recv_ns), p.score.latency_ns);
            }
            let mut start = 0;
            while start < self.pending.len() {
                let src = self.pending[start].0;
                let end = source_run_end(&self.pending, start, |(s, _)| *s);
                if self.produce_group(src, start..end, counters) {
                    // One clock read per Score record handed over (not per event): the share
                    // ends when this record is with the producer, after the sends before it.
                    let handed_ns = clock::realtime_ns();
                    let available_ns = self
                        .sources
                        .get(src as usize)
                        .map_or(handed_ns, |s| s.available_ns);
                    for _ in start..end {
                        latency.record_kafka_available(handed_ns.saturating_sub(available_ns));
                    }
                }
                start = end;
            }
        }
        self.pending.clear();
        self.send_refused(counters);
        if !in_use {
            self.sources.clear();
            self.keys.clear();
            self.kept_headers.clear();
        }
        // During a commit its own flush serves that producer's reports (on the committer
        // thread); polling it here too would run its delivery callbacks on two threads at once.
        let committing = self.committer.as_ref().and_then(Committer::busy);
        for (i, (p, q)) in self.producers.iter().zip(&mut self.reports).enumerate() {
            if committing == Some(i) {
                continue;
            }
            match q {
                Some(q) => {
                    q.serve(p, now_ns);
                }
                None => p.poll(Duration::ZERO),
            }
        }
    }

    /// Hands the group's Score (and alert) record to the producer; false when there was none
    /// to hand (no topic set).
    fn produce_group(
        &mut self,
        src: u32,
        range: std::ops::Range<usize>,
        counters: &ShardCounters,
    ) -> bool {
        let n = range.len() as u64;
        counters.scores_emitted.add(n);
        // Nothing to send only when neither topic is set: alerts go out without a scores topic.
        if self.scores_topic.is_empty() && self.alerts_topic.is_empty() {
            return false;
        }
        let Some(source) = self.sources.get(src as usize).copied() else {
            return false;
        };
        let group = &self.pending[range];
        let first_key = group[0].1.score.key;
        let one_key = group.iter().all(|(_, p)| p.score.key == first_key);
        let entity_key = first_key.to_be_bytes();
        let key: &[u8] = match (one_key, source.key) {
            (false, Some((at, len))) => &self.keys[at as usize..at as usize + len as usize],
            _ => &entity_key,
        };
        Self::write_src_header(&mut self.src_header, &self.src_prefix, source);
        for (topic, alerts_only) in [(&self.scores_topic, false), (&self.alerts_topic, true)] {
            if topic.is_empty() || (alerts_only && !group.iter().any(|(_, p)| p.score.alert)) {
                continue;
            }
            let value = self.encoder.encode(
                group
                    .iter()
                    .filter(|(_, p)| !alerts_only || p.score.alert)
                    .map(|(_, p)| p.score),
            );
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: "sluice-src",
                value: Some(&self.src_header[..]),
            });
            let slot = Self::slot(self.epoch);
            let record = BaseRecord::with_opaque_to(topic, slot)
                .payload(value)
                .key(key)
                .headers(headers);
            let producer = &self.producers[self.active];
            let value_len = value.len();
            producer.context().handing(slot, value_len);
            self.sent_since_switch = true;
            match producer.send(record) {
                Ok(()) => {
                    if !alerts_only {
                        counters.kafka_score_records.inc();
                    }
                }
                Err((e, _)) => {
                    // Never handed over: no report will come for it, and no Score either.
                    producer.context().refused(slot, value_len);
                    // A refused Score drops its events; a refused alert copy is a record not
                    // delivered. Both counted; logged 1st, 2nd, 4th, ... (no per-event logs).
                    let refused = if alerts_only {
                        counters.kafka_delivery_failures.add_shared(1);
                        counters.kafka_delivery_failures.get()
                    } else {
                        counters.dropped_events(DropReason::ProduceError, n);
                        counters.events_dropped_by(DropReason::ProduceError)
                    };
                    if refused.is_power_of_two() {
                        tracing::error!(topic = %topic, refused, "Kafka producer refused a Score record: {e}");
                    }
                }
            }
        }
        true
    }

    /// The sluice-src header's value for `source` ("topic/partition/offset") into `header`
    /// (`src_header`), from `prefixes` (`src_prefix`).
    fn write_src_header(header: &mut Vec<u8>, prefixes: &[String], source: Source) {
        header.clear();
        header.extend_from_slice(
            prefixes
                .get(source.owned as usize)
                .map_or(&b""[..], |p| p.as_bytes()),
        );
        // Into a Vec with room for it: no allocation (io::Write on a Vec cannot fail).
        let _ = write!(header, "{}", source.offset);
    }

    /// Score and alert records that will never reach their topic: given up on by the producer
    /// (after `message.timeout.ms`) or refused by it.
    pub fn undelivered(&self) -> u64 {
        self.producers
            .iter()
            .map(|p| p.context().undelivered())
            .sum()
    }

    /// A producer's fatal error (what it is and means), if one raised it: asked only once
    /// records went undelivered (a fatal error purges the producer's queue) or a commit
    /// failed (`naming_fatal`), never per cycle.
    pub fn fatal(&self) -> Option<String> {
        self.producers.iter().find_map(|p| {
            let (code, why) = p.client().fatal_error()?;
            Some(crate::ingest::kafka::client_errors::fatal_error_text(
                "producer", code, &why,
            ))
        })
    }

    /// Records handed to the active producer and not yet acknowledged (the bound on its
    /// queue; the other one's, during a commit, are its transaction's last records and the
    /// commit's changelog part).
    pub fn in_flight(&self) -> usize {
        self.producer().in_flight_count().max(0) as usize
    }

    /// Their value bytes (Score, alert and dead-letter records; no lock taken).
    pub fn bytes_in_flight(&self) -> u64 {
        self.producer().context().bytes_in_flight()
    }

    /// The producer Score records go to now (for `commit_epoch`).
    pub fn active(&self) -> usize {
        self.active
    }

    /// Score records handed over since the last `switch` (the open transaction holds some).
    pub fn sent_since_switch(&self) -> bool {
        self.sent_since_switch
    }

    /// Before a checkpoint without transactions, or at shutdown: wait up to `timeout` for
    /// every Score handed over to be acknowledged. False: not all were.
    pub fn settle(&self, timeout: Duration) -> bool {
        self.producers.iter().all(|p| drain(p, timeout))
    }

    pub fn transactional(&self) -> bool {
        self.transactional
    }

    /// exactly_once, once checkpoint `seq` is durable: start committing producer `which`'s
    /// open transaction with the consumed `offsets` (as of the checkpoint) and a progress
    /// record naming `seq`, on the committer thread; `poll_commit` says how it ended. No Score
    /// may be handed to that producer meanwhile (it would join this transaction).
    pub fn start_commit(
        &mut self,
        seq: u64,
        offsets: TopicPartitionList,
        group: Option<ConsumerGroupMetadata>,
        which: usize,
        progress_sent: bool,
    ) -> Result<(), KafkaError> {
        crate::invariant!(self.pending.is_empty(), "commits start between cycles");
        // Only partitions the flip still owned (their offsets are in the commit): one lost
        // since has no keys in it.
        let whole: Vec<u64> = self
            .imported_whole
            .iter()
            .filter(|(s, _, t, p)| *s == seq && offsets.find_partition(t, *p).is_some())
            .map(|&(_, tag, _, _)| tag)
            .collect();
        self.imported_whole.retain(|(s, ..)| *s > seq);
        match &mut self.committer {
            Some(c) => c.begin(seq, offsets, group, which, (progress_sent, whole)),
            None => Err(KafkaError::Other("not a transactional producer".into())),
        }
    }

    /// The running commit's result, once it has one (the next transaction is open on Ok; on
    /// Err it was aborted and the caller must replay from the last committed checkpoint).
    pub fn poll_commit(&mut self) -> Option<Result<Committed, KafkaError>> {
        let ended = self.committer.as_mut().and_then(Committer::poll)?;
        Some(ended.map_err(|e| self.naming_fatal(e)))
    }

    /// A failed commit's error, and the producer's fatal error behind it if there is one: the
    /// call that meets a fencing first says only "Fatal (Local: Fatal error)".
    fn naming_fatal(&self, e: KafkaError) -> KafkaError {
        match self.fatal() {
            Some(fatal) => KafkaError::Other(format!("{e}; {fatal}")),
            None => e,
        }
    }

    /// Partitions (source tag, topic, partition) whose whole state went into the state
    /// between the previous flip and flip `seq` (the next one): that flip's transaction marks
    /// them in the changelog if it still owns them (`changelog::WHOLE_MARKER`).
    pub fn imported_whole(&mut self, seq: u64, parts: Vec<(u64, String, i32)>) {
        self.imported_whole.retain(|(s, ..)| *s >= seq);
        self.imported_whole
            .extend(parts.into_iter().map(|(tag, t, p)| (seq, tag, t, p)));
    }

    /// `start_commit` of producer `which`'s transaction and wait for it (a handover's
    /// checkpoint, shutdown's last one; no other commit runs then).
    pub fn commit_epoch(
        &mut self,
        seq: u64,
        offsets: TopicPartitionList,
        group: Option<ConsumerGroupMetadata>,
        which: usize,
        progress_sent: bool,
    ) -> Result<Committed, KafkaError> {
        self.start_commit(seq, offsets, group, which, progress_sent)?;
        self.wait_commit()
    }

    /// The shard is stopping: from now its commits (the running one too) and the abort of a
    /// failed one wait at most `egress.kafka.shutdown_commit_ms` more for the brokers.
    pub fn hurry(&self) {
        self.hurry.start(self.shutdown_commit);
    }

    /// Wait for a running commit's result (Ok when none runs).
    pub fn wait_commit(&mut self) -> Result<Committed, KafkaError> {
        let ended = match &mut self.committer {
            Some(c) => c.wait(),
            None => Ok(None),
        };
        ended.map_err(|e| self.naming_fatal(e))
    }
}

/// The transactional.id of a shard's second producer (`overlap_commits`): fenced at every
/// start, used or not, so a transaction a crashed run left open on it never holds
/// read_committed readers back.
pub fn second_transactional_id(first: &str) -> String {
    format!("{first}-b")
}

/// The shard's transactional.id: stable across restarts, so a restart fences its zombie
/// (with group membership the instance's name is in it: each instance has its own shards).
pub fn transactional_id(config: &Config, shard: usize) -> String {
    let prefix = &config.egress.kafka.transactional_id_prefix;
    match config.ingest.kafka.membership {
        crate::config::Membership::Deal => format!("{prefix}-{shard}"),
        crate::config::Membership::Group => {
            format!("{prefix}-{}-{shard}", config.ingest.kafka.instance_id)
        }
    }
}
