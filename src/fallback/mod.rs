//! Fallback: answer from somewhere else when a call fails — the "degrade
//! gracefully" end of a stack.
//!
//! [`FallbackLayer`] watches each call's outcome: an error from below (a
//! transport error, [`CircuitOpen`](crate::error::CircuitOpen),
//! [`NoHealthyReplica`](crate::error::NoHealthyReplica), a timeout) or a
//! response its [`Classify`] calls a failure
//! (a `503`), and answers instead from a [`Recover`] source:
//!
//! - [`value`]: a fixed answer (an empty list, a default page);
//! - [`from_fn`]: a closure of the [`Failure`];
//! - [`service`]: another service given a copy of the request (a stale
//!   cache, a degraded mode, another region).
//!
//! If the fallback fails too, the caller gets the fallback's error. A panic
//! is never turned into a fallback answer: it propagates as it would
//! without the layer.
//!
//! # Metrics
//!
//! `steadfast_fallback_served_total{name}` counts answers the fallback gave.
//!
//! # Example
//!
//! ```
//! use steadfast::fallback::{self, FallbackLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! // Recommendations are nice to have: when they fail, show none.
//! let mut recommendations = ServiceBuilder::new()
//!     .layer(FallbackLayer::new(fallback::value(Vec::<String>::new())).name("recommendations"))
//!     .service_fn(|_user: u64| async { Err::<Vec<String>, _>(std::io::Error::other("down")) });
//!
//! assert!(recommendations.ready().await?.call(42).await?.is_empty());
//! # Ok(())
//! # }
//! ```

mod future;
mod recover;

pub use self::future::ResponseFuture;
pub use self::recover::{
    Failure, FromFn, Recover, ServiceFallback, Value, from_fn, service, value,
};

use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::Counter;
use tower::{Layer, Service};

use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::BoxError;

/// Wraps services in [`Fallback`].
#[derive(Debug, Clone)]
pub struct FallbackLayer<F, C = ErrorsAsFailures> {
    recover: F,
    classifier: C,
    served: Counter,
}

impl<F> FallbackLayer<F> {
    /// Answers from `recover` when a call fails (an error, for the default
    /// classifier).
    pub fn new(recover: F) -> Self {
        Self {
            recover,
            classifier: ErrorsAsFailures,
            served: metrics::counter!("steadfast_fallback_served_total", "name" => "default"),
        }
    }
}

impl<F, C> FallbackLayer<F, C> {
    /// Names the layer: the `name` label of its metric.
    #[must_use]
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        let name: Arc<str> = Arc::from(name.as_ref());
        self.served = metrics::counter!("steadfast_fallback_served_total", "name" => name);
        self
    }

    /// Also falls back on responses `classifier` calls failures.
    pub fn classify<C2>(self, classifier: C2) -> FallbackLayer<F, C2> {
        FallbackLayer {
            recover: self.recover,
            classifier,
            served: self.served,
        }
    }
}

impl<S, F: Clone, C: Clone> Layer<S> for FallbackLayer<F, C> {
    type Service = Fallback<S, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            recover: self.recover.clone(),
            classifier: self.classifier.clone(),
            served: self.served.clone(),
            unready: None,
        }
    }
}

/// Answers from a fallback when the inner service fails; made by
/// [`FallbackLayer`]. Its errors are [`BoxError`]s: the inner service's only
/// where no fallback answer could be had.
#[derive(Debug)]
pub struct Fallback<S, F, C = ErrorsAsFailures> {
    inner: S,
    recover: F,
    classifier: C,
    served: Counter,
    /// The inner service failed to get ready: the next call is answered by
    /// the fallback without calling it.
    unready: Option<BoxError>,
}

impl<S: Clone, F: Clone, C: Clone> Clone for Fallback<S, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            recover: self.recover.clone(),
            classifier: self.classifier.clone(),
            served: self.served.clone(),
            unready: None,
        }
    }
}

impl<S, F, C, Req> Service<Req> for Fallback<S, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Recover<Req, S::Response> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F, C, Req, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A service that cannot get ready has failed too: answer the next
        // call from the fallback rather than report the error.
        if self.unready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => {
                self.unready = Some(err.into());
                Poll::Ready(Ok(()))
            }
            other => other.map_err(Into::into),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let saved = self.recover.save(&req);
        let call = match self.unready.take() {
            Some(err) => Err(err),
            None => Ok(self.inner.call(req)),
        };
        ResponseFuture::new(
            call,
            self.recover.clone(),
            saved,
            self.classifier.clone(),
            self.served.clone(),
        )
    }
}
