//! `sluice-sim`: the deterministic crash simulation (see `sluice::sim`). Runs seeds
//! `--first .. --first + --seeds` on `--jobs` threads and reports steps, crashes and restores
//! per seed and seeds per second; any oracle violation is printed with its seed (which
//! replays the same run: `sluice-sim --seed N --verbose`) and makes the exit status 1.
//!
//!   sluice-sim --seeds 10000                 # the long run (bench/README.md)
//!   sluice-sim --seeds 300                   # what the test run does

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use sluice::sim::{run_seed, SeedReport, SimSpec, Violation};

#[derive(Parser)]
#[command(about = "Deterministic crash simulation of sluice's shard cores and checkpoints")]
struct Args {
    /// Seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Run this one seed only (same as --first S --seeds 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Events in each seed's source log.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Threads (seeds are independent).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Scratch directory (default: /dev/shm/sluice-sim, else the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Log every step of every seed (use with --seed).
    #[arg(long)]
    verbose: bool,
    /// Spill to RocksDB, as the service does, instead of the in-memory twin.
    #[arg(long)]
    rocksdb: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize, Default)]
struct Summary {
    rocksdb: bool,
    seeds: u64,
    first: u64,
    events_per_seed: usize,
    passed: u64,
    violations: Vec<String>,
    seconds: f64,
    seeds_per_second: f64,
    steps_per_seed: f64,
    crashes_per_seed: f64,
    restores_per_seed: f64,
    totals: Totals,
}

#[derive(Serialize, Default)]
struct Totals {
    steps: u64,
    crashes: u64,
    writer_crashes: u64,
    /// Crashes that were power losses, and the checkpoint file operations they undid.
    power_losses: u64,
    ops_undone: u64,
    restores: u64,
    restored_from_checkpoint: u64,
    checkpoints_committed: u64,
    checkpoints_failed: u64,
    disk_full: u64,
    corrupted: u64,
    replayed: u64,
    duplicates: u64,
    spills: u64,
    expired: u64,
    /// Of those, spilled keys the spill sweep deleted (TTL seeds, names fed at random).
    spill_expired: u64,
    chain_max: usize,
    seeds_with_crashes: u64,
    kafka_seeds: u64,
    ttl_seeds: u64,
    /// Kafka seeds at_least_once (the rest exactly_once), and Scores they delivered twice.
    at_least_once_seeds: u64,
    scores_redelivered: u64,
    /// Seeds whose misses waited for batched cold reads (`state.cold_wait_max` > 0).
    cold_wait_seeds: u64,
    /// Of those, seeds whose reads were made off the shard (landing while later events came).
    cold_reads_deferred_seeds: u64,
    /// Kafka seeds whose shards took records while a commit was on its way (overlap_commits),
    /// and the Scores of those records.
    overlap_seeds: u64,
    scores_while_committing: u64,
    /// Kafka seeds with deferred cold reads: checkpoint turns that landed waiting events
    /// before their flip.
    cold_settles: u64,
    /// Events waiting for a batched cold read when a crash took them (then replayed).
    waiting_lost: u64,
    transactions: u64,
    /// Transactions the twin broker aborted, and stops the exactly_once sequence decided
    /// (those, and checkpoints not written while the next transaction held Scores).
    transactions_aborted: u64,
    sequence_stops: u64,
    scores_committed: u64,
}

impl Totals {
    fn add(&mut self, r: &SeedReport) {
        self.steps += r.steps;
        self.crashes += r.crashes;
        self.writer_crashes += r.writer_crashes;
        self.power_losses += r.power_losses;
        self.ops_undone += r.ops_undone;
        self.restores += r.restores;
        self.restored_from_checkpoint += r.restored_from_checkpoint;
        self.checkpoints_committed += r.checkpoints_committed;
        self.checkpoints_failed += r.checkpoints_failed;
        self.disk_full += r.disk_full;
        self.corrupted += r.corrupted;
        self.replayed += r.replayed;
        self.duplicates += r.duplicates;
        self.spills += r.spills;
        self.expired += r.expired;
        self.spill_expired += r.spill_expired;
        self.chain_max = self.chain_max.max(r.chain_max);
        self.seeds_with_crashes += u64::from(r.crashes > 0);
        self.kafka_seeds += u64::from(r.kafka);
        self.ttl_seeds += u64::from(r.ttl_ms > 0);
        self.at_least_once_seeds += u64::from(r.at_least_once);
        self.scores_redelivered += r.scores_redelivered;
        self.cold_wait_seeds += u64::from(r.cold_wait_max > 0);
        self.cold_reads_deferred_seeds += u64::from(r.cold_reads_deferred);
        self.overlap_seeds += u64::from(r.overlap_commits);
        self.scores_while_committing += r.scores_while_committing;
        self.cold_settles += r.cold_settles;
        self.waiting_lost += r.waiting_lost;
        self.transactions += r.transactions;
        self.transactions_aborted += r.transactions_aborted;
        self.sequence_stops += r.sequence_stops;
        self.scores_committed += r.scores_committed;
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = if args.verbose {
        "sluice=debug"
    } else {
        "sluice=off"
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let (first, seeds) = match args.seed {
        Some(s) => (s, 1),
        None => (args.first, args.seeds),
    };
    let dir = args.dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
        .join("sluice-sim")
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Two runs on one scratch directory would run the same seeds in the same folders and
    // break each other's checkpoints (seen: spurious violations). One run per directory.
    let lock = std::fs::File::create(dir.join(".lock"))
        .with_context(|| format!("creating {}/.lock", dir.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            anyhow::anyhow!(
                "another sluice-sim runs on {}: give this one its own --dir",
                dir.display()
            )
        })?;
    let spec = SimSpec {
        events: args.events,
        dir,
        verbose: args.verbose,
        sabotage: None,
        rocksdb: args.rocksdb,
    };
    let next = AtomicU64::new(first);
    let totals = Mutex::new(Totals::default());
    let failures: Mutex<Vec<Violation>> = Mutex::new(Vec::new());
    let passed = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + seeds {
                    return;
                }
                match run_seed(seed, &spec) {
                    Ok(r) => {
                        passed.fetch_add(1, Ordering::Relaxed);
                        totals.lock().unwrap_or_else(|e| e.into_inner()).add(&r);
                    }
                    Err(v) => {
                        eprintln!("VIOLATION {v}");
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let totals = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let passed = passed.into_inner();
    let per = |n: u64| n as f64 / passed.max(1) as f64;
    let summary = Summary {
        rocksdb: args.rocksdb,
        seeds,
        first,
        events_per_seed: args.events,
        passed,
        violations: failures.iter().map(|v| v.to_string()).collect(),
        seconds,
        seeds_per_second: seeds as f64 / seconds,
        steps_per_seed: per(totals.steps),
        crashes_per_seed: per(totals.crashes),
        restores_per_seed: per(totals.restores),
        totals,
    };
    println!(
        "sluice-sim: seeds {first}..{}: {passed} passed, {} violations; {:.1} s, {:.1} seeds/s; per seed: {:.0} steps, {:.2} crashes, {:.2} restores",
        first + seeds,
        failures.len(),
        seconds,
        summary.seeds_per_second,
        summary.steps_per_seed,
        summary.crashes_per_seed,
        summary.restores_per_seed
    );
    println!("{}", serde_json::to_string_pretty(&summary.totals)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !failures.is_empty() {
        anyhow::bail!("{} seeds broke an invariant", failures.len());
    }
    Ok(())
}
