//! What a closed circuit breaker, and a retry or hedge layer whose calls
//! succeed at once, cost per call, next to the alternatives.
//!
//! Run: `cargo bench --bench overhead -- --noplot` (about four minutes);
//! one family: `-- 'breaker/' --noplot`, `-- 'retry/' --noplot` or
//! `-- 'hedge/' --noplot`.
//!
//! Every variant drives a tower `Service` by hand — `poll_ready`, `call`,
//! then the returned future polled to completion — with no runtime, around
//! an inner service that answers at once (`Echo`, `u64` in and out, never
//! failing). What is left is the layer's own bookkeeping. No metrics
//! recorder is installed, so steadfast's counters are no-ops here.
//!
//! Group `breaker/closed` (one thread, time per call, `Waker::noop()`):
//!
//! - `raw`: the inner service alone, the floor;
//! - `steadfast/count`: `CircuitBreakerLayer::builder().build()` (the
//!   default count window of 100 calls);
//! - `steadfast/time`: the same with `SlidingWindow::time(10 s)` (10
//!   buckets);
//! - `tower-resilience`: `tower_resilience::circuitbreaker`, its default
//!   (leanest) config: count window of 100, no listeners, no slow-call rule,
//!   no fallback;
//! - `failsafe`: failsafe's synchronous `CircuitBreaker::call` (default
//!   `Config::new().build()`) wrapped around the same hand-driven `Echo` as
//!   `raw`. Its futures API makes the same two state-machine calls
//!   (`is_call_permitted` on first poll, `on_success` on completion) plus a
//!   future wrapper, so the synchronous call is its leanest closed path.
//!
//! Every breaker is warmed with 1,000 calls first, so its window is full of
//! successes and the circuit is in its steady closed state.
//!
//! Group `breaker/contended` (time per call, aggregated over threads):
//! `iters` calls split over 1 or 2 threads, each driving its own clone of
//! ONE shared breaker (so they share its state), timed from a common start
//! barrier to the last thread's end. A steadfast clone shares the circuit;
//! a tower-resilience clone shares its `Arc<tokio::sync::Mutex<Circuit>>`;
//! a failsafe clone shares its `Arc<parking_lot::Mutex<..>>`. The
//! `*-unshared` controls give each thread its own steadfast breaker: the
//! same work with nothing shared, i.e. the machine's ceiling for that work.
//! `raw` is too small (a cycle or so per call) to say much.
//!
//! Here the waker raises a flag and a thread that sees `Pending` (only
//! tower-resilience's async mutex ever returns it, when the other thread
//! holds it) polls again once woken, as a runtime would. Polling again at
//! once with a no-op waker instead makes tower-resilience look worse still:
//! each repoll of a queued tokio semaphore waiter takes the semaphore's
//! waiter-list lock, fighting the thread that is trying to release.
//!
//! Group `retry/happy` (one thread, time per call, `Waker::noop()`): the
//! happy path of a retry layer, where the first attempt succeeds. What a
//! call pays for is keeping a copy of the request in case it must be sent
//! again, and the budget deposit that lets a later failure be retried.
//!
//! - `raw`: `Echo` alone, the floor;
//! - `steadfast`: `steadfast::retry::RetryLayer::builder().build()`, its
//!   defaults: 3 attempts and a budget of its own (ttl 10 s, 10/s floor,
//!   20%), one deposit per call (per-thread shards);
//! - `tower`: `tower::retry::Retry` with `TowerPolicy` below, a minimal
//!   policy doing the same: clones the request, retries errors (3
//!   attempts), deposits into an `Arc<TpsBudget>` (ttl 10 s, 10/s, 20%)
//!   once per request (in `clone_request`, which tower calls before the
//!   first attempt) and withdraws before a retry. `TpsBudget` takes a
//!   `Mutex` and reads the clock on every deposit, and `Retry::call` clones
//!   the whole service (policy and its `Arc` included) into the future;
//! - `tower-resilience`: `tower_resilience::retry`, its default config: 3
//!   attempts, no listeners and no budget (a budget is opt-in). Its future
//!   is a `BoxFuture` and every success builds a `RetryEvent` (the layer's
//!   name cloned into a `String`, a clock read) even with no listener;
//! - `tower-resilience/budget`: the same with its default token-bucket
//!   budget (`RetryBudgetBuilder::new().token_bucket()`: 10/s, 100 tokens,
//!   behind a `Mutex`, a clock read per deposit), which makes the deposit
//!   per success the other two make.
//!
//! Group `retry/contended`: as `breaker/contended`, each thread driving its
//! own clone of ONE retry service. Services of one steadfast layer, and
//! their clones, share its policy and budget; tower's clones share the
//! `Arc<TpsBudget>`; tower-resilience's clones share its
//! `Arc<RetryConfig>` (and the budget in it). The control
//! `steadfast/unshared` gives each thread its own layer, so its own budget.
//!
//! Group `hedge/happy` (one thread, time per call, `Waker::noop()`): a
//! hedge layer around `Echo`, whose first attempt always answers at once.
//! What a call pays for is keeping a copy of the request for a hedge, the
//! budget deposit, and whatever it prepares for a hedge it will not send.
//!
//! - `raw`: `Echo` alone, the floor;
//! - `steadfast`: `steadfast::hedge::HedgeLayer::builder().build()`, its
//!   defaults: adaptive p95 delay, one extra attempt, a budget of its own.
//!   A call that completes on its first poll reads no clock and arms no
//!   timer, so it runs with no runtime, like the other groups;
//! - `tower`: `tower::hedge::Hedge` with `TowerHedgePolicy` (clones every
//!   request, always hedges), p95, 20 data points, a 10 s period, its
//!   histogram prefilled so every call is eligible, as in steady state
//!   (tower reads only the previous full period, so a fresh one would not
//!   hedge for 10 s). Every call locks its histogram three times (to check
//!   the data points, to read the quantile, to record) and builds the
//!   delayed branch with a `tokio::time::Sleep`;
//! - `tower-resilience`: `tower_resilience::hedge`, its default config: a
//!   fixed 1 s delay, 2 attempts in all, no listeners. Its future is a
//!   `BoxFuture` that boxes the attempt in a `FuturesUnordered` and boxes a
//!   `tokio::time::Sleep` for the delay on every call.
//!
//! `tokio::time::sleep` panics outside a runtime, so `tower` and
//! `tower-resilience` run inside one (`InRuntime`): criterion's
//! `iter_custom`, whose timed loop runs in `block_on` of a current-thread
//! runtime built before the clock starts. The calls are still driven by
//! hand by the same `drive`, with the same no-op waker: the runtime only
//! supplies the timer handle, and no timer is ever polled (the instant
//! answer wins first).
//!
//! Group `hedge/contended`: as `breaker/contended`, each thread driving its
//! own clone of ONE hedge service. Services of one steadfast layer, and
//! their clones, share its histogram and budget (`steadfast/unshared`, the
//! control, gives each thread its own layer); tower-resilience's clones
//! share its `Arc<HedgeConfig>`. tower's `Hedge` is not `Clone`, so
//! `tower/mutex` shares one behind a `Mutex` held for `poll_ready` and
//! `call` (its response future is polled after the mutex is released), the
//! usual way short of a `Buffer` task. The runtime variants give each
//! thread a current-thread runtime of its own, built before the start
//! barrier.
//!
//! # Reading the numbers
//!
//! - Overhead of a layer = `<group>/<impl>` − `<group>/raw`, in
//!   `breaker/closed`, `retry/happy` or `hedge/happy`.
//! - Scaling = `contended/<impl>/1thread` ÷ `contended/<impl>/2threads`:
//!   the throughput of two threads over one. 2.0 is perfect scaling (the
//!   threads never wait on each other); about 1.0 means the shared state
//!   serialises them (two threads do no more than one, each call taking
//!   twice as long); below 1.0 means sharing makes two threads slower than
//!   one (cache-line ping-pong on a lock, lock hand-offs). Compare with the
//!   `*unshared` control's ratio, which is what this machine gives for the
//!   same work without sharing (on a busy 2-core box even that falls short
//!   of 2.0: run it on a quiet machine).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use steadfast::circuit_breaker::{CircuitBreakerLayer, SlidingWindow};
use steadfast::hedge::HedgeLayer;
use steadfast::retry::RetryLayer;
use tokio::time::Instant;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};
use tower_resilience::circuitbreaker::CircuitBreakerLayer as TrLayer;
use tower_resilience::hedge::HedgeLayer as TrHedgeLayer;
use tower_resilience::retry::RetryBudgetBuilder;
use tower_resilience::retry::RetryLayer as TrRetryLayer;

/// An inner service that answers at once.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, x: u64) -> Self::Future {
        ready(Ok(x))
    }
}

/// What a thread does when a future or `poll_ready` returns `Pending`.
struct Driver {
    waker: Waker,
    flag: Option<Arc<Flag>>,
}

/// A waker that raises a flag, so a thread repolls only once woken, as a
/// runtime would.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

impl Driver {
    /// A no-op waker; `Pending` is polled again at once.
    fn noop() -> Self {
        Self {
            waker: Waker::noop().clone(),
            flag: None,
        }
    }

    /// A flag waker; `Pending` waits for the wake-up before polling again.
    fn flagged() -> Self {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        Self {
            waker: Waker::from(flag.clone()),
            flag: Some(flag),
        }
    }

    #[cold]
    fn wait(&self) {
        let Some(flag) = &self.flag else {
            std::hint::spin_loop();
            return;
        };
        let mut spins = 0u32;
        while !flag.0.swap(false, Ordering::Acquire) {
            spins += 1;
            if spins % 128 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// One call driven by hand: ready, call, poll to completion.
#[inline]
fn drive<S>(svc: &mut S, d: &Driver, x: u64) -> S::Response
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(&d.waker);
    loop {
        match svc.poll_ready(&mut cx) {
            Poll::Ready(r) => break r.expect("ready"),
            Poll::Pending => d.wait(),
        }
    }
    let mut fut = pin!(svc.call(x));
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => return r.expect("Echo never fails"),
            Poll::Pending => d.wait(),
        }
    }
}

/// Anything the benches can call once, from its own clone.
trait Caller: Send {
    fn once(&mut self, d: &Driver, x: u64) -> u64;

    /// Runs `f` — a thread's whole loop of calls — in the context the
    /// caller needs: none by default; see [`InRuntime`].
    fn scope<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// A tower service.
#[derive(Clone)]
struct Svc<S>(S);

impl<S> Caller for Svc<S>
where
    S: Service<u64, Response = u64> + Send,
    S::Error: std::fmt::Debug,
{
    #[inline]
    fn once(&mut self, d: &Driver, x: u64) -> u64 {
        drive(&mut self.0, d, x)
    }
}

/// failsafe's synchronous breaker around the hand-driven inner service.
#[derive(Clone)]
struct Failsafe<B> {
    breaker: B,
    inner: Echo,
}

impl<B: failsafe::CircuitBreaker + Clone + Send> Caller for Failsafe<B> {
    #[inline]
    fn once(&mut self, d: &Driver, x: u64) -> u64 {
        let inner = &mut self.inner;
        self.breaker
            .call(|| Ok::<_, Infallible>(drive(inner, d, x)))
            .expect("closed breaker, instant success")
    }
}

fn steadfast_count() -> impl Caller + Clone {
    let layer = CircuitBreakerLayer::builder()
        .build()
        .expect("valid config");
    Svc(layer.layer(Echo))
}

fn steadfast_time() -> impl Caller + Clone {
    let layer = CircuitBreakerLayer::builder()
        .window(SlidingWindow::time(Duration::from_secs(10)))
        .build()
        .expect("valid config");
    Svc(layer.layer(Echo))
}

fn tower_resilience() -> impl Caller + Clone {
    // A service's clones share its circuit (`Arc<Mutex<Circuit>>`).
    let layer = TrLayer::builder().build().expect("valid config");
    Svc(layer.layer(Echo))
}

fn failsafe() -> impl Caller + Clone {
    // Clones share the state machine (`Arc<Mutex<..>>`).
    Failsafe {
        breaker: failsafe::Config::new().build(),
        inner: Echo,
    }
}

fn steadfast_retry() -> impl Caller + Clone {
    // The defaults: 3 attempts, a budget of its own (ttl 10 s, 10/s, 20%)
    // that every service of the layer shares.
    let layer = RetryLayer::builder().build().expect("valid config");
    Svc(layer.layer(Echo))
}

/// A minimal `tower::retry::Policy` that does what steadfast's retry does
/// for a call: keeps a copy of the request, retries errors (up to 3
/// attempts), deposits into a shared `TpsBudget` once per request and
/// withdraws before each retry.
#[derive(Clone)]
struct TowerPolicy {
    budget: Arc<TpsBudget>,
    /// Attempts made so far by the request this copy of the policy serves.
    attempt: u32,
}

impl<Req: Clone, Res, E> Policy<Req, Res, E> for TowerPolicy {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if result.is_ok() || self.attempt >= 3 || !self.budget.withdraw() {
            return None;
        }
        self.attempt += 1;
        Some(ready(()))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        // tower calls this in `Retry::call`, on the service's own policy
        // (never retried, so `attempt` stays 1), before the first attempt;
        // and again before each retry, on the response future's copy, after
        // `retry` has counted the attempt. So this is one deposit per
        // request, as steadfast makes in its `call`.
        if self.attempt == 1 {
            self.budget.deposit();
        }
        Some(req.clone())
    }
}

fn tower_retry() -> impl Caller + Clone {
    // Clones share the budget's `Arc`.
    let policy = TowerPolicy {
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        attempt: 1,
    };
    Svc(tower::retry::Retry::new(policy, Echo))
}

fn tower_resilience_retry() -> impl Caller + Clone {
    // The default config: 3 attempts, exponential backoff from 100 ms, no
    // listeners, and no budget (a budget is opt-in). Clones share the
    // `Arc<RetryConfig>`.
    let layer = TrRetryLayer::<u64, u64, Infallible>::builder().build();
    Svc(layer.layer(Echo))
}

fn tower_resilience_retry_budget() -> impl Caller + Clone {
    // The same with its default token bucket (10/s, at most 100 tokens,
    // `Mutex`-guarded): a deposit per success, as steadfast's and tower's.
    // Clones share the budget's `Arc`.
    let budget = RetryBudgetBuilder::new()
        .token_bucket()
        .build()
        .expect("valid budget");
    let layer = TrRetryLayer::<u64, u64, Infallible>::builder()
        .budget(budget)
        .build();
    Svc(layer.layer(Echo))
}

/// A caller whose layer arms a tokio timer on every call, even one that
/// completes at once (`tokio::time::sleep` panics outside a runtime): each
/// thread's loop runs inside `block_on` of a current-thread runtime of its
/// own. The calls are still driven by hand with the same `Driver`; the
/// runtime only supplies the timer handle (no timer ever fires: the
/// instant answer wins before one is polled).
#[derive(Clone)]
struct InRuntime<C>(C);

impl<C: Caller> Caller for InRuntime<C> {
    #[inline]
    fn once(&mut self, d: &Driver, x: u64) -> u64 {
        self.0.once(d, x)
    }

    fn scope<R>(f: impl FnOnce() -> R) -> R {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async move { f() })
    }
}

/// A service that is not `Clone` (tower's `Hedge`), shared the usual way
/// without a `Buffer` task: behind a mutex held for `poll_ready` and `call`;
/// the response future is polled after the mutex is released.
struct Locked<S>(Arc<Mutex<S>>);

impl<S> Clone for Locked<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> Caller for Locked<S>
where
    S: Service<u64, Response = u64> + Send,
    S::Error: std::fmt::Debug,
{
    #[inline]
    fn once(&mut self, d: &Driver, x: u64) -> u64 {
        let mut cx = Context::from_waker(&d.waker);
        let fut = {
            let mut svc = self.0.lock().expect("not poisoned");
            loop {
                match svc.poll_ready(&mut cx) {
                    Poll::Ready(r) => break r.expect("ready"),
                    Poll::Pending => d.wait(),
                }
            }
            svc.call(x)
        };
        let mut fut = pin!(fut);
        loop {
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(r) => return r.expect("Echo never fails"),
                Poll::Pending => d.wait(),
            }
        }
    }
}

fn steadfast_hedge() -> impl Caller + Clone {
    // The defaults: adaptive p95 delay (1 ms..1 s, 50 ms until 20 samples),
    // one extra attempt, a budget of its own (ttl 10 s, 10/s, 20%). Every
    // service of the layer, and every clone, shares the histogram and the
    // budget. No runtime: a call that completes on its first poll reads no
    // clock and arms no timer.
    let layer = HedgeLayer::builder().build().expect("valid config");
    Svc(layer.layer(Echo))
}

/// A `tower::hedge::Policy` that hedges every request (tower's hedge has no
/// budget to consult).
#[derive(Clone)]
struct TowerHedgePolicy;

impl tower::hedge::Policy<u64> for TowerHedgePolicy {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }

    fn can_retry(&self, _req: &u64) -> bool {
        true
    }
}

type TowerHedge = tower::hedge::Hedge<Echo, TowerHedgePolicy>;

fn tower_hedge() -> TowerHedge {
    // The settings steadfast defaults to: p95, 20 data points, a 10 s
    // period. tower reads only the previous full period, so a fresh hedge
    // does not hedge for its first 10 s; the histogram is prefilled (its
    // `new_with_mock_latencies`) so that, as in steady state, every call is
    // eligible: it clones the request and builds the delayed branch with
    // its `tokio::time::Sleep`.
    tower::hedge::Hedge::new_with_mock_latencies::<u64>(
        Echo,
        TowerHedgePolicy,
        20,
        0.95,
        Duration::from_secs(10),
        &[1; 100],
    )
}

fn tower_resilience_hedge() -> impl Caller + Clone {
    // The default config: a fixed 1 s delay, 2 attempts in all, no
    // listeners, every request eligible. Clones share its `Arc<HedgeConfig>`.
    let layer = TrHedgeLayer::builder().build();
    InRuntime(Svc(layer.layer(Echo)))
}

/// 1,000 calls first: a breaker's window fills so the measured calls see a
/// steady closed circuit; a retry budget's deposits and shards are warm.
fn warmed<C: Caller>(mut caller: C) -> C {
    let d = Driver::noop();
    C::scope(|| {
        for i in 0..1_000 {
            black_box(caller.once(&d, i));
        }
    });
    caller
}

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/closed");
    configure(&mut group);
    let d = Driver::noop();

    let mut raw = Svc(Echo);
    group.bench_function("raw", |b| b.iter(|| raw.once(&d, black_box(1))));
    let mut sf = warmed(steadfast_count());
    group.bench_function("steadfast/count", |b| b.iter(|| sf.once(&d, black_box(1))));
    let mut sf = warmed(steadfast_time());
    group.bench_function("steadfast/time", |b| b.iter(|| sf.once(&d, black_box(1))));
    let mut tr = warmed(tower_resilience());
    group.bench_function("tower-resilience", |b| b.iter(|| tr.once(&d, black_box(1))));
    let mut fs = warmed(failsafe());
    group.bench_function("failsafe", |b| b.iter(|| fs.once(&d, black_box(1))));
    group.finish();
}

/// `iters` calls split over `threads` threads, each with its own caller
/// from `make` (made before the threads start); wall time from the common
/// start barrier to the last thread's end.
fn run_split<C: Caller>(make: &impl Fn() -> C, threads: u64, iters: u64) -> Duration {
    let barrier = Barrier::new(threads as usize);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mut caller = make();
                let barrier = &barrier;
                // Thread 0 takes the remainder.
                let n = iters / threads + if t == 0 { iters % threads } else { 0 };
                s.spawn(move || {
                    // A runtime, if the caller needs one, is built before the
                    // barrier: outside the timed span.
                    C::scope(|| {
                        let d = Driver::flagged();
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..n {
                            black_box(caller.once(&d, black_box(i)));
                        }
                        (start, Instant::now())
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("a thread");
    let end = spans.iter().map(|s| s.1).max().expect("a thread");
    end - start
}

/// `<name>/1thread` and `<name>/2threads`.
fn contended_pair<C: Caller>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    make: impl Fn() -> C,
) {
    for threads in [1, 2] {
        let plural = if threads > 1 { "s" } else { "" };
        group.bench_function(format!("{name}/{threads}thread{plural}"), |b| {
            b.iter_custom(|iters| run_split(&make, threads, iters))
        });
    }
}

/// Every thread gets a clone of one warmed caller: one shared breaker.
fn shared<C: Caller + Clone>(caller: C) -> impl Fn() -> C {
    let caller = warmed(caller);
    move || caller.clone()
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/contended");
    configure(&mut group);
    contended_pair(&mut group, "raw", shared(Svc(Echo)));
    contended_pair(&mut group, "steadfast/count", shared(steadfast_count()));
    contended_pair(&mut group, "steadfast/time", shared(steadfast_time()));
    // Controls: each thread its own breaker (own circuit), so nothing is
    // shared; the ceiling the shared variants are compared with.
    contended_pair(&mut group, "steadfast/count-unshared", || {
        warmed(steadfast_count())
    });
    contended_pair(&mut group, "steadfast/time-unshared", || {
        warmed(steadfast_time())
    });
    contended_pair(&mut group, "tower-resilience", shared(tower_resilience()));
    contended_pair(&mut group, "failsafe", shared(failsafe()));
    group.finish();
}

fn retry_happy(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry/happy");
    configure(&mut group);
    let d = Driver::noop();

    let mut raw = Svc(Echo);
    group.bench_function("raw", |b| b.iter(|| raw.once(&d, black_box(1))));
    let mut sf = warmed(steadfast_retry());
    group.bench_function("steadfast", |b| b.iter(|| sf.once(&d, black_box(1))));
    let mut tw = warmed(tower_retry());
    group.bench_function("tower", |b| b.iter(|| tw.once(&d, black_box(1))));
    let mut tr = warmed(tower_resilience_retry());
    group.bench_function("tower-resilience", |b| b.iter(|| tr.once(&d, black_box(1))));
    let mut tr = warmed(tower_resilience_retry_budget());
    group.bench_function("tower-resilience/budget", |b| {
        b.iter(|| tr.once(&d, black_box(1)))
    });
    group.finish();
}

fn retry_contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry/contended");
    configure(&mut group);
    contended_pair(&mut group, "steadfast", shared(steadfast_retry()));
    // Control: each thread its own layer, so its own budget.
    contended_pair(&mut group, "steadfast/unshared", || {
        warmed(steadfast_retry())
    });
    contended_pair(&mut group, "tower", shared(tower_retry()));
    contended_pair(
        &mut group,
        "tower-resilience",
        shared(tower_resilience_retry()),
    );
    contended_pair(
        &mut group,
        "tower-resilience/budget",
        shared(tower_resilience_retry_budget()),
    );
    group.finish();
}

/// Time per call of `iters` calls on one thread, inside `C::scope`.
fn timed<C: Caller>(caller: &mut C, d: &Driver, iters: u64) -> Duration {
    C::scope(|| {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(caller.once(d, black_box(1)));
        }
        start.elapsed()
    })
}

fn hedge_happy(c: &mut Criterion) {
    let mut group = c.benchmark_group("hedge/happy");
    configure(&mut group);
    let d = Driver::noop();

    let mut raw = Svc(Echo);
    group.bench_function("raw", |b| b.iter(|| raw.once(&d, black_box(1))));
    let mut sf = warmed(steadfast_hedge());
    group.bench_function("steadfast", |b| b.iter(|| sf.once(&d, black_box(1))));
    // The two that need a runtime: the timed loop runs inside `block_on`.
    let mut tw = warmed(InRuntime(Svc(tower_hedge())));
    group.bench_function("tower", |b| {
        b.iter_custom(|iters| timed(&mut tw, &d, iters))
    });
    let mut tr = warmed(tower_resilience_hedge());
    group.bench_function("tower-resilience", |b| {
        b.iter_custom(|iters| timed(&mut tr, &d, iters))
    });
    group.finish();
}

fn hedge_contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("hedge/contended");
    configure(&mut group);
    contended_pair(&mut group, "steadfast", shared(steadfast_hedge()));
    // Control: each thread its own layer (own histogram, own budget).
    contended_pair(&mut group, "steadfast/unshared", || {
        warmed(steadfast_hedge())
    });
    // tower's `Hedge` is not `Clone`: the threads share one behind a mutex.
    contended_pair(
        &mut group,
        "tower/mutex",
        shared(InRuntime(Locked(Arc::new(Mutex::new(tower_hedge()))))),
    );
    contended_pair(
        &mut group,
        "tower-resilience",
        shared(tower_resilience_hedge()),
    );
    group.finish();
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
}

criterion_group!(
    benches,
    closed,
    contended,
    retry_happy,
    retry_contended,
    hedge_happy,
    hedge_contended
);
criterion_main!(benches);
