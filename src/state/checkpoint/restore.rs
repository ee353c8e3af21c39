//! Restore: the newest checkpoint whose chain checks out, its spill store put back as it was
//! at the snapshot's flip, then its hot records loaded.

use std::path::{Path, PathBuf};

use super::{disk, io, list, name, CheckpointError, HotHeader, Listing, Manifest};
use crate::state::record::image_bytes;
use crate::state::snapshot::{journal_entry_bytes, JOURNAL_ABSENT, JOURNAL_IMAGE};
use crate::state::{KeyedState, Record, Spill, SpillError};

/// The checkpoint a shard restores from.
#[derive(Debug)]
pub struct RestorePoint {
    /// The newest checkpoint's manifest.
    pub manifest: Manifest,
    pub path: PathBuf,
    /// hot.bin of the full checkpoint and of every incremental one after it up to `path`,
    /// oldest first, each verified.
    chain: Vec<(Manifest, Vec<u8>)>,
}

impl RestorePoint {
    /// Checkpoints read to rebuild the hot records (1 for a full one).
    pub fn chain_len(&self) -> usize {
        self.chain.len()
    }
}

/// The checkpoint at `path` and the ones it builds on, oldest (the full one) first.
fn read_chain(
    path: &Path,
    by_seq: &std::collections::HashMap<u64, PathBuf>,
    words: usize,
) -> Result<Vec<(Manifest, Vec<u8>)>, CheckpointError> {
    let mut chain = Vec::new();
    walk_chain(path, by_seq, words, |m, hot| chain.push((m, hot)))?;
    chain.reverse();
    Ok(chain)
}

/// Each checkpoint of `path`'s chain read and verified, newest first, handed to `each`;
/// returns how many.
fn walk_chain(
    path: &Path,
    by_seq: &std::collections::HashMap<u64, PathBuf>,
    words: usize,
    mut each: impl FnMut(Manifest, Vec<u8>),
) -> Result<usize, CheckpointError> {
    let mut read = 0;
    let mut at = path.to_owned();
    loop {
        let (m, hot) = read_verified(&at, words)?;
        let parent = m.parent;
        each(m, hot);
        read += 1;
        if parent == 0 {
            return Ok(read);
        }
        at = by_seq
            .get(&parent)
            .cloned()
            .ok_or_else(|| CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: format!("builds on checkpoint {parent}, which is gone"),
            })?;
        if read > by_seq.len() {
            return Err(CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: "its chain of parents loops".into(),
            });
        }
    }
}

/// What `sluice state show --verify` found in one shard's checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    /// The newest checkpoint whose whole chain reads back with its checksums and sizes, and
    /// how many checkpoints that chain holds.
    pub good: Option<(u64, usize)>,
    /// Newer ones whose chain does not, each with why: a start (`RestoreTarget::Newest`) sets
    /// them aside and restores `good`.
    pub bad: Vec<(u64, String)>,
}

/// Read and check, changing nothing, the chains a start would try, newest first, until one
/// reads back whole: each checkpoint's manifest, hot.bin's size, checksum and header, and
/// that its spill directory is there (RocksDB's files are not opened). Each hot.bin is
/// checked against its own header's record width, so the config's features need not match.
pub fn check_chains(root: &Path) -> Result<ChainCheck, CheckpointError> {
    let Listing { done, .. } = list(root)?;
    let by_seq: std::collections::HashMap<u64, PathBuf> = done.iter().cloned().collect();
    let mut bad = Vec::new();
    for (seq, path) in &done {
        let words = header_words(&path.join("hot.bin"));
        match walk_chain(path, &by_seq, words, |_, _| {}) {
            Ok(chain) => {
                return Ok(ChainCheck {
                    good: Some((*seq, chain)),
                    bad,
                })
            }
            Err(e) => bad.push((*seq, e.to_string())),
        }
    }
    Ok(ChainCheck { good: None, bad })
}

/// The directories of the newest committed checkpoint's chain under `root` (it, then the
/// ones it builds on, down to the full one), as the manifests name them; unverified. Empty
/// when there is none. What `sluice state backup` pins: a chain whose member is pruned
/// meanwhile is found missing when its files are linked, and taken again.
pub fn newest_chain_dirs(root: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let Listing { done, .. } = list(root)?;
    let by_seq: std::collections::HashMap<u64, PathBuf> = done.iter().cloned().collect();
    'newest: for (_, path) in &done {
        let mut chain = vec![path.clone()];
        loop {
            let Some(at) = chain.last() else {
                continue 'newest;
            };
            let Ok(text) = std::fs::read_to_string(at.join("COMMIT")) else {
                continue 'newest;
            };
            let Ok(m) = Manifest::parse(&text) else {
                continue 'newest;
            };
            if m.parent == 0 {
                return Ok(chain);
            }
            match by_seq.get(&m.parent) {
                Some(parent) if chain.len() <= by_seq.len() => chain.push(parent.clone()),
                _ => continue 'newest,
            }
        }
    }
    Ok(Vec::new())
}

/// The record width a hot.bin's header gives (0 when it does not read: the check then
/// fails on the header and says so).
fn header_words(hot: &Path) -> usize {
    use std::io::Read as _;
    let mut head = [0u8; 16];
    let read = std::fs::File::open(hot).and_then(|mut f| f.read_exact(&mut head));
    match (read, head.get(12..16)) {
        (Ok(()), Some(w)) if head.starts_with(super::MAGIC) => {
            w.try_into().map_or(0, |w| u32::from_le_bytes(w) as usize)
        }
        _ => 0,
    }
}

/// Find the newest checkpoint under `root` whose whole chain (it, and the incremental ones
/// and the full one it builds on) is good, and install its spill store at `spill_dir`, opened
/// with `open` (emptied when nothing is restored). Incomplete or corrupt checkpoints are
/// logged and skipped for older ones; one written for another layout is an error (restoring
/// it would put keys on the wrong shards or misread their words). The caller then loads the
/// hot records with `load_records`.
pub fn restore(
    root: &Path,
    layout: &str,
    spill_dir: &Path,
    words: usize,
    open: impl FnMut(&Path, Option<u64>) -> Result<Spill, SpillError>,
) -> Result<(Spill, Option<RestorePoint>), CheckpointError> {
    restore_to(root, layout, spill_dir, words, open, RestoreTarget::Newest)
}

/// Which checkpoint a restore may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The newest whose chain checks out (older ones when it does not).
    Newest,
    /// exactly_once: this one, which the last committed Kafka transaction names. Newer ones
    /// belong to transactions that never committed and are deleted; if this one is missing or
    /// corrupt the restore fails (an older one would replay Scores already committed).
    Exactly(u64),
    /// exactly_once with no committed transaction yet: none. Checkpoints found are set aside
    /// (renamed, not deleted: they may be a run in another delivery mode).
    Nothing,
    /// exactly_once: the last committed transaction names this checkpoint, which is not on
    /// this disk, and the state is rebuilt from elsewhere (the changelog topic): none is
    /// restored, and checkpoints found (older ones) are set aside like `Nothing`'s.
    Elsewhere(u64),
}

/// `restore` with a target (see `RestoreTarget`).
pub fn restore_to(
    root: &Path,
    layout: &str,
    spill_dir: &Path,
    words: usize,
    mut open: impl FnMut(&Path, Option<u64>) -> Result<Spill, SpillError>,
    target: RestoreTarget,
) -> Result<(Spill, Option<RestorePoint>), CheckpointError> {
    let Listing { done, partial } = list(root)?;
    for p in partial {
        tracing::warn!(path = %p.display(), "removing an incomplete checkpoint (the process stopped while writing it)");
        disk::remove_dir_all(&p).map_err(io(&p))?;
    }
    let done = match target {
        RestoreTarget::Newest => done,
        RestoreTarget::Nothing | RestoreTarget::Elsewhere(_) => {
            if !done.is_empty() {
                let stamp = crate::clock::realtime_ns() / 1_000_000;
                // Two restarts in one millisecond (or a clock stepped back) must not collide
                // with the first one's: the rename would fail and the shard not start (found by
                // the simulation).
                let aside = (0..1000u32)
                    .map(|n| match n {
                        0 => root.with_extension(format!("uncommitted-{stamp}")),
                        n => root.with_extension(format!("uncommitted-{stamp}-{n}")),
                    })
                    .find(|p| !p.exists())
                    // A thousand taken: the rename below fails and says where.
                    .unwrap_or_else(|| root.with_extension(format!("uncommitted-{stamp}")));
                match target {
                    RestoreTarget::Elsewhere(want) => {
                        tracing::warn!(from = %root.display(), to = %aside.display(), "the last committed Kafka transaction names checkpoint {want}, which is not here: the state is rebuilt from the changelog; the older checkpoints found are set aside")
                    }
                    _ => {
                        tracing::warn!(from = %root.display(), to = %aside.display(), "no committed Kafka transaction names a checkpoint: starting empty; the checkpoints found are set aside")
                    }
                }
                disk::rename(root, &aside).map_err(io(root))?;
                // Syncs the parent, which makes the rename durable too: a power loss must not
                // bring the set-aside checkpoints back over the new root and what is written
                // into it.
                disk::create_dir_all_synced(root).map_err(io(root))?;
            }
            return Ok((open(spill_dir, None)?, None));
        }
        RestoreTarget::Exactly(want) => {
            let (newer, keep): (Vec<_>, Vec<_>) = done.into_iter().partition(|(s, _)| *s > want);
            for (seq, path) in newer {
                tracing::warn!(seq, "removing checkpoint {seq}: its Kafka transaction never committed (the last committed one names {want})");
                disk::remove_dir_all(&path).map_err(io(&path))?;
            }
            if !keep.iter().any(|(s, _)| *s == want) {
                return Err(CheckpointError::Corrupt {
                    path: root.join(name(want)),
                    reason: format!("the last committed Kafka transaction names checkpoint {want}, which is not here: exactly-once state cannot be restored (was state.dir moved or cleaned? Move the progress topic's records or start with a new egress.kafka.transactional_id_prefix to start over)"),
                });
            }
            keep
        }
    };
    let by_seq: std::collections::HashMap<u64, PathBuf> = done.iter().cloned().collect();
    for (seq, path) in done {
        if let RestoreTarget::Exactly(want) = target {
            if seq != want {
                continue;
            }
        }
        let chain = match read_chain(&path, &by_seq, words) {
            Ok(c) => c,
            Err(e) if matches!(target, RestoreTarget::Exactly(_)) => return Err(e),
            // A downgrade: stop, never set the newer state aside for an older one.
            Err(e @ CheckpointError::Newer { .. }) => return Err(e),
            Err(e) => {
                set_aside(&path, &e)?;
                continue;
            }
        };
        let Some((manifest, _)) = chain.last() else {
            continue;
        };
        let manifest = manifest.clone();
        // A dealt state whose input topics grew to multiples of their partitions restores
        // into the grown layout (`layout_grows_into`: each added partition joins its family).
        if let Some((m, _)) = chain.iter().find(|(m, _)| {
            m.layout != layout
                && !crate::ingest::kafka::partitions::layout_grows_into(&m.layout, layout)
        }) {
            return Err(CheckpointError::Mismatch {
                path,
                root: root.to_owned(),
                found: m.layout.clone(),
                want: layout.to_owned(),
            });
        }
        install_spill(&path.join("spill"), spill_dir)?;
        match open(spill_dir, Some(manifest.spilled)) {
            Ok(mut spill) => {
                if let Some((_, hot)) = chain.last() {
                    replay_journal(hot, words, |key, image| {
                        spill
                            .restore_entry(key, image)
                            .map_err(|e| format!("replaying the spill journal: {e}"))
                    })
                    .map_err(|reason| CheckpointError::Corrupt {
                        path: path.clone(),
                        reason,
                    })?;
                }
                return Ok((
                    spill,
                    Some(RestorePoint {
                        manifest,
                        path,
                        chain,
                    }),
                ));
            }
            Err(e) => set_aside(&path, &e.into())?,
        }
    }
    if let RestoreTarget::Exactly(want) = target {
        return Err(CheckpointError::Corrupt {
            path: root.join(name(want)),
            reason: "the checkpoint the last committed Kafka transaction names does not open: exactly-once state cannot be restored".into(),
        });
    }
    Ok((open(spill_dir, None)?, None))
}

/// A checkpoint restore cannot use is renamed `ckpt-N.bad` (kept for a look, no longer
/// listed). Left in place, it would stay the newest: the checkpoints after the restore are
/// numbered from the older one restored, so pruning counted the bad one as the newest full
/// checkpoint and deleted every new one as soon as it was written (found by the simulation,
/// seed 14).
fn set_aside(path: &Path, why: &CheckpointError) -> Result<(), CheckpointError> {
    let bad = path.with_extension("bad");
    tracing::error!(path = %path.display(), aside = %bad.display(), "skipping checkpoint, set aside: {why}");
    if bad.exists() {
        disk::remove_dir_all(&bad).map_err(io(&bad))?;
    }
    disk::rename(path, &bad).map_err(io(path))
}

/// The layout the newest committed checkpoint under `root` was written for (None: there is
/// no readable one). For a start that cannot learn part of its layout yet — Kafka's partition
/// table while the brokers are unreachable —: the restore checks against what the checkpoint
/// says, and the caller checks that part once it can.
pub fn newest_layout(root: &Path) -> Result<Option<String>, CheckpointError> {
    Ok(newest_manifest(root)?.map(|m| m.layout))
}

/// The manifest of the newest committed checkpoint under `root` that reads. Its chain is not
/// checked (that is the restore's work): what the layout look needs.
pub fn newest_manifest(root: &Path) -> Result<Option<Manifest>, CheckpointError> {
    Ok(committed(root)?.0)
}

/// `newest_manifest`, and how many committed checkpoints `root` holds (its `ckpt-N`
/// directories), from one listing: what `sluice state show` prints per shard.
pub fn committed(root: &Path) -> Result<(Option<Manifest>, usize), CheckpointError> {
    let Listing { done, .. } = list(root)?;
    let newest = done.iter().find_map(|(_, path)| {
        let text = std::fs::read_to_string(path.join("COMMIT")).ok()?;
        Manifest::parse(&text).ok()
    });
    Ok((newest, done.len()))
}

/// Read a checkpoint's manifest and hot records, checking the commit marker, the checksums
/// and the sizes.
pub fn read_verified(path: &Path, words: usize) -> Result<(Manifest, Vec<u8>), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let commit = path.join("COMMIT");
    let text = std::fs::read_to_string(&commit)
        .map_err(|e| corrupt(format!("no readable COMMIT marker ({e}): incomplete")))?;
    if let Some(found) = Manifest::newer_format(&text) {
        return Err(CheckpointError::Newer {
            path: path.to_owned(),
            found,
        });
    }
    let hot = std::fs::read(path.join("hot.bin")).map_err(|e| corrupt(format!("hot.bin: {e}")))?;
    let verified = verify(path, &text, hot, words)?;
    if !path.join("spill").is_dir() {
        return Err(corrupt("no spill/ directory".into()));
    }
    Ok(verified)
}

/// The checks of `read_verified` on the files' contents: the manifest parses, hot.bin has
/// its size and checksum, and its header's counts match the manifest and add up to its size.
fn verify(
    path: &Path,
    text: &str,
    hot: Vec<u8>,
    words: usize,
) -> Result<(Manifest, Vec<u8>), CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let manifest = Manifest::parse(text).map_err(corrupt)?;
    if hot.len() as u64 != manifest.hot_bytes {
        return Err(corrupt(format!(
            "hot.bin is {} bytes, COMMIT says {}",
            hot.len(),
            manifest.hot_bytes
        )));
    }
    if crc32fast::hash(&hot) != manifest.hot_crc {
        return Err(corrupt("hot.bin checksum mismatch".into()));
    }
    let header_ok = HotHeader::decode(&hot).is_some_and(|(h, len)| {
        // Checked: counts from a file must not wrap around into a size that matches (found
        // by reasoning about the restore fuzz target: 2^60 records of 48 bytes wrap to 0).
        let want = h
            .records
            .checked_mul(image_bytes(words) as u64)
            .zip(h.gone.checked_mul(h.gone_bytes() as u64))
            .zip(h.changed.checked_mul(8))
            .zip(h.journal.checked_mul(journal_entry_bytes(words) as u64))
            .and_then(|(((r, g), c), j)| {
                (len as u64)
                    .checked_add(r)?
                    .checked_add(g)?
                    .checked_add(c)?
                    .checked_add(j)
            });
        h.words as usize == words
            && h.records == manifest.hot_records
            && h.gone == manifest.gone
            && want == Some(hot.len() as u64)
    });
    if !header_ok {
        return Err(corrupt(format!(
            "hot.bin header or size does not match {} records of {} words",
            manifest.hot_records, words
        )));
    }
    Ok((manifest, hot))
}

/// A chain of checkpoints (a full one, then any incremental ones after it, oldest first)
/// given as their files' contents, each checked and the whole loaded into `state` as a
/// restore would, the newest one's spill journal parsed but applied to nothing: the restore
/// fuzz target (`sluice-fuzz restore`). The parent links are not checked (the restore checks
/// them on the directory names before it reads a file). Returns the records loaded and the
/// journal entries parsed.
pub fn load_bytes(
    chain: Vec<(&str, Vec<u8>)>,
    state: &mut KeyedState,
) -> Result<(u64, u64), CheckpointError> {
    let path = Path::new("<bytes>");
    let words = state.plan().words();
    let chain = chain
        .into_iter()
        .map(|(commit, hot)| verify(path, commit, hot, words))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((manifest, hot)) = chain.last() else {
        return Err(CheckpointError::Corrupt {
            path: path.to_owned(),
            reason: "an empty chain".into(),
        });
    };
    let mut entries = 0u64;
    replay_journal(hot, words, |_, _| {
        entries += 1;
        Ok(())
    })
    .map_err(|reason| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    })?;
    let point = RestorePoint {
        manifest: manifest.clone(),
        path: path.to_owned(),
        chain,
    };
    Ok((load_records(state, &point)?, entries))
}

/// Put a checkpoint's spill store in place of the live one: table files are immutable, so
/// they are hard-linked; everything else (MANIFEST, CURRENT, OPTIONS) is copied, because the
/// live store appends to it.
fn install_spill(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(io(to))?;
    }
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let is_table = src.extension().is_some_and(|e| e == "sst");
        let linked = is_table && std::fs::hard_link(&src, &dst).is_ok();
        if !linked {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Load a restore point's hot records into `state` (built on the spill store `restore`
/// returned); returns how many. The incremental checkpoints of the chain are folded first
/// into the newest fate of each key they touch (an image, or gone); the full checkpoint's
/// records are then loaded except those keys, then the touched keys' newest images. So only
/// the final hot set is inserted, whatever `state.hot_capacity` is now.
pub fn load_records(state: &mut KeyedState, point: &RestorePoint) -> Result<u64, CheckpointError> {
    let words = state.plan().words();
    let image = image_bytes(words);
    let corrupt = |reason: &str| CheckpointError::Corrupt {
        path: point.path.clone(),
        reason: reason.to_owned(),
    };
    let key_at = |b: &[u8]| -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(
            b.get(..8)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| corrupt("short record"))?,
        ))
    };
    let records = |hot: &[u8]| sections(hot, words).records;
    // Every fate the incremental part of the chain gives a key, in chain order: its image
    // (checkpoint, offset), or None when the key left the hot table. Within a checkpoint the
    // gone list comes before the records (a key gone and back is hot).
    let fates_max: usize = point
        .chain
        .iter()
        .skip(1)
        .map(|(_, hot)| {
            let s = sections(hot, words);
            s.gone.len() / s.gone_bytes.max(1) + s.records.len() / image.max(1)
        })
        .sum();
    let mut fates: Vec<(u64, Option<(usize, usize)>)> = Vec::with_capacity(fates_max);
    for (i, (_, hot)) in point.chain.iter().enumerate().skip(1) {
        let s = sections(hot, words);
        let recs = s.records;
        for key in part(hot, s.gone, &point.path)?.chunks_exact(s.gone_bytes) {
            fates.push((key_at(key)?, None));
        }
        for (j, img) in part(hot, recs.clone(), &point.path)?
            .chunks_exact(image)
            .enumerate()
        {
            fates.push((key_at(img)?, Some((i, recs.start + j * image))));
        }
    }
    // Each touched key's newest fate: the last one in chain order; an older one is cleared as
    // the map meets the newer (so the fates left with an image are the images to load). A
    // hash map, asked once per record of the full checkpoint, never iterated: its random
    // order decides nothing. The load order (full checkpoint's records in file order, then the
    // newest images in chain order) decides hot slots and so the eviction order, which the
    // deterministic simulation needs the same in every run of a seed. (Until 2026-12-02 an
    // ordered map keyed by entity key: at 1M keys and a 50-checkpoint chain its lookups and
    // the images read in key order — all over the chain — were most of the extra second.)
    let mut newest: std::collections::HashMap<u64, usize> =
        std::collections::HashMap::with_capacity(fates.len());
    for at in 0..fates.len() {
        let Some(&(key, _)) = fates.get(at) else {
            break;
        };
        if let Some((_, fate)) = newest
            .insert(key, at)
            .and_then(|older| fates.get_mut(older))
        {
            *fate = None;
        }
    }
    let mut w = vec![0u64; words];
    let mut n = 0;
    let mut load = |img: &[u8], state: &mut KeyedState| -> Result<(), CheckpointError> {
        let rec = Record::read_image(img, &mut w)
            .ok_or_else(|| corrupt("record image of the wrong size"))?;
        // A key twice in one snapshot would be two records in the table.
        if state.hot().find(rec.key).is_some() {
            return Err(corrupt("a key appears twice among the hot records"));
        }
        state.restore(rec, &w)?;
        n += 1;
        Ok(())
    };
    if let Some((_, hot)) = point.chain.first() {
        for img in part(hot, records(hot), &point.path)?.chunks_exact(image) {
            if !newest.contains_key(&key_at(img)?) {
                load(img, state)?;
            }
        }
    }
    for (i, at) in fates.iter().filter_map(|(_, fate)| *fate) {
        let img = point
            .chain
            .get(i)
            .and_then(|(_, hot)| hot.get(at..at.saturating_add(image)))
            .ok_or_else(|| corrupt("a record outside hot.bin"))?;
        load(img, state)?;
    }
    state.stats.observations_applied = point.manifest.observations_applied;
    Ok(n)
}

/// A section of hot.bin (an error, never a panic, if it lies outside).
fn part<'a>(
    hot: &'a [u8],
    r: std::ops::Range<usize>,
    path: &Path,
) -> Result<&'a [u8], CheckpointError> {
    hot.get(r).ok_or_else(|| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: "a section outside hot.bin".into(),
    })
}

/// Where the parts of a verified hot.bin lie.
pub(super) struct Sections {
    pub records: std::ops::Range<usize>,
    pub gone: std::ops::Range<usize>,
    /// Bytes of one gone entry (16: key and source; 8 before format 4: the key).
    pub gone_bytes: usize,
    pub changed: std::ops::Range<usize>,
    pub journal: std::ops::Range<usize>,
}

/// The parts of a hot.bin that `read_verified` accepted (its sizes add up).
pub(super) fn sections(hot: &[u8], words: usize) -> Sections {
    let (h, start) = HotHeader::decode(hot).unwrap_or((
        HotHeader {
            format: 0,
            words: 0,
            records: 0,
            gone: 0,
            journal: 0,
            changed: 0,
        },
        hot.len(),
    ));
    // Saturating: `verify` has checked that these add up to hot.len(); anything else is cut
    // off by `part`, not wrapped.
    let len = |n: u64, each: usize| (n as usize).saturating_mul(each);
    let records = start..start.saturating_add(len(h.records, image_bytes(words)));
    let gone = records.end..records.end.saturating_add(len(h.gone, h.gone_bytes()));
    let changed = gone.end..gone.end.saturating_add(len(h.changed, 8));
    let journal = changed.end
        ..changed
            .end
            .saturating_add(len(h.journal, journal_entry_bytes(words)))
            .min(hot.len());
    Sections {
        records,
        gone,
        gone_bytes: h.gone_bytes(),
        changed,
        journal,
    }
}

/// Put the spill store back as it was at the snapshot's flip: the journal's entries applied
/// newest first, so each key ends as its first entry says (see `state::snapshot`).
fn replay_journal(
    hot: &[u8],
    words: usize,
    mut put: impl FnMut(u64, Option<&[u8]>) -> Result<(), String>,
) -> Result<(), String> {
    let entry = journal_entry_bytes(words);
    let journal = hot
        .get(sections(hot, words).journal)
        .ok_or("the spill journal lies outside hot.bin")?;
    let word = |e: &[u8], at: usize| -> Result<u64, String> {
        e.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| "short journal entry".to_owned())
    };
    for e in journal.chunks_exact(entry).rev() {
        let (key, kind) = (word(e, 0)?, word(e, 8)?);
        let image = e.get(16..).ok_or("short journal entry")?;
        let image = match kind {
            JOURNAL_ABSENT => None,
            JOURNAL_IMAGE => Some(image),
            _ => return Err(format!("unknown spill journal entry kind {kind}")),
        };
        put(key, image)?;
    }
    Ok(())
}
