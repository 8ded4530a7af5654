//! Failover against real faults, re-measurable by anyone.
//!
//! ```text
//! cargo run --release --example failover            # about 2 minutes
//! cargo run --release --example failover -- --quick # about 30 s
//! ```
//!
//! Three backend processes (this binary, run again as a server) answer
//! HTTP/1 on loopback. `presets::ReplicaStack` at its defaults, with HTTP
//! health checks every 2 s, sends them an open-loop load (500 requests/s
//! for 22 s; `--quick`: 250/s for 8 s). At 5 s one backend breaks
//! (`--quick`: 2 s), at 15 s it is restored (`--quick`: 5 s), in each of
//! four ways, each on a fresh fleet and stack:
//!
//! - **killed**: the process is killed (SIGKILL), then started again on
//!   its port;
//! - **503**: it answers `503` to everything, its health check included;
//! - **hung**: the process is stopped (SIGSTOP), then continued (SIGCONT);
//! - **black hole**: it accepts connections and requests and never answers
//!   (its health check neither).
//!
//! For each fault the table gives, from what the stack sent (each
//! replica's service counts its attempts) and what its callers saw: client
//! failures; when, after the fault, the last attempt went to the broken
//! backend; how many attempts it got during the fault; how long after the
//! restore it answered an attempt again; the callers' p99 and p99.9 during
//! the fault; and the busiest replica's share of each second while all
//! three were up (median over the seconds; fair is 33%).
//!
//! `-- --cost` runs only the cost measurement; `-- --cost-layers` splits
//! that cost by layer (the stack's layers over a bare `Pool`, alone and
//! composed, against the raw client in the same alternating rounds); `-- --spread`
//! instead prints every replica's share of every second with all three up,
//! at 500 and at 5,000 requests/s.
//!
//! Then the stack's own cost over real sockets: requests/s at saturation
//! (64 callers in a closed loop) and p50 / p99 at a fixed rate, through
//! `ReplicaStack` and through the raw hyper-util client (round robin) over
//! the same three healthy backends.
//!
//! All traffic stays on 127.0.0.1; the backends exit with this process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use steadfast::classify::ServerErrorsAsFailures;
use steadfast::health::{HealthChecks, HttpCheck};
use steadfast::http::HttpReplay;
use steadfast::pool::Replica;
use steadfast::presets::ReplicaStack;
use steadfast::{HedgeLayer, Pool, RetryLayer};
use tokio::time::Instant;
use tower::timeout::Timeout;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

/// Set to a port, this binary runs as a backend on it.
const BACKEND_ENV: &str = "STEADFAST_FAILOVER_BACKEND";

type Body = Empty<Bytes>;
type HttpClient = Client<HttpConnector, Body>;

/// The timeline of one fault.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    rate: u32,
    run: Duration,
    fault_at: Duration,
    restore_at: Duration,
}

const FULL: Timeline = Timeline {
    rate: 500,
    run: Duration::from_secs(22),
    fault_at: Duration::from_secs(5),
    restore_at: Duration::from_secs(15),
};

const QUICK: Timeline = Timeline {
    rate: 250,
    run: Duration::from_secs(8),
    fault_at: Duration::from_secs(2),
    restore_at: Duration::from_secs(5),
};

fn main() {
    if let Ok(port) = std::env::var(BACKEND_ENV) {
        let port: u16 = port.parse().expect("a port");
        backend(port);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if std::env::args().any(|a| a == "--cost") {
        runtime.block_on(measure_cost(quick));
        return;
    }
    if std::env::args().any(|a| a == "--cost-layers") {
        runtime.block_on(measure_layers(quick));
        return;
    }
    if std::env::args().any(|a| a == "--spread") {
        runtime.block_on(spread(if quick { 5 } else { 10 }));
        return;
    }
    runtime.block_on(scenario(if quick { QUICK } else { FULL }));
}

// ---------------------------------------------------------------- backend

/// What a backend does with a request.
const ANSWER: u8 = 0;
const UNAVAILABLE: u8 = 1;
const BLACK_HOLE: u8 = 2;

/// A backend: answers `ok` at once; `/control/{ok,503,black-hole}` switches
/// what it does with every other request. Exits when its parent's pipe on
/// its stdin closes.
fn backend(port: u16) {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("the backend's port");
        let mode = Arc::new(AtomicU8::new(ANSWER));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let mode = mode.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mode = mode.clone();
                    async move { Ok::<_, Infallible>(answer(&mode, req.uri().path()).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn answer(mode: &AtomicU8, path: &str) -> Response<Full<Bytes>> {
    let switched = match path {
        "/control/ok" => Some(ANSWER),
        "/control/503" => Some(UNAVAILABLE),
        "/control/black-hole" => Some(BLACK_HOLE),
        _ => None,
    };
    if let Some(to) = switched {
        mode.store(to, Ordering::SeqCst);
        return Response::new(Full::new(Bytes::from_static(b"switched")));
    }
    match mode.load(Ordering::SeqCst) {
        UNAVAILABLE => {
            let mut res = Response::new(Full::new(Bytes::from_static(b"unavailable")));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        }
        BLACK_HOLE => std::future::pending().await,
        _ => Response::new(Full::new(Bytes::from_static(b"ok"))),
    }
}

/// A backend process, killed when dropped.
struct Backend {
    port: u16,
    child: Child,
}

impl Backend {
    async fn start(port: u16) -> Self {
        let child = Command::new(std::env::current_exe().expect("this binary"))
            .env(BACKEND_ENV, port.to_string())
            .stdin(Stdio::piped())
            .spawn()
            .expect("a backend process");
        let backend = Self { port, child };
        backend.wait_up().await;
        backend
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn uri(&self, path: &str) -> Uri {
        format!("http://{}{path}", self.addr())
            .parse()
            .expect("a URI")
    }

    /// Waits until it answers (bounded: 5 s).
    async fn wait_up(&self) {
        let client = client();
        for _ in 0..500 {
            let req = Request::get(self.uri("/control/ok"))
                .body(Body::new())
                .expect("a request");
            if let Ok(Ok(res)) =
                tokio::time::timeout(Duration::from_millis(100), client.request(req)).await
            {
                if res.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backend on port {} did not come up", self.port);
    }

    async fn control(&self, what: &str) {
        let req = Request::get(self.uri(&format!("/control/{what}")))
            .body(Body::new())
            .expect("a request");
        let res = tokio::time::timeout(Duration::from_secs(1), client().request(req))
            .await
            .expect("the backend answers its control")
            .expect("the backend answers its control");
        assert!(res.status().is_success());
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} failed");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.signal_quietly("-CONT");
        self.kill();
    }
}

impl Backend {
    fn signal_quietly(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Three backend processes on free loopback ports.
async fn start_fleet() -> Vec<Backend> {
    let mut backends = Vec::new();
    for port in free_ports(3) {
        backends.push(Backend::start(port).await);
    }
    backends
}

/// Free loopback ports, one per backend.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("an address").port())
        .collect()
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

// ---------------------------------------------------------------- the stack

/// When each attempt on one replica started, and when it answered.
#[derive(Debug, Default)]
struct Log {
    attempts: Mutex<Vec<Instant>>,
    answers: Mutex<Vec<Instant>>,
}

/// Attempts sent through any replica's service, for the attempts per
/// request of the cost measurement.
static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// One replica's service: the shared client, pointed at the replica,
/// logging its attempts and its answers (not when the stack's cost is
/// measured: the raw client logs nothing either).
#[derive(Debug, Clone)]
struct Upstream {
    client: HttpClient,
    authority: Authority,
    log: Option<Arc<Log>>,
}

impl Upstream {
    /// `backend`'s service, through `client`, logging into `log` if given.
    fn to(backend: &Backend, client: &HttpClient, log: Option<Arc<Log>>) -> Self {
        Self {
            client: client.clone(),
            authority: backend.addr().to_string().parse().expect("an authority"),
            log,
        }
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Incoming>, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client queues on its own pool: always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .or(Some(PathAndQuery::from_static("/")));
        *req.uri_mut() = Uri::from_parts(parts).expect("a URI");
        let call = self.client.request(req);
        let Some(log) = self.log.clone() else {
            return Box::pin(call);
        };
        log.attempts.lock().unwrap().push(Instant::now());
        Box::pin(async move {
            let res = call.await?;
            if res.status().is_success() {
                log.answers.lock().unwrap().push(Instant::now());
            }
            Ok(res)
        })
    }
}

// ---------------------------------------------------------------- faults

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Killed,
    Unavailable,
    Hung,
    BlackHole,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::Killed,
        Fault::Unavailable,
        Fault::Hung,
        Fault::BlackHole,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Killed => "killed",
            Fault::Unavailable => "503 to everything",
            Fault::Hung => "hung (SIGSTOP)",
            Fault::BlackHole => "accepts, never answers",
        }
    }

    async fn apply(self, backend: &mut Backend) {
        match self {
            Fault::Killed => backend.kill(),
            Fault::Unavailable => backend.control("503").await,
            Fault::Hung => backend.signal("-STOP"),
            Fault::BlackHole => backend.control("black-hole").await,
        }
    }

    async fn restore(self, backend: &mut Backend) {
        match self {
            Fault::Killed => *backend = Backend::start(backend.port).await,
            Fault::Unavailable | Fault::BlackHole => backend.control("ok").await,
            Fault::Hung => backend.signal("-CONT"),
        }
    }
}

/// What one run of one fault measured.
struct Row {
    fault: Fault,
    failures: usize,
    requests: usize,
    last_attempt: Option<Duration>,
    attempts_during: usize,
    back_in: Option<Duration>,
    p99: Duration,
    p999: Duration,
    busiest: f64,
}

/// One request as its caller saw it.
struct Sent {
    at: Duration,
    took: Duration,
    ok: bool,
}

async fn run_fault(fault: Fault, t: Timeline) -> Row {
    let mut backends = start_fleet().await;
    let shared = client();
    let logs: Vec<Arc<Log>> = (0..3).map(|_| Arc::default()).collect();
    let replicas = ["a", "b", "c"]
        .into_iter()
        .zip(&backends)
        .zip(&logs)
        .map(|((id, b), log)| {
            let upstream = Upstream::to(b, &shared, Some(log.clone()));
            let check = HttpCheck::new(shared.clone(), b.uri("/health"));
            (id, Replica::new(upstream).health_check(check))
        });
    let parts = ReplicaStack::new("failover")
        .health_checks(HealthChecks::default().interval(Duration::from_secs(2)))
        .build(replicas)
        .expect("a valid stack");
    let checks = tokio::spawn(parts.health_checks);
    let upkeep = tokio::spawn(parts.upkeep);
    let service = parts.service;

    let start = Instant::now();
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / t.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let broken = 2;
    let mut faulted = false;
    let mut restored = false;
    let mut calls = Vec::new();
    while start.elapsed() < t.run {
        tick.tick().await;
        let now = start.elapsed();
        if !faulted && now >= t.fault_at {
            faulted = true;
            fault.apply(&mut backends[broken]).await;
        }
        if !restored && now >= t.restore_at {
            restored = true;
            fault.restore(&mut backends[broken]).await;
        }
        let svc = service.clone();
        let sent = sent.clone();
        calls.push(tokio::spawn(async move {
            let at = start.elapsed();
            let req = Request::get("http://failover/")
                .body(Body::new())
                .expect("a request");
            let began = Instant::now();
            let ok = match svc.oneshot(req).await {
                Ok(res) => res.status().is_success() && res.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            sent.lock().unwrap().push(Sent {
                at,
                took: began.elapsed(),
                ok,
            });
        }));
    }
    for call in calls {
        let _ = call.await;
    }
    checks.abort();
    upkeep.abort();

    let busiest = busiest_share(&logs, start, t.fault_at);
    let sent = sent.lock().unwrap();
    let fault_at = start + t.fault_at;
    let restore_at = start + t.restore_at;
    let attempts = logs[broken].attempts.lock().unwrap();
    let during: Vec<Instant> = attempts
        .iter()
        .copied()
        .filter(|&a| a >= fault_at && a < restore_at)
        .collect();
    let answers = logs[broken].answers.lock().unwrap();
    let back_in = answers
        .iter()
        .find(|&&a| a >= restore_at)
        .map(|&a| a - restore_at);
    let mut in_fault: Vec<Duration> = sent
        .iter()
        .filter(|s| s.at >= t.fault_at && s.at < t.restore_at)
        .map(|s| s.took)
        .collect();
    in_fault.sort_unstable();
    let at = |q: f64| in_fault[((in_fault.len() - 1) as f64 * q) as usize];
    Row {
        fault,
        failures: sent.iter().filter(|s| !s.ok).count(),
        requests: sent.len(),
        last_attempt: during.last().map(|&a| a - fault_at),
        attempts_during: during.len(),
        back_in,
        p99: at(0.99),
        p999: at(0.999),
        busiest,
    }
}

/// Each replica's attempts in whole second `s` since `start`.
fn attempts_in_second(logs: &[Arc<Log>], start: Instant, s: u64) -> Vec<usize> {
    logs.iter()
        .map(|log| {
            let attempts = log.attempts.lock().unwrap();
            attempts
                .iter()
                .filter(|&&a| (a - start).as_secs() == s)
                .count()
        })
        .collect()
}

/// The median over the whole seconds before `until` of the busiest
/// replica's share of that second's attempts.
fn busiest_share(logs: &[Arc<Log>], start: Instant, until: Duration) -> f64 {
    let seconds = until.as_secs();
    let mut shares: Vec<f64> = (1..seconds)
        .map(|s| {
            let counts = attempts_in_second(logs, start, s);
            let total: usize = counts.iter().sum();
            *counts.iter().max().unwrap_or(&0) as f64 / total.max(1) as f64
        })
        .collect();
    if shares.is_empty() {
        return f64::NAN;
    }
    shares.sort_by(f64::total_cmp);
    shares[shares.len() / 2]
}

// ---------------------------------------------------------------- the spread

/// `--spread`: three healthy backends, 500 and then 5,000 requests/s for
/// `secs` seconds each; every replica's share of every second.
async fn spread(secs: u64) {
    for rate in [500, 5_000] {
        let backends = start_fleet().await;
        let shared = client();
        let logs: Vec<Arc<Log>> = (0..3).map(|_| Arc::default()).collect();
        let replicas =
            ["a", "b", "c"]
                .into_iter()
                .zip(&backends)
                .zip(&logs)
                .map(|((id, b), log)| {
                    let upstream = Upstream::to(b, &shared, Some(log.clone()));
                    (id, Replica::new(upstream))
                });
        let parts = ReplicaStack::new("spread")
            .build(replicas)
            .expect("a valid stack");
        let service = parts.service;
        let handle = parts.handle;
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut calls = Vec::new();
        while start.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            let svc = service.clone();
            calls.push(tokio::spawn(async move {
                let req = Request::get("http://spread/")
                    .body(Body::new())
                    .expect("a request");
                if let Ok(res) = svc.oneshot(req).await {
                    let _ = res.into_body().collect().await;
                }
            }));
        }
        for c in calls {
            let _ = c.await;
        }
        let mut worst: f64 = 0.0;
        for s in 1..secs {
            let counts = attempts_in_second(&logs, start, s);
            let total: usize = counts.iter().sum();
            let shares: Vec<String> = counts
                .iter()
                .map(|&c| {
                    let share = c as f64 / total.max(1) as f64;
                    worst = worst.max((share * 3.0 - 1.0).abs());
                    format!("{:.0}%", share * 100.0)
                })
                .collect();
            println!("{rate}/s second {s}: {}", shares.join(" / "));
        }
        println!(
            "{rate}/s: the worst share is {:.0}% off a fair third",
            worst * 100.0
        );
        for r in handle.snapshot() {
            println!(
                "  {}: {:?} (why: {:?}), {} ejections, answers in {:?}",
                r.id, r.health, r.why, r.ejections, r.latency
            );
        }
    }
}

// ---------------------------------------------------------------- the cost

/// Round robin over the backends with the raw hyper-util client.
#[derive(Clone)]
struct Raw {
    client: HttpClient,
    uris: Arc<Vec<Uri>>,
    next: Arc<AtomicUsize>,
}

impl Raw {
    /// A closed-loop caller through `client`, round robin over `backends`.
    fn over(
        backends: &[Backend],
        client: &HttpClient,
    ) -> impl Fn() -> BoxFuture<'static, bool> + Clone + Send + 'static {
        let raw = Self {
            client: client.clone(),
            uris: Arc::new(backends.iter().map(|b| b.uri("/")).collect()),
            next: Arc::default(),
        };
        move || {
            let raw = raw.clone();
            Box::pin(async move { raw.get().await })
        }
    }

    async fn get(&self) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.uris.len();
        let req = Request::get(self.uris[i].clone())
            .body(Body::new())
            .expect("a request");
        match self.client.request(req).await {
            Ok(res) => res.status().is_success() && res.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }
}

/// One closed-loop round: requests/s, and attempts through the replicas'
/// services per request answered (zero for the raw client, which has no
/// such service).
struct Saturated {
    per_sec: f64,
    attempts_per_request: f64,
    /// This process's CPU time per request answered (Linux only): the
    /// client's work, the backends' excluded.
    cpu_per_request: Option<Duration>,
}

/// This process's CPU time so far (user and system), from `/proc/self/stat`
/// (Linux; `None` elsewhere). Its unit is the kernel's `USER_HZ`, 1/100 s
/// on every Linux: coarse, but a round of seconds spans hundreds of them.
fn cpu_time() -> Option<Duration> {
    const TICKS_PER_SEC: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces), from the
    // state on: utime and stime are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user + system) * 1_000 / TICKS_PER_SEC,
    ))
}

/// Requests/s with `callers` in a closed loop for `run`, through `call`.
async fn saturate<F, Fut>(call: F, callers: usize, run: Duration) -> Saturated
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let cpu_before = cpu_time();
    let attempts_before = ATTEMPTS.load(Ordering::Relaxed);
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..callers)
        .map(|_| {
            let call = call.clone();
            let done = done.clone();
            tokio::spawn(async move {
                while start.elapsed() < run {
                    if call().await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let answered = done.load(Ordering::Relaxed);
    let attempts = ATTEMPTS.load(Ordering::Relaxed) - attempts_before;
    let cpu = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| after - before);
    Saturated {
        per_sec: answered as f64 / start.elapsed().as_secs_f64(),
        attempts_per_request: attempts as f64 / answered.max(1) as f64,
        cpu_per_request: cpu.map(|cpu| cpu / u32::try_from(answered.max(1)).unwrap_or(u32::MAX)),
    }
}

/// p50 and p99 of an open loop at `rate` for `run`, through `call`.
async fn latency_at<F, Fut>(call: F, rate: u32, run: Duration) -> (Duration, Duration)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut calls = Vec::new();
    while start.elapsed() < run {
        tick.tick().await;
        let call = call.clone();
        calls.push(tokio::spawn(async move {
            let began = Instant::now();
            call().await;
            began.elapsed()
        }));
    }
    let mut took = Vec::new();
    for c in calls {
        if let Ok(t) = c.await {
            took.push(t);
        }
    }
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// Closed-loop rounds of the raw client and another caller in turn.
struct Compared {
    raws: Vec<Saturated>,
    others: Vec<Saturated>,
    /// The other's requests/s over the raw client's, one per round, sorted.
    ratios: Vec<f64>,
}

/// `rounds` closed-loop rounds of `round` each through `raw` and `other`,
/// after a short warm-up of both, the order swapped every round, so that the machine's own drift (this is
/// a shared 2-core VM, running the backends too) falls on both alike.
async fn compare<F, Fut, G, Gut>(
    raw: &F,
    other: &G,
    rounds: usize,
    round: Duration,
    callers: usize,
) -> Compared
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
    G: Fn() -> Gut + Clone + Send + 'static,
    Gut: Future<Output = bool> + Send,
{
    // Warm both (connections, estimates), then measure side by side.
    let warm = Duration::from_millis(300);
    let _ = saturate(raw.clone(), 8, warm).await;
    let _ = saturate(other.clone(), 8, warm).await;
    let mut raws = Vec::new();
    let mut others = Vec::new();
    for r in 0..rounds {
        if r % 2 == 0 {
            raws.push(saturate(raw.clone(), callers, round).await);
            others.push(saturate(other.clone(), callers, round).await);
        } else {
            others.push(saturate(other.clone(), callers, round).await);
            raws.push(saturate(raw.clone(), callers, round).await);
        }
    }
    let mut ratios: Vec<f64> = raws
        .iter()
        .zip(&others)
        .map(|(r, o)| o.per_sec / r.per_sec)
        .collect();
    ratios.sort_by(f64::total_cmp);
    Compared {
        raws,
        others,
        ratios,
    }
}

/// The median of sorted `xs`: with an even count, the mean of the middle
/// two (the upper one alone would favour the better round of two).
fn median(xs: &[f64]) -> f64 {
    let mid = xs.len() / 2;
    if xs.len() % 2 == 0 {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

fn mean(xs: &[Saturated], f: fn(&Saturated) -> f64) -> f64 {
    xs.iter().map(f).sum::<f64>() / xs.len() as f64
}

/// The client's CPU time per request over the rounds, in µs ("n/a" where
/// `/proc` is not there to tell).
fn cpu_per_request(xs: &[Saturated]) -> String {
    let per: Option<Vec<f64>> = xs
        .iter()
        .map(|s| s.cpu_per_request.map(|d| d.as_secs_f64() * 1e6))
        .collect();
    per.map_or_else(
        || "n/a".to_owned(),
        |per| format!("{:.1} µs", per.iter().sum::<f64>() / per.len() as f64),
    )
}

/// The closed-loop rounds of a cost measurement: how many, and how long.
fn rounds_for(quick: bool) -> (usize, Duration) {
    if quick {
        (2, Duration::from_secs(1))
    } else {
        (6, Duration::from_secs(2))
    }
}

/// The three replicas over `backends`, through `client`, logging nothing
/// (the raw client they are measured against logs nothing either).
fn unlogged_replicas<'a>(
    backends: &'a [Backend],
    client: &'a HttpClient,
) -> impl Iterator<Item = (&'static str, Replica<Upstream>)> + 'a {
    ["a", "b", "c"]
        .into_iter()
        .zip(backends)
        .map(|(id, b)| (id, Replica::new(Upstream::to(b, client, None))))
}

/// A service over the backends, boxed so that every layer measured has
/// one type.
type Layered = BoxCloneSyncService<Request<Body>, Response<Incoming>, steadfast::BoxError>;

/// A closed-loop caller of `service`: one GET, its body read.
fn caller(service: Layered) -> impl Fn() -> BoxFuture<'static, bool> + Clone + Send + 'static {
    move || {
        let svc = service.clone();
        Box::pin(async move {
            let req = Request::get("http://cost/")
                .body(Body::new())
                .expect("a request");
            match svc.oneshot(req).await {
                Ok(res) => res.status().is_success() && res.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        })
    }
}

/// The stack's layers one at a time over a bare `Pool`, each against the
/// raw client: where the stack's cost over real sockets comes from.
async fn measure_layers(quick: bool) {
    let (rounds, round) = rounds_for(quick);
    let callers = 64;
    let backends = start_fleet().await;
    let shared = client();
    let through_raw = Raw::over(&backends, &shared);
    let pool = || {
        Pool::builder()
            .name("layers")
            .classify(ServerErrorsAsFailures::new())
            .build(unlogged_replicas(&backends, &shared))
            .expect("a valid pool")
    };
    let replay = HttpReplay::new().mark_first(false);
    let hedge = HedgeLayer::builder()
        .name("layers")
        .classify(ServerErrorsAsFailures::new())
        .replay(replay)
        .build()
        .expect("a valid hedge");
    let retry = RetryLayer::builder()
        .name("layers")
        .classify(ServerErrorsAsFailures::new())
        .replay(replay)
        .build()
        .expect("a valid retry");
    let stack = ReplicaStack::new("layers")
        .build(unlogged_replicas(&backends, &shared))
        .expect("a valid stack")
        .service;
    let layered: Vec<(&str, Layered)> = vec![
        (
            "bare `Pool`",
            BoxCloneSyncService::new(pool().map_err(Into::into)),
        ),
        (
            "tower `Timeout` (2 s) over `Pool`",
            BoxCloneSyncService::new(Timeout::new(pool(), Duration::from_secs(2))),
        ),
        (
            "`Hedge` (adaptive) over `Pool`",
            BoxCloneSyncService::new(hedge.layer(pool())),
        ),
        (
            "`Retry` over `Pool`",
            BoxCloneSyncService::new(retry.layer(pool())),
        ),
        (
            "`Retry` over `Hedge` over `Pool`",
            BoxCloneSyncService::new(retry.layer(hedge.layer(pool()))),
        ),
        ("`ReplicaStack`", BoxCloneSyncService::new(stack)),
    ];
    println!(
        "\nThe stack's layers over a bare `Pool`, alone and composed, against the raw hyper-util client (3 healthy backends; {callers} callers in a closed loop, {rounds} rounds of {} s each, alternating):\n",
        round.as_secs()
    );
    println!(
        "| | requests/s (mean of rounds) | over the raw client (median of rounds; range) | client CPU per request (raw client's) |"
    );
    println!("|---|---|---|---|");
    for (name, service) in layered {
        let through = caller(service);
        let Compared {
            raws,
            others,
            ratios,
        } = compare(&through_raw, &through, rounds, round, callers).await;
        println!(
            "| {name} | {:.0} | {:.2}x ({:.2}x to {:.2}x) | {} ({}) |",
            mean(&others, |s| s.per_sec),
            median(&ratios),
            ratios[0],
            ratios[ratios.len() - 1],
            cpu_per_request(&others),
            cpu_per_request(&raws),
        );
    }
}

async fn measure_cost(quick: bool) {
    // Rounds of the closed loop, the raw client and the stack in turn (see
    // `compare`); the ratio is the median of the rounds'.
    let (rounds, round) = rounds_for(quick);
    let run = round * 2;
    let (callers, rate) = (64, 2_000);
    let backends = start_fleet().await;
    let shared = client();
    let through_raw = Raw::over(&backends, &shared);
    let parts = ReplicaStack::new("cost")
        .build(unlogged_replicas(&backends, &shared))
        .expect("a valid stack");
    // Boxed as each layer of `--cost-layers` is (one allocation a call,
    // beside some 40 µs of work a call over the sockets).
    let through_stack = caller(BoxCloneSyncService::new(parts.service));
    let Compared {
        raws,
        others: stacks,
        ratios,
    } = compare(&through_raw, &through_stack, rounds, round, callers).await;
    let median = median(&ratios);
    let raw_latency = latency_at(through_raw, rate, run).await;
    let stack_latency = latency_at(through_stack, rate, run).await;
    println!(
        "\nThe stack's own cost over real sockets (3 healthy backends; {callers} callers in a closed loop, {rounds} rounds of {} s each, then {rate} requests/s open loop for {} s):\n",
        round.as_secs(),
        run.as_secs()
    );
    println!(
        "| | requests/s at saturation (mean of rounds) | attempts per request there | client CPU per request there | p50 at {rate}/s | p99 at {rate}/s |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| raw hyper-util client, round robin | {:.0} | 1 | {} | {} | {} |",
        mean(&raws, |s| s.per_sec),
        cpu_per_request(&raws),
        ms(raw_latency.0),
        ms(raw_latency.1)
    );
    println!(
        "| `ReplicaStack` | {:.0} ({median:.2}x, median of rounds; {:.2}x to {:.2}x) | {:.3} | {} | {} | {} |",
        mean(&stacks, |s| s.per_sec),
        ratios[0],
        ratios[ratios.len() - 1],
        mean(&stacks, |s| s.attempts_per_request),
        cpu_per_request(&stacks),
        ms(stack_latency.0),
        ms(stack_latency.1)
    );
}

// ---------------------------------------------------------------- report

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

async fn scenario(t: Timeline) {
    let quick = t.run < FULL.run;
    println!(
        "steadfast failover: 3 backend processes on loopback, ReplicaStack defaults + HTTP checks every 2 s,\n\
         {} requests/s open loop for {} s; one backend broken at {} s, restored at {} s.\n",
        t.rate,
        t.run.as_secs(),
        t.fault_at.as_secs(),
        t.restore_at.as_secs()
    );
    println!(
        "| fault on one of 3 | client failures | last attempt on it after the fault | attempts on it during the fault | back in after restore | p99 / p99.9 during the fault | busiest replica's share of a second, all up |"
    );
    println!("|---|---|---|---|---|---|---|");
    for fault in Fault::ALL {
        let row = run_fault(fault, t).await;
        println!(
            "| {} | {} of {} | {} | {} | {} | {} / {} | {:.0}% |",
            row.fault.name(),
            row.failures,
            row.requests,
            secs(row.last_attempt),
            row.attempts_during,
            secs(row.back_in),
            ms(row.p99),
            ms(row.p999),
            row.busiest * 100.0
        );
    }
    measure_cost(quick).await;
}
