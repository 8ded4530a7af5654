use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

use super::Circuit;
use super::circuit::{Permit, Shared};
use super::future::{Guard, ResponseFuture};
use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::{BoxError, CircuitOpen};

/// A service guarded by a [`Circuit`].
///
/// Made by [`CircuitBreakerLayer`](super::CircuitBreakerLayer). While the
/// circuit is open, `poll_ready` is ready at once — without polling the
/// inner service — and `call` returns a future that fails with
/// [`CircuitOpen`]; errors are [`BoxError`]s, the inner service's errors
/// boxed as they are.
///
/// A clone starts clean: it shares the circuit but holds no admission.
#[derive(Debug)]
pub struct CircuitBreaker<S, C = ErrorsAsFailures> {
    inner: S,
    local: Arc<Local<C>>,
    state: Ready<C>,
}

/// What this service clone shares with the futures it makes. Each clone
/// owns one, so the reference count a call bumps is not contended by other
/// threads' clones.
#[derive(Debug)]
pub(super) struct Local<C> {
    pub(super) circuit: Circuit,
    pub(super) classifier: C,
}

/// The admission `poll_ready` took for the next `call`.
#[derive(Debug)]
enum Ready<C> {
    Nothing,
    Admitted(Guard<C>),
    Rejected(CircuitOpen),
}

impl<S, C> CircuitBreaker<S, C> {
    /// Guards `inner` with `circuit`, classifying outcomes with `classifier`.
    pub fn new(inner: S, circuit: Circuit, classifier: C) -> Self {
        Self {
            inner,
            local: Arc::new(Local {
                circuit,
                classifier,
            }),
            state: Ready::Nothing,
        }
    }

    /// The circuit this service reports to.
    pub fn circuit(&self) -> &Circuit {
        &self.local.circuit
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the breaker.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn shared(&self) -> &Shared {
        &self.local.circuit.shared
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.local.circuit.clone(),
            self.local.classifier.clone(),
        )
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An admission from an earlier poll that returned Pending stays valid
        // while the circuit is in the same period; otherwise decide again.
        let keep = match &self.state {
            Ready::Admitted(guard) => self.shared().is_current(guard.permit().admit),
            _ => false,
        };
        if !keep {
            self.state = match self.shared().acquire() {
                Ok(admit) => Ready::Admitted(Guard::new(
                    self.local.clone(),
                    Permit {
                        admit,
                        started: None,
                    },
                )),
                // Rejected: ready at once, without waiting on the inner service.
                Err(open) => Ready::Rejected(open),
            };
        }
        if let Ready::Rejected(_) = self.state {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                // Dropping the guard gives a probe slot back.
                self.state = Ready::Nothing;
                Poll::Ready(Err(err.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.state, Ready::Nothing) {
            Ready::Admitted(mut guard) => {
                if self.shared().measures_duration() {
                    guard.permit_mut().started = Some(Instant::now());
                }
                ResponseFuture::called(self.inner.call(req), guard)
            }
            Ready::Rejected(open) => ResponseFuture::rejected(open),
            Ready::Nothing => panic!("poll_ready must be called (and return Ready) before call"),
        }
    }
}
