//! The retry layer in front of a real hyper-util client, talking to a real
//! HTTP/1 server over loopback: streaming bodies replayed byte for byte,
//! the idempotency rules, the replay cap, `Retry-After` and the `Attempt`
//! extension.
//!
//! Time is paused. Nothing but the retry layer's backoff arms a timer (see
//! `support`), so while a request is on the wire the clock stands still,
//! and during a backoff tokio jumps it straight to the end of the sleep: the
//! gap between two attempts, measured with `tokio::time::Instant`, is
//! exactly the delay the layer chose.

#![cfg(feature = "http")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::BoxStream;
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use steadfast::BoxError;
use steadfast::attempt::Attempt;
use steadfast::backoff::Backoff;
use steadfast::classify::ServerErrorsAsFailures;
use steadfast::http::{HttpReplay, Idempotent, ReplayBody};
use steadfast::retry::{Retry, RetryLayer};
use support::{Reply, TestServer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// A streaming request body: its chunks come one by one, its length is not
/// known in advance (so hyper sends it chunked). Boxed, so that a test can
/// feed it from a channel as well as from a list.
type Chunks = StreamBody<BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;

/// The body the client sends: a streaming body that can be replayed.
type ReqBody = ReplayBody<Chunks>;

type HttpClient = Client<HttpConnector, ReqBody>;
type ClientError = hyper_util::client::legacy::Error;

/// A short backoff: pushback, when there is one, is always longer.
const BACKOFF: Duration = Duration::from_millis(10);
const MAX_PUSHBACK: Duration = Duration::from_secs(10);

/// One attempt as the client below the retry layer saw it.
#[derive(Debug, Clone)]
struct Sent {
    /// The number of its `Attempt` extension.
    attempt: Option<u32>,
    sent: Instant,
    answered: Instant,
}

type Log = Arc<Mutex<Vec<Sent>>>;

/// The client for `server`, logging every attempt, behind the retry layer.
struct Harness<S> {
    server: TestServer,
    svc: S,
    log: Log,
}

/// The retry layer under test: HTTP classification and replay, a constant
/// 10 ms backoff, pushback honoured up to 10 s, the default 3 attempts.
fn retry_layer() -> RetryLayer<ServerErrorsAsFailures, HttpReplay> {
    RetryLayer::builder()
        .name("http_retry")
        .classify(ServerErrorsAsFailures::new())
        .replay(HttpReplay::new())
        .backoff(Backoff::constant(BACKOFF))
        .max_pushback(MAX_PUSHBACK)
        .build()
        .expect("a valid retry config")
}

/// A real client, wrapped in a service that logs each attempt (its
/// `Attempt` number and when it was sent and answered), wrapped in the
/// retry layer.
fn stack(
    client: HttpClient,
    log: Log,
) -> Retry<
    impl Service<
        Request<ReqBody>,
        Response = Response<Incoming>,
        Error = ClientError,
        Future = impl Send,
    > + Clone,
    ServerErrorsAsFailures,
    HttpReplay,
> {
    let logged = tower::service_fn(move |req: Request<ReqBody>| {
        let client = client.clone();
        let log = log.clone();
        async move {
            let attempt = req.extensions().get::<Attempt>().map(Attempt::number);
            let sent = Instant::now();
            let result = client.request(req).await;
            log.lock().unwrap().push(Sent {
                attempt,
                sent,
                answered: Instant::now(),
            });
            result
        }
    });
    retry_layer().layer(logged)
}

/// A recording server, answering `200 ok` unless scripted otherwise.
async fn harness()
-> Harness<impl Service<Request<ReqBody>, Response = Response<Incoming>, Error = ClientError>> {
    let server = TestServer::start().await;
    server.record();
    let log = Log::default();
    let svc = stack(support::client_for(), log.clone());
    Harness { server, svc, log }
}

impl<S> Harness<S>
where
    S: Service<Request<ReqBody>, Response = Response<Incoming>, Error = ClientError>,
{
    /// Sends `req` through the retry layer; the final status and body.
    async fn send(&mut self, req: Request<ReqBody>) -> (StatusCode, Bytes) {
        let res = self
            .svc
            .ready()
            .await
            .expect("the client is always ready")
            .call(req)
            .await
            .expect("no transport error");
        support::read(res).await
    }

    fn log(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }

    fn attempt_numbers(&self) -> Vec<Option<u32>> {
        self.log().iter().map(|s| s.attempt).collect()
    }

    /// Between the answer to the first attempt and the sending of the second.
    fn first_gap(&self) -> Duration {
        let log = self.log();
        assert_eq!(log.len(), 2, "two attempts: {log:?}");
        log[1].sent - log[0].answered
    }
}

/// `len` bytes of a pattern that differs per `seed` and per position, so a
/// chunk dropped, repeated or reordered shows.
fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8) ^ (i / 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A streaming body of these chunks.
fn streaming(chunks: &[Bytes]) -> Chunks {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
        chunks.iter().map(|c| Ok(Frame::data(c.clone()))).collect();
    StreamBody::new(futures::stream::iter(frames).boxed())
}

fn concat(chunks: &[Bytes]) -> Bytes {
    chunks.concat().into()
}

fn post(server: &TestServer, body: ReqBody, idempotency_key: Option<&str>) -> Request<ReqBody> {
    let mut req = Request::post(server.uri("/charge"));
    if let Some(key) = idempotency_key {
        req = req.header("idempotency-key", key);
    }
    req.body(body).expect("a valid request")
}

fn get(server: &TestServer) -> Request<ReqBody> {
    Request::get(server.uri("/"))
        .body(ReplayBody::new(streaming(&[])))
        .expect("a valid request")
}

#[tokio::test(start_paused = true)]
async fn a_streaming_post_with_an_idempotency_key_is_replayed_byte_for_byte() {
    let mut h = harness().await;
    h.server.fail_first(2, Reply::unavailable());
    // ~10 KiB in three distinct chunks, well under the 64 KiB replay cap.
    let chunks = [pattern(1, 3000), pattern(2, 4000), pattern(3, 3240)];
    let body = ReplayBody::new(streaming(&chunks));
    let req = post(&h.server, body, Some("order-42"));

    let (status, body) = h.send(req).await;

    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(h.server.requests(), 3);
    let expected = concat(&chunks);
    assert_eq!(expected.len(), 10_240);
    let received = h.server.received();
    assert_eq!(received.len(), 3);
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r.method, Method::POST, "attempt {}", i + 1);
        assert_eq!(r.uri.path(), "/charge", "attempt {}", i + 1);
        assert_eq!(
            r.headers["idempotency-key"],
            "order-42",
            "attempt {}",
            i + 1
        );
        // Streamed, not sent as one known-length buffer.
        assert_eq!(
            r.headers["transfer-encoding"],
            "chunked",
            "attempt {}",
            i + 1
        );
        assert_eq!(r.body.len(), expected.len(), "attempt {}", i + 1);
        assert!(r.body == expected, "attempt {}: body differs", i + 1);
    }
    assert_eq!(h.attempt_numbers(), [Some(1), Some(2), Some(3)]);
}

#[tokio::test(start_paused = true)]
async fn a_post_without_an_idempotency_key_is_not_retried() {
    let mut h = harness().await;
    h.server.fail_first(1, Reply::unavailable());
    let chunks = [pattern(4, 500), pattern(5, 700)];
    let req = post(&h.server, ReplayBody::new(streaming(&chunks)), None);

    let (status, _) = h.send(req).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.server.requests(), 1);
    assert_eq!(h.server.bodies(), [concat(&chunks)]);
    assert_eq!(h.attempt_numbers(), [Some(1)]);
}

#[tokio::test(start_paused = true)]
async fn a_body_past_the_replay_cap_is_sent_whole_once_and_not_retried() {
    let mut h = harness().await;
    h.server.fail_first(1, Reply::unavailable());
    // 4 KiB in four chunks; the cap (1 KiB) is passed on the second.
    let chunks = [
        pattern(6, 1024),
        pattern(7, 1024),
        pattern(8, 1024),
        pattern(9, 1024),
    ];
    let body = ReplayBody::with_cap(streaming(&chunks), 1024);
    let req = post(&h.server, body, Some("upload-7"));

    let (status, _) = h.send(req).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.server.requests(), 1);
    let bodies = h.server.bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].len(), 4096);
    assert!(bodies[0] == concat(&chunks), "the body arrived altered");
    assert_eq!(h.attempt_numbers(), [Some(1)]);
}

/// A `GET` answered `503` with `Retry-After: value`, then `200`: the gap
/// between the two attempts.
async fn gap_after_retry_after(value: String) -> Duration {
    let mut h = harness().await;
    h.server
        .fail_first(1, Reply::unavailable_retry_after(value));
    let (status, _) = h.send(get(&h.server)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.server.requests(), 2);
    h.first_gap()
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_delays_the_retry() {
    // max(10 ms backoff, 2 s pushback).
    assert_eq!(
        gap_after_retry_after("2".into()).await,
        Duration::from_secs(2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_is_capped_at_max_pushback() {
    assert_eq!(gap_after_retry_after("3600".into()).await, MAX_PUSHBACK);
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_delays_the_retry() {
    // The date is wall-clock time to the second: 5 s from now, truncated,
    // is 4 to 5 s away when the answer is read (3 s allows for a slow run).
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
    let gap = gap_after_retry_after(date).await;
    assert!(
        (Duration::from_secs(3)..=Duration::from_secs(5)).contains(&gap),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_garbage_retry_after_falls_back_to_the_backoff() {
    assert_eq!(gap_after_retry_after("soon".into()).await, BACKOFF);
}

#[tokio::test(start_paused = true)]
async fn without_retry_after_the_backoff_applies() {
    let mut h = harness().await;
    h.server.fail_first(1, Reply::unavailable());
    let (status, _) = h.send(get(&h.server)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.first_gap(), BACKOFF);
}

#[tokio::test(start_paused = true)]
async fn a_get_marked_not_idempotent_is_not_retried() {
    let mut h = harness().await;
    h.server.fail_first(1, Reply::unavailable());
    let mut req = get(&h.server);
    req.extensions_mut().insert(Idempotent(false));

    let (status, _) = h.send(req).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.server.requests(), 1);

    // The same GET without the override is retried.
    h.server.fail_first(1, Reply::unavailable());
    let (status, _) = h.send(get(&h.server)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.server.requests(), 3);
}

#[tokio::test(start_paused = true)]
async fn each_attempt_carries_its_number() {
    let mut h = harness().await;
    h.server.fail_first(2, Reply::unavailable());

    let (status, _) = h.send(get(&h.server)).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.server.requests(), 3);
    assert_eq!(h.attempt_numbers(), [Some(1), Some(2), Some(3)]);
    // Each retry waited its backoff, after the previous answer.
    let log = h.log();
    for pair in log.windows(2) {
        assert_eq!(pair[1].sent - pair[0].answered, BACKOFF);
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_fails_every_time_gets_the_last_answer() {
    let mut h = harness().await;
    h.server.set_unavailable(Some("1"));
    let chunks = [pattern(10, 2000), pattern(11, 2000)];
    let req = post(&h.server, ReplayBody::new(streaming(&chunks)), Some("k"));

    let (status, _) = h.send(req).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The default three attempts, one second apart (the pushback).
    assert_eq!(h.server.requests(), 3);
    assert_eq!(h.server.bodies(), vec![concat(&chunks); 3]);
    let log = h.log();
    for pair in log.windows(2) {
        assert_eq!(pair[1].sent - pair[0].answered, Duration::from_secs(1));
    }
}

#[tokio::test(start_paused = true)]
/// A server that answers 503 before it has read the upload: the body is
/// still held by the first attempt, so the request is not retried and the
/// caller gets the server's answer, not an error of the layer's own.
async fn an_early_answer_during_the_upload_is_returned_not_retried() {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU32::new(0));
    type Bodies = Arc<Mutex<Vec<(u32, Result<Bytes, String>)>>>;
    let bodies: Bodies = Arc::default();
    {
        let count = count.clone();
        let bodies = bodies.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let count = count.clone();
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        let bodies = bodies.clone();
                        async move {
                            let status = if n == 1 { 503 } else { 200 };
                            let body = req.into_body();
                            let reader = async move {
                                let r = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .map_err(|e| e.to_string());
                                bodies.lock().unwrap().push((n, r));
                            };
                            if n == 1 {
                                tokio::spawn(reader); // answer first, read later
                            } else {
                                reader.await;
                            }
                            let mut res =
                                Response::new(http_body_util::Full::new(Bytes::from_static(b"x")));
                            *res.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
    let log = Log::default();
    let mut svc = stack(support::client_for(), log.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
    tx.send(Ok(Frame::data(pattern(1, 100)))).unwrap();
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed());
    let req = Request::post(format!("http://{addr}/"))
        .header("idempotency-key", "k")
        .body(ReplayBody::new(body))
        .unwrap();
    let feeder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = tx.send(Ok(Frame::data(pattern(2, 100))));
    });
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req)
        .await
        .expect("the server's answer");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "no retry while the upload runs"
    );
    assert_eq!(log.lock().unwrap().len(), 1);
    feeder.await.unwrap();
    // The server still gets the whole upload of the one attempt.
    for _ in 0..100 {
        if !bodies.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].1.as_ref().map(|b| b.len()), Ok(200));
}
