//! The replica pool end to end: real HTTP/1 servers on loopback, one real
//! hyper-util client per replica, the pool (and, where a scenario needs it,
//! the retry layer) in front.
//!
//! Each replica's service is an [`Upstream`]: it points the request at its
//! server and counts the calls it gets, so a test knows which replica the
//! pool picked for every attempt (including attempts that never reached a
//! server: a refused connection).
//!
//! Time is paused. The servers arm no timer unless given a delay, and the
//! clients arm none (see `support`), so while a request is on the wire the
//! clock stands still; the tests move it past ejections, pushbacks and
//! failback hysteresis with `tokio::time::advance`, or with a `sleep` where
//! a timer of the pool's own (a health check) must fire on the way.
//!
//! Some tests pin bugs found here and since fixed: a replica re-ejected
//! forever by the latency rule, a pushback that also inflated the load
//! estimate, retries that ignored an untried standby, and a re-enabled
//! replica that waited out the failback time in its own tier.

#![cfg(feature = "http")]

mod support;

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::join_all;
use http::uri::{Authority, PathAndQuery};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, Uri};
use steadfast::BoxError;
use steadfast::backoff::Backoff;
use steadfast::budget::RetryBudget;
use steadfast::classify::ServerErrorsAsFailures;
use steadfast::health::{HealthChecks, HttpCheck, TcpCheck};
use steadfast::http::HttpReplay;
use steadfast::pool::{
    Builder, Health, OutlierDetection, Pool, PoolHandle, Replica, ReplicaSnapshot, Why,
};
use steadfast::retry::{Retry, RetryLayer};
use support::{HttpClient, Reply, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::discover::Change;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const SEED: u64 = 0x5eed_f00d;

type Body = Empty<Bytes>;
type HttpPool = Pool<&'static str, Upstream, ServerErrorsAsFailures>;
type Stack = Retry<HttpPool, ServerErrorsAsFailures, HttpReplay>;
type Outcome = Result<StatusCode, String>;

/// One replica's service: a clone of the shared hyper-util client that
/// sends every request to this replica's address, counting the calls.
#[derive(Debug, Clone)]
struct Upstream {
    client: HttpClient,
    authority: Authority,
    calls: Arc<AtomicU64>,
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready: it queues on its own pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("a valid URI");
        self.client.request(req)
    }
}

/// A replica: its server (which a test may stop and start again on the
/// same port) and the count of calls the pool sent it.
struct Node {
    id: &'static str,
    addr: SocketAddr,
    server: Option<TestServer>,
    calls: Arc<AtomicU64>,
}

impl Node {
    async fn start(id: &'static str) -> Self {
        let server = TestServer::start().await;
        Self {
            id,
            addr: server.addr(),
            server: Some(server),
            calls: Arc::default(),
        }
    }

    fn upstream(&self, client: &HttpClient) -> Upstream {
        Upstream {
            client: client.clone(),
            authority: self.addr.to_string().parse().expect("an authority"),
            calls: self.calls.clone(),
        }
    }

    /// A replica in tier 0 over this node.
    fn replica(&self, client: &HttpClient) -> (&'static str, Replica<Upstream>) {
        (self.id, Replica::new(self.upstream(client)))
    }

    /// Calls the pool sent this replica (attempts, reached or not).
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("the server is running")
    }

    /// Stops the server: its listener is closed (new connections are
    /// refused) and its connections are closed.
    async fn kill(&mut self) {
        self.server
            .take()
            .expect("the server is running")
            .shutdown()
            .await;
        settle().await;
    }

    /// Starts a new server on the old address.
    async fn restart(&mut self) {
        assert!(self.server.is_none(), "{} is still running", self.id);
        self.server = Some(TestServer::start_at(self.addr).await);
    }
}

/// Lets every task that has work finish it (connections closing, the
/// discovery task applying a change): time is paused, so the 1 ms sleep
/// ends only once the runtime is otherwise idle.
async fn settle() {
    tokio::time::sleep(MS).await;
}

/// The pool's builder as every test starts from it: HTTP classification,
/// seeded random choices.
fn builder() -> Builder<ServerErrorsAsFailures> {
    Pool::builder()
        .name("http_pool")
        .classify(ServerErrorsAsFailures::new())
        .seed(SEED)
}

fn build(
    builder: Builder<ServerErrorsAsFailures>,
    replicas: impl IntoIterator<Item = (&'static str, Replica<Upstream>)>,
) -> HttpPool {
    builder.build(replicas).expect("a valid pool")
}

/// The retry layer over the pool: 3 attempts, 1 ms apart, a budget with
/// plenty of room, and a server's pushback not waited for (it concerns
/// the replica that sent it, and the retry goes to another).
fn with_retry(pool: HttpPool) -> Stack {
    RetryLayer::builder()
        .name("http_pool")
        .classify(ServerErrorsAsFailures::new())
        .replay(HttpReplay::new())
        .max_attempts(3)
        .backoff(Backoff::constant(MS))
        .max_pushback(Duration::ZERO)
        .budget(Arc::new(
            RetryBudget::builder()
                .ratio(1.0)
                .min_per_sec(1_000)
                .build()
                .expect("a valid budget"),
        ))
        .build()
        .expect("a valid retry layer")
        .layer(pool)
}

fn get(path: &str) -> Request<Body> {
    Request::get(format!("http://pool{path}"))
        .body(Empty::new())
        .expect("a valid request")
}

/// Sends one `GET /` and reads the answer to the end.
async fn send<S>(svc: &mut S) -> Outcome
where
    S: Service<Request<Body>, Response = Response<Incoming>, Error = BoxError>,
{
    let res = svc
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call(get("/"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(support::read(res).await.0)
}

/// `n` requests, one after another; the outcomes that were not `200`.
async fn sequential<S>(svc: &mut S, n: usize) -> Vec<Outcome>
where
    S: Service<Request<Body>, Response = Response<Incoming>, Error = BoxError>,
{
    let mut bad = Vec::new();
    for _ in 0..n {
        let outcome = send(svc).await;
        if outcome != Ok(StatusCode::OK) {
            bad.push(outcome);
        }
    }
    bad
}

/// `workers` clients of `svc`, each sending `each` requests one after
/// another, all at once; the outcomes that were not `200`.
async fn concurrent<S>(svc: &S, workers: usize, each: usize) -> Vec<Outcome>
where
    S: Service<Request<Body>, Response = Response<Incoming>, Error = BoxError> + Clone,
{
    let runs = (0..workers).map(|_| {
        let mut svc = svc.clone();
        async move { sequential(&mut svc, each).await }
    });
    join_all(runs).await.into_iter().flatten().collect()
}

fn snapshot(
    handle: &PoolHandle<&'static str, Upstream>,
    id: &str,
) -> ReplicaSnapshot<&'static str> {
    handle
        .snapshot()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("replica {id} is not in the pool"))
}

fn health(handle: &PoolHandle<&'static str, Upstream>, id: &str) -> Health {
    snapshot(handle, id).health
}

fn ejected_until(handle: &PoolHandle<&'static str, Upstream>, id: &str) -> Option<Instant> {
    match health(handle, id) {
        Health::Ejected { until } => Some(until),
        _ => None,
    }
}

/// Moves paused time forward to `at` (which must not be past).
async fn advance_to(at: Instant) {
    let now = Instant::now();
    assert!(at >= now, "{at:?} is in the past ({now:?})");
    tokio::time::advance(at - now).await;
}

/// Sleeps (paused time: timers on the way fire in order) in steps of
/// `step` until `done` holds, at most `limit`; how long it took.
async fn sleep_until_true(
    step: Duration,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "still not done after {limit:?}");
        tokio::time::sleep(step).await;
    }
    start.elapsed()
}

// --- 1. A replica dies mid-load --------------------------------------------

/// Steady load as time passes: `burst` requests one after another, then
/// `every` of quiet, until `done` holds (checked before each request) or
/// `limit` has passed. The outcomes that were not `200`, and whether
/// `done` came.
async fn drive<S>(
    svc: &mut S,
    every: Duration,
    burst: usize,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> (Vec<Outcome>, bool)
where
    S: Service<Request<Body>, Response = Response<Incoming>, Error = BoxError>,
{
    let start = Instant::now();
    let mut bad = Vec::new();
    loop {
        for _ in 0..burst {
            if done() {
                return (bad, true);
            }
            let outcome = send(svc).await;
            if outcome != Ok(StatusCode::OK) {
                bad.push(outcome);
            }
        }
        if start.elapsed() >= limit {
            return (bad, done());
        }
        tokio::time::advance(every).await;
    }
}

/// Three replicas answering in 1 ms, behind the retry layer and a pool
/// with the given outlier detection.
async fn three_replicas(
    outlier: OutlierDetection,
) -> ([Node; 3], PoolHandle<&'static str, Upstream>, Stack) {
    let client = support::client();
    let nodes = [
        Node::start("a").await,
        Node::start("b").await,
        Node::start("c").await,
    ];
    for n in &nodes {
        n.server().set_delay(MS);
    }
    let pool = build(
        builder().outlier(outlier),
        nodes.iter().map(|n| n.replica(&client)),
    );
    let handle = pool.handle();
    (nodes, handle, with_retry(pool))
}

/// Three replicas; sequential load through retry and pool; the third is
/// killed (connection refused). No request fails. p2c avoids the dead
/// replica after its first failure (its load estimate carries the 1 s
/// failure penalty), but probes it every 20 ms while it fails, and the 5th
/// failed probe in a row ejects it, within 100 ms. Started again on its
/// port, once its ejection and the failback time are over (and its old
/// penalty has decayed) it takes traffic again.
#[tokio::test(start_paused = true)]
async fn a_killed_replica_is_ejected_without_a_failed_request_and_readmitted_after_restart() {
    let (mut nodes, handle, mut svc) = three_replicas(OutlierDetection::default()).await;

    assert_eq!(sequential(&mut svc, 60).await, []);
    for n in &nodes {
        assert!(n.calls() > 0, "{} took no traffic while healthy", n.id);
    }

    nodes[2].kill().await;
    let killed_at = Instant::now();
    let before_kill = nodes[2].calls();
    assert_eq!(
        sequential(&mut svc, 300).await,
        [],
        "the caller saw failures"
    );
    // After its first failure the penalty keeps traffic away, but the pool
    // probes it every 20 ms while it fails: the fifth failure in a row
    // ejects it within 100 ms of the kill.
    assert_eq!(
        nodes[2].calls() - before_kill,
        5,
        "ejected on the 5th failure in a row"
    );
    let c = snapshot(&handle, "c");
    assert_eq!(c.why, Why::ConsecutiveFailures);
    assert_eq!(c.ejections, 1);
    let Health::Ejected { until } = c.health else {
        panic!("c is not ejected: {c:?}");
    };
    let ejected_at = until - 10 * SEC;
    assert!(
        ejected_at >= killed_at && ejected_at - killed_at <= 100 * MS,
        "ejected {:?} after the kill",
        ejected_at - killed_at
    );

    // Back on the same port; still ejected, so still no traffic.
    nodes[2].restart().await;
    let calls = nodes[2].calls();
    assert_eq!(sequential(&mut svc, 50).await, []);
    assert_eq!(nodes[2].calls(), calls);
    assert_eq!(nodes[2].server().requests(), 0);

    // The ejection ends, then the failback hysteresis.
    advance_to(until + MS).await;
    let failback_end = match health(&handle, "c") {
        Health::Recovering { until: end } => end,
        other => panic!("c should be recovering, is {other:?}"),
    };
    assert_eq!(failback_end, until + 10 * SEC);
    advance_to(failback_end + MS).await;
    assert_eq!(health(&handle, "c"), Health::Healthy);

    // Readmitted; it takes traffic once its old penalty has decayed below
    // the others' load (some 70 s after its last failure, 20 s ago: about
    // 50 s from now).
    let (bad, back) = drive(&mut svc, SEC, 5, 90 * SEC, || nodes[2].calls() > calls).await;
    assert_eq!(bad, []);
    assert!(back, "c takes no traffic: {:?}", snapshot(&handle, "c"));
    assert_eq!(sequential(&mut svc, 150).await, []);
    assert!(
        nodes[2].calls() > calls + 15,
        "c takes its share again: {} calls",
        nodes[2].calls() - calls
    );
    assert!(nodes[2].server().requests() > 15, "and answers it");
    assert_eq!(health(&handle, "c"), Health::Healthy);
}

/// The same, with the default outlier detection: the replica is killed,
/// ejected, restarted; once healthy it must take traffic again.
///
/// Its latency estimate is left at the 1 s failure penalty of its last
/// failure, and an ejected (then recovering) replica gets no call to update
/// it; the latency rule reads that raw estimate, so each sweep after an
/// ejection ends ejects it again ("Latency"), for 10, 20, 40 … 300 s,
/// without a request ever reaching it.
#[tokio::test(start_paused = true)]
async fn a_restarted_replica_takes_traffic_again_with_default_outlier_detection() {
    let (mut nodes, handle, mut svc) = three_replicas(OutlierDetection::default()).await;
    assert_eq!(sequential(&mut svc, 60).await, []);

    nodes[2].kill().await;
    let (bad, ejected) = drive(&mut svc, 5 * SEC, 5, 15 * 60 * SEC, || {
        ejected_until(&handle, "c").is_some()
    })
    .await;
    assert_eq!(bad, []);
    assert!(ejected);
    nodes[2].restart().await;

    // Ten minutes of load for it to come back (an ejection is 5 min at most).
    let calls = nodes[2].calls();
    let (bad, back) = drive(&mut svc, 5 * SEC, 5, 10 * 60 * SEC, || {
        nodes[2].calls() > calls
    })
    .await;
    assert_eq!(bad, []);
    assert!(
        back,
        "c, alive and well, took no request in 10 minutes: {:?}",
        snapshot(&handle, "c")
    );
}

/// `PoolHandle::enable`: "after the failback time if it is in a higher tier
/// than the one taking traffic", so in the tier taking traffic, at once.
#[tokio::test(start_paused = true)]
async fn a_re_enabled_replica_of_the_serving_tier_takes_traffic_at_once() {
    let (nodes, handle, mut svc) = three_replicas(OutlierDetection::default()).await;
    assert_eq!(sequential(&mut svc, 30).await, []);
    assert!(handle.disable(&"c"));
    let calls = nodes[2].calls();
    assert_eq!(sequential(&mut svc, 30).await, []);
    assert_eq!(nodes[2].calls(), calls, "disabled");

    assert!(handle.enable(&"c"));
    assert_eq!(sequential(&mut svc, 60).await, []);
    assert!(
        nodes[2].calls() > calls,
        "c, enabled again, took none of 60 requests: {:?}",
        snapshot(&handle, "c")
    );
}

/// The same death seen by an active TCP check: the replica fails its
/// checks (no request needs to fail for it), and once restarted passes
/// them and is readmitted.
#[tokio::test(start_paused = true)]
async fn a_tcp_health_check_takes_a_dead_replica_out_and_brings_it_back() {
    let client = support::client();
    let mut nodes = [
        Node::start("a").await,
        Node::start("b").await,
        Node::start("c").await,
    ];
    let checks = HealthChecks::default()
        .interval(SEC)
        .unhealthy_interval(500 * MS)
        .timeout(200 * MS)
        .unhealthy_threshold(3)
        .healthy_threshold(2)
        .jitter(0.0);
    let pool = build(
        builder().health_checks(checks).failback_after(5 * SEC),
        nodes.iter().map(|n| {
            let (id, replica) = n.replica(&client);
            (id, replica.health_check(TcpCheck::new(n.addr)))
        }),
    );
    let handle = pool.handle();
    let checker = tokio::spawn(pool.health_checks());
    let mut svc = with_retry(pool);

    settle().await;
    assert_eq!(sequential(&mut svc, 30).await, []);
    for n in &nodes {
        assert_eq!(health(&handle, n.id), Health::Healthy);
    }

    // Dead, and no traffic to notice it: only the checks do.
    nodes[2].kill().await;
    let took = sleep_until_true(100 * MS, 10 * SEC, || {
        health(&handle, "c") == Health::FailingChecks
    })
    .await;
    // Three failed checks a second apart, the first within a second.
    assert!(took <= 3 * SEC + 100 * MS, "took {took:?}");
    assert!(took > 2 * SEC, "took {took:?}: fewer than 3 failed checks?");
    assert_eq!(snapshot(&handle, "c").why, Why::HealthCheck);

    let calls = nodes[2].calls();
    assert_eq!(sequential(&mut svc, 100).await, []);
    assert_eq!(nodes[2].calls(), calls, "no traffic to a failing replica");

    // Back: two passing checks (every 500 ms while failing) readmit it.
    nodes[2].restart().await;
    let took = sleep_until_true(100 * MS, 5 * SEC, || {
        health(&handle, "c") != Health::FailingChecks
    })
    .await;
    assert!(took <= SEC + 100 * MS, "took {took:?}");
    let Health::Recovering { until } = health(&handle, "c") else {
        panic!("c should be recovering: {:?}", snapshot(&handle, "c"));
    };
    advance_to(until + MS).await;
    assert_eq!(health(&handle, "c"), Health::Healthy);
    assert_eq!(sequential(&mut svc, 100).await, []);
    assert!(nodes[2].calls() > calls, "c takes traffic again");
    assert!(nodes[2].server().requests_to("/") > 0);
    checker.abort();
}

// --- 2. Tiers ---------------------------------------------------------------

/// Two primaries and a standby. Both primaries answer 503: they are
/// ejected and the standby takes all the traffic; healed, they get it
/// back only after the failback time.
#[tokio::test(start_paused = true)]
async fn the_standby_takes_over_from_failing_primaries_and_gives_back_after_failback() {
    let client = support::client();
    let nodes = [
        Node::start("p1").await,
        Node::start("p2").await,
        Node::start("standby").await,
    ];
    let pool = build(
        builder()
            .failback_after(10 * SEC)
            // Both primaries may be out at once (by default only one of three).
            .outlier(OutlierDetection::default().max_ejected(1.0)),
        [
            nodes[0].replica(&client),
            nodes[1].replica(&client),
            (
                nodes[2].id,
                Replica::new(nodes[2].upstream(&client)).tier(1),
            ),
        ],
    );
    let handle = pool.handle();
    let mut svc = with_retry(pool);
    let calls = || nodes.each_ref().map(Node::calls);

    assert_eq!(sequential(&mut svc, 40).await, []);
    let [p1, p2, standby] = calls();
    assert!(p1 > 0 && p2 > 0, "the primaries share the traffic");
    assert_eq!(standby, 0, "the standby is idle while the primaries are up");

    nodes[0].server().set_unavailable(None);
    nodes[1].server().set_unavailable(None);
    let mut sent = 0;
    while ejected_until(&handle, "p1").is_none() || ejected_until(&handle, "p2").is_none() {
        sent += 1;
        assert!(sent <= 100, "the primaries are not ejected");
        let _ = send(&mut svc).await;
    }
    for p in ["p1", "p2"] {
        assert_eq!(snapshot(&handle, p).why, Why::ConsecutiveFailures);
    }

    let before = calls();
    assert_eq!(sequential(&mut svc, 100).await, []);
    let after = calls();
    assert_eq!(after[0], before[0], "p1 is ejected");
    assert_eq!(after[1], before[1], "p2 is ejected");
    assert_eq!(after[2], before[2] + 100, "the standby takes every request");

    // Healed. The ejections end; the failback time runs from there.
    nodes[0].server().set_healthy();
    nodes[1].server().set_healthy();
    let end = ejected_until(&handle, "p1")
        .max(ejected_until(&handle, "p2"))
        .expect("ejected");

    advance_to(end + 9 * SEC).await;
    for p in ["p1", "p2"] {
        assert!(
            matches!(health(&handle, p), Health::Recovering { .. }),
            "{p}: {:?}",
            snapshot(&handle, p)
        );
    }
    let before = calls();
    assert_eq!(sequential(&mut svc, 50).await, []);
    let after = calls();
    assert_eq!(
        (after[0], after[1]),
        (before[0], before[1]),
        "a second before the failback time, the primaries still get nothing"
    );
    assert_eq!(after[2], before[2] + 50);

    advance_to(end + 10 * SEC + MS).await;
    for p in ["p1", "p2"] {
        assert_eq!(health(&handle, p), Health::Healthy, "{p}");
    }
    let before = calls();
    assert_eq!(sequential(&mut svc, 50).await, []);
    let after = calls();
    assert_eq!(after[2], before[2], "the standby is idle again");
    assert!(after[0] > before[0] && after[1] > before[1]);
    assert_eq!(after[0] + after[1], before[0] + before[1] + 50);
}

/// Module docs: "the pool … sends each attempt to a replica the request has
/// not tried while one exists". Both primaries answer 503 (and are never
/// ejected, to isolate the routing): the third attempt should go to the
/// standby, the one replica not tried.
#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_the_standby_once_every_primary_was_tried() {
    let client = support::client();
    let nodes = [
        Node::start("p1").await,
        Node::start("p2").await,
        Node::start("standby").await,
    ];
    let pool = build(
        builder().outlier(
            OutlierDetection::default()
                .consecutive_failures(None)
                .failure_percentage(None)
                .success_rate_stdev(None)
                .latency_factor(None),
        ),
        [
            nodes[0].replica(&client),
            nodes[1].replica(&client),
            (
                nodes[2].id,
                Replica::new(nodes[2].upstream(&client)).tier(1),
            ),
        ],
    );
    let mut svc = with_retry(pool);
    nodes[0].server().set_unavailable(None);
    nodes[1].server().set_unavailable(None);

    let bad = sequential(&mut svc, 20).await;
    assert_eq!(
        bad,
        [],
        "third attempts went back to a primary; the standby got {} calls",
        nodes[2].calls()
    );
    assert_eq!(nodes[2].calls(), 20);
}

// --- 3. Pushback --------------------------------------------------------------

/// One replica answers `503` with `Retry-After: 30`: no request reaches
/// it for 30 s, however many are sent; after that and the failback time it
/// is healthy, and takes traffic again once the 1 s failure penalty of that
/// `503` has decayed below the others' load (see
/// `a_replica_back_from_a_pushback_takes_traffic_after_the_failback_time`).
#[tokio::test(start_paused = true)]
async fn a_replica_asking_for_30_seconds_of_quiet_gets_them() {
    let (nodes, handle, svc) = pushed_back().await;
    let calls = nodes[0].calls();
    // Load until it takes traffic again (bounded: a minute and a half).
    let mut one = svc.clone();
    let (bad, back) = drive(&mut one, SEC, 8, 90 * SEC, || nodes[0].calls() > calls).await;
    assert_eq!(bad, []);
    assert!(back, "a takes no traffic: {:?}", snapshot(&handle, "a"));
    let served = nodes[0].server().requests();
    assert_eq!(concurrent(&svc, 8, 25).await, []);
    assert!(nodes[0].calls() > calls + 20, "a takes its share again");
    assert!(nodes[0].server().requests() > served, "and answers it");
    assert_eq!(health(&handle, "a"), Health::Healthy);
}

/// Once the replica's pushback and the failback time are over, it takes
/// its share at once: the pushback was honoured by avoiding it, and its
/// `503` should not keep it out longer.
#[tokio::test(start_paused = true)]
async fn a_replica_back_from_a_pushback_takes_traffic_after_the_failback_time() {
    let (nodes, _handle, svc) = pushed_back().await;
    let calls = nodes[0].calls();
    assert_eq!(concurrent(&svc, 8, 25).await, []);
    assert!(
        nodes[0].calls() > calls + 20,
        "a took {} of 200 requests",
        nodes[0].calls() - calls
    );
}

/// Three replicas answering in 1 ms, under concurrent
/// load; `a` answers one request `503` + `Retry-After: 30`. Checks that
/// nothing reaches it for 30 s, and returns once it is healthy again
/// (after the failback time, 5 s).
async fn pushed_back() -> ([Node; 3], PoolHandle<&'static str, Upstream>, Stack) {
    let client = support::client();
    let nodes = [
        Node::start("a").await,
        Node::start("b").await,
        Node::start("c").await,
    ];
    // Some time on the wire, so concurrent requests overlap.
    for n in &nodes {
        n.server().set_delay(MS);
    }
    let pool = build(
        builder()
            .outlier(OutlierDetection::default())
            .failback_after(5 * SEC),
        nodes.iter().map(|n| n.replica(&client)),
    );
    let handle = pool.handle();
    let svc = with_retry(pool);

    assert_eq!(concurrent(&svc, 8, 5).await, []);
    assert!(nodes[0].calls() > 0);

    // a's next answer is the pushback; send until it has been given.
    nodes[0]
        .server()
        .fail_first(1, Reply::unavailable_retry_after("30"));
    let answered = nodes[0].server().requests();
    let mut one = svc.clone();
    for _ in 0..100 {
        if nodes[0].server().requests() > answered {
            break;
        }
        assert_eq!(
            send(&mut one).await,
            Ok(StatusCode::OK),
            "retried elsewhere"
        );
    }
    assert_eq!(nodes[0].server().requests(), answered + 1);
    let pushed_at = Instant::now();
    let a = snapshot(&handle, "a");
    assert_eq!(a.why, Why::Pushback);
    let Health::Avoided { until } = a.health else {
        panic!("a should be avoided: {a:?}");
    };
    assert!(
        until > pushed_at + 30 * SEC - 10 * MS && until <= pushed_at + 30 * SEC,
        "avoided until {until:?}, pushed back at {pushed_at:?}"
    );

    // Load at several points of the 30 s: nothing reaches a.
    let calls = nodes[0].calls();
    for at in [SEC, 10 * SEC, 20 * SEC, 29 * SEC] {
        advance_to(pushed_at + at).await;
        assert_eq!(concurrent(&svc, 8, 10).await, []);
        assert_eq!(nodes[0].calls(), calls, "{at:?} into the pushback");
        assert!(matches!(health(&handle, "a"), Health::Avoided { .. }));
    }

    advance_to(until + MS).await;
    let Health::Recovering { until: back } = health(&handle, "a") else {
        panic!("a should be recovering: {:?}", snapshot(&handle, "a"));
    };
    assert_eq!(back, until + 5 * SEC);
    advance_to(back + MS).await;
    assert_eq!(health(&handle, "a"), Health::Healthy);
    (nodes, handle, svc)
}

// --- 4. A slow replica ------------------------------------------------------

/// One replica answers in 20 ms, the others in 1 ms. Under concurrent
/// load p2c over peak-EWMA × in-flight gives it a small share, and the
/// latency rule ejects it at the next sweep.
#[tokio::test(start_paused = true)]
async fn a_replica_20_times_slower_gets_little_traffic_and_is_ejected_for_latency() {
    let client = support::client();
    let nodes = [
        Node::start("a").await,
        Node::start("b").await,
        Node::start("slow").await,
    ];
    nodes[0].server().set_delay(MS);
    nodes[1].server().set_delay(MS);
    nodes[2].server().set_delay(20 * MS);
    let pool = build(
        builder().outlier(
            OutlierDetection::default()
                .interval(50 * MS)
                // Over 5× the median and over 10 ms.
                .latency_factor(Some((5.0, 10 * MS))),
        ),
        nodes.iter().map(|n| n.replica(&client)),
    );
    let handle = pool.handle();

    // 8 clients at once until the slow replica is ejected (at most 2,000
    // requests).
    let sent = Cell::new(0u32);
    let start = Instant::now();
    let runs = (0..8).map(|_| {
        let mut svc = pool.clone();
        let (sent, handle) = (&sent, &handle);
        async move {
            let mut bad = Vec::new();
            while sent.get() < 2_000 && ejected_until(handle, "slow").is_none() {
                sent.set(sent.get() + 1);
                let outcome = send(&mut svc).await;
                if outcome != Ok(StatusCode::OK) {
                    bad.push(outcome);
                }
            }
            bad
        }
    });
    let bad: Vec<Outcome> = join_all(runs).await.into_iter().flatten().collect();
    assert_eq!(bad, []);
    let took = start.elapsed();

    let slow = snapshot(&handle, "slow");
    assert!(
        matches!(slow.health, Health::Ejected { .. }),
        "not ejected after {} requests, {took:?}: {slow:?}",
        sent.get()
    );
    assert_eq!(slow.why, Why::Latency);
    assert!(
        slow.latency >= 20 * MS,
        "its estimate is its latency: {slow:?}"
    );
    // Ejected at the first sweep after its first answer: 1 to 2 intervals.
    assert!(took <= 120 * MS, "took {took:?}");
    let total = nodes.iter().map(Node::calls).sum::<u64>();
    assert_eq!(total, u64::from(sent.get()));
    let share = nodes[2].calls() as f64 / total as f64;
    assert!(
        share < 0.2,
        "the slow replica got {} of {total} requests",
        nodes[2].calls()
    );
    for n in &nodes[..2] {
        assert!(
            n.calls() as f64 / total as f64 > 0.35,
            "{}: {}",
            n.id,
            n.calls()
        );
    }

    // Ejected: none of the next requests go there.
    let calls = nodes[2].calls();
    assert_eq!(concurrent(&pool, 8, 20).await, []);
    assert_eq!(nodes[2].calls(), calls);
}

// --- 5. Discovery -------------------------------------------------------------

type Discovered = Result<Change<&'static str, Replica<Upstream>>, BoxError>;

/// Replicas come and go through discovery under concurrent load: a new
/// one takes traffic, a removed one finishes its calls in flight, gets no
/// new one, and leaves once drained; no request is lost.
#[tokio::test(start_paused = true)]
async fn discovery_adds_and_removes_replicas_under_load_without_losing_a_request() {
    let client = support::client();
    let nodes = [
        Node::start("a").await,
        Node::start("b").await,
        Node::start("c").await,
    ];
    for n in &nodes {
        n.server().set_delay(5 * MS);
    }
    let pool = build(
        builder(),
        [nodes[0].replica(&client), nodes[1].replica(&client)],
    );
    let handle = pool.handle();
    let (changes, discovered) = mpsc::unbounded::<Discovered>();
    let discovery = tokio::spawn(pool.discover(discovered));

    let stop = Cell::new(false);
    let runs = (0..8).map(|_| {
        let mut svc = pool.clone();
        let stop = &stop;
        async move {
            let mut outcomes = Vec::new();
            while !stop.get() {
                outcomes.push(send(&mut svc).await);
            }
            outcomes
        }
    });
    let load = join_all(runs);

    let control = async {
        tokio::time::sleep(30 * MS).await;
        assert_eq!(nodes[2].calls(), 0);
        changes
            .unbounded_send(Ok(Change::Insert("c", nodes[2].replica(&client).1)))
            .unwrap();
        settle().await;
        assert_eq!(health(&handle, "c"), Health::Healthy);

        tokio::time::sleep(30 * MS).await;
        assert!(nodes[2].calls() > 0, "the new replica takes traffic");
        let in_flight = snapshot(&handle, "a").in_flight;
        assert!(in_flight > 0, "a has calls in flight as it is removed");
        changes.unbounded_send(Ok(Change::Remove("a"))).unwrap();
        while health(&handle, "a") == Health::Healthy {
            tokio::task::yield_now().await;
        }
        // From here on the pool sends a nothing new.
        let removed_at = nodes[0].calls();
        assert_eq!(health(&handle, "a"), Health::Draining);

        tokio::time::sleep(30 * MS).await;
        stop.set(true);
        removed_at
    };
    let (outcomes, removed_at) = tokio::join!(load, control);

    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    assert!(outcomes.len() > 100, "{} requests", outcomes.len());
    let bad: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| **o != Ok(StatusCode::OK))
        .collect();
    assert_eq!(bad, Vec::<&Outcome>::new(), "requests were lost");
    assert_eq!(nodes[0].calls(), removed_at, "no new call after removal");
    // Every call sent to a, those in flight at its removal included, reached
    // it and was answered (and every request got its 200).
    assert_eq!(nodes[0].server().requests(), removed_at);

    // Drained: it leaves the pool at the next table rebuild.
    assert_eq!(snapshot(&handle, "a").in_flight, 0);
    tokio::time::advance(200 * MS).await;
    let mut svc = pool.clone();
    assert_eq!(send(&mut svc).await, Ok(StatusCode::OK));
    let ids: Vec<&str> = handle.snapshot().iter().map(|r| r.id).collect();
    assert_eq!(ids, ["b", "c"]);

    drop(changes);
    discovery
        .await
        .expect("the discovery task")
        .expect("discovery ends when its stream does");
}

// --- 6. HTTP health checks ----------------------------------------------------

fn http_checks() -> HealthChecks {
    HealthChecks::default()
        .interval(SEC)
        .unhealthy_interval(500 * MS)
        .timeout(200 * MS)
        .unhealthy_threshold(3)
        .healthy_threshold(2)
        .jitter(0.0)
}

/// An `HttpCheck` of `GET uri` through a client of its own.
fn http_check(uri: Uri) -> HttpCheck<HttpClient, Body> {
    HttpCheck::new(support::client(), uri)
}

/// A replica whose `/healthz` answers 500 fails its checks after three of
/// them, takes no traffic while it does, and comes back after two passes
/// and the failback time.
#[tokio::test(start_paused = true)]
async fn a_replica_whose_health_endpoint_answers_500_is_taken_out_then_back() {
    let client = support::client();
    let nodes = [
        Node::start("a").await,
        Node::start("b").await,
        Node::start("c").await,
    ];
    let pool = build(
        builder()
            .health_checks(http_checks())
            .failback_after(5 * SEC),
        nodes.iter().map(|n| {
            let (id, replica) = n.replica(&client);
            (
                id,
                replica.health_check(http_check(n.server().uri("/healthz"))),
            )
        }),
    );
    let handle = pool.handle();
    let mut svc = with_retry(pool.clone());
    nodes[0]
        .server()
        .set_path_reply("/healthz", Reply::status(StatusCode::INTERNAL_SERVER_ERROR));
    let start = Instant::now();
    let checker = tokio::spawn(pool.health_checks());

    // Checks at 0 s and 1 s fail: still in.
    tokio::time::sleep(1500 * MS).await;
    assert_eq!(nodes[0].server().requests_to("/healthz"), 2);
    assert_eq!(health(&handle, "a"), Health::Healthy);
    assert_eq!(sequential(&mut svc, 30).await, []);
    assert!(nodes[0].calls() > 0, "a serves traffic meanwhile");

    // The third, at 2 s, takes it out.
    sleep_until_true(50 * MS, 5 * SEC, || {
        health(&handle, "a") == Health::FailingChecks
    })
    .await;
    let at = start.elapsed();
    assert!(at >= 2 * SEC && at <= 2 * SEC + 50 * MS, "{at:?}");
    assert_eq!(nodes[0].server().requests_to("/healthz"), 3);
    assert_eq!(snapshot(&handle, "a").why, Why::HealthCheck);
    // Its checks (and the others') kept to the schedule.
    assert_eq!(nodes[1].server().requests_to("/healthz"), 3);

    let calls = nodes[0].calls();
    assert_eq!(sequential(&mut svc, 100).await, []);
    assert_eq!(
        nodes[0].calls(),
        calls,
        "no traffic while failing its checks"
    );

    // Fixed: two passes, 500 ms apart, bring it back after the failback time.
    nodes[0].server().clear_path_reply("/healthz");
    let took = sleep_until_true(50 * MS, 5 * SEC, || {
        health(&handle, "a") != Health::FailingChecks
    })
    .await;
    assert!(took <= SEC + 50 * MS, "took {took:?}");
    let Health::Recovering { until } = health(&handle, "a") else {
        panic!("a should be recovering: {:?}", snapshot(&handle, "a"));
    };
    advance_to(until + MS).await;
    assert_eq!(health(&handle, "a"), Health::Healthy);
    assert_eq!(sequential(&mut svc, 100).await, []);
    assert!(nodes[0].calls() > calls, "a takes traffic again");
    checker.abort();
}

/// Answers each connection's request with a line that is not HTTP, then
/// hangs up; counts the connections.
async fn garbage_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Read the request head, so the client has sent it all.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"not http\r\n").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Accepts connections and never answers (nor closes them); counts them.
async fn silent_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        }
    });
    (addr, accepted)
}

/// Two replicas' health endpoints misbehave: one answers garbage, one
/// never answers (the check times out). Both count as failed checks and
/// take the replicas out, while the other two serve every request, never
/// held up by the hanging check.
///
/// The checks go to an admin port of their own (the misbehaving
/// listeners), the traffic to each replica's server.
#[tokio::test(start_paused = true)]
async fn garbage_and_hanging_health_checks_fail_while_the_pool_serves_on() {
    let client = support::client();
    let nodes = [
        Node::start("garbage").await,
        Node::start("silent").await,
        Node::start("c").await,
        Node::start("d").await,
    ];
    let (garbage_addr, garbage_checks) = garbage_server().await;
    let (silent_addr, silent_checks) = silent_server().await;
    let uri = |addr: SocketAddr| -> Uri { format!("http://{addr}/healthz").parse().unwrap() };
    let check_uris = [
        uri(garbage_addr),
        uri(silent_addr),
        nodes[2].server().uri("/healthz"),
        nodes[3].server().uri("/healthz"),
    ];
    let checks = http_checks();
    let pool = build(
        builder().health_checks(checks),
        nodes.iter().zip(check_uris).map(|(n, uri)| {
            let (id, replica) = n.replica(&client);
            (id, replica.health_check(http_check(uri)))
        }),
    );
    let handle = pool.handle();
    let svc = with_retry(pool.clone());
    let checker = tokio::spawn(pool.health_checks());

    // Each round of checks waits for the silent one to time out (200 ms),
    // then the next comes a second later: rounds at 0, 1.2 and 2.4 s.
    for round in 1..=3u64 {
        settle().await;
        assert_eq!(garbage_checks.load(Ordering::SeqCst), round);
        assert_eq!(silent_checks.load(Ordering::SeqCst), round);
        // While the silent check hangs, requests are served at once.
        let t0 = Instant::now();
        assert_eq!(concurrent(&svc, 8, 5).await, []);
        assert!(t0.elapsed() < 200 * MS, "held up {:?}", t0.elapsed());
        if round < 3 {
            assert_eq!(health(&handle, "garbage"), Health::Healthy);
            assert_eq!(health(&handle, "silent"), Health::Healthy);
            tokio::time::sleep(1200 * MS - t0.elapsed()).await;
        }
    }
    tokio::time::sleep(200 * MS).await;
    for id in ["garbage", "silent"] {
        let r = snapshot(&handle, id);
        assert_eq!(r.health, Health::FailingChecks, "{r:?}");
        assert_eq!(r.why, Why::HealthCheck);
    }
    for id in ["c", "d"] {
        assert_eq!(health(&handle, id), Health::Healthy);
    }
    assert_eq!(nodes[2].server().requests_to("/healthz"), 3);

    let before = nodes.each_ref().map(Node::calls);
    assert_eq!(concurrent(&svc, 8, 25).await, []);
    let after = nodes.each_ref().map(Node::calls);
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    assert_eq!(after[2] + after[3], before[2] + before[3] + 200);
    checker.abort();
}
