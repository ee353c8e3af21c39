//! State + event -> model input row. The row is `features.list` from config, compiled once
//! into a `FeaturePlan` (see `spec` for the language): per-key aggregates over lifetime,
//! tumbling, sliding and session windows, EWMAs, time since the previous event, raw event
//! fields, and ratios / log1p of those. Synchronous and allocation-free per event: the
//! aggregates live in the key's record, rows are written into a caller-owned slice.

mod plan;
pub mod spec;

pub use plan::{FeaturePlan, Obs};

/// The default list (the shipped fraud models were trained on exactly this row; see
/// `scripts/train_models.py`, which mirrors it).
pub const DEFAULT_FEATURES: [&str; 8] = [
    "amount",
    "log1p(count(lifetime))",
    "mean(amount, lifetime)",
    "ewma(amount, 0.1)",
    "ratio(amount, ewma(amount, 0.1))",
    "since_last",
    "count(sliding 5m by 30s)",
    "sum(amount, sliding 5m by 30s)",
];
