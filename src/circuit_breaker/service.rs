use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use super::Circuit;
use super::circuit::Permit;
use super::future::{Guard, Local, ResponseFuture};
use super::state::{Admit, Role};
use crate::classify::{Classify, ErrorsAsFailures};
use crate::error::{BoxError, CircuitOpen};
use crate::per_clone::PerClone;

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
    local: PerClone<Local<C>>,
    /// The admission `poll_ready` took for the next `call`. Plain data, so
    /// the healthy path stores it without drop glue.
    ready: Ready,
    /// A half-open probe's slot, held from `poll_ready` to `call` so that
    /// dropping the service (or deciding again) gives it back.
    probe: Option<Guard<C>>,
    /// Why the next call is rejected, when it is.
    rejected: Option<CircuitOpen>,
}

#[derive(Debug, Clone, Copy)]
enum Ready {
    Nothing,
    Admitted(Admit),
    Rejected,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Guards `inner` with `circuit`, classifying outcomes with `classifier`.
    pub fn new(inner: S, circuit: Circuit, classifier: C) -> Self {
        Self {
            inner,
            local: PerClone::new(Arc::new(Local {
                circuit,
                classifier,
            })),
            ready: Ready::Nothing,
            probe: None,
            rejected: None,
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
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            local: self.local.for_clone(),
            ready: Ready::Nothing,
            probe: None,
            rejected: None,
        }
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

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let shared = &self.local.circuit.shared;
        // An admission from an earlier poll that returned Pending stays valid
        // while the circuit is in the same period; otherwise decide again.
        let current = match self.ready {
            Ready::Admitted(admit) => shared.is_current(admit),
            _ => false,
        };
        if !current {
            self.probe = None;
            self.ready = match shared.acquire() {
                Ok(admit) => {
                    if admit.role() == Role::Probe {
                        let permit = Permit::untimed(admit);
                        self.probe = Some(Guard::new(self.local.for_call(), permit));
                    }
                    Ready::Admitted(admit)
                }
                Err(open) => {
                    self.rejected = Some(open);
                    Ready::Rejected
                }
            };
        }
        if let Ready::Rejected = self.ready {
            // Rejected: ready at once, without waiting on the inner service.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(err)) => {
                // Dropping the guard gives a probe slot back.
                self.ready = Ready::Nothing;
                self.probe = None;
                Poll::Ready(Err(err.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.ready, Ready::Nothing) {
            Ready::Admitted(admit) => {
                let mut guard = match self.probe.take() {
                    Some(guard) => guard,
                    None => Guard::new(self.local.for_call(), Permit::untimed(admit)),
                };
                let shared = &self.local.circuit.shared;
                if shared.measures_duration() {
                    guard.permit_mut().started = shared.clock_ns();
                }
                ResponseFuture::called(self.inner.call(req), guard)
            }
            Ready::Rejected => match self.rejected.take() {
                Some(open) => ResponseFuture::rejected(open),
                None => unreachable!("a rejection is stored with its reason"),
            },
            Ready::Nothing => panic!("poll_ready must be called (and return Ready) before call"),
        }
    }
}
