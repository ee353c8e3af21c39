//! State + event -> model input row. Synchronous and allocation-free: rows are written into a
//! caller-owned slice.
//!
//! Row layout (the example ONNX models were trained on it and `model.linear` weights follow it;
//! declaring features in config is part of the remaining state work):
//!   0 amount, 1 ln(1 + observations), 2 mean amount, 3 EWMA amount,
//!   4 amount / EWMA (1 when the EWMA is 0), 5 seconds since the key's previous event,
//!   6.. producer features, zero-filled when absent.

use crate::limits::FEATURES_DERIVED;
use crate::state::Record;

pub const FEATURE_NAMES: [&str; FEATURES_DERIVED] = [
    "amount",
    "log1p_count",
    "mean_amount",
    "ewma_amount",
    "amount_over_ewma",
    "secs_since_last",
];

/// Fill `row` (its length is the model's input width) for one Observation.
#[inline]
pub fn build_row(record: &Record, amount: f32, event_ts_ns: u64, raw: &[f32], row: &mut [f32]) {
    let derived = [
        amount,
        (record.observations as f32).ln_1p(),
        record.mean_amount() as f32,
        record.ewma_amount as f32,
        if record.ewma_amount.abs() > f64::EPSILON {
            (f64::from(amount) / record.ewma_amount) as f32
        } else {
            1.0
        },
        event_ts_ns.saturating_sub(record.prev_event_ns) as f32 * 1e-9,
    ];
    let (head, tail) = row.split_at_mut(FEATURES_DERIVED.min(row.len()));
    head.copy_from_slice(&derived[..head.len()]);
    for (i, slot) in tail.iter_mut().enumerate() {
        *slot = raw.get(i).copied().unwrap_or(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_layout_matches_the_documented_order() {
        let r = Record {
            observations: 3,
            sum_amount: 30.0,
            ewma_amount: 5.0,
            prev_event_ns: 1_000_000_000,
            flags: 1,
            ..Record::default()
        };
        let mut row = [9.0f32; 8];
        build_row(&r, 20.0, 3_500_000_000, &[7.0], &mut row);
        assert_eq!(row[0], 20.0);
        assert!((row[1] - 4f32.ln()).abs() < 1e-6);
        assert_eq!(row[2], 10.0);
        assert_eq!(row[3], 5.0);
        assert_eq!(row[4], 4.0);
        assert!((row[5] - 2.5).abs() < 1e-6);
        assert_eq!(&row[6..], &[7.0, 0.0]);
    }
}
