//! A small, seeded, dependency-free generator (SplitMix64): reproducible load, nothing more.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        crate::route::mix64(self.0.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    }

    /// Uniform in 0..n (n > 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A transaction amount for `key`: each key has its own typical amount (20 to 100) with
    /// log-normal noise (sigma 0.4), the shape the example fraud models were trained on.
    pub fn amount_for(&mut self, key: u64) -> f32 {
        let typical = 20.0 + (key % 17) as f64 * 5.0;
        // Box-Muller: a standard normal from two uniforms.
        let (u1, u2) = (self.unit().max(f64::MIN_POSITIVE), self.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (typical * (0.4 * z).exp()) as f32
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
