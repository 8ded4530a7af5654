//! The retry layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::Replay;
use super::config::Policy;
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
        state: State<S::Future>,
        service: S,
        // The copy later attempts are made from, if the request may be sent again.
        template: Option<Req>,
        // The next attempt's request, while it waits out its backoff.
        next: Option<Req>,
        policy: PerClone<Policy<C, R>>,
        attempt: u32,
        previous_delay: Duration,
        started: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        // Boxed: a timer entry is large, and only a retry needs one; the
        // future of a call that succeeds stays small.
        Backoff { sleep: Pin<Box<Sleep>> },
        Ready,
    }
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

/// Why a failed attempt is not retried.
enum Refusal {
    MaxAttempts,
    NotReplayable,
    Deadline,
    Budget,
}

impl<S, Req, C, R> ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    pub(super) fn new(
        mut service: S,
        req: Req,
        template: Option<Req>,
        policy: PerClone<Policy<C, R>>,
        started: Option<Instant>,
    ) -> Self {
        let future = service.call(req);
        Self {
            state: State::Called { future },
            service,
            template,
            next: None,
            policy,
            attempt: 1,
            previous_delay: Duration::ZERO,
            started,
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
                    let result = ready!(future.poll(cx));
                    let policy = &**this.policy;
                    let verdict = policy.classifier.classify(result.as_ref());
                    if !verdict.is_failure() || !verdict.is_retryable() {
                        return Poll::Ready(result);
                    }
                    // A retryable failure: decide whether to try again.
                    let delay = match decide(
                        policy,
                        *this.attempt,
                        *this.previous_delay,
                        verdict.pushback(),
                        *this.started,
                        this.template.as_ref(),
                    ) {
                        Ok((delay, next)) => {
                            *this.next = Some(next);
                            delay
                        }
                        Err(refusal) => {
                            refused(policy, refusal, *this.attempt);
                            return Poll::Ready(result);
                        }
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
                        this.state.set(State::Ready);
                    } else {
                        this.state.set(State::Backoff {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        });
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    // Backoff -> Ready: the delay is over.
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if let Err(err) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(err));
                    }
                    let policy = &**this.policy;
                    let Some(mut req) = this.next.take() else {
                        unreachable!("a retry is only scheduled with its request");
                    };
                    policy.metrics.attempts.increment(1);
                    policy.replay.mark(&mut req, *this.attempt);
                    // Ready -> Called: the next attempt is sent.
                    let future = this.service.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// Whether to retry after a retryable failure of attempt `attempt`: the
/// delay and the request to send, or why not. Checks, in order: attempts
/// left, a copy of the request, the deadline, and last the budget (so no
/// token is spent on a retry refused for another reason).
fn decide<C, R, Req>(
    policy: &Policy<C, R>,
    attempt: u32,
    previous_delay: Duration,
    pushback: Option<Duration>,
    started: Option<Instant>,
    template: Option<&Req>,
) -> Result<(Duration, Req), Refusal>
where
    R: Replay<Req>,
{
    if attempt >= policy.max_attempts {
        return Err(Refusal::MaxAttempts);
    }
    let next = template
        .and_then(|t| policy.replay.replay(t))
        .ok_or(Refusal::NotReplayable)?;
    let mut delay = policy.backoff.delay(
        attempt - 1,
        previous_delay.max(policy.backoff.base()),
        &policy.rng,
    );
    if let Some(pushback) = pushback {
        delay = delay.max(pushback.min(policy.max_pushback));
    }
    if let (Some(deadline), Some(started)) = (policy.deadline, started) {
        if started.elapsed() + delay >= deadline {
            return Err(Refusal::Deadline);
        }
    }
    if !policy.budget.withdraw() {
        return Err(Refusal::Budget);
    }
    Ok((delay, next))
}

fn refused<C, R>(policy: &Policy<C, R>, refusal: Refusal, attempt: u32) {
    let (counter, reason) = match refusal {
        Refusal::MaxAttempts => (&policy.metrics.refused_max_attempts, "max_attempts"),
        Refusal::NotReplayable => (&policy.metrics.refused_not_replayable, "not_replayable"),
        Refusal::Deadline => (&policy.metrics.refused_deadline, "deadline"),
        Refusal::Budget => (&policy.metrics.refused_budget, "budget"),
    };
    counter.increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(retry = &*policy.name, attempt, reason, "not retrying");
    #[cfg(not(feature = "tracing"))]
    let _ = (attempt, reason);
}
