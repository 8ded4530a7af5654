//! Behaviour of the replica pool with scripted in-process replicas and
//! paused time: spill-over, ejection, pushback, failback, locality, panic,
//! penalties, readiness and the handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::classify::{Classify, Verdict};
use steadfast::error::{BoxError, NoHealthyReplica};
use steadfast::pool::{Builder, Health, OutlierDetection, Pool, Replica, WhenNoneHealthy, Why};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A replica's script: fail or not, how slowly, with what pushback.
#[derive(Default)]
struct Script {
    fail: AtomicBool,
    delay_ms: AtomicU64,
    pushback_s: AtomicU64,
    hits: AtomicU64,
}

#[derive(Debug)]
struct Failed {
    pushback: Option<Duration>,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("replica failed")
    }
}

impl std::error::Error for Failed {}

/// Failures are retryable, with the replica's pushback if it set one.
#[derive(Clone, Copy)]
struct ByError;

impl Classify<String, Failed> for ByError {
    fn classify(&self, result: Result<&String, &Failed>) -> Verdict {
        match result {
            Ok(_) => Verdict::success(),
            Err(Failed { pushback: Some(p) }) => Verdict::retryable_failure().with_pushback(*p),
            Err(_) => Verdict::retryable_failure(),
        }
    }
}

#[derive(Clone, Default)]
struct Fleet {
    scripts: Arc<Mutex<HashMap<&'static str, Arc<Script>>>>,
}

type Svc = tower::util::BoxCloneSyncService<u32, String, Failed>;

impl Fleet {
    fn script(&self, name: &'static str) -> Arc<Script> {
        self.scripts
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .clone()
    }

    fn service(&self, name: &'static str) -> Svc {
        let script = self.script(name);
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req: u32| {
            let script = script.clone();
            async move {
                script.hits.fetch_add(1, Ordering::SeqCst);
                let delay = script.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                if script.fail.load(Ordering::SeqCst) {
                    let p = script.pushback_s.load(Ordering::SeqCst);
                    Err(Failed {
                        pushback: (p > 0).then(|| Duration::from_secs(p)),
                    })
                } else {
                    Ok(name.to_owned())
                }
            }
        }))
    }

    fn failing(&self, name: &'static str, fail: bool) {
        self.script(name).fail.store(fail, Ordering::SeqCst);
    }

    fn hits(&self, name: &'static str) -> u64 {
        self.script(name).hits.load(Ordering::SeqCst)
    }

    fn reset_hits(&self) {
        for s in self.scripts.lock().unwrap().values() {
            s.hits.store(0, Ordering::SeqCst);
        }
    }

    fn replica(&self, name: &'static str) -> (&'static str, Replica<Svc>) {
        (name, Replica::new(self.service(name)))
    }
}

/// Fast, exact settings: only consecutive failures eject, for 10 s
/// doubling; failback 5 s.
fn builder() -> Builder<ByError> {
    Pool::builder()
        .name("test")
        .classify(ByError)
        .seed(7)
        .failback_after(5 * SEC)
        // Replicas here answer at once; a small penalty keeps a failing one
        // in rotation so the ejection rules get to see its failures.
        .failure_penalty(MS)
        .outlier(
            OutlierDetection::default()
                .consecutive_failures(Some(3))
                .failure_percentage(None)
                .success_rate_stdev(None)
                .latency_factor(None)
                .ejection(Backoff::exponential(10 * SEC, 80 * SEC))
                .max_ejected(1.0),
        )
}

async fn call<S>(svc: &mut S) -> Result<String, BoxError>
where
    S: Service<u32, Response = String, Error = BoxError>,
{
    svc.ready().await?.call(0).await
}

/// Sends `n` requests one after another; returns how many each replica answered.
async fn spread<S>(svc: &mut S, n: usize) -> HashMap<String, usize>
where
    S: Service<u32, Response = String, Error = BoxError>,
{
    spread_paced(svc, n, Duration::ZERO).await
}

/// As [`spread`], `gap` apart: a replica that failed lately gets its
/// traffic as probes, a few each second, so a test of what its failures
/// lead to must let time pass.
async fn spread_paced<S>(svc: &mut S, n: usize, gap: Duration) -> HashMap<String, usize>
where
    S: Service<u32, Response = String, Error = BoxError>,
{
    let mut counts = HashMap::new();
    for _ in 0..n {
        if let Ok(name) = call(svc).await {
            *counts.entry(name).or_default() += 1;
        }
        tokio::time::advance(gap).await;
    }
    counts
}

fn health_of<S: Clone>(handle: &steadfast::pool::PoolHandle<&'static str, S>, id: &str) -> Health {
    handle
        .snapshot()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap()
        .health
}

#[tokio::test(start_paused = true)]
async fn a_replica_shunned_for_its_failures_reads_failing_before_it_is_ejected() {
    let fleet = Fleet::default();
    // Ejected only after 50 failures in a row: until then the failure
    // penalty alone keeps traffic off it, and a status page must say so.
    let mut pool = builder()
        .failure_penalty(100 * MS)
        .outlier(
            OutlierDetection::default()
                .consecutive_failures(Some(50))
                .failure_percentage(None),
        )
        .build([fleet.replica("a"), fleet.replica("b"), fleet.replica("c")])
        .unwrap();
    let handle = pool.handle();
    fleet.failing("a", true);
    for _ in 0..30 {
        let _ = call(&mut pool).await;
        tokio::time::advance(10 * MS).await;
    }
    let failures = fleet.hits("a");
    assert!(
        failures > 0 && failures < 50,
        "probed, not ejected: {failures}"
    );
    assert_eq!(
        health_of(&handle, "a"),
        Health::Failing { in_a_row: failures }
    );
    assert_eq!(health_of(&handle, "b"), Health::Healthy);
    // One success clears it.
    fleet.failing("a", false);
    while fleet.hits("a") == failures {
        let _ = call(&mut pool).await;
        tokio::time::advance(10 * MS).await;
    }
    assert_eq!(health_of(&handle, "a"), Health::Healthy);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_for_a_growing_period_that_decays() {
    let fleet = Fleet::default();
    // No failure penalty: the failing replica stays in rotation, so the
    // rule sees every failure (the penalty is tested on its own below).
    let mut pool = builder()
        .failure_penalty(Duration::ZERO)
        .build([fleet.replica("a"), fleet.replica("b")])
        .unwrap();
    let handle = pool.handle();
    fleet.failing("a", true);
    spread(&mut pool, 40).await;
    let snap = handle.snapshot();
    let a = snap.iter().find(|r| r.id == "a").unwrap();
    assert!(matches!(a.health, Health::Ejected { .. }), "{:?}", a.health);
    assert_eq!(a.why, Why::ConsecutiveFailures);
    assert_eq!(
        fleet.hits("a"),
        3,
        "ejected after exactly 3 failures in a row"
    );
    let Health::Ejected { until } = a.health else {
        unreachable!()
    };
    assert_eq!(until - Instant::now(), 10 * SEC);

    // Still failing when it comes back: ejected again, for twice as long.
    tokio::time::advance(10 * SEC + 5 * SEC).await;
    fleet.reset_hits();
    for _ in 0..1_000 {
        if matches!(health_of(&handle, "a"), Health::Ejected { .. }) {
            break;
        }
        let _ = call(&mut pool).await;
        tokio::time::advance(MS).await;
    }
    assert_eq!(fleet.hits("a"), 3);
    let Health::Ejected { until } = health_of(&handle, "a") else {
        panic!()
    };
    let left = until - Instant::now();
    assert!(
        left > 19 * SEC && left <= 20 * SEC,
        "the second ejection lasts twice as long: {left:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_the_configured_share_is_ejected_but_always_one_may_be() {
    let fleet = Fleet::default();
    let names = ["a", "b", "c", "d"];
    let outlier = OutlierDetection::default()
        .consecutive_failures(Some(2))
        .failure_percentage(None)
        .success_rate_stdev(None)
        .latency_factor(None)
        .max_ejected(0.5);
    let mut pool = builder()
        .outlier(outlier.clone())
        .panic_threshold(0.0)
        .build(names.map(|n| fleet.replica(n)))
        .unwrap();
    let handle = pool.handle();
    for n in ["a", "b", "c"] {
        fleet.failing(n, true);
    }
    spread(&mut pool, 300).await;
    let ejected = handle
        .snapshot()
        .iter()
        .filter(|r| matches!(r.health, Health::Ejected { .. }))
        .count();
    assert_eq!(ejected, 2, "half of four");

    // A pool of one may still eject its only replica (max 0% still allows one).
    let mut one = builder()
        .outlier(outlier.max_ejected(0.0))
        .build([fleet.replica("a")])
        .unwrap();
    spread(&mut one, 10).await;
    assert!(matches!(
        health_of(&one.handle(), "a"),
        Health::Ejected { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failing_replica_gets_little_traffic_even_without_ejection() {
    // Outlier detection off: only the failure penalty in the load estimate
    // keeps traffic away from a replica that fails at once.
    let fleet = Fleet::default();
    for n in ["a", "b", "c"] {
        fleet.script(n).delay_ms.store(5, Ordering::SeqCst);
    }
    fleet.script("c").delay_ms.store(0, Ordering::SeqCst);
    fleet.failing("c", true);
    let outlier = OutlierDetection::default()
        .consecutive_failures(None)
        .failure_percentage(None)
        .success_rate_stdev(None)
        .latency_factor(None);
    let mut pool = builder()
        .outlier(outlier)
        .failure_penalty(SEC)
        .build(["a", "b", "c"].map(|n| fleet.replica(n)))
        .unwrap();
    spread(&mut pool, 600).await;
    let share = fleet.hits("c") as f64 / 600.0;
    assert!(
        share < 0.1,
        "a replica failing instantly must not look fastest: {share:.2} of the traffic"
    );
}

#[tokio::test(start_paused = true)]
async fn pushback_avoids_a_replica_for_that_long_capped() {
    let fleet = Fleet::default();
    let mut pool = builder()
        .max_pushback(20 * SEC)
        .failback_after(Duration::ZERO)
        .build([fleet.replica("a"), fleet.replica("b")])
        .unwrap();
    let handle = pool.handle();
    fleet.failing("a", true);
    fleet.script("a").pushback_s.store(30, Ordering::SeqCst);
    // Calls until one lands on "a" and is pushed back.
    while fleet.hits("a") == 0 {
        let _ = call(&mut pool).await;
    }
    let snap = handle.snapshot();
    let a = snap.iter().find(|r| r.id == "a").unwrap();
    let Health::Avoided { until } = a.health else {
        panic!("{:?}", a.health)
    };
    assert_eq!(a.why, Why::Pushback);
    assert_eq!(until - Instant::now(), 20 * SEC, "capped at 20 s");
    fleet.failing("a", false);
    spread(&mut pool, 100).await;
    assert_eq!(fleet.hits("a"), 1, "avoided while the pushback lasts");
    tokio::time::advance(20 * SEC).await;
    let counts = spread(&mut pool, 100).await;
    assert!(counts.get("a").copied().unwrap_or(0) > 20, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn traffic_fails_over_to_the_standby_and_fails_back_after_the_hysteresis() {
    let fleet = Fleet::default();
    let mut pool = builder()
        .build([
            ("p1", Replica::new(fleet.service("p1"))),
            ("p2", Replica::new(fleet.service("p2"))),
            ("s1", Replica::new(fleet.service("s1")).tier(1)),
        ])
        .unwrap();
    assert_eq!(
        spread(&mut pool, 50).await.get("s1"),
        None,
        "the primaries take it all"
    );
    fleet.failing("p1", true);
    fleet.failing("p2", true);
    spread(&mut pool, 20).await;
    fleet.failing("p1", false);
    fleet.failing("p2", false);
    assert_eq!(
        spread(&mut pool, 50).await.get("s1"),
        Some(&50),
        "the standby takes over"
    );
    // The ejections end after 10 s; the primaries must then stay healthy
    // for the 5 s failback time before they take the traffic back.
    tokio::time::advance(10 * SEC + 4 * SEC).await;
    assert_eq!(
        spread(&mut pool, 50).await.get("s1"),
        Some(&50),
        "still within the hysteresis"
    );
    tokio::time::advance(2 * SEC).await;
    assert_eq!(spread(&mut pool, 50).await.get("s1"), None, "failed back");
}

#[tokio::test(start_paused = true)]
async fn the_local_zone_is_preferred_while_healthy() {
    let fleet = Fleet::default();
    let mut pool = builder()
        .local_zone("z1")
        .panic_threshold(0.0)
        .build([
            ("a1", Replica::new(fleet.service("a1")).zone("z1")),
            ("a2", Replica::new(fleet.service("a2")).zone("z1")),
            ("b1", Replica::new(fleet.service("b1")).zone("z2")),
            ("b2", Replica::new(fleet.service("b2")).zone("z2")),
        ])
        .unwrap();
    let counts = spread(&mut pool, 200).await;
    assert_eq!(
        counts.get("a1").unwrap() + counts.get("a2").unwrap(),
        200,
        "{counts:?}"
    );
    // Half the local zone down: 50% x 1.4 = 70% stays local.
    fleet.failing("a1", true);
    spread_paced(&mut pool, 100, 5 * MS).await;
    fleet.reset_hits();
    let counts = spread(&mut pool, 2_000).await;
    let local = *counts.get("a2").unwrap() as f64 / 2_000.0;
    assert!(
        (0.66..0.74).contains(&local),
        "{local} of the traffic stayed local: {counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn below_the_panic_threshold_traffic_spreads_over_all() {
    let fleet = Fleet::default();
    let mut pool = builder()
        .build(["a", "b", "c", "d"].map(|n| fleet.replica(n)))
        .unwrap();
    let handle = pool.handle();
    for n in ["a", "b", "c"] {
        fleet.failing(n, true);
    }
    spread_paced(&mut pool, 200, 5 * MS).await;
    let ejected = handle
        .snapshot()
        .iter()
        .filter(|r| matches!(r.health, Health::Ejected { .. }))
        .count();
    assert!(ejected >= 2, "{ejected}");
    // 1 healthy of 4: 25% x 1.4 = 35% < 50%: spread over all four.
    fleet.reset_hits();
    for n in ["a", "b", "c"] {
        fleet.failing(n, false);
    }
    // Over 2 s: a replica that failed many times in a row is probed once a
    // second.
    let counts = spread_paced(&mut pool, 400, 5 * MS).await;
    assert_eq!(counts.len(), 4, "every replica takes some: {counts:?}");
}

#[tokio::test(start_paused = true)]
async fn with_nothing_to_route_to_it_fails_fast_or_waits_up_to_a_bound() {
    let fleet = Fleet::default();
    let mut pool = builder().build([fleet.replica("a")]).unwrap();
    let handle = pool.handle();
    handle.disable(&"a");
    let err = call(&mut pool).await.unwrap_err();
    let none = err
        .downcast_ref::<NoHealthyReplica>()
        .expect("NoHealthyReplica");
    assert_eq!(none.name(), "test");

    let mut waiting = builder()
        .when_none_healthy(WhenNoneHealthy::Wait(2 * SEC))
        .build([fleet.replica("b")])
        .unwrap();
    let h = waiting.handle();
    h.disable(&"b");
    let t0 = Instant::now();
    let err = call(&mut waiting).await.unwrap_err();
    assert!(err.downcast_ref::<NoHealthyReplica>().is_some());
    assert_eq!(t0.elapsed(), 2 * SEC, "waited the bound");
    // Enabled while a caller waits: it goes through.
    let h2 = h.clone();
    tokio::spawn(async move {
        tokio::time::sleep(500 * MS).await;
        h2.enable(&"b");
    });
    let t0 = Instant::now();
    assert_eq!(call(&mut waiting).await.unwrap(), "b");
    assert!(t0.elapsed() < SEC, "{:?}", t0.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_drained_replica_finishes_its_calls_and_takes_no_new_ones() {
    let fleet = Fleet::default();
    fleet.script("a").delay_ms.store(100, Ordering::SeqCst);
    let pool = builder()
        .build([fleet.replica("a"), fleet.replica("b")])
        .unwrap();
    let handle = pool.handle();
    let mut in_flight = Vec::new();
    for _ in 0..20 {
        let mut p = pool.clone();
        in_flight.push(tokio::spawn(async move { call(&mut p).await }));
    }
    tokio::task::yield_now().await;
    let before = fleet.hits("a");
    assert!(before > 0);
    handle.drain(&"a");
    assert_eq!(health_of(&handle, "a"), Health::Draining);
    for t in in_flight {
        t.await
            .unwrap()
            .expect("calls in flight on a drained replica finish");
    }
    let mut p = pool.clone();
    spread(&mut p, 50).await;
    assert_eq!(fleet.hits("a"), before, "no new calls");
    // Back, fast, and past the failback time: it shares the traffic again
    // once its old slow estimate has decayed.
    fleet.script("a").delay_ms.store(0, Ordering::SeqCst);
    fleet.script("b").delay_ms.store(50, Ordering::SeqCst);
    handle.enable(&"a");
    tokio::time::advance(60 * SEC).await;
    assert!(spread(&mut p, 100).await.contains_key("a"));
}

#[tokio::test(start_paused = true)]
async fn an_unready_replica_does_not_block_the_others() {
    let fleet = Fleet::default();
    let (stuck, mut handle) = tower_test::mock::pair::<u32, String>();
    handle.allow(0);
    // A replica whose service never becomes ready, next to a healthy one.
    let stuck = tower::util::BoxCloneSyncService::new(
        tower::buffer::Buffer::new(stuck, 1).map_err(|_| Failed { pushback: None }),
    );
    let pool = builder()
        .classify(ByError)
        .build([("stuck", Replica::new(stuck)), fleet.replica("b")])
        .unwrap();
    let mut done = 0;
    let mut waiting = Vec::new();
    for _ in 0..20 {
        let mut p = pool.clone();
        let fut = tokio::spawn(async move { call(&mut p).await });
        tokio::time::sleep(MS).await;
        if fut.is_finished() {
            assert_eq!(fut.await.unwrap().unwrap(), "b");
            done += 1;
        } else {
            waiting.push(fut);
        }
    }
    assert!(
        done > 0 && !waiting.is_empty(),
        "{done} done, {} waiting",
        waiting.len()
    );
    for w in waiting {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn per_replica_breakers_take_a_replica_out() {
    use steadfast::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
    let fleet = Fleet::default();
    let breaker = CircuitBreakerLayer::builder()
        .window(SlidingWindow::count(4))
        .min_calls(4)
        .open_backoff(Backoff::constant(30 * SEC));
    let outlier = OutlierDetection::default()
        .consecutive_failures(None)
        .failure_percentage(None)
        .success_rate_stdev(None)
        .latency_factor(None);
    let mut pool = builder()
        .outlier(outlier)
        .circuit_breaker(breaker)
        .build([fleet.replica("a"), fleet.replica("b")])
        .unwrap();
    let handle = pool.handle();
    fleet.failing("a", true);
    spread(&mut pool, 100).await;
    assert_eq!(health_of(&handle, "a"), Health::CircuitOpen);
    assert!(fleet.hits("a") <= 4, "{}", fleet.hits("a"));
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let field = |b: Builder| {
        b.build::<&str, Svc>([])
            .map(|_| ())
            .unwrap_err()
            .field()
            .to_owned()
    };
    assert_eq!(
        field(Pool::builder().overprovisioning(0.5)),
        "overprovisioning"
    );
    assert_eq!(
        field(Pool::builder().panic_threshold(1.5)),
        "panic_threshold"
    );
    assert_eq!(
        field(Pool::builder().when_none_healthy(WhenNoneHealthy::Wait(Duration::ZERO))),
        "when_none_healthy"
    );
    assert_eq!(
        field(Pool::builder().outlier(OutlierDetection::default().consecutive_failures(Some(0)))),
        "outlier.consecutive_failures"
    );
    assert_eq!(
        field(Pool::builder().outlier(OutlierDetection::default().max_ejected(2.0))),
        "outlier.max_ejected"
    );
    // A minimum of calls the window of a replica's last 100 cannot hold:
    // the rule could never judge.
    assert_eq!(
        field(
            Pool::builder()
                .outlier(OutlierDetection::default().failure_percentage(Some((0.5, 101))))
        ),
        "outlier.failure_percentage"
    );
    assert_eq!(
        field(
            Pool::builder()
                .outlier(OutlierDetection::default().success_rate_stdev(Some((1.9, 3, 101))))
        ),
        "outlier.success_rate_stdev"
    );
    Pool::builder()
        .outlier(OutlierDetection::default().failure_percentage(Some((0.5, 100))))
        .build::<&str, Svc>([])
        .expect("a minimum of 100 fits the window");
    assert_eq!(field(Pool::builder().name("")), "name");
    let fleet = Fleet::default();
    let dup = Pool::builder()
        .build([fleet.replica("a"), fleet.replica("a")])
        .unwrap_err();
    assert_eq!(dup.field(), "replicas");
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Pool<&'static str, Svc>>();
    send_sync::<steadfast::pool::PoolHandle<&'static str, Svc>>();
    send::<
        steadfast::pool::future::ResponseFuture<
            &'static str,
            Svc,
            u32,
            steadfast::classify::ErrorsAsFailures,
        >,
    >();
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_over_the_window_ejects() {
    let fleet = Fleet::default();
    let outlier = OutlierDetection::default()
        .consecutive_failures(None)
        .failure_percentage(Some((0.5, 20)))
        .success_rate_stdev(None)
        .latency_factor(None)
        .max_ejected(1.0);
    let mut pool = builder()
        .failure_penalty(Duration::ZERO)
        .outlier(outlier)
        .build([fleet.replica("a"), fleet.replica("b")])
        .unwrap();
    let handle = pool.handle();
    // "a" fails every other call: never 5 in a row, but half of them.
    let script = fleet.script("a");
    for i in 0..400 {
        script.fail.store(i % 2 == 0, Ordering::SeqCst);
        let _ = call(&mut pool).await;
        if matches!(health_of(&handle, "a"), Health::Ejected { .. }) {
            break;
        }
    }
    let snap = handle.snapshot();
    let a = snap.iter().find(|r| r.id == "a").unwrap();
    assert!(matches!(a.health, Health::Ejected { .. }), "{:?}", a.health);
    assert_eq!(a.why, Why::FailureRate);
}

/// Four replicas of `fleet` judged only by the success-rate rule, swept
/// every second.
fn judged_by_success_rate(fleet: &Fleet) -> Pool<&'static str, Svc, ByError> {
    let outlier = OutlierDetection::default()
        .consecutive_failures(None)
        .failure_percentage(None)
        .success_rate_stdev(Some((1.0, 3, 20)))
        .latency_factor(None)
        .interval(SEC)
        .max_ejected(1.0);
    builder()
        .failure_penalty(Duration::ZERO)
        .outlier(outlier)
        .build(["a", "b", "c", "d"].map(|n| fleet.replica(n)))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_success_rate_far_below_the_fleet_ejects_at_the_sweep() {
    let fleet = Fleet::default();
    let mut pool = judged_by_success_rate(&fleet);
    let handle = pool.handle();
    // "a" fails one call in four; the others never do.
    let script = fleet.script("a");
    let mut n = 0;
    for _ in 0..400 {
        script.fail.store(n % 4 == 0, Ordering::SeqCst);
        if fleet.hits("a") != n {
            n = fleet.hits("a");
        }
        let _ = call(&mut pool).await;
        tokio::time::advance(5 * MS).await;
    }
    let snap = handle.snapshot();
    let a = snap.iter().find(|r| r.id == "a").unwrap();
    assert_eq!(a.why, Why::SuccessRate, "{:?}", a.health);
    assert!(
        snap.iter()
            .filter(|r| r.id != "a")
            .all(|r| r.health == Health::Healthy),
        "{snap:?}"
    );
}

/// A call in flight keeps its replica, not the pool: with every clone and
/// handle dropped, the call still ends with the replica's answer (or its
/// failure, which no longer has a pool to report to), and the pool's
/// state is freed at once.
#[tokio::test(start_paused = true)]
async fn a_call_outlives_the_pool_it_was_made_through() {
    let fleet = Fleet::default();
    fleet.script("ok").delay_ms.store(50, Ordering::SeqCst);
    fleet.script("bad").delay_ms.store(50, Ordering::SeqCst);
    fleet.failing("bad", true);
    let mut calls = Vec::new();
    let mut changes = Vec::new();
    for name in ["ok", "bad"] {
        let mut pool = builder().build([fleet.replica(name)]).unwrap();
        changes.push(pool.handle().subscribe());
        calls.push(pool.ready().await.unwrap().call(0));
        drop(pool);
    }
    for rx in &changes {
        assert!(rx.has_changed().is_err(), "a pool outlived its clones");
    }
    let [ok, bad] = <[_; 2]>::try_from(futures::future::join_all(calls).await).unwrap();
    assert_eq!(ok.unwrap(), "ok");
    assert_eq!(bad.unwrap_err().to_string(), "replica failed");
    assert_eq!((fleet.hits("ok"), fleet.hits("bad")), (1, 1));
}

/// The fleet rules run once per interval: in the request that finds the
/// interval over, or, while `Pool::upkeep` runs, in it and on time even
/// when no request comes.
#[tokio::test(start_paused = true)]
async fn with_the_upkeep_future_the_fleet_rules_run_on_time_without_requests() {
    for kept in [false, true] {
        let fleet = Fleet::default();
        let mut pool = judged_by_success_rate(&fleet);
        let handle = pool.handle();
        let upkeep = kept.then(|| tokio::spawn(pool.upkeep()));
        // "a" fails one call in four, all within the first interval.
        let script = fleet.script("a");
        for _ in 0..300 {
            let hits = fleet.hits("a");
            script.fail.store(hits % 4 == 0, Ordering::SeqCst);
            let _ = call(&mut pool).await;
            tokio::time::advance(3 * MS).await;
        }
        let ejected = |h: Health| matches!(h, Health::Ejected { .. });
        assert!(!ejected(health_of(&handle, "a")), "judged too early");
        // The interval ends with no request.
        tokio::time::sleep(SEC).await;
        let a = health_of(&handle, "a");
        if kept {
            assert!(ejected(a), "{a:?}");
        } else {
            assert!(!ejected(a), "nothing ran the rules: {a:?}");
            // The next request runs them.
            let _ = call(&mut pool).await;
            assert!(ejected(health_of(&handle, "a")));
        }
        drop((pool, handle));
        if let Some(upkeep) = upkeep {
            upkeep.await.unwrap();
        }
    }
}

/// A health check that passes while its switch is on.
#[derive(Debug)]
struct Switch(Arc<AtomicBool>);

impl steadfast::health::HealthCheck for Switch {
    fn check(&self) -> futures::future::BoxFuture<'static, Result<(), BoxError>> {
        let up = self.0.load(Ordering::SeqCst);
        Box::pin(async move {
            if up {
                Ok(())
            } else {
                Err::<(), BoxError>("down".into())
            }
        })
    }
}

/// A health check that hangs while its replica is a black hole (it
/// accepts and never answers), and passes otherwise.
#[derive(Debug)]
struct BlackHole(Arc<AtomicBool>, Arc<AtomicU64>);

impl steadfast::health::HealthCheck for BlackHole {
    fn check(&self) -> futures::future::BoxFuture<'static, Result<(), BoxError>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let hole = self.0.load(Ordering::SeqCst);
        Box::pin(async move {
            if hole {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }
}

/// A replica that accepted a check and never answered it comes back while
/// that check still hangs (its timeout is 1 s): it is checked again at the
/// unhealthy interval meanwhile, so its passing checks start within one
/// interval of its recovery, not after the hung check's timeout. Another replica's check
/// is not held up by the hung one.
#[tokio::test(start_paused = true)]
async fn a_replica_back_while_a_check_of_it_hangs_is_seen_within_an_interval() {
    let fleet = Fleet::default();
    let hole = Arc::new(AtomicBool::new(false));
    let other_checks = Arc::new(AtomicU64::new(0));
    let a_checks = Arc::new(AtomicU64::new(0));
    #[derive(Debug)]
    struct Counting(Arc<AtomicU64>);
    impl steadfast::health::HealthCheck for Counting {
        fn check(&self) -> futures::future::BoxFuture<'static, Result<(), BoxError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }
    let (a, replica_a) = fleet.replica("a");
    let (b, replica_b) = fleet.replica("b");
    let pool = builder()
        .health_checks(
            steadfast::health::HealthChecks::default()
                .interval(2 * SEC)
                .unhealthy_interval(500 * MS)
                .timeout(SEC)
                .jitter(0.0),
        )
        .build([
            (
                a,
                replica_a.health_check(BlackHole(hole.clone(), a_checks.clone())),
            ),
            (b, replica_b.health_check(Counting(other_checks.clone()))),
        ])
        .unwrap();
    let handle = pool.handle();
    let checks = tokio::spawn(pool.health_checks());
    tokio::time::advance(10 * MS).await;

    // "a" becomes a black hole: its checks time out, and it is out.
    hole.store(true, Ordering::SeqCst);
    let broken = Instant::now();
    while health_of(&handle, "a") != Health::FailingChecks {
        assert!(broken.elapsed() < 10 * SEC, "never out");
        tokio::time::advance(10 * MS).await;
    }
    let b_checks = other_checks.load(Ordering::SeqCst);
    assert!(
        b_checks >= broken.elapsed().as_secs() / 2,
        "b was checked on its own schedule: {b_checks} checks in {:?}",
        broken.elapsed()
    );

    // Let the next check of "a" start and hang, then restore "a" 100 ms
    // later.
    let started = a_checks.load(Ordering::SeqCst);
    while a_checks.load(Ordering::SeqCst) == started {
        tokio::time::advance(MS).await;
    }
    for _ in 0..100 {
        tokio::time::advance(MS).await;
    }
    hole.store(false, Ordering::SeqCst);
    let restored = Instant::now();
    // Passing its checks again (then, as any recovered replica, it waits
    // out the failback time before it takes traffic from a lower tier).
    while health_of(&handle, "a") == Health::FailingChecks {
        assert!(restored.elapsed() < 5 * SEC, "never back");
        tokio::time::advance(10 * MS).await;
    }
    // Two passing checks (the default healthy threshold), 500 ms apart: the
    // first 400 ms after the recovery, while the hung one has 900 ms to go.
    let back = restored.elapsed();
    assert!(back <= 920 * MS, "back {back:?} after its recovery");
    checks.abort();
}

/// A replica ejected for its failures and failing its checks shows both;
/// once its checks pass again it is back long before its ejection would
/// have ended (as Envoy unejects a host on a passing active check).
#[tokio::test(start_paused = true)]
async fn a_passing_check_ends_an_ejection_and_the_snapshot_shows_every_reason() {
    let fleet = Fleet::default();
    let up = Arc::new(AtomicBool::new(true));
    let (a, replica) = fleet.replica("a");
    let mut pool = builder()
        .health_checks(steadfast::health::HealthChecks::default().interval(2 * SEC))
        .build([
            (a, replica.health_check(Switch(up.clone()))),
            fleet.replica("b"),
            fleet.replica("c"),
        ])
        .unwrap();
    let handle = pool.handle();
    let checks = tokio::spawn(pool.health_checks());
    let reasons = |handle: &steadfast::pool::PoolHandle<&'static str, Svc>| {
        let snapshot = handle.snapshot();
        snapshot.into_iter().find(|r| r.id == "a").unwrap().reasons
    };

    // The fault: "a" fails its calls and its checks, for 5 s of traffic.
    fleet.failing("a", true);
    up.store(false, Ordering::SeqCst);
    for _ in 0..2_500 {
        let _ = call(&mut pool).await;
        tokio::time::advance(2 * MS).await;
    }
    let out = reasons(&handle);
    assert_eq!(out[0], Health::FailingChecks, "{out:?}");
    assert!(
        matches!(out.get(1), Some(Health::Ejected { .. })),
        "the ejection under the failing checks is shown: {out:?}"
    );

    // Restored: back within two checks at the faster pace (1 s each),
    // though the ejection had 10 s to run.
    fleet.failing("a", false);
    up.store(true, Ordering::SeqCst);
    fleet.reset_hits();
    let restored = Instant::now();
    while fleet.hits("a") == 0 && restored.elapsed() < 10 * SEC {
        let _ = call(&mut pool).await;
        tokio::time::advance(2 * MS).await;
    }
    let back = restored.elapsed();
    assert!(back <= 2 * SEC + 300 * MS, "back after {back:?}");
    assert!(
        !reasons(&handle)
            .iter()
            .any(|h| matches!(h, Health::Ejected { .. })),
        "{:?}",
        reasons(&handle)
    );
    checks.abort();
}

type Handle = steadfast::pool::PoolHandle<&'static str, Svc>;
type Hedged = steadfast::hedge::Hedge<Pool<&'static str, Svc, ByError>>;

/// A hedge layer of a fixed `delay` over a pool named `name` of `names`
/// from `fleet`, each answering in `delay_ms`, drawing from `budget`; and
/// the pool's handle.
fn hedged(
    fleet: &Fleet,
    name: &'static str,
    names: &[&'static str],
    delay_ms: u64,
    delay: Duration,
    budget: Arc<steadfast::budget::RetryBudget>,
) -> (Handle, Hedged) {
    use tower::Layer;

    for n in names {
        fleet.script(n).delay_ms.store(delay_ms, Ordering::SeqCst);
    }
    let pool = Pool::builder()
        .name(name)
        .classify(ByError)
        .seed(7)
        .build(names.iter().map(|n| fleet.replica(n)))
        .unwrap();
    let handle = pool.handle();
    let svc = steadfast::hedge::HedgeLayer::builder()
        .name(name)
        .delay(steadfast::hedge::HedgeDelay::Fixed(delay))
        .budget(budget)
        .build()
        .unwrap()
        .layer(pool);
    (handle, svc)
}

/// A budget of 1,000 extra attempts a second, whatever the traffic.
fn roomy_budget() -> Arc<steadfast::budget::RetryBudget> {
    Arc::new(
        steadfast::budget::RetryBudget::builder()
            .min_per_sec(1_000)
            .build()
            .unwrap(),
    )
}

/// A replica that hangs fails nothing: its calls lose to hedges and are
/// dropped. Each loser still tells the pool the replica took at least that
/// long, so it loses its traffic at once, and a few unanswered probes in a
/// row eject it, without active checks.
#[tokio::test(start_paused = true)]
async fn a_hung_replica_loses_its_traffic_and_is_ejected_without_checks() {
    let fleet = Fleet::default();
    let (handle, mut svc) = hedged(&fleet, "hang", &["a", "b", "c"], 1, 5 * MS, roomy_budget());
    for _ in 0..300 {
        svc.ready().await.unwrap().call(0).await.unwrap();
    }

    // "c" hangs: its calls never end.
    fleet
        .script("c")
        .delay_ms
        .store(3_600_000, Ordering::SeqCst);
    fleet.reset_hits();
    let hung_at = Instant::now();
    let mut ejected_at = None;
    while hung_at.elapsed() < 2 * SEC {
        svc.ready().await.unwrap().call(0).await.unwrap();
        if ejected_at.is_none() && matches!(health_of(&handle, "c"), Health::Ejected { .. }) {
            ejected_at = Some(hung_at.elapsed());
        }
    }
    let c = handle.snapshot().into_iter().find(|r| r.id == "c").unwrap();
    let ejected_at = ejected_at.unwrap_or_else(|| panic!("never ejected: {c:?}"));
    assert_eq!(c.why, Why::Unanswered);
    assert!(
        ejected_at <= 500 * MS,
        "ejected {ejected_at:?} after the hang"
    );
    assert!(
        fleet.hits("c") <= 10,
        "{} attempts on the hung replica",
        fleet.hits("c")
    );
}

/// A busy replica stalls for a few milliseconds now and then. When it
/// holds several calls then, hedges cut short five of them within the
/// stall, but it answered only moments before: it is not ejected for it.
#[tokio::test(start_paused = true)]
async fn a_short_stall_under_hedging_ejects_nothing() {
    let fleet = Fleet::default();
    let (handle, svc) = hedged(&fleet, "stall", &["a", "b", "c"], 1, 2 * MS, roomy_budget());
    for _ in 0..30 {
        svc.clone().oneshot(0).await.unwrap();
    }
    // "c" stalls: the calls it takes now last 20 ms. A burst of 15 at once
    // gives it about five, each cut short by a hedge a few ms later.
    fleet.script("c").delay_ms.store(20, Ordering::SeqCst);
    fleet.reset_hits();
    let burst: Vec<_> = (0..15).map(|i| svc.clone().oneshot(i)).collect();
    for result in futures::future::join_all(burst).await {
        result.unwrap();
    }
    fleet.script("c").delay_ms.store(1, Ordering::SeqCst);
    assert!(
        fleet.hits("c") >= 5,
        "c took {} of the burst",
        fleet.hits("c")
    );
    let c = handle.snapshot().into_iter().find(|r| r.id == "c").unwrap();
    assert_eq!(c.ejections, 0, "{c:?}");
}

/// A hedge goes only to a replica that can start it at once. With both
/// replicas busy with a call each, the hedges of both calls are declined:
/// nothing more is sent and no budget is spent. With one replica free, the
/// hedge goes to it.
#[tokio::test(start_paused = true)]
async fn a_hedge_goes_only_to_a_free_replica() {
    let fleet = Fleet::default();
    let budget = Arc::new(
        steadfast::budget::RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(1)
            .build()
            .unwrap(),
    );
    let (_, svc) = hedged(
        &fleet,
        "hedge-free",
        &["a", "b"],
        50,
        5 * MS,
        budget.clone(),
    );
    let before = budget.available();

    // Two calls at once: one on each replica, each hedge declined (tried
    // again every 5 ms until the calls end).
    let (one, two) = tokio::join!(svc.clone().oneshot(0), svc.clone().oneshot(0));
    assert!(one.is_ok() && two.is_ok());
    assert_eq!(
        (fleet.hits("a"), fleet.hits("b")),
        (1, 1),
        "no hedge while neither replica was free"
    );
    assert_eq!(
        budget.available(),
        before,
        "a declined hedge spends nothing"
    );

    // One call alone: its hedge goes to the free replica.
    fleet.reset_hits();
    svc.clone().oneshot(0).await.unwrap();
    assert_eq!(fleet.hits("a") + fleet.hits("b"), 2, "the hedge went");
    assert_eq!(budget.available(), before - 1);
}

/// Callers that give up on every replica alike (their deadline is shorter
/// than any replica takes) say nothing about one of them: nothing is
/// ejected for it.
#[tokio::test(start_paused = true)]
async fn callers_giving_up_on_every_replica_eject_none() {
    let fleet = Fleet::default();
    for n in ["a", "b", "c"] {
        fleet.script(n).delay_ms.store(10, Ordering::SeqCst);
    }
    let mut pool = Pool::builder()
        .name("impatient")
        .classify(ByError)
        .seed(7)
        .build(["a", "b", "c"].map(|n| fleet.replica(n)))
        .unwrap();
    let handle = pool.handle();
    for _ in 0..300 {
        let call = pool.ready().await.unwrap().call(0);
        assert!(tokio::time::timeout(5 * MS, call).await.is_err());
    }
    for r in handle.snapshot() {
        assert!(!matches!(r.health, Health::Ejected { .. }), "{r:?}");
    }
}

/// A service that is never ready (a full connection pool, a concurrency
/// limit reached).
#[derive(Clone)]
struct NeverReady;

impl Service<u32> for NeverReady {
    type Response = String;
    type Error = Failed;
    type Future = std::future::Pending<Result<String, Failed>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Failed>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: u32) -> Self::Future {
        std::future::pending()
    }
}

/// A replica whose service is not ready is not chosen while a ready one
/// exists (as tower's balancer, which only calls ready services).
#[tokio::test(start_paused = true)]
async fn a_replica_that_is_not_ready_is_passed_over_for_a_ready_one() {
    let fleet = Fleet::default();
    let pool = builder()
        .build([
            ("full", Replica::new(Svc::new(NeverReady))),
            fleet.replica("b"),
        ])
        .unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut p = pool.clone();
            tokio::spawn(async move { call(&mut p).await })
        })
        .collect();
    for c in calls {
        let answer = tokio::time::timeout(SEC, c).await;
        assert_eq!(answer.expect("a call waited").unwrap().unwrap(), "b");
    }
}
