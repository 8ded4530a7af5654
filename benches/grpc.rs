//! The per-call cost of a retrying gRPC stack over an in-process tonic
//! service, beside the same stack with tower's retry.
//!
//! ```text
//! cargo bench --features grpc --bench grpc
//! ```
//!
//! Each iteration is one unary `grpc.health.v1.Health/Check` call through
//! tonic-health's generated client, to tonic-health's own server called in
//! process (no transport): the encoding, the decoding and the server's
//! work are the same in every row, so the difference between rows is the
//! stack's own cost.
//!
//! - `bare`: the client over the server;
//! - `steadfast`: `GrpcStatusLayer` → `replayable` → `RetryLayer` with
//!   `GrpcErrorsAsFailures` and `GrpcReplay` (up to 3 attempts, a budget)
//!   → `into_tonic_body` → the server;
//! - `steadfast, breaker …`: the same, with a `CircuitBreaker` under the
//!   retry, which judges the answer's status when its body ends (the status
//!   of a unary answer comes in its trailers);
//! - `tower`: the same layers around `tower::retry::Retry` with a policy
//!   that does what steadfast's retry does for a call: copies the request
//!   through the same `ReplayBody`, retries a trailers-only `UNAVAILABLE`
//!   or an error (up to 3 attempts), deposits into a `TpsBudget` once per
//!   request and withdraws before each retry.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use steadfast::classify::GrpcErrorsAsFailures;
use steadfast::grpc::{GrpcReplay, GrpcStatusLayer, into_tonic_body, replayable};
use steadfast::http::ReplayBody;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

type Body = tonic::body::Body;
type Replayable = http::Request<ReplayBody<Body>>;

/// The status code of `UNAVAILABLE`, the one gRFC A6 retries by default.
const UNAVAILABLE: &str = "14";

/// tower's retry, doing for a gRPC call what steadfast's does.
#[derive(Clone)]
struct TowerGrpcPolicy {
    budget: Arc<TpsBudget>,
    /// Attempts made so far by the request this copy of the policy serves.
    attempt: u32,
}

impl<Res, E> Policy<Replayable, http::Response<Res>, E> for TowerGrpcPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Replayable,
        result: &mut Result<http::Response<Res>, E>,
    ) -> Option<Self::Future> {
        let retryable = match result {
            Ok(res) => res
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code == UNAVAILABLE),
            Err(_) => true,
        };
        if !retryable || self.attempt >= 3 || !self.budget.withdraw() {
            return None;
        }
        self.attempt += 1;
        Some(ready(()))
    }

    fn clone_request(&mut self, req: &Replayable) -> Option<Replayable> {
        // One deposit per request, as in benches/overhead.rs.
        if self.attempt == 1 {
            self.budget.deposit();
        }
        let body = req.body().try_clone()?;
        let mut copy = http::Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }
}

fn check() -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    })
}

fn calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (_reporter, server) = runtime.block_on(async { tonic_health::server::health_reporter() });

    let mut group = c.benchmark_group("grpc/unary");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);

    let mut bare = HealthClient::new(server.clone());
    group.bench_function("bare", |b| {
        b.iter(|| runtime.block_on(bare.check(check())).expect("served"));
    });

    let retry = steadfast::RetryLayer::builder()
        .name("bench")
        .classify(GrpcErrorsAsFailures::new())
        .replay(GrpcReplay::new())
        .max_attempts(3)
        .build()
        .expect("a valid retry");
    let mut steadfast = HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .map_request(replayable)
            .layer(retry)
            .map_request(into_tonic_body)
            .service(server.clone()),
    );
    group.bench_function("steadfast", |b| {
        b.iter(|| runtime.block_on(steadfast.check(check())).expect("served"));
    });

    // The same with a circuit breaker under the retry: the unary answer's
    // status comes in its trailers, so the breaker judges it when the body
    // ends (its body wrapped, `Classify::defer`).
    let retry = steadfast::RetryLayer::builder()
        .name("bench-breaker")
        .classify(GrpcErrorsAsFailures::new())
        .replay(GrpcReplay::new())
        .max_attempts(3)
        .build()
        .expect("a valid retry");
    let breaker = steadfast::CircuitBreakerLayer::builder()
        .name("bench")
        .classify(GrpcErrorsAsFailures::new())
        .build()
        .expect("a valid breaker");
    let mut with_breaker = HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .map_request(replayable)
            .layer(retry)
            .map_request(into_tonic_body)
            .layer(breaker)
            .service(server.clone()),
    );
    group.bench_function("steadfast, breaker judging at the end of the body", |b| {
        b.iter(|| {
            runtime
                .block_on(with_breaker.check(check()))
                .expect("served")
        });
    });

    let policy = TowerGrpcPolicy {
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        attempt: 1,
    };
    let mut tower = HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .map_request(replayable)
            .layer(tower::retry::RetryLayer::new(policy))
            .map_request(into_tonic_body)
            .service(server),
    );
    group.bench_function("tower", |b| {
        b.iter(|| runtime.block_on(tower.check(check())).expect("served"));
    });
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
