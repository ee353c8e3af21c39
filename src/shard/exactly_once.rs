//! The exactly_once sequence of a shard's Kafka side, without Kafka: when records may be
//! taken, when a checkpoint flips and whose transaction its Scores close, when its commit
//! starts, and what a checkpoint that was not written does to the open transactions. The
//! service runs it over rdkafka (`shard::kafka`, `egress::kafka::KafkaSink`); the crash
//! simulation runs the same code over its twin broker (`sim`), so a change to these rules is
//! checked against every crash point the simulation reaches.

use crate::metrics::{Counter, ShardCounters};
use crate::state::checkpoint::{Checkpointer, Input};
use crate::state::KeyedState;

/// What the sequence needs of the Score producer(s): one, or two with `overlap_commits`
/// (Scores go on into the second one's transaction while the first one's commits).
pub trait Transactions {
    /// The consumed offsets a commit carries (rdkafka's list in the service).
    type Offsets;
    /// What a committed transaction reports (its changelog part in the service).
    type Committed;
    type Error: std::fmt::Display;

    /// Two producers: records are taken while a checkpoint is on its way.
    fn overlaps(&self) -> bool;
    /// Every Score handed to `producer` is acknowledged (a later one, sent by the other
    /// producer, then lands after all of them).
    fn acknowledged(&self, producer: usize) -> bool;
    /// The producer Scores go to now.
    fn active(&self) -> usize;
    /// Scores were handed over since the last `switch`.
    fn sent_since_switch(&self) -> bool;
    /// At a flip: Scores from now on go to the other producer (if two); returns the one
    /// holding the flipped transaction.
    fn switch(&mut self) -> usize;
    /// Checkpoint `seq`'s progress record into `producer`'s transaction now; false: its
    /// commit sends it.
    fn send_progress_at_flip(&mut self, producer: usize, seq: u64) -> bool;
    /// Score records the producer gave up on or refused (they never reach their topic).
    fn undelivered(&self) -> u64;
    /// Start committing `producer`'s transaction with `offsets` and checkpoint `seq`'s
    /// progress record; `poll_commit` says how it ended.
    fn start_commit(
        &mut self,
        seq: u64,
        offsets: Self::Offsets,
        producer: usize,
        progress_sent: bool,
    ) -> Result<(), Self::Error>;
    /// The running commit's end, once it has one (Err: it was aborted).
    fn poll_commit(&mut self) -> Option<Result<Self::Committed, Self::Error>>;
}

/// A checkpoint flipped, on its way to its transaction's commit. `producer` holds its
/// transaction; `ordered`: records are taken again meanwhile, into the other producer's
/// transaction (`overlap_commits`), which may start once every Score of this one is
/// acknowledged — so a later Score never lands before an earlier one.
pub enum Commit<O> {
    /// Being copied and written; the offsets are those it holds, committed with it.
    Writing {
        seq: u64,
        offsets: O,
        flipped_ns: u64,
        producer: usize,
        ordered: bool,
        /// Its progress record is in the transaction already (sent at the flip).
        progress_sent: bool,
    },
    /// On disk; its transaction is being committed.
    Committing {
        seq: u64,
        flipped_ns: u64,
        /// When the commit started (the checkpoint was on disk).
        written_ns: u64,
        producer: usize,
        ordered: bool,
    },
}

/// A shard's place in the sequence: the checkpoint on its way to its commit, if any.
pub struct ExactlyOnce<O> {
    pub commit: Option<Commit<O>>,
}

impl<O> Default for ExactlyOnce<O> {
    fn default() -> Self {
        Self { commit: None }
    }
}

/// Why the sequence stopped the shard: the state is ahead of what Kafka holds, or two open
/// transactions cannot commit as one. A restart replays from the last committed checkpoint.
pub type Stop = String;

impl<O> ExactlyOnce<O> {
    /// May records be taken now? Always without a commit on its way; with one, only with two
    /// producers and once the flipped transaction's Scores are all acknowledged.
    pub fn intake_open<T: Transactions>(
        &mut self,
        tx: &T,
        now_ns: u64,
        counters: &ShardCounters,
    ) -> bool {
        let (producer, ordered, flipped_ns) = match &mut self.commit {
            None => return true,
            Some(Commit::Writing {
                producer,
                ordered,
                flipped_ns,
                ..
            })
            | Some(Commit::Committing {
                producer,
                ordered,
                flipped_ns,
                ..
            }) => (*producer, ordered, *flipped_ns),
        };
        if !*ordered && tx.overlaps() && tx.acknowledged(producer) {
            *ordered = true;
            intake_paused(flipped_ns, now_ns, counters);
        }
        *ordered
    }

    /// A checkpoint on its way needs the shard to go on turning (it copies slices and
    /// collects the writer's answer).
    pub fn needs_turns(&self) -> bool {
        matches!(self.commit, Some(Commit::Writing { .. }))
    }

    /// A checkpoint flipped and not yet committed (no other flips before it ends).
    pub fn in_flight(&self) -> bool {
        self.commit.is_some()
    }

    /// Between cycles: advance the checkpoint on its way, or flip one if due (`input`: the
    /// source's position, with its offsets when `true`; `offsets`: the same offsets for the
    /// commit). Ok(Some): a transaction committed this turn. Err: stop the shard.
    #[allow(clippy::too_many_arguments)]
    pub fn turn<T: Transactions<Offsets = O>>(
        &mut self,
        tx: &mut T,
        cp: &mut Checkpointer,
        state: &mut KeyedState,
        max_event_ns: u64,
        now_ns: u64,
        input: impl Fn(bool) -> Input,
        offsets: impl FnOnce() -> O,
        counters: &ShardCounters,
    ) -> Result<Option<T::Committed>, Stop> {
        if self.commit.is_some() {
            return self.advance(tx, cp, state, now_ns, counters);
        }
        let Some(input) = cp.due_input(now_ns, state, max_event_ns, input) else {
            return Ok(None);
        };
        let offsets = offsets();
        if let Some(seq) = cp.tick_with(now_ns, state, max_event_ns, &input) {
            // The Scores from here on belong to the next transaction: on the other producer,
            // with two.
            let producer = tx.switch();
            let progress_sent = tx.send_progress_at_flip(producer, seq);
            self.commit = Some(Commit::Writing {
                seq,
                offsets,
                flipped_ns: now_ns,
                producer,
                ordered: false,
                progress_sent,
            });
        }
        Ok(None)
    }

    /// The checkpoint on its way: copy its next slice; once the writer has it on disk, start
    /// its transaction's commit; once that ends, records are taken again. Never waits.
    fn advance<T: Transactions<Offsets = O>>(
        &mut self,
        tx: &mut T,
        cp: &mut Checkpointer,
        state: &mut KeyedState,
        now_ns: u64,
        counters: &ShardCounters,
    ) -> Result<Option<T::Committed>, Stop> {
        match self.commit {
            None => Ok(None),
            Some(Commit::Writing { .. }) => {
                cp.step(state);
                match cp.take_outcome() {
                    None => Ok(None),
                    Some(written) => self.written(written, tx, now_ns, counters).map(|()| None),
                }
            }
            Some(Commit::Committing { .. }) => match tx.poll_commit() {
                None => Ok(None),
                Some(ended) => self.commit_ended(ended, now_ns, counters),
            },
        }
    }

    /// The writer's answer on the checkpoint being written: on disk, its transaction's commit
    /// starts; not written, `not_written` decides.
    fn written<T: Transactions<Offsets = O>>(
        &mut self,
        written: Result<u64, String>,
        tx: &mut T,
        now_ns: u64,
        counters: &ShardCounters,
    ) -> Result<(), Stop> {
        let Some(Commit::Writing {
            seq,
            offsets,
            flipped_ns,
            producer,
            ordered,
            progress_sent,
        }) = self.commit.take()
        else {
            return Ok(());
        };
        match written {
            Ok(written) => {
                crate::invariant_eq!(written, seq);
                delivered(tx)?;
                raise_max(
                    &counters.kafka_commit_write_max_ns,
                    now_ns.saturating_sub(flipped_ns),
                );
                tx.start_commit(seq, offsets, producer, progress_sent)
                    .map_err(|e| commit_failed(seq, &e, counters))?;
                self.commit = Some(Commit::Committing {
                    seq,
                    flipped_ns,
                    written_ns: now_ns,
                    producer,
                    ordered,
                });
                Ok(())
            }
            Err(e) => {
                if !ordered {
                    intake_paused(flipped_ns, now_ns, counters);
                }
                not_written(tx, seq, producer, &e)
            }
        }
    }

    /// The running commit ended: committed (records are taken again), or aborted (stop).
    fn commit_ended<C, E: std::fmt::Display>(
        &mut self,
        ended: Result<C, E>,
        now_ns: u64,
        counters: &ShardCounters,
    ) -> Result<Option<C>, Stop> {
        let Some(Commit::Committing {
            seq,
            flipped_ns,
            written_ns,
            ordered,
            ..
        }) = self.commit.take()
        else {
            return Ok(None);
        };
        let committed = ended.map_err(|e| commit_failed(seq, &e, counters))?;
        let took = now_ns.saturating_sub(written_ns);
        raise_max(&counters.kafka_commit_max_ns, took);
        tracing::debug!(
            seq,
            write_us = written_ns.saturating_sub(flipped_ns) / 1_000,
            commit_us = took / 1_000,
            "exactly_once transaction committed"
        );
        if !ordered {
            intake_paused(flipped_ns, now_ns, counters);
        }
        Ok(Some(committed))
    }
}

/// Checkpoint `seq` was not written, so its transaction (on `producer`) must stay open for
/// the next checkpoint to commit with its Scores. With one producer, or when no Score went
/// to the other one since the flip, that is done by making it the active one again.
/// Otherwise two transactions hold Scores of state no checkpoint holds, and they cannot
/// commit as one: stop (Flink's default too: a failed checkpoint fails the job over), and the
/// restart replays from the last committed checkpoint.
pub fn not_written<T: Transactions>(
    tx: &mut T,
    seq: u64,
    producer: usize,
    e: &dyn std::fmt::Display,
) -> Result<(), Stop> {
    if tx.active() == producer || !tx.sent_since_switch() {
        if tx.active() != producer {
            tx.switch();
        }
        tracing::error!(
            seq,
            "checkpoint not written, its transaction stays open: {e}"
        );
        return Ok(());
    }
    Err(format!(
        "exactly_once: checkpoint {seq} was not written ({e}) while Scores after it went into the next transaction; the two cannot commit as one: stopping so a restart replays from the last committed checkpoint"
    ))
}

/// A Score the producer gave up on must not be committed past: no checkpoint, transaction
/// or offset moves beyond it.
pub fn delivered<T: Transactions>(tx: &T) -> Result<(), Stop> {
    match tx.undelivered() {
        0 => Ok(()),
        lost => Err(format!(
            "{lost} Kafka Score record(s) were not delivered (see the error above); no checkpoint or offset commit moves past them: stopping so a restart replays from the last committed one and sends them again"
        )),
    }
}

/// A transaction's commit failed (it was aborted).
pub fn commit_failed(seq: u64, e: &dyn std::fmt::Display, counters: &ShardCounters) -> Stop {
    counters.kafka_transactions_failed.inc();
    format!(
        "exactly_once: committing checkpoint {seq}'s transaction failed ({e}); it was aborted, and the state is ahead of what Kafka holds: stopping so a restart replays from the last committed checkpoint"
    )
}

/// How long Kafka intake stood still for a commit (flip to commit), for its gauge.
pub fn intake_paused(flipped_ns: u64, now_ns: u64, counters: &ShardCounters) {
    raise_max(
        &counters.kafka_commit_pause_max_ns,
        now_ns.saturating_sub(flipped_ns),
    );
}

pub fn raise_max(gauge: &Counter, ns: u64) {
    if ns > gauge.get() {
        gauge.set(ns);
    }
}
