//! Ready-made stacks with validated, documented defaults (feature `http`).
//!
//! - [`HttpClient`]: one upstream — total timeout → retry with a budget →
//!   circuit breaker → attempt timeout.
//! - [`ReplicaStack`]: several replicas — total timeout → retry → hedge
//!   (sharing one budget) → [`Pool`] with outlier detection and health
//!   checks → attempt timeout per replica.
//! - `GrpcClient` (feature `grpc`): [`HttpClient`]'s stack over a tonic
//!   `Channel`, with gRPC's status rules, replay and `tonic::Status` errors.
//!
//! Both take any HTTP client service (a hyper-util `Client`, for one);
//! their gRPC flavours take tonic `Channel`s.
//!
//! # Why this order
//!
//! The total timeout is outermost so it bounds everything, retries and
//! backoff included, and the retry layer gets it as its deadline, so it
//! never starts an attempt that cannot finish. The breaker sits under the
//! retry so that each attempt is judged, and an open circuit fails an
//! attempt at once (the retry then stops: the budget and the breaker agree
//! that the upstream is in trouble). The attempt timeout is innermost, so
//! a hung attempt counts as one failure. In the replica stack the hedge is
//! under the retry (a retry may itself be hedged) and both draw from one
//! budget, so all extra attempts together stay under its ratio; the
//! retry's `max_attempts` caps every attempt, hedges included, and each
//! goes to a replica the request has not tried (see
//! [`attempt`](crate::attempt)).
//!
//! # Attempt marks
//!
//! Both presets mark only repeats: a retry or a hedge carries an
//! [`Attempt`](crate::attempt::Attempt) extension with its number, and a
//! request without one is a first attempt. So a call whose first attempt
//! succeeds allocates nothing in the stack (copying the request for replay
//! costs what cloning its headers costs; a clone of the stack first used on
//! another thread than the one it was cloned from takes a handle of its own
//! there, one allocation per layer). The gRPC flavours mark repeats with
//! `grpc-previous-rpc-attempts` instead, and their body maps box each
//! attempt's body as tonic does.

#[cfg(feature = "grpc")]
mod grpc;

#[cfg(feature = "grpc")]
pub use self::grpc::{
    GrpcClient, GrpcClientLayer, GrpcClientService, GrpcReplicaStackParts, GrpcReplicaStackService,
};

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;
use tower::timeout::{Timeout, TimeoutLayer};

use crate::backoff::{Backoff, Jitter};
use crate::budget::RetryBudget;
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, SlidingWindow};
use crate::classify::ServerErrorsAsFailures;
use crate::error::ConfigError;
use crate::hedge::{Hedge, HedgeDelay, HedgeLayer};
use crate::http::HttpReplay;
use crate::pool::{OutlierDetection, Pool, PoolHandle, Replica};
use crate::retry::{Retry, RetryLayer};

/// How the presets copy and mark requests: idempotent ones only, and a
/// mark on repeats only (see the module docs).
const REPLAY: HttpReplay = HttpReplay::new().mark_first(false);

/// The standard client stack for one HTTP upstream.
///
/// | setting | default | why |
/// |---|---|---|
/// | total timeout | 10 s | what a caller will wait, retries included |
/// | attempt timeout | 2 s | three attempts and their backoff fit in the total |
/// | max attempts | 3 | the first and two retries |
/// | retry budget | 20% extra, 10/s floor | caps the load when everything fails |
/// | breaker | 50% failures over the last 30 s, at least 10 calls; open 5 s doubling to 60 s | the window holds many attempt timeouts' worth of calls |
///
/// ```
/// use std::time::Duration;
/// use steadfast::presets::HttpClient;
/// use tower::Layer;
///
/// # fn main() -> Result<(), steadfast::error::ConfigError> {
/// # let client = tower::service_fn(|_: http::Request<String>| async {
/// #     Ok::<_, std::io::Error>(http::Response::new(String::new()))
/// # });
/// let layer = HttpClient::new("payments").total_timeout(Duration::from_secs(5)).build()?;
/// let breaker = layer.circuit().clone(); // for a readiness endpoint
/// let payments = layer.layer(client);
/// # let _ = (payments, breaker);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpClient {
    pub(crate) name: Arc<str>,
    pub(crate) total_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) breaker_window: Duration,
}

impl HttpClient {
    /// The preset for upstream `name` (the `name` label of every metric).
    pub fn new(name: impl AsRef<str>) -> Self {
        Self {
            name: Arc::from(name.as_ref()),
            total_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            max_attempts: 3,
            budget: None,
            breaker_window: Duration::from_secs(30),
        }
    }

    /// The deadline for the whole call, retries included.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// The deadline of one attempt (below the total timeout).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The most attempts per call, the first included.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Draws retries from a shared budget.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The breaker's time window (at least twice the attempt timeout, so it
    /// holds finished attempts, not just timeouts in flight).
    pub fn breaker_window(mut self, window: Duration) -> Self {
        self.breaker_window = window;
        self
    }

    /// Validates and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: an attempt timeout not below the total, a breaker
    /// window under twice the attempt timeout, or an invalid part.
    pub fn build(self) -> Result<HttpClientLayer, ConfigError> {
        let (retry, breaker) = self.layers(ServerErrorsAsFailures::new(), REPLAY)?;
        Ok(HttpClientLayer {
            total: self.total_timeout,
            attempt: self.attempt_timeout,
            retry,
            breaker,
        })
    }

    /// The stack's retry and breaker from these settings, checked, judging
    /// by `classify` and copying by `replay` (the HTTP and gRPC flavours).
    pub(crate) fn layers<C: Clone, R>(
        &self,
        classify: C,
        replay: R,
    ) -> Result<(RetryLayer<C, R>, CircuitBreakerLayer<C>), ConfigError> {
        self.check()?;
        let budget = match &self.budget {
            Some(b) => b.clone(),
            None => Arc::new(RetryBudget::builder().name(&*self.name).build()?),
        };
        let retry = RetryLayer::builder()
            .name(&*self.name)
            .classify(classify.clone())
            .replay(replay)
            .max_attempts(self.max_attempts)
            .backoff(
                Backoff::exponential(Duration::from_millis(50), Duration::from_secs(1))
                    .jitter(Jitter::Full),
            )
            .budget(budget)
            .deadline(self.total_timeout)
            .build()?;
        let breaker = self
            .breaker_settings()
            .classify(classify)
            .build()
            .map_err(|e| e.within("breaker"))?;
        Ok((retry, breaker))
    }
}

fn check_timeouts(total: Duration, attempt: Duration) -> Result<(), ConfigError> {
    if attempt.is_zero() {
        return Err(ConfigError::new(
            "attempt_timeout",
            "must be greater than zero",
        ));
    }
    if attempt >= total {
        return Err(ConfigError::new(
            "attempt_timeout",
            format!("must be below the total timeout ({total:?}), got {attempt:?}"),
        ));
    }
    Ok(())
}

impl HttpClient {
    /// The settings of the stack's circuit breaker: what it is built with,
    /// and what [`Circuit::apply`](crate::circuit_breaker::Circuit::apply)
    /// takes to reload it from new preset settings (the timeouts and the
    /// attempt cap are fixed once built).
    pub fn breaker_settings(&self) -> crate::circuit_breaker::Builder {
        CircuitBreakerLayer::builder()
            .name(&*self.name)
            .window(SlidingWindow::time(self.breaker_window))
            .min_calls(10)
            .failure_rate(0.5)
    }

    /// Checks the settings without building the layer (which would
    /// register its metrics): what [`build`](Self::build) refuses.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        check_timeouts(self.total_timeout, self.attempt_timeout)?;
        if self.breaker_window < self.attempt_timeout.saturating_mul(2) {
            return Err(ConfigError::new(
                "breaker_window",
                format!(
                    "must be at least twice the attempt timeout ({:?}), got {:?}",
                    self.attempt_timeout, self.breaker_window
                ),
            ));
        }
        RetryLayer::builder()
            .name(&*self.name)
            .max_attempts(self.max_attempts)
            .check()
    }
}

/// The layer [`HttpClient`] builds.
#[derive(Debug, Clone)]
pub struct HttpClientLayer {
    total: Duration,
    attempt: Duration,
    retry: RetryLayer<ServerErrorsAsFailures, HttpReplay>,
    breaker: CircuitBreakerLayer<ServerErrorsAsFailures>,
}

impl HttpClientLayer {
    /// The stack's circuit, for status pages and readiness checks.
    pub fn circuit(&self) -> &crate::circuit_breaker::Circuit {
        self.breaker.circuit()
    }

    /// The budget retries draw from.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        self.retry.budget()
    }
}

/// The service [`HttpClientLayer`] makes.
pub type HttpClientService<S> = Timeout<
    Retry<CircuitBreaker<Timeout<S>, ServerErrorsAsFailures>, ServerErrorsAsFailures, HttpReplay>,
>;

impl<S> Layer<S> for HttpClientLayer {
    type Service = HttpClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let attempt = TimeoutLayer::new(self.attempt).layer(inner);
        let breaker = self.breaker.layer(attempt);
        let retry = self.retry.layer(breaker);
        TimeoutLayer::new(self.total).layer(retry)
    }
}

/// The stack for a fleet of replicas of one HTTP upstream.
///
/// | setting | default | why |
/// |---|---|---|
/// | total timeout | 10 s | what a caller will wait |
/// | attempt timeout | 2 s | a hung replica costs one attempt |
/// | max attempts | 3, hedges included | each to a replica not yet tried |
/// | hedge | after the p95 latency, 1 ms..1 s, one per attempt | the slow tail goes to another replica |
/// | budget | 20% extra, 10/s floor, shared by retry and hedge | all extra attempts together |
/// | outlier detection | [`OutlierDetection::default`] | eject failing or lagging replicas |
#[derive(Debug, Clone)]
#[must_use]
pub struct ReplicaStack {
    pub(crate) name: Arc<str>,
    pub(crate) total_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) hedge: HedgeDelay,
    pub(crate) outlier: OutlierDetection,
    pub(crate) checks: Option<crate::health::HealthChecks>,
    pub(crate) local_zone: Option<Arc<str>>,
    pub(crate) failback_after: Option<Duration>,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) breaker: Option<crate::circuit_breaker::Builder>,
}

/// What [`ReplicaStack::build`] (and `build_grpc`) gives: the service, the pool's handle, and
/// the futures to spawn (health checks, and for large fleets the upkeep).
pub struct ReplicaStackParts<K, S, Svc = ReplicaStackService<K, S>> {
    /// The stack, to call.
    pub service: Svc,
    /// The pool's handle: snapshots, drain, disable.
    pub handle: PoolHandle<K, Timeout<S>>,
    /// The active health checks: spawn it (a no-op without checks).
    pub health_checks: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The pool's upkeep ([`Pool::upkeep`](crate::pool::Pool::upkeep)):
    /// spawn it to keep table rebuilds and the fleet rules out of requests,
    /// worth it from a few hundred replicas.
    pub upkeep: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The budget retries and hedges share.
    pub budget: Arc<RetryBudget>,
}

impl<K, S, Svc> std::fmt::Debug for ReplicaStackParts<K, S, Svc> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStackParts").finish_non_exhaustive()
    }
}

impl ReplicaStack {
    /// The settings of the stack's pool: what it is built with, and what
    /// [`PoolHandle::apply`](crate::pool::PoolHandle::apply) takes to reload
    /// it from new preset settings (outlier rules, checks, locality,
    /// failback, replica breakers; the timeouts, the hedge and the attempt
    /// cap are fixed once built).
    pub fn pool_settings(&self) -> crate::pool::Builder {
        let mut pool = Pool::builder()
            .name(&*self.name)
            .outlier(self.outlier.clone());
        if let Some(zone) = &self.local_zone {
            pool = pool.local_zone(&**zone);
        }
        if let Some(checks) = self.checks {
            pool = pool.health_checks(checks);
        }
        if let Some(wait) = self.failback_after {
            pool = pool.failback_after(wait);
        }
        if let Some(breaker) = &self.breaker {
            pool = pool.circuit_breaker(breaker.clone());
        }
        pool
    }

    /// Checks the settings without building the stack (which would
    /// register its metrics): what [`build`](Self::build) refuses of the
    /// settings themselves (the replicas are checked when it is built).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        check_timeouts(self.total_timeout, self.attempt_timeout)?;
        self.pool_settings().validate()?;
        HedgeLayer::builder()
            .name(&*self.name)
            .delay(self.hedge)
            .check()
            .map_err(|e| e.within("hedge"))?;
        RetryLayer::builder()
            .name(&*self.name)
            .max_attempts(self.max_attempts)
            .check()
    }
}

/// The replica stack over `P` (the pool, or a map above it): total timeout
/// → retry → hedge.
type Repeated<P, C, R> = Timeout<Retry<Hedge<P, C, R>, C, R>>;

/// The parts of a replica stack over `P`.
type RepeatedParts<K, S, P, C, R> = ReplicaStackParts<K, S, Repeated<P, C, R>>;

/// The service [`ReplicaStack`] builds.
pub type ReplicaStackService<K, S> = Timeout<
    Retry<
        Hedge<Pool<K, Timeout<S>, ServerErrorsAsFailures>, ServerErrorsAsFailures, HttpReplay>,
        ServerErrorsAsFailures,
        HttpReplay,
    >,
>;

impl ReplicaStack {
    /// The preset for upstream `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self {
            name: Arc::from(name.as_ref()),
            total_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            max_attempts: 3,
            hedge: HedgeDelay::quantile(0.95),
            outlier: OutlierDetection::default(),
            checks: None,
            local_zone: None,
            failback_after: None,
            budget: None,
            breaker: None,
        }
    }

    /// Gives every replica a circuit breaker built from `breaker` (named
    /// `<stack>/<replica>`), judging each attempt on that replica with the
    /// stack's classifier (5xx are failures; with `build_grpc`, the gRPC
    /// failures): a replica whose breaker is
    /// open takes no traffic until its probes pass. Off by default, as
    /// outlier detection already takes a failing replica out.
    ///
    /// ```
    /// use steadfast::circuit_breaker::CircuitBreakerLayer;
    /// use steadfast::presets::ReplicaStack;
    ///
    /// let stack = ReplicaStack::new("search")
    ///     .circuit_breaker(CircuitBreakerLayer::builder().consecutive_failures(3));
    /// # let _ = stack;
    /// ```
    pub fn circuit_breaker(mut self, breaker: crate::circuit_breaker::Builder) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Draws retries and hedges from a shared budget (by default the stack
    /// has one of its own: 20% extra, 10/s floor).
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// How long a recovered replica must stay healthy before it pulls
    /// traffic back from a lower tier (see [`crate::pool::Builder::failback_after`]).
    pub fn failback_after(mut self, wait: Duration) -> Self {
        self.failback_after = Some(wait);
        self
    }

    /// The deadline for the whole call.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// The deadline of one attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The most attempts per call, the first and every retry and hedge
    /// included.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// When a hedge is sent.
    pub fn hedge(mut self, delay: impl Into<HedgeDelay>) -> Self {
        self.hedge = delay.into();
        self
    }

    /// Outlier detection of the pool.
    pub fn outlier(mut self, outlier: OutlierDetection) -> Self {
        self.outlier = outlier;
        self
    }

    /// Active health checks (the replicas carry the checks themselves).
    pub fn health_checks(mut self, checks: crate::health::HealthChecks) -> Self {
        self.checks = Some(checks);
        self
    }

    /// The caller's zone.
    pub fn local_zone(mut self, zone: impl AsRef<str>) -> Self {
        self.local_zone = Some(Arc::from(zone.as_ref()));
        self
    }

    /// Validates and builds the stack over `replicas`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: an attempt timeout not below the total, or an
    /// invalid part.
    pub fn build<K, S>(
        self,
        replicas: impl IntoIterator<Item = (K, Replica<S>)>,
    ) -> Result<ReplicaStackParts<K, S>, ConfigError>
    where
        K: Clone + Eq + Hash + std::fmt::Display + Send + Sync + 'static,
        S: Clone + Send + Sync + 'static,
    {
        self.assemble(replicas, ServerErrorsAsFailures::new(), REPLAY, |pool| pool)
    }

    /// The stack's parts over `replicas`, judged by `classify` and copied
    /// by `replay`, with `below_hedge` put between the hedge and the pool.
    fn assemble<K, S, C, R, P>(
        self,
        replicas: impl IntoIterator<Item = (K, Replica<S>)>,
        classify: C,
        replay: R,
        below_hedge: impl FnOnce(Pool<K, Timeout<S>, C>) -> P,
    ) -> Result<RepeatedParts<K, S, P, C, R>, ConfigError>
    where
        K: Clone + Eq + Hash + std::fmt::Display + Send + Sync + 'static,
        S: Clone + Send + Sync + 'static,
        C: Clone + Send + Sync + 'static,
        R: Clone,
    {
        self.check()?;
        let budget = match &self.budget {
            Some(b) => b.clone(),
            None => Arc::new(RetryBudget::builder().name(&*self.name).build()?),
        };
        let attempt = self.attempt_timeout;
        let pool = self.pool_settings().classify(classify.clone());
        let replicas = replicas
            .into_iter()
            .map(|(id, r)| (id, r.map_service(|s| Timeout::new(s, attempt))));
        let pool = pool.build(replicas)?;
        let handle = pool.handle();
        let health_checks = Box::pin(pool.health_checks());
        let upkeep = Box::pin(pool.upkeep());
        let hedge = HedgeLayer::builder()
            .name(&*self.name)
            .classify(classify.clone())
            .replay(replay.clone())
            .delay(self.hedge)
            .budget(budget.clone())
            .build()
            .map_err(|e| e.within("hedge"))?;
        let retry = RetryLayer::builder()
            .name(&*self.name)
            .classify(classify)
            .replay(replay)
            .max_attempts(self.max_attempts)
            .backoff(
                Backoff::exponential(Duration::from_millis(10), Duration::from_millis(500))
                    .jitter(Jitter::Full),
            )
            .budget(budget.clone())
            .deadline(self.total_timeout)
            // A replica's pushback is honoured by the pool, which avoids
            // that replica; the retry goes elsewhere at once.
            .max_pushback(Duration::ZERO)
            .build()?;
        let service = Timeout::new(
            retry.layer(hedge.layer(below_hedge(pool))),
            self.total_timeout,
        );
        Ok(ReplicaStackParts {
            service,
            handle,
            health_checks,
            upkeep,
            budget,
        })
    }
}
