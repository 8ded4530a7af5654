//! Behaviour of the retry layer and its budget, with paused time.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::budget::RetryBudget;
use steadfast::classify::Verdict;
use steadfast::error::BoxError;
use steadfast::retry::{Builder, RetryLayer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A dependency that fails the first `fail_first` calls (or all of them),
/// taking `latency` each, and logs when each call started.
#[derive(Clone)]
struct Backend {
    fail_first: Arc<AtomicU64>,
    latency: Duration,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Backend {
    fn new(fail_first: u64) -> Self {
        Self {
            fail_first: Arc::new(AtomicU64::new(fail_first)),
            latency: Duration::ZERO,
            calls: Arc::default(),
        }
    }

    fn always_failing() -> Self {
        Self::new(u64::MAX)
    }

    fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// Start times of the calls, relative to `t0`.
    fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.calls.lock().unwrap().iter().map(|t| *t - t0).collect()
    }

    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = u32,
        Error = BoxError,
        Future = impl Future<Output = Result<u32, BoxError>> + Send,
    > + Clone
    + Send
    + 'static {
        let b = self.clone();
        tower::service_fn(move |req: u32| {
            let b = b.clone();
            async move {
                let n = {
                    let mut calls = b.calls.lock().unwrap();
                    calls.push(Instant::now());
                    calls.len() as u64
                };
                if !b.latency.is_zero() {
                    tokio::time::sleep(b.latency).await;
                }
                if n <= b.fail_first.load(Ordering::SeqCst) {
                    Err(format!("failure {n}").into())
                } else {
                    Ok(req)
                }
            }
        })
    }
}

/// Exact (un-jittered) delays, and a budget that never gets in the way.
fn builder() -> Builder {
    RetryLayer::builder()
        .name("test")
        .backoff(Backoff::exponential(100 * MS, SEC))
        .budget(Arc::new(
            RetryBudget::builder().min_per_sec(1000).build().unwrap(),
        ))
}

async fn call<S>(svc: &mut S, req: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

#[tokio::test(start_paused = true)]
async fn retries_with_backoff_until_success() {
    let backend = Backend::new(2);
    let mut svc = builder()
        .max_attempts(3)
        .build()
        .unwrap()
        .layer(backend.service());
    let t0 = Instant::now();
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7);
    assert_eq!(backend.offsets(t0), [Duration::ZERO, 100 * MS, 300 * MS]);
}

#[tokio::test(start_paused = true)]
async fn gives_the_last_failure_after_max_attempts() {
    let backend = Backend::always_failing();
    let mut svc = builder()
        .max_attempts(4)
        .build()
        .unwrap()
        .layer(backend.service());
    let err = call(&mut svc, 1).await.unwrap_err();
    assert_eq!(err.to_string(), "failure 4");
    assert_eq!(backend.calls(), 4);

    let backend = Backend::always_failing();
    let mut once = builder()
        .max_attempts(1)
        .build()
        .unwrap()
        .layer(backend.service());
    call(&mut once, 1).await.unwrap_err();
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn only_retryable_failures_are_retried() {
    let backend = Backend::always_failing();
    let not_retryable = |r: Result<&u32, &BoxError>| match r {
        Ok(_) => Verdict::success(),
        Err(_) => Verdict::failure(),
    };
    let mut svc = builder()
        .classify(not_retryable)
        .build()
        .unwrap()
        .layer(backend.service());
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_would_end_past_the_deadline() {
    // Attempts take 50 ms, the backoff is 100 ms: attempt 2 starts at 150 ms;
    // attempt 3 would start at 300 ms, past the 250 ms deadline.
    let backend = Backend::always_failing().with_latency(50 * MS);
    let mut svc = builder()
        .backoff(Backoff::constant(100 * MS))
        .max_attempts(5)
        .deadline(250 * MS)
        .build()
        .unwrap()
        .layer(backend.service());
    let t0 = Instant::now();
    let err = call(&mut svc, 1).await.unwrap_err();
    assert_eq!(err.to_string(), "failure 2");
    assert_eq!(backend.offsets(t0), [Duration::ZERO, 150 * MS]);
    assert_eq!(
        t0.elapsed(),
        200 * MS,
        "the caller gets the failure at once"
    );
}

#[tokio::test(start_paused = true)]
async fn server_pushback_is_honoured_up_to_the_cap() {
    for (pushback, cap, expected) in [
        (2 * SEC, 10 * SEC, 2 * SEC),
        (3600 * SEC, 10 * SEC, 10 * SEC),
        // Shorter than the backoff: the backoff wins.
        (10 * MS, 10 * SEC, 100 * MS),
        // A zero cap ignores pushback.
        (5 * SEC, Duration::ZERO, 100 * MS),
    ] {
        let backend = Backend::new(1);
        let classify = move |r: Result<&u32, &BoxError>| match r {
            Ok(_) => Verdict::success(),
            Err(_) => Verdict::retryable_failure().with_pushback(pushback),
        };
        let mut svc = builder()
            .classify(classify)
            .max_pushback(cap)
            .build()
            .unwrap()
            .layer(backend.service());
        let t0 = Instant::now();
        call(&mut svc, 1).await.unwrap();
        assert_eq!(
            backend.offsets(t0),
            [Duration::ZERO, expected],
            "{pushback:?} capped at {cap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_backoff_stops_everything() {
    let backend = Backend::always_failing();
    let mut svc = builder()
        .backoff(Backoff::constant(SEC))
        .max_attempts(5)
        .build()
        .unwrap()
        .layer(backend.service());
    let fut = svc.ready().await.unwrap().call(1);
    let mut fut = Box::pin(fut);
    // First attempt fails at once; the future now waits out its backoff.
    assert!(futures::poll!(fut.as_mut()).is_pending());
    assert_eq!(backend.calls(), 1);
    drop(fut);
    tokio::time::advance(60 * SEC).await;
    tokio::task::yield_now().await;
    assert_eq!(backend.calls(), 1, "no attempt after the caller gave up");
}

/// The budget under a dependency that fails every call for 10 s at a steady
/// 100 requests per second: retries add at most `ratio` plus the floor's
/// share, however many attempts each request may make.
#[tokio::test(start_paused = true)]
async fn budget_caps_extra_load_when_everything_fails() {
    let backend = Backend::always_failing();
    let budget = Arc::new(
        RetryBudget::builder()
            .ratio(0.2)
            .min_per_sec(10)
            .ttl(10 * SEC)
            .build()
            .unwrap(),
    );
    let svc = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Backoff::constant(5 * MS))
        .budget(budget)
        .build()
        .unwrap()
        .layer(backend.service());
    let requests = 1_000u32;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move { call(&mut svc, i).await }));
        tokio::time::sleep(10 * MS).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap_err();
    }
    let attempts = backend.calls() as f64;
    let per_request = attempts / f64::from(requests);
    // ratio 0.2, plus the floor: 10/s over a 10 s ttl = 100 retries for 1,000 requests.
    let bound = 1.0 + 0.2 + 100.0 / f64::from(requests);
    println!(
        "attempts per request with the budget: {per_request:.3} (bound {bound:.3}; without it: 5.0)"
    );
    assert!(per_request <= bound, "{per_request} > {bound}");
    assert!(
        per_request >= 1.2,
        "the budget should allow its ratio: {per_request}"
    );
}

/// tower's `TpsBudget` turns the ratio into a whole number of deposits per
/// withdrawal, so 0.6 allows as many retries as 1.0; ours allows 60%.
#[tokio::test(start_paused = true)]
async fn a_ratio_of_0_6_allows_60_percent_not_100() {
    use tower::retry::budget::{Budget as _, TpsBudget};

    let ours = RetryBudget::builder()
        .ratio(0.6)
        .min_per_sec(0)
        .build()
        .unwrap();
    let theirs = TpsBudget::new(10 * SEC, 1, 0.6);
    for _ in 0..1_000 {
        ours.deposit();
        theirs.deposit();
    }
    let ours_allowed = (0..2_000).filter(|_| ours.withdraw()).count();
    let theirs_allowed = (0..2_000).filter(|_| theirs.withdraw()).count();
    println!(
        "after 1,000 requests at ratio 0.6: steadfast allows {ours_allowed} retries, tower's TpsBudget {theirs_allowed}"
    );
    assert_eq!(ours_allowed, 600);
    assert!(
        theirs_allowed >= 1_000,
        "tower's truncation: {theirs_allowed}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_budget_shared_by_two_layers_caps_them_together() {
    let budget = Arc::new(
        RetryBudget::builder()
            .ratio(0.5)
            .min_per_sec(0)
            .build()
            .unwrap(),
    );
    let a = Backend::always_failing();
    let b = Backend::always_failing();
    let layer = |budget: &Arc<RetryBudget>| {
        RetryLayer::builder()
            .max_attempts(3)
            .backoff(Backoff::constant(MS))
            .budget(budget.clone())
            .build()
            .unwrap()
    };
    let mut sa = layer(&budget).layer(a.service());
    let mut sb = layer(&budget).layer(b.service());
    for i in 0..100 {
        call(&mut sa, i).await.unwrap_err();
        call(&mut sb, i).await.unwrap_err();
    }
    // 200 requests at ratio 0.5: 100 retries between them.
    assert_eq!(a.calls() + b.calls(), 200 + 100);
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_pass_through() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let mut svc = tower_test::mock::Spawn::new(builder().build().unwrap().layer(mock));
    handle.send_error("not ready");
    match svc.poll_ready() {
        std::task::Poll::Ready(Err(err)) => assert_eq!(err.to_string(), "not ready"),
        other => panic!("expected the inner error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_attempts_retries_and_refusals() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let backend = Backend::always_failing();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder()
            .name("orders")
            .max_attempts(3)
            .backoff(Backoff::constant(MS))
            .budget(Arc::new(
                RetryBudget::builder()
                    .name("orders")
                    .ratio(0.0)
                    .min_per_sec(1)
                    .build()
                    .unwrap(),
            ))
            .build()
            .unwrap()
    });
    let mut svc = layer.layer(backend.service());
    // The floor allows 10 retries in the ttl: 5 requests use them (2 each)...
    for i in 0..5 {
        call(&mut svc, i).await.unwrap_err();
    }
    // ...and the next one is refused by the budget.
    call(&mut svc, 9).await.unwrap_err();
    let recorded = support::metrics::Recorded::take(&snapshotter);
    let get = |k: &str| recorded.get(k);
    assert_eq!(
        get("steadfast_retry_attempts_total{name=orders}"),
        &DebugValue::Counter(16)
    );
    assert_eq!(
        get("steadfast_retry_retries_total{name=orders,reason=failure}"),
        &DebugValue::Counter(10)
    );
    assert_eq!(
        get("steadfast_retry_refused_total{name=orders,reason=max_attempts}"),
        &DebugValue::Counter(5)
    );
    assert_eq!(
        get("steadfast_retry_refused_total{name=orders,reason=budget}"),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        get("steadfast_budget_exhausted_total{name=orders}"),
        &DebugValue::Counter(1)
    );
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let field = |b: Builder| b.build().map(|_| ()).unwrap_err().field().to_owned();
    assert_eq!(field(RetryLayer::builder().max_attempts(0)), "max_attempts");
    assert_eq!(
        field(RetryLayer::builder().max_attempts(101)),
        "max_attempts"
    );
    assert_eq!(
        field(RetryLayer::builder().deadline(Duration::ZERO)),
        "deadline"
    );
    assert_eq!(field(RetryLayer::builder().name("")), "name");
    assert_eq!(
        field(RetryLayer::builder().backoff(Backoff::exponential(SEC, MS))),
        "backoff.cap"
    );
    RetryLayer::builder().build().unwrap();
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    type Svc = tower::util::BoxCloneSyncService<u32, u32, BoxError>;
    send_sync::<RetryLayer>();
    send_sync::<steadfast::retry::Retry<Svc>>();
    send_sync::<RetryBudget>();
    send_sync::<steadfast::attempt::Attempt>();
    fn send<T: Send>() {}
    send::<
        steadfast::retry::future::ResponseFuture<
            Svc,
            u32,
            steadfast::classify::ErrorsAsFailures,
            steadfast::attempt::CloneRequest,
        >,
    >();
}
