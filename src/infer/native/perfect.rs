//! Shallow tree ensembles (every tree at most `DEPTH_MAX` deep: scikit-learn's and XGBoost's
//! default depths 3 and 6) laid out as perfect binary trees of the ensemble's depth: a tree's
//! branches in breadth-first order (children of i at 2i+1 / 2i+2), a leaf above the bottom
//! copied into every bottom slot under it. A walk is then `depth` comparisons and index
//! arithmetic with no branch on the data, and `LANES` trees walk side by side, so one row's
//! trees overlap in the pipeline instead of waiting on one another's loads and mispredicted
//! branches. Leaf values are still added in tree order, so sums stay bit for bit those of the
//! node walk (and of ONNX Runtime).

use super::trees::Mode;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Deepest tree laid out this way: a tree takes 12 * 2^depth bytes here (768 at 6).
pub const DEPTH_MAX: u32 = 6;
/// Slots allowed per compiled node: a complete tree of depth d has 2^(d+1) - 1 nodes for 2^d
/// slots (about half a slot a node), so this admits trees padded up to ~4x a complete one's.
const PADDING_MAX: usize = 2;
/// Trees walked side by side.
const LANES: usize = 8;

/// Set in a branch's `feature`: a NaN input goes to the true child.
const NAN_TRUE: u32 = 1 << 31;
/// Features are indexed through a copy of the row in a buffer of this many (a power of two):
/// the mask keeps every index in bounds with no check in the loop.
const ROW_SLOTS: usize = crate::limits::FEATURE_ROW_MAX;
const _: () = assert!(ROW_SLOTS.is_power_of_two());

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Branch {
    threshold: f32,
    feature: u32,
}

/// Slots of each tree copied into `Top`: levels 0 and 1. (Level 2 picked out of its four rows
/// with blends measured slower than gathering it.)
const TOP_SLOTS: usize = 3;

/// A group of `LANES` trees' top branches, slot by slot, lanes side by side: the vector walk
/// loads a level's eight branches from here instead of gathering them.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Top {
    threshold: [[f32; LANES]; TOP_SLOTS],
    feature: [[u32; LANES]; TOP_SLOTS],
}

pub struct Perfect {
    depth: u32,
    /// `trees * 2^depth`: a tree's 2^depth - 1 branches and one unused slot.
    branches: Vec<Branch>,
    /// `trees * 2^depth`.
    leaves: Vec<f32>,
    mode: Mode,
    /// Whether any branch sends NaN to its true side (else the walk leaves that test out).
    nan_true: bool,
    /// Every branch reads one of the row's first 16 features: the vector walk picks them out
    /// of two registers instead of gathering them from memory.
    few_features: bool,
    /// Each whole group's `Top`.
    top: Vec<Top>,
    /// Walk each group of `LANES` trees with AVX2 gathers (`avx2.rs`): set only when this CPU
    /// has AVX2.
    avx2: bool,
}

/// One tree as the compiler laid it out: `node(i)` is `Ok((feature, threshold, nan_true, yes,
/// no))` for a branch, `Err(value)` for a leaf.
pub type NodeAt<'a> = &'a dyn Fn(usize) -> Result<(u32, f32, bool, usize, usize), f32>;

impl Perfect {
    /// `None` when a tree is deeper than `DEPTH_MAX`, or when padding every tree to the
    /// deepest would take more than `PADDING_MAX` slots per node of the `nodes` compiled (many
    /// small trees beside one deep one: the node walk serves those, at their size).
    pub fn build(roots: &[usize], node: NodeAt<'_>, mode: Mode, nodes: usize) -> Option<Self> {
        let mut depth = 0u32;
        for &r in roots {
            depth = depth.max(tree_depth(r, node)?);
        }
        let (inner, bottom) = ((1usize << depth) - 1, 1usize << depth);
        if roots.len().saturating_mul(bottom) > nodes.saturating_mul(PADDING_MAX) {
            return None;
        }
        let mut p = Perfect {
            depth,
            branches: vec![Branch::default(); roots.len() * bottom],
            leaves: vec![0.0; roots.len() * bottom],
            mode,
            nan_true: false,
            few_features: true,
            top: Vec::new(),
            avx2: avx2_available(),
        };
        for (t, &r) in roots.iter().enumerate() {
            // (compiled node, breadth-first slot, level)
            let mut stack = vec![(r, 0usize, 0u32)];
            while let Some((i, slot, level)) = stack.pop() {
                match node(i) {
                    Ok((feature, threshold, nan_true, yes, no)) => {
                        p.nan_true |= nan_true;
                        p.few_features &= feature < 16;
                        if let Some(b) = p.branches.get_mut(t * bottom + slot) {
                            *b = Branch {
                                threshold,
                                feature: feature | if nan_true { NAN_TRUE } else { 0 },
                            };
                        }
                        stack.push((yes, 2 * slot + 1, level + 1));
                        stack.push((no, 2 * slot + 2, level + 1));
                    }
                    Err(value) => {
                        // Every bottom slot under this one; the branches between are left as
                        // they are: either side leads to this value.
                        let below = depth - level;
                        let first = ((slot + 1) << below) - 1 - inner;
                        let at = t * bottom + first;
                        if let Some(l) = p.leaves.get_mut(at..at + (1 << below)) {
                            l.fill(value);
                        }
                    }
                }
            }
        }
        p.top = p
            .branches
            .chunks_exact(bottom * LANES)
            .map(|group| {
                let mut top = Top::default();
                for slot in 0..TOP_SLOTS.min(bottom) {
                    for k in 0..LANES {
                        let b = group.get(k * bottom + slot).copied().unwrap_or_default();
                        top.threshold[slot][k] = b.threshold;
                        top.feature[slot][k] = b.feature;
                    }
                }
                top
            })
            .collect();
        Some(p)
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether the walk takes AVX2 gathers.
    pub fn vector(&self) -> bool {
        self.avx2
    }

    /// Walk with scalar loads only, even on a CPU with AVX2 (the tests and benches compare).
    pub fn scalar_only(&mut self) {
        self.avx2 = false;
    }

    pub fn bytes(&self) -> usize {
        self.branches.len() * std::mem::size_of::<Branch>()
            + self.leaves.len() * 4
            + self.top.len() * std::mem::size_of::<Top>()
    }

    #[inline]
    pub fn sum(&self, row: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU has AVX2 (`build`).
            return unsafe { avx2::sum(self, row) };
        }
        match self.mode {
            Mode::Leq => self.sum_with(row, |x, t| x <= t),
            Mode::Lt => self.sum_with(row, |x, t| x < t),
            Mode::Gte => self.sum_with(row, |x, t| x >= t),
            Mode::Gt => self.sum_with(row, |x, t| x > t),
            Mode::Eq => self.sum_with(row, |x, t| x == t),
            Mode::Neq => self.sum_with(row, |x, t| x != t),
        }
    }

    #[inline(always)]
    fn sum_with(&self, row: &[f32], goes_true: impl Fn(f32, f32) -> bool) -> f32 {
        let mut x = [f32::NAN; ROW_SLOTS];
        for (s, v) in x.iter_mut().zip(row) {
            *s = *v;
        }
        if self.nan_true {
            self.sum_by_depth::<true>(&x, goes_true)
        } else {
            self.sum_by_depth::<false>(&x, goes_true)
        }
    }

    #[inline(always)]
    fn sum_by_depth<const NAN_TRUE_SEEN: bool>(
        &self,
        x: &[f32; ROW_SLOTS],
        goes_true: impl Fn(f32, f32) -> bool,
    ) -> f32 {
        match self.depth {
            // Every tree one leaf.
            0 => self.leaves.iter().fold(0.0f32, |s, v| s + v),
            1 => self.sum_slots::<2, NAN_TRUE_SEEN>(x, goes_true),
            2 => self.sum_slots::<4, NAN_TRUE_SEEN>(x, goes_true),
            3 => self.sum_slots::<8, NAN_TRUE_SEEN>(x, goes_true),
            4 => self.sum_slots::<16, NAN_TRUE_SEEN>(x, goes_true),
            5 => self.sum_slots::<32, NAN_TRUE_SEEN>(x, goes_true),
            _ => self.sum_slots::<64, NAN_TRUE_SEEN>(x, goes_true),
        }
    }

    /// `S` = 2^depth slots a tree: its branches (the last slot unused) and its leaves. Fixed
    /// sizes let every index be masked into bounds, so the loop has no checks.
    #[inline(always)]
    fn sum_slots<const S: usize, const NAN_TRUE_SEEN: bool>(
        &self,
        x: &[f32; ROW_SLOTS],
        goes_true: impl Fn(f32, f32) -> bool,
    ) -> f32 {
        let depth = S.trailing_zeros();
        // Each tree taken as a fixed-size array once per group: every index below is masked
        // into its array, so the loop carries no bounds check. (The fallbacks are never taken:
        // the vectors hold exactly S slots a tree.)
        let (no_branches, no_leaves) = ([Branch::default(); S], [0.0f32; S]);
        let down =
            |tree: &[Branch; S], at: usize| step::<S, NAN_TRUE_SEEN>(tree, x, at, &goes_true);
        let groups = self.branches.chunks_exact(S * LANES);
        let leaf_groups = self.leaves.chunks_exact(S * LANES);
        let full = groups.len();
        let mut sum = 0.0f32;
        for (g, lg) in groups.zip(leaf_groups) {
            let trees: [&[Branch; S]; LANES] =
                std::array::from_fn(|k| array_at(g, k, &no_branches));
            let mut at = [0usize; LANES];
            for _ in 0..depth {
                for (a, tree) in at.iter_mut().zip(trees) {
                    *a = down(tree, *a);
                }
            }
            // Added in tree order, as the node walk and ONNX Runtime add them.
            for (k, a) in at.iter().enumerate() {
                sum += leaf(array_at(lg, k, &no_leaves), *a);
            }
        }
        self.rest_sum::<S, NAN_TRUE_SEEN>(x, goes_true, full, sum)
    }

    /// `sum` plus the leaves reached in the trees after the first `full` groups of `LANES`,
    /// one tree at a time, in tree order.
    #[inline(always)]
    fn rest_sum<const S: usize, const NAN_TRUE_SEEN: bool>(
        &self,
        x: &[f32; ROW_SLOTS],
        goes_true: impl Fn(f32, f32) -> bool,
        full: usize,
        mut sum: f32,
    ) -> f32 {
        let depth = S.trailing_zeros();
        let (no_branches, no_leaves) = ([Branch::default(); S], [0.0f32; S]);
        let down =
            |tree: &[Branch; S], at: usize| step::<S, NAN_TRUE_SEEN>(tree, x, at, &goes_true);
        let from = full * S * LANES;
        let rest = self.branches.get(from..).unwrap_or_default();
        let leaf_rest = self.leaves.get(from..).unwrap_or_default();
        for k in 0..rest.len() / S {
            let (tree, mut at) = (array_at(rest, k, &no_branches), 0);
            for _ in 0..depth {
                at = down(tree, at);
            }
            sum += leaf(array_at(leaf_rest, k, &no_leaves), at);
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    avx2::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// One level down `tree` from slot `at`: the next slot (2 at + 1 on the true side, else
/// 2 at + 2). Indices are masked into the arrays, so the step carries no bounds check.
#[inline(always)]
fn step<const S: usize, const NAN_TRUE_SEEN: bool>(
    tree: &[Branch; S],
    x: &[f32; ROW_SLOTS],
    at: usize,
    goes_true: &impl Fn(f32, f32) -> bool,
) -> usize {
    let b = tree[at & (S - 1)];
    let v = x[(b.feature as usize) & (ROW_SLOTS - 1)];
    let yes =
        goes_true(v, b.threshold) | (NAN_TRUE_SEEN && (b.feature & NAN_TRUE != 0) & v.is_nan());
    2 * at + 2 - usize::from(yes)
}

/// The leaf value at the bottom slot `at` (S - 1 .. 2 S - 1) reaches.
#[inline(always)]
fn leaf<const S: usize>(leaves: &[f32; S], at: usize) -> f32 {
    leaves[(at + 1 - S) & (S - 1)]
}

/// The `k`th run of `S` in `v` as an array (`none` past the end).
#[inline(always)]
fn array_at<'a, T, const S: usize>(v: &'a [T], k: usize, none: &'a [T; S]) -> &'a [T; S] {
    v.get(k * S..(k + 1) * S)
        .and_then(|c| c.try_into().ok())
        .unwrap_or(none)
}

/// Levels of branches from `root` to its deepest leaf; `None` past `DEPTH_MAX`.
fn tree_depth(root: usize, node: NodeAt<'_>) -> Option<u32> {
    let mut deepest = 0;
    let mut stack = vec![(root, 0u32)];
    while let Some((i, level)) = stack.pop() {
        if level > DEPTH_MAX {
            return None;
        }
        match node(i) {
            Ok((_, _, _, yes, no)) => {
                stack.push((yes, level + 1));
                stack.push((no, level + 1));
            }
            Err(_) => deepest = deepest.max(level),
        }
    }
    Some(deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree A: 0: x0 <= 1 ? leaf 1 (10) : node 2; 2: x1 <= 2 ? leaf 3 (20) : leaf 4 (30).
    /// Tree B: node 5, a lone leaf (7).
    fn node(i: usize) -> Result<(u32, f32, bool, usize, usize), f32> {
        match i {
            0 => Ok((0, 1.0, false, 1, 2)),
            2 => Ok((1, 2.0, true, 3, 4)),
            1 => Err(10.0),
            3 => Err(20.0),
            4 => Err(30.0),
            _ => Err(7.0),
        }
    }

    #[test]
    fn shallow_leaves_and_one_leaf_trees_fill_the_bottom_and_nan_goes_where_flagged() {
        let p = Perfect::build(&[0, 5], &node, Mode::Leq, 6).unwrap();
        assert_eq!(p.depth(), 2);
        assert_eq!(p.sum(&[0.0, 9.0]), 17.0);
        assert_eq!(p.sum(&[5.0, 0.0]), 27.0);
        assert_eq!(p.sum(&[5.0, 5.0]), 37.0);
        // NaN at the root goes false (no flag); at node 2 true (flagged).
        assert_eq!(p.sum(&[f32::NAN, f32::NAN]), 27.0);
        let lone = Perfect::build(&[5, 5], &node, Mode::Leq, 2).unwrap();
        assert_eq!((lone.depth(), lone.sum(&[0.0, 0.0])), (0, 14.0));
    }

    /// A node of a generated tree: a branch (feature, threshold, NaN to the true side, yes,
    /// no) or a leaf.
    type Gen = Result<(u32, f32, bool, usize, usize), f32>;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// A value from a small set (so rows hit thresholds exactly), NaN and -0.0 included.
        fn value(&mut self) -> f32 {
            [-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, f32::NAN][self.below(8) as usize]
        }
    }

    /// A random tree at most `depth` deep, its nodes appended to `nodes`; returns its root.
    fn grow(nodes: &mut Vec<Gen>, depth: u32, width: u32, rng: &mut Rng) -> usize {
        let at = nodes.len();
        nodes.push(Err(0.0));
        if depth == 0 || rng.below(5) == 0 {
            nodes[at] = Err(rng.below(1000) as f32 / 64.0 - 7.0);
            return at;
        }
        let (feature, threshold, nan) = (
            rng.below(u64::from(width)) as u32,
            rng.value(),
            rng.below(3) == 0,
        );
        let yes = grow(nodes, depth - 1, width, rng);
        let no = grow(nodes, depth - 1, width, rng);
        nodes[at] = Ok((feature, threshold, nan, yes, no));
        at
    }

    /// The plain walk of the generated nodes, tree by tree, leaves added in tree order.
    fn walk(nodes: &[Gen], roots: &[usize], mode: Mode, row: &[f32]) -> f32 {
        let mut sum = 0.0f32;
        for &r in roots {
            let mut i = r;
            loop {
                match nodes[i] {
                    Ok((f, t, nan, yes, no)) => {
                        let x = row.get(f as usize).copied().unwrap_or(f32::NAN);
                        let goes = mode.goes_true(x, t) || (nan && x.is_nan());
                        i = if goes { yes } else { no };
                    }
                    Err(v) => {
                        sum += v;
                        break;
                    }
                }
            }
        }
        sum
    }

    /// Random ensembles (every mode, depths 0-6, tree counts on and off a multiple of the
    /// lanes and of the blocks, NaN sides set or not, features below 16 or not, rows with NaN,
    /// -0.0 and values equal to thresholds): the
    /// scalar and (on a CPU with AVX2) vector walks both give the plain walk's sum, to the bit.
    #[test]
    fn the_vector_and_scalar_walks_equal_a_plain_walk_to_the_bit() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let modes = [
            Mode::Leq,
            Mode::Lt,
            Mode::Gte,
            Mode::Gt,
            Mode::Eq,
            Mode::Neq,
        ];
        let (mut vector_walks, mut rows_checked, mut few_features) = (0, 0, [0; 2]);
        for case in 0..600 {
            let mode = modes[case % modes.len()];
            let depth = rng.below(u64::from(DEPTH_MAX) + 1) as u32;
            let width = 1 + rng.below(ROW_SLOTS as u64) as u32;
            let trees = 1 + rng.below(80) as usize;
            let mut nodes = Vec::new();
            let roots: Vec<usize> = (0..trees)
                .map(|_| grow(&mut nodes, depth, width, &mut rng))
                .collect();
            let at = |i: usize| nodes[i];
            // Padding never refuses here: this test is about the walk.
            let Some(vector) = Perfect::build(&roots, &at, mode, usize::MAX / 2) else {
                panic!("case {case}: depth {depth} not laid out");
            };
            assert_eq!(vector.vector(), avx2_available(), "case {case}");
            let below_16 = nodes.iter().all(|n| n.map_or(true, |(f, ..)| f < 16));
            assert_eq!(vector.few_features, below_16, "case {case}");
            vector_walks += usize::from(vector.vector());
            few_features[usize::from(vector.few_features)] += 1;
            let mut scalar = Perfect::build(&roots, &at, mode, usize::MAX / 2).unwrap();
            scalar.scalar_only();
            assert!(!scalar.vector());
            for _ in 0..20 {
                let row: Vec<f32> = (0..width).map(|_| rng.value()).collect();
                let want = walk(&nodes, &roots, mode, &row);
                for (name, p) in [("vector", &vector), ("scalar", &scalar)] {
                    let got = p.sum(&row);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "case {case} {name} ({mode:?}, depth {depth}, {trees} trees) row \
                         {row:?}: {got} vs {want}"
                    );
                }
                rows_checked += 1;
            }
        }
        assert_eq!(rows_checked, 600 * 20);
        // Both ways of reading the row's values were taken (registers, gathers).
        assert!(few_features.iter().all(|&n| n > 50), "{few_features:?}");
        if avx2_available() {
            assert_eq!(vector_walks, 600);
        } else {
            eprintln!("this CPU has no AVX2: only the scalar walk was checked");
        }
    }

    #[test]
    fn deep_or_mostly_padding_ensembles_are_left_to_the_node_walk() {
        // A chain: node i (< 10) branches to leaf 100 + i or node i + 1.
        let chain = |i: usize| {
            if i < 10 {
                Ok((0, i as f32, false, 100 + i, i + 1))
            } else {
                Err(i as f32)
            }
        };
        // Depth alone (the node count set high enough that padding never decides).
        let plenty = 1 << 20;
        assert!(Perfect::build(&[0], &chain, Mode::Leq, plenty).is_none());
        let deepest = 10 - DEPTH_MAX as usize;
        assert!(Perfect::build(&[deepest], &chain, Mode::Leq, plenty).is_some());
        // Padding: the depth-6 chain has 13 nodes for 64 slots; beside 63 one-leaf trees,
        // 64 trees of 64 slots for 76 nodes.
        assert!(Perfect::build(&[deepest], &chain, Mode::Leq, 13).is_none());
        let many: Vec<usize> = std::iter::once(deepest).chain([10; 63]).collect();
        assert!(Perfect::build(&many, &chain, Mode::Leq, 13 + 63).is_none());
    }
}
