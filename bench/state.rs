//! `sluice-bench checkpoint`: the cost of durable state at a given key count, on the real
//! code paths (the shard's `KeyedState`, its RocksDB spill store, `Checkpointer` and restore)
//! without sockets: bytes per key in memory and on disk, the shard's pause per checkpoint,
//! the time until a checkpoint is committed, and the restore time at start.

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
    /// Time the shard was held taking the snapshot (copying hot records, RocksDB checkpoint).
    pause_ms: f64,
    /// Of the pause, copying the hot records.
    copy_ms: f64,
    /// From the start of the snapshot until the checkpoint was committed (synced, renamed).
    commit_ms: f64,
    hot_bytes: u64,
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

fn dir_bytes(p: &Path) -> u64 {
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

    let root = base.join("checkpoints");
    // The first checkpoint is full; the later ones incremental (only the first is full in
    // this run), each after `churn` more events on random existing keys.
    let mut cp = Checkpointer::start(CheckpointSpec {
        root: root.clone(),
        shard: 0,
        layout: config.state_layout(1),
        interval_ns: u64::MAX,
        keep: 2,
        full_every: usize::MAX,
        buffer_bytes: checkpoint::buffer_bytes(hot, words),
        next_seq: 1,
    })?;
    let mut checkpoints = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..rounds.max(1) {
        if round > 0 {
            for i in 0..churn {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = Update {
                    key: x % keys,
                    seq: 2 + round as u64,
                    ts_ns: t0 + 2_000_000_000 + round as u64 * 200_000_000 + i,
                    kind: EventKind::Observation,
                    amount: 42.0,
                    label: -1.0,
                    features: &[],
                    source: 0,
                };
                state.apply(&u, u.ts_ns)?;
            }
        }
        let t = Instant::now();
        let full_before = cp.stats.full;
        cp.finish(&mut state, t0 + 3_000_000_000);
        checkpoints.push(CheckpointRun {
            full: cp.stats.full > full_before,
            copy_ms: cp.stats.last_copy_ns as f64 / 1e6,
            pause_ms: cp.stats.last_pause_ns as f64 / 1e6,
            commit_ms: t.elapsed().as_secs_f64() * 1e3,
            hot_bytes: cp.stats.last_bytes,
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
            "  checkpoint {} ({}): shard pause {:.1} ms ({:.1} ms copying hot records), committed after {:.1} ms, hot.bin {:.1} MiB",
            i + 1,
            if c.full { "full" } else { "incremental" },
            c.pause_ms,
            c.copy_ms,
            c.commit_ms,
            c.hot_bytes as f64 / (1 << 20) as f64
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
