//! A tree ensemble (ONNX-ML `TreeEnsembleClassifier` / `TreeEnsembleRegressor`) compiled into
//! one flat array of 16-byte nodes, each tree laid out depth-first so every child sits after
//! its parent: a walk only moves forward and must end at a leaf. The walk matches ONNX Runtime's
//! (same float32 comparisons, NaN sent where `nodes_missing_value_tracks_true` says, leaf values
//! summed in tree order), so scores equal its scores.

use std::collections::HashMap;

use super::perfect::Perfect;
use super::Unsupported;

/// A branch node's comparison: `x <op> threshold` sends the row to the true child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Mode {
    /// `None` for LEAF; `Err` for a mode the format does not have.
    pub fn parse(s: &[u8]) -> Result<Option<Self>, Unsupported> {
        Ok(Some(match s {
            b"BRANCH_LEQ" => Self::Leq,
            b"BRANCH_LT" => Self::Lt,
            b"BRANCH_GTE" => Self::Gte,
            b"BRANCH_GT" => Self::Gt,
            b"BRANCH_EQ" => Self::Eq,
            b"BRANCH_NEQ" => Self::Neq,
            b"LEAF" => return Ok(None),
            other => {
                return Err(Unsupported(format!(
                    "node mode {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        }))
    }

    #[inline(always)]
    pub(super) fn goes_true(self, x: f32, t: f32) -> bool {
        match self {
            Self::Leq => x <= t,
            Self::Lt => x < t,
            Self::Gte => x >= t,
            Self::Gt => x > t,
            Self::Eq => x == t,
            Self::Neq => x != t,
        }
    }
}

/// `feature` of a leaf.
const LEAF: u32 = u32::MAX;
/// Set in a branch's `feature`: a NaN input goes to the true child.
const NAN_TRUE: u32 = 1 << 31;

/// A leaf holds its value in `value`; a branch its threshold.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Node {
    value: f32,
    feature: u32,
    yes: u32,
    no: u32,
}

/// The ensemble's nodes as the ONNX attributes list them (one entry per node).
pub struct Listed<'a> {
    pub tree: &'a [i64],
    pub node: &'a [i64],
    pub feature: &'a [i64],
    pub mode: &'a [Option<Mode>],
    pub value: &'a [f32],
    pub yes: &'a [i64],
    pub no: &'a [i64],
    pub nan_true: &'a [i64],
    /// (tree, node, target or class, weight), one per leaf weight.
    pub weights: Vec<(i64, i64, i64, f32)>,
}

/// Compiled trees of one output (every leaf weight on target / class 0).
pub struct Trees {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// Every branch's mode when they share one (the usual case: one comparison, no lookup).
    mode: Option<Mode>,
    /// Per node, when modes differ.
    modes: Vec<Mode>,
    /// The same trees as perfect binary trees, walked branch-free, when all are shallow and
    /// share one mode (`sum` then walks these).
    perfect: Option<Perfect>,
}

/// Far more nodes than any model seen (a 1,000-tree depth-8 ensemble has ~500k): bounds the
/// memory a model file can make sluice take per shard (16 bytes a node).
pub const NODES_MAX: usize = 8 << 20;

impl Listed<'_> {
    fn check_lengths(&self) -> Result<usize, Unsupported> {
        let n = self.tree.len();
        let same = [
            self.node.len(),
            self.feature.len(),
            self.mode.len(),
            self.value.len(),
            self.yes.len(),
            self.no.len(),
        ];
        if same.iter().any(|&k| k != n) {
            return Err(Unsupported(format!(
                "node attribute lists of different lengths ({n} tree ids, {same:?})"
            )));
        }
        Ok(n)
    }
}

/// An ensemble whose leaves feed several outputs (a multiclass classifier's classes, a
/// regressor's targets) as one `Trees` per output: the trees with a weight on that output, in
/// their listed order, each of their leaves worth its weight there or 0 where it has none
/// (ONNX Runtime adds nothing there; adding 0 leaves a sum as it was). The converters write
/// one output per tree, so each tree is walked once; a tree feeding k outputs is walked k
/// times. `None` for an output no leaf feeds (its score is 0 before the base).
pub fn compile_outputs(
    l: &Listed<'_>,
    width: usize,
    outputs: usize,
) -> Result<Vec<Option<Trees>>, Unsupported> {
    let n = l.check_lengths()?;
    let mut feeds = vec![std::collections::HashSet::new(); outputs];
    let mut weight: HashMap<(i64, i64, usize), f32> = HashMap::with_capacity(l.weights.len());
    let mut leaves = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &(tree, node, out, w) in &l.weights {
        let k = usize::try_from(out)
            .ok()
            .filter(|&k| k < outputs)
            .ok_or_else(|| {
                Unsupported(format!("a leaf weight on class/target {out} of {outputs}"))
            })?;
        if weight.insert((tree, node, k), w).is_some() {
            // ONNX Runtime adds both, one after the other; one summed weight would round
            // differently.
            return Err(Unsupported(format!(
                "leaf {node} of tree {tree} has two weights on class/target {k}"
            )));
        }
        feeds[k].insert(tree);
        if seen.insert((tree, node)) {
            leaves.push((tree, node));
        }
    }
    let mut compiled = 0usize;
    let mut all = Vec::with_capacity(outputs);
    for (k, feeding) in feeds.iter().enumerate() {
        if feeding.is_empty() {
            all.push(None);
            continue;
        }
        let keep: Vec<usize> = (0..n).filter(|&i| feeding.contains(&l.tree[i])).collect();
        compiled = compiled.saturating_add(keep.len());
        if compiled > NODES_MAX {
            return Err(Unsupported(format!(
                "more than {NODES_MAX} nodes once split per class/target"
            )));
        }
        let pick = |v: &[i64]| -> Vec<i64> {
            keep.iter()
                .map(|&i| v.get(i).copied().unwrap_or(0))
                .collect()
        };
        let (tree, node, feature, yes, no, nan_true) = (
            pick(l.tree),
            pick(l.node),
            pick(l.feature),
            pick(l.yes),
            pick(l.no),
            pick(l.nan_true),
        );
        let mode: Vec<Option<Mode>> = keep.iter().map(|&i| l.mode[i]).collect();
        let value: Vec<f32> = keep.iter().map(|&i| l.value[i]).collect();
        let weights = leaves
            .iter()
            .filter(|(t, _)| feeding.contains(t))
            .map(|&(t, nd)| (t, nd, 0, weight.get(&(t, nd, k)).copied().unwrap_or(0.0)))
            .collect();
        let one = Listed {
            tree: &tree,
            node: &node,
            feature: &feature,
            mode: &mode,
            value: &value,
            yes: &yes,
            no: &no,
            nan_true: &nan_true,
            weights,
        };
        all.push(Some(Trees::compile(&one, width)?));
    }
    Ok(all)
}

impl Trees {
    pub fn compile(l: &Listed<'_>, width: usize) -> Result<Self, Unsupported> {
        let n = l.check_lengths()?;
        if n == 0 || n > NODES_MAX {
            return Err(Unsupported(format!("{n} nodes (1 to {NODES_MAX} compile)")));
        }
        let mut at: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
        for i in 0..n {
            if at.insert((l.tree[i], l.node[i]), i).is_some() {
                return Err(Unsupported(format!(
                    "node {} of tree {} listed twice",
                    l.node[i], l.tree[i]
                )));
            }
        }
        let mut leaf_value: HashMap<usize, f32> = HashMap::new();
        for &(tree, node, class, weight) in &l.weights {
            let Some(&i) = at.get(&(tree, node)) else {
                return Err(Unsupported(format!(
                    "a weight names node {node} of tree {tree}, which is not listed"
                )));
            };
            if class != 0 {
                return Err(Unsupported(format!(
                    "leaf weights on class/target {class}: the native engine compiles ensembles whose weights all go to 0 (binary classifiers, single-target regressors)"
                )));
            }
            if l.mode[i].is_some() {
                return Err(Unsupported(format!(
                    "a weight on branch node {node} of tree {tree}"
                )));
            }
            if leaf_value.insert(i, weight).is_some() {
                return Err(Unsupported(format!(
                    "leaf {node} of tree {tree} has more than one weight"
                )));
            }
        }
        // A tree's root is the first node listed for it, as ONNX Runtime takes it; a tree
        // listed in two runs would be two trees there.
        let mut roots_at = Vec::new();
        let mut seen_trees = std::collections::HashSet::new();
        for i in 0..n {
            if i == 0 || l.tree[i] != l.tree[i - 1] {
                if !seen_trees.insert(l.tree[i]) {
                    return Err(Unsupported(format!(
                        "tree {} listed in two places",
                        l.tree[i]
                    )));
                }
                roots_at.push(i);
            }
        }
        let modes_seen: std::collections::BTreeSet<_> =
            l.mode.iter().flatten().map(|m| *m as u8).collect();
        let mode = (modes_seen.len() <= 1)
            .then(|| l.mode.iter().flatten().next().copied().unwrap_or(Mode::Leq));

        let mut t = Trees {
            nodes: Vec::with_capacity(n),
            roots: Vec::with_capacity(roots_at.len()),
            mode,
            modes: Vec::new(),
            perfect: None,
        };
        let mut placed = vec![false; n];
        // (listed index, where to write its compiled index: (parent, true child?))
        let mut stack: Vec<(usize, Option<(usize, bool)>)> = Vec::new();
        for &root in &roots_at {
            t.roots.push(t.nodes.len() as u32);
            stack.push((root, None));
            while let Some((i, parent)) = stack.pop() {
                if std::mem::replace(&mut placed[i], true) {
                    return Err(Unsupported(format!(
                        "node {} of tree {} is reached twice (not a tree)",
                        l.node[i], l.tree[i]
                    )));
                }
                let here = t.nodes.len();
                if let Some((p, yes)) = parent {
                    let slot = &mut t.nodes[p];
                    if yes {
                        slot.yes = here as u32;
                    } else {
                        slot.no = here as u32;
                    }
                }
                let Some(m) = l.mode[i] else {
                    let Some(&v) = leaf_value.get(&i) else {
                        return Err(Unsupported(format!(
                            "leaf {} of tree {} has no weight",
                            l.node[i], l.tree[i]
                        )));
                    };
                    t.nodes.push(Node {
                        value: v,
                        feature: LEAF,
                        yes: 0,
                        no: 0,
                    });
                    t.modes.push(Mode::Leq);
                    continue;
                };
                let f = usize::try_from(l.feature[i])
                    .ok()
                    .filter(|&f| f < width)
                    .ok_or_else(|| {
                        Unsupported(format!(
                            "node {} of tree {} reads feature {} of a {width}-wide row",
                            l.node[i], l.tree[i], l.feature[i]
                        ))
                    })?;
                let nan_true = l.nan_true.get(i).copied().unwrap_or(0) == 1;
                t.nodes.push(Node {
                    value: l.value[i],
                    feature: f as u32 | if nan_true { NAN_TRUE } else { 0 },
                    yes: 0,
                    no: 0,
                });
                t.modes.push(m);
                let child = |id: i64| {
                    at.get(&(l.tree[i], id)).copied().ok_or_else(|| {
                        Unsupported(format!(
                            "node {} of tree {} points at node {id}, which is not listed",
                            l.node[i], l.tree[i]
                        ))
                    })
                };
                let (yes, no) = (child(l.yes[i])?, child(l.no[i])?);
                // Pushed false first so the true child is laid out right after its parent.
                stack.push((no, Some((here, false))));
                stack.push((yes, Some((here, true))));
            }
        }
        if let Some(m) = t.mode {
            t.modes = Vec::new();
            let roots: Vec<usize> = t.roots.iter().map(|&r| r as usize).collect();
            let nodes = &t.nodes;
            let at = |i: usize| match nodes.get(i) {
                Some(n) if n.feature != LEAF => Ok((
                    n.feature & !NAN_TRUE,
                    n.value,
                    n.feature & NAN_TRUE != 0,
                    n.yes as usize,
                    n.no as usize,
                )),
                Some(n) => Err(n.value),
                None => Err(f32::NAN),
            };
            t.perfect = Perfect::build(&roots, &at, m, nodes.len());
        }
        Ok(t)
    }

    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// Walk as `walk` says where it allows (a vector walk only on a CPU that has one).
    pub fn set_walk(&mut self, walk: super::Walk) {
        match walk {
            super::Walk::Fastest => {}
            super::Walk::BranchFreeScalar => {
                if let Some(p) = &mut self.perfect {
                    p.scalar_only();
                }
            }
            super::Walk::NodeByNode => self.perfect = None,
        }
    }

    /// How `sum` walks them, for the log.
    pub fn walk(&self) -> String {
        match &self.perfect {
            Some(p) => format!(
                "branch-free as perfect trees of depth {}, {}",
                p.depth(),
                if p.vector() {
                    "8 trees a step with AVX2 gathers"
                } else {
                    "scalar"
                }
            ),
            None => "node by node".into(),
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Bytes held per scorer.
    pub fn bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Node>()
            + self.roots.len() * 4
            + self.modes.len() * std::mem::size_of::<Mode>()
            + self.perfect.as_ref().map_or(0, Perfect::bytes)
    }

    /// The leaf values the row reaches, summed in tree order in float32 (as ONNX Runtime
    /// does, so the sums agree to the bit).
    #[inline]
    pub fn sum(&self, row: &[f32]) -> f32 {
        if let Some(p) = &self.perfect {
            return p.sum(row);
        }
        match self.mode {
            Some(Mode::Leq) => self.sum_with(row, |_| Mode::Leq),
            Some(Mode::Lt) => self.sum_with(row, |_| Mode::Lt),
            Some(m) => self.sum_with(row, move |_| m),
            None => self.sum_with(row, |i| self.modes.get(i).copied().unwrap_or(Mode::Leq)),
        }
    }

    #[inline(always)]
    fn sum_with(&self, row: &[f32], mode: impl Fn(usize) -> Mode) -> f32 {
        let mut sum = 0.0f32;
        for &root in &self.roots {
            let mut i = root as usize;
            // Children always sit after their parent (compile), so this ends at a leaf.
            while let Some(n) = self.nodes.get(i) {
                if n.feature == LEAF {
                    sum += n.value;
                    break;
                }
                let x = row
                    .get((n.feature & !NAN_TRUE) as usize)
                    .copied()
                    .unwrap_or(f32::NAN);
                let yes =
                    mode(i).goes_true(x, n.value) || (n.feature & NAN_TRUE != 0 && x.is_nan());
                i = if yes { n.yes } else { n.no } as usize;
            }
        }
        sum
    }
}
