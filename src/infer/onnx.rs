//! An ONNX model scored by ONNX Runtime: one session per shard (1 intra-op and 1 inter-op
//! thread, no spinning, so it runs on the shard's own core), the drain cycle's rows in one
//! run. Inputs and outputs are checked when the model loads, so a wrong model is refused with
//! a clear message instead of failing on the first event.
// Reached by model files: no index that could panic (hardening issue; tests may index).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::{FeatureBatch, InferError, Scorer};
use crate::limits::FEATURE_ROW_MAX;

/// Models compiled into the binary, so `sluice demo` works with nothing else installed but
/// the runtime library. `model.path = "builtin:NAME"`.
pub const BUILTIN: [(&str, &[u8]); 2] = [
    ("fraud_lr", include_bytes!("models/fraud_lr.onnx")),
    ("fraud_gbdt", include_bytes!("models/fraud_gbdt.onnx")),
];

/// Which tensors to use; from `[model]` in config.
#[derive(Debug, Clone)]
pub struct OnnxSpec {
    pub path: String,
    pub runtime_path: String,
    pub input: String,
    pub output: String,
    pub probability_column: usize,
    /// Session build + warm-up must finish within this (`model.load_timeout_ms`).
    pub load_timeout: std::time::Duration,
}

/// The model's bytes: a builtin, or a file read now (off the hot path).
pub fn model_bytes(path: &str) -> Result<Vec<u8>, InferError> {
    if let Some(name) = path.strip_prefix("builtin:") {
        return BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.to_vec())
            .ok_or_else(|| {
                InferError::Model(format!(
                    "no builtin model {name:?} (have: fraud_lr, fraud_gbdt)"
                ))
            });
    }
    match crate::preflight::access(std::path::Path::new(path)) {
        crate::preflight::Access::Private => {}
        crate::preflight::Access::Shared(why) => {
            tracing::warn!("model.path: {why}; another user could change the model sluice runs");
        }
        crate::preflight::Access::Open(why) => {
            return Err(InferError::Model(format!(
                "model file {path} refused: {why}; another user could change the model sluice runs"
            )));
        }
    }
    std::fs::read(path)
        .map_err(|e| InferError::Model(format!("cannot read model file {path}: {e}")))
}

pub struct OnnxScorer {
    session: Session,
    width: usize,
    columns: usize,
    column: usize,
    output: String,
}

fn dims(v: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match v {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

impl OnnxScorer {
    /// Build a session from `bytes`, check it against `spec` and warm it up, on a thread of
    /// its own so that a model ONNX Runtime never finishes with is refused after
    /// `spec.load_timeout` instead of hanging the caller (start-up, or the control thread on
    /// a reload). Such a thread cannot be stopped: it is left running, named
    /// `sluice-model-load`, and logged.
    pub fn load(spec: &OnnxSpec, bytes: &[u8]) -> Result<Self, InferError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (job_spec, job_bytes) = (spec.clone(), bytes.to_vec());
        std::thread::Builder::new()
            .name("sluice-model-load".into())
            .spawn(move || {
                let _ = tx.send(Self::load_here(&job_spec, &job_bytes));
            })
            .map_err(|e| {
                InferError::Model(format!("{}: cannot start a loading thread: {e}", spec.path))
            })?;
        match rx.recv_timeout(spec.load_timeout) {
            Ok(loaded) => loaded,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!(
                    model = %spec.path,
                    "the model did not load and score a warm-up row within model.load_timeout_ms = {} ms; its thread (sluice-model-load) is left running and holds a CPU until sluice restarts",
                    spec.load_timeout.as_millis()
                );
                Err(InferError::Model(format!(
                    "{}: did not load and score a warm-up row within {} ms (model.load_timeout_ms): refused (a malformed tree ensemble can loop forever in ONNX Runtime)",
                    spec.path,
                    spec.load_timeout.as_millis()
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(InferError::Model(
                format!("{}: the loading thread ended without an answer", spec.path),
            )),
        }
    }

    /// `load` on the calling thread.
    fn load_here(spec: &OnnxSpec, bytes: &[u8]) -> Result<Self, InferError> {
        let env = super::runtime::environment(&spec.runtime_path)?;
        let bad = |what: String| InferError::Model(format!("{}: {what}", spec.path));
        let options = |e: ort::Error<_>| bad(format!("session options: {e}"));
        let session = Session::builder(&env)
            .map_err(|e| bad(format!("session builder: {e}")))?
            .with_intra_threads(1)
            .map_err(options)?
            .with_inter_threads(1)
            .map_err(options)?
            .with_parallel_execution(false)
            .map_err(options)?
            .with_intra_op_spinning(false)
            .map_err(options)?
            .with_inter_op_spinning(false)
            .map_err(options)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(options)?
            .commit_from_memory(bytes)
            .map_err(|e| bad(format!("not a loadable ONNX model: {e}")))?;

        let input = session
            .inputs()
            .iter()
            .find(|o| o.name() == spec.input)
            .ok_or_else(|| {
                let names: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
                bad(format!(
                    "no input named {:?} (model.input); the model has {names:?}",
                    spec.input
                ))
            })?;
        if session.inputs().len() != 1 {
            return Err(bad(format!(
                "has {} inputs; sluice feeds exactly one",
                session.inputs().len()
            )));
        }
        let (ty, shape) = dims(input.dtype())
            .ok_or_else(|| bad(format!("input {:?} is not a tensor", spec.input)))?;
        if ty != TensorElementType::Float32 || shape.len() != 2 {
            return Err(bad(format!(
                "input {:?} must be float32 [batch, features], found {ty:?} {shape:?}",
                spec.input
            )));
        }
        let features = shape.get(1).copied().unwrap_or(0);
        let width = usize::try_from(features)
            .ok()
            .filter(|w| (1..=FEATURE_ROW_MAX).contains(w))
            .ok_or_else(|| {
                bad(format!(
                    "input {:?} has {} features; sluice rows have 1 to {FEATURE_ROW_MAX} (features.list)",
                    spec.input, features
                ))
            })?;
        let output = session.outputs().iter().find(|o| o.name() == spec.output).ok_or_else(|| {
            let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
            bad(format!("no output named {:?} (model.output); the model has {names:?} (export with zipmap off)", spec.output))
        })?;
        let (oty, oshape) = dims(output.dtype())
            .ok_or_else(|| bad(format!("output {:?} is not a tensor", spec.output)))?;
        if oty != TensorElementType::Float32 || oshape.len() != 2 {
            return Err(bad(format!(
                "output {:?} must be float32 [batch, classes], found {oty:?} {oshape:?}",
                spec.output
            )));
        }
        let classes = oshape.get(1).copied().unwrap_or(0);
        let columns = usize::try_from(classes).unwrap_or(0);
        if spec.probability_column >= columns {
            return Err(bad(format!(
                "model.probability_column = {} but output {:?} has {} column(s)",
                spec.probability_column, spec.output, classes
            )));
        }
        let mut s = Self {
            session,
            width,
            columns,
            column: spec.probability_column,
            output: spec.output.clone(),
        };
        s.warm_up()?;
        Ok(s)
    }

    /// One run on a zero row: allocations and kernel selection happen now, not on an event.
    fn warm_up(&mut self) -> Result<(), InferError> {
        let mut b = FeatureBatch::new(self.width, 1);
        if let Some(row) = b.next_row() {
            row.fill(0.0);
        }
        let mut out = [0.0f32];
        self.score(&b, &mut out)?;
        if !(0.0..=1.0).contains(&out[0]) {
            return Err(InferError::Model(format!("warm-up produced {} (not a probability): check model.output and model.probability_column", out[0])));
        }
        Ok(())
    }
}

impl Scorer for OnnxScorer {
    fn width(&self) -> usize {
        self.width
    }

    fn engine(&self) -> &'static str {
        "onnxruntime"
    }

    fn score(&mut self, batch: &FeatureBatch, out: &mut [f32]) -> Result<(), InferError> {
        let rows = batch.len();
        if rows == 0 {
            return Ok(());
        }
        if batch.width() != self.width {
            return Err(InferError::Width {
                got: self.width,
                want: batch.width(),
            });
        }
        // The input is a view of the preallocated batch (no copy); ORT allocates its outputs
        // per run, once per micro-batch rather than per event.
        let input = TensorRef::from_array_view(([rows, self.width], batch.as_slice()))
            .map_err(|e| InferError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![input])
            .map_err(|e| InferError::Run(e.to_string()))?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| InferError::Run(format!("model produced no {:?}", self.output)))?;
        let (shape, probs) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| InferError::Run(e.to_string()))?;
        if probs.len() != rows * self.columns {
            return Err(InferError::Run(format!(
                "output shape {shape:?} for {rows} rows"
            )));
        }
        for (o, row) in out.iter_mut().zip(probs.chunks_exact(self.columns)) {
            // column < columns (checked at load), so every row has it.
            let p = row.get(self.column).copied().unwrap_or(f32::NAN);
            // A NaN or out-of-range probability would break the contract: clamp, never emit it.
            *o = if p.is_finite() {
                p.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        Ok(())
    }
}
