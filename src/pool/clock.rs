//! The pool's millisecond clock, and the arithmetic that cannot overflow.
//!
//! Moments are milliseconds since the pool's base, plus one, so that zero
//! can mean "never" in an atomic (`ejected_until = 0`: not ejected). A
//! moment plus a duration saturates: a duration too long for the clock
//! (up to `Duration::MAX`, which validation accepts) lands on [`FOREVER`],
//! after every other moment, and an ejection, an avoidance or a failback
//! time that long lasts forever rather than wrapping to "already over".

use std::time::Duration;

use tokio::time::Instant;

/// The moment after every other: what a duration too long for the clock
/// reaches.
pub(super) const FOREVER: u64 = u64::MAX;

/// A duration in the clock's milliseconds, saturating.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(FOREVER)
}

/// The moment `d` after `now`: [`FOREVER`] if it is past the clock's end.
pub(super) fn after(now: u64, d: Duration) -> u64 {
    now.saturating_add(millis(d))
}

/// The `Instant` of moment `ms` on the clock that starts at `base`; a
/// moment too far to be an `Instant` (a "forever") is shown 30 years out.
pub(super) fn instant(base: Instant, ms: u64) -> Instant {
    crate::stats::later(base, Duration::from_millis(ms.saturating_sub(1)))
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    #[test]
    fn long_durations_saturate_to_forever() {
        assert_eq!(after(10, Duration::from_millis(5)), 15);
        assert_eq!(after(10, Duration::MAX), FOREVER);
        assert_eq!(after(FOREVER - 1, Duration::from_secs(1)), FOREVER);
        let base = Instant::now();
        assert!(instant(base, FOREVER) > base + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(instant(base, 1), base);
        assert!(crate::stats::later(base, Duration::MAX) > base);
    }
}
