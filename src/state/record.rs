//! The fixed-layout per-key record. `repr(C)` with only integer and float fields and no
//! padding, so the spill and checkpoint work can copy records as bytes.

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
    /// 1 when the slot holds a key (key 0 is a valid key, so emptiness needs its own field).
    pub used: u64,
}

const _: () = assert!(std::mem::size_of::<Record>() == 80);
const _: () = assert!(std::mem::align_of::<Record>() == 8);

impl Record {
    /// Mean amount over Observations (0 before the first).
    pub fn mean_amount(&self) -> f64 {
        if self.observations == 0 {
            0.0
        } else {
            self.sum_amount / self.observations as f64
        }
    }
}
