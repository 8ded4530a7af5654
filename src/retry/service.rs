use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

use super::config::Policy;
use super::future::ResponseFuture;
use crate::attempt::{CloneRequest, Replay, Share, earliest};
use crate::classify::{Classify, ErrorsAsFailures};
use crate::per_clone::{PerClone, take_ready};

/// Retries failed calls of the inner service, under a budget; made by
/// [`RetryLayer`](super::RetryLayer).
///
/// Errors are the inner service's, unchanged: the caller gets the last real
/// outcome, whether the retries ran out, the budget refused, or the
/// deadline came.
#[derive(Debug)]
pub struct Retry<S, C = ErrorsAsFailures, R = CloneRequest> {
    inner: S,
    /// This clone's own handle on the shared policy.
    policy: PerClone<Policy<C, R>>,
}

impl<S: Clone, C, R> Clone for Retry<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: self.policy.for_clone(),
        }
    }
}

impl<S, C, R> Retry<S, C, R> {
    pub(super) fn from_policy(inner: S, policy: Arc<Policy<C, R>>) -> Self {
        Self {
            inner,
            policy: PerClone::new(policy),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the layer.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, R, Req> Service<Req> for Retry<S, C, R>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    R: Replay<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let policy = &*self.policy;
        policy.metrics.attempts.increment(1);
        // The original is counted once, by the outermost repeating layer,
        // which also marks it as attempt 1.
        let mut share = Share::join(policy.max_attempts, &policy.budget, deadline(policy, &req));
        if share.is_outermost() {
            policy.replay.mark(&mut req, 1);
        }
        if let Some(left) = share.time_left() {
            policy.replay.mark_time_left(&mut req, left);
        }
        // No copy for a request that may not be sent again.
        let template = if policy.max_attempts > 1 && share.may_send_more() {
            policy.replay.replay(&req)
        } else {
            None
        };
        // The ready service takes this call and goes to the future for the
        // later attempts.
        let service = take_ready(&mut self.inner);
        let policy = self.policy.for_call();
        ResponseFuture::new(service, req, template, share, policy)
    }
}

/// When a call of `req` must be over: within the layer's deadline and the
/// time the request allows, whichever ends first. The clock is read only
/// for a call that has either.
fn deadline<C, R: Replay<Req>, Req>(policy: &Policy<C, R>, req: &Req) -> Option<Instant> {
    let allowed = policy.replay.time_allowed(req);
    if policy.deadline.is_none() && allowed.is_none() {
        return None;
    }
    let now = Instant::now();
    let after = |d: Option<Duration>| d.map(|d| crate::stats::later(now, d));
    earliest(after(policy.deadline), after(allowed))
}
