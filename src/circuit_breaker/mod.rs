//! A circuit breaker: stop calling a dependency that is failing, and find out
//! by itself when it has recovered.
//!
//! ```text
//!            a rule trips                open period over
//!   Closed ───────────────▶ Open ─────────────────────────▶ HalfOpen
//!     ▲                       ▲                                │
//!     │                       └──────── a probe fails ─────────┤
//!     └──────────────────────── K probes succeed ──────────────┘
//! ```
//!
//! - **Closed**: calls go through; their outcomes, as a
//!   [`Classify`](crate::classify::Classify) judges them, fill a sliding
//!   window. The circuit trips on any rule that is on: a failure rate over
//!   the window (once it holds a minimum of calls), a slow-call rate, or N
//!   failures in a row. The rules are judged after every outcome, a success
//!   too: the success that brings the window to its minimum of calls trips
//!   a circuit whose window then holds too many failures, and so does the
//!   first outcome after a time window's old successes expire.
//! - **Open**: calls fail at once with
//!   [`CircuitOpen`](crate::error::CircuitOpen), which says when to come
//!   back; the inner service is not even polled for readiness. The open
//!   period comes from a [`Backoff`](crate::backoff::Backoff): it grows with
//!   each trip that follows a failed probe, resets when the circuit closes,
//!   and is lengthened by a server's `Retry-After` if that is longer
//!   (capped).
//! - **HalfOpen**: exactly K probe calls go through. K successes close the
//!   circuit; one failure reopens it. With a slow-call rule on, a probe that
//!   succeeds but takes the slow threshold or longer counts as a failed
//!   probe and reopens it too: a dependency that answers only slowly has
//!   not recovered from what tripped the rule. A probe whose future is
//!   dropped gives its slot back.
//!
//! An operator can override it from the [`Circuit`] handle: force it open
//! (isolate a dependency), disable it, run it in metrics-only mode (count
//! and change state, never reject), or reset it. The handle also gives the
//! state, a [`Snapshot`], and a `watch` subscription to changes.
//!
//! # Why fail fast
//!
//! A dependency that is down still costs its callers a timeout per call,
//! and the callers' retries add load to a service trying to recover. Failing
//! fast while the circuit is open frees the caller to degrade (answer from a
//! cache, a fallback) and gives the dependency room to come back; the
//! half-open probes find out when it has, without a human.
//!
//! # Cost
//!
//! A closed circuit with the default count window admits a call with one
//! atomic load and records a success with a few more loads and no stores,
//! so threads sharing one circuit do not contend. A time window reads the
//! clock once per call; the slow-call rule twice.
//!
//! # Reload
//!
//! [`Circuit::apply`] takes new settings (a [`Builder`], from code or from a
//! file with the `serde` feature) at run time, atomically, without losing
//! what the circuit learnt: its state and open period, its failures in a
//! row, and its window. A window of another size keeps the most recent
//! outcomes that fit; a time window keeps its latest buckets; between a
//! count and a time window the counts carry over (into the current bucket,
//! or spread evenly over the count window). Invalid settings are refused
//! and the old ones stay.
//!
//! # Metrics
//!
//! With a `metrics` recorder installed before the layer is built, labelled
//! `name`: `steadfast_circuit_state{state}` (1 for the current state, 0 for
//! the others), `steadfast_circuit_calls_total{outcome}`,
//! `steadfast_circuit_slow_calls_total`, `steadfast_circuit_rejected_total`.
//! With the `tracing` feature, every transition is an event.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use steadfast::backoff::Backoff;
//! use steadfast::circuit_breaker::{CircuitBreakerLayer, SlidingWindow, State};
//! use steadfast::error::{BoxError, CircuitOpen};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = CircuitBreakerLayer::builder()
//!     .name("inventory")
//!     .failure_rate(0.5)
//!     .window(SlidingWindow::count(20))
//!     .min_calls(4)
//!     .open_backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)))
//!     .build()?;
//! let circuit = layer.circuit().clone();
//!
//! // A dependency that always fails.
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: ()| async { Err::<(), _>(std::io::Error::other("down")) });
//!
//! for _ in 0..4 {
//!     let _ = svc.ready().await?.call(()).await;
//! }
//! assert_eq!(circuit.state(), State::Open);
//!
//! // Now calls fail fast, without reaching the dependency.
//! let err = svc.ready().await?.call(()).await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().unwrap();
//! assert!(open.retry_after().is_some()); // about a second
//! # Ok(())
//! # }
//! ```

mod circuit;
mod config;
pub mod future;
mod layer;
mod service;
mod state;

pub(crate) use self::circuit::CircuitPermit;
pub use self::circuit::{Circuit, Snapshot, State};
pub use self::config::{Builder, MAX_BUCKETS, MAX_PROBES, MAX_WINDOW_CALLS, SlidingWindow};
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreaker;
