//! Hard upper bounds on every configurable size.
//!
//! Config values are checked against these at startup (`config::validate`), so every queue,
//! table and batch in the process has a bound known before the first event arrives. The
//! compile-time ones size inline arrays in fixed-layout records and ring slots.

/// Raw producer features carried inline in a routed event (ring slots are fixed-size).
pub const FEATURES_INLINE_MAX: usize = 16;
/// Length of a model input row (entries of `features.list`).
pub const FEATURE_ROW_MAX: usize = 64;
/// Buckets in one sliding window (size / step); with the allowed lateness a ring may hold
/// twice this.
pub const WINDOW_BUCKETS_MAX: usize = 256;
/// Hot slots the TTL sweep visits per drain cycle.
pub const TTL_SWEEP_SLOTS_MAX: usize = 1 << 20;
/// Spilled keys a shard checks for expiry per drain cycle (`state.spill_sweep_keys_per_cycle`):
/// one batched read and one write of that many.
pub const SPILL_SWEEP_KEYS_PER_CYCLE_MAX: usize = 4_096;
/// Records a second the spill sweep's scanner reads per shard.
pub const SPILL_SWEEP_KEYS_PER_S_MAX: usize = 100_000_000;
/// Events waiting for one batched cold read (`state.cold_wait_max`): a batch's scratch is
/// two record images per event.
pub const COLD_WAIT_MAX: usize = 1 << 16;
/// Checkpoints between two full ones (the longest chain a restore reads).
pub const CHECKPOINT_CHAIN_MAX: usize = 10_000;
/// Records a shard copies into a running snapshot per drain cycle.
pub const CHECKPOINT_SLICE_RECORDS_MAX: usize = 1 << 20;
/// Spill moves journaled per shard during one snapshot's spill checkpoint.
pub const SPILL_JOURNAL_RECORDS_MAX: usize = 1 << 22;
/// Complete checkpoints kept per shard.
pub const CHECKPOINTS_KEPT_MAX: usize = 100;
/// Allowed lateness in event time (one day, in ms).
pub const LATENESS_MS_MAX: usize = 86_400_000;
/// Longest checkpoint interval (one day, in ms).
pub const CHECKPOINT_INTERVAL_MS_MAX: usize = 86_400_000;

/// Largest UDP payload (IPv4: 65535 - 20 IP - 8 UDP).
pub const DATAGRAM_BYTES_MAX: usize = 65_507;
/// Smallest datagram limit that still fits a one-event batch with a few features.
pub const DATAGRAM_BYTES_MIN: usize = 256;
/// Events one EventBatch may carry.
pub const BATCH_EVENTS_MAX: usize = 4_096;
/// Shards (threads) per process.
pub const SHARDS_MAX: usize = 256;
/// Slots in one SPSC ring between two shards.
pub const RING_CAPACITY_MAX: usize = 1 << 20;
/// Provided buffers in one io_uring buffer ring (the kernel's limit is 32768).
pub const URING_BUFFERS_MAX: usize = 32_768;
/// UMEM frames (and fill/RX ring entries) of one AF_XDP socket.
pub const XDP_FRAMES_MAX: usize = 32_768;
/// Messages per recvmmsg/sendmmsg call.
pub const MMSG_BATCH_MAX: usize = 1_024;
/// Hot-state records per shard.
pub const HOT_CAPACITY_MAX: usize = 1 << 28;
/// Rows in one model micro-batch.
pub const INFER_BATCH_MAX: usize = 4_096;
/// Distinct reply destinations buffered in one drain cycle before an early flush.
pub const EGRESS_DESTINATIONS_MAX: usize = 1_024;
/// Verifier: tables in one buffer (EventBatch + one per event).
pub const VERIFY_TABLES_MAX: usize = BATCH_EVENTS_MAX + 1;

const _: () = assert!(FEATURES_INLINE_MAX <= u8::MAX as usize);
const _: () = assert!(URING_BUFFERS_MAX <= 32_768);
const _: () = assert!(URING_BUFFERS_MAX.is_power_of_two());
const _: () = assert!(DATAGRAM_BYTES_MIN < DATAGRAM_BYTES_MAX);
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);
/// Kafka records a shard takes per drain cycle.
pub const KAFKA_RECORDS_PER_CYCLE_MAX: usize = 4_096;
/// Standby replicas per partition, at most.
pub const KAFKA_STANDBY_REPLICAS_MAX: usize = 8;
/// Keys in an instance's warm copies, at most (~400 bytes each with the default features).
pub const KAFKA_STANDBY_KEYS_MAX: usize = 100_000_000;
/// How long a handed-over partition's keys may be kept, at most (Kafka's default tombstone
/// retention, 24 h: a copy older than half the changelog's is never used anyway).
pub const KAFKA_HANDED_OVER_KEEP_MS_MAX: u64 = 86_400_000;
/// `ingest.kafka.partition_check_ms` when not 0: at least a second (one metadata request per
/// input topic each time), at most a day.
pub const KAFKA_PARTITION_CHECK_MS_MIN: u64 = 1_000;
pub const KAFKA_PARTITION_CHECK_MS_MAX: u64 = 86_400_000;
/// Keys of a rebuilt partition put into a shard's state per cycle, at most.
pub const KAFKA_RESTORE_KEYS_PER_CYCLE_MAX: usize = 1_000_000;
/// Unacknowledged Score records per shard before intake stops.
pub const KAFKA_IN_FLIGHT_MAX: usize = 10_000_000;
/// Unacknowledged Score record bytes per shard before intake stops (64 GiB).
pub const KAFKA_IN_FLIGHT_BYTES_MAX: usize = 1 << 36;
/// Kafka partitions one sluice instance can own (each shard keeps a slot per partition it owns).
pub const KAFKA_PARTITIONS_MAX: usize = 4_096;
/// Kafka's own default transaction.max.timeout.ms: a broker refuses a longer transaction timeout.
pub const KAFKA_TRANSACTION_TIMEOUT_MS_MAX: u64 = 900_000;
