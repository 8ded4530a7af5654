//! Hedged requests: when an attempt is slow, send another; the first
//! success wins.
//!
//! [`HedgeLayer`] sends a request, and if no answer has come after a delay
//! — fixed, or a quantile (default p95) of recent latencies between a floor
//! and a ceiling — sends it again, up to a number of extra attempts. The
//! first **success** is the answer and the other attempts are dropped at
//! once. A retryable failure of an attempt fires the next one without
//! waiting out the delay. When every attempt fails, the caller gets the
//! last failure.
//!
//! # Why the first success, not the first response
//!
//! tower's `Hedge` returns whichever attempt finishes first, so a replica
//! that fails fast beats a healthy one that is merely slower: hedging then
//! turns a slow success into a fast error. Here a fast failure only fires
//! the next attempt.
//!
//! # Why a budget
//!
//! When latency shifts and every call looks slow, a hedge for every call
//! doubles the load on a dependency that is already struggling. Every extra
//! attempt withdraws from a [`RetryBudget`](crate::budget::RetryBudget)
//! (shareable with the retry layer), so extra load stays at the budget's
//! ratio.
//!
//! # The delay
//!
//! The adaptive delay reads a lock-free histogram of the current and the
//! previous window of latencies, recomputed at most 8 times per window. A
//! losing attempt counts as cut short, longer than every finished one, so
//! the quantile is not biased low; when more than `1 - q` of the attempts
//! were cut short (a replica that hangs), the quantile is taken over the
//! finished ones, so the delay does not climb after a hang. It
//! starts at an initial delay until enough samples are in, so hedging
//! works from the first request rather than after a whole window.
//!
//! # Cost
//!
//! A call that completes on its first poll arms no timer, and reads the
//! clock once, for its budget deposit, only when the hedge is the outermost
//! repeating layer (under a retry, the retry deposits); one that does not
//! complete at once arms one timer. Requests are copied for replay as in
//! [`retry`](crate::retry).
//!
//! # Under a retry layer
//!
//! Retry and hedge keep one record per original request
//! ([`attempt`](crate::attempt)): the retry deposits it in the budget once
//! and the hedge only withdraws (share one budget between them), attempt
//! numbers run on across both, and the retry's `max_attempts` caps every
//! attempt, hedges included; `max_extra_attempts` caps the hedges of each
//! of the retry's attempts. A pool below sends each hedge to a replica the
//! request has not tried.
//!
//! # Metrics
//!
//! Labelled `name`: `steadfast_hedge_sent_total`,
//! `steadfast_hedge_won_total`,
//! `steadfast_hedge_refused_total{reason="max_attempts"|"budget"|"not_replayable"}`
//! and the gauge `steadfast_hedge_delay_seconds`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use steadfast::budget::RetryBudget;
//! use steadfast::hedge::{HedgeDelay, HedgeLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let budget = Arc::new(RetryBudget::builder().name("search").build()?);
//! let hedge = HedgeLayer::builder()
//!     .name("search")
//!     .delay(HedgeDelay::Fixed(Duration::from_millis(20)))
//!     .budget(budget)
//!     .build()?;
//!
//! // The first attempt is stuck for a second; the second answers at once.
//! let calls = Arc::new(AtomicU32::new(0));
//! let mut svc = ServiceBuilder::new().layer(hedge).service_fn({
//!     let calls = calls.clone();
//!     move |req: u32| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             if n == 0 {
//!                 tokio::time::sleep(Duration::from_secs(1)).await;
//!             }
//!             Ok::<_, std::io::Error>(req)
//!         }
//!     }
//! });
//!
//! let started = tokio::time::Instant::now();
//! assert_eq!(svc.ready().await?.call(7).await?, 7);
//! assert_eq!(started.elapsed(), Duration::from_millis(20));
//! # Ok(())
//! # }
//! ```

mod config;
pub mod future;
mod layer;
mod service;

pub use self::config::{AdaptiveDelay, Builder, HedgeDelay, MAX_EXTRA_ATTEMPTS};
pub use self::layer::HedgeLayer;
pub use self::service::Hedge;
