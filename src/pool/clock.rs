//! The pool's time: [`Moment`], whole milliseconds on the pool's clock,
//! with a named "never" and "forever" and arithmetic that cannot overflow.
//!
//! A moment is counted from one, so that zero can mean [`Moment::NEVER`]
//! ("not set": never ejected, never recovered) in an atomic. A moment plus
//! a duration saturates: a duration too long for the clock (up to
//! `Duration::MAX`, which validation accepts) lands on [`Moment::FOREVER`],
//! after every other moment, so an ejection, an avoidance or a failback
//! that long lasts forever rather than wrapping to "already over".

use std::time::Duration;

use tokio::time::Instant;

use crate::sync::{AtomicU64, Ordering};

const NANOS_PER_MILLI: u64 = 1_000_000;

/// A moment on a pool's clock (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Moment(u64);

impl Moment {
    /// Not set: before every moment.
    pub(super) const NEVER: Self = Self(0);

    /// After every other moment: what a duration too long for the clock
    /// reaches.
    pub(super) const FOREVER: Self = Self(u64::MAX);

    /// The moment `ns` nanoseconds after the clock's base (the
    /// millisecond it falls in).
    #[inline]
    pub(super) fn from_nanos(ns: u64) -> Self {
        Self(ns / NANOS_PER_MILLI + 1)
    }

    /// The moment `d` after this one, [`FOREVER`](Self::FOREVER) if that
    /// is past the clock's end.
    #[inline]
    pub(super) fn after(self, d: Duration) -> Self {
        u64::try_from(d.as_millis())
            .ok()
            .and_then(|millis| self.0.checked_add(millis))
            .map_or(Self::FOREVER, Self)
    }

    /// How long from this moment to `later`; zero if it is not later.
    #[inline]
    pub(super) fn until(self, later: Self) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }

    /// Whether it was ever set.
    #[inline]
    pub(super) fn is_set(self) -> bool {
        self != Self::NEVER
    }

    /// Nanoseconds from the clock's base to the start of this moment.
    pub(super) fn nanos(self) -> u64 {
        self.0.saturating_sub(1).saturating_mul(NANOS_PER_MILLI)
    }

    /// This moment as an `Instant`, on the clock that starts at `base`; a
    /// moment too far to be an `Instant` (a "forever") is shown 30 years
    /// out.
    pub(super) fn instant(self, base: Instant) -> Instant {
        crate::stats::later(base, Duration::from_millis(self.0.saturating_sub(1)))
    }

    /// A moment by its count, for tests that build standings by hand.
    #[cfg(all(test, not(steadfast_loom)))]
    pub(super) const fn at(count: u64) -> Self {
        Self(count)
    }
}

/// A [`Moment`] in an atomic.
#[derive(Debug)]
pub(super) struct AtomicMoment(AtomicU64);

impl AtomicMoment {
    pub(super) fn new(moment: Moment) -> Self {
        Self(AtomicU64::new(moment.0))
    }

    #[inline]
    pub(super) fn load(&self, order: Ordering) -> Moment {
        Moment(self.0.load(order))
    }

    #[inline]
    pub(super) fn store(&self, moment: Moment, order: Ordering) {
        self.0.store(moment.0, order);
    }

    /// Moves it to `moment` if that is later; returns the moment before.
    pub(super) fn fetch_max(&self, moment: Moment, order: Ordering) -> Moment {
        Moment(self.0.fetch_max(moment.0, order))
    }

    /// Moves it from `current` to `new`, if it still is `current`.
    pub(super) fn compare_exchange(
        &self,
        current: Moment,
        new: Moment,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Moment, Moment> {
        self.0
            .compare_exchange(current.0, new.0, success, failure)
            .map(Moment)
            .map_err(Moment)
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[test]
    fn long_durations_saturate_to_forever() {
        let ten = Moment::at(10);
        assert_eq!(ten.after(Duration::from_millis(5)), Moment::at(15));
        assert_eq!(ten.after(Duration::MAX), Moment::FOREVER);
        assert_eq!(
            Moment::at(u64::MAX - 1).after(Duration::from_secs(1)),
            Moment::FOREVER
        );
        assert!(Moment::NEVER < ten && ten < Moment::FOREVER);
        assert!(!Moment::NEVER.is_set() && ten.is_set());
        assert_eq!(ten.until(Moment::at(15)), Duration::from_millis(5));
        assert_eq!(Moment::at(15).until(ten), Duration::ZERO);
        assert_eq!(Moment::from_nanos(0), Moment::at(1));
        assert_eq!(Moment::from_nanos(2_500_000), Moment::at(3));
        assert_eq!(Moment::at(3).nanos(), 2_000_000);
        let base = Instant::now();
        assert!(Moment::FOREVER.instant(base) > base + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(Moment::at(1).instant(base), base);
        assert!(crate::stats::later(base, Duration::MAX) > base);
    }
}
