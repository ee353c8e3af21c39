//! `sluice state rescale`: a `state.dir` written by N shards, re-dealt over the shard count
//! the config gives now (`shards`), offline. A key's shard is a function of the key and the
//! shard count (`route::owner`), so a start with another count refuses the checkpoints (their
//! keys would sit on the wrong shards); before this, a new count meant an empty state. Flink
//! rescales from a savepoint by key group; here every shard's newest good checkpoint chain is
//! restored, every record (hot and spilled) put on its owner under the new count, and each
//! new shard written a full checkpoint, in a directory beside the old shards that only then
//! takes their place. The old shards are kept, renamed, until the operator deletes them.
//!
//! UDP-fed state only: a Kafka-fed key lives with its input partition, and partitions are
//! dealt to shards by another rule (and under exactly_once the progress records name each
//! shard's checkpoints), so a state with Kafka offsets is refused, naming why.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::state::checkpoint::{self, CheckpointSpec, Checkpointer};
use crate::state::{KeyedState, Spill};

/// What a rescale did.
#[derive(Debug)]
pub struct Rescaled {
    pub from: usize,
    pub to: usize,
    /// Keys moved over (hot and spilled).
    pub keys: u64,
    /// Per new shard.
    pub keys_per_shard: Vec<u64>,
    /// Where the old shards' directories went.
    pub kept: PathBuf,
    pub took_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RescaleError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    InUse(String),
    #[error("shard {shard}'s state: {source}")]
    Restore {
        shard: usize,
        source: checkpoint::CheckpointError,
    },
    #[error("shard {shard}'s records: {what}")]
    Read { shard: usize, what: String },
    #[error("new shard {shard}'s state: {what}")]
    Write { shard: usize, what: String },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RescaleError {
    let path = path.to_owned();
    move |source| RescaleError::Io { what, path, source }
}

/// The shard directories `state.dir` holds (shard-0, shard-1, … while they exist).
fn shard_dirs(root: &Path) -> Vec<PathBuf> {
    (0..)
        .map(|i| root.join(format!("shard-{i}")))
        .take_while(|d| d.is_dir())
        .collect()
}

/// The shard count `run` places for `config` on this host.
pub fn shard_count(config: &Config) -> Result<usize, RescaleError> {
    let topo = crate::topology::discover();
    crate::topology::plan(&config.shards, &topo)
        .map(|p| p.len())
        .map_err(|e| RescaleError::Refused(e.join("; ")))
}

/// Re-deal `config.state.dir` over `to` shards (what `run` would place: see `shard_count`).
pub fn rescale(config: &Config, to: usize) -> Result<Rescaled, RescaleError> {
    let started = Instant::now();
    let dir = &config.state.dir;
    if dir.is_empty() {
        return Err(RescaleError::Refused(
            "state.dir is not set: there is no state to re-deal".into(),
        ));
    }
    if config.ingest.kafka.enabled() {
        return Err(RescaleError::Refused(
            "ingest.kafka is on: a Kafka-fed key's state lives with its input partition, which is dealt to shards by partition, not by key (and under exactly_once the progress records name each shard's checkpoints); run the new shard count with membership = \"group\" and the changelog, which moves partitions with their state, instead".into(),
        ));
    }
    // The same lock `run` takes: never while a sluice serves this state.
    let _lock = super::one_instance::StateDirLock::take(dir).map_err(RescaleError::InUse)?;
    let root = Path::new(dir);
    let mut old = shard_dirs(root);
    // The count the state was written by, as its first shard's newest checkpoint says. A
    // start refused for the new count may have left shard directories past it (a new shard
    // that started empty while the others were refused): not part of the state, kept aside
    // with the old shards.
    let first = root.join("shard-0").join("checkpoints");
    let from = checkpoint::newest_layout(&first)
        .map_err(|source| RescaleError::Restore { shard: 0, source })?
        .and_then(|l| {
            l.split(';')
                .find_map(|p| p.strip_prefix("shards="))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .ok_or_else(|| {
            RescaleError::Refused(format!(
                "state.dir {dir} holds no checkpoint of shard 0 ({}): nothing to re-deal",
                first.display()
            ))
        })?;
    if old.len() < from {
        return Err(RescaleError::Refused(format!(
            "state.dir {dir} was written by {from} shards but holds {} shard directories: the state is incomplete",
            old.len()
        )));
    }
    let leftovers = old.split_off(from);
    if from == to {
        return Err(RescaleError::Refused(format!(
            "state.dir {dir} is already dealt over {to} shard(s): nothing to do"
        )));
    }
    let old_layout = config.state_layout(from);
    let plan = config
        .feature_plan()
        .map_err(|e| RescaleError::Refused(e.to_string()))?;
    let words = plan.words();
    let open =
        |d: &Path, len: Option<u64>| Spill::open(d, config.state.spill_cache_bytes, words, len);

    // The new shards are built beside the old ones; a rescale stopped half-way left its own.
    let staging = root.join("rescale-staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(io("removing an unfinished rescale's", &staging))?;
    }
    let mut new: Vec<KeyedState> = Vec::with_capacity(to);
    for j in 0..to {
        let spill_dir = staging.join(format!("shard-{j}")).join("spill");
        std::fs::create_dir_all(&spill_dir).map_err(io("making", &spill_dir))?;
        let spill = open(&spill_dir, None).map_err(|e| RescaleError::Write {
            shard: j,
            what: format!("its spill store: {e}"),
        })?;
        new.push(KeyedState::with_plan(config, plan.clone(), Some(spill)));
    }
    let mut keys_per_shard = vec![0u64; to];
    let mut max_event_ns = 0u64;
    let mut applied_total = 0u64;
    let mut applied_in_keys = 0u64;
    for (i, shard_dir) in old.iter().enumerate() {
        let restore_err = |source| RescaleError::Restore { shard: i, source };
        let cp_root = shard_dir.join("checkpoints");
        if checkpoint::newest_layout(&cp_root)
            .map_err(restore_err)?
            .as_deref()
            != Some(old_layout.as_str())
        {
            let found = checkpoint::newest_layout(&cp_root).ok().flatten();
            return Err(RescaleError::Refused(format!(
                "{}: its newest checkpoint was written for {}, not {old_layout:?} ({from} shard directories, this config's features and lateness): only the shard count may differ",
                shard_dir.display(),
                found.map_or_else(|| "nothing (no checkpoint)".to_owned(), |l| format!("{l:?}"))
            )));
        }
        // Restores as a start would (the spill store put back to the checkpoint's); the old
        // directory stays a valid state for `from` shards until the swap below.
        let (spill, point) =
            checkpoint::restore(&cp_root, &old_layout, &shard_dir.join("spill"), words, open)
                .map_err(restore_err)?;
        let mut state = KeyedState::with_plan(config, plan.clone(), Some(spill));
        let Some(point) = point else {
            continue;
        };
        checkpoint::load_records(&mut state, &point).map_err(restore_err)?;
        max_event_ns = max_event_ns.max(point.manifest.max_event_ns);
        applied_total += point.manifest.observations_applied;
        let mut failed = None;
        state
            .for_each_record(|rec, words| {
                if failed.is_some() {
                    return;
                }
                let j = crate::route::owner(rec.key, to);
                let Some(target) = new.get_mut(j) else {
                    return;
                };
                match target.restore(*rec, words) {
                    Ok(()) => {
                        keys_per_shard[j] += 1;
                        target.stats.observations_applied += rec.observations;
                        applied_in_keys += rec.observations;
                    }
                    Err(e) => failed = Some((j, e.to_string())),
                }
            })
            .map_err(|e| RescaleError::Read {
                shard: i,
                what: e.to_string(),
            })?;
        if let Some((shard, what)) = failed {
            return Err(RescaleError::Write { shard, what });
        }
    }
    // Observations of keys the TTL removed counted too, as they were: on the first shard.
    if let Some(first) = new.first_mut() {
        first.stats.observations_applied += applied_total.saturating_sub(applied_in_keys);
    }
    let layout = config.state_layout(to);
    for (j, state) in new.iter_mut().enumerate() {
        let written = write_full(config, &staging, j, &layout, state, max_event_ns);
        written.map_err(|what| RescaleError::Write { shard: j, what })?;
    }
    drop(new);

    // The swap: the old shards into a directory of their own, the new ones into place.
    let kept = root.join(format!(
        "before-rescale-{}",
        crate::clock::realtime_ns() / 1_000_000
    ));
    std::fs::create_dir(&kept).map_err(io("making", &kept))?;
    for d in old.iter().chain(&leftovers) {
        let to_path = kept.join(d.file_name().unwrap_or_default());
        std::fs::rename(d, &to_path).map_err(io("moving aside", d))?;
    }
    for j in 0..to {
        let from_path = staging.join(format!("shard-{j}"));
        std::fs::rename(&from_path, root.join(format!("shard-{j}")))
            .map_err(io("moving into place", &from_path))?;
    }
    std::fs::remove_dir(&staging).map_err(io("removing", &staging))?;
    checkpoint::disk::sync_dir(root).map_err(io("syncing", root))?;
    let keys = keys_per_shard.iter().sum();
    Ok(Rescaled {
        from,
        to,
        keys,
        keys_per_shard,
        kept,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// New shard `j`'s state as a full checkpoint under `staging/shard-j`, waited for.
fn write_full(
    config: &Config,
    staging: &Path,
    j: usize,
    layout: &str,
    state: &mut KeyedState,
    max_event_ns: u64,
) -> Result<(), String> {
    state.track_changes();
    let words = state.plan().words();
    let mut cp = Checkpointer::start(CheckpointSpec {
        root: staging.join(format!("shard-{j}")).join("checkpoints"),
        shard: j,
        layout: layout.to_owned(),
        interval_ns: config.checkpoint.interval_ms.max(1) * 1_000_000,
        keep: config.checkpoint.keep,
        full_every: config.checkpoint.full_every,
        buffer_bytes: checkpoint::buffer_bytes(config.state.hot_capacity, words),
        slice_records: config.checkpoint.copy_slice_records,
        slice_ns: 0,
        journal_records: config.checkpoint.spill_journal_records,
        words,
        next_seq: 1,
        restored: None,
        gated: false,
    })
    .map_err(|e| e.to_string())?;
    cp.wait_ready();
    cp.finish(state, max_event_ns);
    match cp.take_outcome() {
        Some(Err(e)) => Err(e),
        _ if checkpoint::newest_layout(&staging.join(format!("shard-{j}")).join("checkpoints"))
            .ok()
            .flatten()
            .is_none() =>
        {
            Err("its checkpoint was not written".into())
        }
        _ => Ok(()),
    }
}
