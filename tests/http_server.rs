//! The server side: a real axum server on loopback whose routes call a real
//! upstream (a hyper server) through steadfast stacks, answering for a
//! failed dependency with `error_response` (through axum's
//! `HandleErrorLayer` and through a handler's `map_err`), and shedding a
//! route's load with `ShedWhenOpenLayer` while its dependency's circuit is
//! open. Each answer is read over HTTP, as a caller of the server sees it.
//!
//! No test waits on the wall clock: the timeout is zero, and the circuit's
//! open period (30 s) is far longer than a test runs.

#![cfg(feature = "http")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::routing::get;
use http::header::RETRY_AFTER;
use http::{Request, Response, StatusCode, Uri};
use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{Circuit, CircuitBreaker, SlidingWindow};
use steadfast::classify::ServerErrorsAsFailures;
use steadfast::error::BoxError;
use steadfast::http::{ShedWhenOpenLayer, error_response, handle_error};
use steadfast::pool::Replica;
use steadfast::{CircuitBreakerLayer, Pool};
use support::{HttpClient, Reply, TestServer};
use tokio::net::TcpListener;
use tower::timeout::Timeout;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const OPEN_PERIOD: Duration = Duration::from_secs(30);

/// What a caller of the server saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: StatusCode,
    retry_after: Option<String>,
    body: String,
}

/// Serves `app` on a free loopback port until the test's runtime ends.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `GET path` on the server at `addr`, as its caller sees the answer.
async fn get_from(addr: SocketAddr, path: &str) -> Seen {
    let uri: Uri = format!("http://{addr}{path}").parse().expect("a URI");
    let res = support::client()
        .request(support::get(&uri))
        .await
        .expect("the server answers");
    let retry_after = res
        .headers()
        .get(RETRY_AFTER)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let (status, body) = support::read(res).await;
    Seen {
        status,
        retry_after,
        body: String::from_utf8(body.to_vec()).expect("utf-8"),
    }
}

/// `Retry-After` of a circuit that just opened for [`OPEN_PERIOD`]: the
/// time left, in whole seconds rounded up (a few milliseconds over the
/// period, as the circuit counts, round up to the next second).
fn assert_open_period(retry_after: Option<&str>) {
    let secs: u64 = retry_after
        .expect("a Retry-After")
        .parse()
        .expect("delay-seconds");
    let period = OPEN_PERIOD.as_secs();
    assert!(
        (period..=period + 1).contains(&secs),
        "Retry-After {secs} for an open period of {period} s"
    );
}

/// A breaker named `name` that opens after 2 failures in 2 calls, for 30 s.
fn breaker(name: &str) -> CircuitBreakerLayer<ServerErrorsAsFailures> {
    CircuitBreakerLayer::builder()
        .name(name)
        .classify(ServerErrorsAsFailures::new())
        .failure_rate(0.5)
        .window(SlidingWindow::count(2))
        .min_calls(2)
        .open_backoff(Backoff::constant(OPEN_PERIOD))
        .build()
        .expect("a valid breaker")
}

/// The hyper client sending every request to `upstream`'s path, with the
/// empty body the test client sends.
fn to_upstream(
    upstream: Uri,
) -> impl Service<
    Request<axum::body::Body>,
    Response = Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .map_request(move |_: Request<axum::body::Body>| support::get(&upstream))
        .service(support::client())
}

/// A route proxying to `service`, its errors answered by `handle_error`.
fn proxied<S>(service: S) -> axum::routing::MethodRouter
where
    S: Service<Request<axum::body::Body>, Response = Response<hyper::body::Incoming>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    axum::routing::any_service(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(handle_error))
            .map_err(Into::into)
            .service(service),
    )
}

#[tokio::test]
async fn handle_error_layer_answers_each_failure_over_http() {
    let upstream = TestServer::start().await;
    upstream.set_reply(Reply::unavailable());
    // An open circuit: two 503s from the upstream trip it.
    let payments = breaker("payments");
    let tripping = payments.layer(to_upstream(upstream.uri("/pay")));
    // No healthy replica: the pool's only replica is disabled.
    let pool = Pool::builder()
        .name("search")
        .build([("a", Replica::new(to_upstream(upstream.uri("/search"))))])
        .expect("a valid pool");
    assert!(pool.handle().disable(&"a"));
    // A timeout: the upstream takes a minute, the timeout is zero.
    let slow = TestServer::start().await;
    slow.set_delay(Duration::from_secs(60));
    let timing_out = Timeout::new(to_upstream(slow.uri("/")), Duration::ZERO);
    // The dependency's own error: nothing listens on its port.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("an address")
    };
    let refused = to_upstream(format!("http://{closed}/").parse().expect("a URI"));

    let app = Router::new()
        .route("/pay", proxied(tripping))
        .route("/search", proxied(pool))
        .route("/slow", proxied(timing_out))
        .route("/refused", proxied(refused));
    let addr = serve(app).await;

    for _ in 0..2 {
        let seen = get_from(addr, "/pay").await;
        assert_eq!(
            seen.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "the upstream's own 503"
        );
        assert_eq!(seen.body, "error", "passed through as it is");
    }
    let seen = get_from(addr, "/pay").await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_open_period(seen.retry_after.as_deref());
    assert_eq!(seen.body, "circuit `payments` is open\n");
    assert_eq!(
        upstream.requests_to("/pay"),
        2,
        "the open circuit sent nothing"
    );
    assert_eq!(
        get_from(addr, "/search").await,
        Seen {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            body: "no healthy replica in pool `search`\n".to_owned(),
        }
    );
    assert_eq!(
        get_from(addr, "/slow").await,
        Seen {
            status: StatusCode::GATEWAY_TIMEOUT,
            retry_after: None,
            body: "upstream timed out\n".to_owned(),
        }
    );
    assert_eq!(
        get_from(addr, "/refused").await,
        Seen {
            status: StatusCode::BAD_GATEWAY,
            retry_after: None,
            body: "upstream failed\n".to_owned(),
        }
    );
}

/// The state of the app a handler calls its dependency from.
#[derive(Clone)]
struct App {
    payments: CircuitBreaker<HttpClient, ServerErrorsAsFailures>,
    upstream: Uri,
    handled: Arc<AtomicUsize>,
}

/// A handler calling the payments service, its failure answered with
/// `error_response` through `map_err`.
async fn pay(State(app): State<App>) -> Result<String, Response<String>> {
    app.handled.fetch_add(1, Ordering::Relaxed);
    let res = app
        .payments
        .oneshot(support::get(&app.upstream))
        .await
        .map_err(error_response)?;
    Ok(format!("paid: {}", res.status()))
}

fn app_with_shedding(upstream: &TestServer) -> (Router, Circuit, Arc<AtomicUsize>) {
    let layer = breaker("payments");
    let circuit = layer.circuit().clone();
    let handled = Arc::new(AtomicUsize::new(0));
    let app = App {
        payments: layer.layer(support::client()),
        upstream: upstream.uri("/pay"),
        handled: handled.clone(),
    };
    let router = Router::new()
        .route("/pay", get(pay))
        .route_layer(ShedWhenOpenLayer::new(circuit.clone()))
        .route("/health", get(|| async { "ok" }))
        .with_state(app);
    (router, circuit, handled)
}

#[tokio::test]
async fn a_handler_maps_the_error_and_the_route_sheds_while_the_circuit_is_open() {
    let upstream = TestServer::start().await;
    let (app, circuit, handled) = app_with_shedding(&upstream);
    let addr = serve(app).await;

    let seen = get_from(addr, "/pay").await;
    assert_eq!(seen.body, "paid: 200 OK");
    // A failure in a window of two trips the circuit: from then on the
    // route sheds, with the circuit's hint, and the handler does not run.
    upstream.set_reply(Reply::unavailable());
    assert_eq!(
        get_from(addr, "/pay").await.body,
        "paid: 503 Service Unavailable"
    );
    assert_eq!(handled.load(Ordering::Relaxed), 2);
    for _ in 0..3 {
        let seen = get_from(addr, "/pay").await;
        assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_open_period(seen.retry_after.as_deref());
        assert_eq!(seen.body, "circuit `payments` is open\n");
    }
    assert_eq!(
        handled.load(Ordering::Relaxed),
        2,
        "shed before the handler"
    );
    assert_eq!(upstream.requests_to("/pay"), 2);
    assert_eq!(
        get_from(addr, "/health").await.body,
        "ok",
        "other routes serve"
    );

    // Forced open: shed with no hint to give.
    circuit.force_open();
    let seen = get_from(addr, "/pay").await;
    assert_eq!(
        (seen.status, seen.retry_after),
        (StatusCode::SERVICE_UNAVAILABLE, None)
    );
    // Reset: the handler runs again, and its call goes out.
    circuit.reset();
    upstream.set_reply(Reply::Ok);
    assert_eq!(get_from(addr, "/pay").await.body, "paid: 200 OK");
    assert_eq!(handled.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_circuit_the_handler_still_meets_open_is_answered_by_error_response() {
    // Without the shedding layer, the handler runs and its breaker refuses:
    // `map_err(error_response)` gives the caller the same answer.
    let upstream = TestServer::start().await;
    upstream.set_reply(Reply::unavailable());
    let layer = breaker("payments");
    let app = App {
        payments: layer.layer(support::client()),
        upstream: upstream.uri("/pay"),
        handled: Arc::default(),
    };
    let router = Router::new().route("/pay", get(pay)).with_state(app);
    let addr = serve(router).await;
    for _ in 0..2 {
        get_from(addr, "/pay").await;
    }
    let seen = get_from(addr, "/pay").await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_open_period(seen.retry_after.as_deref());
    assert_eq!(seen.body, "circuit `payments` is open\n");
}
