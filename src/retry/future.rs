//! The retry layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;

use super::config::Policy;
use crate::attempt::{Replay, Share, Taken};
use crate::classify::Classify;
use crate::per_clone::PerClone;

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the attempt in flight or the backoff timer; nothing
    /// keeps running and no further attempt is made.
    pub struct ResponseFuture<S, Req, C, R>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, Req, Result<S::Response, S::Error>>,
        service: S,
        // The copy later attempts are made from, if the request may be sent again.
        template: Option<Req>,
        policy: PerClone<Policy<C, R>>,
        // The request's attempt record, or this layer's part in it.
        share: Share,
        // Attempts this layer sent.
        attempt: u32,
        previous_delay: Duration,
    }
}

pin_project! {
    // A retry's request and the failure it retries live in the states
    // that have them, beside the attempt's future, not after it: the
    // future of a call stays as small as its attempt's.
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<F, Req, Out> {
        Called { #[pin] future: F },
        // Boxed: a timer entry is large, and only a retry needs one.
        Backoff { sleep: Pin<Box<Sleep>>, retry: Retrying<Req, Out> },
        Ready { retry: Retrying<Req, Out> },
        // Between two of the above, while a retry is moved on; no poll
        // finds it.
        Sending,
    }
}

/// A retry on its way: the request it sends, and the failure it retries
/// (the answer if the pool below declines the retry as too late).
struct Retrying<Req, Out> {
    request: Req,
    last: Out,
}

impl<S, Req, C, R> std::fmt::Debug for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .field("replayable", &self.template.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, R> ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    pub(super) fn new(
        mut service: S,
        req: Req,
        template: Option<Req>,
        mut share: Share,
        policy: PerClone<Policy<C, R>>,
    ) -> Self {
        let future = share.call(|| service.call(req));
        Self {
            state: State::Called { future },
            service,
            template,
            policy,
            share,
            attempt: 1,
            previous_delay: Duration::ZERO,
        }
    }
}

impl<S, Req, C, R> Future for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    R: Replay<Req>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(this.share.poll(|| future.poll(cx)));
                    let policy = &**this.policy;
                    let verdict = policy.classifier.classify(result.as_ref());
                    if !verdict.is_failure() || !verdict.is_retryable() {
                        return Poll::Ready(result);
                    }
                    // A retryable failure: decide whether to try again.
                    let mut delay = Duration::ZERO;
                    let (attempt, previous_delay) = (*this.attempt, *this.previous_delay);
                    let template = this.template.as_ref();
                    let time_left = this.share.time_left();
                    let admitted = policy.admission.admit(
                        this.share,
                        attempt < policy.max_attempts,
                        &policy.replay,
                        template,
                        || {
                            delay = backoff(policy, attempt, previous_delay, verdict.pushback());
                            // It must start before the deadline.
                            time_left.is_none_or(|left| delay < left)
                        },
                        &policy.budget,
                    );
                    let Ok(next) = admitted else {
                        return Poll::Ready(result);
                    };
                    let retry = Retrying {
                        request: next,
                        last: result,
                    };
                    if verdict.pushback().is_some() {
                        policy.metrics.retried_pushback.increment(1);
                    } else {
                        policy.metrics.retried_failure.increment(1);
                    }
                    *this.attempt += 1;
                    *this.previous_delay = delay;
                    // Called -> Backoff (or straight to Ready for no delay).
                    if delay.is_zero() {
                        this.state.set(State::Ready { retry });
                    } else {
                        this.state.set(State::Backoff {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                            retry,
                        });
                    }
                }
                StateProj::Backoff { sleep, .. } => {
                    ready!(sleep.as_mut().poll(cx));
                    // Backoff -> Ready: the delay is over.
                    let StateReplace::Backoff { retry, .. } =
                        this.state.as_mut().project_replace(State::Sending)
                    else {
                        unreachable!("in the backoff state");
                    };
                    this.state.set(State::Ready { retry });
                }
                StateProj::Sending => unreachable!("no poll finds the state in between"),
                StateProj::Ready { .. } => {
                    if let Err(err) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(err));
                    }
                    let StateReplace::Ready { retry } =
                        this.state.as_mut().project_replace(State::Sending)
                    else {
                        unreachable!("in the ready state");
                    };
                    let Retrying {
                        request: mut req,
                        last,
                    } = retry;
                    let policy = &**this.policy;
                    if let Some(left) = this.share.time_left() {
                        policy.replay.mark_time_left(&mut req, left);
                    }
                    let service = &mut *this.service;
                    let (future, taken) = this.share.call_repeat(|| service.call(req));
                    if taken == Taken::TooLate {
                        // The pool below sent nothing: the retry would not
                        // have answered in time. The failure it retried is
                        // the answer (or, were it missing, the pool's).
                        policy
                            .admission
                            .decline_too_late(this.share, &policy.budget);
                        return Poll::Ready(last);
                    }
                    policy.metrics.attempts.increment(1);
                    // Ready -> Called: the next attempt is sent.
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// The delay before the retry after this layer's attempt `attempt`: the
/// backoff's, or the server's pushback if longer (cut to the cap).
fn backoff<C, R>(
    policy: &Policy<C, R>,
    attempt: u32,
    previous_delay: Duration,
    pushback: Option<Duration>,
) -> Duration {
    let delay = policy.backoff.delay(
        attempt - 1,
        previous_delay.max(policy.backoff.base()),
        &policy.rng,
    );
    match pushback {
        Some(pushback) => delay.max(pushback.min(policy.max_pushback)),
        None => delay,
    }
}
