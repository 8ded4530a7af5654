//! The fallback layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use metrics::Counter;
use pin_project_lite::pin_project;

use super::recover::{Failure, Recover};
use crate::classify::Classify;
use crate::error::BoxError;

pin_project! {
    /// The response future of [`Fallback`](super::Fallback).
    pub struct ResponseFuture<F, R, C, Req, Res>
    where
        R: Recover<Req, Res>,
    {
        #[pin]
        state: State<F, R::Future>,
        recover: R,
        saved: Option<R::Saved>,
        classifier: C,
        served: Counter,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, G> {
        Called { #[pin] future: F },
        // The inner service could not get ready.
        Unready { error: Option<BoxError> },
        Recovering { #[pin] future: G },
    }
}

impl<F, R, C, Req, Res> std::fmt::Debug for ResponseFuture<F, R, C, Req, Res>
where
    R: Recover<Req, Res>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, R, C, Req, Res> ResponseFuture<F, R, C, Req, Res>
where
    R: Recover<Req, Res>,
{
    pub(super) fn new(
        call: Result<F, BoxError>,
        recover: R,
        saved: R::Saved,
        classifier: C,
        served: Counter,
    ) -> Self {
        let state = match call {
            Ok(future) => State::Called { future },
            Err(error) => State::Unready { error: Some(error) },
        };
        Self {
            state,
            recover,
            saved: Some(saved),
            classifier,
            served,
        }
    }
}

impl<F, R, C, Req, Res, E> Future for ResponseFuture<F, R, C, Req, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    R: Recover<Req, Res>,
    C: Classify<Res, E>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    if !this.classifier.classify(result.as_ref()).is_failure() {
                        return Poll::Ready(result.map_err(Into::into));
                    }
                    let failure = match result {
                        Ok(res) => Failure::Response(res),
                        Err(err) => Failure::Error(err.into()),
                    };
                    let Some(saved) = this.saved.take() else {
                        unreachable!("the request is saved until the call ends");
                    };
                    // Called -> Recovering: the call failed.
                    let future = this.recover.recover(saved, failure);
                    this.state.set(State::Recovering { future });
                }
                StateProj::Unready { error } => {
                    let failure =
                        Failure::Error(error.take().unwrap_or_else(|| "service not ready".into()));
                    let Some(saved) = this.saved.take() else {
                        unreachable!("the request is saved until the call ends");
                    };
                    let future = this.recover.recover(saved, failure);
                    this.state.set(State::Recovering { future });
                }
                StateProj::Recovering { future } => {
                    let result = ready!(future.poll(cx));
                    if result.is_ok() {
                        this.served.increment(1);
                    }
                    return Poll::Ready(result);
                }
            }
        }
    }
}
