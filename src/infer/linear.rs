//! `model.kind = "linear"`: a logistic function of a weighted sum, weights from config. Needs
//! no ONNX Runtime; also the scorer the core's unit tests use.

use super::{FeatureBatch, InferError, Scorer};
use crate::config::Model;

pub struct LinearScorer {
    weights: Vec<f32>,
    bias: f32,
}

impl LinearScorer {
    pub fn from_config(m: &Model) -> Self {
        Self {
            weights: m.linear.weights.clone(),
            bias: m.linear.bias,
        }
    }
}

#[inline]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl Scorer for LinearScorer {
    fn width(&self) -> usize {
        self.weights.len()
    }

    fn engine(&self) -> &'static str {
        "linear"
    }

    fn score(&mut self, batch: &FeatureBatch, out: &mut [f32]) -> Result<(), InferError> {
        if batch.width() != self.weights.len() {
            return Err(InferError::Width {
                got: self.weights.len(),
                want: batch.width(),
            });
        }
        for (i, o) in out.iter_mut().take(batch.len()).enumerate() {
            let z = batch
                .row(i)
                .iter()
                .zip(&self.weights)
                .fold(self.bias, |acc, (x, w)| acc + x * w);
            let s = sigmoid(z);
            // A non-finite input would give NaN; a score outside [0, 1] breaks the contract.
            *o = if s.is_finite() { s } else { 0.0 };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LinearModel;

    #[test]
    fn scores_are_the_logistic_of_the_weighted_sum() {
        let mut m = crate::config::Config::defaults().unwrap().model;
        m.linear = LinearModel {
            weights: vec![1.0, -2.0],
            bias: 0.5,
        };
        let mut s = LinearScorer::from_config(&m);
        let mut b = FeatureBatch::new(2, 4);
        b.next_row().unwrap().copy_from_slice(&[1.0, 1.0]);
        b.next_row().unwrap().copy_from_slice(&[0.0, 0.0]);
        let mut out = [0.0; 4];
        s.score(&b, &mut out).unwrap();
        assert!((out[0] - sigmoid(-0.5)).abs() < 1e-6);
        assert!((out[1] - sigmoid(0.5)).abs() < 1e-6);
        assert!(out[..2].iter().all(|x| (0.0..=1.0).contains(x)));
    }
}
