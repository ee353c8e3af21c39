//! The native engine: the tabular models fraud teams run (linear models, gradient-boosted
//! trees from scikit-learn, LightGBM, XGBoost), read from their ONNX export and evaluated in
//! Rust, with no ONNX Runtime call per batch. An ONNX Runtime call costs microseconds before
//! any arithmetic; a 100-tree ensemble walks in a fraction of one. `model.engine = auto` takes
//! this engine when the graph compiles and ONNX Runtime for every other graph; scores equal
//! ONNX Runtime's (tests/native_parity.rs).

mod graph;
pub mod onnx_proto;
mod ops;
mod perfect;
mod tree_ensemble_v5;
mod trees;

use super::{FeatureBatch, InferError, OnnxSpec, Scorer};
use graph::{Core, Plan};
use ops::{logistic, COLUMNS_MAX};
use trees::Trees;

/// How a tree ensemble is walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Branch-free over perfect trees when every tree is shallow and one comparison mode
    /// serves them all (`perfect.rs`; with AVX2 gathers where the CPU has them), node by node
    /// otherwise.
    Fastest,
    /// As `Fastest`, with scalar loads only.
    BranchFreeScalar,
    /// Node by node always.
    NodeByNode,
}

/// Why a model does not compile natively (ONNX Runtime serves it under `auto`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

#[derive(Clone)]
pub struct NativeScorer {
    plan: std::sync::Arc<Plan>,
    column: usize,
    /// Every step is per column and the core's post transform too: the probability column is
    /// computed alone (half the work of a binary model).
    column_alone: bool,
}

impl NativeScorer {
    /// Decode and compile `bytes` for `spec`'s input, output and probability column.
    pub fn compile(spec: &OnnxSpec, bytes: &[u8]) -> Result<Self, Unsupported> {
        Self::compile_with(spec, bytes, Walk::Fastest)
    }

    /// `compile`, choosing how tree ensembles are walked (the tests and benches compare both).
    pub fn compile_with(spec: &OnnxSpec, bytes: &[u8], walk: Walk) -> Result<Self, Unsupported> {
        use onnx_proto::Message;
        let model = onnx_proto::ModelProto::parse_from_bytes(bytes)
            .map_err(|e| Unsupported(format!("not an ONNX model: {e}")))?;
        let mut plan = graph::plan(&model, &spec.input, &spec.output)?;
        match &mut plan.core {
            Core::BinaryTrees { trees, .. } => trees.set_walk(walk),
            Core::Outputs { outputs, .. } => {
                outputs.iter_mut().flatten().for_each(|t| t.set_walk(walk))
            }
            Core::Linear(_) => {}
        }
        if spec.probability_column >= plan.columns {
            return Err(Unsupported(format!(
                "model.probability_column = {} but output {:?} has {} column(s)",
                spec.probability_column, spec.output, plan.columns
            )));
        }
        let column_alone = plan.steps.iter().all(|s| s.is_elementwise())
            && match &plan.core {
                Core::Linear(l) => matches!(l.post, ops::Post::None | ops::Post::Logistic),
                Core::BinaryTrees { .. } => true,
                Core::Outputs { post, .. } => post.is_elementwise(),
            };
        Ok(Self {
            plan: std::sync::Arc::new(plan),
            column: spec.probability_column,
            column_alone,
        })
    }

    /// One line for the log: what was compiled.
    pub fn describe(&self) -> String {
        match &self.plan.core {
            Core::Linear(l) => format!("linear, {} outputs", l.targets()),
            Core::BinaryTrees { trees, .. } => format!(
                "binary tree ensemble, {} trees, {} nodes, {} KiB, walked {}",
                trees.trees(),
                trees.nodes(),
                trees.bytes().div_ceil(1024),
                trees.walk()
            ),
            Core::Outputs { outputs, post, .. } => {
                let compiled = || outputs.iter().flatten();
                let mut walks: Vec<String> = compiled().map(Trees::walk).collect();
                walks.dedup();
                format!(
                    "tree ensemble of {} column(s) ({post:?}), {} trees, {} nodes, {} KiB, walked {}",
                    outputs.len(),
                    compiled().map(Trees::trees).sum::<usize>(),
                    compiled().map(Trees::nodes).sum::<usize>(),
                    compiled().map(Trees::bytes).sum::<usize>().div_ceil(1024),
                    walks.join(" / ")
                )
            }
        }
    }

    /// Column `k` of an `Outputs` core, before its post transform: its leaves'
    /// sum (averaged for AVERAGE) plus its base, as ONNX Runtime accumulates it (NaN for
    /// another core).
    #[inline]
    fn output_score(core: &Core, k: usize, row: &[f32]) -> f32 {
        let Core::Outputs {
            outputs,
            base,
            average_over,
            ..
        } = core
        else {
            return f32::NAN;
        };
        let s = outputs
            .get(k)
            .and_then(Option::as_ref)
            .map_or(0.0, |t| t.sum(row));
        let s = match average_over {
            Some(n) => s / n,
            None => s,
        };
        s + base.get(k).copied().unwrap_or(0.0)
    }

    /// A binary tree classifier's columns for one row, from its accumulated score s (leaves
    /// plus base) as ONNX Runtime's binary case writes it: [1 - s, s] when every weight is >= 0
    /// (s is then the positive class's probability), else [-s, s], each under the logistic if
    /// the model has it. `None` for another core.
    #[inline]
    fn binary_columns(core: &Core, row: &[f32]) -> Option<impl Fn(usize) -> f32> {
        let Core::BinaryTrees {
            trees,
            base,
            logistic: with_logistic,
            all_positive,
        } = core
        else {
            return None;
        };
        let s = trees.sum(row) + base;
        let (with_logistic, all_positive) = (*with_logistic, *all_positive);
        Some(move |c: usize| {
            let signed = if c == 0 { -s } else { s };
            match (all_positive, with_logistic) {
                (true, _) if c == 0 => 1.0 - s,
                (true, _) => s,
                (false, true) => logistic(signed),
                (false, false) => signed,
            }
        })
    }

    /// The probability column alone (`column_alone`).
    #[inline]
    fn column_value(&self, row: &[f32]) -> f32 {
        let plan = &*self.plan;
        let c = self.column;
        let mut v = match &plan.core {
            Core::Linear(l) => l.score_one(row, c),
            Core::BinaryTrees { .. } => {
                Self::binary_columns(&plan.core, row).map_or(f32::NAN, |column| column(c))
            }
            Core::Outputs { post, .. } => {
                let mut v = Self::output_score(&plan.core, c, row);
                // Per column (`column_alone`).
                post.apply(std::slice::from_mut(&mut v));
                v
            }
        };
        for step in &plan.steps {
            step.apply(std::slice::from_mut(&mut v));
        }
        v
    }

    /// The output columns for one row.
    #[inline]
    fn columns(&self, row: &[f32], cols: &mut [f32]) {
        let plan = &*self.plan;
        match &plan.core {
            Core::Linear(l) => l.score(row, cols),
            Core::BinaryTrees { .. } => {
                if let Some(column) = Self::binary_columns(&plan.core, row) {
                    for (c, v) in cols.iter_mut().enumerate() {
                        *v = column(c);
                    }
                }
            }
            Core::Outputs { post, .. } => {
                for (k, c) in cols.iter_mut().enumerate() {
                    *c = Self::output_score(&plan.core, k, row);
                }
                post.apply(cols);
            }
        }
        for step in &plan.steps {
            step.apply(cols);
        }
    }
}

impl Scorer for NativeScorer {
    fn width(&self) -> usize {
        self.plan.width
    }

    fn engine(&self) -> &'static str {
        "native"
    }

    fn score(&mut self, batch: &FeatureBatch, out: &mut [f32]) -> Result<(), InferError> {
        if batch.width() != self.plan.width {
            return Err(InferError::Width {
                got: self.plan.width,
                want: batch.width(),
            });
        }
        let mut buf = [0.0f32; COLUMNS_MAX];
        let cols = buf.get_mut(..self.plan.columns).unwrap_or_default();
        for (i, o) in out.iter_mut().take(batch.len()).enumerate() {
            let p = if self.column_alone {
                self.column_value(batch.row(i))
            } else {
                self.columns(batch.row(i), cols);
                cols.get(self.column).copied().unwrap_or(f32::NAN)
            };
            // As for ONNX Runtime's scores: never emit a NaN or a value outside [0, 1].
            *o = if p.is_finite() {
                p.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        Ok(())
    }
}

/// Which engine serves a model (`model.engine`).
pub fn compile_for(
    engine: crate::config::ModelEngine,
    spec: &OnnxSpec,
    bytes: &[u8],
) -> Result<Option<NativeScorer>, InferError> {
    use crate::config::ModelEngine;
    match engine {
        ModelEngine::Ort => Ok(None),
        ModelEngine::Native => NativeScorer::compile(spec, bytes).map(Some).map_err(|u| {
            InferError::Model(format!(
                "{}: model.engine = \"native\" cannot compile it: {u} (\"auto\" would run it on ONNX Runtime)",
                spec.path
            ))
        }),
        ModelEngine::Auto => match NativeScorer::compile(spec, bytes) {
            Ok(m) => Ok(Some(m)),
            Err(u) => {
                tracing::info!(model = %spec.path, "model.engine = auto: ONNX Runtime serves this model ({u})");
                Ok(None)
            }
        },
    }
}
