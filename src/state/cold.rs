//! The cold store behind `Spill`: where records go when the hot table is full. Production runs
//! RocksDB (`spill::RocksCold`); the deterministic simulation (`crate::sim`) runs
//! `cold_memory::MemoryCold`, an in-memory twin with the same contract, whose checkpoint is one
//! file and whose writes can be made to fail like a full disk. The shard calls it only on a
//! hot-table miss or an eviction (never per hot event), so the dynamic call costs nothing that
//! shows.

use std::path::Path;

use super::record::Record;
use super::SpillError;

/// What `ColdStore::scan` calls for each stored key and image.
pub type ScanFn<'a> = dyn FnMut(u64, &[u8]) -> Result<(), SpillError> + 'a;

/// What `ColdStore::peek_many` calls for each key asked for, in order: its index among the
/// keys and its image (None: not stored).
pub type FoundFn<'a> = dyn FnMut(usize, Option<&[u8]>) -> Result<(), SpillError> + 'a;

/// Puts and deletes written together (`ColdStore::write`): one cycle's spill moves. Reused:
/// `clear` keeps its buffers, so a cycle allocates nothing here once it has grown.
#[derive(Debug, Default)]
pub struct ColdBatch {
    /// (key, image range in `images`; an empty range is a delete), in the order applied.
    ops: Vec<(u64, std::ops::Range<usize>)>,
    images: Vec<u8>,
}

impl ColdBatch {
    pub fn with_capacity(ops: usize, image_bytes: usize) -> Self {
        Self {
            ops: Vec::with_capacity(ops),
            images: Vec::with_capacity(ops * image_bytes),
        }
    }

    /// Put the image `fill` appends.
    pub fn put(&mut self, key: u64, fill: impl FnOnce(&mut Vec<u8>)) {
        let at = self.images.len();
        fill(&mut self.images);
        self.ops.push((key, at..self.images.len()));
    }

    pub fn delete(&mut self, key: u64) {
        self.ops.push((key, 0..0));
    }

    pub fn clear(&mut self) {
        self.ops.clear();
        self.images.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes RocksDB's batch needs for these ops, about (key, length prefixes, tag).
    pub fn bytes_hint(&self) -> usize {
        12 + self.images.len() + self.ops.len() * 16
    }

    /// Each op in order: (key, Some(image)) for a put, (key, None) for a delete.
    pub fn ops(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> + '_ {
        self.ops.iter().map(|(k, r)| {
            let image = (!r.is_empty()).then(|| &self.images[r.clone()]);
            (*k, image)
        })
    }
}

/// Keyed record images, one store per shard. Shared with the checkpoint writer thread, which
/// only calls `checkpoint` and `unflushed_bytes` while the shard goes on.
pub trait ColdStore: Send + Sync {
    fn put(&self, key: u64, image: &[u8]) -> Result<(), SpillError>;
    fn delete(&self, key: u64) -> Result<(), SpillError>;
    /// The key's record (its words into `words`), left in place.
    fn peek(&self, key: u64, words: &mut [u64]) -> Result<Option<Record>, SpillError>;
    /// The images of `keys` (ascending), each handed to `found` in order: one batched read
    /// for a cycle's misses.
    fn peek_many(&self, keys: &[u64], found: &mut FoundFn<'_>) -> Result<(), SpillError>;
    /// The batch's puts and deletes, all or none.
    fn write(&self, batch: &ColdBatch) -> Result<(), SpillError>;
    /// Every stored key and image, in key order (bulk work, never per event).
    fn scan(&self, each: &mut ScanFn<'_>) -> Result<(), SpillError>;
    /// Up to `max` stored keys from `from` on (inclusive), in key order, with their images:
    /// a paced scan in slices (`spill_sweep`), each slice its own short read so no iterator
    /// pins the store's files between slices. Returns the key to go on from; None at the end.
    fn scan_from(
        &self,
        from: u64,
        max: usize,
        each: &mut ScanFn<'_>,
    ) -> Result<Option<u64>, SpillError>;
    /// A consistent copy of the store at `dir` (which must not exist), for a checkpoint.
    fn checkpoint(&self, dir: &Path) -> Result<(), SpillError>;
    /// Bytes a checkpoint writes besides the files it links (RocksDB's memtables): for the
    /// writer's free-space check.
    fn unflushed_bytes(&self) -> u64;
    /// Memory the store holds for its records besides the hot table: RocksDB's table readers
    /// (index and filter blocks), memtables and block cache in use. For reports, not per event.
    fn memory_bytes(&self) -> u64 {
        0
    }
    /// Whether the store has background work running or due (RocksDB's flushes and
    /// compactions): for benchmarks that must not measure a restore's compaction debt.
    fn background_busy(&self) -> bool {
        false
    }
}
