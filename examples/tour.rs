//! The tour: a circuit breaker in front of a real HTTP server that fails for
//! a while and then recovers.
//!
//! ```sh
//! cargo run --release --example tour            # about 10 s
//! cargo run --release --example tour -- --quick # about 5 s
//! ```
//!
//! A server on loopback answers `200`, then `503` for a while, then `200`
//! again. A caller sends it one request every 20 ms through a hyper-util
//! client wrapped in a circuit breaker. The tour prints every state change
//! the breaker publishes, then what each phase cost: how many requests the
//! caller sent, how many reached the server, and how they ended. Every
//! number is measured.
//!
//! (The full tour — a fleet of replicas broken in scripted ways — comes with
//! the pool; this is its first stop.)

#[cfg(feature = "http")]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), steadfast::BoxError> {
    tour::run().await
}

#[cfg(not(feature = "http"))]
fn main() {
    eprintln!("the tour needs steadfast's `http` feature (on by default)");
    std::process::exit(1);
}

/// The demo (it needs `ServerErrorsAsFailures`, from the `http` feature).
#[cfg(feature = "http")]
mod tour {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode, Uri};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use steadfast::backoff::Backoff;
    use steadfast::circuit_breaker::{Circuit, CircuitBreakerLayer, SlidingWindow, State};
    use steadfast::classify::ServerErrorsAsFailures;
    use steadfast::error::{BoxError, CircuitOpen};
    use tokio::net::TcpListener;
    use tokio::sync::{oneshot, watch};
    use tokio::time::{Instant, MissedTickBehavior, timeout};
    use tower::{Service, ServiceBuilder, ServiceExt};

    /// The caller sends one request per tick.
    const TICK: Duration = Duration::from_millis(20);
    /// No single request may take longer than this (on loopback it takes well
    /// under a millisecond); one that does counts as an error.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
    /// Bound on the clean-up waits at the end.
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

    struct Phase {
        name: &'static str,
        healthy: bool,
        duration: Duration,
    }

    /// What one phase cost, as measured.
    #[derive(Default)]
    struct Tally {
        sent: u64,
        reached: u64,
        ok: u64,
        unavailable: u64,
        rejected: u64,
        errors: u64,
        elapsed: Duration,
    }

    impl Tally {
        fn add(&mut self, other: &Tally) {
            self.sent += other.sent;
            self.reached += other.reached;
            self.ok += other.ok;
            self.unavailable += other.unavailable;
            self.rejected += other.rejected;
            self.errors += other.errors;
            self.elapsed += other.elapsed;
        }
    }

    pub(crate) async fn run() -> Result<(), BoxError> {
        let mut quick = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => quick = true,
                _ => {
                    eprintln!("usage: tour [--quick]   (--quick halves every phase)");
                    std::process::exit(2);
                }
            }
        }
        let scale = |secs: u64| {
            let d = Duration::from_secs(secs);
            if quick { d / 2 } else { d }
        };
        let phases = [
            Phase {
                name: "healthy",
                healthy: true,
                duration: scale(2),
            },
            Phase {
                name: "server answers 503",
                healthy: false,
                duration: scale(4),
            },
            Phase {
                name: "server healthy again",
                healthy: true,
                duration: scale(4),
            },
        ];

        let server = Server::start().await?;
        let uri: Uri = format!("http://{}/", server.addr).parse()?;

        let breaker = CircuitBreakerLayer::builder()
            .name("backend")
            .classify(ServerErrorsAsFailures::new())
            .failure_rate(0.5)
            .window(SlidingWindow::count(20))
            .min_calls(10)
            .open_backoff(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(4),
            ))
            .half_open_probes(3)
            .build()?;
        let circuit = breaker.circuit().clone();
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut svc = ServiceBuilder::new().layer(breaker).service(client);

        println!("steadfast tour: a circuit breaker in front of a real HTTP server on {uri}");
        println!(
            "breaker: trips at 50% failures of the last 20 calls (once there are 10); \
             open 1 s, doubling to 4 s; 3 probes"
        );
        println!(
            "caller:  one GET every {} ms{}\n",
            TICK.as_millis(),
            if quick {
                "  (--quick: phases halved)"
            } else {
                ""
            }
        );

        let start = Instant::now();
        let (stop_watching, stop) = oneshot::channel();
        let watcher = tokio::spawn(watch_states(circuit.clone(), start, stop));

        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tallies = Vec::new();
        let mut phase_starts = Vec::new();
        for (n, phase) in phases.iter().enumerate() {
            server.healthy.store(phase.healthy, Ordering::SeqCst);
            let phase_start = Instant::now();
            phase_starts.push(phase_start - start);
            println!(
                "[{:>7}] phase {}/{}: {} for {:.1} s",
                stamp(phase_start - start),
                n + 1,
                phases.len(),
                phase.name,
                phase.duration.as_secs_f64()
            );
            let reached_before = server.requests.load(Ordering::SeqCst);
            let deadline = phase_start + phase.duration;
            let mut tally = Tally::default();
            loop {
                ticker.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                tally.sent += 1;
                match timeout(REQUEST_TIMEOUT, get(&mut svc, &uri)).await {
                    Ok(Ok(StatusCode::OK)) => tally.ok += 1,
                    Ok(Ok(StatusCode::SERVICE_UNAVAILABLE)) => tally.unavailable += 1,
                    Ok(Err(err)) if err.is::<CircuitOpen>() => tally.rejected += 1,
                    Ok(Ok(_)) | Ok(Err(_)) | Err(_) => tally.errors += 1,
                }
            }
            tally.reached = server.requests.load(Ordering::SeqCst) - reached_before;
            tally.elapsed = phase_start.elapsed();
            tallies.push(tally);
        }
        let end = Instant::now() - start;

        // Let the watcher print what is left, then stop it.
        let _ = stop_watching.send(());
        let changes = match timeout(SHUTDOWN_TIMEOUT, watcher).await {
            Ok(Ok(changes)) => changes,
            _ => Vec::new(),
        };

        print_table(&phases, &tallies);
        println!();
        summarize(&tallies, &changes, &phase_starts, end, &circuit);

        server.shutdown().await;
        Ok(())
    }

    /// One `GET` through the breaker: the status, or the breaker's error.
    async fn get<S>(svc: &mut S, uri: &Uri) -> Result<StatusCode, BoxError>
    where
        S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = BoxError>,
    {
        let req = Request::get(uri.clone()).body(Empty::new())?;
        let res = svc.ready().await?.call(req).await?;
        let status = res.status();
        // Read the body to the end so that the connection is reused.
        res.into_body().collect().await?;
        Ok(status)
    }

    /// Prints every state change the circuit publishes, with a timestamp, until
    /// told to stop; returns them.
    async fn watch_states(
        circuit: Circuit,
        start: Instant,
        mut stop: oneshot::Receiver<()>,
    ) -> Vec<(Duration, State)> {
        let mut rx = circuit.subscribe();
        let mut previous = *rx.borrow_and_update();
        let mut changes = Vec::new();
        println!("[{:>7}] circuit: {previous}", stamp(Duration::ZERO));
        loop {
            tokio::select! {
                // Changes first, so that none is left unprinted when told to stop.
                biased;
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = *rx.borrow_and_update();
                    let at = Instant::now() - start;
                    let detail = match circuit.snapshot().open_until {
                        Some(until) if state == State::Open => format!(
                            "  (rejecting calls for {:.1} s)",
                            until.saturating_duration_since(Instant::now()).as_secs_f64()
                        ),
                        _ => String::new(),
                    };
                    if state == previous {
                        // A watch channel keeps only the latest value: a burst
                        // of changes between two looks shows as one.
                        println!("[{:>7}] circuit: {state} again{detail}", stamp(at));
                    } else {
                        println!("[{:>7}] circuit: {previous} -> {state}{detail}", stamp(at));
                    }
                    changes.push((at, state));
                    previous = state;
                }
                _ = &mut stop => break,
            }
        }
        changes
    }

    fn stamp(d: Duration) -> String {
        format!("{:.3}s", d.as_secs_f64())
    }

    fn print_table(phases: &[Phase], tallies: &[Tally]) {
        println!(
            "\n{:<24} {:>6} {:>6} {:>8} {:>6} {:>6} {:>9} {:>7}",
            "phase", "time", "sent", "reached", "ok", "503", "rejected", "errors"
        );
        let row = |name: &str, t: &Tally| {
            println!(
                "{:<24} {:>5.1}s {:>6} {:>8} {:>6} {:>6} {:>9} {:>7}",
                name,
                t.elapsed.as_secs_f64(),
                t.sent,
                t.reached,
                t.ok,
                t.unavailable,
                t.rejected,
                t.errors
            );
        };
        let mut total = Tally::default();
        for (n, (phase, tally)) in phases.iter().zip(tallies).enumerate() {
            row(&format!("{}. {}", n + 1, phase.name), tally);
            total.add(tally);
        }
        row("total", &total);
        println!(
            "sent: requests the caller made; reached: requests the server received; \
             rejected: failed fast with CircuitOpen"
        );
    }

    fn summarize(
        tallies: &[Tally],
        changes: &[(Duration, State)],
        phase_starts: &[Duration],
        end: Duration,
        circuit: &Circuit,
    ) {
        if let (Some(failing), Some(&failing_start)) = (tallies.get(1), phase_starts.get(1)) {
            if failing.sent > 0 {
                println!(
                    "while the server failed, the breaker kept {} of {} requests ({:.0}%) off it",
                    failing.sent.saturating_sub(failing.reached),
                    failing.sent,
                    100.0 * failing.sent.saturating_sub(failing.reached) as f64
                        / failing.sent as f64
                );
            }
            if let Some((at, _)) = changes
                .iter()
                .find(|(at, s)| *at >= failing_start && *s == State::Open)
            {
                println!(
                    "the circuit opened {:.2} s after the server started failing",
                    (*at - failing_start).as_secs_f64()
                );
            }
        }
        if let Some(&recovered) = phase_starts.get(2) {
            match changes
                .iter()
                .find(|(at, s)| *at >= recovered && *s == State::Closed)
            {
                Some((at, _)) => println!(
                    "the circuit closed {:.2} s after the server recovered \
                     (it waited out its open period, then 3 probes succeeded)",
                    (*at - recovered).as_secs_f64()
                ),
                None => println!(
                    "the circuit had not closed {:.2} s after the server recovered",
                    (end - recovered).as_secs_f64()
                ),
            }
        }
        println!("final state: {}", circuit.state());
    }

    /// A compact HTTP/1 server on loopback: answers `200 ok` or `503`, counts
    /// requests, one task per connection.
    struct Server {
        addr: SocketAddr,
        healthy: Arc<AtomicBool>,
        requests: Arc<AtomicU64>,
        stop: watch::Sender<()>,
        accept: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start() -> std::io::Result<Self> {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let addr = listener.local_addr()?;
            let healthy = Arc::new(AtomicBool::new(true));
            let requests = Arc::new(AtomicU64::new(0));
            let (stop, stopped) = watch::channel(());
            let accept = tokio::spawn(accept_loop(
                listener,
                healthy.clone(),
                requests.clone(),
                stopped,
            ));
            Ok(Self {
                addr,
                healthy,
                requests,
                stop,
                accept,
            })
        }

        async fn shutdown(self) {
            drop(self.stop);
            let _ = timeout(SHUTDOWN_TIMEOUT, self.accept).await;
        }
    }

    async fn accept_loop(
        listener: TcpListener,
        healthy: Arc<AtomicBool>,
        requests: Arc<AtomicU64>,
        mut stopped: watch::Receiver<()>,
    ) {
        loop {
            let stream = tokio::select! {
                _ = stopped.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            let (healthy, requests) = (healthy.clone(), requests.clone());
            let service = service_fn(move |_req: Request<Incoming>| {
                requests.fetch_add(1, Ordering::SeqCst);
                let (status, body) = if healthy.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                };
                let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *res.status_mut() = status;
                async move { Ok::<_, Infallible>(res) }
            });
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stopped.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = timeout(SHUTDOWN_TIMEOUT, conn).await;
                    }
                }
            });
        }
    }
}
