//! A shard's Kafka side: its consumer (the partitions it owns) and its Score producer, and
//! how a checkpoint and a Kafka commit go together (`at_least_once` / `exactly_once`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;

use super::at_least_once::{AtLeastOnce, Epochs};
use super::exactly_once::{self, ExactlyOnce, Transactions};
use super::ShardCore;
use crate::egress::kafka::rebuild::{ChangelogRead, Import};
use crate::egress::kafka::{changelog, rebuild, KafkaSink};
use crate::egress::{Egress, EgressSink};
use crate::ingest::kafka::KafkaSource;
use crate::ingest::kafka::RebalanceEvent;
use crate::metrics::{ShardCounters, ShardLatency};
use crate::shard::core::KafkaRecord;
use crate::state::checkpoint::{Checkpointer, Input};

/// Kafka for a shard that started without it (the brokers did not answer at start): called
/// between cycles, None until the partitions are dealt, then the shard's Kafka side and its
/// checkpointer (which waits for the layout the partitions make), or why it cannot attach.
pub type KafkaAttach = Box<
    dyn FnMut(&mut ShardCore) -> Option<Result<(ShardKafka, Option<Checkpointer>), String>> + Send,
>;

pub struct ShardKafka {
    pub source: KafkaSource,
    pub sink: KafkaSink,
    pub records_max: usize,
    pub in_flight_max: usize,
    /// `ingest.kafka.in_flight_bytes_max`: the same bound in Score record value bytes.
    pub in_flight_bytes_max: u64,
    /// A commit failed: the state is ahead of what Kafka holds, so no further checkpoint may
    /// be committed; the process stops and restarts from the last committed one.
    pub failed: bool,
    /// Without checkpoints: when the group's offsets are next committed.
    pub next_group_commit_ns: u64,
    /// at_least_once: the checkpoint waiting for its Scores' acknowledgements.
    pub acks: AtLeastOnce,
    /// exactly_once: the checkpoint whose transaction is being committed (no Kafka intake
    /// meanwhile, unless the Scores go to a second producer: `Commit`'s `ordered`).
    pub txn: ExactlyOnce<TopicPartitionList>,
    /// `ingest.kafka.membership = group`: what moving partitions in and out needs.
    pub member: Option<GroupMember>,
    /// Assigned partitions being rebuilt from the changelog; taken up once every key is in.
    pub taking_up: Option<TakingUp>,
    /// A checkpoint or rebalance waits for the events still waiting for cold reads off the
    /// shard thread (`wait_for_cold`): the next cycle waits for those reads before its flush.
    pub settle_next: bool,
    /// Rebalances taken from the consumer while events waited for cold reads: acted on once
    /// those landed.
    pub rebalances: Vec<RebalanceEvent>,
    /// exactly_once: the shard directory's committed mark (path, text), written at the first
    /// committed transaction (`egress::kafka::committed_mark`); None once written or not
    /// wanted.
    pub commit_mark: Option<(std::path::PathBuf, String)>,
}

/// After a committed transaction: the shard directory's mark, the first time (one file write
/// and two syncs a run, on the commit path, which waits on the brokers anyway; never per
/// event). Synced with its directory so that a power cut cannot take it back while the
/// progress record it vouches for stays. A mark not written, or half written, is logged or
/// unreadable: the only loss is the refusal it would allow after a lost progress topic.
fn mark_committed(mark: &mut Option<(std::path::PathBuf, String)>) {
    use crate::state::checkpoint::disk;
    if let Some((path, text)) = mark.take() {
        let written = disk::write_synced(&path, &[text.as_bytes()])
            .and_then(|()| path.parent().map_or(Ok(()), disk::sync_dir));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "exactly_once: the committed mark was not written: {e}");
        }
    }
}

/// Whether a checkpoint would flip now (`in_flight`: exactly_once's checkpoint on its way, which
/// no flip passes) while events of records already taken wait for a cold read: their
/// offsets would be in it without their effects. Then the flip waits for those reads (see
/// `ShardKafka::wait_for_cold`; the crash simulation asks the same, `sim::world::kafka`).
pub fn flip_waits_for_cold(
    core: &ShardCore,
    cp: &Checkpointer,
    in_flight: bool,
    now_ns: u64,
    input: &Input,
) -> bool {
    core.waiting_for_cold() > 0
        && !cp.capturing()
        && !in_flight
        && cp.due(now_ns, core.state(), input)
}

/// Assigned partitions rebuilt from the changelog without stopping the shard: the changelog
/// is read on a helper thread, then its keys go into the state a slice per cycle; meanwhile
/// the shard serves its other partitions, and librdkafka waits for the assignment call (the
/// rebalance stays open until then). Dropped (stopping): the reader is told to stop.
pub struct TakingUp {
    list: Vec<(String, i32)>,
    /// Each assigned partition (index into `owned()`) and the group's offset to take it from.
    take: Vec<(usize, Option<i64>)>,
    kept: usize,
    started: std::time::Instant,
    stage: RebuildStage,
    cancel: Arc<AtomicBool>,
    /// The checkpoint sequence number the next flip takes, as the keys began to go in: if it
    /// is the same once they are all in, no flip split them, so that flip's transaction
    /// carries every key of each imported partition (marked in the changelog).
    import_seq: Option<u64>,
}

enum RebuildStage {
    Reading(std::thread::JoinHandle<Result<ChangelogRead, crate::ingest::kafka::KafkaError>>),
    Importing(Import),
    /// Between stages (never seen outside `advance_take_up`).
    Moving,
}

impl Drop for TakingUp {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// A shard that is a member of the consumer group (see `ingest::kafka::membership`).
pub struct GroupMember {
    /// For the changelog reader and the group's offsets.
    pub config: crate::config::Config,
    /// Every input partition's changelog partition.
    pub changelog: crate::egress::kafka::changelog::ChangelogSpec,
    /// The restored checkpoint's offsets, until the first assignment: a partition it holds is
    /// kept if the group's committed offset is still the checkpoint's (nobody moved on with
    /// it meanwhile), else rebuilt from the changelog; the ones not assigned are dropped.
    pub restored: Option<Vec<crate::state::checkpoint::PartitionOffset>>,
    /// The changelog's positions recorded with the restored checkpoint (if its transaction
    /// carried a whole-state changelog and the file is there and young enough): a partition
    /// it holds that the group moved on with is rebuilt from its keys here plus the
    /// changelog after its position, not from the whole changelog.
    pub restored_positions: Option<crate::egress::kafka::positions::Positions>,
    /// The CPUs the changelog reader may run on (not the shard's).
    pub helpers: Vec<usize>,
    /// The warm copies this instance keeps: standbys' (`ingest.kafka.standby_replicas`) and
    /// handed-over partitions'.
    pub standbys: Option<crate::ingest::kafka::standby::Standbys>,
    /// How long a handed-over partition's copy is kept (`ingest.kafka.handed_over_keep_ms`,
    /// at most the changelog positions' age limit); zero: not kept.
    pub keep_handed_over: std::time::Duration,
    /// This shard's checkpoint directory (a handover reads its checkpoint's changelog
    /// positions back from it).
    pub checkpoints: std::path::PathBuf,
}

/// The service's producers as the exactly_once sequence sees them (the group's metadata a
/// commit carries comes from the consumer).
struct Producers<'a> {
    sink: &'a mut KafkaSink,
    source: &'a KafkaSource,
}

impl Transactions for Producers<'_> {
    type Offsets = TopicPartitionList;
    type Committed = crate::egress::kafka::Committed;
    type Error = crate::ingest::kafka::KafkaError;

    fn overlaps(&self) -> bool {
        self.sink.overlaps()
    }
    fn acknowledged(&self, producer: usize) -> bool {
        self.sink.acknowledged(producer)
    }
    fn active(&self) -> usize {
        self.sink.active()
    }
    fn sent_since_switch(&self) -> bool {
        self.sink.sent_since_switch()
    }
    fn switch(&mut self) -> usize {
        self.sink.switch()
    }
    fn send_progress_at_flip(&mut self, producer: usize, seq: u64) -> bool {
        self.sink.send_progress_at_flip(producer, seq)
    }
    fn undelivered(&self) -> u64 {
        self.sink.undelivered()
    }
    fn start_commit(
        &mut self,
        seq: u64,
        offsets: TopicPartitionList,
        producer: usize,
        progress_sent: bool,
    ) -> Result<(), Self::Error> {
        let group = self.source.group_metadata();
        self.sink
            .start_commit(seq, offsets, group, producer, progress_sent)
    }
    fn poll_commit(&mut self) -> Option<Result<Self::Committed, Self::Error>> {
        self.sink.poll_commit()
    }
}

impl Epochs for Producers<'_> {
    fn begin_epoch(&mut self) -> bool {
        self.sink.begin_epoch()
    }
    fn settled_before_open_epoch(&self) -> bool {
        self.sink.settled_before_open_epoch()
    }
    fn commit_offsets_to_group(&mut self, offsets: &[crate::state::checkpoint::PartitionOffset]) {
        self.source.commit_offsets_to_group(offsets);
    }
}

impl ShardKafka {
    /// Take up to `records_max` records and apply each (unless the producer has too many
    /// Score records or bytes unacknowledged: then none, counted, and the broker's lag grows
    /// instead of a queue here; `config::producer_queue` sizes the queue for what comes
    /// after). Returns the records taken.
    pub fn take(
        &mut self,
        core: &mut ShardCore,
        fetched_ns: u64,
        egress: &mut Egress,
        counters: &ShardCounters,
        latency: &mut ShardLatency,
    ) -> usize {
        self.source.refresh_watermarks(fetched_ns);
        let ShardKafka {
            source, sink, txn, ..
        } = self;
        let source = &*source;
        if !txn.intake_open(&Producers { sink, source }, fetched_ns, counters) {
            // exactly_once: Scores taken now would join the transaction being committed.
            return 0;
        }
        // Nothing to take: no look at the producer's queue either (its length is behind a lock
        // librdkafka's threads take).
        if self.source.idle(fetched_ns) {
            return 0;
        }
        if self.sink.in_flight() >= self.in_flight_max
            || self.sink.bytes_in_flight() >= self.in_flight_bytes_max
        {
            counters.kafka_backpressure_cycles.inc();
            return 0;
        }
        let records_max = self.records_max;
        let committing = self.txn.commit.is_some();
        let ShardKafka { source, sink, .. } = self;
        let mut sink = EgressSink {
            egress,
            kafka: Some(sink),
            counters,
            latency,
        };
        let taken = source.poll(records_max, fetched_ns, |rec| {
            let reply = match sink.kafka.as_deref_mut() {
                Some(k) => k.begin_source(
                    rec.owned,
                    rec.offset,
                    rec.key,
                    rec.available_ns,
                    rec.timestamp_ns,
                ),
                None => 0,
            };
            let applied = core.on_record(
                &KafkaRecord {
                    value: rec.value,
                    source: rec.source_tag,
                    timestamp_ns: if rec.timestamp_ns == 0 {
                        fetched_ns
                    } else {
                        rec.timestamp_ns
                    },
                    fetched_ns,
                    reply,
                },
                &mut sink,
            );
            if let Some(k) = sink.kafka.as_deref_mut() {
                match applied {
                    Err(reason) => {
                        k.dead_letter(reply, rec.message, rec.timestamp_ns, reason, counters)
                    }
                    Ok(()) => k.keep_headers(reply, rec.message, || core.waiting_for_cold() > 0),
                }
            }
        });
        if committing {
            counters.kafka_records_while_committing.add(taken as u64);
        }
        taken
    }

    fn input(&self, with_offsets: bool) -> Input {
        Self::input_of(&self.source, with_offsets)
    }

    fn input_of(source: &KafkaSource, with_offsets: bool) -> Input {
        Input {
            position: source.taken(),
            offsets: if with_offsets {
                source.offsets()
            } else {
                Vec::new()
            },
        }
    }

    /// With cold reads off the shard thread (`state.cold_reader`), a record's events may
    /// wait for a read past its cycle, while its offset is taken already. A checkpoint's
    /// offsets (and so a commit's) and a handover must cover only applied events, so when a
    /// flip is due or a rebalance waits while events wait, this turn does neither (true) and
    /// the next cycle waits for the reads before its flush: their Scores then go out before
    /// the flip, into the transaction (or epoch) it closes. Costs one cycle's delay; reads
    /// overlap serving the rest of the time. (Shards reading on their own thread land every
    /// read within its cycle: never true for them.)
    fn wait_for_cold(&mut self, cp: &Checkpointer, now_ns: u64, core: &ShardCore) -> bool {
        let wait = flip_waits_for_cold(core, cp, self.txn.in_flight(), now_ns, &self.input(false));
        self.settle_next |= wait;
        wait
    }

    /// Between cycles, before `rebalance` and `checkpoint`: whatever asked the last cycle to
    /// wait for its cold reads has had it.
    pub fn turn_begins(&mut self) {
        self.settle_next = false;
    }

    /// The next cycle must wait for its cold reads before its flush (`wait_for_cold`, or the
    /// sink's room for record sources held for waiting events nearly used up).
    pub fn wants_settled(&self) -> bool {
        self.settle_next || self.sink.sources_filling()
    }

    /// Between cycles, after the flush: a checkpoint if due, and its Kafka side — the
    /// delivery mode's sequence (`shard::exactly_once`, `shard::at_least_once`) over the real
    /// producers. Err: exactly_once must stop (the caller stops the shard).
    pub fn checkpoint(
        &mut self,
        cp: &mut Checkpointer,
        now_ns: u64,
        core: &mut ShardCore,
        counters: &ShardCounters,
    ) -> Result<(), String> {
        if self.failed || self.wait_for_cold(cp, now_ns, core) {
            return Ok(());
        }
        // Rebuilt keys going in (a few cycles: `ingest.kafka.restore_keys_per_cycle` a
        // cycle): no new flip until they are all in, so one transaction carries every key of
        // each rebuilt partition and marks it whole (a commit already on its way goes on).
        // The checkpoint is late by the import's time; the import waits only for a running
        // snapshot, which goes on meanwhile, so neither waits for the other for long.
        if self.importing() && !self.txn.in_flight() {
            return Ok(());
        }
        let max_event_ns = core.max_event_ns();
        if self.sink.transactional() {
            let ShardKafka {
                source, sink, txn, ..
            } = self;
            let source = &*source;
            let turned = txn.turn(
                &mut Producers { sink, source },
                cp,
                core.state_mut(),
                max_event_ns,
                now_ns,
                |with_offsets| Self::input_of(source, with_offsets),
                || source.offsets_list(),
                counters,
            );
            return match turned {
                Ok(Some(committed)) => {
                    Self::committed(&committed, counters);
                    mark_committed(&mut self.commit_mark);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => {
                    self.failed = true;
                    Err(e)
                }
            };
        }
        let ShardKafka {
            source, sink, acks, ..
        } = self;
        let source = &*source;
        acks.turn(
            &mut Producers { sink, source },
            cp,
            core.state_mut(),
            max_event_ns,
            now_ns,
            |with_offsets| Self::input_of(source, with_offsets),
        );
        Ok(())
    }

    /// exactly_once: checkpoint `seq` was not written (see `exactly_once::not_written`).
    fn not_written(
        &mut self,
        seq: u64,
        producer: usize,
        e: &dyn std::fmt::Display,
    ) -> Result<(), String> {
        let ShardKafka { source, sink, .. } = self;
        let source = &*source;
        let r = exactly_once::not_written(&mut Producers { sink, source }, seq, producer, e);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// A transaction committed: count it and what its changelog part held.
    fn committed(committed: &crate::egress::kafka::Committed, counters: &ShardCounters) {
        counters.kafka_transactions.inc();
        if let Some(sent) = committed {
            counters.kafka_changelog_records.add(sent.records);
            counters.kafka_changelog_tombstones.add(sent.tombstones);
            counters.kafka_changelog_markers.add(sent.markers);
            counters.kafka_changelog_bytes.add(sent.bytes);
        }
    }

    /// Group membership, between cycles: act on the rebalances librdkafka reported since the
    /// last turn (revoked partitions committed and handed over, assigned ones rebuilt and
    /// taken up). A handover blocks the shard for one checkpoint's commit (rare, and the
    /// rebalance waits for it); a rebuild does not (see `TakingUp`). Err: stop (a rebalance
    /// error, a failed handover or rebuild).
    pub fn rebalance(
        &mut self,
        cp: &mut Checkpointer,
        core: &mut ShardCore,
        counters: &ShardCounters,
    ) -> Result<(), String> {
        if self.member.is_none() || self.failed {
            return Ok(());
        }
        // Keys moving in or out while events wait for cold reads: not before those land
        // (`wait_for_cold`); the events are kept for then.
        let cold_waits = core.waiting_for_cold() > 0;
        if self.taking_up.is_some() {
            if cold_waits {
                self.settle_next = true;
                return Ok(());
            }
            // Later rebalance events wait (librdkafka sends none before the assignment call).
            return self.advance_take_up(cp, core, counters);
        }
        self.rebalances.extend(self.source.take_rebalances());
        if self.rebalances.is_empty() {
            return Ok(());
        }
        if cold_waits {
            self.settle_next = true;
            return Ok(());
        }
        for event in std::mem::take(&mut self.rebalances) {
            counters.kafka_rebalances.add(1);
            match event {
                RebalanceEvent::Revoke(list) => self.hand_over(&list, cp, core, counters)?,
                RebalanceEvent::Assign(list) => self.take_up(&list, cp, core, counters)?,
                RebalanceEvent::Failed(why) => {
                    self.failed = true;
                    return Err(format!("Kafka rebalance failed ({why}): stopping, so a restart rejoins the group from the last committed checkpoint"));
                }
            }
        }
        Ok(())
    }

    fn indices(&self, list: &[(String, i32)]) -> Vec<usize> {
        list.iter()
            .filter_map(|(t, p)| self.source.index_of(t, *p))
            .collect()
    }

    /// Revoked partitions: their records no longer taken, a checkpoint of now committed with
    /// their offsets and state changes, their keys dropped (not as deletions), and only then
    /// handed back to the group.
    fn hand_over(
        &mut self,
        list: &[(String, i32)],
        cp: &mut Checkpointer,
        core: &mut ShardCore,
        counters: &ShardCounters,
    ) -> Result<(), String> {
        let started = std::time::Instant::now();
        let idx = self.indices(list);
        self.source.freeze(&idx);
        self.finish_commit_in_flight(cp, core, counters)?;
        self.check_delivered(None)?;
        let input = self.input(true);
        let max_event_ns = core.max_event_ns();
        cp.force_next();
        let Some(seq) = cp.finish_with(core.state_mut(), max_event_ns, &input) else {
            self.failed = true;
            return Err("the checkpoint handing revoked Kafka partitions over was not written: stopping, so a restart rejoins the group from the last committed checkpoint".into());
        };
        self.commit_written(seq, counters)?;
        let exporting = std::time::Instant::now();
        let kept = self.keep_handed_over(&idx, seq, core);
        let export_ms = exporting.elapsed().as_millis() as u64;
        let mut keys = 0;
        for tag in idx.iter().filter_map(|&i| self.source.tag_at(i)) {
            keys += core
                .state_mut()
                .drop_partition(tag)
                .map_err(|e| format!("dropping a revoked partition: {e}"))?;
        }
        // Counted before the gauges say so (`cluster status` never shows a move uncounted).
        counters.kafka_partitions_moved_out.add(idx.len() as u64);
        exactly_once::raise_max(
            &counters.kafka_handover_max_ns,
            started.elapsed().as_nanos() as u64,
        );
        self.source
            .release(&idx)
            .map_err(|e| format!("handing revoked partitions back: {e}"))?;
        tracing::info!(partitions = ?list, checkpoint = seq, keys, kept, export_ms, handover_ms = started.elapsed().as_millis() as u64, "Kafka partitions handed over");
        Ok(())
    }

    /// Handed-over partitions' keys kept as copies at the changelog position their handover's
    /// transaction committed (see `Standbys::keep`), for a comeback in this run. The export
    /// (one pass over the hot table, one over the spill store, into a buffer per partition) is
    /// on the shard thread, inside the handover's pause (`sluice_kafka_handover_max_seconds`),
    /// and bounded by the room `standby_keys_max` leaves; making the copy of it (a map of
    /// every image) is on a helper thread. Measured in bench/README.md, "Taking back".
    /// Best effort: without the positions (the changelog does not hold the whole state) or
    /// room, the partitions are not kept and a comeback reads its whole changelog partition, as
    /// before; one that comes back before its copy is in does too (and so, should no thread
    /// start). The keys exported.
    fn keep_handed_over(&self, idx: &[usize], seq: u64, core: &ShardCore) -> u64 {
        use crate::egress::kafka::positions::{unix_ms_now, Positions};
        let Some(member) = &self.member else {
            return 0;
        };
        let (Some(standbys), false) = (&member.standbys, member.keep_handed_over.is_zero()) else {
            return 0;
        };
        // Written by the committer once the transaction committed.
        let dir = crate::state::checkpoint::path_of(&member.checkpoints, seq);
        let Some(positions) = Positions::read_usable(&dir, unix_ms_now(), member.keep_handed_over)
        else {
            tracing::info!(checkpoint = seq, "handed-over partitions not kept: no changelog positions beside the handover's checkpoint (the changelog does not hold its whole state)");
            return 0;
        };
        let mut kept = Vec::with_capacity(idx.len());
        for tag in idx.iter().filter_map(|&i| self.source.tag_at(i)) {
            let c = member.changelog.partition_of(tag);
            if let Some((c, &at)) = c.and_then(|c| Some((c, positions.next.get(&c)?))) {
                kept.push((tag, c, at));
            }
        }
        if kept.is_empty() {
            return 0;
        }
        let keys_max = member.config.ingest.kafka.standby_keys_max;
        let changelogs: Vec<i32> = kept.iter().map(|&(_, c, _)| c).collect();
        let room = standbys.room(&changelogs, keys_max) as u64;
        let tags: Vec<u64> = kept.iter().map(|&(tag, _, _)| tag).collect();
        let exported = match core.state().export_partitions(&tags, room) {
            Ok(Some(images)) => kept
                .iter()
                .zip(images)
                .map(|(&(_, c, at), image)| (c, at, image))
                .collect::<Vec<_>>(),
            Ok(None) => {
                tracing::warn!(room, keys_max, "handed-over partitions not kept: more keys than ingest.kafka.standby_keys_max leaves room for");
                return 0;
            }
            Err(e) => {
                tracing::warn!("handed-over partitions not kept: {e}");
                return 0;
            }
        };
        let keys = exported.iter().map(|(_, _, image)| image.records).sum();
        let words = core.state().plan().words();
        let (standbys, keep) = (standbys.clone(), member.keep_handed_over);
        let make = move || {
            for (c, at, image) in exported {
                let Some(copy) = rebuild::local_copy(&image, words, at) else {
                    tracing::warn!(
                        changelog_partition = c,
                        "a handed-over partition not kept: a malformed record in its state"
                    );
                    continue;
                };
                let n = copy.images.len();
                if !standbys.keep(c, copy, keep, keys_max) {
                    tracing::warn!(changelog_partition = c, keys = n, keys_max, "a handed-over partition not kept: the copies would pass ingest.kafka.standby_keys_max");
                }
            }
        };
        let spawned = crate::topology::with_cpus(&member.helpers, || {
            std::thread::Builder::new()
                .name("sluice-keep".into())
                .spawn(make)
        });
        if let Err(e) = spawned {
            tracing::warn!("handed-over partitions not kept: starting a thread: {e}");
        }
        keys
    }

    /// Assigned partitions: each one's state kept (the restored checkpoint's, if the group
    /// has not moved on from it) or rebuilt from its changelog partition, then taken up from
    /// the group's committed offset.
    fn take_up(
        &mut self,
        list: &[(String, i32)],
        cp: &mut Checkpointer,
        core: &mut ShardCore,
        counters: &ShardCounters,
    ) -> Result<(), String> {
        if list.is_empty() {
            // The cooperative protocol's second round: nothing to take up, but librdkafka
            // waits for the call all the same.
            return self
                .source
                .activate(&[], crate::config::KafkaStart::Earliest)
                .map_err(|e| format!("taking up assigned partitions: {e}"));
        }
        // No snapshot may run while records move in.
        self.finish_commit_in_flight(cp, core, counters)?;
        let Some(member) = &mut self.member else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let config = &member.config;
        let committed = changelog::committed_offsets(config, list)
            .map_err(|e| format!("taking up assigned partitions: {e}"))?;
        let restored = member.restored.take();
        let next_of = |offsets: &[crate::state::checkpoint::PartitionOffset], t: &str, p: i32| {
            offsets
                .iter()
                .find(|o| o.topic == t && o.partition == p)
                .map(|o| o.next)
        };
        if let Some(local) = &restored {
            // Held at the restored checkpoint but not assigned now: another member's.
            let not_assigned = local
                .iter()
                .filter(|o| !list.iter().any(|(t, p)| *t == o.topic && *p == o.partition))
                .filter_map(|o| self.source.index_of(&o.topic, o.partition))
                .filter_map(|i| self.source.tag_at(i));
            for tag in not_assigned {
                core.state_mut()
                    .drop_partition(tag)
                    .map_err(|e| format!("dropping a partition not assigned: {e}"))?;
            }
        }
        let mut take = Vec::with_capacity(list.len());
        let mut rebuild = changelog::ChangelogSpec {
            topic: member.changelog.topic.clone(),
            partitions: Vec::new(),
            // Read only.
            marks_whole: false,
        };
        let mut kept = 0;
        let mut rebuilding = Vec::new();
        let positions = member.restored_positions.take();
        let words = core.state().plan().words();
        // The own older checkpoint's keys of partitions rebuilt over them.
        let mut local = std::collections::HashMap::new();
        // The input partition of each one rebuilt (by source tag), should its changelog fail.
        let mut inputs = std::collections::HashMap::new();
        for (t, p) in list {
            let Some((i, tag)) = self
                .source
                .index_of(t, *p)
                .and_then(|i| Some((i, self.source.tag_at(i)?)))
            else {
                // Not one of the input partitions the group formed over: added to the topic
                // since (the topic watch names it, with what to do).
                tracing::warn!(topic = %t, partition = p, "Kafka partition assigned by the group is not one this instance was started with (added to the topic since?): not taken");
                continue;
            };
            let group_next = next_of(&committed, t, *p);
            let local_next = restored.as_deref().and_then(|r| next_of(r, t, *p));
            if local_next.is_some() && local_next == group_next {
                kept += 1;
            } else {
                // Whatever this state holds of it is older than what the group committed; if
                // the changelog's position at the restored checkpoint is known, what it holds
                // is the base the changelog is read over from there.
                let c = member.changelog.partition_of(tag);
                let at = c.and_then(|c| positions.as_ref()?.next.get(&c).copied());
                if let (Some(c), Some(at), Some(_)) = (c, at, local_next) {
                    // A scan of the hot table and the spill store on the shard thread: only
                    // at the first assignment after a start, before any Kafka record is
                    // served; UDP, if on, waits for it.
                    let image = core
                        .state()
                        .export_partition(tag)
                        .map_err(|e| format!("copying a partition's older state: {e}"))?;
                    match rebuild::local_copy(&image, words, at) {
                        Some(copy) => {
                            local.insert(c, copy);
                        }
                        None => {
                            tracing::warn!(topic = %t, partition = p, "a malformed record in this partition's older state: rebuilt from its whole changelog")
                        }
                    }
                }
                core.state_mut()
                    .drop_partition(tag)
                    .map_err(|e| format!("dropping a stale partition: {e}"))?;
                if let Some(c) = member.changelog.partition_of(tag) {
                    rebuild.partitions.push((tag, c));
                    inputs.insert(tag, (t.clone(), *p));
                    rebuilding.push(i);
                }
            }
            take.push((i, group_next));
        }
        let mut taking_up = TakingUp {
            list: list.to_vec(),
            take,
            kept,
            started,
            stage: RebuildStage::Moving,
            cancel: Arc::new(AtomicBool::new(false)),
            import_seq: None,
        };
        if !rebuild.partitions.is_empty() {
            // Restoring before the warm copies are taken: the standby thread then leaves them.
            self.source.restoring(&rebuilding);
            let mut warm: std::collections::HashMap<i32, _> = member
                .standbys
                .as_ref()
                .map(|s| {
                    rebuild
                        .partitions
                        .iter()
                        .filter_map(|&(_, c)| Some((c, s.take(c)?)))
                        .collect()
                })
                .unwrap_or_default();
            // Either base is the state at its offset: the one further on leaves less to read.
            for (c, own) in local {
                if warm.get(&c).is_none_or(|w| w.next_offset < own.next_offset) {
                    warm.insert(c, own);
                }
            }
            let fallback = rebuild::Fallback::new(&rebuild, &inputs, &committed);
            let (config, cancel) = (config.clone(), taking_up.cancel.clone());
            let reader = crate::topology::with_cpus(&member.helpers, || {
                std::thread::Builder::new()
                    .name("sluice-rebuild".into())
                    .spawn(move || {
                        rebuild::read(
                            &config,
                            &rebuild,
                            words,
                            warm,
                            &fallback,
                            (&|_| {}, &cancel),
                        )
                    })
            })
            .map_err(|e| format!("starting the changelog reader: {e}"))?;
            taking_up.stage = RebuildStage::Reading(reader);
            tracing::info!(partitions = ?list, rebuilding = rebuilding.len(), "Kafka partitions assigned: rebuilding from the changelog, the others served meanwhile");
        }
        self.taking_up = Some(taking_up);
        self.advance_take_up(cp, core, counters)
    }

    /// A turn of a rebuild in progress (see `TakingUp`): once the reader is done, a slice of
    /// keys into the state; once every key is in, the partitions are taken up.
    fn advance_take_up(
        &mut self,
        cp: &Checkpointer,
        core: &mut ShardCore,
        counters: &ShardCounters,
    ) -> Result<(), String> {
        let (Some(t), Some(member)) = (self.taking_up.as_mut(), self.member.as_ref()) else {
            return Ok(());
        };
        let keys_per_cycle = member.config.ingest.kafka.restore_keys_per_cycle;
        let start = member.config.ingest.kafka.start;
        let failed = |list: &[(String, i32)], e: &dyn std::fmt::Display| {
            format!("rebuilding assigned partitions {list:?} from the changelog: {e}: stopping, so a restart rejoins the group from the last committed checkpoint")
        };
        match std::mem::replace(&mut t.stage, RebuildStage::Moving) {
            RebuildStage::Reading(reader) if !reader.is_finished() => {
                t.stage = RebuildStage::Reading(reader);
                return Ok(());
            }
            RebuildStage::Reading(reader) => {
                let read = reader
                    .join()
                    .map_err(|_| failed(&t.list, &"the reader panicked"))?
                    .map_err(|e| failed(&t.list, &e))?;
                let topic = member.changelog.topic.clone();
                t.stage = RebuildStage::Importing(Import::new(read, &topic));
                t.import_seq = Some(cp.next_seq());
            }
            other => t.stage = other,
        }
        let mut rebuilt = rebuild::Rebuilt::default();
        if let RebuildStage::Importing(import) = &mut t.stage {
            let done = import
                .step(core.state_mut(), keys_per_cycle)
                .map_err(|e| failed(&t.list, &e))?;
            if !done {
                return Ok(());
            }
            rebuilt = import.rebuilt();
        }
        let Some(t) = self.taking_up.take() else {
            return Ok(());
        };
        if let RebuildStage::Importing(import) = &t.stage {
            let seq = cp.next_seq();
            if t.import_seq == Some(seq) {
                let parts = import
                    .tags()
                    .filter_map(|tag| {
                        let o = self
                            .source
                            .owned()
                            .iter()
                            .find(|o| o.id.source_tag() == tag)?;
                        Some((tag, o.topic.clone(), o.id.partition))
                    })
                    .collect();
                self.sink.imported_whole(seq, parts);
            } else {
                tracing::debug!(partitions = ?t.list, "a checkpoint flipped while the rebuilt keys went in: their changelog partitions are not marked whole");
            }
        }
        core.raise_max_event_ns(rebuilt.max_event_ns);
        // Counted before the gauges say so (`cluster status` never shows a move uncounted,
        // and a reader that saw the partitions active reads the restore's figures too: the
        // scale-out bench once read them between the two and saw no rebuild).
        counters.kafka_partitions_moved_in.add(t.take.len() as u64);
        let ns = t.started.elapsed().as_nanos() as u64;
        counters
            .changelog_restored_keys
            .set(counters.changelog_restored_keys.get() + rebuilt.keys);
        counters.changelog_warm_keys.add(rebuilt.warm_keys);
        counters.changelog_local_keys.add(rebuilt.local_keys);
        counters.changelog_input_replays.add(rebuilt.input_replays);
        counters
            .changelog_replayed_records
            .add(rebuilt.replayed_records);
        counters
            .changelog_restored_bytes
            .set(counters.changelog_restored_bytes.get() + rebuilt.bytes);
        counters
            .changelog_restore_ns
            .set(counters.changelog_restore_ns.get() + ns);
        self.source
            .activate(&t.take, start)
            .map_err(|e| format!("taking up assigned partitions: {e}"))?;
        tracing::info!(partitions = ?t.list, kept = t.kept, rebuilt_keys = rebuilt.keys, warm_keys = rebuilt.warm_keys, local_keys = rebuilt.local_keys, rebuilt_bytes = rebuilt.bytes, took_ms = format!("{:.1}", ns as f64 / 1e6), "Kafka partitions taken up");
        Ok(())
    }

    /// A rebuild is putting keys in: the shard turns without parking until it is done.
    pub fn importing(&self) -> bool {
        self.taking_up
            .as_ref()
            .is_some_and(|t| matches!(t.stage, RebuildStage::Importing(_)))
    }

    fn commit_failed(
        &mut self,
        seq: u64,
        e: &crate::ingest::kafka::KafkaError,
        counters: &ShardCounters,
    ) -> Result<(), String> {
        self.failed = true;
        Err(exactly_once::commit_failed(seq, e, counters))
    }

    /// exactly_once: a checkpoint on its way to its commit needs the shard to go on turning
    /// (it copies slices and collects the writer's answer); the committer wakes it.
    pub fn commit_needs_turns(&self) -> bool {
        self.txn.needs_turns()
    }

    /// After each flush: has the producer given up on (or refused) any Score or alert record?
    /// Then downstream will never get it, and no checkpoint, transaction or group commit may
    /// move past it: the awaiting checkpoint is dropped and Err tells the caller to stop the
    /// service (after its drain), so a restart replays from the last committed checkpoint (or
    /// the group's offset without `state.dir`) and sends it again — Flink's failover, and
    /// Kafka Streams' default production-exception handling. It happens only when
    /// `kafka.producer."message.timeout.ms"` is set above 0 (sluice's default retries forever
    /// and lets back-pressure stop intake instead) or the producer refuses a record.
    ///
    /// Also a consumer that met a fatal error (a static member fenced by another with its
    /// group.instance.id) takes no record again: the same stop, naming it.
    pub fn check_delivered(&mut self, cp: Option<&Checkpointer>) -> Result<(), String> {
        if self.failed {
            return Ok(());
        }
        let lost = self.sink.undelivered();
        let stop = match (lost, self.source.fatal()) {
            (0, None) => return Ok(()),
            (0, Some(fatal)) => format!(
                "{fatal}: it takes no record again; stopping, so a restart replays from the last committed checkpoint"
            ),
            // A fatal producer error purges its queue: then it is the cause, said first.
            (lost, _) => match self.sink.fatal() {
                Some(fatal) => format!(
                    "{fatal}; the {lost} Kafka Score record(s) it held were not sent, and no checkpoint or offset commit moves past them: stopping so a restart replays from the last committed one and sends them again"
                ),
                None => format!(
                    "{lost} Kafka Score record(s) were not delivered (see the error above); no checkpoint or offset commit moves past them: stopping so a restart replays from the last committed one and sends them again"
                ),
            },
        };
        self.failed = true;
        if let Some(cp) = cp {
            self.acks.drop_awaiting(cp);
        }
        Err(stop)
    }

    /// exactly_once, checkpoint `seq` durable: commit its transaction with the offsets.
    fn commit_written(&mut self, seq: u64, counters: &ShardCounters) -> Result<(), String> {
        // A Score refused outside librdkafka's transaction bookkeeping must not commit as if
        // it were in the transaction (one given up on would fail the commit anyway).
        self.check_delivered(None)?;
        let active = self.sink.active();
        self.commit_waited(seq, self.source.offsets_list(), (active, false), counters)
    }

    /// Commit checkpoint `seq`'s transaction with `offsets` and wait for it (handover,
    /// shutdown). `on`: its producer, and whether its progress record is in it already.
    fn commit_waited(
        &mut self,
        seq: u64,
        offsets: TopicPartitionList,
        on: (usize, bool),
        counters: &ShardCounters,
    ) -> Result<(), String> {
        let group = self.source.group_metadata();
        match self.sink.commit_epoch(seq, offsets, group, on.0, on.1) {
            Ok(committed) => {
                Self::committed(&committed, counters);
                mark_committed(&mut self.commit_mark);
                Ok(())
            }
            Err(e) => self.commit_failed(seq, &e, counters),
        }
    }

    /// exactly_once at shutdown: the checkpoint on its way to its commit, finished and
    /// committed (waited for: the process exits next).
    fn finish_commit_in_flight(
        &mut self,
        cp: &mut Checkpointer,
        core: &mut ShardCore,
        counters: &ShardCounters,
    ) -> Result<(), String> {
        match self.txn.commit.take() {
            None => Ok(()),
            Some(exactly_once::Commit::Writing {
                seq,
                offsets,
                producer,
                progress_sent,
                ..
            }) => {
                let written = match cp.take_outcome() {
                    Some(r) => r,
                    None => cp.wait_written(core.state_mut()),
                };
                match written {
                    Ok(w) => {
                        crate::invariant_eq!(w, seq);
                        self.check_delivered(None)?;
                        self.commit_waited(seq, offsets, (producer, progress_sent), counters)
                    }
                    Err(e) => self.not_written(seq, producer, &e),
                }
            }
            Some(exactly_once::Commit::Committing { seq, .. }) => match self.sink.wait_commit() {
                Ok(committed) => {
                    Self::committed(&committed, counters);
                    mark_committed(&mut self.commit_mark);
                    Ok(())
                }
                Err(e) => self.commit_failed(seq, &e, counters),
            },
        }
    }

    /// Without durable state (no checkpoints): at most once a second, commit the group's
    /// offsets at a cycle end where no Score record is unacknowledged (so a restart, which
    /// resumes there, loses none). Never waits: a blocking flush here held the shard up to
    /// 500 ms a second (10k/s, `shards.idle_spins=20`: p50 2.5 s instead of 7.4 ms). Under
    /// continuous load the committed offset can trail until the producer catches up.
    pub fn commit_without_checkpoints(&mut self, now_ns: u64) {
        if self.failed || now_ns < self.next_group_commit_ns || self.sink.in_flight() > 0 {
            return;
        }
        self.next_group_commit_ns = now_ns.saturating_add(1_000_000_000);
        self.source.commit_to_group();
    }

    /// Without checkpoints, at shutdown: the group's offsets once every Score is acknowledged,
    /// waited for.
    pub fn final_group_commit(&mut self) {
        if self.failed {
            return;
        }
        if self.sink.settle(Duration::from_secs(10)) && self.check_delivered(None).is_ok() {
            self.source.commit_to_group_sync();
        } else {
            tracing::error!("Scores still unacknowledged at shutdown: the group's offsets stay where they were (a restart re-sends from there)");
        }
    }

    /// At shutdown, after the drain: the last checkpoint and its commit.
    pub fn final_checkpoint(
        &mut self,
        cp: &mut Checkpointer,
        core: &mut ShardCore,
        counters: &ShardCounters,
    ) {
        if self.failed {
            return;
        }
        let input = self.input(true);
        let max_event_ns = core.max_event_ns();
        if !self.sink.transactional() {
            if !self.sink.settle(Duration::from_secs(10)) {
                tracing::error!("Scores still unacknowledged at shutdown: no last checkpoint (a restart replays from the previous one)");
                self.acks.drop_awaiting(cp);
                return;
            }
            if let Err(e) = self.check_delivered(Some(cp)) {
                tracing::error!("{e}");
                return;
            }
            // Everything is acknowledged: the checkpoint waiting for that commits now.
            let ShardKafka {
                source, sink, acks, ..
            } = self;
            acks.release_now(&mut Producers { sink, source }, cp);
            if cp
                .finish_with(core.state_mut(), max_event_ns, &input)
                .is_some()
            {
                // The process exits next: wait for this one (lag tools only).
                self.source.commit_to_group_sync();
            }
            return;
        }
        // Stopping: the brokers get egress.kafka.shutdown_commit_ms more, not the transaction
        // timeout twice over (commit, then abort), so a stop while they are away ends in time.
        self.sink.hurry();
        if let Err(e) = self
            .finish_commit_in_flight(cp, core, counters)
            .and_then(|()| self.check_delivered(Some(cp)))
        {
            tracing::error!("{e}");
            return;
        }
        // finish_with returns the seq only once the checkpoint is durable.
        if let Some(seq) = cp.finish_with(core.state_mut(), max_event_ns, &input) {
            if let Err(e) = self.commit_written(seq, counters) {
                tracing::error!("{e}");
            }
        }
    }
}
