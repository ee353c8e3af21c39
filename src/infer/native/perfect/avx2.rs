//! `Perfect`'s walk in AVX2 registers: the eight trees of a group take each level in one
//! step — their branches loaded side by side (level 0), blended out of two rows (level 1) or
//! gathered by slot (deeper), the row's values permuted out of two registers (every feature
//! below 16) or gathered, one vector compare, the eight next slots in one add — where the
//! scalar walk takes eight dependent loads and compares a level. Four groups walk
//! interleaved, so one's gathers wait while the others' run. The leaves reached are still
//! added one by one in tree order, so sums stay bit for bit the scalar walk's (and ONNX
//! Runtime's): a comparison of two floats has one answer whichever unit makes it. Figures and
//! what was tried: bench/README.md, "Eight trees a step with AVX2".
//!
//! The trees left over after the last full group walk the scalar way (`Perfect::rest_sum`).

use super::{Branch, Mode, Perfect, Top, LANES, NAN_TRUE, ROW_SLOTS, TOP_SLOTS};
use std::arch::x86_64::{
    __m256, __m256i, _mm256_add_epi32, _mm256_and_si256, _mm256_blendv_ps, _mm256_castps_si256,
    _mm256_castsi256_ps, _mm256_cmp_ps, _mm256_cmpeq_epi32, _mm256_i32gather_epi32,
    _mm256_i32gather_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_or_si256,
    _mm256_permutevar8x32_ps, _mm256_set1_epi32, _mm256_setr_epi32, _mm256_setzero_ps,
    _mm256_setzero_si256, _mm256_slli_epi32, _mm256_storeu_ps, _CMP_EQ_OQ, _CMP_GE_OQ, _CMP_GT_OQ,
    _CMP_LE_OQ, _CMP_LT_OQ, _CMP_NEQ_UQ, _CMP_UNORD_Q,
};

const _: () = assert!(LANES == 8, "one AVX2 vector of 32-bit lanes is eight trees");
// A branch is gathered as two 32-bit words 8 bytes apart: threshold at +0, feature at +4.
const _: () = assert!(std::mem::size_of::<Branch>() == 8);
const _: () = assert!(std::mem::offset_of!(Branch, threshold) == 0);
const _: () = assert!(std::mem::offset_of!(Branch, feature) == 4);
const _: () = assert!(
    ROW_SLOTS >= 16,
    "`few_features` reads the row's first 16 slots"
);

/// Whether this CPU runs `sum` (checked once, when a model is compiled).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// The sum of the leaves `row` reaches in every tree of `p`, in tree order.
///
/// # Safety
/// The CPU must have AVX2 (`available()`).
#[target_feature(enable = "avx2")]
pub unsafe fn sum(p: &Perfect, row: &[f32]) -> f32 {
    let mut x = [f32::NAN; ROW_SLOTS];
    for (s, v) in x.iter_mut().zip(row) {
        *s = *v;
    }
    // `_mm256_cmp_ps`'s predicate for each mode: ordered (false on NaN) as Rust's `<=`, `<`,
    // `>=`, `>`, `==` are; unordered for `!=`, true on NaN in Rust too.
    // SAFETY: AVX2, the callee's only precondition, is this function's own.
    unsafe {
        match p.mode {
            Mode::Leq => by_depth::<_CMP_LE_OQ>(p, &x, |v, t| v <= t),
            Mode::Lt => by_depth::<_CMP_LT_OQ>(p, &x, |v, t| v < t),
            Mode::Gte => by_depth::<_CMP_GE_OQ>(p, &x, |v, t| v >= t),
            Mode::Gt => by_depth::<_CMP_GT_OQ>(p, &x, |v, t| v > t),
            Mode::Eq => by_depth::<_CMP_EQ_OQ>(p, &x, |v, t| v == t),
            Mode::Neq => by_depth::<_CMP_NEQ_UQ>(p, &x, |v, t| v != t),
        }
    }
}

/// `P`: the vector predicate; `goes_true`: the same comparison for the scalar rest.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn by_depth<const P: i32>(
    p: &Perfect,
    x: &[f32; ROW_SLOTS],
    goes_true: impl Fn(f32, f32) -> bool + Copy,
) -> f32 {
    // SAFETY: AVX2, the callees' only precondition, is this function's own.
    unsafe {
        match (p.depth, p.nan_true) {
            (0, _) => p.leaves.iter().fold(0.0f32, |s, v| s + v),
            (1, false) => groups::<2, P, false>(p, x, goes_true),
            (1, true) => groups::<2, P, true>(p, x, goes_true),
            (2, false) => groups::<4, P, false>(p, x, goes_true),
            (2, true) => groups::<4, P, true>(p, x, goes_true),
            (3, false) => groups::<8, P, false>(p, x, goes_true),
            (3, true) => groups::<8, P, true>(p, x, goes_true),
            (4, false) => groups::<16, P, false>(p, x, goes_true),
            (4, true) => groups::<16, P, true>(p, x, goes_true),
            (5, false) => groups::<32, P, false>(p, x, goes_true),
            (5, true) => groups::<32, P, true>(p, x, goes_true),
            (_, false) => groups::<64, P, false>(p, x, goes_true),
            (_, true) => groups::<64, P, true>(p, x, goes_true),
        }
    }
}

/// Groups of `LANES` trees walked together: their walks are independent chains of gathers,
/// so a block's levels overlap in the pipeline where one group's would wait on each gather.
const BLOCK: usize = 4;

/// `S` = 2^depth slots a tree (as `Perfect::sum_slots`).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn groups<const S: usize, const P: i32, const NAN_TRUE_SEEN: bool>(
    p: &Perfect,
    x: &[f32; ROW_SLOTS],
    goes_true: impl Fn(f32, f32) -> bool + Copy,
) -> f32 {
    let full = p.branches.len().min(p.leaves.len()) / (S * LANES);
    let mut sum = 0.0f32;
    let mut g = 0;
    // SAFETY: for both calls, AVX2 is this function's own precondition; each block is cut from
    // the first `full` groups, which both vectors hold.
    unsafe {
        while g + BLOCK <= full {
            sum = block::<S, P, NAN_TRUE_SEEN, BLOCK>(p, x, g, sum);
            g += BLOCK;
        }
        while g < full {
            sum = block::<S, P, NAN_TRUE_SEEN, 1>(p, x, g, sum);
            g += 1;
        }
    }
    p.rest_sum::<S, NAN_TRUE_SEEN>(x, goes_true, full, sum)
}

/// The thresholds and features of slot `slot` (< TOP_SLOTS) of a group's eight trees.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn top_slot(top: &Top, slot: usize) -> (__m256, __m256i) {
    let (t, f) = (
        &top.threshold[slot % TOP_SLOTS],
        &top.feature[slot % TOP_SLOTS],
    );
    // SAFETY: both rows hold 8 lanes.
    unsafe {
        (
            _mm256_loadu_ps(t.as_ptr()),
            _mm256_loadu_si256(f.as_ptr().cast()),
        )
    }
}

/// The branches each lane is at on level 1 of a group's trees (slot `at`, 1 or 2), chosen
/// from the level's two rows in `top` with a blend.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn level_1(top: &Top, at: __m256i) -> (__m256, __m256i) {
    // SAFETY: AVX2 is this function's precondition.
    let ((t1, f1), (t2, f2)) = unsafe { (top_slot(top, 1), top_slot(top, 2)) };
    let right = _mm256_castsi256_ps(_mm256_cmpeq_epi32(at, _mm256_set1_epi32(2)));
    (
        _mm256_blendv_ps(t1, t2, right),
        _mm256_castps_si256(_mm256_blendv_ps(
            _mm256_castsi256_ps(f1),
            _mm256_castsi256_ps(f2),
            right,
        )),
    )
}

/// `sum` plus the leaves reached in the `G` groups from group `first`, in tree order.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block<const S: usize, const P: i32, const NAN_TRUE_SEEN: bool, const G: usize>(
    p: &Perfect,
    x: &[f32; ROW_SLOTS],
    first: usize,
    mut sum: f32,
) -> f32 {
    let span = first * S * LANES..(first + G) * S * LANES;
    let (Some(branches), Some(leaves)) = (p.branches.get(span.clone()), p.leaves.get(span)) else {
        return sum; // never: the caller cuts blocks from whole groups
    };
    let s = S as i32;
    // Slot 0 of each tree of the block's first group, relative to the block's start.
    let tree_base = _mm256_setr_epi32(0, s, 2 * s, 3 * s, 4 * s, 5 * s, 6 * s, 7 * s);
    let group_base: [__m256i; G] = std::array::from_fn(|j| {
        _mm256_add_epi32(tree_base, _mm256_set1_epi32((j * S * LANES) as i32))
    });
    let (slot_mask, row_mask) = (
        _mm256_set1_epi32(s - 1),
        _mm256_set1_epi32((ROW_SLOTS - 1) as i32),
    );
    let (one, two) = (_mm256_set1_epi32(1), _mm256_set1_epi32(2));
    let nan_bit = _mm256_set1_epi32(NAN_TRUE as i32);
    let thresholds = branches.as_ptr().cast::<f32>();
    // SAFETY: one word past the first branch's threshold is its feature, in the block.
    let features = unsafe { branches.as_ptr().cast::<i32>().add(1) };
    // The row's first 16 values, which are all its features when `few_features`.
    let (x_lo, x_hi) = match (
        x.first_chunk::<8>(),
        x.get(8..).and_then(|r| r.first_chunk::<8>()),
    ) {
        // SAFETY: each reference holds 8 floats.
        (Some(lo), Some(hi)) => unsafe {
            (_mm256_loadu_ps(lo.as_ptr()), _mm256_loadu_ps(hi.as_ptr()))
        },
        _ => (_mm256_setzero_ps(), _mm256_setzero_ps()), // never: ROW_SLOTS >= 16
    };
    // The block's groups' top branches (`Perfect::top`), level by level.
    let no_top = Top::default();
    // (Never the default: `top` covers every whole group.)
    let top: [&Top; G] = std::array::from_fn(|j| p.top.get(first + j).unwrap_or(&no_top));
    let mut at = [_mm256_setzero_si256(); G];
    for level in 0..S.trailing_zeros() {
        for ((a, base), top) in at.iter_mut().zip(group_base).zip(top) {
            let (t, f) = match level {
                // Every lane at slot 0: the roots, side by side.
                // SAFETY: AVX2 is this function's precondition.
                0 => unsafe { top_slot(top, 0) },
                // Each lane at slot 1 or 2: one of the level's two rows, no gather.
                // SAFETY: AVX2 is this function's precondition.
                1 => unsafe { level_1(top, *a) },
                _ => {
                    // Every lane's slot is masked into its tree: its base + at most S - 1.
                    let slot = _mm256_add_epi32(base, _mm256_and_si256(*a, slot_mask));
                    // SAFETY: `slot` < G * S * LANES, the block's branches (masked above),
                    // each gathered 8 bytes apart from the block's own slice; AVX2 is this
                    // function's precondition.
                    unsafe {
                        (
                            _mm256_i32gather_ps::<8>(thresholds, slot),
                            _mm256_i32gather_epi32::<8>(features, slot),
                        )
                    }
                }
            };
            let v = if p.few_features {
                // Both halves permuted by the index's low 3 bits, its bit 3 (shifted to the
                // sign, which blendv reads) picking the half.
                _mm256_blendv_ps(
                    _mm256_permutevar8x32_ps(x_lo, f),
                    _mm256_permutevar8x32_ps(x_hi, f),
                    _mm256_castsi256_ps(_mm256_slli_epi32::<28>(f)),
                )
            } else {
                // SAFETY: every feature index is masked into `x`'s ROW_SLOTS.
                unsafe { _mm256_i32gather_ps::<4>(x.as_ptr(), _mm256_and_si256(f, row_mask)) }
            };
            let mut yes: __m256i = _mm256_castps_si256(_mm256_cmp_ps::<P>(v, t));
            if NAN_TRUE_SEEN {
                let flagged = _mm256_cmpeq_epi32(_mm256_and_si256(f, nan_bit), nan_bit);
                let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                yes = _mm256_or_si256(yes, _mm256_and_si256(flagged, nan));
            }
            // 2 * at + 2 - yes, `yes` being -1 (all ones) where true.
            *a = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(*a, *a), two), yes);
        }
    }
    let mut reached = [[0.0f32; LANES]; G];
    for ((r, a), base) in reached.iter_mut().zip(at).zip(group_base) {
        // The bottom slot reached is at + 1 - S, i.e. (at + 1) mod S.
        let leaf = _mm256_add_epi32(base, _mm256_and_si256(_mm256_add_epi32(a, one), slot_mask));
        // SAFETY: `leaf` < G * S * LANES, the block's leaves (masked); `r` holds 8 floats.
        unsafe {
            _mm256_storeu_ps(
                r.as_mut_ptr(),
                _mm256_i32gather_ps::<4>(leaves.as_ptr(), leaf),
            );
        }
    }
    // Added in tree order, as the scalar walk and ONNX Runtime add them.
    for v in reached.iter().flatten() {
        sum += v;
    }
    sum
}
