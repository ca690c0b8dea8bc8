//! A small, seeded, portable random number generator.
//!
//! xoshiro256++ seeded through SplitMix64. The stream depends only on the seed and the
//! sequence of calls, never on the platform or thread count, and the whole state is four
//! `u64`s, so training can save it in a checkpoint and resume bit-identically. The normal
//! samples use `libm`'s logarithm, sine and cosine rather than the platform's (std's `ln`,
//! `cos` and `sin_cos` call the C library, whose results differ in the last bit between
//! systems), so that they too are the same on every platform.

/// Seeded generator; cheap to clone, and `state`/`from_state` round-trip it exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    /// The full internal state, for checkpoints.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// Restores a generator saved with [`Rng::state`]. An all-zero state is invalid for
    /// xoshiro and is replaced by the state of seed 0.
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] {
            return Rng::new(0);
        }
        Rng { s }
    }

    /// An independent generator derived from this one (advances `self`).
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    /// The next 64 uniformly random bits; every other method draws from these.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        // Lemire's multiply-shift with rejection: unbiased.
        let mut m = (self.next_u64() as u128) * (n as u128);
        let mut lo = m as u64;
        if lo < n {
            let t = n.wrapping_neg() % n;
            while lo < t {
                m = (self.next_u64() as u128) * (n as u128);
                lo = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// Standard normal sample (Box-Muller: one pair of uniforms per value, the pair's second
    /// value dropped; [`Rng::fill_normal`] uses both).
    pub fn normal(&mut self) -> f64 {
        // Not caching the second value keeps the state a plain [u64; 4].
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * libm::log(u1)).sqrt() * libm::cos(std::f64::consts::TAU * u2)
    }

    /// Fills `out` with standard normals, two per Box-Muller pair.
    pub fn fill_normal(&mut self, out: &mut [f64]) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            let r = (-2.0 * libm::log(u1)).sqrt();
            let (s, c) = libm::sincos(std::f64::consts::TAU * u2);
            pair[0] = r * c;
            pair[1] = r * s;
        }
        for v in chunks.into_remainder() {
            *v = self.normal();
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_roundtrip() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = Rng::from_state(a.state());
        assert_eq!(a.next_u64(), c.next_u64());
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(3);
        let mut v = vec![0.0; 200_000];
        r.fill_normal(&mut v);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    /// The bits every platform must produce: `libm` is the same code everywhere, so these
    /// pin the stream (a platform's own `ln`/`cos`, as before, could differ in the last bit).
    /// Four values from two Box-Muller pairs and the fifth from `normal` (the odd remainder).
    #[test]
    fn normals_have_the_same_bits_everywhere() {
        let mut v = [0.0; 5];
        Rng::new(2024).fill_normal(&mut v);
        let bits: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            bits,
            [
                0xbfd5_b9a5_920d_8e97, // -0.3394559789942177
                0x3ff2_bc72_55e4_770e, // 1.1710074763463498
                0xbfe5_1200_5d15_5c71, // -0.6584474390064213
                0x3fd6_9962_4fd1_fda4, // 0.35311181826542737
                0x3fe3_08db_87e7_653b, // 0.594831242978365
            ]
        );
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = Rng::new(11);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }
}
