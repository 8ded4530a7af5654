//! gRPC over real tonic parts on loopback: a tonic server with the
//! `grpc.health.v1` service (tonic-health's), a switch in front of it that
//! answers trailers-only `UNAVAILABLE` while on, and a generated client
//! over a `Channel`. The classifier reads the real responses, and a
//! breaker opened by `UNAVAILABLE` reaches the generated client as
//! `UNAVAILABLE` with pushback, not `UNKNOWN`.

#![cfg(feature = "grpc")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use steadfast::CircuitBreakerLayer;
use steadfast::Pool;
use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{SlidingWindow, State};
use steadfast::classify::{Classify, GrpcErrorsAsFailures, PUSHBACK_HEADER, Verdict};
use steadfast::grpc::{GrpcCheck, GrpcStatusLayer};
use steadfast::health::{HealthCheck, HealthChecks};
use steadfast::pool::{Health, Replica};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder};

type Body = tonic::body::Body;

/// Answers every call with trailers-only `UNAVAILABLE` (and, if set, a
/// pushback header) while `down` is on, `UNIMPLEMENTED` while
/// `unimplemented` is, never while `hang` is; otherwise the service behind.
#[derive(Clone)]
struct Switch<S> {
    inner: S,
    down: Arc<AtomicBool>,
    pushback: Arc<Mutex<Option<&'static str>>>,
    modes: Arc<Modes>,
}

#[derive(Default)]
struct Modes {
    unimplemented: AtomicBool,
    hang: AtomicBool,
    /// Calls still to answer `UNAVAILABLE` before the service answers.
    fail_first: std::sync::atomic::AtomicUsize,
    /// Answers the service's headers and first message, then ends with
    /// `UNAVAILABLE` in the trailers: a failure seen only at the end.
    fail_in_trailers: AtomicBool,
    /// Each call's `grpc-timeout` and `grpc-previous-rpc-attempts`.
    seen: Mutex<Vec<(Option<String>, Option<String>)>>,
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
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        let seen = (header("grpc-timeout"), header("grpc-previous-rpc-attempts"));
        self.modes.seen.lock().expect("not poisoned").push(seen);
        let failing = self
            .modes
            .fail_first
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            let res = tonic::Status::unavailable("not yet").into_http();
            return Box::pin(async move { Ok(res) });
        }
        if self.modes.hang.load(Ordering::Relaxed) {
            return Box::pin(std::future::pending());
        }
        if self.modes.fail_in_trailers.load(Ordering::Relaxed) {
            let call = self.inner.call(req);
            return Box::pin(async move {
                let res = call.await?;
                Ok(res.map(|inner| {
                    Body::new(FailAfterData {
                        inner,
                        data_sent: false,
                        over: false,
                    })
                }))
            });
        }
        if self.modes.unimplemented.load(Ordering::Relaxed) {
            let res = tonic::Status::unimplemented("no such service").into_http();
            return Box::pin(async move { Ok(res) });
        }
        if self.down.load(Ordering::Relaxed) {
            let mut res: http::Response<Body> =
                tonic::Status::unavailable("switched off").into_http();
            if let Some(p) = *self.pushback.lock().expect("not poisoned") {
                res.headers_mut()
                    .insert(PUSHBACK_HEADER, http::HeaderValue::from_static(p));
            }
            return Box::pin(async move { Ok(res) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// A response body that passes its first message on, then ends with
/// trailers that say `UNAVAILABLE`.
struct FailAfterData {
    inner: Body,
    data_sent: bool,
    over: bool,
}

impl http_body::Body for FailAfterData {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.over {
            return Poll::Ready(None);
        }
        if this.data_sent {
            this.over = true;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static("failed after data"),
            );
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if matches!(&frame, Some(Ok(f)) if f.is_data()) {
            this.data_sent = true;
        }
        Poll::Ready(frame)
    }
}

struct Server1 {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    pushback: Arc<Mutex<Option<&'static str>>>,
    modes: Arc<Modes>,
    reporter: tonic_health::server::HealthReporter,
}

async fn start() -> Server1 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    start_on(listener)
}

/// A server on `listener`.
fn start_on(listener: tokio::net::TcpListener) -> Server1 {
    let addr = listener.local_addr().expect("an address");
    let (reporter, health) = tonic_health::server::health_reporter();
    let down = Arc::new(AtomicBool::new(false));
    let pushback = Arc::new(Mutex::new(None));
    let modes = Arc::new(Modes::default());
    let (d, p, m) = (down.clone(), pushback.clone(), modes.clone());
    let switch = tower::layer::layer_fn(move |inner| Switch {
        inner,
        down: d.clone(),
        pushback: p.clone(),
        modes: m.clone(),
    });
    tokio::spawn(async move {
        Server::builder()
            .layer(switch)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    Server1 {
        addr,
        down,
        pushback,
        modes,
        reporter,
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect_lazy()
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

/// A channel that records what the classifier says of each response.
#[derive(Clone)]
struct Judged {
    inner: Channel,
    verdicts: Arc<Mutex<Vec<Verdict>>>,
}

impl Service<http::Request<Body>> for Judged {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let call = self.inner.call(req);
        let verdicts = self.verdicts.clone();
        Box::pin(async move {
            let result = call.await;
            let verdict = GrpcErrorsAsFailures::new().classify(result.as_ref());
            verdicts.lock().expect("not poisoned").push(verdict);
            result
        })
    }
}

#[tokio::test]
async fn real_responses_are_classified_by_their_status() {
    let server = start().await;
    server.reporter.set_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>().await;
    let verdicts = Arc::new(Mutex::new(Vec::new()));
    let mut client = HealthClient::new(Judged {
        inner: channel(server.addr),
        verdicts: verdicts.clone(),
    });
    let last = || {
        *verdicts
            .lock()
            .expect("not poisoned")
            .last()
            .expect("a verdict")
    };

    // OK: the status comes in the trailers; the headers say nothing yet.
    client.check(check("")).await.expect("serving");
    assert_eq!(last(), Verdict::success());
    // NOT_FOUND, trailers-only: the caller's mistake, not the server's.
    let status = client
        .check(check("no.such.Service"))
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    assert!(last().is_success());
    // UNAVAILABLE, trailers-only: a retryable failure, with its pushback.
    server.down.store(true, Ordering::Relaxed);
    *server.pushback.lock().expect("not poisoned") = Some("250");
    let status = client.check(check("")).await.expect_err("down");
    assert_eq!(status.code(), Code::Unavailable);
    let v = last();
    assert!(v.is_failure() && v.is_retryable());
    assert_eq!(v.pushback(), Some(Duration::from_millis(250)));
    // A negative pushback: do not retry.
    *server.pushback.lock().expect("not poisoned") = Some("-1");
    client.check(check("")).await.expect_err("down");
    let v = last();
    assert!(v.is_failure() && !v.is_retryable());
}

#[tokio::test]
async fn an_open_breaker_reaches_the_generated_client_as_unavailable_with_pushback() {
    let server = start().await;
    let breaker = CircuitBreakerLayer::builder()
        .name("health")
        .classify(GrpcErrorsAsFailures::new())
        .window(SlidingWindow::count(4))
        .min_calls(4)
        .open_backoff(Backoff::constant(Duration::from_secs(30)))
        .build()
        .expect("a valid breaker");
    let circuit = breaker.circuit().clone();
    let stack = ServiceBuilder::new()
        .layer(GrpcStatusLayer::new())
        .layer(breaker)
        .service(channel(server.addr));
    let mut client = HealthClient::new(stack);

    server.down.store(true, Ordering::Relaxed);
    for _ in 0..4 {
        let status = client.check(check("")).await.expect_err("down");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "switched off", "the server's own status");
    }
    assert_eq!(circuit.state(), State::Open);
    let status = client.check(check("")).await.expect_err("open");
    assert_eq!(status.code(), Code::Unavailable, "not UNKNOWN");
    assert_eq!(status.message(), "circuit `health` is open");
    let pushback: u64 = status
        .metadata()
        .get(PUSHBACK_HEADER)
        .expect("a pushback")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("milliseconds");
    // The open period, less the time since, in whole milliseconds rounded
    // up (the circuit keeps its times in milliseconds, rounded up too).
    assert!((29_000..=30_001).contains(&pushback), "{pushback} ms");

    // Without the layer, tonic would have made it UNKNOWN: the layer is
    // what a caller needs.
    let bare = Layer::layer(
        &CircuitBreakerLayer::builder()
            .name("bare")
            .classify(GrpcErrorsAsFailures::new())
            .window(SlidingWindow::count(1))
            .min_calls(1)
            .build()
            .expect("valid"),
        channel(server.addr),
    );
    let mut bare = HealthClient::new(bare);
    let _ = bare.check(check("")).await;
    let status = bare.check(check("")).await.expect_err("open");
    assert_eq!(
        status.code(),
        Code::Unknown,
        "tonic's own mapping of a CircuitOpen"
    );
}

#[tokio::test]
async fn grpc_check_reads_every_answer() {
    let server = start().await;
    let check = GrpcCheck::new(channel(server.addr), "search.v1.Search");
    server
        .reporter
        .set_service_status("search.v1.Search", ServingStatus::Serving)
        .await;
    check.check().await.expect("SERVING: healthy");
    server
        .reporter
        .set_service_status("search.v1.Search", ServingStatus::NotServing)
        .await;
    let err = check.check().await.expect_err("NOT_SERVING: down");
    assert_eq!(err.to_string(), "the health service answered NOT_SERVING");
    let unknown = GrpcCheck::new(channel(server.addr), "no.such.Service");
    let err = unknown.check().await.expect_err("NOT_FOUND: down");
    assert!(err.to_string().contains("NotFound"), "{err}");
    server.modes.unimplemented.store(true, Ordering::Relaxed);
    check
        .check()
        .await
        .expect("UNIMPLEMENTED: no health service, healthy");
    server.modes.unimplemented.store(false, Ordering::Relaxed);
    // A health service that never answers: the check stays pending until
    // the pool's timeout ends it (here a timeout of 1 s, on paused time).
    server.modes.hang.store(true, Ordering::Relaxed);
    tokio::time::pause();
    let hung = tokio::time::timeout(Duration::from_secs(1), check.check()).await;
    assert!(hung.is_err(), "still pending after the timeout");
}

/// Waits, on the pool's change notifications (at most 10 s), until `ok`
/// holds for `replica`'s health.
async fn until_health<S: Clone>(
    pool: &steadfast::pool::PoolHandle<&'static str, S>,
    replica: &str,
    ok: impl Fn(&Health) -> bool,
) {
    let mut changes = pool.subscribe();
    let wait = async {
        loop {
            let health = pool
                .snapshot()
                .into_iter()
                .find(|r| r.id == replica)
                .map(|r| r.health)
                .expect("the replica");
            if ok(&health) {
                return;
            }
            changes.changed().await.expect("the pool is alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the replica's health changed in time");
}

#[tokio::test]
async fn a_pool_takes_a_replica_out_and_back_in_on_its_grpc_check() {
    let (a, b) = (start().await, start().await);
    for s in [&a, &b] {
        s.reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
    }
    let replica = |s: &Server1| {
        let channel = channel(s.addr);
        Replica::new(channel.clone()).health_check(GrpcCheck::new(channel, ""))
    };
    let pool = Pool::builder()
        .name("grpc")
        .classify(GrpcErrorsAsFailures::new())
        .health_checks(
            HealthChecks::default()
                .interval(Duration::from_millis(50))
                .unhealthy_interval(Duration::from_millis(20))
                .timeout(Duration::from_millis(500))
                .healthy_threshold(1)
                .unhealthy_threshold(1),
        )
        .build([("a", replica(&a)), ("b", replica(&b))])
        .expect("a valid pool");
    let handle = pool.handle();
    let checks = tokio::spawn(pool.health_checks());
    let mut client = HealthClient::new(GrpcStatusLayer::new().layer(pool));

    b.reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    until_health(&handle, "b", |h| *h == Health::FailingChecks).await;
    for _ in 0..10 {
        client.check(check("")).await.expect("served by a");
    }
    b.reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    until_health(&handle, "b", |h| *h != Health::FailingChecks).await;
    checks.abort();
}

/// The next status a `Watch` stream sends (within 10 s).
async fn next(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("in time")
        .expect("a message")
        .expect("the stream goes on")
        .status
}

#[tokio::test]
async fn the_server_reports_not_serving_while_its_dependency_is_open() {
    let server = start().await;
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .build()
        .expect("a valid breaker");
    let circuit = breaker.circuit().clone();
    let sync = steadfast::grpc::HealthSync::new(server.reporter.clone(), "shop.v1.Checkout")
        .circuit(circuit.clone())
        .hold_down(Duration::ZERO);
    let task = tokio::spawn(sync.run());
    // A client watching the server's health over loopback.
    let mut client = HealthClient::new(channel(server.addr));
    let mut watch = tokio::time::timeout(
        Duration::from_secs(10),
        client.watch(check("shop.v1.Checkout")),
    )
    .await
    .expect("in time")
    .expect("watching")
    .into_inner();
    // The first status may be the one from before the sync's first report.
    let mut status = next(&mut watch).await;
    if status != ServingStatus::Serving as i32 {
        status = next(&mut watch).await;
    }
    assert_eq!(status, ServingStatus::Serving as i32);
    circuit.force_open();
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);
    circuit.reset();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    task.abort();
}

/// Runs `check` until it says `healthy`, a round every millisecond for at
/// most 10 s (what the server sent comes over a real socket, which a busy
/// machine may deliver late): whether it did.
async fn until_check(check: &GrpcCheck<Channel>, healthy: bool) -> bool {
    const PATIENCE: Duration = Duration::from_secs(10);
    const BETWEEN_ROUNDS: Duration = Duration::from_millis(1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check.check().await.is_ok() == healthy {
            return true;
        }
        tokio::time::sleep(BETWEEN_ROUNDS).await;
    }
    false
}

#[tokio::test]
async fn a_watching_check_follows_the_stream_and_opens_it_again() {
    let server = start().await;
    let addr = server.addr;
    let service = "search.v1.Search";
    server
        .reporter
        .set_service_status(service, ServingStatus::Serving)
        .await;
    let check = GrpcCheck::watching(channel(addr), service);
    check
        .check()
        .await
        .expect("SERVING, read from the stream's first message");
    server
        .reporter
        .set_service_status(service, ServingStatus::NotServing)
        .await;
    assert!(
        until_check(&check, false).await,
        "NOT_SERVING arrives on the open stream"
    );
    server
        .reporter
        .set_service_status(service, ServingStatus::Serving)
        .await;
    assert!(until_check(&check, true).await, "and SERVING again");

    // The server forgets the service: its stream ends, and the round
    // that finds it ended opens another, which the server refuses.
    let mut reporter = server.reporter.clone();
    reporter.clear_service_status(service).await;
    assert!(
        until_check(&check, false).await,
        "down: the service is unknown now"
    );
    // Known again: the next round opens a new stream.
    reporter
        .set_service_status(service, ServingStatus::Serving)
        .await;
    check.check().await.expect("back with a new stream");
    // An unknown service: NOT_FOUND on Watch too.
    let unknown = GrpcCheck::watching(channel(addr), "no.such.Service");
    assert!(unknown.check().await.is_err());
}

/// The stack a retrying gRPC client builds: statuses for the caller, a
/// replayable body, a retry that reads gRPC statuses, a `Channel`; with a
/// budget of the defaults.
fn retrying(
    addr: SocketAddr,
) -> HealthClient<
    impl tonic::client::GrpcService<
        Body,
        Error = tonic::Status,
        ResponseBody = Body,
        Future = impl Send,
    > + Clone,
> {
    let budget = steadfast::budget::RetryBudget::builder()
        .name("health")
        .build()
        .expect("a valid budget");
    retrying_with(addr, Arc::new(budget))
}

#[tokio::test]
async fn a_retry_over_a_channel_replays_the_request_within_its_deadline() {
    let server = start().await;
    server
        .reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    server.modes.fail_first.store(2, Ordering::Relaxed);
    let mut client = retrying(server.addr);
    let mut request = tonic::Request::new(check(""));
    request.set_timeout(Duration::from_secs(5));
    let answer = client
        .check(request)
        .await
        .expect("the third attempt answers");
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    let seen = std::mem::take(&mut *server.modes.seen.lock().expect("not poisoned"));
    assert_eq!(seen.len(), 3, "two retries");
    let previous: Vec<Option<&str>> = seen.iter().map(|(_, p)| p.as_deref()).collect();
    assert_eq!(previous, [None, Some("1"), Some("2")]);
    // The deadline covers every attempt: each one is sent with less time.
    let timeouts: Vec<Duration> = seen
        .iter()
        .map(|(t, _)| grpc_timeout(t.as_deref().expect("a grpc-timeout")))
        .collect();
    assert!(timeouts[0] <= Duration::from_secs(5));
    assert!(
        timeouts[1] < timeouts[0] && timeouts[2] < timeouts[1],
        "{timeouts:?}"
    );

    // Opted out: sent once, and its status is the caller's.
    server.modes.fail_first.store(1, Ordering::Relaxed);
    let mut request = tonic::Request::new(check(""));
    request
        .extensions_mut()
        .insert(steadfast::http::Idempotent(false));
    let status = client.check(request).await.expect_err("not retried");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.modes.seen.lock().expect("not poisoned").len(), 1);
}

/// A `grpc-timeout` value as a duration (the tests' own reading).
fn grpc_timeout(value: &str) -> Duration {
    let (n, unit) = value.split_at(value.len() - 1);
    let n: u64 = n.parse().expect("digits");
    match unit {
        "H" => Duration::from_secs(n * 3_600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other}"),
    }
}

#[tokio::test]
async fn a_server_stream_is_committed_once_its_headers_arrive() {
    // `Watch` answers with headers, then messages: a success to the
    // classifier, so the retry sends it once.
    let server = start().await;
    server
        .reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let mut client = retrying(server.addr);
    let mut watch = client
        .watch(check(""))
        .await
        .expect("watching")
        .into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    assert_eq!(server.modes.seen.lock().expect("not poisoned").len(), 1);
}

#[tokio::test]
async fn a_hedge_over_two_replicas_answers_from_the_fast_one() {
    // One of two replicas hangs: whenever the pool sends a call's first
    // attempt there, the hedge sent 20 ms later to the other one answers.
    let (hung, fast) = (start().await, start().await);
    for s in [&hung, &fast] {
        s.reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
    }
    hung.modes.hang.store(true, Ordering::Relaxed);
    let pool = Pool::builder()
        .name("hedged")
        .classify(GrpcErrorsAsFailures::new())
        .build([
            ("hung", Replica::new(channel(hung.addr))),
            ("fast", Replica::new(channel(fast.addr))),
        ])
        .expect("a valid pool");
    let hedge = steadfast::HedgeLayer::builder()
        .name("hedged")
        .classify(GrpcErrorsAsFailures::new())
        .replay(steadfast::grpc::GrpcReplay::new())
        .delay(steadfast::hedge::HedgeDelay::Fixed(Duration::from_millis(
            20,
        )))
        .build()
        .expect("a valid hedge");
    let stack = ServiceBuilder::new()
        .layer(GrpcStatusLayer::new())
        .map_request(steadfast::grpc::replayable)
        .layer(hedge)
        .map_request(steadfast::grpc::into_tonic_body)
        .service(pool);
    let mut client = HealthClient::new(stack);
    let seen = |s: &Server1| s.modes.seen.lock().expect("not poisoned").len();
    let hedged_to = |s: &Server1| {
        let seen = s.modes.seen.lock().expect("not poisoned");
        seen.iter()
            .any(|(_, previous)| previous.as_deref() == Some("1"))
    };
    for _ in 0..50 {
        let answer = tokio::time::timeout(Duration::from_secs(5), client.check(check("")))
            .await
            .expect("answered without waiting for the hung replica")
            .expect("served");
        assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
        if hedged_to(&fast) {
            break;
        }
    }
    // A call whose first attempt hung was answered by its hedge.
    assert!(seen(&hung) > 0, "the pool never tried the hung replica");
    assert!(hedged_to(&fast), "no hedge reached the fast replica");
}

#[tokio::test]
async fn the_grpc_client_preset_retries_and_maps_its_errors() {
    let server = start().await;
    server
        .reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let layer = steadfast::presets::GrpcClient::new("preset")
        .total_timeout(Duration::from_millis(400))
        .attempt_timeout(Duration::from_millis(100))
        .breaker_window(Duration::from_millis(200))
        .build()
        .expect("a valid preset");
    let mut client = HealthClient::new(layer.layer(channel(server.addr)));

    // Two UNAVAILABLE answers, then the service's: retried and answered.
    server.modes.fail_first.store(2, Ordering::Relaxed);
    let answer = client.check(check("")).await.expect("the third attempt");
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    let seen = std::mem::take(&mut *server.modes.seen.lock().unwrap());
    let previous: Vec<Option<String>> = seen.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(previous, [None, Some("1".into()), Some("2".into())]);
    // The preset's own deadline travels downstream: every attempt carries
    // the time left of the 400 ms, less on each.
    let left: Vec<Duration> = seen
        .iter()
        .map(|(t, _)| grpc_timeout(t.as_deref().expect("a grpc-timeout")))
        .collect();
    assert!(left[0] <= Duration::from_millis(400), "{left:?}");
    assert!(left.windows(2).all(|w| w[1] < w[0]), "{left:?}");

    // Hung: the attempts time out, and the caller sees DEADLINE_EXCEEDED.
    server.modes.hang.store(true, Ordering::Relaxed);
    let status = client.check(check("")).await.expect_err("hung");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    server.modes.hang.store(false, Ordering::Relaxed);

    // Down: the attempts end in UNAVAILABLE, the caller's code too.
    server.down.store(true, Ordering::Relaxed);
    let status = client.check(check("")).await.expect_err("down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let invalid = steadfast::presets::GrpcClient::new("bad")
        .attempt_timeout(Duration::from_secs(20))
        .build();
    assert!(invalid.is_err(), "an attempt timeout above the total");
}

/// `ReplicaStack::build_grpc` over `servers` (ids `a`, `b`, `c`), with
/// gRPC health checks if `checks`.
fn grpc_fleet(
    servers: &[Server1],
    checks: bool,
) -> steadfast::presets::GrpcReplicaStackParts<&'static str, Channel> {
    let replicas = ["a", "b", "c"].into_iter().zip(servers).map(|(id, s)| {
        let channel = channel(s.addr);
        let replica = Replica::new(channel.clone());
        let replica = match checks {
            true => replica.health_check(GrpcCheck::new(channel, "")),
            false => replica,
        };
        (id, replica)
    });
    let mut stack = steadfast::presets::ReplicaStack::new("grpc-fleet");
    if checks {
        stack = stack.health_checks(
            HealthChecks::default()
                .interval(Duration::from_millis(50))
                .unhealthy_interval(Duration::from_millis(20))
                // Long enough that a slow check on a loaded machine does
                // not take a healthy replica out too.
                .timeout(Duration::from_secs(2))
                .healthy_threshold(1)
                .unhealthy_threshold(1),
        );
    }
    stack.build_grpc(replicas).expect("a valid stack")
}

/// The calls' own attempts a server saw (the checks carry no
/// `grpc-timeout`).
fn calls_seen(server: &Server1) -> usize {
    let seen = server.modes.seen.lock().expect("not poisoned");
    seen.iter().filter(|(timeout, _)| timeout.is_some()).count()
}

/// `n` calls through `service`, each of which must answer `SERVING`.
async fn calls_all_answer(
    service: steadfast::presets::GrpcReplicaStackService<&'static str, Channel>,
    n: usize,
) {
    let mut client = HealthClient::new(service);
    for _ in 0..n {
        let mut request = tonic::Request::new(check(""));
        request.set_timeout(Duration::from_secs(5));
        let answer = tokio::time::timeout(Duration::from_secs(5), client.check(request))
            .await
            .expect("answered in time")
            .expect("no call fails");
        assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    }
}

#[tokio::test]
async fn a_grpc_replica_stack_loses_no_call_to_a_faulty_replica() {
    // Three real servers behind `ReplicaStack::build_grpc`. One answers
    // UNAVAILABLE to everything, or hangs: no call fails, as those that
    // reach it are retried or hedged elsewhere. It reports NOT_SERVING:
    // its gRPC check takes it out, no call reaches it, and it comes back.
    let servers = [start().await, start().await, start().await];
    for s in &servers {
        s.reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
    }
    let faulty = &servers[0];

    faulty.down.store(true, Ordering::Relaxed);
    calls_all_answer(grpc_fleet(&servers, false).service, 30).await;
    assert!(
        calls_seen(faulty) > 0,
        "the stack tried the failing replica"
    );
    faulty.down.store(false, Ordering::Relaxed);

    faulty.modes.hang.store(true, Ordering::Relaxed);
    let before = calls_seen(faulty);
    calls_all_answer(grpc_fleet(&servers, false).service, 30).await;
    assert!(
        calls_seen(faulty) > before,
        "the stack tried the hung replica"
    );
    faulty.modes.hang.store(false, Ordering::Relaxed);

    let parts = grpc_fleet(&servers, true);
    let checks = tokio::spawn(parts.health_checks);
    faulty
        .reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    until_health(&parts.handle, "a", |h| *h == Health::FailingChecks).await;
    let before = calls_seen(faulty);
    calls_all_answer(parts.service.clone(), 20).await;
    assert_eq!(
        calls_seen(faulty),
        before,
        "no call reaches a NOT_SERVING replica"
    );
    faulty
        .reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    until_health(&parts.handle, "a", |h| *h != Health::FailingChecks).await;
    checks.abort();
}

/// A retry over `addr` drawing from `budget`, up to 3 attempts.
fn retrying_with(
    addr: SocketAddr,
    budget: Arc<steadfast::budget::RetryBudget>,
) -> HealthClient<
    impl tonic::client::GrpcService<
        Body,
        Error = tonic::Status,
        ResponseBody = Body,
        Future = impl Send,
    > + Clone,
> {
    let retry = steadfast::RetryLayer::builder()
        .name("storm")
        .classify(GrpcErrorsAsFailures::new())
        .replay(steadfast::grpc::GrpcReplay::new())
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .max_pushback(Duration::from_secs(1))
        .budget(budget)
        .build()
        .expect("a valid retry");
    HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .map_request(steadfast::grpc::replayable)
            .layer(retry)
            .map_request(steadfast::grpc::into_tonic_body)
            .service(channel(addr)),
    )
}

#[tokio::test]
async fn the_budget_caps_a_retry_storm_and_pushback_is_honoured() {
    let server = start().await;
    server.down.store(true, Ordering::Relaxed);
    let seen = |s: &Server1| s.modes.seen.lock().expect("not poisoned").len();
    let budget = Arc::new(
        steadfast::budget::RetryBudget::builder()
            .name("storm")
            .ratio(0.1)
            .min_per_sec(1)
            .build()
            .expect("a valid budget"),
    );
    let mut client = retrying_with(server.addr, budget.clone());
    const CALLS: usize = 100;
    for _ in 0..CALLS {
        let status = client.check(check("")).await.expect_err("down");
        assert_eq!(status.code(), Code::Unavailable);
    }
    // Unbudgeted, 3 attempts each: 300. The budget allows 10% of the
    // calls and its floor (1/s over its 10 s window) on top.
    let attempts = seen(&server);
    assert!(
        attempts > CALLS && attempts <= CALLS + CALLS / 10 + 10 + 1,
        "{attempts} attempts for {CALLS} calls"
    );

    // A pushback that says "do not retry" (gRFC A6: negative): one attempt.
    let roomy = Arc::new(
        steadfast::budget::RetryBudget::builder()
            .name("roomy")
            .build()
            .expect("a valid budget"),
    );
    let mut client = retrying_with(server.addr, roomy);
    *server.pushback.lock().expect("not poisoned") = Some("-1");
    let before = seen(&server);
    client.check(check("")).await.expect_err("down");
    assert_eq!(
        seen(&server) - before,
        1,
        "a negative pushback stops retries"
    );

    // A pushback of 50 ms: the retry waits at least that long.
    *server.pushback.lock().expect("not poisoned") = Some("50");
    let before = seen(&server);
    let started = tokio::time::Instant::now();
    client.check(check("")).await.expect_err("down");
    assert_eq!(seen(&server) - before, 3, "retried after each pushback");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "two waits of 50 ms"
    );
}

#[tokio::test]
async fn a_status_in_trailers_is_judged_when_the_body_ends() {
    // The server answers each call's headers and message, then ends it
    // with UNAVAILABLE in the trailers. The breaker sees those failures
    // when the bodies end, and opens; a retry, seeing data, does not send
    // such a call twice.
    let server = start().await;
    let breaker = CircuitBreakerLayer::builder()
        .name("trailers")
        .classify(GrpcErrorsAsFailures::new())
        .window(SlidingWindow::count(4))
        .min_calls(4)
        .open_backoff(Backoff::constant(Duration::from_secs(30)))
        .build()
        .expect("a valid breaker");
    let circuit = breaker.circuit().clone();
    let mut client = HealthClient::new(
        ServiceBuilder::new()
            .layer(GrpcStatusLayer::new())
            .layer(breaker)
            .service(channel(server.addr)),
    );

    // Healthy bodies read to their end: successes.
    for _ in 0..2 {
        client.check(check("")).await.expect("serving");
    }
    assert_eq!(circuit.snapshot().calls, 2);
    assert_eq!(circuit.snapshot().failures, 0);

    // A stream dropped after its first message counts as neither.
    for _ in 0..3 {
        let mut watch = client
            .watch(check(""))
            .await
            .expect("watching")
            .into_inner();
        assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    }
    assert_eq!(
        circuit.snapshot().calls,
        2,
        "dropped streams count as neither"
    );

    circuit.reset();
    server.modes.fail_in_trailers.store(true, Ordering::Relaxed);
    let before = server.modes.seen.lock().expect("not poisoned").len();
    for _ in 0..4 {
        let status = client
            .check(check(""))
            .await
            .expect_err("failed after data");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "failed after data");
    }
    assert_eq!(circuit.state(), State::Open, "{:?}", circuit.snapshot());
    let seen = server.modes.seen.lock().expect("not poisoned").len();
    assert_eq!(seen - before, 4, "each call sent once");
    let status = client.check(check("")).await.expect_err("open");
    assert_eq!(status.message(), "circuit `trailers` is open");

    let mut retrying = retrying(server.addr);
    let before = server.modes.seen.lock().expect("not poisoned").len();
    let status = retrying
        .check(check(""))
        .await
        .expect_err("failed after data");
    assert_eq!(status.code(), Code::Unavailable);
    let seen = server.modes.seen.lock().expect("not poisoned").len();
    assert_eq!(seen - before, 1, "committed: not retried");
}

#[tokio::test]
async fn a_replica_that_fails_after_its_data_is_ejected() {
    // One replica of three answers every call's message, then UNAVAILABLE
    // in its trailers. The calls it takes fail (they are committed: the
    // retry above the pool does not send them again), and the pool's
    // outlier detection, told at each body's end, ejects it.
    let servers = [start().await, start().await, start().await];
    for s in &servers {
        s.reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
    }
    let faulty = &servers[0];
    faulty.modes.fail_in_trailers.store(true, Ordering::Relaxed);
    let parts = grpc_fleet(&servers, false);
    let mut client = HealthClient::new(parts.service.clone());
    let health = || {
        parts
            .handle
            .snapshot()
            .into_iter()
            .find(|r| r.id == "a")
            .map(|r| r.health)
            .expect("the replica")
    };
    let (mut calls, mut failed) = (0, 0);
    // Calls until it is ejected, bounded (about 1 ms a call here).
    while !matches!(health(), Health::Ejected { .. }) && calls < 5_000 {
        let mut request = tonic::Request::new(check(""));
        request.set_timeout(Duration::from_secs(5));
        if let Err(status) = client.check(request).await {
            assert_eq!(status.message(), "failed after data");
            failed += 1;
        }
        calls += 1;
    }
    assert!(
        matches!(health(), Health::Ejected { .. }),
        "{:?} after {calls} calls, {failed} failed",
        health()
    );
    assert!((1..=10).contains(&failed), "{failed} calls failed");
    // Once it is out, every call answers.
    calls_all_answer(parts.service, 20).await;
}

#[tokio::test]
async fn a_stream_leaves_its_replicas_load_once_answered_and_is_judged_at_its_end() {
    // An open `Watch` stream does not count in its replica's calls in
    // flight (it answered: a long stream must not make its replica look
    // busy, or keep hedges from it); dropped before its end, it counts as
    // neither a success nor a failure.
    let server = start().await;
    server
        .reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let pool = Pool::builder()
        .name("streams")
        .classify(GrpcErrorsAsFailures::new())
        .build([("a", Replica::new(channel(server.addr)))])
        .expect("a valid pool");
    let handle = pool.handle();
    let replica = || handle.snapshot().into_iter().next().expect("the replica");
    let mut client = HealthClient::new(pool);
    let mut watch = client
        .watch(check(""))
        .await
        .expect("watching")
        .into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    assert_eq!(replica().in_flight, 0, "answered: out of the load");
    drop(watch);
    assert_eq!(replica().in_flight, 0);
    assert_eq!(replica().health, Health::Healthy);

    // Ended by the server with UNAVAILABLE after its message: a failure,
    // told when the body ended.
    server.modes.fail_in_trailers.store(true, Ordering::Relaxed);
    let status = client
        .check(check(""))
        .await
        .expect_err("failed after data");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(replica().in_flight, 0);
    assert_eq!(replica().health, Health::Failing { in_a_row: 1 });
}
