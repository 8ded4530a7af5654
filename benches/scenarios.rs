//! Hedging under load, side by side: seeded scenarios on a real tokio clock.
//!
//! Run: `cargo bench --bench scenarios` (about a minute). A plain `main`
//! (no criterion): it builds a multi-thread tokio runtime with 2 workers,
//! runs each scenario once per column and prints a table.
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
fn call<S>(svc: &Mutex<S>, id: u64) -> S::Future
where
    S: Service<u64>,
    S::Error: Debug,
{
    let mut svc = svc.lock().expect("not poisoned");
    match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => svc.call(id),
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

async fn scenario(s: Scenario, seed: u64, snapshotter: &Snapshotter, recorder: &DebuggingRecorder) {
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
    let name = format!("{} {column}", s.label());
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
    println!("hedging scenarios: seed {seed}, tokio multi-thread runtime with 2 workers");
    let started = Instant::now();
    rt.block_on(async {
        scenario(Scenario::HeavyTail(0.99), seed, &snapshotter, &recorder).await;
        scenario(Scenario::HeavyTail(0.95), seed, &snapshotter, &recorder).await;
        scenario(Scenario::Shift, seed, &snapshotter, &recorder).await;
    });
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
}
