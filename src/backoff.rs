//! Backoff schedules: how long to wait before the next attempt, probe or check.
//!
//! One schedule type serves every layer: retry delays, circuit breaker open
//! periods and outlier ejection periods. (Health-check intervals are a
//! fixed period with a symmetric jitter of their own, in
//! [`HealthChecks`](crate::health::HealthChecks).)
//! It is either constant or exponential (base, factor, cap), with a choice of
//! [`Jitter`].
//!
//! # Why jitter
//!
//! When many clients fail at the same moment — the usual case, since they
//! share the dependency that failed — un-jittered schedules make them all
//! come back at the same moment too, and the recovering dependency meets a
//! thundering herd. Jitter spreads them out. See the AWS Architecture Blog's
//! "Exponential Backoff And Jitter" for the comparison of the variants.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use steadfast::backoff::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
//!     .factor(3.0)
//!     .jitter(Jitter::Equal)
//!     .seed(42);
//! backoff.validate()?;
//!
//! for delay in backoff.delays().take(5) {
//!     assert!(delay <= Duration::from_secs(10));
//! }
//! # Ok::<(), steadfast::error::ConfigError>(())
//! ```

use std::time::Duration;

use crate::error::ConfigError;
use crate::rng::Rng;

/// How a delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: exactly the schedule.
    #[default]
    None,
    /// Uniform in `[0, d]` where `d` is the un-jittered delay: the widest
    /// spread, and the fewest total calls in AWS's comparison.
    Full,
    /// Uniform in `[d/2, d]`: keeps at least half the delay.
    Equal,
    /// Uniform in `[base, previous × factor]`, capped: each delay depends on
    /// the previous one rather than on the attempt number ("decorrelated
    /// jitter"). Meaningful for exponential schedules; a constant schedule
    /// stays constant.
    Decorrelated,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Constant(Duration),
    Exponential { base: Duration, cap: Duration },
}

/// A backoff schedule: constant or exponential, with optional jitter.
///
/// Build one with [`constant`](Self::constant) or
/// [`exponential`](Self::exponential), then check it with
/// [`validate`](Self::validate) (layers do this for you when their config is
/// built).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub(crate) kind: Kind,
    pub(crate) factor: f64,
    pub(crate) jitter: Jitter,
    pub(crate) seed: Option<u64>,
}

/// An endless iterator over the delays of a [`Backoff`], from
/// [`Backoff::delays`].
#[derive(Debug)]
pub struct Delays {
    backoff: Backoff,
    attempt: u32,
    prev: Duration,
    rng: Rng,
}

impl Backoff {
    /// The same delay every time.
    pub const fn constant(delay: Duration) -> Self {
        Self {
            kind: Kind::Constant(delay),
            factor: 2.0,
            jitter: Jitter::None,
            seed: None,
        }
    }

    /// `base × factorⁿ` for the n-th delay (from 0), never more than `cap`.
    /// The factor is 2 unless set with [`factor`](Self::factor).
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        Self {
            kind: Kind::Exponential { base, cap },
            factor: 2.0,
            jitter: Jitter::None,
            seed: None,
        }
    }

    /// Sets the growth factor (at least 1; default 2).
    #[must_use]
    pub const fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Sets the jitter (default none).
    #[must_use]
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the random source, so that a jittered schedule is repeatable
    /// (for tests and drills). Unseeded schedules differ per instance.
    #[must_use]
    pub const fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the schedule.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the exponential base is zero, the cap is
    /// below the base, or the factor is below 1 or not finite.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(ConfigError::new(
                "factor",
                format!("must be a finite number of at least 1, got {}", self.factor),
            ));
        }
        if let Kind::Exponential { base, cap } = self.kind {
            if base.is_zero() {
                return Err(ConfigError::new("base", "must be greater than zero"));
            }
            if cap < base {
                return Err(ConfigError::new(
                    "cap",
                    format!("must be at least the base ({base:?}), got {cap:?}"),
                ));
            }
        }
        Ok(())
    }

    /// The iterator of delays, starting from the first.
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            attempt: 0,
            prev: self.base(),
            rng: self.rng(),
        }
    }

    /// The smallest un-jittered delay: the constant, or the exponential base.
    pub const fn base(&self) -> Duration {
        match self.kind {
            Kind::Constant(d) => d,
            Kind::Exponential { base, .. } => base,
        }
    }

    /// The largest delay the schedule can give.
    pub const fn max(&self) -> Duration {
        match self.kind {
            Kind::Constant(d) => d,
            Kind::Exponential { cap, .. } => cap,
        }
    }

    pub(crate) fn rng(&self) -> Rng {
        match self.seed {
            Some(seed) => Rng::new(seed),
            None => Rng::from_entropy(),
        }
    }

    /// The un-jittered delay for `attempt` (0-based).
    fn nominal(&self, attempt: u32) -> Duration {
        match self.kind {
            Kind::Constant(d) => d,
            Kind::Exponential { base, cap } => {
                // Past ~1000 doublings every finite factor has hit the cap;
                // clamping keeps `powi` in range.
                let exp = attempt.min(1023) as i32;
                let secs = base.as_secs_f64() * self.factor.powi(exp);
                Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
            }
        }
    }

    /// The delay for `attempt` (0-based), given the previous delay (used by
    /// decorrelated jitter) and a uniform random number in `[0, 1)`.
    pub(crate) fn delay_with(&self, attempt: u32, prev: Duration, random: f64) -> Duration {
        let nominal = self.nominal(attempt);
        match self.jitter {
            Jitter::None => nominal,
            Jitter::Full => nominal.mul_f64(random),
            Jitter::Equal => nominal / 2 + (nominal / 2).mul_f64(random),
            Jitter::Decorrelated => {
                let base = self.base();
                let hi = Duration::try_from_secs_f64(prev.as_secs_f64() * self.factor)
                    .unwrap_or(self.max())
                    .clamp(base, self.max());
                base + (hi - base).mul_f64(random)
            }
        }
    }

    pub(crate) fn delay(&self, attempt: u32, prev: Duration, rng: &Rng) -> Duration {
        let random = match self.jitter {
            Jitter::None => 0.0,
            _ => rng.next_f64(),
        };
        self.delay_with(attempt, prev, random)
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.backoff.delay(self.attempt, self.prev, &self.rng);
        self.attempt = self.attempt.saturating_add(1);
        self.prev = delay;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_grows_and_caps() {
        let b = Backoff::exponential(100 * MS, 1000 * MS);
        let got: Vec<_> = b.delays().take(6).collect();
        assert_eq!(
            got,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        let b = b.factor(3.0);
        let got: Vec<_> = b.delays().take(3).collect();
        assert_eq!(got, [100 * MS, 300 * MS, 900 * MS]);
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let b = Backoff::exponential(MS, Duration::from_secs(30)).factor(10.0);
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.nominal(400), Duration::from_secs(30));
    }

    #[test]
    fn constant() {
        let b = Backoff::constant(5 * MS);
        assert!(b.delays().take(10).all(|d| d == 5 * MS));
        let j = b.jitter(Jitter::Full).seed(1);
        assert!(j.delays().take(100).all(|d| d <= 5 * MS));
    }

    #[test]
    fn jitter_bounds() {
        let base = Backoff::exponential(100 * MS, 10_000 * MS);
        for (n, d) in base
            .jitter(Jitter::Full)
            .seed(3)
            .delays()
            .take(50)
            .enumerate()
        {
            assert!(d <= base.nominal(n as u32));
        }
        for (n, d) in base
            .jitter(Jitter::Equal)
            .seed(3)
            .delays()
            .take(50)
            .enumerate()
        {
            let nominal = base.nominal(n as u32);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
        }
        let mut prev = 100 * MS;
        for d in base.jitter(Jitter::Decorrelated).seed(3).delays().take(50) {
            assert!(d >= 100 * MS && d <= 10_000 * MS);
            assert!(d <= prev * 2, "{d:?} after {prev:?}");
            prev = d;
        }
    }

    #[test]
    fn jitter_formulas_at_the_edges() {
        let b = Backoff::exponential(100 * MS, 1000 * MS);
        assert_eq!(
            b.jitter(Jitter::Full).delay_with(1, MS, 0.0),
            Duration::ZERO
        );
        assert_eq!(b.jitter(Jitter::Full).delay_with(1, MS, 0.5), 100 * MS);
        assert_eq!(b.jitter(Jitter::Equal).delay_with(1, MS, 0.0), 100 * MS);
        assert_eq!(b.jitter(Jitter::Equal).delay_with(1, MS, 1.0), 200 * MS);
        assert_eq!(
            b.jitter(Jitter::Decorrelated).delay_with(0, 300 * MS, 0.0),
            100 * MS
        );
        assert_eq!(
            b.jitter(Jitter::Decorrelated).delay_with(0, 300 * MS, 1.0),
            600 * MS
        );
        assert_eq!(
            b.jitter(Jitter::Decorrelated).delay_with(0, 900 * MS, 1.0),
            1000 * MS
        );
    }

    #[test]
    fn seeded_is_repeatable() {
        let b = Backoff::exponential(MS, Duration::from_secs(1))
            .jitter(Jitter::Full)
            .seed(9);
        let a: Vec<_> = b.delays().take(20).collect();
        let c: Vec<_> = b.delays().take(20).collect();
        assert_eq!(a, c);
    }

    #[test]
    fn validation() {
        assert!(Backoff::exponential(MS, MS).validate().is_ok());
        assert!(Backoff::constant(Duration::ZERO).validate().is_ok());
        let field = |b: Backoff| b.validate().unwrap_err().field().to_owned();
        assert_eq!(field(Backoff::exponential(Duration::ZERO, MS)), "base");
        assert_eq!(field(Backoff::exponential(2 * MS, MS)), "cap");
        assert_eq!(
            field(Backoff::exponential(MS, 2 * MS).factor(0.5)),
            "factor"
        );
        assert_eq!(
            field(Backoff::exponential(MS, 2 * MS).factor(f64::NAN)),
            "factor"
        );
        assert_eq!(field(Backoff::constant(MS).factor(f64::INFINITY)), "factor");
    }
}
