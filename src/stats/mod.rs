//! Lock-free statistics shared by the layers (private).
//!
//! - [`window`]: sliding windows of call outcomes, count- or time-based.
//! - [`epoch`]: counters tagged with the time bucket they count for.
//! - [`shard`]: per-thread shards, so threads do not write one cache line.
//! - [`histogram`]: a bounded latency histogram with a cheap quantile.
//! - [`ewma`]: a peak-EWMA latency estimate per endpoint.
//!
//! The hot path is atomics only.

pub(crate) mod epoch;
pub(crate) mod ewma;
pub(crate) mod histogram;
pub(crate) mod shard;
pub(crate) mod window;

use tokio::time::Instant;

/// Nanoseconds from `base` to `now` (zero if `now` is earlier), in u64
/// arithmetic: 584 years fit, and a 128-bit conversion on every call costs
/// more than the bookkeeping it serves.
#[inline]
pub(crate) fn nanos_since(base: Instant, now: Instant) -> u64 {
    let d = now.saturating_duration_since(base);
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}
