//! One shard's counters and live latency histograms, and the catalog the exporter serves
//! them from. Each counter is declared once, in the `shard_counters!` table below: its field,
//! its metric name, its type and its label; its doc comment is its HELP text.

use super::catalog::{Kind, Labelled, LiveHistogram, MetricDef};
use super::{names, Counter, DropReason};
use crate::ingest::xdp::frame::FrameError;
use crate::wire::DecodeError;

/// A field the catalog can read: a counter, or one per label value.
pub trait ReadAt {
    fn read_at(&self, i: usize) -> u64;
}

impl ReadAt for Counter {
    fn read_at(&self, _: usize) -> u64 {
        self.get()
    }
}

impl<const N: usize> ReadAt for [Counter; N] {
    fn read_at(&self, i: usize) -> u64 {
        self.get(i).map_or(0, Counter::get)
    }
}

const BY_DECODE_ERROR: Labelled = Labelled {
    key: "reason",
    count: DecodeError::ALL.len(),
    value: |i| DecodeError::ALL.get(i).map_or("?", |e| e.reason()),
};

const BY_FRAME_ERROR: Labelled = Labelled {
    key: "reason",
    count: FrameError::ALL.len(),
    value: |i| FrameError::ALL.get(i).map_or("?", |e| e.reason()),
};

const BY_DROP_REASON: Labelled = Labelled {
    key: "reason",
    count: DropReason::ALL.len(),
    value: |i| DropReason::ALL.get(i).map_or("?", |d| d.label()),
};

macro_rules! shard_counters {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident : $ty:ty => $kind:ident $name:expr $(, by $labels:expr)? ;
    )*) => {
        /// One shard's counters. Single writer (the shard); read live by the exporter.
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
            /// Latency in fixed buckets, read live by the exporter.
            pub latency: LiveLatency,
        }

        /// Every per-shard counter and gauge, in the order the exporter serves them.
        pub static SHARD_METRICS: &[MetricDef] = &[
            $( MetricDef {
                name: $name,
                help: concat!($($doc),+),
                kind: Kind::$kind,
                labels: shard_counters!(@labels $($labels)?),
                read: |c: &ShardCounters, i: usize| ReadAt::read_at(&c.$field, i),
            }, )*
        ];
    };
    (@labels) => { None };
    (@labels $l:expr) => { Some($l) };
}

shard_counters! {
    /// Datagrams taken from the shard's socket.
    datagrams_received: Counter => Counter names::DATAGRAMS_RECEIVED;
    /// Datagrams refused by the decoder, by reason (nothing in them was applied).
    datagrams_dropped: [Counter; DecodeError::ALL.len()] => Counter names::DATAGRAMS_DROPPED, by BY_DECODE_ERROR;
    /// Datagrams dropped unread because they had waited in the socket longer than
    /// `ingest.udp.shed_after_ms` (overload shedding: the oldest go first, so the backlog
    /// drains at receive speed and the admitted events stay fresh).
    datagrams_shed: Counter => Counter names::DATAGRAMS_SHED;
    /// Events in accepted datagrams.
    events_received: Counter => Counter names::EVENTS_RECEIVED;
    /// Accepted events dropped after decoding, by reason.
    events_dropped: [Counter; DropReason::ALL.len()] => Counter names::EVENTS_DROPPED, by BY_DROP_REASON;
    /// Events handed over a ring to the shard that owns their key.
    events_routed_away: Counter => Counter names::EVENTS_ROUTED_AWAY;
    /// Observations applied to the keyed state by their owner shard.
    observations_applied: Counter => Counter names::OBSERVATIONS_APPLIED;
    /// Feedback events applied (online learning).
    feedback_applied: Counter => Counter names::FEEDBACK_APPLIED;
    /// Scores sent (UDP replies or Kafka records).
    scores_emitted: Counter => Counter names::SCORES_EMITTED;
    /// Scores over the alert threshold.
    alerts_emitted: Counter => Counter names::ALERTS_EMITTED;
    /// Reply datagrams sent.
    reply_datagrams: Counter => Counter names::REPLY_DATAGRAMS;
    /// Datagrams the kernel dropped at the shard's socket (SO_RXQ_OVFL): its buffer overflowed.
    socket_drops: Counter => Counter names::SOCKET_DROPS;
    /// io_uring multishot receives that ended with no free provided buffer.
    uring_enobufs: Counter => Counter names::URING_ENOBUFS;
    /// io_uring multishot receives re-armed.
    uring_rearms: Counter => Counter names::URING_REARMS;
    /// af_xdp: frames taken from the shard's AF_XDP socket (a multi-buffer packet counts once).
    xdp_frames_received: Counter => Counter names::XDP_FRAMES_RECEIVED;
    /// af_xdp: frames for sluice's port refused before decoding, by reason (truncated,
    /// bad_length, bad_checksum, not_udp, too_long).
    xdp_frames_dropped: [Counter; FrameError::ALL.len()] => Counter names::XDP_FRAMES_DROPPED, by BY_FRAME_ERROR;
    /// af_xdp: frames the kernel dropped for the shard's AF_XDP socket (XDP_STATISTICS
    /// rx_dropped; read about once a second or when idle).
    xdp_kernel_dropped: Counter => Counter names::XDP_KERNEL_DROPPED;
    /// af_xdp: times the socket's RX ring was full (the shard fell behind).
    xdp_rx_ring_full: Counter => Counter names::XDP_RX_RING_FULL;
    /// af_xdp: times the kernel found no free frame in the fill ring.
    xdp_fill_ring_empty: Counter => Counter names::XDP_FILL_RING_EMPTY;
    /// Keys in the shard's hot table.
    hot_keys: Counter => Gauge names::HOT_KEYS;
    /// Keys in the shard's spill store.
    spilled_keys: Counter => Gauge names::SPILLED_KEYS;
    /// Events whose key was in the hot table.
    hot_hits: Counter => Counter names::HOT_HITS;
    /// Events whose key was not in the hot table (new, or reloaded from spill).
    hot_misses: Counter => Counter names::HOT_MISSES;
    /// Keys moved from the hot table to the spill store.
    spills: Counter => Counter names::SPILLS;
    /// Keys brought back from the spill store.
    reloads: Counter => Counter names::RELOADS;
    /// Batched cold reads landed.
    cold_reads: Counter => Counter names::COLD_READS;
    /// Times a full cold wait list made the shard wait for the reader thread.
    cold_read_waits: Counter => Counter names::COLD_READ_WAITS;
    /// Events waiting for a batched cold read at the last cycle's end.
    cold_waiting: Counter => Gauge names::COLD_WAITING;
    /// Keys forgotten after state.ttl_ms idle.
    expired: Counter => Counter names::EXPIRED;
    /// Spilled keys idle past state.ttl_ms deleted by the spill sweep, without an event (also
    /// counted in sluice_state_expired_total).
    spill_expired: Counter => Counter names::SPILL_EXPIRED;
    /// Late events applied at the watermark (time.late = apply).
    late_applied: Counter => Counter names::LATE_APPLIED;
    /// Checkpoints written and committed.
    checkpoints_written: Counter => Counter names::CHECKPOINTS_WRITTEN;
    /// Checkpoints that failed (I/O); serving went on.
    checkpoints_failed: Counter => Counter names::CHECKPOINTS_FAILED;
    /// Checkpoints that came due while the previous one was still being written.
    checkpoints_skipped: Counter => Counter names::CHECKPOINTS_SKIPPED;
    /// Longest snapshot flip (the one stop a checkpoint needs).
    checkpoint_pause_max_ns: Counter => GaugeNs names::CHECKPOINT_PAUSE_MAX;
    /// Longest slice of copying a running snapshot in one cycle.
    checkpoint_slice_max_ns: Counter => GaugeNs names::CHECKPOINT_SLICE_MAX;
    /// Times a full spill journal made the shard wait for the writer.
    checkpoint_journal_waits: Counter => Counter names::CHECKPOINT_JOURNAL_WAITS;
    /// Size of the last checkpoint's hot.bin.
    checkpoint_bytes_last: Counter => Gauge names::CHECKPOINT_BYTES;
    /// Kafka records whose value decoded and was applied.
    kafka_records: Counter => Counter names::KAFKA_RECORDS;
    /// Kafka records skipped by reason (their offset still advances).
    kafka_records_skipped: [Counter; DecodeError::ALL.len()] => Counter names::KAFKA_RECORDS_SKIPPED, by BY_DECODE_ERROR;
    /// Score records handed to the Kafka producer.
    kafka_score_records: Counter => Counter names::KAFKA_SCORE_RECORDS;
    /// Records handed to the producer for `egress.kafka.dead_letter_topic`: skipped input
    /// records, and one per input record with refused events.
    kafka_dead_letters: Counter => Counter names::KAFKA_DEAD_LETTERS;
    /// Refused events sent inside dead-letter records (`egress.kafka.dead_letter_events`).
    kafka_dead_letter_events: Counter => Counter names::KAFKA_DEAD_LETTER_EVENTS;
    /// Skipped records dead-lettered without their value (larger than `message.max.bytes`).
    kafka_dead_letter_values_dropped: Counter => Counter names::KAFKA_DEAD_LETTER_VALUES_DROPPED;
    /// Score records the producer reported as not delivered.
    kafka_delivery_failures: Counter => Counter names::KAFKA_DELIVERY_FAILURES;
    /// exactly_once: transactions committed.
    kafka_transactions: Counter => Counter names::KAFKA_TRANSACTIONS;
    /// exactly_once: transactions aborted or failed.
    kafka_transactions_failed: Counter => Counter names::KAFKA_TRANSACTIONS_FAILED;
    /// Cycles in which the shard took no records because the producer had too many records
    /// or bytes in flight.
    kafka_backpressure_cycles: Counter => Counter names::KAFKA_BACKPRESSURE_CYCLES;
    /// Kafka partitions the shard consumes: 0 while the brokers have not answered since start (UDP is served meanwhile).
    kafka_partitions_attached: Counter => Gauge names::KAFKA_PARTITIONS_ATTACHED;
    /// exactly_once: longest time Kafka intake stood still for a commit (flip to commit, on the committer thread; UDP is served meanwhile).
    kafka_commit_pause_max_ns: Counter => GaugeNs names::KAFKA_COMMIT_PAUSE_MAX;
    /// exactly_once: longest time from a checkpoint's flip until it was on disk (its transaction's commit starts then).
    kafka_commit_write_max_ns: Counter => GaugeNs names::KAFKA_COMMIT_WRITE_MAX;
    /// exactly_once: longest commit on the committer thread (changelog part, offsets, progress record, EndTxn).
    kafka_commit_max_ns: Counter => GaugeNs names::KAFKA_COMMIT_MAX;
    /// exactly_once with `overlap_commits`: Kafka records taken while an earlier checkpoint's transaction was on its way to its commit (into the other producer's transaction).
    kafka_records_while_committing: Counter => Counter names::KAFKA_RECORDS_WHILE_COMMITTING;
    /// state.cold_reader = thread | idle: cycles a Kafka shard waited for its cold reads before its flush (a checkpoint or rebalance was due while events waited for one, or two cycles' records were held for them).
    kafka_cold_settles: Counter => Counter names::KAFKA_COLD_SETTLES;
    /// egress.kafka.changelog: state records (images) written to the changelog topic.
    kafka_changelog_records: Counter => Counter names::KAFKA_CHANGELOG_RECORDS;
    /// egress.kafka.changelog: tombstones written (a deleted key, to each of the shard's changelog partitions).
    kafka_changelog_tombstones: Counter => Counter names::KAFKA_CHANGELOG_TOMBSTONES;
    /// egress.kafka.changelog: whole-state markers written (one per changelog partition whose every key followed in the same transaction; what lets a rebuild use a changelog whose first records were deleted).
    kafka_changelog_markers: Counter => Counter names::KAFKA_CHANGELOG_MARKERS;
    /// egress.kafka.changelog: key and value bytes written to the changelog topic.
    kafka_changelog_bytes: Counter => Counter names::KAFKA_CHANGELOG_BYTES;
    /// Keys rebuilt from the changelog since start (at start when the shard's checkpoint was not on disk; with group membership as partitions move in).
    changelog_restored_keys: Counter => Gauge names::CHANGELOG_RESTORED_KEYS;
    /// Of those, keys a standby replica's warm copy held (only the changelog after it was read).
    changelog_warm_keys: Counter => Counter names::CHANGELOG_WARM_KEYS;
    /// Of those, keys the shard's own older checkpoint held, or the copy kept when this instance handed the partition over (only the changelog after the position recorded with it was read).
    changelog_local_keys: Counter => Counter names::CHANGELOG_LOCAL_KEYS;
    /// Partitions those rebuilds replayed from their input topic instead (records deleted from the changelog, or the topic made anew: `egress::kafka::input_replay`).
    changelog_input_replays: Counter => Counter names::CHANGELOG_INPUT_REPLAYS;
    /// Input records those replays read (Score-less).
    changelog_replayed_records: Counter => Counter names::CHANGELOG_REPLAYED_RECORDS;
    /// Changelog bytes read by those rebuilds (live while one runs).
    changelog_restored_bytes: Counter => Gauge names::CHANGELOG_RESTORED_BYTES;
    /// How long those rebuilds took, together.
    changelog_restore_ns: Counter => GaugeNs names::CHANGELOG_RESTORE_TIME;
    /// Group membership: partitions assigned to the shard and taken up (state kept or rebuilt).
    kafka_partitions_moved_in: Counter => Counter names::KAFKA_PARTITIONS_MOVED_IN;
    /// Group membership: partitions revoked from the shard, committed and handed over.
    kafka_partitions_moved_out: Counter => Counter names::KAFKA_PARTITIONS_MOVED_OUT;
    /// Group membership: rebalances the shard acted on (each assignment and each revocation librdkafka reported).
    kafka_rebalances: Counter => Counter names::KAFKA_REBALANCES;
    /// Group membership: longest the shard was held handing revoked partitions over (their checkpoint written and its transaction committed; nothing else runs meanwhile).
    kafka_handover_max_ns: Counter => GaugeNs names::KAFKA_HANDOVER_MAX;
    /// Turns of the shard's loop (its heartbeat: the watchdog needs every shard's to advance).
    loops: Counter => Counter names::LOOPS;
    /// Longest turn of the shard's loop (parking excluded).
    loop_max_ns: Counter => GaugeNs names::LOOP_MAX;
    /// Turns of the shard's loop longer than metrics.stall_threshold_us (parking excluded).
    loops_over_threshold: Counter => Counter names::LOOPS_OVER_THRESHOLD;
    /// The model version the shard scores with.
    model_version: Counter => GaugeMax names::MODEL_VERSION;
    /// Online averaging rounds the shard applied (each changes the served version only when the online model scores: `model.kind = online` or `model.online.blend` > 0).
    model_online_rounds: Counter => Counter names::MODEL_ONLINE_ROUNDS;
}

/// One shard's latency histograms in the fixed buckets the exporter serves.
#[derive(Debug, Default)]
pub struct LiveLatency {
    pub receive_to_emit: LiveHistogram,
    pub in_shard: LiveHistogram,
    pub model_run: LiveHistogram,
    pub model_run_per_row: LiveHistogram,
    pub kafka_record_to_produce: LiveHistogram,
    pub kafka_in_shard: LiveHistogram,
    pub kafka_available_to_produce: LiveHistogram,
    pub checkpoint_pause: LiveHistogram,
}

/// Where a shard keeps one of its live histograms.
pub type PickHistogram = fn(&LiveLatency) -> &LiveHistogram;

/// Every histogram: name, help, and where a shard keeps it.
pub static SHARD_HISTOGRAMS: &[(&str, &str, PickHistogram)] = &[
    (
        names::RECEIVE_TO_EMIT,
        "Kernel receive timestamp to reply handed to the kernel.",
        |l| &l.receive_to_emit,
    ),
    (
        names::IN_SHARD,
        "Shard pickup to reply handed to the kernel.",
        |l| &l.in_shard,
    ),
    (
        names::MODEL_RUN,
        "One model call (a micro-batch of rows).",
        |l| &l.model_run,
    ),
    (
        names::MODEL_RUN_PER_ROW,
        "One model call divided by its rows: the model's cost per event, however many queued.",
        |l| &l.model_run_per_row,
    ),
    (
        names::KAFKA_RECORD_TO_PRODUCE,
        "Kafka record timestamp to Score record handed to the producer.",
        |l| &l.kafka_record_to_produce,
    ),
    (
        names::KAFKA_IN_SHARD,
        "Kafka record taken from the consumer to Score record handed to the producer.",
        |l| &l.kafka_in_shard,
    ),
    (
        names::KAFKA_AVAILABLE_TO_PRODUCE,
        "Kafka record available in the consumer's queue (a lower bound) to its Score record handed to the producer.",
        |l| &l.kafka_available_to_produce,
    ),
    (
        names::CHECKPOINT_PAUSE,
        "Snapshot flips: how long each checkpoint stopped the shard.",
        |l| &l.checkpoint_pause,
    ),
];

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
    /// Datagrams refused and events dropped, every reason.
    pub fn dropped_total(&self) -> u64 {
        self.datagrams_dropped_total() + self.events_dropped.iter().map(Counter::get).sum::<u64>()
    }
    pub fn events_dropped_by(&self, r: DropReason) -> u64 {
        self.events_dropped[r as usize].get()
    }
    pub fn datagrams_dropped_by(&self, e: DecodeError) -> u64 {
        self.datagrams_dropped[e.index()].get()
    }

    /// A shard loop's turn took `ns` (parking excluded).
    #[inline]
    pub fn loop_took(&self, ns: u64, threshold_ns: u64) {
        self.loops.inc();
        if ns > self.loop_max_ns.get() {
            self.loop_max_ns.set(ns);
        }
        if ns > threshold_ns {
            self.loops_over_threshold.inc();
        }
    }
}
