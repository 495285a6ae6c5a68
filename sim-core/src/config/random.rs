//! Seeded randomness whose values do not change between `rand` releases.
//!
//! A run must be reproducible from its config dump (same seed → same weights and chaos
//! schedule), possibly with a newer build. `rand_chacha` promises a stable output stream,
//! but `rand`'s shuffles and range sampling do not promise stable values across versions,
//! so the few draws we need are made here directly from `next_u64`.

use rand::RngCore;

/// A uniform draw from `0..n` (`n` > 0; returns 0 for `n` = 0).
///
/// Multiply-shift without rejection: the bias is at most `n / 2^64`, far below anything a
/// simulation could observe, and every call consumes exactly one `u64` (which keeps the
/// stream position, and hence later draws, independent of the values drawn).
pub(crate) fn below<R: RngCore + ?Sized>(rng: &mut R, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// Moves a uniformly chosen `k`-element subset of `items` to its front (a partial
/// Fisher–Yates shuffle: only the first `k` positions are drawn).
pub(crate) fn choose_front<T, R: RngCore + ?Sized>(rng: &mut R, items: &mut [T], k: usize) {
    let len = items.len();
    for i in 0..k.min(len) {
        let remaining = (len - i) as u64;
        let j = i + below(rng, remaining) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn below_stays_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for n in [1u64, 2, 3, 10, 1500, u64::MAX] {
            for _ in 0..1000 {
                assert!(below(&mut rng, n) < n);
            }
        }
        assert_eq!(below(&mut rng, 0), 0);
    }

    #[test]
    fn choose_front_is_a_permutation() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut v: Vec<u32> = (0..100).collect();
        choose_front(&mut rng, &mut v, 10);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        // k larger than the slice is clamped, not a panic.
        choose_front(&mut rng, &mut v, 1000);
    }
}
