//! A lock-free peak-EWMA latency estimate (private).
//!
//! As in Finagle and tower: a sample above the estimate replaces it at once
//! (peak-sensitive, so a replica that turns slow is noticed on its first
//! slow answer), and the estimate decays toward lower samples with time
//! constant `tau`. The estimate is an `f64` of nanoseconds kept as bits in
//! one `AtomicU64`, updated by compare-and-swap, with the time of the last
//! update in another.

use std::time::Duration;

use tokio::time::Instant;

use super::nanos_since;
use crate::sync::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) struct PeakEwma {
    base: Instant,
    tau_nanos: f64,
    /// The estimate, in nanoseconds, as `f64` bits.
    estimate: AtomicU64,
    /// Nanoseconds since `base` of the last update.
    stamp: AtomicU64,
}

fn nanos_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

impl PeakEwma {
    /// An estimate starting at `initial`, decaying with time constant `tau`.
    pub(crate) fn new(base: Instant, initial: Duration, tau: Duration) -> Self {
        Self {
            base,
            tau_nanos: nanos_f64(tau).max(1.0),
            estimate: AtomicU64::new(nanos_f64(initial).to_bits()),
            stamp: AtomicU64::new(0),
        }
    }

    /// Folds in one sample taken at `now`.
    pub(crate) fn observe(&self, now: Instant, sample: Duration) {
        let sample = nanos_f64(sample);
        let now = nanos_since(self.base, now);
        let mut current = self.estimate.load(Ordering::Acquire);
        loop {
            let estimate = f64::from_bits(current);
            let next = if sample > estimate {
                // Peak: take it at once.
                sample
            } else {
                let elapsed = now.saturating_sub(self.stamp.load(Ordering::Acquire)) as f64;
                let w = decay(elapsed / self.tau_nanos);
                estimate * w + sample * (1.0 - w)
            };
            match self.estimate.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // A plain store: a racing older stamp only makes the next
                    // decay a little longer.
                    self.stamp.store(now, Ordering::Release);
                    return;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Starts over at `value` (a replica back from an ejection should not
    /// carry the penalties that got it ejected).
    pub(crate) fn reset(&self, now: Instant, value: Duration) {
        self.estimate
            .store(nanos_f64(value).to_bits(), Ordering::Release);
        self.stamp
            .store(nanos_since(self.base, now), Ordering::Release);
    }

    /// The estimate in nanoseconds as last updated.
    #[inline]
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.estimate.load(Ordering::Acquire))
    }

    /// The estimate at `now`, decayed toward zero for the time since the
    /// last sample (as tower's peak-EWMA does): an endpoint that has not
    /// been used for a while looks cheaper and gets probed again, so a past
    /// penalty does not starve it forever.
    #[inline]
    pub(crate) fn get_at(&self, now: Instant) -> f64 {
        let elapsed =
            nanos_since(self.base, now).saturating_sub(self.stamp.load(Ordering::Acquire)) as f64;
        self.get() * decay(elapsed / self.tau_nanos)
    }

    /// Whether a sample came in during the `window` before `now`.
    pub(crate) fn updated_within(&self, now: Instant, window: Duration) -> bool {
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let stamp = self.stamp.load(Ordering::Acquire);
        stamp > 0 && nanos_since(self.base, now).saturating_sub(stamp) <= window
    }
}

/// `exp(-x)`, with the first terms of its series where `x` is small (the
/// common case: samples a few milliseconds apart against a 10 s constant),
/// which is exact to 1e-9 there and costs no call.
#[inline]
fn decay(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x + x * x / 2.0
    } else {
        (-x).exp()
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peaks_at_once_and_decays_with_time() {
        let t0 = Instant::now();
        let e = PeakEwma::new(t0, MS, 100 * MS);
        e.observe(t0 + MS, 50 * MS);
        assert_eq!(e.get(), (50 * MS).as_nanos() as f64);
        // A fast sample right after barely moves it...
        e.observe(t0 + 2 * MS, MS);
        assert!(e.get() > (45 * MS).as_nanos() as f64, "{}", e.get());
        // ...one after several time constants brings it down.
        e.observe(t0 + 1000 * MS, MS);
        assert!(e.get() < (1.1 * MS.as_nanos() as f64), "{}", e.get());
        // Unused, it decays toward zero when read.
        e.observe(t0 + 1001 * MS, 50 * MS);
        let later = e.get_at(t0 + 1101 * MS);
        assert!(
            (later / (50 * MS).as_nanos() as f64 - (-1.0f64).exp()).abs() < 1e-6,
            "{later}"
        );
    }
}
