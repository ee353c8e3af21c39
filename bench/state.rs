//! `sluice-bench checkpoint`: the cost of durable state at a given key count, on the real
//! code paths (the shard's `KeyedState`, its RocksDB spill store, `Checkpointer` and restore)
//! without sockets: bytes per key in memory and on disk, what a checkpoint costs the shard
//! (the flip, then each cycle's slice of copying while events keep arriving), the time until
//! it is committed, and the restore time at start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use sluice::config::Config;
use sluice::state::checkpoint::{self, CheckpointSpec, Checkpointer};
use sluice::state::{image_bytes, KeyedState, Outcome, Spill, Update};
use sluice::wire::EventKind;

#[derive(Serialize)]
struct CheckpointRun {
    /// Every hot record (the first), or what changed since the one before.
    full: bool,
    /// The flip: the one stop of the shard a snapshot needs (us).
    flip_us: f64,
    /// Shard time spent on the checkpoint per cycle after the flip (the slice of copying,
    /// the hand-over to the writer), over `cycles` cycles: p50, p99, max (us).
    cycle_p50_us: f64,
    cycle_p99_us: f64,
    cycle_max_us: f64,
    cycles: u64,
    /// Events applied between the cycles while the snapshot was copied.
    racing_events: u64,
    /// From the flip until the last record was copied (the shard serving meanwhile).
    capture_ms: f64,
    /// From the flip until the checkpoint was committed (synced, renamed).
    commit_ms: f64,
    hot_bytes: u64,
    journal_entries: u64,
}

/// p-th percentile of `v` (sorted in place), in us.
fn percentile_us(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i] as f64 / 1e3
}

#[derive(Serialize)]
struct StateResults {
    machine: super::machine::Machine,
    command: String,
    keys: u64,
    hot_capacity: usize,
    window_words: usize,
    fill_seconds: f64,
    hot_table_bytes: usize,
    memory_bytes_per_key: f64,
    record_image_bytes: usize,
    checkpoints: Vec<CheckpointRun>,
    checkpoint_disk_bytes: u64,
    disk_bytes_per_key: f64,
    restore_seconds: f64,
    /// Checkpoints read by the restore (the full one and the incremental ones after it).
    restore_chain: usize,
    churn_per_checkpoint: u64,
    restored_keys: u64,
}

pub fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        dir_bytes(&path)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Events applied between two checkpoint turns while a snapshot is copied (a cycle's worth
/// at ~50k events/s with a busy shard).
const RACING_EVENTS_PER_CYCLE: u64 = 16;

/// An Observation on a random existing key (xorshift over `x`).
fn random_observation(
    x: &mut u64,
    keys: u64,
    seq: u64,
    ts_ns: u64,
    amount: f32,
) -> Update<'static> {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    Update {
        key: *x % keys,
        seq,
        ts_ns,
        kind: EventKind::Observation,
        amount,
        label: -1.0,
        features: &[],
        source: 0,
    }
}

/// Fill one shard's state with `keys` keys (`hot` of them fit in memory, the rest spill),
/// checkpoint it `rounds` times, then restore it into a fresh state.
pub fn run(
    keys: u64,
    hot: Option<usize>,
    rounds: usize,
    churn: u64,
    keep: bool,
    out: &Path,
    sets: &[String],
) -> anyhow::Result<()> {
    let hot = hot.unwrap_or(keys as usize);
    let dir: PathBuf = out.join("state");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let mut all = vec![
        format!("state.hot_capacity={hot}"),
        format!("state.dir={}", dir.display()),
        "log.level=warn".to_owned(),
    ];
    all.extend(sets.iter().cloned());
    let config = Config::from_layers(None, &all).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plan = config.feature_plan().map_err(|e| anyhow::anyhow!("{e}"))?;
    let words = plan.words();
    let base = dir.join("shard-0");
    let spill_dir = base.join("spill");
    let spill = Spill::open(&spill_dir, config.state.spill_cache_bytes, words, None)?;
    let mut state = KeyedState::with_plan(&config, plan.clone(), Some(spill));

    state.track_changes();
    let started = Instant::now();
    let t0 = 1_700_000_000_000_000_000u64;
    for k in 0..keys {
        // Two Observations a key, a second apart, so every aggregate holds something.
        for i in 0..2u64 {
            let u = Update {
                // Keys 0..N, as the load generator numbers them, so a kept state can be
                // driven by `sluice-bench sluice --keys N`.
                key: k,
                seq: i,
                ts_ns: t0 + i * 1_000_000_000 + k,
                kind: EventKind::Observation,
                amount: 10.0 + (k % 100) as f32,
                label: -1.0,
                features: &[],
                source: 0,
            };
            anyhow::ensure!(matches!(state.apply(&u, u.ts_ns)?, Outcome::Applied(_)));
        }
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(state.hot_len() as u64 + state.spilled_len() == keys);
    let mut x = 0x2545_F491_4F6C_DD1Du64;

    let root = base.join("checkpoints");
    // The first checkpoint is full; the later ones incremental (only the first is full in
    // this run), each after `churn` more events on random existing keys.
    // Due whenever the state changed: the bench flips each round's snapshot itself.
    let mut cp = Checkpointer::start(CheckpointSpec {
        root: root.clone(),
        shard: 0,
        layout: config.state_layout(1),
        interval_ns: 0,
        keep: 2,
        full_every: usize::MAX,
        buffer_bytes: checkpoint::buffer_bytes(hot, words),
        slice_records: config.checkpoint.copy_slice_records,
        slice_ns: config.checkpoint.copy_slice_us * 1_000,
        journal_records: config.checkpoint.spill_journal_records,
        words,
        next_seq: 1,
        restored: None,
        gated: false,
    })?;
    cp.wait_ready();
    let mut checkpoints = Vec::new();
    for round in 0..rounds.max(1) {
        if round > 0 {
            for i in 0..churn {
                let ts = t0 + 2_000_000_000 + round as u64 * 200_000_000 + i;
                let u = random_observation(&mut x, keys, 2 + round as u64, ts, 42.0);
                state.apply(&u, u.ts_ns)?;
            }
        }
        let full_before = cp.stats.full;
        let now = t0 + 3_000_000_000;
        let flipped = Instant::now();
        anyhow::ensure!(
            cp.tick_with(now, &mut state, now, &checkpoint::Input::default())
                .is_some(),
            "round {round}: no snapshot was flipped"
        );
        // Cycles as a shard runs them: a few events (on random keys, so some hit records the
        // snapshot has not copied yet), then the checkpoint's turn, timed.
        let mut cycle_ns = Vec::new();
        let mut racing = 0u64;
        while cp.capturing() {
            for _ in 0..RACING_EVENTS_PER_CYCLE {
                let u = random_observation(&mut x, keys, 1_000 + round as u64, now + racing, 7.0);
                state.apply(&u, u.ts_ns)?;
                racing += 1;
            }
            let t = Instant::now();
            cp.tick(now, &mut state, now);
            cycle_ns.push(t.elapsed().as_nanos() as u64);
        }
        let capture_ms = flipped.elapsed().as_secs_f64() * 1e3;
        cp.wait_written(&mut state)
            .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        checkpoints.push(CheckpointRun {
            full: cp.stats.full > full_before,
            flip_us: cp.stats.last_pause_ns as f64 / 1e3,
            cycle_p50_us: percentile_us(&mut cycle_ns, 0.5),
            cycle_p99_us: percentile_us(&mut cycle_ns, 0.99),
            cycle_max_us: percentile_us(&mut cycle_ns, 1.0),
            cycles: cycle_ns.len() as u64,
            racing_events: racing,
            capture_ms,
            commit_ms: flipped.elapsed().as_secs_f64() * 1e3,
            hot_bytes: cp.stats.last_bytes,
            journal_entries: cp.stats.last_journal_entries,
        });
    }
    anyhow::ensure!(cp.stats.failed == 0, "a checkpoint failed");
    // The full checkpoint (hot.bin + the spill store's files); the incremental ones add
    // their hot.bin (`hot_bytes` per round) and hard links to the same table files.
    let disk = dir_bytes(&root.join(format!("ckpt-{:020}", 1)));
    let hot_table_bytes = state.memory_bytes();
    drop(state);
    drop(cp);

    let started = Instant::now();
    let open =
        |d: &Path, len: Option<u64>| Spill::open(d, config.state.spill_cache_bytes, words, len);
    let (spill, point) =
        checkpoint::restore(&root, &config.state_layout(1), &spill_dir, words, open)?;
    let point = point.context("the checkpoint just written is not restorable")?;
    let mut back = KeyedState::with_plan(&config, plan, Some(spill));
    checkpoint::load_records(&mut back, &point)?;
    let restore_chain = point.chain_len();
    let restore_seconds = started.elapsed().as_secs_f64();
    let restored_keys = back.hot_len() as u64 + back.spilled_len();
    anyhow::ensure!(
        restored_keys == keys,
        "restored {restored_keys} of {keys} keys"
    );

    let r = StateResults {
        machine: super::machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        keys,
        hot_capacity: hot,
        window_words: words,
        fill_seconds,
        hot_table_bytes,
        memory_bytes_per_key: hot_table_bytes as f64 / keys.min(hot as u64) as f64,
        record_image_bytes: image_bytes(words),
        checkpoints,
        checkpoint_disk_bytes: disk,
        disk_bytes_per_key: disk as f64 / keys as f64,
        restore_seconds,
        restore_chain,
        churn_per_checkpoint: churn,
        restored_keys,
    };
    println!(
        "keys {keys}, hot capacity {hot}, {words} window words ({} B a record image)",
        r.record_image_bytes
    );
    println!(
        "  fill: {:.1} s; hot table {:.1} MiB = {:.0} B per hot key (slots + slack)",
        fill_seconds,
        hot_table_bytes as f64 / (1 << 20) as f64,
        r.memory_bytes_per_key
    );
    for (i, c) in r.checkpoints.iter().enumerate() {
        println!(
            "  checkpoint {} ({}): flip {:.1} us; then {} cycles (with {} events racing it) costing the shard p50 {:.1} / p99 {:.1} / max {:.1} us each; copied after {:.1} ms, committed after {:.1} ms; hot.bin {:.1} MiB, {} journal entries",
            i + 1,
            if c.full { "full" } else { "incremental" },
            c.flip_us,
            c.cycles,
            c.racing_events,
            c.cycle_p50_us,
            c.cycle_p99_us,
            c.cycle_max_us,
            c.capture_ms,
            c.commit_ms,
            c.hot_bytes as f64 / (1 << 20) as f64,
            c.journal_entries
        );
    }
    println!(
        "  full checkpoint on disk: {:.1} MiB = {:.0} B per key; restore {:.3} s ({restored_keys} keys, {} checkpoints read)",
        disk as f64 / (1 << 20) as f64,
        r.disk_bytes_per_key,
        restore_seconds,
        restore_chain
    );
    std::fs::create_dir_all(out)?;
    let path = out.join("state.json");
    std::fs::write(&path, serde_json::to_string_pretty(&r)?)?;
    println!("  wrote {}", path.display());
    if keep {
        drop(back);
        println!(
            "  state kept in {} (1 shard; serve it with --shards 1 --set state.dir={} --set state.hot_capacity={hot})",
            dir.display(),
            dir.display()
        );
    } else {
        drop(back);
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(())
}
