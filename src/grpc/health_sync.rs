//! A server's own `grpc.health.v1` status, kept in step with the
//! dependencies it cannot serve without: [`HealthSync`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::circuit_breaker::{Circuit, State};
use crate::pool::{Health, PoolHandle};

/// How often the dependencies are looked at again with no change
/// announced: an open period runs out without an event (a circuit turns
/// half-open when a call or a look finds its period over).
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// A pool the server depends on: whether a replica takes traffic, and its
/// change notifications.
struct PoolDependency {
    name: String,
    up: Box<dyn Fn() -> bool + Send + Sync>,
    changes: watch::Receiver<u64>,
}

/// Keeps a tonic server's `grpc.health.v1` status for a service (through
/// tonic-health's `HealthReporter`) in step with the dependencies it cannot
/// serve without: `NOT_SERVING` at once while a circuit is open (or forced
/// open) or a pool has no replica taking traffic, `SERVING` again once all
/// of them have been back for the hold-down, so that a dependency that
/// flaps does not flap the server in its clients' pools.
///
/// It is the server side of what a steadfast client does: clients that
/// check this server with [`GrpcCheck`](super::GrpcCheck) (or any gRPC
/// health checker) move their traffic to a replica whose dependencies
/// are up.
///
/// [`run`](Self::run) is a future: spawn it, and drop (or abort) it to
/// stop; it holds the handles it watches.
///
/// ```
/// use std::time::Duration;
/// use steadfast::CircuitBreakerLayer;
/// use steadfast::grpc::HealthSync;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steadfast::error::ConfigError> {
/// let (reporter, health_service) = tonic_health::server::health_reporter();
/// let payments = CircuitBreakerLayer::builder().name("payments").build()?;
/// let sync = HealthSync::new(reporter, "shop.v1.Checkout")
///     .circuit(payments.circuit().clone())
///     .hold_down(Duration::from_secs(5));
/// tokio::spawn(sync.run());
/// // ... serve `health_service` beside the checkout service.
/// # drop(health_service);
/// # Ok(())
/// # }
/// ```
pub struct HealthSync {
    reporter: HealthReporter,
    service: String,
    circuits: Vec<Circuit>,
    pools: Vec<PoolDependency>,
    hold_down: Duration,
}

impl fmt::Debug for HealthSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthSync")
            .field("service", &self.service)
            .field(
                "circuits",
                &self.circuits.iter().map(Circuit::name).collect::<Vec<_>>(),
            )
            .field(
                "pools",
                &self
                    .pools
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("hold_down", &self.hold_down)
            .finish_non_exhaustive()
    }
}

/// Why the server is not serving, if it is not.
fn down_because(circuits: &[Circuit], pools: &[PoolDependency]) -> Option<String> {
    for circuit in circuits {
        if matches!(circuit.state(), State::Open | State::ForcedOpen) {
            return Some(format!("circuit `{}` is open", circuit.name()));
        }
    }
    for pool in pools {
        if !(pool.up)() {
            return Some(format!(
                "pool `{}` has no replica taking traffic",
                pool.name
            ));
        }
    }
    None
}

impl HealthSync {
    /// Reports `service`'s status (the empty name is the server as a
    /// whole) through `reporter`; no dependency yet, a hold-down of 5 s.
    pub fn new(reporter: HealthReporter, service: impl Into<String>) -> Self {
        Self {
            reporter,
            service: service.into(),
            circuits: Vec::new(),
            pools: Vec::new(),
            hold_down: Duration::from_secs(5),
        }
    }

    /// Not serving while `circuit` is open.
    #[must_use]
    pub fn circuit(mut self, circuit: Circuit) -> Self {
        self.circuits.push(circuit);
        self
    }

    /// Not serving while `pool` has no replica taking traffic.
    #[must_use]
    pub fn pool<K, S>(mut self, name: impl Into<String>, pool: PoolHandle<K, S>) -> Self
    where
        K: Clone + PartialEq + Send + Sync + 'static,
        S: Clone + Send + Sync + 'static,
    {
        let changes = pool.subscribe();
        self.pools.push(PoolDependency {
            name: name.into(),
            up: Box::new(move || {
                pool.snapshot()
                    .iter()
                    .any(|r| matches!(r.health, Health::Healthy | Health::Recovering { .. }))
            }),
            changes,
        });
        self
    }

    /// How long every dependency must be back before the server reports
    /// `SERVING` again (zero: at once). Going down is never held.
    #[must_use]
    pub fn hold_down(mut self, hold_down: Duration) -> Self {
        self.hold_down = hold_down;
        self
    }

    /// Keeps the status in step: a future to spawn. It reports the status
    /// at once, then on every change of a dependency (and every
    /// 250 ms, for an open period that runs out without an event).
    pub fn run(self) -> impl Future<Output = ()> + Send + 'static {
        let Self {
            reporter,
            service,
            circuits,
            mut pools,
            hold_down,
        } = self;
        let mut states: Vec<watch::Receiver<State>> =
            circuits.iter().map(Circuit::subscribe).collect();
        async move {
            // The status reported, and since when every dependency is up.
            let mut reported: Option<ServingStatus> = None;
            let mut up_since: Option<Instant> = None;
            loop {
                let now = Instant::now();
                let status = match down_because(&circuits, &pools) {
                    Some(_why) => {
                        up_since = None;
                        ServingStatus::NotServing
                    }
                    None => {
                        let since = *up_since.get_or_insert(now);
                        let held = reported.is_none()
                            || reported == Some(ServingStatus::Serving)
                            || now.saturating_duration_since(since) >= hold_down;
                        if held {
                            ServingStatus::Serving
                        } else {
                            ServingStatus::NotServing
                        }
                    }
                };
                if reported != Some(status) {
                    reporter.set_service_status(&service, status).await;
                    #[cfg(feature = "tracing")]
                    tracing::info!(service = %service, ?status, "health status reported");
                    reported = Some(status);
                }
                // The next look: a change, the end of the hold-down, or the
                // periodic look.
                let mut wait = LOOK_AGAIN;
                if let (Some(since), Some(ServingStatus::NotServing)) = (up_since, reported) {
                    wait = wait.min(hold_down.saturating_sub(now.saturating_duration_since(since)));
                }
                let changed = changes(&mut states, &mut pools);
                if let Ok(false) = tokio::time::timeout(wait, changed).await {
                    // Every dependency is gone.
                    return;
                }
            }
        }
    }
}

/// Waits for a change of any dependency: `false` if every one is gone
/// (their senders dropped; not while this holds their handles).
async fn changes(states: &mut [watch::Receiver<State>], pools: &mut [PoolDependency]) -> bool {
    let mut waits: Vec<std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>> = Vec::new();
    for rx in states.iter_mut() {
        waits.push(Box::pin(async move { rx.changed().await.is_ok() }));
    }
    for pool in pools.iter_mut() {
        waits.push(Box::pin(
            async move { pool.changes.changed().await.is_ok() },
        ));
    }
    if waits.is_empty() {
        // Nothing to watch: look again on the periodic tick only.
        std::future::pending::<()>().await;
    }
    let mut alive = waits.len();
    let mut waits: futures::stream::FuturesUnordered<_> = waits.into_iter().collect();
    while let Some(open) = futures::StreamExt::next(&mut waits).await {
        if open {
            return true;
        }
        alive -= 1;
        if alive == 0 {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::server::HealthService;
    use tower::Service as _;

    use super::*;
    use crate::pool::Replica;
    use crate::{CircuitBreakerLayer, Pool};

    /// The status the server reports for `service`, asked in process.
    async fn reported(reporter: &HealthReporter, service: &str) -> i32 {
        let health = HealthService::from_health_reporter(reporter.clone());
        let request = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        health
            .check(request)
            .await
            .expect("known")
            .into_inner()
            .status
    }

    /// Lets the sync run on what just changed (time does not move).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    const SERVING: i32 = ServingStatus::Serving as i32;
    const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

    #[tokio::test(start_paused = true)]
    async fn down_at_once_and_up_after_the_hold_down() {
        let reporter = HealthReporter::new();
        let layer = CircuitBreakerLayer::builder()
            .name("payments")
            .build()
            .expect("valid");
        let circuit = layer.circuit().clone();
        let pool = Pool::builder()
            .name("search")
            .build([(
                "a",
                Replica::new(tower::service_fn(|()| async {
                    Ok::<_, std::io::Error>(())
                })),
            )])
            .expect("valid");
        let handle = pool.handle();
        let sync = HealthSync::new(reporter.clone(), "shop")
            .circuit(circuit.clone())
            .pool("search", handle.clone())
            .hold_down(Duration::from_secs(5));
        let task = tokio::spawn(sync.run());
        settle().await;
        assert_eq!(reported(&reporter, "shop").await, SERVING);

        circuit.force_open();
        settle().await;
        assert_eq!(reported(&reporter, "shop").await, NOT_SERVING, "at once");
        circuit.reset();
        settle().await;
        tokio::time::advance(Duration::from_secs(4)).await;
        settle().await;
        assert_eq!(reported(&reporter, "shop").await, NOT_SERVING, "held down");
        // A flap during the hold-down starts it again.
        circuit.force_open();
        settle().await;
        circuit.reset();
        settle().await;
        tokio::time::advance(Duration::from_secs(4)).await;
        settle().await;
        assert_eq!(
            reported(&reporter, "shop").await,
            NOT_SERVING,
            "held down again"
        );
        tokio::time::advance(Duration::from_millis(1_100)).await;
        settle().await;
        assert_eq!(reported(&reporter, "shop").await, SERVING);

        // A pool with no replica taking traffic.
        assert!(handle.disable(&"a"));
        settle().await;
        assert_eq!(reported(&reporter, "shop").await, NOT_SERVING);
        assert!(handle.enable(&"a"));
        settle().await;
        tokio::time::advance(Duration::from_secs(6)).await;
        settle().await;
        assert_eq!(reported(&reporter, "shop").await, SERVING);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_period_that_runs_out_is_seen_without_an_event() {
        let reporter = HealthReporter::new();
        let layer = CircuitBreakerLayer::builder()
            .name("db")
            .consecutive_failures(1)
            .open_backoff(crate::backoff::Backoff::constant(Duration::from_secs(2)))
            .build()
            .expect("valid");
        let circuit = layer.circuit().clone();
        let mut failing = tower::Layer::layer(
            &layer,
            tower::service_fn(|()| async { Err::<(), crate::error::BoxError>("down".into()) }),
        );
        let _ = tower::ServiceExt::ready(&mut failing)
            .await
            .expect("closed")
            .call(())
            .await;
        assert_eq!(circuit.state(), State::Open);
        let task = tokio::spawn(
            HealthSync::new(reporter.clone(), "")
                .circuit(circuit)
                .hold_down(Duration::ZERO)
                .run(),
        );
        settle().await;
        assert_eq!(reported(&reporter, "").await, NOT_SERVING);
        // No call, no event: the periodic look finds the circuit half-open.
        tokio::time::advance(Duration::from_millis(2_300)).await;
        settle().await;
        assert_eq!(reported(&reporter, "").await, SERVING);
        task.abort();
    }
}
