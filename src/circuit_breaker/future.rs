//! The circuit breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::Circuit;
use super::circuit::Permit;
use crate::classify::Classify;
use crate::error::{BoxError, CircuitOpen};
use crate::per_clone::PerClone;

/// What the service's clones share with the futures they make, behind a
/// handle per thread (see `per_clone`), so the reference count a call bumps
/// is not contended by other threads' clones.
#[derive(Debug)]
pub(super) struct Local<C> {
    pub(super) circuit: Circuit,
    pub(super) classifier: C,
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it completes records nothing, and a half-open
    /// probe gives its slot back so another probe can be admitted.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C>
    {
        #[pin]
        kind: Kind<F>,
        guard: Option<Guard<C>>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] future: F },
        // Boxed as it will be returned: keeps the future small.
        Rejected { error: Option<BoxError> },
    }
}

/// An admission on its way through a call. Completing it records the
/// outcome; dropping it unfinished releases a probe slot.
#[derive(Debug)]
pub(super) struct Guard<C> {
    local: PerClone<Local<C>>,
    permit: Permit,
    done: bool,
}

impl<C> Guard<C> {
    pub(super) fn new(local: PerClone<Local<C>>, permit: Permit) -> Self {
        Self {
            local,
            permit,
            done: false,
        }
    }

    pub(super) fn permit_mut(&mut self) -> &mut Permit {
        &mut self.permit
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if !self.done {
            self.local.circuit.shared.release(self.permit);
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(super) fn called(future: F, guard: Guard<C>) -> Self {
        Self {
            kind: Kind::Called { future },
            guard: Some(guard),
        }
    }

    pub(super) fn rejected(error: CircuitOpen) -> Self {
        Self {
            kind: Kind::Rejected {
                error: Some(Box::new(error)),
            },
            guard: None,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                if let Some(guard) = this.guard.as_mut() {
                    let local = &guard.local;
                    let verdict = local.classifier.classify(result.as_ref());
                    local.circuit.shared.complete(&guard.permit, verdict);
                    guard.done = true;
                }
                *this.guard = None;
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => match error.take() {
                Some(open) => Poll::Ready(Err(open)),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}
