//! A lock-free peak-EWMA latency estimate (private).
//!
//! As in Finagle and tower: a sample above the estimate replaces it at once
//! (peak-sensitive, so a replica that turns slow is noticed on its first
//! slow answer), and the estimate decays toward lower samples at a decay
//! rate the owner gives (the inverse of a time constant). The estimate is an `f64` of nanoseconds kept as bits in
//! one `AtomicU64`, updated by compare-and-swap, with the time of the last
//! update in another.

use crate::sync::{AtomicU64, Ordering};

/// A peak-EWMA estimate in two words. Times are nanoseconds on a clock the
/// owner keeps (for the pool: since its base), so the hot path converts an
/// `Instant` once per request, not once per estimate; the time constant is
/// the owner's too, so many estimates share it without storing it. It is
/// given as a `rate`, its inverse (per nanosecond): a multiplication on
/// the hot path where the time constant would take a division.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// The estimate, in nanoseconds, as `f64` bits.
    estimate: AtomicU64,
    /// One more than the time of the last update; zero means "never".
    stamp: AtomicU64,
}

impl PeakEwma {
    /// An estimate starting at `initial_ns`, as if set at time zero.
    pub(crate) fn new(initial_ns: f64) -> Self {
        Self {
            estimate: AtomicU64::new(initial_ns.to_bits()),
            stamp: AtomicU64::new(0),
        }
    }

    /// Folds in one sample of `sample_ns` taken at `now_ns`.
    pub(crate) fn observe(&self, now_ns: u64, sample_ns: f64, rate: f64) {
        let mut current = self.estimate.load(Ordering::Acquire);
        loop {
            let next = self.folded(f64::from_bits(current), now_ns, sample_ns, rate);
            match self.estimate.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // A plain store: a racing older stamp only makes the next
                    // decay a little longer.
                    self.stamp.store(now_ns + 1, Ordering::Release);
                    return;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// As [`observe`](Self::observe), without compare-and-swap: a load and
    /// two plain stores, cheaper by a locked instruction. When two threads
    /// update at once, one sample is lost; only for estimates read as
    /// statistics (the pool's fleet comparison), never for load balancing.
    pub(crate) fn observe_lossy(&self, now_ns: u64, sample_ns: f64, rate: f64) {
        let next = self.folded(self.get(), now_ns, sample_ns, rate);
        self.estimate.store(next.to_bits(), Ordering::Release);
        self.stamp.store(now_ns + 1, Ordering::Release);
    }

    /// Folds in a sample known only to be at least `bound_ns` (a call cut
    /// short): a peak if it is above the estimate at `now_ns`, nothing
    /// otherwise (the estimate already allows for it).
    pub(crate) fn observe_at_least(&self, now_ns: u64, bound_ns: f64, rate: f64) {
        if bound_ns > self.get_at(now_ns, rate) {
            self.observe(now_ns, bound_ns, rate);
        }
    }

    /// `estimate` with one sample folded in: a sample above it replaces it
    /// (peak); a lower one pulls it down by the time since the last update,
    /// and by at least [`MIN_PULL`] of the way.
    #[inline]
    fn folded(&self, estimate: f64, now_ns: u64, sample_ns: f64, rate: f64) -> f64 {
        if sample_ns > estimate {
            sample_ns
        } else {
            let w = decay(self.since(now_ns) * rate).min(1.0 - MIN_PULL);
            estimate * w + sample_ns * (1.0 - w)
        }
    }

    /// Nanoseconds from the last update (or time zero) to `now_ns`.
    #[inline]
    fn since(&self, now_ns: u64) -> f64 {
        (now_ns + 1).saturating_sub(self.stamp.load(Ordering::Acquire).max(1)) as f64
    }

    /// Starts over at `value_ns` (a replica back from an ejection should
    /// not carry the penalties that got it ejected).
    pub(crate) fn reset(&self, now_ns: u64, value_ns: f64) {
        self.estimate.store(value_ns.to_bits(), Ordering::Release);
        self.stamp.store(now_ns + 1, Ordering::Release);
    }

    /// The estimate in nanoseconds as last updated.
    #[inline]
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.estimate.load(Ordering::Acquire))
    }

    /// The estimate at `now_ns`, decayed toward zero for the time since the
    /// last sample (as tower's peak-EWMA does): an endpoint that has not
    /// been used for a while looks cheaper and gets probed again, so a past
    /// penalty does not starve it forever.
    #[inline]
    pub(crate) fn get_at(&self, now_ns: u64, rate: f64) -> f64 {
        self.get() * decay(self.since(now_ns) * rate)
    }

    /// Whether a sample came in during the `window_ns` before `now_ns`.
    pub(crate) fn updated_within(&self, now_ns: u64, window_ns: u64) -> bool {
        let stamp = self.stamp.load(Ordering::Acquire);
        stamp > 0 && (now_ns + 1).saturating_sub(stamp) <= window_ns
    }
}

/// The least share of the way from the estimate to a lower sample that the
/// sample pulls it: a peak is forgotten within a few answers (from 10× to
/// within 2× of the answers in 8), whatever the time constant. With time
/// alone, at a few hundred answers a second a 10 s constant let one slow
/// answer hold the estimate up for over ten seconds.
const MIN_PULL: f64 = 0.25;

/// `exp(-x)`, with the first terms of its series where `x` is small (the
/// common case: an estimate read or updated within half a second, against
/// a 10 s constant), exact there to 3e-7 and costing no call.
#[inline]
fn decay(x: f64) -> f64 {
    if x < 0.05 {
        1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0)))
    } else {
        (-x).exp()
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const RATE: f64 = 1.0 / (100.0 * MS);

    #[test]
    fn peaks_at_once_and_decays_with_time() {
        let e = PeakEwma::new(MS);
        e.observe(MS as u64, 50.0 * MS, RATE);
        assert_eq!(e.get(), 50.0 * MS);
        // A fast sample right after pulls it a quarter of the way, not
        // more: the time since the peak is short...
        e.observe(2 * MS as u64, MS, RATE);
        assert!(
            (e.get() - (50.0 * MS - 49.0 * MS * MIN_PULL)).abs() < 0.01 * MS,
            "{}",
            e.get()
        );
        // ...and eight such bring a 50x peak within 6x.
        for t in 3..10 {
            e.observe(t * MS as u64, MS, RATE);
        }
        assert!(e.get() < 6.0 * MS, "{}", e.get());
        // ...one after several time constants brings it down.
        e.observe(1000 * MS as u64, MS, RATE);
        assert!(e.get() < 1.1 * MS, "{}", e.get());
        // Unused, it decays toward zero when read.
        e.observe(1001 * MS as u64, 50.0 * MS, RATE);
        let later = e.get_at(1101 * MS as u64, RATE);
        assert!(
            (later / (50.0 * MS) - (-1.0f64).exp()).abs() < 1e-6,
            "{later}"
        );
        assert!(e.updated_within(1101 * MS as u64, 100 * MS as u64));
        assert!(!e.updated_within(1102 * MS as u64, 100 * MS as u64));
    }

    #[test]
    fn the_series_matches_exp() {
        for i in 0..=1000 {
            let x = f64::from(i) * 1e-4;
            assert!((decay(x) - (-x).exp()).abs() < 3e-7, "{x}");
        }
    }

    #[test]
    fn an_update_at_time_zero_counts() {
        let e = PeakEwma::new(0.0);
        assert!(!e.updated_within(0, 10));
        e.observe(0, MS, RATE);
        assert!(e.updated_within(5, 10));
        assert_eq!(e.get_at(0, RATE), MS);
    }
}
