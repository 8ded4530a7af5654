//! The circuit breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::Circuit;
use super::circuit::Permit;
use crate::classify::{AtEnd, Classify, Verdict};
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

/// An admitted call that answered and is judged when its response's body
/// ends ([`Classify::defer`]): its admission, kept until then.
#[derive(Debug)]
struct Answered {
    circuit: Circuit,
    permit: Permit,
    told: bool,
}

impl AtEnd for Answered {
    fn verdict(mut self, verdict: Verdict) {
        self.circuit.shared.complete(&self.permit, verdict);
        self.told = true;
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        if !self.told {
            self.circuit.shared.release(self.permit);
        }
    }
}

impl<C> Guard<C> {
    /// Judges the call's `result`, now or, for a response whose outcome
    /// arrives at the end of its body, then.
    fn judge<T, E>(&mut self, result: &mut Result<T, E>)
    where
        C: Classify<T, E>,
    {
        let local = &self.local;
        let permit = self.permit;
        let deferred = match result {
            // A half-open probe is judged at its headers: a long stream
            // must not hold the circuit half-open while it lasts.
            Ok(response) if !permit.is_probe() => local.classifier.defer(response, || {
                let mut permit = permit;
                local.circuit.shared.answered(&mut permit);
                Answered {
                    circuit: local.circuit.clone(),
                    permit,
                    told: false,
                }
            }),
            _ => false,
        };
        if !deferred {
            let verdict = local.classifier.classify(result.as_ref());
            local.circuit.shared.complete(&self.permit, verdict);
        }
        self.done = true;
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
                let mut result = ready!(future.poll(cx));
                if let Some(guard) = this.guard.as_mut() {
                    guard.judge(&mut result);
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
