//! The `ai.onnx.ml` opset-5 `TreeEnsemble` operator, which supersedes `TreeEnsembleRegressor`
//! and `TreeEnsembleClassifier`: interior nodes and leaves in separate lists, a tree's shape
//! given by `tree_roots` and each node's true/false child (a node index, or a leaf index when
//! `nodes_trueleafs` / `nodes_falseleafs` say so), modes as uint8 codes and thresholds and leaf
//! weights as tensors of the input's type. Read here into the per-node listing of the older
//! operators, tree by tree from each root as ONNX Runtime expands it (a node reached twice is
//! copied, as there), so one compiler (`Trees::compile`) and one walk serve both.

use super::onnx_proto::{self, NodeProto, TensorProto};
use super::trees::{Listed, Mode, NODES_MAX};
use super::Unsupported;

/// How many times over its listed nodes and leaves an ensemble may expand (a tree listed twice
/// in `tree_roots` doubles it; a graph whose paths share nodes can grow exponentially).
const EXPANSION_MAX: usize = 4;

/// The expanded listing `Trees::compile` takes (`listed()` borrows it).
pub struct Expanded {
    tree: Vec<i64>,
    node: Vec<i64>,
    feature: Vec<i64>,
    mode: Vec<Option<Mode>>,
    value: Vec<f32>,
    yes: Vec<i64>,
    no: Vec<i64>,
    nan_true: Vec<i64>,
    weights: Vec<(i64, i64, i64, f32)>,
}

impl Expanded {
    pub fn listed(&self) -> Listed<'_> {
        Listed {
            tree: &self.tree,
            node: &self.node,
            feature: &self.feature,
            mode: &self.mode,
            value: &self.value,
            yes: &self.yes,
            no: &self.no,
            nan_true: &self.nan_true,
            weights: self.weights.clone(),
        }
    }

    fn push(&mut self, tree: i64, node: i64, branch: Option<(i64, Mode, f32, i64, i64, i64)>) {
        let (feature, mode, value, yes, no, nan_true) = match branch {
            Some((f, m, v, y, n, t)) => (f, Some(m), v, y, n, t),
            None => (0, None, 0.0, 0, 0, 0),
        };
        self.tree.push(tree);
        self.node.push(node);
        self.feature.push(feature);
        self.mode.push(mode);
        self.value.push(value);
        self.yes.push(yes);
        self.no.push(no);
        self.nan_true.push(nan_true);
    }
}

/// `aggregate_function` and `post_transform` as the operator codes them.
pub struct Header {
    pub targets: i64,
    /// 0 AVERAGE, 1 SUM (the default), 2 MIN, 3 MAX.
    pub aggregate: i64,
    /// 0 NONE (the default), 1 SOFTMAX, 2 LOGISTIC, 3 SOFTMAX_ZERO, 4 PROBIT.
    pub post: i64,
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a onnx_proto::Attribute> {
    n.attribute.iter().find(|a| a.name == name)
}

fn ints<'a>(n: &'a NodeProto, name: &str) -> &'a [i64] {
    attr(n, name).map(|a| a.ints.as_slice()).unwrap_or(&[])
}

fn int(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

fn tensor<'a>(n: &'a NodeProto, name: &str) -> Option<&'a TensorProto> {
    attr(n, name).and_then(|a| a.t.as_ref())
}

/// A float32 tensor attribute (the input is float32, and the operator's thresholds and weights
/// must be of the input's type); absent reads as empty.
fn float_tensor(n: &NodeProto, name: &str) -> Result<Vec<f32>, Unsupported> {
    match tensor(n, name) {
        None => Ok(Vec::new()),
        Some(t) => onnx_proto::floats(t).ok_or_else(|| {
            Unsupported(format!(
                "TreeEnsemble {name} of {} (float32, inline, compiles)",
                onnx_proto::type_name(t.data_type)
            ))
        }),
    }
}

pub fn header(n: &NodeProto) -> Header {
    Header {
        targets: int(n, "n_targets", 0),
        aggregate: int(n, "aggregate_function", 1),
        post: int(n, "post_transform", 0),
    }
}

fn mode(code: u8) -> Result<Mode, Unsupported> {
    Ok(match code {
        0 => Mode::Leq,
        1 => Mode::Lt,
        2 => Mode::Gte,
        3 => Mode::Gt,
        4 => Mode::Eq,
        5 => Mode::Neq,
        6 => {
            return Err(Unsupported(
                "TreeEnsemble with BRANCH_MEMBER (set membership) nodes".into(),
            ))
        }
        other => return Err(Unsupported(format!("TreeEnsemble node mode code {other}"))),
    })
}

/// Where a child pointer leads.
#[derive(Clone, Copy)]
enum To {
    Node(usize),
    Leaf(usize),
}

pub fn expand(n: &NodeProto) -> Result<Expanded, Unsupported> {
    let modes = match tensor(n, "nodes_modes") {
        None => Vec::new(),
        Some(t) => onnx_proto::u8s(t).ok_or_else(|| {
            Unsupported(format!(
                "TreeEnsemble nodes_modes not readable as uint8 ({})",
                onnx_proto::type_name(t.data_type)
            ))
        })?,
    };
    let splits = float_tensor(n, "nodes_splits")?;
    let weights = float_tensor(n, "leaf_weights")?;
    let (feature, yes, yes_leaf, no, no_leaf) = (
        ints(n, "nodes_featureids"),
        ints(n, "nodes_truenodeids"),
        ints(n, "nodes_trueleafs"),
        ints(n, "nodes_falsenodeids"),
        ints(n, "nodes_falseleafs"),
    );
    let nan_true = ints(n, "nodes_missing_value_tracks_true");
    let targets = ints(n, "leaf_targetids");
    let nodes = modes.len();
    let lengths = [
        splits.len(),
        feature.len(),
        yes.len(),
        yes_leaf.len(),
        no.len(),
        no_leaf.len(),
    ];
    if lengths.iter().any(|&k| k != nodes) || !(nan_true.is_empty() || nan_true.len() == nodes) {
        return Err(Unsupported(format!(
            "TreeEnsemble nodes_* lists of different lengths ({nodes} modes, {lengths:?}, {} missing-value flags)",
            nan_true.len()
        )));
    }
    if targets.len() != weights.len() {
        return Err(Unsupported(format!(
            "TreeEnsemble has {} leaf_targetids for {} leaf_weights",
            targets.len(),
            weights.len()
        )));
    }
    let branch_modes = modes
        .iter()
        .map(|&c| mode(c))
        .collect::<Result<Vec<_>, _>>()?;
    let to = |i: usize, leaf: &[i64], id: &[i64]| -> Result<To, Unsupported> {
        let (is_leaf, at) = (leaf.get(i).copied().unwrap_or(0) != 0, id.get(i).copied());
        let bound = if is_leaf { weights.len() } else { nodes };
        match at
            .and_then(|a| usize::try_from(a).ok())
            .filter(|&a| a < bound)
        {
            Some(a) if is_leaf => Ok(To::Leaf(a)),
            Some(a) => Ok(To::Node(a)),
            None => Err(Unsupported(format!(
                "TreeEnsemble node {i} points at {} {}, which is not listed",
                if is_leaf { "leaf" } else { "node" },
                at.unwrap_or(-1)
            ))),
        }
    };

    let roots = ints(n, "tree_roots");
    if roots.is_empty() {
        return Err(Unsupported("TreeEnsemble without tree_roots".into()));
    }
    let mut out = Expanded {
        tree: Vec::new(),
        node: Vec::new(),
        feature: Vec::new(),
        mode: Vec::new(),
        value: Vec::new(),
        yes: Vec::new(),
        no: Vec::new(),
        nan_true: Vec::new(),
        weights: Vec::new(),
    };
    // Trees list each node and leaf once, so their expansion is about that long; a node
    // reached from two places is copied (as ONNX Runtime does), and only a few times over.
    let budget = nodes
        .saturating_add(weights.len())
        .saturating_add(roots.len())
        .saturating_mul(EXPANSION_MAX)
        .min(NODES_MAX);
    // (what, its id in the tree, depth): a path longer than there are nodes repeats one, a loop.
    let mut stack: Vec<(To, i64, usize)> = Vec::new();
    for (t, &root) in roots.iter().enumerate() {
        let t = t as i64;
        let r = usize::try_from(root)
            .ok()
            .filter(|&r| r < nodes)
            .ok_or_else(|| Unsupported(format!("TreeEnsemble tree root {root} is not a node")))?;
        // ONNX Runtime reads a root whose two sides are the same leaf as a one-leaf tree whose
        // weight is leaf_weights[root] (not that leaf's): left to it.
        if yes.get(r) == no.get(r) && yes_leaf.get(r) == Some(&1) && no_leaf.get(r) == Some(&1) {
            return Err(Unsupported(format!(
                "TreeEnsemble tree {t}'s root has the same leaf on both sides (a one-leaf tree)"
            )));
        }
        let mut next_id = 1i64;
        stack.push((To::Node(r), 0, 0));
        while let Some((at, id, depth)) = stack.pop() {
            if out.tree.len() >= budget {
                return Err(Unsupported(format!(
                    "TreeEnsemble expands to more than {budget} nodes (nodes shared between paths: a graph, not trees)"
                )));
            }
            if depth > nodes {
                return Err(Unsupported(format!(
                    "TreeEnsemble tree {t} loops (a path longer than its {nodes} nodes)"
                )));
            }
            let i = match at {
                To::Leaf(j) => {
                    let (target, w) = (
                        targets.get(j).copied().unwrap_or(-1),
                        weights.get(j).copied().unwrap_or(f32::NAN),
                    );
                    out.push(t, id, None);
                    out.weights.push((t, id, target, w));
                    continue;
                }
                To::Node(i) => i,
            };
            let (y, f) = (next_id, next_id + 1);
            next_id += 2;
            let m = branch_modes.get(i).copied().unwrap_or(Mode::Leq);
            out.push(
                t,
                id,
                Some((
                    feature.get(i).copied().unwrap_or(-1),
                    m,
                    splits.get(i).copied().unwrap_or(f32::NAN),
                    y,
                    f,
                    nan_true.get(i).copied().unwrap_or(0),
                )),
            );
            stack.push((to(i, no_leaf, no)?, f, depth + 1));
            stack.push((to(i, yes_leaf, yes)?, y, depth + 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::native::onnx_proto::{Attribute, UINT8};

    fn ints_attr(name: &str, v: &[i64]) -> Attribute {
        Attribute {
            name: name.into(),
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn tensor_attr(name: &str, t: TensorProto) -> Attribute {
        Attribute {
            name: name.into(),
            t: Some(t).into(),
            ..Default::default()
        }
    }

    fn floats_t(v: &[f32]) -> TensorProto {
        TensorProto {
            data_type: onnx_proto::FLOAT,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    /// A `TreeEnsemble` node with these uint8 mode codes and other attributes.
    fn ensemble(modes: Vec<i32>, mut attribute: Vec<Attribute>) -> NodeProto {
        attribute.push(tensor_attr(
            "nodes_modes",
            TensorProto {
                data_type: UINT8,
                int32_data: modes,
                ..Default::default()
            },
        ));
        NodeProto {
            op_type: "TreeEnsemble".into(),
            domain: "ai.onnx.ml".into(),
            attribute,
            ..Default::default()
        }
    }

    /// One tree: node 0 (x0 <= 1) -> true: node 1 (x1 < 2), false: leaf 2; node 1 -> leaves 0, 1.
    fn small(modes: Vec<i32>) -> NodeProto {
        ensemble(
            modes,
            vec![
                tensor_attr("nodes_splits", floats_t(&[1.0, 2.0])),
                ints_attr("nodes_featureids", &[0, 1]),
                ints_attr("nodes_truenodeids", &[1, 0]),
                ints_attr("nodes_trueleafs", &[0, 1]),
                ints_attr("nodes_falsenodeids", &[2, 1]),
                ints_attr("nodes_falseleafs", &[1, 1]),
                ints_attr("leaf_targetids", &[0, 0, 0]),
                tensor_attr("leaf_weights", floats_t(&[10.0, 20.0, 30.0])),
                ints_attr("tree_roots", &[0]),
            ],
        )
    }

    #[test]
    fn a_tree_expands_into_the_per_node_listing() {
        let e = expand(&small(vec![0, 1])).unwrap();
        let l = e.listed();
        assert_eq!(l.node, &[0, 1, 3, 4, 2]);
        assert_eq!(l.mode, &[Some(Mode::Leq), Some(Mode::Lt), None, None, None]);
        assert_eq!((l.yes[0], l.no[0]), (1, 2));
        assert_eq!((l.yes[1], l.no[1]), (3, 4));
        let w: Vec<_> = l.weights.iter().map(|&(_, n, _, w)| (n, w)).collect();
        assert_eq!(w, [(3, 10.0), (4, 20.0), (2, 30.0)]);
    }

    #[test]
    fn what_does_not_compile_says_why() {
        let cases = [
            (small(vec![6, 0]), "BRANCH_MEMBER"),
            (small(vec![9, 0]), "mode code 9"),
            (small(vec![0]), "different lengths"),
            (small(vec![0, 300]), "uint8"),
        ];
        for (n, says) in cases {
            let e = expand(&n).err().unwrap().0;
            assert!(e.contains(says), "{says}: {e}");
        }
        let mut looping = small(vec![0, 0]);
        for a in &mut looping.attribute {
            if a.name == "nodes_trueleafs" {
                a.ints = vec![0, 0];
            }
        }
        // node 1's true side now points at node 0: a loop.
        assert!(expand(&looping).err().unwrap().0.contains("loops"));
        let mut one_leaf = small(vec![0, 0]);
        for a in &mut one_leaf.attribute {
            match a.name.as_str() {
                "nodes_truenodeids" => a.ints = vec![2, 0],
                "nodes_trueleafs" => a.ints = vec![1, 1],
                _ => {}
            }
        }
        // Each node's two sides the same next node: 2^k paths from k listed nodes.
        let k = 24;
        // Node i's sides: node i + 1, the last node's leaf 0.
        let chain: Vec<i64> = (1..k as i64).chain([0]).collect();
        let dag = ensemble(
            vec![0; k],
            vec![
                tensor_attr("nodes_splits", floats_t(&vec![0.0; k])),
                ints_attr("nodes_featureids", &vec![0; k]),
                ints_attr("nodes_truenodeids", &chain),
                ints_attr("nodes_falsenodeids", &chain),
                ints_attr("nodes_trueleafs", &[vec![0; k - 1], vec![1]].concat()),
                ints_attr("nodes_falseleafs", &[vec![0; k - 1], vec![1]].concat()),
                ints_attr("leaf_targetids", &[0]),
                tensor_attr("leaf_weights", floats_t(&[1.0])),
                ints_attr("tree_roots", &[0]),
            ],
        );
        let e = expand(&dag).err().unwrap().0;
        assert!(e.contains("not trees"), "{e}");
        assert!(expand(&one_leaf)
            .err()
            .unwrap()
            .0
            .contains("same leaf on both sides"));
    }
}
