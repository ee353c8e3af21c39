//! The at_least_once sequence of a shard's Kafka side, without Kafka: a checkpoint's flip
//! closes the producer's epoch, and the checkpoint is committed (renamed into place, its
//! offsets committed to the group) only once every Score of that epoch and those before it
//! is acknowledged — so a restart from it never misses a Score still in flight. The shard
//! never waits for that. The service runs it over rdkafka (`shard::kafka`); the crash
//! simulation runs the same code over its twin broker (`sim`).

use crate::state::checkpoint::{Checkpointer, Input, PartitionOffset};
use crate::state::KeyedState;

/// How long a flipped checkpoint may wait for the Scores produced before it to be
/// acknowledged before it is dropped (counted as failed; the next one is full). The shard
/// never waits: it serves on, and the checkpoint's writer holds it written but uncommitted.
pub const SETTLE_TIMEOUT_NS: u64 = 5_000_000_000;

/// What the sequence needs of the Score producer and the consumer group.
pub trait Epochs {
    /// At a flip: close the open epoch and open the next. False (nothing changed): the next
    /// epoch's slot still has records in flight.
    fn begin_epoch(&mut self) -> bool;
    /// Every Score produced before the open epoch has been reported (delivered or given up
    /// on).
    fn settled_before_open_epoch(&self) -> bool;
    /// A committed checkpoint's offsets, to the group (lag tools, a start without one).
    fn commit_offsets_to_group(&mut self, offsets: &[PartitionOffset]);
}

/// A checkpoint written (or being written) and not yet committed: it commits once every
/// Score produced before its flip is acknowledged.
pub struct Awaiting {
    pub seq: u64,
    pub flipped_ns: u64,
    /// The offsets it holds, committed to the group when it commits.
    pub offsets: Vec<PartitionOffset>,
}

/// A shard's place in the sequence.
#[derive(Default)]
pub struct AtLeastOnce {
    /// The checkpoint waiting for its Scores' acknowledgements.
    pub awaiting: Option<Awaiting>,
    /// Checkpoints dropped because their Scores were not acknowledged in time (for logs).
    pub withheld: u64,
}

impl AtLeastOnce {
    /// Between cycles, after the flush: commit the awaiting checkpoint if its Scores are
    /// settled, go on with a running snapshot, or flip one if due (`input`: the source's
    /// position, with its offsets when `true`).
    #[allow(clippy::too_many_arguments)]
    pub fn turn<E: Epochs>(
        &mut self,
        epochs: &mut E,
        cp: &mut Checkpointer,
        state: &mut KeyedState,
        max_event_ns: u64,
        now_ns: u64,
        input: impl Fn(bool) -> Input,
    ) {
        self.release_settled(epochs, cp, now_ns);
        let Some(input) = cp.due_input(now_ns, state, max_event_ns, input) else {
            return;
        };
        // The flip closes the producer's epoch, and the writer holds the checkpoint until
        // that epoch and all before it are acknowledged (`release_settled`).
        if self.awaiting.is_some() || !epochs.begin_epoch() {
            cp.postpone(now_ns);
            return;
        }
        // Not flipped (the writer was busy): the epoch opened anyway only makes the next
        // checkpoint wait for this cycle's Scores too.
        if let Some(seq) = cp.tick_with(now_ns, state, max_event_ns, &input) {
            self.awaiting = Some(Awaiting {
                seq,
                flipped_ns: now_ns,
                offsets: input.offsets,
            });
        }
    }

    /// Commit the awaiting checkpoint once the Scores before its flip are all acknowledged;
    /// drop it if they are not within `SETTLE_TIMEOUT_NS`.
    pub fn release_settled<E: Epochs>(&mut self, epochs: &mut E, cp: &Checkpointer, now_ns: u64) {
        let Some(a) = &self.awaiting else {
            return;
        };
        if epochs.settled_before_open_epoch() {
            cp.release(a.seq, true);
            epochs.commit_offsets_to_group(&a.offsets);
            self.awaiting = None;
        } else if now_ns.saturating_sub(a.flipped_ns) > SETTLE_TIMEOUT_NS {
            cp.release(a.seq, false);
            self.withheld += 1;
            if self.withheld.is_power_of_two() {
                tracing::warn!(
                    seq = a.seq,
                    withheld = self.withheld,
                    "checkpoint dropped: Score records produced before it were not acknowledged within {} s (broker slow or gone); the next one is full",
                    SETTLE_TIMEOUT_NS / 1_000_000_000
                );
            }
            self.awaiting = None;
        }
    }

    /// A Score was lost (the shard stops): the awaiting checkpoint must never commit.
    pub fn drop_awaiting(&mut self, cp: &Checkpointer) {
        if let Some(a) = self.awaiting.take() {
            cp.release(a.seq, false);
        }
    }

    /// At shutdown, every Score acknowledged: the awaiting checkpoint commits now.
    pub fn release_now<E: Epochs>(&mut self, epochs: &mut E, cp: &Checkpointer) {
        if let Some(a) = self.awaiting.take() {
            cp.release(a.seq, true);
            epochs.commit_offsets_to_group(&a.offsets);
        }
    }
}
