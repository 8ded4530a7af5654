//! Every duration validation accepts works, down to the smallest and up to
//! `Duration::MAX` ("forever" where that is its meaning): no overflow, no
//! panic, on the request path, in snapshots, or in the health-check task.
//! One case per setting, at each end; time is paused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod support;

use futures::future::BoxFuture;
use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{CircuitBreakerLayer, State};
use steadfast::classify::Verdict;
use steadfast::error::BoxError;
use steadfast::health::{HealthCheck, HealthChecks};
use steadfast::pool::{Builder, Health, OutlierDetection, Pool, Replica, WhenNoneHealthy};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

type Svc = tower::util::BoxCloneSyncService<u32, (), BoxError>;

/// A replica that fails while its flag is up.
fn replica(failing: &Arc<AtomicBool>) -> Replica<Svc> {
    let failing = failing.clone();
    Replica::new(tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_: u32| {
            let fail = failing.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err::<(), BoxError>("down".into())
                } else {
                    Ok(())
                }
            }
        },
    )))
}

/// Failures in a row eject after 2; nothing else judges.
fn outlier() -> OutlierDetection {
    OutlierDetection::default()
        .consecutive_failures(Some(2))
        .failure_percentage(None)
        .success_rate_stdev(None)
        .latency_factor(None)
        .max_ejected(1.0)
}

fn builder() -> Builder {
    Pool::builder()
        .name("extremes")
        .seed(1)
        .failure_penalty(Duration::ZERO)
        .outlier(outlier())
}

/// Sends `n` requests, ignoring their outcomes.
async fn send<S: Service<u32, Response = (), Error = BoxError>>(svc: &mut S, n: usize) {
    for _ in 0..n {
        if let Ok(ready) = svc.ready().await {
            let _ = ready.call(0).await;
        }
    }
}

fn health(handle: &steadfast::pool::PoolHandle<&'static str, Svc>, id: &str) -> Health {
    handle
        .snapshot()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap()
        .health
}

#[tokio::test(start_paused = true)]
async fn an_ejection_of_any_length_ejects_and_one_of_duration_max_lasts() {
    for period in [MS, Duration::from_secs(10), Duration::MAX] {
        let down = Arc::new(AtomicBool::new(true));
        let up = Arc::new(AtomicBool::new(false));
        let mut pool = builder()
            .outlier(outlier().ejection(Backoff::constant(period)))
            .build([("a", replica(&down)), ("b", replica(&up))])
            .unwrap();
        let handle = pool.handle();
        send(&mut pool, 20).await;
        assert!(
            matches!(health(&handle, "a"), Health::Ejected { .. }),
            "{period:?}: {:?}",
            health(&handle, "a")
        );
        tokio::time::advance(YEAR).await;
        let after = health(&handle, "a");
        if period == Duration::MAX {
            assert!(
                matches!(after, Health::Ejected { .. }),
                "forever: {after:?}"
            );
        } else {
            assert!(
                !matches!(after, Health::Ejected { .. }),
                "{period:?}: {after:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failback_at_zero_is_at_once_and_at_duration_max_never() {
    for wait in [Duration::ZERO, MS, Duration::MAX] {
        let up = Arc::new(AtomicBool::new(false));
        let mut pool = builder()
            .failback_after(wait)
            .build([("a", replica(&up)), ("b", replica(&up))])
            .unwrap();
        let handle = pool.handle();
        handle.disable(&"a");
        handle.enable(&"a");
        send(&mut pool, 5).await;
        tokio::time::advance(YEAR).await;
        let after = health(&handle, "a");
        match wait {
            Duration::MAX => assert!(matches!(after, Health::Recovering { .. }), "{after:?}"),
            _ => assert_eq!(after, Health::Healthy, "{wait:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pushback_as_long_as_duration_max_is_honoured_for_good() {
    for max_pushback in [Duration::ZERO, MS, Duration::MAX] {
        let down = Arc::new(AtomicBool::new(true));
        let up = Arc::new(AtomicBool::new(false));
        // Every failure asks for `Duration::MAX` of quiet.
        let classify = |r: Result<&(), &BoxError>| match r {
            Ok(()) => Verdict::success(),
            Err(_) => Verdict::retryable_failure().with_pushback(Duration::MAX),
        };
        let mut pool = Pool::builder()
            .name("extremes")
            .seed(1)
            .classify(classify)
            .outlier(outlier().consecutive_failures(None))
            .max_pushback(max_pushback)
            .build([("a", replica(&down)), ("b", replica(&up))])
            .unwrap();
        let handle = pool.handle();
        send(&mut pool, 20).await;
        tokio::time::advance(YEAR).await;
        let after = health(&handle, "a");
        match max_pushback {
            Duration::ZERO => assert!(!matches!(after, Health::Avoided { .. }), "{after:?}"),
            Duration::MAX => assert!(matches!(after, Health::Avoided { .. }), "{after:?}"),
            _ => assert!(!matches!(after, Health::Avoided { .. }), "{after:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failure_penalties_and_sweep_intervals_at_both_ends() {
    for (penalty, interval) in [
        (Duration::ZERO, Duration::from_millis(10)),
        (Duration::MAX, Duration::MAX),
    ] {
        let down = Arc::new(AtomicBool::new(true));
        let up = Arc::new(AtomicBool::new(false));
        let mut pool = Pool::builder()
            .name("extremes")
            .seed(1)
            .failure_penalty(penalty)
            .outlier(OutlierDetection::default().interval(interval))
            .build([
                ("a", replica(&down)),
                ("b", replica(&up)),
                ("c", replica(&up)),
            ])
            .unwrap();
        for _ in 0..5 {
            send(&mut pool, 20).await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(pool.handle().snapshot().len(), 3);
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_replica_up_to_duration_max_waits_without_overflow() {
    let up = Arc::new(AtomicBool::new(false));
    let mut pool = builder()
        .when_none_healthy(WhenNoneHealthy::Wait(Duration::MAX))
        .build([("a", replica(&up))])
        .unwrap();
    let handle = pool.handle();
    handle.disable(&"a");
    // Nothing can take a request: a caller waits (bounded by its own
    // timeout here), and a replica enabled again ends the wait.
    let waited = tokio::time::timeout(Duration::from_secs(60), pool.ready()).await;
    assert!(waited.is_err(), "still waiting after a minute");
    handle.enable(&"a");
    let ready = tokio::time::timeout(Duration::from_secs(60), pool.ready()).await;
    assert!(ready.is_ok(), "the wait ends when a replica is back");
}

/// A check that fails (or hangs, if told to).
#[derive(Debug)]
struct Check {
    hang: bool,
}

impl HealthCheck for Check {
    fn check(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        let hang = self.hang;
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Err::<(), BoxError>("unhealthy".into())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn health_check_schedules_at_both_ends_never_stop_the_task() {
    let smallest = Duration::from_nanos(1);
    for (interval, timeout, hang) in [
        (smallest, smallest, false),
        (smallest, smallest, true),
        (Duration::MAX, Duration::MAX, false),
        (Duration::MAX, Duration::from_secs(1), true),
    ] {
        let up = Arc::new(AtomicBool::new(false));
        let checks = HealthChecks::default()
            .interval(interval)
            .unhealthy_interval(interval)
            .timeout(timeout)
            .unhealthy_threshold(1);
        let pool = builder()
            .health_checks(checks)
            .build([
                ("a", replica(&up).health_check(Check { hang })),
                ("b", replica(&up)),
            ])
            .unwrap();
        let handle = pool.handle();
        let task = tokio::spawn(pool.health_checks());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !task.is_finished(),
            "{interval:?}/{timeout:?}: the task runs on"
        );
        if !(hang && timeout == Duration::MAX) {
            assert_eq!(health(&handle, "a"), Health::FailingChecks, "{interval:?}");
        }
        tokio::time::advance(YEAR).await;
        tokio::task::yield_now().await;
        assert!(
            !task.is_finished(),
            "{interval:?}/{timeout:?}: still running a year on"
        );
        task.abort();
        drop(pool);
    }
}

#[tokio::test(start_paused = true)]
async fn a_breaker_open_for_duration_max_stays_open() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_backoff(Backoff::constant(Duration::MAX))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_: u32| async {
        Err::<(), BoxError>("down".into())
    }));
    let _ = svc.ready().await.unwrap().call(0).await;
    assert_eq!(layer.circuit().state(), State::Open);
    tokio::time::advance(YEAR).await;
    assert_eq!(layer.circuit().state(), State::Open);
    assert!(layer.circuit().snapshot().open_until.is_some());
}

#[test]
fn a_replica_of_weight_zero_is_refused_not_clamped() {
    let up = Arc::new(AtomicBool::new(false));
    let err = builder()
        .build([("a", replica(&up).weight(0))])
        .unwrap_err();
    assert_eq!(err.field(), "replicas");
    assert!(err.rule().contains("weight"), "{err}");
    assert!(builder().build([("a", replica(&up).weight(1))]).is_ok());
    assert!(
        builder()
            .build([("a", replica(&up).weight(u32::MAX))])
            .is_ok()
    );
}

#[test]
fn checking_a_pool_s_breaker_settings_registers_no_circuit() {
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let up = Arc::new(AtomicBool::new(false));
    metrics::with_local_recorder(&recorder, || {
        builder()
            .circuit_breaker(CircuitBreakerLayer::builder())
            .build([("a", replica(&up))])
            .unwrap()
    });
    let recorded = support::metrics::Recorded::take(&snapshotter);
    let names: Vec<&str> = recorded
        .keys()
        .filter(|k| k.starts_with("steadfast_circuit"))
        .collect();
    assert!(!names.is_empty(), "the replica's own circuit is registered");
    assert!(
        names.iter().all(|k| k.contains("name=extremes/a")),
        "no circuit but the replica's: {names:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn chaos_latencies_up_to_duration_max_do_not_overflow() {
    use steadfast::chaos::{ChaosLayer, Latency};

    for latency in [
        Latency::Fixed(Duration::MAX),
        Latency::Uniform(Duration::ZERO, Duration::MAX),
        Latency::HeavyTail {
            base: Duration::ZERO,
            tail: Duration::MAX,
            p: 1.0,
        },
    ] {
        let layer = ChaosLayer::new().seed(4);
        layer.handle().set_latency(latency);
        let mut svc = layer.layer(tower::service_fn(
            |x: u32| async move { Ok::<_, BoxError>(x) },
        ));
        let call = svc.ready().await.unwrap().call(1);
        // Delayed, as long as asked: still pending a year on.
        let out = tokio::time::timeout(YEAR, call).await;
        assert!(out.is_err(), "{latency:?}");
    }
}

/// A service that always fails, counting its calls.
fn failing(
    calls: &Arc<std::sync::atomic::AtomicU32>,
) -> impl Service<u32, Response = (), Error = BoxError, Future: Send> + Clone + use<> {
    let calls = calls.clone();
    tower::service_fn(move |_: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>("down".into()) }
    })
}

#[tokio::test(start_paused = true)]
async fn retry_settings_at_both_ends() {
    use steadfast::budget::RetryBudget;
    use steadfast::retry::RetryLayer;

    let roomy = || {
        Arc::new(
            RetryBudget::builder()
                .ratio(1000.0)
                .min_per_sec(u32::MAX)
                .build()
                .unwrap(),
        )
    };
    // A backoff of `Duration::MAX` waits "forever" before the retry.
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut svc = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::MAX))
        .budget(roomy())
        .build()
        .unwrap()
        .layer(failing(&calls));
    let call = svc.ready().await.unwrap().call(0);
    assert!(
        tokio::time::timeout(YEAR, call).await.is_err(),
        "waiting out the backoff"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The smallest and the largest deadline, and pushback caps at both ends.
    for (deadline, max_pushback, attempts) in [
        (Duration::from_nanos(1), Duration::ZERO, 1),
        (Duration::MAX, Duration::MAX, 3),
    ] {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut svc = RetryLayer::builder()
            .backoff(Backoff::constant(MS))
            .deadline(deadline)
            .max_pushback(max_pushback)
            .budget(roomy())
            .build()
            .unwrap()
            .layer(failing(&calls));
        // Time moves on between the call and its first poll, so the 1 ns
        // deadline has passed when the retry is decided.
        let call = svc.ready().await.unwrap().call(0);
        tokio::time::advance(MS).await;
        assert!(call.await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), attempts, "{deadline:?}");
    }
    // The extremes of the attempt cap.
    for max in [1, steadfast::retry::MAX_ATTEMPTS] {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut svc = RetryLayer::builder()
            .max_attempts(max)
            .backoff(Backoff::constant(MS))
            .budget(roomy())
            .build()
            .unwrap()
            .layer(failing(&calls));
        assert!(svc.ready().await.unwrap().call(0).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), max);
    }
}

#[tokio::test(start_paused = true)]
async fn hedge_delays_at_both_ends() {
    use steadfast::hedge::{HedgeDelay, HedgeLayer};

    for delay in [
        HedgeDelay::Fixed(Duration::from_nanos(1)),
        HedgeDelay::Fixed(Duration::MAX),
        HedgeDelay::adaptive()
            .floor(Duration::from_nanos(1))
            .ceiling(Duration::MAX)
            .window(Duration::MAX)
            .initial(Duration::MAX)
            .min_samples(u64::MAX)
            .build(),
        HedgeDelay::adaptive()
            .window(Duration::from_millis(10))
            .min_samples(0)
            .build(),
    ] {
        let mut svc = HedgeLayer::builder()
            .delay(delay)
            .build()
            .unwrap()
            .layer(tower::service_fn(|x: u32| async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, BoxError>(x)
            }));
        for i in 0..3 {
            let out = svc.ready().await.unwrap().call(i).await.unwrap();
            assert_eq!(out, i, "{delay:?}");
        }
    }
}

#[test]
fn budgets_at_both_ends() {
    use steadfast::budget::RetryBudget;

    for (ttl, min_per_sec, ratio) in [
        (Duration::from_secs(1), 0, 0.001),
        (Duration::from_secs(3600), u32::MAX, 1000.0),
        (Duration::from_secs(1), 1, 0.0),
    ] {
        let budget = RetryBudget::builder()
            .ttl(ttl)
            .min_per_sec(min_per_sec)
            .ratio(ratio)
            .build()
            .unwrap();
        for _ in 0..1000 {
            budget.deposit();
        }
        let mut withdrawn = 0u64;
        while withdrawn < 10_000 && budget.withdraw() {
            withdrawn += 1;
        }
        assert!(withdrawn <= 10_000);
        let _ = budget.available();
    }
}
