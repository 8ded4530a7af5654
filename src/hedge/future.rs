//! The hedge layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::config::Policy;
use crate::attempt::{Replay, Share, Taken};
use crate::classify::Classify;
use crate::per_clone::PerClone;

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
        extras: Vec<Extra<S::Future>>,
        // When the next attempt goes.
        next: Next,
        service: S,
        template: Option<Req>,
        local: PerClone<Policy<C, R>>,
        // The request's attempt record, or this layer's part in it.
        share: Share,
        // When the first attempt was first found pending (None: not yet, and
        // no clock read for a call that completes at once).
        started: Option<Instant>,
        // Extra attempts sent so far.
        sent: u32,
        last_failure: Option<Result<S::Response, S::Error>>,
    }
}

/// When the next attempt goes: the future's state.
enum Next {
    /// No timer yet: none is armed before the first attempt is found
    /// pending, so a call that completes at once reads no clock.
    Unarmed,
    /// The timer for the next hedge runs. Boxed: a timer entry is large.
    Timer(Pin<Box<Sleep>>),
    /// The next attempt goes as soon as the service is ready: the timer
    /// fired, or an attempt failed in a way another attempt may fix.
    Due,
    /// No more attempts: the caps, the budget, a request that cannot be
    /// copied, or a failed service. The attempts in flight finish.
    Closed,
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
        mut share: Share,
        local: PerClone<Policy<C, R>>,
    ) -> Self {
        let next = if template.is_some() && share.may_send_more() {
            Next::Unarmed
        } else {
            Next::Closed
        };
        Self {
            first: Some(first),
            extras: Vec::new(),
            next,
            service,
            template,
            local,
            share,
            started: None,
            sent: 0,
            last_failure: None,
        }
    }
}

/// An attempt that finished.
struct Finished<T> {
    result: T,
    /// When an extra attempt was sent; `None` for the first attempt.
    extra_started: Option<Instant>,
}

/// Polls every attempt in flight; the first that finished, if any.
fn poll_attempts<F: Future>(
    mut first: Pin<&mut Option<F>>,
    extras: &mut Vec<Extra<F>>,
    cx: &mut Context<'_>,
) -> Option<Finished<F::Output>> {
    if let Some(future) = first.as_mut().as_pin_mut() {
        if let Poll::Ready(result) = future.poll(cx) {
            first.set(None);
            return Some(Finished {
                result,
                extra_started: None,
            });
        }
    }
    for i in 0..extras.len() {
        if let Poll::Ready(result) = extras[i].future.as_mut().poll(cx) {
            let extra = extras.swap_remove(i);
            return Some(Finished {
                result,
                extra_started: Some(extra.started),
            });
        }
    }
    None
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
            let first = this.first.as_mut();
            let extras = &mut *this.extras;
            if let Some(done) = this.share.poll(|| poll_attempts(first, extras, cx)) {
                // The first attempt's latency is (close to) zero when it
                // finished on its first poll: no clock was read then.
                let since = done.extra_started.or(*this.started);
                policy.record(since.map_or(Duration::ZERO, |s| s.elapsed()));
                match judge(policy, done.result) {
                    Judged::Win(result) => {
                        if done.extra_started.is_some() {
                            policy.metrics.won.increment(1);
                        }
                        // The other attempts are dropped at once. The first,
                        // if it lost, counts as cut short: it ran past the
                        // delay, so it is slower than the quantile the delay
                        // stands for (leaving it out would bias the quantile
                        // low; counting its time as latency would make it
                        // chase a hang). A hedge that lost is left out: it
                        // ran only from its own start to the winner's answer,
                        // which says nothing of the tail, and counted as slower than
                        // everything it would tip the quantile up and, past
                        // `1 - q` of the samples, send it to the finished
                        // ones only: low, so more hedges, so more losers.
                        if this.first.is_some() {
                            policy.record_cut_short();
                            this.first.set(None);
                        }
                        this.extras.clear();
                        return Poll::Ready(result);
                    }
                    Judged::Failed { result, retryable } => {
                        *this.last_failure = Some(result);
                        if retryable && !matches!(this.next, Next::Closed) {
                            // Unarmed/Timer -> Due: another attempt may fix it.
                            *this.next = Next::Due;
                        }
                    }
                }
                continue;
            }
            let in_flight = this.first.is_some() || !this.extras.is_empty();
            match this.next {
                Next::Due => match this.service.poll_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(err)) => {
                        // Due -> Closed: the service cannot take another.
                        *this.next = Next::Closed;
                        if !in_flight {
                            return Poll::Ready(this.last_failure.take().unwrap_or(Err(err)));
                        }
                    }
                    Poll::Ready(Ok(())) => {
                        let own_cap_left = *this.sent < policy.max_extra_attempts;
                        let template = this.template.as_ref();
                        let admitted = policy.admission.admit(
                            this.share,
                            own_cap_left,
                            &policy.replay,
                            template,
                            || true,
                            &policy.budget,
                        );
                        let Ok(mut req) = admitted else {
                            // Due -> Closed: refused (counted by the admission).
                            *this.next = Next::Closed;
                            continue;
                        };
                        if let Some(left) = this.share.time_left() {
                            policy.replay.mark_time_left(&mut req, left);
                        }
                        let service = &mut *this.service;
                        let (future, taken) = if in_flight {
                            this.share.call_hedge(|| service.call(req))
                        } else {
                            // Every attempt failed: a retry, not a hedge.
                            this.share.call_repeat(|| service.call(req))
                        };
                        match taken {
                            Taken::Sent => {}
                            Taken::Busy => {
                                // Due -> Unarmed: the pool below had no
                                // replica free to start it; try again after
                                // a delay.
                                drop(future);
                                policy.admission.give_back(this.share, &policy.budget);
                                policy.metrics.declined.increment(1);
                                *this.next = Next::Unarmed;
                                continue;
                            }
                            Taken::TooLate => {
                                // Due -> Closed: it would not answer before
                                // the deadline, nor would a later one. The
                                // attempts in flight run on.
                                drop(future);
                                policy
                                    .admission
                                    .decline_too_late(this.share, &policy.budget);
                                *this.next = Next::Closed;
                                continue;
                            }
                        }
                        let future = Box::pin(future);
                        *this.sent += 1;
                        policy.metrics.sent.increment(1);
                        this.extras.push(Extra {
                            future,
                            started: Instant::now(),
                        });
                        this.started.get_or_insert_with(Instant::now);
                        // Due -> Unarmed: the timer restarts for the hedge
                        // after this one, if another may go.
                        let more =
                            *this.sent < policy.max_extra_attempts && this.share.may_send_more();
                        *this.next = if more { Next::Unarmed } else { Next::Closed };
                    }
                },
                _ if !in_flight => {
                    // Every attempt failed and no more is due: the last failure.
                    return match this.last_failure.take() {
                        Some(result) => Poll::Ready(result),
                        None => unreachable!("attempts end in a win or a failure"),
                    };
                }
                Next::Unarmed => {
                    // Unarmed -> Timer, only now: a call that completes on
                    // its first poll never arms one.
                    let now = Instant::now();
                    this.started.get_or_insert(now);
                    let mut sleep = Box::pin(tokio::time::sleep(policy.delay(now)));
                    let fired = sleep.as_mut().poll(cx).is_ready();
                    // Timer -> Due at once if the delay is already over.
                    *this.next = if fired { Next::Due } else { Next::Timer(sleep) };
                    if !fired {
                        return Poll::Pending;
                    }
                }
                Next::Timer(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Timer -> Due: the delay is over.
                    *this.next = Next::Due;
                }
                Next::Closed => {
                    this.started.get_or_insert_with(Instant::now);
                    return Poll::Pending;
                }
            }
        }
    }
}
