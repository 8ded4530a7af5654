//! The presets build with their defaults and reject invalid combinations.

#![cfg(feature = "http")]

use std::time::Duration;

use steadfast::error::BoxError;
use steadfast::pool::Replica;
use steadfast::presets::{HttpClient, ReplicaStack};
use tower::{Layer, Service, ServiceExt};

const SEC: Duration = Duration::from_secs(1);

fn client(
    status: u16,
) -> impl Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<String>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |_req: http::Request<String>| async move {
        let mut res = http::Response::new(String::new());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok::<_, BoxError>(res)
    })
}

fn get() -> http::Request<String> {
    http::Request::get("http://upstream/")
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn the_http_client_preset_builds_and_serves() {
    let layer = HttpClient::new("payments").build().unwrap();
    let mut svc = layer.layer(client(200));
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(layer.circuit().name(), "payments");
}

#[test]
fn invalid_http_client_combinations_are_rejected() {
    let field = |p: HttpClient| p.build().unwrap_err().field().to_owned();
    assert_eq!(
        field(HttpClient::new("x").attempt_timeout(10 * SEC)),
        "attempt_timeout"
    );
    assert_eq!(
        field(HttpClient::new("x").attempt_timeout(20 * SEC)),
        "attempt_timeout"
    );
    assert_eq!(
        field(HttpClient::new("x").attempt_timeout(Duration::ZERO)),
        "attempt_timeout"
    );
    assert_eq!(
        field(HttpClient::new("x").breaker_window(3 * SEC)),
        "breaker_window"
    );
    assert_eq!(field(HttpClient::new("x").max_attempts(0)), "max_attempts");
}

#[tokio::test]
async fn the_replica_stack_routes_around_a_failing_replica() {
    let parts = ReplicaStack::new("search")
        .build([
            ("a", Replica::new(client(200))),
            ("b", Replica::new(client(503))),
            ("c", Replica::new(client(200))),
        ])
        .unwrap();
    let checks = tokio::spawn(parts.health_checks);
    let mut svc = parts.service;
    for _ in 0..50 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200, "retried on another replica");
    }
    assert_eq!(parts.handle.snapshot().len(), 3);
    checks.abort();
}

#[tokio::test]
async fn the_replica_stack_with_its_upkeep_spawned_routes_the_same() {
    let parts = ReplicaStack::new("search")
        .build([
            ("a", Replica::new(client(200))),
            ("b", Replica::new(client(503))),
            ("c", Replica::new(client(200))),
        ])
        .unwrap();
    let upkeep = tokio::spawn(parts.upkeep);
    let mut svc = parts.service;
    for _ in 0..50 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200, "retried on another replica");
    }
    let b = parts
        .handle
        .snapshot()
        .into_iter()
        .find(|r| r.id == "b")
        .unwrap();
    assert_ne!(b.health, steadfast::pool::Health::Healthy, "{b:?}");
    drop((svc, parts.handle));
    upkeep.await.expect("the upkeep ends with its pool");
}

#[tokio::test(start_paused = true)]
async fn the_replica_stack_can_give_each_replica_a_breaker() {
    use steadfast::circuit_breaker::CircuitBreakerLayer;
    use steadfast::pool::{Health, OutlierDetection};

    let parts = ReplicaStack::new("breakers")
        // Outlier detection off: only the breaker can take "b" out.
        .outlier(
            OutlierDetection::default()
                .consecutive_failures(None)
                .failure_percentage(None)
                .success_rate_stdev(None)
                .latency_factor(None),
        )
        .circuit_breaker(CircuitBreakerLayer::builder().consecutive_failures(2))
        .build([
            ("a", Replica::new(client(200))),
            ("b", Replica::new(client(503))),
        ])
        .unwrap();
    let mut svc = parts.service;
    for _ in 0..100 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200, "retried on the other replica");
        tokio::time::advance(Duration::from_millis(2)).await;
    }
    let health = |id: &str| {
        let snapshot = parts.handle.snapshot();
        snapshot.into_iter().find(|r| r.id == id).unwrap().health
    };
    assert_eq!(health("b"), Health::CircuitOpen);
    assert_eq!(health("a"), Health::Healthy);

    let err = ReplicaStack::new("x")
        .circuit_breaker(CircuitBreakerLayer::builder().failure_rate(2.0))
        .build([("a", Replica::new(client(200)))])
        .unwrap_err();
    assert!(err.to_string().contains("circuit_breaker"), "{err}");
}

#[test]
fn invalid_replica_stacks_are_rejected() {
    let err =
        ReplicaStack::new("x")
            .attempt_timeout(20 * SEC)
            .build::<&str, tower::util::BoxCloneSyncService<
                http::Request<String>,
                http::Response<String>,
                BoxError,
            >>([])
            .unwrap_err();
    assert_eq!(err.field(), "attempt_timeout");
}

#[test]
fn the_replica_stack_takes_a_budget_and_gives_it_back() {
    let budget = std::sync::Arc::new(
        steadfast::budget::RetryBudget::builder()
            .name("search")
            .build()
            .unwrap(),
    );
    let parts = ReplicaStack::new("search")
        .budget(budget.clone())
        .build([("a", Replica::new(client(200)))])
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&parts.budget, &budget));
    let own = ReplicaStack::new("other")
        .build([("a", Replica::new(client(200)))])
        .unwrap();
    assert_eq!(own.budget.name(), "other", "a budget of its own by default");
}

#[tokio::test(start_paused = true)]
async fn the_replica_stack_takes_durations_up_to_duration_max() {
    // Ejections and failback "forever": the failing replica is ejected
    // for good (no overflow wraps it back in) and callers never see it.
    let parts = ReplicaStack::new("forever")
        .failback_after(Duration::MAX)
        .outlier(
            steadfast::pool::OutlierDetection::default()
                .consecutive_failures(Some(1))
                .ejection(steadfast::backoff::Backoff::constant(Duration::MAX)),
        )
        .build([
            ("a", Replica::new(client(200))),
            ("b", Replica::new(client(503))),
            ("c", Replica::new(client(200))),
        ])
        .unwrap();
    let mut svc = parts.service;
    for _ in 0..50 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
    let b = parts
        .handle
        .snapshot()
        .into_iter()
        .find(|r| r.id == "b")
        .unwrap();
    assert!(
        matches!(b.health, steadfast::pool::Health::Ejected { .. }),
        "{:?}",
        b.health
    );
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), 200);
}

/// Through the preset, a replica that hangs (accepts calls and never
/// answers them) fails no request: its first attempt loses to a hedge,
/// and a few unanswered attempts in a row eject it, without checks.
#[tokio::test(start_paused = true)]
async fn the_replica_stack_ejects_a_hung_replica_without_checks() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use steadfast::pool::{Health, Why};

    let hung = Arc::new(AtomicBool::new(false));
    let attempts_on_c = Arc::new(AtomicU64::new(0));
    let replica = |id: &'static str| {
        let (hung, attempts) = (hung.clone(), attempts_on_c.clone());
        let service = tower::service_fn(move |_req: http::Request<String>| {
            let stuck = id == "c" && hung.load(Ordering::SeqCst);
            if id == "c" {
                attempts.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                if stuck {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, BoxError>(http::Response::new(String::new()))
            }
        });
        (id, Replica::new(service))
    };
    let parts = ReplicaStack::new("hang")
        .build([replica("a"), replica("b"), replica("c")])
        .unwrap();
    let mut svc = parts.service;
    for _ in 0..300 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    hung.store(true, Ordering::SeqCst);
    let before = attempts_on_c.load(Ordering::SeqCst);
    for _ in 0..500 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 200, "a request failed");
    }
    let c = parts
        .handle
        .snapshot()
        .into_iter()
        .find(|r| r.id == "c")
        .unwrap();
    assert!(matches!(c.health, Health::Ejected { .. }), "{c:?}");
    assert_eq!(c.why, Why::Unanswered);
    let during = attempts_on_c.load(Ordering::SeqCst) - before;
    assert!(during <= 10, "{during} attempts on the hung replica");
}

/// The `HttpClient` preset's breaker (a time window, 50% over at least 10
/// calls) is judged on a success too: five failed attempts, then successes,
/// open it on the tenth attempt, a success (it used to stay closed until
/// the next failure, which may never come).
#[tokio::test(start_paused = true)]
async fn the_http_client_breaker_trips_on_the_success_that_fills_its_window() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use steadfast::circuit_breaker::State;

    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let upstream = tower::service_fn(move |_req: http::Request<String>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut res = http::Response::new(String::new());
            if n < 5 {
                *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, BoxError>(res)
        }
    });
    let layer = HttpClient::new("fills").build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(upstream);
    while calls.load(Ordering::SeqCst) < 10 {
        assert_eq!(circuit.state(), State::Closed, "below 10 calls");
        let _ = svc.ready().await.unwrap().call(get()).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert_eq!(circuit.state(), State::Open, "5 of 10 failed");
}

/// Through `ReplicaStack`: a hedge goes only to a replica free to start it.
/// Two requests at once, one on each replica, send no hedge; one alone is
/// hedged to the other replica.
#[tokio::test(start_paused = true)]
async fn the_replica_stack_hedges_only_to_a_free_replica() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use steadfast::hedge::HedgeDelay;

    let hits = Arc::new(AtomicU64::new(0));
    let replica = |id: &'static str| {
        let hits = hits.clone();
        let service = tower::service_fn(move |_req: http::Request<String>| {
            hits.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, BoxError>(http::Response::new(String::new()))
            }
        });
        (id, Replica::new(service))
    };
    let parts = ReplicaStack::new("free")
        .hedge(HedgeDelay::Fixed(Duration::from_millis(5)))
        .build([replica("a"), replica("b")])
        .unwrap();
    let svc = parts.service;
    let (one, two) = tokio::join!(svc.clone().oneshot(get()), svc.clone().oneshot(get()));
    assert!(one.is_ok() && two.is_ok());
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "no hedge, both replicas busy"
    );
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(
        hits.load(Ordering::SeqCst),
        4,
        "a hedge to the free replica"
    );
}

/// A replica's service, boxed.
type Boxed =
    tower::util::BoxCloneSyncService<http::Request<String>, http::Response<String>, BoxError>;

/// A replica for the deadline tests: it answers 200 after `before` until
/// `turned` is set, then `status` after `after`, and counts its calls.
fn turning_replica(
    id: &'static str,
    turned: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: &std::sync::Arc<std::sync::atomic::AtomicU64>,
    before: Duration,
    (status, after): (u16, Duration),
) -> (&'static str, Replica<Boxed>) {
    use std::sync::atomic::Ordering;
    let (turned, calls) = (turned.clone(), calls.clone());
    let service = tower::service_fn(move |_req: http::Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let (status, wait) = if turned.load(Ordering::SeqCst) {
            (status, after)
        } else {
            (200, before)
        };
        async move {
            tokio::time::sleep(wait).await;
            let mut res = http::Response::new(String::new());
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, BoxError>(res)
        }
    });
    (
        id,
        Replica::new(tower::util::BoxCloneSyncService::new(service)),
    )
}

/// Through `ReplicaStack`, a retry that could not answer before the total
/// timeout is not sent: the replicas answer in 100 ms, then fail after
/// 220 ms. With a 300 ms total, 80 ms are left when the first attempt
/// fails, less than the other replica takes, so the caller gets that 503
/// at once (not a timeout at 300 ms) and no retry loads the fleet. With a
/// 2 s total the retries go, and the caller still gets the 503.
#[tokio::test(start_paused = true)]
async fn the_replica_stack_sends_no_retry_that_would_come_too_late() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use steadfast::hedge::HedgeDelay;

    const MS: Duration = Duration::from_millis(1);
    for (total, attempts_wanted) in [(300 * MS, 1), (2 * SEC, 3)] {
        let failing = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let parts = ReplicaStack::new("late")
            .total_timeout(total)
            .attempt_timeout(total - 10 * MS)
            .hedge(HedgeDelay::Fixed(Duration::MAX))
            .build(
                ["a", "b", "c"]
                    .map(|id| turning_replica(id, &failing, &calls, 100 * MS, (503, 220 * MS))),
            )
            .unwrap();
        let mut svc = parts.service;
        for _ in 0..30 {
            let res = svc.ready().await.unwrap().call(get()).await.unwrap();
            assert_eq!(res.status(), 200);
        }
        failing.store(true, Ordering::SeqCst);
        let before = calls.load(Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), 503, "the last attempt's own answer");
        let attempts = calls.load(Ordering::SeqCst) - before;
        assert_eq!(attempts, attempts_wanted, "with {total:?} for the call");
        if attempts_wanted == 1 {
            let took = started.elapsed();
            assert!(took < 230 * MS, "answered when it failed, after {took:?}");
        }
    }
}

/// Through `ReplicaStack`, a hedge that could not answer before the total
/// timeout is not sent: the replicas turn slow (1 s, after answering in
/// 100 ms). The hedge is due after 50 ms; with a 120 ms total, 70 ms are
/// left, less than another replica takes, so no hedge goes and the call
/// times out having made one attempt. With a 5 s total the hedge goes.
#[tokio::test(start_paused = true)]
async fn the_replica_stack_sends_no_hedge_that_would_come_too_late() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use steadfast::hedge::HedgeDelay;

    const MS: Duration = Duration::from_millis(1);
    for (total, attempts_wanted) in [(120 * MS, 1), (5 * SEC, 2)] {
        let slow = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let parts = ReplicaStack::new("late")
            .total_timeout(total)
            .attempt_timeout(total - MS)
            .max_attempts(2)
            .hedge(HedgeDelay::Fixed(50 * MS))
            .build(
                ["a", "b", "c"]
                    .map(|id| turning_replica(id, &slow, &calls, 100 * MS, (200, 1_000 * MS))),
            )
            .unwrap();
        let mut svc = parts.service;
        for _ in 0..30 {
            let res = svc.ready().await.unwrap().call(get()).await.unwrap();
            assert_eq!(res.status(), 200);
        }
        slow.store(true, Ordering::SeqCst);
        let before = calls.load(Ordering::SeqCst);
        let outcome = svc.ready().await.unwrap().call(get()).await;
        let attempts = calls.load(Ordering::SeqCst) - before;
        assert_eq!(attempts, attempts_wanted, "with {total:?} for the call");
        if attempts_wanted == 1 {
            let err = outcome.expect_err("timed out");
            assert!(
                err.is::<tower::timeout::error::Elapsed>(),
                "the total timeout: {err}"
            );
        } else {
            assert_eq!(outcome.unwrap().status(), 200);
        }
    }
}
