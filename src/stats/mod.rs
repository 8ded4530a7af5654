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

use std::time::Duration;

use tokio::time::Instant;

/// How far ahead an `Instant` stands for "forever" where one must exist
/// (a snapshot's `until`, a timer): tokio arms its own "forever" timers
/// about 30 years out.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `at + d`, saturating: a moment past what an `Instant` can hold (a
/// duration up to `Duration::MAX`, which validation accepts) is "forever",
/// 30 years from now.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| Instant::now() + FAR_FUTURE)
}

/// `d × factor` for a factor of zero or more, saturating at
/// `Duration::MAX` (where `Duration::mul_f64` panics).
pub(crate) fn scaled(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

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
