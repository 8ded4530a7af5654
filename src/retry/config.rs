//! The retry layer's configuration: a builder validated when built.

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;

use super::RetryLayer;
use crate::attempt::{Admission, CloneRequest};
use crate::backoff::{Backoff, Jitter};
use crate::budget::RetryBudget;
use crate::classify::ErrorsAsFailures;
use crate::error::ConfigError;
use crate::rng::Rng;

/// The most attempts a retry layer may make for one request.
pub const MAX_ATTEMPTS: u32 = 100;

/// Builds a [`RetryLayer`]; see [`RetryLayer::builder`].
///
/// | setting | default | why |
/// |---|---|---|
/// | [`name`](Self::name) | `"default"` | the `name` label of metrics and events |
/// | [`max_attempts`](Self::max_attempts) | 3 (the first and two retries) | a third failure is rarely fixed by a fourth try |
/// | [`backoff`](Self::backoff) | 50 ms doubling to 1 s, full jitter | retry soon, spread out, and back off if it keeps failing |
/// | [`budget`](Self::budget) | a budget of its own: 20% extra, 10/s floor | cap the extra load when everything fails |
/// | [`max_pushback`](Self::max_pushback) | 10 s | honour `Retry-After`, but a caller cannot wait minutes |
/// | [`deadline`](Self::deadline) | none | set it to your total timeout so no retry starts that cannot finish |
/// | [`classify`](Self::classify) | [`ErrorsAsFailures`] | what a failure is, and which may be retried |
/// | [`replay`](Self::replay) | [`CloneRequest`] | how a request is copied; `HttpReplay` for HTTP |
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder<C = ErrorsAsFailures, R = CloneRequest> {
    pub(crate) name: Arc<str>,
    classifier: C,
    replay: R,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) max_pushback: Duration,
    pub(crate) deadline: Option<Duration>,
}

/// The validated settings, shared by every service of a layer (private).
#[derive(Debug)]
pub(super) struct Policy<C, R> {
    pub(super) classifier: C,
    pub(super) replay: R,
    pub(super) max_attempts: u32,
    pub(super) backoff: Backoff,
    pub(super) rng: Rng,
    pub(super) budget: Arc<RetryBudget>,
    pub(super) max_pushback: Duration,
    pub(super) deadline: Option<Duration>,
    pub(super) metrics: Metrics,
    /// The step that admits a retry, with its refusal counters.
    pub(super) admission: Admission,
}

#[derive(Debug)]
pub(super) struct Metrics {
    pub(super) attempts: Counter,
    pub(super) retried_failure: Counter,
    pub(super) retried_pushback: Counter,
}

impl Metrics {
    fn new(name: &Arc<str>) -> Self {
        let retried = |reason: &'static str| metrics::counter!("steadfast_retry_retries_total", "name" => name.clone(), "reason" => reason);
        Self {
            attempts: metrics::counter!("steadfast_retry_attempts_total", "name" => name.clone()),
            retried_failure: retried("failure"),
            retried_pushback: retried("pushback"),
        }
    }
}

impl<C, R> Builder<C, R> {
    /// Checks the settings without building the layer (which would
    /// register its metrics, and a budget's).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                "max_attempts",
                format!("must be in 1..={MAX_ATTEMPTS}, got {}", self.max_attempts),
            ));
        }
        self.backoff.validate().map_err(|e| e.within("backoff"))?;
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("deadline", "must be greater than zero"));
        }
        Ok(())
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            classifier: ErrorsAsFailures,
            replay: CloneRequest,
            max_attempts: 3,
            backoff: Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1))
                .jitter(Jitter::Full),
            budget: None,
            max_pushback: Duration::from_secs(10),
            deadline: None,
        }
    }
}

impl<C, R> Builder<C, R> {
    /// Names the layer: the `name` label of its metrics and events.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Arc::from(name.as_ref());
        self
    }

    /// Sets the classifier: which outcomes are failures, and which of those
    /// another attempt may fix.
    pub fn classify<C2>(self, classifier: C2) -> Builder<C2, R> {
        Builder {
            name: self.name,
            classifier,
            replay: self.replay,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            budget: self.budget,
            max_pushback: self.max_pushback,
            deadline: self.deadline,
        }
    }

    /// Sets how requests are copied (and which may be sent again at all).
    pub fn replay<R2>(self, replay: R2) -> Builder<C, R2> {
        Builder {
            name: self.name,
            classifier: self.classifier,
            replay,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            budget: self.budget,
            max_pushback: self.max_pushback,
            deadline: self.deadline,
        }
    }

    /// The most attempts per request, the first included (1..=100). When
    /// this layer is the outermost of a stack, the cap covers the hedges of
    /// the layers below too (see [`attempt`](crate::attempt)).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The delays between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Draws retries from `budget`, which other layers of the same upstream
    /// (another retry layer, a hedge) may share.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Waits at most this long for a server's pushback (`Retry-After`)
    /// before a retry; a longer pushback is cut to it. Zero ignores pushback.
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.max_pushback = max;
        self
    }

    /// A deadline for the whole call, all attempts included: no retry is
    /// started whose backoff would end past it. Costs a clock read per call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Validates the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<RetryLayer<C, R>, ConfigError> {
        self.check()?;
        let budget = match self.budget {
            Some(budget) => budget,
            None => Arc::new(RetryBudget::builder().name(&*self.name).build()?),
        };
        Ok(RetryLayer::from_policy(Arc::new(Policy {
            metrics: Metrics::new(&self.name),
            admission: Admission::new("retry", "steadfast_retry_refused_total", &self.name),
            rng: self.backoff.rng(),
            classifier: self.classifier,
            replay: self.replay,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            budget,
            max_pushback: self.max_pushback,
            deadline: self.deadline,
        })))
    }
}
