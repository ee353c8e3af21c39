//! Kafka mode: partitions owned by shards, the exactly_once sequence of `shard::kafka`, and
//! the twin broker whose committed transactions are what survives a crash.

use crate::shard::KafkaRecord;
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

/// A shard's exactly_once side, in the sequence `shard::kafka::ShardKafka` follows: take
/// records while no checkpoint is on its way; flip one with the offsets taken so far; once
/// the writer has it on disk, commit the transaction (its Scores, and the offsets and the
/// checkpoint's seq in the progress record) — a step of its own, so a crash can land between
/// the checkpoint and the commit; then take records again. With `overlap_commits` records
/// are taken from the flip on, their Scores in the next transaction (`next`; the product's
/// second producer); a checkpoint not written while `next` holds Scores stops the process.
#[derive(Default)]
pub(super) struct Txn {
    /// (partition index, next offset) of the partitions this shard owns.
    pub(super) positions: Vec<(usize, u64)>,
    pub(super) phase: Phase,
    /// Scores produced in the open transaction (lost if the process dies before it commits).
    pub(super) pending: Vec<ScoreOut>,
    /// Scores produced after the flip of the checkpoint on its way (`overlap_commits`): the
    /// next transaction's, lost too if the process dies before that one commits.
    pub(super) next: Vec<ScoreOut>,
}

#[derive(Default)]
pub(super) enum Phase {
    #[default]
    Open,
    Writing {
        seq: u64,
        offsets: Vec<PartitionOffset>,
    },
    Committing {
        seq: u64,
        offsets: Vec<PartitionOffset>,
    },
}

/// The simulated broker: what survives a crash. A transaction's Scores and progress record
/// become visible together when it commits; an open one is aborted by the crash.
#[derive(Default)]
pub(super) struct Broker {
    /// Committed Scores: (key, seq) -> the count the Score carried.
    pub(super) scores: std::collections::BTreeMap<(u64, u64), u64>,
    /// Per shard: the checkpoint its last committed transaction names, and the offsets
    /// committed with it.
    pub(super) progress: Vec<Option<(u64, Vec<PartitionOffset>)>>,
}

impl World {
    /// Kafka: events of `key` in the records below its partition's committed offset.
    pub(super) fn committed_events(&self, key: u64) -> usize {
        let mut n = 0;
        for (p, part) in self.partitions.iter().enumerate() {
            let next = self.broker.progress[part.shard]
                .as_ref()
                .and_then(|(_, offs)| offs.iter().find(|o| o.partition == p as i32))
                .map_or(0, |o| o.next as usize);
            for rec in part.records.iter().take(next) {
                n += rec.iter().filter(|&&i| self.log[i].key == key).count();
            }
        }
        n
    }

    /// Kafka, every record committed: the state is the fold of everything, every Observation
    /// has exactly one committed Score (checked at each commit) carrying its count, and a
    /// restart restores all of it.
    pub(super) fn end_kafka(&mut self) -> Result<(), String> {
        self.check_final("at the end")?;
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

    /// Kafka: the shard takes its next 1-3 records (none while a checkpoint is on its way to
    /// its commit, unless the seed overlaps commits) and applies them in offset order; their
    /// Scores join the open transaction (the next one, while a checkpoint is on its way).
    pub(super) fn take(&mut self, id: usize) -> Result<(), String> {
        let n = 1 + self.rng.below(3);
        let overlap = self.report.overlap_commits;
        let node = &mut self.nodes[id];
        let on_its_way = !matches!(node.txn.phase, Phase::Open);
        if (on_its_way && !overlap) || node.txn.positions.is_empty() {
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
            if !applied {
                return Err(format!("shard {id}: record {p}/{offset} did not decode"));
            }
            node.txn.positions[at].1 = offset + 1;
        }
        node.core.finish_cycle(self.now, &mut self.sink);
        let into = if on_its_way {
            self.report.scores_while_committing += self.sink.len() as u64;
            &mut node.txn.next
        } else {
            &mut node.txn.pending
        };
        into.extend(self.sink.drain(..).map(|(_, s)| s.score));
        self.mix(n << 16 | p as u64);
        self.refused(id)
    }

    /// Kafka: the checkpoint side of exactly_once (`ShardKafka::checkpoint`): copy the running
    /// snapshot's next slice; once written, move to the commit; or flip one if due, recording
    /// the offsets taken so far.
    pub(super) fn kafka_checkpoint(&mut self, id: usize) -> Result<(), String> {
        let node = &mut self.nodes[id];
        let max = node.core.max_event_ns();
        match std::mem::take(&mut node.txn.phase) {
            Phase::Writing { seq, offsets } => {
                node.cp.step(node.core.state_mut());
                node.txn.phase = match node.cp.take_outcome() {
                    None => Phase::Writing { seq, offsets },
                    Some(Ok(written)) if written == seq => Phase::Committing { seq, offsets },
                    // Not written, nothing taken since the flip: the transaction stays open;
                    // the next checkpoint commits its Scores too.
                    Some(_) if node.txn.next.is_empty() => {
                        self.report.checkpoints_failed += 1;
                        Phase::Open
                    }
                    // Scores in two transactions that cannot commit as one: the product stops
                    // (`ShardKafka::not_written`), and restarts from the last committed one.
                    Some(_) => {
                        self.report.checkpoints_failed += 1;
                        return self.crash(&format!(
                            "shard {id}: checkpoint {seq} not written with Scores in the next transaction: the service stops"
                        ));
                    }
                };
            }
            Phase::Committing { seq, offsets } => {
                node.txn.phase = Phase::Committing { seq, offsets };
            }
            Phase::Open => {
                let offsets: Vec<PartitionOffset> = node
                    .txn
                    .positions
                    .iter()
                    .map(|&(p, next)| PartitionOffset {
                        topic: "sim".into(),
                        partition: p as i32,
                        next: next as i64,
                    })
                    .collect();
                let input = Input {
                    // Rises with every record taken: the offsets' sum.
                    position: node.txn.positions.iter().map(|&(_, next)| next).sum(),
                    offsets: offsets.clone(),
                };
                if !node.cp.due(self.now, node.core.state(), &input) {
                    return Ok(());
                }
                if let Some(seq) = node
                    .cp
                    .tick_with(self.now, node.core.state_mut(), max, &input)
                {
                    node.txn.phase = Phase::Writing { seq, offsets };
                }
            }
        }
        Ok(())
    }

    /// Kafka: commit the transaction whose checkpoint is on disk: its Scores, and the
    /// progress record naming the checkpoint and its offsets, visible together.
    pub(super) fn commit(&mut self, id: usize) -> Result<(), String> {
        let node = &mut self.nodes[id];
        if !matches!(node.txn.phase, Phase::Committing { .. }) {
            return Ok(());
        }
        let Phase::Committing { seq, offsets } = std::mem::take(&mut node.txn.phase) else {
            return Ok(());
        };
        for s in node.txn.pending.drain(..) {
            if let Some(before) = self.broker.scores.insert((s.key, s.seq), s.count) {
                return Err(format!(
                    "shard {id}, transaction of checkpoint {seq}: a second Score for key {:#x} seq {} (counts {before} and {})",
                    s.key, s.seq, s.count
                ));
            }
        }
        // The next transaction (the other producer's) is the open one now.
        node.txn.pending = std::mem::take(&mut node.txn.next);
        self.broker.progress[id] = Some((seq, offsets));
        self.report.transactions += 1;
        self.mix(seq);
        Ok(())
    }
}
