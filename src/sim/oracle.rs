//! What the state must be: each key's record and window words as the fold of its events in
//! log order, computed on a plain `KeyedState` (no spill, no checkpoints, one key at a time),
//! and the checks the simulation runs against the shards' real state.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::features::FeaturePlan;
use crate::state::{HotTable, KeyedState, Record, Update};
use crate::wire::EventKind;

/// One event of the source log.
#[derive(Debug, Clone, Copy)]
pub struct Ev {
    pub key: u64,
    /// Per key: 0, 1, 2, ... in log order.
    pub seq: u64,
    pub ts_ns: u64,
    pub feedback: bool,
    pub amount: f32,
    /// The key's source: 0 for UDP, the Kafka partition's tag.
    pub source: u64,
}

impl Ev {
    /// The event as a producer encodes it (datagram or Kafka record).
    pub fn wire(&self) -> crate::wire::EventIn<'static> {
        crate::wire::EventIn {
            key: self.key,
            seq: self.seq,
            ts_ns: self.ts_ns,
            feedback: self.feedback,
            amount: self.amount,
            label: self.label(),
            features: &[],
        }
    }

    pub fn label(&self) -> f32 {
        if self.feedback && self.seq % 3 == 0 {
            1.0
        } else {
            0.0
        }
    }
}

/// A key's state with the slot bits masked (they say where a record sits, not what it is).
pub type Image = (Record, Vec<u64>);

pub struct Oracle {
    plan: FeaturePlan,
    /// Each key's events, in log order.
    by_key: BTreeMap<u64, Vec<Ev>>,
    ttl_ns: u64,
}

impl Oracle {
    pub fn new(config: &Config, plan: FeaturePlan, log: &[Ev]) -> Self {
        let mut by_key: BTreeMap<u64, Vec<Ev>> = BTreeMap::new();
        for e in log {
            by_key.entry(e.key).or_default().push(*e);
        }
        Self {
            plan,
            by_key,
            ttl_ns: config.state.ttl_ms.saturating_mul(1_000_000),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_key.keys().copied()
    }

    /// Events of `key` in the log.
    pub fn events_of(&self, key: u64) -> usize {
        self.by_key.get(&key).map_or(0, Vec::len)
    }

    /// `key`'s state after its first `n` events (None for n = 0: no record).
    pub fn fold(&self, key: u64, n: usize) -> Result<Option<Image>, String> {
        let events = self
            .by_key
            .get(&key)
            .and_then(|e| e.get(..n))
            .ok_or_else(|| format!("key {key:#x} has no {n} events"))?;
        if events.is_empty() {
            return Ok(None);
        }
        let words = self.plan.words();
        let mut state = KeyedState::new(
            HotTable::new(1, words),
            None,
            self.plan.clone(),
            self.ttl_ns,
            true,
        );
        let mut slot = None;
        for e in events {
            let u = Update {
                key: e.key,
                seq: e.seq,
                ts_ns: e.ts_ns,
                kind: if e.feedback {
                    EventKind::Feedback
                } else {
                    EventKind::Observation
                },
                amount: e.amount,
                label: e.label(),
                features: &[],
                source: e.source,
            };
            match state.apply(&u, e.ts_ns) {
                Ok(crate::state::Outcome::Applied(s)) => slot = Some(s),
                // Each event once, in order, one key: nothing else can happen.
                other => return Err(format!("the oracle's own fold refused {e:?}: {other:?}")),
            }
        }
        Ok(slot.map(|s| {
            let (r, w) = state.slot(s);
            masked(r, w)
        }))
    }
}

pub fn masked(r: &Record, w: &[u64]) -> Image {
    (Record { flags: 0, ..*r }, w.to_vec())
}
