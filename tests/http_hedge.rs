//! The hedge layer over real hyper servers on loopback: one replica turns
//! slow, and hedged requests answer from the other.
//!
//! A small router below the hedge sends each attempt to a replica by its
//! [`Attempt`] number (attempt 1 to the first replica, attempt 2 to the
//! second), as a replica pool would send a hedge elsewhere.

#![cfg(feature = "http")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use steadfast::BoxError;
use steadfast::attempt::Attempt;
use steadfast::budget::RetryBudget;
use steadfast::classify::ServerErrorsAsFailures;
use steadfast::hedge::{HedgeDelay, HedgeLayer};
use steadfast::http::HttpReplay;
use support::TestServer;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// Routes attempt n to replica n (the last one for later attempts).
fn router(
    replicas: Vec<http::Uri>,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<hyper::body::Incoming>, BoxError>> + Send,
> + Clone {
    let client = support::client_for::<Empty<Bytes>>();
    let replicas = Arc::new(replicas);
    tower::service_fn(move |mut req: Request<Empty<Bytes>>| {
        let attempt = req.extensions().get::<Attempt>().map_or(1, Attempt::number) as usize;
        let target = &replicas[(attempt - 1).min(replicas.len() - 1)];
        *req.uri_mut() = target.clone();
        let client = client.clone();
        async move { client.request(req).await.map_err(BoxError::from) }
    })
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("http://replica/").body(Empty::new()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_replica_is_hedged_to_a_fast_one() {
    let slow = TestServer::start().await;
    let fast = TestServer::start().await;
    slow.set_delay(Duration::from_secs(2));
    let mut svc = HedgeLayer::builder()
        .name("replicas")
        .delay(HedgeDelay::Fixed(50 * MS))
        .budget(Arc::new(
            RetryBudget::builder().min_per_sec(100).build().unwrap(),
        ))
        .classify(ServerErrorsAsFailures::new())
        .replay(HttpReplay::new())
        .build()
        .unwrap()
        .layer(router(vec![slow.uri("/"), fast.uri("/")]));

    for _ in 0..5 {
        let t0 = Instant::now();
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let took = t0.elapsed();
        assert!(
            took >= 50 * MS && took < 100 * MS,
            "answered by the hedge after 50 ms, took {took:?}"
        );
    }
    assert_eq!((slow.requests(), fast.requests()), (5, 5));
}

#[tokio::test(start_paused = true)]
async fn a_fast_503_does_not_beat_a_slower_200() {
    // Replica 1 answers 503 at 80 ms (a retryable failure: it fires the
    // next attempt at once); replica 2 answers 200.
    let failing = TestServer::start().await;
    let healthy = TestServer::start().await;
    failing.set_unavailable(None);
    failing.set_delay(80 * MS);
    healthy.set_delay(30 * MS);
    let mut svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(Duration::from_secs(1)))
        .budget(Arc::new(
            RetryBudget::builder().min_per_sec(100).build().unwrap(),
        ))
        .classify(ServerErrorsAsFailures::new())
        .replay(HttpReplay::new())
        .build()
        .unwrap()
        .layer(router(vec![failing.uri("/"), healthy.uri("/")]));
    let t0 = Instant::now();
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let took = t0.elapsed();
    assert!(
        took >= 110 * MS && took < 150 * MS,
        "503 at 80 ms, then 200 30 ms later: {took:?}"
    );
    assert_eq!((failing.requests(), healthy.requests()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_post_is_not_hedged() {
    let slow = TestServer::start().await;
    let fast = TestServer::start().await;
    slow.set_delay(200 * MS);
    let mut svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(20 * MS))
        .budget(Arc::new(
            RetryBudget::builder().min_per_sec(100).build().unwrap(),
        ))
        .classify(ServerErrorsAsFailures::new())
        .replay(HttpReplay::new())
        .build()
        .unwrap()
        .layer(router(vec![slow.uri("/"), fast.uri("/")]));
    let post = Request::post("http://replica/").body(Empty::new()).unwrap();
    let t0 = Instant::now();
    let res = svc.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(t0.elapsed() >= 200 * MS);
    assert_eq!((slow.requests(), fast.requests()), (1, 0));
}
