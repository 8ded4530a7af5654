//! Every rule is judged after every outcome that can change its verdict:
//! the circuit breaker's failure-rate, slow-call and consecutive-failure
//! rules, and the pool's per-replica rules (failures in a row, the failure
//! percentage). The cases the peers (tower-resilience, failsafe,
//! Resilience4j) test for their own breakers come first, by name; then
//! proptests drive random outcomes, durations and clock steps and compare
//! the state after every step with a plain recount of the same window.
//!
//! Paused time throughout: a slow call sleeps, and the clock moves only by
//! the steps the test takes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use steadfast::backoff::Backoff;
use steadfast::circuit_breaker::{Builder, CircuitBreakerLayer, SlidingWindow, State};
use steadfast::classify::{Classify, Verdict};
use steadfast::error::BoxError;
use steadfast::pool::{Health, OutlierDetection, Pool, Replica};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
/// Calls at least this long are slow, for every breaker with a slow rule here.
const SLOW: Duration = Duration::from_millis(50);
/// How long a slow call of the scripts takes; a fast one takes [`FAST`].
const SLOW_CALL: Duration = Duration::from_millis(60);
const FAST: Duration = Duration::from_millis(1);

/// One call's script: does it fail, and how long does it take.
#[derive(Debug, Clone, Copy)]
struct Call {
    fail: bool,
    slow: bool,
}

const OK: Call = Call {
    fail: false,
    slow: false,
};
const ERR: Call = Call {
    fail: true,
    slow: false,
};
const SLOW_OK: Call = Call {
    fail: false,
    slow: true,
};

/// A dependency that does what the next call's script says.
#[derive(Clone, Default)]
struct Scripted {
    fail: Arc<AtomicBool>,
    slow: Arc<AtomicBool>,
}

impl Scripted {
    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + use<>
    {
        let this = self.clone();
        tower::service_fn(move |req: u32| {
            let this = this.clone();
            async move {
                let slow = this.slow.load(Ordering::SeqCst);
                tokio::time::sleep(if slow { SLOW_CALL } else { FAST }).await;
                if this.fail.load(Ordering::SeqCst) {
                    Err::<u32, BoxError>("boom".into())
                } else {
                    Ok(req)
                }
            }
        })
    }

    /// Makes one call that does what `call` says; the breaker's error, if
    /// it rejected the call, is returned as the call's.
    async fn call<S>(&self, svc: &mut S, call: Call) -> Result<u32, BoxError>
    where
        S: Service<u32, Response = u32, Error = BoxError>,
    {
        self.fail.store(call.fail, Ordering::SeqCst);
        self.slow.store(call.slow, Ordering::SeqCst);
        svc.ready().await?.call(7).await
    }
}

/// A breaker of exact open periods, with the given rules and window.
fn breaker(window: SlidingWindow, min_calls: u32) -> Builder {
    CircuitBreakerLayer::builder()
        .name("rules")
        .window(window)
        .min_calls(min_calls)
        .open_backoff(Backoff::constant(10 * SEC))
        .half_open_probes(1)
}

/// Runs `calls` through a breaker built from `builder`; returns the state
/// after each.
async fn states_after(builder: Builder, calls: &[Call]) -> Vec<State> {
    let layer = builder.build().unwrap();
    let circuit = layer.circuit().clone();
    let scripted = Scripted::default();
    let mut svc = layer.layer(scripted.service());
    let mut states = Vec::new();
    for call in calls {
        let _ = scripted.call(&mut svc, *call).await;
        states.push(circuit.state());
    }
    states
}

fn closed_then_open(closed: usize) -> Vec<State> {
    let mut states = vec![State::Closed; closed];
    states.push(State::Open);
    states
}

#[tokio::test(start_paused = true)]
async fn a_success_that_fills_the_window_trips_it() {
    let b = breaker(SlidingWindow::count(4), 4).failure_rate(0.5);
    assert_eq!(
        states_after(b, &[ERR, ERR, OK, OK]).await,
        closed_then_open(3),
        "2 of 4 failed, judged when the fourth call (a success) fills the window"
    );
}

#[tokio::test(start_paused = true)]
async fn five_failures_then_five_successes_at_a_minimum_of_ten() {
    let b = breaker(SlidingWindow::count(10), 10).failure_rate(0.5);
    let calls = [[ERR; 5], [OK; 5]].concat();
    assert_eq!(states_after(b, &calls).await, closed_then_open(9));
}

#[tokio::test(start_paused = true)]
async fn a_threshold_met_exactly_by_a_success_trips() {
    // 1 of 3 failed is 0.333…, at least 0.33.
    let b = breaker(SlidingWindow::count(3), 3).failure_rate(0.33);
    assert_eq!(states_after(b, &[ERR, OK, OK]).await, closed_then_open(2));
    // And just below a threshold of 0.34 it does not.
    let b = breaker(SlidingWindow::count(3), 3).failure_rate(0.34);
    assert_eq!(
        states_after(b, &[ERR, OK, OK]).await,
        vec![State::Closed; 3]
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_then_fast_ones_that_fill_the_window_trip_it() {
    let b = breaker(SlidingWindow::count(10), 10)
        .no_failure_rate()
        .slow_calls(SLOW, 0.5);
    let calls = [[SLOW_OK; 5], [OK; 5]].concat();
    assert_eq!(states_after(b, &calls).await, closed_then_open(9));
}

#[tokio::test(start_paused = true)]
async fn a_time_window_filled_by_a_success_trips() {
    let b = breaker(SlidingWindow::time(10 * SEC), 4).failure_rate(0.5);
    assert_eq!(
        states_after(b, &[ERR, ERR, OK, OK]).await,
        closed_then_open(3)
    );
    let b = breaker(SlidingWindow::time(10 * SEC), 10)
        .no_failure_rate()
        .slow_calls(SLOW, 0.5);
    let calls = [[SLOW_OK; 5], [OK; 5]].concat();
    assert_eq!(states_after(b, &calls).await, closed_then_open(9));
}

/// Old successes leave a time window and the failures left are the
/// majority: the next outcome, a success, is judged on that.
#[tokio::test(start_paused = true)]
async fn a_time_window_trips_when_old_successes_expire() {
    let layer = breaker(SlidingWindow::time_with_buckets(10 * SEC, 10), 2)
        .failure_rate(0.5)
        .build()
        .unwrap();
    let circuit = layer.circuit().clone();
    let scripted = Scripted::default();
    let mut svc = layer.layer(scripted.service());
    for _ in 0..3 {
        scripted.call(&mut svc, OK).await.unwrap();
    }
    advance(5 * SEC).await;
    for _ in 0..2 {
        scripted.call(&mut svc, ERR).await.unwrap_err();
    }
    assert_eq!(circuit.state(), State::Closed, "2 of 5");
    // The bucket of the three successes leaves the window.
    advance(5 * SEC).await;
    scripted.call(&mut svc, OK).await.unwrap();
    assert_eq!(circuit.state(), State::Open, "2 failures of 3 calls");
}

/// The half-open rule for a slow success: with a slow-call rule on, a probe
/// that succeeds but takes the slow threshold or longer counts as a failed
/// probe and reopens the circuit; a fast one counts toward closing it.
#[tokio::test(start_paused = true)]
async fn a_slow_probe_reopens_and_a_fast_one_closes() {
    let layer = breaker(SlidingWindow::count(4), 4)
        .no_failure_rate()
        .slow_calls(SLOW, 0.5)
        .build()
        .unwrap();
    let circuit = layer.circuit().clone();
    let scripted = Scripted::default();
    let mut svc = layer.layer(scripted.service());
    for _ in 0..4 {
        scripted.call(&mut svc, SLOW_OK).await.unwrap();
    }
    assert_eq!(circuit.state(), State::Open);
    advance(10 * SEC).await;
    scripted
        .call(&mut svc, SLOW_OK)
        .await
        .expect("the probe itself succeeds");
    assert_eq!(circuit.state(), State::Open, "a slow probe reopens");
    assert_eq!(circuit.snapshot().consecutive_trips, 2);
    advance(10 * SEC).await;
    scripted.call(&mut svc, OK).await.unwrap();
    assert_eq!(circuit.state(), State::Closed, "a fast probe closes");
}

/// The pool's failure-percentage rule has the same moment: after F, F, S, S
/// with a 50% rule over at least 4 calls the replica is ejected, on the
/// fourth call, a success.
#[tokio::test(start_paused = true)]
async fn a_success_that_fills_a_replicas_window_ejects_it() {
    let scripted = Scripted::default();
    let mut pool = one_replica_pool(&scripted, None, Some((0.5, 4)));
    let handle = pool.handle();
    let mut healths = Vec::new();
    for call in [ERR, ERR, OK, OK] {
        let _ = scripted.call(&mut pool, call).await;
        healths.push(handle.snapshot()[0].health);
    }
    assert!(
        matches!(
            healths[..],
            [
                Health::Failing { in_a_row: 1 },
                Health::Failing { in_a_row: 2 },
                Health::Healthy,
                Health::Ejected { .. },
            ]
        ),
        "{healths:?}"
    );
}

/// Failures are failures, successes successes.
#[derive(Clone, Copy)]
struct ByResult;

impl Classify<u32, BoxError> for ByResult {
    fn classify(&self, result: Result<&u32, &BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::success(),
            Err(_) => Verdict::retryable_failure(),
        }
    }
}

type ScriptedService = tower::util::BoxCloneSyncService<u32, u32, BoxError>;

/// A pool of one replica, judged only by the per-replica rules given; an
/// ejection lasts an hour, so it cannot end within a test.
fn one_replica_pool(
    scripted: &Scripted,
    consecutive: Option<u32>,
    percentage: Option<(f64, u32)>,
) -> Pool<&'static str, ScriptedService, ByResult> {
    let service = tower::util::BoxCloneSyncService::new(scripted.service());
    Pool::builder()
        .name("rules")
        .classify(ByResult)
        .failure_penalty(MS)
        .outlier(
            OutlierDetection::default()
                .consecutive_failures(consecutive)
                .failure_percentage(percentage)
                .success_rate_stdev(None)
                .latency_factor(None)
                .ejection(Backoff::constant(Duration::from_secs(3600)))
                .max_ejected(1.0),
        )
        .build([("a", Replica::new(service))])
        .unwrap()
}

/// The breaker's window as a plain list, recounted at every step.
struct BreakerModel {
    window: SlidingWindow,
    min_calls: u32,
    failure_rate: Option<f64>,
    slow_rate: Option<f64>,
    consecutive: Option<u32>,
    /// (bucket index, failed, slow) of every outcome since the last close,
    /// newest last.
    outcomes: VecDeque<(u64, bool, bool)>,
    in_a_row: u64,
}

impl BreakerModel {
    fn bucket_nanos(&self) -> u128 {
        match self.window {
            SlidingWindow::Time { span, buckets } => span.as_nanos() / u128::from(buckets),
            _ => 1,
        }
    }

    /// The window's (calls, failures, slow calls) at bucket `now`.
    fn counts(&self, now: u64) -> (u64, u64, u64) {
        let live = |at: u64| match self.window {
            SlidingWindow::Time { buckets, .. } => now - at < u64::from(buckets),
            _ => true,
        };
        let mut counts = (0, 0, 0);
        for (_, failed, slow) in self.outcomes.iter().filter(|o| live(o.0)) {
            counts.0 += 1;
            counts.1 += u64::from(*failed);
            counts.2 += u64::from(*slow);
        }
        counts
    }

    /// Records one outcome at bucket `now`; whether a rule trips.
    fn record(&mut self, now: u64, failed: bool, slow: bool) -> bool {
        self.outcomes.push_back((now, failed, slow));
        if let SlidingWindow::Count { size } = self.window {
            if self.outcomes.len() > size as usize {
                self.outcomes.pop_front();
            }
        }
        self.in_a_row = if failed { self.in_a_row + 1 } else { 0 };
        let (calls, failures, slow_calls) = self.counts(now);
        let share = |n: u64| n as f64 / calls as f64;
        self.consecutive
            .is_some_and(|n| self.in_a_row >= u64::from(n))
            || (calls >= u64::from(self.min_calls)
                && (self.failure_rate.is_some_and(|r| share(failures) >= r)
                    || self.slow_rate.is_some_and(|r| share(slow_calls) >= r)))
    }

    fn clear(&mut self) {
        self.outcomes.clear();
        self.in_a_row = 0;
    }
}

const RATES: [f64; 7] = [0.1, 0.25, 0.33, 0.5, 0.6, 0.75, 1.0];

fn any_window() -> impl Strategy<Value = SlidingWindow> {
    prop_oneof![
        (1u32..=12).prop_map(SlidingWindow::count),
        (1u32..=5, 10u64..=200).prop_map(|(buckets, bucket_ms)| {
            SlidingWindow::time_with_buckets(
                Duration::from_millis(bucket_ms * u64::from(buckets)),
                buckets,
            )
        }),
    ]
}

/// (fails, is slow, pause before in ms).
fn any_steps() -> impl Strategy<Value = Vec<(bool, bool, u64)>> {
    proptest::collection::vec(
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u64), 0u64..50, 0u64..1_500],
        ),
        1..120,
    )
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any window, any rules, any minimum of calls: after every outcome the
    /// breaker is open exactly when the recount says a rule trips, and
    /// while closed its counts are the recount's. A trip is reset and the
    /// sequence goes on, from an empty window.
    #[test]
    fn the_breaker_agrees_with_a_recount_after_every_outcome(
        window in any_window(),
        min_calls in 1u32..=12,
        failure_rate in proptest::option::of(proptest::sample::select(RATES.to_vec())),
        slow_rate in proptest::option::of(proptest::sample::select(RATES.to_vec())),
        consecutive in proptest::option::of(1u32..=5),
        steps in any_steps(),
    ) {
        let min_calls = match window {
            SlidingWindow::Count { size } => min_calls.min(size),
            _ => min_calls,
        };
        prop_assume!(failure_rate.is_some() || slow_rate.is_some() || consecutive.is_some());
        paused_runtime().block_on(async {
            let mut builder = breaker(window, min_calls).no_failure_rate();
            if let Some(r) = failure_rate {
                builder = builder.failure_rate(r);
            }
            if let Some(r) = slow_rate {
                builder = builder.slow_calls(SLOW, r);
            }
            if let Some(n) = consecutive {
                builder = builder.consecutive_failures(n);
            }
            let start = Instant::now();
            let layer = builder.build().unwrap();
            let circuit = layer.circuit().clone();
            let scripted = Scripted::default();
            let mut svc = layer.layer(scripted.service());
            let mut model = BreakerModel {
                window,
                min_calls,
                failure_rate,
                slow_rate,
                consecutive,
                outcomes: VecDeque::new(),
                in_a_row: 0,
            };
            for (i, (fail, slow, pause_ms)) in steps.into_iter().enumerate() {
                advance(Duration::from_millis(pause_ms)).await;
                let result = scripted.call(&mut svc, Call { fail, slow }).await;
                prop_assert_eq!(result.is_err(), fail, "step {}: the call went through", i);
                let bucket = |at: Instant| ((at - start).as_nanos() / model.bucket_nanos()) as u64;
                let now = bucket(Instant::now());
                // A slow outcome counts only where a slow-call rule measures it.
                let tripped = model.record(now, fail, slow && slow_rate.is_some());
                if tripped {
                    prop_assert_eq!(circuit.state(), State::Open, "step {}", i);
                    circuit.reset();
                    model.clear();
                    continue;
                }
                prop_assert_eq!(circuit.state(), State::Closed, "step {}", i);
                let snapshot = circuit.snapshot();
                if failure_rate.is_some() || slow_rate.is_some() {
                    let (calls, failures, slow_calls) = model.counts(now);
                    prop_assert_eq!(
                        (snapshot.calls, snapshot.failures, snapshot.slow_calls),
                        (calls, failures, slow_calls),
                        "step {}",
                        i
                    );
                }
                if consecutive.is_some() {
                    prop_assert_eq!(snapshot.consecutive_failures, model.in_a_row, "step {}", i);
                }
            }
            Ok(())
        })?;
    }

    /// Any per-replica rules: after every outcome the replica's health is
    /// what a recount of its last 100 calls and its failures in a row says,
    /// up to the call that ejects it.
    #[test]
    fn a_replica_is_judged_as_a_recount_says_after_every_outcome(
        consecutive in proptest::option::of(1u32..=6),
        percentage in proptest::option::of((
            proptest::sample::select(RATES.to_vec()),
            0u32..=12,
        )),
        steps in any_steps(),
    ) {
        prop_assume!(consecutive.is_some() || percentage.is_some());
        paused_runtime().block_on(async {
            let scripted = Scripted::default();
            let mut pool = one_replica_pool(&scripted, consecutive, percentage);
            let handle = pool.handle();
            let mut last: VecDeque<bool> = VecDeque::new();
            let mut in_a_row = 0u64;
            for (i, (fail, _slow, pause_ms)) in steps.into_iter().enumerate() {
                advance(Duration::from_millis(pause_ms)).await;
                let result = scripted.call(&mut pool, Call { fail, slow: false }).await;
                prop_assert_eq!(result.is_err(), fail, "step {}", i);
                last.push_back(fail);
                if last.len() > 100 {
                    last.pop_front();
                }
                in_a_row = if fail { in_a_row + 1 } else { 0 };
                let failures = last.iter().filter(|f| **f).count();
                let ejected = consecutive.is_some_and(|n| in_a_row >= u64::from(n))
                    || percentage.is_some_and(|(rate, min)| {
                        last.len() >= min as usize && failures as f64 / last.len() as f64 >= rate
                    });
                let health = handle.snapshot()[0].health;
                if ejected {
                    prop_assert!(matches!(health, Health::Ejected { .. }), "step {}: {:?}", i, health);
                    return Ok(());
                }
                let expected = if in_a_row > 0 { Health::Failing { in_a_row } } else { Health::Healthy };
                prop_assert_eq!(health, expected, "step {}", i);
            }
            Ok(())
        })?;
    }
}
