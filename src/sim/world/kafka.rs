//! Kafka mode: partitions owned by shards, the service's own at_least_once and exactly_once
//! sequences (`shard::at_least_once`, `shard::exactly_once`), and the twin broker whose
//! delivered Scores and committed transactions are what survives a crash.

use crate::route;
use crate::shard::{
    flip_waits_for_cold, AtLeastOnce, Epochs, ExactlyOnce, KafkaRecord, Transactions,
};
use crate::state::checkpoint::{Input, PartitionOffset};
use crate::wire::ScoreOut;

use super::World;

/// A Kafka input partition: its records (1-4 events each, fixed when they were produced, so
/// a replay reads the same ones at the same offsets) and the shard that owns it.
pub(super) struct Partition {
    pub(super) records: Vec<Vec<usize>>,
    pub(super) shard: usize,
    pub(super) tag: u64,
}

/// A shard's Kafka side: its partitions' positions and the product's own sequences
/// (`shard::exactly_once` / `shard::at_least_once`, which `shard::kafka::ShardKafka` runs over
/// rdkafka) over the twin producers below. Taking records, flipping a checkpoint, starting
/// its commit once the writer has it on disk (exactly_once) or releasing it once its Scores
/// are acknowledged (at_least_once), and what a checkpoint not written does to the open
/// transactions are the service's code; the broker's side is a step of its own, so a crash
/// can land between the checkpoint and the commit.
pub(super) struct Txn {
    /// (partition index, next offset) of the partitions this shard owns.
    pub(super) positions: Vec<(usize, u64)>,
    pub(super) sequence: ExactlyOnce<Vec<PartitionOffset>>,
    pub(super) acks: AtLeastOnce,
    pub(super) producers: TwinProducers,
}

impl Txn {
    /// What the checkpointer records of the shard's input: the offsets taken (the position
    /// rises with every record taken: their sum).
    pub(super) fn input(&self) -> Input {
        Input {
            position: self.positions.iter().map(|&(_, next)| next).sum(),
            offsets: self
                .positions
                .iter()
                .map(|&(p, next)| PartitionOffset {
                    topic: "sim".into(),
                    partition: p as i32,
                    next: next as i64,
                })
                .collect(),
        }
    }

    pub(super) fn new(overlap_commits: bool, at_least_once: bool, broker: &mut Broker) -> Self {
        Self {
            positions: Vec::new(),
            sequence: ExactlyOnce::default(),
            acks: AtLeastOnce::default(),
            producers: TwinProducers {
                count: if overlap_commits { 2 } else { 1 },
                at_least_once,
                ack_unsent: broker.ack_unsent,
                txn: [broker.begin(), broker.begin()],
                ..TwinProducers::default()
            },
        }
    }
}

/// The service's epoch slots (`egress::kafka`'s `EPOCHS`): a flip may not open an epoch whose
/// slot still has Scores in flight.
const EPOCHS: u64 = 4;

/// A shard's transactional producer(s) on the twin broker: one, or two with
/// `overlap_commits`. What a crash takes: every open transaction (aborted), and Scores not
/// yet acknowledged.
#[derive(Default)]
pub(super) struct TwinProducers {
    count: usize,
    /// at_least_once: one idempotent producer, each Score tagged with the epoch it was sent
    /// in and delivered when the broker acknowledges it (`in_flight`, in send order).
    at_least_once: bool,
    /// `Sabotage::AckUnsent`.
    ack_unsent: bool,
    epoch: u64,
    in_flight: std::collections::VecDeque<(ScoreOut, u64)>,
    active: usize,
    sent_since_switch: bool,
    /// Each producer's open transaction: its id at the broker, its Scores (the first
    /// `appended` of them acknowledged: in the broker's log), and the progress records
    /// (checkpoint seqs) sent into it at flips.
    txn: [u64; 2],
    open: [Vec<ScoreOut>; 2],
    appended: [usize; 2],
    progress: [Vec<u64>; 2],
    /// The commit started and not yet performed by the broker: checkpoint seq, offsets,
    /// producer.
    started: Option<(u64, Vec<PartitionOffset>, usize)>,
    /// How the broker ended it, until `poll_commit` collects it.
    ended: Option<Result<(), String>>,
}

impl TwinProducers {
    /// Nothing in flight (at_least_once).
    pub(super) fn settled(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// A cycle's Scores, handed to the producer: at_least_once in flight with the open
    /// epoch; exactly_once into the active producer's open transaction.
    pub(super) fn send(&mut self, scores: impl Iterator<Item = ScoreOut>) {
        if self.at_least_once {
            let epoch = self.epoch;
            self.in_flight.extend(scores.map(|s| (s, epoch)));
            return;
        }
        let open = &mut self.open[self.active];
        let before = open.len();
        open.extend(scores);
        if open.len() > before {
            self.sent_since_switch = true;
        }
    }
}

impl Epochs for TwinProducers {
    fn begin_epoch(&mut self) -> bool {
        let next = self.epoch + 1;
        if self
            .in_flight
            .iter()
            .any(|&(_, e)| e % EPOCHS == next % EPOCHS)
        {
            return false;
        }
        self.epoch = next;
        true
    }
    fn settled_before_open_epoch(&self) -> bool {
        self.ack_unsent
            || self
                .in_flight
                .iter()
                .all(|&(_, e)| e % EPOCHS == self.epoch % EPOCHS)
    }
    fn commit_offsets_to_group(&mut self, _offsets: &[PartitionOffset]) {
        // The service restores from the checkpoint's own offsets; the group's are for lag
        // tools and a start without a checkpoint, which the simulation does not make.
    }
}

impl Transactions for TwinProducers {
    type Offsets = Vec<PartitionOffset>;
    type Committed = ();
    type Error = String;

    fn overlaps(&self) -> bool {
        self.count > 1
    }
    fn acknowledged(&self, producer: usize) -> bool {
        self.open
            .get(producer)
            .is_none_or(|open| open.len() == self.appended[producer])
    }
    fn active(&self) -> usize {
        self.active
    }
    fn sent_since_switch(&self) -> bool {
        self.sent_since_switch
    }
    fn switch(&mut self) -> usize {
        let closed = self.active;
        if self.count > 1 {
            self.active = (self.active + 1) % self.count;
        }
        self.sent_since_switch = false;
        closed
    }
    fn send_progress_at_flip(&mut self, producer: usize, seq: u64) -> bool {
        self.progress[producer].push(seq);
        true
    }
    fn undelivered(&self) -> u64 {
        0
    }
    fn start_commit(
        &mut self,
        seq: u64,
        offsets: Vec<PartitionOffset>,
        producer: usize,
        progress_sent: bool,
    ) -> Result<(), String> {
        if self.started.is_some() || self.ended.is_some() {
            return Err(format!(
                "checkpoint {seq}: a commit started while another one runs"
            ));
        }
        if !progress_sent {
            self.progress[producer].push(seq);
        }
        self.started = Some((seq, offsets, producer));
        Ok(())
    }
    fn poll_commit(&mut self) -> Option<Result<(), String>> {
        self.ended.take()
    }
}

/// The simulated broker: what survives a crash. A transaction's Scores and progress record
/// become visible together when it commits; an open one is aborted by the crash.
#[derive(Default)]
pub(super) struct Broker {
    /// The Score topic's log, in the order records were acknowledged (appended): key, seq,
    /// and the transaction that holds it. A read_committed reader sees the committed ones in
    /// this order.
    pub(super) log: Vec<(u64, u64, u64)>,
    /// Transactions committed (ids), and the next id to hand out.
    pub(super) committed: std::collections::BTreeSet<u64>,
    pub(super) next_txn: u64,
    /// `Sabotage::ReorderScores`.
    pub(super) reverse: bool,
    /// `Sabotage::AckUnsent` (the slowest broker too).
    pub(super) ack_unsent: bool,
    /// Committed Scores: (key, seq) -> the count the Score carried.
    pub(super) scores: std::collections::BTreeMap<(u64, u64), u64>,
    /// Per shard: the checkpoint its last committed transaction names, and the offsets
    /// committed with it.
    pub(super) progress: Vec<Option<(u64, Vec<PartitionOffset>)>>,
}

impl Broker {
    /// A new transaction's id.
    pub(super) fn begin(&mut self) -> u64 {
        self.next_txn += 1;
        self.next_txn
    }

    /// Producer `p`'s Scores not yet acknowledged are appended to the log.
    fn append(&mut self, twin: &mut TwinProducers, p: usize) {
        let from = twin.appended[p];
        let id = twin.txn[p];
        let at = self.log.len();
        self.log
            .extend(twin.open[p][from..].iter().map(|s| (s.key, s.seq, id)));
        if self.reverse {
            self.log[at..].reverse();
        }
        twin.appended[p] = twin.open[p].len();
    }

    /// What a read_committed reader of the Score topic sees: each key's Scores in its
    /// events' order.
    fn check_order(&self) -> Result<(), String> {
        let mut last = std::collections::BTreeMap::new();
        for &(key, seq, txn) in &self.log {
            if !self.committed.contains(&txn) {
                continue;
            }
            if let Some(prev) = last.insert(key, seq) {
                if seq <= prev {
                    return Err(format!(
                        "the Score topic holds key {key:#x}'s seq {seq} after its seq {prev}"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl World {
    /// Kafka: the next offset partition `p`'s owner takes; right after a restart, where it
    /// resumes (its restored checkpoint's offset; exactly_once checks it is the committed one).
    pub(super) fn position(&self, p: usize) -> usize {
        let part = &self.partitions[p];
        self.nodes[part.shard]
            .txn
            .positions
            .iter()
            .find(|&&(q, _)| q == p)
            .map_or(0, |&(_, next)| next as usize)
    }

    /// Kafka, right after a restart: events of `key` in the records below the offsets the
    /// partitions resume from.
    pub(super) fn committed_events(&self, key: u64) -> usize {
        let mut n = 0;
        for (p, part) in self.partitions.iter().enumerate() {
            for rec in part.records.iter().take(self.position(p)) {
                n += rec.iter().filter(|&&i| self.log[i].key == key).count();
            }
        }
        n
    }

    /// at_least_once, right after a restart: every Observation below the offsets the
    /// partitions resume from has a delivered Score (a checkpoint commits only once the
    /// Scores before its flip are acknowledged; the replay resumes after them).
    pub(super) fn check_scores_below_offsets(&self) -> Result<(), String> {
        for (p, part) in self.partitions.iter().enumerate() {
            let next = self.position(p);
            for (offset, rec) in part.records.iter().take(next).enumerate() {
                for e in rec.iter().map(|&i| &self.log[i]).filter(|e| !e.feedback) {
                    if !self.broker.scores.contains_key(&(e.key, e.seq)) {
                        return Err(format!(
                            "restarted at offset {next} of partition {p}: the Score of key {:#x} seq {} (offset {offset}) was never delivered",
                            e.key, e.seq
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Kafka, every record committed: the state is the fold of everything, every Observation
    /// has exactly one committed Score (checked at each commit) carrying its count, and a
    /// restart restores all of it. at_least_once: every record taken and every Score
    /// delivered; the shards stop as the service does (the awaiting checkpoint released, a
    /// last one written) and every Observation has a Score carrying its count (some
    /// delivered twice, each time with it).
    pub(super) fn end_kafka(&mut self) -> Result<(), String> {
        self.check_final("at the end")?;
        if self.report.at_least_once {
            for n in &mut self.nodes {
                let max = n.core.max_event_ns();
                let input = n.txn.input();
                let Txn {
                    acks, producers, ..
                } = &mut n.txn;
                acks.release_now(producers, &n.cp);
                if let Some(seq) = n.cp.finish_with(n.core.state_mut(), max, &input) {
                    self.committed[n.core.id] = self.committed[n.core.id].max(seq);
                }
            }
        } else {
            self.broker.check_order()?;
        }
        let mut count: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut observations = 0;
        for e in self.log.iter().filter(|e| !e.feedback) {
            observations += 1;
            let c = count.entry(e.key).or_default();
            *c += 1;
            if self.ttl_ns > 0 {
                // A restart at expiry starts the count over: ask the fold.
                *c = self
                    .oracle
                    .fold(e.key, e.seq as usize + 1)?
                    .map_or(0, |(r, _)| r.observations);
            }
            match self.broker.scores.get(&(e.key, e.seq)) {
                Some(got) if got == c => {}
                Some(got) => {
                    return Err(format!(
                        "the Score of key {:#x} seq {} says count {got}, it is the key's Observation {c}",
                        e.key, e.seq
                    ))
                }
                None => {
                    return Err(format!(
                        "no committed Score for key {:#x} seq {}",
                        e.key, e.seq
                    ))
                }
            }
        }
        if self.broker.scores.len() != observations {
            return Err(format!(
                "{} Scores committed for {observations} Observations",
                self.broker.scores.len()
            ));
        }
        self.report.scores_committed = observations as u64;
        self.stop();
        self.boot()?;
        self.check_final("after a restart")?;
        self.report.steps = self.step;
        self.stop();
        Ok(())
    }

    /// Kafka: the shard takes its next 1-3 records when the product's sequence lets it (no
    /// checkpoint on its way, or with `overlap_commits` once the flipped transaction's Scores
    /// are acknowledged) and applies them in offset order; their Scores go to the active
    /// producer's open transaction.
    pub(super) fn take(&mut self, id: usize) -> Result<(), String> {
        let n = 1 + self.rng.below(3);
        let node = &mut self.nodes[id];
        let txn = &mut node.txn;
        let on_its_way = txn.sequence.commit.is_some();
        if !txn
            .sequence
            .intake_open(&txn.producers, self.now, &node.counters)
            || txn.positions.is_empty()
        {
            return Ok(());
        }
        let at = self.rng.below(node.txn.positions.len() as u64) as usize;
        let (p, next) = node.txn.positions[at];
        let part = &self.partitions[p];
        for offset in next..(next + n).min(part.records.len() as u64) {
            let events = &part.records[offset as usize];
            let bytes = self
                .encoder
                .encode(events.iter().map(|&i| self.log[i].wire()))
                .to_vec();
            let applied = node.core.on_record(
                &KafkaRecord {
                    value: &bytes,
                    source: part.tag,
                    timestamp_ns: self.now,
                    fetched_ns: self.now,
                    reply: 0,
                },
                &mut self.sink,
            );
            if let Err(e) = applied {
                return Err(format!(
                    "shard {id}: record {p}/{offset} did not decode: {e}"
                ));
            }
            node.txn.positions[at].1 = offset + 1;
        }
        self.maybe_read_cold(id);
        self.feed_sweep(id);
        let node = &mut self.nodes[id];
        node.core.finish_cycle(self.now, &mut self.sink);
        if on_its_way {
            self.report.scores_while_committing += self.sink.len() as u64;
        }
        node.txn
            .producers
            .send(self.sink.drain(..).map(|(_, s)| s.score));
        self.mix(n << 16 | p as u64);
        self.refused(id)
    }

    /// Kafka: the shard's checkpoint turn, `ShardKafka::checkpoint` run by the same code —
    /// the delivery mode's sequence. exactly_once: advance the checkpoint on its way (start
    /// its commit once written; take up the next once its commit ended) or flip one if due; a
    /// stop the sequence decides (a checkpoint not written with Scores in the next
    /// transaction, a commit aborted) ends the process as the service's would.
    /// at_least_once: release the awaiting checkpoint once its Scores are acknowledged, or
    /// flip one if due.
    pub(super) fn kafka_checkpoint(&mut self, id: usize) -> Result<(), String> {
        let now = self.now;
        let node = &mut self.nodes[id];
        let max = node.core.max_event_ns();
        let Input { position, offsets } = node.txn.input();
        let input = |with_offsets| Input {
            position,
            offsets: if with_offsets {
                offsets.clone()
            } else {
                Vec::new()
            },
        };
        let (written_before, failed_before) = (node.cp.stats.written, node.cp.stats.failed);
        // A flip due while events wait for a deferred cold read: the service puts it off a
        // cycle that lands those reads before its flush; here that cycle's end and flush run
        // now, then the turn.
        let in_flight = node.txn.sequence.in_flight();
        if flip_waits_for_cold(&node.core, &node.cp, in_flight, now, &input(false)) {
            self.report.cold_settles += 1;
            node.core.settle_cold(&mut self.sink);
            node.txn
                .producers
                .send(self.sink.drain(..).map(|(_, s)| s.score));
        }
        if node.txn.producers.at_least_once {
            let Txn {
                acks, producers, ..
            } = &mut node.txn;
            acks.turn(
                producers,
                &mut node.cp,
                node.core.state_mut(),
                max,
                now,
                input,
            );
            // The service does not ask; the run keeps the newest committed for its checks (a
            // flip in the same turn clears the outcome, so from the counts).
            let stats = &node.cp.stats;
            self.report.checkpoints_committed += stats.written - written_before;
            self.report.checkpoints_failed += stats.failed - failed_before;
            if stats.written > written_before {
                self.committed[id] = self.committed[id].max(stats.last_seq);
            }
            return Ok(());
        }
        let Txn {
            sequence,
            producers,
            ..
        } = &mut node.txn;
        let turned = sequence.turn(
            producers,
            &mut node.cp,
            node.core.state_mut(),
            max,
            now,
            input,
            || offsets.clone(),
            &node.counters,
        );
        let failed = node.cp.stats.failed - failed_before;
        self.report.checkpoints_failed += failed;
        match turned {
            Ok(_) => Ok(()),
            Err(stop) => {
                self.report.sequence_stops += 1;
                self.crash(&format!("shard {id} stops: {stop}"))
            }
        }
    }

    /// Kafka: the broker's turn for shard `id` (at_least_once: `acknowledge`). exactly_once:
    /// one producer's Scores handed over are
    /// acknowledged (appended to the Score topic's log; with two producers, which one is the
    /// seed's pick, so their records interleave as the product's ordering rule allows), and
    /// the commit the shard started (if any) is performed — its producer's last Scores
    /// appended, then they and the newest progress record in its transaction, with its
    /// offsets, visible together — or, while faults are on, sometimes aborted (the shard then
    /// stops, as the service does).
    pub(super) fn commit(&mut self, id: usize) -> Result<(), String> {
        if self.report.at_least_once {
            return self.acknowledge(id);
        }
        let abort = self.faults_on() && route::mix64(self.seed ^ self.step ^ 0xAB07) % 40 == 0;
        let pick = (route::mix64(self.seed ^ self.step ^ 0xAC4) % 2) as usize;
        let twin = &mut self.nodes[id].txn.producers;
        self.broker.append(twin, pick % twin.count.max(1));
        let Some((seq, offsets, producer)) = twin.started.take() else {
            return Ok(());
        };
        self.broker.append(twin, producer);
        let scores = std::mem::take(&mut twin.open[producer]);
        let progress = std::mem::take(&mut twin.progress[producer]);
        let id_of = std::mem::replace(&mut twin.txn[producer], self.broker.begin());
        twin.appended[producer] = 0;
        if abort {
            self.report.transactions_aborted += 1;
            twin.ended = Some(Err("the broker aborted the transaction".into()));
            self.mix(seq ^ 0xAB07);
            return Ok(());
        }
        twin.ended = Some(Ok(()));
        // The service restores the checkpoint the newest progress record names.
        let named = progress.last().copied();
        if named != Some(seq) {
            return Err(format!(
                "shard {id}: the transaction committing checkpoint {seq} holds progress records {progress:?}"
            ));
        }
        for s in scores {
            if let Some(before) = self.broker.scores.insert((s.key, s.seq), s.count) {
                return Err(format!(
                    "shard {id}, transaction of checkpoint {seq}: a second Score for key {:#x} seq {} (counts {before} and {})",
                    s.key, s.seq, s.count
                ));
            }
        }
        self.broker.committed.insert(id_of);
        self.broker.progress[id] = Some((seq, offsets));
        self.report.transactions += 1;
        self.mix(seq);
        Ok(())
    }

    /// at_least_once: the broker's turn for shard `id`: a prefix of the Scores in flight is
    /// acknowledged (delivered), in send order; on a slow broker (a third of the seeds each:
    /// every 4th or 16th turn) Scores stay in flight for longer, across checkpoints' flips and
    /// writes.
    fn acknowledge(&mut self, id: usize) -> Result<(), String> {
        let twin = &mut self.nodes[id].txn.producers;
        let slow = if self.broker.ack_unsent {
            16
        } else {
            [1, 4, 16][(route::mix64(self.seed ^ 0x510) % 3) as usize]
        };
        let n = if route::mix64(self.seed ^ self.step ^ 0xAC6) % slow == 0 {
            route::mix64(self.seed ^ self.step ^ 0xAC5) % (twin.in_flight.len() as u64 + 1)
        } else {
            0
        };
        for (s, _) in twin.in_flight.drain(..n as usize) {
            // At least once: a replay may deliver a Score again, always with its count.
            if let Some(before) = self.broker.scores.insert((s.key, s.seq), s.count) {
                if before != s.count {
                    return Err(format!(
                        "shard {id}: two Scores for key {:#x} seq {} with counts {before} and {}",
                        s.key, s.seq, s.count
                    ));
                }
                self.report.scores_redelivered += 1;
            }
        }
        self.mix(n);
        Ok(())
    }
}
