//! A generated tonic client over three real tonic servers, through
//! `ReplicaStack::build_grpc` with `grpc.health.v1` checks.
//!
//! ```text
//! cargo run --release --features grpc --example tonic_replicas
//! ```
//!
//! Three server processes (this binary, run again as a server) answer gRPC
//! on loopback with tonic-health's `grpc.health.v1` service. Four callers
//! send calls through the stack for about 10 s, in four phases:
//!
//! 1. all three up;
//! 2. `b` reports `NOT_SERVING` for the checked service: its check takes
//!    it out, and traffic moves to `a` and `c`;
//! 3. `c` is killed (SIGKILL): calls in flight on it are retried
//!    elsewhere, and no call fails (with one replica of three passing its
//!    checks, the pool is below its panic threshold and spreads calls over
//!    every replica that answers, `b` included);
//! 4. `b` reports `SERVING` again and `c` is started again on its port:
//!    both are back in rotation.
//!
//! For each phase it prints the calls, the failed calls, the attempts each
//! server got, and each replica's health at the end of the phase. It exits
//! with status 1 if a call failed.
//!
//! The traffic is `grpc.health.v1.Health/Check` for the whole server
//! (service `""`), through tonic-health's generated client: a generated
//! client of a service of your own sits on the stack the same way. The
//! checks ask about [`CHECKED`], the service a server can report as down.
//!
//! All traffic stays on 127.0.0.1; the servers exit with this process.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use steadfast::grpc::GrpcCheck;
use steadfast::health::HealthChecks;
use steadfast::pool::{Health, PoolHandle, Replica};
use steadfast::presets::ReplicaStack;
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// The service the checks ask about: what a server reports as down.
const CHECKED: &str = "steadfast.example.Search";
/// Set in a child's environment: serve on this port.
const SERVER_ENV: &str = "STEADFAST_TONIC_SERVER_PORT";
/// How long each phase lasts.
const PHASE: Duration = Duration::from_millis(2_500);
/// Callers sending calls at once.
const CALLERS: usize = 4;
/// The pause between a caller's calls.
const PAUSE: Duration = Duration::from_millis(5);
/// How often, and how far apart, a server tries to take its port.
const BIND_TRIES: u32 = 50;
const BIND_PAUSE: Duration = Duration::from_millis(100);
/// The replicas' names, in order.
const NAMES: [&str; 3] = ["a", "b", "c"];

fn main() {
    if let Ok(port) = std::env::var(SERVER_ENV) {
        let port = port.parse().expect("a port");
        serve(port);
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let failed = runtime.block_on(run());
    std::process::exit(i32::from(failed > 0));
}

/// The server: `grpc.health.v1` on `port`, `CHECKED` serving, until its
/// stdin closes. A line `down` on stdin makes `CHECKED` `NOT_SERVING`,
/// `up` serving again.
fn serve(port: u16) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(CHECKED, ServingStatus::Serving)
            .await;
        let listener = bind(port).await;
        let (lines, mut control) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
            // The parent is gone: so is this server.
            std::process::exit(0);
        });
        tokio::spawn(async move {
            while let Some(line) = control.recv().await {
                let status = match line.trim() {
                    "down" => ServingStatus::NotServing,
                    _ => ServingStatus::Serving,
                };
                reporter.set_service_status(CHECKED, status).await;
            }
        });
        println!("ready");
        Server::builder()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("the server runs");
    });
}

/// A listener on `port`, waiting up to 5 s for it to be free (a restarted
/// server takes its port back; a client reconnecting to it may hold it
/// for a moment).
async fn bind(port: u16) -> tokio::net::TcpListener {
    for _ in 0..BIND_TRIES {
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
        tokio::time::sleep(BIND_PAUSE).await;
    }
    eprintln!("port {port} stayed taken");
    std::process::exit(2);
}

/// One server process.
struct ServerProcess {
    port: u16,
    child: Child,
    control: ChildStdin,
}

impl ServerProcess {
    /// Starts a server on `port` and waits until it listens.
    fn start(port: u16) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env(SERVER_ENV, port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("a server process");
        let control = child.stdin.take().expect("its stdin");
        let stdout = child.stdout.take().expect("its stdout");
        let mut ready = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut ready)
            .expect("the server starts");
        assert_eq!(ready.trim(), "ready", "the server did not start");
        Self {
            port,
            child,
            control,
        }
    }

    /// Tells the server to report its checked service `down` or `up`.
    fn report(&mut self, status: &str) {
        writeln!(self.control, "{status}").expect("the server reads");
    }

    /// Kills the process (SIGKILL) and waits for it to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    listener.local_addr().expect("an address").port()
}

/// What the callers saw in one phase.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    failed: AtomicU64,
}

/// Runs the four phases; returns how many calls failed.
async fn run() -> u64 {
    let mut servers: Vec<ServerProcess> = NAMES
        .iter()
        .map(|_| ServerProcess::start(free_port()))
        .collect();
    let attempts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let replicas = servers.iter().enumerate().map(|(i, server)| {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.port))
            .expect("a URI")
            .connect_lazy();
        let counted = {
            let attempts = attempts.clone();
            ServiceBuilder::new()
                .map_request(move |req| {
                    attempts[i].fetch_add(1, Ordering::Relaxed);
                    req
                })
                .service(channel.clone())
        };
        let replica = Replica::new(counted).health_check(GrpcCheck::new(channel, CHECKED));
        (NAMES[i], replica)
    });
    let parts = ReplicaStack::new("search")
        .health_checks(
            HealthChecks::default()
                .interval(Duration::from_millis(200))
                .unhealthy_interval(Duration::from_millis(100))
                .timeout(Duration::from_millis(500))
                .healthy_threshold(1)
                .unhealthy_threshold(1),
        )
        .build_grpc(replicas)
        .expect("a valid stack");
    let checks = tokio::spawn(parts.health_checks);
    let handle = parts.handle;

    let phase = Arc::new(AtomicUsize::new(0));
    let tallies: Arc<[Tally; 4]> = Arc::new(Default::default());
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let mut client = HealthClient::new(parts.service.clone());
            let (phase, tallies) = (phase.clone(), tallies.clone());
            tokio::spawn(async move {
                loop {
                    let now = phase.load(Ordering::Relaxed);
                    let Some(tally) = tallies.get(now) else {
                        return;
                    };
                    let call = client.check(HealthCheckRequest {
                        service: String::new(),
                    });
                    tally.calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(status) = call.await {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("call failed: {status:?}");
                    }
                    tokio::time::sleep(PAUSE).await;
                }
            })
        })
        .collect();

    println!(
        "{:<34} {:>6} {:>7} {:>7} {:>7} {:>7}   health at the end (a / b / c)",
        "phase", "calls", "failed", "on a", "on b", "on c"
    );
    let titles = [
        "1. all up",
        "2. b NOT_SERVING",
        "3. c killed too",
        "4. b SERVING, c started again",
    ];
    for (number, title) in titles.iter().enumerate() {
        match number {
            1 => servers[1].report("down"),
            2 => servers[2].kill(),
            3 => {
                servers[1].report("up");
                let port = servers[2].port;
                servers[2] = ServerProcess::start(port);
            }
            _ => {}
        }
        let before: Vec<u64> = attempts.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        tokio::time::sleep(PHASE).await;
        let on: Vec<u64> = attempts
            .iter()
            .zip(&before)
            .map(|(a, b)| a.load(Ordering::Relaxed) - b)
            .collect();
        let tally = &tallies[number];
        println!(
            "{:<34} {:>6} {:>7} {:>7} {:>7} {:>7}   {}",
            title,
            tally.calls.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            on[0],
            on[1],
            on[2],
            health(&handle),
        );
        phase.store(number + 1, Ordering::Relaxed);
    }
    for caller in callers {
        let _ = caller.await;
    }
    checks.abort();
    let failed: u64 = tallies
        .iter()
        .map(|t| t.failed.load(Ordering::Relaxed))
        .sum();
    println!(
        "\nIn phase 3 only `a` passes its checks: one of three is below the pool's panic \
         threshold (half), so it spreads calls over every replica that answers rather than \
         crush the last one (`b` answers calls; only its checked service is down). \
         A recovered replica is `Recovering` until its failback wait ends; it takes \
         traffic meanwhile."
    );
    println!("\n{failed} calls failed");
    failed
}

/// Each replica's health, in order.
fn health<S: Clone>(handle: &PoolHandle<&'static str, S>) -> String {
    let snapshot = handle.snapshot();
    NAMES
        .iter()
        .map(|name| {
            snapshot
                .iter()
                .find(|r| r.id == *name)
                .map_or_else(|| "gone".to_owned(), |r| short(&r.health))
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A replica's health, without the instants it carries.
fn short(health: &Health) -> String {
    let text = format!("{health:?}");
    match text.split_once(' ') {
        Some((name, _)) => name.to_owned(),
        None => text,
    }
}
