//! Key choice for the load generator: uniform, or Zipf(s) by rank through a precomputed CDF.

use super::rng::Rng;

pub enum KeyDist {
    Uniform {
        n: u64,
    },
    /// cdf[i] = P(rank <= i); sampled by binary search.
    Zipf {
        cdf: Vec<f64>,
    },
}

impl KeyDist {
    /// Ranks 0..n; `zipf_s` = None for uniform.
    pub fn new(n: u64, zipf_s: Option<f64>) -> Self {
        match zipf_s {
            None => KeyDist::Uniform { n: n.max(1) },
            Some(s) => {
                let n = n.max(1) as usize;
                let mut cdf = Vec::with_capacity(n);
                let mut acc = 0.0;
                for i in 1..=n {
                    acc += 1.0 / (i as f64).powf(s);
                    cdf.push(acc);
                }
                for c in &mut cdf {
                    *c /= acc;
                }
                KeyDist::Zipf { cdf }
            }
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        match self {
            KeyDist::Uniform { n } => rng.below(*n),
            KeyDist::Zipf { cdf } => {
                let u = rng.unit();
                cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_uniform_does_not() {
        let mut rng = Rng::new(7);
        let z = KeyDist::new(1000, Some(1.1));
        let u = KeyDist::new(1000, None);
        let (mut z0, mut u0) = (0, 0);
        for _ in 0..100_000 {
            let a = z.sample(&mut rng);
            let b = u.sample(&mut rng);
            assert!(a < 1000 && b < 1000);
            z0 += usize::from(a == 0);
            u0 += usize::from(b == 0);
        }
        // Zipf(1.1) over 1000 ranks puts ~17% on rank 0; uniform ~0.1%.
        assert!(z0 > 10_000, "{z0}");
        assert!(u0 < 500, "{u0}");
    }
}
