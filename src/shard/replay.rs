//! A Score-less replay: one Kafka partition's state rebuilt from its input records, applied
//! in offset order to a state of its own, nothing scored, learned or sent. The fallback when
//! the changelog cannot rebuild a partition (records deleted from it, or the topic made anew):
//! the input topic, read from its first record, is the one complete point left (Kafka Streams
//! restores a source-table store from its input topic the same way).
//!
//! The times follow the shard's rule (`EventTimes`), with two differences the replay cannot
//! avoid, both written in docs/scale-out.md: the watermark is the partition's own (the shard's
//! was raised by its other partitions too, so an event dropped as late then may be applied
//! now), and processing time is the record's timestamp (the shard's TTL reference was the
//! time it fetched the record). The state of a partition whose events were never late and
//! whose keys never idled near the TTL is rebuilt exactly; `a_replay_rebuilds_what_the_shard_applied`
//! checks it against the shard's own core.

use super::event_time::{EventTimes, Timed};
use crate::config::{Config, ConfigError};
use crate::features::FeaturePlan;
use crate::limits::FEATURES_INLINE_MAX;
use crate::state::partition::{PartitionError, PartitionImage};
use crate::state::{HotTable, KeyedState, Outcome, StateError, Update};
use crate::wire::Decoder;

/// Hot slots the replay's state starts with; it doubles when full.
const FIRST_CAPACITY: usize = 4096;

/// What a replay applied and passed over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Input records replayed (the skipped ones included).
    pub records: u64,
    /// Records whose value is not an EventBatch (skipped, as the shard skipped them).
    pub skipped: u64,
    pub events_applied: u64,
    /// Events the state refused as replays (`state.dedup`), as the shard refused them.
    pub duplicates: u64,
    /// Events older than the replay's watermark under `time.late = drop`.
    pub late_dropped: u64,
}

pub struct Replay {
    state: KeyedState,
    times: EventTimes,
    decoder: Decoder,
    plan: FeaturePlan,
    ttl_ns: u64,
    dedup: bool,
    tag: u64,
    pub replayed: Replayed,
}

impl Replay {
    /// A replay of the partition whose source tag is `tag`, under `config`'s features, time
    /// rule, TTL and dedup.
    pub fn new(config: &Config, tag: u64) -> Result<Self, ConfigError> {
        let plan = config.feature_plan()?;
        let ttl_ns = config.state.ttl_ms.saturating_mul(1_000_000);
        let dedup = config.state.dedup;
        Ok(Self {
            state: KeyedState::new(
                HotTable::new(FIRST_CAPACITY, plan.words()),
                None,
                plan.clone(),
                ttl_ns,
                dedup,
            ),
            times: EventTimes::new(config, 0),
            decoder: Decoder::new(&config.wire),
            plan,
            ttl_ns,
            dedup,
            tag,
            replayed: Replayed::default(),
        })
    }

    /// One input record (its value and timestamp), its events applied in order.
    pub fn record(&mut self, value: &[u8], timestamp_ns: u64) -> Result<(), PartitionError> {
        self.replayed.records += 1;
        let Ok(events) = self.decoder.decode(value) else {
            self.replayed.skipped += 1;
            return Ok(());
        };
        let mut features = [0f32; FEATURES_INLINE_MAX];
        for e in events.iter() {
            let ts = if e.ts_ns() == 0 {
                timestamp_ns
            } else {
                e.ts_ns()
            };
            let (ts_ns, now_ns) = match self.times.of(ts, timestamp_ns, timestamp_ns) {
                Timed::At { ts_ns, now_ns } | Timed::LateApplied { ts_ns, now_ns } => {
                    (ts_ns, now_ns)
                }
                Timed::LateDropped => {
                    self.replayed.late_dropped += 1;
                    continue;
                }
            };
            let n = e.copy_features(&mut features);
            let update = Update {
                key: e.key(),
                seq: e.seq(),
                ts_ns,
                kind: e.kind(),
                amount: e.amount(),
                label: e.label(),
                features: &features[..n],
                source: self.tag,
            };
            match self.apply(&update, now_ns)? {
                Outcome::Applied(_) => self.replayed.events_applied += 1,
                Outcome::Duplicate => self.replayed.duplicates += 1,
                // One partition, one source: cannot happen in a state of its own.
                Outcome::OtherSource(_) => {}
            }
        }
        Ok(())
    }

    /// Apply `u`, the state twice as large first when it is full.
    fn apply(&mut self, u: &Update<'_>, now_ns: u64) -> Result<Outcome, PartitionError> {
        loop {
            match self.state.apply(u, now_ns) {
                Err(StateError::Full { capacity }) => self.grow(capacity.saturating_mul(2))?,
                other => return Ok(other?),
            }
        }
    }

    /// Unbounded but for memory, like the changelog read it stands in for: the partition's
    /// keys go into the shard's state next (spilled past `state.hot_capacity`).
    fn grow(&mut self, capacity: usize) -> Result<(), PartitionError> {
        let image = self.state.export_partition(self.tag)?;
        let mut bigger = KeyedState::new(
            HotTable::new(capacity, self.plan.words()),
            None,
            self.plan.clone(),
            self.ttl_ns,
            self.dedup,
        );
        bigger.import_partition(self.tag, &image.bytes)?;
        self.state = bigger;
        Ok(())
    }

    /// The partition's records as the replay left them (less the keys idle past the TTL at
    /// its newest time, which the shard would sweep), and its newest event time.
    pub fn finish(mut self) -> Result<(PartitionImage, u64), PartitionError> {
        let slots = self.state.hot().slots();
        self.state
            .expire_idle(self.times.reference(self.times.max_event_ns), slots);
        Ok((
            self.state.export_partition(self.tag)?,
            self.times.max_event_ns,
        ))
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
