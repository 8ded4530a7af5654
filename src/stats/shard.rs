//! Per-thread shards for counters many threads write at once.
//!
//! A counter that every thread increments is one cache line bouncing
//! between cores. Sharded counters give each thread (round-robin by first
//! use) one of a power-of-two number of shards; readers sum them.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most shards a counter set spreads over.
const MAX_SHARDS: usize = 64;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard number; reduce it with `& (shards - 1)`.
#[inline]
pub(crate) fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    INDEX
        .try_with(|cell| {
            let mut i = cell.get();
            if i == usize::MAX {
                i = NEXT.fetch_add(1, Ordering::Relaxed);
                cell.set(i);
            }
            i
        })
        .unwrap_or(0)
}

/// How many shards to use: the machine's parallelism rounded up to a power
/// of two, at most `cap` (rounded down to a power of two) and 64.
pub(crate) fn count(cap: usize) -> usize {
    let cap = cap.clamp(1, MAX_SHARDS);
    let cap = 1 << cap.ilog2();
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .next_power_of_two()
        .min(cap)
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_are_powers_of_two_within_the_cap() {
        for cap in [1, 2, 3, 7, 64, 1000] {
            let n = count(cap);
            assert!(n.is_power_of_two() && n <= cap.min(64), "{cap} -> {n}");
        }
    }

    #[test]
    fn threads_get_different_shards() {
        let mine = index();
        let other = std::thread::spawn(index).join().unwrap();
        assert_ne!(mine, other);
        assert_eq!(index(), mine);
    }
}
