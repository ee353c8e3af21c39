//! Cold records in RocksDB, one database per shard (no locks; the checkpoint writer only
//! takes RocksDB checkpoints of it), behind the `cold::ColdStore` trait, whose in-memory twin
//! the simulation runs instead. A record lives in exactly one place: `peek` then
//! `remove` when it returns to the hot table, `put` when it leaves.
//!
//! Spill is capacity, not durability: writes skip the WAL, so a put or delete is a memtable
//! insert, no syscall. Durability comes from checkpoints (`checkpoint`), which flush the
//! memtable and hard-link the store's files on the writer thread (`ColdStore::checkpoint`, see
//! `snapshot`). Reads of keys that were never spilled stop at the bloom filters in memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, WriteBatch,
    WriteOptions, DB,
};

use super::cold::{ColdBatch, ColdStore, FoundFn, ScanFn};
use super::cold_memory::MemoryCold;
use super::record::{image_bytes, Record};
use super::spill_image;

#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("spill store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("spill store: cannot clear {path} from a previous run: {source}")]
    Clear {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spill store I/O: {0}")]
    Io(#[from] rocksdb::Error),
    #[error("spill store holds a malformed record for key {0}")]
    Corrupt(u64),
    #[error("spill store: {0}")]
    Store(&'static str),
    /// The in-memory twin (`cold_memory::MemoryCold`) failed or was made to fail.
    #[error("spill store (in-memory twin): {0}")]
    Twin(&'static str),
    /// The twin's checkpoint file could not be read or written.
    #[error("spill store (in-memory twin) {path}: {source}")]
    TwinFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Entries of a table file's sliding window in which 90% deletions mark it for compaction.
const DELETION_WINDOW: usize = 1024;

pub struct Spill {
    /// Shared with the checkpoint writer thread, which takes checkpoints of it while the shard
    /// goes on (RocksDB is thread-safe for that).
    store: Arc<dyn ColdStore>,
    /// Records currently in the store.
    len: u64,
    /// Window words per record.
    words: usize,
    /// One record image, reused for every put.
    image: Vec<u8>,
}

/// The production cold store: a RocksDB database without WAL (see the module doc).
pub struct RocksCold {
    db: DB,
    writes: WriteOptions,
}

impl Spill {
    /// Open the RocksDB store at `dir` holding `len` records (0 and emptied unless it was just
    /// restored from a checkpoint), with a block cache of `cache_bytes`.
    pub fn open(
        dir: &Path,
        cache_bytes: usize,
        words: usize,
        restored_len: Option<u64>,
    ) -> Result<Self, SpillError> {
        clear_unless_restored(dir, restored_len)?;
        let mut table = BlockBasedOptions::default();
        // ~1% false positives: a lookup of a key that was never spilled almost never reads a block.
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&Cache::new_lru_cache(cache_bytes));
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&table);
        opts.set_compression_type(DBCompressionType::Lz4);
        // Compaction and flushes run on RocksDB's own threads; keep them few beside pinned shards.
        opts.set_max_background_jobs(2);
        // A table file that is nearly all deletions (the spill sweep's, `spill_sweep`) is
        // compacted as soon as it is written: left alone, its tombstones cost every later pass
        // of the sweep's scanner what the deleted records did (200k records, 95% deleted: a
        // pass 38-40 ms with the tombstones, 1.6-1.7 ms compacted; bench/README.md). A file of
        // cold-key churn (a put and a delete per move, about half deletions) stays under the
        // threshold: at 0.5 such churn compacted 3.7x the bytes, at 0.9 no more than without.
        opts.add_compact_on_deletion_collector_factory(
            DELETION_WINDOW,
            DELETION_WINDOW * 9 / 10,
            0.9,
        );
        // Opened by its column family's name: the crate hands out a handle (which the batched
        // MultiGet needs) only for families named at open. The family gets the options above
        // explicitly: `DB::open_cf` would open it with RocksDB's defaults (no bloom filter, an
        // 8 MiB block cache, `state.spill_cache_bytes` ignored), as it did from 1fabeee to here.
        let family = ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone());
        let db =
            DB::open_cf_descriptors(&opts, dir, [family]).map_err(|source| SpillError::Open {
                path: dir.to_owned(),
                source,
            })?;
        let mut writes = WriteOptions::default();
        writes.disable_wal(true);
        Ok(Self::on(
            Arc::new(RocksCold { db, writes }),
            words,
            restored_len,
        ))
    }

    /// The in-memory twin at `dir` (see `cold_memory::MemoryCold`): what a checkpoint left
    /// there when `restored_len` is set.
    pub fn open_memory(
        dir: &Path,
        words: usize,
        restored_len: Option<u64>,
    ) -> Result<Self, SpillError> {
        Self::open_memory_failing(dir, words, restored_len, Arc::new(AtomicBool::new(false)))
    }

    /// The same with a switch that makes every write fail like a full disk (tests of the
    /// moves' failure paths).
    pub(crate) fn open_memory_failing(
        dir: &Path,
        words: usize,
        restored_len: Option<u64>,
        full: Arc<AtomicBool>,
    ) -> Result<Self, SpillError> {
        clear_unless_restored(dir, restored_len)?;
        let store = MemoryCold::open(dir, restored_len.is_some(), full)?;
        Ok(Self::on(Arc::new(store), words, restored_len))
    }

    fn on(store: Arc<dyn ColdStore>, words: usize, restored_len: Option<u64>) -> Self {
        Self {
            store,
            len: restored_len.unwrap_or(0),
            words,
            image: Vec::with_capacity(spill_image::packed_max(words)),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn put(&mut self, rec: &Record, words: &[u64]) -> Result<(), SpillError> {
        self.image.clear();
        spill_image::pack(rec, words, &mut self.image);
        self.store.put(rec.key, &self.image)?;
        self.len += 1;
        Ok(())
    }

    /// Remove a key `peek` found.
    pub fn remove(&mut self, key: u64) -> Result<(), SpillError> {
        self.store.delete(key)?;
        self.len -= 1;
        Ok(())
    }

    /// The stored images of `keys` (ascending), in one batched read: `found(i, image)` for
    /// each.
    pub fn peek_many(&self, keys: &[u64], found: &mut FoundFn<'_>) -> Result<(), SpillError> {
        if self.len == 0 {
            return keys
                .iter()
                .enumerate()
                .try_for_each(|(i, _)| found(i, None));
        }
        self.store.peek_many(keys, found)
    }

    /// Write a cycle's spill moves at once: `puts` records leave the hot table, `deletes`
    /// return to it (the batch holds both, in order).
    pub fn write(&mut self, batch: &ColdBatch, puts: u64, deletes: u64) -> Result<(), SpillError> {
        self.store.write(batch)?;
        self.len = self.len + puts - deletes;
        Ok(())
    }

    /// See `ColdStore::memory_bytes`.
    pub fn memory_bytes(&self) -> u64 {
        self.store.memory_bytes()
    }

    /// See `ColdStore::background_busy`.
    pub fn background_busy(&self) -> bool {
        self.store.background_busy()
    }

    /// The store, for the checkpoint writer thread.
    pub fn shared(&self) -> Arc<dyn ColdStore> {
        Arc::clone(&self.store)
    }

    /// Put one key back as it was at a snapshot's flip (restore, replaying a spill journal):
    /// its image, or absent. The record count is not touched: the checkpoint's manifest holds
    /// the count at the flip, which the store was opened with.
    pub fn restore_entry(&mut self, key: u64, image: Option<&[u8]>) -> Result<(), SpillError> {
        match image {
            Some(img) => self.store.put(key, img),
            None => self.store.delete(key),
        }
    }

    /// Every stored record and its image, in key order: a full scan of the store, for bulk work
    /// (moving a partition's state), never per event.
    pub fn for_each_image(&self, mut f: impl FnMut(&Record, &[u8])) -> Result<(), SpillError> {
        let mut words = vec![0u64; self.words];
        let mut full = Vec::with_capacity(image_bytes(self.words));
        self.store.scan(&mut |key, stored| {
            let rec =
                spill_image::unpack(key, stored, &mut words).ok_or(SpillError::Corrupt(key))?;
            // Stored packed: handed on as a full image, as everything outside the store reads.
            full.clear();
            rec.append_image(&words, &mut full);
            f(&rec, &full);
            Ok(())
        })
    }

    /// The key's record (its words into `words`), left in place.
    pub fn peek(&self, key: u64, words: &mut [u64]) -> Result<Option<Record>, SpillError> {
        if self.len == 0 {
            return Ok(None);
        }
        crate::invariant_eq!(words.len(), self.words);
        self.store.peek(key, words)
    }
}

/// Records from a previous run without a checkpoint to go with them would be stale.
fn clear_unless_restored(dir: &Path, restored_len: Option<u64>) -> Result<(), SpillError> {
    if restored_len.is_none() && dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|source| SpillError::Clear {
            path: dir.to_owned(),
            source,
        })?;
    }
    Ok(())
}

impl ColdStore for RocksCold {
    fn put(&self, key: u64, image: &[u8]) -> Result<(), SpillError> {
        Ok(self.db.put_opt(key.to_be_bytes(), image, &self.writes)?)
    }

    fn delete(&self, key: u64) -> Result<(), SpillError> {
        Ok(self.db.delete_opt(key.to_be_bytes(), &self.writes)?)
    }

    fn peek(&self, key: u64, words: &mut [u64]) -> Result<Option<Record>, SpillError> {
        // Pinned: no copy into a fresh Vec per lookup.
        match self.db.get_pinned(key.to_be_bytes())? {
            None => Ok(None),
            Some(v) => spill_image::unpack(key, &v, words)
                .map(Some)
                .ok_or(SpillError::Corrupt(key)),
        }
    }

    /// RocksDB's batched MultiGet: the keys' index and filter lookups and block reads are
    /// done together, per table file, instead of one full Get path per key. The crate
    /// allocates a few arrays per call (per cycle with misses, not per event); so does the
    /// key list here.
    fn peek_many(&self, keys: &[u64], found: &mut FoundFn<'_>) -> Result<(), SpillError> {
        let Some(cf) = self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME) else {
            // Cannot happen: `open` names it.
            return Err(SpillError::Store(
                "RocksDB has no default column family handle",
            ));
        };
        let be: Vec<[u8; 8]> = keys.iter().map(|k| k.to_be_bytes()).collect();
        // Keys ascend, and so do their big-endian bytes: RocksDB may skip its own sort.
        let sorted = keys.windows(2).all(|w| w[0] < w[1]);
        for (i, v) in self
            .db
            .batched_multi_get_cf(&cf, &be, sorted)
            .into_iter()
            .enumerate()
        {
            found(i, v?.as_deref())?;
        }
        Ok(())
    }

    /// One write (one pass through RocksDB's write path and its mutex) for the cycle's spill
    /// moves instead of one per put and delete. The crate's WriteBatch is consumed by the
    /// write, so one is built per cycle with moves, sized to hold them.
    fn write(&self, batch: &ColdBatch) -> Result<(), SpillError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut b = WriteBatch::with_capacity_bytes(batch.bytes_hint());
        for (key, image) in batch.ops() {
            match image {
                Some(img) => b.put(key.to_be_bytes(), img),
                None => b.delete(key.to_be_bytes()),
            }
        }
        Ok(self.db.write_opt(b, &self.writes)?)
    }

    fn scan(&self, each: &mut ScanFn<'_>) -> Result<(), SpillError> {
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            let (key, image) = item?;
            let k = <[u8; 8]>::try_from(&*key)
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            each(k, &image)?;
        }
        Ok(())
    }

    /// A fresh iterator per slice, seeking to `from`, that leaves RocksDB's block cache alone
    /// (a pass over the whole store would push out the blocks the cold reads need).
    fn scan_from(
        &self,
        from: u64,
        max: usize,
        each: &mut ScanFn<'_>,
    ) -> Result<Option<u64>, SpillError> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.fill_cache(false);
        let start = from.to_be_bytes();
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        for (seen, item) in self.db.iterator_opt(mode, opts).enumerate() {
            let (key, image) = item?;
            let Ok(k) = <[u8; 8]>::try_from(&*key).map(u64::from_be_bytes) else {
                return Err(SpillError::Store("a spill store key is not 8 bytes"));
            };
            if seen == max {
                return Ok(Some(k));
            }
            each(k, &image)?;
        }
        Ok(None)
    }

    /// The memtable is flushed and the table files hard-linked, so the cost is a flush, not a
    /// copy.
    fn checkpoint(&self, dir: &Path) -> Result<(), SpillError> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(dir)?;
        Ok(())
    }

    fn memory_bytes(&self) -> u64 {
        [
            "rocksdb.estimate-table-readers-mem",
            "rocksdb.cur-size-all-mem-tables",
            "rocksdb.block-cache-usage",
        ]
        .iter()
        .map(|&p| self.db.property_int_value(p).ok().flatten().unwrap_or(0))
        .sum()
    }

    fn background_busy(&self) -> bool {
        [
            "rocksdb.compaction-pending",
            "rocksdb.num-running-compactions",
            "rocksdb.mem-table-flush-pending",
            "rocksdb.num-running-flushes",
        ]
        .iter()
        .any(|&p| self.db.property_int_value(p).ok().flatten().unwrap_or(0) > 0)
    }

    fn unflushed_bytes(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.cur-size-all-mem-tables")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records' column family must get the store's options (bloom filters, the configured
    /// block cache), not RocksDB's defaults: RocksDB's own OPTIONS file says what it runs with.
    #[test]
    fn the_records_family_opens_with_the_spill_options() {
        let dir = std::env::temp_dir().join(format!("sluice-spill-options-{}", std::process::id()));
        let spill = Spill::open(&dir, 1 << 20, 4, None).unwrap();
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-"))
            })
            .max()
            .unwrap();
        let text = std::fs::read_to_string(newest).unwrap();
        let table = text
            .split("[TableOptions/BlockBasedTable \"default\"]")
            .nth(1)
            .unwrap();
        let table = table.split("\n[").next().unwrap();
        assert!(table.contains("filter_policy=bloomfilter"), "{table}");
        drop(spill);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A flushed table file of mostly deletions (what the spill sweep writes) is compacted
    /// away by RocksDB on its own, not left for later writes to trigger: the store's files
    /// shrink to the records still live.
    #[test]
    fn a_file_of_mostly_deletions_is_compacted_away() {
        let base = std::env::temp_dir().join(format!("sluice-spill-dels-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("s");
        let mut spill = Spill::open(&dir, 1 << 20, 2, None).unwrap();
        let key = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let n = 200_000u64;
        for i in 0..n {
            let mut rec = Record::fresh(key(i), 1);
            rec.observations = 1;
            spill.put(&rec, &[i, 1]).unwrap();
        }
        let store = spill.shared();
        // A checkpoint flushes the memtable into a table file.
        store.checkpoint(&base.join("c1")).unwrap();
        let mut batch = ColdBatch::with_capacity(1024, 0);
        for i in (0..n).filter(|i| i % 20 != 0) {
            batch.delete(key(i));
            if batch.bytes_hint() > 16_000 {
                store.write(&batch).unwrap();
                batch.clear();
            }
        }
        store.write(&batch).unwrap();
        let sst_bytes = || -> u64 {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        };
        let before = sst_bytes();
        store.checkpoint(&base.join("c2")).unwrap();
        // Compaction is RocksDB's background work: waited for, within a bound.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while sst_bytes() > before / 4 && std::time::Instant::now() < give_up {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let after = sst_bytes();
        assert!(
            after <= before / 4,
            "table files {before} bytes with the records, {after} after 95% were deleted"
        );
        let mut live = 0;
        let mut from = Some(0u64);
        while let Some(at) = from {
            from = store
                .scan_from(at, 4096, &mut |_, _| {
                    live += 1;
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(live, n / 20);
        drop(store);
        drop(spill);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// The sweep's slices: each from its start key on, in key order, the next slice's start
    /// returned, every key seen once over a pass; the same on RocksDB and on the twin.
    #[test]
    fn a_scan_in_slices_sees_every_key_once_in_order() {
        let base = std::env::temp_dir().join(format!("sluice-spill-slices-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut stores = vec![
            Spill::open(&base.join("rocks"), 1 << 20, 2, None).unwrap(),
            Spill::open_memory(&base.join("twin"), 2, None).unwrap(),
        ];
        // Keys spread over the whole range, the top one included, and written in no order.
        let keys: Vec<u64> = (0..2_500u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .chain([u64::MAX, 0])
            .collect();
        let mut want: Vec<u64> = keys.clone();
        want.sort_unstable();
        want.dedup();
        for spill in &mut stores {
            for &k in &keys {
                let rec = Record::fresh(k, 1);
                spill.put(&rec, &[k, 1]).unwrap();
            }
            let store = spill.shared();
            let mut seen = Vec::new();
            let mut from = Some(0u64);
            let mut slices = 0;
            while let Some(at) = from {
                let mut n = 0;
                from = store
                    .scan_from(at, 1000, &mut |k, image| {
                        let mut w = [0u64; 2];
                        let rec = spill_image::unpack(k, image, &mut w).unwrap();
                        assert_eq!((rec.key, w), (k, [k, 1]));
                        seen.push(k);
                        n += 1;
                        Ok(())
                    })
                    .unwrap();
                assert!(n <= 1000);
                slices += 1;
            }
            assert_eq!(seen, want);
            assert_eq!(slices, want.len().div_ceil(1000));
            // From a key in the middle: that key and the ones above it.
            let mid = want[1234];
            let mut first = None;
            store
                .scan_from(mid, 1, &mut |k, _| {
                    first = Some(k);
                    Ok(())
                })
                .unwrap();
            assert_eq!(first, Some(mid));
        }
        drop(stores);
        let _ = std::fs::remove_dir_all(&base);
    }
}
