//! The axum gateway example's own code (`examples/axum_gateway/app.rs`),
//! served on loopback in front of real upstreams: `/metrics` holds the
//! steadfast series after traffic (read as the Prometheus exposition it
//! is), and `/ready` turns 503 when the payments breaker opens and 200
//! again when it may close, and the breaker does close.
//!
//! The breaker opens on real failures. Its open period is then skipped
//! with paused time, with no request in flight; requests go on in real
//! time after it.

#![cfg(all(feature = "http", feature = "serde"))]

#[path = "../examples/axum_gateway/app.rs"]
mod app;

use std::collections::HashMap;
use std::time::Duration;

use app::{Config, Gateway, Upstream, value};
use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use steadfast::circuit_breaker::State;

/// The `# TYPE` of every metric in an exposition.
fn types(exposition: &str) -> HashMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

#[tokio::test]
async fn metrics_hold_the_series_and_readiness_follows_the_breaker() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let config: Config = steadfast::config::from_deserializer(
        toml::Deserializer::parse(include_str!("../examples/steadfast.toml")).expect("TOML"),
    )
    .expect("the example's settings");
    let payments = Upstream::start().await;
    let search = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    // Every layer registers its metrics when built, the router's too.
    let (parts, router) = metrics::with_local_recorder(&recorder, || {
        let parts = Gateway::build(&config, &payments, &search, handle.clone())
            .expect("the gateway builds");
        let router = app::router(parts.gateway.clone());
        (parts, router)
    });
    // No health checks run: the clock will jump, and a check in flight
    // would time out for it.
    let gateway = parts.gateway;
    let addr = app::serve(router).await;
    let client = app::client();

    for _ in 0..20 {
        assert_eq!(app::get_from(&client, addr, "/pay").await.0, StatusCode::OK);
        assert_eq!(
            app::get_from(&client, addr, "/search").await.0,
            StatusCode::OK
        );
    }
    let (status, exposition) = app::get_from(&client, addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let kinds = types(&exposition);
    for (name, kind) in [
        ("steadfast_circuit_calls_total", "counter"),
        ("steadfast_circuit_state", "gauge"),
        ("steadfast_retry_attempts_total", "counter"),
        ("steadfast_replica_selections_total", "counter"),
        ("steadfast_replica_healthy", "gauge"),
        ("steadfast_hedge_delay_seconds", "gauge"),
    ] {
        assert_eq!(kinds.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let calls = [("name", "payments"), ("outcome", "success")];
    assert_eq!(
        value(&exposition, "steadfast_circuit_calls_total", &calls),
        Some(20.0)
    );
    assert_eq!(
        value(
            &exposition,
            "steadfast_retry_attempts_total",
            &[("name", "payments")]
        ),
        Some(20.0)
    );
    assert_eq!(
        value(
            &exposition,
            "steadfast_replica_selections_total",
            &[("name", "search")]
        ),
        Some(20.0),
        "one attempt per search, summed over the replicas"
    );
    assert_eq!(
        value(
            &exposition,
            "steadfast_replica_healthy",
            &[("name", "search")]
        ),
        Some(3.0)
    );
    let closed = [("name", "payments"), ("state", "closed")];
    assert_eq!(
        value(&exposition, "steadfast_circuit_state", &closed),
        Some(1.0)
    );
    assert_eq!(
        app::get_from(&client, addr, "/ready").await.0,
        StatusCode::OK
    );

    // Payments fails everything: its breaker opens, the gateway is not
    // ready, and `/pay` is shed.
    payments.set_broken(true);
    for _ in 0..50 {
        if gateway.payments_circuit.state() == State::Open {
            break;
        }
        app::get_from(&client, addr, "/pay").await;
    }
    assert_eq!(gateway.payments_circuit.state(), State::Open);
    let (status, why) = app::get_from(&client, addr, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(why, "not ready: payments: circuit open\n");
    let (status, body) = app::get_from(&client, addr, "/pay").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "circuit `payments` is open\n");
    let (_, exposition) = app::get_from(&client, addr, "/metrics").await;
    let open = [("name", "payments"), ("state", "open")];
    assert_eq!(
        value(&exposition, "steadfast_circuit_state", &open),
        Some(1.0)
    );
    assert_eq!(
        value(&exposition, "steadfast_circuit_state", &closed),
        Some(0.0)
    );
    assert!(value(&exposition, "steadfast_shed_total", &[("name", "payments")]) >= Some(1.0));
    let status: serde_json::Value =
        serde_json::from_str(&app::get_from(&client, addr, "/status").await.1).expect("JSON");
    assert_eq!(status["ready"], false);
    assert_eq!(status["payments"]["circuit"], "open");

    // Payments mends; past the longest open period, the gateway is ready
    // again (the circuit lets its probes through), and the probes close it.
    payments.set_broken(false);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::resume();
    let client = app::client();
    assert_eq!(
        app::get_from(&client, addr, "/ready").await.0,
        StatusCode::OK
    );
    for _ in 0..10 {
        if gateway.payments_circuit.state() == State::Closed {
            break;
        }
        assert_eq!(app::get_from(&client, addr, "/pay").await.0, StatusCode::OK);
    }
    assert_eq!(gateway.payments_circuit.state(), State::Closed);
    let (_, exposition) = app::get_from(&client, addr, "/metrics").await;
    assert_eq!(
        value(&exposition, "steadfast_circuit_state", &closed),
        Some(1.0)
    );
    assert_eq!(
        app::get_from(&client, addr, "/ready").await.0,
        StatusCode::OK
    );
    drop(parts.background);
}

#[tokio::test]
async fn the_gateway_takes_new_settings_and_refuses_what_cannot_change() {
    let example = include_str!("../examples/steadfast.toml");
    let read = |text: &str| -> Result<Config, steadfast::config::ConfigFileError> {
        steadfast::config::from_deserializer(toml::Deserializer::parse(text).expect("TOML"))
    };
    let config = read(example).expect("the example's settings");
    let payments = Upstream::start().await;
    let search = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let parts = Gateway::build(&config, &payments, &search, handle).expect("the gateway builds");
    let gateway = parts.gateway;
    let router = app::router(gateway.clone());
    let addr = app::serve(router).await;
    let client = app::client();
    for _ in 0..10 {
        assert_eq!(app::get_from(&client, addr, "/pay").await.0, StatusCode::OK);
    }
    // A longer breaker window and stricter outlier rules apply, and the
    // circuit keeps the calls it counted.
    let changed = example
        .replace("breaker_window = \"30s\"", "breaker_window = \"1m\"")
        .replace(
            "consecutive_failures = 5\nfailure_percentage = { rate = 0.5, min_calls = 20 }",
            "consecutive_failures = 2\nfailure_percentage = { rate = 0.5, min_calls = 20 }",
        );
    assert_ne!(changed, example, "the edit found its lines");
    gateway
        .apply(&read(&changed).expect("valid"))
        .expect("applied");
    assert_eq!(
        gateway.payments_circuit.snapshot().calls,
        10,
        "the window is kept"
    );
    // A pool's replicas cannot gain or lose breakers at run time.
    let start = example
        .find("[upstreams.search.circuit_breaker]")
        .expect("the section");
    let end = example[start..]
        .find("\n# ---")
        .map_or(example.len(), |i| start + i);
    let without_breakers = format!("{}{}", &example[..start], &example[end..]);
    let err = gateway
        .apply(&read(&without_breakers).expect("valid on its own"))
        .expect_err("refused");
    assert_eq!(err.field(), "circuit_breaker");
    assert_eq!(gateway.payments_circuit.snapshot().calls, 10);
    drop(parts.background);
}
