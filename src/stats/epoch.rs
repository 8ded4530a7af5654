//! Counters that carry the epoch (time bucket) they count for.
//!
//! A counter is one `AtomicU64`: `[epoch tag : 32][count : 32]`. Writing to
//! a counter whose tag is older claims it for the new epoch in the same
//! compare-and-swap, so rotating a bucket never loses or mixes counts and
//! needs no lock. Tags are the bucket index plus one, truncated to 32 bits
//! and compared with wrapping arithmetic; zero reads as "never written".

use crate::sync::{AtomicU64, Ordering};

const COUNT_MASK: u64 = u32::MAX as u64;

/// The tag of bucket index `idx`.
#[inline]
pub(crate) fn tag(idx: u64) -> u32 {
    idx.wrapping_add(1) as u32
}

#[derive(Debug, Default)]
pub(crate) struct EpochCounter(AtomicU64);

impl EpochCounter {
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds `n` to the count of epoch `tag` (saturating), claiming the
    /// counter if it holds an older epoch. A write for an epoch older than
    /// the one the counter holds is dropped: that sample has left the window.
    /// Returns the count after the write (0 when dropped).
    ///
    /// All operations are `SeqCst` (free on x86, where every read-modify-write
    /// is a full barrier) so that sums over several counters can be reasoned
    /// about as one order of events (the retry budget relies on it).
    #[inline]
    pub(crate) fn add(&self, tag: u32, n: u64) -> u64 {
        let mut current = self.0.load(Ordering::SeqCst);
        loop {
            let have = (current >> 32) as u32;
            let next = if have == tag {
                (current & !COUNT_MASK) | ((current & COUNT_MASK) + n).min(COUNT_MASK)
            } else if (tag.wrapping_sub(have) as i32) > 0 {
                (u64::from(tag) << 32) | n.min(COUNT_MASK)
            } else {
                return 0;
            };
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next & COUNT_MASK,
                Err(seen) => current = seen,
            }
        }
    }

    /// Takes `n` back from the count of epoch `tag`, if the counter still
    /// holds that epoch (never below zero).
    pub(crate) fn sub(&self, tag: u32, n: u64) {
        let mut current = self.0.load(Ordering::SeqCst);
        loop {
            if (current >> 32) as u32 != tag {
                return;
            }
            let next = (current & !COUNT_MASK) | (current & COUNT_MASK).saturating_sub(n);
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The count, if the counter's epoch is one of the `span` epochs ending
    /// at `tag` (inclusive); zero otherwise.
    #[inline]
    pub(crate) fn read(&self, tag: u32, span: u32) -> u64 {
        let v = self.0.load(Ordering::SeqCst);
        let age = tag.wrapping_sub((v >> 32) as u32);
        if age < span { v & COUNT_MASK } else { 0 }
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[test]
    fn rotates_saturates_and_drops_stale_writes() {
        let c = EpochCounter::new();
        c.add(tag(0), 2);
        c.add(tag(0), 3);
        assert_eq!(c.read(tag(0), 1), 5);
        assert_eq!(c.read(tag(4), 5), 5);
        assert_eq!(c.read(tag(5), 5), 0);
        c.add(tag(7), 1);
        assert_eq!(c.read(tag(7), 1), 1);
        // Older epoch: dropped.
        c.add(tag(3), 10);
        assert_eq!(c.read(tag(7), 1), 1);
        c.sub(tag(3), 1);
        assert_eq!(c.read(tag(7), 1), 1);
        c.sub(tag(7), 5);
        assert_eq!(c.read(tag(7), 1), 0);
        c.add(tag(7), u64::MAX);
        c.add(tag(7), 1);
        assert_eq!(c.read(tag(7), 1), COUNT_MASK);
    }

    #[test]
    fn tags_wrap() {
        let c = EpochCounter::new();
        let last = u64::from(u32::MAX) - 1; // tag u32::MAX
        c.add(tag(last), 1);
        c.add(tag(last + 1), 1); // tag wraps to 0... and is newer
        assert_eq!(c.read(tag(last + 1), 1), 1);
        c.add(tag(last + 2), 4);
        assert_eq!(c.read(tag(last + 2), 2), 4);
    }
}
