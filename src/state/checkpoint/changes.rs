//! A committed checkpoint read back as the changes it holds, for the changelog topic
//! (`egress::kafka::changelog`): the newest image of every key it changed, and the keys
//! deleted. Read from the files on disk (in the page cache: just written) by the committer
//! thread, so the shard hands nothing over and nothing is held twice in memory.
//!
//! An incremental checkpoint is not a changelog as it stands: a key that left the hot table
//! since its parent is listed *gone* whether it was evicted to the spill store (its image is
//! there) or deleted (TTL). Each gone key's fate at the flip is therefore looked up: the spill
//! journal's first entry for it if it has one (see `state::snapshot`), else the checkpoint's
//! own RocksDB copy of the spill store, opened read-only. A full checkpoint carries no change
//! list: it is sent whole (every hot and spilled record), and its deletions are not known.

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
    /// The key was deleted since the parent checkpoint.
    Delete(u64),
}

/// What a checkpoint's change set held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// A full checkpoint: every record was sent, deletions are unknown.
    pub full: bool,
    pub puts: u64,
    pub deletes: u64,
}

/// Read checkpoint `path` (committed, verified like a restore) as changes, each handed to
/// `each` once per key; an Err from `each` stops the read and is returned as it is.
pub fn read_changes<E: From<CheckpointError>>(
    path: &Path,
    words: usize,
    mut each: impl FnMut(Change<'_>) -> Result<(), E>,
) -> Result<ChangeCounts, E> {
    let (manifest, hot) = read_verified(path, words)?;
    let corrupt = |reason: &str| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let Sections {
        records,
        gone,
        journal,
    } = sections(&hot, words);
    let image = image_bytes(words);
    let records = hot
        .get(records)
        .ok_or_else(|| corrupt("records outside hot.bin"))?;
    let gone = hot
        .get(gone)
        .ok_or_else(|| corrupt("gone outside hot.bin"))?;
    let journal = hot
        .get(journal)
        .ok_or_else(|| corrupt("journal outside hot.bin"))?;
    let key_of = |b: &[u8]| {
        b.get(..8)
            .and_then(|k| k.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let mut counts = ChangeCounts {
        full: manifest.parent == 0,
        ..ChangeCounts::default()
    };
    let mut sent: HashSet<u64> = HashSet::with_capacity(records.len() / image.max(1));
    for img in records.chunks_exact(image) {
        let key = key_of(img).ok_or_else(|| corrupt("short record"))?;
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
    if counts.full {
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
                each(Change::Put(&v))?;
                counts.puts += 1;
            }
        }
        return Ok(counts);
    }
    for k in gone.chunks_exact(8) {
        let key = key_of(k).ok_or_else(|| corrupt("short gone key"))?;
        // Gone and back before the flip (among the records), or listed gone twice.
        if !sent.insert(key) {
            continue;
        }
        let stored = match at_flip.get(&key) {
            Some(fate) => fate.map(<[u8]>::to_vec),
            None => match &spill {
                Some(db) => db
                    .get(key.to_be_bytes())
                    .map_err(|e| corrupt(&format!("spill copy: {e}")))?,
                None => None,
            },
        };
        match stored {
            Some(img) => {
                each(Change::Put(&img))?;
                counts.puts += 1;
            }
            None => {
                each(Change::Delete(key))?;
                counts.deletes += 1;
            }
        }
    }
    Ok(counts)
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
