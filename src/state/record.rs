//! The fixed-layout per-key record head, followed in the hot table (and in every stored image)
//! by the key's window words (`features::FeaturePlan::words()` u64s, laid out by the plan).
//! `repr(C)`, integer fields only, no padding: a stored image is the head's 80 little-endian
//! bytes, then the words, little-endian.

/// One key's fixed state.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Record {
    pub key: u64,
    /// Observations applied, this one included.
    pub observations: u64,
    /// Feedback events applied.
    pub feedbacks: u64,
    /// Feedback events with label 1.
    pub positives: u64,
    /// One past the highest event `seq` applied (0 = none yet): with `state.dedup`, an event
    /// whose seq is below this is a replay.
    pub seq_end: u64,
    /// Where the key's events come from: 0 = UDP (routed by key), else the Kafka partition
    /// that owns the key (`ingest::kafka::source_tag`). A key's state is scoped to its source, as
    /// Kafka Streams scopes state to a task: an event from another source is refused.
    pub source: u64,
    /// Event time of the newest event applied (ns since epoch).
    pub last_event_ns: u64,
    /// Event time of the first event applied (ns since epoch).
    pub first_event_ns: u64,
    /// The newest event time before the last event, kept for "seconds since last event".
    pub prev_event_ns: u64,
    /// Slot bits for the hot table: `OCCUPIED` (key 0 is a valid key, so emptiness needs its
    /// own bit), `REFERENCED` (the CLOCK bit, set on use, cleared by the eviction hand), and
    /// the snapshot bits `DIRTY_EVEN`, `DIRTY_ODD`, `CAPTURED`. Never stored.
    pub flags: u64,
}

pub const OCCUPIED: u64 = 1;
pub const REFERENCED: u64 = 2;
/// Changed since a checkpoint's flip (only tracked with checkpoints on). Two bits that take
/// turns: changes mark one while a running snapshot takes the records marked with the other
/// (see `snapshot`).
pub const DIRTY_EVEN: u64 = 4;
pub const DIRTY_ODD: u64 = 8;
/// Copied by a full snapshot: its "taken" value flips at every full flip (see `snapshot`).
pub const CAPTURED: u64 = 16;

/// Bytes of the stored head.
pub const RECORD_BYTES: usize = 80;
const _: () = assert!(std::mem::size_of::<Record>() == RECORD_BYTES);
const _: () = assert!(std::mem::align_of::<Record>() == 8);

/// Bytes of a stored record with `words` window words.
pub fn image_bytes(words: usize) -> usize {
    RECORD_BYTES + 8 * words
}

impl Record {
    /// A key's first record, before its first event is applied.
    pub fn fresh(key: u64, ts_ns: u64) -> Self {
        Record {
            key,
            first_event_ns: ts_ns,
            last_event_ns: ts_ns,
            prev_event_ns: ts_ns,
            flags: OCCUPIED,
            ..Record::default()
        }
    }

    /// Idle longer than `ttl_ns` at reference time `now_ns` (`state.ttl_ms`; 0 = never). A
    /// record no event has been applied to yet (fresh from a batched cold read) has nothing to
    /// expire. The one rule for every place a key expires: on its next event, in the hot
    /// table's sweep, and in the spill store's (`spill_sweep`).
    pub fn idle_past(&self, now_ns: u64, ttl_ns: u64) -> bool {
        let untouched = self.observations == 0 && self.feedbacks == 0;
        !untouched && ttl_ns > 0 && now_ns.saturating_sub(self.last_event_ns) > ttl_ns
    }

    pub fn is_occupied(&self) -> bool {
        self.flags & OCCUPIED != 0
    }

    /// The 80-byte little-endian head (slot flags are not stored).
    pub fn to_bytes(&self) -> [u8; RECORD_BYTES] {
        let words = [
            self.key,
            self.observations,
            self.feedbacks,
            self.positives,
            self.seq_end,
            self.source,
            self.last_event_ns,
            self.first_event_ns,
            self.prev_event_ns,
            0,
        ];
        let mut out = [0u8; RECORD_BYTES];
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Write the head and `words` as one stored image into `out`, which must be exactly
    /// `image_bytes(words.len())` long (fixed offsets: no length checks per word).
    pub fn write_image(&self, words: &[u64], out: &mut [u8]) {
        let (head, tail) = out.split_at_mut(RECORD_BYTES);
        head.copy_from_slice(&self.to_bytes());
        for (chunk, w) in tail.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Append the head and `words` to `out` as one stored image.
    pub fn append_image(&self, words: &[u64], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Parse a stored image into a head and `words`; None if its length is not
    /// `image_bytes(words.len())`.
    pub fn read_image(b: &[u8], words: &mut [u64]) -> Option<Self> {
        if b.len() != image_bytes(words.len()) {
            return None;
        }
        let (head, tail) = b.split_at(RECORD_BYTES);
        for (w, chunk) in words.iter_mut().zip(tail.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Self::from_bytes(head)
    }

    /// Parse a stored head; None if the length is wrong.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != RECORD_BYTES {
            return None;
        }
        let mut w = [0u64; 10];
        for (word, chunk) in w.iter_mut().zip(b.chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Some(Record {
            key: w[0],
            observations: w[1],
            feedbacks: w[2],
            positives: w[3],
            seq_end: w[4],
            source: w[5],
            last_event_ns: w[6],
            first_event_ns: w[7],
            prev_event_ns: w[8],
            flags: OCCUPIED,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip() {
        let r = Record {
            key: u64::MAX,
            observations: 3,
            feedbacks: 1,
            positives: 1,
            seq_end: 12,
            source: 5,
            last_event_ns: 9,
            first_event_ns: 7,
            prev_event_ns: 8,
            flags: OCCUPIED | REFERENCED,
        };
        let words = [1u64, u64::MAX, 2.5f64.to_bits()];
        let mut img = Vec::new();
        r.append_image(&words, &mut img);
        assert_eq!(img.len(), image_bytes(3));
        let mut fixed = vec![0xAA; image_bytes(3)];
        r.write_image(&words, &mut fixed);
        assert_eq!(fixed, img);
        let mut back_words = [0u64; 3];
        let back = Record::read_image(&img, &mut back_words).unwrap();
        assert_eq!(
            back,
            Record {
                flags: OCCUPIED,
                ..r
            }
        );
        assert_eq!(back_words, words);
        assert_eq!(Record::read_image(&img, &mut [0u64; 2]), None);
        assert_eq!(Record::from_bytes(&[0; 79]), None);
    }
}
