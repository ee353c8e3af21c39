//! The in-memory twin of the RocksDB cold store, for the deterministic simulation
//! (`crate::sim`) and tests: the `ColdStore` contract on a `BTreeMap`, a checkpoint that is one
//! file (`cold.bin`), and writes that can be made to fail like a full disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::cold::{ColdBatch, ColdStore, FoundFn, ScanFn};
use super::record::Record;
use super::SpillError;

/// The twin's checkpoint file in a checkpoint's `spill/` directory.
pub const MEMORY_FILE: &str = "cold.bin";
const MEMORY_MAGIC: &[u8; 8] = b"SLUICECM";

/// The in-memory twin of the RocksDB store (simulation and tests). A `BTreeMap` behind a
/// mutex: the writer thread (or the simulation's stepped writer) reads it for checkpoints.
pub struct MemoryCold {
    map: Mutex<BTreeMap<u64, Box<[u8]>>>,
    /// Set: every write fails as RocksDB's would on a full disk.
    full: Arc<AtomicBool>,
}

impl MemoryCold {
    /// An empty store, or (`restored`) the one a checkpoint left at `dir` (its `cold.bin`).
    /// `full` is the fault switch the caller keeps.
    pub fn open(dir: &Path, restored: bool, full: Arc<AtomicBool>) -> Result<Self, SpillError> {
        let mut map = BTreeMap::new();
        if restored {
            let path = dir.join(MEMORY_FILE);
            let bytes = std::fs::read(&path).map_err(|source| SpillError::TwinFile {
                path: path.clone(),
                source,
            })?;
            map = decode(&bytes).ok_or(SpillError::Twin("cold.bin is corrupt"))?;
        }
        Ok(Self {
            map: Mutex::new(map),
            full,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Box<[u8]>>> {
        // A panic while holding it cannot leave the map half-changed (one insert or remove).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writable(&self) -> Result<(), SpillError> {
        if self.full.load(Ordering::Relaxed) {
            return Err(SpillError::Twin("no space left on device (injected)"));
        }
        Ok(())
    }
}

/// magic, count, then (key, length, image) each, then the CRC32 of everything before it.
fn encode(map: &BTreeMap<u64, Box<[u8]>>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MEMORY_MAGIC);
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(b: &[u8]) -> Option<BTreeMap<u64, Box<[u8]>>> {
    let (body, crc) = b.split_at(b.len().checked_sub(4)?);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    if body.get(..8)? != MEMORY_MAGIC {
        return None;
    }
    let u64_at = |i: usize| Some(u64::from_le_bytes(body.get(i..i + 8)?.try_into().ok()?));
    let n = u64_at(8)?;
    let mut at = 16;
    let mut map = BTreeMap::new();
    for _ in 0..n {
        let key = u64_at(at)?;
        let len = u32::from_le_bytes(body.get(at + 8..at + 12)?.try_into().ok()?) as usize;
        let image = body.get(at + 12..at + 12 + len)?;
        map.insert(key, image.into());
        at += 12 + len;
    }
    (at == body.len()).then_some(map)
}

impl ColdStore for MemoryCold {
    fn put(&self, key: u64, image: &[u8]) -> Result<(), SpillError> {
        self.writable()?;
        self.map().insert(key, image.into());
        Ok(())
    }

    fn delete(&self, key: u64) -> Result<(), SpillError> {
        self.writable()?;
        self.map().remove(&key);
        Ok(())
    }

    fn peek(&self, key: u64, words: &mut [u64]) -> Result<Option<Record>, SpillError> {
        match self.map().get(&key) {
            None => Ok(None),
            Some(img) => super::spill_image::unpack(key, img, words)
                .map(Some)
                .ok_or(SpillError::Corrupt(key)),
        }
    }

    fn peek_many(&self, keys: &[u64], found: &mut FoundFn<'_>) -> Result<(), SpillError> {
        let map = self.map();
        for (i, k) in keys.iter().enumerate() {
            found(i, map.get(k).map(|v| &v[..]))?;
        }
        Ok(())
    }

    fn write(&self, batch: &ColdBatch) -> Result<(), SpillError> {
        self.writable()?;
        let mut map = self.map();
        for (key, image) in batch.ops() {
            match image {
                Some(img) => map.insert(key, img.into()),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn scan_from(
        &self,
        from: u64,
        max: usize,
        each: &mut ScanFn<'_>,
    ) -> Result<Option<u64>, SpillError> {
        let map = self.map();
        let mut entries = map.range(from..);
        for (k, v) in entries.by_ref().take(max) {
            each(*k, v)?;
        }
        Ok(entries.next().map(|(k, _)| *k))
    }

    fn scan(&self, each: &mut ScanFn<'_>) -> Result<(), SpillError> {
        for (k, v) in self.map().iter() {
            each(*k, v)?;
        }
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), SpillError> {
        // Like a RocksDB checkpoint on a full disk: the flush it needs fails.
        self.writable()?;
        let bytes = encode(&self.map());
        let io = |source| SpillError::TwinFile {
            path: dir.to_owned(),
            source,
        };
        // Durable as a RocksDB checkpoint is (its files and directory synced): the
        // checkpoint writer counts on it before it syncs the checkpoint's own names.
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(MEMORY_FILE);
        let mut f = std::fs::File::create(&path).map_err(io)?;
        std::io::Write::write_all(&mut f, &bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    fn unflushed_bytes(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_twin_checkpoint_reads_back_and_a_flipped_bit_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-cold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let full = Arc::new(AtomicBool::new(false));
        let a = MemoryCold::open(&dir, false, full.clone()).unwrap();
        let mut img = Vec::new();
        Record::fresh(7, 5).append_image(&[1, 2], &mut img);
        a.put(7, &img).unwrap();
        a.checkpoint(&dir.join("cp")).unwrap();
        let b = MemoryCold::open(&dir.join("cp"), true, full.clone()).unwrap();
        let mut w = [0u64; 2];
        assert_eq!(b.peek(7, &mut w).unwrap().map(|r| r.key), Some(7));
        assert_eq!(w, [1, 2]);
        full.store(true, Ordering::Relaxed);
        assert!(b.put(8, &img).is_err());
        assert!(b.checkpoint(&dir.join("cp2")).is_err());
        let path = dir.join("cp").join(MEMORY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(MemoryCold::open(&dir.join("cp"), true, full).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
