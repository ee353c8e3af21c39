//! `sluice state backup --to DIR`: a copy of `state.dir` that a start can restore, taken while
//! sluice serves (or not). A UDP-fed state has no source to replay: a lost disk is a lost
//! state, and checkpoints on the same disk do not help. Each shard's newest checkpoint chain
//! is pinned first by hard links in `state.dir` (instant; a checkpoint's files never change
//! once committed, and a link keeps them when the writer prunes the chain), then the pinned
//! files go to `DIR` — moved if it is on the same file system, copied otherwise — read back
//! (`check_chains`), synced, and only then renamed into place. Nothing the service uses is
//! touched and no lock is taken: a chain pruned before its files are linked is taken again
//! from the newer one. Each shard's chain is its own consistent cut, as after a crash; under
//! at_least_once Kafka each resumes at its checkpoint's offsets.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::state_check::bytes_under;
use crate::config::{Config, Delivery};
use crate::egress::kafka::committed_mark;
use crate::state::checkpoint::{self, disk};

/// What a backup took.
#[derive(Debug)]
pub struct BackedUp {
    pub to: PathBuf,
    /// Per shard: the checkpoint a start from the backup restores and its chain's length
    /// (None: the shard had no checkpoint yet).
    pub shards: Vec<Option<(u64, usize)>>,
    /// Bytes in the backup, each hard link counted once.
    pub bytes: u64,
    /// Moved from the pin on the same file system (else copied).
    pub moved: bool,
    /// Chains taken again because the writer pruned them under the linking.
    pub retries: usize,
    pub took_ms: f64,
}

/// Where a backup pins chains, in `state.dir`, suffixed by its pid.
pub const PIN: &str = "backup-pin-";

/// Chains taken again after one was pruned under the linking, before the backup gives up.
const ATTEMPTS: usize = 20;

pub fn backup(config: &Config, to: &Path) -> Result<BackedUp, String> {
    let started = Instant::now();
    let root = super::state_show::existing_state_dir(config)?;
    let dir = &config.state.dir;
    if config.ingest.kafka.enabled() && config.egress.kafka.delivery == Delivery::ExactlyOnce {
        return Err("egress.kafka.delivery = \"exactly_once\": a start restores the checkpoint the last committed transaction's progress record names, and a backup's checkpoint is not that one once the service has committed another (a start from it would be refused, or with a new transactional_id_prefix begin empty). The copy of an exactly_once state is the changelog topic (egress.kafka.changelog: a wiped state.dir rebuilds from it)".into());
    }
    if let Some(why) = super::rescale::interrupted(dir) {
        return Err(why);
    }
    if to.exists() {
        return Err(format!(
            "{} exists: a backup goes into a new directory",
            to.display()
        ));
    }
    let name = to
        .file_name()
        .ok_or_else(|| format!("{}: not a directory name", to.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(format!("{} does not exist", parent.display()));
    }
    let shard_dirs = super::rescale::shard_dirs(root);
    if shard_dirs.is_empty() {
        return Err(format!("state.dir {dir} holds no shard directory"));
    }
    remove_stale_pins(root);
    let pin = root.join(format!("{PIN}{}", std::process::id()));
    let _pinned = RemovedOnDrop(pin.clone());
    let mut shards = Vec::new();
    let mut retries = 0;
    for (i, shard) in shard_dirs.iter().enumerate() {
        let into = pin.join(format!("shard-{i}"));
        let pinned = checkpoint::pin_newest_chain(
            &shard.join("checkpoints"),
            &into.join("checkpoints"),
            ATTEMPTS,
            |_| {},
        )
        .map_err(|e| format!("shard {i}: {e}"))?;
        retries += pinned.retries;
        shards.push(pinned.good);
        let mark = committed_mark::path(shard);
        if mark.exists() {
            std::fs::copy(&mark, committed_mark::path(&into))
                .map_err(|e| format!("copying {}: {e}", mark.display()))?;
        }
    }
    let partial = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _partial = RemovedOnDrop(partial.clone());
    let moved = dev_of(&pin) == dev_of(&parent) && std::fs::rename(&pin, &partial).is_ok();
    if !moved {
        copy_tree(&pin, &partial, &mut HashMap::new())
            .map_err(|e| format!("copying into {}: {e}", partial.display()))?;
    }
    // A copy reads back as the pin did (moved, it is the pin's files).
    for (i, want) in shards.iter().enumerate().filter(|_| !moved) {
        let cps = partial.join(format!("shard-{i}")).join("checkpoints");
        let c = checkpoint::check_chains(&cps).map_err(|e| e.to_string())?;
        if c.good != *want || !c.bad.is_empty() {
            return Err(format!(
                "shard {i}'s copy in {} does not read back as the pinned chain did ({:?}, {:?}): nothing kept",
                partial.display(),
                c.good,
                c.bad
            ));
        }
    }
    sync_tree(&partial).map_err(|e| format!("syncing {}: {e}", partial.display()))?;
    disk::rename(&partial, to).map_err(|e| format!("renaming into {}: {e}", to.display()))?;
    disk::sync_dir(&parent).map_err(|e| format!("syncing {}: {e}", parent.display()))?;
    Ok(BackedUp {
        to: to.to_owned(),
        shards,
        bytes: bytes_under(to, &mut HashSet::new()),
        moved,
        retries,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// `from`'s tree copied to `to`, each file's data synced; files that are one (hard links, as a
/// RocksDB checkpoint's tables are across a chain) stay one.
pub(super) fn copy_tree(
    from: &Path,
    to: &Path,
    seen: &mut HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let m = e.metadata()?;
        if m.is_dir() {
            copy_tree(&src, &dst, seen)?;
        } else if let Some(first) = seen.get(&(m.dev(), m.ino())) {
            std::fs::hard_link(first, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
            std::fs::File::open(&dst)?.sync_all()?;
            seen.insert((m.dev(), m.ino()), dst);
        }
    }
    Ok(())
}

/// Every directory under `dir`, and it, synced: the names linked, copied or moved in are
/// durable.
pub(super) fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    disk::sync_dir(dir)
}

fn dev_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.dev())
}

/// Pins of backups that were killed (their pid gone) hold a chain's disk: removed.
fn remove_stale_pins(root: &Path) {
    for (path, pid) in pins(root) {
        if pid_gone(pid) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(dir = %path.display(), "removing a killed backup's pin: {e}");
            }
        }
    }
}

/// Whether the process that named a pin or a partial copy after itself is gone (its leftovers
/// are then stale: it will not rename or remove them).
pub(super) fn pid_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The backup pins in `root`, each with the pid it names.
pub fn pins(root: &Path) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.strip_prefix(PIN)?.parse().ok()?;
            Some((e.path(), pid))
        })
        .collect();
    found.sort();
    found
}

/// A directory removed when the backup returns, whatever it returns with (a path renamed
/// away first is not there any more).
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                tracing::warn!(dir = %self.0.display(), "removing the backup's working directory: {e}");
            }
        }
    }
}
