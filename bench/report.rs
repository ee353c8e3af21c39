//! Turning runs into what people read: a table, JSON, .hgrm files and an SVG percentile plot.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use sluice::loadgen::LoadReport;

pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// One measured run of one target at one rate.
#[derive(Debug, Serialize)]
pub struct Run {
    pub target: String,
    pub rate: u64,
    pub batch: usize,
    pub keys: u64,
    pub zipf: Option<f64>,
    pub shards: usize,
    pub seconds: f64,
    pub sent_events: u64,
    pub expected_replies: u64,
    pub replies: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub count_errors: u64,
    pub unexpected: u64,
    pub send_errors: u64,
    pub achieved_events_per_s: f64,
    pub max_send_lag_us: f64,
    /// Scheduled send -> reply (coordinated-omission-correct), microseconds.
    pub latency_us: Vec<(f64, f64)>,
    /// sluice's own receive->emit histogram, microseconds (None for the floor).
    pub internal_us: Option<Vec<(f64, f64)>>,
    /// The same split by whether the event's key was hot on arrival (with state.dir set;
    /// None when no key was cold): what the cold keys cost the hot ones.
    pub internal_hot_key_us: Option<Vec<(f64, f64)>>,
    pub internal_cold_key_us: Option<Vec<(f64, f64)>>,
    /// Kernel socket drops inside sluice (SO_RXQ_OVFL), if measured.
    pub socket_drops: Option<u64>,
    /// CPU per datagram sent, microseconds, over the load (warm-up included): the shards'
    /// threads only, and the whole machine (generator, softirq work on every CPU, spinning).
    pub shard_cpu_us_per_datagram: Option<f64>,
    pub machine_cpu_us_per_datagram: Option<f64>,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

pub fn percentiles_us(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    PERCENTILES
        .iter()
        .map(|&p| {
            let v = if p == 100.0 {
                h.max()
            } else {
                h.value_at_quantile(p / 100.0)
            };
            (p, v as f64 / 1000.0)
        })
        .collect()
}

impl Run {
    pub fn from_load(
        target: &str,
        rate: u64,
        batch: usize,
        keys: u64,
        zipf: Option<f64>,
        shards: usize,
        l: LoadReport,
    ) -> Self {
        Run {
            target: target.to_owned(),
            rate,
            batch,
            keys,
            zipf,
            shards,
            seconds: l.elapsed.as_secs_f64(),
            sent_events: l.sent_events,
            expected_replies: l.expected_replies,
            replies: l.replies,
            lost: l.lost,
            duplicates: l.duplicates,
            count_errors: l.count_errors,
            unexpected: l.unexpected,
            send_errors: l.send_errors,
            achieved_events_per_s: l.achieved_rate(),
            max_send_lag_us: l.max_send_lag.as_secs_f64() * 1e6,
            latency_us: percentiles_us(&l.latency),
            internal_us: None,
            internal_hot_key_us: None,
            internal_cold_key_us: None,
            shard_cpu_us_per_datagram: None,
            machine_cpu_us_per_datagram: None,
            socket_drops: None,
            histogram: l.latency,
        }
    }

    pub fn p(&self, pct: f64) -> f64 {
        self.latency_us
            .iter()
            .find(|(p, _)| *p == pct)
            .map_or(f64::NAN, |(_, v)| *v)
    }

    /// Replies for at least 99% of what was sent, and nothing wrong in them.
    pub fn sustained(&self) -> bool {
        self.expected_replies > 0
            && (self.expected_replies - self.lost) as f64 >= 0.99 * self.expected_replies as f64
            && self.duplicates == 0
            && self.count_errors == 0
    }
}

pub fn table(runs: &[&Run]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{:<8} {:>9} {:>3} {:>10} {:>6} {:>5} {:>5}",
        "target", "rate/s", "B", "achieved/s", "lost", "dup", "cnt!"
    );
    for p in PERCENTILES {
        let label = if p == 100.0 {
            "max".to_owned()
        } else {
            format!("p{p}")
        };
        let _ = write!(s, " {label:>9}");
    }
    s.push_str(
        "   (us, scheduled send -> reply)  | sluice inside: p50 p99 (| split by key, if any was cold)\n",
    );
    for r in runs {
        let _ = write!(
            s,
            "{:<8} {:>9} {:>3} {:>10.0} {:>6} {:>5} {:>5}",
            r.target,
            r.rate,
            r.batch,
            r.achieved_events_per_s,
            r.lost,
            r.duplicates,
            r.count_errors
        );
        for (_, v) in &r.latency_us {
            let _ = write!(s, " {v:>9.1}");
        }
        if let Some(i) = &r.internal_us {
            let at = |p: f64| {
                i.iter()
                    .find(|(q, _)| *q == p)
                    .map_or(f64::NAN, |(_, v)| *v)
            };
            let _ = write!(s, "   | {:>7.1} {:>8.1}", at(50.0), at(99.0));
        }
        if let (Some(h), Some(c)) = (&r.internal_hot_key_us, &r.internal_cold_key_us) {
            let at = |i: &[(f64, f64)], p: f64| {
                i.iter()
                    .find(|(q, _)| *q == p)
                    .map_or(f64::NAN, |(_, v)| *v)
            };
            let _ = write!(
                s,
                "   | hot keys {:.1} {:.1}, cold keys {:.1} {:.1}",
                at(h, 50.0),
                at(h, 99.0),
                at(c, 50.0),
                at(c, 99.0)
            );
        }
        s.push('\n');
    }
    s
}

/// Latency by percentile, log-log, all runs on one chart.
pub fn plot(runs: &[&Run], title: &str, path: &Path) -> anyhow::Result<()> {
    // x = 1 / (1 - q): 10 = p90, 100 = p99, ...
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let pts = r
                .histogram
                .iter_quantiles(4)
                .map(|v| {
                    (
                        v.quantile_iterated_to(),
                        v.value_iterated_to() as f64 / 1000.0,
                    )
                })
                .filter(|(q, _)| *q < 0.99999)
                .map(|(q, us)| (1.0 / (1.0 - q), us.max(0.1)))
                .collect();
            (format!("{} @ {}/s, B={}", r.target, r.rate, r.batch), pts)
        })
        .collect();
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max)
        * 1.5;
    let y_min = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(f64::MAX, f64::min)
        .clamp(0.1, 1e6)
        / 1.5;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0f64..1e5).log_scale(), (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_label_formatter(&|x| format!("{}%", (100.0 * (1.0 - 1.0 / x) * 1000.0).round() / 1000.0))
        .draw()?;
    let colours = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let c = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
