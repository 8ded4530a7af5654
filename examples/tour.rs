//! The tour: a fleet of real HTTP servers broken in scripted ways, and the
//! same load sent through a plain client and through steadfast, side by side.
//!
//! ```sh
//! cargo run --release --example tour                      # about 30 s
//! cargo run --release --example tour -- --quick           # about 8 s
//! cargo run --release --example tour -- --plot tour.svg   # and a timeline
//! ```
//!
//! Six hyper HTTP/1 servers listen on loopback: four primaries in two zones
//! (`z1`, `z2`) and two standbys. Each follows a fault script: healthy; dead
//! (its listener closed and its open connections reset, so connecting is
//! refused; it comes back on the same port); slow with a heavy tail; or
//! answering `503` with `Retry-After`. The tour plays six phases: steady
//! state, a replica dies, one turns slow, one answers `503`, a whole zone
//! goes dark, recovery.
//!
//! Two clients send the same seeded open-loop load (Poisson arrivals, a
//! fixed cap on requests in flight) at the same time:
//!
//! - **plain**: a hyper-util client, round robin over every server's
//!   address, no retries, a per-request timeout equal to steadfast's total
//!   timeout;
//! - **steadfast**: `steadfast::presets::ReplicaStack` (total and attempt
//!   timeouts, retries and hedges under one budget, a replica pool with
//!   tiers, a local zone, outlier detection and TCP health checks) over one
//!   replica per server.
//!
//! The extra load that retries and hedges add is counted at both ends: the
//! attempts each client starts towards each server, and the requests each
//! server receives from each client (every request says who sent it, in an
//! `x-client` header). The tour prints a line per phase and client as it
//! goes, then side-by-side tables and what the pool saw; `--plot` writes a
//! timeline. Every number is measured.

#[cfg(feature = "http")]
#[tokio::main]
async fn main() {
    if let Err(err) = tour::run().await {
        eprintln!("tour: {err}");
        std::process::exit(1);
    }
}

#[cfg(not(feature = "http"))]
fn main() {
    eprintln!("the tour needs steadfast's `http` feature (on by default)");
    std::process::exit(1);
}

/// The demo (it needs the presets, from the `http` feature).
#[cfg(feature = "http")]
mod tour {
    use std::convert::Infallible;
    use std::fmt::Write as _;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::header::{HeaderValue, RETRY_AFTER};
    use hyper::http::uri::{Authority, Parts, PathAndQuery, Scheme};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode, Uri};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use steadfast::BoxError;
    use steadfast::backoff::Backoff;
    use steadfast::error::NoHealthyReplica;
    use steadfast::health::{HealthChecks, TcpCheck};
    use steadfast::hedge::HedgeDelay;
    use steadfast::pool::{Health, OutlierDetection, PoolHandle, Replica, Why};
    use steadfast::presets::{ReplicaStack, ReplicaStackService};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};
    use tokio::sync::{Semaphore, oneshot, watch};
    use tokio::task::{JoinHandle, JoinSet};
    use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
    use tower::timeout::Timeout;
    use tower::timeout::error::Elapsed;
    use tower::{Service, ServiceExt};

    /// Requests per second, per client (Poisson arrivals).
    const RATE: f64 = 200.0;
    /// The most requests a client has in flight; past it a request is shed
    /// (counted as failed), as an open-loop load generator must.
    const MAX_IN_FLIGHT: usize = 256;
    /// What a caller waits, at most: steadfast's total timeout, and the plain
    /// client's per-request timeout.
    const TOTAL_TIMEOUT: Duration = Duration::from_secs(1);
    /// steadfast's deadline for one attempt.
    const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
    /// The length of a phase (`--quick`: a quarter of it).
    const PHASE: Duration = Duration::from_secs(5);
    /// The slow server: its heavy tail, for one answer in `TAIL_EVERY`...
    const TAIL: Duration = Duration::from_millis(200);
    const TAIL_EVERY: u64 = 10;
    /// ...and its usual answers take 1 ms plus up to this much.
    const SLOW_SPREAD_MICROS: u64 = 1_000;
    /// What the failing server sends in `Retry-After`, in seconds.
    const RETRY_AFTER_SECS: u64 = 1;
    /// A request that fails or takes longer than this is "bad" when
    /// measuring how long a client took to route around a fault...
    const BAD_LATENCY: Duration = Duration::from_millis(100);
    /// ...which is done once no request sent after that point is bad, for
    /// at least this long (or 30% of a phase, if longer) until the phase
    /// ends: a plain client that keeps failing now and then must not look
    /// as if it had routed around by luck.
    const CLEAN: Duration = Duration::from_millis(200);
    /// Timeline buckets (live lines, plot).
    const BUCKET: Duration = Duration::from_millis(250);
    /// How often the pool's state is sampled.
    const MONITOR_EVERY: Duration = Duration::from_millis(5);
    /// Bound on every clean-up wait.
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
    /// The header that tells the servers which client sent a request.
    const CLIENT_HEADER: &str = "x-client";
    const CLIENTS: [&str; 2] = ["plain", "steadfast"];

    const USAGE: &str = "usage: tour [--quick] [--plot FILE.svg] [--seed N]

  --quick          phases a quarter as long (for CI)
  --plot FILE.svg  write a timeline of success rate and p99 latency
  --seed N         seed of the load and of the slow server's tail (default 1)";

    type Body = Empty<Bytes>;
    type HttpClient = Client<HttpConnector, Body>;
    type Stack = ReplicaStackService<&'static str, ToReplica>;
    type Handle = PoolHandle<&'static str, Timeout<ToReplica>>;
    /// Per server: attempts the clients sent it (`SENT`) and requests it
    /// received (`RECEIVED`), per client.
    type Counts = [[[u64; 2]; 2]; FLEET.len()];
    const SENT: usize = 0;
    const RECEIVED: usize = 1;

    fn total(counts: &Counts, what: usize, client: usize) -> u64 {
        counts.iter().map(|c| c[what][client]).sum()
    }

    // ---------------------------------------------------------------- fleet

    /// One server of the fleet.
    struct Spec {
        name: &'static str,
        zone: &'static str,
        tier: u32,
    }

    const FLEET: [Spec; 6] = [
        Spec {
            name: "z1-a",
            zone: "z1",
            tier: 0,
        },
        Spec {
            name: "z1-b",
            zone: "z1",
            tier: 0,
        },
        Spec {
            name: "z2-a",
            zone: "z2",
            tier: 0,
        },
        Spec {
            name: "z2-b",
            zone: "z2",
            tier: 0,
        },
        Spec {
            name: "standby-a",
            zone: "z3",
            tier: 1,
        },
        Spec {
            name: "standby-b",
            zone: "z3",
            tier: 1,
        },
    ];

    /// What a server does in a phase.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        Healthy = 0,
        Slow = 1,
        Unavailable = 2,
        /// Listener closed, connections reset.
        Dead = 3,
    }

    struct Phase {
        title: &'static str,
        short: &'static str,
        faults: [Fault; 6],
    }

    fn phases() -> [Phase; 6] {
        use Fault::{Dead as D, Healthy as H, Slow as S, Unavailable as U};
        [
            Phase {
                title: "steady state: every server healthy",
                short: "steady",
                faults: [H; 6],
            },
            Phase {
                title: "z1-a dies: listener closed, open connections reset",
                short: "z1-a dies",
                faults: [D, H, H, H, H, H],
            },
            Phase {
                title: "z2-a turns slow: 1-2 ms, 200 ms for 1 answer in 10 (z1-a is back)",
                short: "z2-a slow",
                faults: [H, H, S, H, H, H],
            },
            Phase {
                title: "z2-b answers 503 with Retry-After: 1",
                short: "z2-b 503",
                faults: [H, H, H, U, H, H],
            },
            Phase {
                title: "zone z1 goes dark: z1-a and z1-b dead",
                short: "z1 dark",
                faults: [D, D, H, H, H, H],
            },
            Phase {
                title: "recovery: every server healthy again",
                short: "recovery",
                faults: [H; 6],
            },
        ]
    }

    /// What a server's tasks share: its fault, its counters.
    #[derive(Debug)]
    struct ServerState {
        mode: AtomicU8,
        /// Attempts each client started towards it (`CLIENTS` order),
        /// connection refused or not.
        sent: [AtomicU64; 2],
        /// Requests it received, per client.
        received: [AtomicU64; 2],
        /// Requests answered while slow (every `TAIL_EVERY`-th is in the tail).
        seq: AtomicU64,
        seed: u64,
    }

    /// A real HTTP/1 server on loopback that can die and come back on the
    /// same port.
    struct Server {
        addr: SocketAddr,
        state: Arc<ServerState>,
        running: Option<Running>,
    }

    struct Running {
        /// Dropping it stops the accept loop, which resets every connection.
        stop: watch::Sender<()>,
        accept: JoinHandle<()>,
    }

    impl Server {
        async fn start(seed: u64) -> std::io::Result<Self> {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let state = Arc::new(ServerState {
                mode: AtomicU8::new(Fault::Healthy as u8),
                sent: [AtomicU64::new(0), AtomicU64::new(0)],
                received: [AtomicU64::new(0), AtomicU64::new(0)],
                seq: AtomicU64::new(0),
                seed,
            });
            Ok(Self {
                addr: listener.local_addr()?,
                running: Some(listen(listener, state.clone())),
                state,
            })
        }

        fn authority(&self) -> Authority {
            Authority::try_from(self.addr.to_string().as_str())
                .expect("a socket address is a valid authority")
        }

        fn counts(&self) -> [[u64; 2]; 2] {
            let load = |c: &[AtomicU64; 2]| [0, 1].map(|i| c[i].load(Ordering::Relaxed));
            [load(&self.state.sent), load(&self.state.received)]
        }

        /// Closes the listener and resets every open connection.
        async fn kill(&mut self) {
            if let Some(running) = self.running.take() {
                drop(running.stop);
                let _ = timeout(SHUTDOWN_TIMEOUT, running.accept).await;
            }
        }

        /// Listens again on the same port.
        async fn revive(&mut self) -> std::io::Result<()> {
            if self.running.is_some() {
                return Ok(());
            }
            let mut last = None;
            for _ in 0..20 {
                match rebind(self.addr) {
                    Ok(listener) => {
                        self.running = Some(listen(listener, self.state.clone()));
                        return Ok(());
                    }
                    Err(err) => last = Some(err),
                }
                sleep(Duration::from_millis(50)).await;
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("could not listen again")))
        }

        async fn set(&mut self, fault: Fault) -> std::io::Result<()> {
            if fault == Fault::Dead {
                self.kill().await;
                return Ok(());
            }
            self.state.mode.store(fault as u8, Ordering::SeqCst);
            self.revive().await
        }
    }

    /// Binds `addr` again (`SO_REUSEADDR`: the connections the dead server
    /// closed may still be in `TIME_WAIT`).
    fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }

    fn listen(listener: TcpListener, state: Arc<ServerState>) -> Running {
        let (stop, stopped) = watch::channel(());
        let accept = tokio::spawn(accept_loop(listener, state, stopped));
        Running { stop, accept }
    }

    async fn accept_loop(
        listener: TcpListener,
        state: Arc<ServerState>,
        mut stopped: watch::Receiver<()>,
    ) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve(stream, state.clone()));
                        while connections.try_join_next().is_some() {}
                    }
                    // Out of descriptors, say: breathe, then go on.
                    Err(_) => sleep(Duration::from_millis(1)).await,
                },
            }
        }
        // Dead: nobody listens any more, and every open connection is
        // dropped, which closes its socket under the client.
        drop(listener);
        connections.shutdown().await;
    }

    async fn serve(stream: TcpStream, state: Arc<ServerState>) {
        let service = service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(answer(&state, &req).await) }
        });
        let _ = http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    async fn answer(state: &ServerState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let client = req
            .headers()
            .get(CLIENT_HEADER)
            .and_then(|v| CLIENTS.iter().position(|c| v.as_bytes() == c.as_bytes()));
        if let Some(c) = client {
            state.received[c].fetch_add(1, Ordering::Relaxed);
        }
        let mode = state.mode.load(Ordering::SeqCst);
        if mode == Fault::Unavailable as u8 {
            let mut res = Response::new(Full::new(Bytes::from_static(b"unavailable")));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            return res;
        }
        if mode == Fault::Slow as u8 {
            let n = state.seq.fetch_add(1, Ordering::Relaxed);
            let delay = if (n + state.seed) % TAIL_EVERY == 0 {
                TAIL
            } else {
                let r = mix(state.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                Duration::from_micros(1_000 + (r >> 11) % SLOW_SPREAD_MICROS)
            };
            sleep(delay).await;
        }
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }

    // -------------------------------------------------------------- clients

    /// A replica's service: the shared hyper-util client, pointed at one
    /// server.
    #[derive(Debug, Clone)]
    struct ToReplica {
        client: HttpClient,
        authority: Authority,
        server: Arc<ServerState>,
    }

    impl Service<Request<Body>> for ToReplica {
        type Response = Response<Incoming>;
        type Error = hyper_util::client::legacy::Error;
        type Future = hyper_util::client::legacy::ResponseFuture;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            // The legacy client is always ready: it queues on its own pool.
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, mut req: Request<Body>) -> Self::Future {
            let mut parts = Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(
                req.uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            );
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            self.server.sent[1].fetch_add(1, Ordering::Relaxed);
            self.client.request(req)
        }
    }

    fn http_client() -> HttpClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    /// How one request ended, as its caller saw it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Ok,
        /// An error status (a `503` the client passed on).
        Status(u16),
        /// Past the caller's timeout.
        Timeout,
        /// The connection was refused.
        Refused,
        /// Another transport error: a connection reset under the request.
        Reset,
        /// steadfast's pool had no healthy replica.
        NoReplica,
        /// Over the client's cap on requests in flight.
        Shed,
    }

    /// The two clients, as the load generator drives them.
    #[derive(Clone)]
    enum Caller {
        Plain {
            // Boxed: the client is several times the size of the stack's
            // handle, and callers are cloned per request.
            client: Box<HttpClient>,
            servers: Arc<[(Authority, Arc<ServerState>)]>,
            next: Arc<AtomicUsize>,
        },
        Steadfast {
            service: Stack,
        },
    }

    type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

    impl Caller {
        fn call(&self) -> Call {
            match self {
                Self::Plain {
                    client,
                    servers,
                    next,
                } => {
                    let i = next.fetch_add(1, Ordering::Relaxed) % servers.len();
                    let (authority, server) = &servers[i];
                    server.sent[0].fetch_add(1, Ordering::Relaxed);
                    let req = get(&format!("http://{authority}/"), CLIENTS[0]);
                    let client = client.clone();
                    Box::pin(async move {
                        match client.request(req).await {
                            Ok(res) => read(res).await,
                            Err(err) => classify(&err),
                        }
                    })
                }
                Self::Steadfast { service } => {
                    let req = get("http://fleet/", CLIENTS[1]);
                    let service = service.clone();
                    Box::pin(async move {
                        match service.oneshot(req).await {
                            Ok(res) => read(res).await,
                            Err(err) => classify(&*err),
                        }
                    })
                }
            }
        }
    }

    fn get(uri: &str, client: &'static str) -> Request<Body> {
        Request::get(uri)
            .header(CLIENT_HEADER, client)
            .body(Empty::new())
            .expect("a valid request")
    }

    /// Reads the body to the end (so the connection is reused).
    async fn read(res: Response<Incoming>) -> Outcome {
        let status = res.status();
        match res.into_body().collect().await {
            Ok(_) if status.is_success() => Outcome::Ok,
            Ok(_) => Outcome::Status(status.as_u16()),
            Err(_) => Outcome::Reset,
        }
    }

    fn classify(err: &(dyn std::error::Error + 'static)) -> Outcome {
        let mut cause = Some(err);
        while let Some(err) = cause {
            if err.is::<NoHealthyReplica>() {
                return Outcome::NoReplica;
            }
            if err.is::<Elapsed>() {
                return Outcome::Timeout;
            }
            if let Some(err) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
                if err.is_connect() {
                    return Outcome::Refused;
                }
            }
            cause = err.source();
        }
        Outcome::Reset
    }

    // ----------------------------------------------------------------- load

    /// One request: when it was due (since the start), how long it took
    /// from when it was sent, how it ended.
    #[derive(Debug, Clone, Copy)]
    struct Sample {
        at: Duration,
        latency: Duration,
        outcome: Outcome,
    }

    /// splitmix64: the tour's seeded randomness.
    fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1).
    fn unit(r: u64) -> f64 {
        (r >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Poisson arrivals at `RATE` per second until `until`.
    fn schedule(seed: u64, until: Duration) -> Vec<Duration> {
        let mut at = 0.0;
        let mut out = Vec::new();
        for n in 0u64.. {
            let u = unit(mix(seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03)));
            at += -(1.0 - u).ln() / RATE;
            if at >= until.as_secs_f64() {
                break;
            }
            out.push(Duration::from_secs_f64(at));
        }
        out
    }

    /// Sends one request at each time of `schedule` (open loop: whether or
    /// not earlier ones are done), each bounded by the total timeout.
    async fn drive(
        caller: Caller,
        schedule: Arc<[Duration]>,
        start: Instant,
        samples: Arc<Mutex<Vec<Sample>>>,
    ) {
        let cap = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut calls = JoinSet::new();
        let record = |samples: &Mutex<Vec<Sample>>, sample| {
            samples.lock().expect("not poisoned").push(sample);
        };
        for &at in schedule.iter() {
            sleep_until(start + at).await;
            let Ok(permit) = cap.clone().try_acquire_owned() else {
                record(
                    &samples,
                    Sample {
                        at,
                        latency: Duration::ZERO,
                        outcome: Outcome::Shed,
                    },
                );
                continue;
            };
            // Latency counts from here, not from the due time: tokio's timer
            // fires up to a millisecond late, and that is the generator's
            // lateness, not the client's. (The generator never waits on a
            // response, so it cannot hide a slow one.)
            let sent = Instant::now();
            let call = caller.call();
            let samples = samples.clone();
            calls.spawn(async move {
                let outcome = timeout_at(sent + TOTAL_TIMEOUT, call)
                    .await
                    .unwrap_or(Outcome::Timeout);
                let latency = sent.elapsed();
                record(
                    &samples,
                    Sample {
                        at,
                        latency,
                        outcome,
                    },
                );
                drop(permit);
            });
            while calls.try_join_next().is_some() {}
        }
        let drained = timeout(TOTAL_TIMEOUT + SHUTDOWN_TIMEOUT, async {
            while calls.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            calls.shutdown().await;
        }
    }

    // --------------------------------------------------------- pool monitor

    /// A change of one replica's standing, as the pool's handle showed it.
    #[derive(Debug, Clone, Copy)]
    struct Change {
        at: Duration,
        replica: usize,
        health: &'static str,
        why: Why,
    }

    fn health_label(health: &Health) -> &'static str {
        match health {
            Health::Healthy => "up",
            Health::Recovering { .. } => "recovering",
            Health::Ejected { .. } => "ejected",
            Health::Avoided { .. } => "avoided",
            Health::FailingChecks => "failing checks",
            Health::CircuitOpen => "circuit open",
            Health::Draining => "draining",
            Health::Disabled => "disabled",
            _ => "out",
        }
    }

    fn why_label(why: Why) -> &'static str {
        match why {
            Why::ConsecutiveFailures => "failures in a row",
            Why::FailureRate => "failure rate",
            Why::SuccessRate => "success rate",
            Why::Latency => "latency",
            Why::Pushback => "Retry-After",
            Why::HealthCheck => "health check",
            Why::Operator => "operator",
            _ => "-",
        }
    }

    /// Samples the pool's snapshot every few milliseconds until told to
    /// stop; returns every change.
    async fn monitor(
        handle: Handle,
        start: Instant,
        mut stop: oneshot::Receiver<()>,
    ) -> Vec<Change> {
        let mut last = ["up"; FLEET.len()];
        let mut changes = Vec::new();
        loop {
            for r in handle.snapshot() {
                let Some(i) = FLEET.iter().position(|s| s.name == r.id) else {
                    continue;
                };
                let health = health_label(&r.health);
                if health != last[i] {
                    last[i] = health;
                    changes.push(Change {
                        at: Instant::now().saturating_duration_since(start),
                        replica: i,
                        health,
                        why: r.why,
                    });
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = sleep(MONITOR_EVERY) => {}
            }
        }
        changes
    }

    /// One line: how every replica stands now.
    fn pool_line(handle: &Handle) -> String {
        let mut line = String::from("pool:");
        for r in handle.snapshot() {
            let health = health_label(&r.health);
            let _ = if health == "up" {
                write!(line, "  {} up", r.id)
            } else {
                write!(line, "  {} {} ({})", r.id, health, why_label(r.why))
            };
        }
        line
    }

    // ---------------------------------------------------------------- stats

    struct Stats {
        n: usize,
        ok: usize,
        p50: Duration,
        p99: Duration,
        p999: Duration,
        failures: Vec<(&'static str, usize)>,
    }

    fn stats<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Stats {
        let mut latencies = Vec::new();
        let mut ok = 0;
        let mut failures: Vec<(&'static str, usize)> = Vec::new();
        for s in samples {
            latencies.push(s.latency);
            let kind = match s.outcome {
                Outcome::Ok => {
                    ok += 1;
                    continue;
                }
                Outcome::Status(503) => "503",
                Outcome::Status(_) => "other status",
                Outcome::Timeout => "timeout",
                Outcome::Refused => "refused",
                Outcome::Reset => "reset",
                Outcome::NoReplica => "no replica",
                Outcome::Shed => "shed",
            };
            match failures.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => failures.push((kind, 1)),
            }
        }
        latencies.sort_unstable();
        Stats {
            n: latencies.len(),
            ok,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            p999: percentile(&latencies, 0.999),
            failures,
        }
    }

    /// The nearest-rank percentile of sorted latencies.
    fn percentile(sorted: &[Duration], q: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn success(s: &Stats) -> f64 {
        if s.n == 0 {
            return 0.0;
        }
        100.0 * s.ok as f64 / s.n as f64
    }

    fn ms(d: Duration) -> String {
        let ms = d.as_secs_f64() * 1e3;
        if ms < 10.0 {
            format!("{ms:.2} ms")
        } else if ms < 100.0 {
            format!("{ms:.1} ms")
        } else {
            format!("{ms:.0} ms")
        }
    }

    fn in_window(samples: &[Sample], from: Duration, to: Duration) -> &[Sample] {
        let lo = samples.partition_point(|s| s.at < from);
        let hi = samples.partition_point(|s| s.at < to);
        &samples[lo..hi]
    }

    /// How long after `from` the client's requests stopped going bad
    /// (failed, or slower than `BAD_LATENCY`) for good: the last bad one's
    /// due time, if at least `clean` of the phase followed it without any;
    /// zero if none was bad; `None` if the phase ended still bad.
    fn route_around(
        phase: &[Sample],
        from: Duration,
        to: Duration,
        clean: Duration,
    ) -> Option<Duration> {
        let bad = |s: &&Sample| s.outcome != Outcome::Ok || s.latency > BAD_LATENCY;
        match phase.iter().filter(bad).map(|s| s.at).max() {
            None => Some(Duration::ZERO),
            Some(last) if to.saturating_sub(last) >= clean => Some(last.saturating_sub(from)),
            Some(_) => None,
        }
    }

    fn route_label(d: Option<Duration>) -> String {
        match d {
            Some(d) if d.is_zero() => "0 ms (none bad)".to_owned(),
            Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1e3),
            None => "n/a".to_owned(),
        }
    }

    // ------------------------------------------------------------------ run

    struct Args {
        quick: bool,
        plot: Option<String>,
        seed: u64,
    }

    fn usage() -> ! {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }

    fn parse_args() -> Args {
        let mut args = Args {
            quick: false,
            plot: None,
            seed: 1,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => args.quick = true,
                "--plot" => args.plot = Some(it.next().unwrap_or_else(|| usage())),
                "--seed" => {
                    args.seed = it
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| usage());
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => match other.strip_prefix("--plot=") {
                    Some(file) if !file.is_empty() => args.plot = Some(file.to_owned()),
                    _ => usage(),
                },
            }
        }
        args
    }

    /// What the run measured, for the tables and the plot.
    struct Run {
        /// When each phase's faults were applied, and the end.
        bounds: Vec<Duration>,
        /// Each server's counters at each bound.
        counts: Vec<Counts>,
        /// How long a route-around must last (see `route_around`).
        clean: Duration,
        samples: [Vec<Sample>; 2],
        changes: Vec<Change>,
    }

    impl Run {
        fn phase(&self, client: usize, k: usize) -> &[Sample] {
            in_window(&self.samples[client], self.bounds[k], self.bounds[k + 1])
        }

        /// Counter `what` of server `server` for `client`, in phase `k`.
        fn got(&self, server: usize, what: usize, client: usize, k: usize) -> u64 {
            self.counts[k + 1][server][what][client] - self.counts[k][server][what][client]
        }

        /// Attempts (or requests received) per request of `client`, in phase `k`.
        fn load(&self, what: usize, client: usize, k: usize, requests: usize) -> f64 {
            let n: u64 = (0..FLEET.len()).map(|i| self.got(i, what, client, k)).sum();
            n as f64 / requests.max(1) as f64
        }
    }

    pub(crate) async fn run() -> Result<(), BoxError> {
        let args = parse_args();
        let phases = phases();
        let phase_len = if args.quick { PHASE / 4 } else { PHASE };
        let total = phase_len * phases.len() as u32;

        let mut fleet = Vec::new();
        for i in 0..FLEET.len() as u64 {
            fleet.push(Server::start(mix(args.seed ^ (i + 1))).await?);
        }

        // The plain client: round robin over every address, no retries.
        let plain = Caller::Plain {
            client: Box::new(http_client()),
            servers: fleet
                .iter()
                .map(|s| (s.authority(), s.state.clone()))
                .collect(),
            next: Arc::new(AtomicUsize::new(0)),
        };
        // steadfast: one replica per server, each a clone of one client.
        let shared_client = http_client();
        let replicas = FLEET.iter().zip(&fleet).map(|(spec, server)| {
            let service = ToReplica {
                client: shared_client.clone(),
                authority: server.authority(),
                server: server.state.clone(),
            };
            let replica = Replica::new(service)
                .tier(spec.tier)
                .zone(spec.zone)
                .health_check(TcpCheck::new(server.addr));
            (spec.name, replica)
        });
        let parts = ReplicaStack::new("fleet")
            .total_timeout(TOTAL_TIMEOUT)
            .attempt_timeout(ATTEMPT_TIMEOUT)
            .max_attempts(3)
            .hedge(HedgeDelay::quantile(0.95))
            .outlier(
                OutlierDetection::default()
                    .interval(Duration::from_millis(500))
                    .ejection(Backoff::exponential(
                        Duration::from_secs(1),
                        Duration::from_secs(10),
                    )),
            )
            .health_checks(
                HealthChecks::default()
                    .interval(Duration::from_millis(250))
                    .unhealthy_interval(Duration::from_millis(100))
                    .timeout(Duration::from_millis(100))
                    .unhealthy_threshold(2)
                    .healthy_threshold(2),
            )
            .local_zone("z1")
            .build(replicas)?;
        let checks = tokio::spawn(parts.health_checks);
        let handle = parts.handle;
        let steadfast = Caller::Steadfast {
            service: parts.service,
        };

        println!(
            "steadfast tour: a fleet of real HTTP servers on loopback, broken in scripted ways\n"
        );
        for (spec, server) in FLEET.iter().zip(&fleet) {
            println!(
                "  {:<10} {}  zone {}  tier {}{}",
                spec.name,
                server.addr,
                spec.zone,
                spec.tier,
                if spec.tier == 0 {
                    "  (primary)"
                } else {
                    "  (standby)"
                }
            );
        }
        println!(
            "\nload:      {RATE:.0} requests/s per client, Poisson arrivals (seed {}), \
             at most {MAX_IN_FLIGHT} in flight, {} phases of {:.2} s{}",
            args.seed,
            phases.len(),
            phase_len.as_secs_f64(),
            if args.quick { " (--quick)" } else { "" }
        );
        println!(
            "plain:     hyper-util client, round robin over all {} servers, no retries, \
             {} timeout",
            FLEET.len(),
            ms(TOTAL_TIMEOUT)
        );
        println!(
            "steadfast: ReplicaStack: total {}, attempt {}, 3 attempts, hedge at p95, one \
             budget;\n           pool with local zone z1, outlier detection (sweep 500 ms, \
             ejection 1 s doubling), TCP checks every 250 ms\n",
            ms(TOTAL_TIMEOUT),
            ms(ATTEMPT_TIMEOUT)
        );

        // The same arrivals for both clients, sent at the same time.
        let arrivals: Arc<[Duration]> = schedule(args.seed, total).into();
        let start = Instant::now() + Duration::from_millis(100);
        let lists = [
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        ];
        let drivers: Vec<JoinHandle<()>> = [plain, steadfast]
            .into_iter()
            .zip(&lists)
            .map(|(caller, list)| {
                tokio::spawn(drive(caller, arrivals.clone(), start, list.clone()))
            })
            .collect();
        let (stop_monitor, stopped) = oneshot::channel();
        let monitor = tokio::spawn(monitor(handle.clone(), start, stopped));

        let counts = |fleet: &[Server]| -> Counts { std::array::from_fn(|i| fleet[i].counts()) };
        let mut bounds = Vec::new();
        let mut marks = Vec::new();
        for (k, phase) in phases.iter().enumerate() {
            let planned = start + phase_len * k as u32;
            sleep_until(planned).await;
            marks.push(counts(&fleet));
            bounds.push(if k == 0 {
                Duration::ZERO
            } else {
                Instant::now().saturating_duration_since(start)
            });
            if k > 0 {
                println!("          {}", pool_line(&handle));
            }
            for ((server, &fault), spec) in fleet.iter_mut().zip(&phase.faults).zip(&FLEET) {
                if let Err(err) = server.set(fault).await {
                    // (Another socket took the port meanwhile: it stays dead.)
                    eprintln!(
                        "{} could not listen on {} again: {err}",
                        spec.name, server.addr
                    );
                }
            }
            println!(
                "[{:>6.2}s] phase {}/{}: {}",
                bounds[k].as_secs_f64(),
                k + 1,
                phases.len(),
                phase.title
            );
            if k > 0 {
                // Every request of the phase before has ended by now: each
                // is bounded by the total timeout.
                let settled = planned + TOTAL_TIMEOUT + Duration::from_millis(50);
                if settled < planned + phase_len {
                    sleep_until(settled).await;
                }
                live_lines(&phases, k - 1, &bounds, &marks, &lists, None);
            }
        }
        sleep_until(start + total).await;
        println!("          {}", pool_line(&handle));
        marks.push(counts(&fleet));
        bounds.push(total);

        // Wait for the last requests (each ends within the total timeout).
        for driver in drivers {
            let _ = timeout(TOTAL_TIMEOUT + 2 * SHUTDOWN_TIMEOUT, driver).await;
        }
        marks.pop();
        marks.push(counts(&fleet));
        live_lines(
            &phases,
            phases.len() - 1,
            &bounds,
            &marks,
            &lists,
            Some(total),
        );
        let _ = stop_monitor.send(());
        let changes = timeout(SHUTDOWN_TIMEOUT, monitor)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        checks.abort();
        for server in &mut fleet {
            server.kill().await;
        }

        let take = |list: &Arc<Mutex<Vec<Sample>>>| {
            let mut v = std::mem::take(&mut *list.lock().expect("not poisoned"));
            v.sort_by_key(|s| s.at);
            v
        };
        let run = Run {
            bounds,
            counts: marks,
            clean: CLEAN.max(phase_len * 3 / 10),
            samples: [take(&lists[0]), take(&lists[1])],
            changes,
        };
        report(&phases, &run);
        if let Some(path) = &args.plot {
            std::fs::write(path, plot(&phases, &run))?;
            println!("\ntimeline written to {path}");
        }
        Ok(())
    }

    /// The line per client for phase `k`, once its requests have ended.
    fn live_lines(
        phases: &[Phase],
        k: usize,
        bounds: &[Duration],
        marks: &[Counts],
        lists: &[Arc<Mutex<Vec<Sample>>>; 2],
        end: Option<Duration>,
    ) {
        let from = bounds[k];
        let to = bounds.get(k + 1).copied().or(end).unwrap_or(Duration::MAX);
        for (c, name) in CLIENTS.iter().enumerate() {
            let list = lists[c].lock().expect("not poisoned");
            let s = stats(list.iter().filter(|s| s.at >= from && s.at < to));
            let attempts = match (marks.get(k), marks.get(k + 1)) {
                (Some(a), Some(b)) => total(b, SENT, c) - total(a, SENT, c),
                _ => 0,
            };
            println!(
                "          {:<2} {:<10} {:<9} {:>5} req  {:>7.2}% ok  p50 {:>9}  p99 {:>9}  \
                 {:.3} attempts/request",
                k + 1,
                phases[k].short,
                name,
                s.n,
                success(&s),
                ms(s.p50),
                ms(s.p99),
                attempts as f64 / s.n.max(1) as f64
            );
        }
    }

    /// The final tables.
    fn report(phases: &[Phase], run: &Run) {
        let route = |c: usize, k: usize| {
            route_label(route_around(
                run.phase(c, k),
                run.bounds[k],
                run.bounds[k + 1],
                run.clean,
            ))
        };

        println!("\nby phase (requests by the time they were due)");
        println!(
            "{:<14} {:>19}  {:>21}  {:>13}  {:>32}",
            "", "success", "p99 latency", "attempts/req", "time to route around"
        );
        println!(
            "{:<14} {:>9} {:>9}  {:>10} {:>10}  {:>6} {:>6}  {:>15} {:>16}",
            "phase",
            "plain",
            "steadfast",
            "plain",
            "steadfast",
            "plain",
            "stdfst",
            "plain",
            "steadfast"
        );
        for (k, phase) in phases.iter().enumerate() {
            let s = [0, 1].map(|c| stats(run.phase(c, k)));
            println!(
                "{:<14} {:>8.2}% {:>8.2}%  {:>10} {:>10}  {:>6.3} {:>6.3}  {:>15} {:>16}",
                format!("{} {}", k + 1, phase.short),
                success(&s[0]),
                success(&s[1]),
                ms(s[0].p99),
                ms(s[1].p99),
                run.load(SENT, 0, k, s[0].n),
                run.load(SENT, 1, k, s[1].n),
                if k == 0 { "-".to_owned() } else { route(0, k) },
                if k == 0 { "-".to_owned() } else { route(1, k) },
            );
        }

        let all = [0, 1].map(|c| stats(&run.samples[c]));
        let last = run.counts.len() - 1;
        let backend = |what: usize| {
            [0, 1].map(|c| total(&run.counts[last], what, c) - total(&run.counts[0], what, c))
        };
        let per_request =
            |n: [u64; 2]| [0, 1].map(|c| format!("{:.3}", n[c] as f64 / all[c].n.max(1) as f64));
        let row = |name: &str, cells: [String; 2]| {
            println!("{name:<34} {:>22} {:>22}", cells[0], cells[1]);
        };
        println!("\nwhole run");
        row("", [0, 1].map(|c| CLIENTS[c].to_owned()));
        row("requests", [0, 1].map(|c| all[c].n.to_string()));
        row(
            "succeeded",
            [0, 1].map(|c| format!("{} ({:.2}%)", all[c].ok, success(&all[c]))),
        );
        let failures = |s: &Stats| {
            if s.failures.is_empty() {
                return "none".to_owned();
            }
            s.failures
                .iter()
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row("failed", [0, 1].map(|c| failures(&all[c])));
        row("latency p50", [0, 1].map(|c| ms(all[c].p50)));
        row("latency p99", [0, 1].map(|c| ms(all[c].p99)));
        row("latency p99.9", [0, 1].map(|c| ms(all[c].p999)));
        row(
            "attempts sent to servers",
            backend(SENT).map(|n| n.to_string()),
        );
        row("  per request (the extra load)", per_request(backend(SENT)));
        row(
            "requests servers received",
            backend(RECEIVED).map(|n| n.to_string()),
        );
        row("  per request", per_request(backend(RECEIVED)));
        println!("time to route around the fault");
        for (k, phase) in phases.iter().enumerate().skip(1) {
            row(
                &format!("  {} {}", k + 1, phase.short),
                [route(0, k), route(1, k)],
            );
        }
        println!(
            "\nlatency: from when a request was sent until its body was read (failures \
             included);\nattempts: started towards a server, refused or cancelled ones included \
             (retries and hedges);\ntime to route around: from the fault until the last request that \
             failed or took over {}, if\n{} without one followed before the phase ended \
             (n/a: none did)",
            ms(BAD_LATENCY),
            ms(run.clean)
        );

        println!(
            "\nthe pool's view of each faulty server (its handle's snapshot, every {})",
            ms(MONITOR_EVERY)
        );
        for (k, phase) in phases.iter().enumerate().skip(1) {
            let (from, to) = (run.bounds[k], run.bounds[k + 1]);
            let recovery = phase.faults.iter().all(|f| *f == Fault::Healthy);
            let mut notes = Vec::new();
            for (i, spec) in FLEET.iter().enumerate() {
                let first = |pred: &dyn Fn(&str) -> bool| {
                    run.changes
                        .iter()
                        .find(|c| c.replica == i && c.at >= from && c.at < to && pred(c.health))
                        .copied()
                };
                let got = format!(
                    "attempts sent/received: steadfast {}/{}, plain {}/{}",
                    run.got(i, SENT, 1, k),
                    run.got(i, RECEIVED, 1, k),
                    run.got(i, SENT, 0, k),
                    run.got(i, RECEIVED, 0, k)
                );
                let before = health_at(&run.changes, i, from);
                if recovery {
                    if before == "up" {
                        continue;
                    }
                    let back = if serving(before) {
                        "in rotation from the start".to_owned()
                    } else {
                        match first(&serving) {
                            Some(c) => format!("back in rotation after {}", since(c.at, from)),
                            None => format!("still {before}"),
                        }
                    };
                    let up = match first(&|h| h == "up") {
                        Some(c) => format!("fully up after {}", since(c.at, from)),
                        None => format!("{} when the tour ended", health_at(&run.changes, i, to)),
                    };
                    notes.push(format!("{}: {back}, {up}; {got}", spec.name));
                } else if phase.faults[i] != Fault::Healthy {
                    let out = if serving(before) {
                        match first(&|h| !serving(h)) {
                            Some(c) => format!(
                                "out after {} ({}: {})",
                                since(c.at, from),
                                c.health,
                                why_label(c.why)
                            ),
                            None => "never taken out".to_owned(),
                        }
                    } else {
                        format!("already out ({before}) when the fault began")
                    };
                    notes.push(format!("{}: {out}; {got}", spec.name));
                }
            }
            if notes.is_empty() {
                notes.push("every replica was up".to_owned());
            }
            println!(
                "  {} {:<10} {}",
                k + 1,
                phase.short,
                notes.join("\n               ")
            );
        }
        println!(
            "(recovering: healthy again and serving within its tier, but not yet counted as \
             capacity: the pool's failback time)"
        );
    }

    /// Whether a replica in this standing takes traffic.
    fn serving(health: &str) -> bool {
        health == "up" || health == "recovering"
    }

    fn since(at: Duration, from: Duration) -> String {
        ms(at.saturating_sub(from))
    }

    fn health_at(changes: &[Change], replica: usize, at: Duration) -> &'static str {
        changes
            .iter()
            .rfind(|c| c.replica == replica && c.at < at)
            .map_or("up", |c| c.health)
    }

    /// The timeline as an SVG: success rate and p99 latency per bucket, both
    /// clients, phases marked.
    fn plot(phases: &[Phase], run: &Run) -> String {
        const W: f64 = 960.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 20.0;
        const CHART_H: f64 = 200.0;
        const TOPS: [f64; 2] = [60.0, 330.0];
        const COLORS: [&str; 2] = ["#d62728", "#1f77b4"];
        let end = *run.bounds.last().expect("bounds");
        let x = |t: Duration| LEFT + (W - LEFT - RIGHT) * t.as_secs_f64() / end.as_secs_f64();
        // Success: 0..100 %, linear. p99: 0.01 ms..1 s, logarithmic.
        let y_success = |p: f64| TOPS[0] + CHART_H * (1.0 - p / 100.0);
        let y_latency = |d: Duration| {
            let ms = (d.as_secs_f64() * 1e3).clamp(0.01, 1000.0);
            TOPS[1] + CHART_H * (1.0 - (ms.log10() + 2.0) / 5.0)
        };

        let mut svg = String::new();
        let h = TOPS[1] + CHART_H + 50.0;
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="20" font-size="15">steadfast tour: the same load through a plain client and through steadfast ({} buckets)</text>"#,
            ms(BUCKET)
        );
        for (i, name) in CLIENTS.iter().enumerate() {
            let lx = W - RIGHT - 190.0 + 100.0 * i as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx}" y1="36" x2="{}" y2="36" stroke="{}" stroke-width="2"/><text x="{}" y="40">{name}</text>"#,
                lx + 20.0,
                COLORS[i],
                lx + 25.0
            );
        }
        let titles = ["success rate", "p99 latency (log scale)"];
        for (chart, top) in TOPS.iter().enumerate() {
            let _ = writeln!(
                svg,
                r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
                top - 8.0,
                titles[chart]
            );
            let _ = writeln!(
                svg,
                r##"<rect x="{LEFT}" y="{top}" width="{}" height="{CHART_H}" fill="none" stroke="#444"/>"##,
                W - LEFT - RIGHT
            );
        }
        for p in [0.0, 25.0, 50.0, 75.0, 100.0] {
            let y = y_success(p);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{p:.0}%</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0
            );
        }
        for (d, label) in [
            (Duration::from_micros(10), "0.01 ms"),
            (Duration::from_micros(100), "0.1 ms"),
            (Duration::from_millis(1), "1 ms"),
            (Duration::from_millis(10), "10 ms"),
            (Duration::from_millis(100), "100 ms"),
            (Duration::from_secs(1), "1 s"),
        ] {
            let y = y_latency(d);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0
            );
        }
        // Phase boundaries, and the time axis.
        for (k, phase) in phases.iter().enumerate() {
            let bx = x(run.bounds[k]);
            if k > 0 {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{bx}" y1="{}" x2="{bx}" y2="{}" stroke="#888" stroke-dasharray="4 3"/>"##,
                    TOPS[0],
                    TOPS[1] + CHART_H
                );
            }
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" fill="#555">{} {}</text>"##,
                bx + 4.0,
                TOPS[0] + 14.0,
                k + 1,
                phase.short
            );
        }
        let secs = end.as_secs_f64();
        let step = if secs > 20.0 { 5.0 } else { 1.0 };
        let mut t = 0.0;
        while t <= secs + 1e-9 {
            let tx = x(Duration::from_secs_f64(t));
            let _ = writeln!(
                svg,
                r#"<text x="{tx}" y="{}" text-anchor="middle">{t:.0} s</text>"#,
                TOPS[1] + CHART_H + 16.0
            );
            t += step;
        }
        // The two series, per client: a polyline per run of non-empty buckets.
        let buckets = (end.as_nanos().div_ceil(BUCKET.as_nanos())) as u32;
        for (c, color) in COLORS.iter().enumerate() {
            let mut series: [Vec<Vec<(f64, f64)>>; 2] = [vec![Vec::new()], vec![Vec::new()]];
            for b in 0..buckets {
                let from = BUCKET * b;
                let to = (from + BUCKET).min(end);
                let s = stats(in_window(&run.samples[c], from, to));
                let mid = x(from + (to - from) / 2);
                for (chart, line) in series.iter_mut().enumerate() {
                    if s.n == 0 {
                        line.push(Vec::new());
                        continue;
                    }
                    let y = if chart == 0 {
                        y_success(success(&s))
                    } else {
                        y_latency(s.p99)
                    };
                    if let Some(last) = line.last_mut() {
                        last.push((mid, y));
                    }
                }
            }
            for line in series.iter().flatten().filter(|l| !l.is_empty()) {
                let points: Vec<String> =
                    line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"/>"#,
                    points.join(" "),
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}
