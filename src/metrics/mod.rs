//! Per-shard counters and latency histograms, merged at shutdown into one report.
//!
//! Counters are single-writer (the owning shard) `AtomicU64`s updated with a relaxed load and
//! store, which compiles to plain moves, so another thread (the Prometheus exporter to come)
//! can read them live without a lock. Histograms are shard-owned and handed over at the end.

pub mod names;
pub mod report;

pub use report::{write_hgrm, Report};

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::wire::DecodeError;

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
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        Self::RingFull,
        Self::StateFull,
        Self::ModelError,
        Self::SendError,
        Self::StateError,
        Self::Late,
        Self::Duplicate,
        Self::KeyOnTwoPartitions,
        Self::ProduceError,
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
        }
    }
}

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub datagrams_received: Counter,
    pub datagrams_dropped: [Counter; DecodeError::ALL.len()],
    pub events_received: Counter,
    pub events_dropped: [Counter; DropReason::ALL.len()],
    pub events_routed_away: Counter,
    pub observations_applied: Counter,
    pub feedback_applied: Counter,
    pub scores_emitted: Counter,
    pub alerts_emitted: Counter,
    pub reply_datagrams: Counter,
    pub socket_drops: Counter,
    pub uring_enobufs: Counter,
    pub uring_rearms: Counter,
    pub hot_keys: Counter,
    pub spilled_keys: Counter,
    pub hot_hits: Counter,
    pub hot_misses: Counter,
    pub spills: Counter,
    pub reloads: Counter,
    pub expired: Counter,
    /// Late events applied at the watermark (`time.late = apply`).
    pub late_applied: Counter,
    pub checkpoints_written: Counter,
    pub checkpoints_failed: Counter,
    pub checkpoints_skipped: Counter,
    /// Longest flip of a snapshot (ns): the one stop a checkpoint needs.
    pub checkpoint_pause_max_ns: Counter,
    /// Longest slice of copying a running snapshot took in one cycle (ns).
    pub checkpoint_slice_max_ns: Counter,
    /// Times a full spill journal made the shard wait for the writer.
    pub checkpoint_journal_waits: Counter,
    pub checkpoint_bytes_last: Counter,
    /// Kafka records whose value decoded and was applied.
    pub kafka_records: Counter,
    /// Kafka records skipped (their offset still advances), by DecodeError reason.
    pub kafka_records_skipped: [Counter; DecodeError::ALL.len()],
    /// Score records handed to the Kafka producer.
    pub kafka_score_records: Counter,
    /// Score records the producer reported as not delivered.
    pub kafka_delivery_failures: Counter,
    /// exactly_once: transactions committed / aborted or failed.
    pub kafka_transactions: Counter,
    pub kafka_transactions_failed: Counter,
    /// Cycles in which the shard took no records because the producer had too many in flight.
    pub kafka_backpressure_cycles: Counter,
    /// exactly_once: longest time a commit held the shard (waiting for the checkpoint to be
    /// durable, then the transaction's round trips), ns.
    pub kafka_commit_pause_max_ns: Counter,
}

impl ShardCounters {
    #[inline]
    pub fn dropped_datagram(&self, e: DecodeError) {
        self.datagrams_dropped[e.index()].inc();
    }
    #[inline]
    pub fn dropped_events(&self, r: DropReason, n: u64) {
        self.events_dropped[r as usize].add(n);
    }
    #[inline]
    pub fn skipped_record(&self, e: DecodeError) {
        self.kafka_records_skipped[e.index()].inc();
    }
    pub fn records_skipped_by(&self, e: DecodeError) -> u64 {
        self.kafka_records_skipped[e.index()].get()
    }
    pub fn datagrams_dropped_total(&self) -> u64 {
        self.datagrams_dropped.iter().map(Counter::get).sum()
    }
    pub fn events_dropped_by(&self, r: DropReason) -> u64 {
        self.events_dropped[r as usize].get()
    }
    pub fn datagrams_dropped_by(&self, e: DecodeError) -> u64 {
        self.datagrams_dropped[e.index()].get()
    }
}

/// One shard's latency histograms (nanoseconds).
pub struct ShardLatency {
    /// Kernel receive timestamp -> reply handed to the kernel.
    pub receive_to_emit: Histogram<u64>,
    /// Shard pickup -> reply handed to the kernel.
    pub in_shard: Histogram<u64>,
    /// Model run time per micro-batch (one call of the shard's model).
    pub model_run: Histogram<u64>,
    /// Kafka: record timestamp -> Score record handed to the producer.
    pub kafka_record_to_produce: Histogram<u64>,
    /// Kafka: record taken from the consumer -> Score record handed to the producer (sluice's
    /// own share of the Kafka latency).
    pub kafka_in_shard: Histogram<u64>,
    /// Values above the histogram's range (clamped to it).
    pub clamped: u64,
    max_ns: u64,
}

impl ShardLatency {
    pub fn new(max_ns: u64) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            receive_to_emit: Histogram::new_with_bounds(1, max_ns, 3)?,
            in_shard: Histogram::new_with_bounds(1, max_ns, 3)?,
            model_run: Histogram::new_with_bounds(1, max_ns, 3)?,
            kafka_record_to_produce: Histogram::new_with_bounds(1, max_ns, 3)?,
            kafka_in_shard: Histogram::new_with_bounds(1, max_ns, 3)?,
            clamped: 0,
            max_ns,
        })
    }

    #[inline]
    pub fn record(&mut self, receive_to_emit_ns: u64, in_shard_ns: u64) {
        if receive_to_emit_ns > self.max_ns || in_shard_ns > self.max_ns {
            self.clamped += 1;
        }
        // saturating_record clamps to the highest trackable value and never allocates.
        self.receive_to_emit
            .saturating_record(receive_to_emit_ns.max(1));
        self.in_shard.saturating_record(in_shard_ns.max(1));
    }

    #[inline]
    pub fn record_kafka(&mut self, record_to_produce_ns: u64, in_shard_ns: u64) {
        if record_to_produce_ns > self.max_ns || in_shard_ns > self.max_ns {
            self.clamped += 1;
        }
        self.kafka_record_to_produce
            .saturating_record(record_to_produce_ns.max(1));
        self.kafka_in_shard.saturating_record(in_shard_ns.max(1));
    }
}
