//! Sliding windows of call outcomes: calls, failures and slow calls.
//!
//! Two kinds, both lock-free:
//!
//! - [`CountWindow`]: exactly the last N outcomes, as a ring of one-byte
//!   slots. Not a running total: after 1,000 successes, 10 failures in a
//!   window of 10 read as 100% failures.
//! - [`TimeWindow`]: N buckets spanning a duration, of epoch-tagged counters
//!   (see [`super::epoch`]).
//!
//! Under concurrency the three counts are read one after the other, so a
//! reader may see a failure counted before the call that carried it; counts
//! are clamped so that `failures <= calls` and `slow <= calls` always hold.

use tokio::time::Instant;

use super::epoch::{self, EpochCounter};
use super::shard;
use crate::sync::{AtomicI32, AtomicU8, AtomicU64, Ordering};

/// One finished call, as the window sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

/// The counts over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Counts {
    fn clamped(calls: u64, failures: i64, slow: i64) -> Self {
        let clamp = |n: i64| (n.max(0) as u64).min(calls);
        Self {
            calls,
            failures: clamp(failures),
            slow: clamp(slow),
        }
    }
}

/// A count- or time-based window.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records one outcome. `now` is only read by time-based windows.
    #[inline]
    pub(crate) fn record(&self, now: impl FnOnce() -> Instant, sample: Sample) {
        match self {
            Self::Count(w) => w.record(sample),
            Self::Time(w) => w.record(now(), sample),
        }
    }

    /// The counts over the window. `now` is only read by time-based windows.
    pub(crate) fn counts(&self, now: impl FnOnce() -> Instant) -> Counts {
        match self {
            Self::Count(w) => w.counts(),
            Self::Time(w) => w.counts(now()),
        }
    }

    /// Whether the window may hold a failure or a slow call: when it does
    /// not, no rate rule can trip on it and its counts need not be summed.
    #[inline]
    pub(crate) fn holds_bad(&self, now: impl FnOnce() -> Instant) -> bool {
        match self {
            Self::Count(w) => w.holds_bad(),
            Self::Time(w) => w.holds_bad(now()),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }

    /// What this window holds at `now`, moved into `into` (a window of
    /// another size or kind, made for a new configuration): the most recent
    /// outcomes that fit. Between kinds, a count window's outcomes go into
    /// the time window's current bucket (they are the latest known), and a
    /// time window's counts fill a count window in proportion (which of
    /// them came first is not known).
    pub(crate) fn carry_into(&self, into: &Window, now: Instant) {
        match (self, into) {
            (Self::Count(from), Self::Count(to)) => {
                for slot in from.recent() {
                    to.record(Sample::of(slot));
                }
            }
            (Self::Time(from), Self::Time(to)) => from.carry_into(to, now),
            (Self::Count(from), Self::Time(to)) => to.add(now, from.counts()),
            (Self::Time(from), Self::Count(to)) => to.fill(from.counts(now)),
        }
    }
}

const CALL: u8 = 1;
const FAILURE: u8 = 2;
const SLOW: u8 = 4;

impl Sample {
    /// The outcome a count window's slot holds.
    fn of(slot: u8) -> Self {
        Self {
            failure: slot & FAILURE != 0,
            slow: slot & SLOW != 0,
        }
    }
}

/// Exactly the last `N` outcomes.
///
/// The counters the healthy path reads come first, in 32 bytes with the
/// ring's length (`repr(C)`), so an owner can keep them on one cache line
/// with its other per-call state.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct CountWindow {
    /// Total outcomes ever recorded since the last reset; `head % N` is the
    /// next slot to overwrite.
    head: AtomicU64,
    /// Failures currently in the ring. Signed: a concurrent overwrite may
    /// subtract before the matching add lands.
    failures: AtomicI32,
    slow: AtomicI32,
    slots: Box<[AtomicU8]>,
}

impl CountWindow {
    /// A window over the last `size` outcomes; `size` is at least 1 and
    /// at most `i32::MAX` (the counters are `i32`).
    pub(crate) fn new(size: u32) -> Self {
        let size = size.clamp(1, i32::MAX as u32) as usize;
        Self {
            head: AtomicU64::new(0),
            failures: AtomicI32::new(0),
            slow: AtomicI32::new(0),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    fn size(&self) -> u64 {
        self.slots.len() as u64
    }

    #[inline]
    pub(crate) fn record(&self, sample: Sample) {
        if !sample.failure && !sample.slow && self.full_of_successes() {
            // The ring holds N plain successes; one more pushes out a plain
            // success and the last N outcomes read the same. Skipping the
            // write keeps the healthy path free of shared-memory writes, so
            // threads sharing a breaker do not contend.
            return;
        }
        let new =
            CALL | if sample.failure { FAILURE } else { 0 } | if sample.slow { SLOW } else { 0 };
        let i = self.head.fetch_add(1, Ordering::AcqRel);
        let old = self.slots[(i % self.size()) as usize].swap(new, Ordering::AcqRel);
        self.apply(old, new);
    }

    /// Whether the ring holds N successes, so one more changes nothing.
    #[inline]
    pub(crate) fn full_of_successes(&self) -> bool {
        self.failures.load(Ordering::Acquire) <= 0
            && self.slow.load(Ordering::Acquire) <= 0
            && self.head.load(Ordering::Acquire) >= self.size()
    }

    /// Whether a failure is among the last N outcomes.
    #[inline]
    pub(crate) fn holds_failures(&self) -> bool {
        self.failures.load(Ordering::Acquire) > 0
    }

    /// Whether a failure or a slow call is among the last N outcomes.
    #[inline]
    fn holds_bad(&self) -> bool {
        self.failures.load(Ordering::Acquire) > 0 || self.slow.load(Ordering::Acquire) > 0
    }

    /// Moves the totals from slot value `old` to slot value `new`.
    fn apply(&self, old: u8, new: u8) {
        for (flag, total) in [(FAILURE, &self.failures), (SLOW, &self.slow)] {
            match (old & flag != 0, new & flag != 0) {
                (false, true) => {
                    total.fetch_add(1, Ordering::AcqRel);
                }
                (true, false) => {
                    total.fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        let calls = self.head.load(Ordering::Acquire).min(self.size());
        Counts::clamped(
            calls,
            i64::from(self.failures.load(Ordering::Acquire)),
            i64::from(self.slow.load(Ordering::Acquire)),
        )
    }

    /// The outcomes held, oldest first.
    fn recent(&self) -> Vec<u8> {
        let head = self.head.load(Ordering::Acquire);
        let held = head.min(self.size());
        (head - held..head)
            .map(|i| self.slots[(i % self.size()) as usize].load(Ordering::Acquire))
            .filter(|slot| slot & CALL != 0)
            .collect()
    }

    /// Fills the window with `counts`' outcomes, as many as fit, the bad
    /// ones spread evenly among them.
    fn fill(&self, counts: Counts) {
        let kept = counts.calls.min(self.size());
        if kept == 0 {
            return;
        }
        // The i-th outcome is bad when the share of bad ones so far steps
        // past a whole one (Bresenham's rule).
        let steps = |bad: u64, i: u64| (i + 1) * bad / counts.calls > i * bad / counts.calls;
        for i in 0..kept {
            self.record(Sample {
                failure: steps(counts.failures, i),
                slow: steps(counts.slow, i),
            });
        }
    }

    pub(crate) fn reset(&self) {
        // Swap every slot out so the totals stay equal to the ring's contents
        // even if a late call records concurrently.
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            self.apply(old, 0);
        }
        self.head.store(0, Ordering::Release);
    }
}

/// `buckets` buckets of equal width spanning a duration, each with three
/// [`EpochCounter`]s: a counter whose epoch left the window reads as zero and
/// is claimed by the next write to its slot. The buckets are sharded per
/// thread (see [`shard`]) so that threads recording at once do not write
/// one cache line; reading sums the shards.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    base: Instant,
    bucket_nanos: u64,
    buckets: usize,
    shards: Box<[Shard]>,
    /// One more than the bucket index of the latest failure or slow call
    /// recorded, or [`NO_BAD_BUCKET`]: while that bucket is out of the
    /// window, a success needs no recount to know that no rule can trip.
    last_bad_bucket: AtomicU64,
}

/// [`TimeWindow::last_bad_bucket`] when no failure or slow call is held.
const NO_BAD_BUCKET: u64 = 0;

#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    buckets: Box<[Bucket]>,
}

#[derive(Debug)]
struct Bucket {
    calls: EpochCounter,
    failures: EpochCounter,
    slow: EpochCounter,
}

/// Buckets over all shards at most: ~100 KB of counters.
const MAX_SHARDED_BUCKETS: usize = 4096;

impl TimeWindow {
    /// A window of `buckets` buckets (at least 1) of `span / buckets` each
    /// (at least 1 ns), starting at `base`.
    pub(crate) fn new(base: Instant, span: std::time::Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1) as usize;
        let bucket_nanos =
            (span.as_nanos() / buckets as u128).clamp(1, u128::from(u64::MAX)) as u64;
        let shards = shard::count(MAX_SHARDED_BUCKETS / buckets);
        Self {
            base,
            bucket_nanos,
            buckets,
            shards: (0..shards)
                .map(|_| Shard {
                    buckets: (0..buckets)
                        .map(|_| Bucket {
                            calls: EpochCounter::new(),
                            failures: EpochCounter::new(),
                            slow: EpochCounter::new(),
                        })
                        .collect(),
                })
                .collect(),
            last_bad_bucket: AtomicU64::new(NO_BAD_BUCKET),
        }
    }

    /// The bucket index for `now`.
    fn index(&self, now: Instant) -> u64 {
        bucket_index(self.base, now, self.bucket_nanos)
    }

    pub(crate) fn record(&self, now: Instant, sample: Sample) {
        let idx = self.index(now);
        let tag = epoch::tag(idx);
        let shard = &self.shards[shard::index() & (self.shards.len() - 1)];
        let bucket = &shard.buckets[(idx % self.buckets as u64) as usize];
        bucket.calls.add(tag, 1);
        if sample.failure {
            bucket.failures.add(tag, 1);
        }
        if sample.slow {
            bucket.slow.add(tag, 1);
        }
        if sample.failure || sample.slow {
            self.last_bad_bucket.fetch_max(idx + 1, Ordering::AcqRel);
        }
    }

    /// Whether the latest failure or slow call is still in the window at
    /// `now` (it may have been reset away since: then this errs on the side
    /// of a recount).
    #[inline]
    fn holds_bad(&self, now: Instant) -> bool {
        let last = self.last_bad_bucket.load(Ordering::Acquire);
        last != NO_BAD_BUCKET && self.index(now) < (last - 1).saturating_add(self.buckets as u64)
    }

    pub(crate) fn counts(&self, now: Instant) -> Counts {
        let tag = epoch::tag(self.index(now));
        let span = self.buckets as u32;
        let (mut calls, mut failures, mut slow) = (0u64, 0u64, 0u64);
        for b in self.shards.iter().flat_map(|s| s.buckets.iter()) {
            calls += b.calls.read(tag, span);
            failures += b.failures.read(tag, span);
            slow += b.slow.read(tag, span);
        }
        Counts::clamped(calls, failures as i64, slow as i64)
    }

    /// Adds `counts` to the bucket of `at`.
    fn add(&self, at: Instant, counts: Counts) {
        if counts.calls == 0 {
            return;
        }
        let idx = self.index(at);
        let tag = epoch::tag(idx);
        let bucket = &self.shards[0].buckets[(idx % self.buckets as u64) as usize];
        bucket.calls.add(tag, counts.calls);
        bucket.failures.add(tag, counts.failures);
        bucket.slow.add(tag, counts.slow);
        if counts.failures > 0 || counts.slow > 0 {
            self.last_bad_bucket.fetch_max(idx + 1, Ordering::AcqRel);
        }
    }

    /// Each bucket still in the window at `now`, added to the bucket of
    /// `into` that covers its start (if that one is in `into`'s window).
    fn carry_into(&self, into: &TimeWindow, now: Instant) {
        let newest = self.index(now);
        for idx in newest.saturating_sub(self.buckets as u64 - 1)..=newest {
            let tag = epoch::tag(idx);
            let mut counts = Counts::default();
            for shard in self.shards.iter() {
                let b = &shard.buckets[(idx % self.buckets as u64) as usize];
                counts.calls += b.calls.read(tag, 1);
                counts.failures += b.failures.read(tag, 1);
                counts.slow += b.slow.read(tag, 1);
            }
            let offset = std::time::Duration::from_nanos(idx.saturating_mul(self.bucket_nanos));
            let start = super::later(self.base, offset);
            if into.index(now) - into.index(start).min(into.index(now)) < into.buckets as u64 {
                into.add(start, counts);
            }
        }
    }

    pub(crate) fn reset(&self) {
        for b in self.shards.iter().flat_map(|s| s.buckets.iter()) {
            b.calls.clear();
            b.failures.clear();
            b.slow.clear();
        }
        self.last_bad_bucket.store(NO_BAD_BUCKET, Ordering::Release);
    }
}

/// Which bucket of width `bucket_nanos`, counted from `base`, holds `now`.
#[inline]
pub(crate) fn bucket_index(base: Instant, now: Instant, bucket_nanos: u64) -> u64 {
    (super::nanos_since(base, now) / bucket_nanos.max(1)).min(u64::MAX - 1)
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };
    const SLOW: Sample = Sample {
        failure: false,
        slow: true,
    };

    #[test]
    fn count_window_is_truly_the_last_n() {
        let w = CountWindow::new(10);
        for _ in 0..1_000 {
            w.record(OK);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 10,
                failures: 0,
                slow: 0
            }
        );
        for _ in 0..10 {
            w.record(FAIL);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 10,
                failures: 10,
                slow: 0
            }
        );
        for _ in 0..4 {
            w.record(OK);
        }
        assert_eq!(w.counts().failures, 6);
    }

    #[test]
    fn count_window_reset() {
        let w = CountWindow::new(3);
        w.record(FAIL);
        w.record(SLOW);
        w.reset();
        assert_eq!(w.counts(), Counts::default());
        w.record(OK);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_expires_buckets() {
        let base = Instant::now();
        let w = TimeWindow::new(base, Duration::from_secs(10), 10);
        w.record(base, FAIL);
        w.record(base + Duration::from_millis(500), OK);
        w.record(base + Duration::from_secs(5), SLOW);
        assert_eq!(
            w.counts(base + Duration::from_secs(5)),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // At 10 s the first bucket [0, 1 s) has left the window.
        assert_eq!(
            w.counts(base + Duration::from_secs(10)),
            Counts {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(w.counts(base + Duration::from_secs(15)), Counts::default());
        // Writing into a recycled slot replaces the old epoch's counts.
        w.record(base + Duration::from_secs(20), OK);
        assert_eq!(
            w.counts(base + Duration::from_secs(20)),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_drops_samples_older_than_the_slot() {
        let base = Instant::now();
        let w = TimeWindow::new(base, Duration::from_secs(2), 2);
        w.record(base + Duration::from_secs(2), OK);
        // Same slot, one full span earlier: a descheduled caller.
        w.record(base, FAIL);
        assert_eq!(
            w.counts(base + Duration::from_secs(2)),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    /// A reference model: a list of every outcome.
    fn model_count(samples: &[Sample], n: usize) -> Counts {
        let last: VecDeque<_> = samples.iter().rev().take(n).collect();
        Counts {
            calls: last.len() as u64,
            failures: last.iter().filter(|s| s.failure).count() as u64,
            slow: last.iter().filter(|s| s.slow).count() as u64,
        }
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (prop::bool::weighted(0.3), prop::bool::weighted(0.2))
            .prop_map(|(failure, slow)| Sample { failure, slow })
    }

    proptest! {
        #[test]
        fn count_window_matches_model(size in 1u32..40, samples in prop::collection::vec(sample(), 0..300)) {
            let w = CountWindow::new(size);
            for (i, s) in samples.iter().enumerate() {
                w.record(*s);
                prop_assert_eq!(w.counts(), model_count(&samples[..=i], size as usize));
            }
        }

        #[test]
        fn time_window_matches_model(
            buckets in 1u32..12,
            bucket_ms in 1u64..50,
            steps in prop::collection::vec((0u64..40, sample()), 0..200),
        ) {
            let base = Instant::now();
            let w = TimeWindow::new(base, Duration::from_millis(bucket_ms * u64::from(buckets)), buckets);
            let mut at = 0u64;
            let mut seen: Vec<(u64, Sample)> = Vec::new();
            for (gap, s) in steps {
                at += gap;
                let now = base + Duration::from_millis(at);
                w.record(now, s);
                seen.push((at / bucket_ms, s));
                let current = at / bucket_ms;
                let live: Vec<_> = seen
                    .iter()
                    .filter(|(b, _)| current - b < u64::from(buckets))
                    .map(|(_, s)| *s)
                    .collect();
                prop_assert_eq!(w.counts(now), model_count(&live, usize::MAX));
            }
        }
    }

    fn counts(calls: u64, failures: u64, slow: u64) -> Counts {
        Counts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn a_shorter_count_window_keeps_the_most_recent_outcomes() {
        let from = Window::Count(CountWindow::new(10));
        for sample in [FAIL, FAIL, FAIL, OK, OK, OK, OK, FAIL, OK, OK] {
            from.record(Instant::now, sample);
        }
        let to = Window::Count(CountWindow::new(4));
        from.carry_into(&to, Instant::now());
        assert_eq!(to.counts(Instant::now), counts(4, 1, 0), "OK FAIL OK OK");
        let longer = Window::Count(CountWindow::new(100));
        from.carry_into(&longer, Instant::now());
        assert_eq!(longer.counts(Instant::now), counts(10, 4, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_time_window_keeps_the_latest_buckets() {
        let base = Instant::now();
        let from = Window::Time(TimeWindow::new(base, Duration::from_secs(10), 10));
        for second in 0..10 {
            // One failure a second, and as many successes as the second's number.
            from.record(Instant::now, FAIL);
            for _ in 0..second {
                from.record(Instant::now, OK);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        let now = Instant::now();
        // 10.5 s: the 10 s window holds seconds 1..=9 (0 has left it).
        assert_eq!(from.counts(|| now), counts(9 + 45, 9, 0));
        let to = Window::Time(TimeWindow::new(base, Duration::from_secs(4), 4));
        from.carry_into(&to, now);
        // The 4 s window at 10.5 s holds seconds 7..=9 and the current one.
        assert_eq!(to.counts(|| now), counts(3 + 7 + 8 + 9, 3, 0));
        // Across kinds: the counts, in proportion where they do not fit.
        let count = Window::Count(CountWindow::new(10));
        to.carry_into(&count, now);
        assert_eq!(count.counts(|| now), counts(10, 1, 0));
        let back = Window::Time(TimeWindow::new(base, Duration::from_secs(1), 1));
        count.carry_into(&back, now);
        assert_eq!(back.counts(|| now), counts(10, 1, 0));
    }
}
