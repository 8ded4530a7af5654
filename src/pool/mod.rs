//! A replica pool: failover across priority tiers and health-aware,
//! least-loaded routing, in process.
//!
//! A [`Pool`] is a `Service` over [`Replica`]s, each with a priority tier
//! (0 primary, 1 standby, …), a zone and a weight. For each request it
//! picks:
//!
//! 1. **a tier** — the lowest with enough healthy capacity. As in Envoy, a
//!    tier with a share `h` of its replicas healthy takes
//!    `min(1, h × overprovisioning)` of the traffic (default factor 1.4: a
//!    primary 60% healthy keeps 84%) and the next tier the rest;
//! 2. **a zone** — the caller's own ([`Builder::local_zone`]) while enough
//!    of its replicas are healthy, spilling the missing share to the others;
//! 3. **a replica** — the less loaded of two random candidates (power of
//!    two choices over peak-EWMA latency × (in flight + 1) / weight).
//!
//! Below the panic threshold (default 50% healthy capacity) traffic spreads
//! over every enabled replica rather than crush the few healthy ones.
//!
//! A replica is healthy unless:
//! - **passive outlier detection** ejected it: failures in a row, a failure
//!   rate, a success rate far below the fleet's, or a latency far above it
//!   ([`OutlierDetection`]); ejections grow with each one in a row and decay
//!   when clean, and at most a share of the pool is ejected at once;
//! - it **asked to be avoided** (`503` + `Retry-After`), for that long, capped;
//! - its **circuit breaker** is open ([`Builder::circuit_breaker`]);
//! - it fails its **active health checks** ([`health`](crate::health)),
//!   which run in [`Pool::health_checks`], a future you spawn;
//! - an operator **drained or disabled** it ([`PoolHandle`]).
//!
//! A recovered replica takes traffic back from a lower tier only after it
//! stayed healthy for the failback time (hysteresis).
//!
//! # Why a failure is a penalty, not a fast answer
//!
//! With plain least-loaded balancing (tower's p2c over peak-EWMA), a
//! replica that fails at once looks like the fastest one and draws most of
//! the traffic. Here a failed call counts in the load estimate as at least
//! a penalty latency (or the pushback the server asked for), besides
//! feeding outlier detection.
//!
//! # Retries and hedges go elsewhere
//!
//! Under retry and hedge layers, the pool reads the request's attempt
//! record ([`attempt`](crate::attempt)), sends each attempt to a replica the
//! request has not tried while one exists, and records where it went. It
//! takes nothing to set up, works for any request type, and costs a first
//! attempt no allocation.
//!
//! # Readiness
//!
//! Each request waits only on its own replica's readiness (the replica's
//! service is cloned for the call), so one replica that is not ready never
//! blocks the others. When no replica can take a request, the pool fails
//! at once with [`NoHealthyReplica`](crate::error::NoHealthyReplica), or
//! waits up to a bound ([`WhenNoneHealthy`]).
//!
//! # Example
//!
//! ```
//! use steadfast::pool::{OutlierDetection, Pool, Replica};
//! use tower::{Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let replica = |name: &'static str| {
//!     tower::service_fn(move |req: u32| async move { Ok::<_, std::io::Error>(format!("{name}: {req}")) })
//! };
//! let mut pool = Pool::builder()
//!     .name("inventory")
//!     .local_zone("eu-1a")
//!     .outlier(OutlierDetection::default().consecutive_failures(Some(3)))
//!     .build([
//!         ("a", Replica::new(replica("a")).zone("eu-1a")),
//!         ("b", Replica::new(replica("b")).zone("eu-1b")),
//!         ("dr", Replica::new(replica("dr")).tier(1)),
//!     ])?;
//! let handle = pool.handle();
//!
//! let answer = pool.ready().await?.call(7).await?;
//! assert_eq!(answer, "a: 7"); // the local zone is healthy: it takes the traffic
//! assert_eq!(handle.snapshot().len(), 3);
//! # Ok(())
//! # }
//! ```

mod clock;
mod config;
mod driver;
pub mod future;
mod handle;
#[cfg(all(test, steadfast_loom))]
mod loom_tests;
mod outlier;
mod replica;
mod select;
mod service;
mod shared;
mod standing;
mod table;
mod upkeep;

pub use self::config::{Builder, WhenNoneHealthy};
pub use self::handle::{PoolHandle, ReplicaSnapshot};
pub use self::outlier::OutlierDetection;
pub use self::replica::Replica;
pub use self::service::Pool;
pub use self::standing::{Health, Why};
