//! `sluice state restore --from DIR`: a backup (`sluice state backup`) put in place of
//! `state.dir`, with the service stopped. By hand this is a move and a `cp -a`, and two ways
//! to get it wrong: a backup that does not read back found only at the start, and files owned
//! by the copying user (root) in a state.dir the service's own user (systemd's DynamicUser)
//! must write. Here the backup is read back first (`check_chains`) and checked against what a
//! start with this config would refuse, copied into `state.dir` beside the current shards
//! (owned like `state.dir`), and swapped in as a rescale swaps (a mark first: a restore cut
//! short is one `run` refuses and `sluice state rescale` finishes). The shards it replaces
//! are kept in `state.dir/before-restore-<ms>`; the backup is left as it was.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::state_backup::{copy_tree, sync_tree};
use crate::config::{Config, Delivery};
use crate::egress::kafka::committed_mark;
use crate::state::checkpoint;

#[derive(Debug)]
pub struct Restored {
    /// Per shard: the checkpoint a start restores and its chain's length (None: none).
    pub shards: Vec<Option<(u64, usize)>>,
    /// Where the shards it replaced went (None: state.dir held none).
    pub kept: Option<PathBuf>,
    pub took_ms: f64,
}

pub fn restore(config: &Config, from: &Path) -> Result<Restored, String> {
    let started = Instant::now();
    let dir = &config.state.dir;
    if dir.is_empty() {
        return Err("state.dir is not set: there is nowhere to restore to".into());
    }
    if config.ingest.kafka.enabled() && config.egress.kafka.delivery == Delivery::ExactlyOnce {
        return Err("egress.kafka.delivery = \"exactly_once\": a start restores the checkpoint the last committed progress record names, not a backup's (`sluice state backup` refuses such a state too); with egress.kafka.changelog a wiped state.dir rebuilds from the changelog topic".into());
    }
    let from_shards = super::rescale::shard_dirs(from);
    if from_shards.is_empty() {
        return Err(format!(
            "{} holds no shard directory: not a backup (`sluice state backup --to` writes one)",
            from.display()
        ));
    }
    // Never beside a serving sluice: the lock `run` takes (it makes state.dir if missing).
    let _lock = super::one_instance::StateDirLock::take(dir)?;
    let root = Path::new(dir);
    if let (Ok(a), Ok(b)) = (root.canonicalize(), from.canonicalize()) {
        if a == b {
            return Err(format!("{} is state.dir itself", from.display()));
        }
    }
    if let Some(why) = super::rescale::interrupted(dir) {
        return Err(why);
    }
    let mut shards = Vec::new();
    for (i, shard) in from_shards.iter().enumerate() {
        let c = checkpoint::check_chains(&shard.join("checkpoints"))
            .map_err(|e| format!("the backup's shard {i}: {e}"))?;
        if let Some((seq, why)) = c.bad.first() {
            return Err(format!(
                "the backup's shard {i}: checkpoint {seq} does not read back ({why}): nothing changed"
            ));
        }
        shards.push(c.good);
    }
    // What a start with this config would refuse in the backup (another shard count, feature
    // list or lateness): refused now, before state.dir changes.
    let count = super::rescale::shard_count(config).map_err(|e| e.to_string())?;
    let mut as_backup = config.clone();
    as_backup.state.dir = from.to_string_lossy().into_owned();
    let refusals = super::state_check::refusals(&as_backup, count);
    if !refusals.is_empty() {
        return Err(format!(
            "a start with this config would refuse the backup: {} (restore it with the config it was taken with, then `sluice state rescale` if the shard count is what differs): nothing changed",
            refusals.join("; ")
        ));
    }
    if from_shards.len() != count {
        return Err(format!(
            "the backup holds {} shard directories, this config places {count} shards: nothing changed",
            from_shards.len()
        ));
    }

    let staging = root.join(super::rescale::STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| {
            format!(
                "removing an unfinished rescale's {}: {e}",
                staging.display()
            )
        })?;
    }
    let staged = Staged(Some(staging.clone()));
    let owner = std::fs::metadata(root).map_err(|e| format!("{dir}: {e}"))?;
    for (i, shard) in from_shards.iter().enumerate() {
        let into = staging.join(format!("shard-{i}"));
        std::fs::create_dir_all(&into).map_err(|e| format!("making {}: {e}", into.display()))?;
        let cps = shard.join("checkpoints");
        if cps.is_dir() {
            copy_tree(&cps, &into.join("checkpoints"), &mut Default::default())
                .map_err(|e| format!("copying {}: {e}", cps.display()))?;
        }
        let mark = committed_mark::path(shard);
        if mark.exists() {
            std::fs::copy(&mark, committed_mark::path(&into))
                .map_err(|e| format!("copying {}: {e}", mark.display()))?;
        }
    }
    own_like(&staging, owner.uid(), owner.gid())
        .map_err(|e| format!("giving {} state.dir's owner: {e}", staging.display()))?;
    sync_tree(&staging).map_err(|e| format!("syncing {}: {e}", staging.display()))?;
    let had_shards = !super::rescale::shard_dirs(root).is_empty();
    let kept = format!("before-restore-{}", crate::clock::realtime_ns() / 1_000_000);
    // From the mark on the staged shards are the state's future (kept whatever happens).
    let _ = staged.disarm();
    super::rescale::swap_in(config, root, kept.clone(), from_shards.len())
        .map_err(|e| e.to_string())?;
    let kept = root.join(kept);
    let kept = if had_shards {
        Some(kept)
    } else {
        // Nothing was moved aside: no empty directory left to wonder about.
        let _ = std::fs::remove_dir(&kept);
        None
    };
    Ok(Restored {
        shards,
        kept,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Every file and directory under `dir`, and it, owned by `uid`:`gid` (state.dir's owner,
/// the service's user), when they are not already; only root can give files away, and only
/// root's copies need it.
fn own_like(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(dir)?;
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    }
    if m.is_dir() {
        for e in std::fs::read_dir(dir)? {
            own_like(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The staged copy, removed if the restore stops before its swap mark.
struct Staged(Option<PathBuf>);

impl Staged {
    fn disarm(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "removing the unfinished restore's staging directory: {e}");
            }
        }
    }
}
