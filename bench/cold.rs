//! `sluice-bench cold`: what more keys than memory cost the shard itself, with no sockets and
//! no generator competing for the CPUs. A state kept by `checkpoint --keep` is restored into
//! one real `ShardCore` (RocksDB spill store, linear model unless --set says otherwise), then
//! --events single-event datagrams on uniform (or --zipf) keys are fed in cycles of --cycle
//! datagrams, each cycle timed from its first datagram to its end (`finish_cycle`: the
//! batched cold read, scoring). Each --cold-wait setting is measured in turn, restored afresh
//! each time, alternating --repeat times: the shard's time per event is its capacity
//! (1 / time per event, on this CPU).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use sluice::config::{ColdReaderPlace, Config};
use sluice::egress::{PendingScore, ReplyTo};
use sluice::infer::{build_primary, ShardModel};
use sluice::ingest::Datagram;
use sluice::loadgen::keys::KeyDist;
use sluice::loadgen::rng::Rng;
use sluice::metrics::ShardCounters;
use sluice::route::Mesh;
use sluice::shard::{ColdReader, ShardCore};
use sluice::state::checkpoint;
use sluice::state::{KeyedState, Spill};
use sluice::wire::{EventBatchEncoder, EventIn};

pub struct ColdBench<'a> {
    pub state_dir: &'a Path,
    pub hot: usize,
    pub keys: u64,
    pub zipf: Option<f64>,
    pub events: u64,
    pub cycle: usize,
    pub waits: &'a [usize],
    pub repeat: usize,
    pub out: &'a Path,
    pub sets: &'a [String],
    /// Wait for RocksDB's flushes and compactions to finish before timing.
    pub quiet_store: bool,
    /// Pin the shard (this thread) to this CPU, and start the reader thread on that one.
    pub shard_cpu: Option<usize>,
    pub reader_cpu: Option<usize>,
}

#[derive(Serialize)]
struct ColdRun {
    cold_wait_max: usize,
    events: u64,
    /// Events whose key was not hot on arrival.
    cold_events: u64,
    ns_per_event: f64,
    /// Events per second one shard can take at that cost (on this CPU, nothing else on it).
    capacity_per_s: f64,
    cycle_p50_us: f64,
    cycle_p99_us: f64,
    cycle_max_us: f64,
    /// Where the batched reads were made (`state.cold_reader`).
    cold_reader: String,
    /// CPU time of the shard thread per event (its capacity when the reads are elsewhere).
    shard_cpu_ns_per_event: f64,
    /// Times a full wait list made the shard wait for the reader thread.
    reader_waits: u64,
    /// CPU time of the whole process per event (user + system, every thread: the shard's and
    /// RocksDB's flushes and compactions), which on a 2-CPU machine competes with the rest.
    process_cpu_ns_per_event: f64,
    restore_s: f64,
    /// Seconds waited after the restore for RocksDB to go quiet (--quiet-store).
    quiet_wait_s: f64,
    /// Keys in the spill store at the end, and what they cost: RocksDB's memory besides the
    /// hot table (table readers' index and filter blocks, memtables, block cache in use) and
    /// the store's files on disk, per spilled key.
    spilled_keys: u64,
    spill_memory_bytes_per_key: f64,
    spill_disk_bytes_per_key: f64,
}

#[derive(Serialize)]
struct Results {
    machine: crate::machine::Machine,
    command: String,
    keys: u64,
    hot_capacity: usize,
    zipf: Option<f64>,
    cycle_datagrams: usize,
    runs: Vec<ColdRun>,
}

/// User + system CPU time of this process so far, every thread (ns).
fn process_cpu_ns() -> u64 {
    cpu_ns(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the calling thread (the shard's, here).
fn thread_cpu_ns() -> u64 {
    cpu_ns(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_ns(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

fn percentile_us(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p / 100.0).round() as usize;
    v[i] as f64 / 1000.0
}

pub fn run(b: &ColdBench<'_>) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.state_dir.join("shard-0").join("checkpoints").exists(),
        "{} holds no checkpoints: make one with `sluice-bench checkpoint --keys N --hot H --keep`",
        b.state_dir.display()
    );
    // The datagrams, made once: the same keys in the same order for every run.
    let dist = KeyDist::new(b.keys, b.zipf);
    let mut rng = Rng::new(7);
    let mut enc = EventBatchEncoder::new();
    let datagrams: Vec<Vec<u8>> = (0..b.events)
        .map(|seq| {
            let key = dist.sample(&mut rng);
            enc.encode(std::iter::once(EventIn {
                key,
                seq,
                amount: 10.0,
                ..EventIn::default()
            }))
            .to_vec()
        })
        .collect();
    let mut runs = Vec::new();
    for round in 0..b.repeat {
        for &wait in b.waits {
            let r = measure(b, wait, &datagrams)?;
            println!(
                "  round {} cold_wait_max {:>4}, reads on {}: {:.2} us/event ({} of {} cold) = {:.0} events/s; shard thread CPU {:.2} us/event, {} waits for the reader; process CPU {:.2} us/event; cycle p50 {:.1} / p99 {:.1} / max {:.1} us; restore {:.2} s (then {:.1} s for RocksDB to go quiet); {} spilled keys: {:.1} B each in RocksDB's memory, {:.1} B on disk",
                round + 1,
                wait,
                r.cold_reader,
                r.ns_per_event / 1000.0,
                r.cold_events,
                r.events,
                r.capacity_per_s,
                r.shard_cpu_ns_per_event / 1000.0,
                r.reader_waits,
                r.process_cpu_ns_per_event / 1000.0,
                r.cycle_p50_us,
                r.cycle_p99_us,
                r.cycle_max_us,
                r.restore_s,
                r.quiet_wait_s,
                r.spilled_keys,
                r.spill_memory_bytes_per_key,
                r.spill_disk_bytes_per_key
            );
            runs.push(r);
        }
    }
    let results = Results {
        machine: crate::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        keys: b.keys,
        hot_capacity: b.hot,
        zipf: b.zipf,
        cycle_datagrams: b.cycle,
        runs,
    };
    std::fs::create_dir_all(b.out)?;
    let path = b.out.join("cold.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("  wrote {}", path.display());
    Ok(())
}

fn measure(b: &ColdBench<'_>, wait: usize, datagrams: &[Vec<u8>]) -> anyhow::Result<ColdRun> {
    let mut sets = vec![
        format!("state.dir={}", b.state_dir.display()),
        format!("state.hot_capacity={}", b.hot),
        format!("state.cold_wait_max={wait}"),
        "model.kind=linear".to_owned(),
        "log.level=warn".to_owned(),
    ];
    sets.extend(b.sets.iter().cloned());
    let config = Config::from_layers(None, &sets).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = config.feature_plan().map_err(|e| anyhow::anyhow!("{e}"))?;
    let words = plan.words();
    let base = b.state_dir.join("shard-0");
    let started = Instant::now();
    let open =
        |d: &Path, len: Option<u64>| Spill::open(d, config.state.spill_cache_bytes, words, len);
    let (spill, point) = checkpoint::restore(
        &base.join("checkpoints"),
        &config.state_layout(1),
        &base.join("spill"),
        words,
        open,
    )?;
    let point = point.context("no restorable checkpoint")?;
    let mut state = KeyedState::with_plan(&config, plan, Some(spill));
    checkpoint::load_records(&mut state, &point)?;
    let restore_s = started.elapsed().as_secs_f64();
    // The restored store's compaction debt (a checkpoint's L0 files) is paid once after a
    // restart; --quiet-store measures the steady state after it instead.
    let mut quiet_wait_s = 0.0;
    if b.quiet_store {
        let t = Instant::now();
        while state.spill().is_some_and(Spill::background_busy) && t.elapsed().as_secs() < 300 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        quiet_wait_s = t.elapsed().as_secs_f64();
    }
    if let Some(cpu) = b.shard_cpu {
        sluice::topology::pin_current(cpu)?;
    }

    let counters = std::sync::Arc::new(ShardCounters::default());
    let rings = Mesh::build(1, config.route.ring_capacity)
        .into_iter()
        .next()
        .context("one shard's rings")?;
    let model = ShardModel::new(&config, build_primary(&config, None)?, 1);
    let reader = match config.state.cold_reader {
        place @ (ColdReaderPlace::Thread | ColdReaderPlace::Idle) => {
            let wakers = std::sync::Arc::new(vec![sluice::wake::Waker::new()?]);
            let cpus: Vec<usize> = b.reader_cpu.into_iter().collect();
            sluice::topology::with_cpus(&cpus, || {
                ColdReader::thread(&state, 0, wakers, place == ColdReaderPlace::Idle)
            })?
        }
        ColdReaderPlace::Shard => ColdReader::on_shard(&state),
    };
    let mut core = ShardCore::new(0, 1, &config, rings, model, state, 0, counters.clone());
    core.use_cold_reader(reader);
    let src = "127.0.0.1:9".parse()?;
    // Event times near the fill's (processing time: the receive time is the event's).
    let now = sluice::clock::realtime_ns();
    let mut sink: Vec<(ReplyTo, PendingScore)> = Vec::with_capacity(b.cycle);
    let mut cycles = Vec::with_capacity(datagrams.len() / b.cycle + 1);
    let (mut scores, mut cold) = (0u64, 0u64);
    let cpu0 = process_cpu_ns();
    let shard_cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    for chunk in datagrams.chunks(b.cycle) {
        let c0 = Instant::now();
        for d in chunk {
            let dg = Datagram {
                payload: d,
                src,
                recv_ns: now,
                truncated: false,
            };
            core.on_datagram(dg, now, &mut sink);
        }
        core.finish_cycle(now, &mut sink);
        cycles.push(c0.elapsed().as_nanos() as u64);
        scores += sink.len() as u64;
        cold += sink.iter().filter(|(_, p)| p.cold).count() as u64;
        sink.clear();
    }
    // Reads still out land (timed: the run is over when every event is answered).
    core.settle_cold(&mut sink);
    scores += sink.len() as u64;
    cold += sink.iter().filter(|(_, p)| p.cold).count() as u64;
    let total = t0.elapsed().as_nanos() as f64;
    let cpu = process_cpu_ns().saturating_sub(cpu0) as f64;
    let shard_cpu = thread_cpu_ns().saturating_sub(shard_cpu0) as f64;
    anyhow::ensure!(
        scores == datagrams.len() as u64,
        "{scores} Scores for {} events",
        datagrams.len()
    );
    let ns_per_event = total / datagrams.len() as f64;
    let spilled_keys = core.state().spilled_len().max(1);
    let spill_memory = core.state().spill().map_or(0, Spill::memory_bytes);
    let spill_disk = crate::state::dir_bytes(&base.join("spill"));
    Ok(ColdRun {
        cold_wait_max: wait,
        events: datagrams.len() as u64,
        cold_events: cold,
        ns_per_event,
        capacity_per_s: 1e9 / ns_per_event,
        cycle_p50_us: percentile_us(&mut cycles, 50.0),
        cycle_p99_us: percentile_us(&mut cycles, 99.0),
        cycle_max_us: percentile_us(&mut cycles, 100.0),
        process_cpu_ns_per_event: cpu / datagrams.len() as f64,
        cold_reader: format!("{:?}", config.state.cold_reader).to_lowercase(),
        shard_cpu_ns_per_event: shard_cpu / datagrams.len() as f64,
        reader_waits: counters.cold_read_waits.get(),
        restore_s,
        quiet_wait_s,
        spilled_keys,
        spill_memory_bytes_per_key: spill_memory as f64 / spilled_keys as f64,
        spill_disk_bytes_per_key: spill_disk as f64 / spilled_keys as f64,
    })
}
