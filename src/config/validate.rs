//! Range and cross-field checks. Every rule runs, so one `check-config` lists every problem.

use super::{Config, ConfigError, ModelKind};
use crate::features::FeaturePlan;
use crate::limits;

pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    let mut p = Vec::new();
    let mut range = |key: &str, v: usize, lo: usize, hi: usize| {
        if v < lo || v > hi {
            p.push(format!("{key} = {v}: must be between {lo} and {hi}"));
        }
    };

    range(
        "state.spill_cache_bytes",
        c.state.spill_cache_bytes,
        1 << 20,
        1 << 40,
    );
    range(
        "ingest.udp.uring_buffers",
        c.ingest.udp.uring_buffers,
        8,
        limits::URING_BUFFERS_MAX,
    );
    range(
        "ingest.udp.batch_datagrams_max",
        c.ingest.udp.batch_datagrams_max,
        1,
        limits::MMSG_BATCH_MAX,
    );
    range(
        "ingest.udp.socket_rcvbuf_bytes",
        c.ingest.udp.socket_rcvbuf_bytes,
        4096,
        1 << 30,
    );
    range(
        "model.load_timeout_ms",
        c.model.load_timeout_ms as usize,
        100,
        600_000,
    );
    range(
        "ingest.udp.shed_after_ms",
        c.ingest.udp.shed_after_ms as usize,
        0,
        60_000,
    );
    range(
        "wire.datagram_bytes_max",
        c.wire.datagram_bytes_max,
        limits::DATAGRAM_BYTES_MIN,
        limits::DATAGRAM_BYTES_MAX,
    );
    range(
        "wire.batch_events_max",
        c.wire.batch_events_max,
        1,
        limits::BATCH_EVENTS_MAX,
    );
    range(
        "wire.features_per_event_max",
        c.wire.features_per_event_max,
        0,
        limits::FEATURES_INLINE_MAX,
    );
    range("wire.depth_max", c.wire.depth_max, 1, 64);
    range(
        "wire.tables_max",
        c.wire.tables_max,
        1,
        limits::VERIFY_TABLES_MAX,
    );
    range("shards.count", c.shards.count, 0, limits::SHARDS_MAX);
    range(
        "shards.helper_cores (length)",
        c.shards.helper_cores.len(),
        0,
        limits::SHARDS_MAX,
    );
    range(
        "shards.cores (length)",
        c.shards.cores.len(),
        0,
        limits::SHARDS_MAX,
    );
    range(
        "route.ring_capacity",
        c.route.ring_capacity,
        1,
        limits::RING_CAPACITY_MAX,
    );
    range(
        "route.drain_events_max",
        c.route.drain_events_max,
        1,
        limits::RING_CAPACITY_MAX,
    );
    range(
        "state.hot_capacity",
        c.state.hot_capacity,
        1,
        limits::HOT_CAPACITY_MAX,
    );
    range(
        "infer.batch_max",
        c.infer.batch_max,
        1,
        limits::INFER_BATCH_MAX,
    );
    range(
        "egress.datagram_bytes_max",
        c.egress.datagram_bytes_max,
        limits::DATAGRAM_BYTES_MIN,
        limits::DATAGRAM_BYTES_MAX,
    );
    range(
        "egress.batch_datagrams_max",
        c.egress.batch_datagrams_max,
        1,
        limits::MMSG_BATCH_MAX,
    );
    range(
        "state.cold_wait_max",
        c.state.cold_wait_max,
        0,
        limits::COLD_WAIT_MAX,
    );
    range(
        "state.spill_sweep_keys_per_cycle",
        c.state.spill_sweep_keys_per_cycle,
        1,
        limits::SPILL_SWEEP_KEYS_PER_CYCLE_MAX,
    );
    range(
        "state.spill_sweep_keys_per_s",
        usize::try_from(c.state.spill_sweep_keys_per_s).unwrap_or(usize::MAX),
        0,
        limits::SPILL_SWEEP_KEYS_PER_S_MAX,
    );
    range(
        "state.ttl_sweep_slots",
        c.state.ttl_sweep_slots,
        1,
        limits::TTL_SWEEP_SLOTS_MAX,
    );
    range(
        "checkpoint.keep",
        c.checkpoint.keep,
        1,
        limits::CHECKPOINTS_KEPT_MAX,
    );
    range(
        "checkpoint.copy_slice_us",
        c.checkpoint.copy_slice_us as usize,
        0,
        10_000,
    );
    range(
        "checkpoint.copy_slice_records",
        c.checkpoint.copy_slice_records,
        1,
        limits::CHECKPOINT_SLICE_RECORDS_MAX,
    );
    range(
        "checkpoint.spill_journal_records",
        c.checkpoint.spill_journal_records,
        1,
        limits::SPILL_JOURNAL_RECORDS_MAX,
    );
    range(
        "checkpoint.full_every",
        c.checkpoint.full_every,
        1,
        limits::CHECKPOINT_CHAIN_MAX,
    );
    range(
        "time.allowed_lateness_ms",
        c.time.allowed_lateness_ms as usize,
        0,
        limits::LATENESS_MS_MAX,
    );
    range(
        "checkpoint.interval_ms",
        c.checkpoint.interval_ms as usize,
        0,
        limits::CHECKPOINT_INTERVAL_MS_MAX,
    );
    match FeaturePlan::compile(&c.features.list, c.time.lateness_ns()) {
        Ok(plan) => {
            if c.model.kind == ModelKind::Linear && c.model.linear.weights.len() != plan.width() {
                p.push(format!(
                    "model.linear.weights has {} weights but features.list has {} features: one weight per feature",
                    c.model.linear.weights.len(),
                    plan.width()
                ));
            }
        }
        Err(problems) => p.extend(problems),
    }

    if !c.ingest.udp.uring_buffers.is_power_of_two() {
        p.push(format!(
            "ingest.udp.uring_buffers = {}: must be a power of two",
            c.ingest.udp.uring_buffers
        ));
    }
    if c.wire.tables_max < c.wire.batch_events_max + 1 {
        p.push(format!(
            "wire.tables_max = {} is below wire.batch_events_max + 1 = {}: a full batch could never verify",
            c.wire.tables_max,
            c.wire.batch_events_max + 1
        ));
    }
    if c.wire.depth_max < 2 {
        p.push(format!(
            "wire.depth_max = {}: the schema itself nests tables 2 deep, so no batch would verify",
            c.wire.depth_max
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for core in &c.shards.cores {
        if !seen.insert(core) {
            p.push(format!(
                "shards.cores lists CPU {core} twice: one shard per CPU"
            ));
        }
    }
    if c.shards.park_timeout_us == 0 || c.shards.park_timeout_us > 1_000_000 {
        p.push(format!(
            "shards.park_timeout_us = {}: must be between 1 and 1000000",
            c.shards.park_timeout_us
        ));
    }
    if !(0.0..=1.0).contains(&c.model.alert_threshold) {
        p.push(format!(
            "model.alert_threshold = {}: must be in [0, 1]",
            c.model.alert_threshold
        ));
    }
    if c.model
        .linear
        .weights
        .iter()
        .chain([&c.model.linear.bias])
        .any(|w| !w.is_finite())
    {
        p.push("model.linear: weights and bias must be finite numbers".to_owned());
    }
    if c.metrics.latency_max_ns < 1_000 {
        p.push(format!(
            "metrics.latency_max_ns = {}: must be at least 1000",
            c.metrics.latency_max_ns
        ));
    }
    if !(10..=10_000_000).contains(&c.metrics.stall_threshold_us) {
        p.push(format!(
            "metrics.stall_threshold_us = {}: must be between 10 and 10000000",
            c.metrics.stall_threshold_us
        ));
    }
    let o = &c.model.online;
    if !(o.learning_rate > 0.0 && o.learning_rate <= 10.0) {
        p.push(format!(
            "model.online.learning_rate = {}: must be in (0, 10]",
            o.learning_rate
        ));
    }
    if !(o.l2 >= 0.0 && o.l2 < 1.0) {
        p.push(format!("model.online.l2 = {}: must be in [0, 1)", o.l2));
    }
    if !(0.0..=1.0).contains(&o.blend) {
        p.push(format!(
            "model.online.blend = {}: must be in [0, 1]",
            o.blend
        ));
    }
    if o.blend > 0.0 && !o.enabled {
        p.push("model.online.blend > 0 needs model.online.enabled = true".to_owned());
    }
    if !(10..=3_600_000).contains(&o.average_interval_ms) {
        p.push(format!(
            "model.online.average_interval_ms = {}: must be between 10 and 3600000",
            o.average_interval_ms
        ));
    }
    if c.model.kind == super::ModelKind::Online && !o.enabled {
        p.push("model.kind = \"online\" needs model.online.enabled = true".to_owned());
    }
    if c.model.kind == super::ModelKind::Onnx && c.model.path.is_empty() {
        p.push("model.path is empty but model.kind = \"onnx\"".to_owned());
    }
    if c.model.input.is_empty() || c.model.output.is_empty() {
        p.push("model.input and model.output must name the model's tensors".to_owned());
    }
    if let Err(e) = c.listen_addr() {
        p.extend(e.problems);
    }
    for (key, value) in [
        ("egress.scores_to", &c.egress.scores_to),
        ("egress.alerts_to", &c.egress.alerts_to),
        ("metrics.listen", &c.metrics.listen),
    ] {
        if let Err(e) = Config::optional_addr(key, value) {
            p.extend(e.problems);
        }
    }
    super::validate_kafka::validate(c, &mut p);
    super::validate_xdp::validate(c, &mut p);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        p.push(format!("log.level = {:?}: {e}", c.log.level));
    }

    if p.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems: p })
    }
}
