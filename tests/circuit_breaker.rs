//! Behaviour of the circuit breaker, with paused time: every transition and
//! rule, the forced modes, cancellation, readiness, metrics and validation.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{Builder, CircuitBreakerLayer, SlidingWindow, State};
use steadfast::classify::{Classify, ErrorsAsFailures, Verdict};
use steadfast::error::{BoxError, CircuitOpen};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A scriptable dependency: fails or succeeds, optionally slowly, and
/// counts the calls that reached it.
#[derive(Clone, Default)]
struct Backend {
    fail: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
}

impl Backend {
    fn failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = u32,
        Error = BoxError,
        Future = impl Future<Output = Result<u32, BoxError>> + Send,
    > + Clone
    + Send {
        let b = self.clone();
        tower::service_fn(move |req: u32| {
            let b = b.clone();
            async move {
                b.hits.fetch_add(1, Ordering::SeqCst);
                let delay = b.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                if b.fail.load(Ordering::SeqCst) {
                    Err("boom".into())
                } else {
                    Ok(req)
                }
            }
        })
    }
}

/// A builder with exact (un-jittered) open periods for the tests.
fn builder() -> Builder {
    CircuitBreakerLayer::builder()
        .name("test")
        .window(SlidingWindow::count(10))
        .min_calls(5)
        .failure_rate(0.5)
        .open_backoff(Backoff::constant(10 * SEC))
        .half_open_probes(2)
}

async fn call<S>(svc: &mut S) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(7).await
}

fn open_error(result: Result<u32, BoxError>) -> CircuitOpen {
    match result {
        Err(err) => match err.downcast::<CircuitOpen>() {
            Ok(open) => *open,
            Err(other) => panic!("expected CircuitOpen, got {other}"),
        },
        Ok(v) => panic!("expected CircuitOpen, got Ok({v})"),
    }
}

#[tokio::test(start_paused = true)]
async fn failure_rate_trips_only_after_min_calls() {
    let backend = Backend::default();
    let layer = builder().build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    backend.failing(true);
    for _ in 0..4 {
        assert!(call(&mut svc).await.is_err());
        assert_eq!(
            circuit.state(),
            State::Closed,
            "4 calls are below min_calls"
        );
    }
    assert!(call(&mut svc).await.is_err());
    assert_eq!(circuit.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_threshold_is_inclusive_and_mixes_outcomes() {
    let backend = Backend::default();
    let layer = builder().build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    for _ in 0..3 {
        call(&mut svc).await.unwrap();
    }
    backend.failing(true);
    call(&mut svc).await.unwrap_err();
    call(&mut svc).await.unwrap_err();
    // 2 of 5: 40%.
    assert_eq!(circuit.state(), State::Closed);
    assert_eq!(circuit.snapshot().failure_rate(), Some(0.4));
    call(&mut svc).await.unwrap_err();
    // 3 of 6: 50% trips.
    assert_eq!(circuit.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn count_window_holds_exactly_the_last_n_calls() {
    let backend = Backend::default();
    let layer = builder().min_calls(10).failure_rate(1.0).build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    for _ in 0..1_000 {
        call(&mut svc).await.unwrap();
    }
    backend.failing(true);
    for i in 1..=9 {
        call(&mut svc).await.unwrap_err();
        let snap = circuit.snapshot();
        assert_eq!((snap.calls, snap.failures), (10, i));
        assert_eq!(snap.state, State::Closed);
    }
    // The tenth failure fills the window: 100% of the last 10.
    call(&mut svc).await.unwrap_err();
    assert_eq!(circuit.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let backend = Backend::default();
    let layer = builder()
        .window(SlidingWindow::time_with_buckets(10 * SEC, 10))
        .min_calls(4)
        .build()
        .unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    backend.failing(true);
    for _ in 0..3 {
        call(&mut svc).await.unwrap_err();
    }
    advance(11 * SEC).await;
    // The three old failures left the window: three new ones are not enough.
    for _ in 0..3 {
        call(&mut svc).await.unwrap_err();
    }
    assert_eq!(circuit.snapshot().calls, 3);
    assert_eq!(circuit.state(), State::Closed);
    call(&mut svc).await.unwrap_err();
    assert_eq!(circuit.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_even_when_they_succeed() {
    let backend = Backend::default();
    let layer = builder()
        .no_failure_rate()
        .slow_calls(100 * MS, 0.5)
        .min_calls(4)
        .build()
        .unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    backend.delay(99 * MS);
    for _ in 0..10 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(circuit.snapshot().slow_calls, 0);
    backend.delay(100 * MS);
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(circuit.state(), State::Closed, "4 slow of the last 10");
    call(&mut svc).await.unwrap();
    assert_eq!(circuit.state(), State::Open, "5 slow of the last 10");
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures() {
    let backend = Backend::default();
    let layer = builder()
        .no_failure_rate()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    for fail in [true, true, false, true, true] {
        backend.failing(fail);
        let _ = call(&mut svc).await;
    }
    assert_eq!(circuit.state(), State::Closed);
    assert_eq!(circuit.snapshot().consecutive_failures, 2);
    backend.failing(true);
    call(&mut svc).await.unwrap_err();
    assert_eq!(circuit.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_at_once_then_half_open_probes_close_it() {
    let backend = Backend::default();
    let layer = builder().build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());
    let mut states = circuit.subscribe();
    assert_eq!(*states.borrow_and_update(), State::Closed);

    backend.failing(true);
    for _ in 0..5 {
        call(&mut svc).await.unwrap_err();
    }
    assert!(states.has_changed().unwrap());
    assert_eq!(*states.borrow_and_update(), State::Open);
    let opened = Instant::now();
    let hits = backend.hits();

    // Open: fail fast, the dependency is not called.
    let open = open_error(call(&mut svc).await);
    assert_eq!(open.name(), "test");
    assert_eq!(open.retry_after(), Some(10 * SEC));
    advance(10 * SEC - MS).await;
    assert_eq!(open_error(call(&mut svc).await).retry_after(), Some(MS));
    assert_eq!(backend.hits(), hits);
    assert_eq!(circuit.snapshot().open_until, Some(opened + 10 * SEC));

    // The period is over: the next call is a probe.
    advance(MS).await;
    backend.failing(false);
    call(&mut svc).await.unwrap();
    assert_eq!(circuit.state(), State::HalfOpen);
    assert_eq!(*states.borrow_and_update(), State::HalfOpen);
    call(&mut svc).await.unwrap();
    assert_eq!(circuit.state(), State::Closed);
    assert_eq!(*states.borrow_and_update(), State::Closed);
    assert_eq!(backend.hits(), hits + 2);

    // Closed again with a clean window: one failure is not a trip.
    let snap = circuit.snapshot();
    assert_eq!(
        (snap.calls, snap.failures, snap.consecutive_trips),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_k_probes() {
    let backend = Backend::default();
    let layer = builder().half_open_probes(2).build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());
    backend.failing(true);
    for _ in 0..5 {
        call(&mut svc).await.unwrap_err();
    }
    advance(10 * SEC).await;
    backend.failing(false);
    backend.delay(SEC);

    // Two slow probes in flight take both slots.
    let mut a = svc.clone();
    let mut b = svc.clone();
    let probe_a = a.ready().await.unwrap().call(1);
    let probe_b = b.ready().await.unwrap().call(2);
    let third = open_error(call(&mut svc).await);
    assert_eq!(
        third.retry_after(),
        None,
        "no time is known while probes run"
    );
    assert_eq!(circuit.state(), State::HalfOpen);

    let (ra, rb) = tokio::join!(probe_a, probe_b);
    assert_eq!((ra.unwrap(), rb.unwrap()), (1, 2));
    assert_eq!(circuit.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_and_the_open_period_grows_until_a_close() {
    let backend = Backend::default();
    let layer = builder()
        .half_open_probes(1)
        .open_backoff(Backoff::exponential(SEC, 8 * SEC))
        .build()
        .unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    backend.failing(true);
    for _ in 0..5 {
        call(&mut svc).await.unwrap_err();
    }
    let mut periods = vec![circuit.snapshot().open_until.unwrap() - Instant::now()];
    for _ in 0..4 {
        advance(*periods.last().unwrap()).await;
        // The probe fails: HalfOpen -> Open for a longer period.
        call(&mut svc).await.unwrap_err();
        assert_eq!(circuit.state(), State::Open);
        periods.push(circuit.snapshot().open_until.unwrap() - Instant::now());
    }
    assert_eq!(periods, [SEC, 2 * SEC, 4 * SEC, 8 * SEC, 8 * SEC]);
    assert_eq!(circuit.snapshot().consecutive_trips, 5);

    // A probe succeeds: closed, and the schedule starts over.
    advance(8 * SEC).await;
    backend.failing(false);
    call(&mut svc).await.unwrap();
    assert_eq!(circuit.state(), State::Closed);
    backend.failing(true);
    for _ in 0..5 {
        call(&mut svc).await.unwrap_err();
    }
    assert_eq!(circuit.snapshot().open_until.unwrap() - Instant::now(), SEC);
}

/// Failures that carry a server pushback, like `503` + `Retry-After`.
#[derive(Clone)]
struct Pushback(Duration);

impl Classify<u32, BoxError> for Pushback {
    fn classify(&self, result: Result<&u32, &BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::success(),
            Err(_) => Verdict::retryable_failure().with_pushback(self.0),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pushback_longer_than_the_period_extends_it_up_to_the_cap() {
    for (pushback, cap, expected) in [
        (30 * SEC, 60 * SEC, 30 * SEC),
        (30 * SEC, 20 * SEC, 20 * SEC),
        (2 * SEC, 60 * SEC, 10 * SEC),
        (30 * SEC, Duration::ZERO, 10 * SEC),
    ] {
        let backend = Backend::default();
        let layer = builder()
            .classify(Pushback(pushback))
            .max_pushback(cap)
            .build()
            .unwrap();
        let circuit = layer.circuit().clone();
        let mut svc = layer.layer(backend.service());
        backend.failing(true);
        for _ in 0..5 {
            call(&mut svc).await.unwrap_err();
        }
        assert_eq!(
            circuit.snapshot().open_until.unwrap() - Instant::now(),
            expected,
            "{pushback:?} capped at {cap:?}"
        );
        assert_eq!(
            open_error(call(&mut svc).await).retry_after(),
            Some(expected)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn forced_states() {
    let backend = Backend::default();
    let layer = builder().build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    // Forced open: isolate the dependency.
    circuit.force_open();
    assert_eq!(circuit.state(), State::ForcedOpen);
    assert_eq!(open_error(call(&mut svc).await).retry_after(), None);
    assert_eq!(backend.hits(), 0);
    advance(3600 * SEC).await;
    assert_eq!(
        circuit.state(),
        State::ForcedOpen,
        "no time releases a forced open"
    );

    // Disabled: everything goes through, nothing trips.
    circuit.disable();
    backend.failing(true);
    for _ in 0..50 {
        call(&mut svc).await.unwrap_err();
    }
    assert_eq!(circuit.state(), State::Disabled);
    assert_eq!(circuit.snapshot().calls, 0);

    // Metrics-only: the machine trips, the calls still go through.
    circuit.metrics_only();
    for _ in 0..5 {
        call(&mut svc).await.unwrap_err();
    }
    let snap = circuit.snapshot();
    assert!(snap.metrics_only);
    assert_eq!(snap.state, State::Open);
    let hits = backend.hits();
    backend.failing(false);
    call(&mut svc).await.unwrap();
    assert_eq!(backend.hits(), hits + 1);

    // Reset: automatic, closed, clean.
    circuit.reset();
    let snap = circuit.snapshot();
    assert_eq!(
        (snap.state, snap.metrics_only, snap.calls),
        (State::Closed, false, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back() {
    let backend = Backend::default();
    let layer = builder().half_open_probes(1).build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());
    backend.failing(true);
    for _ in 0..5 {
        call(&mut svc).await.unwrap_err();
    }
    advance(10 * SEC).await;
    backend.failing(false);
    backend.delay(60 * SEC);

    let probe = svc.ready().await.unwrap().call(1);
    // Polled once: in flight at the dependency.
    let mut probe = Box::pin(probe);
    assert!(futures::poll!(probe.as_mut()).is_pending());
    assert_eq!(backend.hits(), 6);
    open_error(call(&mut svc).await);

    // The caller gives up: the slot comes back and a new probe is admitted.
    drop(probe);
    backend.delay(Duration::ZERO);
    call(&mut svc).await.unwrap();
    assert_eq!(circuit.state(), State::Closed);

    // The same holds for an admission that was never used.
    circuit.force_open();
    circuit.reset();
    backend.failing(true);
    for _ in 0..5 {
        call(&mut svc).await.unwrap_err();
    }
    advance(10 * SEC).await;
    let mut unused = svc.clone();
    unused.ready().await.unwrap();
    drop(unused);
    backend.failing(false);
    call(&mut svc).await.unwrap();
    assert_eq!(circuit.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_for_nothing_and_free_the_probe() {
    let backend = Backend::default();
    let ignore_errors = |r: Result<&u32, &BoxError>| match r {
        Ok(_) => Verdict::success(),
        Err(_) => Verdict::ignored(),
    };
    let layer = builder()
        .classify(ignore_errors)
        .half_open_probes(1)
        .build()
        .unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());
    backend.failing(true);
    for _ in 0..20 {
        call(&mut svc).await.unwrap_err();
    }
    assert_eq!(circuit.snapshot().calls, 0);
    assert_eq!(circuit.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_circuit_is_ready_without_polling_an_unready_inner_service() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    handle.allow(0);
    let layer = builder().build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = tower_test::mock::Spawn::new(layer.layer(mock));

    // Closed: readiness waits on the inner service.
    assert!(svc.poll_ready().is_pending());
    circuit.force_open();
    // Open: ready at once, and the call fails fast.
    let Poll::Ready(Ok(())) = svc.poll_ready() else {
        panic!("not ready")
    };
    let fut = svc.call(1);
    open_error(fut.await.map(|_| 0));
    assert!(
        handle.poll_request().is_pending(),
        "nothing reached the inner service"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_pass_through_and_free_the_probe() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let layer = builder().half_open_probes(1).build().unwrap();
    let circuit = layer.circuit().clone();
    let mut svc = tower_test::mock::Spawn::new(layer.layer(mock));
    circuit.force_open();
    circuit.reset();
    // Trip by hand through five failures.
    for _ in 0..5 {
        handle.allow(1);
        let Poll::Ready(Ok(())) = svc.poll_ready() else {
            panic!()
        };
        let fut = svc.call(1);
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error("boom");
        fut.await.unwrap_err();
    }
    assert_eq!(circuit.state(), State::Open);
    advance(10 * SEC).await;
    handle.send_error("connection lost");
    let Poll::Ready(Err(err)) = svc.poll_ready() else {
        panic!("expected the inner error")
    };
    assert_eq!(err.to_string(), "connection lost");
    assert_eq!(circuit.state(), State::HalfOpen);
    // The probe slot taken in that poll_ready is free again: the single
    // probe this circuit allows is admitted and closes it.
    handle.allow(1);
    let Poll::Ready(Ok(())) = svc.poll_ready() else {
        panic!("probe not admitted")
    };
    let fut = svc.call(1);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(1);
    assert_eq!(fut.await.unwrap(), 1);
    assert_eq!(circuit.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn every_service_of_a_layer_shares_one_circuit() {
    let backend = Backend::default();
    let layer = builder().build().unwrap();
    let mut one = layer.layer(backend.service());
    let mut two = layer.clone().layer(backend.service());
    let mut three = one.clone();
    backend.failing(true);
    for _ in 0..2 {
        call(&mut one).await.unwrap_err();
        call(&mut two).await.unwrap_err();
    }
    call(&mut three).await.unwrap_err();
    assert_eq!(layer.circuit().state(), State::Open);
    for svc in [&mut one, &mut two, &mut three] {
        open_error(call(svc).await);
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_calls_and_states() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer =
        metrics::with_local_recorder(&recorder, || builder().name("payments").build().unwrap());
    let backend = Backend::default();
    let circuit = layer.circuit().clone();
    let mut svc = layer.layer(backend.service());

    call(&mut svc).await.unwrap();
    backend.failing(true);
    // 4 failures of 5 calls trip it; the next two are rejected.
    for _ in 0..4 {
        call(&mut svc).await.unwrap_err();
    }
    open_error(call(&mut svc).await);
    open_error(call(&mut svc).await);
    assert_eq!(circuit.state(), State::Open);

    let recorded = support::metrics::Recorded::take(&snapshotter);
    let get = |k: &str| recorded.get(k);
    assert_eq!(
        get("steadfast_circuit_calls_total{name=payments,outcome=success}"),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        get("steadfast_circuit_calls_total{name=payments,outcome=failure}"),
        &DebugValue::Counter(4)
    );
    assert_eq!(
        get("steadfast_circuit_rejected_total{name=payments}"),
        &DebugValue::Counter(2)
    );
    let gauge = |state: &str| match get(&format!(
        "steadfast_circuit_state{{name=payments,state={state}}}"
    )) {
        DebugValue::Gauge(v) => v.into_inner(),
        other => panic!("{other:?}"),
    };
    assert_eq!(gauge("open"), 1.0);
    assert_eq!(
        gauge("closed"),
        0.0,
        "the old state's gauge goes back to zero"
    );
    assert_eq!(gauge("half_open"), 0.0);
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let field = |b: Builder| b.build().map(|_| ()).unwrap_err().field().to_owned();
    assert_eq!(
        field(builder().window(SlidingWindow::count(0))),
        "window.size"
    );
    assert_eq!(
        field(builder().window(SlidingWindow::time_with_buckets(SEC, 0))),
        "window.buckets"
    );
    assert_eq!(
        field(builder().window(SlidingWindow::time_with_buckets(Duration::ZERO, 10))),
        "window.span"
    );
    assert_eq!(
        field(builder().window(SlidingWindow::time_with_buckets(5 * MS, 10))),
        "window.span"
    );
    assert_eq!(field(builder().failure_rate(1.5)), "failure_rate");
    assert_eq!(field(builder().failure_rate(0.0)), "failure_rate");
    assert_eq!(field(builder().failure_rate(-0.1)), "failure_rate");
    assert_eq!(field(builder().failure_rate(f64::NAN)), "failure_rate");
    assert_eq!(
        field(builder().slow_calls(Duration::ZERO, 0.5)),
        "slow_calls.threshold"
    );
    assert_eq!(field(builder().slow_calls(SEC, 2.0)), "slow_calls.rate");
    assert_eq!(field(builder().half_open_probes(0)), "half_open_probes");
    assert_eq!(
        field(builder().half_open_probes(u32::MAX)),
        "half_open_probes"
    );
    assert_eq!(
        field(builder().consecutive_failures(0)),
        "consecutive_failures"
    );
    assert_eq!(field(builder().min_calls(0)), "min_calls");
    assert_eq!(field(builder().min_calls(11)), "min_calls");
    assert_eq!(field(builder().name("")), "name");
    assert_eq!(field(builder().no_failure_rate()), "failure_rate");
    assert_eq!(
        field(builder().open_backoff(Backoff::constant(Duration::ZERO))),
        "open_backoff"
    );
    assert_eq!(
        field(builder().open_backoff(Backoff::exponential(SEC, MS))),
        "open_backoff.cap"
    );
    assert_eq!(
        field(builder().open_backoff(Backoff::exponential(SEC, 2 * SEC).factor(0.9))),
        "open_backoff.factor"
    );
    // And the defaults are valid.
    CircuitBreakerLayer::builder().build().unwrap();
    let err = builder().failure_rate(1.5).build().map(|_| ()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: `failure_rate` must be in (0, 1], got 1.5"
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    type Svc = tower::util::BoxCloneSyncService<u32, u32, BoxError>;
    send_sync::<CircuitBreakerLayer>();
    send_sync::<steadfast::circuit_breaker::Circuit>();
    send_sync::<steadfast::circuit_breaker::CircuitBreaker<Svc, ErrorsAsFailures>>();
    send_sync::<
        steadfast::circuit_breaker::future::ResponseFuture<
            std::future::Ready<Result<u32, BoxError>>,
            ErrorsAsFailures,
        >,
    >();
    send_sync::<CircuitOpen>();
    send_sync::<steadfast::error::ConfigError>();
    send_sync::<steadfast::circuit_breaker::Snapshot>();
}
