//! Deterministic randomness for the scenarios: hashes of keys instead of a shared generator.
//!
//! A reading must be a pure function of (device, kind, device time) so that a neighbour can
//! be copied, a past day re-sent and a run repeated value for value; so every random number
//! here is a hash of the things it depends on (SplitMix64's finaliser over the parts).
//! Per-device parameters come from a [`Draw`] seeded with such a hash. Nothing depends on
//! the `rand` crate's generators, whose streams may change between versions.

/// SplitMix64's finaliser: a bijection of u64 with good avalanche.
#[must_use]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of several parts (order matters).
#[must_use]
pub fn hash(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x6C6F_6164_6765_6E00, |h, p| mix64(h ^ mix64(*p)))
}

/// FNV-1a of a string, to key on device ids and location names.
#[must_use]
pub fn hash_str(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A uniform number in [0, 1) from a hash.
#[must_use]
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal number from a hash (Box-Muller on two derived uniforms).
#[must_use]
pub fn gauss(h: u64) -> f64 {
    // 1 - unit is in (0, 1]: the logarithm is finite.
    let u1 = 1.0 - unit(mix64(h ^ 0x1));
    let u2 = unit(mix64(h ^ 0x2));
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Smooth noise of roughly unit spread: standard normal values at knots `knot_ms` apart,
/// joined by smoothstep. Used for weather and slow micro-climate changes.
#[must_use]
pub fn smooth_noise(key: u64, t_ms: u64, knot_ms: u64) -> f64 {
    let knot_ms = knot_ms.max(1);
    let i = t_ms / knot_ms;
    let f = (t_ms % knot_ms) as f64 / knot_ms as f64;
    let a = gauss(hash(&[key, i]));
    let b = gauss(hash(&[key, i + 1]));
    let s = f * f * (3.0 - 2.0 * f);
    a + (b - a) * s
}

/// A stream of numbers for drawing one device's (or site's) parameters.
#[derive(Clone, Debug)]
pub struct Draw(u64);

impl Draw {
    /// A stream seeded by a hash of its key.
    #[must_use]
    pub fn new(key: u64) -> Draw {
        Draw(key)
    }

    /// The next raw number (SplitMix64).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * unit(self.next_u64())
    }

    /// Log-uniform in [lo, hi) (both > 0): every factor of ten equally likely.
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * unit(self.next_u64())).exp()
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn int(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// +1 or -1.
    pub fn sign(&mut self) -> f64 {
        if self.next_u64() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Standard normal.
    pub fn gauss(&mut self) -> f64 {
        gauss(self.next_u64())
    }

    /// An index in 0..n (0 when n is 0).
    pub fn index(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_deterministic_and_in_range() {
        let mut a = Draw::new(hash(&[1, 2]));
        let mut b = Draw::new(hash(&[1, 2]));
        for _ in 0..1000 {
            let x = a.uniform(3.0, 5.0);
            assert_eq!(x, b.uniform(3.0, 5.0));
            assert!((3.0..5.0).contains(&x));
            let n = a.int(2, 4);
            b.int(2, 4);
            assert!((2..=4).contains(&n));
            let l = a.log_uniform(0.01, 1.0);
            b.log_uniform(0.01, 1.0);
            assert!((0.01..1.0).contains(&l));
        }
        assert_ne!(hash(&[1, 2]), hash(&[2, 1]));
        assert_ne!(hash_str("dev-000001"), hash_str("dev-000002"));
    }

    #[test]
    fn gauss_has_unit_spread() {
        let n = 100_000u64;
        let xs: Vec<f64> = (0..n).map(|i| gauss(hash(&[7, i]))).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var - 1.0).abs() < 0.03, "{var}");
    }

    #[test]
    fn smooth_noise_is_continuous() {
        let mut prev = smooth_noise(5, 0, 1000);
        for t in 1..10_000 {
            let v = smooth_noise(5, t, 1000);
            // The steepest smoothstep slope is 1.5 × the knot difference per knot.
            assert!((v - prev).abs() < 0.02, "{t}: {prev} -> {v}");
            prev = v;
        }
    }
}
