//! A lock-free latency histogram with bounded memory and a cheap quantile.
//!
//! Log-linear buckets (16 per power of two, so a value is known to within
//! 6.25%) of roughly-microsecond units (1,024 ns) cover 0 to ~300 hours.
//! Counts live in two rotating windows of [`EpochCounter`]s, sharded per
//! thread: recording is one compare-and-swap on a thread's own cache line,
//! rotation needs no lock, and a quantile reads the current and the
//! previous window, so it always rests on at least one full window of data
//! once there is one.

use std::time::Duration;

use tokio::time::Instant;

use super::epoch::{self, EpochCounter};
use super::shard;
use super::window::bucket_index;
use crate::sync::{AtomicU64, Ordering};

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const MAX_EXP: u32 = 40;
/// Buckets per window.
const BUCKETS: usize = ((MAX_EXP - SUB_BITS + 1) as usize + 1) * SUB as usize;
/// The counter after the buckets, per window: samples cut short, known
/// only to be longer than they ran (see [`Histogram::record_censored`]).
const CENSORED: usize = BUCKETS;
/// Counters per window: the buckets and the censored count.
const PER_WINDOW: usize = BUCKETS + 1;
/// Nanoseconds per unit (about a microsecond; a shift, not a division).
const UNIT_SHIFT: u32 = 10;
/// The most shards: 8 × 2 × 608 counters is 78 KB.
const MAX_SHARDS: usize = 8;

#[derive(Debug)]
pub(crate) struct Histogram {
    base: Instant,
    window_nanos: u64,
    /// The window index of the last clock reading.
    epoch: AtomicU64,
    shards: Box<[Shard]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    /// Two windows of buckets and their censored count,
    /// `[window % 2][bucket]`.
    counts: Box<[EpochCounter]>,
}

/// The bucket holding `units`.
fn bucket(units: u64) -> usize {
    if units < SUB {
        return units as usize;
    }
    let exp = (63 - units.leading_zeros()).min(MAX_EXP);
    let sub = (units >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The lowest value of bucket `i` and its width, in units.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, 1);
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = i % SUB;
    ((SUB + sub) << (exp - SUB_BITS), 1u64 << (exp - SUB_BITS))
}

/// The middle of bucket `i`, in units.
#[cfg(test)]
fn midpoint(i: usize) -> u64 {
    let (low, width) = bounds(i);
    low + width / 2
}

impl Histogram {
    /// A histogram whose windows last `window` (at least 1 ms).
    pub(crate) fn new(base: Instant, window: Duration) -> Self {
        let window_nanos = u64::try_from(window.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1_000_000);
        Self {
            base,
            window_nanos,
            epoch: AtomicU64::new(0),
            shards: (0..shard::count(MAX_SHARDS))
                .map(|_| Shard {
                    counts: (0..2 * PER_WINDOW).map(|_| EpochCounter::new()).collect(),
                })
                .collect(),
        }
    }

    /// The window index at `now`, remembered for clock-free records.
    pub(crate) fn tick(&self, now: Instant) -> u64 {
        let idx = bucket_index(self.base, now, self.window_nanos);
        if idx > self.epoch.load(Ordering::Relaxed) {
            self.epoch.fetch_max(idx, Ordering::Relaxed);
        }
        idx
    }

    /// Records one latency, in the window of the last clock reading (so a
    /// caller that has not read the clock need not).
    #[inline]
    pub(crate) fn record(&self, latency: Duration) {
        let idx = self.epoch.load(Ordering::Relaxed);
        self.record_at(idx, latency);
    }

    fn record_at(&self, idx: u64, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.count(idx, bucket(nanos >> UNIT_SHIFT));
    }

    /// Records a sample cut short (a hedge's loser, dropped unfinished): it
    /// took longer than it ran, by an unknown amount. It counts toward the
    /// total and lies above every finished sample, so it is never taken
    /// for a latency.
    #[inline]
    pub(crate) fn record_censored(&self) {
        let idx = self.epoch.load(Ordering::Relaxed);
        self.count(idx, CENSORED);
    }

    fn count(&self, idx: u64, slot: usize) {
        let shard = &self.shards[shard::index() & (self.shards.len() - 1)];
        shard.counts[(idx % 2) as usize * PER_WINDOW + slot].add(epoch::tag(idx), 1);
    }

    /// The `q` quantile (0..=1) of the current and previous windows, if
    /// they hold at least `min_samples` samples.
    ///
    /// Censored samples count as longer than every finished one. When they
    /// are more than `1 - q` of all, the quantile lies among them, unknown
    /// (a replica that hangs cuts short every call it takes): the `q`
    /// quantile of the finished samples is given instead, the latency of
    /// the calls that do finish. It is biased low (the slowest calls are
    /// among those cut short), where taking the time a hedge waited for a
    /// latency would make it climb with every hedge sent.
    pub(crate) fn quantile(&self, now: Instant, q: f64, min_samples: u64) -> Option<Duration> {
        let tag = epoch::tag(self.tick(now));
        let mut counts = vec![0u64; PER_WINDOW];
        for shard in self.shards.iter() {
            for (i, c) in shard.counts.iter().enumerate() {
                counts[i % PER_WINDOW] += c.read(tag, 2);
            }
        }
        let censored = counts[CENSORED];
        let finished: u64 = counts[..BUCKETS].iter().sum();
        let total = finished + censored;
        if finished == 0 || total < min_samples {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let rank = if rank > finished {
            ((q * finished as f64).ceil() as u64).max(1)
        } else {
            rank
        };
        Self::at_rank(&counts[..BUCKETS], rank)
    }

    /// The upper edge of the bucket where the count reaches `rank`.
    fn at_rank(counts: &[u64], rank: u64) -> Option<Duration> {
        // The smallest value with at least q of the samples at or below it
        // lies in the bucket where the count reaches the rank: its upper
        // edge is returned, so at least q of the samples are below it (late
        // by less than a bucket, 6.25%). A lower estimate could sit under a
        // tight cluster of samples (timer-driven latencies bunch on ticks)
        // and hedge every call of the cluster, not the slowest 1 - q.
        let mut seen = 0;
        for (i, &n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds(i);
                return Some(Duration::from_nanos((low + width) << UNIT_SHIFT));
            }
        }
        None
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn buckets_are_monotonic_and_cover_their_midpoints() {
        let mut last = 0;
        for units in (0..100_000u64).chain([1 << 30, u64::MAX >> 20]) {
            let b = bucket(units);
            assert!(b >= last && b < BUCKETS, "{units} -> {b}");
            last = b;
        }
        for i in 0..BUCKETS - 1 {
            assert_eq!(bucket(midpoint(i)), i, "bucket {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quantiles_of_a_known_distribution() {
        let now = Instant::now();
        let h = Histogram::new(now, Duration::from_secs(10));
        h.tick(now);
        for i in 0..1_000u64 {
            // 990 samples at 1 ms, 10 at 50 ms.
            h.record(if i % 100 == 0 { 50 * MS } else { MS });
        }
        let p50 = h.quantile(now, 0.5, 1).unwrap();
        let p99 = h.quantile(now, 0.99, 1).unwrap();
        let p999 = h.quantile(now, 0.999, 1).unwrap();
        let close = |got: Duration, want: Duration| {
            let r = got.as_secs_f64() / want.as_secs_f64();
            (0.9..1.1).contains(&r)
        };
        assert!(close(p50, MS), "{p50:?}");
        assert!(close(p99, MS), "{p99:?}");
        assert!(close(p999, 50 * MS), "{p999:?}");
        assert_eq!(h.quantile(now, 0.5, 1_001), None, "too few samples");
    }

    /// Samples cut short count above every finished one; when they hold
    /// the quantile, the finished samples' quantile is given.
    #[tokio::test(start_paused = true)]
    async fn censored_samples_count_above_the_finished_ones() {
        let now = Instant::now();
        let h = Histogram::new(now, Duration::from_secs(10));
        h.tick(now);
        for i in 0..100u64 {
            h.record(if i % 20 == 0 { 20 * MS } else { 10 * MS });
        }
        // 5% cut short: the p90 is among the finished samples.
        for _ in 0..5 {
            h.record_censored();
        }
        let p90 = h.quantile(now, 0.9, 1).unwrap();
        assert!(p90 < 11 * MS, "{p90:?}");
        // The p97 is among the censored ones, longer than every finished.
        let p97 = h.quantile(now, 0.97, 1).unwrap();
        assert!(p97 > 20 * MS, "{p97:?}");
        // A third cut short: the p90 lies among them.
        for _ in 0..45 {
            h.record_censored();
        }
        let p90 = h.quantile(now, 0.9, 1).unwrap();
        assert!(p90 < 11 * MS, "{p90:?}");
        assert_eq!(h.quantile(now, 0.9, 151), None, "too few samples");
    }

    #[tokio::test(start_paused = true)]
    async fn windows_rotate() {
        let t0 = Instant::now();
        let h = Histogram::new(t0, Duration::from_secs(1));
        h.tick(t0);
        for _ in 0..100 {
            h.record(100 * MS);
        }
        // One window later the old samples still count (previous window)...
        let t1 = t0 + Duration::from_millis(1500);
        h.tick(t1);
        for _ in 0..100 {
            h.record(MS);
        }
        let p90 = h.quantile(t1, 0.9, 1).unwrap();
        assert!(p90 > 90 * MS, "{p90:?}");
        // ...two windows later they are gone.
        let t2 = t0 + Duration::from_millis(2500);
        assert!(h.quantile(t2, 0.9, 1).unwrap() < 2 * MS);
        assert_eq!(h.quantile(t0 + Duration::from_secs(4), 0.9, 1), None);
    }

    proptest! {
        /// Against a sorted list: the estimate is the upper edge of the
        /// exact quantile's bucket, so at least q of the samples are below
        /// it, and it is late by less than a bucket (6.25%).
        #[test]
        fn quantile_is_the_upper_edge_of_the_exact_ones_bucket(
            values in prop::collection::vec(1u64..10_000_000, 1..400),
            q in 0.01f64..1.0,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let now = Instant::now();
                let h = Histogram::new(now, Duration::from_secs(10));
                h.tick(now);
                for v in &values {
                    h.record(Duration::from_nanos(v << UNIT_SHIFT));
                }
                let mut sorted = values.clone();
                sorted.sort_unstable();
                let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
                let exact = sorted[rank - 1];
                let got = h.quantile(now, q, 1).unwrap().as_nanos() as u64 >> UNIT_SHIFT;
                let (low, width) = bounds(bucket(exact));
                prop_assert_eq!(got, low + width, "q {} exact {}", q, exact);
                let below = sorted.iter().filter(|&&v| v < got).count();
                prop_assert!(below as f64 >= q * sorted.len() as f64, "q {} got {}", q, got);
                Ok(())
            })?;
        }
    }
}
