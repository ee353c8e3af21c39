//! `sluice state rescale`: a `state.dir` written by N shards, re-dealt over the shard count
//! the config gives now (`shards`), offline. A key's shard is a function of the key and the
//! shard count (`route::owner`), so a start with another count refuses the checkpoints (their
//! keys would sit on the wrong shards); before this, a new count meant an empty state. Flink
//! rescales from a savepoint by key group; here every shard's newest good checkpoint chain is
//! restored, every record (hot and spilled) put on its owner under the new count, and each
//! new shard written a full checkpoint, in a directory beside the old shards that only then
//! takes their place. The old shards are kept, renamed, until the operator deletes them.
//!
//! A Kafka-fed state (dealt partitions) moves by partition, each with its offset, and under
//! exactly_once with progress records naming the new checkpoints: see `rescale_kafka`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::rescale_kafka::{self, KafkaDeal};
use crate::config::Config;
use crate::state::checkpoint::{
    self, CheckpointSpec, Checkpointer, PartitionOffset, RestoreTarget,
};
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
    /// Kafka: the input partitions each new shard owns, with their offsets.
    pub partitions_per_shard: Vec<usize>,
    /// exactly_once: the checkpoint every new shard's progress record names.
    pub progress: Option<u64>,
    /// Where the old shards' directories went.
    pub kept: PathBuf,
    /// An interrupted swap was finished (nothing re-dealt now; `from` is the directories it
    /// had to move aside).
    pub resumed: bool,
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
    #[error(transparent)]
    Kafka(#[from] crate::ingest::kafka::KafkaError),
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
pub(super) fn shard_dirs(root: &Path) -> Vec<PathBuf> {
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
pub fn rescale(config: &Config, to: usize, fault: Fault) -> Result<Rescaled, RescaleError> {
    let started = Instant::now();
    let dir = &config.state.dir;
    if dir.is_empty() {
        return Err(RescaleError::Refused(
            "state.dir is not set: there is no state to re-deal".into(),
        ));
    }
    // The same lock `run` takes: never while a sluice serves this state.
    let _lock = super::one_instance::StateDirLock::take(dir).map_err(RescaleError::InUse)?;
    let root = Path::new(dir);
    // A swap cut short: finish it, nothing else.
    let mark_path = root.join(SWAP_MARK);
    if mark_path.exists() {
        let text = std::fs::read_to_string(&mark_path).map_err(io("reading", &mark_path))?;
        let mark = Swap::parse(&text).ok_or_else(|| {
            RescaleError::Refused(format!(
                "{} is damaged ({text:?}): finish the swap by hand (old shards into the before-rescale directory, {STAGING}/shard-N into state.dir) and remove it",
                mark_path.display()
            ))
        })?;
        swap(config, root, &mark, fault)?;
        return Ok(Rescaled {
            from: mark.aside.len(),
            to: mark.to,
            keys: 0,
            keys_per_shard: Vec::new(),
            partitions_per_shard: Vec::new(),
            progress: mark.progress,
            kept: root.join(&mark.kept),
            resumed: true,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        });
    }
    let mut old = shard_dirs(root);
    // The count the state was written by, as its first shard's newest checkpoint says. A
    // start refused for the new count may have left shard directories past it (a new shard
    // that started empty while the others were refused): not part of the state, kept aside
    // with the old shards.
    let first = root.join("shard-0").join("checkpoints");
    let newest = checkpoint::newest_layout(&first)
        .map_err(|source| RescaleError::Restore { shard: 0, source })?;
    let from = newest
        .as_deref()
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
    // Kafka-fed: partitions move whole (exactly_once: the brokers asked which checkpoints).
    let deal = match &newest {
        Some(layout) if config.ingest.kafka.enabled() => {
            Some(KafkaDeal::plan(config, from, to, layout)?)
        }
        _ => None,
    };
    let old_layout = deal
        .as_ref()
        .map_or_else(|| config.state_layout(from), |d| d.old_layout.clone());
    let plan = config
        .feature_plan()
        .map_err(|e| RescaleError::Refused(e.to_string()))?;
    let words = plan.words();
    let open =
        |d: &Path, len: Option<u64>| Spill::open(d, config.state.spill_cache_bytes, words, len);

    // The new shards are built beside the old ones; a rescale stopped half-way left its own.
    let staging = root.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(io("removing an unfinished rescale's", &staging))?;
    }
    // Declared before the new states so it drops after them (their stores closed).
    let mut built = Staged(Some(staging.clone()));
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
    let mut max_seq = 0u64;
    let mut applied_total = 0u64;
    let mut applied_in_keys = 0u64;
    let mut offsets: Vec<PartitionOffset> = Vec::new();
    // Kafka-fed keys of one shard each before; one under the new count only if their
    // partitions agree.
    let mut on_two = (0u64, None::<(u64, u64, u64)>);
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
                "{}: its newest checkpoint was written for {}, not {old_layout:?} ({from} shards, as shard 0's checkpoint says, and this config's features and lateness): only the shard count may differ",
                shard_dir.display(),
                found.map_or_else(|| "nothing (no checkpoint)".to_owned(), |l| format!("{l:?}"))
            )));
        }
        // Restores as a start would (the spill store put back to the checkpoint's); the old
        // directory stays a valid state for `from` shards until the swap below.
        let target = deal.as_ref().map_or(RestoreTarget::Newest, |d| d.target(i));
        let spill_dir = shard_dir.join("spill");
        let (spill, point) =
            checkpoint::restore_to(&cp_root, &old_layout, &spill_dir, words, open, target)
                .map_err(restore_err)?;
        let mut state = KeyedState::with_plan(config, plan.clone(), Some(spill));
        let Some(point) = point else {
            continue;
        };
        checkpoint::load_records(&mut state, &point).map_err(restore_err)?;
        max_event_ns = max_event_ns.max(point.manifest.max_event_ns);
        max_seq = max_seq.max(point.manifest.seq);
        applied_total += point.manifest.observations_applied;
        offsets.extend(point.manifest.kafka_offsets.iter().cloned());
        let mut failed = None;
        state
            .for_each_record(|rec, words| {
                if failed.is_some() {
                    return;
                }
                let j = match &deal {
                    Some(d) => match d.shard_of(rec.source, rec.key) {
                        Some(j) => j,
                        None => {
                            failed = Some(RescaleError::Read {
                                shard: i,
                                what: format!(
                                    "key {} belongs to input partition {}, which the state's layout does not name",
                                    rec.key,
                                    d.name_of(rec.source)
                                ),
                            });
                            return;
                        }
                    },
                    None => crate::route::owner(rec.key, to),
                };
                let Some(target) = new.get_mut(j) else {
                    return;
                };
                // Kafka keys are scoped to their partition: the same key may have state on
                // two partitions of two shards, which one shard cannot hold.
                if deal.is_some() {
                    match target.locate(rec.key) {
                        Ok(None) => {}
                        Ok(Some(there)) => {
                            on_two.0 += 1;
                            on_two.1 = on_two.1.or(Some((rec.key, there.record.source, rec.source)));
                            return;
                        }
                        Err(e) => {
                            failed = Some(RescaleError::Write { shard: j, what: e.to_string() });
                            return;
                        }
                    }
                }
                match target.restore(*rec, words) {
                    Ok(()) => {
                        if let Some(n) = keys_per_shard.get_mut(j) {
                            *n += 1;
                        }
                        target.stats.observations_applied += rec.observations;
                        applied_in_keys += rec.observations;
                    }
                    Err(e) => {
                        failed = Some(RescaleError::Write {
                            shard: j,
                            what: e.to_string(),
                        })
                    }
                }
            })
            .map_err(|e| RescaleError::Read {
                shard: i,
                what: e.to_string(),
            })?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if let (Some(d), (n, Some((key, a, b)))) = (&deal, on_two) {
        return Err(RescaleError::Refused(format!(
            "{n} key(s) have state on two input partitions that sit on different shards now and would share one under {to} shard(s) (key {key}: {} and {}); a shard keeps one state per key. Producers that partition by key never do this; keep the shard count (nothing was changed)",
            d.name_of(a),
            d.name_of(b)
        )));
    }
    let dealt_offsets = match &deal {
        Some(d) => d.deal_offsets(&offsets)?,
        None => vec![Vec::new(); to],
    };
    // Observations of keys the TTL removed counted too, as they were: on the first shard.
    if let Some(first) = new.first_mut() {
        first.stats.observations_applied += applied_total.saturating_sub(applied_in_keys);
    }
    let layout = deal
        .as_ref()
        .map_or_else(|| config.state_layout(to), |d| d.new_layout.clone());
    // The hot records' images are most of what is still to write (the spilled ones are in
    // the staged stores already): all of it known now, before the first shard's.
    room_for_all(config, &staging, &new)?;
    // Above every checkpoint the old shards (and their progress records) name.
    let seq = max_seq + 1;
    for ((j, state), offsets) in new.iter_mut().enumerate().zip(&dealt_offsets) {
        let at = NewCheckpoint {
            layout: &layout,
            max_event_ns,
            seq,
            offsets,
        };
        let written = write_full(config, &staging, j, state, &at);
        written.map_err(|what| RescaleError::Write { shard: j, what })?;
    }
    drop(new);
    // The staged shards' directory entries durable before the mark vouches for them.
    for j in 0..to {
        let d = staging.join(format!("shard-{j}"));
        checkpoint::disk::sync_dir(&d).map_err(io("syncing", &d))?;
    }
    checkpoint::disk::sync_dir(&staging).map_err(io("syncing", &staging))?;
    // From the mark on, the staged shards are the state's future: kept whatever happens.
    built.0 = None;

    // The swap: the old shards into a directory of their own, the new ones into place. A mark
    // written first makes a swap cut short (a crash, a kill) one that `run` refuses and the
    // next rescale finishes, never a state.dir that starts half empty.
    let kept = format!("before-rescale-{}", crate::clock::realtime_ns() / 1_000_000);
    let aside: Vec<String> = old
        .iter()
        .chain(&leftovers)
        .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
        .collect();
    let progress = deal
        .as_ref()
        .is_some_and(KafkaDeal::exactly_once)
        .then_some(seq);
    let mark = Swap {
        kept,
        aside,
        to,
        progress,
    };
    let mark_path = root.join(SWAP_MARK);
    checkpoint::disk::write_synced(&mark_path, &[mark.render().as_bytes()])
        .map_err(io("writing", &mark_path))?;
    checkpoint::disk::sync_dir(root).map_err(io("syncing", root))?;
    swap(config, root, &mark, fault)?;
    let keys = keys_per_shard.iter().sum();
    Ok(Rescaled {
        from,
        to,
        keys,
        keys_per_shard,
        partitions_per_shard: deal.map_or_else(Vec::new, |d| d.partitions_per_shard()),
        progress,
        kept: root.join(&mark.kept),
        resumed: false,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// The staging directory of a rescale that did not get as far as its swap mark: removed on
/// the way out (a refusal found half-way, a failed write), so no copy of the state is left
/// behind to fill the disk.
struct Staged(Option<PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "removing the unfinished rescale's staging directory: {e}");
            }
        }
    }
}

/// The file in `state.dir` that says a swap is under way (see `Swap`).
pub const SWAP_MARK: &str = "rescale-swap";

/// A swap's plan: the directories moved into `kept`, then the staged shards 0..`to` into place;
/// first, for an exactly_once Kafka state, each new shard's progress record naming checkpoint
/// `progress` committed.
#[derive(Debug, PartialEq)]
struct Swap {
    kept: String,
    aside: Vec<String>,
    to: usize,
    progress: Option<u64>,
}

impl Swap {
    fn render(&self) -> String {
        let progress = self
            .progress
            .map_or_else(String::new, |seq| format!("progress={seq}\n"));
        format!(
            "kept={}\naside={}\nto={}\n{progress}",
            self.kept,
            self.aside.join(","),
            self.to
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        };
        let kept = field("kept")?.to_owned();
        let aside = field("aside")?
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        let to = field("to")?.parse().ok()?;
        let progress = match field("progress") {
            Some(seq) => Some(seq.parse().ok()?),
            None => None,
        };
        // Only names this module and `state restore` write: a damaged mark must not move
        // anything else.
        let named = |n: &str| {
            n.starts_with("shard-")
                || n.starts_with("before-rescale-")
                || n.starts_with("before-restore-")
        };
        let s = Self {
            kept,
            aside,
            to,
            progress,
        };
        (named(&s.kept) && s.aside.iter().all(|n| named(n))).then_some(s)
    }
}

/// Carry out (or finish) `mark`'s swap. Every old directory is moved aside before any staged
/// one moves in (a directory sync between), so a `shard-N` still in place while one of the
/// aside names is missing from `kept` is an old one. Under exactly_once the new checkpoints
/// are named in the progress topic first: from then on only the new shards match it.
fn swap(config: &Config, root: &Path, mark: &Swap, fault: Fault) -> Result<(), RescaleError> {
    if let Some(seq) = mark.progress {
        rescale_kafka::commit_progress(config, root, mark.to, seq)?;
    }
    let kept = root.join(&mark.kept);
    if !kept.exists() {
        std::fs::create_dir(&kept).map_err(io("making", &kept))?;
    }
    for name in &mark.aside {
        let (from, to) = (root.join(name), kept.join(name));
        if from.exists() && !to.exists() {
            std::fs::rename(&from, &to).map_err(io("moving aside", &from))?;
        }
    }
    checkpoint::disk::sync_dir(&kept).map_err(io("syncing", &kept))?;
    checkpoint::disk::sync_dir(root).map_err(io("syncing", root))?;
    if fault == Fault::StopMidSwap {
        return Err(RescaleError::Refused(
            "stopped mid-swap, as asked (--fault-stop-mid-swap)".into(),
        ));
    }
    let staging = root.join(STAGING);
    for j in 0..mark.to {
        let from = staging.join(format!("shard-{j}"));
        if from.exists() {
            std::fs::rename(&from, root.join(format!("shard-{j}")))
                .map_err(io("moving into place", &from))?;
        }
    }
    checkpoint::disk::sync_dir(root).map_err(io("syncing", root))?;
    // Every new shard in place before the mark goes: else the start would begin one empty.
    if let Some(j) = (0..mark.to).find(|j| !root.join(format!("shard-{j}")).is_dir()) {
        // Under exactly_once the progress records name the new checkpoints by now: the old
        // shards moved back would be refused at start (theirs are gone from the topic).
        let way_back = match mark.progress {
            None => format!(
                "Move them back into {} and delete {} to return to the old count",
                root.display(),
                root.join(SWAP_MARK).display()
            ),
            Some(seq) => format!(
                "The progress topic already names the new shards' checkpoint {seq}, so the old ones cannot simply be moved back: put shard-{j}'s directory back if it was moved, or move the whole state.dir away and start over with a new egress.kafka.transactional_id_prefix"
            ),
        };
        return Err(RescaleError::Refused(format!(
            "finishing the swap: new shard {j} is neither in {} nor in place; the old shards are in {}. {way_back}",
            staging.display(),
            kept.display(),
        )));
    }
    if staging.exists() {
        std::fs::remove_dir(&staging).map_err(io("removing", &staging))?;
    }
    let mark_path = root.join(SWAP_MARK);
    std::fs::remove_file(&mark_path).map_err(io("removing", &mark_path))?;
    checkpoint::disk::sync_dir(root).map_err(io("syncing", root))
}

/// Test hook: a rescale that stops as a crash would, between moving the old shards aside and
/// moving the new ones in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    StopMidSwap,
}

/// Where the new shards are built (by `state restore` too).
pub(super) const STAGING: &str = "rescale-staging";

/// The shards staged in `root/STAGING` (0..`to`) put in place of `root`'s, which go into
/// `root/kept`: the same crash-safe swap as a rescale's (a mark first; `run` refuses a
/// state.dir holding it and `sluice state rescale` finishes it). For `state restore`.
pub(super) fn swap_in(
    config: &Config,
    root: &Path,
    kept: String,
    to: usize,
) -> Result<(), RescaleError> {
    let aside = shard_dirs(root)
        .iter()
        .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
        .collect();
    let mark = Swap {
        kept,
        aside,
        to,
        progress: None,
    };
    let mark_path = root.join(SWAP_MARK);
    checkpoint::disk::write_synced(&mark_path, &[mark.render().as_bytes()])
        .map_err(io("writing", &mark_path))?;
    checkpoint::disk::sync_dir(root).map_err(io("syncing", root))?;
    swap(config, root, &mark, Fault::None)
}

/// Why `run` must not start on `dir`: a rescale's swap was cut short there.
pub fn interrupted(dir: &str) -> Option<String> {
    let mark = Path::new(dir).join(SWAP_MARK);
    mark.exists().then(|| {
        format!(
            "state.dir {dir}: a `sluice state rescale` (or `state restore`) was cut short while it swapped the shards ({} is there); a start now would find part of the state. Run `sluice state rescale` again, with the config the service will run with: it finishes the swap",
            mark.display()
        )
    })
}

/// What every new shard's checkpoint is written as, and (Kafka) the input offsets it holds.
struct NewCheckpoint<'a> {
    layout: &'a str,
    max_event_ns: u64,
    seq: u64,
    offsets: &'a [PartitionOffset],
}

/// New shard `j`'s state as a full checkpoint under `staging/shard-j`, waited for.
fn write_full(
    config: &Config,
    staging: &Path,
    j: usize,
    state: &mut KeyedState,
    at: &NewCheckpoint<'_>,
) -> Result<(), String> {
    state.track_changes();
    let words = state.plan().words();
    let mut cp = Checkpointer::start(CheckpointSpec {
        root: staging.join(format!("shard-{j}")).join("checkpoints"),
        shard: j,
        layout: at.layout.to_owned(),
        interval_ns: config.checkpoint.interval_ms.max(1) * 1_000_000,
        keep: config.checkpoint.keep,
        full_every: config.checkpoint.full_every,
        buffer_bytes: checkpoint::buffer_bytes(config.state.hot_capacity, words),
        slice_records: config.checkpoint.copy_slice_records,
        slice_ns: 0,
        journal_records: config.checkpoint.spill_journal_records,
        words,
        next_seq: at.seq,
        restored: None,
        gated: false,
    })
    .map_err(|e| e.to_string())?;
    cp.wait_ready();
    let input = checkpoint::Input {
        position: 0,
        offsets: at.offsets.to_vec(),
    };
    cp.finish_saying(state, at.max_event_ns, &input)?;
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

/// Refused, nothing changed, unless `staging`'s filesystem has room for every new shard's
/// full checkpoint. Each checkpoint's writer checks its own, but only the first shards'
/// would get written (and the whole staged copy then removed) on a disk too small for all.
fn room_for_all(config: &Config, staging: &Path, new: &[KeyedState]) -> Result<(), RescaleError> {
    let need: u64 = new.iter().map(checkpoint::full_checkpoint_bound).sum();
    let free = checkpoint::free_bytes(staging).map_err(RescaleError::Refused)?;
    if free >= need {
        return Ok(());
    }
    let hot: usize = new.iter().map(KeyedState::hot_len).sum();
    let kept = super::state_check::warnings(config);
    let kept = if kept.is_empty() {
        String::new()
    } else {
        format!(" ({})", kept.join("; "))
    };
    Err(RescaleError::Refused(format!(
        "{} has {} MB free; the {} new shards' full checkpoints need up to {} MB ({hot} hot record(s), and the spill stores' writes): nothing was changed. Free some disk{kept} or lower state.hot_capacity (spilled records take less room), and run it again",
        staging.display(),
        free / 1_000_000,
        new.len(),
        need.div_ceil(1_000_000)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swap_mark_round_trips_and_a_damaged_one_moves_nothing() {
        let mark = Swap {
            kept: "before-rescale-17".into(),
            aside: vec!["shard-0".into(), "shard-1".into()],
            to: 3,
            progress: None,
        };
        assert_eq!(Swap::parse(&mark.render()), Some(mark));
        let exactly_once = Swap {
            kept: "before-rescale-18".into(),
            aside: vec!["shard-0".into()],
            to: 2,
            progress: Some(41),
        };
        assert_eq!(Swap::parse(&exactly_once.render()), Some(exactly_once));
        assert_eq!(
            Swap::parse("kept=before-rescale-1\naside=shard-0\nto=1\nprogress=x\n"),
            None
        );
        assert_eq!(
            Swap::parse("kept=before-rescale-1\naside=../etc\nto=1\n"),
            None
        );
        assert_eq!(Swap::parse("kept=/\naside=shard-0\nto=1\n"), None);
        assert_eq!(Swap::parse("kept=before-rescale-1\naside=shard-0\n"), None);
    }
}
