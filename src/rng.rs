//! A tiny seedable random source shared by the layers (jitter, sampling).
//!
//! SplitMix64 over one atomic counter: lock-free, `&self`, and deterministic
//! for a given seed when used from one thread, which is what tests need.
//! It is not a cryptographic generator and is not meant to be one.

use crate::sync::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug)]
pub(crate) struct Rng {
    state: AtomicU64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// Starts the sequence again from `seed`, for everyone sharing it.
    pub(crate) fn reseed(&self, seed: u64) {
        self.state.store(seed, Ordering::Relaxed);
    }

    /// A seed that differs between instances and runs.
    pub(crate) fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // `RandomState` is seeded per process from the OS and its keys vary
        // per instance; hashing a counter spreads instances created together.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        Self::new(hasher.finish())
    }

    pub(crate) fn next_u64(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA))
    }

    /// A uniform float in `[0, 1)`.
    pub(crate) fn next_f64(&self) -> f64 {
        // 53 random bits: every value is exactly representable.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One step of the same generator on a caller-owned, unshared state (the
/// pool keeps one per clone, so picks touch no shared cache line).
#[inline]
pub(crate) fn next_local(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GAMMA);
    mix(*state)
}

/// A uniform number below `n` from 32 random bits, by multiply and shift
/// (Lemire's reduction) rather than a division: the bias is below
/// `n / 2^32`, nothing next to a pool's draws.
#[inline]
pub(crate) fn below(bits: u32, n: u32) -> u32 {
    ((u64::from(bits) * u64::from(n)) >> 32) as u32
}

/// SplitMix64's output function.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_local_and_shared_forms_give_one_sequence() {
        let shared = Rng::new(11);
        let mut local = 11;
        for _ in 0..10 {
            assert_eq!(shared.next_u64(), next_local(&mut local));
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let a = Rng::new(7);
        let b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn floats_are_in_unit_interval_and_spread() {
        let rng = Rng::new(1);
        let mut below_half = 0;
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            if x < 0.5 {
                below_half += 1;
            }
        }
        assert!((4_700..5_300).contains(&below_half), "{below_half}");
    }
}
