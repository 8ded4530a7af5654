//! What picking a replica costs, per request, for 3, 100 and 10,000
//! replicas: steadfast's `Pool` next to tower's p2c `Balance`.
//!
//! Run: `cargo bench --bench pool -- --noplot` (about 30 s); one side:
//! `-- 'pool/pick/steadfast' --noplot`.
//!
//! Group `pool/pick` (one thread, time per request, `Waker::noop()`): every
//! iteration is one whole request driven by hand — `poll_ready`, `call`,
//! then the returned future polled to completion — over replicas that all
//! answer at once (`Echo`, `u64` in and out, never failing, always ready).
//! What is left is the balancer's own work: choosing a replica, and keeping
//! the load estimate that the next choice reads. No metrics recorder is
//! installed, so steadfast's counters and gauges are no-ops here.
//!
//! - `steadfast/{3,100,10000}`: `Pool::builder().seed(..).build(..)`, its
//!   defaults (one tier, no zone, default outlier detection, no breaker),
//!   `Replica::new(Echo)` each. Per request it reads the clock once, checks
//!   the routing table is current (atomic loads; the table is rebuilt at
//!   most every 100 ms when nothing happens, an O(replicas) pass amortised
//!   over the requests in between), draws a tier and a zone from the
//!   table, runs power of two choices over peak-EWMA × (in flight + 1) /
//!   weight (the two candidates' state is one cache line each), **clones
//!   the chosen replica's service** into the response future (tower's
//!   `Oneshot`: each request waits only on its own replica's readiness),
//!   and on completion **reads the clock** again to fold the latency into
//!   the replica's estimate and its outcome into outlier detection. Two
//!   clock reads per request in all (`tokio::time::Instant::now()`, which
//!   without a paused clock is `std::time::Instant::now()`, a vDSO call:
//!   see `pool/clock`). A pool is `Clone` and `&self`-shared: this is the
//!   same path a multi-threaded caller takes;
//! - `tower-p2c/{3,100,10000}`: `tower::balance::p2c::Balance` over
//!   `PeakEwmaDiscover<ServiceList<Vec<Echo>>>` (default RTT 1 ms, decay
//!   10 s — steadfast's defaults — `CompleteOnResponse`), the equivalent
//!   p2c over peak-EWMA × (pending + 1). Per request `Balance::poll_ready`
//!   polls its (exhausted) discovery stream and its pending set (where the
//!   replica used last went, see below), samples two distinct ready
//!   indices, and reads each one's load (a `Mutex` and two clock reads
//!   each); `call` moves the chosen service out of the ready set into the
//!   pending set (a task node allocated in a `FuturesUnordered`) to be
//!   polled ready again on the next `poll_ready`, and `PeakEwma` takes a
//!   clock read and an `Arc` for its completion handle, whose drop locks
//!   the estimate again and reads the clock twice: seven clock reads per
//!   request in all. `Balance` is not `Clone`: many callers share it
//!   behind a `Buffer` (a channel hop and a task), not measured here.
//!
//! Group `pool/upkeep` (`rebuild-{inline,kept}/N`, `sweep-{inline,kept}/N`):
//! the requests that come when the fleet's state needs keeping, the
//! slowest a caller sees. Each iteration times one request and nothing
//! else: for `rebuild`, a request made right after an operator's change (a
//! replica disabled, or enabled again, outside the timed span), which makes
//! the routing table stale (an O(replicas) rebuild, as every ejection,
//! pushback, check result or 100 ms without events also causes); for
//! `sweep`, a request made once the outlier interval (10 ms here) is over,
//! when the fleet-relative rules (success rate and latency: a pass over the
//! replicas and a sort of their latencies) are due. The iterations of
//! `sweep` wait out the interval outside the timed span, so it runs slowly.
//! `inline`: no upkeep future, so that request does the work in its `call`.
//! `kept`: `Pool::upkeep()` runs on a thread of its own (a current-thread
//! runtime), so the request only routes; for `rebuild` it comes 2 ms after
//! the change, time for the keeper to have rebuilt. After the group, the
//! median, p99 and single slowest request of each are printed.
//!
//! Group `pool/clock`: one clock reading, through tokio's `Instant` (with
//! the `test-util` feature this crate's tests need) and through `std`'s.
//! It is a vDSO call on this VM, and a large share of both balancers' times
//! above: steadfast reads the clock twice per request, tower's p2c seven
//! times.
//!
//! Neither needs a runtime: both clocks are `tokio::time::Instant`, which
//! reads the system clock when no runtime (and no paused clock) is around,
//! and nothing here ever arms a timer. Each side is warmed with 10 requests
//! per replica (at least 10,000) first, so every replica has answered and
//! the load estimates are in their steady state.
//!
//! # Reading the numbers
//!
//! O(1) per pick means the time does not grow with the number of replicas.
//! At 10,000 replicas the two random candidates' states (megabytes of them
//! in all, for either balancer) are rarely in L1 or L2 cache any more, so a
//! flat algorithm still pays a cache miss or two per pick there: compare
//! the 100 → 10,000 step with the 3 → 100 one. steadfast's table rebuild,
//! the one O(replicas) pass, runs at most every 100 ms when nothing
//! changes and shows up below 0.5% of a profile at 10,000 replicas.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use steadfast::pool::{OutlierDetection, Pool, Replica};
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};

/// The numbers of replicas compared.
const SIZES: [usize; 3] = [3, 100, 10_000];

/// A replica that answers at once.
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

/// One request driven by hand: ready, call, poll to completion.
#[inline]
fn drive<S>(svc: &mut S, x: u64) -> S::Response
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match svc.poll_ready(&mut cx) {
            Poll::Ready(r) => break r.expect("ready"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    let mut fut = pin!(svc.call(x));
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => return r.expect("Echo never fails"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

fn steadfast_pool(n: usize) -> impl Service<u64, Response = u64, Error: std::fmt::Debug> {
    Pool::builder()
        .name(format!("bench-{n}"))
        .seed(0x5eed ^ n as u64)
        .build((0..n).map(|i| (i, Replica::new(Echo))))
        .expect("valid pool")
}

fn tower_p2c(n: usize) -> impl Service<u64, Response = u64, Error: std::fmt::Debug> {
    let list = ServiceList::new::<u64>(vec![Echo; n]);
    let discover = PeakEwmaDiscover::new::<u64>(
        list,
        Duration::from_millis(1),
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    Balance::new(discover)
}

/// Every replica answers a few times before the clock starts.
fn warmed<S>(mut svc: S, n: usize) -> S
where
    S: Service<u64, Response = u64, Error: std::fmt::Debug>,
{
    for i in 0..(10 * n).max(10_000) {
        black_box(drive(&mut svc, i as u64));
    }
    svc
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/pick");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for n in SIZES {
        let mut sf = warmed(steadfast_pool(n), n);
        group.bench_function(BenchmarkId::new("steadfast", n), |b| {
            b.iter(|| drive(&mut sf, black_box(1)))
        });
    }
    for n in SIZES {
        let mut tw = warmed(tower_p2c(n), n);
        group.bench_function(BenchmarkId::new("tower-p2c", n), |b| {
            b.iter(|| drive(&mut tw, black_box(1)))
        });
    }
    group.finish();
}

/// What one clock reading costs here, through tokio's `Instant` (what
/// both balancers read; with the `test-util` feature this crate's tests
/// need, it first looks for a paused clock) and through `std`'s: the floor
/// under any balancer that measures latency (steadfast reads twice per
/// request, tower's p2c seven times).
fn clock(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/clock");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    group.bench_function("tokio-test-util", |b| b.iter(tokio::time::Instant::now));
    #[allow(clippy::disallowed_types)]
    group.bench_function("std", |b| b.iter(std::time::Instant::now));
    group.finish();
}

/// The slowest requests: those that rebuild the routing table, and those
/// that run the fleet-wide outlier sweep (see the module docs), with the
/// upkeep in the request (`inline`) and with `Pool::upkeep` running on a
/// thread of its own (`kept`). After the group, the median, p99 and slowest request
/// of each are printed.
#[allow(clippy::disallowed_types)] // a wall-clock span around one request
fn upkeep(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/upkeep");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    let mut slowest: Vec<(String, Vec<Duration>)> = Vec::new();
    for n in [100, 10_000] {
        for kept in [false, true] {
            let how = if kept { "kept" } else { "inline" };
            let pool = Pool::builder()
                .name(format!("upkeep-{how}-{n}"))
                .seed(7)
                .build((0..n).map(|i| (i, Replica::new(Echo))))
                .expect("valid pool");
            let handle = pool.handle();
            let keeper = kept.then(|| Keeper::run(pool.upkeep()));
            let mut pool = warmed(pool, n);
            let last = n - 1;
            let mut disabled = false;
            let mut worst = Vec::new();
            group.bench_function(BenchmarkId::new(format!("rebuild-{how}"), n), |b| {
                b.iter_custom(|iters| {
                    timed(iters, &mut pool, &mut worst, || {
                        // A change that makes the table stale.
                        disabled = !disabled;
                        if disabled {
                            handle.disable(&last);
                        } else {
                            handle.enable(&last);
                        }
                        if kept {
                            // Time for the keeper to rebuild: the request
                            // meets the new table, as it would at any rate
                            // below one change per few milliseconds.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    })
                })
            });
            slowest.push((format!("rebuild-{how}/{n}"), worst));
            drop(keeper);

            let interval = Duration::from_millis(10);
            let pool = Pool::builder()
                .name(format!("sweep-{how}-{n}"))
                .seed(7)
                .outlier(OutlierDetection::default().interval(interval))
                .build((0..n).map(|i| (i, Replica::new(Echo))))
                .expect("valid pool");
            let keeper = kept.then(|| Keeper::run(pool.upkeep()));
            let mut pool = warmed(pool, n);
            let mut worst = Vec::new();
            group.bench_function(BenchmarkId::new(format!("sweep-{how}"), n), |b| {
                b.iter_custom(|iters| {
                    timed(iters, &mut pool, &mut worst, || {
                        // The interval runs out.
                        std::thread::sleep(interval + Duration::from_millis(1));
                    })
                })
            });
            slowest.push((format!("sweep-{how}/{n}"), worst));
            drop(keeper);
        }
    }
    group.finish();
    for (name, mut took) in slowest {
        if took.is_empty() {
            continue; // listed, not run
        }
        took.sort_unstable();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
        println!(
            "pool/upkeep/{name}: {} requests, median {:?}, p99 {:?}, slowest {:?}",
            took.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}

/// `iters` requests, each after `before` (outside the span): their total
/// time, and each one's kept in `took`.
#[allow(clippy::disallowed_types)] // a wall-clock span around one request
fn timed<S>(
    iters: u64,
    pool: &mut S,
    took: &mut Vec<Duration>,
    mut before: impl FnMut(),
) -> Duration
where
    S: Service<u64, Response = u64, Error: std::fmt::Debug>,
{
    let mut spent = Duration::ZERO;
    for i in 0..iters {
        before();
        let start = std::time::Instant::now();
        black_box(drive(pool, i));
        let elapsed = start.elapsed();
        spent += elapsed;
        took.push(elapsed);
    }
    spent
}

/// A pool's upkeep future, run on a thread of its own until dropped.
struct Keeper {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Keeper {
    fn run(upkeep: impl Future<Output = ()> + Send + 'static) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                tokio::select! {
                    () = upkeep => {}
                    _ = stopped => {}
                }
            });
        });
        // Until it has counted itself, requests would do the upkeep.
        std::thread::sleep(Duration::from_millis(20));
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

criterion_group!(benches, pick, upkeep, clock);
criterion_main!(benches);
