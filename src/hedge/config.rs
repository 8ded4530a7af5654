//! The hedge layer's configuration: a builder validated when built.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::HedgeLayer;
use crate::attempt::{Admission, CloneRequest};
use crate::budget::RetryBudget;
use crate::classify::ErrorsAsFailures;
use crate::error::ConfigError;
use crate::stats::histogram::Histogram;
use crate::sync::{AtomicU64, Ordering};

/// The most extra attempts a hedge layer may send for one request.
pub const MAX_EXTRA_ATTEMPTS: u32 = 10;

/// When the next attempt is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// After a fixed delay.
    Fixed(Duration),
    /// After a quantile of recent latencies, between a floor and a ceiling.
    Adaptive {
        /// The quantile of recent latencies (default 0.95): the share of
        /// calls that should finish before a hedge is sent.
        quantile: f64,
        /// The shortest delay (default 1 ms).
        floor: Duration,
        /// The longest delay (default 1 s).
        ceiling: Duration,
        /// How long a window of latency samples lasts (default 10 s); the
        /// quantile reads the current and the previous window.
        window: Duration,
        /// Samples needed before the quantile is trusted (default 20).
        min_samples: u64,
        /// The delay until then (default 50 ms), so hedging works from the
        /// first request.
        initial: Duration,
    },
}

impl HedgeDelay {
    /// The adaptive delay with the defaults, at quantile `quantile`.
    pub const fn quantile(quantile: f64) -> Self {
        Self::adaptive().quantile(quantile).build()
    }

    /// The adaptive delay with the defaults, to tune setting by setting:
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadfast::hedge::HedgeDelay;
    ///
    /// let delay = HedgeDelay::adaptive()
    ///     .quantile(0.99)
    ///     .floor(Duration::from_millis(5))
    ///     .build();
    /// # let _ = delay;
    /// ```
    pub const fn adaptive() -> AdaptiveDelay {
        AdaptiveDelay {
            quantile: 0.95,
            floor: Duration::from_millis(1),
            ceiling: Duration::from_secs(1),
            window: Duration::from_secs(10),
            min_samples: 20,
            initial: Duration::from_millis(50),
        }
    }
}

/// An adaptive [`HedgeDelay`], built from the defaults one setting at a
/// time (see [`HedgeDelay::Adaptive`] for what each means and its default);
/// made by [`HedgeDelay::adaptive`]. The values are checked when the hedge
/// layer is built.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct AdaptiveDelay {
    pub(crate) quantile: f64,
    pub(crate) floor: Duration,
    pub(crate) ceiling: Duration,
    pub(crate) window: Duration,
    pub(crate) min_samples: u64,
    pub(crate) initial: Duration,
}

impl AdaptiveDelay {
    /// The quantile of recent latencies (default 0.95).
    pub const fn quantile(mut self, quantile: f64) -> Self {
        self.quantile = quantile;
        self
    }

    /// The shortest delay (default 1 ms).
    pub const fn floor(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// The longest delay (default 1 s).
    pub const fn ceiling(mut self, ceiling: Duration) -> Self {
        self.ceiling = ceiling;
        self
    }

    /// How long a window of latency samples lasts (default 10 s).
    pub const fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Samples needed before the quantile is trusted (default 20).
    pub const fn min_samples(mut self, n: u64) -> Self {
        self.min_samples = n;
        self
    }

    /// The delay until then (default 50 ms).
    pub const fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// The delay.
    pub const fn build(self) -> HedgeDelay {
        HedgeDelay::Adaptive {
            quantile: self.quantile,
            floor: self.floor,
            ceiling: self.ceiling,
            window: self.window,
            min_samples: self.min_samples,
            initial: self.initial,
        }
    }
}

impl From<AdaptiveDelay> for HedgeDelay {
    fn from(delay: AdaptiveDelay) -> Self {
        delay.build()
    }
}

/// Builds a [`HedgeLayer`]; see [`HedgeLayer::builder`].
///
/// | setting | default | why |
/// |---|---|---|
/// | [`name`](Self::name) | `"default"` | the `name` label of metrics |
/// | [`delay`](Self::delay) | p95 of recent latencies, 1 ms..1 s, 50 ms until 20 samples | hedge the slowest 5% |
/// | [`max_extra_attempts`](Self::max_extra_attempts) | 1 | one spare covers a slow replica; more rarely pays |
/// | [`budget`](Self::budget) | a budget of its own: 20% extra, 10/s floor | when every call turns slow, do not double the load |
/// | [`classify`](Self::classify) | [`ErrorsAsFailures`] | which outcomes win, and which failures fire the next attempt at once |
/// | [`replay`](Self::replay) | [`CloneRequest`] | how a request is copied; `HttpReplay` for HTTP |
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder<C = ErrorsAsFailures, R = CloneRequest> {
    pub(crate) name: Arc<str>,
    classifier: C,
    replay: R,
    pub(crate) delay: HedgeDelay,
    pub(crate) max_extra_attempts: u32,
    pub(crate) budget: Option<Arc<RetryBudget>>,
}

/// The validated settings and live state shared by every service of a
/// layer (private).
#[derive(Debug)]
pub(super) struct Policy<C, R> {
    pub(super) classifier: C,
    pub(super) replay: R,
    pub(super) delay: HedgeDelay,
    pub(super) max_extra_attempts: u32,
    pub(super) budget: Arc<RetryBudget>,
    pub(super) latencies: Option<Histogram>,
    base: Instant,
    /// The adaptive delay in nanoseconds, and when it was computed (ms
    /// since `base`, plus one; zero means never).
    cached_delay: AtomicU64,
    cached_at: AtomicU64,
    pub(super) metrics: Metrics,
    /// The step that admits an extra attempt, with its refusal counters.
    pub(super) admission: Admission,
}

#[derive(Debug)]
pub(super) struct Metrics {
    pub(super) sent: Counter,
    pub(super) won: Counter,
    /// Hedges a pool below declined: no replica was free to start one.
    pub(super) declined: Counter,
    pub(super) delay: Gauge,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            classifier: ErrorsAsFailures,
            replay: CloneRequest,
            delay: HedgeDelay::quantile(0.95),
            max_extra_attempts: 1,
            budget: None,
        }
    }
}

impl<C, R> Builder<C, R> {
    /// Names the layer: the `name` label of its metrics.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Arc::from(name.as_ref());
        self
    }

    /// Sets the classifier: a success (or an ignored outcome) wins; a
    /// retryable failure fires the next attempt at once.
    pub fn classify<C2>(self, classifier: C2) -> Builder<C2, R> {
        Builder {
            name: self.name,
            classifier,
            replay: self.replay,
            delay: self.delay,
            max_extra_attempts: self.max_extra_attempts,
            budget: self.budget,
        }
    }

    /// Sets how requests are copied (and which may be sent twice at all).
    pub fn replay<R2>(self, replay: R2) -> Builder<C, R2> {
        Builder {
            name: self.name,
            classifier: self.classifier,
            replay,
            delay: self.delay,
            max_extra_attempts: self.max_extra_attempts,
            budget: self.budget,
        }
    }

    /// Sets when the next attempt is sent.
    pub fn delay(mut self, delay: impl Into<HedgeDelay>) -> Self {
        self.delay = delay.into();
        self
    }

    /// The most extra attempts per request (1..=10). Under a retry layer,
    /// this many per attempt of the retry, within the retry's
    /// `max_attempts` for all attempts together (see
    /// [`attempt`](crate::attempt)).
    pub fn max_extra_attempts(mut self, n: u32) -> Self {
        self.max_extra_attempts = n;
        self
    }

    /// Draws extra attempts from `budget`, which a retry layer of the same
    /// upstream may share.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Checks the settings without building the layer (which would
    /// register its metrics, and a budget's).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if !(1..=MAX_EXTRA_ATTEMPTS).contains(&self.max_extra_attempts) {
            return Err(ConfigError::new(
                "max_extra_attempts",
                format!(
                    "must be in 1..={MAX_EXTRA_ATTEMPTS}, got {}",
                    self.max_extra_attempts
                ),
            ));
        }
        match self.delay {
            HedgeDelay::Fixed(d) => {
                if d.is_zero() {
                    return Err(ConfigError::new("delay", "must be greater than zero"));
                }
            }
            HedgeDelay::Adaptive {
                quantile,
                floor,
                ceiling,
                window,
                initial,
                ..
            } => {
                if !(quantile > 0.0 && quantile < 1.0) {
                    return Err(ConfigError::new(
                        "delay.quantile",
                        format!("must be in (0, 1), got {quantile}"),
                    ));
                }
                if floor.is_zero() {
                    return Err(ConfigError::new("delay.floor", "must be greater than zero"));
                }
                if ceiling < floor {
                    return Err(ConfigError::new(
                        "delay.ceiling",
                        format!("must be at least the floor ({floor:?}), got {ceiling:?}"),
                    ));
                }
                if window < Duration::from_millis(10) {
                    return Err(ConfigError::new(
                        "delay.window",
                        format!("must be at least 10 ms, got {window:?}"),
                    ));
                }
                if initial.is_zero() {
                    return Err(ConfigError::new(
                        "delay.initial",
                        "must be greater than zero",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Validates the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<HedgeLayer<C, R>, ConfigError> {
        self.check()?;
        let base = Instant::now();
        let latencies = match self.delay {
            HedgeDelay::Fixed(_) => None,
            HedgeDelay::Adaptive { window, .. } => Some(Histogram::new(base, window)),
        };
        let budget = match self.budget {
            Some(budget) => budget,
            None => Arc::new(RetryBudget::builder().name(&*self.name).build()?),
        };
        let name = &self.name;
        let metrics = Metrics {
            sent: metrics::counter!("steadfast_hedge_sent_total", "name" => name.clone()),
            won: metrics::counter!("steadfast_hedge_won_total", "name" => name.clone()),
            declined: metrics::counter!("steadfast_hedge_refused_total", "name" => name.clone(), "reason" => "no_free_replica"),
            delay: metrics::gauge!("steadfast_hedge_delay_seconds", "name" => name.clone()),
        };
        Ok(HedgeLayer::from_policy(Arc::new(Policy {
            classifier: self.classifier,
            replay: self.replay,
            delay: self.delay,
            max_extra_attempts: self.max_extra_attempts,
            budget,
            latencies,
            base,
            cached_delay: AtomicU64::new(0),
            cached_at: AtomicU64::new(0),
            metrics,
            admission: Admission::new("hedge", "steadfast_hedge_refused_total", name),
        })))
    }
}

impl<C, R> Policy<C, R> {
    /// Records one finished attempt's latency.
    #[inline]
    pub(super) fn record(&self, latency: Duration) {
        if let Some(h) = &self.latencies {
            h.record(latency);
        }
    }

    /// Records an attempt dropped unfinished (a loser): longer than it ran.
    #[inline]
    pub(super) fn record_cut_short(&self) {
        if let Some(h) = &self.latencies {
            h.record_censored();
        }
    }

    /// The delay before the next attempt. The adaptive quantile is computed
    /// at most 8 times per window and cached.
    pub(super) fn delay(&self, now: Instant) -> Duration {
        let HedgeDelay::Adaptive {
            quantile,
            floor,
            ceiling,
            window,
            min_samples,
            initial,
        } = self.delay
        else {
            let HedgeDelay::Fixed(d) = self.delay else {
                unreachable!("two kinds of delay")
            };
            return d;
        };
        let Some(latencies) = &self.latencies else {
            return initial;
        };
        let now_ms =
            u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        let refresh_ms = u64::try_from((window / 8).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let at = self.cached_at.load(Ordering::Acquire);
        if at != 0 && now_ms.saturating_sub(at - 1) < refresh_ms {
            return Duration::from_nanos(self.cached_delay.load(Ordering::Acquire));
        }
        let Some(delay) = latencies
            .quantile(now, quantile, min_samples)
            .map(|q| q.clamp(floor, ceiling))
        else {
            // Not enough samples yet: the initial delay, not cached, so the
            // quantile takes over as soon as they are in (it is cheap to
            // find out: this only runs for calls still pending).
            self.metrics.delay.set(initial.as_secs_f64());
            return initial;
        };
        self.cached_delay.store(
            u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        self.cached_at.store(now_ms + 1, Ordering::Release);
        self.metrics.delay.set(delay.as_secs_f64());
        delay
    }
}
