//! A tiny deterministic PRNG (splitmix64), written out so a simulated fleet
//! behaves the same on every platform and with every dependency version.

/// splitmix64: 64 bits of state, statistically fine for simulation noise.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for one named thing (a device, a connection): the same
    /// `(seed, name)` always gives the same stream.
    pub(crate) fn for_name(seed: u64, name: &str, salt: u64) -> Self {
        Self(seed ^ fnv1a(name).rotate_left(17) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Roughly standard normal (sum of four uniforms, rescaled): cheap and
    /// bounded, which is what noise on a meter reading wants.
    pub(crate) fn normalish(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * (3.0f64).sqrt()
    }
}

/// 64-bit FNV-1a of a string.
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A stable draw in `[0, 1)` for `(seed, name, salt)`: decides which devices
/// a fault picks, independently of how devices are spread over connections.
pub(crate) fn pick(seed: u64, name: &str, salt: u64) -> f64 {
    SplitMix64::for_name(seed, name, salt).unit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = a.unit();
            assert_eq!(x, b.unit());
            assert!((0.0..1.0).contains(&x));
            assert!(a.below(10) < 10);
            b.below(10);
            let n = a.normalish();
            b.normalish();
            assert!(n.abs() <= 2.0 * 3.0f64.sqrt() + 1e-9);
        }
        assert_eq!(pick(1, "der-1", 2), pick(1, "der-1", 2));
        assert_ne!(pick(1, "der-1", 2), pick(1, "der-1", 3));
    }

    #[test]
    fn picks_spread_evenly() {
        let n = 10_000;
        let hits = (0..n)
            .filter(|i| pick(42, &format!("site-{i:06}-bat0"), 1) < 0.25)
            .count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
    }
}
