//! An axum gateway in front of two upstreams, with Prometheus metrics, a
//! readiness endpoint that tells the truth, and a status page.
//!
//! ```text
//! cargo run --release --features serde --example axum_gateway            # about 30 s
//! cargo run --release --features serde --example axum_gateway -- --quick # about 10 s
//! ```
//!
//! The example starts the upstreams itself, on loopback: `payments` (one
//! server, behind `presets::HttpClient`) and `search` (three replicas,
//! behind `presets::ReplicaStack` with HTTP health checks). Their settings
//! come from `examples/steadfast.toml` (the `upstreams` section; another
//! file with `-- --config PATH`). The gateway serves:
//!
//! - `GET /pay` and `GET /search`, calling the upstreams; a failed call is
//!   answered by `steadfast::http::error_response` (503 + `Retry-After`,
//!   504, 502), and `/pay` sheds its load while the payments circuit is
//!   open (`ShedWhenOpenLayer`);
//! - `GET /metrics`: the Prometheus exposition (`metrics-exporter-prometheus`);
//! - `GET /ready`: 503 while a critical upstream is down (the payments
//!   circuit open, or no search replica taking traffic), naming it;
//! - `GET /status`: the circuit's and the replicas' state as JSON.
//!
//! It sends itself 50 requests/s on each route and breaks upstreams on a
//! timer: payments answers 503 to everything from 5 s to 15 s (`--quick`:
//! 2 s to 5 s), and one search replica from 5 s to 20 s (`--quick`: 2 s to
//! 7 s). Each second it prints what the callers got, what `/ready` said,
//! and what `/metrics` shows, so the metrics and readiness can be seen
//! moving.
//!
//! The settings file is watched while it runs: edit it (say, the search
//! pool's `outlier` rules, or the payments `breaker_window`) and the new
//! settings apply at once, through `steadfast::reload::follow`, keeping
//! the circuit's window and the pool's ejections; settings that do not
//! read or are refused are reported, and the old ones stay.
//!
//! All traffic stays on 127.0.0.1; the example exits by itself.

mod app;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use app::{Config, Gateway, Upstream};
use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::time::Instant;

/// When things break and mend, and how long it runs.
struct Timeline {
    break_at: Duration,
    payments_back_at: Duration,
    search_back_at: Duration,
    run: Duration,
}

const FULL: Timeline = Timeline {
    break_at: Duration::from_secs(5),
    payments_back_at: Duration::from_secs(15),
    search_back_at: Duration::from_secs(20),
    run: Duration::from_secs(30),
};

const QUICK: Timeline = Timeline {
    break_at: Duration::from_secs(2),
    payments_back_at: Duration::from_secs(5),
    search_back_at: Duration::from_secs(7),
    run: Duration::from_secs(10),
};

/// Requests each route gets per second.
const RATE: u32 = 50;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let t = if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    let path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/steadfast.toml").to_owned()
        });

    // The recorder first: layers register their metrics when built.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let text = std::fs::read_to_string(&path)?;
    let config: Config = steadfast::config::from_deserializer(toml::Deserializer::parse(&text)?)?;

    let payments = Upstream::start().await;
    let search = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let parts = Gateway::build(&config, &payments, &search, metrics)?;
    for work in parts.background {
        tokio::spawn(work);
    }
    let gateway = parts.gateway;
    let addr = app::serve(app::router(gateway.clone())).await;
    println!(
        "gateway on http://{addr} (/pay, /search, /metrics, /ready, /status), settings from {path}"
    );
    println!(
        "payments breaks at {:?} and mends at {:?}; search-1 breaks at {:?} and mends at {:?}\n",
        t.break_at, t.payments_back_at, t.break_at, t.search_back_at
    );

    // Reload: the file is watched (its modification time, twice a
    // second), each new version read and checked, and sent into a watch
    // channel that `steadfast::reload::follow` applies to the handles.
    let (settings, changes) = tokio::sync::watch::channel(config);
    tokio::spawn(watch_file(path.clone(), settings));
    let reloaded = gateway.clone();
    tokio::spawn(steadfast::reload::follow(
        changes,
        move |config: &Config| {
            reloaded.apply(config)?;
            println!("  -- settings reloaded: kept the circuit's window and the pool's ejections");
            Ok(())
        },
        |err: steadfast::error::ConfigError| {
            println!("  -- new settings refused, the old ones stay: {err}")
        },
    ));

    let counts = Counts::default();
    let start = Instant::now();
    let load = tokio::spawn(drive(addr, counts.clone(), start, t.run));
    let mut second =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let client = app::client();
    let mut broken = false;
    let (mut payments_back, mut search_back) = (false, false);
    loop {
        second.tick().await;
        let at = start.elapsed();
        if !broken && at >= t.break_at {
            broken = true;
            payments.set_broken(true);
            search[1].set_broken(true);
            println!("  -- payments and search-1 now answer 503 to everything");
        }
        if broken && !payments_back && at >= t.payments_back_at {
            payments_back = true;
            payments.set_broken(false);
            println!("  -- payments mended");
        }
        if broken && !search_back && at >= t.search_back_at {
            search_back = true;
            search[1].set_broken(false);
            println!("  -- search-1 mended");
        }
        report(&client, addr, &counts, at).await;
        if at >= t.run {
            break;
        }
    }
    let _ = load.await;
    let (_, status) = app::get_from(&client, addr, "/status").await;
    println!("\n/status at the end:\n{status}");
    Ok(())
}

/// Sends the settings in `path` into `settings` each time the file
/// changes and reads as valid settings; says why when it does not.
async fn watch_file(path: String, settings: tokio::sync::watch::Sender<Config>) {
    let modified = |path: &str| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        every.tick().await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let read = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                let parsed = toml::Deserializer::parse(&text).map_err(|e| e.to_string())?;
                steadfast::config::from_deserializer::<Config, _>(parsed).map_err(|e| e.to_string())
            });
        match read {
            Ok(config) => {
                if settings.send(config).is_err() {
                    return;
                }
            }
            Err(err) => println!("  -- {path} not reloaded: {err}"),
        }
    }
}

/// What the callers got, per route and status, since the last report.
#[derive(Clone, Default)]
struct Counts(Arc<std::sync::Mutex<BTreeMap<(&'static str, u16), u64>>>);

impl Counts {
    fn add(&self, route: &'static str, status: StatusCode) {
        let mut counts = self.0.lock().expect("not poisoned");
        *counts.entry((route, status.as_u16())).or_default() += 1;
    }

    fn take(&self) -> BTreeMap<(&'static str, u16), u64> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

/// Sends `RATE` requests/s to each route until `run` is over.
async fn drive(addr: std::net::SocketAddr, counts: Counts, start: Instant, run: Duration) {
    let client = app::client();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut calls = tokio::task::JoinSet::new();
    while start.elapsed() < run {
        tick.tick().await;
        for route in ["/pay", "/search"] {
            let (client, counts, in_flight) = (client.clone(), counts.clone(), in_flight.clone());
            in_flight.fetch_add(1, Ordering::Relaxed);
            calls.spawn(async move {
                let (status, _) = app::get_from(&client, addr, route).await;
                counts.add(route, status);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

/// One line: the callers' answers, `/ready`, and the metrics that moved.
async fn report(
    client: &app::HttpClient,
    addr: std::net::SocketAddr,
    counts: &Counts,
    at: Duration,
) {
    let answers = counts.take();
    let route = |name: &str| {
        let parts: Vec<String> = answers
            .iter()
            .filter(|((r, _), _)| *r == name)
            .map(|((_, status), n)| format!("{status}×{n}"))
            .collect();
        parts.join(" ")
    };
    let (ready, why) = app::get_from(client, addr, "/ready").await;
    let (_, exposition) = app::get_from(client, addr, "/metrics").await;
    let value =
        |name: &str, labels: &[(&str, &str)]| app::value(&exposition, name, labels).unwrap_or(0.0);
    let state = ["closed", "open", "half_open"]
        .into_iter()
        .find(|s| {
            value(
                "steadfast_circuit_state",
                &[("name", "payments"), ("state", s)],
            ) > 0.0
        })
        .unwrap_or("?");
    println!(
        "{:>4.0}s  /pay {:<16} /search {:<16} /ready {} {:<38} metrics: payments {state}, shed {}, rejected {}, search up {}/3, ejections {}",
        at.as_secs_f64(),
        route("/pay"),
        route("/search"),
        ready.as_u16(),
        why.trim(),
        value("steadfast_shed_total", &[("name", "payments")]),
        value("steadfast_circuit_rejected_total", &[("name", "payments")]),
        value("steadfast_replica_healthy", &[("name", "search")]),
        value("steadfast_replica_ejections_total", &[("name", "search")]),
    );
}
