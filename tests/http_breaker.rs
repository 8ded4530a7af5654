//! The circuit breaker in front of a real hyper-util client, talking to a
//! real HTTP/1 server over loopback.
//!
//! Time is paused (the breaker reads `tokio::time::Instant`) and moved with
//! `tokio::time::advance`; nothing in these tests arms a timer, so the clock
//! only moves when a test moves it.

#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use hyper::StatusCode;
use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, SlidingWindow, State};
use steadfast::classify::ServerErrorsAsFailures;
use steadfast::error::{BoxError, CircuitOpen};
use support::{HttpClient, TestServer};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const OPEN_PERIOD: Duration = Duration::from_secs(30);
const PROBES: u32 = 2;

type Breaker = CircuitBreaker<HttpClient, ServerErrorsAsFailures>;

/// A breaker around a client for `server`, plus a log of every state its
/// subscription showed.
struct Harness {
    server: TestServer,
    svc: Breaker,
    rx: watch::Receiver<State>,
    seen: Vec<State>,
}

impl Harness {
    async fn new(layer: CircuitBreakerLayer<ServerErrorsAsFailures>) -> Self {
        let server = TestServer::start().await;
        let mut rx = layer.circuit().subscribe();
        let seen = vec![*rx.borrow_and_update()];
        let svc = layer.layer(support::client());
        Self {
            server,
            svc,
            rx,
            seen,
        }
    }

    fn state(&self) -> State {
        self.svc.circuit().state()
    }

    /// Records what the subscription shows, if it changed. Called after
    /// admission and after completion, so one call's transitions (to
    /// half-open on admission, to open or closed on completion) are not
    /// coalesced by the watch channel.
    fn observe(&mut self) {
        if self.rx.has_changed().expect("the circuit is alive") {
            let state = *self.rx.borrow_and_update();
            self.seen.push(state);
        }
    }

    /// One `GET /` through the breaker: the status, or the breaker's error.
    async fn call(&mut self) -> Result<StatusCode, BoxError> {
        let req = support::get(&self.server.uri("/"));
        self.svc.ready().await?;
        self.observe();
        let result = self.svc.call(req).await;
        self.observe();
        let (status, _) = support::read(result?).await;
        Ok(status)
    }

    /// A call that the breaker must reject without reaching the server.
    async fn rejected(&mut self) -> CircuitOpen {
        let before = self.server.requests();
        let err = self.call().await.expect_err("the circuit rejects the call");
        assert_eq!(
            self.server.requests(),
            before,
            "a rejected call must not reach the server"
        );
        match err.downcast::<CircuitOpen>() {
            Ok(open) => *open,
            Err(other) => panic!("expected CircuitOpen, got {other}"),
        }
    }
}

fn breaker(
    classifier: ServerErrorsAsFailures,
    max_pushback: Duration,
) -> CircuitBreakerLayer<ServerErrorsAsFailures> {
    CircuitBreakerLayer::builder()
        .name("backend")
        .classify(classifier)
        .failure_rate(0.5)
        .window(SlidingWindow::count(10))
        .min_calls(5)
        .open_backoff(Backoff::constant(OPEN_PERIOD))
        .half_open_probes(PROBES)
        .max_pushback(max_pushback)
        .build()
        .expect("a valid configuration")
}

/// Healthy, then 503s until the circuit opens: returns how many failing
/// calls it took.
async fn trip(h: &mut Harness) -> u64 {
    for _ in 0..10 {
        assert_eq!(h.call().await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.server.requests(), 10);

    h.server.set_unavailable(None);
    let mut failures = 0;
    while h.state() == State::Closed {
        assert!(failures < 10, "the circuit never opened");
        assert_eq!(
            h.call().await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE,
            "a 503 reaches the caller as a response"
        );
        failures += 1;
    }
    assert_eq!(h.state(), State::Open);
    failures
}

#[tokio::test(start_paused = true)]
async fn opens_on_server_errors_fails_fast_and_recovers() {
    let mut h = Harness::new(breaker(
        ServerErrorsAsFailures::new(),
        Duration::from_secs(60),
    ))
    .await;

    let failures = trip(&mut h).await;
    // Ten successes then five 503s: 5 of the last 10 calls failed, 50%.
    assert_eq!(failures, 5);
    assert_eq!(h.server.requests(), 15);
    let snapshot = h.svc.circuit().snapshot();
    let open_until = snapshot.open_until.expect("an open circuit has an end");
    assert_eq!(open_until - Instant::now(), OPEN_PERIOD);

    // Open: calls fail at once, with when to come back, and the server sees
    // none of them.
    for _ in 0..5 {
        let open = h.rejected().await;
        assert_eq!(open.name(), "backend");
        assert_eq!(open.retry_after(), Some(OPEN_PERIOD));
    }
    assert_eq!(h.server.requests(), 15);

    // Just before the period ends the circuit is still open.
    tokio::time::advance(OPEN_PERIOD - Duration::from_millis(1)).await;
    let open = h.rejected().await;
    assert_eq!(open.retry_after(), Some(Duration::from_millis(1)));

    // The server recovers; once the period is over the probes go through.
    h.server.set_healthy();
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(h.state(), State::HalfOpen);
    for probe in 1..=PROBES {
        assert_eq!(h.call().await.unwrap(), StatusCode::OK, "probe {probe}");
    }
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.server.requests(), 15 + u64::from(PROBES));

    // Closed again, with a clean window: back to normal.
    for _ in 0..10 {
        assert_eq!(h.call().await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.server.requests(), 25 + u64::from(PROBES));
    assert_eq!(
        h.seen,
        [State::Closed, State::Open, State::HalfOpen, State::Closed]
    );

    h.server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_the_circuit() {
    let mut h = Harness::new(breaker(
        ServerErrorsAsFailures::new(),
        Duration::from_secs(60),
    ))
    .await;
    trip(&mut h).await;
    let reached = h.server.requests();

    // Still failing when the period ends: the first probe fails and the
    // circuit opens again for another period.
    tokio::time::advance(OPEN_PERIOD).await;
    assert_eq!(h.call().await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.server.requests(), reached + 1);
    assert_eq!(h.state(), State::Open);
    assert_eq!(h.rejected().await.retry_after(), Some(OPEN_PERIOD));

    h.server.set_healthy();
    tokio::time::advance(OPEN_PERIOD).await;
    for _ in 0..PROBES {
        assert_eq!(h.call().await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.state(), State::Closed);
    assert_eq!(
        h.seen,
        [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::Open,
            State::HalfOpen,
            State::Closed
        ]
    );

    h.server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_lengthens_the_open_period_up_to_max_pushback() {
    const MAX_PUSHBACK: Duration = Duration::from_secs(90);
    // The classifier caps `Retry-After` too (60 s by default): raise its cap
    // above the header's 120 s so that the breaker's cap is the one that
    // applies.
    let classifier = ServerErrorsAsFailures::new()
        .max_pushback(Duration::from_secs(600))
        .unwrap();
    let mut h = Harness::new(breaker(classifier, MAX_PUSHBACK)).await;

    for _ in 0..10 {
        assert_eq!(h.call().await.unwrap(), StatusCode::OK);
    }
    h.server.set_unavailable(Some("120"));
    let mut failures = 0;
    while h.state() == State::Closed {
        assert!(failures < 10, "the circuit never opened");
        assert_eq!(h.call().await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
        failures += 1;
    }
    assert_eq!(failures, 5);

    // Open for the pushback (120 s) capped at 90 s, not the backoff's 30 s.
    let snapshot = h.svc.circuit().snapshot();
    assert_eq!(snapshot.state, State::Open);
    let open_until = snapshot.open_until.expect("an open circuit has an end");
    assert_eq!(open_until - Instant::now(), MAX_PUSHBACK);
    assert_eq!(h.rejected().await.retry_after(), Some(MAX_PUSHBACK));

    // Past the backoff's period, still open.
    tokio::time::advance(OPEN_PERIOD + Duration::from_secs(1)).await;
    assert_eq!(
        h.rejected().await.retry_after(),
        Some(MAX_PUSHBACK - OPEN_PERIOD - Duration::from_secs(1))
    );
    tokio::time::advance(MAX_PUSHBACK - OPEN_PERIOD - Duration::from_secs(1)).await;
    assert_eq!(h.state(), State::HalfOpen);

    h.server.set_healthy();
    for _ in 0..PROBES {
        assert_eq!(h.call().await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.state(), State::Closed);

    h.server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_within_the_backoff_changes_nothing() {
    let classifier = ServerErrorsAsFailures::new();
    let mut h = Harness::new(breaker(classifier, Duration::from_secs(90))).await;
    for _ in 0..10 {
        h.call().await.unwrap();
    }
    // The server asks for 5 s; the backoff's 30 s is longer and wins.
    h.server.set_unavailable(Some("5"));
    while h.state() == State::Closed {
        h.call().await.unwrap();
    }
    assert_eq!(h.rejected().await.retry_after(), Some(OPEN_PERIOD));
    h.server.shutdown().await;
}
