//! `sluice-bench changelog`: what the changelog topic costs and what it buys, through a local
//! broker. Builds --keys keys (one record each) under exactly_once with the changelog on,
//! then --updates more events on existing keys: changelog records and bytes per event in
//! that steady phase. Then stops, wipes the state directory and starts again: the shards
//! rebuild from the changelog before they serve (restore keys/s, bytes read). Then deletes
//! the changelog's first records and wipes the state again: the partitions are replayed from
//! the input topic (records/s); four more events make a checkpoint whose commit sends the
//! replayed state whole and marked; wiped once more, the truncated changelog is read again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use serde::Serialize;

use sluice::config::Config;
use sluice::loadgen::broker::LocalBroker;
use sluice::loadgen::kafka::send_when_room;
use sluice::metrics::ShardCounters;

pub struct ChangelogBench<'a> {
    pub keys: u64,
    pub updates: u64,
    pub shards: usize,
    pub out: &'a Path,
    pub sets: &'a [String],
}

#[derive(Serialize)]
struct Phase {
    events: u64,
    seconds: f64,
    changelog_records: u64,
    changelog_tombstones: u64,
    changelog_bytes: u64,
    transactions: u64,
}

#[derive(Serialize)]
struct Results {
    machine: super::machine::Machine,
    command: String,
    sluice_config: Vec<String>,
    build: Phase,
    steady: Phase,
    steady_bytes_per_event: f64,
    steady_records_per_event: f64,
    restore_keys: u64,
    restore_bytes: u64,
    /// The longest shard's rebuild (they run in parallel).
    restore_seconds: f64,
    restore_keys_per_s: f64,
    /// `app::start` to serving, rebuild included.
    start_seconds: f64,
    /// The changelog's first records deleted, the state wiped: rebuilt from the input.
    replay: Replay,
    /// After the replay's first commit (whole, marked), wiped again: from the changelog.
    healed: Healed,
}

#[derive(Serialize)]
struct Replay {
    partitions: u64,
    records: u64,
    /// The longest shard's rebuild.
    seconds: f64,
}

#[derive(Serialize)]
struct Healed {
    input_replays: u64,
    keys: u64,
    seconds: f64,
}

/// Sums over the shards (the restore time: the longest).
#[derive(Clone, Copy, Default)]
struct Totals {
    applied: u64,
    transactions: u64,
    records: u64,
    tombstones: u64,
    bytes: u64,
}

fn totals(counters: &[std::sync::Arc<ShardCounters>]) -> Totals {
    let sum = |f: &dyn Fn(&ShardCounters) -> u64| counters.iter().map(|c| f(c)).sum();
    Totals {
        applied: sum(&|c| c.kafka_records.get()),
        transactions: sum(&|c| c.kafka_transactions.get()),
        records: sum(&|c| c.kafka_changelog_records.get()),
        tombstones: sum(&|c| c.kafka_changelog_tombstones.get()),
        bytes: sum(&|c| c.kafka_changelog_bytes.get()),
    }
}

/// What the shards' start-up rebuilt (sums; the time: the longest shard's, they run in
/// parallel).
struct Rebuilt {
    keys: u64,
    bytes: u64,
    input_replays: u64,
    replayed_records: u64,
    seconds: f64,
    /// `app::start` to serving, rebuild included.
    start_seconds: f64,
}

/// Wipe `state` and start sluice: the shards rebuild their state before they serve.
fn start_wiped(config: &Config, state: &Path) -> anyhow::Result<(sluice::app::Running, Rebuilt)> {
    std::fs::remove_dir_all(state).with_context(|| format!("wiping {}", state.display()))?;
    let started = Instant::now();
    let running = sluice::app::start(config)?;
    let start_seconds = started.elapsed().as_secs_f64();
    let c = running.counters();
    let sum = |f: &dyn Fn(&ShardCounters) -> u64| c.iter().map(|c| f(c)).sum();
    let longest_ns = c.iter().map(|c| c.changelog_restore_ns.get()).max();
    let rebuilt = Rebuilt {
        keys: sum(&|c| c.changelog_restored_keys.get()),
        bytes: sum(&|c| c.changelog_restored_bytes.get()),
        input_replays: sum(&|c| c.changelog_input_replays.get()),
        replayed_records: sum(&|c| c.changelog_replayed_records.get()),
        seconds: longest_ns.unwrap_or(0) as f64 / 1e9,
        start_seconds,
    };
    Ok((running, rebuilt))
}

/// One record per event, on key `(first + i) * 7919 % keys` for i in 0..n.
pub(super) fn produce(
    p: &BaseProducer,
    topic: &str,
    keys: u64,
    (first, n): (u64, u64),
) -> anyhow::Result<()> {
    let mut enc = sluice::wire::EventBatchEncoder::new();
    for s in first..first + n {
        send_event(p, &mut enc, topic, keys, s)?;
    }
    p.flush(Duration::from_secs(300))?;
    Ok(())
}

/// Event `s` (sequence number `s`, key `s * 7919 % keys`) as one record of `topic`.
pub(super) fn send_event(
    p: &BaseProducer,
    enc: &mut sluice::wire::EventBatchEncoder,
    topic: &str,
    keys: u64,
    s: u64,
) -> anyhow::Result<()> {
    let key = s.wrapping_mul(7919) % keys.max(1);
    let value = enc.encode(std::iter::once(sluice::wire::EventIn {
        key,
        seq: s,
        ts_ns: 0,
        feedback: false,
        amount: (s % 100) as f32,
        label: -1.0,
        features: &[],
    }));
    send_when_room(p, topic, &key.to_be_bytes(), value)?;
    Ok(())
}

/// Wait until `n` records are applied and the next transaction has committed, up to 10
/// minutes. That one holds them all: Kafka intake stands still from a checkpoint's flip to its
/// commit, so a commit running when the last record is seen applied was flipped after it.
fn settle(running: &sluice::app::Running, n: u64) -> anyhow::Result<Totals> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut applied_at = None;
    loop {
        let t = totals(running.counters());
        if applied_at.is_none() && t.applied >= n {
            applied_at = Some(t.transactions);
        }
        if applied_at.is_some_and(|tx| t.transactions > tx) {
            return Ok(t);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {n} records applied, {} transactions, after 10 minutes",
            t.applied,
            t.transactions
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(b: &ChangelogBench<'_>) -> anyhow::Result<()> {
    let broker = LocalBroker::start("bench-changelog")?;
    std::fs::create_dir_all(b.out)?;
    let events = "changelog-events";
    broker.create_topic(events, 4)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let state = b.out.join("changelog-state");
    let _ = std::fs::remove_dir_all(&state);
    let per_shard = b.keys.div_ceil(b.shards.max(1) as u64);
    let mut sets = vec![
        "ingest.udp.listen=127.0.0.1:0".to_owned(),
        format!("shards.count={}", b.shards),
        "log.level=warn".to_owned(),
        format!("ingest.kafka.brokers={}", broker.addr),
        format!("ingest.kafka.topics=[\"{events}\"]"),
        "egress.kafka.delivery=exactly_once".to_owned(),
        "egress.kafka.changelog=true".to_owned(),
        "egress.kafka.transactional_id_prefix=bench-changelog".to_owned(),
        format!("state.dir={}", state.display()),
        format!("state.hot_capacity={}", (per_shard * 2).next_power_of_two()),
    ];
    sets.extend(b.sets.iter().cloned());
    let config = Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;

    let running = sluice::app::start(&config)?;
    let started = Instant::now();
    produce(&producer, events, b.keys, (0, b.keys))?;
    let built = settle(&running, b.keys)?;
    let build_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    produce(&producer, events, b.keys, (b.keys, b.updates))?;
    let steady = settle(&running, b.keys + b.updates)?;
    let steady_s = started.elapsed().as_secs_f64();
    running.stop()?;
    let phase = |from: Totals, to: Totals, events: u64, seconds: f64| Phase {
        events,
        seconds,
        changelog_records: to.records - from.records,
        changelog_tombstones: to.tombstones - from.tombstones,
        changelog_bytes: to.bytes - from.bytes,
        transactions: to.transactions - from.transactions,
    };
    let build = phase(Totals::default(), built, b.keys, build_s);
    let steady = phase(built, steady, b.updates, steady_s);

    // The disk is lost: the shards rebuild from the changelog before they serve.
    let (running, rebuilt) = start_wiped(&config, &state)?;
    let (restore_keys, restore_bytes, restore_s) = (rebuilt.keys, rebuilt.bytes, rebuilt.seconds);
    let start_s = rebuilt.start_seconds;
    running.stop()?;

    // The changelog loses its first records (retention): each partition is replayed from
    // the input topic instead; a few events then make the first checkpoint, whose commit
    // sends the replayed state whole, behind a whole-state marker.
    let changelog = config
        .egress
        .kafka
        .changelog_topic(&config.ingest.kafka.group);
    sluice::loadgen::broker::allow_deleting_records(&broker.addr, &changelog)?;
    sluice::loadgen::broker::delete_records_before(&broker.addr, &changelog, 4, 1)?;
    let (running, replayed) = start_wiped(&config, &state)?;
    let replay = Replay {
        partitions: replayed.input_replays,
        records: replayed.replayed_records,
        seconds: replayed.seconds,
    };
    let healing = b.keys + b.updates;
    produce(&producer, events, b.keys, (healing, 4))?;
    settle(&running, 4)?;
    running.stop()?;
    // Wiped again: the changelog, still missing its first records, is read (the marker).
    let (running, read) = start_wiped(&config, &state)?;
    let healed = Healed {
        input_replays: read.input_replays,
        keys: read.keys,
        seconds: read.seconds,
    };
    running.stop()?;
    let _ = std::fs::remove_dir_all(&state);
    let results = Results {
        machine: super::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sluice_config: sets,
        steady_bytes_per_event: steady.changelog_bytes as f64 / b.updates.max(1) as f64,
        steady_records_per_event: steady.changelog_records as f64 / b.updates.max(1) as f64,
        build,
        steady,
        restore_keys,
        restore_bytes,
        restore_seconds: restore_s,
        restore_keys_per_s: restore_keys as f64 / restore_s.max(1e-9),
        start_seconds: start_s,
        replay,
        healed,
    };
    println!(
        "  build: {} keys, {} changelog records, {} bytes, {} transactions in {:.1} s",
        b.keys,
        results.build.changelog_records,
        results.build.changelog_bytes,
        results.build.transactions,
        results.build.seconds
    );
    println!(
        "  steady: {} events, {} changelog records ({:.3}/event), {:.1} bytes/event, {} transactions in {:.1} s",
        b.updates,
        results.steady.changelog_records,
        results.steady_records_per_event,
        results.steady_bytes_per_event,
        results.steady.transactions,
        results.steady.seconds
    );
    println!(
        "  rebuild after a wiped state.dir: {restore_keys} keys, {restore_bytes} bytes read in {restore_s:.2} s = {:.0} keys/s (start to serving {start_s:.2} s)",
        results.restore_keys_per_s
    );
    println!(
        "  changelog truncated, state wiped: {} partitions replayed from the input, {} records in {:.2} s = {:.0} records/s",
        results.replay.partitions,
        results.replay.records,
        results.replay.seconds,
        results.replay.records as f64 / results.replay.seconds.max(1e-9)
    );
    println!(
        "  after the replay's marked whole send, wiped again: {} keys from the still-truncated changelog in {:.2} s ({} replays)",
        results.healed.keys, results.healed.seconds, results.healed.input_replays
    );
    let path = b.out.join("changelog-results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("  results: {}", path.display());
    Ok(())
}
