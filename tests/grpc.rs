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
use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{SlidingWindow, State};
use steadfast::classify::{Classify, GrpcErrorsAsFailures, PUSHBACK_HEADER, Verdict};
use steadfast::grpc::GrpcStatusLayer;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder};

type Body = tonic::body::Body;

/// Answers every call with trailers-only `UNAVAILABLE` (and, if set, a
/// pushback header) while `down` is on; otherwise the service behind.
#[derive(Clone)]
struct Switch<S> {
    inner: S,
    down: Arc<AtomicBool>,
    pushback: Arc<Mutex<Option<&'static str>>>,
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

struct Server1 {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    pushback: Arc<Mutex<Option<&'static str>>>,
    reporter: tonic_health::server::HealthReporter,
}

async fn start() -> Server1 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let (reporter, health) = tonic_health::server::health_reporter();
    let down = Arc::new(AtomicBool::new(false));
    let pushback = Arc::new(Mutex::new(None));
    let (d, p) = (down.clone(), pushback.clone());
    let switch = tower::layer::layer_fn(move |inner| Switch {
        inner,
        down: d.clone(),
        pushback: p.clone(),
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
