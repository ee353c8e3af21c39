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

/// Keyed record images, one store per shard. Shared with the checkpoint writer thread, which
/// only calls `checkpoint` and `unflushed_bytes` while the shard goes on.
pub trait ColdStore: Send + Sync {
    fn put(&self, key: u64, image: &[u8]) -> Result<(), SpillError>;
    fn delete(&self, key: u64) -> Result<(), SpillError>;
    /// The key's record (its words into `words`), left in place.
    fn peek(&self, key: u64, words: &mut [u64]) -> Result<Option<Record>, SpillError>;
    /// Every stored key and image, in key order (bulk work, never per event).
    fn scan(&self, each: &mut ScanFn<'_>) -> Result<(), SpillError>;
    /// A consistent copy of the store at `dir` (which must not exist), for a checkpoint.
    fn checkpoint(&self, dir: &Path) -> Result<(), SpillError>;
    /// Bytes a checkpoint writes besides the files it links (RocksDB's memtables): for the
    /// writer's free-space check.
    fn unflushed_bytes(&self) -> u64;
}
