//! One pinned shard thread. Each turn of its loop (`tick`) runs the data path in order:
//! receive a batch of datagrams -> decode + route (core) -> drain events routed here by other
//! shards -> score the cycle's Observations -> send the cycle's replies -> wake the owners it
//! routed to. Idle shards spin `shards.idle_spins` turns, then park until a datagram, a wake-up
//! from another shard, or `shards.park_timeout_us`.

mod at_least_once;
mod cold_reader;
mod cold_wait;
mod core;
mod event_time;
mod exactly_once;
mod kafka;
mod lifecycle;
mod replay;
mod spill_sweeper;

pub use self::core::{KafkaRecord, ShardCore};
pub use at_least_once::{AtLeastOnce, Epochs};
pub use cold_reader::{ColdReader, OUT_MAX as COLD_READS_OUT_MAX};
pub use exactly_once::{Commit, ExactlyOnce, Transactions};
pub use kafka::{flip_waits_for_cold, GroupMember, KafkaAttach, ShardKafka};
pub use lifecycle::{Control, PanicStop};
pub use replay::{Replay, Replayed};
pub use spill_sweeper::{SpillSweeper, SweepProgress};

use std::sync::Arc;
use std::time::Duration;

use crate::clock;
use crate::egress::{Egress, EgressSink};
use crate::infer::{ModelUpdate, ShardReport};
use crate::ingest::udp::UdpReceiver;
use crate::ingest::IngestError;
use crate::metrics::{ShardCounters, ShardLatency};
use crate::state::checkpoint::Checkpointer;
use crate::wake::Waker;

fn publish_checkpoint_stats(cp: &Checkpointer, c: &ShardCounters, flips_seen: &mut u64) {
    if cp.stats.flips != *flips_seen {
        // At most one flip a cycle, and this runs every cycle after the checkpoint step.
        *flips_seen = cp.stats.flips;
        c.latency.checkpoint_pause.record(cp.stats.last_pause_ns);
    }
    c.checkpoints_written.set(cp.stats.written);
    c.checkpoints_failed.set(cp.stats.failed);
    c.checkpoints_skipped.set(cp.stats.skipped_busy);
    c.checkpoint_pause_max_ns.set(cp.stats.max_pause_ns);
    c.checkpoint_slice_max_ns.set(cp.stats.max_step_ns);
    c.checkpoint_journal_waits.set(cp.stats.journal_waits);
    c.checkpoint_bytes_last.set(cp.stats.last_bytes);
}

/// An admin question about one key, answered by its owner shard between cycles.
pub struct StateQuery {
    pub key: u64,
    pub reply: std::sync::mpsc::Sender<Result<Option<crate::state::KeyState>, String>>,
}

/// The shard's ends of its rings to the control thread.
pub struct ModelLink {
    pub updates: rtrb::Consumer<ModelUpdate>,
    pub reports: rtrb::Producer<ShardReport>,
    pub queries: rtrb::Consumer<StateQuery>,
    pub snapshot_interval_ns: u64,
    pub next_snapshot_ns: u64,
}

impl ModelLink {
    /// Between cycles: take new model versions, hand back replaced ones, and report online
    /// weights when due. Nothing here is per event.
    /// Returns how many online averaging rounds it applied.
    fn service(&mut self, core: &mut ShardCore, now_ns: u64) -> u64 {
        let mut rounds = 0;
        while let Ok(u) = self.updates.pop() {
            rounds += u64::from(matches!(u, ModelUpdate::Online(..)));
            if let Some(old) = core.apply_model_update(u) {
                // If the report ring is full the old model is dropped here: a slower teardown
                // on this shard, once, rather than a leak.
                let _ = self.reports.push(ShardReport::Retired(old));
            }
        }
        while let Ok(q) = self.queries.pop() {
            let answer = core.locate(q.key).map_err(|e| e.to_string());
            // The asker may have given up; nothing to do then.
            let _ = q.reply.send(answer);
        }
        if now_ns >= self.next_snapshot_ns {
            self.next_snapshot_ns = now_ns + self.snapshot_interval_ns;
            if let Some((params, n)) = core.model_snapshot() {
                let _ = self.reports.push(ShardReport::Snapshot(params, n));
            }
        }
        rounds
    }
}

pub struct Shard {
    pub core: ShardCore,
    /// Periodic snapshots of the shard's state (with `state.dir` and `checkpoint.interval_ms`).
    pub checkpoints: Option<Checkpointer>,
    pub model_link: ModelLink,
    pub rx: UdpReceiver,
    /// The shard's Kafka partitions and Score producer (`ingest.kafka.brokers` set).
    pub kafka: Option<ShardKafka>,
    /// Kafka not attached yet (the brokers did not answer at start): tried between cycles.
    pub attach: Option<KafkaAttach>,
    pub egress: Egress,
    pub counters: Arc<ShardCounters>,
    pub latency: ShardLatency,
    /// Index i wakes shard i.
    pub wakers: Arc<Vec<Waker>>,
    pub recv_batch: usize,
    pub drain_max: usize,
    pub idle_spins: u32,
    pub park_timeout: Duration,
    /// A loop turn longer than this counts as a stall (`metrics.stall_threshold_us`).
    pub stall_threshold_ns: u64,
    /// Snapshot flips already put in the pause histogram.
    pub flips_seen: u64,
}

impl Shard {
    /// One drain cycle; returns how much work it found (datagrams + events moved).
    pub fn tick(&mut self, receive: bool) -> Result<usize, IngestError> {
        if let Some(attach) = self.attach.as_mut() {
            // A channel poll (no syscall) until the partitions are dealt.
            if let Some(attached) = attach(&mut self.core) {
                self.attach = None;
                let (kafka, checkpoints) = attached.map_err(IngestError::Kafka)?;
                let owned = kafka.source.owned().len() as u64;
                self.counters.kafka_partitions_attached.set(owned);
                self.kafka = Some(kafka);
                self.checkpoints = checkpoints;
            }
        }
        let pickup_ns = clock::realtime_ns();
        let Shard {
            core,
            rx,
            kafka,
            egress,
            counters,
            latency,
            model_link,
            ..
        } = self;
        let rounds = model_link.service(core, pickup_ns);
        counters.model_online_rounds.add(rounds);
        counters.model_version.set(u64::from(core.model_version()));
        let mut work = 0;
        if core.is_stalled() {
            work += core.retry_stalled();
        }
        // A receive error still lets this cycle finish (score, flush) before it is reported,
        // so what was already taken in is answered and the cycle boundary stays clean.
        let received = if receive && !core.is_stalled() {
            let mut sink = EgressSink {
                egress,
                kafka: kafka.as_mut().map(|k| &mut k.sink),
                counters,
                latency,
            };
            rx.recv(self.recv_batch, &mut |dg| {
                core.on_datagram(dg, pickup_ns, &mut sink)
            })
        } else {
            Ok(0)
        };
        if receive {
            if let Some(k) = kafka.as_mut() {
                work += k.take(core, pickup_ns, egress, counters, latency);
            }
        }
        let kafka_settles = kafka.as_ref().is_some_and(ShardKafka::wants_settled);
        let mut sink = EgressSink {
            egress,
            kafka: kafka.as_mut().map(|k| &mut k.sink),
            counters,
            latency,
        };
        work += core.drain_inbound(self.drain_max, &mut sink);
        work += core.finish_cycle(pickup_ns, &mut sink);
        if kafka_settles && core.waiting_for_cold() > 0 {
            counters.kafka_cold_settles.inc();
        }
        if !receive || kafka_settles {
            // Draining to a stop: nothing may still wait for a cold read at its end. With
            // Kafka, a checkpoint or rebalance waits for it (`ShardKafka::wait_for_cold`).
            // (A shard reading on its own thread lands its reads within the cycle: this
            // finds nothing to wait for.)
            core.settle_cold(&mut sink);
        }
        egress.flush(counters, latency);
        let mut failure = None;
        let cold_waits = core.waiting_for_cold() > 0;
        if let Some(k) = kafka.as_mut() {
            k.sink.flush(counters, latency, cold_waits, pickup_ns);
            if let Err(e) = k.check_delivered(self.checkpoints.as_ref()) {
                failure = Some(IngestError::Kafka(e));
            } else if self.checkpoints.is_none() && !cold_waits {
                // The group's offsets may cover only applied events: with some still waiting
                // for a cold read, a later cycle commits.
                k.commit_without_checkpoints(pickup_ns);
            }
        }
        if let Some(cp) = &mut self.checkpoints {
            // Between cycles, after the flush: every event taken in so far is applied and
            // answered, none is half-way — but those waiting for a cold read off the shard
            // thread, which a Kafka checkpoint or rebalance waits for (`wait_for_cold`).
            match kafka.as_mut() {
                Some(k) => {
                    k.turn_begins();
                    if let Err(e) = k
                        .rebalance(cp, core, counters)
                        .and_then(|()| k.checkpoint(cp, pickup_ns, core, counters))
                    {
                        failure = Some(IngestError::Kafka(e));
                    }
                }
                None => {
                    let max_event_ns = core.max_event_ns();
                    cp.tick(pickup_ns, core.state_mut(), max_event_ns);
                }
            }
            publish_checkpoint_stats(cp, counters, &mut self.flips_seen);
            let committing = kafka
                .as_ref()
                .is_some_and(|k| k.commit_needs_turns() || k.importing());
            if cp.capturing() || committing {
                // A snapshot being copied a slice a cycle (or, exactly_once, written for its
                // commit), or a rebuilt partition's keys going in a slice a cycle: no parking
                // until it is whole.
                work += 1;
            }
        }
        let wakers = &self.wakers;
        core.take_touched(|owner| wakers[owner].wake_if_parked());
        let s = rx.stats();
        counters.socket_drops.set(s.socket_drops);
        counters.uring_enobufs.set(s.enobufs);
        counters.uring_rearms.set(s.rearms);
        for (c, v) in counters.xdp_frames_dropped.iter().zip(s.xdp_frames_dropped) {
            c.set(v);
        }
        counters.xdp_frames_received.set(s.xdp_frames);
        counters.xdp_kernel_dropped.set(s.xdp_kernel.rx_dropped);
        counters.xdp_rx_ring_full.set(s.xdp_kernel.rx_ring_full);
        counters
            .xdp_fill_ring_empty
            .set(s.xdp_kernel.fill_ring_empty);
        // The turn's length, parking excluded (a realtime step would only skew one figure).
        counters.loop_took(
            clock::realtime_ns().saturating_sub(pickup_ns),
            self.stall_threshold_ns,
        );
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(work + received?)
    }

    /// At shutdown, after the drain: one last checkpoint, waited for.
    pub fn final_checkpoint(&mut self) {
        if let (None, Some(k)) = (&self.checkpoints, &mut self.kafka) {
            k.final_group_commit();
        }
        if let Some(cp) = &mut self.checkpoints {
            match &mut self.kafka {
                Some(k) => k.final_checkpoint(cp, &mut self.core, &self.counters),
                None => {
                    let max_event_ns = self.core.max_event_ns();
                    cp.finish(self.core.state_mut(), max_event_ns);
                }
            }
            publish_checkpoint_stats(cp, &self.counters, &mut self.flips_seen);
        }
    }

    /// A cycle without receiving (cannot fail: it touches no socket for input).
    fn tick_draining(&mut self) {
        let _ = self.tick(false);
    }

    /// Sleep until there is work, unless some arrived while deciding to.
    fn park(&mut self) -> Result<(), IngestError> {
        let me = &self.wakers[self.core.id];
        me.park();
        let kafka_arrived = self.kafka.as_ref().is_some_and(|k| k.source.has_arrived());
        // A cold read landing wakes the shard the same way (the reader's `wake_if_parked`).
        if self.core.inbound_is_empty() && !kafka_arrived && !self.core.cold_read_back() {
            self.rx.park(self.park_timeout, me.raw_fd())?;
            me.clear();
        }
        me.unpark();
        Ok(())
    }

    /// Run until `control` says stop, then drain (see `lifecycle`). A receive error stops the
    /// whole process (after the drain, so nothing accepted is lost) and is returned with the
    /// latency histograms for the shutdown report.
    pub fn run(mut self, control: &Control) -> (ShardLatency, Option<IngestError>) {
        let mut idle = 0u32;
        let mut failure = None;
        while !control.stop_requested() {
            control.wait_while_held(self.core.id);
            let step = self.tick(true).and_then(|work| {
                if work == 0 {
                    idle = idle.saturating_add(1);
                    if idle > self.idle_spins {
                        self.park()?;
                    }
                } else {
                    idle = 0;
                }
                Ok(())
            });
            if let Err(e) = step {
                tracing::error!(shard = self.core.id, "stopping the service: {e}");
                control.request_stop();
                failure = Some(e);
            }
        }
        lifecycle::drain(&mut self, control);
        (self.latency, failure)
    }
}
