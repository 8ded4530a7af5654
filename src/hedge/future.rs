//! The hedge layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::config::Policy;
use crate::classify::Classify;
use crate::per_clone::PerClone;
use crate::retry::Replay;

pin_project! {
    /// The response future of [`Hedge`](super::Hedge).
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops every attempt in flight and the hedge timer.
    pub struct ResponseFuture<S, Req, C, R>
    where
        S: Service<Req>,
    {
        #[pin]
        first: Option<S::Future>,
        // Boxed: a timer entry is large, and a call that completes on its
        // first poll arms none.
        sleep: Option<Pin<Box<Sleep>>>,
        extras: Vec<Extra<S::Future>>,
        service: S,
        template: Option<Req>,
        local: PerClone<Policy<C, R>>,
        // When the first attempt was first found pending (None: not yet, and
        // no clock read for a call that completes at once).
        started: Option<Instant>,
        // Extra attempts sent so far.
        sent: u32,
        // The next attempt should go now (the timer fired, or an attempt
        // failed in a way another attempt may fix).
        due: bool,
        // No more attempts: the budget refused, or the request cannot be copied.
        exhausted: bool,
        last_failure: Option<Result<S::Response, S::Error>>,
    }
}

/// An extra attempt in flight.
struct Extra<F> {
    future: Pin<Box<F>>,
    started: Instant,
}

impl<S, Req, C, R> std::fmt::Debug for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("first_in_flight", &self.first.is_some())
            .field("extras_in_flight", &self.extras.len())
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, R> ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
{
    pub(super) fn new(
        first: S::Future,
        service: S,
        template: Option<Req>,
        local: PerClone<Policy<C, R>>,
    ) -> Self {
        Self {
            first: Some(first),
            sleep: None,
            extras: Vec::new(),
            service,
            template,
            local,
            started: None,
            sent: 0,
            due: false,
            exhausted: false,
            last_failure: None,
        }
    }
}

/// What one finished attempt means for the call.
enum Judged<T> {
    /// A success (or an outcome that is not a failure): the caller's answer.
    Win(T),
    /// A failure; `retryable` fires the next attempt at once.
    Failed { result: T, retryable: bool },
}

fn judge<C, R, T, E>(policy: &Policy<C, R>, result: Result<T, E>) -> Judged<Result<T, E>>
where
    C: Classify<T, E>,
{
    let verdict = policy.classifier.classify(result.as_ref());
    if verdict.is_failure() {
        Judged::Failed {
            result,
            retryable: verdict.is_retryable(),
        }
    } else {
        Judged::Win(result)
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
        let policy = &**this.local;
        loop {
            // The first attempt.
            if let Some(first) = this.first.as_mut().as_pin_mut() {
                if let Poll::Ready(result) = first.poll(cx) {
                    this.first.set(None);
                    // Finished on its first poll: no clock was read, and
                    // its latency is (close to) zero.
                    policy.record(this.started.map_or(Duration::ZERO, |s| s.elapsed()));
                    match judge(policy, result) {
                        Judged::Win(result) => {
                            cancel(policy, this.extras);
                            return Poll::Ready(result);
                        }
                        Judged::Failed { result, retryable } => {
                            *this.last_failure = Some(result);
                            *this.due |= retryable;
                        }
                    }
                }
            }
            // The extra attempts.
            let mut i = 0;
            while i < this.extras.len() {
                let Poll::Ready(result) = this.extras[i].future.as_mut().poll(cx) else {
                    i += 1;
                    continue;
                };
                let extra = this.extras.swap_remove(i);
                policy.record(extra.started.elapsed());
                match judge(policy, result) {
                    Judged::Win(result) => {
                        // A hedge won: the first attempt and the other
                        // hedges are dropped at once; their time so far
                        // still counts as latency (or the quantile would be
                        // biased low).
                        policy.metrics.won.increment(1);
                        if this.first.is_some() {
                            policy.record(this.started.map_or(Duration::ZERO, |s| s.elapsed()));
                            this.first.set(None);
                        }
                        cancel(policy, this.extras);
                        return Poll::Ready(result);
                    }
                    Judged::Failed { result, retryable } => {
                        *this.last_failure = Some(result);
                        *this.due |= retryable;
                    }
                }
            }
            let in_flight = this.first.is_some() || !this.extras.is_empty();
            let can_send = !*this.exhausted
                && *this.sent < policy.max_extra_attempts
                && this.template.is_some();

            // Send the next attempt when it is due.
            if *this.due && can_send {
                match this.service.poll_ready(cx) {
                    Poll::Pending if in_flight => {}
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(err)) => {
                        *this.exhausted = true;
                        if !in_flight {
                            return Poll::Ready(this.last_failure.take().unwrap_or(Err(err)));
                        }
                    }
                    Poll::Ready(Ok(())) => {
                        let next = this.template.as_ref().and_then(|t| policy.replay.replay(t));
                        match next {
                            None => *this.exhausted = true,
                            Some(_) if !policy.budget.withdraw() => {
                                policy.metrics.refused_budget.increment(1);
                                *this.exhausted = true;
                            }
                            Some(mut req) => {
                                *this.sent += 1;
                                policy.replay.mark(&mut req, *this.sent + 1);
                                policy.metrics.sent.increment(1);
                                let future = Box::pin(this.service.call(req));
                                this.extras.push(Extra {
                                    future,
                                    started: Instant::now(),
                                });
                                *this.due = false;
                                // The timer restarts for the hedge after this one.
                                *this.sleep = None;
                            }
                        }
                        continue;
                    }
                }
            }
            if !in_flight {
                // Every attempt failed and no more may be sent: the last failure.
                return match this.last_failure.take() {
                    Some(result) => Poll::Ready(result),
                    None => unreachable!("attempts end in a win or a failure"),
                };
            }
            // Arm the timer for the next hedge (only now: a call that
            // completes on its first poll never arms one).
            if can_send && !*this.due {
                if this.sleep.is_none() {
                    let now = Instant::now();
                    this.started.get_or_insert(now);
                    *this.sleep = Some(Box::pin(tokio::time::sleep(policy.delay(now))));
                }
                if let Some(sleep) = this.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        *this.sleep = None;
                        *this.due = true;
                        continue;
                    }
                }
            } else if this.started.is_none() {
                *this.started = Some(Instant::now());
            }
            return Poll::Pending;
        }
    }
}

/// Drops the losers, counting how long they ran.
fn cancel<C, R, F>(policy: &Policy<C, R>, extras: &mut Vec<Extra<F>>) {
    for extra in extras.drain(..) {
        policy.record(extra.started.elapsed());
    }
}
