//! Every metric name, in one place (Prometheus conventions; the exporter issue serves them).

pub const DATAGRAMS_RECEIVED: &str = "sluice_datagrams_received_total";
/// label reason = DecodeError::reason()
pub const DATAGRAMS_DROPPED: &str = "sluice_datagrams_dropped_total";
pub const DATAGRAMS_SHED: &str = "sluice_datagrams_shed_total";
pub const EVENTS_RECEIVED: &str = "sluice_events_received_total";
/// label reason = DropReason::label()
pub const EVENTS_DROPPED: &str = "sluice_events_dropped_total";
pub const EVENTS_ROUTED_AWAY: &str = "sluice_events_routed_away_total";
pub const OBSERVATIONS_APPLIED: &str = "sluice_observations_applied_total";
pub const FEEDBACK_APPLIED: &str = "sluice_feedback_applied_total";
pub const SCORES_EMITTED: &str = "sluice_scores_emitted_total";
pub const ALERTS_EMITTED: &str = "sluice_alerts_emitted_total";
pub const REPLY_DATAGRAMS: &str = "sluice_reply_datagrams_total";
/// Kernel-side drops on the shard's socket (SO_RXQ_OVFL): the socket buffer overflowed.
pub const SOCKET_DROPS: &str = "sluice_socket_drops_total";
/// io_uring multishot receive ended with no free provided buffer and was re-armed.
pub const URING_ENOBUFS: &str = "sluice_uring_enobufs_total";
pub const URING_REARMS: &str = "sluice_uring_rearms_total";
/// af_xdp: frames refused by reason (label reason = FrameError::reason()), and the kernel's
/// counters for the AF_XDP sockets.
pub const XDP_FRAMES_RECEIVED: &str = "sluice_xdp_frames_received_total";
pub const XDP_FRAMES_DROPPED: &str = "sluice_xdp_frames_dropped_total";
pub const XDP_KERNEL_DROPPED: &str = "sluice_xdp_kernel_dropped_total";
pub const XDP_RX_RING_FULL: &str = "sluice_xdp_rx_ring_full_total";
pub const XDP_FILL_RING_EMPTY: &str = "sluice_xdp_fill_ring_empty_total";
pub const HOT_KEYS: &str = "sluice_hot_keys";
pub const RECEIVE_TO_EMIT: &str = "sluice_receive_to_emit_seconds";
pub const IN_SHARD: &str = "sluice_in_shard_seconds";
/// One model call (a micro-batch of rows).
pub const MODEL_RUN: &str = "sluice_model_run_seconds";
pub const MODEL_RUN_PER_ROW: &str = "sluice_model_run_per_row_seconds";
pub const SPILLED_KEYS: &str = "sluice_spilled_keys";
pub const HOT_HITS: &str = "sluice_state_hot_hits_total";
pub const HOT_MISSES: &str = "sluice_state_hot_misses_total";
pub const SPILLS: &str = "sluice_state_spills_total";
pub const RELOADS: &str = "sluice_state_reloads_total";
/// Batched cold reads landed (each brought in every key its waiting events needed).
pub const COLD_READS: &str = "sluice_state_cold_reads_total";
/// A full cold wait list made the shard wait for the read out (state.cold_reader = thread).
pub const COLD_READ_WAITS: &str = "sluice_state_cold_read_waits_total";
/// A Kafka shard with cold reads off its thread waited for them before a checkpoint's or a
/// rebalance's cycle ended (their offsets cover only applied events).
pub const KAFKA_COLD_SETTLES: &str = "sluice_kafka_cold_read_settles_total";
/// Events waiting for a batched cold read, out or to come.
pub const COLD_WAITING: &str = "sluice_state_cold_waiting_events";
pub const EXPIRED: &str = "sluice_state_expired_total";
pub const SPILL_EXPIRED: &str = "sluice_state_spill_expired_total";
pub const LATE_APPLIED: &str = "sluice_late_events_applied_total";
pub const CHECKPOINTS_WRITTEN: &str = "sluice_checkpoints_written_total";
pub const CHECKPOINTS_FAILED: &str = "sluice_checkpoints_failed_total";
/// A checkpoint came due while the previous one was still being written.
pub const CHECKPOINTS_SKIPPED: &str = "sluice_checkpoints_skipped_total";
/// The longest snapshot flip (the shard's one stop per checkpoint).
pub const CHECKPOINT_PAUSE_MAX: &str = "sluice_checkpoint_pause_max_seconds";
/// The longest cycle's slice of copying a running snapshot.
pub const CHECKPOINT_SLICE_MAX: &str = "sluice_checkpoint_slice_max_seconds";
/// A full spill journal made the shard wait for the writer's RocksDB checkpoint.
pub const CHECKPOINT_JOURNAL_WAITS: &str = "sluice_checkpoint_journal_waits_total";
pub const CHECKPOINT_BYTES: &str = "sluice_checkpoint_hot_bytes";
/// Kafka records applied (value decoded), and skipped by reason (label reason).
pub const KAFKA_RECORDS: &str = "sluice_kafka_records_total";
pub const KAFKA_RECORDS_SKIPPED: &str = "sluice_kafka_records_skipped_total";
pub const KAFKA_SCORE_RECORDS: &str = "sluice_kafka_score_records_total";
/// Dead-letter records sent: skipped input records, and records of refused events.
pub const KAFKA_DEAD_LETTERS: &str = "sluice_kafka_dead_letters_total";
/// Refused events sent inside dead-letter records.
pub const KAFKA_DEAD_LETTER_EVENTS: &str = "sluice_kafka_dead_letter_events_total";
/// Skipped records too large for the producer, dead-lettered without their value.
pub const KAFKA_DEAD_LETTER_VALUES_DROPPED: &str = "sluice_kafka_dead_letter_values_dropped_total";
pub const KAFKA_DELIVERY_FAILURES: &str = "sluice_kafka_delivery_failures_total";
pub const KAFKA_TRANSACTIONS: &str = "sluice_kafka_transactions_committed_total";
pub const KAFKA_TRANSACTIONS_FAILED: &str = "sluice_kafka_transactions_failed_total";
pub const KAFKA_BACKPRESSURE_CYCLES: &str = "sluice_kafka_backpressure_cycles_total";
pub const KAFKA_COMMIT_PAUSE_MAX: &str = "sluice_kafka_commit_pause_max_seconds";
/// exactly_once: a checkpoint's flip -> on disk, and its commit on the committer thread (the
/// two make a Score's wait for visibility besides the interval).
pub const KAFKA_COMMIT_WRITE_MAX: &str = "sluice_kafka_commit_write_max_seconds";
pub const KAFKA_COMMIT_MAX: &str = "sluice_kafka_commit_max_seconds";
pub const KAFKA_RECORDS_WHILE_COMMITTING: &str =
    "sluice_kafka_records_taken_while_committing_total";
/// egress.kafka.changelog: state records and tombstones written, and their bytes.
pub const KAFKA_CHANGELOG_RECORDS: &str = "sluice_kafka_changelog_records_total";
pub const KAFKA_CHANGELOG_TOMBSTONES: &str = "sluice_kafka_changelog_tombstones_total";
pub const KAFKA_CHANGELOG_MARKERS: &str = "sluice_kafka_changelog_markers_total";
pub const KAFKA_CHANGELOG_BYTES: &str = "sluice_kafka_changelog_bytes_total";
/// Group membership: partitions taken up (rebuilt from the changelog or kept) and handed over.
pub const KAFKA_PARTITIONS_MOVED_IN: &str = "sluice_kafka_partitions_moved_in_total";
pub const KAFKA_PARTITIONS_MOVED_OUT: &str = "sluice_kafka_partitions_moved_out_total";
/// Group membership: rebalances acted on, and the longest a handover held a shard.
pub const KAFKA_REBALANCES: &str = "sluice_kafka_rebalances_total";
pub const KAFKA_HANDOVER_MAX: &str = "sluice_kafka_handover_max_seconds";
/// Standby replicas (labels topic, partition): keys in this instance's warm copy, and
/// changelog records not in it yet.
pub const KAFKA_STANDBY_KEYS: &str = "sluice_kafka_standby_keys";
pub const KAFKA_STANDBY_CHANGELOG_LAG: &str = "sluice_kafka_standby_changelog_lag";
/// Keys, bytes and time of the rebuilds from the changelog since start (at start, and as
/// partitions move in).
pub const CHANGELOG_RESTORED_KEYS: &str = "sluice_kafka_changelog_restored_keys";
pub const CHANGELOG_RESTORED_BYTES: &str = "sluice_kafka_changelog_restored_bytes";
/// Keys of those rebuilds that a standby replica's warm copy held.
pub const CHANGELOG_WARM_KEYS: &str = "sluice_kafka_changelog_warm_keys_total";
/// Keys of those rebuilds that the shard's own older checkpoint held, or the copy this
/// instance kept when it handed the partition over (`ingest.kafka.handed_over_keep_ms`).
pub const CHANGELOG_LOCAL_KEYS: &str = "sluice_kafka_changelog_local_keys_total";
/// Partitions of those rebuilds replayed from their input topic (the changelog could not
/// rebuild them), and the input records read.
pub const CHANGELOG_INPUT_REPLAYS: &str = "sluice_kafka_changelog_input_replays_total";
pub const CHANGELOG_REPLAYED_RECORDS: &str = "sluice_kafka_changelog_replayed_records_total";
pub const CHANGELOG_RESTORE_TIME: &str = "sluice_kafka_changelog_restore_seconds";
pub const KAFKA_PARTITIONS_ATTACHED: &str = "sluice_kafka_partitions_attached";
/// Process-wide: model reloads by result (label result = loaded | refused; `control::reloads`).
pub const MODEL_RELOADS: &str = "sluice_model_reloads_total";
/// librdkafka's client-level errors, process-wide (label kind =
/// `ingest::kafka::client_errors::ClientErrorKind::label()`).
pub const KAFKA_CLIENT_ERRORS: &str = "sluice_kafka_client_errors_total";
/// Process-wide: positions librdkafka moved because the brokers no longer had them (out of
/// range: retention deleted the records before sluice took them; `ingest::kafka::offset_resets`).
pub const KAFKA_OFFSET_RESETS: &str = "sluice_kafka_offset_resets_total";
/// Process-wide: offsets those resets skipped (the records lost).
pub const KAFKA_OFFSETS_LOST: &str = "sluice_kafka_offsets_lost_total";
/// Per input topic (label topic): partitions the brokers list beyond those dealt to the shards
/// (added while sluice runs), which no shard consumes (`ingest::kafka::topic_watch`).
pub const KAFKA_TOPIC_PARTITIONS_UNCONSUMED: &str = "sluice_kafka_topic_partitions_unconsumed";
/// Per input topic (label topic): records in those partitions (high minus low watermark).
pub const KAFKA_TOPIC_RECORDS_UNCONSUMED: &str = "sluice_kafka_topic_records_unconsumed";
/// Per partition (labels topic, partition): high watermark minus the next offset to apply.
pub const KAFKA_PARTITION_LAG: &str = "sluice_kafka_partition_lag";
pub const KAFKA_RECORD_TO_PRODUCE: &str = "sluice_kafka_record_to_produce_seconds";
pub const KAFKA_IN_SHARD: &str = "sluice_kafka_in_shard_seconds";
/// From the latest time a record was provably not yet in librdkafka's queue
/// (`ingest::kafka::arrival`) to its Score record handed to the producer: sluice's share.
pub const KAFKA_AVAILABLE_TO_PRODUCE: &str = "sluice_kafka_available_to_produce_seconds";
/// Snapshot flips as a histogram (the shard's one stop per checkpoint).
pub const CHECKPOINT_PAUSE: &str = "sluice_checkpoint_pause_seconds";
/// Turns of a shard's loop: its heartbeat.
pub const LOOPS: &str = "sluice_shard_loops_total";
pub const LOOP_MAX: &str = "sluice_shard_loop_max_seconds";
pub const LOOPS_OVER_THRESHOLD: &str = "sluice_shard_loops_over_threshold_total";
pub const MODEL_VERSION: &str = "sluice_model_version";
pub const MODEL_ONLINE_ROUNDS: &str = "sluice_model_online_rounds_total";
/// Info metric (labels version, revision, driver, model_version); the sample is `_info`.
pub const BUILD: &str = "sluice_build";
/// Seconds since sluice reported ready.
pub const UPTIME: &str = "sluice_uptime_seconds";
/// Per partition (labels topic, partition): records taken.
pub const KAFKA_PARTITION_RECORDS: &str = "sluice_kafka_partition_records_total";
/// Per partition this instance owns now (labels topic, partition, shard, role): 1.
pub const KAFKA_PARTITION_OWNED: &str = "sluice_kafka_partition_owned";
