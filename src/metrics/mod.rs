//! Per-shard counters and latency histograms: served live by the exporter, merged at
//! shutdown into one report.
//!
//! Counters are single-writer (the owning shard) `AtomicU64`s updated with a relaxed load and
//! store, which compiles to plain moves, so the exporter thread reads them live without a
//! lock. Latency is kept twice: in HDR histograms owned by the shard (exact percentiles for
//! the shutdown report and `.hgrm` files) and in fixed-bucket live histograms the exporter
//! serves (the same bounds on every host, so they sum across shards and hosts).

pub mod catalog;
mod counters;
pub mod exporter;
pub mod names;
pub mod report;

pub use counters::{LiveLatency, ShardCounters, SHARD_HISTOGRAMS, SHARD_METRICS};
pub use report::{write_hgrm, Report};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a load + store is enough and avoids a locked instruction.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// For the few counters with a second writer (a Kafka producer's delivery reports,
    /// served on the shard thread and, during an exactly_once commit, on the committer
    /// thread): a locked add, so neither loses the other's count.
    pub fn add_shared(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why an accepted event was dropped after decoding (label of EVENTS_DROPPED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The ring to the owner shard was full and `route.full = drop`.
    RingFull,
    /// The owner's hot state is full (`state.hot_capacity`).
    StateFull,
    /// The model failed on the batch holding this event.
    ModelError,
    /// The reply datagram could not be sent.
    SendError,
    /// The spill store failed (I/O); the key's state is unchanged.
    StateError,
    /// Event time older than the shard's watermark with `time.late = drop`.
    Late,
    /// A replay of a seq its key already applied (`state.dedup`).
    Duplicate,
    /// A Kafka event whose key's state lives with another partition (or came over UDP).
    KeyOnTwoPartitions,
    /// The Score record could not be handed to the Kafka producer.
    ProduceError,
    /// Held for a peer's full ring (`route.full = backpressure`) when a shard's thread
    /// panicked: the service stops without waiting for them (a restart restores the last
    /// checkpoint).
    ShardPanicked,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        Self::RingFull,
        Self::StateFull,
        Self::ModelError,
        Self::SendError,
        Self::StateError,
        Self::Late,
        Self::Duplicate,
        Self::KeyOnTwoPartitions,
        Self::ProduceError,
        Self::ShardPanicked,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Self::RingFull => "ring_full",
            Self::StateFull => "state_full",
            Self::ModelError => "model_error",
            Self::SendError => "send_error",
            Self::StateError => "state_error",
            Self::Late => "late",
            Self::Duplicate => "duplicate",
            Self::KeyOnTwoPartitions => "key_on_two_partitions",
            Self::ProduceError => "produce_error",
            Self::ShardPanicked => "shard_panicked",
        }
    }
}

/// One shard's latency histograms (nanoseconds).
pub struct ShardLatency {
    /// Kernel receive timestamp -> reply handed to the kernel.
    pub receive_to_emit: Histogram<u64>,
    /// Shard pickup -> reply handed to the kernel.
    pub in_shard: Histogram<u64>,
    /// `receive_to_emit` split by whether the event's key was hot when it arrived (cold: read
    /// from the spill store, or new, with `state.dir` set): what the cold keys cost the hot.
    pub receive_to_emit_hot_key: Histogram<u64>,
    pub receive_to_emit_cold_key: Histogram<u64>,
    /// Model run time per micro-batch (one call of the shard's model).
    pub model_run: Histogram<u64>,
    /// The same divided by the call's rows: what the model costs an event, whatever the
    /// batching (a call at the tail carries the rows that queued meanwhile).
    pub model_run_per_row: Histogram<u64>,
    /// Kafka: record timestamp -> Score record handed to the producer.
    pub kafka_record_to_produce: Histogram<u64>,
    /// Kafka: record taken from the consumer -> Score record handed to the producer (sluice's
    /// own share of the Kafka latency).
    pub kafka_in_shard: Histogram<u64>,
    /// Kafka: record available in the consumer's queue (`ingest::kafka::arrival`, a lower
    /// bound) -> its Score record handed to the producer: the same share, with the wait in
    /// librdkafka's queue and the sends before it counted.
    pub kafka_available_to_produce: Histogram<u64>,
    /// Values above the histogram's range (clamped to it).
    pub clamped: u64,
    max_ns: u64,
    /// The shard's counters, whose live histograms get every value too.
    live: Arc<ShardCounters>,
}

impl ShardLatency {
    pub fn new(max_ns: u64, live: Arc<ShardCounters>) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            receive_to_emit: Histogram::new_with_bounds(1, max_ns, 3)?,
            in_shard: Histogram::new_with_bounds(1, max_ns, 3)?,
            receive_to_emit_hot_key: Histogram::new_with_bounds(1, max_ns, 3)?,
            receive_to_emit_cold_key: Histogram::new_with_bounds(1, max_ns, 3)?,
            model_run: Histogram::new_with_bounds(1, max_ns, 3)?,
            model_run_per_row: Histogram::new_with_bounds(1, max_ns, 3)?,
            kafka_record_to_produce: Histogram::new_with_bounds(1, max_ns, 3)?,
            kafka_in_shard: Histogram::new_with_bounds(1, max_ns, 3)?,
            kafka_available_to_produce: Histogram::new_with_bounds(1, max_ns, 3)?,
            clamped: 0,
            max_ns,
            live,
        })
    }

    /// `cold`: the event's key was not hot on arrival (`PendingScore::cold`).
    #[inline]
    pub fn record(&mut self, receive_to_emit_ns: u64, in_shard_ns: u64, cold: bool) {
        if receive_to_emit_ns > self.max_ns || in_shard_ns > self.max_ns {
            self.clamped += 1;
        }
        // saturating_record clamps to the highest trackable value and never allocates.
        self.receive_to_emit
            .saturating_record(receive_to_emit_ns.max(1));
        if cold {
            &mut self.receive_to_emit_cold_key
        } else {
            &mut self.receive_to_emit_hot_key
        }
        .saturating_record(receive_to_emit_ns.max(1));
        self.in_shard.saturating_record(in_shard_ns.max(1));
        self.live.latency.receive_to_emit.record(receive_to_emit_ns);
        self.live.latency.in_shard.record(in_shard_ns);
    }

    /// One model call of `rows` rows (at least one).
    #[inline]
    pub fn record_model_run(&mut self, ns: u64, rows: usize) {
        self.model_run.saturating_record(ns.max(1));
        self.live.latency.model_run.record(ns);
        let per_row = ns / rows.max(1) as u64;
        self.model_run_per_row.saturating_record(per_row.max(1));
        self.live.latency.model_run_per_row.record(per_row);
    }

    #[inline]
    pub fn record_kafka(&mut self, record_to_produce_ns: u64, in_shard_ns: u64) {
        if record_to_produce_ns > self.max_ns || in_shard_ns > self.max_ns {
            self.clamped += 1;
        }
        self.kafka_record_to_produce
            .saturating_record(record_to_produce_ns.max(1));
        self.kafka_in_shard.saturating_record(in_shard_ns.max(1));
        self.live
            .latency
            .kafka_record_to_produce
            .record(record_to_produce_ns);
        self.live.latency.kafka_in_shard.record(in_shard_ns);
    }

    #[inline]
    pub fn record_kafka_available(&mut self, available_to_produce_ns: u64) {
        if available_to_produce_ns > self.max_ns {
            self.clamped += 1;
        }
        self.kafka_available_to_produce
            .saturating_record(available_to_produce_ns.max(1));
        self.live
            .latency
            .kafka_available_to_produce
            .record(available_to_produce_ns);
    }
}
