//! Server-side load shedding while a dependency's circuit is open: the
//! [`ShedWhenOpen`] service, its layer and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use metrics::Counter;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::response::shed_response;
use crate::circuit_breaker::Circuit;
use crate::error::CircuitOpen;

/// A circuit a route depends on, and the count of requests shed for it.
struct Dependency {
    circuit: Circuit,
    shed: Counter,
}

impl fmt::Debug for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dependency")
            .field("circuit", &self.circuit.name())
            .finish_non_exhaustive()
    }
}

/// Answers `503 Service Unavailable` at once, with `Retry-After`, while a
/// circuit the route depends on is open, instead of running the handler
/// only for its call to fail (or to wait behind others for the same
/// answer); made by [`ShedWhenOpenLayer`].
///
/// A server in front of a failing dependency sheds the load it cannot
/// serve, as the breaker does for the calls it makes: the caller learns at
/// once, and from `Retry-After` when to come back. The circuit is the one
/// the route's own calls go through (a
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s
/// [`circuit`](crate::CircuitBreakerLayer::circuit), or a preset's), so the
/// route sheds exactly while those calls would be refused.
///
/// It sheds while a circuit is open before its period ends, or forced
/// open. It lets requests through while a circuit is half-open, so that
/// the breaker's probes can go (a call the breaker still refuses then is
/// answered by [`error_response`](super::error_response)), and while one is
/// disabled or only recording.
///
/// The decision is taken in `poll_ready`: a shedding service is ready at
/// once and does not poll the inner one, so a request never queues behind
/// a handler that cannot serve it. Each request shed counts in
/// `steadfast_shed_total{name}`, labelled with the circuit's name.
///
/// ```
/// use axum::Router;
/// use axum::routing::get;
/// use steadfast::CircuitBreakerLayer;
/// use steadfast::http::ShedWhenOpenLayer;
///
/// let payments = CircuitBreakerLayer::builder().name("payments").build()?;
/// // ... the handler of `/pay` calls the payments service through `payments`.
/// let app: Router = Router::new()
///     .route("/pay", get(|| async { "paid" }))
///     .route_layer(ShedWhenOpenLayer::new(payments.circuit().clone()))
///     .route("/health", get(|| async { "ok" }));
/// # drop(app);
/// # Ok::<(), steadfast::error::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct ShedWhenOpen<S> {
    inner: S,
    dependencies: Arc<[Dependency]>,
    /// Set by `poll_ready` when the next request is to be shed.
    refused: Option<CircuitOpen>,
}

impl<S: Clone> Clone for ShedWhenOpen<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            dependencies: self.dependencies.clone(),
            // A clone starts clean: its own poll_ready decides.
            refused: None,
        }
    }
}

/// Makes [`ShedWhenOpen`] services: a route sheds while any of the circuits
/// given is open.
#[derive(Debug, Clone)]
pub struct ShedWhenOpenLayer {
    dependencies: Arc<[Dependency]>,
}

impl ShedWhenOpenLayer {
    /// Sheds while `circuit` is open.
    pub fn new(circuit: Circuit) -> Self {
        Self {
            dependencies: Arc::new([dependency(circuit)]),
        }
    }

    /// Sheds while `circuit` is open too, for a route that needs more than
    /// one dependency.
    #[must_use]
    pub fn or_when_open(self, circuit: Circuit) -> Self {
        let mut dependencies: Vec<Dependency> = self
            .dependencies
            .iter()
            .map(|d| Dependency {
                circuit: d.circuit.clone(),
                shed: d.shed.clone(),
            })
            .collect();
        dependencies.push(dependency(circuit));
        Self {
            dependencies: dependencies.into(),
        }
    }
}

fn dependency(circuit: Circuit) -> Dependency {
    let name: Arc<str> = Arc::from(circuit.name());
    Dependency {
        shed: metrics::counter!("steadfast_shed_total", "name" => name),
        circuit,
    }
}

impl<S> Layer<S> for ShedWhenOpenLayer {
    type Service = ShedWhenOpen<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedWhenOpen {
            inner,
            dependencies: self.dependencies.clone(),
            refused: None,
        }
    }
}

impl<S> ShedWhenOpen<S> {
    /// The first of the route's circuits that refuses calls now, counted.
    fn refusal(&self) -> Option<CircuitOpen> {
        self.dependencies.iter().find_map(|d| {
            let refusal = d.circuit.refusal()?;
            d.shed.increment(1);
            Some(refusal)
        })
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ShedWhenOpen<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.refused.is_none() {
            self.refused = self.refusal();
        }
        if self.refused.is_some() {
            // Ready at once: the request is answered without the handler.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.refused.take() {
            Some(open) => ResponseFuture {
                state: State::Shed {
                    response: Some(shed_response(&open).map(ResBody::from)),
                },
            },
            None => ResponseFuture {
                state: State::Called {
                    future: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`ShedWhenOpen`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Called { #[pin] future: F },
        Shed { response: Option<Response<B>> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shed = matches!(self.state, State::Shed { .. });
        f.debug_struct("ResponseFuture")
            .field("shed", &shed)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => future.poll(cx),
            StateProj::Shed { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("`ShedWhenOpen`'s future polled after it completed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::*;
    use crate::CircuitBreakerLayer;
    use crate::backoff::Backoff;
    use crate::circuit_breaker::SlidingWindow;
    use crate::error::BoxError;

    const OPEN_PERIOD: Duration = Duration::from_secs(30);

    /// A circuit tripped by two failed calls, open for 30 s.
    async fn tripped() -> Circuit {
        let layer = CircuitBreakerLayer::builder()
            .name("db")
            .window(SlidingWindow::count(2))
            .min_calls(2)
            .open_backoff(Backoff::constant(OPEN_PERIOD))
            .build()
            .expect("a valid breaker");
        let mut failing = layer.layer(service_fn(|()| async {
            Err::<(), BoxError>("down".into())
        }));
        for _ in 0..2 {
            let _ = failing.ready().await.expect("closed").call(()).await;
        }
        layer.circuit().clone()
    }

    /// A route answering `served`, behind `layer`.
    fn behind(
        layer: &ShedWhenOpenLayer,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError> + use<> {
        layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new("served".to_owned()))
        }))
    }

    fn route(
        circuit: Circuit,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError> {
        behind(&ShedWhenOpenLayer::new(circuit))
    }

    /// One request through `route`.
    async fn respond(
        route: &mut impl Service<Request<()>, Response = Response<String>, Error = BoxError>,
    ) -> Response<String> {
        route
            .ready()
            .await
            .expect("ready")
            .call(Request::new(()))
            .await
            .expect("an answer")
    }

    async fn answer(
        route: &mut impl Service<Request<()>, Response = Response<String>, Error = BoxError>,
    ) -> (u16, Option<String>) {
        let res = respond(route).await;
        let retry_after = res
            .headers()
            .get(http::header::RETRY_AFTER)
            .map(|v| v.to_str().expect("ascii").to_owned());
        (res.status().as_u16(), retry_after)
    }

    #[tokio::test(start_paused = true)]
    async fn sheds_until_the_open_period_ends_then_lets_the_probes_through() {
        let circuit = tripped().await;
        let mut route = route(circuit);
        assert_eq!(answer(&mut route).await, (503, Some("30".to_owned())));
        tokio::time::advance(Duration::from_millis(10_500)).await;
        assert_eq!(
            answer(&mut route).await,
            (503, Some("20".to_owned())),
            "the time left, rounded up"
        );
        tokio::time::advance(Duration::from_millis(19_500)).await;
        assert_eq!(
            answer(&mut route).await,
            (200, None),
            "half-open: a probe may go"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_or_a_disabled_breaker_sheds_nothing() {
        let circuit = tripped().await;
        let mut route = route(circuit.clone());
        circuit.metrics_only();
        assert_eq!(answer(&mut route).await.0, 200);
        circuit.disable();
        assert_eq!(answer(&mut route).await.0, 200);
        circuit.force_open();
        assert_eq!(answer(&mut route).await, (503, None));
    }

    #[tokio::test(start_paused = true)]
    async fn any_of_several_circuits_open_sheds() {
        let open = tripped().await;
        let closed = CircuitBreakerLayer::builder()
            .name("cache")
            .build()
            .expect("valid");
        let layer = ShedWhenOpenLayer::new(closed.circuit().clone()).or_when_open(open.clone());
        let mut route = behind(&layer);
        let res = respond(&mut route).await;
        assert_eq!(res.status().as_u16(), 503);
        assert_eq!(res.body(), "circuit `db` is open\n");
        open.reset();
        let res = respond(&mut route).await;
        assert_eq!(res.body(), "served");
    }
}
