//! `sluice-bench scrape`: what the live metrics endpoint costs. (1) Time per scrape through
//! the real endpoint (HTTP GET over loopback, encode included) with the default metrics at
//! each of --scrape-shards shard counts, counters and histograms filled as after traffic.
//! (2) With --ab PAIRS: sluice under --rate load with a scrape every 100 ms, then without,
//! alternating in one run; the shards' p99.9 of each.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use sluice::config::Config;
use sluice::loadgen::{self, LoadSpec};
use sluice::metrics::exporter::{self, BuildInfo, Exposition, Parts};
use sluice::metrics::{ShardCounters, SHARD_HISTOGRAMS};
use sluice::shard::Control;

#[derive(Serialize)]
struct ScrapeTime {
    shards: usize,
    /// Kafka and checkpoint metrics served too (as with Kafka on and state.dir set).
    kafka_and_checkpoints: bool,
    scrapes: usize,
    body_bytes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The encoding alone (no HTTP), p50 / p99.
    encode_p50_ms: f64,
    encode_p99_ms: f64,
}

#[derive(Serialize)]
struct AbRun {
    scraping: bool,
    scrapes: u64,
    rate: u64,
    replies: u64,
    lost: u64,
    /// The shards' own receive->emit and in-shard p99.9 (us).
    receive_to_emit_p999_us: f64,
    in_shard_p999_us: f64,
    /// Client round trip p99.9 (us).
    round_trip_p999_us: f64,
}

#[derive(Serialize)]
struct Results {
    machine: crate::machine::Machine,
    command: String,
    scrape_times: Vec<ScrapeTime>,
    ab: Vec<AbRun>,
}

/// Counters as a shard has them after traffic: every metric non-zero, every histogram
/// bucket used (the body is then as long as it gets).
fn busy_counters() -> ShardCounters {
    let c = ShardCounters::default();
    c.datagrams_received.set(123_456_789);
    c.events_received.set(987_654_321);
    c.scores_emitted.set(987_654_000);
    for (i, d) in c.datagrams_dropped.iter().enumerate() {
        d.set(i as u64 * 1_000 + 7);
    }
    for (i, d) in c.events_dropped.iter().enumerate() {
        d.set(i as u64 * 100 + 3);
    }
    let mut ns = 500;
    while ns < 20_000_000_000 {
        for (_, _, pick) in SHARD_HISTOGRAMS {
            pick(&c.latency).record(ns);
        }
        ns = ns * 3 / 2;
    }
    c
}

fn http_get(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut body)?;
    anyhow::ensure!(
        body.starts_with(b"HTTP/1.1 200"),
        "scrape answered {:?}",
        String::from_utf8_lossy(&body[..body.len().min(40)])
    );
    Ok(body.len())
}

fn scrape_time(shards: usize, scrapes: usize, parts: Parts) -> anyhow::Result<ScrapeTime> {
    let counters: Vec<Arc<ShardCounters>> =
        (0..shards).map(|_| Arc::new(busy_counters())).collect();
    let exposition = Arc::new(Exposition::new(
        counters,
        Default::default(),
        BuildInfo::of_this_build("io_uring"),
        parts,
    ));
    let mut e = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for _ in 0..scrapes {
        let t = Instant::now();
        let body = exposition.encode()?;
        e.saturating_record(t.elapsed().as_nanos() as u64);
        std::hint::black_box(body);
    }
    let control = Arc::new(Control::new(shards));
    let endpoint = exporter::serve("127.0.0.1:0".parse()?, exposition, control.clone())?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut body_bytes = 0;
    for _ in 0..scrapes {
        let t = Instant::now();
        body_bytes = http_get(endpoint.addr)?;
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    control.request_stop();
    let _ = endpoint.thread.join();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let r = ScrapeTime {
        shards,
        kafka_and_checkpoints: parts.kafka,
        scrapes,
        body_bytes,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1e6,
        encode_p50_ms: e.value_at_quantile(0.5) as f64 / 1e6,
        encode_p99_ms: e.value_at_quantile(0.99) as f64 / 1e6,
    };
    eprintln!(
        "  scrape, {shards} shard(s){}: {} bytes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (encoding alone p50 {:.2} ms, p99 {:.2} ms)",
        if parts.kafka { " with Kafka and checkpoint metrics" } else { "" },
        r.body_bytes, r.p50_ms, r.p99_ms, r.max_ms, r.encode_p50_ms, r.encode_p99_ms
    );
    Ok(r)
}

fn ab_run(config: &Config, spec: &LoadSpec, scraping: bool) -> anyhow::Result<AbRun> {
    let running = sluice::app::start(config)?;
    let addr = running
        .metrics_addr
        .context("metrics.listen did not bind")?;
    let spec = LoadSpec {
        target: running.local_addr,
        ..spec.clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let shard_cpus: Vec<usize> = running.placements.iter().map(|p| p.cpu).collect();
    let scraper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Prometheus scrapes from elsewhere: keep its stand-in off the shards' CPUs.
            sluice::topology::keep_off(&shard_cpus);
            let mut n = 0u64;
            while scraping && !stop.load(Ordering::Relaxed) {
                if http_get(addr).is_ok() {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        })
    };
    let load = loadgen::run(&spec);
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().unwrap_or(0);
    let report = running.stop()?;
    let load = load?;
    let p999 =
        |h: Option<&Histogram<u64>>| h.map_or(0.0, |h| h.value_at_quantile(0.999) as f64 / 1e3);
    let r = AbRun {
        scraping,
        scrapes,
        rate: spec.rate,
        replies: load.replies,
        lost: load.lost,
        receive_to_emit_p999_us: p999(report.receive_to_emit.as_ref()),
        in_shard_p999_us: p999(report.in_shard.as_ref()),
        round_trip_p999_us: load.latency.value_at_quantile(0.999) as f64 / 1e3,
    };
    eprintln!(
        "  {} ({} scrapes): receive->emit p99.9 {:.1} us, in-shard p99.9 {:.1} us, round trip p99.9 {:.1} us, lost {}",
        if scraping { "scraped " } else { "unscraped" },
        r.scrapes,
        r.receive_to_emit_p999_us,
        r.in_shard_p999_us,
        r.round_trip_p999_us,
        r.lost
    );
    Ok(r)
}

pub struct ScrapeBench<'a> {
    pub shard_counts: &'a [usize],
    pub scrapes: usize,
    pub ab_pairs: usize,
    pub rate: u64,
    pub keys: u64,
    pub seconds: f64,
    pub shards: usize,
    pub settle: f64,
    pub out: &'a Path,
    pub sets: &'a [String],
}

pub fn run(b: &ScrapeBench<'_>) -> anyhow::Result<()> {
    std::fs::create_dir_all(b.out).with_context(|| format!("creating {}", b.out.display()))?;
    let mut scrape_times = Vec::new();
    let default = Parts {
        kafka: false,
        checkpoints: false,
    };
    for &n in b.shard_counts {
        scrape_times.push(scrape_time(n, b.scrapes, default)?);
        scrape_times.push(scrape_time(n, b.scrapes, Parts::ALL)?);
    }
    let mut ab = Vec::new();
    if b.ab_pairs > 0 {
        let cpus = super::machine::usable_cpus();
        let mut sets = vec![
            "ingest.udp.listen=127.0.0.1:0".to_owned(),
            "metrics.listen=127.0.0.1:0".to_owned(),
            format!("shards.cores={:?}", &cpus[..b.shards.min(cpus.len())]),
            "log.level=warn".to_owned(),
        ];
        sets.extend(b.sets.iter().cloned());
        let config = Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
        let spec = LoadSpec {
            rate: b.rate,
            keys: b.keys,
            duration: Duration::from_secs_f64(b.seconds),
            warmup: Duration::from_secs(1),
            ..LoadSpec::default()
        };
        for _ in 0..b.ab_pairs {
            for scraping in [true, false] {
                std::thread::sleep(Duration::from_secs_f64(b.settle));
                ab.push(ab_run(&config, &spec, scraping)?);
            }
        }
    }
    let results = Results {
        machine: crate::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        scrape_times,
        ab,
    };
    let path = b.out.join("scrape.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    eprintln!("sluice-bench: wrote {}", path.display());
    Ok(())
}
