//! The shutdown report: counters summed over shards, histograms merged, a percentile table,
//! and `.hgrm` files in HdrHistogram's percentile-distribution format.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use super::catalog::{part_of, Kind, MetricDef, Part};
use super::{names, DropReason, ShardCounters, ShardLatency, SHARD_METRICS};
use crate::wire::DecodeError;

pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// One consumed Kafka partition at shutdown.
#[derive(Debug, Clone, Default)]
pub struct PartitionLine {
    pub topic: String,
    pub partition: i32,
    pub records: u64,
    pub next_offset: i64,
    /// High watermark (as last fetched) minus the next offset; None if not known.
    pub lag: Option<i64>,
}

/// Totals over all shards.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub shards: usize,
    pub driver: String,
    pub datagrams_received: u64,
    pub datagrams_dropped: Vec<(&'static str, u64)>,
    pub datagrams_shed: u64,
    pub events_received: u64,
    pub events_dropped: Vec<(&'static str, u64)>,
    pub events_routed_away: u64,
    pub observations_applied: u64,
    pub feedback_applied: u64,
    pub scores_emitted: u64,
    pub alerts_emitted: u64,
    pub reply_datagrams: u64,
    pub socket_drops: u64,
    pub uring_enobufs: u64,
    pub uring_rearms: u64,
    pub hot_keys: u64,
    pub spilled_keys: u64,
    pub hot_hits: u64,
    pub hot_misses: u64,
    pub spills: u64,
    pub reloads: u64,
    pub expired: u64,
    pub late_applied: u64,
    pub checkpoints_written: u64,
    pub checkpoints_failed: u64,
    pub checkpoints_skipped: u64,
    /// Longest snapshot flip of any shard (ns).
    pub checkpoint_pause_max_ns: u64,
    /// Longest cycle's slice of snapshot copying of any shard (ns).
    pub checkpoint_slice_max_ns: u64,
    pub checkpoint_journal_waits: u64,
    pub latency_clamped: u64,
    pub receive_to_emit: Option<Histogram<u64>>,
    pub in_shard: Option<Histogram<u64>>,
    /// `receive_to_emit` of events whose key was hot / not hot on arrival.
    pub receive_to_emit_hot_key: Option<Histogram<u64>>,
    pub receive_to_emit_cold_key: Option<Histogram<u64>>,
    pub model_run: Option<Histogram<u64>>,
    pub model_run_per_row: Option<Histogram<u64>>,
    pub kafka_records: u64,
    pub kafka_records_skipped: Vec<(&'static str, u64)>,
    pub kafka_score_records: u64,
    pub kafka_delivery_failures: u64,
    pub kafka_transactions: u64,
    pub kafka_transactions_failed: u64,
    pub kafka_backpressure_cycles: u64,
    pub kafka_commit_pause_max_ns: u64,
    pub kafka_record_to_produce: Option<Histogram<u64>>,
    pub kafka_in_shard: Option<Histogram<u64>>,
    pub kafka_available_to_produce: Option<Histogram<u64>>,
    pub kafka_partitions: Vec<PartitionLine>,
    /// Positions the brokers no longer had, and the offsets those resets skipped
    /// (`ingest::kafka::offset_resets`).
    pub kafka_offset_resets: u64,
    pub kafka_offsets_lost: u64,
    /// Input topics' partitions added since they were dealt, which no shard consumed.
    pub kafka_unconsumed: Vec<crate::ingest::kafka::topic_watch::Unconsumed>,
    /// Per shard: (events received by its socket, observations applied as owner).
    pub per_shard: Vec<(u64, u64)>,
    /// Every catalog metric over all shards, in catalog order: what `render` prints.
    pub totals: Vec<Total>,
}

/// One catalog metric over all shards: summed (the longest-time gauges: their maximum), one
/// value per label value.
#[derive(Debug, Clone)]
pub struct Total {
    pub def: &'static MetricDef,
    pub values: Vec<u64>,
}

fn totals(counters: &[&ShardCounters]) -> Vec<Total> {
    SHARD_METRICS
        .iter()
        .map(|def| {
            let n = def.labels.map_or(1, |l| l.count);
            let values = (0..n)
                .map(|i| {
                    let each = counters.iter().map(|c| (def.read)(c, i));
                    match def.kind {
                        Kind::GaugeNs | Kind::GaugeMax => each.max().unwrap_or(0),
                        Kind::Counter | Kind::Gauge => each.sum(),
                    }
                })
                .collect();
            Total { def, values }
        })
        .collect()
}

impl Report {
    pub fn merge(driver: &str, counters: &[&ShardCounters], latency: Vec<ShardLatency>) -> Self {
        let sum = |f: &dyn Fn(&ShardCounters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
        let mut r = Report {
            shards: counters.len(),
            driver: driver.to_owned(),
            datagrams_received: sum(&|c| c.datagrams_received.get()),
            datagrams_dropped: DecodeError::ALL
                .iter()
                .map(|e| (e.reason(), sum(&|c| c.datagrams_dropped_by(*e))))
                .collect(),
            datagrams_shed: sum(&|c| c.datagrams_shed.get()),
            events_received: sum(&|c| c.events_received.get()),
            events_dropped: DropReason::ALL
                .iter()
                .map(|d| (d.label(), sum(&|c| c.events_dropped_by(*d))))
                .collect(),
            events_routed_away: sum(&|c| c.events_routed_away.get()),
            observations_applied: sum(&|c| c.observations_applied.get()),
            feedback_applied: sum(&|c| c.feedback_applied.get()),
            scores_emitted: sum(&|c| c.scores_emitted.get()),
            alerts_emitted: sum(&|c| c.alerts_emitted.get()),
            reply_datagrams: sum(&|c| c.reply_datagrams.get()),
            socket_drops: sum(&|c| c.socket_drops.get()),
            uring_enobufs: sum(&|c| c.uring_enobufs.get()),
            uring_rearms: sum(&|c| c.uring_rearms.get()),
            hot_keys: sum(&|c| c.hot_keys.get()),
            spilled_keys: sum(&|c| c.spilled_keys.get()),
            hot_hits: sum(&|c| c.hot_hits.get()),
            hot_misses: sum(&|c| c.hot_misses.get()),
            spills: sum(&|c| c.spills.get()),
            reloads: sum(&|c| c.reloads.get()),
            expired: sum(&|c| c.expired.get()),
            late_applied: sum(&|c| c.late_applied.get()),
            checkpoints_written: sum(&|c| c.checkpoints_written.get()),
            checkpoints_failed: sum(&|c| c.checkpoints_failed.get()),
            checkpoints_skipped: sum(&|c| c.checkpoints_skipped.get()),
            checkpoint_pause_max_ns: counters
                .iter()
                .map(|c| c.checkpoint_pause_max_ns.get())
                .max()
                .unwrap_or(0),
            checkpoint_slice_max_ns: counters
                .iter()
                .map(|c| c.checkpoint_slice_max_ns.get())
                .max()
                .unwrap_or(0),
            checkpoint_journal_waits: sum(&|c| c.checkpoint_journal_waits.get()),
            kafka_records: sum(&|c| c.kafka_records.get()),
            kafka_records_skipped: DecodeError::ALL
                .iter()
                .map(|e| (e.reason(), sum(&|c| c.records_skipped_by(*e))))
                .collect(),
            kafka_score_records: sum(&|c| c.kafka_score_records.get()),
            kafka_delivery_failures: sum(&|c| c.kafka_delivery_failures.get()),
            kafka_transactions: sum(&|c| c.kafka_transactions.get()),
            kafka_transactions_failed: sum(&|c| c.kafka_transactions_failed.get()),
            kafka_backpressure_cycles: sum(&|c| c.kafka_backpressure_cycles.get()),
            kafka_commit_pause_max_ns: counters
                .iter()
                .map(|c| c.kafka_commit_pause_max_ns.get())
                .max()
                .unwrap_or(0),
            per_shard: counters
                .iter()
                .map(|c| (c.events_received.get(), c.observations_applied.get()))
                .collect(),
            totals: totals(counters),
            ..Report::default()
        };
        for l in latency {
            r.latency_clamped += l.clamped;
            merge_into(&mut r.receive_to_emit, l.receive_to_emit);
            merge_into(&mut r.in_shard, l.in_shard);
            merge_into(&mut r.receive_to_emit_hot_key, l.receive_to_emit_hot_key);
            merge_into(&mut r.receive_to_emit_cold_key, l.receive_to_emit_cold_key);
            merge_into(&mut r.model_run, l.model_run);
            merge_into(&mut r.model_run_per_row, l.model_run_per_row);
            merge_into(&mut r.kafka_record_to_produce, l.kafka_record_to_produce);
            merge_into(&mut r.kafka_in_shard, l.kafka_in_shard);
            merge_into(
                &mut r.kafka_available_to_produce,
                l.kafka_available_to_produce,
            );
        }
        r
    }

    pub fn datagrams_dropped_total(&self) -> u64 {
        self.datagrams_dropped.iter().map(|(_, n)| n).sum()
    }

    pub fn datagrams_dropped_by(&self, reason: &str) -> u64 {
        self.datagrams_dropped
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn records_skipped_by(&self, reason: &str) -> u64 {
        self.kafka_records_skipped
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn events_dropped_by(&self, reason: &str) -> u64 {
        self.events_dropped
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// Human-readable summary: every catalog metric (the exporter's names, summed over
    /// shards; the longest-time gauges as the maximum), then the latency percentile table.
    /// Metrics of a part that did nothing (Kafka, checkpoints) are left out, and labelled
    /// values that are zero.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sluice: {} shard(s), udp driver {}",
            self.shards, self.driver
        );
        let active = |part: Part| {
            part == Part::Core
                || self
                    .totals
                    .iter()
                    .any(|t| part_of(t.def.name) == part && t.values.iter().any(|v| *v > 0))
        };
        let (kafka_on, checkpoints_on) = (active(Part::Kafka), active(Part::Checkpoints));
        for t in &self.totals {
            let on = match part_of(t.def.name) {
                Part::Core => true,
                Part::Kafka => kafka_on,
                Part::Checkpoints => checkpoints_on,
            };
            if !on {
                continue;
            }
            let name = t.def.name;
            match t.def.labels {
                None => {
                    let v = t.values.first().copied().unwrap_or(0);
                    let _ = match t.def.kind {
                        Kind::GaugeNs => writeln!(s, "  {name:<40} {:.6}", v as f64 * 1e-9),
                        Kind::Counter | Kind::Gauge | Kind::GaugeMax => {
                            writeln!(s, "  {name:<40} {v}")
                        }
                    };
                }
                Some(l) => {
                    for (i, v) in t.values.iter().enumerate().filter(|(_, v)| **v > 0) {
                        let labelled = format!("{name}{{{}=\"{}\"}}", l.key, (l.value)(i));
                        let _ = writeln!(s, "  {labelled:<40} {v}");
                    }
                }
            }
        }
        for p in &self.kafka_partitions {
            let labels = format!("{{topic=\"{}\",partition=\"{}\"}}", p.topic, p.partition);
            let lag = p.lag.map_or("unknown".to_owned(), |l| l.to_string());
            let _ = writeln!(
                s,
                "  {}{labels} {lag}  (records {}, next offset {})",
                names::KAFKA_PARTITION_LAG,
                p.records,
                p.next_offset
            );
        }
        if self.kafka_offset_resets > 0 || self.kafka_offsets_lost > 0 {
            let _ = writeln!(
                s,
                "  {:<40} {}",
                names::KAFKA_OFFSET_RESETS,
                self.kafka_offset_resets
            );
            let _ = writeln!(
                s,
                "  {:<40} {}",
                names::KAFKA_OFFSETS_LOST,
                self.kafka_offsets_lost
            );
        }
        for u in &self.kafka_unconsumed {
            let records = u.records.map_or("unknown".to_owned(), |r| r.to_string());
            let _ = writeln!(
                s,
                "  {}{{topic=\"{}\"}} {}  (records waiting in them {records}: partitions added to the topic while sluice ran, see the error logged)",
                names::KAFKA_TOPIC_PARTITIONS_UNCONSUMED,
                u.topic,
                u.partitions,
            );
        }
        if self.checkpoints_written > 0 {
            let _ = writeln!(
                s,
                "  {:<40} {:.6}",
                names::CHECKPOINT_PAUSE_MAX,
                self.checkpoint_pause_max_ns as f64 * 1e-9
            );
            let _ = writeln!(
                s,
                "  {:<40} {:.6}",
                names::CHECKPOINT_SLICE_MAX,
                self.checkpoint_slice_max_ns as f64 * 1e-9
            );
        }
        for (i, (recv, owned)) in self.per_shard.iter().enumerate() {
            let _ = writeln!(
                s,
                "  shard {i}: received {recv} events, applied {owned} observations as owner"
            );
        }
        s.push_str(&percentile_table(&[
            ("receive->emit", self.receive_to_emit.as_ref()),
            ("in-shard", self.in_shard.as_ref()),
            ("model run", self.model_run.as_ref()),
            ("model/row", self.model_run_per_row.as_ref()),
        ]));
        // The split says something only when some keys were not hot.
        if self
            .receive_to_emit_cold_key
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        {
            s.push_str(&percentile_table(&[
                (
                    "receive->emit, hot keys",
                    self.receive_to_emit_hot_key.as_ref(),
                ),
                (
                    "receive->emit, cold keys",
                    self.receive_to_emit_cold_key.as_ref(),
                ),
            ]));
        }
        if self.kafka_in_shard.as_ref().is_some_and(|h| !h.is_empty()) {
            s.push_str(&percentile_table(&[
                (
                    "kafka record->produce",
                    self.kafka_record_to_produce.as_ref(),
                ),
                ("kafka in-shard", self.kafka_in_shard.as_ref()),
                (
                    "kafka available->produce",
                    self.kafka_available_to_produce.as_ref(),
                ),
            ]));
        }
        if self.latency_clamped > 0 {
            let _ = writeln!(
                s,
                "  ({} latencies above metrics.latency_max_ns were clamped)",
                self.latency_clamped
            );
        }
        s
    }

    /// Write `receive_to_emit.hgrm` and `in_shard.hgrm` under `dir`.
    pub fn write_hgrm_files(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, h) in [
            ("receive_to_emit", &self.receive_to_emit),
            ("in_shard", &self.in_shard),
            ("receive_to_emit_hot_key", &self.receive_to_emit_hot_key),
            ("receive_to_emit_cold_key", &self.receive_to_emit_cold_key),
        ] {
            // (The hot/cold split is empty without state.dir.)
            if let Some(h) = h.as_ref().filter(|h| !h.is_empty()) {
                write_hgrm(h, &dir.join(format!("{name}.hgrm")), 1000.0)?;
            }
        }
        Ok(())
    }
}

fn merge_into(acc: &mut Option<Histogram<u64>>, h: Histogram<u64>) {
    match acc {
        Some(a) => {
            // Same bounds on every shard, so adding cannot fail; if it did, keep what we have.
            let _ = a.add(&h);
        }
        None => *acc = Some(h),
    }
}

/// A table of percentiles in microseconds, one column per histogram.
pub fn percentile_table(cols: &[(&str, Option<&Histogram<u64>>)]) -> String {
    // Each column as wide as its name (at least 16), so long names keep the figures aligned.
    let width = |name: &str| name.len().max(16);
    let mut s = String::new();
    let _ = write!(s, "  {:>10}", "percentile");
    for (name, _) in cols {
        let _ = write!(s, " {name:>w$}", w = width(name));
    }
    s.push('\n');
    for p in PERCENTILES {
        let label = if p == 100.0 {
            "max".to_owned()
        } else {
            format!("p{p}")
        };
        let _ = write!(s, "  {label:>10}");
        for (name, h) in cols {
            let w = width(name);
            match h {
                Some(h) if !h.is_empty() => {
                    let v = if p == 100.0 {
                        h.max()
                    } else {
                        h.value_at_quantile(p / 100.0)
                    };
                    let _ = write!(s, " {:>w$.1} us", v as f64 / 1000.0, w = w - 3);
                }
                _ => {
                    let _ = write!(s, " {:>w$}", "-");
                }
            }
        }
        s.push('\n');
    }
    let _ = write!(s, "  {:>10}", "samples");
    for (name, h) in cols {
        let _ = write!(s, " {:>w$}", h.map_or(0, |h| h.len()), w = width(name));
    }
    s.push('\n');
    s
}

/// HdrHistogram's classic percentile-distribution text (`.hgrm`), values divided by
/// `unit_ratio` (1000 = microseconds), readable by the usual HdrHistogram plotters.
pub fn write_hgrm(h: &Histogram<u64>, path: &Path, unit_ratio: f64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / unit_ratio;
        if q < 1.0 {
            writeln!(
                out,
                "{value:>12.3} {q:>2.12} {:>10} {:>14.2}",
                total,
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:>12.3} {q:>2.12} {:>10}", total)?;
        }
    }
    let mean = h.mean() / unit_ratio;
    let sd = h.stdev() / unit_ratio;
    writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {sd:>12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / unit_ratio,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_prints_every_catalog_metric_over_shards_and_leaves_idle_parts_out() {
        let (a, b) = (ShardCounters::default(), ShardCounters::default());
        a.scores_emitted.set(3);
        b.scores_emitted.set(4);
        a.model_version.set(2);
        b.model_version.set(3);
        a.loop_max_ns.set(1_500_000);
        b.loop_max_ns.set(2_500_000);
        b.dropped_datagram(DecodeError::TooShort);
        let text = Report::merge("io_uring", &[&a, &b], Vec::new()).render();
        for line in [
            "  sluice_scores_emitted_total              7\n",
            "  sluice_model_version                     3\n",
            "  sluice_shard_loop_max_seconds            0.002500\n",
            "  sluice_datagrams_dropped_total{reason=\"too_short\"} 1\n",
            "  sluice_socket_drops_total                0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("sluice_kafka_"), "{text}");
        assert!(!text.contains("sluice_checkpoint"), "{text}");
        assert!(
            !text.contains("reason=\"oversize\""),
            "zero labelled values are left out"
        );

        a.kafka_records.set(1);
        a.checkpoints_written.set(1);
        let text = Report::merge("io_uring", &[&a, &b], Vec::new()).render();
        assert!(
            text.contains("  sluice_kafka_records_total               1\n"),
            "{text}"
        );
        assert!(
            text.contains("  sluice_kafka_transactions_committed_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("  sluice_checkpoints_written_total         1\n"),
            "{text}"
        );
    }
}
