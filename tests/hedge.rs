//! Behaviour of the hedge layer, with paused time.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::budget::RetryBudget;
use steadfast::classify::Verdict;
use steadfast::error::BoxError;
use steadfast::hedge::{Builder, HedgeDelay, HedgeLayer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// What one attempt does: wait `latency`, then answer or fail.
#[derive(Clone, Copy, Debug)]
struct Step {
    latency: Duration,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    /// A failure another attempt may fix.
    Retryable,
    /// A failure another attempt would not fix.
    Fatal,
}

fn step(latency: Duration, outcome: Outcome) -> Step {
    Step { latency, outcome }
}

/// A scripted dependency: the n-th call follows `script[n]` (the last step
/// repeats). Logs each call's start and counts cancelled calls.
#[derive(Clone)]
struct Backend {
    script: Arc<Mutex<Vec<Step>>>,
    starts: Arc<Mutex<Vec<Instant>>>,
    cancelled: Arc<AtomicU64>,
}

/// Counts a call as cancelled if dropped before it finished.
struct DropGuard {
    cancelled: Arc<AtomicU64>,
    finished: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Backend {
    fn new(script: Vec<Step>) -> Self {
        Self {
            script: Arc::new(Mutex::new(script)),
            starts: Arc::default(),
            cancelled: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - t0)
            .collect()
    }

    fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = String,
        Error = BoxError,
        Future = impl Future<Output = Result<String, BoxError>> + Send,
    > + Clone
    + Send
    + 'static {
        let b = self.clone();
        tower::service_fn(move |_req: u32| {
            let b = b.clone();
            let n = {
                let mut starts = b.starts.lock().unwrap();
                starts.push(Instant::now());
                starts.len()
            };
            let step = {
                let script = b.script.lock().unwrap();
                script[(n - 1).min(script.len() - 1)]
            };
            let guard = DropGuard {
                cancelled: b.cancelled.clone(),
                finished: false,
            };
            async move {
                // Move the whole guard in (not just the field written below).
                let mut guard = guard;
                if !step.latency.is_zero() {
                    tokio::time::sleep(step.latency).await;
                }
                guard.finished = true;
                match step.outcome {
                    Outcome::Ok => Ok(format!("attempt {n}")),
                    Outcome::Retryable => Err(format!("attempt {n} failed, retryable").into()),
                    Outcome::Fatal => Err(format!("attempt {n} failed").into()),
                }
            }
        })
    }
}

/// Errors whose message says "retryable" may be fixed by another attempt.
#[derive(Clone, Copy)]
struct ByMessage;

impl steadfast::classify::Classify<String, BoxError> for ByMessage {
    fn classify(&self, result: Result<&String, &BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::success(),
            Err(e) if e.to_string().contains("retryable") => Verdict::retryable_failure(),
            Err(_) => Verdict::failure(),
        }
    }
}

fn roomy_budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::builder().min_per_sec(1_000).build().unwrap())
}

fn fixed(delay: Duration) -> Builder<ByMessage> {
    HedgeLayer::builder()
        .name("test")
        .delay(HedgeDelay::Fixed(delay))
        .budget(roomy_budget())
        .classify(ByMessage)
}

async fn call<S>(svc: &mut S) -> Result<String, BoxError>
where
    S: Service<u32, Response = String, Error = BoxError>,
{
    svc.ready().await?.call(1).await
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_hedged_after_the_delay_and_the_loser_dropped() {
    let backend = Backend::new(vec![step(SEC, Outcome::Ok), step(5 * MS, Outcome::Ok)]);
    let mut svc = fixed(20 * MS).build().unwrap().layer(backend.service());
    let t0 = Instant::now();
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 2");
    assert_eq!(t0.elapsed(), 25 * MS);
    assert_eq!(backend.offsets(t0), [Duration::ZERO, 20 * MS]);
    assert_eq!(
        backend.cancelled(),
        1,
        "the slow first attempt is dropped at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fast_attempt_is_not_hedged() {
    let backend = Backend::new(vec![step(10 * MS, Outcome::Ok)]);
    let mut svc = fixed(20 * MS).build().unwrap().layer(backend.service());
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 1");
    tokio::time::advance(SEC).await;
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fast_failure_does_not_beat_a_slower_success() {
    // Attempt 1 fails (not retryable) at 30 ms; attempt 2, sent at 20 ms,
    // succeeds at 60 ms: the caller gets the success.
    let backend = Backend::new(vec![
        step(30 * MS, Outcome::Fatal),
        step(40 * MS, Outcome::Ok),
    ]);
    let mut svc = fixed(20 * MS).build().unwrap().layer(backend.service());
    let t0 = Instant::now();
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 2");
    assert_eq!(t0.elapsed(), 60 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_fires_the_next_attempt_at_once() {
    let backend = Backend::new(vec![
        step(5 * MS, Outcome::Retryable),
        step(5 * MS, Outcome::Ok),
    ]);
    let mut svc = fixed(20 * MS).build().unwrap().layer(backend.service());
    let t0 = Instant::now();
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 2");
    assert_eq!(
        backend.offsets(t0),
        [Duration::ZERO, 5 * MS],
        "not after the 20 ms delay"
    );
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_caller_gets_the_last_failure() {
    let backend = Backend::new(vec![
        step(30 * MS, Outcome::Fatal),
        step(50 * MS, Outcome::Fatal),
    ]);
    let mut svc = fixed(20 * MS).build().unwrap().layer(backend.service());
    let t0 = Instant::now();
    let err = call(&mut svc).await.unwrap_err();
    assert_eq!(err.to_string(), "attempt 2 failed");
    assert_eq!(t0.elapsed(), 70 * MS);

    // A lone failure with nothing else in flight ends the call at once.
    let backend = Backend::new(vec![step(5 * MS, Outcome::Fatal)]);
    let mut svc = fixed(20 * MS).build().unwrap().layer(backend.service());
    let t0 = Instant::now();
    assert_eq!(
        call(&mut svc).await.unwrap_err().to_string(),
        "attempt 1 failed"
    );
    assert_eq!(t0.elapsed(), 5 * MS);
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn at_most_max_extra_attempts_are_sent() {
    let backend = Backend::new(vec![step(SEC, Outcome::Ok)]);
    let mut svc = fixed(20 * MS)
        .max_extra_attempts(2)
        .build()
        .unwrap()
        .layer(backend.service());
    let t0 = Instant::now();
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 1");
    assert_eq!(backend.offsets(t0), [Duration::ZERO, 20 * MS, 40 * MS]);
    assert_eq!(backend.cancelled(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_delay_follows_the_quantile_within_floor_and_ceiling() {
    let delay = |quantile, floor, ceiling| HedgeDelay::Adaptive {
        quantile,
        floor,
        ceiling,
        window: 10 * SEC,
        min_samples: 20,
        initial: 50 * MS,
    };
    for (latency, floor, ceiling, expected) in [
        (10 * MS, MS, SEC, 10 * MS),
        (Duration::from_micros(100), MS, SEC, MS),
        (40 * MS, MS, 30 * MS, 30 * MS),
    ] {
        let backend = Backend::new(vec![step(latency, Outcome::Ok)]);
        let layer = fixed(MS)
            .delay(delay(0.95, floor, ceiling))
            .build()
            .unwrap();
        let mut svc = layer.layer(backend.service());
        // Until 20 samples are in, the initial delay.
        assert_eq!(layer.current_delay(), 50 * MS);
        for _ in 0..40 {
            call(&mut svc).await.unwrap();
        }
        tokio::time::advance(2 * SEC).await;
        let got = layer.current_delay();
        let ratio = got.as_secs_f64() / expected.as_secs_f64();
        assert!(
            (0.93..=1.07).contains(&ratio),
            "latency {latency:?}: delay {got:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_quantile_delay_hedges_the_slow_tail() {
    // 95 of 100 calls take 10 ms: the p95 delay is about 10 ms, so a call
    // stuck for a second is hedged after about 10 ms.
    let mut script = vec![step(10 * MS, Outcome::Ok); 100];
    script.push(step(SEC, Outcome::Ok));
    script.push(step(MS, Outcome::Ok));
    let backend = Backend::new(script);
    let mut svc = fixed(MS)
        .delay(HedgeDelay::quantile(0.95))
        .build()
        .unwrap()
        .layer(backend.service());
    for _ in 0..100 {
        call(&mut svc).await.unwrap();
    }
    tokio::time::advance(2 * SEC).await;
    let t0 = Instant::now();
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 102");
    let took = t0.elapsed();
    assert!(took >= 10 * MS && took <= 13 * MS, "{took:?}");
}

/// Calls that all take the same time are not hedged: the adaptive delay
/// is never below the quantile, so at most 1 - q of calls outlast it (a
/// delay a hair under a tight cluster of latencies would hedge all of it).
#[tokio::test(start_paused = true)]
async fn calls_that_all_take_the_same_time_are_not_hedged() {
    for latency in [10 * MS, 3 * MS, 250 * MS] {
        let backend = Backend::new(vec![step(latency, Outcome::Ok)]);
        let mut svc = fixed(MS)
            .delay(HedgeDelay::quantile(0.95))
            .build()
            .unwrap()
            .layer(backend.service());
        for _ in 0..40 {
            call(&mut svc).await.unwrap();
        }
        tokio::time::advance(2 * SEC).await;
        let before = backend.calls();
        for _ in 0..100 {
            call(&mut svc).await.unwrap();
        }
        assert_eq!(backend.calls() - before, 100, "latency {latency:?}: hedged");
    }
}

/// Every call turns 10x slower than the hedge delay: a hedge for every
/// call would double the load; the budget keeps it at its ratio.
#[tokio::test(start_paused = true)]
async fn the_budget_caps_extra_load_under_a_latency_shift() {
    let backend = Backend::new(vec![step(200 * MS, Outcome::Ok)]);
    let budget = Arc::new(
        RetryBudget::builder()
            .ratio(0.1)
            .min_per_sec(1)
            .ttl(10 * SEC)
            .build()
            .unwrap(),
    );
    let svc = fixed(20 * MS)
        .budget(budget)
        .build()
        .unwrap()
        .layer(backend.service());
    let requests = 2_000u32;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move { call(&mut svc).await }));
        tokio::time::sleep(5 * MS).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let extra = backend.calls() as f64 / f64::from(requests) - 1.0;
    // ratio 0.1, plus the floor: 1/s over the 10 s ttl, renewed each time
    // the window (9 to 10 s: 10 buckets of 1 s) has moved on; the run lasts
    // 10.2 s, so two windows' worth: 20 for 2,000 requests.
    let bound = 0.1 + 2.0 * 10.0 / f64::from(requests);
    println!(
        "extra attempts per request under a latency shift: {extra:.4} (bound {bound:.3}; unbudgeted: 1.0)"
    );
    assert!(extra <= bound + 1e-9, "{extra} > {bound}");
    assert!(extra >= 0.09, "the budget should allow its ratio: {extra}");
}

#[tokio::test(start_paused = true)]
async fn requests_that_cannot_be_copied_are_not_hedged() {
    #[derive(Clone, Copy)]
    struct Never;
    impl steadfast::attempt::Replay<u32> for Never {
        fn replay(&self, _: &u32) -> Option<u32> {
            None
        }
    }
    let backend = Backend::new(vec![step(SEC, Outcome::Ok)]);
    let mut svc = fixed(20 * MS)
        .replay(Never)
        .build()
        .unwrap()
        .layer(backend.service());
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 1");
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_drops_every_attempt_and_the_timer() {
    let backend = Backend::new(vec![step(SEC, Outcome::Ok)]);
    let mut svc = fixed(20 * MS)
        .max_extra_attempts(3)
        .build()
        .unwrap()
        .layer(backend.service());
    let fut = svc.ready().await.unwrap().call(1);
    let handle = tokio::spawn(fut);
    tokio::time::sleep(30 * MS).await;
    assert_eq!(backend.calls(), 2);
    handle.abort();
    let _ = handle.await;
    assert_eq!(backend.cancelled(), 2);
    tokio::time::advance(10 * SEC).await;
    tokio::task::yield_now().await;
    assert_eq!(backend.calls(), 2, "no hedge after the caller gave up");
}

/// A call that completes on its first poll arms no timer: outside any
/// tokio runtime, arming one would panic.
#[test]
fn no_timer_for_a_call_that_completes_at_once() {
    let mut svc = HedgeLayer::builder()
        .build()
        .unwrap()
        .layer(tower::service_fn(|x: u32| {
            std::future::ready(Ok::<_, BoxError>(x))
        }));
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..100 {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = std::pin::pin!(svc.call(i));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(v)) => assert_eq!(v, i),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_hedges_sent_won_and_refused() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let backend = Backend::new(vec![
        step(SEC, Outcome::Ok),
        step(MS, Outcome::Ok),
        step(SEC, Outcome::Ok),
    ]);
    let layer = metrics::with_local_recorder(&recorder, || {
        fixed(20 * MS)
            .name("search")
            .budget(Arc::new(
                RetryBudget::builder()
                    .ratio(0.0)
                    .min_per_sec(1)
                    .ttl(SEC)
                    .build()
                    .unwrap(),
            ))
            .build()
            .unwrap()
    });
    let mut svc = layer.layer(backend.service());
    // The floor allows one hedge in the ttl: the first call's wins...
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 2");
    // ...and the second call's is refused.
    assert_eq!(call(&mut svc).await.unwrap(), "attempt 3");
    let recorded = support::metrics::Recorded::take(&snapshotter);
    let get = |k: &str| recorded.get(k);
    assert_eq!(
        get("steadfast_hedge_sent_total{name=search}"),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        get("steadfast_hedge_won_total{name=search}"),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        get("steadfast_hedge_refused_total{name=search,reason=budget}"),
        &DebugValue::Counter(1)
    );
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_requests_follow_the_idempotency_rules_and_are_marked() {
    use steadfast::attempt::Attempt;
    use steadfast::http::HttpReplay;

    let seen: Arc<Mutex<Vec<(http::Method, u32)>>> = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: http::Request<String>| {
            let attempt = req.extensions().get::<Attempt>().map_or(0, Attempt::number);
            seen.lock().unwrap().push((req.method().clone(), attempt));
            async move {
                if attempt == 1 {
                    tokio::time::sleep(SEC).await;
                }
                Ok::<_, BoxError>(http::Response::new(String::new()))
            }
        })
    };
    let mut svc = HedgeLayer::builder()
        .delay(HedgeDelay::Fixed(20 * MS))
        .budget(roomy_budget())
        .replay(HttpReplay::new())
        .build()
        .unwrap()
        .layer(inner);
    let get = http::Request::get("http://x/").body(String::new()).unwrap();
    svc.ready().await.unwrap().call(get).await.unwrap();
    let post = http::Request::post("http://x/")
        .body("charge".to_owned())
        .unwrap();
    svc.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (http::Method::GET, 1),
            (http::Method::GET, 2),
            (http::Method::POST, 1)
        ],
        "the GET is hedged as attempt 2; the POST is not hedged"
    );
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let field = |b: Builder| b.build().map(|_| ()).unwrap_err().field().to_owned();
    let adaptive = |quantile, floor, ceiling, window| HedgeDelay::Adaptive {
        quantile,
        floor,
        ceiling,
        window,
        min_samples: 10,
        initial: MS,
    };
    assert_eq!(
        field(HedgeLayer::builder().max_extra_attempts(0)),
        "max_extra_attempts"
    );
    assert_eq!(
        field(HedgeLayer::builder().max_extra_attempts(11)),
        "max_extra_attempts"
    );
    assert_eq!(
        field(HedgeLayer::builder().delay(HedgeDelay::Fixed(Duration::ZERO))),
        "delay"
    );
    assert_eq!(
        field(HedgeLayer::builder().delay(adaptive(1.0, MS, SEC, SEC))),
        "delay.quantile"
    );
    assert_eq!(
        field(HedgeLayer::builder().delay(adaptive(0.0, MS, SEC, SEC))),
        "delay.quantile"
    );
    assert_eq!(
        field(HedgeLayer::builder().delay(adaptive(0.5, Duration::ZERO, SEC, SEC))),
        "delay.floor"
    );
    assert_eq!(
        field(HedgeLayer::builder().delay(adaptive(0.5, SEC, MS, SEC))),
        "delay.ceiling"
    );
    assert_eq!(
        field(HedgeLayer::builder().delay(adaptive(0.5, MS, SEC, MS))),
        "delay.window"
    );
    assert_eq!(field(HedgeLayer::builder().name("")), "name");
    HedgeLayer::builder().build().unwrap();
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    type Svc = tower::util::BoxCloneSyncService<u32, u32, BoxError>;
    send_sync::<HedgeLayer>();
    send_sync::<steadfast::hedge::Hedge<Svc>>();
    send::<
        steadfast::hedge::future::ResponseFuture<
            Svc,
            u32,
            steadfast::classify::ErrorsAsFailures,
            steadfast::attempt::CloneRequest,
        >,
    >();
    let _ = Backoff::constant(MS);
}

#[tokio::test(start_paused = true)]
async fn the_quantile_takes_over_as_soon_as_enough_samples_are_in() {
    let backend = Backend::new(vec![step(10 * MS, Outcome::Ok)]);
    let layer = fixed(MS).delay(HedgeDelay::quantile(0.95)).build().unwrap();
    let mut svc = layer.layer(backend.service());
    for _ in 0..19 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(
        layer.current_delay(),
        50 * MS,
        "19 samples: still the initial delay"
    );
    call(&mut svc).await.unwrap();
    let got = layer.current_delay();
    assert!(
        got >= 9 * MS && got <= 11 * MS,
        "the 20th sample switches to the quantile: {got:?}"
    );
}

#[test]
fn the_adaptive_delay_is_built_one_setting_at_a_time() {
    let built = HedgeDelay::adaptive()
        .quantile(0.99)
        .floor(5 * MS)
        .ceiling(SEC)
        .build();
    let HedgeDelay::Adaptive {
        quantile,
        floor,
        ceiling,
        window,
        min_samples,
        initial,
    } = built
    else {
        panic!("an adaptive delay: {built:?}");
    };
    assert_eq!((quantile, floor, ceiling), (0.99, 5 * MS, SEC));
    // The rest keep the defaults of `HedgeDelay::quantile`.
    let HedgeDelay::Adaptive {
        window: w,
        min_samples: m,
        initial: i,
        ..
    } = HedgeDelay::quantile(0.5)
    else {
        unreachable!()
    };
    assert_eq!((window, min_samples, initial), (w, m, i));
    assert_eq!(
        HedgeDelay::from(HedgeDelay::adaptive()),
        HedgeDelay::quantile(0.95)
    );
    // Validated when the layer is built, as the enum is.
    let err = HedgeLayer::builder()
        .delay(HedgeDelay::adaptive().floor(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "delay.floor");
}

/// With every other request's first attempt hanging (a replica that hangs
/// behind a balancer), the adaptive delay stays where it was while all
/// answered: a loser's wait is not its latency, so the delay does not
/// climb after the hedges, and the missing slowest calls do not drag it
/// down either.
#[tokio::test(start_paused = true)]
async fn the_adaptive_delay_does_not_chase_a_hang() {
    const HEALTHY_CALLS: usize = 2_000;
    // Calls after the healthy ones: those numbered 3k hang for an hour
    // (their hedge, the next call, answers).
    let latency = |n: usize| if n % 20 == 0 { 20 * MS } else { 10 * MS };
    let script: Vec<Step> = (0..HEALTHY_CALLS + 20_000)
        .map(|n| {
            if n >= HEALTHY_CALLS && n % 3 == 0 {
                step(3_600 * SEC, Outcome::Ok)
            } else {
                step(latency(n), Outcome::Ok)
            }
        })
        .collect();
    let backend = Backend::new(script);
    let layer = fixed(MS)
        .delay(HedgeDelay::adaptive().quantile(0.9).window(2 * SEC).build())
        .build()
        .unwrap();
    let mut svc = layer.layer(backend.service());
    while backend.calls() < HEALTHY_CALLS {
        call(&mut svc).await.unwrap();
    }
    let healthy = layer.current_delay();
    let mut delays = Vec::new();
    for round in 0..10 {
        // Two seconds of the hang, a window each.
        let until = Instant::now() + 2 * SEC;
        while Instant::now() < until {
            call(&mut svc).await.unwrap();
        }
        delays.push((round, layer.current_delay()));
    }
    for &(round, delay) in &delays {
        let ratio = delay.as_secs_f64() / healthy.as_secs_f64();
        assert!(
            (1.0 / 1.5..=1.5).contains(&ratio),
            "round {round}: delay {delay:?} against {healthy:?} healthy: {delays:?}"
        );
    }
}
