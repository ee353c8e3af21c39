//! Cold records in RocksDB, one database per shard (no sharing, no locks). A record lives in
//! exactly one place: `take` reads and deletes it when it returns to the hot table, `put`
//! writes it when it leaves.
//!
//! Spill is capacity, not durability: writes skip the WAL (a crash loses the hot table
//! anyway until checkpoints land), so a put or delete is a memtable insert, no syscall. Reads
//! of keys that were never spilled stop at the bloom filters in memory. Until restore exists
//! the directory is emptied at start, so old cold records cannot mix with new hot ones.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteOptions, DB};

use super::record::{Record, RECORD_BYTES};

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
}

pub struct Spill {
    db: DB,
    writes: WriteOptions,
    /// Records currently in the store.
    len: u64,
}

impl Spill {
    /// Open (emptied) at `dir`, with a block cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Self, SpillError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| SpillError::Clear {
                path: dir.to_owned(),
                source,
            })?;
        }
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
        let db = DB::open(&opts, dir).map_err(|source| SpillError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let mut writes = WriteOptions::default();
        writes.disable_wal(true);
        Ok(Self { db, writes, len: 0 })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn put(&mut self, rec: &Record) -> Result<(), SpillError> {
        self.db
            .put_opt(rec.key.to_be_bytes(), rec.to_bytes(), &self.writes)?;
        self.len += 1;
        Ok(())
    }

    /// The key's record, removed from the store; None if it was never spilled.
    pub fn take(&mut self, key: u64) -> Result<Option<Record>, SpillError> {
        let Some(rec) = self.peek(key)? else {
            return Ok(None);
        };
        self.db.delete_opt(key.to_be_bytes(), &self.writes)?;
        self.len -= 1;
        Ok(Some(rec))
    }

    /// The key's record, left in place (for inspection).
    pub fn peek(&self, key: u64) -> Result<Option<Record>, SpillError> {
        if self.len == 0 {
            return Ok(None);
        }
        // Pinned: no copy into a fresh Vec per lookup.
        match self.db.get_pinned(key.to_be_bytes())? {
            None => Ok(None),
            Some(v) if v.len() == RECORD_BYTES => Record::from_bytes(&v)
                .map(Some)
                .ok_or(SpillError::Corrupt(key)),
            Some(_) => Err(SpillError::Corrupt(key)),
        }
    }
}
