//! Online logistic regression, learned from Feedback events on each shard and averaged
//! across shards (model averaging, the parameter-server pattern) into new versions.
//!
//! Inputs are standardised with running means and variances (Welford), so raw amounts and
//! durations of very different scales train stably; AdaGrad (optional) scales each weight's
//! step by its gradient history. Everything is preallocated: a prediction or an update does
//! no allocation.

use crate::config::OnlineModel;

#[derive(Debug, Clone)]
pub struct OnlineLr {
    w: Vec<f32>,
    b: f32,
    g2: Vec<f32>,
    gb2: f32,
    mean: Vec<f32>,
    m2: Vec<f32>,
    seen: u64,
    updates: u64,
    lr: f32,
    l2: f32,
    adagrad: bool,
}

const EPS: f32 = 1e-6;

#[inline]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl OnlineLr {
    pub fn new(width: usize, spec: &OnlineModel) -> Self {
        Self {
            w: vec![0.0; width],
            b: 0.0,
            g2: vec![0.0; width],
            gb2: 0.0,
            mean: vec![0.0; width],
            m2: vec![0.0; width],
            seen: 0,
            updates: 0,
            lr: spec.learning_rate,
            l2: spec.l2,
            adagrad: spec.adagrad,
        }
    }

    pub fn width(&self) -> usize {
        self.w.len()
    }

    /// Updates applied since the last `take_updates`.
    pub fn take_updates(&mut self) -> u64 {
        std::mem::take(&mut self.updates)
    }

    #[inline]
    fn standard(&self, i: usize, x: f32) -> f32 {
        if self.seen < 2 {
            return 0.0;
        }
        let var = self.m2[i] / (self.seen - 1) as f32;
        (x - self.mean[i]) / (var + EPS).sqrt()
    }

    pub fn predict(&self, row: &[f32]) -> f32 {
        let z = row
            .iter()
            .enumerate()
            .take(self.w.len())
            .fold(self.b, |acc, (i, &x)| acc + self.w[i] * self.standard(i, x));
        let p = sigmoid(z);
        if p.is_finite() {
            p
        } else {
            0.5
        }
    }

    /// One SGD step on (row, label in {0, 1}).
    pub fn learn(&mut self, row: &[f32], label: f32) {
        if row.iter().any(|x| !x.is_finite()) {
            return;
        }
        self.seen += 1;
        for (i, &x) in row.iter().enumerate().take(self.w.len()) {
            let d = x - self.mean[i];
            self.mean[i] += d / self.seen as f32;
            self.m2[i] += d * (x - self.mean[i]);
        }
        let err = self.predict(row) - label;
        for (i, &x) in row.iter().enumerate().take(self.w.len()) {
            let g = err * self.standard(i, x) + self.l2 * self.w[i];
            let step = if self.adagrad {
                self.g2[i] += g * g;
                self.lr / (self.g2[i] + EPS).sqrt()
            } else {
                self.lr
            };
            self.w[i] -= step * g;
        }
        let step = if self.adagrad {
            self.gb2 += err * err;
            self.lr / (self.gb2 + EPS).sqrt()
        } else {
            self.lr
        };
        self.b -= step * err;
        self.updates += 1;
    }

    /// Parameters as one flat vector: weights, bias, means, M2s, seen.
    pub fn snapshot(&self) -> Box<[f32]> {
        let mut v = Vec::with_capacity(self.w.len() * 3 + 2);
        v.extend_from_slice(&self.w);
        v.push(self.b);
        v.extend_from_slice(&self.mean);
        v.extend_from_slice(&self.m2);
        v.push(self.seen as f32);
        v.into_boxed_slice()
    }

    /// Take averaged parameters (same layout as `snapshot`); ignored if the width differs.
    pub fn restore(&mut self, p: &[f32]) {
        let n = self.w.len();
        if p.len() != n * 3 + 2 {
            return;
        }
        self.w.copy_from_slice(&p[..n]);
        self.b = p[n];
        self.mean.copy_from_slice(&p[n + 1..2 * n + 1]);
        self.m2.copy_from_slice(&p[2 * n + 1..3 * n + 1]);
        self.seen = p[3 * n + 1] as u64;
    }
}

/// Mean of snapshots weighted by how many updates each saw (all of one width); None if no
/// snapshot carries an update.
pub fn average(snapshots: &[(Box<[f32]>, u64)]) -> Option<Box<[f32]>> {
    let len = snapshots.first()?.0.len();
    let total: u64 = snapshots
        .iter()
        .filter(|(s, _)| s.len() == len)
        .map(|(_, n)| n)
        .sum();
    if total == 0 {
        return None;
    }
    let mut acc = vec![0.0f64; len];
    for (s, n) in snapshots.iter().filter(|(s, _)| s.len() == len) {
        let w = *n as f64 / total as f64;
        for (a, x) in acc.iter_mut().zip(s.iter()) {
            *a += w * f64::from(*x);
        }
    }
    Some(acc.into_iter().map(|x| x as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::rng::Rng;

    fn spec() -> OnlineModel {
        OnlineModel {
            enabled: true,
            learning_rate: 0.1,
            l2: 1e-5,
            adagrad: true,
            blend: 1.0,
            average_interval_ms: 100,
        }
    }

    /// Separable stream: label = 1 when 3*x0 - 2*x1 + x2/100 > 40, features on very different scales.
    fn stream(rng: &mut Rng, n: usize) -> Vec<([f32; 3], f32)> {
        (0..n)
            .map(|_| {
                let x = [
                    rng.unit() as f32 * 40.0,
                    rng.unit() as f32 * 30.0,
                    rng.unit() as f32 * 5000.0,
                ];
                let y = if 3.0 * x[0] - 2.0 * x[1] + x[2] / 100.0 > 40.0 {
                    1.0
                } else {
                    0.0
                };
                (x, y)
            })
            .collect()
    }

    fn auc(model: &OnlineLr, data: &[([f32; 3], f32)]) -> f64 {
        let mut scored: Vec<(f32, f32)> =
            data.iter().map(|(x, y)| (model.predict(x), *y)).collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut rank_sum, mut pos) = (0.0f64, 0.0f64);
        for (i, (_, y)) in scored.iter().enumerate() {
            if *y == 1.0 {
                rank_sum += (i + 1) as f64;
                pos += 1.0;
            }
        }
        let neg = scored.len() as f64 - pos;
        (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
    }

    #[test]
    fn converges_on_a_separable_stream() {
        let mut rng = Rng::new(3);
        let train = stream(&mut rng, 20_000);
        let test = stream(&mut rng, 5_000);
        let mut m = OnlineLr::new(3, &spec());
        let before = auc(&m, &test);
        for (x, y) in &train {
            m.learn(x, *y);
        }
        let after = auc(&m, &test);
        assert!(
            after > 0.97,
            "AUC after training {after:.4} (before {before:.4})"
        );
        assert_eq!(m.take_updates(), 20_000);
    }

    #[test]
    fn plain_sgd_also_converges_and_averaging_keeps_quality() {
        let mut rng = Rng::new(9);
        let test = stream(&mut rng, 5_000);
        let mut shards: Vec<OnlineLr> = (0..2)
            .map(|_| {
                OnlineLr::new(
                    3,
                    &OnlineModel {
                        adagrad: false,
                        learning_rate: 0.02,
                        ..spec()
                    },
                )
            })
            .collect();
        for (i, (x, y)) in stream(&mut rng, 20_000).iter().enumerate() {
            shards[i % 2].learn(x, *y);
        }
        let avg = average(
            &shards
                .iter()
                .map(|s| (s.snapshot(), 10_000))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let mut merged = OnlineLr::new(3, &spec());
        merged.restore(&avg);
        let a = auc(&merged, &test);
        assert!(a > 0.95, "averaged model AUC {a:.4}");
        assert_eq!(merged.snapshot(), avg);
    }

    #[test]
    fn bad_rows_are_ignored() {
        let mut m = OnlineLr::new(2, &spec());
        m.learn(&[f32::NAN, 1.0], 1.0);
        assert_eq!(m.take_updates(), 0);
        assert!((0.0..=1.0).contains(&m.predict(&[1.0, 2.0])));
    }
}
