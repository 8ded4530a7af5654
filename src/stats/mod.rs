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
