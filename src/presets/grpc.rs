//! The gRPC client preset (feature `grpc`).

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tower::Layer;
use tower::timeout::{Timeout, TimeoutLayer};
use tower::util::MapRequest;

use super::{HttpClient, ReplicaStack, ReplicaStackParts};
use crate::budget::RetryBudget;
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::classify::GrpcErrorsAsFailures;
use crate::error::ConfigError;
use crate::grpc::{GrpcReplay, GrpcStatus, GrpcStatusLayer, into_tonic_body, replayable};
use crate::hedge::Hedge;
use crate::http::ReplayBody;
use crate::pool::{Pool, Replica};
use crate::retry::{Retry, RetryLayer};

/// A tonic request's body, the way a `Channel` takes it.
type TonicBody = tonic::body::Body;
/// Wraps a request's body for replay, above the retry.
type Replayable = fn(Request<TonicBody>) -> Request<ReplayBody<TonicBody>>;
/// Hands a replayable body back to the `Channel`, below the retry.
type IntoTonic = fn(Request<ReplayBody<TonicBody>>) -> Request<TonicBody>;

/// The standard client stack for one gRPC upstream (a tonic `Channel`):
/// [`HttpClient`]'s stack with gRPC's rules, between a generated client and
/// the channel.
///
/// | setting | default | why |
/// |---|---|---|
/// | total timeout | 10 s | what a caller will wait, retries included |
/// | attempt timeout | 2 s | three attempts and their backoff fit in the total |
/// | max attempts | 3 | the first and two retries: on `UNAVAILABLE` (gRFC A6), an attempt timeout or a transport error |
/// | retry budget | 20% extra, 10/s floor | caps the load when everything fails |
/// | breaker | 50% failures over the last 30 s, at least 10 calls; open 5 s doubling to 60 s | as [`HttpClient`] |
///
/// Outermost, [`GrpcStatusLayer`] gives the caller a `tonic::Status` for
/// every error of the stack: an open circuit is `UNAVAILABLE` with
/// `grpc-retry-pushback-ms`, a timeout `DEADLINE_EXCEEDED` (a spent budget
/// stops the retries and the caller gets the last attempt's own status).
/// Every method is retried ([`GrpcReplay`]), after an attempt timeout too,
/// when a call may still be running on the server: give a method that must
/// not run twice `Idempotent(false)` on its request. The call's deadline
/// is the total timeout, or the caller's (`tonic::Request::set_timeout`)
/// when that is sooner: every attempt carries the time left of it in
/// `grpc-timeout`, and no retry is sent that would not answer in time (see
/// [deadlines](crate::attempt#deadlines)).
///
/// ```
/// use steadfast::presets::GrpcClient;
/// use tower::Layer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steadfast::error::ConfigError> {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let layer = GrpcClient::new("health").build()?;
/// let breaker = layer.circuit().clone(); // for the server's own health
/// let client = tonic_health::pb::health_client::HealthClient::new(layer.layer(channel));
/// # let _ = (client, breaker);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct GrpcClient {
    settings: HttpClient,
}

impl GrpcClient {
    /// The preset for upstream `name` (the `name` label of every metric).
    pub fn new(name: impl AsRef<str>) -> Self {
        Self {
            settings: HttpClient::new(name),
        }
    }

    /// The deadline for the whole call, retries included.
    pub fn total_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.total_timeout(timeout))
    }

    /// The deadline of one attempt (below the total timeout).
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        self.with(|s| s.attempt_timeout(timeout))
    }

    /// The most attempts per call, the first included.
    pub fn max_attempts(self, n: u32) -> Self {
        self.with(|s| s.max_attempts(n))
    }

    /// Draws retries from a shared budget.
    pub fn budget(self, budget: Arc<RetryBudget>) -> Self {
        self.with(|s| s.budget(budget))
    }

    /// The breaker's time window (at least twice the attempt timeout).
    pub fn breaker_window(self, window: Duration) -> Self {
        self.with(|s| s.breaker_window(window))
    }

    /// The settings of the stack's circuit breaker (see
    /// [`HttpClient::breaker_settings`]).
    pub fn breaker_settings(&self) -> crate::circuit_breaker::Builder {
        self.settings.breaker_settings()
    }

    fn with(self, set: impl FnOnce(HttpClient) -> HttpClient) -> Self {
        Self {
            settings: set(self.settings),
        }
    }

    /// Validates and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: what [`HttpClient::build`] refuses.
    pub fn build(self) -> Result<GrpcClientLayer, ConfigError> {
        let s = &self.settings;
        let (retry, breaker) = s.layers(GrpcErrorsAsFailures::new(), GrpcReplay::new())?;
        Ok(GrpcClientLayer {
            total: s.total_timeout,
            attempt: s.attempt_timeout,
            retry,
            breaker,
        })
    }
}

/// The layer [`GrpcClient`] builds.
#[derive(Debug, Clone)]
pub struct GrpcClientLayer {
    total: Duration,
    attempt: Duration,
    retry: RetryLayer<GrpcErrorsAsFailures, GrpcReplay>,
    breaker: CircuitBreakerLayer<GrpcErrorsAsFailures>,
}

impl GrpcClientLayer {
    /// The stack's circuit, for status pages and [`HealthSync`](crate::grpc::HealthSync).
    pub fn circuit(&self) -> &crate::circuit_breaker::Circuit {
        self.breaker.circuit()
    }

    /// The budget retries draw from.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        self.retry.budget()
    }
}

/// The service [`GrpcClientLayer`] makes over a channel `S`.
pub type GrpcClientService<S> = GrpcStatus<
    MapRequest<
        Timeout<
            Retry<
                CircuitBreaker<Timeout<MapRequest<S, IntoTonic>>, GrpcErrorsAsFailures>,
                GrpcErrorsAsFailures,
                GrpcReplay,
            >,
        >,
        Replayable,
    >,
>;

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClientService<S>;

    fn layer(&self, channel: S) -> Self::Service {
        let channel = MapRequest::new(channel, into_tonic_body as IntoTonic);
        let attempt = TimeoutLayer::new(self.attempt).layer(channel);
        let breaker = self.breaker.layer(attempt);
        let retry = self.retry.layer(breaker);
        let total = TimeoutLayer::new(self.total).layer(retry);
        GrpcStatusLayer::new().layer(MapRequest::new(total, replayable as Replayable))
    }
}

/// What [`ReplicaStack::build_grpc`] gives over channels `S`.
pub type GrpcReplicaStackParts<K, S> = ReplicaStackParts<K, S, GrpcReplicaStackService<K, S>>;

/// The service [`ReplicaStack::build_grpc`] builds over channels `S`.
pub type GrpcReplicaStackService<K, S> = GrpcStatus<
    MapRequest<
        Timeout<
            Retry<
                Hedge<
                    MapRequest<Pool<K, Timeout<S>, GrpcErrorsAsFailures>, IntoTonic>,
                    GrpcErrorsAsFailures,
                    GrpcReplay,
                >,
                GrpcErrorsAsFailures,
                GrpcReplay,
            >,
        >,
        Replayable,
    >,
>;

impl ReplicaStack {
    /// Validates and builds the stack over replicas that are tonic
    /// `Channel`s (one `Endpoint::connect_lazy` channel each, with a
    /// [`GrpcCheck`](crate::grpc::GrpcCheck) as their health check if
    /// wanted): the same stack and defaults as [`build`](Self::build), with
    /// gRPC's rules. Attempts are judged by [`GrpcErrorsAsFailures`]
    /// (`UNAVAILABLE` retried on another replica, a replica's pushback
    /// honoured by the pool), every method is replayed ([`GrpcReplay`],
    /// each attempt with the time left in `grpc-timeout`), and
    /// [`GrpcStatusLayer`] on top gives the caller a `tonic::Status` for
    /// every error of the stack. A unary call is hedged; a client stream
    /// still uploading is not (see [`GrpcReplay`]), unless
    /// [`BufferBodyLayer`](crate::grpc::BufferBodyLayer) above the stack
    /// reads it whole first. As with
    /// [`GrpcClient`], a method that must not run twice needs
    /// `Idempotent(false)` on its request, and the call's deadline is the
    /// total timeout or the caller's, whichever is sooner.
    ///
    /// ```
    /// use steadfast::grpc::GrpcCheck;
    /// use steadfast::pool::Replica;
    /// use steadfast::presets::ReplicaStack;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), steadfast::error::ConfigError> {
    /// let replicas = ["127.0.0.1:50051", "127.0.0.1:50052"].map(|addr| {
    ///     let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
    ///         .expect("a URI")
    ///         .connect_lazy();
    ///     (addr, Replica::new(channel.clone()).health_check(GrpcCheck::new(channel, "")))
    /// });
    /// let parts = ReplicaStack::new("search").build_grpc(replicas)?;
    /// tokio::spawn(parts.health_checks);
    /// let client = tonic_health::pb::health_client::HealthClient::new(parts.service);
    /// # drop(client);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: what [`build`](Self::build) refuses.
    pub fn build_grpc<K, S>(
        self,
        replicas: impl IntoIterator<Item = (K, Replica<S>)>,
    ) -> Result<GrpcReplicaStackParts<K, S>, ConfigError>
    where
        K: Clone + Eq + Hash + std::fmt::Display + Send + Sync + 'static,
        S: Clone + Send + Sync + 'static,
    {
        let parts = self.assemble(
            replicas,
            GrpcErrorsAsFailures::new(),
            GrpcReplay::new(),
            |pool| MapRequest::new(pool, into_tonic_body as IntoTonic),
        )?;
        let service = MapRequest::new(parts.service, replayable as Replayable);
        Ok(ReplicaStackParts {
            service: GrpcStatusLayer::new().layer(service),
            handle: parts.handle,
            health_checks: parts.health_checks,
            upkeep: parts.upkeep,
            budget: parts.budget,
        })
    }
}
