//! `sluice-bench scaleout`: several sluice instances in one consumer group
//! (`ingest.kafka.membership = "group"`, exactly_once with the changelog), through a local
//! broker. For each --instances count: the instances started together on an empty
//! 12-partition topic; once the group has split the partitions between them, --records
//! records (one event each, on --keys keys) produced as fast as the producer goes, and the
//! time until the instances have applied them all (records/s; the producer's own time beside
//! it, since the producer shares the machine and may be what bounds it). Then (two or more)
//! the last one stops cleanly: time from its stop to the others owning every partition
//! again, and the keys they rebuilt from the changelog meanwhile. Then it comes back twice
//! (restarted on its own state directory while the others moved on): once as it is (the
//! partitions it gets back are rebuilt from its own checkpoint's keys plus the changelog after
//! the position recorded with it), once with those positions deleted (the whole changelog
//! read, as before they were recorded); each time until the group has split again, then
//! stopped again.
//!
//! All instances run in this process, each with its own state directory, shard and
//! librdkafka clients; on a machine smaller than one core per instance they share cores, so
//! the figure is the mechanism's cost, not a scale-out measurement.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use serde::Serialize;

use super::changelog::{produce, send_event};
use sluice::app::Running;
use sluice::config::Config;
use sluice::ingest::kafka::Role;
use sluice::loadgen::broker::LocalBroker;
use sluice::metrics::ShardCounters;

const PARTITIONS: i32 = 12;

pub struct ScaleOutBench<'a> {
    pub records: u64,
    pub keys: u64,
    pub instances: &'a [usize],
    pub out: &'a Path,
    pub sets: &'a [String],
}

#[derive(Serialize)]
struct Round {
    instances: usize,
    records: u64,
    /// Start of the instances to the group's partitions split between all of them.
    split_seconds: f64,
    /// The producer's time for the records (it flushes before returning).
    produce_seconds: f64,
    /// From the first record produced to every record applied.
    drain_seconds: f64,
    records_per_s: f64,
    /// Two or more instances: the last one stopped cleanly.
    handover: Option<Handover>,
    /// ...then restarted with its positions, and again without them.
    comebacks: Vec<Comeback>,
}

#[derive(Serialize)]
struct Comeback {
    /// The changelog positions beside its checkpoints were kept (else deleted first).
    positions: bool,
    /// Its start to the partitions split again.
    seconds: f64,
    /// The longest handover of the others since their start (this comeback's, handing it
    /// 50k keys, is the longest there has been; with `handed_over_keep_ms` it includes
    /// exporting those keys into the kept copy).
    handover_max_ms: f64,
    keys_rebuilt: u64,
    /// Of those, from its own checkpoint.
    keys_local: u64,
    bytes_read: u64,
    take_up_seconds: f64,
    /// Then it stops again and the others take back what they handed it: its stop to every
    /// partition owned again, and what their take-up read (`ingest.kafka.handed_over_keep_ms`:
    /// from the keys they kept when they handed the partitions over, plus the changelog
    /// written since).
    back: TakenBack,
}

#[derive(Serialize)]
struct TakenBack {
    seconds: f64,
    keys_rebuilt: u64,
    /// Of those, from the copies kept at the handover.
    keys_local: u64,
    bytes_read: u64,
    take_up_seconds: f64,
}

#[derive(Serialize)]
struct Handover {
    partitions_moved: u64,
    /// Its stop requested to the others owning (active) every partition again.
    seconds: f64,
    keys_rebuilt: u64,
    bytes_rebuilt: u64,
    /// Of the keys rebuilt, those a standby's warm copy held (`ingest.kafka.standby_replicas`).
    keys_warm: u64,
    /// The new owners' take-up time (assignment to taken up: changelog read and keys put in),
    /// summed over them.
    take_up_seconds: f64,
    /// Under a paced load (~20k records/s): the longest time no record of the partitions the
    /// others kept was applied, during the handover (to 0.5 s after it)...
    kept_longest_gap_ms: f64,
    /// ...and over one second before it, for scale.
    quiet_longest_gap_ms: f64,
    /// The others' longest shard loop turn since start, and longest intake pause for a commit.
    loop_max_ms: f64,
    commit_pause_max_ms: f64,
}

#[derive(Serialize)]
struct Results {
    machine: super::machine::Machine,
    command: String,
    sluice_config: Vec<String>,
    rounds: Vec<Round>,
}

fn applied(running: &[Running]) -> u64 {
    running
        .iter()
        .flat_map(|r| r.counters().iter())
        .map(|c| c.kafka_records.get())
        .sum()
}

/// Every partition owned, active, by one of `running`, each of them owning some.
fn split(running: &[Running]) -> bool {
    let mut active = 0;
    for r in running {
        let mine = r
            .kafka_partitions()
            .iter()
            .filter(|p| p.role == Role::Active)
            .count();
        if mine == 0 {
            return false;
        }
        active += mine;
    }
    active == PARTITIONS as usize
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// ~20k records/s (20 every millisecond) until `on` is cleared.
fn produce_paced(p: &BaseProducer, topic: &str, keys: u64, on: &std::sync::atomic::AtomicBool) {
    let mut enc = sluice::wire::EventBatchEncoder::new();
    let mut s = 1u64 << 40;
    while on.load(std::sync::atomic::Ordering::Relaxed) {
        for _ in 0..20 {
            if send_event(p, &mut enc, topic, keys, s).is_err() {
                return;
            }
            s += 1;
        }
        p.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = p.flush(Duration::from_secs(30));
}

/// Sample `count` every millisecond until `done` (or `limit`): the longest time it stood still.
fn longest_gap(
    limit: Duration,
    count: impl Fn() -> u64,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    let (mut last, mut changed, mut longest) = (count(), Instant::now(), Duration::ZERO);
    while start.elapsed() < limit && !done() {
        std::thread::sleep(Duration::from_millis(1));
        let now = count();
        if now != last {
            longest = longest.max(changed.elapsed());
            (last, changed) = (now, Instant::now());
        }
    }
    longest.max(changed.elapsed())
}

fn round(
    b: &ScaleOutBench<'_>,
    broker: &LocalBroker,
    n: usize,
    sets_out: &mut Vec<String>,
) -> anyhow::Result<Round> {
    let topic = format!("scaleout-events-{n}");
    broker.create_topic(&topic, PARTITIONS)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut configs = Vec::with_capacity(n);
    let mut dirs = Vec::with_capacity(n);
    for i in 0..n {
        let dir = b.out.join(format!("scaleout-state-{n}-{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sets = vec![
            "ingest.udp.listen=127.0.0.1:0".to_owned(),
            "shards.count=1".to_owned(),
            "log.level=warn".to_owned(),
            "metrics.listen=".to_owned(),
            format!("ingest.kafka.brokers={}", broker.addr),
            format!("ingest.kafka.topics=[\"{topic}\"]"),
            format!("ingest.kafka.group=scaleout-{n}"),
            "ingest.kafka.membership=group".to_owned(),
            format!("ingest.kafka.instance_id=i{i}"),
            "egress.kafka.delivery=exactly_once".to_owned(),
            "egress.kafka.changelog=true".to_owned(),
            format!("egress.kafka.transactional_id_prefix=scaleout-{n}"),
            format!("state.dir={}", dir.display()),
            format!(
                "state.hot_capacity={}",
                (b.keys * 2).next_power_of_two().max(1024)
            ),
        ];
        sets.extend(b.sets.iter().cloned());
        if i == 0 && n == b.instances.first().copied().unwrap_or(n) {
            *sets_out = sets.clone();
        }
        configs.push(Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?);
        dirs.push(dir);
    }
    let started = Instant::now();
    let mut running = Vec::with_capacity(n);
    for c in &configs {
        running.push(sluice::app::start(c)?);
    }
    wait("the partitions split", Duration::from_secs(120), || {
        split(&running)
    })?;
    let split_s = started.elapsed().as_secs_f64();
    let t0 = Instant::now();
    produce(&producer, &topic, b.keys, (0, b.records))?;
    let produce_s = t0.elapsed().as_secs_f64();
    wait("every record applied", Duration::from_secs(600), || {
        applied(&running) >= b.records
    })?;
    let drain_s = t0.elapsed().as_secs_f64();
    let handover = if n >= 2 {
        let Some(last) = running.pop() else {
            anyhow::bail!("no instance to stop");
        };
        let moved = last
            .kafka_partitions()
            .iter()
            .filter(|p| p.role == Role::Active)
            .count() as u64;
        let rebuilt = |r: &[Running]| rebuilds(r.iter().flat_map(|r| r.counters()));
        let [keys0, bytes0, warm0, _, ns0] = rebuilt(&running);
        // Records keep coming (paced) through the handover, so the partitions the others keep
        // show whether the takeover stalls them: the longest time none of their records was
        // applied, over a quiet second before the stop and over the handover.
        let pacing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let paced = {
            let (pacing, topic, keys) = (pacing.clone(), topic.clone(), b.keys);
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &broker.addr)
                .set("linger.ms", "0")
                .create()?;
            std::thread::spawn(move || produce_paced(&producer, &topic, keys, &pacing))
        };
        let kept = |r: &[Running]| -> u64 {
            r.iter()
                .flat_map(|r| r.kafka_partitions())
                .filter(|p| p.role == Role::Active)
                .map(|p| p.records)
                .sum()
        };
        let quiet_gap = longest_gap(Duration::from_secs(1), || kept(&running), || false);
        let t = Instant::now();
        let stopping = std::thread::spawn(move || last.stop());
        let mut taken_over = None;
        let gap = longest_gap(
            Duration::from_secs(120),
            || kept(&running),
            || {
                if taken_over.is_none() && split(&running) {
                    taken_over = Some(t.elapsed());
                }
                taken_over.is_some_and(|d| t.elapsed() > d + Duration::from_millis(500))
            },
        );
        pacing.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = paced.join();
        stopping
            .join()
            .map_err(|_| anyhow::anyhow!("the stopping instance panicked"))??;
        // What held the kept partitions up: a shard loop turn, or intake standing still for a
        // transaction's commit (both the longest since start).
        let longest = |f: &dyn Fn(&sluice::metrics::ShardCounters) -> u64| {
            running
                .iter()
                .flat_map(|r| r.counters().iter())
                .map(|c| f(c))
                .max()
                .unwrap_or(0) as f64
                / 1e6
        };
        let loop_max_ms = longest(&|c| c.loop_max_ns.get());
        let commit_pause_max_ms = longest(&|c| c.kafka_commit_pause_max_ns.get());
        let Some(taken_over) = taken_over else {
            anyhow::bail!("the partitions were not taken over within 120 s");
        };
        let seconds = taken_over.as_secs_f64();
        let [keys1, bytes1, warm1, _, ns1] = rebuilt(&running);
        Some(Handover {
            partitions_moved: moved,
            seconds,
            keys_rebuilt: keys1 - keys0,
            bytes_rebuilt: bytes1 - bytes0,
            keys_warm: warm1 - warm0,
            take_up_seconds: (ns1 - ns0) as f64 / 1e9,
            kept_longest_gap_ms: gap.as_secs_f64() * 1e3,
            quiet_longest_gap_ms: quiet_gap.as_secs_f64() * 1e3,
            loop_max_ms,
            commit_pause_max_ms,
        })
    } else {
        None
    };
    let mut comebacks = Vec::new();
    if n >= 2 {
        // Records arrive between comebacks, so the others' changelog moves on each time
        // (sequence numbers above the paced load's, or dedup would drop them).
        let mut from = 1u64 << 41;
        let commits = |r: &[Running]| -> u64 {
            r.iter()
                .flat_map(|r| r.counters().iter())
                .map(|c| c.kafka_transactions.get())
                .sum()
        };
        for positions in [true, false] {
            let before = applied(&running);
            produce(&producer, &topic, b.keys, (from, b.keys))?;
            from += b.keys;
            // Applied and committed by the others (else the group's offsets are still the
            // ones it stopped at, and it keeps its partitions without a rebuild).
            wait("the new records applied", Duration::from_secs(120), || {
                applied(&running) >= before + b.keys
            })?;
            let committed = commits(&running);
            wait("a commit after them", Duration::from_secs(60), || {
                commits(&running) >= committed + 2
            })?;
            let (Some(config), Some(dir)) = (configs.last(), dirs.last()) else {
                anyhow::bail!("no instance to restart");
            };
            if !positions {
                remove_positions(dir)?;
            }
            let t = Instant::now();
            running.push(sluice::app::start(config)?);
            wait(
                "the partitions split again",
                Duration::from_secs(120),
                || split(&running),
            )?;
            let seconds = t.elapsed().as_secs_f64();
            let handover_max_ms = running[..running.len() - 1]
                .iter()
                .flat_map(|r| r.counters().iter())
                .map(|c| c.kafka_handover_max_ns.get())
                .max()
                .unwrap_or(0) as f64
                / 1e6;
            // It serves for a while (records on every partition, committed) before it stops,
            // so the others taking back what they handed it have its changelog to read. Its
            // commits are counted from before the records: it may commit them all in one
            // transaction before the others are done, and then it has nothing more to commit
            // (with three instances a wait for two commits after them timed out; its clean
            // stop commits whatever is left).
            let committed = commits(&running[running.len() - 1..]);
            let before = applied(&running);
            produce(&producer, &topic, b.keys, (from, b.keys))?;
            from += b.keys;
            wait(
                "records applied after the comeback",
                Duration::from_secs(120),
                || applied(&running) >= before + b.keys,
            )?;
            wait("its commits after them", Duration::from_secs(60), || {
                commits(&running[running.len() - 1..]) > committed
            })?;
            let Some(back) = running.pop() else {
                anyhow::bail!("no instance to stop");
            };
            let [keys, bytes, _, local, ns] = rebuilds(back.counters());
            let others = |r: &[Running]| rebuilds(r.iter().flat_map(|r| r.counters()));
            let before = others(&running);
            let t = Instant::now();
            back.stop()?;
            wait(
                "the partitions taken over again",
                Duration::from_secs(120),
                || split(&running),
            )?;
            let back_seconds = t.elapsed().as_secs_f64();
            let after = others(&running);
            let d = |i: usize| after[i] - before[i];
            comebacks.push(Comeback {
                positions,
                seconds,
                handover_max_ms,
                keys_rebuilt: keys,
                keys_local: local,
                bytes_read: bytes,
                take_up_seconds: ns as f64 / 1e9,
                back: TakenBack {
                    seconds: back_seconds,
                    keys_rebuilt: d(0),
                    keys_local: d(3),
                    bytes_read: d(1),
                    take_up_seconds: d(4) as f64 / 1e9,
                },
            });
        }
    }
    for r in running {
        r.stop()?;
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(Round {
        instances: n,
        records: b.records,
        split_seconds: split_s,
        produce_seconds: produce_s,
        drain_seconds: drain_s,
        records_per_s: b.records as f64 / drain_s.max(1e-9),
        handover,
        comebacks,
    })
}

/// Changelog rebuilds over some shards' counters: keys, bytes read, keys from standby copies,
/// keys from own copies (checkpoint or handover), restore nanoseconds.
fn rebuilds<'a>(counters: impl IntoIterator<Item = &'a Arc<ShardCounters>>) -> [u64; 5] {
    counters.into_iter().fold([0; 5], |[k, b, w, l, ns], c| {
        [
            k + c.changelog_restored_keys.get(),
            b + c.changelog_restored_bytes.get(),
            w + c.changelog_warm_keys.get(),
            l + c.changelog_local_keys.get(),
            ns + c.changelog_restore_ns.get(),
        ]
    })
}

/// Delete the changelog positions beside every checkpoint under `dir` (a restart from them
/// then reads whole changelog partitions).
fn remove_positions(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_positions(&path)?;
        } else if path.file_name()
            == Some(std::ffi::OsStr::new(sluice::egress::kafka::positions::FILE))
        {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

pub fn run(b: &ScaleOutBench<'_>) -> anyhow::Result<()> {
    let broker = LocalBroker::start("bench-scaleout")?;
    std::fs::create_dir_all(b.out)?;
    let mut sets = Vec::new();
    let mut rounds = Vec::new();
    for &n in b.instances {
        let r =
            round(b, &broker, n.max(1), &mut sets).with_context(|| format!("{n} instance(s)"))?;
        println!(
            "  {} instance(s): split in {:.2} s; {} records applied in {:.2} s = {:.0} records/s (producing them took {:.2} s)",
            r.instances,
            r.split_seconds,
            r.records,
            r.drain_seconds,
            r.records_per_s,
            r.produce_seconds
        );
        if let Some(h) = &r.handover {
            println!(
                "    clean stop of one: {} partitions handed over and taken up in {:.2} s ({} keys rebuilt, {} of them from warm copies; {} changelog bytes read; take-up {:.2} s = {:.0} keys/s); kept partitions' longest stall {:.1} ms (quiet second before: {:.1} ms; since start, longest loop turn {:.1} ms, longest commit pause {:.1} ms)",
                h.partitions_moved,
                h.seconds,
                h.keys_rebuilt,
                h.keys_warm,
                h.bytes_rebuilt,
                h.take_up_seconds,
                h.keys_rebuilt as f64 / h.take_up_seconds.max(1e-9),
                h.kept_longest_gap_ms,
                h.quiet_longest_gap_ms,
                h.loop_max_ms,
                h.commit_pause_max_ms
            );
        }
        for c in &r.comebacks {
            println!(
                "    it comes back {}: split again in {:.2} s; {} keys rebuilt, {} from its own checkpoint; {} changelog bytes read; take-up {:.2} s",
                if c.positions { "with its changelog positions" } else { "without them (deleted)" },
                c.seconds,
                c.keys_rebuilt,
                c.keys_local,
                c.bytes_read,
                c.take_up_seconds
            );
            println!(
                "      the others' longest handover so far: {:.1} ms",
                c.handover_max_ms
            );
            println!(
                "      stopped again, the others take back what they handed it in {:.2} s: {} keys rebuilt, {} from the copies they kept; {} changelog bytes read; take-up {:.2} s",
                c.back.seconds,
                c.back.keys_rebuilt,
                c.back.keys_local,
                c.back.bytes_read,
                c.back.take_up_seconds
            );
        }
        rounds.push(r);
    }
    let results = Results {
        machine: super::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sluice_config: sets,
        rounds,
    };
    let path = b.out.join("scaleout-results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("  results: {}", path.display());
    Ok(())
}
