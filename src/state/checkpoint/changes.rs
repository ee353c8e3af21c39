//! A committed checkpoint read back as the changes it holds, for the changelog topic
//! (`egress::kafka::changelog`): the newest image of every key it changed, and the keys
//! deleted. Read from the files on disk (in the page cache: just written) by the committer
//! thread, so the shard hands nothing over and nothing is held twice in memory.
//!
//! A change set is not a changelog as it stands: a key that left the hot table since the
//! previous flip is listed *gone* whether it was evicted to the spill store (its image is
//! there) or deleted (TTL). Each gone key's fate at the flip is therefore looked up: the spill
//! journal's first entry for it if it has one (see `state::snapshot`), else the checkpoint's
//! own RocksDB copy of the spill store, opened read-only. A full checkpoint carries its change
//! set too (the keys changed since the previous flip, and the gone ones) when its change lists
//! were complete; without one it is sent whole (every hot and spilled record, no deletions).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rocksdb::{IteratorMode, Options, DB};

use super::restore::{read_verified, sections, Sections};
use super::CheckpointError;
use crate::state::record::image_bytes;
use crate::state::snapshot::{journal_entry_bytes, JOURNAL_ABSENT, JOURNAL_IMAGE};

/// One change, in the order a changelog must apply them (a key at most once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// The key's record image at the flip (the layout of hot.bin's records and spilled values).
    Put(&'a [u8]),
    /// The key was deleted since the checkpoint the change set leads on from; `source` is the
    /// one it belonged to (None in a checkpoint written before format 4 kept it).
    Delete { key: u64, source: Option<u64> },
    /// Handed over first, before any Put, when the checkpoint is read whole: every record it
    /// holds follows (so a changelog can mark where a whole state starts).
    WholeFollows,
}

/// What a checkpoint's change set held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// Sent whole (every record, no deletions): the checkpoint has no change set leading on
    /// from the state the changelog holds.
    pub whole: bool,
    pub puts: u64,
    pub deletes: u64,
}

/// Read checkpoint `path` (committed, verified like a restore) as changes, each handed to
/// `each` once per key. `holds`: the checkpoint whose state the changelog holds already.
/// When the checkpoint's change set leads on from it (`Manifest::since`), only the change set
/// is read (an incremental checkpoint's records and gone keys; a full one's changed and gone
/// keys); otherwise a full checkpoint is read whole, and an incremental one is refused (its
/// records alone are not the state). An Err from `each` stops the read and is returned.
pub fn read_changes<E: From<CheckpointError>>(
    path: &Path,
    words: usize,
    holds: Option<u64>,
    mut each: impl FnMut(Change<'_>) -> Result<(), E>,
) -> Result<ChangeCounts, E> {
    let (manifest, hot) = read_verified(path, words)?;
    let corrupt = |reason: &str| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let whole = manifest.since == 0 || Some(manifest.since) != holds;
    if whole && manifest.parent != 0 {
        return Err(corrupt(&format!(
            "its change set leads on from checkpoint {}, but the changelog holds {holds:?}: an incremental checkpoint cannot be sent whole",
            manifest.since
        ))
        .into());
    }
    let Sections {
        records,
        gone,
        gone_bytes,
        changed,
        journal,
    } = sections(&hot, words);
    let image = image_bytes(words);
    let section = |r: std::ops::Range<usize>| {
        hot.get(r)
            .ok_or_else(|| corrupt("a section outside hot.bin"))
    };
    let (records, gone, changed, journal) = (
        section(records)?,
        section(gone)?,
        section(changed)?,
        section(journal)?,
    );
    let key_of = |b: &[u8]| {
        b.get(..8)
            .and_then(|k| k.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let mut counts = ChangeCounts {
        whole,
        ..ChangeCounts::default()
    };
    // A full checkpoint sent as its change set: only the hot records of its changed keys.
    let changed: Option<HashSet<u64>> = (!whole && manifest.parent == 0)
        .then(|| changed.chunks_exact(8).filter_map(key_of).collect());
    let mut sent: HashSet<u64> = HashSet::new();
    if whole {
        each(Change::WholeFollows)?;
    }
    for img in records.chunks_exact(image) {
        let key = key_of(img).ok_or_else(|| corrupt("short record"))?;
        if changed.as_ref().is_some_and(|c| !c.contains(&key)) {
            continue;
        }
        sent.insert(key);
        each(Change::Put(img))?;
        counts.puts += 1;
    }
    // The spill store at the flip: the journal's first entry per key, else the RocksDB copy.
    let mut at_flip: HashMap<u64, Option<&[u8]>> = HashMap::new();
    for e in journal.chunks_exact(journal_entry_bytes(words)) {
        let key = key_of(e).ok_or_else(|| corrupt("short journal entry"))?;
        let kind = e.get(8..16).and_then(key_of);
        let fate = match kind {
            Some(JOURNAL_ABSENT) => None,
            Some(JOURNAL_IMAGE) => Some(e.get(16..).ok_or_else(|| corrupt("short journal"))?),
            _ => return Err(corrupt("unknown spill journal entry kind").into()),
        };
        at_flip.entry(key).or_insert(fate);
    }
    let spill = open_spill_copy(&path.join("spill"))?;
    if whole {
        for (key, fate) in &at_flip {
            if let (Some(img), false) = (fate, sent.contains(key)) {
                each(Change::Put(img))?;
                counts.puts += 1;
            }
        }
        if let Some(db) = &spill {
            for item in db.iterator(IteratorMode::Start) {
                let (k, v) = item.map_err(|e| corrupt(&format!("spill copy: {e}")))?;
                let key = <[u8; 8]>::try_from(&*k)
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("a spill copy key that is not 8 bytes"))?;
                if at_flip.contains_key(&key) || sent.contains(&key) {
                    continue;
                }
                each(Change::Put(&full_image(path, key, &v, words)?))?;
                counts.puts += 1;
            }
        }
        return Ok(counts);
    }
    for entry in gone.chunks_exact(gone_bytes) {
        let key = key_of(entry).ok_or_else(|| corrupt("short gone key"))?;
        let source = entry.get(8..16).and_then(key_of);
        // Gone and back before the flip (among the records), or listed gone twice.
        if !sent.insert(key) {
            continue;
        }
        let stored = match at_flip.get(&key) {
            Some(fate) => fate.map(<[u8]>::to_vec),
            None => match &spill {
                Some(db) => db
                    .get(key.to_be_bytes())
                    .map_err(|e| corrupt(&format!("spill copy: {e}")))?
                    .map(|v| full_image(path, key, &v, words))
                    .transpose()?,
                None => None,
            },
        };
        match stored {
            Some(img) => {
                each(Change::Put(&img))?;
                counts.puts += 1;
            }
            None => {
                each(Change::Delete { key, source })?;
                counts.deletes += 1;
            }
        }
    }
    Ok(counts)
}

/// A spill store value (packed, `spill_image`) as the record image a changelog carries.
fn full_image(
    path: &Path,
    key: u64,
    stored: &[u8],
    words: usize,
) -> Result<Vec<u8>, CheckpointError> {
    let mut w = vec![0u64; words];
    let rec = crate::state::spill_image::unpack(key, stored, &mut w).ok_or_else(|| {
        CheckpointError::Corrupt {
            path: path.to_owned(),
            reason: format!("the spill copy holds a malformed record for key {key}"),
        }
    })?;
    let mut img = Vec::with_capacity(image_bytes(words));
    rec.append_image(&w, &mut img);
    Ok(img)
}

/// The checkpoint's copy of the spill store, read-only (None: the shard had no spill store, so
/// the copy is an empty directory). Its info log goes to the OS temp dir, not into the
/// checkpoint, which stays as the writer left it.
fn open_spill_copy(dir: &Path) -> Result<Option<DB>, CheckpointError> {
    if !dir.join("CURRENT").exists() {
        return Ok(None);
    }
    let mut opts = Options::default();
    opts.set_db_log_dir(std::env::temp_dir());
    opts.set_max_open_files(64);
    DB::open_for_read_only(&opts, dir, false)
        .map(Some)
        .map_err(|e| CheckpointError::Corrupt {
            path: dir.to_owned(),
            reason: format!("its spill store copy does not open read-only: {e}"),
        })
}
