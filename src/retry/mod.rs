//! Retries: try a failed call again, with backoff, while a budget allows.
//!
//! [`RetryLayer`] retries a call when its [`Classify`](crate::classify::Classify)
//! verdict is a retryable failure, up to a maximum of attempts, waiting a
//! [`Backoff`](crate::backoff::Backoff) delay (or the server's pushback, if
//! longer and within a cap) between attempts. Before every retry it checks,
//! in order: attempts left, that the request can be sent again
//! ([`Replay`](crate::attempt::Replay)), that the delay ends before the
//! deadline, and last that the
//! [`RetryBudget`](crate::budget::RetryBudget) allows one more attempt.
//! When any says no, the caller gets the last real outcome — never a
//! "budget exhausted" error of the layer's own.
//!
//! # Why a budget
//!
//! See [`budget`](crate::budget): a maximum of attempts alone multiplies the
//! load on a failing dependency exactly when it can least take it.
//!
//! # Under and over other layers
//!
//! Stacked with a hedge (or another retry), the layers keep one record per
//! original request ([`attempt`](crate::attempt)): the outermost deposits
//! it in the budget once, attempt numbers run on across layers, and
//! `max_attempts` of the outermost layer caps every attempt, hedges
//! included. A pool below sends each retry to a replica not yet tried. A
//! hedge below sends its own extra attempt at once on a retryable failure:
//! that attempt waits out no backoff of this layer's and checks no deadline
//! of its own (the total timeout above still bounds it).
//!
//! # HTTP
//!
//! With [`HttpReplay`](crate::http::HttpReplay), only requests that may be
//! sent twice are retried (RFC 9110 idempotent methods, an
//! `Idempotency-Key` header, or an [`Idempotent`](crate::http::Idempotent)
//! extension), and each attempt carries an
//! [`Attempt`](crate::attempt::Attempt) extension. Wrap a
//! streaming body in [`ReplayBody`](crate::http::ReplayBody) so it can be
//! sent again; past its cap the request is simply not retried.
//!
//! # Cost
//!
//! On the happy path: a budget deposit (one clock read, no shared write),
//! a copy of the
//! request kept for replay, a clone of the inner service (tower's
//! contract), and the attempt record lent to the layers below through a
//! thread-local slot: no allocation, no lock. A deadline adds one clock
//! read.
//!
//! # Metrics
//!
//! Labelled `name`: `steadfast_retry_attempts_total`,
//! `steadfast_retry_retries_total{reason="failure"|"pushback"}`,
//! `steadfast_retry_refused_total{reason="max_attempts"|"budget"|"deadline"|"not_replayable"}`,
//! and the budget's `steadfast_budget_exhausted_total`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use steadfast::backoff::Backoff;
//! use steadfast::budget::RetryBudget;
//! use steadfast::retry::RetryLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // One budget for every layer that adds attempts to this upstream.
//! let budget = Arc::new(RetryBudget::builder().name("inventory").build()?);
//! let retry = RetryLayer::builder()
//!     .name("inventory")
//!     .max_attempts(3)
//!     .backoff(Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1)))
//!     .budget(budget.clone())
//!     .deadline(Duration::from_secs(2))
//!     .build()?;
//!
//! // A dependency that fails twice, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let mut svc = ServiceBuilder::new().layer(retry).service_fn({
//!     let calls = calls.clone();
//!     move |req: u32| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move { if n < 2 { Err("flaky") } else { Ok(req * 2) } }
//!     }
//! });
//!
//! assert_eq!(svc.ready().await?.call(21).await?, 42);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(())
//! # }
//! ```

mod config;
pub mod future;
mod layer;
mod service;

pub use self::config::{Builder, MAX_ATTEMPTS};
pub use self::layer::RetryLayer;
pub use self::service::Retry;
