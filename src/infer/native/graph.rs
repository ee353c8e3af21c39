//! From an ONNX graph to a compiled model: find the graph's one float input and the path from
//! `model.output` back to it, which must be one tabular operator (the core) under zero or more
//! element-wise wrappers. Anything else is `Unsupported`, with the reason, and ONNX Runtime
//! serves the model (`model.engine = auto`).

use std::collections::HashMap;

use super::onnx_proto::{self, Attribute, GraphProto, ModelProto, NodeProto, TensorProto, FLOAT};
use super::ops::{Linear, Post, Step, COLUMNS_MAX};
use super::tree_ensemble_v5;
use super::trees::{compile_outputs, Listed, Mode, Trees};
use super::Unsupported;
use crate::limits::FEATURE_ROW_MAX;

/// What produces the output columns.
pub enum Core {
    Linear(Linear),
    /// A binary `TreeEnsembleClassifier`: s = sum of leaves + base, written as ONNX Runtime's
    /// binary case writes it (see `write_binary`).
    BinaryTrees {
        trees: Trees,
        base: f32,
        logistic: bool,
        all_positive: bool,
    },
    /// Trees feeding one or more columns: a multiclass `TreeEnsembleClassifier`, a
    /// `TreeEnsembleRegressor` or opset-5 `TreeEnsemble` of one or more targets. Column k is
    /// its trees' leaves summed in tree order (divided by the ensemble's tree count for
    /// AVERAGE) plus `base[k]`, then `post` over the columns — ONNX Runtime's aggregators.
    Outputs {
        /// Per column (`trees::compile_outputs`); `None` when no leaf feeds it.
        outputs: Vec<Option<Trees>>,
        /// One per column (0 where the model has none).
        base: Vec<f32>,
        /// AVERAGE: the ensemble's tree count.
        average_over: Option<f32>,
        post: Post,
    },
}

pub struct Plan {
    pub width: usize,
    pub core: Core,
    /// Applied in order after the core.
    pub steps: Vec<Step>,
    pub columns: usize,
}

/// Wrappers between the core and the output, at most (a converter adds two or three).
const PATH_MAX: usize = 32;

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a Attribute> {
    n.attribute.iter().find(|a| a.name == name)
}

fn floats(n: &NodeProto, name: &str) -> Vec<f32> {
    attr(n, name).map(|a| a.floats.clone()).unwrap_or_default()
}

fn ints<'a>(n: &'a NodeProto, name: &str) -> &'a [i64] {
    attr(n, name).map(|a| a.ints.as_slice()).unwrap_or(&[])
}

fn bytes<'a>(n: &'a NodeProto, name: &str) -> &'a [u8] {
    attr(n, name).map(|a| a.s.as_slice()).unwrap_or(b"")
}

/// Attributes that hold what the native engine does not read (double thresholds, ...).
fn refuse_attrs(n: &NodeProto, names: &[&str]) -> Result<(), Unsupported> {
    match names.iter().find(|a| attr(n, a).is_some()) {
        Some(a) => Err(Unsupported(format!("{} with attribute {a}", n.op_type))),
        None => Ok(()),
    }
}

pub fn plan(model: &ModelProto, input: &str, output: &str) -> Result<Plan, Unsupported> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Unsupported("no graph".into()))?;
    let width = input_width(g, input)?;
    if !g.output.iter().any(|o| o.name == output) {
        return Err(Unsupported(format!("no graph output named {output:?}")));
    }
    let producer: HashMap<&str, &NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut steps = Vec::new();
    let mut value = output;
    for _ in 0..PATH_MAX {
        let n = producer
            .get(value)
            .ok_or_else(|| Unsupported(format!("nothing produces {value:?}")))?;
        let ml = n.domain == "ai.onnx.ml";
        let core_input = || -> Result<(), Unsupported> {
            match n.input.first() {
                Some(i) if i == input => Ok(()),
                _ => Err(Unsupported(format!(
                    "{} reads {:?}, not the model input {input:?}",
                    n.op_type,
                    n.input.first()
                ))),
            }
        };
        let from = |k: usize| n.output.get(k).is_some_and(|o| o == value);
        let core = match (ml, n.op_type.as_str()) {
            (true, "LinearClassifier") if from(1) => Some(linear_classifier(n, width)?),
            (true, "LinearRegressor") if from(0) => Some(linear_regressor(n, width)?),
            (true, "TreeEnsembleClassifier") if from(1) => Some(tree_classifier(n, width)?),
            (true, "TreeEnsembleRegressor") if from(0) => Some(tree_regressor(n, width)?),
            (true, "TreeEnsemble") if from(0) => Some(tree_ensemble(n, width)?),
            _ => None,
        };
        if let Some((core, columns)) = core {
            core_input()?;
            steps.reverse();
            return Ok(Plan {
                width,
                core,
                steps,
                columns,
            });
        }
        let (step, next) = wrapper(g, &producer, n)?;
        steps.extend(step);
        value = next;
    }
    Err(Unsupported(format!(
        "more than {PATH_MAX} operators between the input and {output:?}"
    )))
}

fn input_width(g: &GraphProto, input: &str) -> Result<usize, Unsupported> {
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !inits.contains(&i.name.as_str()))
        .collect();
    let [only] = inputs.as_slice() else {
        return Err(Unsupported(format!(
            "{} graph inputs; sluice feeds one",
            inputs.len()
        )));
    };
    if only.name != input {
        return Err(Unsupported(format!(
            "the input is {:?}, not {input:?} (model.input)",
            only.name
        )));
    }
    let w = match onnx_proto::tensor_dims(only) {
        Some((FLOAT, dims)) => match dims.as_slice() {
            [_, w] => *w,
            _ => 0,
        },
        _ => 0,
    };
    usize::try_from(w)
        .ok()
        .filter(|w| (1..=FEATURE_ROW_MAX).contains(w))
        .ok_or_else(|| {
            Unsupported(format!(
                "the input is not float32 [batch, 1..={FEATURE_ROW_MAX}]"
            ))
        })
}

/// A wrapper node: the step it applies and the value it reads.
fn wrapper<'g>(
    g: &'g GraphProto,
    producer: &HashMap<&str, &'g NodeProto>,
    n: &'g NodeProto,
) -> Result<(Option<Step>, &'g str), Unsupported> {
    let unsupported = || {
        Unsupported(format!(
            "operator {}{}{} on the output's path",
            n.domain,
            if n.domain.is_empty() { "" } else { ":" },
            n.op_type
        ))
    };
    let first = || n.input.first().map(String::as_str).ok_or_else(unsupported);
    match (n.domain.as_str(), n.op_type.as_str()) {
        ("", "Identity") => Ok((None, first()?)),
        ("", "Cast") if attr(n, "to").map(|a| a.i) == Some(i64::from(FLOAT)) => {
            Ok((None, first()?))
        }
        ("", "Sigmoid") => Ok((Some(Step::Sigmoid), first()?)),
        ("ai.onnx.ml", "Normalizer") => {
            let step = match bytes(n, "norm") {
                b"L1" => Step::NormalizeL1,
                b"L2" => Step::NormalizeL2,
                b"MAX" => Step::NormalizeMax,
                _ => return Err(unsupported()),
            };
            Ok((Some(step), first()?))
        }
        ("", op @ ("Mul" | "Add" | "Sub" | "Div")) => {
            let [a, b] = n.input.as_slice() else {
                return Err(unsupported());
            };
            let (ka, kb) = (scalar(g, producer, a), scalar(g, producer, b));
            let step = match (op, ka, kb) {
                ("Mul", _, Some(k)) => (Step::Mul(k), a),
                ("Mul", Some(k), None) => (Step::Mul(k), b),
                ("Add", _, Some(k)) => (Step::Add(k), a),
                ("Add", Some(k), None) => (Step::Add(k), b),
                ("Sub", _, Some(k)) => (Step::Add(-k), a),
                ("Sub", Some(k), None) => (Step::SubFrom(k), b),
                ("Div", _, Some(k)) => (Step::Div(k), a),
                _ => return Err(unsupported()),
            };
            Ok((Some(step.0), step.1.as_str()))
        }
        _ => Err(unsupported()),
    }
}

/// A one-element float constant: an initializer or a `Constant` node's value.
fn scalar(g: &GraphProto, producer: &HashMap<&str, &NodeProto>, name: &str) -> Option<f32> {
    let t = match g.initializer.iter().find(|t| t.name == name) {
        Some(t) => Some(t.clone()),
        None => producer
            .get(name)
            .filter(|n| n.domain.is_empty() && n.op_type == "Constant")
            .and_then(|n| {
                attr(n, "value_float")
                    .map(|a| TensorProto {
                        data_type: FLOAT,
                        float_data: vec![a.f],
                        ..Default::default()
                    })
                    .or_else(|| attr(n, "value").and_then(|a| a.t.as_ref().cloned()))
            }),
    }?;
    match onnx_proto::floats(&t)?.as_slice() {
        [k] if t.dims.iter().all(|&d| d == 1) => Some(*k),
        _ => None,
    }
}

fn post(n: &NodeProto) -> Result<Post, Unsupported> {
    Post::parse(bytes(n, "post_transform"))
        .map_err(|what| Unsupported(format!("{} with {what}", n.op_type)))
}

fn class_count(n: &NodeProto) -> usize {
    let ints = ints(n, "classlabels_ints").len() + ints(n, "classlabels_int64s").len();
    let strings = attr(n, "classlabels_strings").map_or(0, |a| a.strings.len());
    ints + strings
}

fn linear_classifier(n: &NodeProto, width: usize) -> Result<(Core, usize), Unsupported> {
    let coefficients = floats(n, "coefficients");
    let intercepts = floats(n, "intercepts");
    let targets = intercepts.len();
    if !(2..=COLUMNS_MAX).contains(&targets) || class_count(n) != targets {
        // One coefficient row for two classes is a path ONNX Runtime writes unscaled; the
        // converters emit one row per class, so the native engine takes only that.
        return Err(Unsupported(format!(
            "LinearClassifier with {targets} coefficient rows for {} classes (2 to {COLUMNS_MAX}, one per class, compile)",
            class_count(n)
        )));
    }
    if coefficients.len() != targets * width {
        return Err(Unsupported(format!(
            "LinearClassifier has {} coefficients for {targets} x {width}",
            coefficients.len()
        )));
    }
    let post = post(n)?;
    if post == Post::Probit {
        // ONNX Runtime's linear classifier writes PROBIT scores by its own rules; not read.
        return Err(Unsupported(
            "LinearClassifier with post_transform PROBIT".into(),
        ));
    }
    Ok((
        Core::Linear(Linear {
            coefficients,
            intercepts,
            post,
        }),
        targets,
    ))
}

fn linear_regressor(n: &NodeProto, width: usize) -> Result<(Core, usize), Unsupported> {
    let targets = attr(n, "targets").map_or(1, |a| a.i);
    let coefficients = floats(n, "coefficients");
    let mut intercepts = floats(n, "intercepts");
    if intercepts.is_empty() {
        intercepts.push(0.0);
    }
    if targets != 1 || coefficients.len() != width || intercepts.len() != 1 {
        return Err(Unsupported(format!(
            "LinearRegressor with {targets} targets, {} coefficients, {} intercepts (1 target compiles)",
            coefficients.len(),
            intercepts.len()
        )));
    }
    match post(n)? {
        Post::None => Ok((
            Core::Linear(Linear {
                coefficients,
                intercepts,
                post: Post::None,
            }),
            1,
        )),
        p => Err(Unsupported(format!("LinearRegressor with {p:?}"))),
    }
}

fn listed<'a>(
    n: &'a NodeProto,
    modes: &'a [Option<Mode>],
    values: &'a [f32],
    prefix: &str,
) -> Listed<'a> {
    let w = |s: &str| format!("{prefix}_{s}");
    let (t, nd, id) = (
        ints(n, &w("treeids")),
        ints(n, &w("nodeids")),
        ints(n, &w("ids")),
    );
    let weights = floats(n, &w("weights"));
    Listed {
        tree: ints(n, "nodes_treeids"),
        node: ints(n, "nodes_nodeids"),
        feature: ints(n, "nodes_featureids"),
        mode: modes,
        value: values,
        yes: ints(n, "nodes_truenodeids"),
        no: ints(n, "nodes_falsenodeids"),
        nan_true: ints(n, "nodes_missing_value_tracks_true"),
        weights: t
            .iter()
            .zip(nd)
            .zip(id)
            .zip(weights)
            .map(|(((&t, &nd), &id), w)| (t, nd, id, w))
            .collect(),
    }
}

/// A tree operator's node modes, thresholds and base values.
struct TreeParts {
    modes: Vec<Option<Mode>>,
    values: Vec<f32>,
    base: Vec<f32>,
}

fn tree_parts(n: &NodeProto, prefix: &str) -> Result<TreeParts, Unsupported> {
    refuse_attrs(
        n,
        &[
            "nodes_values_as_tensor",
            "nodes_hitrates_as_tensor",
            "base_values_as_tensor",
            &format!("{prefix}_weights_as_tensor"),
        ],
    )?;
    let modes = attr(n, "nodes_modes")
        .map(|a| {
            a.strings
                .iter()
                .map(|s| Mode::parse(s))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let counts = [
        ints(n, &format!("{prefix}_treeids")).len(),
        ints(n, &format!("{prefix}_nodeids")).len(),
        ints(n, &format!("{prefix}_ids")).len(),
        floats(n, &format!("{prefix}_weights")).len(),
    ];
    if counts.iter().any(|&c| c != counts[0]) {
        return Err(Unsupported(format!(
            "{prefix} attribute lists of different lengths {counts:?}"
        )));
    }
    Ok(TreeParts {
        modes,
        values: floats(n, "nodes_values"),
        base: floats(n, "base_values"),
    })
}

/// The single output's base value (0 when there is none): one output compiles, so at most one.
fn one_base(n: &NodeProto, base: &[f32]) -> Result<f32, Unsupported> {
    match base {
        [] => Ok(0.0),
        [b] => Ok(*b),
        _ => Err(Unsupported(format!(
            "{} with {} base values (0 or 1 compile)",
            n.op_type,
            base.len()
        ))),
    }
}

fn tree_classifier(n: &NodeProto, width: usize) -> Result<(Core, usize), Unsupported> {
    let classes = class_count(n);
    if classes > 2 {
        return multiclass_trees(n, width, classes);
    }
    if classes != 2 {
        return Err(Unsupported(format!(
            "TreeEnsembleClassifier with {classes} class(es) (2 to {COLUMNS_MAX} compile)"
        )));
    }
    let p = tree_parts(n, "class")?;
    let trees = Trees::compile(&listed(n, &p.modes, &p.values, "class"), width)?;
    let base = one_base(n, &p.base)?;
    let logistic = match post(n)? {
        Post::None => false,
        Post::Logistic => true,
        p => {
            return Err(Unsupported(format!(
                "binary TreeEnsembleClassifier with {p:?}"
            )))
        }
    };
    let all_positive = floats(n, "class_weights").iter().all(|&w| w >= 0.0);
    Ok((
        Core::BinaryTrees {
            trees,
            base,
            logistic,
            all_positive,
        },
        2,
    ))
}

/// A `TreeEnsembleClassifier` of three or more classes: every class a column, the base values
/// added to the first ones (as many as the model lists), `post` over all of them.
fn multiclass_trees(
    n: &NodeProto,
    width: usize,
    classes: usize,
) -> Result<(Core, usize), Unsupported> {
    if classes > COLUMNS_MAX {
        return Err(Unsupported(format!(
            "TreeEnsembleClassifier with {classes} classes (2 to {COLUMNS_MAX} compile)"
        )));
    }
    let p = tree_parts(n, "class")?;
    if p.base.len() > classes {
        return Err(Unsupported(format!(
            "TreeEnsembleClassifier with {} base values for {classes} classes",
            p.base.len()
        )));
    }
    let l = listed(n, &p.modes, &p.values, "class");
    let outputs = compile_outputs(&l, width, classes)?;
    let mut base = p.base;
    base.resize(classes, 0.0);
    Ok((
        Core::Outputs {
            outputs,
            base,
            average_over: None,
            post: post(n)?,
        },
        classes,
    ))
}

/// Trees of `targets` columns (a regressor's): `base` must be one per target, or one for a
/// single target, or none; a single target takes no post transform but PROBIT (ONNX Runtime's
/// one-output path applies no other).
fn target_trees(
    n: &NodeProto,
    l: &Listed<'_>,
    width: usize,
    targets: i64,
    (base, average, post): (Vec<f32>, bool, Post),
) -> Result<(Core, usize), Unsupported> {
    let k = usize::try_from(targets)
        .ok()
        .filter(|k| (1..=COLUMNS_MAX).contains(k))
        .ok_or_else(|| {
            Unsupported(format!(
                "{} with {targets} targets (1 to {COLUMNS_MAX} compile)",
                n.op_type
            ))
        })?;
    if k == 1 && !matches!(post, Post::None | Post::Probit) {
        return Err(Unsupported(format!(
            "{} of one target with post_transform {post:?} (ONNX Runtime applies none but PROBIT there)",
            n.op_type
        )));
    }
    let base = match base.len() {
        0 => vec![0.0; k],
        b if b == k => base,
        b => {
            // ONNX Runtime adds them only when there is one per target (or one for one target).
            return Err(Unsupported(format!(
                "{} with {b} base values for {k} targets",
                n.op_type
            )));
        }
    };
    let trees: std::collections::HashSet<i64> = l.tree.iter().copied().collect();
    Ok((
        Core::Outputs {
            outputs: compile_outputs(l, width, k)?,
            base,
            average_over: average.then_some(trees.len() as f32),
            post,
        },
        k,
    ))
}

fn tree_regressor(n: &NodeProto, width: usize) -> Result<(Core, usize), Unsupported> {
    let targets = attr(n, "n_targets").map_or(1, |a| a.i);
    let p = tree_parts(n, "target")?;
    let average = match bytes(n, "aggregate_function") {
        b"" | b"SUM" => false,
        b"AVERAGE" => true,
        other => {
            return Err(Unsupported(format!(
                "TreeEnsembleRegressor aggregate {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let l = listed(n, &p.modes, &p.values, "target");
    target_trees(n, &l, width, targets, (p.base, average, post(n)?))
}

/// The opset-5 `TreeEnsemble`: summed or averaged leaves per target, then its post transform
/// (for a single target, PROBIT only: ONNX Runtime's regressor path applies no other).
fn tree_ensemble(n: &NodeProto, width: usize) -> Result<(Core, usize), Unsupported> {
    let h = tree_ensemble_v5::header(n);
    let average = match h.aggregate {
        0 => true,
        1 => false,
        other => {
            return Err(Unsupported(format!(
                "TreeEnsemble aggregate_function {other} (SUM and AVERAGE compile)"
            )))
        }
    };
    let post =
        Post::from_code(h.post).map_err(|what| Unsupported(format!("TreeEnsemble with {what}")))?;
    let expanded = tree_ensemble_v5::expand(n)?;
    target_trees(
        n,
        &expanded.listed(),
        width,
        h.targets,
        (Vec::new(), average, post),
    )
}
