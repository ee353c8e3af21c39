//! Per-partition progress a shard publishes for lag: the next offset it will apply (stored
//! per record, a plain store) and the partition's high watermark as librdkafka last saw it in
//! a fetch response (read from its cache once a second: no broker round trip, no per-record
//! cost). Lag = high watermark - next offset. Read live by other threads (the exporter) and
//! by the shutdown report.

use std::ffi::CString;
use std::sync::atomic::{AtomicI64, Ordering};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::metrics::Counter;

/// Every consumed partition's gauges, for the report and the exporter: set once, when the
/// partitions are dealt (at start, or later when the brokers were unreachable at start).
pub type PartitionGauges = std::sync::Arc<std::sync::OnceLock<Vec<std::sync::Arc<PartitionGauge>>>>;

/// The gauges dealt so far (none before the brokers answered).
pub fn dealt(gauges: &PartitionGauges) -> &[std::sync::Arc<PartitionGauge>] {
    gauges.get().map_or(&[], Vec::as_slice)
}

/// One partition's figures (single writer: the owning shard).
#[derive(Debug)]
pub struct PartitionGauge {
    pub topic: String,
    pub partition: i32,
    /// -1 until known.
    pub next_offset: AtomicI64,
    /// -1 until a fetch response told.
    pub high_watermark: AtomicI64,
    /// Records taken (applied or skipped).
    pub records: Counter,
}

impl PartitionGauge {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            next_offset: AtomicI64::new(-1),
            high_watermark: AtomicI64::new(-1),
            records: Counter::default(),
        }
    }

    /// Records between the shard's position and the partition's end (None until both are
    /// known).
    pub fn lag(&self) -> Option<i64> {
        let next = self.next_offset.load(Ordering::Relaxed);
        let high = self.high_watermark.load(Ordering::Relaxed);
        (next >= 0 && high >= 0).then(|| (high - next).max(0))
    }
}

/// The high watermark librdkafka cached for `topic`/`partition` from its last fetch response,
/// if it has one.
pub fn cached_high_watermark<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &CString,
    partition: i32,
) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client handle is valid while `consumer` is borrowed; `topic` is a
    // NUL-terminated string that outlives the call; `low` and `high` are valid for writes.
    // rd_kafka_get_watermark_offsets only reads its local cache (under its own lock).
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_needs_both_ends_and_never_goes_negative() {
        let g = PartitionGauge::new("t", 0);
        assert_eq!(g.lag(), None);
        g.next_offset.store(10, Ordering::Relaxed);
        assert_eq!(g.lag(), None);
        g.high_watermark.store(25, Ordering::Relaxed);
        assert_eq!(g.lag(), Some(15));
        // The cached watermark can trail the position by a fetch.
        g.next_offset.store(30, Ordering::Relaxed);
        assert_eq!(g.lag(), Some(0));
    }
}
