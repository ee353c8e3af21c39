//! The non-tree parts a tabular model's graph is made of: the linear operators, the post
//! transforms and the element-wise wrappers converters put around them. Each follows ONNX
//! Runtime's CPU kernel for the cases the native engine compiles.

/// Columns a compiled model's output may have (a binary classifier's 2; a regressor's 1;
/// a linear multiclass model's classes up to this).
pub const COLUMNS_MAX: usize = 16;

/// ONNX Runtime's `ComputeLogistic`: exact for both signs (no cancellation below 0).
#[inline]
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// ONNX Runtime's `ComputeProbit`: sqrt(2) * erfinv(2x - 1), with its `ErfInv`, the
/// closed-form approximation of Winitzki (a = 0.147), operation for operation in float32 (π as
/// float32, as its kernel has it since it stopped writing 3.14159: that constant is 4e-5 off
/// its results near 0.5).
#[inline]
pub fn probit(x: f32) -> f32 {
    let y = 2.0 * x - 1.0;
    let sign = if y < 0.0 { -1.0f32 } else { 1.0 };
    let w = (1.0 - y) * (1.0 + y);
    let log = w.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147f32) + 0.5 * log;
    let v2 = 1.0 / 0.147f32 * log;
    let v3 = -v + (v * v - v2).sqrt();
    // Its 1.41421356f is this float32.
    std::f32::consts::SQRT_2 * (sign * v3.sqrt())
}

/// `post_transform` of the ONNX-ML operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl Post {
    pub fn parse(s: &[u8]) -> Result<Self, String> {
        match s {
            b"" | b"NONE" => Ok(Self::None),
            b"LOGISTIC" => Ok(Self::Logistic),
            b"SOFTMAX" => Ok(Self::Softmax),
            b"SOFTMAX_ZERO" => Ok(Self::SoftmaxZero),
            b"PROBIT" => Ok(Self::Probit),
            other => Err(format!(
                "post_transform {:?}",
                String::from_utf8_lossy(other)
            )),
        }
    }

    /// `post_transform`'s code in the opset-5 `TreeEnsemble`, where ONNX Runtime reads it as
    /// the specification does. It does not for 1 (SOFTMAX by the specification) and 2
    /// (LOGISTIC): ONNX Runtime 1.31.1 applies LOGISTIC for 1 and SOFTMAX for 2 (its enum's
    /// order; seen in tests/native_multiclass.rs and onnxruntime#26596). Those are left to it,
    /// so a model scores the same whichever engine serves it.
    pub fn from_code(code: i64) -> Result<Self, String> {
        match code {
            0 => Ok(Self::None),
            3 => Ok(Self::SoftmaxZero),
            4 => Ok(Self::Probit),
            1 | 2 => Err(format!(
                "post_transform code {code} ({} by the specification; ONNX Runtime applies {})",
                if code == 1 { "SOFTMAX" } else { "LOGISTIC" },
                if code == 1 { "LOGISTIC" } else { "SOFTMAX" },
            )),
            other => Err(format!("post_transform code {other}")),
        }
    }

    /// Whether each column's result depends on that column alone.
    pub fn is_elementwise(self) -> bool {
        !matches!(self, Self::Softmax | Self::SoftmaxZero)
    }

    /// Apply to a row of scores (two or more columns, as ONNX Runtime's multi-column path).
    pub fn apply(self, v: &mut [f32]) {
        match self {
            Self::None => {}
            Self::Logistic => v.iter_mut().for_each(|x| *x = logistic(*x)),
            Self::Probit => v.iter_mut().for_each(|x| *x = probit(*x)),
            Self::Softmax => {
                let max = v.iter().copied().fold(f32::MIN, f32::max);
                let mut sum = 0.0f32;
                for x in v.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                v.iter_mut().for_each(|x| *x /= sum);
            }
            Self::SoftmaxZero => {
                // Zero scores stay zero (exp(0) is not), as ONNX Runtime's kernel does.
                let max = v.iter().copied().fold(f32::MIN, f32::max);
                let exp_neg_max = (-max).exp();
                let mut sum = 0.0f32;
                for x in v.iter_mut() {
                    if *x > 0.000_000_1 || *x < -0.000_000_1 {
                        *x = (*x - max).exp();
                        sum += *x;
                    } else {
                        *x *= exp_neg_max;
                    }
                }
                v.iter_mut().for_each(|x| *x /= sum);
            }
        }
    }
}

/// `LinearClassifier` (two or more classes) or `LinearRegressor`: scores = W x + b.
pub struct Linear {
    /// Row-major [targets, width].
    pub coefficients: Vec<f32>,
    pub intercepts: Vec<f32>,
    pub post: Post,
}

impl Linear {
    pub fn targets(&self) -> usize {
        self.intercepts.len()
    }

    /// Column `c` alone, when `post` is per column (None, Logistic): a binary model's
    /// probability without the other class's dot product and exp.
    #[inline]
    pub fn score_one(&self, row: &[f32], c: usize) -> f32 {
        let width = row.len();
        let w = self
            .coefficients
            .get(c * width..(c + 1) * width)
            .unwrap_or_default();
        let b = self.intercepts.get(c).copied().unwrap_or(0.0);
        let z = row.iter().zip(w).fold(0.0f32, |acc, (x, w)| acc + x * w) + b;
        match self.post {
            Post::Logistic => logistic(z),
            _ => z,
        }
    }

    #[inline]
    pub fn score(&self, row: &[f32], out: &mut [f32]) {
        let width = row.len();
        for ((o, w), b) in out
            .iter_mut()
            .zip(self.coefficients.chunks_exact(width.max(1)))
            .zip(&self.intercepts)
        {
            *o = row.iter().zip(w).fold(0.0f32, |acc, (x, w)| acc + x * w) + b;
        }
        let n = self.targets().min(out.len());
        if let Some(v) = out.get_mut(..n) {
            self.post.apply(v);
        }
    }
}

/// An element-wise step between the core operator and the output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// `x * k`, `x + k`, `k - x`, `x / k`: a converter's scalar wrappers (LightGBM's `Mul` by
    /// one, ...).
    Mul(f32),
    Add(f32),
    /// `k - x`.
    SubFrom(f32),
    Div(f32),
    /// ONNX `Sigmoid`.
    Sigmoid,
    /// ONNX-ML `Normalizer` over the row's columns.
    NormalizeL1,
    NormalizeL2,
    NormalizeMax,
}

impl Step {
    /// Whether each column's result depends on that column alone.
    pub fn is_elementwise(self) -> bool {
        !matches!(
            self,
            Self::NormalizeL1 | Self::NormalizeL2 | Self::NormalizeMax
        )
    }

    pub fn apply(self, v: &mut [f32]) {
        match self {
            Self::Mul(k) => v.iter_mut().for_each(|x| *x *= k),
            Self::Add(k) => v.iter_mut().for_each(|x| *x += k),
            Self::SubFrom(k) => v.iter_mut().for_each(|x| *x = k - *x),
            Self::Div(k) => v.iter_mut().for_each(|x| *x /= k),
            Self::Sigmoid => v.iter_mut().for_each(|x| *x = logistic(*x)),
            Self::NormalizeL1 => {
                let s: f32 = v.iter().map(|x| x.abs()).sum();
                v.iter_mut().for_each(|x| *x /= s);
            }
            Self::NormalizeL2 => {
                let s: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= s);
            }
            Self::NormalizeMax => {
                let m = v.iter().copied().fold(f32::MIN, f32::max);
                v.iter_mut().for_each(|x| *x /= m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric_and_bounded() {
        for x in [-100.0f32, -3.0, -0.5, 0.0, 0.5, 3.0, 100.0] {
            let (p, q) = (logistic(x), logistic(-x));
            assert!((p + q - 1.0).abs() < 1e-6, "{x}: {p} + {q}");
            assert!((0.0..=1.0).contains(&p));
        }
        assert_eq!(logistic(0.0), 0.5);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let mut v = [1.0f32, 2.0, 3.0];
        Post::Softmax.apply(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[0] < v[1] && v[1] < v[2]);
        let mut z = [0.0f32, 2.0];
        Post::SoftmaxZero.apply(&mut z);
        assert!(z[0] == 0.0 && (z[1] - 1.0).abs() < 1e-6, "{z:?}");
    }

    #[test]
    fn probit_is_the_normal_quantile_to_the_approximation_s_precision() {
        assert_eq!(probit(0.5), 0.0);
        for (p, z) in [(0.975f32, 1.959_964f32), (0.84134, 1.0), (0.999, 3.090_232)] {
            assert!(
                (probit(p) - z).abs() < 5e-3 * z,
                "{p}: {} vs {z}",
                probit(p)
            );
            assert_eq!(probit(1.0 - p), -probit(p), "{p}");
        }
        assert!(probit(1.5).is_nan() && probit(1.0).is_infinite());
        let mut v = [0.975f32, 0.5];
        Post::Probit.apply(&mut v);
        assert_eq!(v, [probit(0.975), 0.0]);
    }

    #[test]
    fn steps_do_what_their_names_say() {
        let mut v = [0.25f32, 0.75];
        Step::SubFrom(1.0).apply(&mut v);
        assert_eq!(v, [0.75, 0.25]);
        let mut v = [1.0f32, 3.0];
        Step::NormalizeL1.apply(&mut v);
        assert_eq!(v, [0.25, 0.75]);
        let mut v = [3.0f32, 4.0];
        Step::NormalizeL2.apply(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }
}
