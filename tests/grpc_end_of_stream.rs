//! A gRPC status judged when the body ends (`Classify::defer`), over real
//! tonic parts on loopback: tonic-health's server behind a switch that can
//! delay its headers, hold its body open after the first message, end it
//! with `UNAVAILABLE` in the trailers, or cut it off; a generated client
//! over a `Channel`.
//!
//! What is checked: the breaker's slow-call rule takes the time to the
//! headers, not the length of the body; a half-open probe that is a stream
//! dropped before its end gives its slot back (to a standalone breaker and
//! to a pool's per-replica breaker); a breaker over a pool, both deferring,
//! records exactly one outcome per call in each layer, whether the body
//! ends with a status, with an error, or is dropped; and the pool's latency
//! is the time to the headers.
//!
//! Real sockets, so real time: every wait is bounded, and the durations
//! compared are far apart (a loopback answer in a few milliseconds against
//! thresholds of 150 ms and more).

#![cfg(feature = "grpc")]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{SlidingWindow, State};
use steadfast::classify::GrpcErrorsAsFailures;
use steadfast::grpc::GrpcStatusLayer;
use steadfast::pool::{Health, Replica};
use steadfast::{CircuitBreakerLayer, Pool};
use tokio::time::{Instant, timeout};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::{Layer, Service, ServiceBuilder};

type Body = tonic::body::Body;

/// How long any one step of a test may take before it fails.
const STEP: Duration = Duration::from_secs(2);

/// The slow-call threshold: far above a loopback answer, far below a test.
const SLOW: Duration = Duration::from_millis(150);

/// How late a slow server answers, or how long it holds a body open: twice
/// the threshold.
const LATE: Duration = Duration::from_millis(300);

/// How long a body to be cut off waits after its first message.
const CUT_AFTER: Duration = Duration::from_millis(50);

/// What the switch does to the calls it passes on.
#[derive(Default)]
struct Modes {
    /// Trailers-only `UNAVAILABLE`, without calling the service.
    down: AtomicBool,
    /// Milliseconds to wait before answering the headers.
    headers_after_ms: AtomicU64,
    /// Milliseconds to hold the body open after its first message.
    end_after_ms: AtomicU64,
    /// After the first message, `UNAVAILABLE` in the trailers.
    fail_in_trailers: AtomicBool,
    /// After the first message (and a pause, for it to leave), an error:
    /// the server resets the stream.
    cut_after_data: AtomicBool,
    /// Calls that reached the server.
    calls: AtomicU64,
}

/// A `tower::Layer`'s service in front of tonic-health's server: rewrites
/// its answers as `modes` say.
#[derive(Clone)]
struct Switch<S> {
    inner: S,
    modes: Arc<Modes>,
}

impl<S> Service<http::Request<Body>> for Switch<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let modes = self.modes.clone();
        modes.calls.fetch_add(1, Ordering::Relaxed);
        if modes.down.load(Ordering::Relaxed) {
            let res = tonic::Status::unavailable("switched off").into_http();
            return Box::pin(async move { Ok(res) });
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            let headers_after = modes.headers_after_ms.load(Ordering::Relaxed);
            if headers_after > 0 {
                tokio::time::sleep(Duration::from_millis(headers_after)).await;
            }
            let res = call.await?;
            let after_data = if modes.fail_in_trailers.load(Ordering::Relaxed) {
                Some(AfterData::Unavailable)
            } else if modes.cut_after_data.load(Ordering::Relaxed) {
                Some(AfterData::Cut(Box::pin(tokio::time::sleep(CUT_AFTER))))
            } else {
                match modes.end_after_ms.load(Ordering::Relaxed) {
                    0 => None,
                    ms => Some(AfterData::Wait(Box::pin(tokio::time::sleep(
                        Duration::from_millis(ms),
                    )))),
                }
            };
            Ok(res.map(|inner| {
                Body::new(Rewritten {
                    inner,
                    after_data,
                    data_sent: false,
                    over: false,
                })
            }))
        })
    }
}

/// What a rewritten body does once its first message has gone.
enum AfterData {
    /// Ends with `UNAVAILABLE` in the trailers.
    Unavailable,
    /// Waits, then passes the rest of the body (its trailers) on.
    Wait(Pin<Box<tokio::time::Sleep>>),
    /// Waits, then fails: hyper resets the stream. (At once, the reset
    /// would discard the headers and message still queued with it, and the
    /// call would fail before its headers.)
    Cut(Pin<Box<tokio::time::Sleep>>),
}

/// A response body that passes its first message on, then does what its
/// `after_data` says (nothing: passes the rest on).
struct Rewritten {
    inner: Body,
    after_data: Option<AfterData>,
    data_sent: bool,
    over: bool,
}

impl http_body::Body for Rewritten {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.over {
            return Poll::Ready(None);
        }
        if this.data_sent {
            match &mut this.after_data {
                Some(AfterData::Unavailable) => {
                    this.over = true;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
                    trailers.insert(
                        "grpc-message",
                        http::HeaderValue::from_static("failed after data"),
                    );
                    return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
                }
                Some(AfterData::Cut(sleep)) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.over = true;
                    return Poll::Ready(Some(Err(tonic::Status::internal("cut off"))));
                }
                Some(AfterData::Wait(sleep)) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.after_data = None;
                }
                None => {}
            }
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if matches!(&frame, Some(Ok(f)) if f.is_data()) {
            this.data_sent = true;
        }
        Poll::Ready(frame)
    }
}

struct TestServer {
    addr: SocketAddr,
    modes: Arc<Modes>,
}

impl TestServer {
    /// tonic-health's server (every service `SERVING`) behind a switch, on
    /// a loopback port.
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let modes = Arc::new(Modes::default());
        let m = modes.clone();
        let switch = tower::layer::layer_fn(move |inner| Switch {
            inner,
            modes: m.clone(),
        });
        tokio::spawn(async move {
            // Kept alive with the server: dropped, the reporter would end
            // every `Watch` stream.
            let _reporter = reporter;
            Server::builder()
                .layer(switch)
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        Self { addr, modes }
    }

    fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a URI")
            .connect_lazy()
    }

    fn calls(&self) -> u64 {
        self.modes.calls.load(Ordering::Relaxed)
    }
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// `future`, which must end within [`STEP`].
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {STEP:?}"))
}

/// A `Watch` stream opened, its first message read (`SERVING`).
async fn watching<S>(client: &mut HealthClient<S>) -> tonic::Streaming<HealthCheckResponse>
where
    S: tonic::client::GrpcService<Body>,
    S::Error: Into<steadfast::BoxError>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<steadfast::BoxError> + Send,
{
    let mut watch = within("the watch opens", client.watch(check()))
        .await
        .expect("watching")
        .into_inner();
    let first = within("the first message", watch.message())
        .await
        .expect("the stream goes on")
        .expect("a message");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    watch
}

/// A breaker with a slow-call rule (at [`SLOW`]) that cannot trip here: it
/// needs ten calls.
fn slow_call_breaker(name: &str) -> CircuitBreakerLayer<GrpcErrorsAsFailures> {
    CircuitBreakerLayer::builder()
        .name(name)
        .classify(GrpcErrorsAsFailures::new())
        .slow_calls(SLOW, 1.0)
        .window(SlidingWindow::count(10))
        .min_calls(10)
        .build()
        .expect("a valid breaker")
}

#[tokio::test]
async fn a_stream_that_answers_in_time_is_not_slow_however_long_its_body() {
    let server = TestServer::start().await;
    let breaker = slow_call_breaker("body");
    let circuit = breaker.circuit().clone();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .layer(breaker)
            .service(server.channel()),
    );
    // The connection is made first, so that the next headers are fast.
    within("a first call", client.check(check()))
        .await
        .expect("serving");
    assert_eq!(circuit.snapshot().slow_calls, 0);

    // Headers and the message at once; the trailers (`OK`) twice the
    // threshold later.
    server
        .modes
        .end_after_ms
        .store(LATE.as_millis() as u64, Ordering::Relaxed);
    let started = Instant::now();
    within("a call with a long body", client.check(check()))
        .await
        .expect("serving");
    let took = started.elapsed();
    assert!(took >= LATE, "the body was held open ({took:?})");
    let snapshot = circuit.snapshot();
    assert_eq!(snapshot.calls, 2, "{snapshot:?}");
    assert_eq!(snapshot.failures, 0, "{snapshot:?}");
    assert_eq!(
        snapshot.slow_calls, 0,
        "its headers came in time: {took:?} in all is not slow ({snapshot:?})"
    );

    // A failure in the trailers, after a long body: a failure, not slow.
    server.modes.end_after_ms.store(0, Ordering::Relaxed);
    server.modes.fail_in_trailers.store(true, Ordering::Relaxed);
    let status = within("a call failing after data", client.check(check()))
        .await
        .expect_err("failed after data");
    assert_eq!(status.code(), Code::Unavailable);
    let snapshot = circuit.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (3, 1), "{snapshot:?}");
    assert_eq!(snapshot.slow_calls, 0, "{snapshot:?}");
}

#[tokio::test]
async fn a_stream_whose_headers_came_late_is_slow() {
    let server = TestServer::start().await;
    let breaker = slow_call_breaker("headers");
    let circuit = breaker.circuit().clone();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .layer(breaker)
            .service(server.channel()),
    );
    within("a first call", client.check(check()))
        .await
        .expect("serving");

    // Headers twice the threshold late, then the body at once: deferred
    // (no status in the headers), and slow when it ends.
    server
        .modes
        .headers_after_ms
        .store(LATE.as_millis() as u64, Ordering::Relaxed);
    within("a late call", client.check(check()))
        .await
        .expect("serving");
    let snapshot = circuit.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (2, 0), "{snapshot:?}");
    assert_eq!(snapshot.slow_calls, 1, "{snapshot:?}");

    // Late headers and a long body: slow once, not twice.
    server
        .modes
        .end_after_ms
        .store(LATE.as_millis() as u64, Ordering::Relaxed);
    within("a late call with a long body", client.check(check()))
        .await
        .expect("serving");
    let snapshot = circuit.snapshot();
    assert_eq!(
        (snapshot.calls, snapshot.slow_calls),
        (3, 2),
        "{snapshot:?}"
    );

    // Late, and a failure in the trailers: both.
    server.modes.end_after_ms.store(0, Ordering::Relaxed);
    server.modes.fail_in_trailers.store(true, Ordering::Relaxed);
    within("a late failing call", client.check(check()))
        .await
        .expect_err("failed after data");
    let snapshot = circuit.snapshot();
    assert_eq!(
        (snapshot.calls, snapshot.failures, snapshot.slow_calls),
        (4, 1, 3),
        "{snapshot:?}"
    );
}

/// How long a tripped breaker here stays open.
const OPEN_FOR: Duration = Duration::from_millis(100);

/// Waits (on the clock, bounded) until `open_until` has passed, so that the
/// next call is a half-open probe.
async fn until_half_open(open_until: Option<Instant>) {
    let open_until = open_until.expect("open, with an end");
    assert!(open_until <= Instant::now() + STEP, "{open_until:?}");
    // The circuit counts in milliseconds: one more, to be past it.
    tokio::time::sleep_until(open_until + Duration::from_millis(5)).await;
}

#[tokio::test]
async fn a_probe_stream_is_judged_at_its_headers() {
    let server = TestServer::start().await;
    let breaker = CircuitBreakerLayer::builder()
        .name("probe")
        .classify(GrpcErrorsAsFailures::new())
        .no_failure_rate()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_backoff(Backoff::constant(OPEN_FOR))
        .build()
        .expect("a valid breaker");
    let circuit = breaker.circuit().clone();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .layer(breaker)
            .service(server.channel()),
    );

    // Trip it, and wait out the open period.
    server.modes.down.store(true, Ordering::Relaxed);
    within("a failing call", client.check(check()))
        .await
        .expect_err("down");
    assert_eq!(circuit.state(), State::Open);
    server.modes.down.store(false, Ordering::Relaxed);
    until_half_open(circuit.snapshot().open_until).await;

    // The probe: a stream, answered and read, still open. It is judged
    // at its headers, so a long stream does not hold the circuit
    // half-open (and every other call out) while it lasts.
    let watch = watching(&mut client).await;
    assert_eq!(circuit.state(), State::Closed, "the probe closed it");
    let reached = server.calls();
    within("a call while the stream runs", client.check(check()))
        .await
        .expect("served");
    assert_eq!(server.calls(), reached + 1, "it reached the server");
    drop(watch);
    assert_eq!(circuit.state(), State::Closed, "{:?}", circuit.snapshot());
}

#[tokio::test]
async fn a_pool_replica_probe_stream_is_judged_at_its_headers() {
    // The same through a pool's per-replica breaker: a probe is not
    // deferred, so the replica takes traffic again while the stream runs.
    let server = TestServer::start().await;
    let pool = Pool::builder()
        .name("probes")
        .classify(GrpcErrorsAsFailures::new())
        .circuit_breaker(
            CircuitBreakerLayer::builder()
                .no_failure_rate()
                .consecutive_failures(1)
                .half_open_probes(1)
                .open_backoff(Backoff::constant(OPEN_FOR)),
        )
        .build([("a", Replica::new(server.channel()))])
        .expect("a valid pool");
    let handle = pool.handle();
    let replica = || handle.snapshot().into_iter().next().expect("the replica");
    let mut client = HealthClient::new(GrpcStatusLayer::new().layer(pool));

    server.modes.down.store(true, Ordering::Relaxed);
    within("a failing call", client.check(check()))
        .await
        .expect_err("down");
    assert!(
        replica().reasons.contains(&Health::CircuitOpen),
        "{:?}",
        replica()
    );
    server.modes.down.store(false, Ordering::Relaxed);
    tokio::time::sleep(OPEN_FOR + Duration::from_millis(20)).await;

    let watch = watching(&mut client).await;
    assert_eq!(replica().in_flight, 0, "answered: out of the load");
    let reached = server.calls();
    within("a call while the stream runs", client.check(check()))
        .await
        .expect("served");
    assert_eq!(server.calls(), reached + 1);
    drop(watch);
    assert_eq!(replica().in_flight, 0);
    assert!(
        !replica().reasons.contains(&Health::CircuitOpen),
        "the probe closed it: {:?}",
        replica()
    );
}

/// A breaker over a pool, both judging by `GrpcErrorsAsFailures`.
type BreakerOverPool = steadfast::grpc::GrpcStatus<
    steadfast::CircuitBreaker<
        Pool<&'static str, Channel, GrpcErrorsAsFailures>,
        GrpcErrorsAsFailures,
    >,
>;

/// A breaker (that cannot trip here) over a pool of one replica, both
/// judging by `GrpcErrorsAsFailures`, so both defer; as a generated client.
struct Nested {
    client: HealthClient<BreakerOverPool>,
    circuit: steadfast::circuit_breaker::Circuit,
    handle: steadfast::pool::PoolHandle<&'static str, Channel>,
}

impl Nested {
    fn over(server: &TestServer) -> Self {
        let breaker = CircuitBreakerLayer::builder()
            .name("over-pool")
            .classify(GrpcErrorsAsFailures::new())
            .window(SlidingWindow::count(100))
            .min_calls(100)
            .build()
            .expect("a valid breaker");
        let circuit = breaker.circuit().clone();
        let pool = Pool::builder()
            .name("under-breaker")
            .classify(GrpcErrorsAsFailures::new())
            .build([("a", Replica::new(server.channel()))])
            .expect("a valid pool");
        let handle = pool.handle();
        let client = HealthClient::new(
            ServiceBuilder::new()
                .layer(GrpcStatusLayer::new())
                .layer(breaker)
                .service(pool),
        );
        Self {
            client,
            circuit,
            handle,
        }
    }

    fn replica(&self) -> steadfast::pool::ReplicaSnapshot<&'static str> {
        self.handle
            .snapshot()
            .into_iter()
            .next()
            .expect("the replica")
    }

    /// The breaker's calls and failures in its window.
    fn breaker(&self) -> (u64, u64) {
        let snapshot = self.circuit.snapshot();
        (snapshot.calls, snapshot.failures)
    }
}

#[tokio::test]
async fn a_breaker_over_a_pool_each_record_one_failure_per_call_in_the_trailers() {
    let server = TestServer::start().await;
    let mut nested = Nested::over(&server);
    within("a healthy call", nested.client.check(check()))
        .await
        .expect("serving");
    assert_eq!(nested.breaker(), (1, 0));
    assert_eq!(nested.replica().health, Health::Healthy);

    server.modes.fail_in_trailers.store(true, Ordering::Relaxed);
    for n in 1..=3 {
        let status = within("a call failing after data", nested.client.check(check()))
            .await
            .expect_err("failed after data");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "failed after data");
        assert_eq!(
            nested.breaker(),
            (1 + n, n),
            "{:?}",
            nested.circuit.snapshot()
        );
        let replica = nested.replica();
        assert_eq!(
            replica.health,
            Health::Failing { in_a_row: n },
            "{replica:?}"
        );
        assert_eq!(replica.in_flight, 0, "{replica:?}");
    }
    assert_eq!(server.calls(), 4, "each call sent once");
}

#[tokio::test]
async fn a_breaker_over_a_pool_each_record_one_failure_per_body_cut_off() {
    let server = TestServer::start().await;
    let mut nested = Nested::over(&server);
    within("a healthy call", nested.client.check(check()))
        .await
        .expect("serving");

    // The server's body fails after its first message: hyper resets the
    // stream. The message came, so both layers deferred; the error that
    // cuts the body off is one failure in each.
    server.modes.cut_after_data.store(true, Ordering::Relaxed);
    for n in 1..=2 {
        let mut watch = watching(&mut nested.client).await;
        assert_eq!(nested.replica().in_flight, 0, "answered: out of the load");
        let status = within("the reset", watch.message())
            .await
            .expect_err("cut off");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        // Told when the error came, before the stream is dropped.
        assert_eq!(
            nested.breaker(),
            (1 + n, n),
            "{:?}",
            nested.circuit.snapshot()
        );
        let replica = nested.replica();
        assert_eq!(
            replica.health,
            Health::Failing { in_a_row: n },
            "{replica:?}"
        );
        assert_eq!(replica.in_flight, 0, "{replica:?}");
        drop(watch);
        assert_eq!(nested.breaker(), (1 + n, n), "dropped after: nothing more");
    }
}

#[tokio::test]
async fn a_breaker_over_a_pool_records_nothing_for_a_stream_dropped_early() {
    let server = TestServer::start().await;
    let mut nested = Nested::over(&server);
    within("a healthy call", nested.client.check(check()))
        .await
        .expect("serving");

    let watch = watching(&mut nested.client).await;
    assert_eq!(nested.replica().in_flight, 0, "answered: out of the load");
    assert_eq!(nested.breaker(), (1, 0), "not judged while it is open");
    drop(watch);
    assert_eq!(nested.replica().in_flight, 0);
    assert_eq!(nested.breaker(), (1, 0), "neither a success nor a failure");
    assert_eq!(nested.replica().health, Health::Healthy);

    // A stream read to its end, with a failure in the trailers, after
    // another dropped: one failure in each.
    server.modes.fail_in_trailers.store(true, Ordering::Relaxed);
    let mut watch = within("a failing watch", nested.client.watch(check()))
        .await
        .expect("its headers")
        .into_inner();
    within("its message", watch.message())
        .await
        .expect("a message first")
        .expect("a message");
    let status = within("its end", watch.message())
        .await
        .expect_err("failed after data");
    assert_eq!(status.code(), Code::Unavailable);
    // Polled again after its end: nothing more is told.
    let again = within("after its end", watch.message()).await;
    assert!(matches!(again, Ok(None)), "{again:?}");
    drop(watch);
    assert_eq!(nested.breaker(), (2, 1));
    assert_eq!(nested.replica().health, Health::Failing { in_a_row: 1 });
    assert_eq!(nested.replica().in_flight, 0);
}

#[tokio::test]
async fn a_pool_takes_the_time_to_the_headers_as_latency() {
    let server = TestServer::start().await;
    let pool = Pool::builder()
        .name("latency")
        .classify(GrpcErrorsAsFailures::new())
        .build([("a", Replica::new(server.channel()))])
        .expect("a valid pool");
    let handle = pool.handle();
    let latency = || {
        handle
            .snapshot()
            .into_iter()
            .next()
            .expect("the replica")
            .latency
    };
    let mut client = HealthClient::new(GrpcStatusLayer::new().layer(pool));
    within("a first call", client.check(check()))
        .await
        .expect("serving");

    // The estimate is a peak: a sample above it replaces it. A body held
    // open after fast headers must not be one.
    let before = latency();
    server
        .modes
        .end_after_ms
        .store(LATE.as_millis() as u64, Ordering::Relaxed);
    let started = Instant::now();
    within("a call with a long body", client.check(check()))
        .await
        .expect("serving");
    assert!(started.elapsed() >= LATE);
    let after = latency();
    assert!(
        after < SLOW && after <= before.max(SLOW),
        "{after:?} (was {before:?}): the body's length is not latency"
    );

    // Late headers are.
    server.modes.end_after_ms.store(0, Ordering::Relaxed);
    server
        .modes
        .headers_after_ms
        .store(LATE.as_millis() as u64, Ordering::Relaxed);
    within("a late call", client.check(check()))
        .await
        .expect("serving");
    assert!(latency() >= LATE, "{:?}", latency());
}
