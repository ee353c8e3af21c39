//! Kafka in: each shard has its own librdkafka consumer, manually assigned the partitions the
//! partition table gives it, so a partition's records are applied by one shard in offset
//! order with no ring hop. The shard polls it between cycles without blocking; librdkafka's
//! own threads fetch in the background. The next offset of every owned partition is the
//! shard's to keep: it goes into each checkpoint, and a restore seeks there.

mod arrival;
mod client;
pub mod client_errors;
pub mod membership;
pub mod offset_resets;
pub mod partitions;
mod queue_length;
pub mod reach;
pub mod standby;
mod start_at;
pub mod status;
pub mod topic_watch;
pub mod watermarks;

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

pub use client::{
    admin_config, check_group, clients_check, consumer_config, discover, group_committed_offsets,
    inputs_with_group_offsets, producer_config, KafkaError, TopicState, CONNECT_PATIENCE,
};
pub use membership::{RebalanceEvent, ShardContext};
pub use partitions::{PartitionId, PartitionTable};
pub use watermarks::{PartitionGauge, PartitionGauges, PartitionView, Role};

use crate::config::{Config, KafkaStart};
use crate::state::checkpoint::PartitionOffset;

/// A partition this shard owns, and where it is.
#[derive(Debug, Clone)]
pub struct OwnedPartition {
    pub id: PartitionId,
    pub topic: String,
    /// The next offset to apply; -1 until the first record (or a restored checkpoint) says.
    pub next_offset: i64,
    pub state: Ownership,
    /// librdkafka moved the position from this offset (out of range): the next record says
    /// how many were skipped (`offset_resets`).
    pub reset_from: Option<i64>,
    /// The tag its keys carry: its family's (`PartitionId::family_tag`), its own unless the
    /// topic grew under a dealt state.
    pub tag: u64,
}

/// Whether the shard applies a partition's records (group membership moves partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Active,
    /// Revoked, its handover commit pending: its records are no longer taken, its offset goes
    /// into that commit.
    Frozen,
    /// Not this shard's (group membership: every partition is listed, few are held).
    Idle,
}

/// One polled record as the shard sees it: borrowed from the consumer for the callback.
pub struct Polled<'a> {
    /// Index into `KafkaSource::owned()`.
    pub owned: usize,
    /// The partition's tag (`PartitionId::source_tag`): the keys it owns carry it.
    pub source_tag: u64,
    pub value: &'a [u8],
    pub key: &'a [u8],
    pub offset: i64,
    /// Record timestamp (ms since the epoch, as Kafka keeps it), in ns.
    pub timestamp_ns: u64,
    /// The record was not in librdkafka's queue before this (CLOCK_REALTIME ns): a lower
    /// bound on when the shard could have taken it (`arrival`).
    pub available_ns: u64,
    /// The record itself, for what is read only on a rare path (its headers: librdkafka
    /// parses them at the first ask, with an allocation, so not for every record).
    pub message: &'a BorrowedMessage<'a>,
}

pub struct KafkaSource {
    /// Declared before `consumer`: a reference into it, released first.
    queue: Option<queue_length::ConsumerQueue>,
    consumer: BaseConsumer<ShardContext>,
    owned: Vec<OwnedPartition>,
    /// Records taken since start, skipped ones included (a change stamp for checkpoints).
    taken: u64,
    /// Per owned partition (same order): position, watermark, records, for lag.
    gauges: Vec<Arc<PartitionGauge>>,
    topics_c: Vec<std::ffi::CString>,
    next_watermarks_ns: u64,
    /// Set by librdkafka's thread when the consumer queue goes from empty to non-empty;
    /// cleared by the shard before each poll (see `wake_on_records`).
    arrived: Arc<AtomicBool>,
    /// When librdkafka's thread last found the queue empty and appended to it (CLOCK_REALTIME
    /// ns; 0 until then): read before each poll, for `arrival`.
    appended_ns: Arc<AtomicU64>,
    arrival: arrival::ArrivalBound,
    /// `wake_on_records` set the callback: `arrived` then says when the queue has entries.
    callback_set: bool,
    /// The last poll ended with the queue empty (not stopped by `max` or an error).
    drained: bool,
    /// Poll at least this often even when nothing arrived (CLOCK_REALTIME ns).
    poll_due_ns: u64,
    /// librdkafka's fatal error, once it raised one (a static member fenced by another with its
    /// group.instance.id): the consumer takes no record again, so the shard stops.
    fatal: Option<String>,
}

/// The longest a shard goes without polling its consumer when the queue is known empty: a
/// safety net only (every entry librdkafka appends to the empty queue sets `arrived`).
const IDLE_POLL_EVERY_NS: u64 = 100_000_000;

impl KafkaSource {
    /// A consumer assigned `owned`, each at its restored offset (`restored`, from the shard's
    /// checkpoint), else at `ingest.kafka.start`. With durable state (`state.dir`) the
    /// checkpoint is the only truth: a partition it does not hold has nothing in the state, so
    /// it starts from `ingest.kafka.start`, never from the group's offset (which may be ahead
    /// of any checkpoint that reached the disk). Without `state.dir` nothing survives a
    /// restart but the group's committed offset, so a partition resumes there.
    ///
    /// `bases`: per topic, the partition count the state was first dealt over
    /// (`PartitionTable::bases`). A partition past it that the checkpoint does not hold was
    /// added to the topic since: it starts at its first record, whatever
    /// `ingest.kafka.start` says (its records are the new home of keys already in the state).
    pub fn start(
        config: &Config,
        owned: &[PartitionId],
        restored: &[PartitionOffset],
        gauges: Vec<Arc<PartitionGauge>>,
        bases: &[i32],
    ) -> Result<Self, KafkaError> {
        crate::invariant_eq!(owned.len(), gauges.len());
        let made_ns = crate::clock::realtime_ns();
        let consumer: BaseConsumer<ShardContext> = consumer_config(config)
            .create_with_context(ShardContext::default())
            .map_err(KafkaError::client("consumer"))?;
        let mut parts = partitions(config, owned, Ownership::Active, bases)?;
        let mut tpl = TopicPartitionList::with_capacity(parts.len());
        for p in &parts {
            tpl.add_partition(&p.topic, p.id.partition);
        }
        let durable = !config.state.dir.is_empty();
        let committed = if !durable && !parts.is_empty() {
            client::group_committed_offsets(
                &consumer,
                &config.ingest.kafka.group,
                tpl.clone(),
                Duration::from_secs(10),
            )?
        } else {
            TopicPartitionList::new()
        };
        let held: Vec<(Option<i64>, Option<i64>, bool)> = parts
            .iter()
            .map(|p| {
                let from_checkpoint = restored
                    .iter()
                    .find(|r| r.topic == p.topic && r.partition == p.id.partition)
                    .map(|r| r.next);
                let from_group = committed
                    .find_partition(&p.topic, p.id.partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(n) if n >= 0 => Some(n),
                        _ => None,
                    });
                let added = bases
                    .get(usize::from(p.id.topic))
                    .is_some_and(|&b| b > 0 && p.id.partition >= b);
                (from_checkpoint, from_group, added)
            })
            .collect();
        // The partitions nothing holds an offset for start where ingest.kafka.start says
        // (asked of the brokers in one request when it is a point in time).
        let start = config.ingest.kafka.start;
        let unheld: Vec<(&str, i32)> = parts
            .iter()
            .zip(&held)
            .filter(|(_, h)| matches!(h, (None, None, false)))
            .map(|(p, _)| (p.topic.as_str(), p.id.partition))
            .collect();
        let mut by_start =
            start_at::first_offsets(&consumer, start, &unheld, std::time::SystemTime::now())?
                .into_iter();
        let said_start = format!("ingest.kafka.start = {start}");
        let mut assign = TopicPartitionList::with_capacity(parts.len());
        for (p, held) in parts.iter_mut().zip(held) {
            let (offset, why) = match held {
                (Some(n), _, _) => (Offset::Offset(n), "checkpoint"),
                (None, Some(n), _) => (Offset::Offset(n), "group commit"),
                (None, None, true) => (
                    Offset::Beginning,
                    "added to the topic since its state was dealt: from its first record",
                ),
                (None, None, false) => (
                    by_start.next().unwrap_or(Offset::Beginning),
                    said_start.as_str(),
                ),
            };
            if let Offset::Offset(n) = offset {
                p.next_offset = n;
            }
            tracing::info!(topic = %p.topic, partition = p.id.partition, ?offset, from = why, "Kafka partition assigned");
            assign
                .add_partition_offset(&p.topic, p.id.partition, offset)
                .map_err(KafkaError::client("assignment"))?;
        }
        // Drop the committed list before the consumer could be dropped (a known librdkafka
        // hang otherwise: see DEPENDENCIES.md).
        drop(committed);
        consumer
            .assign(&assign)
            .map_err(KafkaError::client("assign"))?;
        for (g, p) in gauges.iter().zip(&parts) {
            g.next_offset.store(p.next_offset, Ordering::Relaxed);
        }
        Self::with(made_ns, consumer, parts, gauges)
    }

    /// `made_ns`: read before the consumer was made (nothing was fetched before it).
    fn with(
        made_ns: u64,
        consumer: BaseConsumer<ShardContext>,
        owned: Vec<OwnedPartition>,
        gauges: Vec<Arc<PartitionGauge>>,
    ) -> Result<Self, KafkaError> {
        let topics_c = owned
            .iter()
            .map(|p| std::ffi::CString::new(p.topic.as_str()))
            .collect::<Result<_, _>>()
            .map_err(|e| KafkaError::Other(format!("topic name: {e}")))?;
        Ok(Self {
            queue: queue_length::ConsumerQueue::of(&consumer),
            consumer,
            gauges,
            topics_c,
            next_watermarks_ns: 0,
            owned,
            taken: 0,
            arrived: Arc::new(AtomicBool::new(false)),
            appended_ns: Arc::new(AtomicU64::new(0)),
            arrival: arrival::ArrivalBound::new(made_ns),
            callback_set: false,
            drained: false,
            poll_due_ns: 0,
            fatal: None,
        })
    }

    /// Group membership: a consumer that `subscribe`s to the input topics as member
    /// `sluice-instance_id-SHARD` (cooperative-sticky; static if so configured), holding none
    /// of `all` (every input partition, in the partition table's order) until a rebalance
    /// assigns them (`activate`).
    pub fn start_group(
        config: &Config,
        shard: usize,
        all: &[PartitionId],
        gauges: Vec<Arc<PartitionGauge>>,
    ) -> Result<Self, KafkaError> {
        crate::invariant_eq!(all.len(), gauges.len());
        let k = &config.ingest.kafka;
        let mut cc = consumer_config(config);
        cc.set("partition.assignment.strategy", "cooperative-sticky")
            .set("client.id", format!("sluice-{}-{shard}", k.instance_id));
        // A dynamic member leaves the group on a clean stop, so its partitions move at once.
        // A static one does not leave (its partitions wait for the broker to expire it), but
        // its restart under the same id takes its old member's place with no rebalance.
        if k.static_membership {
            cc.set("group.instance.id", format!("{}-{shard}", k.instance_id));
        }
        let made_ns = crate::clock::realtime_ns();
        let consumer: BaseConsumer<ShardContext> = cc
            .create_with_context(ShardContext::default())
            .map_err(KafkaError::client("group consumer"))?;
        let owned = partitions(config, all, Ownership::Idle, &[])?;
        let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(KafkaError::client("subscribe"))?;
        Self::with(made_ns, consumer, owned, gauges)
    }

    /// Rebalances recorded since the last call (group membership), oldest first.
    pub fn take_rebalances(&self) -> Vec<RebalanceEvent> {
        self.consumer.context().take()
    }

    /// The source tag of `owned()[i]`.
    pub fn tag_at(&self, i: usize) -> Option<u64> {
        self.owned.get(i).map(|p| p.tag)
    }

    /// Index into `owned()` of (topic, partition).
    pub fn index_of(&self, topic: &str, partition: i32) -> Option<usize> {
        self.owned
            .iter()
            .position(|p| p.id.partition == partition && p.topic == topic)
    }

    /// Revoked partitions: their records are no longer taken, their offsets still go into
    /// the next commit.
    pub fn freeze(&mut self, list: &[usize]) {
        for &i in list {
            if let Some(p) = self.owned.get_mut(i) {
                if p.state == Ownership::Active {
                    p.state = Ownership::Frozen;
                    self.role(i, Role::HandingOver);
                }
            }
        }
    }

    /// Hand revoked partitions back to the group (after their last commit).
    pub fn release(&mut self, list: &[usize]) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::with_capacity(list.len());
        for &i in list {
            if let Some(p) = self.owned.get_mut(i) {
                p.state = Ownership::Idle;
                p.next_offset = -1;
                tpl.add_partition(&p.topic, p.id.partition);
            }
            self.role(i, Role::None);
        }
        self.consumer
            .incremental_unassign(&tpl)
            .map_err(KafkaError::client("incremental_unassign"))
    }

    /// Take assigned partitions up, each from `next` (None: `ingest.kafka.start`), once their
    /// state is in place.
    pub fn activate(
        &mut self,
        list: &[(usize, Option<i64>)],
        start: KafkaStart,
    ) -> Result<(), KafkaError> {
        let unheld: Vec<(&str, i32)> = list
            .iter()
            .filter(|(_, next)| next.is_none())
            .filter_map(|&(i, _)| self.owned.get(i))
            .map(|p| (p.topic.as_str(), p.id.partition))
            .collect();
        let by_start =
            start_at::first_offsets(&self.consumer, start, &unheld, std::time::SystemTime::now())?;
        let mut by_start = by_start.into_iter();
        let said_start = format!("ingest.kafka.start = {start}");
        let mut tpl = TopicPartitionList::with_capacity(list.len());
        for &(i, next) in list {
            let Some(p) = self.owned.get_mut(i) else {
                continue;
            };
            let (offset, from) = match next {
                Some(n) => (Offset::Offset(n), "its state's offset"),
                None => (
                    by_start.next().unwrap_or(Offset::Beginning),
                    said_start.as_str(),
                ),
            };
            p.state = Ownership::Active;
            // As when dealt: known now when the start was a point in time.
            p.next_offset = match offset {
                Offset::Offset(n) => n,
                _ => -1,
            };
            if let Some(g) = self.gauges.get(i) {
                g.next_offset.store(p.next_offset, Ordering::Relaxed);
                g.set_role(Role::Active);
            }
            tracing::info!(topic = %p.topic, partition = p.id.partition, ?offset, from, "Kafka partition assigned by the group");
            tpl.add_partition_offset(&p.topic, p.id.partition, offset)
                .map_err(KafkaError::client("assignment"))?;
        }
        self.consumer
            .incremental_assign(&tpl)
            .map_err(KafkaError::client("incremental_assign"))
    }

    /// Assigned partitions whose state is being rebuilt (shown by `cluster status`).
    pub fn restoring(&self, list: &[usize]) {
        for &i in list {
            self.role(i, Role::Restoring);
        }
    }

    fn role(&self, i: usize, role: Role) {
        if let Some(g) = self.gauges.get(i) {
            g.set_role(role);
        }
    }

    /// Call `wake` (from librdkafka's thread) whenever records arrive in an empty consumer
    /// queue, so a parked shard takes them at once instead of at its next park timeout.
    pub fn wake_on_records(&mut self, wake: impl Fn() + Send + Sync + 'static) {
        let arrived = self.arrived.clone();
        let appended_ns = self.appended_ns.clone();
        self.callback_set = true;
        self.consumer.set_nonempty_callback(move || {
            // Under the queue's lock, before the records appended can be polled (`arrival`).
            appended_ns.store(crate::clock::realtime_ns(), Ordering::Release);
            arrived.store(true, Ordering::SeqCst);
            // Pairs with the fence in `Waker::park`: either the shard sees `arrived` when it
            // re-checks before sleeping, or `wake` sees it parked.
            fence(Ordering::SeqCst);
            wake();
        });
    }

    /// For the park protocol, after the shard announced it will sleep: did records arrive
    /// since its last poll?
    pub fn has_arrived(&self) -> bool {
        self.arrived.load(Ordering::SeqCst)
    }

    pub fn owned(&self) -> &[OwnedPartition] {
        &self.owned
    }

    /// The consumer's fatal error, once a poll met it (what it is and means, for the stop).
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Records taken so far, skipped ones included.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Known empty and nothing appended since (so `poll` would take nothing, and takes no
    /// lock). librdkafka's fetcher thread takes the queue's lock to append, so a spinning shard
    /// that polled every turn contended with it (measured: ~5 000 futex calls a second on that
    /// lock at 10k records/s, the shard waiting up to 12 ms when the lock's holder was off its
    /// CPU). At least every `IDLE_POLL_EVERY_NS` it polls anyway.
    pub fn idle(&self, now_ns: u64) -> bool {
        self.callback_set
            && self.drained
            && !self.arrived.load(Ordering::SeqCst)
            && now_ns < self.poll_due_ns
    }

    /// Take up to `max` records without blocking, in each partition's offset order; `f` applies
    /// one and the partition's next offset moves past it whatever `f` made of it (a record that
    /// does not decode is skipped, never retried). Returns how many were taken.
    ///
    /// Each `poll` takes librdkafka's queue lock once: per record, not per event (a record
    /// holds a batch); the crate exposes no batch consume. `now_ns`: the cycle's start, read
    /// before this call.
    pub fn poll(&mut self, max: usize, now_ns: u64, mut f: impl FnMut(&Polled<'_>)) -> usize {
        if self.idle(now_ns) {
            return 0;
        }
        self.poll_due_ns = now_ns.saturating_add(IDLE_POLL_EVERY_NS);
        // Rare (a position the brokers no longer have): one relaxed load a cycle otherwise.
        note_resets(&mut self.owned, self.consumer.context().take_resets());
        // Cleared before polling: a record that arrives after this sets it again. (The
        // queue's own lock orders this store before librdkafka's next enqueue.)
        self.arrived.store(false, Ordering::Relaxed);
        if let (false, Some(q)) = (self.drained, &self.queue) {
            // The last poll stopped with entries maybe left: a backlog's records are bounded
            // by this reading (`now_ns` was read before it). After a poll that found the queue
            // empty the callback's time bounds whatever came since, and no lock is taken.
            self.arrival.queue_length(now_ns, q.waiting());
        }
        self.drained = false;
        let mut n = 0;
        while n < max {
            // After `arrived` was seen set (SeqCst), this sees the time stored before it.
            let appended_ns = self.appended_ns.load(Ordering::Acquire);
            let msg = match self.consumer.poll(Duration::ZERO) {
                None => {
                    // None also follows an event the crate served itself (a commit's result,
                    // a rebalance) with records maybe behind it, which would set no `arrived`:
                    // empty only if the queue says so (one lock a cycle that polled).
                    self.drained = self.queue.as_ref().is_some_and(|q| q.waiting() == 0);
                    break;
                }
                Some(Ok(m)) => m,
                Some(Err(_)) => {
                    self.arrival.polled(appended_ns);
                    // Broker trouble (librdkafka retries on its own): counted and logged by
                    // the consumer's context, which hears it with its reason. Unless it is
                    // fatal: asked here, on the error path only (it takes a lock).
                    if self.fatal.is_none() {
                        self.fatal = self.consumer.client().fatal_error().map(|(code, why)| {
                            client_errors::fatal_error_text("consumer", code, &why)
                        });
                    }
                    break;
                }
            };
            let available_ns = self.arrival.polled(appended_ns);
            let part = msg.partition();
            let offset = msg.offset();
            let Some(i) = self
                .owned
                .iter()
                .position(|p| p.id.partition == part && p.topic == msg.topic())
            else {
                crate::invariant!(false, "a record from a partition this shard does not own");
                continue;
            };
            if self
                .owned
                .get(i)
                .is_some_and(|p| p.reset_from.is_none() && offset < p.next_offset)
            {
                // Offsets went back: only after a reset (the topic made again), whose log
                // line may have come while this poll ran. Rare: not a per-record cost.
                note_resets(&mut self.owned, self.consumer.context().take_resets());
            }
            let Some(owned) = self.owned.get_mut(i) else {
                continue;
            };
            if owned.state != Ownership::Active {
                // Revoked and not yet handed back (its offset is being committed), or not
                // taken up yet: the new owner takes this record from the committed offset.
                continue;
            }
            let reset = owned.reset_from.take();
            if let Some(at) = reset {
                if let Some(said) = offset_resets::landed(&owned.topic, part, at, offset) {
                    tracing::error!("{said}");
                }
            }
            crate::invariant!(
                reset.is_some() || owned.next_offset < 0 || offset >= owned.next_offset,
                "offsets go forward, unless a reset moved them"
            );
            let timestamp_ns = msg
                .timestamp()
                .to_millis()
                .map_or(0, |ms| (ms.max(0) as u64).saturating_mul(1_000_000));
            f(&Polled {
                owned: i,
                source_tag: owned.tag,
                value: msg.payload().unwrap_or(&[]),
                key: msg.key().unwrap_or(&[]),
                offset,
                timestamp_ns,
                available_ns,
                message: &msg,
            });
            owned.next_offset = offset + 1;
            if let Some(g) = self.gauges.get(i) {
                g.next_offset.store(offset + 1, Ordering::Relaxed);
                g.records.inc();
            }
            self.taken += 1;
            n += 1;
        }
        n
    }

    /// Once a second (between cycles): copy librdkafka's cached high watermarks into the
    /// gauges, for lag.
    pub fn refresh_watermarks(&mut self, now_ns: u64) {
        if now_ns < self.next_watermarks_ns {
            return;
        }
        self.next_watermarks_ns = now_ns.saturating_add(1_000_000_000);
        for ((g, topic), p) in self.gauges.iter().zip(&self.topics_c).zip(&self.owned) {
            if let Some(high) =
                watermarks::cached_high_watermark(&self.consumer, topic, p.id.partition)
            {
                g.high_watermark.store(high, Ordering::Relaxed);
            }
        }
    }

    /// The next offset of every partition that has one (for the checkpoint).
    pub fn offsets(&self) -> Vec<PartitionOffset> {
        self.owned
            .iter()
            .filter(|p| p.next_offset >= 0 && p.state != Ownership::Idle)
            .map(|p| PartitionOffset {
                topic: p.topic.clone(),
                partition: p.id.partition,
                next: p.next_offset,
            })
            .collect()
    }

    /// The offsets as a list for a group commit or a transaction.
    pub fn offsets_list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(self.owned.len());
        for p in self
            .owned
            .iter()
            .filter(|p| p.next_offset >= 0 && p.state != Ownership::Idle)
        {
            // Only fails for an invalid offset, and these are all >= 0.
            let _ =
                tpl.add_partition_offset(&p.topic, p.id.partition, Offset::Offset(p.next_offset));
        }
        tpl
    }

    /// After an at_least_once checkpoint commits: tell the group the offsets it holds (every
    /// Score before them acknowledged), for lag tools and for a start without a checkpoint.
    /// Asynchronous; a failure only delays what the tools see.
    pub fn commit_offsets_to_group(&self, offsets: &[PartitionOffset]) {
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for p in offsets.iter().filter(|p| p.next >= 0) {
            let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next));
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!("Kafka group commit (for lag tools): {e}");
            }
        }
    }

    /// Tell the group where this shard is now, for lag tools. Asynchronous.
    pub fn commit_to_group(&self) {
        let tpl = self.offsets_list();
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!("Kafka group commit (for lag tools): {e}");
            }
        }
    }

    /// At shutdown without checkpoints: commit where this shard is, and wait for it.
    pub fn commit_to_group_sync(&self) {
        let tpl = self.offsets_list();
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
                tracing::error!("Kafka group commit at shutdown failed (a restart re-sends from the previous one): {e}");
            }
        }
    }

    pub fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }
}

/// The resets librdkafka made, marked on the partitions they moved (said when the next record
/// of each arrives).
fn note_resets(owned: &mut [OwnedPartition], resets: Vec<offset_resets::Reset>) {
    for r in resets {
        if let Some(p) = owned
            .iter_mut()
            .find(|p| p.id.partition == r.partition && p.topic == r.topic)
        {
            p.reset_from = Some(r.at);
        }
    }
}

/// The partitions `ids` names, by topic name, each in `state`, its next offset unknown.
fn partitions(
    config: &Config,
    ids: &[PartitionId],
    state: Ownership,
    bases: &[i32],
) -> Result<Vec<OwnedPartition>, KafkaError> {
    let topics = &config.ingest.kafka.topics;
    ids.iter()
        .map(|id| {
            let topic = topics.get(usize::from(id.topic)).cloned().ok_or_else(|| {
                KafkaError::Other(format!("partition table names topic {}", id.topic))
            })?;
            Ok(OwnedPartition {
                id: *id,
                topic,
                next_offset: -1,
                state,
                reset_from: None,
                tag: id.family_tag(bases),
            })
        })
        .collect()
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // The consumer's close revokes what it holds (group membership): the callback must
        // hand it back itself then, the shard being done.
        self.consumer.context().set_closing();
    }
}
