//! Hedging and failover under load, side by side: seeded scenarios on a
//! real tokio clock.
//!
//! Run: `cargo bench --bench scenarios` (about a minute and a half);
//! `SCENARIOS=a,c cargo bench --bench scenarios` runs only those (labels
//! `a`, `a'`, `b`, `c`); `SCENARIO_ROUNDS=5` runs (a), (a') and (b) five
//! times over seeds `seed..seed + 5` and adds a table with every round's
//! requests pooled: one round's p99 moves by half a millisecond from run to
//! run on this shared machine (the same configuration, run twice, differs
//! that much), so a comparison of tails wants several. A
//! plain `main` (no criterion): it builds a multi-thread tokio runtime with
//! 2 workers, runs each scenario once per column and prints a table.
//! Scenarios (a) to (b) are about hedging; (c), failover, is described at
//! the end.
//!
//! The backend is a `tower::service_fn` that sleeps (`tokio::time::sleep`,
//! real time, not paused) for a latency drawn from a seeded splitmix64 and
//! answers its request. A request's attempts are numbered by the backend
//! (a counter per request id), and attempt `k` of request `id` draws from
//! `(seed, id, k)`: every column sees the very same slow first attempts, so
//! the columns differ only by what their hedging did. `SCENARIO_SEED=<u64>`
//! changes the seed.
//!
//! Every column runs, with a fresh backend and a fresh layer:
//!
//! 1. a warm-up that is not measured: at least 2,000 requests and at least
//!    1.2 s — tower's hedge reads only the previous full period (1 s here),
//!    so it does not hedge at all before one period has gone by;
//! 2. the measured phase: 20,000 requests, 32 in flight (32 tasks pulling
//!    request ids from a shared counter), each timed client-side from
//!    before `call` to the answer.
//!
//! Every column is driven the same way: the service sits behind a mutex
//! held for `poll_ready` and `call` only (tower's `Hedge` is not `Clone`;
//! every service here is always ready), and the response future is awaited
//! after it is released.
//!
//! Columns:
//!
//! - `no hedging`: the backend alone;
//! - `steadfast`: `HedgeLayer` with the adaptive delay at the scenario's
//!   quantile (p99 unless said), floor 1 ms, ceiling 100 ms, other settings
//!   at their defaults (window 10 s, so recomputed every 1.25 s; 20
//!   samples; 50 ms until then; 1 extra attempt), and a `RetryBudget` of
//!   ratio 0.1 (ttl 10 s, 10/s floor). Its metrics go to a debugging
//!   recorder, read for the hedges sent, won and refused, and for its delay
//!   (sampled every 125 ms while it runs, printed as a timeline);
//! - `tower`: `tower::hedge::Hedge` at the same quantile, 20 data points, a
//!   1 s period, with a policy that hedges every request (it has no
//!   budget);
//! - `tower-resilience`: its hedge has no adaptive delay, only a fixed one,
//!   so it gets the p95 that the `no hedging` column saw in its warm-up —
//!   tuned by hand to the latencies of the time (not the p99: with a 1%
//!   tail the p99 is the tail itself, 50 ms, too late to help) — and 2
//!   attempts in all;
//! - `steadfast (fixed)`: steadfast with that same fixed delay and the same
//!   budget as the adaptive one: next to `tower-resilience`, what the
//!   budget alone does.
//!
//! Extra load = backend calls for the measured requests ÷ requests − 1.
//! tokio's timer has a 1 ms granularity: a 1 ms sleep takes 1 to 2 ms, and
//! no latency here is below 1 ms.
//!
//! Scenarios:
//!
//! - (a) heavy tail: 99% of attempts take 1 ms, 1% take 50 ms, in the
//!   warm-up and the measured phase alike. A p99 delay sits right on the
//!   edge of a 1% tail: which side a recomputation lands on depends on a
//!   few dozen samples, and the delay then sticks until the next one;
//! - (a') the same with the adaptive hedges at p95, clear of that edge;
//! - (b) latency shift: every attempt takes 1 ms in the warm-up and 10 ms
//!   in the measured phase, so a delay learned before the shift is far too
//!   short. A second table splits the extra load by when the request
//!   started, in half-second slices. The budget's ttl (10 s) spans the
//!   whole run, so the warm-up's deposits count: the bound printed is
//!   ratio × (warm-up + measured requests) + 10/s × 10 s.
//!
//! (c) failover: 3 in-process replicas (`tower::service_fn`s that sleep
//! 1 ms, real time, and answer), an open-loop load of 2,000 requests/s for
//! 4 s (`GET` `http::Request<()>`s, each started on schedule in a task of
//! its own whatever the answers before it, so a slow column does not get
//! less load), and at 1.5 s replica 0 dies: from then on it fails every
//! call at once with `ConnectionRefused`, as a refused connection would.
//! Every replica timestamps each call it receives, so the table can say
//! how long the dead one kept drawing traffic and what share of the calls
//! made after its death went to it. Columns:
//!
//! - `steadfast`: `RetryLayer` (3 attempts, its default backoff of 50 ms
//!   doubling, full jitter; a `RetryBudget` of ratio 0.2, 10/s, ttl 10 s,
//!   so room to spare) over a `Pool` with its defaults (outlier detection:
//!   5 failures in a row or 50% of the last 100 calls eject for 10 s;
//!   failure penalty 1 s), both with `HttpReplay`, so the retry's attempt
//!   marks reach the pool and a retry goes to a replica the request has
//!   not tried (with `u64` requests there is no attempt mark and a retry
//!   may hit the dead replica again);
//! - `round robin`: a tiny round-robin service over the same 3 replicas,
//!   no retry (tower has no round robin: its `balance` is p2c);
//! - `tower p2c`: `tower::balance::p2c::Balance` over
//!   `PeakEwmaDiscover<ServiceList>` (default RTT 1 ms, decay 10 s,
//!   `CompleteOnResponse`), no retry. A failed call ends its peak-EWMA
//!   handle like an answer, so a replica that fails at once looks fast.
//!
//! Each column is served as the others are (a mutex held for `poll_ready`
//! and `call`, the future awaited after it is released).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use steadfast::budget::RetryBudget;
use steadfast::hedge::{HedgeDelay, HedgeLayer};
use tokio::time::Instant;
use tower::{Layer, Service};

const DEFAULT_SEED: u64 = 0x05ee_d0f4_ed9e;
const REQUESTS: usize = 20_000;
const IN_FLIGHT: usize = 32;
const WARMUP_REQUESTS: u64 = 2_000;
const WARMUP_TIME: Duration = Duration::from_millis(1_200);
/// Warm-up request ids start here, far above the measured ones.
const WARM_BASE: u64 = 1 << 40;
const MS: Duration = Duration::from_millis(1);
/// steadfast's budget.
const BUDGET_RATIO: f64 = 0.1;
const BUDGET_MIN_PER_SEC: u32 = 10;
const BUDGET_TTL: Duration = Duration::from_secs(10);
/// Slices of the extra-load time series.
const SLICE: Duration = Duration::from_millis(500);
/// How often steadfast's delay gauge is sampled.
const DELAY_SAMPLE: Duration = Duration::from_millis(125);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` keyed by `(seed, a, b)`.
fn uniform(seed: u64, a: u64, b: u64) -> f64 {
    let h = splitmix64(seed ^ splitmix64(a ^ splitmix64(b)));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scenario {
    /// Heavy tail, the adaptive hedges at this quantile.
    HeavyTail(f64),
    /// Latency shift, the adaptive hedges at p99.
    Shift,
}

impl Scenario {
    /// The latency of an attempt, from a uniform draw `u`.
    fn latency(self, warm: bool, u: f64) -> Duration {
        match self {
            Self::HeavyTail(_) if u < 0.01 => 50 * MS,
            Self::HeavyTail(_) => MS,
            Self::Shift if warm => MS,
            Self::Shift => 10 * MS,
        }
    }

    /// The quantile the adaptive hedges (steadfast, tower) use.
    fn quantile(self) -> f64 {
        match self {
            Self::HeavyTail(q) => q,
            Self::Shift => 0.99,
        }
    }

    fn label(self) -> String {
        match self {
            Self::HeavyTail(q) if q < 0.99 => "a'".into(),
            Self::HeavyTail(_) => "a".into(),
            Self::Shift => "b".into(),
        }
    }
}

/// The backend's state: attempt counters per measured request.
struct Backend {
    scenario: Scenario,
    seed: u64,
    /// Attempts of each measured request so far.
    attempts: Vec<AtomicU32>,
    /// Calls for warm-up requests.
    warm_calls: AtomicU64,
}

impl Backend {
    fn new(scenario: Scenario, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            scenario,
            seed,
            attempts: (0..REQUESTS).map(|_| AtomicU32::new(0)).collect(),
            warm_calls: AtomicU64::new(0),
        })
    }

    fn latency(&self, id: u64) -> Duration {
        match self.attempts.get(id as usize) {
            Some(attempts) => {
                let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                let u = uniform(self.seed, id, u64::from(attempt));
                self.scenario.latency(false, u)
            }
            None => {
                let n = self.warm_calls.fetch_add(1, Ordering::Relaxed);
                self.scenario.latency(true, uniform(self.seed, id, n))
            }
        }
    }

    fn service(
        self: &Arc<Self>,
    ) -> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + 'static
    {
        let backend = self.clone();
        tower::service_fn(move |id: u64| {
            let latency = backend.latency(id);
            async move {
                tokio::time::sleep(latency).await;
                Ok::<_, Infallible>(id)
            }
        })
    }
}

/// Takes a ready service's next call, under the lock.
fn call<S, Req>(svc: &Mutex<S>, req: Req) -> S::Future
where
    S: Service<Req>,
    S::Error: Debug,
{
    let mut svc = svc.lock().expect("not poisoned");
    match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => svc.call(req),
        Poll::Ready(Err(err)) => panic!("not ready: {err:?}"),
        Poll::Pending => panic!("every service here is always ready"),
    }
}

/// One measured request.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it started, since the measured phase began.
    start: Duration,
    latency: Duration,
}

/// What one column's run saw.
struct Run {
    /// How long the warm-up took.
    warm_time: Duration,
    warm_requests: u64,
    warm_latencies: Vec<Duration>,
    /// Measured requests by id.
    samples: Vec<Sample>,
}

async fn drive<S>(svc: S) -> Run
where
    S: Service<u64, Response = u64> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Debug + Send + 'static,
{
    let svc = Arc::new(Mutex::new(svc));

    // The warm-up: unmeasured, at least WARMUP_REQUESTS and WARMUP_TIME.
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (svc, next) = (svc.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= WARMUP_REQUESTS && t0.elapsed() >= WARMUP_TIME {
                        return latencies;
                    }
                    let start = Instant::now();
                    call(&svc, WARM_BASE + k).await.expect("never fails");
                    latencies.push(start.elapsed());
                }
            })
        })
        .collect();
    let mut warm_latencies = Vec::new();
    for w in workers {
        warm_latencies.extend(w.await.expect("worker"));
    }
    let warm_requests = warm_latencies.len() as u64;

    // The measured phase.
    let next = Arc::new(AtomicU64::new(0));
    let t1 = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (svc, next) = (svc.clone(), next.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= REQUESTS as u64 {
                        return samples;
                    }
                    let start = Instant::now();
                    let answer = call(&svc, id).await.expect("never fails");
                    let latency = start.elapsed();
                    assert_eq!(answer, id);
                    samples.push((
                        id,
                        Sample {
                            start: start - t1,
                            latency,
                        },
                    ));
                }
            })
        })
        .collect();
    let mut by_id = Vec::with_capacity(REQUESTS);
    for w in workers {
        by_id.extend(w.await.expect("worker"));
    }
    by_id.sort_unstable_by_key(|(id, _)| *id);
    Run {
        warm_time: t1 - t0,
        warm_requests,
        warm_latencies,
        samples: by_id.into_iter().map(|(_, s)| s).collect(),
    }
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// A hedge policy for tower that hedges every request.
#[derive(Clone)]
struct HedgeAll;

impl tower::hedge::Policy<u64> for HedgeAll {
    fn clone_request(&self, req: &u64) -> Option<u64> {
        Some(*req)
    }

    fn can_retry(&self, _req: &u64) -> bool {
        true
    }
}

/// The values of steadfast's metrics, by `name{labels}`.
fn metrics_of(snapshotter: &Snapshotter) -> HashMap<String, f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => return None,
            };
            Some((format!("{}{{{}}}", key.name(), labels.join(",")), value))
        })
        .collect()
}

/// One column's results.
struct Column {
    name: &'static str,
    run: Run,
    backend: Arc<Backend>,
    note: String,
}

impl Column {
    fn attempts(&self, id: usize) -> u32 {
        self.backend.attempts[id].load(Ordering::Relaxed)
    }

    fn extra_load(&self) -> f64 {
        let calls: u64 = (0..REQUESTS).map(|id| u64::from(self.attempts(id))).sum();
        calls as f64 / REQUESTS as f64 - 1.0
    }

    fn latencies(&self) -> Vec<Duration> {
        sorted(self.run.samples.iter().map(|s| s.latency).collect())
    }

    /// Extra load of the requests started in each slice of the measured phase.
    fn extra_by_slice(&self) -> Vec<f64> {
        let mut slices: Vec<(u64, u64)> = Vec::new();
        for (id, s) in self.run.samples.iter().enumerate() {
            let i = (s.start.as_nanos() / SLICE.as_nanos()) as usize;
            if slices.len() <= i {
                slices.resize(i + 1, (0, 0));
            }
            slices[i].0 += 1;
            slices[i].1 += u64::from(self.attempts(id));
        }
        slices
            .into_iter()
            .map(|(n, calls)| calls as f64 / n.max(1) as f64 - 1.0)
            .collect()
    }
}

/// One column of one round, kept for the pooled table.
struct Summary {
    name: &'static str,
    /// Sorted.
    latencies: Vec<Duration>,
    calls: u64,
}

async fn scenario(
    s: Scenario,
    seed: u64,
    snapshotter: &Snapshotter,
    recorder: &DebuggingRecorder,
) -> Vec<Summary> {
    let started = Instant::now();
    let mut columns = Vec::new();

    // No hedging; its warm-up p95 is tower-resilience's fixed delay.
    let backend = Backend::new(s, seed);
    let run = drive(backend.service()).await;
    let fixed_delay = quantile(&sorted(run.warm_latencies.clone()), 0.95);
    columns.push(Column {
        name: "no hedging",
        run,
        backend,
        note: String::new(),
    });

    // steadfast, adaptive.
    let adaptive = HedgeDelay::Adaptive {
        quantile: s.quantile(),
        floor: MS,
        ceiling: 100 * MS,
        window: Duration::from_secs(10),
        min_samples: 20,
        initial: 50 * MS,
    };
    let column = steadfast_column(s, seed, "steadfast", adaptive, recorder, snapshotter).await;
    columns.push(column);
    let q = s.quantile();

    // tower.
    let backend = Backend::new(s, seed);
    let svc = tower::hedge::Hedge::new::<u64>(
        backend.service(),
        HedgeAll,
        20,
        q as f32,
        Duration::from_secs(1),
    );
    let run = drive(svc).await;
    columns.push(Column {
        name: "tower",
        run,
        backend,
        note: format!("p{:.0}, 20 data points, period 1 s, no budget", q * 100.0),
    });

    // tower-resilience.
    let backend = Backend::new(s, seed);
    let layer = tower_resilience::hedge::HedgeLayer::builder()
        .delay(fixed_delay)
        .max_hedged_attempts(2)
        .build();
    let run = drive(layer.layer(backend.service())).await;
    columns.push(Column {
        name: "tower-resilience",
        run,
        backend,
        note: format!(
            "fixed delay {} ms (the unhedged warm-up p95), 2 attempts, no budget",
            ms(fixed_delay)
        ),
    });

    // steadfast with tower-resilience's fixed delay: its budget alone.
    let fixed = HedgeDelay::Fixed(fixed_delay);
    let column = steadfast_column(s, seed, "steadfast (fixed)", fixed, recorder, snapshotter).await;
    columns.push(column);

    print_table(s, &columns, started.elapsed());
    columns
        .iter()
        .map(|c| Summary {
            name: c.name,
            latencies: c.latencies(),
            calls: (0..REQUESTS).map(|id| u64::from(c.attempts(id))).sum(),
        })
        .collect()
}

/// Every round's requests pooled, per column; and each round's p99 and
/// p99.9, so run-to-run noise is in plain sight.
fn print_pooled(s: Scenario, seeds: &[u64], rounds: &[Vec<Summary>]) {
    println!(
        "\n({}) pooled over {} rounds (seeds {}), {} requests per column",
        s.label(),
        rounds.len(),
        seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        rounds.len() * REQUESTS
    );
    println!(
        "{:<18} {:>8} {:>8} {:>8} {:>11}   per round: p99 / p99.9",
        "ms", "p50", "p99", "p99.9", "extra load"
    );
    for (i, first) in rounds[0].iter().enumerate() {
        let all = sorted(
            rounds
                .iter()
                .flat_map(|r| r[i].latencies.iter().copied())
                .collect(),
        );
        let calls: u64 = rounds.iter().map(|r| r[i].calls).sum();
        let per_round = rounds
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    ms(quantile(&r[i].latencies, 0.99)),
                    ms(quantile(&r[i].latencies, 0.999))
                )
            })
            .collect::<Vec<_>>()
            .join("  ");
        println!(
            "{:<18} {:>8} {:>8} {:>8} {:>10.1}%   {per_round}",
            first.name,
            ms(quantile(&all, 0.5)),
            ms(quantile(&all, 0.99)),
            ms(quantile(&all, 0.999)),
            (calls as f64 / all.len() as f64 - 1.0) * 100.0
        );
    }
}

/// A steadfast column: `delay`, a budget of ratio 0.1.
async fn steadfast_column(
    s: Scenario,
    seed: u64,
    column: &'static str,
    delay: HedgeDelay,
    recorder: &DebuggingRecorder,
    snapshotter: &Snapshotter,
) -> Column {
    // The seed in the name: each round's metrics apart.
    let name = format!("{} {column} {seed}", s.label());
    let backend = Backend::new(s, seed);
    let layer = metrics::with_local_recorder(recorder, || {
        let budget = RetryBudget::builder()
            .name(&name)
            .ratio(BUDGET_RATIO)
            .min_per_sec(BUDGET_MIN_PER_SEC)
            .ttl(BUDGET_TTL)
            .build()
            .expect("valid budget");
        HedgeLayer::builder()
            .name(&name)
            .delay(delay)
            .budget(Arc::new(budget))
            .build()
            .expect("valid config")
    });
    // Samples the delay gauge while it runs (an adaptive delay sets it).
    let gauge = format!("steadfast_hedge_delay_seconds{{name={name}}}");
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (snapshotter, gauge, stop) = (snapshotter.clone(), gauge.clone(), stop.clone());
        tokio::spawn(async move {
            let mut delays = Vec::new();
            let mut tick = tokio::time::interval(DELAY_SAMPLE);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                delays.push(metrics_of(&snapshotter).get(&gauge).copied());
            }
            delays
        })
    };
    let run = drive(layer.layer(backend.service())).await;
    stop.store(true, Ordering::Relaxed);
    let delays = monitor.await.expect("monitor");
    let m = metrics_of(snapshotter);
    let get = |metric: &str, extra: &str| {
        m.get(&format!("{metric}{{name={name}{extra}}}"))
            .copied()
            .unwrap_or(0.0)
    };
    let measured_hedges = (0..REQUESTS)
        .map(|id| {
            u64::from(
                backend.attempts[id]
                    .load(Ordering::Relaxed)
                    .saturating_sub(1),
            )
        })
        .sum::<u64>();
    // Every request of the run is within one ttl: the budget allows
    // ratio × requests + min_per_sec × ttl hedges over the whole run.
    let requests = run.warm_requests + REQUESTS as u64;
    let reserve = u64::from(BUDGET_MIN_PER_SEC) * BUDGET_TTL.as_secs();
    let bound = (BUDGET_RATIO * requests as f64).floor() as u64 + reserve;
    let adaptive = matches!(delay, HedgeDelay::Adaptive { .. });
    let delay = match delay {
        HedgeDelay::Fixed(d) => format!("fixed delay {} ms", ms(d)),
        _ => format!(
            "delay now {} ms",
            ms(Duration::from_secs_f64(get(
                "steadfast_hedge_delay_seconds",
                ""
            )))
        ),
    };
    let mut note = format!(
        "{delay}; hedges sent {} ({measured_hedges} in the measured phase), won {}, \
         refused by the budget {}; budget bound over the run: {BUDGET_RATIO} × {requests} \
         requests + {reserve} = {bound}",
        get("steadfast_hedge_sent_total", ""),
        get("steadfast_hedge_won_total", ""),
        get("steadfast_hedge_refused_total", ",reason=budget"),
    );
    if adaptive {
        let timeline = delays
            .iter()
            .step_by(2)
            .map(|d| match d {
                Some(d) if *d > 0.0 => format!("{:.1}", d * 1e3),
                _ => "-".into(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        note += &format!(
            "\n    its delay (ms) every {} ms from the start of the warm-up \
             (measured phase from {:.2} s): {timeline}",
            2 * DELAY_SAMPLE.as_millis(),
            run.warm_time.as_secs_f64()
        );
    }
    Column {
        name: column,
        run,
        backend,
        note,
    }
}

fn print_table(s: Scenario, columns: &[Column], took: Duration) {
    let label = s.label();
    let q = format!("{:.0}", s.quantile() * 100.0);
    match s {
        Scenario::HeavyTail(_) => println!(
            "\n({label}) heavy tail: attempts take 1 ms (99%) or 50 ms (1%); \
             {REQUESTS} requests, {IN_FLIGHT} in flight; adaptive hedges at p{q}"
        ),
        Scenario::Shift => println!(
            "\n({label}) latency shift: attempts take 1 ms in the warm-up, 10 ms when measured; \
             {REQUESTS} requests, {IN_FLIGHT} in flight; adaptive hedges at p{q}"
        ),
    }
    println!(
        "    (warm-up, unmeasured: {} requests per column; scenario took {:.1} s)",
        columns
            .iter()
            .map(|c| c.run.warm_requests.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        took.as_secs_f64()
    );
    println!(
        "{:<18} {:>8} {:>8} {:>8} {:>8} {:>11}",
        "ms", "p50", "p99", "p99.9", "max", "extra load"
    );
    for c in columns {
        let l = c.latencies();
        println!(
            "{:<18} {:>8} {:>8} {:>8} {:>8} {:>10.1}%",
            c.name,
            ms(quantile(&l, 0.5)),
            ms(quantile(&l, 0.99)),
            ms(quantile(&l, 0.999)),
            ms(*l.last().expect("samples")),
            c.extra_load() * 100.0
        );
    }
    for c in columns.iter().filter(|c| !c.note.is_empty()) {
        println!("  {}: {}", c.name, c.note);
    }
    if s == Scenario::Shift {
        let slices = columns
            .iter()
            .map(|c| c.extra_by_slice().len())
            .max()
            .unwrap_or(0);
        println!(
            "\n(b) extra load of the requests started in each {} ms after the shift",
            SLICE.as_millis()
        );
        print!("{:<18}", "from (s)");
        for i in 0..slices {
            print!(" {:>5.1}", (i as u32 * SLICE).as_secs_f64());
        }
        println!();
        for c in columns {
            print!("{:<18}", c.name);
            for x in c.extra_by_slice() {
                print!(" {:>4.0}%", x * 100.0);
            }
            println!();
        }
    }
    println!("\n  reading: {}", reading(s, columns));
}

/// A sentence from the numbers.
fn reading(s: Scenario, columns: &[Column]) -> String {
    let base = &columns[0];
    let p999 = |c: &Column| ms(quantile(&c.latencies(), 0.999));
    let parts: Vec<String> = columns[1..]
        .iter()
        .map(|c| match s {
            Scenario::HeavyTail(_) => format!(
                "{} takes p99.9 from {} to {} ms for {:.1}% extra load",
                c.name,
                p999(base),
                p999(c),
                c.extra_load() * 100.0
            ),
            Scenario::Shift => {
                let peak = c.extra_by_slice().into_iter().fold(0.0f64, f64::max);
                format!(
                    "{} adds {:.1}% load overall (peak {:.0}% in a {} ms slice)",
                    c.name,
                    c.extra_load() * 100.0,
                    peak * 100.0,
                    SLICE.as_millis()
                )
            }
        })
        .collect();
    parts.join("; ")
}

/// Scenario (c), failover: needs `http::Request` for the attempt marks.
#[cfg(feature = "http")]
mod failover {
    use std::fmt::Debug;
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use http::Request;
    use steadfast::budget::RetryBudget;
    use steadfast::http::HttpReplay;
    use steadfast::pool::{Health, Pool, PoolHandle, Replica};
    use steadfast::retry::RetryLayer;
    use tokio::time::Instant;
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
    use tower::util::Oneshot;
    use tower::{Layer, Service};

    use super::{MS, call, ms, quantile, sorted};

    const REPLICAS: usize = 3;
    /// The replica that dies.
    const DEAD: usize = 0;
    /// Open-loop load: requests per second, for this long.
    const RATE: u32 = 2_000;
    const RUN: Duration = Duration::from_secs(4);
    /// When the dead replica dies, from the start of the load.
    const DEATH: Duration = Duration::from_millis(1_500);
    /// A call to the dead replica this close to the end means "still drawing".
    const END_MARGIN: Duration = Duration::from_millis(100);

    /// The replicas, and when each was called.
    struct Fleet {
        /// When the load starts.
        start: Instant,
        /// Each replica's calls, as times since `start`.
        calls: Vec<Mutex<Vec<Duration>>>,
    }

    impl Fleet {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                // Time to set the column up before the first request.
                start: Instant::now() + 20 * MS,
                calls: (0..REPLICAS).map(|_| Mutex::new(Vec::new())).collect(),
            })
        }

        /// Replica `i`: answers in 1 ms (real time); if it is the dead one,
        /// from `DEATH` on it refuses every call at once.
        fn replica(
            self: &Arc<Self>,
            i: usize,
        ) -> impl Service<Request<()>, Response = usize, Error = io::Error, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static {
            let fleet = self.clone();
            tower::service_fn(move |_req: Request<()>| {
                let at = Instant::now().saturating_duration_since(fleet.start);
                fleet.calls[i].lock().expect("not poisoned").push(at);
                let dead = i == DEAD && at >= DEATH;
                async move {
                    if dead {
                        return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                    }
                    tokio::time::sleep(MS).await;
                    Ok(i)
                }
            })
        }

        fn calls(&self, i: usize) -> Vec<Duration> {
            self.calls[i].lock().expect("not poisoned").clone()
        }
    }

    /// Round robin: the next replica in turn, whatever its health.
    struct RoundRobin<S> {
        replicas: Vec<S>,
        next: usize,
    }

    impl<S, Req> Service<Req> for RoundRobin<S>
    where
        S: Service<Req> + Clone,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Oneshot<S, Req>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Req) -> Self::Future {
            let i = self.next % self.replicas.len();
            self.next = self.next.wrapping_add(1);
            Oneshot::new(self.replicas[i].clone(), req)
        }
    }

    /// One request, as its caller saw it.
    #[derive(Debug, Clone, Copy)]
    struct Reply {
        /// When it started, since the load started.
        start: Duration,
        latency: Duration,
        ok: bool,
    }

    /// Sends `RATE` requests a second for `RUN`, on schedule, each in a task
    /// of its own, whatever became of the earlier ones.
    async fn open_loop<S>(svc: S, fleet: &Fleet) -> Vec<Reply>
    where
        S: Service<Request<()>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Debug + Send + 'static,
        S::Response: Send + 'static,
    {
        let svc = Arc::new(Mutex::new(svc));
        let requests = u64::from(RATE) * RUN.as_secs();
        let period = Duration::from_secs(1) / RATE;
        let mut tasks = Vec::with_capacity(requests as usize);
        for k in 0..requests {
            let due = fleet.start + period * k as u32;
            // A past deadline would still wait for the timer's next tick.
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
            let (svc, start) = (svc.clone(), fleet.start);
            tasks.push(tokio::spawn(async move {
                let req = Request::get("http://replica/")
                    .body(())
                    .expect("a valid request");
                let begun = Instant::now();
                let ok = call(&svc, req).await.is_ok();
                Reply {
                    start: begun.saturating_duration_since(start),
                    latency: begun.elapsed(),
                    ok,
                }
            }));
        }
        let mut replies = Vec::with_capacity(tasks.len());
        for t in tasks {
            replies.push(t.await.expect("request task"));
        }
        replies
    }

    /// One column's results.
    struct Column {
        name: &'static str,
        replies: Vec<Reply>,
        fleet: Arc<Fleet>,
        note: String,
    }

    impl Column {
        fn failed(&self) -> usize {
            self.replies.iter().filter(|r| !r.ok).count()
        }

        fn failed_share(&self) -> f64 {
            self.failed() as f64 / self.replies.len() as f64
        }

        /// The share of the requests started after the death that failed.
        fn failed_share_after_death(&self) -> f64 {
            let after = || self.replies.iter().filter(|r| r.start >= DEATH);
            after().filter(|r| !r.ok).count() as f64 / after().count().max(1) as f64
        }

        /// The dead replica's calls after its death.
        fn dead_calls(&self) -> Vec<Duration> {
            let mut calls: Vec<Duration> = self
                .fleet
                .calls(DEAD)
                .into_iter()
                .filter(|&t| t >= DEATH)
                .collect();
            calls.sort_unstable();
            calls
        }

        /// The dead replica's share of every replica's calls after its death.
        fn dead_share(&self) -> f64 {
            let all: usize = (0..REPLICAS)
                .map(|i| self.fleet.calls(i).iter().filter(|&&t| t >= DEATH).count())
                .sum();
            self.dead_calls().len() as f64 / all.max(1) as f64
        }

        /// From the death to the dead replica's last call; `None` if it
        /// still drew calls at the end of the run.
        fn drew_until(&self) -> Option<Duration> {
            match self.dead_calls().last() {
                None => Some(Duration::ZERO),
                Some(&t) if t + END_MARGIN >= RUN => None,
                Some(&t) => Some(t - DEATH),
            }
        }

        fn drew_until_text(&self) -> String {
            match self.drew_until() {
                Some(d) => ms(d),
                None => "to the end".into(),
            }
        }

        fn extra_load(&self) -> f64 {
            let calls: usize = (0..REPLICAS).map(|i| self.fleet.calls(i).len()).sum();
            calls as f64 / self.replies.len() as f64 - 1.0
        }

        fn latencies(&self) -> Vec<Duration> {
            sorted(self.replies.iter().map(|r| r.latency).collect())
        }
    }

    /// Watches the pool's events for the dead replica's first ejection
    /// (or whatever first takes it out), as time since its death.
    fn watch_dead<S>(
        handle: PoolHandle<usize, S>,
        fleet: Arc<Fleet>,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<Option<(Duration, String)>>
    where
        S: Clone + Send + Sync + 'static,
    {
        tokio::spawn(async move {
            let mut events = handle.subscribe();
            while !stop.load(Ordering::Relaxed) {
                let changed = tokio::time::timeout(10 * MS, events.changed()).await;
                if matches!(changed, Ok(Err(_))) {
                    return None;
                }
                let snapshot = handle.snapshot();
                if let Some(r) = snapshot.iter().find(|r| r.id == DEAD) {
                    if r.health != Health::Healthy {
                        let at = Instant::now().saturating_duration_since(fleet.start);
                        let why = format!("{:?} ({:?})", r.health, r.why);
                        return Some((at.saturating_sub(DEATH), why));
                    }
                }
            }
            None
        })
    }

    async fn steadfast(seed: u64) -> Column {
        let fleet = Fleet::new();
        let budget = RetryBudget::builder()
            .name("c steadfast")
            .ratio(0.2)
            .min_per_sec(10)
            .ttl(Duration::from_secs(10))
            .build()
            .expect("valid budget");
        let retry = RetryLayer::builder()
            .name("c steadfast")
            .max_attempts(3)
            .budget(Arc::new(budget))
            .replay(HttpReplay::new())
            .build()
            .expect("valid retry");
        let pool = Pool::builder()
            .name("c steadfast")
            .seed(seed)
            .build((0..REPLICAS).map(|i| (i, Replica::new(fleet.replica(i)))))
            .expect("valid pool");
        let handle = pool.handle();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_dead(handle.clone(), fleet.clone(), stop.clone());
        let replies = open_loop(retry.layer(pool), &fleet).await;
        stop.store(true, Ordering::Relaxed);
        let out = watcher.await.expect("watcher");
        let end = handle
            .snapshot()
            .into_iter()
            .find(|r| r.id == DEAD)
            .map(|r| format!("{:?}, why {:?}, ejections {}", r.health, r.why, r.ejections))
            .unwrap_or_default();
        let mut column = Column {
            name: "steadfast",
            replies,
            fleet,
            note: String::new(),
        };
        let dead_calls = column.dead_calls().len();
        let out = match out {
            Some((after, why)) => format!("taken out {} ms after its death: {why}", ms(after)),
            // Outlier detection ejects after 5 failures in a row.
            None if dead_calls < 5 => concat!(
                "never taken out of the pool: each failure counted as a 1 s latency (the ",
                "failure penalty), so p2c passed it over before outlier detection saw the 5 ",
                "failures in a row that eject",
            )
            .into(),
            None => "never taken out of the pool".into(),
        };
        column.note = format!(
            "replica {DEAD} {out}; at the end: {end}; retries sent: {}",
            (0..REPLICAS)
                .map(|i| column.fleet.calls(i).len())
                .sum::<usize>()
                - column.replies.len()
        );
        column
    }

    async fn round_robin() -> Column {
        let fleet = Fleet::new();
        let svc = RoundRobin {
            replicas: (0..REPLICAS).map(|i| fleet.replica(i)).collect(),
            next: 0,
        };
        let replies = open_loop(svc, &fleet).await;
        Column {
            name: "round robin",
            replies,
            fleet,
            note: String::new(),
        }
    }

    async fn tower_p2c() -> Column {
        let fleet = Fleet::new();
        let list: Vec<_> = (0..REPLICAS).map(|i| fleet.replica(i)).collect();
        let discover = PeakEwmaDiscover::new::<Request<()>>(
            ServiceList::new::<Request<()>>(list),
            MS,
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        );
        let replies = open_loop(Balance::new(discover), &fleet).await;
        Column {
            name: "tower p2c",
            replies,
            fleet,
            note: String::new(),
        }
    }

    pub(super) async fn run(seed: u64) {
        let started = Instant::now();
        let columns = vec![
            steadfast(seed).await,
            round_robin().await,
            tower_p2c().await,
        ];
        let requests = columns[0].replies.len();
        println!(
            "\n(c) failover: {REPLICAS} replicas answering in 1 ms; {RATE} requests/s for {:.1} s \
             ({requests} requests, open loop); replica {DEAD} dies at {:.2} s and then refuses \
             every call at once",
            RUN.as_secs_f64(),
            DEATH.as_secs_f64()
        );
        println!(
            "    (scenario took {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        println!(
            "{:<12} {:>7} {:>8} {:>12} {:>11} {:>12} {:>11} {:>7} {:>7} {:>7}",
            "",
            "failed",
            "failed",
            "failed after",
            "dead drew",
            "dead's share",
            "extra load",
            "p50",
            "p99",
            "max"
        );
        println!(
            "{:<12} {:>7} {:>8} {:>12} {:>11} {:>12} {:>11} {:>7} {:>7} {:>7}",
            "", "", "%", "death %", "for (ms)", "after death", "", "ms", "ms", "ms"
        );
        for c in &columns {
            let l = c.latencies();
            println!(
                "{:<12} {:>7} {:>7.2}% {:>11.2}% {:>11} {:>11.1}% {:>10.1}% {:>7} {:>7} {:>7}",
                c.name,
                c.failed(),
                c.failed_share() * 100.0,
                c.failed_share_after_death() * 100.0,
                c.drew_until_text(),
                c.dead_share() * 100.0,
                c.extra_load() * 100.0,
                ms(quantile(&l, 0.5)),
                ms(quantile(&l, 0.99)),
                ms(*l.last().expect("replies")),
            );
        }
        println!(
            "  failed after death %: of the requests started after the death; \
             dead drew for: from its death to the last call it received (`to the end`: it \
             still got calls in the run's last {} ms); dead's share: its part of all the \
             replicas' calls after its death (attempts, retries included); extra load: calls \
             ÷ requests − 1",
            END_MARGIN.as_millis()
        );
        for c in columns.iter().filter(|c| !c.note.is_empty()) {
            println!("  {}: {}", c.name, c.note);
        }
        println!("\n  reading: {}", reading(&columns));
    }

    /// A paragraph from the numbers.
    fn reading(columns: &[Column]) -> String {
        let even = 1.0 / REPLICAS as f64;
        let parts: Vec<String> = columns
            .iter()
            .map(|c| {
                let drew = match c.drew_until() {
                    Some(d) => format!("stopped drawing traffic {} ms after it died", ms(d)),
                    None => "kept drawing traffic to the end of the run".into(),
                };
                let share = c.dead_share();
                let compare = if share > even * 1.1 {
                    format!(", more than its even 1/{REPLICAS}: failing at once, it looks fast")
                } else if share < even * 0.9 {
                    String::new()
                } else {
                    format!(", its even 1/{REPLICAS}")
                };
                let calls = c.dead_calls().len();
                format!(
                    "with {}, {} of {} requests failed ({:.2}%); the dead replica {drew} \
                     ({calls} call{}, {:.1}% of the calls after its death{compare})",
                    c.name,
                    c.failed(),
                    c.replies.len(),
                    c.failed_share() * 100.0,
                    if calls == 1 { "" } else { "s" },
                    share * 100.0,
                )
            })
            .collect();
        parts.join("; ") + "."
    }
}

fn main() {
    let seed = std::env::var("SCENARIO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    println!(
        "hedging and failover scenarios: seed {seed}, tokio multi-thread runtime with 2 workers"
    );
    // `SCENARIOS=a,b` runs only those (labels a, a', b, c); all by default.
    let only = std::env::var("SCENARIOS").ok();
    let wanted = |label: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|l| l.trim() == label))
    };
    // `SCENARIO_ROUNDS=5` runs (a), (a') and (b) five times, with seeds
    // seed, seed + 1, …, and adds a table pooled over the rounds.
    let rounds: u64 = std::env::var("SCENARIO_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let started = Instant::now();
    rt.block_on(async {
        for s in [
            Scenario::HeavyTail(0.99),
            Scenario::HeavyTail(0.95),
            Scenario::Shift,
        ] {
            if wanted(&s.label()) {
                let seeds: Vec<u64> = (0..rounds).map(|r| seed + r).collect();
                let mut results = Vec::new();
                for &seed in &seeds {
                    results.push(scenario(s, seed, &snapshotter, &recorder).await);
                }
                if rounds > 1 {
                    print_pooled(s, &seeds, &results);
                }
            }
        }
        #[cfg(feature = "http")]
        if wanted("c") {
            failover::run(seed).await;
        }
    });
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
}
