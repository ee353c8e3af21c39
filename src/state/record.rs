//! The fixed-layout per-key record. `repr(C)`, integer and float fields only, no padding: it
//! is stored as 80 little-endian bytes when spilled (and, with the checkpoint work, snapshotted).

/// One key's hot state.
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
    pub sum_amount: f64,
    pub ewma_amount: f64,
    /// Event time of the newest event applied (ns since epoch).
    pub last_event_ns: u64,
    /// Event time of the first event applied (ns since epoch).
    pub first_event_ns: u64,
    /// Event time of the previous event, kept for "seconds since last event".
    pub prev_event_ns: u64,
    /// Slot bits for the hot table: `OCCUPIED` (key 0 is a valid key, so emptiness needs its
    /// own bit) and `REFERENCED` (the CLOCK bit, set on use, cleared by the eviction hand).
    pub flags: u64,
}

pub const OCCUPIED: u64 = 1;
pub const REFERENCED: u64 = 2;

pub const RECORD_BYTES: usize = 80;
const _: () = assert!(std::mem::size_of::<Record>() == RECORD_BYTES);
const _: () = assert!(std::mem::align_of::<Record>() == 8);

impl Record {
    /// A key's first record, before its first event is applied.
    pub fn fresh(key: u64, ts_ns: u64, amount: f32) -> Self {
        Record {
            key,
            first_event_ns: ts_ns,
            last_event_ns: ts_ns,
            prev_event_ns: ts_ns,
            ewma_amount: f64::from(amount),
            flags: OCCUPIED,
            ..Record::default()
        }
    }

    pub fn is_occupied(&self) -> bool {
        self.flags & OCCUPIED != 0
    }

    /// Mean amount over Observations (0 before the first).
    pub fn mean_amount(&self) -> f64 {
        if self.observations == 0 {
            0.0
        } else {
            self.sum_amount / self.observations as f64
        }
    }

    /// The 80-byte little-endian form (slot flags are not stored).
    pub fn to_bytes(&self) -> [u8; RECORD_BYTES] {
        let words = [
            self.key,
            self.observations,
            self.feedbacks,
            self.positives,
            self.sum_amount.to_bits(),
            self.ewma_amount.to_bits(),
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

    /// Parse `to_bytes` output; None if the length is wrong.
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
            sum_amount: f64::from_bits(w[4]),
            ewma_amount: f64::from_bits(w[5]),
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
    fn bytes_round_trip() {
        let r = Record {
            key: u64::MAX,
            observations: 3,
            feedbacks: 1,
            positives: 1,
            sum_amount: 12.5,
            ewma_amount: -0.25,
            last_event_ns: 9,
            first_event_ns: 7,
            prev_event_ns: 8,
            flags: OCCUPIED | REFERENCED,
        };
        let back = Record::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(
            back,
            Record {
                flags: OCCUPIED,
                ..r
            }
        );
        assert_eq!(Record::from_bytes(&[0; 79]), None);
    }
}
