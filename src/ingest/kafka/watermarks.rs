//! Per-partition progress a shard publishes for lag: the next offset it will apply (stored
//! per record, a plain store) and the partition's high watermark as librdkafka last saw it in
//! a fetch response (read from its cache once a second: no broker round trip, no per-record
//! cost). Lag = high watermark - next offset. With group membership each shard has a gauge
//! for every input partition and its `role` says which it owns right now. Read live by other
//! threads (the exporter, `cluster status`) and by the shutdown report.

use std::ffi::CString;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::metrics::Counter;

/// Every consumed partition's gauges, for the report and the exporter: set once, when the
/// partitions are dealt (at start, or later when the brokers were unreachable at start).
pub type PartitionGauges = std::sync::Arc<std::sync::OnceLock<Vec<std::sync::Arc<PartitionGauge>>>>;

/// The gauges dealt so far (none before the brokers answered).
pub fn dealt(gauges: &PartitionGauges) -> &[std::sync::Arc<PartitionGauge>] {
    gauges.get().map_or(&[], Vec::as_slice)
}

/// What a shard is doing with a partition (`PartitionGauge::role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Role {
    /// Not this shard's (another shard's or instance's, or nobody's yet).
    None = 0,
    /// Records taken and applied.
    Active = 1,
    /// Revoked: records no longer taken, its last checkpoint being committed.
    HandingOver = 2,
    /// Assigned: its state being rebuilt from the changelog before its first record.
    Restoring = 3,
}

impl Role {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Active,
            2 => Self::HandingOver,
            3 => Self::Restoring,
            _ => Self::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Active => "active",
            Self::HandingOver => "handing_over",
            Self::Restoring => "restoring",
        }
    }
}

/// One partition's figures as one shard sees it (single writer: that shard).
#[derive(Debug)]
pub struct PartitionGauge {
    pub topic: String,
    pub partition: i32,
    pub shard: usize,
    role: AtomicU8,
    /// -1 until known.
    pub next_offset: AtomicI64,
    /// -1 until a fetch response told.
    pub high_watermark: AtomicI64,
    /// Records taken (applied or skipped).
    pub records: Counter,
}

impl PartitionGauge {
    pub fn new(topic: &str, partition: i32, shard: usize, role: Role) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            shard,
            role: AtomicU8::new(role as u8),
            next_offset: AtomicI64::new(-1),
            high_watermark: AtomicI64::new(-1),
            records: Counter::default(),
        }
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
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

/// One input partition as this instance sees it, over all its shards' gauges.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    /// What the owning shard does with it (`None`: no shard here owns it).
    pub role: Role,
    /// The shard that owns it (None when no shard does).
    pub shard: Option<usize>,
    /// -1 when not owned or not known yet.
    pub next_offset: i64,
    /// -1 when not owned or not known yet.
    pub high_watermark: i64,
    pub lag: Option<i64>,
    /// Records taken here since start, by every shard that owned it.
    pub records: u64,
}

/// Every partition the gauges know, once each, in the order first seen. A partition's
/// figures come from the shard that owns it (at most one does; if two ever claimed it, the
/// busier role wins so it shows); records add up over every shard that took any.
pub fn by_partition(gauges: &[std::sync::Arc<PartitionGauge>]) -> Vec<PartitionView> {
    let mut out: Vec<PartitionView> = Vec::new();
    // A group member has shards x partitions gauges: an index keeps a scrape linear in them.
    let mut index: std::collections::HashMap<(&str, i32), usize> = std::collections::HashMap::new();
    for g in gauges {
        let at = match index.get(&(g.topic.as_str(), g.partition)) {
            Some(&at) => at,
            None => {
                index.insert((g.topic.as_str(), g.partition), out.len());
                out.push(PartitionView {
                    topic: g.topic.clone(),
                    partition: g.partition,
                    role: Role::None,
                    shard: None,
                    next_offset: -1,
                    high_watermark: -1,
                    lag: None,
                    records: 0,
                });
                out.len() - 1
            }
        };
        let Some(v) = out.get_mut(at) else { continue };
        v.records += g.records.get();
        let role = g.role();
        if role != Role::None && role >= v.role {
            v.role = role;
            v.shard = Some(g.shard);
            v.next_offset = g.next_offset.load(Ordering::Relaxed);
            v.high_watermark = g.high_watermark.load(Ordering::Relaxed);
            v.lag = g.lag();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_needs_both_ends_and_never_goes_negative() {
        let g = PartitionGauge::new("t", 0, 0, Role::Active);
        assert_eq!(g.lag(), None);
        g.next_offset.store(10, Ordering::Relaxed);
        assert_eq!(g.lag(), None);
        g.high_watermark.store(25, Ordering::Relaxed);
        assert_eq!(g.lag(), Some(15));
        // The cached watermark can trail the position by a fetch.
        g.next_offset.store(30, Ordering::Relaxed);
        assert_eq!(g.lag(), Some(0));
    }

    #[test]
    fn a_partition_shows_once_with_its_owning_shards_figures_and_every_shards_records() {
        use std::sync::Arc;
        // Two shards of a group member, each with a gauge for both partitions of "t".
        let g: Vec<Arc<PartitionGauge>> = (0..2)
            .flat_map(|shard| {
                (0..2).map(move |p| Arc::new(PartitionGauge::new("t", p, shard, Role::None)))
            })
            .collect();
        // Partition 0 moved from shard 0 to shard 1: shard 0 took 5 records of it first.
        g[0].records.add(5);
        g[2].set_role(Role::Active);
        g[2].next_offset.store(40, Ordering::Relaxed);
        g[2].high_watermark.store(42, Ordering::Relaxed);
        g[2].records.add(3);
        // Partition 1 is being rebuilt on shard 0.
        g[1].set_role(Role::Restoring);
        let v = by_partition(&g);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].partition, v[0].role, v[0].shard),
            (0, Role::Active, Some(1))
        );
        assert_eq!((v[0].next_offset, v[0].lag, v[0].records), (40, Some(2), 8));
        assert_eq!(
            (v[1].partition, v[1].role, v[1].shard),
            (1, Role::Restoring, Some(0))
        );
        assert_eq!(v[1].lag, None);
        // Nobody here owns it any more: shown, with no shard and no lag.
        g[2].set_role(Role::None);
        let v = by_partition(&g);
        assert_eq!(
            (v[0].role, v[0].shard, v[0].lag, v[0].records),
            (Role::None, None, None, 8)
        );
    }
}
