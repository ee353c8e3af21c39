//! A Kafka partition's state on its own — every record whose `source` is the partition's tag,
//! hot or spilled — exported as record images, dropped, and imported into another state: what
//! moving a partition between shards or instances (scale-out over consumer groups) is built
//! on. Rare and bulk (a rebalance, a restore), so it may allocate and scan; never per event.

use super::record::{image_bytes, Record};
use super::{KeyedState, StateError};

/// One partition's records: `records` images of `image_bytes(words)` bytes each, back to back
/// (the layout of a checkpoint's hot.bin records and of a spilled value).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PartitionImage {
    pub records: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("a snapshot is running: a partition moves between snapshots")]
    SnapshotRunning,
    #[error("partition image of {len} bytes is not a whole number of {image}-byte records")]
    Torn { len: usize, image: usize },
    #[error("partition image record {index} is malformed")]
    Malformed { index: usize },
    #[error("partition image holds key {key} of source {found}, not {want}")]
    OtherSource { key: u64, found: u64, want: u64 },
    #[error("key {key} of the imported partition is already in this state")]
    Present { key: u64 },
}

/// The source a gone key is recorded with when its partition moved away rather than the key
/// being deleted: never a partition's tag (those are `1 + (topic << 32 | partition)` with a
/// 16-bit topic index).
pub const MOVED: u64 = u64::MAX;

impl KeyedState {
    /// Every record of source `tag`, hot then spilled.
    pub fn export_partition(&self, tag: u64) -> Result<PartitionImage, PartitionError> {
        let all = self.export_partitions(&[tag], u64::MAX)?;
        Ok(all.and_then(|mut v| v.pop()).unwrap_or_default())
    }

    /// Every record of each of `tags` (one image each, in their order), in one pass over the
    /// hot table and at most one over the spill store; None once they hold more than
    /// `max_records` between them (what a handover keeps is bounded: it is copied on the shard
    /// thread). The hot table is counted first so each image is allocated once.
    pub fn export_partitions(
        &self,
        tags: &[u64],
        max_records: u64,
    ) -> Result<Option<Vec<PartitionImage>>, PartitionError> {
        let at = |source: u64| tags.iter().position(|&t| t == source);
        let mut counts = vec![0u64; tags.len()];
        for slot in 0..self.hot.slots() {
            let (rec, _) = self.hot.slot(slot);
            if let (true, Some(i)) = (rec.is_occupied(), at(rec.source)) {
                counts[i] += 1;
            }
        }
        let mut total: u64 = counts.iter().sum();
        if total > max_records {
            return Ok(None);
        }
        let image = image_bytes(self.plan.words()) as u64;
        let mut out: Vec<PartitionImage> = counts
            .iter()
            .map(|&n| PartitionImage {
                records: 0,
                bytes: Vec::with_capacity(usize::try_from(n * image).unwrap_or(0)),
            })
            .collect();
        for slot in 0..self.hot.slots() {
            let (rec, words) = self.hot.slot(slot);
            if let (true, Some(o)) = (
                rec.is_occupied(),
                at(rec.source).and_then(|i| out.get_mut(i)),
            ) {
                rec.append_image(words, &mut o.bytes);
                o.records += 1;
            }
        }
        if let Some(spill) = self.spill.as_ref().filter(|s| !s.is_empty()) {
            spill
                .for_each_image(|rec, img| {
                    if total > max_records {
                        return;
                    }
                    if let Some(o) = at(rec.source).and_then(|i| out.get_mut(i)) {
                        total += 1;
                        o.bytes.extend_from_slice(img);
                        o.records += 1;
                    }
                })
                .map_err(StateError::from)?;
        }
        Ok((total <= max_records).then_some(out))
    }

    /// Remove every record of source `tag` (a partition this state no longer owns). The
    /// removals are changes like any other: the next incremental checkpoint records them gone,
    /// as moved away (`MOVED`): a changelog must not send them as deletions, the partition's
    /// state being its new owner's.
    pub fn drop_partition(&mut self, tag: u64) -> Result<u64, PartitionError> {
        if self.snapshot_running() {
            return Err(PartitionError::SnapshotRunning);
        }
        // Keys first: removing shifts later entries of a probe run back over the scan.
        let hot_keys: Vec<u64> = (0..self.hot.slots())
            .map(|s| self.hot.slot(s).0)
            .filter(|r| r.is_occupied() && r.source == tag)
            .map(|r| r.key)
            .collect();
        let mut words = vec![0u64; self.plan.words()];
        for &key in &hot_keys {
            if let Some(slot) = self.hot.find(key) {
                self.hot.remove_slot(slot, &mut words);
                self.changes.gone(key, MOVED);
            }
        }
        let mut cold_keys = Vec::new();
        if let Some(spill) = &self.spill {
            spill
                .for_each_image(|rec, _| {
                    if rec.source == tag {
                        cold_keys.push(rec.key);
                    }
                })
                .map_err(StateError::from)?;
        }
        if let Some(spill) = &mut self.spill {
            for &key in &cold_keys {
                spill.remove(key).map_err(StateError::from)?;
                self.changes.gone(key, MOVED);
            }
        }
        Ok((hot_keys.len() + cold_keys.len()) as u64)
    }

    /// Put a partition's records (from `export_partition`) into this state, each of them from
    /// source `tag`; none of their keys may be here already (a key lives in one place).
    pub fn import_partition(&mut self, tag: u64, bytes: &[u8]) -> Result<u64, PartitionError> {
        if self.snapshot_running() {
            return Err(PartitionError::SnapshotRunning);
        }
        let words = self.plan.words();
        let image = image_bytes(words);
        if bytes.len() % image != 0 {
            return Err(PartitionError::Torn {
                len: bytes.len(),
                image,
            });
        }
        // Checked whole before anything lands: an import is all or nothing.
        let mut buf = vec![0u64; words];
        let mut records = Vec::with_capacity(bytes.len() / image);
        for (index, img) in bytes.chunks_exact(image).enumerate() {
            let mut rec =
                Record::read_image(img, &mut buf).ok_or(PartitionError::Malformed { index })?;
            if rec.source != tag {
                return Err(PartitionError::OtherSource {
                    key: rec.key,
                    found: rec.source,
                    want: tag,
                });
            }
            if self
                .locate(rec.key)
                .map_err(PartitionError::State)?
                .is_some()
            {
                return Err(PartitionError::Present { key: rec.key });
            }
            rec.flags = 0;
            records.push((rec, buf.clone()));
        }
        // Without a spill store every record must find a hot slot: refused whole, not halfway.
        if self.spill.is_none() && self.hot.len() + records.len() > self.hot.capacity() {
            return Err(PartitionError::State(StateError::Full {
                capacity: self.hot.capacity(),
            }));
        }
        let bit = self.hot.dirty_bit();
        for (rec, w) in &records {
            self.restore(*rec, w)?;
            // Imported records are changes, in the hot table or not: the next incremental
            // checkpoint must hold them, and its change set (the changelog's next
            // transaction) must carry every imported key — one replayed from the input is in
            // no changelog yet. A key that went straight to the spill store is listed gone,
            // so the change set looks its image up there (as for an evicted key).
            match self.hot.find(rec.key) {
                Some(slot) => {
                    let (head, _) = self.hot.slot_mut(slot);
                    self.changes.dirty(head, bit);
                }
                None => self.changes.gone(rec.key, rec.source),
            }
        }
        self.stats.imported += records.len() as u64;
        Ok(records.len() as u64)
    }
}
