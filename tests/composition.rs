//! The promises of each layer, kept by the stacks users build: retry over
//! hedge over a pool with one shared budget, `presets::ReplicaStack`,
//! `presets::HttpClient` and the README's quick start, over real hyper
//! servers on loopback.
//!
//! - extra attempts per original request stay under the budget's ratio
//!   (plus the floor's share), at ratios 0.1, 0.2 and 0.6, whether the
//!   fleet fails, is slow, or both;
//! - attempts per request stay under the configured maximum, retries and
//!   hedges counted together;
//! - every retry and hedge goes to a replica the request has not tried
//!   while one exists, and the attempt numbers the replicas see are 1, 2,
//!   3 in order;
//! - the caller gets the first success, or else the last real failure.
//!
//! Each replica's service below the pool points the request at its server
//! and logs `(replica, attempt number)`, so a test knows where every
//! attempt went. Time is paused (see `support`).

#![cfg(feature = "http")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use steadfast::attempt::Attempt;
use steadfast::backoff::Backoff;
use steadfast::budget::RetryBudget;
use steadfast::classify::ServerErrorsAsFailures;
use steadfast::hedge::{HedgeDelay, HedgeLayer};
use steadfast::http::HttpReplay;
use steadfast::pool::{OutlierDetection, Pool, Replica};
use steadfast::presets::{HttpClient, ReplicaStack};
use steadfast::retry::RetryLayer;
use steadfast::{BoxError, ServiceBuilderExt};
use support::{Reply, TestServer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Body = Empty<Bytes>;

const MS: Duration = Duration::from_millis(1);
/// How long a slow replica takes to answer.
const SLOW: Duration = Duration::from_millis(100);
const RATIOS: [f64; 3] = [0.1, 0.2, 0.6];
/// Original requests per ratio run.
const REQUESTS: u32 = 300;

/// Where attempts went: `(replica, attempt number)`, in the order sent.
type Log = Arc<Mutex<Vec<(&'static str, u32)>>>;

/// How the replicas of a fleet behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fleet {
    /// Every replica answers a retryable 5xx at once (a 503, a 502, a 504:
    /// the status tells which replica answered).
    Failing,
    /// Every replica answers 200 after [`SLOW`].
    Slow,
    /// One answers 200 at once, one 503, one 200 after [`SLOW`].
    Mixed,
}

const FLEETS: [Fleet; 3] = [Fleet::Failing, Fleet::Slow, Fleet::Mixed];

/// The status each replica of the failing fleet answers.
fn failure_of(replica: &str) -> StatusCode {
    match replica {
        "a" => StatusCode::SERVICE_UNAVAILABLE,
        "b" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// Three real servers and the log of attempts that reached them.
struct Servers {
    servers: Vec<(&'static str, TestServer)>,
    log: Log,
}

impl Servers {
    async fn start(fleet: Fleet) -> Self {
        let mut servers = Vec::new();
        for name in ["a", "b", "c"] {
            let server = TestServer::start().await;
            match (fleet, name) {
                (Fleet::Failing, _) => server.set_reply(Reply::status(failure_of(name))),
                (Fleet::Slow, _) | (Fleet::Mixed, "c") => server.set_delay(SLOW),
                (Fleet::Mixed, "b") => server.set_reply(Reply::unavailable()),
                (Fleet::Mixed, _) => {}
            }
            servers.push((name, server));
        }
        Self {
            servers,
            log: Log::default(),
        }
    }

    /// Each replica's service: to its server, logging every attempt.
    fn replicas(&self) -> Vec<(&'static str, Replica<Upstream>)> {
        let client = support::client();
        self.servers
            .iter()
            .map(|(name, server)| {
                let upstream = Upstream {
                    name,
                    uri: server.uri("/"),
                    client: client.clone(),
                    log: self.log.clone(),
                };
                (*name, Replica::new(upstream))
            })
            .collect()
    }

    /// Attempts that reached the servers.
    fn requests(&self) -> u64 {
        self.servers.iter().map(|(_, s)| s.requests()).sum()
    }

    /// The log of the attempts sent since the last call.
    fn take_log(&self) -> Vec<(&'static str, u32)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A replica's service: points the request at its server and logs it.
#[derive(Clone)]
struct Upstream {
    name: &'static str,
    uri: http::Uri,
    client: support::HttpClient,
    log: Log,
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The presets mark only repeats: no mark is attempt 1.
        let number = req.extensions().get::<Attempt>().map_or(1, Attempt::number);
        self.log.lock().unwrap().push((self.name, number));
        *req.uri_mut() = self.uri.clone();
        self.client.request(req)
    }
}

fn get() -> Request<Body> {
    Request::get("http://upstream/").body(Empty::new()).unwrap()
}

/// A budget of `ratio`, with no floor unless `min_per_sec` says so.
fn budget(ratio: f64, min_per_sec: u32) -> Arc<RetryBudget> {
    Arc::new(
        RetryBudget::builder()
            .ratio(ratio)
            .min_per_sec(min_per_sec)
            .build()
            .unwrap(),
    )
}

/// Sends `n` requests one after another; the final statuses (an error as
/// `None`).
async fn drive<S>(svc: &mut S, n: u32) -> Vec<Option<StatusCode>>
where
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: std::fmt::Debug,
{
    let mut statuses = Vec::new();
    for _ in 0..n {
        let status = match svc.ready().await {
            Ok(ready) => match ready.call(get()).await {
                Ok(res) => Some(support::read(res).await.0),
                Err(_) => None,
            },
            Err(_) => None,
        };
        statuses.push(status);
    }
    statuses
}

/// Retry over hedge over a pool, one budget, written out as a user would:
/// at most 3 attempts in all, a hedge after 10 ms, outlier detection off so
/// that every replica stays routable.
fn hand_built(
    servers: &Servers,
    budget: Arc<RetryBudget>,
) -> impl Service<Request<Body>, Response = Response<Incoming>, Error = BoxError> + use<> {
    let pool = Pool::builder()
        .name("composition")
        .classify(ServerErrorsAsFailures::new())
        .outlier(
            OutlierDetection::default()
                .consecutive_failures(None)
                .failure_percentage(None)
                .success_rate_stdev(None)
                .latency_factor(None),
        )
        .seed(7)
        .build(servers.replicas())
        .unwrap();
    let hedge = HedgeLayer::builder()
        .name("composition")
        .classify(ServerErrorsAsFailures::new())
        .replay(HttpReplay::new())
        .delay(HedgeDelay::Fixed(10 * MS))
        .budget(budget.clone())
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .name("composition")
        .classify(ServerErrorsAsFailures::new())
        .replay(HttpReplay::new())
        .max_attempts(3)
        .backoff(Backoff::constant(MS))
        .budget(budget)
        .build()
        .unwrap();
    retry.layer(hedge.layer(pool))
}

/// The replica stack at its defaults, with `budget`.
fn replica_stack(
    servers: &Servers,
    budget: Arc<RetryBudget>,
) -> impl Service<Request<Body>, Response = Response<Incoming>, Error = BoxError> + use<> {
    ReplicaStack::new("composition")
        .budget(budget)
        .build(servers.replicas())
        .unwrap()
        .service
}

/// The replica stack hedging after 10 ms: its adaptive delay rightly sends
/// no hedge to a fleet whose latency is steady, so this is how a fleet that
/// is slow throughout wants a hedge for every call.
fn replica_stack_hedged_early(
    servers: &Servers,
    budget: Arc<RetryBudget>,
) -> impl Service<Request<Body>, Response = Response<Incoming>, Error = BoxError> + use<> {
    ReplicaStack::new("composition")
        .budget(budget)
        .hedge(HedgeDelay::Fixed(10 * MS))
        .build(servers.replicas())
        .unwrap()
        .service
}

/// Attempts per original request through `stack` at each ratio and fleet
/// (no floor): at most `1 + ratio`.
async fn extra_attempts_stay_under_the_ratio<S, F>(label: &str, stack: F)
where
    F: Fn(&Servers, Arc<RetryBudget>) -> S,
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: std::fmt::Debug,
{
    for fleet in FLEETS {
        for ratio in RATIOS {
            let servers = Servers::start(fleet).await;
            let mut svc = stack(&servers, budget(ratio, 0));
            drive(&mut svc, REQUESTS).await;
            let per_request = servers.requests() as f64 / f64::from(REQUESTS);
            eprintln!(
                "{label}: {fleet:?} fleet, ratio {ratio}: {per_request:.3} attempts per request"
            );
            assert!(
                per_request <= 1.0 + ratio + 1e-9,
                "{label}, {fleet:?}, ratio {ratio}: {per_request:.3} attempts per request"
            );
            // The budget is spent, not left idle: the fleets that fail or
            // are slow get close to their ratio of extra attempts.
            if fleet != Fleet::Mixed {
                assert!(
                    per_request >= 1.0 + ratio * 0.8,
                    "{label}, {fleet:?}, ratio {ratio}: {per_request:.3} attempts per request"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_over_hedge_over_a_pool_stays_under_the_shared_ratio() {
    extra_attempts_stay_under_the_ratio("retry/hedge/pool", hand_built).await;
}

#[tokio::test(start_paused = true)]
async fn the_replica_stack_stays_under_its_ratio() {
    extra_attempts_stay_under_the_ratio("ReplicaStack", replica_stack_hedged_early).await;
}

#[tokio::test(start_paused = true)]
async fn the_floor_adds_at_most_its_share() {
    // The default budget: ratio 0.2 and 10 extra attempts a second, over
    // the run's paused time (each deposit counts for the 10 s ttl).
    let servers = Servers::start(Fleet::Failing).await;
    let mut svc = replica_stack(&servers, budget(0.2, 10));
    let started = tokio::time::Instant::now();
    drive(&mut svc, REQUESTS).await;
    let floor = 10.0 * (started.elapsed().as_secs_f64() + 10.0);
    let extra = servers.requests() as f64 - f64::from(REQUESTS);
    assert!(
        extra <= 0.2 * f64::from(REQUESTS) + floor,
        "{extra} extra attempts, floor {floor}"
    );
}

/// Sends requests through `svc` one at a time and checks, for each, the
/// attempts the replicas saw.
async fn check_each_request<S>(servers: &Servers, svc: &mut S, n: u32, max_attempts: usize)
where
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: std::fmt::Debug,
{
    for i in 0..n {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        let status = res.status();
        let log = servers.take_log();
        let numbers: Vec<u32> = log.iter().map(|&(_, n)| n).collect();
        let expected: Vec<u32> = (1..=log.len() as u32).collect();
        assert_eq!(numbers, expected, "request {i}: numbers in order: {log:?}");
        assert!(
            log.len() <= max_attempts,
            "request {i}: {} attempts, at most {max_attempts}: {log:?}",
            log.len()
        );
        let mut replicas: Vec<&str> = log.iter().map(|&(r, _)| r).collect();
        replicas.sort_unstable();
        replicas.dedup();
        assert_eq!(
            replicas.len(),
            log.len(),
            "request {i}: each attempt to a replica not yet tried: {log:?}"
        );
        if status.is_server_error() {
            // Every attempt failed: the caller has the last one's answer.
            let &(last, _) = log.last().unwrap();
            assert_eq!(
                status,
                failure_of(last),
                "request {i}: the last failure: {log:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_fleet_gets_three_attempts_each_to_a_new_replica_numbered_in_order() {
    let servers = Servers::start(Fleet::Failing).await;
    let mut svc = hand_built(&servers, budget(100.0, 0));
    check_each_request(&servers, &mut svc, 20, 3).await;
    // Every request used its three attempts: attempt 1, an immediate hedge
    // (the failure is retryable), then the retry, which the hedge under it
    // may not hedge again (the cap of 3 covers both layers).
    assert_eq!(servers.requests(), 60);
}

#[tokio::test(start_paused = true)]
async fn the_replica_stack_sends_each_attempt_to_a_new_replica_within_its_cap() {
    let servers = Servers::start(Fleet::Failing).await;
    let mut svc = replica_stack(&servers, budget(100.0, 0));
    // Before outlier detection ejects anyone (5 failures in a row each).
    check_each_request(&servers, &mut svc, 4, 3).await;
    assert_eq!(
        servers.requests(),
        12,
        "three attempts per request, not six"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_failures_are_hedged_and_retried_within_one_cap() {
    // Every replica fails, slowly: the hedge fires after 10 ms, then both
    // attempts fail and the retry sends the third, unhedged.
    let servers = Servers::start(Fleet::Failing).await;
    for (_, server) in &servers.servers {
        server.set_delay(SLOW);
    }
    let mut svc = hand_built(&servers, budget(100.0, 0));
    check_each_request(&servers, &mut svc, 10, 3).await;
    assert_eq!(servers.requests(), 30);
}

#[tokio::test(start_paused = true)]
async fn the_caller_gets_the_first_success() {
    // One healthy replica among three: with three attempts, each to a new
    // replica, every request succeeds, whatever the others do.
    let servers = Servers::start(Fleet::Mixed).await;
    let mut svc = hand_built(&servers, budget(100.0, 0));
    let statuses = drive(&mut svc, 50).await;
    assert!(
        statuses.iter().all(|s| *s == Some(StatusCode::OK)),
        "{statuses:?}"
    );
    let servers = Servers::start(Fleet::Mixed).await;
    let mut svc = replica_stack(&servers, budget(100.0, 0));
    let statuses = drive(&mut svc, 50).await;
    assert!(
        statuses.iter().all(|s| *s == Some(StatusCode::OK)),
        "{statuses:?}"
    );
}

/// One server that fails a third of the first attempts, scripted.
async fn flaky_server(n: u32) -> TestServer {
    let server = TestServer::start().await;
    server.script((0..n * 3).map(|i| {
        if i % 3 == 0 {
            Reply::unavailable()
        } else {
            Reply::Ok
        }
    }));
    server
}

#[tokio::test(start_paused = true)]
async fn the_http_client_preset_stays_under_its_ratio_and_cap() {
    for ratio in RATIOS {
        let server = flaky_server(REQUESTS).await;
        let layer = HttpClient::new("composition")
            .budget(budget(ratio, 0))
            .build()
            .unwrap();
        let uri = server.uri("/");
        let client = support::client();
        let mut svc = layer.layer(tower::service_fn(move |mut req: Request<Body>| {
            *req.uri_mut() = uri.clone();
            client.request(req)
        }));
        let statuses = drive(&mut svc, REQUESTS).await;
        let per_request = server.requests() as f64 / f64::from(REQUESTS);
        eprintln!("HttpClient: flaky server, ratio {ratio}: {per_request:.3} attempts per request");
        assert!(
            per_request <= 1.0 + ratio + 1e-9,
            "ratio {ratio}: {per_request:.3}"
        );
        assert!(per_request > 1.0, "ratio {ratio}: retries happen");
        assert!(
            statuses.iter().all(Option::is_some),
            "no error of the stack's own"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_quick_start_stack_keeps_its_cap_and_ratio() {
    // The README's quick start (tower's `full` features are on in this
    // crate's tests, as in most applications), over a server that always
    // fails: its budget has the default floor of 10 a second.
    use steadfast::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};

    // tower's own `retry` feature is on, and with it `ServiceBuilder::retry`.
    let _ = std::mem::size_of::<tower::retry::budget::TpsBudget>();

    let server = TestServer::start_with(Reply::unavailable()).await;
    let budget = Arc::new(RetryBudget::builder().name("payments").build().unwrap());
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .classify(ServerErrorsAsFailures::new())
        .failure_rate(0.5)
        .window(SlidingWindow::count(100))
        .min_calls(20)
        .open_backoff(Backoff::exponential(
            5 * Duration::from_secs(1),
            Duration::from_secs(60),
        ))
        .build()
        .unwrap();
    let uri = server.uri("/");
    let client = support::client();
    let mut payments = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .with_retry(
            RetryLayer::builder()
                .classify(ServerErrorsAsFailures::new())
                .replay(HttpReplay::new())
                .budget(budget)
                .deadline(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .with_circuit_breaker(breaker)
        .timeout(Duration::from_secs(1))
        .service(tower::service_fn(move |mut req: Request<Body>| {
            *req.uri_mut() = uri.clone();
            client.request(req)
        }));
    let started = tokio::time::Instant::now();
    let mut attempts = Vec::new();
    // Six requests: fewer calls than the breaker's minimum, so it stays closed.
    for _ in 0..6 {
        let before = server.requests();
        let res = payments.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "the last real failure"
        );
        attempts.push(server.requests() - before);
    }
    assert!(attempts.iter().all(|&n| n <= 3), "{attempts:?}");
    let extra = attempts.iter().map(|n| n - 1).sum::<u64>() as f64;
    let floor = 10.0 * (started.elapsed().as_secs_f64() + 10.0);
    assert!(extra <= 0.2 * 6.0 + floor, "{extra} extra attempts");
    assert!(extra > 0.0, "the floor lets a quiet client retry");
}

/// A request type of the user's own, carrying its attempt number.
#[derive(Debug, Clone)]
struct Job {
    attempt: u32,
}

/// How a user copies and marks a [`Job`] (see `steadfast::attempt`).
#[derive(Debug, Clone, Copy)]
struct JobReplay;

impl steadfast::attempt::Replay<Job> for JobReplay {
    fn replay(&self, job: &Job) -> Option<Job> {
        Some(job.clone())
    }

    fn mark(&self, job: &mut Job, number: u32) {
        job.attempt = number;
    }
}

/// A pool of in-process replicas that all fail, for requests of type
/// [`Job`]; each replica logs `(replica, job.attempt)`.
fn job_pool(
    log: &Log,
) -> Pool<
    &'static str,
    impl Service<Job, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static + use<>,
> {
    let replica = |name: &'static str| {
        let log = log.clone();
        Replica::new(tower::service_fn(move |job: Job| {
            log.lock().unwrap().push((name, job.attempt));
            async move { Err::<(), BoxError>("down".into()) }
        }))
    };
    Pool::builder()
        .name("jobs")
        .outlier(
            OutlierDetection::default()
                .consecutive_failures(None)
                .failure_percentage(None),
        )
        .seed(3)
        .build([
            ("a", replica("a")),
            ("b", replica("b")),
            ("c", replica("c")),
        ])
        .unwrap()
}

fn job_hedge(
    budget: &Arc<RetryBudget>,
) -> HedgeLayer<steadfast::classify::ErrorsAsFailures, JobReplay> {
    HedgeLayer::builder()
        .name("jobs")
        .replay(JobReplay)
        .delay(HedgeDelay::Fixed(10 * MS))
        .budget(budget.clone())
        .build()
        .unwrap()
}

fn job_retry(
    budget: &Arc<RetryBudget>,
) -> RetryLayer<steadfast::classify::ErrorsAsFailures, JobReplay> {
    RetryLayer::builder()
        .name("jobs")
        .replay(JobReplay)
        .max_attempts(3)
        .backoff(Backoff::constant(MS))
        .budget(budget.clone())
        .build()
        .unwrap()
}

/// Retry over hedge over [`job_pool`], one budget.
fn job_stack(
    log: &Log,
) -> impl Service<Job, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static + use<>
{
    let budget = budget(100.0, 0);
    job_retry(&budget).layer(job_hedge(&budget).layer(job_pool(log)))
}

#[tokio::test(start_paused = true)]
async fn any_request_type_gets_the_same_promises() {
    let log = Log::default();
    let mut svc = job_stack(&log);
    for i in 0..10 {
        let result = svc.ready().await.unwrap().call(Job { attempt: 0 }).await;
        assert!(result.is_err(), "every replica fails");
        let seen = std::mem::take(&mut *log.lock().unwrap());
        let numbers: Vec<u32> = seen.iter().map(|&(_, n)| n).collect();
        assert_eq!(numbers, [1, 2, 3], "request {i}: {seen:?}");
        let mut replicas: Vec<&str> = seen.iter().map(|&(r, _)| r).collect();
        replicas.sort_unstable();
        assert_eq!(replicas, ["a", "b", "c"], "request {i}: {seen:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_buffer_belongs_above_the_retry() {
    // A `Buffer` calls the service below it from a task of its own, so it
    // cannot pass the attempt record on. Above the retry, it harms nothing:
    // three attempts, numbered in order, each to a new replica.
    let log = Log::default();
    let mut svc = tower::buffer::Buffer::new(job_stack(&log), 16);
    for i in 0..5 {
        let _ = svc.ready().await.unwrap().call(Job { attempt: 0 }).await;
        let seen = std::mem::take(&mut *log.lock().unwrap());
        let numbers: Vec<u32> = seen.iter().map(|&(_, n)| n).collect();
        assert_eq!(numbers, [1, 2, 3], "request {i}: {seen:?}");
    }

    // Between the retry and the hedge, the hedge below it sees no record:
    // it starts a count of its own for each of the retry's attempts
    // (numbers restart at 1), and the shared cap of 3 is lost. Hence the
    // docs: keep such a hop above the retry, or below the pool.
    let log = Log::default();
    let budget = budget(100.0, 0);
    let hedged = tower::buffer::Buffer::new(job_hedge(&budget).layer(job_pool(&log)), 16);
    let mut svc = job_retry(&budget).layer(hedged);
    let _ = svc.ready().await.unwrap().call(Job { attempt: 0 }).await;
    let seen = std::mem::take(&mut *log.lock().unwrap());
    let numbers: Vec<u32> = seen.iter().map(|&(_, n)| n).collect();
    assert_eq!(numbers, [1, 2, 1, 2, 1, 2], "{seen:?}");
}
