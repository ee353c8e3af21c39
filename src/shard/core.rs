//! One shard's synchronous core: datagram bytes in, Scores out through a `ScoreSink`.
//! decode -> route -> state -> features -> infer, with no I/O and no clock of its own, so it
//! is tested deterministically without sockets.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, RingFullPolicy};
use crate::egress::{PendingScore, ScoreSink};
use crate::features;
use crate::infer::{FeatureBatch, ModelUpdate, Scorer, ShardModel};
use crate::ingest::Datagram;
use crate::limits::FEATURES_INLINE_MAX;
use crate::metrics::{DropReason, ShardCounters};
use crate::route::{self, Inbound, Outbound, RoutedEvent};
use crate::state::{HotTable, KeyedState, Spill, StateError, Update};
use crate::wire::{DecodeError, Decoder, EventKind, ScoreOut};

/// State, features and model: everything that happens at the key's owner.
pub struct Owner {
    table: KeyedState,
    batch: FeatureBatch,
    meta: Vec<(SocketAddr, PendingScore)>,
    scores: Vec<f32>,
    model: ShardModel,
    /// Scratch row for Feedback learning.
    learn_row: Vec<f32>,
    alert_threshold: f32,
    counters: Arc<ShardCounters>,
    state_refused: u64,
}

impl Owner {
    fn apply(&mut self, ev: &RoutedEvent, sink: &mut dyn ScoreSink) {
        let update = Update {
            key: ev.key,
            ts_ns: ev.ts_ns,
            kind: ev.kind,
            amount: ev.amount,
            label: ev.label,
        };
        let record = match self.table.apply(&update) {
            Ok(r) => r,
            Err(e) => {
                let reason = match e {
                    StateError::Full { .. } => DropReason::StateFull,
                    StateError::Spill(_) => DropReason::StateError,
                };
                self.counters.dropped_events(reason, 1);
                self.state_refused += 1;
                // Log the 1st, 2nd, 4th, 8th, ... refusal: never silent, never a log storm.
                if self.state_refused.is_power_of_two() {
                    tracing::warn!(
                        key = ev.key,
                        refused = self.state_refused,
                        "event rejected: {e}"
                    );
                }
                return;
            }
        };
        match ev.kind {
            EventKind::Feedback => {
                self.counters.feedback_applied.inc();
                if self.model.learns() {
                    features::build_row(
                        &record,
                        ev.amount,
                        ev.ts_ns,
                        ev.features(),
                        &mut self.learn_row,
                    );
                    self.model.learn(&self.learn_row, ev.label);
                }
            }
            EventKind::Observation => {
                self.counters.observations_applied.inc();
                if self.batch.is_full() {
                    self.score(sink);
                }
                if let Some(row) = self.batch.next_row() {
                    features::build_row(&record, ev.amount, ev.ts_ns, ev.features(), row);
                }
                let score = ScoreOut {
                    key: ev.key,
                    seq: ev.seq,
                    count: record.observations,
                    ..ScoreOut::default()
                };
                self.meta.push((
                    ev.reply_to,
                    PendingScore {
                        score,
                        recv_ns: ev.recv_ns,
                        pickup_ns: ev.pickup_ns,
                    },
                ));
            }
        }
    }

    /// Run the model over the pending rows and emit one Score per row.
    fn score(&mut self, sink: &mut dyn ScoreSink) {
        if self.batch.is_empty() {
            return;
        }
        debug_assert_eq!(self.batch.len(), self.meta.len());
        let n = self.batch.len();
        let started = std::time::Instant::now();
        let result = self.model.score(&self.batch, &mut self.scores[..n]);
        sink.model_ran(started.elapsed().as_nanos() as u64);
        match result {
            Ok(()) => {
                let version = self.model.version();
                for ((reply_to, mut p), s) in self.meta.drain(..).zip(&self.scores[..n]) {
                    debug_assert!((0.0..=1.0).contains(s), "model returned {s}");
                    p.score.score = *s;
                    p.score.alert = *s >= self.alert_threshold;
                    p.score.model_version = version;
                    if p.score.alert {
                        self.counters.alerts_emitted.inc();
                    }
                    sink.emit(reply_to, p);
                }
            }
            Err(e) => {
                self.counters
                    .dropped_events(DropReason::ModelError, n as u64);
                tracing::error!(rows = n, "model failed, {n} Observations not scored: {e}");
                self.meta.clear();
            }
        }
        self.batch.clear();
    }
}

pub struct ShardCore {
    pub id: usize,
    shards: usize,
    decoder: Decoder,
    policy: RingFullPolicy,
    out: Outbound,
    inbound: Inbound,
    /// Events that found their ring full under `backpressure`, in arrival order.
    stalled: Vec<(usize, RoutedEvent)>,
    /// Owners this cycle pushed to (their wakers are poked at the end of the cycle).
    touched: Vec<bool>,
    owner: Owner,
    counters: Arc<ShardCounters>,
}

impl ShardCore {
    pub fn new(
        id: usize,
        shards: usize,
        config: &Config,
        (out, inbound): (Outbound, Inbound),
        model: ShardModel,
        spill: Option<Spill>,
        counters: Arc<ShardCounters>,
    ) -> Self {
        let width = model.width();
        let batch_max = config.infer.batch_max;
        Self {
            id,
            shards,
            decoder: Decoder::new(&config.wire),
            policy: config.route.full,
            out,
            inbound,
            // Once a push stalls, the rest of that receive pass (at most batch_datagrams_max
            // datagrams) queues behind it, and no more is received until it drains.
            stalled: Vec::with_capacity(
                config.ingest.udp.batch_datagrams_max * config.wire.batch_events_max,
            ),
            touched: vec![false; shards],
            owner: Owner {
                table: KeyedState::new(
                    HotTable::new(config.state.hot_capacity, config.state.ewma_alpha),
                    spill,
                ),
                batch: FeatureBatch::new(width, batch_max),
                meta: Vec::with_capacity(batch_max),
                scores: vec![0.0; batch_max],
                model,
                learn_row: vec![0.0; width],
                alert_threshold: config.model.alert_threshold,
                counters: counters.clone(),
                state_refused: 0,
            },
            counters,
        }
    }

    /// Bytes of the hot table (for the startup log).
    pub fn state_memory_bytes(&self) -> usize {
        self.owner.table.memory_bytes()
    }

    /// A key's record, hot or spilled, if this shard owns it.
    pub fn record(&self, key: u64) -> Result<Option<crate::state::Record>, StateError> {
        self.owner.table.get(key)
    }

    /// A key's record and where it lives ("hot" or "spilled").
    pub fn locate(
        &self,
        key: u64,
    ) -> Result<Option<(crate::state::Record, &'static str)>, StateError> {
        self.owner.table.locate(key)
    }

    /// Decode one datagram and send each event to its owner (here, or over a ring).
    /// `pickup_ns` is when the shard took the datagram (CLOCK_REALTIME ns).
    pub fn on_datagram(&mut self, dg: Datagram<'_>, pickup_ns: u64, sink: &mut dyn ScoreSink) {
        self.counters.datagrams_received.inc();
        // The kernel cut a datagram longer than our buffers: refuse it without decoding.
        let decoded = if dg.truncated {
            Err(DecodeError::Oversize)
        } else {
            self.decoder.decode(dg.payload)
        };
        let events = match decoded {
            Ok(ev) => ev,
            Err(e) => {
                self.counters.dropped_datagram(e);
                tracing::debug!(src = %dg.src, reason = e.reason(), "datagram dropped: {e}");
                return;
            }
        };
        self.counters.events_received.add(events.len() as u64);
        let recv_ns = if dg.recv_ns == 0 {
            pickup_ns
        } else {
            dg.recv_ns
        };
        for e in events.iter() {
            let mut features = [0f32; FEATURES_INLINE_MAX];
            let n = e.copy_features(&mut features);
            let ev = RoutedEvent {
                key: e.key(),
                seq: e.seq(),
                ts_ns: if e.ts_ns() == 0 { recv_ns } else { e.ts_ns() },
                recv_ns,
                pickup_ns,
                reply_to: dg.src,
                amount: e.amount(),
                label: e.label(),
                kind: e.kind(),
                features_len: n as u8,
                features,
            };
            let owner = route::owner(ev.key, self.shards);
            if owner == self.id {
                self.owner.apply(&ev, sink);
            } else if !self.stalled.is_empty() {
                // Keep arrival order behind events already waiting.
                debug_assert!(
                    self.stalled.len() < self.stalled.capacity(),
                    "stall queue past its bound"
                );
                self.stalled.push((owner, ev));
            } else {
                self.forward(owner, ev);
            }
        }
    }

    fn forward(&mut self, owner: usize, ev: RoutedEvent) {
        match self.out.push(owner, ev) {
            Ok(()) => {
                self.counters.events_routed_away.inc();
                self.touched[owner] = true;
            }
            Err(ev) => match self.policy {
                RingFullPolicy::Drop => self.counters.dropped_events(DropReason::RingFull, 1),
                RingFullPolicy::Backpressure => self.stalled.push((owner, ev)),
            },
        }
    }

    /// Backpressure: is the shard holding events it could not hand on? (It must not receive
    /// more until they are.)
    pub fn is_stalled(&self) -> bool {
        !self.stalled.is_empty()
    }

    /// Retry stalled events in order, stopping at the first that still does not fit.
    pub fn retry_stalled(&mut self) -> usize {
        let mut moved = 0;
        for &(owner, ev) in &self.stalled {
            if self.out.push(owner, ev).is_err() {
                break;
            }
            self.counters.events_routed_away.inc();
            self.touched[owner] = true;
            moved += 1;
        }
        self.stalled.drain(..moved);
        moved
    }

    /// Apply up to `max` events that other shards routed here.
    pub fn drain_inbound(&mut self, max: usize, sink: &mut dyn ScoreSink) -> usize {
        let owner = &mut self.owner;
        self.inbound.drain(max, |ev| owner.apply(&ev, sink))
    }

    pub fn inbound_is_empty(&self) -> bool {
        self.inbound.is_empty()
    }

    /// Between cycles: take a new model version. Returns a replaced model to retire.
    pub fn apply_model_update(&mut self, u: ModelUpdate) -> Option<Box<dyn Scorer>> {
        debug_assert!(self.owner.batch.is_empty(), "updates land between cycles");
        self.owner.model.apply(u)
    }

    /// Online parameters for averaging, if Feedback arrived since the last call.
    pub fn model_snapshot(&mut self) -> Option<(Box<[f32]>, u64)> {
        self.owner.model.snapshot()
    }

    pub fn model_version(&self) -> u32 {
        self.owner.model.version()
    }

    /// End of a drain cycle: score what is pending, publish the state counters.
    pub fn finish_cycle(&mut self, sink: &mut dyn ScoreSink) {
        self.owner.score(sink);
        let t = &self.owner.table;
        let c = &self.counters;
        c.hot_keys.set(t.hot_len() as u64);
        c.spilled_keys.set(t.spilled_len());
        c.hot_hits.set(t.stats.hot_hits);
        c.hot_misses.set(t.stats.hot_misses);
        c.spills.set(t.stats.spills);
        c.reloads.set(t.stats.reloads);
    }

    /// Owners pushed to since the last call (and reset).
    pub fn take_touched(&mut self, mut f: impl FnMut(usize)) {
        for (i, t) in self.touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                f(i);
            }
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
