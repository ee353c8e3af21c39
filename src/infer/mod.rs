//! Scoring. A `Scorer` takes a micro-batch of feature rows and writes one probability per row;
//! each shard owns a `ShardModel` (a primary scorer: ONNX Runtime or the config-weighted
//! linear model, optionally blended with an online logistic regression learned from Feedback)
//! and calls it once per drain cycle. New versions arrive between cycles as `ModelUpdate`s
//! from the control thread (`crate::control`), so one reply never mixes two versions.

mod linear;
pub mod native;
pub mod online;
pub mod onnx;
pub mod runtime;
mod shard_model;

pub use linear::LinearScorer;
pub use native::NativeScorer;
pub use online::OnlineLr;
pub use onnx::{OnnxScorer, OnnxSpec};
pub use shard_model::{build_primaries, build_primary, ModelUpdate, ShardModel, ShardReport};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("the model takes {got} inputs but features.list has {want} features: the model must be trained on that row")]
    Width { got: usize, want: usize },
    #[error("model run failed: {0}")]
    Run(String),
    #[error("model refused: {0}")]
    Model(String),
    #[error("ONNX Runtime unavailable: {0}")]
    Runtime(String),
}

/// Row-major feature rows with a fixed width, preallocated for `rows_max` rows.
pub struct FeatureBatch {
    data: Vec<f32>,
    width: usize,
    rows: usize,
    rows_max: usize,
}

impl FeatureBatch {
    pub fn new(width: usize, rows_max: usize) -> Self {
        Self {
            data: vec![0.0; width * rows_max],
            width,
            rows: 0,
            rows_max,
        }
    }
    pub fn width(&self) -> usize {
        self.width
    }
    pub fn len(&self) -> usize {
        self.rows
    }
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
    pub fn is_full(&self) -> bool {
        self.rows == self.rows_max
    }
    pub fn clear(&mut self) {
        self.rows = 0;
    }
    /// The next row to fill; `None` when full (flush first).
    pub fn next_row(&mut self) -> Option<&mut [f32]> {
        if self.is_full() {
            return None;
        }
        let start = self.rows * self.width;
        self.rows += 1;
        Some(&mut self.data[start..start + self.width])
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.width..(i + 1) * self.width]
    }
    /// All filled rows, contiguous.
    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.width]
    }
}

pub trait Scorer: Send {
    /// Input row width the model expects.
    fn width(&self) -> usize;
    /// What runs it, for logs and metrics: "native", "onnxruntime", "linear".
    fn engine(&self) -> &'static str;
    /// Score every row of `batch` into `out[..batch.len()]`, each in [0, 1].
    fn score(&mut self, batch: &FeatureBatch, out: &mut [f32]) -> Result<(), InferError>;
}
