//! `sluice-bench kafka`: record append -> Score visible to a read_committed consumer, through
//! a local broker (noida-db), for sluice (one shard by default, `--delivery`) and, in the same
//! run, for the broker's own floor: a relay that consumes each record and produces its Score
//! record with the same client settings and no other work (two broker hops, as sluice has).
//! Also sluice's own share: record taken -> Score handed to the producer (`in-shard`), and
//! record available in the consumer's queue -> the same (`ingest::kafka::arrival`: it counts
//! the wait in librdkafka's queue too).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use serde::Serialize;

use sluice::config::Config;
use sluice::loadgen::broker::LocalBroker;
use sluice::loadgen::kafka::{self as kload, send_when_room, KafkaLoadResult, KafkaLoadSpec};
use sluice::wire::{Decoder, ScoreBatchEncoder, ScoreOut};

use super::report::percentiles_us;

#[derive(Serialize)]
struct KafkaRun {
    target: String,
    delivery: String,
    rate: u64,
    keys: u64,
    seconds: f64,
    sent: u64,
    scores: u64,
    lost: u64,
    duplicates: u64,
    count_errors: u64,
    unexpected: u64,
    max_send_lag_us: f64,
    /// Scheduled append -> Score read, microseconds.
    append_to_visible_us: Vec<(f64, f64)>,
    /// sluice only: record taken from the consumer -> Score record handed to the producer.
    sluice_share_us: Option<Vec<(f64, f64)>>,
    /// sluice only: record available in the consumer's queue (a lower bound) -> the same.
    sluice_available_share_us: Option<Vec<(f64, f64)>>,
    /// sluice only, to tell a stalled shard from a record kept waiting: its longest loop turn,
    /// its turns over `metrics.stall_threshold_us`, and the cycles it took no records because
    /// its producer had `ingest.kafka.in_flight_records_max` unacknowledged.
    shard_loop_max_us: Option<f64>,
    shard_loops_over_threshold: Option<u64>,
    kafka_backpressure_cycles: Option<u64>,
}

#[derive(Serialize)]
struct KafkaResults {
    machine: super::machine::Machine,
    command: String,
    sluice_config: Vec<String>,
    /// CPUs the broker, the load producer and the reader were held to (empty: anywhere).
    load_cpus: Vec<usize>,
    runs: Vec<KafkaRun>,
}

pub struct KafkaBench<'a> {
    pub delivery: &'a str,
    pub rate: u64,
    pub keys: u64,
    pub seconds: f64,
    pub warmup: f64,
    pub shards: usize,
    pub repeat: usize,
    pub out: &'a Path,
    pub sets: &'a [String],
    pub load_cpus: &'a [usize],
}

fn run_row(
    target: &str,
    b: &KafkaBench<'_>,
    r: &KafkaLoadResult,
    share: Option<Vec<(f64, f64)>>,
    available_share: Option<Vec<(f64, f64)>>,
    report: Option<&sluice::metrics::Report>,
) -> KafkaRun {
    let total = |name: &str| {
        report.map(|r| {
            r.totals
                .iter()
                .filter(|t| t.def.name == name)
                .flat_map(|t| t.values.iter())
                .sum::<u64>()
        })
    };
    KafkaRun {
        target: target.to_owned(),
        delivery: b.delivery.to_owned(),
        rate: b.rate,
        keys: b.keys,
        seconds: b.seconds,
        sent: r.sent,
        scores: r.scores,
        lost: r.lost,
        duplicates: r.duplicates,
        count_errors: r.count_errors,
        unexpected: r.unexpected,
        max_send_lag_us: r.max_send_lag.as_secs_f64() * 1e6,
        append_to_visible_us: percentiles_us(&r.latency),
        sluice_share_us: share,
        sluice_available_share_us: available_share,
        shard_loop_max_us: total(sluice::metrics::names::LOOP_MAX).map(|ns| ns as f64 / 1000.0),
        shard_loops_over_threshold: total(sluice::metrics::names::LOOPS_OVER_THRESHOLD),
        kafka_backpressure_cycles: report.map(|r| r.kafka_backpressure_cycles),
    }
}

pub fn run(b: &KafkaBench<'_>) -> anyhow::Result<()> {
    // `with_cpus` leaves a mask it cannot set unchanged: refuse a CPU this process cannot use
    // rather than run unpinned without saying so.
    let usable = super::machine::usable_cpus();
    if let Some(c) = b.load_cpus.iter().find(|c| !usable.contains(c)) {
        anyhow::bail!("--load-cpus: CPU {c} is not one this process may use ({usable:?})");
    }
    // A process and threads inherit their starter's CPU mask.
    let broker = sluice::topology::with_cpus(b.load_cpus, || LocalBroker::start("bench"))?;
    std::fs::create_dir_all(b.out)?;
    let mut runs = Vec::new();
    let mut sluice_sets = Vec::new();
    for i in 0..b.repeat.max(1) {
        for target in ["sluice", "floor"] {
            let events = format!("bench-events-{target}-{i}");
            let scores = format!("bench-scores-{target}-{i}");
            broker.create_topic(&events, 4)?;
            broker.create_topic(&scores, 4)?;
            let spec = KafkaLoadSpec {
                brokers: broker.addr.clone(),
                events_topic: events.clone(),
                scores_topic: scores.clone(),
                rate: b.rate,
                keys: b.keys,
                duration: Duration::from_secs_f64(b.seconds + b.warmup),
                warmup: Duration::from_secs_f64(b.warmup),
                drain: Duration::from_secs(5),
                fetch_wait_ms: 1,
            };
            let row = if target == "sluice" {
                let state = b.out.join("kafka-state");
                let _ = std::fs::remove_dir_all(&state);
                let mut sets = vec![
                    "ingest.udp.listen=127.0.0.1:0".to_owned(),
                    format!("shards.count={}", b.shards),
                    "log.level=warn".to_owned(),
                    format!("ingest.kafka.brokers={}", broker.addr),
                    format!("ingest.kafka.topics=[\"{events}\"]"),
                    format!("egress.kafka.scores_topic={scores}"),
                    format!("egress.kafka.delivery={}", b.delivery),
                    format!("egress.kafka.transactional_id_prefix=bench-{i}"),
                    format!("state.hot_capacity={}", (b.keys * 2).next_power_of_two()),
                ];
                if b.delivery == "exactly_once" {
                    sets.push(format!("state.dir={}", state.display()));
                }
                sets.extend(b.sets.iter().cloned());
                let config =
                    Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
                let running = sluice::app::start(&config)?;
                let load = sluice::topology::with_cpus(b.load_cpus, || kload::run(&spec));
                let report = running.stop()?;
                let load = load?;
                let _ = std::fs::remove_dir_all(&state);
                sluice_sets = sets;
                let share = report.kafka_in_shard.as_ref().map(percentiles_us);
                let available_share = report
                    .kafka_available_to_produce
                    .as_ref()
                    .map(percentiles_us);
                sluice::metrics::write_hgrm(
                    &load.latency,
                    &b.out.join(format!("kafka-sluice-{}-run{i}.hgrm", b.rate)),
                    1000.0,
                )?;
                run_row("sluice", b, &load, share, available_share, Some(&report))
            } else {
                let stop = Arc::new(AtomicBool::new(false));
                let relay = {
                    let (brokers, stop) = (broker.addr.clone(), stop.clone());
                    std::thread::spawn(move || relay(&brokers, &events, &scores, &stop))
                };
                let load = sluice::topology::with_cpus(b.load_cpus, || kload::run(&spec));
                stop.store(true, Ordering::SeqCst);
                relay
                    .join()
                    .map_err(|_| anyhow::anyhow!("relay panicked"))??;
                let load = load?;
                sluice::metrics::write_hgrm(
                    &load.latency,
                    &b.out.join(format!("kafka-floor-{}-run{i}.hgrm", b.rate)),
                    1000.0,
                )?;
                run_row("floor", b, &load, None, None, None)
            };
            let p =
                |v: &[(f64, f64)], q: f64| v.iter().find(|(x, _)| *x == q).map_or(0.0, |(_, y)| *y);
            println!(
                "  {:<7} {:>7} ev/s  append->visible p50 {:>9.1} us  p99 {:>9.1} us  max {:>9.1} us  Scores {}/{} lost {} dup {} wrong {}{}",
                row.target,
                row.rate,
                p(&row.append_to_visible_us, 50.0),
                p(&row.append_to_visible_us, 99.0),
                p(&row.append_to_visible_us, 100.0),
                row.scores,
                row.sent,
                row.lost,
                row.duplicates,
                row.count_errors,
                match (&row.sluice_share_us, &row.sluice_available_share_us) {
                    (Some(s), Some(a)) => format!(
                        "  (sluice's share: in-shard p50 {:.1} us p99 {:.1} us, available->produce p50 {:.1} us p99 {:.1} us; longest shard turn {:.0} us, {} turns over the stall threshold)",
                        p(s, 50.0),
                        p(s, 99.0),
                        p(a, 50.0),
                        p(a, 99.0),
                        row.shard_loop_max_us.unwrap_or(0.0),
                        row.shard_loops_over_threshold.unwrap_or(0)
                    ),
                    _ => String::new(),
                }
            );
            runs.push(row);
        }
    }
    let results = KafkaResults {
        machine: super::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sluice_config: sluice_sets,
        load_cpus: b.load_cpus.to_vec(),
        runs,
    };
    let path = b.out.join("kafka-results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("  results: {}", path.display());
    Ok(())
}

/// The floor: consume each event record and produce its Score record (count kept per key),
/// with the client settings sluice uses and nothing else.
fn relay(brokers: &str, events: &str, scores: &str, stop: &AtomicBool) -> anyhow::Result<()> {
    let defaults = Config::defaults().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cc = ClientConfig::new();
    for (k, v) in &defaults.kafka.consumer {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-floor")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[events])?;
    let mut pc = ClientConfig::new();
    for (k, v) in &defaults.kafka.producer {
        pc.set(k, v);
    }
    let producer: BaseProducer = pc.set("bootstrap.servers", brokers).create()?;
    let decoder = Decoder::new(&defaults.wire);
    let mut enc = ScoreBatchEncoder::new(defaults.wire.batch_events_max);
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(10)) else {
            continue;
        };
        let m = m?;
        let Ok(evs) = decoder.decode(m.payload().unwrap_or(&[])) else {
            continue;
        };
        out.clear();
        for e in evs.iter() {
            let c = counts.entry(e.key()).or_default();
            *c += 1;
            out.push(ScoreOut {
                key: e.key(),
                seq: e.seq(),
                count: *c,
                ..ScoreOut::default()
            });
        }
        let value = enc.encode(out.iter().copied());
        let key = m.key().unwrap_or(&[]);
        send_when_room(&producer, scores, key, value)?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

/// CPU time so far of the shard thread, librdkafka's threads in this process (sluice's
/// consumer and producers) and the broker's process, and the machine's busy time.
struct DrainCpu {
    shard_s: Option<f64>,
    rdkafka_s: Option<f64>,
    broker_s: Option<f64>,
    machine_s: Option<f64>,
}

/// Where a drain's CPU went: per record applied (µs), and the shard's and the machine's busy
/// share of the drain's wall time. A rate with the shard under ~90% busy and the machine near
/// 100% is the machine's bound (the broker and librdkafka's threads), not the shard's.
#[derive(serde::Serialize)]
struct DrainCpuUse {
    shard_us_per_record: Option<f64>,
    rdkafka_us_per_record: Option<f64>,
    broker_us_per_record: Option<f64>,
    shard_busy: Option<f64>,
    machine_busy: Option<f64>,
}

impl DrainCpu {
    fn now(broker: &LocalBroker) -> Self {
        Self {
            shard_s: super::machine::threads_cpu_s("sluice-shard"),
            rdkafka_s: super::machine::threads_cpu_s("rdk:"),
            broker_s: broker.pid().and_then(super::machine::process_cpu_s),
            machine_s: super::machine::machine_busy_s(),
        }
    }

    fn until(&self, later: &Self, secs: f64, records: u64) -> DrainCpuUse {
        let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let per = |x: Option<f64>| Some(x? * 1e6 / records.max(1) as f64);
        let shard = d(self.shard_s, later.shard_s);
        let cpus = super::machine::stat_cpus().max(1) as f64;
        DrainCpuUse {
            shard_us_per_record: per(shard),
            rdkafka_us_per_record: per(d(self.rdkafka_s, later.rdkafka_s)),
            broker_us_per_record: per(d(self.broker_s, later.broker_s)),
            shard_busy: shard.map(|s| s / secs),
            machine_busy: d(self.machine_s, later.machine_s).map(|m| m / (secs * cpus)),
        }
    }
}

impl std::fmt::Display for DrainCpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v =
            |x: Option<f64>, scale: f64| x.map_or("?".to_owned(), |x| format!("{:.2}", x * scale));
        write!(
            f,
            "CPU per record: shard {} µs, librdkafka's threads {} µs, broker {} µs; busy: shard {}%, machine {}%",
            v(self.shard_us_per_record, 1.0),
            v(self.rdkafka_us_per_record, 1.0),
            v(self.broker_us_per_record, 1.0),
            v(self.shard_busy, 100.0),
            v(self.machine_busy, 100.0),
        )
    }
}

/// `sluice-bench kafka --backlog N`: one shard's sustained rate. N records (one event each)
/// are produced before sluice starts; sluice then drains them from the earliest offset and the
/// rate is records / time from "receiving" to the last record applied (read from its live
/// counters), with and without a Scores topic to produce to.
pub fn backlog(n: u64, keys: u64, out: &Path, sets_extra: &[String]) -> anyhow::Result<()> {
    let broker = LocalBroker::start("bench-backlog")?;
    std::fs::create_dir_all(out)?;
    let mut rows = Vec::new();
    for (i, with_scores) in [true, false].into_iter().enumerate() {
        let events = format!("backlog-events-{i}");
        let scores = format!("backlog-scores-{i}");
        broker.create_topic(&events, 4)?;
        broker.create_topic(&scores, 4)?;
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        let mut enc = sluice::wire::EventBatchEncoder::new();
        // The broker's own intake from one producer (keyed records of the same size class as
        // Score records): the ceiling a drain that produces a record per record meets.
        let producing = std::time::Instant::now();
        for s in 0..n {
            let key = (s * 7919) % keys.max(1);
            let value = enc.encode(std::iter::once(sluice::wire::EventIn {
                key,
                seq: s,
                ts_ns: 0,
                feedback: false,
                amount: 5.0,
                label: -1.0,
                features: &[],
            }));
            let kb = key.to_be_bytes();
            send_when_room(&producer, &events, &kb, value)?;
        }
        producer.flush(Duration::from_secs(120))?;
        let produce_rate = n as f64 / producing.elapsed().as_secs_f64();
        // Its librdkafka threads would count with sluice's below.
        drop(producer);
        let mut sets = vec![
            "ingest.udp.listen=127.0.0.1:0".to_owned(),
            "shards.count=1".to_owned(),
            "log.level=warn".to_owned(),
            format!("ingest.kafka.brokers={}", broker.addr),
            format!("ingest.kafka.topics=[\"{events}\"]"),
            format!("state.hot_capacity={}", (keys * 2).next_power_of_two()),
        ];
        if with_scores {
            sets.push(format!("egress.kafka.scores_topic={scores}"));
        }
        // With `--set state.dir=D` each phase keeps its state in D/phase-N: the phases read
        // different topics, and a checkpoint of one is refused by the other's layout.
        sets.extend(
            sets_extra
                .iter()
                .map(|s| match s.strip_prefix("state.dir=") {
                    Some(dir) if !dir.is_empty() => format!("state.dir={dir}/phase-{i}"),
                    _ => s.clone(),
                }),
        );
        let config = Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
        let running = sluice::app::start(&config)?;
        let started = std::time::Instant::now();
        let cpu0 = DrainCpu::now(&broker);
        let applied = || -> u64 {
            running
                .counters()
                .iter()
                .map(|c| c.kafka_records.get())
                .sum()
        };
        while applied() < n && started.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let secs = started.elapsed().as_secs_f64();
        let done = applied();
        let cpu = cpu0.until(&DrainCpu::now(&broker), secs, done);
        // Cycles the shard took no records because its producer had too much unacknowledged:
        // the other reason (besides an empty fetch queue) for it to sit idle in a drain.
        let backpressure: u64 = running
            .counters()
            .iter()
            .map(|c| c.kafka_backpressure_cycles.get())
            .sum();
        running.stop()?;
        let rate = done as f64 / secs;
        println!(
            "  backlog {n} records, 1 shard, Scores {}: {done} applied in {secs:.2} s = {rate:.0} records/s",
            if with_scores { "produced" } else { "not produced" }
        );
        println!(
            "    the backlog went in at {produce_rate:.0} records/s (one producer, linger.ms=5)"
        );
        println!("    {cpu}; intake held back by the producer's bounds in {backpressure} cycles");
        rows.push(serde_json::json!({
            "records": n, "applied": done, "seconds": secs, "records_per_s": rate,
            "scores_produced": with_scores, "sluice_config": sets, "cpu": cpu,
            "backpressure_cycles": backpressure, "backlog_produced_per_s": produce_rate,
        }));
    }
    let path = out.join("kafka-backlog.json");
    let doc = serde_json::json!({
        "machine": super::machine::describe(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "runs": rows,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("  results: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn a_drains_cpu_is_per_record_applied_and_a_share_of_its_wall_time() {
        let before = DrainCpu {
            shard_s: Some(1.0),
            rdkafka_s: Some(0.5),
            broker_s: None,
            machine_s: Some(10.0),
        };
        let after = DrainCpu {
            shard_s: Some(1.5),
            rdkafka_s: Some(0.7),
            broker_s: Some(3.0),
            machine_s: Some(12.0),
        };
        let u = before.until(&after, 2.0, 100_000);
        assert!(close(u.shard_us_per_record, 5.0));
        assert!(close(u.rdkafka_us_per_record, 2.0));
        // Not read before the drain: no figure rather than a made-up one.
        assert!(u.broker_us_per_record.is_none());
        assert!(close(u.shard_busy, 0.25));
        let cpus = crate::machine::stat_cpus().max(1) as f64;
        assert!(close(u.machine_busy, 1.0 / cpus));
        assert!(u.to_string().contains("broker ? µs"), "{u}");
    }
}
