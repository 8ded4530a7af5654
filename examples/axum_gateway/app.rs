//! The gateway itself: two upstreams behind steadfast stacks, and the axum
//! router that serves them with `/metrics`, `/ready` and `/status`. Shared
//! by the example (`main.rs`) and its test (`tests/gateway.rs`).

// The test uses a part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode, Uri};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use steadfast::circuit_breaker::{Circuit, State as CircuitState};
use steadfast::error::{BoxError, ConfigError};
use steadfast::health::HttpCheck;
use steadfast::http::{ShedWhenOpenLayer, error_response};
use steadfast::pool::{Health, PoolHandle, Replica};
use steadfast::presets::{
    HttpClient as HttpClientPreset, HttpClientService, ReplicaStack, ReplicaStackService,
};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};

/// The body the gateway's client sends upstream.
pub type Body = Empty<Bytes>;
/// The hyper-util client every upstream call goes through.
pub type HttpClient = Client<HttpConnector, Body>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The part of the configuration file the gateway reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub upstreams: Upstreams,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub payments: HttpClientPreset,
    pub search: ReplicaStack,
}

// ----------------------------------------------------------- upstreams

/// An upstream server on loopback: answers `ok` (and `/health`), or 503 to
/// everything while broken.
pub struct Upstream {
    pub addr: SocketAddr,
    broken: Arc<AtomicBool>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("an address");
        let broken = Arc::new(AtomicBool::new(false));
        let state = broken.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let broken = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let broken = broken.load(Ordering::Relaxed);
                        async move {
                            let (status, body) = if broken {
                                (StatusCode::SERVICE_UNAVAILABLE, "broken")
                            } else {
                                (StatusCode::OK, "ok")
                            };
                            let mut res = Response::new(Full::new(Bytes::from(body)));
                            *res.status_mut() = status;
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, broken }
    }

    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::Relaxed);
    }

    pub fn uri(&self, path: &str) -> Uri {
        format!("http://{}{path}", self.addr)
            .parse()
            .expect("a URI")
    }
}

/// The shared client pointed at one upstream: every request goes to its
/// address, with the request's path.
#[derive(Clone)]
pub struct To {
    client: HttpClient,
    addr: SocketAddr,
}

impl Service<Request<Body>> for To {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Body>>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        *req.uri_mut() = format!("http://{}{path}", self.addr)
            .parse()
            .expect("a URI");
        self.client.request(req)
    }
}

// -------------------------------------------------------------- gateway

/// What the handlers call, and what `/ready` and `/status` read.
#[derive(Clone)]
pub struct Gateway {
    payments: HttpClientService<To>,
    pub payments_circuit: Circuit,
    search: ReplicaStackService<String, To>,
    pub search_pool: PoolHandle<String, tower::timeout::Timeout<To>>,
    metrics: PrometheusHandle,
}

/// Everything the gateway runs: its state, and the background work the
/// search pool needs (health checks and upkeep), to be spawned.
pub struct Parts {
    pub gateway: Gateway,
    pub background: Vec<futures::future::BoxFuture<'static, ()>>,
}

impl Gateway {
    /// The stacks over `payments` and the `search` replicas, as `config`
    /// sets them. Build them after the metrics recorder is installed.
    pub fn build(
        config: &Config,
        payments: &Upstream,
        search: &[Upstream],
        metrics: PrometheusHandle,
    ) -> Result<Parts, ConfigError> {
        let client = client();
        let to = |addr| To {
            client: client.clone(),
            addr,
        };
        let layer = config.upstreams.payments.clone().build()?;
        let payments_circuit = layer.circuit().clone();
        let payments = layer.layer(to(payments.addr));
        let replicas = search.iter().enumerate().map(|(i, upstream)| {
            let name = format!("search-{i}");
            let check = HttpCheck::new(client.clone(), upstream.uri("/health"));
            (name, Replica::new(to(upstream.addr)).health_check(check))
        });
        let parts = config.upstreams.search.clone().build(replicas)?;
        Ok(Parts {
            gateway: Gateway {
                payments,
                payments_circuit,
                search: parts.service,
                search_pool: parts.handle,
                metrics,
            },
            background: vec![parts.health_checks, parts.upkeep],
        })
    }

    /// Takes new settings at run time, keeping what the stacks learnt: the
    /// payments circuit's and the search pool's (the timeouts and attempt
    /// caps are fixed once built). Each upstream's settings apply whole, or
    /// are refused and its old ones stay. (A file read through
    /// `steadfast::config` was checked as it was read.)
    pub fn apply(&self, config: &Config) -> Result<(), ConfigError> {
        let upstreams = &config.upstreams;
        self.payments_circuit
            .apply(&upstreams.payments.breaker_settings())?;
        self.search_pool.apply(&upstreams.search.pool_settings())
    }

    /// Ready while every critical upstream can be called: the payments
    /// circuit is not open, and search has a replica taking traffic.
    /// The reasons it is not, otherwise.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut down = Vec::new();
        let state = self.payments_circuit.state();
        if matches!(state, CircuitState::Open | CircuitState::ForcedOpen) {
            down.push(format!("payments: circuit {state}"));
        }
        let up = self.replicas_up();
        if up == 0 {
            down.push("search: no replica takes traffic".to_owned());
        }
        if down.is_empty() { Ok(()) } else { Err(down) }
    }

    /// The search replicas taking traffic.
    pub fn replicas_up(&self) -> usize {
        self.search_pool
            .snapshot()
            .iter()
            .filter(|r| matches!(r.health, Health::Healthy | Health::Recovering { .. }))
            .count()
    }

    /// The state of every upstream, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let circuit = self.payments_circuit.snapshot();
        let replicas: Vec<_> = self
            .search_pool
            .snapshot()
            .into_iter()
            .map(|r| {
                serde_json::json!({
                    "replica": r.id,
                    "health": health(r.health),
                    "in_flight": r.in_flight,
                })
            })
            .collect();
        serde_json::json!({
            "ready": self.readiness().is_ok(),
            "payments": {
                "circuit": circuit.state.as_str(),
                "calls": circuit.calls,
                "failures": circuit.failures,
                "failure_rate": circuit.failure_rate(),
            },
            "search": { "replicas": replicas },
        })
    }
}

/// How a replica stands, in words for a status page.
fn health(health: Health) -> String {
    let left = |until: tokio::time::Instant| {
        until
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs_f64()
    };
    match health {
        Health::Healthy => "healthy".to_owned(),
        Health::Failing { in_a_row } => format!("failing ({in_a_row} in a row)"),
        Health::Recovering { until } => format!("recovering ({:.1} s more)", left(until)),
        Health::Ejected { until } => format!("ejected ({:.1} s more)", left(until)),
        Health::Avoided { until } => format!("avoided ({:.1} s more)", left(until)),
        Health::FailingChecks => "failing its health checks".to_owned(),
        Health::CircuitOpen => "circuit open".to_owned(),
        Health::Draining => "draining".to_owned(),
        Health::Disabled => "disabled".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Reads an upstream's answer for the gateway's caller.
async fn relay(res: Result<Response<Incoming>, BoxError>) -> Response<String> {
    let res = match res {
        Ok(res) => res,
        Err(err) => return error_response(err),
    };
    let status = res.status();
    let body = match res.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(err) => return error_response(err.into()),
    };
    let mut answer = Response::new(body);
    *answer.status_mut() = status;
    answer
}

async fn pay(State(gateway): State<Gateway>) -> Response<String> {
    let req = Request::get("/pay").body(Body::new()).expect("a request");
    relay(gateway.payments.oneshot(req).await).await
}

async fn search(State(gateway): State<Gateway>) -> Response<String> {
    let req = Request::get("/search")
        .body(Body::new())
        .expect("a request");
    relay(gateway.search.oneshot(req).await).await
}

async fn ready(State(gateway): State<Gateway>) -> (StatusCode, String) {
    match gateway.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(down) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", down.join("; ")),
        ),
    }
}

async fn status(
    State(gateway): State<Gateway>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let json = serde_json::to_string_pretty(&gateway.status()).unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
}

async fn metrics(State(gateway): State<Gateway>) -> String {
    gateway.metrics.render()
}

/// The gateway's routes: `/pay` sheds its load while the payments circuit
/// is open; `/search`; and the operations endpoints.
pub fn router(gateway: Gateway) -> Router {
    let circuit = gateway.payments_circuit.clone();
    Router::new()
        .route("/pay", get(pay))
        .route_layer(ShedWhenOpenLayer::new(circuit))
        .route("/search", get(search))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

/// Serves `router` on a free loopback port.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// `GET path` on the gateway at `addr`: the status and the body.
pub async fn get_from(client: &HttpClient, addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let uri: Uri = format!("http://{addr}{path}").parse().expect("a URI");
    let req = Request::get(uri).body(Body::new()).expect("a request");
    match client.request(req).await {
        Ok(res) => {
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            (status, body)
        }
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

/// One sample of a Prometheus text exposition.
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .strip_suffix('}')?
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            Some((k.to_owned(), v.trim_matches('"').to_owned()))
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), Vec::new()),
            };
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

/// The sum of the samples of `name` in `exposition` whose labels include
/// `labels`; `None` if there is none.
pub fn value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_exposition(exposition)
        .into_iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}
