//! Reload under load: a retry over a breaker over a pool of three replicas
//! (one failing every call), all drawing on one budget, takes new breaker,
//! pool and budget settings while requests flow. No request fails for it,
//! nothing learnt is lost (read from the snapshots before and after), and
//! settings that are refused change nothing. Time is paused; the replicas
//! answer after a tokio sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::budget::RetryBudget;
use steadfast::circuit_breaker::{self, Circuit, SlidingWindow, State};
use steadfast::error::BoxError;
use steadfast::pool::{self, Health, OutlierDetection, PoolHandle, Replica};
use steadfast::{CircuitBreakerLayer, Pool, RetryLayer};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt, service_fn};

type Svc = BoxCloneSyncService<(), (), BoxError>;

fn replica(fails: bool) -> Svc {
    BoxCloneSyncService::new(service_fn(move |()| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if fails {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }))
}

fn breaker_settings() -> circuit_breaker::Builder {
    CircuitBreakerLayer::builder()
        .name("api")
        .failure_rate(0.5)
        .window(SlidingWindow::count(100))
        .min_calls(20)
}

fn pool_settings() -> pool::Builder {
    Pool::builder().name("fleet").outlier(
        OutlierDetection::default()
            .consecutive_failures(Some(5))
            .ejection(Backoff::constant(Duration::from_secs(60))),
    )
}

fn budget_settings() -> steadfast::budget::Builder {
    RetryBudget::builder()
        .name("fleet")
        .ratio(0.2)
        .min_per_sec(10)
}

struct Stack {
    service: Svc,
    circuit: Circuit,
    pool: PoolHandle<&'static str, Svc>,
    budget: Arc<RetryBudget>,
}

fn stack() -> Stack {
    let budget = Arc::new(budget_settings().build().expect("valid"));
    let pool = pool_settings()
        .build([
            ("a", Replica::new(replica(false))),
            ("b", Replica::new(replica(false))),
            ("c", Replica::new(replica(true))),
        ])
        .expect("valid");
    let handle = pool.handle();
    let breaker = breaker_settings().build().expect("valid");
    let circuit = breaker.circuit().clone();
    let retry = RetryLayer::builder()
        .name("fleet")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(budget.clone())
        .build()
        .expect("valid");
    let service = BoxCloneSyncService::new(retry.layer(breaker.layer(pool)));
    Stack {
        service,
        circuit,
        pool: handle,
        budget,
    }
}

/// What the pool learnt of each replica.
fn learnt(pool: &PoolHandle<&'static str, Svc>) -> Vec<(&'static str, Health, Duration, u64)> {
    pool.snapshot()
        .into_iter()
        .map(|r| (r.id, r.health, r.latency, r.ejections))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn settings_change_under_load_and_nothing_learnt_is_lost() {
    let Stack {
        service,
        circuit,
        pool,
        budget,
    } = stack();
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (failed, sent) = (failed.clone(), sent.clone());
        tokio::spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..2_000 {
                let (svc, failed, sent) = (service.clone(), failed.clone(), sent.clone());
                calls.spawn(async move {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if svc.oneshot(()).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            while calls.join_next().await.is_some() {}
        })
    };
    // Half way: the failing replica is ejected, the breaker's window is
    // full of successes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = learnt(&pool);
    let ejected_until = match before.iter().find(|r| r.0 == "c").expect("c").1 {
        Health::Ejected { until } => until,
        other => panic!("c should be ejected, is {other:?}"),
    };
    let window = circuit.snapshot();
    assert_eq!((window.calls, window.failures), (100, 0));
    let available = budget.available();

    // New settings for all three.
    circuit
        .apply(
            &breaker_settings()
                .failure_rate(0.9)
                .window(SlidingWindow::count(50)),
        )
        .expect("valid breaker settings");
    pool.apply(
        &pool_settings().outlier(
            OutlierDetection::default()
                .consecutive_failures(Some(3))
                .ejection(Backoff::constant(Duration::from_secs(30))),
        ),
    )
    .expect("valid pool settings");
    budget
        .apply(&budget_settings().ratio(0.5))
        .expect("valid budget settings");

    // Kept: the state, the shorter window's most recent outcomes, the
    // ejection as it was set, the estimates, the balance.
    assert_eq!(circuit.state(), State::Closed);
    let window = circuit.snapshot();
    assert_eq!((window.calls, window.failures), (50, 0));
    assert_eq!(
        learnt(&pool),
        before,
        "ejections, health and estimates are kept"
    );
    assert_eq!(budget.available(), available);
    assert_eq!(budget.ratio(), 0.5);

    // Refused settings change nothing.
    let err = circuit
        .apply(&breaker_settings().failure_rate(2.0))
        .expect_err("refused");
    assert_eq!(err.field(), "failure_rate");
    let err = pool
        .apply(&pool_settings().overprovisioning(0.5))
        .expect_err("refused");
    assert_eq!(err.field(), "overprovisioning");
    let err = pool
        .apply(&pool_settings().name("other"))
        .expect_err("refused");
    assert_eq!(err.field(), "name");
    let err = budget
        .apply(&budget_settings().ratio(-1.0))
        .expect_err("refused");
    assert_eq!(err.field(), "ratio");
    assert_eq!(circuit.snapshot().calls, 50);
    assert_eq!(learnt(&pool), before);
    assert_eq!(budget.ratio(), 0.5);

    load.await.expect("the load ran");
    assert_eq!(sent.load(Ordering::Relaxed), 2_000);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed, the reload included"
    );
    // The ejection set before the reload still runs out when it was set to.
    let c = pool
        .snapshot()
        .into_iter()
        .find(|r| r.id == "c")
        .expect("c");
    assert_eq!(
        c.health,
        Health::Ejected {
            until: ejected_until
        }
    );
}

#[tokio::test(start_paused = true)]
async fn new_rules_judge_what_was_learnt() {
    // A stricter failure rate, applied to a window that already holds
    // failures, trips at the next outcome.
    let layer = breaker_settings().min_calls(10).build().expect("valid");
    let circuit = layer.circuit().clone();
    let mut flaky = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    for i in 0..20 {
        let _ = flaky.ready().await.expect("closed").call(i % 4 == 0).await;
    }
    assert_eq!(circuit.snapshot().failures, 5);
    assert_eq!(circuit.state(), State::Closed, "25% is below 50%");
    circuit
        .apply(&breaker_settings().min_calls(10).failure_rate(0.2))
        .expect("valid");
    assert_eq!(circuit.state(), State::Closed, "judged at the next outcome");
    let _ = flaky.ready().await.expect("closed").call(false).await;
    assert_eq!(circuit.state(), State::Open, "5 of 21 is over 20%");
}

#[tokio::test(start_paused = true)]
async fn a_watch_channel_drives_the_reload() {
    let budget = Arc::new(budget_settings().build().expect("valid"));
    let (tx, rx) = tokio::sync::watch::channel(budget_settings());
    let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let follow = {
        let (budget, refusals) = (budget.clone(), refusals.clone());
        tokio::spawn(steadfast::reload::follow(
            rx,
            move |s: &steadfast::budget::Builder| budget.apply(s),
            move |err| refusals.lock().expect("not poisoned").push(err.to_string()),
        ))
    };
    let _ = tx.send_replace(budget_settings().ratio(0.7));
    tokio::task::yield_now().await;
    assert_eq!(budget.ratio(), 0.7);
    let _ = tx.send_replace(budget_settings().ttl(Duration::from_secs(30)));
    tokio::task::yield_now().await;
    assert_eq!(budget.ratio(), 0.7, "refused: the old settings stay");
    assert_eq!(refusals.lock().expect("not poisoned").len(), 1);
    drop(tx);
    follow.await.expect("follow ends with its sender");
}

#[test]
fn the_pool_refuses_to_add_or_remove_breakers() {
    let pool = pool_settings()
        .build([("a", Replica::new(replica(false)))])
        .expect("valid");
    let err = pool
        .handle()
        .apply(&pool_settings().circuit_breaker(breaker_settings()))
        .expect_err("refused");
    assert_eq!(err.field(), "circuit_breaker");
}
