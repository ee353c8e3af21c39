//! One shard's synchronous core: datagram bytes in, Scores out through a `ScoreSink`.
//! decode -> route -> state -> features -> infer, with no I/O and no clock of its own, so it
//! is tested deterministically without sockets.

use std::net::SocketAddr;
use std::sync::Arc;

use super::cold_reader::ColdReader;
use super::cold_wait::{ColdWait, Waiting};
use super::event_time::{EventTimes, Timed};
use super::spill_sweeper::SpillSweeper;
use crate::config::{Config, RingFullPolicy};
use crate::egress::{PendingScore, ReplyTo, ScoreSink};
use crate::infer::{FeatureBatch, ModelUpdate, Scorer, ShardModel};
use crate::ingest::Datagram;
use crate::limits::FEATURES_INLINE_MAX;
use crate::metrics::{DropReason, ShardCounters};
use crate::route::{self, Inbound, Outbound, RoutedEvent};
use crate::state::{KeyState, KeyedState, Outcome, StateError, Update};
use crate::wire::{DecodeError, Decoder, EventKind, EventView, ScoreOut};

/// Reply address of events that came from Kafka (their Scores go by `ReplyTo::Kafka`).
const UNSPECIFIED_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// One consumed Kafka record as the core sees it: bytes and times, no client types.
#[derive(Debug, Clone, Copy)]
pub struct KafkaRecord<'a> {
    pub value: &'a [u8],
    /// The partition's source tag (`Record::source` of the keys it owns).
    pub source: u64,
    /// The record's timestamp (CreateTime or LogAppendTime), ns since the epoch; the events'
    /// time when they carry ts_ns = 0, and the start of the Kafka latency figure.
    pub timestamp_ns: u64,
    /// When the shard took the record from its consumer.
    pub fetched_ns: u64,
    /// Index of this record in the cycle's Kafka source table: its Scores go there.
    pub reply: u32,
}

/// A decoded event as route and state take it: fixed size, features inline. An event with
/// `ts_ns = 0` happened at `recv_ns` (kernel receive time, or the Kafka record's timestamp).
fn routed(e: &EventView<'_>, recv_ns: u64, pickup_ns: u64, reply_to: SocketAddr) -> RoutedEvent {
    let mut features = [0f32; FEATURES_INLINE_MAX];
    let n = e.copy_features(&mut features);
    RoutedEvent {
        key: e.key(),
        seq: e.seq(),
        ts_ns: if e.ts_ns() == 0 { recv_ns } else { e.ts_ns() },
        recv_ns,
        pickup_ns,
        reply_to,
        amount: e.amount(),
        label: e.label(),
        kind: e.kind(),
        features_len: n as u8,
        features,
    }
}

/// State, features and model: everything that happens at the key's owner.
pub struct Owner {
    table: KeyedState,
    /// `time.mode` and the watermark.
    times: EventTimes,
    ttl_sweep_slots: usize,
    batch: FeatureBatch,
    meta: Vec<(ReplyTo, PendingScore)>,
    scores: Vec<f32>,
    model: ShardModel,
    /// Scratch row for Feedback learning.
    learn_row: Vec<f32>,
    alert_threshold: f32,
    counters: Arc<ShardCounters>,
    state_refused: u64,
    /// Model calls that failed (logged 1st, 2nd, 4th, ...).
    model_failures: u64,
    /// Events waiting for the cycle's batched cold read.
    cold_wait: ColdWait,
    /// Where that read is made (`state.cold_reader`).
    reader: ColdReader,
    /// Names spilled keys idle past the TTL (`state.spill_sweep_keys_per_s`); None: off.
    sweeper: Option<SpillSweeper>,
    /// Sweep deletions that failed (logged 1st, 2nd, 4th, ...).
    sweep_failures: u64,
}

impl Owner {
    /// Apply one event to its key's state; `source` is the key's source tag (0 for UDP, the
    /// partition's tag for a Kafka record).
    fn apply(
        &mut self,
        ev: &RoutedEvent,
        reply_to: ReplyTo,
        source: u64,
        sink: &mut dyn ScoreSink,
    ) {
        let (ts_ns, now_ns) = match self.times.of(ev.ts_ns, ev.recv_ns, ev.pickup_ns) {
            Timed::At { ts_ns, now_ns } => (ts_ns, now_ns),
            Timed::LateApplied { ts_ns, now_ns } => {
                self.counters.late_applied.inc();
                (ts_ns, now_ns)
            }
            Timed::LateDropped => {
                self.counters.dropped_events(DropReason::Late, 1);
                sink.refused(reply_to, ev, DropReason::Late);
                return;
            }
        };
        if self.cold_wait.is_on() && self.table.park_miss(ev.key) {
            self.cold_wait.push(Waiting {
                ev: *ev,
                reply_to,
                source,
                ts_ns,
                now_ns,
            });
            if self.cold_wait.is_full() {
                // Backpressure: with as many reads out as may be, the oldest must land
                // before the next goes.
                if self.reader.job_to_fill().is_none() {
                    self.counters.cold_read_waits.inc();
                    self.reader.wait();
                    self.land_cold_read(sink);
                }
                self.start_cold_read(sink);
            }
            return;
        }
        self.apply_now(ev, reply_to, source, (ts_ns, now_ns), false, sink);
    }

    /// Apply one event whose times are worked out (`apply`), its key hot or read on its own.
    /// `waited`: it waited for a batched cold read. Its Score counts as a cold key's (the
    /// latency split) when it waited or its key missed here.
    fn apply_now(
        &mut self,
        ev: &RoutedEvent,
        reply_to: ReplyTo,
        source: u64,
        (ts_ns, now_ns): (u64, u64),
        waited: bool,
        sink: &mut dyn ScoreSink,
    ) {
        let misses = self.table.stats.hot_misses;
        let update = Update {
            key: ev.key,
            seq: ev.seq,
            ts_ns,
            kind: ev.kind,
            amount: ev.amount,
            label: ev.label,
            features: ev.features(),
            source,
        };
        let slot = match self.table.apply(&update, now_ns) {
            Ok(Outcome::Applied(slot)) => slot,
            Ok(Outcome::Duplicate) => {
                self.counters.dropped_events(DropReason::Duplicate, 1);
                return;
            }
            Ok(Outcome::OtherSource(theirs)) => {
                self.counters
                    .dropped_events(DropReason::KeyOnTwoPartitions, 1);
                sink.refused(reply_to, ev, DropReason::KeyOnTwoPartitions);
                let n = self
                    .counters
                    .events_dropped_by(DropReason::KeyOnTwoPartitions);
                // 1st, 2nd, 4th, ... : never silent, never a log storm.
                if n.is_power_of_two() {
                    tracing::warn!(
                        key = ev.key,
                        source,
                        key_source = theirs,
                        refused = n,
                        "event refused: its key's state lives with another partition (or UDP); producers must put each entity key on one partition"
                    );
                }
                return;
            }
            Err(e) => {
                self.refuse(ev, reply_to, &e, sink);
                return;
            }
        };
        let cold = waited || self.table.stats.hot_misses != misses;
        // A full micro-batch is scored before this row takes a place in the next one.
        if matches!(ev.kind, EventKind::Observation) && self.batch.is_full() {
            self.score(sink);
        }
        let (head, words) = self.table.slot(slot);
        let plan = self.table.plan();
        let obs = update.obs();
        match ev.kind {
            EventKind::Feedback => {
                self.counters.feedback_applied.inc();
                if self.model.learns() {
                    plan.build_row(words, head.prev_event_ns, &obs, &mut self.learn_row);
                    self.model.learn(&self.learn_row, ev.label);
                }
            }
            EventKind::Observation => {
                self.counters.observations_applied.inc();
                if let Some(row) = self.batch.next_row() {
                    plan.build_row(words, head.prev_event_ns, &obs, row);
                }
                let score = ScoreOut {
                    key: ev.key,
                    seq: ev.seq,
                    count: head.observations,
                    ..ScoreOut::default()
                };
                self.meta.push((
                    reply_to,
                    PendingScore {
                        score,
                        recv_ns: ev.recv_ns,
                        pickup_ns: ev.pickup_ns,
                        cold,
                    },
                ));
            }
        }
    }

    /// An event the state refused (counted by reason; logged 1st, 2nd, 4th, ...).
    fn refuse(
        &mut self,
        ev: &RoutedEvent,
        reply_to: ReplyTo,
        e: &StateError,
        sink: &mut dyn ScoreSink,
    ) {
        let key = ev.key;
        let reason = match e {
            StateError::Full { .. } => DropReason::StateFull,
            StateError::Spill(_) => DropReason::StateError,
        };
        self.counters.dropped_events(reason, 1);
        sink.refused(reply_to, ev, reason);
        self.state_refused += 1;
        // Never silent, never a log storm.
        if self.state_refused.is_power_of_two() {
            tracing::warn!(key, refused = self.state_refused, "event rejected: {e}");
        }
    }

    /// Hand the waiting events' keys to one batched read, unless none waits or as many
    /// reads are out as may be. Read on the shard thread, the Scores so far go out first
    /// (their keys were hot: they do not wait for the read) and the read lands at once.
    fn start_cold_read(&mut self, sink: &mut dyn ScoreSink) {
        if self.cold_wait.events.is_empty() || self.reader.job_to_fill().is_none() {
            return;
        }
        if !self.reader.is_async() {
            self.score(sink);
            sink.flush_early();
        }
        let (keys, skip) = self.cold_wait.plan_read();
        let Some(job) = self.reader.job_to_fill() else {
            return;
        };
        self.table.prepare_cold(keys, skip, job);
        self.cold_wait.hand_over();
        self.reader.hand_over(&self.table);
        if !self.reader.is_async() {
            self.land_cold_read(sink);
        }
    }

    /// The oldest read, back: its records into the hot table, then its events in arrival
    /// order, then — in the batch still out and in the waiting list — the events on keys now
    /// hot (every earlier event on those keys has been applied). If the read or its write
    /// failed nothing has moved and each of its events is refused, counted.
    fn land_cold_read(&mut self, sink: &mut dyn ScoreSink) {
        let Some(mut job) = self.reader.take_back() else {
            return;
        };
        let moved = self.table.finish_cold(&mut job);
        self.reader.give_back(job);
        self.counters.cold_reads.inc();
        let batch = self.cold_wait.take_landed();
        match moved {
            Ok(()) => {
                // A key its own batch pushed out again (a hot table smaller than the batch)
                // is read here on its own: no read out holds it (`ColdWait::plan_read`).
                for w in &batch {
                    self.apply_now(&w.ev, w.reply_to, w.source, (w.ts_ns, w.now_ns), true, sink);
                }
            }
            Err(e) => {
                for w in &batch {
                    self.refuse(&w.ev, w.reply_to, &e, sink);
                }
            }
        }
        self.cold_wait.put_back_landed(batch);
        for i in 0..self.cold_wait.reads_out() {
            let slot = self.cold_wait.out_slot(i);
            self.apply_now_hot(Some(slot), sink);
        }
        self.apply_now_hot(None, sink);
    }

    /// Apply, in order, the events of a batch out (`Some(slot)`) or of the waiting list whose
    /// keys are hot; keep the others in order.
    fn apply_now_hot(&mut self, slot: Option<usize>, sink: &mut dyn ScoreSink) {
        let mut list = self.cold_wait.take_list(slot);
        let mut kept = 0;
        for i in 0..list.len() {
            let w = list[i];
            if self.table.hot().find(w.ev.key).is_some() {
                self.apply_now(&w.ev, w.reply_to, w.source, (w.ts_ns, w.now_ns), true, sink);
            } else {
                list[kept] = w;
                kept += 1;
            }
        }
        list.truncate(kept);
        self.cold_wait.put_list(slot, list);
    }

    /// The cycle's turn of the cold reads: land the read that is back, start the next.
    /// Returns the events it applied or refused.
    fn cold_turn(&mut self, sink: &mut dyn ScoreSink) -> usize {
        let before = self.cold_wait.len();
        while self.reader.is_back() {
            self.land_cold_read(sink);
        }
        // With a read out already, a second goes only with half a list: the reader then has
        // a batch worth reading while the shard lands the first (a few events would leave it
        // idle through that landing). A shard reader lands what it starts at once.
        if self.cold_wait.reads_out() == 0 || self.cold_wait.half_full() {
            self.start_cold_read(sink);
        }
        before - self.cold_wait.len()
    }

    /// The spill sweep's turn: publish the reference time to the scanner and delete the
    /// spilled keys it named that are still idle past the TTL (`state::spill_sweep`). Returns
    /// the names taken (work: a shard with names waiting does not park).
    fn sweep_spilled(&mut self, reference_ns: u64) -> usize {
        let Some(sweeper) = &mut self.sweeper else {
            return 0;
        };
        sweeper.publish(reference_ns);
        let keys = sweeper.take();
        if keys.is_empty() {
            return 0;
        }
        let busy = self.cold_wait.busy_keys();
        if let Err(e) = self.table.expire_spilled(keys, busy, reference_ns) {
            // Nothing was deleted; a later pass names the keys again.
            self.sweep_failures += 1;
            if self.sweep_failures.is_power_of_two() {
                tracing::warn!(
                    failures = self.sweep_failures,
                    "spill sweep: idle spilled keys not deleted: {e}"
                );
            }
        }
        keys.len()
    }

    /// Until no event waits: every read out landed, every waiting event read.
    fn settle_cold(&mut self, sink: &mut dyn ScoreSink) {
        while self.cold_wait.len() > 0 {
            if self.reader.is_out() {
                self.reader.wait();
                self.land_cold_read(sink);
            }
            self.start_cold_read(sink);
        }
    }

    /// Run the model over the pending rows and emit one Score per row.
    fn score(&mut self, sink: &mut dyn ScoreSink) {
        if self.batch.is_empty() {
            return;
        }
        crate::invariant_eq!(self.batch.len(), self.meta.len());
        let n = self.batch.len();
        let started = sink.clock_ns();
        let result = self.model.score(&self.batch, &mut self.scores[..n]);
        let ended = sink.clock_ns();
        sink.model_ran(ended.saturating_sub(started), n);
        match result {
            Ok(()) => {
                let version = self.model.version();
                for ((reply_to, mut p), s) in self.meta.drain(..).zip(&self.scores[..n]) {
                    crate::invariant!((0.0..=1.0).contains(s), "model returned {s}");
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
                self.model_failures += 1;
                if self.model_failures.is_power_of_two() {
                    tracing::error!(
                        rows = n,
                        failures = self.model_failures,
                        "model failed, {n} Observations not scored: {e}"
                    );
                }
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
    /// `ingest.udp.shed_after_ms` in ns (0 = off).
    shed_after_ns: u64,
    /// What this shard took in and where it went, beside the counters, so `finish_cycle` can
    /// check that every datagram and event is accounted for exactly once (`invariant!`).
    tally: Tally,
}

/// Plain adds on the hot path; read only by the accounting invariants.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Datagrams decoded and taken (not refused, not shed).
    datagrams_accepted: u64,
    /// Events from this shard's datagrams and Kafka records applied here (their keys' owner).
    applied_direct: u64,
    /// Events routed away into a ring whose shard died before taking them (also counted as
    /// dropped, `shard_panicked`).
    lost_in_rings: u64,
}

impl ShardCore {
    /// `table` is the shard's state (restored, when there was a checkpoint), `max_event_ns`
    /// its restored newest event time.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        shards: usize,
        config: &Config,
        (out, inbound): (Outbound, Inbound),
        model: ShardModel,
        table: KeyedState,
        max_event_ns: u64,
        counters: Arc<ShardCounters>,
    ) -> Self {
        let width = model.width();
        crate::invariant_eq!(width, table.plan().width());
        let batch_max = config.infer.batch_max;
        let cold_wait_max = table.cold_batch_max();
        let reader = ColdReader::on_shard(&table);
        Self {
            id,
            shards,
            decoder: Decoder::new(&config.wire),
            shed_after_ns: config.ingest.udp.shed_after_ms.saturating_mul(1_000_000),
            tally: Tally::default(),
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
                table,
                times: EventTimes::new(config, max_event_ns),
                ttl_sweep_slots: config.state.ttl_sweep_slots,
                batch: FeatureBatch::new(width, batch_max),
                meta: Vec::with_capacity(batch_max),
                scores: vec![0.0; batch_max],
                model,
                learn_row: vec![0.0; width],
                alert_threshold: config.model.alert_threshold,
                counters: counters.clone(),
                state_refused: 0,
                model_failures: 0,
                cold_wait: ColdWait::new(cold_wait_max),
                reader,
                sweeper: None,
                sweep_failures: 0,
            },
            counters,
        }
    }

    /// Bytes of the hot table (for the startup log).
    pub fn state_memory_bytes(&self) -> usize {
        self.owner.table.memory_bytes()
    }

    /// The shard's keyed state (for checkpoints, between cycles).
    pub fn state(&self) -> &KeyedState {
        &self.owner.table
    }

    /// The shard's keyed state, for checkpoints (which clear its change tracking).
    pub fn state_mut(&mut self) -> &mut KeyedState {
        &mut self.owner.table
    }

    /// Newest event time applied on this shard.
    pub fn max_event_ns(&self) -> u64 {
        self.owner.times.max_event_ns
    }

    /// Records moved in (a partition rebuilt from the changelog) carry event times this shard
    /// has not seen: its event-time watermark goes on from the newest of them.
    pub fn raise_max_event_ns(&mut self, ns: u64) {
        self.owner.times.max_event_ns = self.owner.times.max_event_ns.max(ns);
    }

    /// A key's state, hot or spilled, if this shard owns it.
    pub fn locate(&self, key: u64) -> Result<Option<KeyState>, StateError> {
        self.owner.table.locate(key)
    }

    /// Decode one datagram and send each event to its owner (here, or over a ring).
    /// `pickup_ns` is when the shard took the datagram (CLOCK_REALTIME ns).
    /// Waited in the socket past `shed_after_ns` (a datagram without a kernel timestamp never is).
    fn is_stale(&self, dg: &Datagram<'_>, pickup_ns: u64) -> bool {
        self.shed_after_ns > 0
            && dg.recv_ns != 0
            && pickup_ns.saturating_sub(dg.recv_ns) > self.shed_after_ns
    }

    pub fn on_datagram(&mut self, dg: Datagram<'_>, pickup_ns: u64, sink: &mut dyn ScoreSink) {
        self.counters.datagrams_received.inc();
        if self.is_stale(&dg, pickup_ns) {
            self.counters.datagrams_shed.inc();
            let shed = self.counters.datagrams_shed.get();
            if shed.is_power_of_two() {
                tracing::warn!(
                    shard = self.id,
                    shed,
                    waited_ms = pickup_ns.saturating_sub(dg.recv_ns) / 1_000_000,
                    "overload: shedding datagrams that waited longer than ingest.udp.shed_after_ms"
                );
            }
            return;
        }
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
                // Counted always; logged for the 1st, 2nd, 4th, ... only (no per-event logs).
                if self.counters.datagrams_dropped_total().is_power_of_two() {
                    tracing::debug!(src = %dg.src, reason = e.reason(), dropped = self.counters.datagrams_dropped_total(), "datagram dropped: {e}");
                }
                return;
            }
        };
        self.counters.events_received.add(events.len() as u64);
        self.tally.datagrams_accepted += 1;
        let recv_ns = if dg.recv_ns == 0 {
            pickup_ns
        } else {
            dg.recv_ns
        };
        // Start the memory loads for every key this shard owns before applying the first: a
        // key's record is a cache (and TLB) miss in a large table, and issued together the
        // misses of a batch overlap.
        for e in events.iter() {
            let key = e.key();
            if route::owner(key, self.shards) == self.id {
                self.owner.table.prefetch(key);
            }
        }
        for e in events.iter() {
            let ev = routed(&e, recv_ns, pickup_ns, dg.src);
            let owner = route::owner(ev.key, self.shards);
            if owner == self.id {
                self.tally.applied_direct += 1;
                self.owner.apply(&ev, ReplyTo::Udp(ev.reply_to), 0, sink);
            } else if !self.stalled.is_empty() {
                // Keep arrival order behind events already waiting.
                crate::invariant!(
                    self.stalled.len() < self.stalled.capacity(),
                    "stall queue past its bound"
                );
                self.stalled.push((owner, ev));
            } else {
                self.forward(owner, ev);
            }
        }
    }

    /// Decode one Kafka record's value and apply every event here, in order: the shard owns the
    /// record's partition, so its events take no ring hop whatever their keys' hash.
    /// `record.fetched_ns` is when the shard took it (CLOCK_REALTIME ns). Errs with the reason
    /// when the value is not a valid EventBatch (counted by it; the caller still advances the
    /// partition's offset, and sends the record to the dead-letter topic if there is one).
    pub fn on_record(
        &mut self,
        record: &KafkaRecord<'_>,
        sink: &mut dyn ScoreSink,
    ) -> Result<(), DecodeError> {
        let events = match self.decoder.decode(record.value) {
            Ok(ev) => ev,
            Err(e) => {
                self.counters.skipped_record(e);
                let skipped: u64 = DecodeError::ALL
                    .iter()
                    .map(|&r| self.counters.records_skipped_by(r))
                    .sum();
                if skipped.is_power_of_two() {
                    tracing::debug!(
                        source = record.source,
                        reason = e.reason(),
                        skipped,
                        "Kafka record skipped: {e}"
                    );
                }
                return Err(e);
            }
        };
        self.counters.kafka_records.inc();
        self.counters.events_received.add(events.len() as u64);
        for e in events.iter() {
            self.owner.table.prefetch(e.key());
        }
        self.tally.applied_direct += events.len() as u64;
        for e in events.iter() {
            let ev = routed(&e, record.timestamp_ns, record.fetched_ns, UNSPECIFIED_ADDR);
            self.owner
                .apply(&ev, ReplyTo::Kafka(record.reply), record.source, sink);
        }
        Ok(())
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

    /// Every datagram taken is accepted, refused (by reason) or shed; every event taken in
    /// from a datagram or record is applied here, handed to its owner's ring, dropped for a
    /// full ring, or waiting in the stall queue. Checked in the test run, free when off.
    fn check_accounting(&self) {
        let c = &self.counters;
        crate::invariant_eq!(
            c.datagrams_received.get(),
            self.tally.datagrams_accepted + c.datagrams_dropped_total() + c.datagrams_shed.get(),
            "shard {}: datagram accounting",
            self.id
        );
        crate::invariant_eq!(
            c.events_received.get(),
            self.tally.applied_direct
                + c.events_routed_away.get()
                + c.events_dropped_by(DropReason::RingFull)
                + (c.events_dropped_by(DropReason::ShardPanicked) - self.tally.lost_in_rings)
                + self.stalled.len() as u64,
            "shard {}: event accounting",
            self.id
        );
    }

    /// Events waiting for a batched cold read (`state.cold_wait_max`), out or to come.
    pub fn waiting_for_cold(&self) -> usize {
        self.owner.cold_wait.len()
    }

    /// Make the batched cold reads with `reader` (the shard's own by default). Only before
    /// the first event.
    pub fn use_cold_reader(&mut self, reader: ColdReader) {
        crate::invariant_eq!(self.owner.cold_wait.len(), 0);
        self.owner.reader = reader;
    }

    /// Delete spilled keys idle past the TTL that `sweeper` names (`state::spill_sweep`).
    pub fn use_spill_sweeper(&mut self, sweeper: SpillSweeper) {
        self.owner.sweeper = Some(sweeper);
    }

    /// A cold read is back and waits to land (for the check before parking).
    pub fn cold_read_back(&self) -> bool {
        self.owner.reader.has_news()
    }

    /// Deferred reader (simulation): make the read that is out now; it lands at the next
    /// `finish_cycle`.
    pub fn read_cold_deferred(&mut self) {
        self.owner.reader.read_deferred();
    }

    /// Land every cold read and apply every event waiting for one, waiting for the reader
    /// (before a drain's end, a checkpoint that records input positions, a partition's move).
    pub fn settle_cold(&mut self, sink: &mut dyn ScoreSink) {
        self.owner.settle_cold(sink);
        self.owner.score(sink);
    }

    /// Backpressure: is the shard holding events it could not hand on? (It must not receive
    /// more until they are.)
    pub fn is_stalled(&self) -> bool {
        !self.stalled.is_empty()
    }

    /// Gives up on peers whose thread died (a panic): the events left unread in the rings to
    /// them and those waiting here for room in those rings are lost, counted by reason and
    /// returned for the log. Events for live peers stay.
    pub fn give_up_on_dead_peers(&mut self) -> usize {
        let in_rings = self.out.let_go_of_abandoned();
        let before = self.stalled.len();
        let out = &self.out;
        self.stalled.retain(|&(owner, _)| !out.is_gone(owner));
        let lost = before - self.stalled.len() + in_rings;
        self.tally.lost_in_rings += in_rings as u64;
        self.counters
            .dropped_events(DropReason::ShardPanicked, lost as u64);
        self.check_accounting();
        lost
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
        self.inbound.drain(max, |a, b| {
            // Start every record's loads before the first apply (as for a datagram).
            a.iter()
                .chain(b)
                .for_each(|ev| owner.table.prefetch(ev.key));
            a.iter()
                .chain(b)
                .for_each(|ev| owner.apply(ev, ReplyTo::Udp(ev.reply_to), 0, sink));
        })
    }

    pub fn inbound_is_empty(&self) -> bool {
        self.inbound.is_empty()
    }

    /// Between cycles: take a new model version. Returns a replaced model to retire.
    pub fn apply_model_update(&mut self, u: ModelUpdate) -> Option<Box<dyn Scorer>> {
        crate::invariant!(self.owner.batch.is_empty(), "updates land between cycles");
        self.owner.model.apply(u)
    }

    /// Online parameters for averaging, if Feedback arrived since the last call.
    pub fn model_snapshot(&mut self) -> Option<(Box<[f32]>, u64)> {
        self.owner.model.snapshot()
    }

    pub fn model_version(&self) -> u32 {
        self.owner.model.version()
    }

    /// End of a drain cycle: land a cold read that is back and start the next, score what is
    /// pending, sweep a few slots for idle keys, publish the state counters. `now_ns` is the
    /// cycle's processing time. Returns the events that waited for a cold read and were
    /// applied (or refused) now, plus the spill sweep's names taken (work either way: the
    /// shard does not park while names wait).
    pub fn finish_cycle(&mut self, now_ns: u64, sink: &mut dyn ScoreSink) -> usize {
        self.check_accounting();
        let landed = self.owner.cold_turn(sink);
        self.owner.score(sink);
        let reference = self.owner.times.reference(now_ns);
        self.owner
            .table
            .expire_idle(reference, self.owner.ttl_sweep_slots);
        let named = self.owner.sweep_spilled(reference);
        self.publish_state_counters();
        landed + named
    }

    /// The state's counters (keys hot and spilled, hits, spills, ...) as they are now: at every
    /// cycle's end, and once before the shard reports ready, so what start-up reports (READY's
    /// restored key count) is the restored state, not zeros the first cycle has not replaced.
    pub fn publish_state_counters(&self) {
        let t = &self.owner.table;
        let c = &self.counters;
        c.hot_keys.set(t.hot_len() as u64);
        c.spilled_keys.set(t.spilled_len());
        c.hot_hits.set(t.stats.hot_hits);
        c.hot_misses.set(t.stats.hot_misses);
        c.spills.set(t.stats.spills);
        c.reloads.set(t.stats.reloads);
        c.cold_waiting.set(self.owner.cold_wait.len() as u64);
        c.expired.set(t.stats.expired);
        c.spill_expired.set(t.stats.spill_expired);
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

#[cfg(test)]
#[path = "cold_wait_tests.rs"]
mod cold_wait_tests;
