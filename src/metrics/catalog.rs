//! What the exporter knows about a metric, and the fixed-bucket histograms shards keep live.

use super::counters::ShardCounters;
use super::Counter;

/// How a catalog value is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only rises (its sample name ends in `_total`).
    Counter,
    /// Summed over shards in the shutdown report.
    Gauge,
    /// A gauge whose total over shards is the largest (a version).
    GaugeMax,
    /// A gauge kept in nanoseconds, served in seconds; its total is the largest (a longest time).
    GaugeNs,
}

/// The part of sluice a metric belongs to, by its name: a part that is off (or did nothing)
/// has its metrics left out of the exposition and the shutdown report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Core,
    Kafka,
    Checkpoints,
}

pub fn part_of(name: &str) -> Part {
    if name.starts_with("sluice_kafka_") {
        Part::Kafka
    } else if name.starts_with("sluice_checkpoint") {
        Part::Checkpoints
    } else {
        Part::Core
    }
}

/// A metric with one series per label value (besides `shard`).
#[derive(Debug, Clone, Copy)]
pub struct Labelled {
    pub key: &'static str,
    pub count: usize,
    pub value: fn(usize) -> &'static str,
}

/// One per-shard metric: read for each shard (and each label value) at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Option<Labelled>,
    pub read: fn(&ShardCounters, usize) -> u64,
}

/// Bucket upper bounds (ns) of every latency histogram, the same on every host so they sum
/// across shards and hosts: 1-2-5 steps from 1 µs to 10 s.
pub const LATENCY_BOUNDS_NS: [u64; 22] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets: one per bound, then +Inf.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// A latency histogram in fixed buckets with one writer (the shard). Recording is a short
/// search over 22 bounds and two plain stores: no lock, no locked instruction.
#[derive(Debug, Default)]
pub struct LiveHistogram {
    buckets: [Counter; LATENCY_BUCKETS],
    sum_ns: Counter,
}

impl LiveHistogram {
    #[inline]
    pub fn record(&self, ns: u64) {
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        if let Some(b) = self.buckets.get(i) {
            b.inc();
        }
        self.sum_ns.add(ns);
    }

    /// Per-bucket counts (not cumulative; the last is +Inf) and the sum in ns. The count is
    /// the buckets' sum, so a scrape racing the writer still serves a self-consistent
    /// histogram (its sum may lag a few events).
    pub fn snapshot(&self) -> ([u64; LATENCY_BUCKETS], u64) {
        let mut out = [0; LATENCY_BUCKETS];
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            *o = b.get();
        }
        (out, self.sum_ns.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = LiveHistogram::default();
        for v in [
            0,
            1_000,
            1_001,
            2_000,
            10_000_000_000,
            10_000_000_001,
            u64::MAX / 4,
        ] {
            h.record(v);
        }
        let (b, sum) = h.snapshot();
        assert_eq!(b[0], 2, "0 and 1 µs are <= 1 µs");
        assert_eq!(b[1], 2, "1.001 µs and 2 µs are <= 2 µs");
        assert_eq!(b[LATENCY_BUCKETS - 2], 1, "10 s");
        assert_eq!(b[LATENCY_BUCKETS - 1], 2, "+Inf");
        assert_eq!(b.iter().sum::<u64>(), 7);
        assert_eq!(
            sum,
            1_000 + 1_001 + 2_000 + 10_000_000_000 + 10_000_000_001 + u64::MAX / 4
        );
    }

    #[test]
    fn bounds_rise() {
        assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
