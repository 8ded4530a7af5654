//! The circuit breaker's configuration: a builder validated when built.

use std::sync::Arc;
use std::time::Duration;

use super::{Circuit, CircuitBreakerLayer};
use crate::backoff::{Backoff, Jitter};
use crate::classify::ErrorsAsFailures;
use crate::error::ConfigError;

/// The sliding window the failure-rate and slow-call rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// Exactly the last `size` calls.
    Count {
        /// How many calls (at least 1).
        size: u32,
    },
    /// The calls of the last `span`, kept in `buckets` buckets of
    /// `span / buckets` each; the window covers the current, partly filled
    /// bucket and the `buckets - 1` before it.
    Time {
        /// How far back the window reaches.
        span: Duration,
        /// How many buckets (at least 1; each at least 1 ms wide).
        buckets: u32,
    },
}

impl SlidingWindow {
    /// The last `size` calls.
    pub const fn count(size: u32) -> Self {
        Self::Count { size }
    }

    /// The calls of the last `span`, in 10 buckets.
    pub const fn time(span: Duration) -> Self {
        Self::Time { span, buckets: 10 }
    }

    /// The calls of the last `span`, in `buckets` buckets.
    pub const fn time_with_buckets(span: Duration, buckets: u32) -> Self {
        Self::Time { span, buckets }
    }
}

/// Builds a [`CircuitBreakerLayer`]; see [`CircuitBreakerLayer::builder`].
///
/// | setting | default | why |
/// |---|---|---|
/// | [`name`](Self::name) | `"default"` | the `name` label of metrics and events |
/// | [`failure_rate`](Self::failure_rate) | 0.5 | half the calls failing is an outage, not noise |
/// | [`window`](Self::window) | last 100 calls | enough calls for a rate to mean something; no clock read per call |
/// | [`min_calls`](Self::min_calls) | 20 | do not judge on 3 calls after a quiet night |
/// | [`slow_calls`](Self::slow_calls) | off | needs a threshold only you know |
/// | [`consecutive_failures`](Self::consecutive_failures) | off | the rate rule covers steady traffic |
/// | [`open_backoff`](Self::open_backoff) | 5 s doubling to 60 s, equal jitter | probe soon, back off while it stays down, do not probe in lockstep |
/// | [`half_open_probes`](Self::half_open_probes) | 3 | one lucky probe should not close the circuit |
/// | [`max_pushback`](Self::max_pushback) | 60 s | honour `Retry-After`, but not for a day |
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder<C = ErrorsAsFailures> {
    pub(crate) name: Arc<str>,
    pub(super) classifier: C,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_calls: Option<(Duration, f64)>,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) window: SlidingWindow,
    pub(crate) min_calls: u32,
    pub(crate) open_backoff: Backoff,
    pub(crate) half_open_probes: u32,
    pub(crate) max_pushback: Duration,
}

/// The validated settings a circuit runs with (private).
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) name: Arc<str>,
    pub(super) failure_rate: Option<f64>,
    pub(super) slow_calls: Option<(Duration, f64)>,
    pub(super) consecutive_failures: Option<u32>,
    pub(super) window: SlidingWindow,
    pub(super) min_calls: u32,
    pub(super) open_backoff: Backoff,
    pub(super) half_open_probes: u32,
    pub(super) max_pushback: Duration,
}

/// The most probes a half-open circuit may admit.
pub const MAX_PROBES: u32 = 100_000;
/// The largest count window.
pub const MAX_WINDOW_CALLS: u32 = 1 << 20;
/// The most buckets a time window may have.
pub const MAX_BUCKETS: u32 = 10_000;

impl Default for Builder {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            classifier: ErrorsAsFailures,
            failure_rate: Some(0.5),
            slow_calls: None,
            consecutive_failures: None,
            window: SlidingWindow::count(100),
            min_calls: 20,
            open_backoff: Backoff::exponential(Duration::from_secs(5), Duration::from_secs(60))
                .jitter(Jitter::Equal),
            half_open_probes: 3,
            max_pushback: Duration::from_secs(60),
        }
    }
}

impl<C> Builder<C> {
    /// Names the circuit: the `name` label of its metrics and events, and the
    /// name in [`CircuitOpen`](crate::error::CircuitOpen).
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Arc::from(name.as_ref());
        self
    }

    /// Sets the classifier that decides what a failure is.
    pub fn classify<C2>(self, classifier: C2) -> Builder<C2> {
        Builder {
            name: self.name,
            classifier,
            failure_rate: self.failure_rate,
            slow_calls: self.slow_calls,
            consecutive_failures: self.consecutive_failures,
            window: self.window,
            min_calls: self.min_calls,
            open_backoff: self.open_backoff,
            half_open_probes: self.half_open_probes,
            max_pushback: self.max_pushback,
        }
    }

    /// Trips when at least this share of the calls in the window failed
    /// (`0 < rate <= 1`), once the window holds [`min_calls`](Self::min_calls).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// Turns the failure-rate rule off (another rule must be on).
    pub fn no_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// Trips when at least `rate` of the calls in the window took `threshold`
    /// or longer, successful or not. Measuring durations costs two clock
    /// reads per call, so this is off unless set.
    ///
    /// In the half-open state a slow probe counts as a failed one, even if
    /// it succeeded: it reopens the circuit.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow_calls = Some((threshold, rate));
        self
    }

    /// Trips after `n` failures in a row, whatever the window says.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Sets the window of the failure-rate and slow-call rules.
    ///
    /// A count window costs nothing on a healthy path; a time window reads
    /// the clock once per call.
    pub fn window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// The fewest calls in the window before a rate rule may trip.
    pub fn min_calls(mut self, n: u32) -> Self {
        self.min_calls = n;
        self
    }

    /// Sets how long the circuit stays open: the n-th consecutive trip
    /// (counted from the last close) waits the schedule's n-th delay.
    pub fn open_backoff(mut self, backoff: Backoff) -> Self {
        self.open_backoff = backoff;
        self
    }

    /// How many probes a half-open circuit admits; it closes after this many
    /// succeed and reopens on the first failure, or on the first slow probe
    /// when a [`slow_calls`](Self::slow_calls) rule is on.
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }

    /// Caps the server pushback (`Retry-After`) that may lengthen an open
    /// period. Zero ignores pushback.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// Validates the settings and builds the layer and its circuit.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let config = self.validate()?;
        Ok(CircuitBreakerLayer::from_parts(
            Circuit::new(config),
            self.classifier,
        ))
    }

    /// Validates the settings and builds a circuit named `name` (the
    /// replica pool builds one per replica from one builder).
    pub(crate) fn build_circuit(&self, name: &str) -> Result<Circuit, ConfigError> {
        let mut config = self.validate()?;
        config.name = Arc::from(name);
        Ok(Circuit::new(config))
    }

    /// Checks the settings without building a circuit (which would
    /// register its metrics).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        self.validate().map(drop)
    }

    pub(super) fn validate(&self) -> Result<Config, ConfigError> {
        fn rate(field: &'static str, value: f64) -> Result<(), ConfigError> {
            if value > 0.0 && value <= 1.0 {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("must be in (0, 1], got {value}"),
                ))
            }
        }
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if let Some(r) = self.failure_rate {
            rate("failure_rate", r)?;
        }
        if let Some((threshold, r)) = self.slow_calls {
            if threshold.is_zero() {
                return Err(ConfigError::new(
                    "slow_calls.threshold",
                    "must be greater than zero",
                ));
            }
            rate("slow_calls.rate", r)?;
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.failure_rate.is_none()
            && self.slow_calls.is_none()
            && self.consecutive_failures.is_none()
        {
            return Err(ConfigError::new(
                "failure_rate",
                "is off, and so are slow_calls and consecutive_failures: at least one rule must be on",
            ));
        }
        match self.window {
            SlidingWindow::Count { size } => {
                if size == 0 || size > MAX_WINDOW_CALLS {
                    return Err(ConfigError::new(
                        "window.size",
                        format!("must be in 1..={MAX_WINDOW_CALLS}, got {size}"),
                    ));
                }
                if self.min_calls > size {
                    return Err(ConfigError::new(
                        "min_calls",
                        format!(
                            "must be at most the window size ({size}), got {}: the rule could never trip",
                            self.min_calls
                        ),
                    ));
                }
            }
            SlidingWindow::Time { span, buckets } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(ConfigError::new(
                        "window.buckets",
                        format!("must be in 1..={MAX_BUCKETS}, got {buckets}"),
                    ));
                }
                if span < Duration::from_millis(1) * buckets {
                    return Err(ConfigError::new(
                        "window.span",
                        format!(
                            "must give buckets of at least 1 ms, got {span:?} for {buckets} buckets"
                        ),
                    ));
                }
            }
        }
        if self.min_calls == 0 {
            return Err(ConfigError::new("min_calls", "must be at least 1"));
        }
        self.open_backoff
            .validate()
            .map_err(|e| e.within("open_backoff"))?;
        if self.open_backoff.base().is_zero() {
            return Err(ConfigError::new(
                "open_backoff",
                "must not give a zero open period",
            ));
        }
        if self.half_open_probes == 0 || self.half_open_probes > MAX_PROBES {
            return Err(ConfigError::new(
                "half_open_probes",
                format!("must be in 1..={MAX_PROBES}, got {}", self.half_open_probes),
            ));
        }
        Ok(Config {
            name: self.name.clone(),
            failure_rate: self.failure_rate,
            slow_calls: self.slow_calls,
            consecutive_failures: self.consecutive_failures,
            window: self.window,
            min_calls: self.min_calls,
            open_backoff: self.open_backoff,
            half_open_probes: self.half_open_probes,
            max_pushback: self.max_pushback,
        })
    }
}
